//! Where instances run: the engine's only way to act on the data plane.

use async_trait::async_trait;
use fraisier_model::service::{
    DesiredService, ExecRequest, ExecResult, ObservedService, ReleaseCheck,
};

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The agent cannot be reached; retrying later may work.
    #[error("agent unreachable: {0}")]
    Unreachable(String),
    /// The agent answered and refused.
    #[error("agent refused: {0}")]
    Rejected(String),
    /// The agent has been gone longer than it may be (no task stream, no heartbeat): a step
    /// waiting on it fails now rather than at its timeout.
    #[error("agent lost: {0}")]
    Lost(String),
}

/// A target that runs instances: today the local agent; later remote agents and other engines.
/// `apply` is idempotent and level-triggered: the provider converges to the desired state and
/// keeps it there; the engine watches convergence through `observe`.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    async fn apply(&self, desired: &DesiredService) -> Result<ObservedService, ProviderError>;
    async fn observe(
        &self,
        fraise: &str,
        environment: &str,
    ) -> Result<Option<ObservedService>, ProviderError>;
    async fn exec(&self, request: &ExecRequest) -> Result<ExecResult, ProviderError>;
    /// Hashes the releases a service runs again and compares them with what was installed
    /// (drift); `None` when the target has no such service.
    async fn verify(
        &self,
        fraise: &str,
        environment: &str,
    ) -> Result<Option<Vec<ReleaseCheck>>, ProviderError> {
        let _ = (fraise, environment);
        Err(ProviderError::Rejected(format!(
            "a {} provider cannot hash its releases again",
            self.kind()
        )))
    }
    /// A short name for status pages: `local`.
    fn kind(&self) -> &'static str;
    /// Whether the provider answers now.
    async fn available(&self) -> bool;
}
