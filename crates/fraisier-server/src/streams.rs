//! The agents' task streams, server side: one WebSocket per connected agent, the questions
//! waiting for their answers on it, and the provider that acts on an agent through it.
//!
//! An agent dials in (`GET /agents/{id}/task-stream`, upgraded); the newest connection of an
//! agent wins. Revoking an agent cuts its stream at once; a stream that ends fails every
//! question still waiting on it, naming the agent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::ws::{Message, WebSocket};
use fraisier_engine::fleet::Connector;
use fraisier_engine::{Provider, ProviderError};
use fraisier_model::service::{
    DesiredService, ExecRequest, ExecResult, ObservedService, ReleaseCheck,
};
use fraisier_model::stream::{Answer, Ask};
use futures_util::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, Notify};

/// An answer later than this is a lost one (beyond an exec's own timeout).
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// Keeps idle connections (and the proxies between) open, and finds dead ones.
const PING_EVERY: Duration = Duration::from_secs(15);

type Reply = oneshot::Sender<Result<Option<Value>, ProviderError>>;

struct Question {
    ask: Ask,
    reply: Reply,
}

struct Link {
    epoch: u64,
    questions: mpsc::Sender<Question>,
    cut: Arc<Notify>,
}

pub struct Streams {
    links: Mutex<HashMap<i64, Link>>,
    /// When each agent's last stream ended (agents never seen since start count from then).
    gone: Mutex<HashMap<i64, Instant>>,
    started: Instant,
    /// How long an agent may be without a stream before it is lost, not just unreachable.
    grace: Duration,
    epochs: AtomicU64,
    ids: AtomicU64,
}

// === impl Streams ===

impl Streams {
    pub fn new(grace: Duration) -> Streams {
        Streams {
            links: Mutex::default(),
            gone: Mutex::default(),
            started: Instant::now(),
            grace,
            epochs: AtomicU64::new(0),
            ids: AtomicU64::new(0),
        }
    }

    /// Why an agent without a stream cannot be asked: a blip (retry) or gone too long.
    fn absent(&self, agent: i64, name: &str) -> ProviderError {
        let since = self
            .gone
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&agent)
            .copied()
            .unwrap_or(self.started);
        let away = since.elapsed();
        if away > self.grace {
            ProviderError::Lost(format!(
                "agent {name} has had no task stream for {} s",
                away.as_secs()
            ))
        } else {
            ProviderError::Unreachable(format!("agent {name} is not connected to this server"))
        }
    }

    pub fn connected(&self, agent: i64) -> bool {
        self.links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&agent)
    }

    /// Ends the agent's stream now (it was revoked).
    pub fn cut(&self, agent: i64) {
        let link = self
            .links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&agent);
        if let Some(l) = link {
            l.cut.notify_one();
        }
    }

    /// Serves one agent's WebSocket until it closes, is cut, or stops answering pings.
    pub async fn serve(
        self: Arc<Self>,
        agent: i64,
        name: String,
        socket: WebSocket,
        on_open: impl FnOnce() + Send,
    ) {
        let (questions, mut asked) = mpsc::channel::<Question>(64);
        let cut = Arc::new(Notify::new());
        let epoch = self.epochs.fetch_add(1, Ordering::Relaxed);
        let older = self
            .links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                agent,
                Link {
                    epoch,
                    questions,
                    cut: cut.clone(),
                },
            );
        if let Some(older) = older {
            older.cut.notify_one();
        }
        self.gone
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&agent);
        tracing::info!(agent = %name, "task stream open");
        on_open();
        let (mut sink, mut stream) = socket.split();
        let mut waiting: HashMap<u64, Reply> = HashMap::new();
        let mut ping = tokio::time::interval(PING_EVERY);
        let mut unanswered_pings = 0u32;
        let why = loop {
            tokio::select! {
                _ = cut.notified() => break "cut by the server",
                q = asked.recv() => {
                    let Some(q) = q else { break "no one asks any more" };
                    let text = match serde_json::to_string(&q.ask) {
                        Ok(t) => t,
                        Err(e) => {
                            let _ = q.reply.send(Err(ProviderError::Rejected(e.to_string())));
                            continue;
                        }
                    };
                    waiting.insert(q.ask.id(), q.reply);
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        break "the connection broke";
                    }
                }
                m = stream.next() => match m {
                    Some(Ok(Message::Text(text))) => match serde_json::from_str::<Answer>(&text) {
                        Ok(a) => {
                            if let Some(reply) = waiting.remove(&a.id) {
                                let _ = reply.send(outcome(&name, a));
                            }
                        }
                        Err(e) => tracing::warn!(agent = %name, error = %e, "unreadable frame from the agent"),
                    },
                    Some(Ok(Message::Pong(_))) => unanswered_pings = 0,
                    Some(Ok(Message::Close(_))) | None => break "the agent closed it",
                    Some(Err(_)) => break "the connection broke",
                    Some(Ok(_)) => {}
                },
                _ = ping.tick() => {
                    unanswered_pings += 1;
                    if unanswered_pings > 2 {
                        break "the agent stopped answering pings";
                    }
                    if sink.send(Message::Ping(Default::default())).await.is_err() {
                        break "the connection broke";
                    }
                }
            }
        };
        {
            let mut links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
            if links.get(&agent).is_some_and(|l| l.epoch == epoch) {
                links.remove(&agent);
                self.gone
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(agent, Instant::now());
            }
        }
        let _ = sink.send(Message::Close(None)).await;
        for (_, reply) in waiting {
            let _ = reply.send(Err(ProviderError::Unreachable(format!(
                "agent {name}: its task stream ended ({why})"
            ))));
        }
        tracing::warn!(agent = %name, reason = why, "task stream closed");
    }

    /// Asks an agent and waits for its answer (`None`: it answered `null`).
    async fn ask(
        &self,
        agent: i64,
        name: &str,
        within: Duration,
        ask: impl FnOnce(u64) -> Ask,
    ) -> Result<Option<Value>, ProviderError> {
        let questions = self
            .links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&agent)
            .map(|l| l.questions.clone())
            .ok_or_else(|| self.absent(agent, name))?;
        let (reply, answer) = oneshot::channel();
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        questions
            .send(Question {
                ask: ask(id),
                reply,
            })
            .await
            .map_err(|_| {
                ProviderError::Unreachable(format!("agent {name}: its task stream ended"))
            })?;
        match tokio::time::timeout(within, answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ProviderError::Unreachable(format!(
                "agent {name}: its task stream ended"
            ))),
            Err(_) => Err(ProviderError::Unreachable(format!(
                "agent {name} did not answer within {} s",
                within.as_secs()
            ))),
        }
    }
}

