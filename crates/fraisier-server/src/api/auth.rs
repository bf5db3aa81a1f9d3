//! Sign-in and tokens: username/password for a token (limited per user and per address),
//! renewal, logout (revocation), who am I, and rotation of the signing key.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{Duration, Utc};
use fraisier_store::StoreError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::JsonBody;
use super::gate::{AuditNote, Caller, Credential, SourceAddress};
use super::AppState;
use crate::auth::{verify_password, REFRESH_GRACE_SECS};
use crate::limits::Bucket;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// The workspace the token is for; default `default`, or the user's only workspace.
    pub workspace: Option<String>,
    /// Seed 002's word for `workspace`.
    pub tenant: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: i64,
    pub workspace: String,
}

#[derive(Serialize, ToSchema)]
pub struct Me {
    pub username: String,
    pub user_id: i64,
    pub workspace: String,
    pub roles: Vec<String>,
    /// The permission patterns the roles grant (`deployment:*`, `*:read`).
    pub permissions: Vec<String>,
    /// `token` or `api_key`.
    pub credential: String,
    pub expires_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Rotated {
    /// The new signing key's id.
    pub kid: String,
    /// Every key that still verifies tokens, the signing one last.
    pub kids: Vec<String>,
}

async fn issue(state: &AppState, source: &str, c: Credentials) -> Result<Response, ApiError> {
    let limiter = &state.limiter;
    let now = Utc::now();
    for (identity, bucket) in [
        (c.username.as_str(), Bucket::LoginUser),
        (source, Bucket::LoginSource),
    ] {
        if let Some(v) = limiter
            .take(identity, &[bucket], now.timestamp_millis())
            .filter(|v| !v.allowed)
        {
            return Err(ApiError::rate_limited(&v, now));
        }
    }
    let store = state.engine.store();
    let user = match store.user_by_name(&c.username).await {
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
    // Only failed attempts count.
    limiter.refund(&c.username, Bucket::LoginUser);
    limiter.refund(source, Bucket::LoginSource);
    if user.disabled {
        return Err(ApiError::unauthorized(format!(
            "user {} is disabled",
            user.username
        )));
    }
    let memberships = store.memberships(user.id).await?;
    let wanted = c.workspace.or(c.tenant);
    let (workspace, roles) = match wanted {
        Some(w) => memberships
            .into_iter()
            .find(|(name, _)| *name == w)
            .ok_or_else(|| {
                ApiError::unauthorized(format!("{} is no member of workspace {w}", user.username))
            })?,
        None => {
            let default = memberships
                .iter()
                .position(|(name, _)| name == fraisier_store::DEFAULT_TENANT);
            match (default, memberships.len()) {
                (Some(i), _) => memberships[i].clone(),
                (None, 1) => memberships[0].clone(),
                (None, 0) => {
                    return Err(ApiError::unauthorized(format!(
                        "{} is no member of any workspace",
                        user.username
                    )))
                }
                (None, _) => {
                    let names: Vec<&str> = memberships.iter().map(|(n, _)| n.as_str()).collect();
                    return Err(ApiError::invalid(
                        "workspace",
                        format!(
                            "{} belongs to several workspaces ({}): name one in \"workspace\"",
                            user.username,
                            names.join(", ")
                        ),
                    ));
                }
            }
        }
    };
    let (token, _) = state.keys.mint(
        user.id,
        &user.username,
        &workspace,
        &roles,
        state.roles.patterns_of(&roles),
    );
    let body = TokenResponse {
        access_token: token,
        token_type: "Bearer".into(),
        expires_in: state.keys.ttl_secs,
        workspace: workspace.clone(),
    };
    Ok(with_actor(
        Json(body).into_response(),
        &user.username,
        &workspace,
    ))
}

fn with_actor(mut response: Response, username: &str, workspace: &str) -> Response {
    response.extensions_mut().insert(AuditNote {
        resource: Some(format!("user:{username}")),
        actor: Some(username.to_string()),
        workspace: Some(workspace.to_string()),
        service: None,
    });
    response
}

static DUMMY_HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// A failed sign-in is still audited under the name it tried.
async fn sign_in(state: AppState, source: SourceAddress, c: Credentials) -> Response {
    let username = c.username.clone();
    match issue(&state, &source.0, c).await {
        Ok(r) => r,
        Err(e) => {
            let mut r = e.into_response();
            r.extensions_mut().insert(AuditNote {
                resource: Some(format!("user:{username}")),
                actor: Some(username),
                ..AuditNote::default()
            });
            r
        }
    }
}

#[utoipa::path(post, path = "/api/v1/auth/token", tag = "auth", security(()), request_body = Credentials,
    responses((status = 200, body = TokenResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 429, body = ErrorBody, description = "too many failed sign-ins for this user or address")))]
