//! Agents (seed 002): join tokens an admin makes, the registration an agent makes with one,
//! its heartbeats, and the operators' view and changes (labels, draining, revocation).
//!
//! A join token and an agent's credential are shown once and kept only as digests. An agent's
//! credential opens the agent routes (its own heartbeat, artifact blobs) and nothing else.

use std::collections::BTreeMap;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use fraisier_model::agent::{
    labels_problem, name_problem, AgentStatus, Heartbeat, HeartbeatAck, HostFacts, Labels,
    Membership, Registration,
};
use fraisier_model::Millis;
use fraisier_store::{Agent, NewAgent, NewJoinToken, Refusal, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::{JsonBody, OptionalBody, QueryMap};
use super::gate::{AuditNote, Caller, Credential, SourceAddress};
use super::views::{ts, ts_opt};
use super::{AppState, Params};
use crate::auth::{api_key_hash, random_hex};
use crate::limits::Bucket;

/// Join tokens live at most this long.
const MAX_JOIN_TTL: Millis = Millis::from_secs(7 * 24 * 3600);
const DEFAULT_JOIN_TTL: Millis = Millis::from_secs(3600);
const MAX_JOIN_USES: u32 = 1000;

/// An agent as operators see it.
#[derive(Serialize, ToSchema)]
pub struct AgentView {
    /// `agt_…`
    pub id: String,
    pub name: String,
    /// The agent `fraisier serve` runs on its own host, shared by every workspace.
    pub local: bool,
    pub status: AgentStatus,
    /// An operator asked that nothing new be placed there (it stays so while offline).
    pub draining: bool,
    pub labels: BTreeMap<String, String>,
    pub version: String,
    pub capabilities: Vec<String>,
    pub host: HostFacts,
    /// Services and instances it keeps, as of its last heartbeat.
    pub services: u32,
    pub instances: u32,
    pub last_heartbeat_at: Option<String>,
    pub registered_at: String,
    pub registered_by: String,
}

#[derive(Serialize, ToSchema)]
pub struct AgentList {
    pub agents: Vec<AgentView>,
    pub total: u64,
}

/// `POST /agents/join-tokens`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenBody {
    /// How long the token may be used: `1h`, `30m`, or seconds (default 1h, at most 7 days).
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "1h")]
    pub expires_in: Option<Value>,
    /// How many agents may register with it (default 1).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000)]
    pub uses: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct JoinTokenView {
    /// Shown this once; the server keeps only its digest.
    pub token: String,
    pub expires_at: String,
    pub uses: u32,
    pub workspace: String,
}

/// `PUT /agents/{id}`: what an operator may change.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentUpdate {
    /// Replaces every label.
    #[serde(default)]
    #[schema(schema_with = fraisier_model::agent::optional_labels_schema)]
    pub labels: Option<BTreeMap<String, String>>,
    /// `draining` (place nothing new there) or `online` (open it again); `offline` is
    /// observed, never set.
    #[serde(default)]
    pub status: Option<Intent>,
}

/// What an operator may ask of an agent.
#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Intent {
    Online,
    Draining,
}

fn agent_id(id: i64) -> String {
    format!("agt_{id}")
}

fn view(a: &Agent, offline_after: Millis) -> AgentView {
    AgentView {
        id: agent_id(a.id),
        name: a.name.clone(),
        local: a.is_local(),
        status: a.status(Utc::now(), offline_after),
        draining: a.draining,
        labels: a.labels.clone(),
        version: a.version.clone(),
        capabilities: a.capabilities.clone(),
        host: a.host.clone(),
        services: a.services,
        instances: a.instances,
        last_heartbeat_at: ts_opt(a.last_heartbeat_at),
        registered_at: ts(a.registered_at),
        registered_by: a.registered_by.clone(),
    }
}

fn offline_after(state: &AppState) -> Millis {
    state.config().server.agent_offline_after
}

fn noted(mut r: Response, id: i64) -> Response {
    r.extensions_mut().insert(AuditNote {
        resource: Some(format!("agent:{}", agent_id(id))),
        ..AuditNote::default()
    });
    r
}

fn not_found(agent: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "AGENT_NOT_FOUND",
        format!("no agent {agent:?} in this workspace (see GET /api/v1/agents)"),
    )
}

