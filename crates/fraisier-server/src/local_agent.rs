//! The "local" provider: the `fraisier agent` process on this host, started or re-adopted by
//! the server and reached over its loopback control API.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use fraisier_client::agent::{AgentClient, AgentClientError as AgentError};
use fraisier_engine::{Provider, ProviderError};
use fraisier_model::service::{
    AgentInfo, DesiredService, ExecRequest, ExecResult, ObservedService, ReleaseCheck, ServerLink,
};
use tokio::sync::Mutex;

/// How to start an agent: this very binary with `agent --state-dir DIR`.
#[derive(Clone, Debug)]
pub struct AgentLauncher {
    pub program: PathBuf,
    pub state_dir: PathBuf,
    pub keep_releases: usize,
    /// The key file the agent opens secrets with (FRAISIER_SECRET_KEY, inherited, wins).
    pub secret_keys: PathBuf,
    /// Where the agent fetches artifacts, told to every agent this provider starts or adopts.
    pub server: ServerLink,
}

pub struct LocalAgent {
    launcher: AgentLauncher,
    client: Mutex<Option<AgentClient>>,
}

fn unreachable(e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Unreachable(e.to_string())
}

fn from_agent(e: AgentError) -> ProviderError {
    match e {
        AgentError::Unreachable { .. } | AgentError::NoAgent { .. } => {
            ProviderError::Unreachable(e.to_string())
        }
        e => ProviderError::Rejected(e.to_string()),
    }
}

// === impl LocalAgent ===

impl LocalAgent {
    pub fn new(launcher: AgentLauncher) -> LocalAgent {
        LocalAgent {
            launcher,
            client: Mutex::new(None),
        }
    }

    /// A client for a live agent: the cached one, the one `agent.json` names if it answers,
    /// or a freshly started one. Serialized so two callers never start two agents.
    pub async fn ensure(&self) -> Result<AgentClient, ProviderError> {
        let mut guard = self.client.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        if let Ok(c) = AgentClient::from_state_dir(&self.launcher.state_dir) {
            // A live agent that is slow to answer (a loaded host) is waited for: starting a
            // second one would only find the state dir taken.
            let alive = read_info(&self.launcher.state_dir)
                .is_some_and(|i| std::path::Path::new(&format!("/proc/{}", i.pid)).exists());
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                if c.health().await.is_ok() {
                    tracing::info!(state_dir = %self.launcher.state_dir.display(), "adopted the running agent");
                    self.link(&c).await?;
                    *guard = Some(c.clone());
                    return Ok(c);
                }
                if !alive || tokio::time::Instant::now() > deadline {
                    break;
                }
                tracing::warn!("the agent is alive but does not answer; waiting for it");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let c = self.start().await?;
        self.link(&c).await?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// This server's address may have changed since the agent last heard of it.
    async fn link(&self, c: &AgentClient) -> Result<(), ProviderError> {
        c.link_server(&self.launcher.server)
            .await
            .map_err(from_agent)
    }

    async fn start(&self) -> Result<AgentClient, ProviderError> {
        let dir = &self.launcher.state_dir;
        std::fs::create_dir_all(dir).map_err(unreachable)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("agent.log"))
            .map_err(unreachable)?;
        let before = read_info(dir).map(|i| i.pid);
        // Its own process group, output to a file: the agent must outlive this server, even a
        // kill -9 of it or a Ctrl-C in its terminal.
        let mut child = tokio::process::Command::new(&self.launcher.program)
            .arg("agent")
            .arg("--state-dir")
            .arg(dir)
            .arg("--keep-releases")
            .arg(self.launcher.keep_releases.to_string())
            .arg("--secret-keys")
            .arg(&self.launcher.secret_keys)
            // The agent this server starts is linked by it, never joined elsewhere.
            .env_remove("FRAISIER_URL")
            .env_remove("FRAISIER_JOIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(unreachable)?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| {
                unreachable(format!(
                    "cannot start the agent ({}): {e}",
                    self.launcher.program.display()
                ))
            })?;
        let pid = child.id();
        // Reap it if it exits while we live; if we die first, init does.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        tracing::info!(?pid, state_dir = %dir.display(), "started the local agent");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(info) = read_info(dir) {
                if Some(info.pid) == pid || (before.is_some() && Some(info.pid) != before) {
                    let c = AgentClient::new(&info.control_url, &info.token);
                    if c.health().await.is_ok() {
                        return Ok(c);
                    }
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(unreachable(format!(
                    "the agent did not come up within 15 s; see {}",
                    dir.join("agent.log").display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `f` against the agent; if the agent is gone, starts or re-adopts one and tries once more.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, ProviderError>
    where
        F: Fn(AgentClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, AgentError>>,
    {
        let c = self.ensure().await?;
        match f(c).await {
            Err(AgentError::Unreachable { .. }) => {
                *self.client.lock().await = None;
                let c = self.ensure().await?;
                f(c).await.map_err(from_agent)
            }
            r => r.map_err(from_agent),
        }
    }
}

fn read_info(dir: &std::path::Path) -> Option<AgentInfo> {
    let text = std::fs::read_to_string(dir.join("agent.json")).ok()?;
    serde_json::from_str(&text).ok()
}

#[async_trait]
impl Provider for LocalAgent {
    async fn apply(&self, desired: &DesiredService) -> Result<ObservedService, ProviderError> {
        self.call(|c| async move { c.put_service(desired).await })
            .await
    }

    async fn observe(
        &self,
        fraise: &str,
        environment: &str,
    ) -> Result<Option<ObservedService>, ProviderError> {
        self.call(|c| async move { c.service(fraise, environment).await })
            .await
    }

    async fn exec(&self, request: &ExecRequest) -> Result<ExecResult, ProviderError> {
        self.call(|c| async move { c.exec(request).await }).await
    }

    async fn verify(
        &self,
        fraise: &str,
        environment: &str,
    ) -> Result<Option<Vec<ReleaseCheck>>, ProviderError> {
        self.call(|c| async move { c.verify(fraise, environment).await })
            .await
    }

    fn kind(&self) -> &'static str {
        "local"
    }

    /// Asks the agent it knows (or the one `agent.json` names); never starts one, so that a
    /// health check has no side effect. Calls that need the agent start it.
    async fn available(&self) -> bool {
        let known = self.client.lock().await.clone();
        match known.or_else(|| AgentClient::from_state_dir(&self.launcher.state_dir).ok()) {
            Some(c) => c.health().await.is_ok(),
            None => false,
        }
    }
}
