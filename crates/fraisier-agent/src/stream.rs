//! The agent's end of its task stream: one WebSocket to the server it joined, over which it
//! takes desired states and questions and answers each through its own control API — the
//! same checks, the same persistence as a local call. It reconnects with backoff; while the
//! server is away it keeps serving what it was last told.

use std::sync::Arc;
use std::time::Duration;

use fraisier_client::{AgentClient, AgentClientError};
use fraisier_model::service::ServerLink;
use fraisier_model::stream::{Answer, Ask, Refusal};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::agent::Agent;

const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Below the server's default `agent_offline_after` (15 s): a server that restarts finds its
/// agents back before it counts them lost.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The server pings every 15 s: a connection silent this long is dead (half-open after a cut
/// or a NAT's timeout), and is dialled again.
const SILENT_FOR: Duration = Duration::from_secs(45);
const CONNECT_WITHIN: Duration = Duration::from_secs(10);

/// Keeps the task stream open for as long as the agent runs.
pub(crate) fn spawn(agent: Arc<Agent>) {
    tokio::spawn(async move {
        let control = AgentClient::new(&agent.info.control_url, &agent.info.token);
        let mut backoff = FIRST_BACKOFF;
        loop {
            if agent.is_shutting_down() {
                return;
            }
            let link = agent.releases.fetcher().current();
            if let Some((link, id)) = link.and_then(|l| l.agent_id.clone().map(|id| (l, id))) {
                match session(&link, &id, &control).await {
                    Ok(served) => {
                        tracing::warn!("the server closed the task stream; reconnecting");
                        if served {
                            backoff = FIRST_BACKOFF;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "task stream: {e}; retrying in {} ms", backoff.as_millis())
                    }
                }
            }
            // Jitter, so that a fleet cut off at once does not come back at once.
            let jitter = Duration::from_millis(
                u64::from(std::process::id() % 97) * backoff.as_millis() as u64 / 400,
            );
            tokio::time::sleep(backoff + jitter).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    });
}

/// One connection, until it ends; `Ok(true)` when it carried at least one question.
async fn session(link: &ServerLink, id: &str, control: &AgentClient) -> Result<bool, String> {
    let url = format!("{}/agents/{id}/task-stream", link.url).replacen("http", "ws", 1);
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("bad server URL {url}: {e}"))?;
    request.headers_mut().insert(
        "x-agent-token",
        link.token
            .parse()
            .map_err(|_| "the credential is not a header value".to_string())?,
    );
    let (ws, _) = tokio::time::timeout(CONNECT_WITHIN, tokio_tungstenite::connect_async(request))
        .await
        .map_err(|_| format!("{url} did not answer within {} s", CONNECT_WITHIN.as_secs()))?
        .map_err(|e| format!("cannot open {url}: {}", crate::membership::with_causes(&e)))?;
    tracing::info!(%url, "task stream open");
    let (mut sink, mut stream) = ws.split();
    let (answers, mut answered) = mpsc::channel::<String>(64);
    let mut served = false;
    loop {
        tokio::select! {
            m = tokio::time::timeout(SILENT_FOR, stream.next()) => match m.map_err(|_| {
                format!("nothing from the server for {} s", SILENT_FOR.as_secs())
            })? {
                Some(Ok(Message::Text(text))) => {
                    let ask: Ask = match serde_json::from_str(&text) {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "a question this agent does not understand; ignored");
                            continue;
                        }
                    };
                    served = true;
                    let (control, answers) = (control.clone(), answers.clone());
                    // Each in its own task: a long exec holds up nothing else.
                    tokio::spawn(async move {
                        let a = answer(&control, ask).await;
                        if let Ok(text) = serde_json::to_string(&a) {
                            let _ = answers.send(text).await;
                        }
                    });
                }
                Some(Ok(Message::Ping(p))) => {
                    sink.send(Message::Pong(p)).await.map_err(|e| e.to_string())?;
                }
                Some(Ok(Message::Close(_))) | None => return Ok(served),
                Some(Err(e)) => return Err(format!("the connection broke: {e}")),
                Some(Ok(_)) => {}
            },
            Some(text) = answered.recv() => {
                sink.send(Message::Text(text.into())).await.map_err(|e| format!("cannot answer: {e}"))?;
            }
        }
    }
}

async fn answer(control: &AgentClient, ask: Ask) -> Answer {
    let id = ask.id();
    let result = match ask {
        Ask::Apply { desired, .. } => value(control.put_service(&desired).await),
        Ask::Observe {
            fraise,
            environment,
            ..
        } => value(control.service(&fraise, &environment).await),
        Ask::Exec { request, .. } => value(control.exec(&request).await),
        Ask::Verify {
            fraise,
            environment,
            ..
        } => value(control.verify(&fraise, &environment).await),
    };
    match result {
        Ok(v) => Answer {
            id,
            ok: Some(v),
            error: None,
        },
        Err(e) => Answer {
            id,
            ok: None,
            error: Some(refusal(e)),
        },
    }
}

fn value<T: Serialize>(
    r: Result<T, AgentClientError>,
) -> Result<serde_json::Value, AgentClientError> {
    r.and_then(|v| serde_json::to_value(v).map_err(|e| AgentClientError::Decode(e.to_string())))
}

fn refusal(e: AgentClientError) -> Refusal {
    match e {
        AgentClientError::Rejected {
            status,
            code,
            message,
        } => Refusal {
            status,
            code,
            message,
        },
        other => Refusal {
            status: 0,
            code: "AGENT_UNAVAILABLE".into(),
            message: other.to_string(),
        },
    }
}