/// `agt_…` or a name, among the agents the caller's workspace sees.
async fn find(state: &AppState, who: &Caller, agent: &str) -> Result<Agent, ApiError> {
    match state
        .engine
        .store()
        .agent_by_ref(&who.workspace, agent)
        .await
    {
        Err(StoreError::NotFound) => Err(not_found(agent)),
        r => Ok(r?),
    }
}

/// The server's own agent is changed from the default workspace only: it serves them all.
fn may_change(who: &Caller, a: &Agent) -> Result<(), ApiError> {
    if a.is_local() && who.workspace != fraisier_store::DEFAULT_TENANT {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "the local agent serves every workspace; change it from the default workspace",
        ));
    }
    Ok(())
}

fn check_heartbeat(hb: &Heartbeat) -> Result<(), ApiError> {
    let long = |field: &str, v: &str, max: usize| {
        (v.len() > max).then(|| ApiError::invalid(field, format!("{field} is longer than {max}")))
    };
    if let Some(e) = long("version", &hb.version, 64)
        .or_else(|| long("host.hostname", &hb.host.hostname, 255))
        .or_else(|| long("host.os", &hb.host.os, 64))
        .or_else(|| long("host.arch", &hb.host.arch, 64))
    {
        return Err(e);
    }
    if hb.capabilities.len() > 32 || hb.capabilities.iter().any(|c| c.len() > 64) {
        return Err(ApiError::invalid(
            "capabilities",
            "at most 32 capabilities of at most 64 characters",
        ));
    }
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/agents/join-tokens", tag = "agents",
    request_body(content = Option<JoinTokenBody>),
    responses((status = 201, body = JoinTokenView), (status = 400, body = ErrorBody)))]
pub async fn create_join_token(
    State(state): State<AppState>,
    who: Caller,
    OptionalBody(body): OptionalBody<JoinTokenBody>,
) -> Result<Response, ApiError> {
    let ttl = match &body.expires_in {
        None | Some(Value::Null) => DEFAULT_JOIN_TTL,
        Some(v) => Millis::from_json(v).map_err(|e| ApiError::invalid("expires_in", e))?,
    };
    if ttl.0 < 1000 || ttl > MAX_JOIN_TTL {
        return Err(ApiError::invalid(
            "expires_in",
            "expires_in must be between 1s and 7 days",
        ));
    }
    let uses = body.uses.unwrap_or(1);
    if !(1..=MAX_JOIN_USES).contains(&uses) {
        return Err(ApiError::invalid(
            "uses",
            format!("uses must be between 1 and {MAX_JOIN_USES}"),
        ));
    }
    let token = format!("fjt_{}", random_hex(24));
    let expires_at =
        Utc::now() + chrono::Duration::milliseconds(i64::try_from(ttl.0).unwrap_or(i64::MAX / 2));
    let made = state
        .engine
        .store()
        .create_join_token(&NewJoinToken {
            workspace: who.workspace.clone(),
            token_hash: api_key_hash(&token),
            uses,
            expires_at,
            created_by: who.username.clone(),
        })
        .await?;
    let mut r = (
        StatusCode::CREATED,
        Json(JoinTokenView {
            token,
            expires_at: ts(made.expires_at),
            uses: made.uses_left,
            workspace: made.workspace,
        }),
    )
        .into_response();
    r.extensions_mut().insert(AuditNote {
        resource: Some(format!("join-token:{}", made.id)),
        ..AuditNote::default()
    });
    Ok(r)
}

#[utoipa::path(post, path = "/api/v1/agents/register", tag = "agents",
    request_body = Registration, security(()),
    responses((status = 201, body = Membership, headers(("Location" = String, description = "the agent"))),
              (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody, description = "INVALID_JOIN_TOKEN: unknown, expired or used up"),
              (status = 409, body = ErrorBody, description = "AGENT_NAME_TAKEN"),
              (status = 429, body = ErrorBody)))]
