//! Targets (seed 004): where fraises run. Every agent is a target of type `fraisier_agent`
//! (it joins with a token rather than being created); targets of seed 004's other types are
//! described as data — created, listed, grouped — and refused with 422
//! `PROVIDER_UNSUPPORTED` when a deploy would need them, until a provider for them exists.
//! Here also: a health check that asks an agent now, and its version sticker (what runs
//! there, by digest, since when, by whom).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use fraisier_engine::ProviderError;
use fraisier_model::access::Permission;
use fraisier_model::agent::{labels_problem, matches, AgentStatus, Labels};
use fraisier_model::run::RunStatus;
use fraisier_model::target::{connection_problem, directory_problem, Connection, TargetType};
use fraisier_store::{
    parse_target_group_id, Agent, NewTarget, StoreError, Target, TargetChange, TargetGroup,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::{JsonBody, OptionalBody, QueryMap};
use super::gate::{authorize, AuditNote, Caller};
use super::views::{ts, ts_opt};
use super::{AppState, Params};

/// The `labels` filter: `key=value,…`.
#[derive(ToSchema)]
#[schema(
    value_type = String,
    pattern = r"^([A-Za-z][A-Za-z0-9._/-]{0,62}=[A-Za-z0-9._-]{0,63}(,[A-Za-z][A-Za-z0-9._/-]{0,62}=[A-Za-z0-9._-]{0,63})*)?$"
)]
#[allow(dead_code)]
pub struct LabelFilter(String);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TargetHealth {
    Healthy,
    Unhealthy,
    Unknown,
}

