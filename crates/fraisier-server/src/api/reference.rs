//! `/deployments/{ref}` (DESIGN §5): a run (`dep_00012`) or a service deployment (`my_api`
//! with `?environment=`, or `my_api@production`), resolved once, in the caller's workspace.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use fraisier_store::{parse_run_id, Run};

use super::error::ApiError;
use super::extract::QueryMap;
use super::gate::Caller;
use super::{services, AppState};

pub enum DeploymentRef {
    Run(Box<Run>),
    Service { fraise: String, environment: String },
}

// === impl DeploymentRef ===

impl DeploymentRef {
    /// The fraise and environment referred to, whichever form named them.
    pub fn service(&self) -> (&str, &str) {
        match self {
            DeploymentRef::Run(r) => (&r.fraise, &r.environment),
            DeploymentRef::Service {
                fraise,
                environment,
            } => (fraise, environment),
        }
    }
}

impl FromRequestParts<AppState> for DeploymentRef {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let who = Caller::from_request_parts(parts, state).await?;
        let Path(name) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::run_not_found(&e.to_string()))?;
        if name.starts_with("dep_") {
            let id = parse_run_id(&name).ok_or_else(|| ApiError::run_not_found(&name))?;
            return Ok(DeploymentRef::Run(Box::new(
                state.engine.run(&who.workspace, id).await?,
            )));
        }
        let q = QueryMap::from_request_parts(parts, state).await?;
        let (fraise, environment) = services::resolve(state, &who, &name, q.get("environment"))?;
        Ok(DeploymentRef::Service {
            fraise,
            environment,
        })
    }
}
