//! API keys (seed 003's `X-API-Key`): made by a user for their workspace with at most their own
//! roles, shown once, stored hashed, listed by prefix, revoked by id.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use fraisier_model::access::{Denial, Permission};
use fraisier_store::{ApiKey, NewApiKey, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::JsonBody;
use super::gate::{AuditNote, Caller};
use super::views::{ts, ts_opt};
use super::{AppState, Params};
use crate::auth::new_api_key;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\x00-\x1f\x7f]*\S[^\x00-\x1f\x7f]*$"
    )]
    pub name: String,
    /// Default: the caller's roles. Never more than the caller holds.
    pub roles: Option<Vec<String>>,
    /// RFC 3339, in the future; default: never.
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct KeyView {
    /// `key_1`
    pub id: String,
    pub name: String,
    /// The key's first characters, to recognize it by.
    pub prefix: String,
    pub username: String,
    pub roles: Vec<String>,
    /// active | expired | revoked
    pub status: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub view: KeyView,
    /// The key itself: shown this once, never again.
    pub key: String,
}

#[derive(Serialize, ToSchema)]
pub struct KeyList {
    pub api_keys: Vec<KeyView>,
}

fn key_id(id: i64) -> String {
    format!("key_{id}")
}

fn view(k: &ApiKey) -> KeyView {
    let now = Utc::now();
    let status = if k.revoked_at.is_some() {
        "revoked"
    } else if k.expires_at.is_some_and(|t| t <= now) {
        "expired"
    } else {
        "active"
    };
    KeyView {
        id: key_id(k.id),
        name: k.name.clone(),
        prefix: k.prefix.clone(),
        username: k.username.clone(),
        roles: k.roles.clone(),
        status: status.into(),
        created_at: ts(k.created_at),
        expires_at: ts_opt(k.expires_at),
        last_used_at: ts_opt(k.last_used_at),
        revoked_at: ts_opt(k.revoked_at),
    }
}

fn key_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "API_KEY_NOT_FOUND",
        format!("API key {id} not found"),
    )
    .with_details(json!({ "id": id }))
}

/// Whether the caller sees every key of the workspace, or only their own.
fn manages_all(state: &AppState, who: &Caller) -> bool {
    state
        .roles
        .judge(&who.roles, Permission::UserUpdate, None)
        .is_ok()
}

#[utoipa::path(post, path = "/api/v1/api-keys", tag = "users", request_body = NewKey,
    responses((status = 201, body = CreatedKey, headers(("Location" = String)),
                  links(("RevokeKey" = (operation_id = "revoke_api_key", parameters(("id" = "$response.body#/id")))))),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody, description = "roles beyond the caller's"), (status = 413, body = ErrorBody),
              (status = 422, body = ErrorBody, description = "UNKNOWN_ROLE, or expires_at in the past"), (status = 429, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    who: Caller,
    JsonBody(body): JsonBody<NewKey>,
) -> Result<Response, ApiError> {
    let name = body.name.trim();
    if name.is_empty()
        || name.chars().count() > 64
        || name.chars().any(|c| c < ' ' || c == '\u{7f}')
    {
        return Err(ApiError::invalid(
            "name",
            "name must be 1 to 64 printable characters",
        ));
    }
    let roles = body.roles.unwrap_or_else(|| who.roles.clone());
    super::users::check_roles(&state, &roles)?;
    if !state.roles.within(&roles, &who.roles) {
        return Err(ApiError::denied(&Denial::Permission {
            permission: Permission::UserUpdate,
        })
        .with_details(json!({ "roles": roles, "held": who.roles, "reason": "a key cannot hold more than its maker" })));
    }
    let expires_at = match &body.expires_at {
        None => None,
        Some(t) => {
            let t = DateTime::parse_from_rfc3339(t)
                .map_err(|_| {
                    ApiError::invalid(
                        "expires_at",
                        format!("expires_at must be an RFC 3339 time such as 2027-01-01T00:00:00Z, got {t:?}"),
                    )
                })?
                .with_timezone(&Utc);
            if t <= Utc::now() {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "INVALID_PARAMETERS",
                    "expires_at must be in the future",
                )
                .with_details(json!({ "field": "expires_at" })));
            }
            Some(t)
        }
    };
    let (key, prefix, key_hash) = new_api_key();
    let made = state
        .engine
        .store()
        .create_api_key(&NewApiKey {
            workspace: who.workspace.clone(),
            user_id: who.user_id,
            name: name.to_string(),
            prefix,
            key_hash,
            roles,
            expires_at,
        })
        .await?;
    let id = key_id(made.id);
    let mut r = (
        StatusCode::CREATED,
        Json(CreatedKey {
            view: view(&made),
            key,
        }),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/api-keys/{id}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.extensions_mut().insert(AuditNote {
        resource: Some(id),
        ..AuditNote::default()
    });
    Ok(r)
}

#[utoipa::path(get, path = "/api/v1/api-keys", tag = "users",
    responses((status = 200, body = KeyList), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn list(State(state): State<AppState>, who: Caller) -> Result<Json<KeyList>, ApiError> {
    let user = (!manages_all(&state, &who)).then_some(who.user_id);
    let keys = state.engine.store().api_keys(&who.workspace, user).await?;
    Ok(Json(KeyList {
        api_keys: keys.iter().map(view).collect(),
    }))
}

#[utoipa::path(delete, path = "/api/v1/api-keys/{id}", tag = "users", operation_id = "revoke_api_key",
    params(("id" = String, Path, description = "key_1")),
    responses((status = 200, body = KeyView, description = "revoked"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn revoke(
    State(state): State<AppState>,
    who: Caller,
    Params(id): Params<String>,
) -> Result<Response, ApiError> {
    let n: i64 = id
        .strip_prefix("key_")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| key_not_found(&id))?;
    let store = state.engine.store();
    let key = match store.api_key(&who.workspace, n).await {
        Ok(k) => k,
        Err(StoreError::NotFound) => return Err(key_not_found(&id)),
        Err(e) => return Err(e.into()),
    };
    // Someone else's key is not there for a caller who cannot manage users.
    if key.user_id != who.user_id && !manages_all(&state, &who) {
        return Err(key_not_found(&id));
    }
    let key = store.revoke_api_key(&who.workspace, n).await?;
    let mut r = Json(view(&key)).into_response();
    r.extensions_mut().insert(AuditNote {
        resource: Some(id),
        ..AuditNote::default()
    });
    Ok(r)
}