#[derive(Serialize, ToSchema)]
pub struct HostTarget {
    /// `agt_…` for an agent, `tgt_…` for a target described through the API.
    pub id: String,
    pub name: String,
    pub target_type: TargetType,
    /// A described target's environment, if it was given one (agents serve any).
    pub environment_id: Option<String>,
    /// Environments whose fraises are placed on it (agents only: nothing is deployed to
    /// the other types).
    pub environment_ids: Vec<String>,
    /// Groups holding it, by membership or by their labels (`tgg_…`).
    pub target_group_ids: Vec<String>,
    #[schema(schema_with = fraisier_model::agent::labels_schema)]
    pub labels: BTreeMap<String, String>,
    /// How it is reached. An agent: `via` is `local` (loopback) or `task_stream`.
    #[schema(value_type = Object)]
    pub connection: Connection,
    pub deployment_directory: Option<String>,
    /// An agent's, from its heartbeats: healthy while online or draining, unhealthy once
    /// offline. `unknown` for the types Fraisier cannot reach.
    pub health_status: TargetHealth,
    /// Agents only.
    pub agent_status: Option<AgentStatus>,
    /// Whether Fraisier can deploy there today.
    pub deployable: bool,
    pub created_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct HostTargetList {
    pub targets: Vec<HostTarget>,
    pub total: u64,
}

/// `POST /targets/{id}/health-check`.
#[derive(Serialize, ToSchema)]
pub struct HealthCheckView {
    pub status: TargetHealth,
    pub message: String,
    pub checked_at: String,
}

/// What runs on a target (seed 004's version sticker).
#[derive(Serialize, ToSchema)]
pub struct StickerView {
    pub target_id: String,
    /// `fraise-version` when one service runs there, else null.
    pub release_name: Option<String>,
    pub components: Vec<StickerComponent>,
    /// The latest of the components' deploys.
    pub deployed_at: Option<String>,
    pub deployed_by: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct StickerComponent {
    /// `fraise@environment`.
    pub component_id: String,
    pub component_name: String,
    pub environment: String,
    pub version: Option<String>,
    /// The artifact the version runs from, `sha256:…` (null when it is not in the store).
    pub digest: Option<String>,
    /// Instances of it on this target.
    pub instances: u32,
    pub deployed_at: Option<String>,
    pub deployed_by: Option<String>,
}

fn health(status: AgentStatus) -> TargetHealth {
    match status {
        AgentStatus::Online | AgentStatus::Draining => TargetHealth::Healthy,
        AgentStatus::Offline => TargetHealth::Unhealthy,
    }
}

fn status_of(state: &AppState, a: &Agent) -> AgentStatus {
    a.status(Utc::now(), state.config().server.agent_offline_after)
}

/// Groups of the workspace holding a target, by membership or by labels.
fn groups_of(
    groups: &[TargetGroup],
    reference: &str,
    labels: &Labels,
    environment: Option<&str>,
) -> Vec<String> {
    groups
        .iter()
        .filter(|g| {
            g.members.iter().any(|m| m == reference)
                || (!g.labels.is_empty()
                    && matches(labels, &g.labels)
                    && environment.is_none_or(|e| e == g.environment))
        })
        .map(TargetGroup::reference)
        .collect()
}

async fn view(
    state: &AppState,
    who: &Caller,
    groups: &[TargetGroup],
    a: &Agent,
) -> Result<HostTarget, ApiError> {
    let mut environment_ids = Vec::new();
    for env in state.config().scope(&who.workspace).environments.keys() {
        let hosts = state
            .engine
            .fleet()
            .hosts(&who.workspace, env)
            .await
            .map_err(fraisier_engine::EngineError::Provider)?;
        if hosts.iter().any(|(n, _)| *n == a.name) {
            environment_ids.push(env.clone());
        }
    }
    let status = status_of(state, a);
    let reference = format!("agt_{}", a.id);
    Ok(HostTarget {
        target_group_ids: groups_of(groups, &reference, &a.labels, None),
        id: reference,
        name: a.name.clone(),
        target_type: TargetType::FraisierAgent,
        environment_id: None,
        environment_ids,
        labels: a.labels.clone(),
        connection: Connection::from_iter([(
            "via".to_string(),
            json!(if a.is_local() { "local" } else { "task_stream" }),
        )]),
        deployment_directory: None,
        health_status: health(status),
        agent_status: Some(status),
        deployable: true,
        created_at: ts(a.registered_at),
    })
}

fn described_view(groups: &[TargetGroup], t: &Target) -> HostTarget {
    HostTarget {
        id: t.reference(),
        name: t.name.clone(),
        target_type: t.kind,
        environment_id: t.environment.clone(),
        environment_ids: Vec::new(),
        target_group_ids: groups_of(groups, &t.reference(), &t.labels, t.environment.as_deref()),
        labels: t.labels.clone(),
        connection: t.connection.clone(),
        deployment_directory: t.deployment_directory.clone(),
        health_status: TargetHealth::Unknown,
        agent_status: None,
        deployable: t.kind.has_provider(),
        created_at: ts(t.created_at),
    }
}

fn not_found(target: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "TARGET_NOT_FOUND",
        format!("no target {target:?} in this workspace (see GET /api/v1/targets)"),
    )
}

/// A target: an agent, or one described through the API.
pub enum Member {
    Agent(Agent),
    Described(Target),
}

/// `agt_…`, `tgt_…` or a name (an agent's first).
pub async fn resolve_member(
    state: &AppState,
    who: &Caller,
    target: &str,
) -> Result<Option<Member>, ApiError> {
    let store = state.engine.store();
    if !target.starts_with("tgt_") {
        match store.agent_by_ref(&who.workspace, target).await {
            Ok(a) => return Ok(Some(Member::Agent(a))),
            Err(StoreError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if target.starts_with("agt_") {
        return Ok(None);
    }
    match store.target_by_ref(&who.workspace, target).await {
        Ok(t) => Ok(Some(Member::Described(t))),
        Err(StoreError::NotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn find(state: &AppState, who: &Caller, target: &str) -> Result<Member, ApiError> {
    resolve_member(state, who, target)
        .await?
        .ok_or_else(|| not_found(target))
}

/// An agent, or 422 for a described target: what only an agent can do.
async fn find_agent(
    state: &AppState,
    who: &Caller,
    target: &str,
    what: &str,
) -> Result<Agent, ApiError> {
    match find(state, who, target).await? {
        Member::Agent(a) => Ok(a),
        Member::Described(t) => Err(unsupported(&t, what)),
    }
}

fn unsupported(t: &Target, what: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "PROVIDER_UNSUPPORTED",
        format!(
            "target {} is a {}: Fraisier has no provider for {} targets yet, so it cannot {what}",
            t.name, t.kind, t.kind
        ),
    )
    .with_details(json!({ "target_id": t.reference(), "target_type": t.kind }))
}

#[utoipa::path(get, path = "/api/v1/targets", tag = "targets",
    params(("environmentId" = Option<String>, Query, description = "an environment's name: the agents its fraises are placed on, and the targets described for it"),
           ("targetType" = Option<TargetType>, Query),
           ("labels" = Option<LabelFilter>, Query, description = "key=value,…: targets carrying all of them"),
           ("healthStatus" = Option<TargetHealth>, Query)),
    responses((status = 200, body = HostTargetList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    who: Caller,
    q: QueryMap,
) -> Result<Json<HostTargetList>, ApiError> {
    // Query keys arrive in snake_case whichever way they were sent (DESIGN §4).
    let environment = q.get("environment_id").map(str::to_string);
    if let Some(env) = &environment {
        if !state
            .config()
            .scope(&who.workspace)
            .environments
            .contains_key(env)
        {
            return Err(ApiError::environment_not_found(env));
        }
    }
    let kind = match q.get("target_type") {
        None => None,
        Some(k) => Some(
            k.parse::<TargetType>()
                .map_err(|e| ApiError::invalid("targetType", format!("targetType {e}")))?,
        ),
    };
    let selector = match q.get("labels") {
        None => None,
        Some(text) => Some(
            fraisier_model::agent::parse_labels(text)
                .map_err(|e| ApiError::invalid("labels", format!("labels: {e}")))?,
        ),
    };
    let wanted_health = match q.get("health_status") {
        None => None,
        Some("healthy") => Some(TargetHealth::Healthy),
        Some("unhealthy") => Some(TargetHealth::Unhealthy),
        Some("unknown") => Some(TargetHealth::Unknown),
        Some(other) => {
            return Err(ApiError::invalid(
                "healthStatus",
                format!("healthStatus must be one of healthy, unhealthy, unknown, got {other:?}"),
            ))
        }
    };
    let store = state.engine.store();
    let groups = store.target_groups(&who.workspace, None).await?;
    let mut targets = Vec::new();
    if kind.is_none_or(|k| k == TargetType::FraisierAgent) {
        for a in store.agents(&who.workspace).await? {
            if selector.as_ref().is_some_and(|s| !matches(&a.labels, s)) {
                continue;
            }
            let v = view(&state, &who, &groups, &a).await?;
            if environment
                .as_ref()
                .is_some_and(|e| !v.environment_ids.contains(e))
            {
                continue;
            }
            targets.push(v);
        }
    }
    for t in store.targets(&who.workspace).await? {
        if kind.is_some_and(|k| k != t.kind)
            || selector.as_ref().is_some_and(|s| !matches(&t.labels, s))
            || environment
                .as_ref()
                .is_some_and(|e| t.environment.as_ref() != Some(e))
        {
            continue;
        }
        targets.push(described_view(&groups, &t));
    }
    targets.retain(|v| wanted_health.is_none_or(|h| h == v.health_status));
    Ok(Json(HostTargetList {
        total: targets.len() as u64,
        targets,
    }))
}

#[utoipa::path(get, path = "/api/v1/targets/{target_id}", tag = "targets",
    params(("target_id" = String, Path, description = "agt_…, tgt_… or a name")),
    responses((status = 200, body = HostTarget), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    who: Caller,
    Params(target): Params<String>,
) -> Result<Json<HostTarget>, ApiError> {
    let groups = state
        .engine
        .store()
        .target_groups(&who.workspace, None)
        .await?;
    Ok(Json(match find(&state, &who, &target).await? {
        Member::Agent(a) => view(&state, &who, &groups, &a).await?,
        Member::Described(t) => described_view(&groups, &t),
    }))
}

#[utoipa::path(post, path = "/api/v1/targets/{target_id}/health-check", tag = "targets",
    params(("target_id" = String, Path, description = "agt_…, tgt_… or a name")),
    responses((status = 200, body = HealthCheckView), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody, description = "PROVIDER_UNSUPPORTED: a type Fraisier cannot reach")))]
pub async fn health_check(
    State(state): State<AppState>,
    who: Caller,
    Params(target): Params<String>,
) -> Result<Json<HealthCheckView>, ApiError> {
    let a = find_agent(&state, &who, &target, "check its health").await?;
    let started = std::time::Instant::now();
    // Asked now, through the way runs reach it: a question it can only answer if it is up.
    let asked = match state
        .engine
        .fleet()
        .agent_provider(&who.workspace, &a.name)
        .await
    {
        Ok(p) => p.observe("probe", "probe").await.map(|_| ()),
        Err(e) => Err(e),
    };
    let (status, message) = match asked {
        Ok(()) | Err(ProviderError::Rejected(_)) => (
            TargetHealth::Healthy,
            format!(
                "agent {} answered in {} ms",
                a.name,
                started.elapsed().as_millis()
            ),
        ),
        Err(e) => (TargetHealth::Unhealthy, e.to_string()),
    };
    Ok(Json(HealthCheckView {
        status,
        message,
        checked_at: ts(Utc::now()),
    }))
}

#[utoipa::path(get, path = "/api/v1/targets/{target_id}/sticker", tag = "targets",
    params(("target_id" = String, Path, description = "agt_…, tgt_… or a name")),
    responses((status = 200, body = StickerView), (status = 404, body = ErrorBody)))]
pub async fn sticker(
    State(state): State<AppState>,
    who: Caller,
    Params(target): Params<String>,
) -> Result<Json<StickerView>, ApiError> {
    let a = match find(&state, &who, &target).await? {
        Member::Agent(a) => a,
        // Nothing can be deployed there yet: an empty sticker says so truthfully.
        Member::Described(t) => {
            return Ok(Json(StickerView {
                target_id: t.reference(),
                release_name: None,
                components: Vec::new(),
                deployed_at: None,
                deployed_by: None,
            }))
        }
    };
    let store = state.engine.store();
    let mut components = Vec::new();
    let mut latest: Option<(chrono::DateTime<Utc>, String)> = None;
    for s in store.services(&who.workspace).await? {
        let Some(desired) = &s.desired else { continue };
        let here = desired
            .instances
            .iter()
            .filter(|i| fraisier_engine::fleet::target_of(i) == a.name)
            .count() as u32;
        if here == 0 {
            continue;
        }
        let digest = s.current_version.as_ref().and_then(|v| {
            desired
                .releases
                .get(v)
                .and_then(|r| r.artifact.as_ref())
                .map(|r| r.digest.clone())
        });
        let run = match s.last_run_id {
            Some(id) => Some(store.run(&who.workspace, id).await?),
            None => None,
        }
        .filter(|r| r.status == RunStatus::Success);
        let (at, by) = match &run {
            Some(r) => (r.completed_at, Some(r.triggered_by.clone())),
            None => (None, None),
        };
        if let (Some(t), Some(b)) = (at, &by) {
            if latest.as_ref().is_none_or(|(l, _)| t > *l) {
                latest = Some((t, b.clone()));
            }
        }
        components.push(StickerComponent {
            component_id: format!("{}@{}", s.fraise, s.environment),
            component_name: s.fraise.clone(),
            environment: s.environment.clone(),
            version: s.current_version.clone(),
            digest,
            instances: here,
            deployed_at: ts_opt(at),
            deployed_by: by,
        });
    }
    let release_name = match components.as_slice() {
        [one] => one
            .version
            .as_ref()
            .map(|v| format!("{}-{v}", one.component_name)),
        _ => None,
    };
    Ok(Json(StickerView {
        target_id: format!("agt_{}", a.id),
        release_name,
        components,
        deployed_at: latest.as_ref().map(|(t, _)| ts(*t)),
        deployed_by: latest.map(|(_, b)| b),
    }))
}

/// `POST /targets`: a target of one of seed 004's other types, described.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetBody {
    #[schema(value_type = super::params::Name)]
    pub name: String,
    /// `fraisier_agent` targets are not created here: agents join with a token.
    pub target_type: TargetType,
    /// The environment it serves (a name); none: any.
    #[serde(default)]
    #[schema(value_type = Option<super::params::Name>)]
    pub environment_id: Option<String>,
    /// A group of its environment to put it in (`tgg_…`).
    #[serde(default)]
    pub target_group_id: Option<String>,
    /// How it is reached: `host`, `port`, `tlsEnabled`, … (no credentials: keep those in
    /// secrets). docker_host and compose_host need `host`; ecs_service `cluster` and
    /// `service`; nomad_job `address` and `job`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub connection: Connection,
    #[serde(default)]
    #[schema(schema_with = fraisier_model::agent::optional_labels_schema)]
    pub labels: Option<Labels>,
    /// An absolute path on the target.
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub deployment_directory: Option<String>,
}

/// `PUT /targets/{id}`: what is given changes, the rest stays. An agent takes `labels` and
/// `targetGroupId` only.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetUpdate {
    #[serde(default)]
    #[schema(value_type = Option<super::params::Name>)]
    pub name: Option<String>,
    /// `null`: any environment.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(value_type = Option<super::params::Name>, nullable)]
    pub environment_id: Option<Option<String>>,
    /// The one group (of the caller's workspace) it belongs to; `null`: none.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(value_type = Option<String>, nullable)]
    pub target_group_id: Option<Option<String>>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub connection: Option<Connection>,
    #[serde(default)]
    #[schema(schema_with = fraisier_model::agent::optional_labels_schema)]
    pub labels: Option<Labels>,
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(value_type = Option<String>, nullable, max_length = 1024)]
    pub deployment_directory: Option<Option<String>>,
}

