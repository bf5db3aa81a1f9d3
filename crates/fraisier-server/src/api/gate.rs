//! The gate every API request passes: what its route needs (the table in `api::routes`), who
//! is calling (a bearer token or an API key, checked against the store on every request), how
//! often (rate limits), whether the route's permission is held, and the audit record of every
//! mutating or refused request. Handlers receive a [`Caller`] and never look at credentials.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, OriginalUri, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use fraisier_model::access::Permission;
use fraisier_model::rate::Verdict;
use fraisier_store::{AuditOutcome, NewAuditRecord, StoreError};

use super::error::{ApiError, ErrorCode, REQUEST_ID};
use super::routes::{self, Need};
use super::AppState;
use crate::auth::api_key_hash;
use crate::limits::Bucket;

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub user_id: i64,
    pub username: String,
    /// The workspace the credential is for; everything the request sees is in it.
    pub workspace: String,
    /// Roles in that workspace now (for a key: the key's, as far as its maker still holds them).
    pub roles: Vec<String>,
    pub credential: Credential,
}

#[derive(Clone, Debug)]
pub enum Credential {
    Token {
        jti: String,
        expires_at: DateTime<Utc>,
    },
    ApiKey {
        id: i64,
        name: String,
    },
    /// An agent's own credential (`X-Agent-Token`): it may report for itself and read blobs,
    /// nothing else. `local`: the server's own agent, which serves every workspace.
    Agent {
        id: i64,
        local: bool,
    },
}

/// The one route outside the agent routes an agent's credential opens: artifact bytes by
/// digest (the handler keeps an agent of a workspace to that workspace's).
const AGENT_BLOBS: &str = "/blobs/{digest}";

/// What a handler tells the audit trail about its request: what it acted on, and who, for the
/// public sign-in routes where the gate knows no caller.
#[derive(Clone, Debug, Default)]
pub struct AuditNote {
    pub resource: Option<String>,
    pub service: Option<String>,
    pub actor: Option<String>,
    pub workspace: Option<String>,
}

/// `last_used_at` of an API key is written at most this often.
const KEY_TOUCH_INTERVAL_SECS: i64 = 60;

// === impl Caller ===

impl Caller {
    /// The identity rate limits count against.
    fn limit_key(&self) -> String {
        match &self.credential {
            Credential::Token { .. } => format!("user:{}", self.user_id),
            Credential::ApiKey { id, .. } => format!("key:{id}"),
            Credential::Agent { id, .. } => format!("agent:{id}"),
        }
    }

    fn actor_kind(&self) -> &'static str {
        match self.credential {
            Credential::Token { .. } => "user",
            Credential::ApiKey { .. } => "api_key",
            Credential::Agent { .. } => "agent",
        }
    }

    fn key_name(&self) -> Option<String> {
        match &self.credential {
            Credential::ApiKey { name, .. } => Some(name.clone()),
            Credential::Token { .. } | Credential::Agent { .. } => None,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::internal("a handler asked for the caller on a public route"))
    }
}