pub async fn token(
    State(state): State<AppState>,
    Extension(source): Extension<SourceAddress>,
    JsonBody(c): JsonBody<Credentials>,
) -> Response {
    sign_in(state, source, c).await
}

#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", security(()), request_body = Credentials,
    responses((status = 200, body = TokenResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    Extension(source): Extension<SourceAddress>,
    JsonBody(c): JsonBody<Credentials>,
) -> Response {
    sign_in(state, source, c).await
}

/// Exchanges a valid (or recently expired) token for a fresh one.
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = TokenResponse), (status = 401, body = ErrorBody)))]
pub async fn refresh(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .ok_or_else(|| {
            ApiError::unauthorized("send the token to renew as Authorization: Bearer <token>")
        })?;
    let claims = state
        .keys
        .verify_for_refresh(token)
        .map_err(|_| ApiError::unauthorized("invalid token"))?;
    let user_id: i64 = claims
        .sub
        .parse()
        .map_err(|_| ApiError::unauthorized("invalid token"))?;
    let subject = state
        .engine
        .store()
        .token_subject(user_id, &claims.tenant_id, &claims.jti)
        .await
        .map_err(|_| ApiError::unauthorized("the token's user no longer exists"))?;
    if subject.revoked || subject.disabled {
        return Err(ApiError::unauthorized(
            "this token was revoked or its user disabled",
        ));
    }
    let roles = subject.roles.ok_or_else(|| {
        ApiError::unauthorized("the user is no longer a member of the token's workspace")
    })?;
    let (token, _) = state.keys.mint(
        user_id,
        &subject.username,
        &claims.tenant_id,
        &roles,
        state.roles.patterns_of(&roles),
    );
    Ok(with_actor(
        Json(TokenResponse {
            access_token: token,
            token_type: "Bearer".into(),
            expires_in: state.keys.ttl_secs,
            workspace: claims.tenant_id.clone(),
        })
        .into_response(),
        &subject.username,
        &claims.tenant_id,
    ))
}

/// Revokes the token the request carries; it cannot be renewed either.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    responses((status = 204, description = "the token is revoked"), (status = 400, body = ErrorBody, description = "the request used an API key"),
              (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn logout(State(state): State<AppState>, who: Caller) -> Result<StatusCode, ApiError> {
    let Credential::Token { jti, expires_at } = &who.credential else {
        return Err(ApiError::invalid(
            "X-API-Key",
            "logout ends a token; revoke an API key with DELETE /api/v1/api-keys/{id}",
        ));
    };
    state
        .engine
        .store()
        .revoke_token(jti, *expires_at + Duration::seconds(REFRESH_GRACE_SECS))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth",
    responses((status = 200, body = Me), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn me(State(state): State<AppState>, who: Caller) -> Json<Me> {
    let (credential, expires_at) = match &who.credential {
        Credential::Token { expires_at, .. } => ("token", Some(super::views::ts(*expires_at))),
        Credential::ApiKey { .. } => ("api_key", None),
        // The gate lets an agent's credential reach only the blobs.
        Credential::Agent { .. } => ("agent", None),
    };
    Json(Me {
        username: who.username.clone(),
        user_id: who.user_id,
        workspace: who.workspace.clone(),
        permissions: state.roles.patterns_of(&who.roles),
        roles: who.roles,
        credential: credential.into(),
        expires_at,
    })
}

/// A new signing key; tokens signed with the old ones keep working until they expire.
#[utoipa::path(post, path = "/api/v1/auth/keys/rotate", tag = "auth",
    responses((status = 200, body = Rotated), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn rotate(
    State(state): State<AppState>,
    _who: Caller,
) -> Result<Json<Rotated>, ApiError> {
    let kid = state.keys.rotate().map_err(ApiError::internal)?;
    Ok(Json(Rotated {
        kid,
        kids: state.keys.kids(),
    }))
}
