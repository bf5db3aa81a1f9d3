//! The agent's membership in a server: it joins once with a join token, keeps the credential
//! it receives (0600, in its state dir), and reports a heartbeat every interval to the server
//! it is linked to, whether it joined (`--server`) or was started by `fraisier serve`.

use std::sync::Arc;
use std::time::Duration;

use fraisier_model::agent::{Heartbeat, HeartbeatAck, HostFacts, Labels, Membership, Registration};
use fraisier_model::service::ServerLink;
use serde::{Deserialize, Serialize};

use crate::agent::Agent;
use crate::error::AgentError;
use crate::state_dir::{read_json, write_json_atomic, StateDir, PRIVATE_FILE_MODE};

/// Until the server says otherwise in its first answer.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// A heartbeat that takes longer than this is a missed one.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);
/// What the agent can do, as it tells the server.
const CAPABILITIES: &[&str] = &["process", "router", "exec"];

/// How to join a server (`fraisier agent --server URL --join-token T --name N --labels …`).
#[derive(Clone)]
pub struct Join {
    /// The server's URL, with or without `/api/v1`.
    pub server: String,
    /// Needed the first time only: afterwards the kept credential is used.
    pub join_token: Option<String>,
    pub name: Option<String>,
    pub labels: Labels,
}

/// The token never prints.
impl std::fmt::Debug for Join {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Join")
            .field("server", &self.server)
            .field("name", &self.name)
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

/// What `membership.json` keeps.
#[derive(Serialize, Deserialize)]
struct Kept {
    /// The API base, `https://host/api/v1`.
    server: String,
    id: String,
    name: String,
    workspace: String,
    credential: String,
}

/// The API base of a server URL.
fn api_base(server: &str) -> String {
    let s = server.trim_end_matches('/');
    if s.ends_with("/api/v1") {
        s.to_string()
    } else {
        format!("{s}/api/v1")
    }
}

/// An error with what caused it, down to the root: reqwest's own message names only the URL,
/// and the reason (a certificate this host does not trust, a refused connection) is below.
pub(crate) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

/// The client every call to the server goes through: rustls for https, and no redirects —
/// the agent's credential (a header of our own, which a redirect would carry along) goes
/// to the server it joined and nowhere else.
pub(crate) fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default()
}

/// Registers with the server the first time (then keeps the credential), and returns the
/// link the agent fetches artifacts through and reports to.
pub(crate) async fn join(dir: &StateDir, join: &Join) -> Result<ServerLink, AgentError> {
    let base = api_base(&join.server);
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(AgentError::Join(format!(
            "--server must be an http:// or https:// URL, not {:?}",
            join.server
        )));
    }
    let path = dir.membership();
    let kept = read_json::<Kept>(&path).map_err(|source| AgentError::StateDir {
        path: path.clone(),
        source,
    })?;
    if let Some(kept) = kept {
        // The credential goes to the server that issued it and to no other address.
        if kept.server != base {
            return Err(AgentError::Join(format!(
                "this agent joined {} and its credential is for that address only, not {base}; pass --server {}, or (to join another server) move {} aside and join again",
                kept.server,
                kept.server,
                path.display()
            )));
        }
        tracing::info!(id = %kept.id, name = %kept.name, "already a member; not registering again");
        return Ok(ServerLink {
            url: base,
            token: kept.credential,
            agent_id: Some(kept.id),
        });
    }
    let (Some(token), Some(name)) = (&join.join_token, &join.name) else {
        return Err(AgentError::Join(format!(
            "this agent has not joined {base} yet: pass --join-token (make one with `fraisier agent join-token`) and --name"
        )));
    };
    let registration = Registration {
        join_token: token.clone(),
        name: name.clone(),
        labels: join.labels.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        capabilities: CAPABILITIES.iter().map(|c| c.to_string()).collect(),
        host: host_facts(),
    };
    let response = http_client()
        .post(format!("{base}/agents/register"))
        .json(&registration)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| AgentError::Join(format!("cannot reach {base}: {}", with_causes(&e))))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if !status.is_success() {
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| body.chars().take(300).collect());
        return Err(AgentError::Join(format!(
            "{base} refused the registration ({status}): {message}"
        )));
    }
    let m: Membership = serde_json::from_str(&body)
        .map_err(|e| AgentError::Join(format!("unexpected answer from {base}: {e}")))?;
    let kept = Kept {
        server: base.clone(),
        id: m.id.clone(),
        name: m.name.clone(),
        workspace: m.workspace.clone(),
        credential: m.credential.clone(),
    };
    write_json_atomic(&path, &kept, PRIVATE_FILE_MODE)
        .map_err(|source| AgentError::StateDir { path, source })?;
    tracing::info!(id = %m.id, name = %m.name, workspace = %m.workspace, "joined {base}");
    Ok(ServerLink {
        url: base,
        token: m.credential,
        agent_id: Some(m.id),
    })
}