/// The middleware. Runs on matched routes only, so the route's pattern is known.
pub async fn gate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let pattern = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    // The full path: inside the nested router the URI has lost `/api/v1`.
    let path = req
        .extensions()
        .get::<OriginalUri>()
        .map_or_else(|| req.uri().path().to_string(), |u| u.path().to_string());
    let Some(route) = routes::find(&method, &pattern) else {
        // Another method of a declared route: the router answers 405 with `Allow`.
        if routes::declared(&pattern) {
            return next.run(req).await;
        }
        return ApiError::internal(format!("route {method} {pattern} declares no permission"))
            .into_response();
    };
    let mut audit = NewAuditRecord {
        workspace: fraisier_store::DEFAULT_TENANT.to_string(),
        actor_kind: "anonymous".into(),
        action: route.action.to_string(),
        resource: path.clone(),
        method: method.to_string(),
        path: path.clone(),
        request_id: REQUEST_ID.try_with(|id| id.clone()).unwrap_or_default(),
        source: source.clone(),
        ..NewAuditRecord::default()
    };
    let mutating = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);

    if matches!(route.need, Need::Public | Need::Signed) {
        req.extensions_mut().insert(SourceAddress(source));
        let response = next.run(req).await;
        if mutating {
            let note = response.extensions().get::<AuditNote>().cloned();
            record(&state, audit, note, &response).await;
        }
        return response;
    }

    let caller = match authenticate(&state, req.headers()).await {
        Ok(c) => c,
        Err(e) => {
            let response = e.into_response();
            record(&state, audit, None, &response).await;
            return response;
        }
    };
    audit.workspace = caller.workspace.clone();
    audit.actor = caller.username.clone();
    audit.actor_kind = caller.actor_kind().into();
    audit.credential = caller.key_name();

    let class = if mutating {
        Bucket::Write
    } else {
        Bucket::Read
    };
    let now = Utc::now();
    let agent = matches!(caller.credential, Credential::Agent { .. });
    // Agents are not people: their heartbeats and fetches follow the server's own settings
    // (a heartbeat every 5 s is 720 writes an hour), so the people's limits do not apply.
    let verdict = (!agent)
        .then(|| {
            state.limiter.take(
                &caller.limit_key(),
                &[Bucket::Authenticated, class],
                now.timestamp_millis(),
            )
        })
        .flatten();
    if let Some(v) = verdict.filter(|v| !v.allowed) {
        let mut response = ApiError::rate_limited(&v, now).into_response();
        rate_headers(response.headers_mut(), &v, now);
        record(&state, audit, None, &response).await;
        return response;
    }

    let refused = match (agent, route.need) {
        (true, Need::Agent) => false,
        (true, _) => !(method == Method::GET && route.path == AGENT_BLOBS),
        (false, Need::Agent) => true,
        (false, _) => false,
    };
    if refused {
        let message = if agent {
            "an agent's credential reports for its agent and fetches artifacts, nothing else"
        } else {
            "this route is for agents' own credentials (X-Agent-Token)"
        };
        let response =
            ApiError::new(StatusCode::FORBIDDEN, "PERMISSION_DENIED", message).into_response();
        record(&state, audit, None, &response).await;
        return response;
    }
    if let (Need::Permission(p), false) = (route.need, agent) {
        if let Err(denial) = state.roles.judge(&caller.roles, p, None) {
            let response = ApiError::denied(&denial).into_response();
            record(&state, audit, None, &response).await;
            return response;
        }
    }

    req.extensions_mut().insert(caller);
    req.extensions_mut().insert(SourceAddress(source));
    let mut response = next.run(req).await;
    if let Some(v) = verdict {
        rate_headers(response.headers_mut(), &v, now);
    }
    let refused = matches!(response.status().as_u16(), 401 | 403 | 429);
    if mutating || refused {
        let note = response.extensions().get::<AuditNote>().cloned();
        record(&state, audit, note, &response).await;
    }
    response
}

/// The caller's address, for handlers that limit by it (sign-in).
#[derive(Clone, Debug)]
pub struct SourceAddress(pub String);

fn rate_headers(h: &mut HeaderMap, v: &Verdict, now: DateTime<Utc>) {
    let reset_secs = v.reset_ms.div_euclid(1000);
    h.insert("x-ratelimit-limit", HeaderValue::from(v.limit));
    h.insert("x-ratelimit-remaining", HeaderValue::from(v.remaining));
    h.insert("x-ratelimit-reset", HeaderValue::from(reset_secs));
    if !v.allowed {
        h.insert("retry-after", HeaderValue::from(retry_after(v, now)));
    }
}

/// Whole seconds until the window ends, at least 1.
pub fn retry_after(v: &Verdict, now: DateTime<Utc>) -> i64 {
    ((v.reset_ms - now.timestamp_millis()).max(0) + 999)
        .div_euclid(1000)
        .max(1)
}

/// Records a request in the audit trail, once its response is known.
/// (The response is only read here, before the write: a body is not `Sync`, so no reference
/// to it may live across an await.)
fn record<'a>(
    state: &'a AppState,
    audit: NewAuditRecord,
    note: Option<AuditNote>,
    response: &Response,
) -> impl std::future::Future<Output = ()> + Send + 'a {
    let status = response.status();
    let code = response.extensions().get::<ErrorCode>().map(|c| c.0);
    append(state, audit, note, status, code)
}

