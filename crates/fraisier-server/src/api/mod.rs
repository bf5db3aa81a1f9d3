//! The HTTP API: routes, the request-id and authentication layers, and shared state.

pub mod agents;
pub mod api_keys;
pub mod approvals;
pub mod artifacts;
pub mod audit;
pub mod auth;
pub mod deployments;
pub mod environment_admin;
pub mod environments;
pub mod error;
pub mod extract;
pub mod fraises;
pub mod gate;
pub mod notifications;
pub mod openapi;
pub mod params;
pub mod projects;
pub mod reference;
pub mod routes;
pub mod services;
pub mod sources;
pub mod system;
pub mod target_groups;
pub mod targets;
pub mod users;
pub mod variables;
pub mod views;
pub mod webhooks;
pub mod workspaces;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use chrono::{DateTime, Utc};
use fraisier_engine::Engine;
use fraisier_model::access::Roles;
use fraisier_model::config::Config;
use serde::de::DeserializeOwned;

use crate::auth::Keys;
use crate::limits::Limiter;
use error::{ApiError, REQUEST_ID};

#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub keys: Keys,
    pub roles: Arc<Roles>,
    pub limiter: Arc<Limiter>,
    /// Signs artifact versions.
    pub signing: Arc<crate::signing::SigningKey>,
    /// The connected agents' task streams.
    pub streams: Arc<crate::streams::Streams>,
    /// The event bus, when `server.nats_url` is set.
    pub nats: Option<Arc<crate::nats::Nats>>,
    pub started_at: DateTime<Utc>,
}

impl AppState {
    /// The configuration now: fraisier.yaml with the API's environment changes.
    pub fn config(&self) -> Arc<Config> {
        self.engine.config()
    }
}

