//! The event bus outside the server: every event the store records is published to a NATS
//! JetStream stream, oldest first, and marked published once the stream acknowledges it.
//! Events of one run are published in the order they happened; across runs on PostgreSQL,
//! in the order of their ids, which concurrent runs may commit out of.
//!
//! The store is the outbox. Events recorded while NATS is away are published when it is
//! back, in order; a restart loses nothing. Each message carries the event's id as
//! `Nats-Msg-Id`, which JetStream deduplicates, so two servers that publish the same event
//! (several servers on one PostgreSQL) put it in the stream once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::{self, stream};
use fraisier_model::config::ServerConfig;
use fraisier_store::{run_id_string, Event, Store};
use futures_util::StreamExt;
use serde_json::{json, Value};

/// Events taken from the outbox per round.
const BATCH: u32 = 200;
/// How often the outbox is looked at when it was empty.
const IDLE: Duration = Duration::from_millis(250);
/// How long a failed round waits before the next.
const BACKOFF: Duration = Duration::from_secs(1);

pub struct Nats {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: String,
    subject: String,
    ready: AtomicBool,
    published: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Nats {
    /// Connects (in the background: a NATS that is down now is waited for) and starts
    /// publishing. `None` when no `server.nats_url` is configured.
    /// `lease`: the job every server on the database shares; its holder publishes.
    pub async fn start(
        config: &ServerConfig,
        store: Store,
        lease: fraisier_engine::jobs::JobLease,
    ) -> Option<Arc<Nats>> {
        let url = config.nats_url.as_ref()?;
        // From now on events wait in the outbox for the bus.
        store.keep_outbox(true);
        let client = match async_nats::ConnectOptions::new()
            .name("fraisier")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connect(url.as_str())
            .await
        {
            Ok(c) => c,
            Err(e) => {
                // The URL is not logged: it may carry credentials.
                tracing::error!(error = %e, "cannot use server.nats_url; events are kept and published once it is reachable after a restart");
                return None;
            }
        };
        let mut js = jetstream::new(client.clone());
        js.set_timeout(Duration::from_secs(5));
        let nats = Arc::new(Nats {
            client,
            js,
            stream: config.nats_stream.clone(),
            subject: config.nats_subject.clone(),
            ready: AtomicBool::new(false),
            published: AtomicU64::new(0),
            last_error: Mutex::new(None),
        });
        tokio::spawn(nats.clone().publish_forever(store, lease));
        Some(nats)
    }

    async fn publish_forever(
        self: Arc<Self>,
        store: Store,
        mut lease: fraisier_engine::jobs::JobLease,
    ) {
        loop {
            // One server publishes: the others' copies would only be dropped by the stream's
            // duplicate window, and the order across servers lost.
            if !lease.held().await {
                lease.idle(IDLE).await;
                continue;
            }
            let wait = match self.round(&store).await {
                Ok(0) => IDLE,
                Ok(_) => Duration::ZERO,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot publish events to NATS yet");
                    *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                    BACKOFF
                }
            };
            lease.idle(wait).await;
        }
    }

    /// Publishes the oldest unpublished events; returns how many.
    async fn round(&self, store: &Store) -> Result<usize, String> {
        if self.client.connection_state() != State::Connected {
            return Err("not connected".into());
        }
        if !self.ready.load(Ordering::Relaxed) {
            self.js
                .get_or_create_stream(stream::Config {
                    name: self.stream.clone(),
                    subjects: vec![format!("{}.>", self.subject)],
                    duplicate_window: Duration::from_secs(120),
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("stream {}: {e}", self.stream))?;
            self.ready.store(true, Ordering::Relaxed);
            tracing::info!(stream = %self.stream, "publishing events to NATS JetStream");
        }
        let events = store
            .unpublished_events(BATCH)
            .await
            .map_err(|e| format!("cannot read the events: {e}"))?;
        // Sent back to back, acknowledged after: one round trip per batch, not per event.
        let mut pending = Vec::with_capacity(events.len());
        for e in &events {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("fraisier-evt-{}", e.id).as_str());
            let ack = self
                .js
                .publish_with_headers(self.subject_of(e), headers, payload(e).to_string().into())
                .await
                .map_err(|err| format!("publish: {err}"))?;
            pending.push((e.id, ack));
        }
        // Marked in order, up to the first not acknowledged: what follows it is sent again.
        let mut acked = Vec::with_capacity(pending.len());
        let mut failed = None;
        for (id, ack) in pending {
            match ack.await {
                Ok(_) => acked.push(id),
                Err(err) => {
                    failed = Some(format!("not acknowledged: {err}"));
                    break;
                }
            }
        }
        store
            .mark_published(&acked)
            .await
            .map_err(|e| format!("cannot mark events published: {e}"))?;
        self.published
            .fetch_add(acked.len() as u64, Ordering::Relaxed);
        if let Some(f) = failed {
            return Err(f);
        }
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(acked.len())
    }

    /// `<subject>.<workspace>.<fraise>.<environment>.<event type>`.
    fn subject_of(&self, e: &Event) -> String {
        format!(
            "{}.{}.{}.{}.{}",
            self.subject,
            token(&e.tenant_id),
            token(&e.fraise),
            token(&e.environment),
            e.event_type
                .split('.')
                .map(token)
                .collect::<Vec<_>>()
                .join(".")
        )
    }

    /// Seed 000's `nats` health: connected, streams on the account, this server's count.
    pub async fn health(&self) -> Value {
        let connected = self.client.connection_state() == State::Connected;
        let (streams, messages) = if connected {
            // Counted by listing their names (the account-info API's shape varies between
            // server versions).
            let streams = tokio::time::timeout(Duration::from_secs(2), async {
                let mut names = self.js.stream_names();
                let mut n = 0usize;
                while let Some(name) = names.next().await {
                    name.ok()?;
                    n += 1;
                }
                Some(n)
            })
            .await
            .ok()
            .flatten();
            let messages = match tokio::time::timeout(
                Duration::from_secs(2),
                self.js.get_stream(&self.stream),
            )
            .await
            {
                Ok(Ok(s)) => Some(s.cached_info().state.messages),
                _ => None,
            };
            (streams, messages)
        } else {
            (None, None)
        };
        let healthy = connected && self.ready.load(Ordering::Relaxed);
        json!({
            "status": if healthy { "healthy" } else { "unhealthy" },
            "connected": connected,
            "streams": streams,
            "stream": self.stream,
            "messages": messages,
            "events_published": self.published.load(Ordering::Relaxed),
            "last_error": self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        })
    }
}

/// A subject token: names are letters, digits, '_' and '-' already; anything else is '_'.
fn token(s: &str) -> String {
    if s.is_empty() {
        return "_".into();
    }
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn payload(e: &Event) -> Value {
    json!({
        "id": format!("evt_{:03}", e.id),
        "type": e.event_type,
        "workspace": e.tenant_id,
        "fraise": e.fraise,
        "environment": e.environment,
        "deployment_id": e.run_id.map(run_id_string),
        "data": e.data,
        "timestamp": e.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_never_split_or_wildcard_a_subject() {
        assert_eq!(token("staging"), "staging");
        assert_eq!(token("a.b*c>d e"), "a_b_c_d_e");
        assert_eq!(token(""), "_");
    }
}