fn noted(mut r: Response, id: &str) -> Response {
    r.extensions_mut().insert(AuditNote {
        resource: Some(format!("target:{id}")),
        ..AuditNote::default()
    });
    r
}

fn check_environment(state: &AppState, who: &Caller, env: Option<&str>) -> Result<(), ApiError> {
    env.map_or(Ok(()), |e| {
        super::target_groups::known_environment(state, who, e)
    })
}

/// The group a target is put in, which must be of the target's environment.
async fn group_for(
    state: &AppState,
    who: &Caller,
    id: &str,
    environment: Option<&str>,
) -> Result<TargetGroup, ApiError> {
    let missing = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "TARGET_GROUP_NOT_FOUND",
            format!("no target group {id:?} in this workspace (ids are tgg_…)"),
        )
        .with_details(json!({ "field": "targetGroupId" }))
    };
    let n = parse_target_group_id(id).ok_or_else(missing)?;
    let g = match state.engine.store().target_group(&who.workspace, n).await {
        Err(StoreError::NotFound) => return Err(missing()),
        r => r?,
    };
    if let Some(e) = environment.filter(|e| *e != g.environment) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "TARGET_ENVIRONMENT_MISMATCH",
            format!(
                "target group {} is of {}, and the target serves {e}",
                g.name, g.environment
            ),
        )
        .with_details(json!({ "field": "targetGroupId" })));
    }
    Ok(g)
}