/// Reports to the linked server every interval, for as long as the agent runs. A refused
/// credential (revoked) is said once and retried slowly, in case an operator re-admits it.
pub(crate) fn spawn_heartbeats(agent: Arc<Agent>) {
    tokio::spawn(async move {
        let http = http_client();
        let mut interval = DEFAULT_INTERVAL;
        let mut refused = false;
        loop {
            let link = agent.releases.fetcher().current();
            if let Some((link, id)) = link.and_then(|l| l.agent_id.clone().map(|id| (l, id))) {
                let beat = Heartbeat {
                    version: agent.info.version.clone(),
                    capabilities: CAPABILITIES.iter().map(|c| c.to_string()).collect(),
                    host: host_facts(),
                    services: agent.services.lock().await.len() as u32,
                    instances: agent.book.count().await as u32,
                };
                let sent = http
                    .post(format!("{}/agents/{id}/heartbeat", link.url))
                    .header("x-agent-token", &link.token)
                    .json(&beat)
                    .timeout(HEARTBEAT_TIMEOUT)
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => {
                        if refused {
                            tracing::info!("the server accepts this agent again");
                            refused = false;
                        }
                        if let Ok(ack) = r.json::<HeartbeatAck>().await {
                            interval = Duration::from_millis(ack.heartbeat_interval_ms.max(100));
                        }
                    }
                    Ok(r) if matches!(r.status().as_u16(), 401 | 403 | 404) => {
                        if !refused {
                            tracing::error!(status = %r.status(), agent = %id, "the server refuses this agent's credential (revoked?); it keeps serving what it runs");
                            refused = true;
                        }
                    }
                    Ok(r) => tracing::warn!(status = %r.status(), "heartbeat refused"),
                    Err(e) => tracing::debug!(error = %e, "heartbeat not delivered"),
                }
            }
            let linked = agent
                .releases
                .fetcher()
                .current()
                .is_some_and(|l| l.agent_id.is_some());
            let wait = if refused {
                interval.max(Duration::from_secs(30))
            } else if !linked {
                // Not linked yet (the server links the agent it starts just after): soon.
                Duration::from_millis(200)
            } else {
                interval
            };
            tokio::time::sleep(wait).await;
        }
    });
}

/// This host, as the agent can see it without privileges.
pub fn host_facts() -> HostFacts {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024);
    HostFacts {
        hostname,
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get() as u32),
        memory_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_base_is_found_with_or_without_its_path() {
        assert_eq!(api_base("http://h:8000"), "http://h:8000/api/v1");
        assert_eq!(api_base("http://h:8000/"), "http://h:8000/api/v1");
        assert_eq!(api_base("https://h/api/v1/"), "https://h/api/v1");
    }

    #[test]
    fn the_host_is_described() {
        let h = host_facts();
        assert!(!h.os.is_empty() && !h.arch.is_empty());
        assert!(h.cpus >= 1);
        assert!(h.memory_bytes > 0, "{h:?}");
    }

    #[tokio::test]
    async fn joining_needs_a_token_the_first_time() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        state.create().unwrap();
        let j = Join {
            server: "http://127.0.0.1:9".into(),
            join_token: None,
            name: Some("web-1".into()),
            labels: Labels::new(),
        };
        let e = join(&state, &j).await.unwrap_err().to_string();
        assert!(e.contains("--join-token"), "{e}");
        let j = Join {
            server: "ftp://x".into(),
            ..j
        };
        assert!(join(&state, &j)
            .await
            .unwrap_err()
            .to_string()
            .contains("http"));
    }
}