pub async fn register(
    State(state): State<AppState>,
    Extension(source): Extension<SourceAddress>,
    JsonBody(body): JsonBody<Registration>,
) -> Result<Response, ApiError> {
    let now = Utc::now();
    // Guessing a join token is guessing a password: the same limit per address.
    if let Some(v) = state
        .limiter
        .take(&source.0, &[Bucket::LoginSource], now.timestamp_millis())
        .filter(|v| !v.allowed)
    {
        return Err(ApiError::rate_limited(&v, now));
    }
    if let Some(p) = name_problem(&body.name) {
        return Err(ApiError::invalid("name", format!("agent name: {p}")));
    }
    if let Some(p) = labels_problem(&body.labels) {
        return Err(ApiError::invalid("labels", p));
    }
    let heartbeat = body.heartbeat();
    check_heartbeat(&heartbeat)?;
    if body.join_token.is_empty() || body.join_token.len() > 200 {
        return Err(ApiError::invalid("join_token", "join_token is missing"));
    }
    let credential = format!("fag_{}", random_hex(32));
    let new = NewAgent {
        name: body.name.clone(),
        labels: body.labels.clone(),
        credential_hash: api_key_hash(&credential),
        heartbeat,
    };
    let agent = match state
        .engine
        .store()
        .register_agent(&api_key_hash(&body.join_token), &new)
        .await?
    {
        Ok(a) => a,
        Err(Refusal::InvalidJoinToken) => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "INVALID_JOIN_TOKEN",
                "the join token is unknown, expired or used up; make a new one with `fraisier agent join-token`",
            ))
        }
        Err(Refusal::NameTaken { workspace }) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "AGENT_NAME_TAKEN",
                format!(
                    "workspace {workspace} already has an agent named {}; pick another --name, or revoke that one first",
                    body.name
                ),
            )
            .with_details(json!({ "field": "name" })))
        }
    };
    state.limiter.refund(&source.0, Bucket::LoginSource);
    let id = agent_id(agent.id);
    let membership = Membership {
        id: id.clone(),
        name: agent.name.clone(),
        workspace: agent.workspace.clone(),
        credential,
        heartbeat_interval_ms: state.config().server.agent_heartbeat_interval.0,
    };
    let mut r = (StatusCode::CREATED, Json(membership)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/agents/{id}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.extensions_mut().insert(AuditNote {
        resource: Some(format!("agent:{id}")),
        actor: Some(format!("agent:{}", agent.name)),
        workspace: Some(agent.workspace.clone()),
        ..AuditNote::default()
    });
    Ok(r)
}

#[utoipa::path(post, path = "/api/v1/agents/{agent_id}/heartbeat", tag = "agents",
    params(("agent_id" = String, Path, description = "agt_…")), request_body = Heartbeat,
    security(("agent" = [])),
    responses((status = 200, body = HeartbeatAck), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody, description = "another agent's id")))]
pub async fn heartbeat(
    State(state): State<AppState>,
    who: Caller,
    Params(agent): Params<String>,
    JsonBody(body): JsonBody<Heartbeat>,
) -> Result<Json<HeartbeatAck>, ApiError> {
    let Credential::Agent { id, .. } = who.credential else {
        return Err(ApiError::internal(
            "the gate let a non-agent reach a heartbeat",
        ));
    };
    if agent != agent_id(id) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "an agent reports for itself only",
        ));
    }
    check_heartbeat(&body)?;
    let store = state.engine.store();
    let before = store.agent(&who.workspace, id).await?;
    let a = store.record_heartbeat(id, &body).await?;
    let was = before.status(Utc::now(), offline_after(&state));
    if was == AgentStatus::Offline && !a.is_local() {
        // Back from offline (its stream may have survived the cut): it is handed its share
        // of everything it is part of, so it stops what was moved away while it was gone.
        let (engine, workspace, name) =
            (state.engine.clone(), who.workspace.clone(), a.name.clone());
        tokio::spawn(async move { engine.fleet().rejoined(&workspace, &name).await });
    }
    Ok(Json(HeartbeatAck {
        status: a.status(Utc::now(), offline_after(&state)),
        heartbeat_interval_ms: state.config().server.agent_heartbeat_interval.0,
    }))
}

/// `ws://…/agents/{id}/task-stream`: the agent's end of its task stream.
#[utoipa::path(get, path = "/api/v1/agents/{agent_id}/task-stream", tag = "agents",
    params(("agent_id" = String, Path, description = "agt_…")), security(("agent" = [])),
    responses((status = 101, description = "WebSocket: the server's asks down ({type: apply|observe|exec, id, …}), the agent's answers up ({id, ok} or {id, error})"),
              (status = 400, body = ErrorBody, description = "not a WebSocket request"),
              (status = 403, body = ErrorBody, description = "another agent's id")))]
