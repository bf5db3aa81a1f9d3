//! The one error `run` returns: why the agent could not start or keep serving.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot use the state directory {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "another agent{} already owns {dir}{}; stop it first (`fraisier agent stop`)",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        control_url.as_ref().map(|u| format!(" and answers on {u}")).unwrap_or_default()
    )]
    AlreadyRunning {
        dir: PathBuf,
        pid: Option<u32>,
        control_url: Option<String>,
    },
    #[error("the control API must listen on a loopback address, not {0}")]
    NotLoopback(SocketAddr),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("secret keys: {0}")]
    SecretKeys(#[from] fraisier_model::secret::SecretError),
    #[error("cannot join the server: {0}")]
    Join(String),
    #[error("the control API stopped")]
    Serve(#[source] io::Error),
}