fn outcome(name: &str, a: Answer) -> Result<Option<Value>, ProviderError> {
    match a.error {
        None => Ok(a.ok.filter(|v| !v.is_null())),
        // 0: the agent's own control API did not answer it.
        Some(r) if r.status == 0 => Err(ProviderError::Unreachable(format!(
            "agent {name}: {}",
            r.message
        ))),
        Some(r) => Err(ProviderError::Rejected(format!(
            "agent {name} refused the request ({} {}): {}",
            r.status, r.code, r.message
        ))),
    }
}

fn decode<T: DeserializeOwned>(name: &str, v: Value) -> Result<T, ProviderError> {
    serde_json::from_value(v).map_err(|e| {
        ProviderError::Rejected(format!("agent {name} answered something unexpected: {e}"))
    })
}

/// An agent that joined, acted on through its task stream.
pub struct RemoteAgent {
    id: i64,
    name: String,
    streams: Arc<Streams>,
}

#[async_trait]
impl Provider for RemoteAgent {
    async fn apply(&self, desired: &DesiredService) -> Result<ObservedService, ProviderError> {
        let desired = Box::new(desired.clone());
        let v = self
            .streams
            .ask(self.id, &self.name, ANSWER_WITHIN, |id| Ask::Apply {
                id,
                desired,
            })
            .await?
            .ok_or_else(|| {
                ProviderError::Rejected(format!("agent {} answered nothing", self.name))
            })?;
        decode(&self.name, v)
    }

    async fn observe(
        &self,
        fraise: &str,
        environment: &str,
    ) -> Result<Option<ObservedService>, ProviderError> {
        let (fraise, environment) = (fraise.to_string(), environment.to_string());
        self.streams
            .ask(self.id, &self.name, ANSWER_WITHIN, |id| Ask::Observe {
                id,
                fraise,
                environment,
            })
            .await?
            .map(|v| decode(&self.name, v))
            .transpose()
    }

    async fn exec(&self, request: &ExecRequest) -> Result<ExecResult, ProviderError> {
        let within = Duration::from_millis(request.timeout_ms).saturating_add(ANSWER_WITHIN);
        let request = Box::new(request.clone());
        let v = self
            .streams
            .ask(self.id, &self.name, within, |id| Ask::Exec { id, request })
            .await?
            .ok_or_else(|| {
                ProviderError::Rejected(format!("agent {} answered nothing", self.name))
            })?;
        decode(&self.name, v)
    }

    async fn verify(
        &self,
        fraise: &str,
        environment: &str,
    ) -> Result<Option<Vec<ReleaseCheck>>, ProviderError> {
        let (fraise, environment) = (fraise.to_string(), environment.to_string());
        // Hashing a large release takes a while: as long as an exec may.
        self.streams
            .ask(self.id, &self.name, ANSWER_WITHIN * 6, |id| Ask::Verify {
                id,
                fraise,
                environment,
            })
            .await?
            .map(|v| decode(&self.name, v))
            .transpose()
    }

    fn kind(&self) -> &'static str {
        "agent"
    }

    async fn available(&self) -> bool {
        self.streams.connected(self.id)
    }
}

/// The engine's way to the agents that joined: through their streams.
pub struct StreamConnector(pub Arc<Streams>);

impl Connector for StreamConnector {
    fn agent(&self, id: i64, name: &str) -> Arc<dyn Provider> {
        Arc::new(RemoteAgent {
            id,
            name: name.to_string(),
            streams: self.0.clone(),
        })
    }
}