/// The API's routes; what each needs of its caller is declared in `routes::ROUTES`, which the
/// gate in front of all of them reads.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route(
            "/deployments",
            get(deployments::list).post(services::create),
        )
        .route("/deployments/validate", post(services::validate))
        .route("/deployments/sources", get(sources::list))
        .route("/deployments/sources/validate", post(sources::validate))
        .route("/deployments/github", post(sources::github))
        .route("/deployments/direct", post(sources::direct))
        .route("/deployments/helm", post(sources::helm))
        .route(
            "/deployments/{id}",
            get(deployments::get).delete(deployments::cancel),
        )
        .route("/deployments/{id}/logs", get(deployments::logs))
        .route("/deployments/{id}/events", get(deployments::events))
        .route("/deployments/{id}/audit", get(audit::of_deployment))
        .route("/deployments/{id}/health", get(services::health))
        .route("/deployments/{id}/progress", get(services::progress))
        .route("/deployments/{id}/rollback", post(services::rollback))
        .route("/deployments/{id}/approve", post(approvals::approve))
        .route("/deployments/{id}/reject", post(approvals::reject))
        .route(
            "/deployments/{id}/secrets",
            get(variables::secrets).put(variables::set_secrets),
        )
        .route(
            "/deployments/{id}/env",
            get(variables::env).put(variables::set_env),
        )
        .route("/secrets/keys/rotate", post(variables::rotate_key))
        .route("/secrets", get(variables::workspace_secrets))
        .route(
            "/secrets/{name}",
            put(variables::set_workspace_secret).delete(variables::delete_workspace_secret),
        )
        .route("/artifacts", get(artifacts::list).post(artifacts::push))
        .route("/artifacts/types", get(artifacts::types))
        .route("/artifacts/signing-key", get(artifacts::signing_key))
        .route("/artifacts/storage", get(artifacts::storage))
        .route("/artifacts/storage/usage", get(artifacts::storage_usage))
        .route("/artifacts/storage/costs", get(artifacts::storage_costs))
        .route(
            "/artifacts/storage/cleanup",
            post(artifacts::storage_cleanup),
        )
        .route("/artifacts/{name}/sign", post(artifacts::sign))
        .route("/artifacts/{name}/signature", get(artifacts::signature))
        .route("/artifacts/{name}/scan", post(artifacts::scan))
        .route(
            "/artifacts/{name}/vulnerabilities",
            get(artifacts::vulnerabilities),
        )
        .route("/artifacts/types/{type}", get(artifacts::type_get))
        .route(
            "/artifacts/types/{type}/artifacts",
            get(artifacts::type_artifacts),
        )
        .route(
            "/artifacts/{name}",
            get(artifacts::get)
                .put(artifacts::update)
                .delete(artifacts::delete),
        )
        .route(
            "/artifacts/{name}/versions",
            get(artifacts::versions).post(artifacts::push_version),
        )
        .route("/artifacts/{name}/promote", post(artifacts::promote))
        .route(
            "/artifacts/{name}/versions/{version}",
            get(artifacts::version).delete(artifacts::delete_version),
        )
        .route("/artifacts/{name}/download", get(artifacts::download))
        .route("/blobs/{digest}", get(artifacts::blob))
        .route(
            "/webhook",
            post(webhooks::receive_any).layer(DefaultBodyLimit::max(webhooks::MAX_WEBHOOK_BYTES)),
        )
        .route("/webhooks/deliveries", get(webhooks::deliveries))
        .route("/notifications/deliveries", get(notifications::deliveries))
        .route(
            "/webhooks/{provider}",
            post(webhooks::receive).layer(DefaultBodyLimit::max(webhooks::MAX_WEBHOOK_BYTES)),
        )
        .route("/my/pending-approvals", get(approvals::mine))
        .route("/deployments/{id}/{environment}", post(deployments::create))
        .route(
            "/deployments/{id}/{environment}/rollback",
            post(deployments::rollback),
        )
        .route("/fraises", get(fraises::list))
        .route("/fraises/{name}", get(fraises::get))
        .route("/fraises/{name}/status", get(fraises::status))
        .route("/fraises/{name}/history", get(fraises::history))
        .route("/agents", get(agents::list))
        .route("/agents/join-tokens", post(agents::create_join_token))
        .route("/agents/register", post(agents::register))
        .route(
            "/agents/{id}",
            get(agents::get).put(agents::update).delete(agents::revoke),
        )
        .route("/agents/{id}/heartbeat", post(agents::heartbeat))
        .route("/agents/{id}/task-stream", get(agents::task_stream))
        .route("/targets", get(targets::list).post(targets::create))
        .route(
            "/targets/{id}",
            get(targets::get)
                .put(targets::update)
                .delete(targets::delete),
        )
        .route(
            "/environments/{name}/target-groups",
            get(target_groups::list).post(target_groups::create),
        )
        .route(
            "/target-groups/{id}",
            get(target_groups::get)
                .put(target_groups::update)
                .delete(target_groups::delete),
        )
        .route("/targets/{id}/health-check", post(targets::health_check))
        .route("/targets/{id}/sticker", get(targets::sticker))
        .route("/targets/{id}/drift", get(targets::drift))
        .route(
            "/environments",
            get(environments::list).post(environment_admin::create),
        )
        .route(
            "/environments/{name}",
            get(environments::get)
                .put(environment_admin::update)
                .delete(environment_admin::delete),
        )
        .route("/environments/{name}/status", get(environments::status))
        .route("/environments/{name}/lock", post(environments::lock))
        .route("/environments/{name}/unlock", post(environments::unlock))
        .route("/environments/{name}/health", get(environments::health))
        .route(
            "/environments/{name}/config",
            get(environments::config).put(environments::set_config),
        )
        .route(
            "/environments/{name}/variables",
            get(variables::environment_variables).put(variables::set_environment_variables),
        )
        .route("/environments/{name}/metrics", get(environments::metrics))
        .route(
            "/environments/{name}/deployments",
            get(environments::deployments),
        )
        .route(
            "/environments/{name}/limits",
            get(environments::limits).put(environments::set_limits),
        )
        .route(
            "/environments/{name}/freeze-windows",
            get(environments::freeze_windows).post(environments::add_freeze_window),
        )
        .route(
            "/environments/{name}/freeze-windows/{window}",
            axum::routing::delete(environments::delete_freeze_window),
        )
        .route("/metrics", get(system::metrics))
        .route("/users", get(users::list).post(users::create))
        .route(
            "/users/{username}",
            get(users::get).put(users::update).delete(users::delete),
        )
        .route("/users/{username}/password", post(users::set_password))
        .route("/roles", get(users::roles))
        .route("/api-keys", get(api_keys::list).post(api_keys::create))
        .route("/api-keys/{id}", axum::routing::delete(api_keys::revoke))
        .route("/audit", get(audit::list))
        .route(
            "/workspaces",
            get(workspaces::list).post(workspaces::create),
        )
        .route(
            "/workspaces/{name}",
            get(workspaces::get)
                .put(workspaces::update)
                .delete(workspaces::delete),
        )
        .route("/projects", get(projects::list).post(projects::create))
        .route(
            "/projects/{name}",
            get(projects::get)
                .put(projects::update)
                .delete(projects::delete),
        )
        .route("/openapi.json", get(openapi::document))
        .route("/health", get(system::health))
        .route("/auth/token", post(auth::token))
        .route("/auth/login", post(auth::login))
        .route("/auth/refresh", post(auth::refresh))
        .route("/auth/logout", post(auth::logout))
        .route("/auth/me", get(auth::me))
        .route("/auth/keys/rotate", post(auth::rotate))
        .route_layer(middleware::from_fn_with_state(state.clone(), gate::gate))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    Router::new()
        .nest("/api/v1", api)
        .route("/", get(system::index))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(extract::MAX_BODY_BYTES))
        .layer(middleware::from_fn(request_id))
        .with_state(state)
}

/// Gives every request an id, visible in error bodies and in the `X-Request-Id` header.
async fn request_id(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| {
            let mut b = [0u8; 8];
            let _ = getrandom::getrandom(&mut b);
            format!("req_{}", hex::encode(b))
        });
    let mut response = REQUEST_ID.scope(id.clone(), next.run(req)).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "no such route; the API reference is at /api/v1/openapi.json",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        "method not allowed on this route",
    )
}

/// Path parameters; a value that cannot be decoded names nothing that exists: 404.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| Params(t))
            .map_err(|e| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "NOT_FOUND",
                    format!("no such resource ({e})"),
                )
            })
    }
}
