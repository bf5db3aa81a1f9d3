//! Targets (seed 004): where fraises run. Every agent is a target of type `fraisier_agent`;
//! an environment's targets are the agents its fraises are placed on. Read here: the list
//! with seed 004's filters, one target, a health check that asks the agent now, and its
//! version sticker (what runs there, by digest, since when, by whom).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use fraisier_engine::ProviderError;
use fraisier_model::agent::{matches, AgentStatus};
use fraisier_model::run::RunStatus;
use fraisier_store::{Agent, StoreError};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::QueryMap;
use super::gate::Caller;
use super::views::{ts, ts_opt};
use super::{AppState, Params};

/// The target types seed 004 names. Only `fraisier_agent` exists; the others are refused
/// until a provider for them does.
const TYPES: &[&str] = &[
    "fraisier_agent",
    "docker_host",
    "compose_host",
    "ecs_service",
    "nomad_job",
];

/// Seed 004's target types (the query's `targetType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum TargetType {
    FraisierAgent,
    DockerHost,
    ComposeHost,
    EcsService,
    NomadJob,
}

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
    /// The agent's id, `agt_…`.
    pub id: String,
    pub name: String,
    /// `fraisier_agent`.
    pub target_type: String,
    /// Environments whose fraises are placed on it.
    pub environment_ids: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// How the server reaches it: `local` (loopback) or `task_stream`.
    pub connection: BTreeMap<String, String>,
    /// From its heartbeats: healthy while online or draining, unhealthy once offline.
    pub health_status: TargetHealth,
    pub agent_status: AgentStatus,
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
    a.status(Utc::now(), state.config.server.agent_offline_after)
}

async fn view(state: &AppState, who: &Caller, a: &Agent) -> Result<HostTarget, ApiError> {
    let mut environment_ids = Vec::new();
    for env in state.config.scope(&who.workspace).environments.keys() {
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
    Ok(HostTarget {
        id: format!("agt_{}", a.id),
        name: a.name.clone(),
        target_type: "fraisier_agent".into(),
        environment_ids,
        labels: a.labels.clone(),
        connection: BTreeMap::from([(
            "via".to_string(),
            if a.is_local() { "local" } else { "task_stream" }.to_string(),
        )]),
        health_status: health(status),
        agent_status: status,
        created_at: ts(a.registered_at),
    })
}

fn not_found(target: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "TARGET_NOT_FOUND",
        format!("no target {target:?} in this workspace (see GET /api/v1/targets)"),
    )
}

/// `agt_…` or a name.
async fn find(state: &AppState, who: &Caller, target: &str) -> Result<Agent, ApiError> {
    match state
        .engine
        .store()
        .agent_by_ref(&who.workspace, target)
        .await
    {
        Err(StoreError::NotFound) => Err(not_found(target)),
        r => Ok(r?),
    }
}

#[utoipa::path(get, path = "/api/v1/targets", tag = "targets",
    params(("environmentId" = Option<String>, Query, description = "an environment's name: the targets its fraises are placed on"),
           ("targetType" = Option<TargetType>, Query, description = "only fraisier_agent targets exist; the other types list nothing"),
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
            .config
            .scope(&who.workspace)
            .environments
            .contains_key(env)
        {
            return Err(ApiError::environment_not_found(env));
        }
    }
    let kind = q.get("target_type");
    if let Some(k) = kind.filter(|k| !TYPES.contains(k)) {
        return Err(ApiError::invalid(
            "targetType",
            format!("targetType must be one of {}, got {k:?}", TYPES.join(", ")),
        ));
    }
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
    let mut targets = Vec::new();
    if kind.is_none_or(|k| k == "fraisier_agent") {
        for a in state.engine.store().agents(&who.workspace).await? {
            if selector.as_ref().is_some_and(|s| !matches(&a.labels, s)) {
                continue;
            }
            let v = view(&state, &who, &a).await?;
            if environment
                .as_ref()
                .is_some_and(|e| !v.environment_ids.contains(e))
            {
                continue;
            }
            if wanted_health.is_some_and(|h| h != v.health_status) {
                continue;
            }
            targets.push(v);
        }
    }
    Ok(Json(HostTargetList {
        total: targets.len() as u64,
        targets,
    }))
}

#[utoipa::path(get, path = "/api/v1/targets/{target_id}", tag = "targets",
    params(("target_id" = String, Path, description = "agt_… or the agent's name")),
    responses((status = 200, body = HostTarget), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    who: Caller,
    Params(target): Params<String>,
) -> Result<Json<HostTarget>, ApiError> {
    let a = find(&state, &who, &target).await?;
    Ok(Json(view(&state, &who, &a).await?))
}

#[utoipa::path(post, path = "/api/v1/targets/{target_id}/health-check", tag = "targets",
    params(("target_id" = String, Path, description = "agt_… or the agent's name")),
    responses((status = 200, body = HealthCheckView), (status = 404, body = ErrorBody)))]
pub async fn health_check(
    State(state): State<AppState>,
    who: Caller,
    Params(target): Params<String>,
) -> Result<Json<HealthCheckView>, ApiError> {
    let a = find(&state, &who, &target).await?;
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
    params(("target_id" = String, Path, description = "agt_… or the agent's name")),
    responses((status = 200, body = StickerView), (status = 404, body = ErrorBody)))]
pub async fn sticker(
    State(state): State<AppState>,
    who: Caller,
    Params(target): Params<String>,
) -> Result<Json<StickerView>, ApiError> {
    let a = find(&state, &who, &target).await?;
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