async fn append(
    state: &AppState,
    mut audit: NewAuditRecord,
    note: Option<AuditNote>,
    status: StatusCode,
    code: Option<&'static str>,
) {
    audit.status = status.as_u16();
    audit.outcome = Some(match status {
        StatusCode::UNAUTHORIZED => AuditOutcome::Unauthenticated,
        StatusCode::FORBIDDEN => AuditOutcome::Denied,
        StatusCode::TOO_MANY_REQUESTS => AuditOutcome::RateLimited,
        s if s.is_success() || s.is_redirection() => AuditOutcome::Success,
        _ => AuditOutcome::Failure,
    });
    audit.detail = code.map(str::to_string);
    if let Some(n) = note {
        if let Some(r) = n.resource {
            audit.resource = r;
        }
        audit.service = n.service;
        if let Some(a) = n.actor {
            audit.actor = a;
        }
        if let Some(w) = n.workspace {
            audit.workspace = w;
        }
    }
    if let Err(e) = state.engine.store().append_audit(&audit).await {
        tracing::error!(error = %e, action = %audit.action, "cannot write the audit record");
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let h = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = h.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Who sent the request: a bearer token or an `X-API-Key`, each checked against the store.
async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    if let Some(presented) = headers.get("x-agent-token") {
        // Credentials carry 256 random bits: looking one up by its digest reveals nothing.
        let digest = crate::auth::api_key_hash(presented.to_str().unwrap_or_default().trim());
        return match state.engine.store().agent_by_credential(&digest).await? {
            Some(a) => {
                let local = a.is_local();
                Ok(Caller {
                    user_id: 0,
                    username: format!("agent:{}", a.name),
                    workspace: if local {
                        fraisier_store::DEFAULT_TENANT.into()
                    } else {
                        a.workspace
                    },
                    roles: Vec::new(),
                    credential: Credential::Agent { id: a.id, local },
                })
            }
            None => Err(ApiError::unauthorized(
                "invalid agent credential (revoked, or never issued by this server)",
            )),
        };
    }
    let key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    // Either credential is enough (the document lists them as alternatives); with both, the
    // token speaks and the key is ignored.
    match (bearer(headers), key) {
        (Some(token), _) => by_token(state, token).await,
        (None, Some(key)) => by_api_key(state, key.trim()).await,
        (None, None) => Err(ApiError::unauthorized(
            "missing credentials: send Authorization: Bearer <token> (get one with `fraisier auth:token` or POST /api/v1/auth/token) or X-API-Key: <key>",
        )),
    }
}

async fn by_token(state: &AppState, token: &str) -> Result<Caller, ApiError> {
    let claims = state
        .keys
        .verify(token)
        .map_err(|_| ApiError::unauthorized("invalid or expired token"))?;
    let user_id: i64 = claims
        .sub
        .parse()
        .map_err(|_| ApiError::unauthorized("invalid token"))?;
    let subject = match state
        .engine
        .store()
        .token_subject(user_id, &claims.tenant_id, &claims.jti)
        .await
    {
        Ok(s) => s,
        Err(StoreError::NotFound) => {
            return Err(ApiError::unauthorized("the token's user no longer exists"))
        }
        Err(e) => return Err(e.into()),
    };
    if subject.revoked {
        return Err(ApiError::unauthorized(
            "this token was revoked (logged out)",
        ));
    }
    if subject.disabled {
        return Err(ApiError::unauthorized("this user is disabled"));
    }
    let roles = subject.roles.ok_or_else(|| {
        ApiError::unauthorized(format!(
            "the user is no longer a member of workspace {}",
            claims.tenant_id
        ))
    })?;
    Ok(Caller {
        user_id,
        username: subject.username,
        workspace: claims.tenant_id,
        roles,
        credential: Credential::Token {
            jti: claims.jti,
            expires_at: DateTime::from_timestamp(claims.exp, 0).unwrap_or_else(Utc::now),
        },
    })
}

async fn by_api_key(state: &AppState, key: &str) -> Result<Caller, ApiError> {
    let invalid = || ApiError::unauthorized("invalid API key");
    if !key.starts_with(crate::auth::API_KEY_PREFIX) || key.len() > 128 {
        return Err(invalid());
    }
    let store = state.engine.store();
    let held = match store.api_key_by_hash(&api_key_hash(key)).await {
        Ok(h) => h,
        Err(StoreError::NotFound) => return Err(invalid()),
        Err(e) => return Err(e.into()),
    };
    let now = Utc::now();
    if held.key.revoked_at.is_some() {
        return Err(ApiError::unauthorized("this API key was revoked"));
    }
    if held.key.expires_at.is_some_and(|t| t <= now) {
        return Err(ApiError::unauthorized("this API key has expired"));
    }
    if held.user_disabled {
        return Err(ApiError::unauthorized(
            "the user of this API key is disabled",
        ));
    }
    let user_roles = held
        .user_roles
        .ok_or_else(|| ApiError::unauthorized("the user of this API key left its workspace"))?;
    // A key never grants more than its maker holds now.
    let roles: Vec<String> = held
        .key
        .roles
        .iter()
        .filter(|r| state.roles.within(std::slice::from_ref(r), &user_roles))
        .cloned()
        .collect();
    if held
        .key
        .last_used_at
        .is_none_or(|t| (now - t).num_seconds() >= KEY_TOUCH_INTERVAL_SECS)
    {
        let (store, id) = (store.clone(), held.key.id);
        tokio::spawn(async move {
            if let Err(e) = store.touch_api_key(id, now).await {
                tracing::warn!(error = %e, "cannot record the use of an API key");
            }
        });
    }
    Ok(Caller {
        user_id: held.key.user_id,
        username: held.key.username,
        workspace: held.key.workspace,
        roles,
        credential: Credential::ApiKey {
            id: held.key.id,
            name: held.key.name,
        },
    })
}

/// The one check of an operation about an environment: the caller's roles there and the
/// environment's `required_roles`. An environment the workspace does not have is not judged
/// here (the engine answers it is not found).
pub fn authorize(
    state: &AppState,
    caller: &Caller,
    permission: Permission,
    environment: &str,
) -> Result<(), ApiError> {
    let live = state.config();
    let Some(env) = live.scope(&caller.workspace).environments.get(environment) else {
        return Ok(());
    };
    state
        .roles
        .judge(&caller.roles, permission, Some(&env.rules(environment)))
        .map_err(|d| ApiError::denied(&d))
}
