//! The control API (loopback HTTP, bearer token): the server writes desired state and runs
//! one-shot commands through it, and reads observed state back. Errors become the JSON error
//! shape here and nowhere else.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use fraisier_model::names::{agent_name_problem, is_valid_name};
use fraisier_model::service::{
    service_key, DesiredService, ExecRequest, ExecResult, ObservedService, ReleaseCheck, ServerLink,
};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::admission::{check_desired, check_exec, Refusal};
use crate::agent::Agent;
use crate::exec::{run_command, CommandSpec};
use crate::process::{self, Identity};
use crate::release::ReleaseError;
use crate::state_dir::{write_json_atomic, PRIVATE_FILE_MODE};

/// Largest request body accepted.
const MAX_BODY: usize = 1 << 20;

/// An error as the control API answers it: `{"error":{"code","message","details"?}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Option<Value>,
}

// === impl ApiError ===

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    fn invalid(refusal: Refusal) -> Self {
        ApiError {
            details: Some(json!({ "field": refusal.field })),
            ..ApiError::new(
                StatusCode::BAD_REQUEST,
                "INVALID_PARAMETERS",
                refusal.message,
            )
        }
    }

    fn not_found(fraise: &str, environment: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "SERVICE_NOT_FOUND",
            format!("no service {fraise}@{environment} on this agent"),
        )
    }

    fn shutting_down() -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "SHUTTING_DOWN",
            "the agent is shutting down",
        )
    }

    /// Internal failures are logged here, once, and answered without their details.
    fn internal(context: &str, error: impl std::fmt::Display) -> Self {
        tracing::error!("{context}: {error}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            context.to_string(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(details) = self.details {
            error["details"] = details;
        }
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}

impl From<ReleaseError> for ApiError {
    fn from(e: ReleaseError) -> Self {
        match e {
            ReleaseError::SourceMissing(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "ARTIFACT_NOT_FOUND", e.to_string())
            }
            ReleaseError::EntryEscapes { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "INVALID_ARTIFACT", e.to_string())
            }
            ReleaseError::Io { .. } => ApiError::internal("cannot install the release", e),
            ReleaseError::Fetch(_) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "ARTIFACT_FETCH_FAILED",
                e.to_string(),
            ),
            ReleaseError::ZipUnsupported => {
                ApiError::new(StatusCode::BAD_REQUEST, "INVALID_ARTIFACT", e.to_string())
            }
            ReleaseError::NotInstalled { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "RELEASE_NOT_FOUND", e.to_string())
            }
        }
    }
}

/// The control API's routes, every one behind the bearer token.
pub(crate) fn routes(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/services", get(list_services))
        .route(
            "/v1/services/{fraise}/{environment}",
            put(put_service).get(get_service).delete(delete_service),
        )
        .route(
            "/v1/services/{fraise}/{environment}/verify",
            post(verify_service),
        )
        .route("/v1/exec", post(exec))
        .route("/v1/server", put(link_server))
        .route("/v1/shutdown", post(shutdown))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(agent.clone(), require_token))
        .with_state(agent)
}

async fn require_token(State(agent): State<Arc<Agent>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(token) if constant_time_eq(token.as_bytes(), agent.info.token.as_bytes()) => {
            next.run(request).await
        }
        _ => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "missing or invalid bearer token",
        )
        .into_response(),
    }
}

/// Compares without an early exit, so response time says nothing about the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|r| {
        let status = if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(status, "INVALID_PARAMETERS", r.body_text())
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETERS",
            format!("invalid JSON body: {e}"),
        )
    })
}

async fn health(State(agent): State<Arc<Agent>>) -> Json<Value> {
    let services = agent.services.lock().await.len();
    Json(json!({
        "status": if agent.is_shutting_down() { "shutting_down" } else { "ok" },
        "pid": agent.info.pid,
        "version": agent.info.version,
        "services": services,
    }))
}

/// Where to fetch artifacts from, and the credential to present there.
async fn link_server(
    State(agent): State<Arc<Agent>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let link: ServerLink = parse_body(body)?;
    if !(link.url.starts_with("http://") || link.url.starts_with("https://")) {
        return Err(ApiError::invalid(Refusal {
            field: "url".into(),
            message: "must be an http:// or https:// URL".into(),
        }));
    }
    if link.token.is_empty() {
        return Err(ApiError::invalid(Refusal {
            field: "token".into(),
            message: "must not be empty".into(),
        }));
    }
    agent
        .releases
        .fetcher()
        .link(link)
        .map_err(|e| ApiError::internal("cannot keep the server link", e))?;
    Ok(Json(
        json!({ "linked_to": agent.releases.fetcher().linked_to() }),
    ))
}

async fn list_services(State(agent): State<Arc<Agent>>) -> Json<Vec<ObservedService>> {
    let registry = agent.services.lock().await;
    Json(registry.values().map(|s| s.observed()).collect())
}

async fn get_service(
    State(agent): State<Arc<Agent>>,
    Path((fraise, environment)): Path<(String, String)>,
) -> Result<Json<ObservedService>, ApiError> {
    let registry = agent.services.lock().await;
    registry
        .get(&service_key(&fraise, &environment))
        .map(|s| Json(s.observed()))
        .ok_or_else(|| ApiError::not_found(&fraise, &environment))
}