fn check_described(
    kind: TargetType,
    connection: Option<&Connection>,
    labels: Option<&Labels>,
    directory: Option<&str>,
) -> Result<(), ApiError> {
    if let Some((field, p)) = connection.and_then(|c| connection_problem(kind, c)) {
        return Err(ApiError::invalid(field.clone(), format!("{field}: {p}")));
    }
    if let Some(p) = labels.and_then(labels_problem) {
        return Err(ApiError::invalid("labels", p));
    }
    if let Some(p) = directory.and_then(directory_problem) {
        return Err(ApiError::invalid(
            "deploymentDirectory",
            format!("deploymentDirectory {p}"),
        ));
    }
    Ok(())
}

fn target_exists(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "TARGET_EXISTS",
        format!("the workspace already has a target or agent named {name}"),
    )
}

#[utoipa::path(post, path = "/api/v1/targets", tag = "targets", request_body = TargetBody,
    responses((status = 201, body = HostTarget, headers(("Location" = String, description = "the target"))),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "TARGET_EXISTS: the name is taken by a target or an agent"),
              (status = 422, body = ErrorBody, description = "AGENT_MUST_JOIN for fraisier_agent; TARGET_ENVIRONMENT_MISMATCH")))]
pub async fn create(
    State(state): State<AppState>,
    who: Caller,
    JsonBody(body): JsonBody<TargetBody>,
) -> Result<Response, ApiError> {
    if let Some(p) = fraisier_model::names::name_problem(&body.name) {
        return Err(ApiError::invalid("name", format!("name {p}")));
    }
    check_described(
        body.target_type,
        Some(&body.connection),
        body.labels.as_ref(),
        body.deployment_directory.as_deref(),
    )?;
    if body.target_type == TargetType::FraisierAgent {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "AGENT_MUST_JOIN",
            "a fraisier_agent target is an agent that joined: make a join token (POST /api/v1/agents/join-tokens or `fraisier agent join-token`) and run `fraisier agent --server URL --join-token T` on the host",
        )
        .with_details(json!({ "field": "targetType" })));
    }
    check_environment(&state, &who, body.environment_id.as_deref())?;
    let group = match &body.target_group_id {
        Some(id) => Some(group_for(&state, &who, id, body.environment_id.as_deref()).await?),
        None => None,
    };
    // Joining a group changes where that environment's fraises are placed.
    if let Some(g) = &group {
        authorize(&state, &who, Permission::EnvironmentUpdate, &g.environment)?;
    }
    let store = state.engine.store();
    if resolve_member(&state, &who, &body.name).await?.is_some() {
        return Err(target_exists(&body.name));
    }
    let t = store
        .create_target(&NewTarget {
            workspace: who.workspace.clone(),
            // In a group, it serves the group's environment.
            environment: body
                .environment_id
                .or_else(|| group.as_ref().map(|g| g.environment.clone())),
            name: body.name.clone(),
            kind: body.target_type,
            connection: body.connection,
            labels: body.labels.unwrap_or_default(),
            deployment_directory: body.deployment_directory,
            created_by: who.username.clone(),
        })
        .await
        .map_err(|e| match e {
            StoreError::AlreadyExists(_) => target_exists(&body.name),
            e => e.into(),
        })?;
    if let Some(g) = &group {
        store
            .set_target_groups(&who.workspace, &t.reference(), &[g.id])
            .await?;
    }
    let groups = store.target_groups(&who.workspace, None).await?;
    let v = described_view(&groups, &t);
    let mut r = (StatusCode::CREATED, Json(&v)).into_response();
    if let Ok(h) = HeaderValue::from_str(&format!("/api/v1/targets/{}", v.id)) {
        r.headers_mut().insert(header::LOCATION, h);
    }
    Ok(noted(r, &v.id))
}