pub async fn task_stream(
    State(state): State<AppState>,
    who: Caller,
    Params(agent): Params<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Credential::Agent { id, .. } = who.credential else {
        return Err(ApiError::internal(
            "the gate let a non-agent reach a task stream",
        ));
    };
    if agent != agent_id(id) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "an agent opens its own task stream only",
        ));
    }
    let ws = ws.map_err(|e| {
        ApiError::invalid("upgrade", format!("this endpoint speaks WebSocket: {e}"))
    })?;
    let streams = state.streams.clone();
    let name = who.username.trim_start_matches("agent:").to_string();
    let (engine, workspace, rejoining) =
        (state.engine.clone(), who.workspace.clone(), name.clone());
    // Once the stream is up, the agent gets its share of every desired state it is part of.
    let on_open = move || {
        tokio::spawn(async move { engine.fleet().rejoined(&workspace, &rejoining).await });
    };
    Ok(ws.on_upgrade(move |socket| streams.serve(id, name, socket, on_open)))
}

#[utoipa::path(get, path = "/api/v1/agents", tag = "agents",
    params(("status" = Option<AgentStatus>, Query, description = "only agents in this status")),
    responses((status = 200, body = AgentList), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    who: Caller,
    q: QueryMap,
) -> Result<Json<AgentList>, ApiError> {
    let status = match q.get("status") {
        None => None,
        Some(s) => Some(AgentStatus::parse(s).ok_or_else(|| {
            ApiError::invalid(
                "status",
                format!("status must be one of online, offline, draining, got {s:?}"),
            )
        })?),
    };
    let agents: Vec<AgentView> = state
        .engine
        .store()
        .agents(&who.workspace)
        .await?
        .iter()
        .map(|a| view(a, offline_after(&state)))
        .filter(|v| status.is_none_or(|s| v.status == s))
        .collect();
    Ok(Json(AgentList {
        total: agents.len() as u64,
        agents,
    }))
}

#[utoipa::path(get, path = "/api/v1/agents/{agent_id}", tag = "agents",
    params(("agent_id" = String, Path, description = "agt_… or the agent's name")),
    responses((status = 200, body = AgentView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    who: Caller,
    Params(agent): Params<String>,
) -> Result<Json<AgentView>, ApiError> {
    let a = find(&state, &who, &agent).await?;
    Ok(Json(view(&a, offline_after(&state))))
}

#[utoipa::path(put, path = "/api/v1/agents/{agent_id}", tag = "agents",
    params(("agent_id" = String, Path, description = "agt_… or the agent's name")), request_body(content = Option<AgentUpdate>),
    responses((status = 200, body = AgentView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    who: Caller,
    Params(agent): Params<String>,
    OptionalBody(body): OptionalBody<AgentUpdate>,
) -> Result<Response, ApiError> {
    let a = find(&state, &who, &agent).await?;
    let labels: Option<Labels> = body.labels;
    if let Some(p) = labels.as_ref().and_then(labels_problem) {
        return Err(ApiError::invalid("labels", p));
    }
    let draining = body.status.map(|s| matches!(s, Intent::Draining));
    may_change(&who, &a)?;
    let a = state
        .engine
        .store()
        .update_agent(a.id, labels.as_ref(), draining)
        .await?;
    Ok(noted(
        Json(view(&a, offline_after(&state))).into_response(),
        a.id,
    ))
}

#[utoipa::path(delete, path = "/api/v1/agents/{agent_id}", tag = "agents",
    params(("agent_id" = String, Path, description = "agt_… or the agent's name")),
    responses((status = 200, body = Object, description = "{\"deleted\": true}; its credential is refused from now on"),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "AGENT_IS_LOCAL: the server's own agent")))]
pub async fn revoke(
    State(state): State<AppState>,
    who: Caller,
    Params(agent): Params<String>,
) -> Result<Response, ApiError> {
    let a = find(&state, &who, &agent).await?;
    if a.is_local() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "AGENT_IS_LOCAL",
            "the local agent is part of the server; stop the server (and `fraisier agent stop`) instead",
        ));
    }
    if !state
        .engine
        .store()
        .revoke_agent(a.id, &who.username)
        .await?
    {
        return Err(not_found(&agent));
    }
    state.streams.cut(a.id);
    Ok(noted(
        Json(json!({ "deleted": true, "id": agent_id(a.id) })).into_response(),
        a.id,
    ))
}
