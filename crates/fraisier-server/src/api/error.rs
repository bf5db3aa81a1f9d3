//! The one place errors become HTTP: status, code, message, details, request id, timestamp.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fraisier_engine::EngineError;
use fraisier_store::StoreError;
use serde_json::{json, Value};

tokio::task_local! {
    /// The id of the request being handled, for error bodies and logs.
    pub static REQUEST_ID: String;
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Value,
    /// Seconds, for 429 (seed 000 puts `retry_after` beside the code).
    pub retry_after: Option<i64>,
}

/// The error code of an error response, kept in its extensions for the audit trail.
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode(pub &'static str);

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// e.g. `DEPLOYMENT_NOT_FOUND`, `INVALID_PARAMETERS`
    pub code: String,
    pub message: String,
    #[schema(value_type = Object)]
    pub details: Value,
    pub request_id: String,
    pub timestamp: String,
    /// Seconds to wait before trying again (429 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<i64>,
}

// === impl ApiError ===

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: json!({}),
            retry_after: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> ApiError {
        self.details = details;
        self
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        let field = field.into();
        ApiError::new(StatusCode::BAD_REQUEST, "INVALID_PARAMETERS", message)
            .with_details(json!({ "field": field }))
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
    }

    /// 403 `PERMISSION_DENIED`, naming the permission and, when it refused, the environment.
    pub fn denied(d: &fraisier_model::access::Denial) -> ApiError {
        use fraisier_model::access::Denial;
        let details = match d {
            Denial::Permission { permission } => json!({ "permission": permission.as_str() }),
            Denial::Environment {
                permission,
                environment,
                reason,
            } => {
                json!({ "permission": permission.as_str(), "environment": environment, "reason": reason })
            }
        };
        ApiError::new(StatusCode::FORBIDDEN, "PERMISSION_DENIED", d.to_string())
            .with_details(details)
    }

    /// 429 `RATE_LIMIT_EXCEEDED` with seed 000's `retry_after`.
    pub fn rate_limited(
        v: &fraisier_model::rate::Verdict,
        now: chrono::DateTime<chrono::Utc>,
    ) -> ApiError {
        let retry_after = super::gate::retry_after(v, now);
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMIT_EXCEEDED",
            format!(
                "Rate limit exceeded: {} requests allowed per window; {} remaining. Retry in {retry_after} s.",
                v.limit, v.remaining
            ),
        )
        .with_details(json!({ "limit": v.limit, "remaining": v.remaining, "retry_after": retry_after }));
        e.retry_after = Some(retry_after);
        e
    }

    pub fn run_not_found(id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "DEPLOYMENT_NOT_FOUND",
            format!("Deployment {id} not found"),
        )
        .with_details(json!({ "deployment_id": id }))
    }

    pub fn fraise_not_found(name: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "FRAISE_NOT_FOUND",
            format!("Fraise {name} not found"),
        )
        .with_details(json!({ "fraise": name }))
    }

    pub fn environment_not_found(name: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "ENVIRONMENT_NOT_FOUND",
            format!("Environment {name} not found"),
        )
        .with_details(json!({ "environment": name }))
    }

    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        // The cause goes to the log, not to the client.
        tracing::error!(error = %e, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "internal error; see the server log",
        )
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        let message = e.to_string();
        let code = e.code();
        let (status, details) = match &e {
            EngineError::FraiseNotFound(f) => (StatusCode::NOT_FOUND, json!({ "fraise": f })),
            EngineError::EnvironmentNotFound(env) => {
                (StatusCode::NOT_FOUND, json!({ "environment": env }))
            }
            EngineError::NotInEnvironment {
                fraise,
                environment,
            } => (
                StatusCode::NOT_FOUND,
                json!({ "fraise": fraise, "environment": environment }),
            ),
            EngineError::RunNotFound(id) => (StatusCode::NOT_FOUND, json!({ "deployment_id": id })),
            EngineError::InvalidParameters { field, .. }
            | EngineError::InvalidSpec { field, .. } => {
                (StatusCode::BAD_REQUEST, json!({ "field": field }))
            }
            EngineError::NoVersionKnown(_) => {
                (StatusCode::BAD_REQUEST, json!({ "field": "version" }))
            }
            EngineError::ArtifactNotFound { version, .. } => (
                StatusCode::BAD_REQUEST,
                json!({ "field": "version", "version": version }),
            ),
            EngineError::InProgress {
                active_id,
                fraise,
                environment,
            } => (
                StatusCode::CONFLICT,
                json!({ "deployment_id": active_id, "fraise": fraise, "environment": environment }),
            ),
            EngineError::DependencyFailed {
                dependency,
                environment,
                reason,
            } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({ "dependency": dependency, "environment": environment, "cause": reason }),
            ),
            EngineError::BackupNotFound { version, .. } => {
                (StatusCode::BAD_REQUEST, json!({ "version": version }))
            }
            EngineError::AlreadyFinished(id) => {
                (StatusCode::CONFLICT, json!({ "deployment_id": id }))
            }
            EngineError::ApprovalNotPending { id, reason } => (
                StatusCode::CONFLICT,
                json!({ "deployment_id": id, "reason": reason }),
            ),
            EngineError::SelfApproval { id, user } => (
                StatusCode::FORBIDDEN,
                json!({ "deployment_id": id, "user": user, "permission": "deployment:approve", "reason": "separation of duties: whoever asked for a run cannot approve it" }),
            ),
            EngineError::AlreadyDecided { id, user } => (
                StatusCode::CONFLICT,
                json!({ "deployment_id": id, "user": user }),
            ),
            EngineError::VariableConflict { name, .. } => {
                (StatusCode::CONFLICT, json!({ "field": name }))
            }
            EngineError::Secret(fraisier_model::secret::SecretError::External) => {
                (StatusCode::CONFLICT, json!({}))
            }
            EngineError::Secret(_) | EngineError::Blob(_) => return ApiError::internal(e),
            EngineError::ArtifactMissing { name, version } => (
                StatusCode::NOT_FOUND,
                json!({ "artifact": name, "version": version }),
            ),
            EngineError::ArtifactConflict(_)
            | EngineError::ArtifactInUse(_)
            | EngineError::NotPromotable(_) => (StatusCode::CONFLICT, json!({})),
            EngineError::PromotionBlocked(_) => (StatusCode::UNPROCESSABLE_ENTITY, json!({})),
            EngineError::SourceUnavailable(_) => (StatusCode::BAD_GATEWAY, json!({})),
            EngineError::EnvironmentLocked(l) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({ "environment": l.environment, "locked_by": l.locked_by, "reason": l.reason,
                        "locked_at": super::views::ts(l.locked_at) }),
            ),
            EngineError::EnvironmentExists(name) => {
                (StatusCode::CONFLICT, json!({ "environment": name }))
            }
            EngineError::EnvironmentInUse { name, .. } => {
                (StatusCode::CONFLICT, json!({ "environment": name }))
            }
            EngineError::AlreadyLocked(l) => (
                StatusCode::CONFLICT,
                json!({ "environment": l.environment, "locked_by": l.locked_by, "reason": l.reason,
                        "locked_at": super::views::ts(l.locked_at) }),
            ),
            EngineError::EnvironmentFrozen(w) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({ "environment": w.environment, "freeze_window": format!("frz_{:05}", w.id),
                        "reason": w.reason, "ends_at": super::views::ts(w.ends_at) }),
            ),
            EngineError::OutsideChangeWindow { environment, next } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({ "environment": environment, "next_window_at": next.map(super::views::ts) }),
            ),
            EngineError::LimitExceeded {
                environment,
                max_instances,
                requested,
                in_use,
            } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({ "environment": environment, "max_instances": max_instances,
                        "requested": requested, "in_use": in_use }),
            ),
            EngineError::FreezeWindowNotFound(id) => (
                StatusCode::NOT_FOUND,
                json!({ "freeze_window": format!("frz_{id:05}") }),
            ),
            EngineError::SecretNotFound { name, .. } => {
                (StatusCode::NOT_FOUND, json!({ "secret": name }))
            }
            EngineError::ScannerNotConfigured => (StatusCode::UNPROCESSABLE_ENTITY, json!({})),
            EngineError::ScanFailed(_) => (StatusCode::BAD_GATEWAY, json!({})),
            EngineError::ArtifactTooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({ "field": "body", "max_bytes": limit }),
            ),
            EngineError::Misplaced(fraisier_engine::fleet::Misplaced::NoGroup {
                group,
                environment,
            }) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({ "target_group": group, "environment": environment }),
            ),
            EngineError::Misplaced(fraisier_engine::fleet::Misplaced::Unsupported(t)) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({ "target_id": t.reference(), "target": t.name, "target_type": t.kind }),
            ),
            EngineError::Misplaced(fraisier_engine::fleet::Misplaced::Unreadable(_)) => {
                return ApiError::internal(e)
            }
            EngineError::Provider(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "provider": "local" }),
            ),
            EngineError::Store(StoreError::NotFound) => (StatusCode::NOT_FOUND, json!({})),
            EngineError::Store(StoreError::EnvironmentGone(name)) => {
                return ApiError::environment_not_found(name)
            }
            EngineError::Store(_) => return ApiError::internal(e),
        };
        ApiError {
            status,
            code,
            message,
            details,
            retry_after: None,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            // A row that went away between a check and a write (another request deleted it).
            StoreError::NotFound => ApiError::new(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "the resource no longer exists",
            ),
            StoreError::EnvironmentGone(name) => ApiError::environment_not_found(&name),
            StoreError::Barred(barrier) => EngineError::from(*barrier).into(),
            e => ApiError::internal(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let request_id = REQUEST_ID.try_with(|id| id.clone()).unwrap_or_default();
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                details: self.details,
                request_id: request_id.clone(),
                timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                retry_after: self.retry_after,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert("x-request-id", v);
        }
        if let Some(s) = self.retry_after {
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(s));
        }
        response.extensions_mut().insert(ErrorCode(self.code));
        response
    }
}
