//! The agent's control API, typed: what the server (and the CLI, and the tests) use to hand an
//! agent its desired state, read what it observes, and run one-shot commands on it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fraisier_model::service::{
    AgentInfo, DesiredService, ExecRequest, ExecResult, ObservedService,
};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Every call but `exec` and `shutdown` answers quickly; a slower agent is treated as down.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Beyond an exec's own timeout: installing the release and collecting the output.
const EXEC_MARGIN: Duration = Duration::from_secs(10);
/// Shutdown drains every instance before it answers.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(300);

/// A client for one agent's control API.
#[derive(Clone)]
pub struct AgentClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

pub type Result<T, E = AgentClientError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum AgentClientError {
    /// No `agent.json` in the state directory (or it cannot be read): no agent runs there.
    #[error("no agent announced in {path}")]
    NoAgent {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Connection refused, reset or timed out: the agent is down or hung. Safe to retry.
    #[error("cannot reach the agent at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The agent answered with an error.
    #[error("the agent refused the request ({status} {code}): {message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    /// The agent answered something this client does not understand.
    #[error("unexpected answer from the agent: {0}")]
    Decode(String),
}

/// `GET /v1/health`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct AgentHealth {
    pub status: String,
    pub pid: u32,
    pub version: String,
    pub services: usize,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

// === impl AgentClient ===

impl AgentClient {
    pub fn new(control_url: impl Into<String>, token: impl Into<String>) -> AgentClient {
        AgentClient {
            base: control_url.into().trim_end_matches('/').to_string(),
            token: token.into(),
            http: reqwest::Client::new(),
        }
    }

    /// Finds the agent that owns `state_dir` through its `agent.json`.
    pub fn from_state_dir(state_dir: &Path) -> Result<AgentClient> {
        let info = read_agent_info(state_dir)?;
        Ok(AgentClient::new(info.control_url, info.token))
    }

    pub fn control_url(&self) -> &str {
        &self.base
    }

    pub async fn health(&self) -> Result<AgentHealth> {
        self.call(self.request(Method::GET, "/v1/health")).await
    }

    /// Hands the agent a desired state; returns what it observes right now (poll `service`
    /// until `converged_to`). An older generation than the stored one is `Rejected` with
    /// `STALE_GENERATION` (409).
    pub async fn put_service(&self, desired: &DesiredService) -> Result<ObservedService> {
        let path = format!("/v1/services/{}/{}", desired.fraise, desired.environment);
        self.call(self.request(Method::PUT, &path).json(desired))
            .await
    }

    /// `None` when the agent has no such service.
    pub async fn service(
        &self,
        fraise: &str,
        environment: &str,
    ) -> Result<Option<ObservedService>> {
        let path = format!("/v1/services/{fraise}/{environment}");
        match self.call(self.request(Method::GET, &path)).await {
            Ok(observed) => Ok(Some(observed)),
            Err(AgentClientError::Rejected { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Tells the agent where to fetch artifacts from, and with what credential.
    pub async fn link_server(&self, link: &fraisier_model::service::ServerLink) -> Result<()> {
        self.call::<serde_json::Value>(self.request(Method::PUT, "/v1/server").json(link))
            .await
            .map(|_| ())
    }

    pub async fn services(&self) -> Result<Vec<ObservedService>> {
        self.call(self.request(Method::GET, "/v1/services")).await
    }

    /// Asks the agent to drain, stop and forget the service. Returns at once; the service
    /// disappears from `service` once its instances are stopped. Unknown services are fine.
    pub async fn delete_service(&self, fraise: &str, environment: &str) -> Result<()> {
        let path = format!("/v1/services/{fraise}/{environment}");
        match self
            .call::<serde_json::Value>(self.request(Method::DELETE, &path))
            .await
        {
            Ok(_) | Err(AgentClientError::Rejected { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Hashes the releases the service runs again (drift); `None` when the agent has no such
    /// service.
    pub async fn verify(
        &self,
        fraise: &str,
        environment: &str,
    ) -> Result<Option<Vec<fraisier_model::service::ReleaseCheck>>> {
        let path = format!("/v1/services/{fraise}/{environment}/verify");
        match self.call(self.request(Method::POST, &path)).await {
            Ok(checks) => Ok(Some(checks)),
            Err(AgentClientError::Rejected {
                status: 404, code, ..
            }) if code == "SERVICE_NOT_FOUND" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Runs a command to completion on the agent (hooks, smoke tests, etl jobs).
    pub async fn exec(&self, request: &ExecRequest) -> Result<ExecResult> {
        let timeout = Duration::from_millis(request.timeout_ms).saturating_add(EXEC_MARGIN);
        self.call(
            self.request(Method::POST, "/v1/exec")
                .json(request)
                .timeout(timeout),
        )
        .await
    }

    /// Stops every instance and then the agent itself; returns once that is done.
    pub async fn shutdown(&self) -> Result<()> {
        let request = self
            .request(Method::POST, "/v1/shutdown")
            .timeout(SHUTDOWN_TIMEOUT);
        self.call::<serde_json::Value>(request).await.map(|_| ())
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(TIMEOUT)
    }

    async fn call<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T> {
        let response = request.send().await.map_err(|e| self.transport(e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.transport(e))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map_err(|e| AgentClientError::Decode(format!("{status} answer: {e}")));
        }
        Err(rejection(status, &bytes))
    }

    fn transport(&self, e: reqwest::Error) -> AgentClientError {
        if e.is_connect() || e.is_timeout() || e.is_request() {
            AgentClientError::Unreachable {
                url: self.base.clone(),
                source: e,
            }
        } else {
            AgentClientError::Decode(e.to_string())
        }
    }
}

impl std::fmt::Debug for AgentClient {
    /// The token stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

fn rejection(status: StatusCode, bytes: &[u8]) -> AgentClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => AgentClientError::Rejected {
            status: status.as_u16(),
            code: body.error.code,
            message: body.error.message,
        },
        Err(_) => AgentClientError::Rejected {
            status: status.as_u16(),
            code: "UNKNOWN".into(),
            message: String::from_utf8_lossy(bytes).chars().take(500).collect(),
        },
    }
}

/// Reads `<state_dir>/agent.json`.
pub fn read_agent_info(state_dir: &Path) -> Result<AgentInfo> {
    let path = state_dir.join("agent.json");
    let bytes = std::fs::read(&path).map_err(|source| AgentClientError::NoAgent {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| AgentClientError::Decode(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_become_rejections() {
        let body = br#"{"error":{"code":"STALE_GENERATION","message":"older"}}"#;
        match rejection(StatusCode::CONFLICT, body) {
            AgentClientError::Rejected {
                status,
                code,
                message,
            } => {
                assert_eq!(
                    (status, code.as_str(), message.as_str()),
                    (409, "STALE_GENERATION", "older")
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            rejection(StatusCode::BAD_GATEWAY, b"<html>"),
            AgentClientError::Rejected { status: 502, .. }
        ));
    }

    #[test]
    fn a_missing_agent_is_said_so() {
        let dir = std::env::temp_dir().join("fraisier-client-no-agent-here");
        assert!(matches!(
            AgentClient::from_state_dir(&dir),
            Err(AgentClientError::NoAgent { .. })
        ));
    }

    #[tokio::test]
    async fn a_dead_agent_is_unreachable() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = AgentClient::new(format!("http://127.0.0.1:{port}"), "t");
        assert!(matches!(
            client.health().await,
            Err(AgentClientError::Unreachable { .. })
        ));
    }
}