#[utoipa::path(put, path = "/api/v1/targets/{target_id}", tag = "targets",
    params(("target_id" = String, Path, description = "agt_…, tgt_… or a name")),
    request_body(content = Option<TargetUpdate>, description = "no body, or {}, changes nothing"),
    responses((status = 200, body = HostTarget), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "TARGET_EXISTS"),
              (status = 422, body = ErrorBody, description = "a field an agent does not take; TARGET_ENVIRONMENT_MISMATCH")))]
pub async fn update(
    State(state): State<AppState>,
    who: Caller,
    Params(target): Params<String>,
    OptionalBody(body): OptionalBody<TargetUpdate>,
) -> Result<Response, ApiError> {
    let member = find(&state, &who, &target).await?;
    let store = state.engine.store();
    let (reference, environment) = match &member {
        Member::Agent(a) => {
            // An agent's name, connection and directory are its own, set where it runs.
            let own = [
                ("name", body.name.is_some()),
                ("environmentId", body.environment_id.is_some()),
                ("connection", body.connection.is_some()),
                ("deploymentDirectory", body.deployment_directory.is_some()),
            ];
            if let Some((field, _)) = own.iter().find(|(_, given)| *given) {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "AGENT_FIELD_READ_ONLY",
                    format!("{field} of an agent is set where it runs (`fraisier agent --name …`); a PUT on an agent takes labels and targetGroupId"),
                )
                .with_details(json!({ "field": field })));
            }
            if a.is_local()
                && who.workspace != fraisier_store::DEFAULT_TENANT
                && body.labels.is_some()
            {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "PERMISSION_DENIED",
                    "the local agent serves every workspace; change its labels from the default workspace",
                ));
            }
            check_described(TargetType::FraisierAgent, None, body.labels.as_ref(), None)?;
            (format!("agt_{}", a.id), None)
        }
        Member::Described(t) => {
            if let Some(p) = body
                .name
                .as_deref()
                .and_then(fraisier_model::names::name_problem)
            {
                return Err(ApiError::invalid("name", format!("name {p}")));
            }
            check_described(
                t.kind,
                body.connection.as_ref(),
                body.labels.as_ref(),
                body.deployment_directory.clone().flatten().as_deref(),
            )?;
            let env = match &body.environment_id {
                Some(e) => e.clone(),
                None => t.environment.clone(),
            };
            check_environment(&state, &who, env.as_deref())?;
            if let Some(n) = body.name.as_ref().filter(|n| **n != t.name) {
                if resolve_member(&state, &who, n).await?.is_some() {
                    return Err(target_exists(n));
                }
            }
            (t.reference(), env)
        }
    };
    let group = match body.target_group_id.clone().flatten() {
        Some(id) => Some(group_for(&state, &who, &id, environment.as_deref()).await?),
        None => None,
    };
    // Joining or leaving a group changes where its environment's fraises are placed: the
    // caller must be allowed to change each environment concerned.
    if body.target_group_id.is_some() {
        let left = store
            .target_groups(&who.workspace, None)
            .await?
            .into_iter()
            .filter(|g| g.members.contains(&reference));
        for g in group.iter().cloned().chain(left) {
            authorize(&state, &who, Permission::EnvironmentUpdate, &g.environment)?;
        }
    }
    match &member {
        Member::Agent(a) => {
            if body.labels.is_some() {
                store.update_agent(a.id, body.labels.as_ref(), None).await?;
            }
        }
        Member::Described(t) => {
            let name = body.name.clone();
            store
                .update_target(
                    &who.workspace,
                    t.id,
                    &TargetChange {
                        name: body.name,
                        environment: body
                            .environment_id
                            .or_else(|| group.as_ref().map(|g| Some(g.environment.clone()))),
                        connection: body.connection,
                        labels: body.labels,
                        deployment_directory: body.deployment_directory,
                    },
                )
                .await
                .map_err(|e| match e {
                    StoreError::AlreadyExists(_) => {
                        target_exists(name.as_deref().unwrap_or_default())
                    }
                    e => e.into(),
                })?;
        }
    }
    if body.target_group_id.is_some() {
        let ids: Vec<i64> = group.iter().map(|g| g.id).collect();
        store
            .set_target_groups(&who.workspace, &reference, &ids)
            .await?;
    }
    let groups = store.target_groups(&who.workspace, None).await?;
    let v = match find(&state, &who, &reference).await? {
        Member::Agent(a) => view(&state, &who, &groups, &a).await?,
        Member::Described(t) => described_view(&groups, &t),
    };
    Ok(noted(Json(v).into_response(), &reference))
}

