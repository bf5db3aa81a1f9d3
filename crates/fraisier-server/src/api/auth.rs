//! Token endpoints: username/password for a token, and renewal of a token.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use fraisier_store::{StoreError, DEFAULT_TENANT};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ApiError;
use super::extract::JsonBody;
use super::AppState;
use crate::auth::verify_password;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// Defaults to the default tenant.
    pub tenant: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: i64,
}

async fn issue(state: &AppState, c: Credentials) -> Result<TokenResponse, ApiError> {
    let tenant = c.tenant.unwrap_or_else(|| DEFAULT_TENANT.to_string());
    let user = match state
        .engine
        .store()
        .user_by_name(&tenant, &c.username)
        .await
    {
        Ok(u) => Some(u),
        Err(StoreError::NotFound) => None,
        Err(e) => return Err(e.into()),
    };
    // Verify even for unknown users so timing does not reveal which names exist.
    let dummy =
        DUMMY_HASH.get_or_init(|| crate::auth::hash_password("not a password").unwrap_or_default());
    let hash = user
        .as_ref()
        .map_or(dummy.as_str(), |u| u.password_hash.as_str());
    let ok = verify_password(&c.password, hash) && user.is_some();
    let user = user
        .filter(|_| ok)
        .ok_or_else(|| ApiError::unauthorized("invalid username or password"))?;
    let (token, ttl) = state
        .keys
        .mint(&user.username, &user.tenant_id, &user.roles);
    Ok(TokenResponse {
        access_token: token,
        token_type: "Bearer".into(),
        expires_in: ttl,
    })
}

static DUMMY_HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();

#[utoipa::path(post, path = "/api/v1/auth/token", tag = "auth", security(()), request_body = Credentials,
    responses((status = 200, body = TokenResponse), (status = 400, body = super::error::ErrorBody), (status = 401, body = super::error::ErrorBody)))]
pub async fn token(
    State(state): State<AppState>,
    JsonBody(c): JsonBody<Credentials>,
) -> Result<Json<TokenResponse>, ApiError> {
    issue(&state, c).await.map(Json)
}

#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", security(()), request_body = Credentials,
    responses((status = 200, body = TokenResponse), (status = 400, body = super::error::ErrorBody), (status = 401, body = super::error::ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    JsonBody(c): JsonBody<Credentials>,
) -> Result<Json<TokenResponse>, ApiError> {
    issue(&state, c).await.map(Json)
}

/// Exchanges a valid (or recently expired) token for a fresh one.
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth",
    responses((status = 200, body = TokenResponse), (status = 401, body = super::error::ErrorBody)))]
pub async fn refresh(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<TokenResponse>, ApiError> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::unauthorized("send the token to renew as Authorization: Bearer <token>")
        })?;
    let claims = state
        .keys
        .verify_for_refresh(token.trim())
        .map_err(|_| ApiError::unauthorized("invalid token"))?;
    // The user must still exist: a deleted user cannot renew.
    state
        .engine
        .store()
        .user_by_name(&claims.tenant_id, &claims.sub)
        .await
        .map_err(|_| ApiError::unauthorized("unknown user"))?;
    let (token, ttl) = state
        .keys
        .mint(&claims.sub, &claims.tenant_id, &claims.roles);
    Ok(Json(TokenResponse {
        access_token: token,
        token_type: "Bearer".into(),
        expires_in: ttl,
    }))
}