/// Persists the desired state, then wakes the reconciler; answers with the current
/// observation (the caller waits for `converged_to`).
async fn put_service(
    State(agent): State<Arc<Agent>>,
    Path((fraise, environment)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ObservedService>, ApiError> {
    let desired: DesiredService = parse_body(body)?;
    check_desired(&fraise, &environment, &desired).map_err(ApiError::invalid)?;
    let mut registry = agent.services.lock().await;
    if agent.is_shutting_down() {
        return Err(ApiError::shutting_down());
    }
    let existing = registry.get(&desired.key()).cloned();
    if let Some(shared) = &existing {
        let stored = shared.desired().as_ref().map(|d| d.generation);
        if let Some(stored) = stored.filter(|g| *g > desired.generation) {
            return Err(ApiError {
                details: Some(
                    json!({ "stored_generation": stored, "observed": shared.observed() }),
                ),
                ..ApiError::new(
                    StatusCode::CONFLICT,
                    "STALE_GENERATION",
                    format!(
                        "generation {} is older than the stored {stored}",
                        desired.generation
                    ),
                )
            });
        }
    }
    let path = agent.dir.desired_file(&fraise, &environment);
    let to_write = desired.clone();
    // 0600: release env may carry secrets.
    tokio::task::spawn_blocking(move || write_json_atomic(&path, &to_write, PRIVATE_FILE_MODE))
        .await
        .map_err(|e| ApiError::internal("cannot persist the desired state", e))?
        .map_err(|e| ApiError::internal("cannot persist the desired state", e))?;
    let shared = match existing {
        Some(shared) => {
            *shared.desired() = Some(desired);
            shared.wake.notify_one();
            shared
        }
        None => agent.start_service(&mut registry, desired, Vec::new()),
    };
    Ok(Json(shared.observed()))
}

/// Forgets the desired state at once (so a crash now cannot bring it back), then lets the
/// reconciler drain and stop its instances; the service disappears when that is done.
async fn delete_service(
    State(agent): State<Arc<Agent>>,
    Path((fraise, environment)): Path<(String, String)>,
) -> Result<(StatusCode, Json<ObservedService>), ApiError> {
    if agent_name_problem(&fraise).is_some() || !is_valid_name(&environment) {
        return Err(ApiError::not_found(&fraise, &environment));
    }
    let registry = agent.services.lock().await;
    let shared = registry
        .get(&service_key(&fraise, &environment))
        .cloned()
        .ok_or_else(|| ApiError::not_found(&fraise, &environment))?;
    match std::fs::remove_file(agent.dir.desired_file(&fraise, &environment)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ApiError::internal("cannot remove the desired state", e)),
    }
    *shared.desired() = None;
    shared.wake.notify_one();
    Ok((StatusCode::ACCEPTED, Json(shared.observed())))
}

/// Hashes the releases the service's instances run again: what changed by hand since they
/// were installed (drift).
async fn verify_service(
    State(agent): State<Arc<Agent>>,
    Path((fraise, environment)): Path<(String, String)>,
) -> Result<Json<Vec<ReleaseCheck>>, ApiError> {
    if agent_name_problem(&fraise).is_some() || !is_valid_name(&environment) {
        return Err(ApiError::not_found(&fraise, &environment));
    }
    let observed = agent
        .services
        .lock()
        .await
        .get(&service_key(&fraise, &environment))
        .map(|s| s.observed())
        .ok_or_else(|| ApiError::not_found(&fraise, &environment))?;
    let versions: std::collections::BTreeSet<String> = observed
        .instances
        .iter()
        .map(|i| i.version.clone())
        .collect();
    let mut checks = Vec::new();
    for v in versions {
        checks.push(agent.releases.verify(&fraise, &v).await?);
    }
    Ok(Json(checks))
}

/// Installs the release if needed and runs the command to completion in it.
async fn exec(
    State(agent): State<Arc<Agent>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ExecResult>, ApiError> {
    let req: ExecRequest = parse_body(body)?;
    check_exec(&req).map_err(ApiError::invalid)?;
    if agent.is_shutting_down() {
        return Err(ApiError::shutting_down());
    }
    agent
        .releases
        .ensure(&req.fraise, &req.version, &req.release)
        .await?;
    let release_dir = agent.releases.dir(&req.fraise, &req.version);
    let who = Identity {
        fraise: &req.fraise,
        environment: &req.environment,
        version: &req.version,
        instance: "exec",
    };
    let opened = agent
        .secrets
        .open(who, &req.release.secrets)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "SECRET_UNAVAILABLE", e))?;
    let mut env = process::instance_env(&req.release, who, &release_dir, None, &opened);
    env.extend(req.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let spec = CommandSpec {
        command: req.command.clone(),
        cwd: process::working_dir(&req.release, &release_dir),
        env,
        // The output goes to the server's run log: no secret's value leaves this host in it.
        redact: opened.redactor(),
    };
    let result = run_command(
        &spec,
        Duration::from_millis(req.timeout_ms),
        &agent.commands,
    )
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "EXEC_FAILED",
            format!("cannot run the command in {}: {e}", spec.cwd.display()),
        )
    })?;
    Ok(Json(result))
}

/// Drains and stops everything, then ends the agent. Runs in its own task so that a client
/// hanging up cannot leave a half-finished shutdown.
async fn shutdown(State(agent): State<Arc<Agent>>) -> Result<Json<Value>, ApiError> {
    let task = tokio::spawn({
        let agent = agent.clone();
        async move { agent.shutdown().await }
    });
    task.await
        .map_err(|e| ApiError::internal("shutdown failed", e))?;
    Ok(Json(json!({ "status": "stopped", "pid": agent.info.pid })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