#[utoipa::path(delete, path = "/api/v1/targets/{target_id}", tag = "targets",
    params(("target_id" = String, Path, description = "tgt_… or a name")),
    responses((status = 200, body = Object, description = "{\"deleted\": true}"),
              (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "TARGET_IS_AGENT: an agent leaves by being revoked (DELETE /api/v1/agents/{id})")))]
pub async fn delete(
    State(state): State<AppState>,
    who: Caller,
    Params(target): Params<String>,
) -> Result<Response, ApiError> {
    let t = match find(&state, &who, &target).await? {
        Member::Described(t) => t,
        // Revoking cuts a live host off; that deserves its own route and permission check.
        Member::Agent(a) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "TARGET_IS_AGENT",
                format!(
                    "{} is an agent: revoke it with DELETE /api/v1/agents/agt_{} (`fraisier agent revoke {}`)",
                    a.name, a.id, a.name
                ),
            ))
        }
    };
    if !state
        .engine
        .store()
        .delete_target(&who.workspace, t.id)
        .await?
    {
        return Err(not_found(&target));
    }
    Ok(noted(
        Json(json!({ "deleted": true, "id": t.reference() })).into_response(),
        &t.reference(),
    ))
}

/// `GET /targets/{id}/drift`: each release running there hashed again on the host and
/// compared with the digest taken when it was installed.
#[derive(Serialize, ToSchema)]
pub struct DriftView {
    pub target_id: String,
    pub has_drift: bool,
    /// Seed 004's shape, when one release runs there: what was installed…
    pub expected: Option<DriftExpected>,
    /// …and what is on disk now.
    pub actual: Option<DriftActual>,
    /// The releases that changed.
    pub differences: Vec<DriftComponent>,
    /// Every release checked.
    pub components: Vec<DriftComponent>,
    pub checked_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct DriftExpected {
    /// `fraise-version`.
    pub release_id: String,
    pub digest: String,
}

#[derive(Serialize, ToSchema)]
pub struct DriftActual {
    pub digest: String,
}

#[derive(Clone, Serialize, ToSchema)]
pub struct DriftComponent {
    /// `fraise@environment`.
    pub component: String,
    pub version: String,
    /// The artifact the release was unpacked from, `sha256:…`.
    pub artifact: Option<String>,
    /// The release tree's digest when it was installed, `sha256:…`.
    pub expected: String,
    /// Its digest now.
    pub actual: String,
    pub drifted: bool,
    /// What changed, file by file.
    pub files: Vec<DriftFile>,
}

#[derive(Clone, Serialize, ToSchema)]
pub struct DriftFile {
    /// Relative to the release directory.
    pub path: String,
    /// `added`, `removed` or `modified`.
    #[schema(value_type = String)]
    pub change: fraisier_model::service::Change,
}

#[utoipa::path(get, path = "/api/v1/targets/{target_id}/drift", tag = "targets",
    params(("target_id" = String, Path, description = "agt_…, tgt_… or a name")),
    responses((status = 200, body = DriftView), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody, description = "PROVIDER_UNSUPPORTED: a type Fraisier cannot reach"),
              (status = 503, body = ErrorBody, description = "the agent does not answer")))]
pub async fn drift(
    State(state): State<AppState>,
    who: Caller,
    Params(target): Params<String>,
) -> Result<Json<DriftView>, ApiError> {
    let a = find_agent(&state, &who, &target, "hash its releases").await?;
    let provider = state
        .engine
        .fleet()
        .agent_provider(&who.workspace, &a.name)
        .await
        .map_err(fraisier_engine::EngineError::Provider)?;
    let sha = |hex: &str| format!("sha256:{hex}");
    let mut components = Vec::new();
    for s in state.engine.store().services(&who.workspace).await? {
        let here = s.desired.as_ref().is_some_and(|d| {
            d.instances
                .iter()
                .any(|i| fraisier_engine::fleet::target_of(i) == a.name)
        });
        if !here {
            continue;
        }
        let name = fraisier_model::names::agent_name(&who.workspace, &s.fraise);
        let checks = provider
            .verify(&name, &s.environment)
            .await
            .map_err(fraisier_engine::EngineError::Provider)?
            .unwrap_or_default();
        for c in checks {
            components.push(DriftComponent {
                component: format!("{}@{}", s.fraise, s.environment),
                drifted: c.drifted(),
                version: c.version,
                artifact: c.artifact,
                expected: sha(&c.expected),
                actual: sha(&c.actual),
                files: c
                    .changes
                    .into_iter()
                    .map(|f| DriftFile {
                        path: f.path,
                        change: f.change,
                    })
                    .collect(),
            });
        }
    }
    let (expected, actual) = match components.as_slice() {
        [one] => (
            Some(DriftExpected {
                release_id: format!(
                    "{}-{}",
                    one.component.split('@').next().unwrap_or_default(),
                    one.version
                ),
                digest: one.expected.clone(),
            }),
            Some(DriftActual {
                digest: one.actual.clone(),
            }),
        ),
        _ => (None, None),
    };
    let differences: Vec<DriftComponent> =
        components.iter().filter(|c| c.drifted).cloned().collect();
    Ok(Json(DriftView {
        target_id: format!("agt_{}", a.id),
        has_drift: !differences.is_empty(),
        expected,
        actual,
        differences,
        components,
        checked_at: ts(Utc::now()),
    }))
}
