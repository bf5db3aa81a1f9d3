//! Fraises (seed 000): what is configured, what runs where, how healthy, and what shipped.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use fraisier_engine::ServiceStatus;
use fraisier_model::metrics::VersionMetrics;
use fraisier_model::run::{FraiseStatus, RunStatus};
use fraisier_model::service::ObservedSchedule;
use fraisier_model::{FraiseConfig, FraiseType};
use fraisier_store::{run_id_string, RunFilter, RunSort, RunSortField};
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::error::ApiError;
use super::extract::QueryMap;
use super::gate::Caller;
use super::views::{self, LastDeployment, Pagination};
use super::{AppState, Params};

#[derive(Serialize, ToSchema)]
pub struct FraiseSummary {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: FraiseType,
    pub description: Option<String>,
    pub project: Option<String>,
    pub git_provider: Option<String>,
    pub git_repo: Option<String>,
    pub git_branch: Option<String>,
    pub status: FraiseStatus,
    pub environments: Vec<String>,
    pub current_versions: BTreeMap<String, Option<String>>,
    pub last_deployment: Option<LastDeployment>,
}

#[derive(Serialize, ToSchema)]
pub struct FraiseList {
    pub fraises: Vec<FraiseSummary>,
    pub pagination: Pagination,
}

/// The last run of a fraise in an environment, as listings show it.
pub fn last_deployment(status: &ServiceStatus) -> Option<LastDeployment> {
    status.last.as_ref().map(|r| LastDeployment {
        id: run_id_string(r.id),
        timestamp: views::ts(r.completed_at.unwrap_or(r.created_at)),
        status: r.status,
    })
}

/// Executions shown in a status, and output lines shown per execution.
const STATUS_EXECUTIONS: usize = 10;
const STATUS_OUTPUT_LINES: usize = 20;

/// A scheduled fraise's schedule and its latest executions, as the agent reports them.
fn schedule_view(s: &ObservedSchedule) -> Value {
    let executions: Vec<Value> = s
        .executions
        .iter()
        .take(STATUS_EXECUTIONS)
        .map(|e| {
            let skip = e.output.len().saturating_sub(STATUS_OUTPUT_LINES);
            json!({
                "id": e.id, "version": e.version, "status": e.status,
                "scheduled_for": views::ts(e.scheduled_for), "started_at": views::ts(e.started_at),
                "ended_at": views::ts_opt(e.ended_at), "exit_code": e.exit_code,
                "duration_ms": e.ended_at.map(|end| (end - e.started_at).num_milliseconds()),
                "output": e.output.iter().skip(skip).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "cron": s.cron, "timezone": s.timezone, "version": s.version,
        "next_run_at": views::ts_opt(s.next_run_at), "skipped": s.skipped, "error": s.error,
        "executions": executions,
    })
}

/// A fraise of the caller's workspace; another workspace's answers 404 like one that does not
/// exist.
fn lookup(state: &AppState, who: &Caller, name: &str) -> Result<FraiseConfig, ApiError> {
    state
        .config()
        .scope(&who.workspace)
        .fraises
        .get(name)
        .filter(|_| fraisier_model::names::is_valid_name(name))
        .cloned()
        .ok_or_else(|| ApiError::fraise_not_found(name))
}

/// `?environment=`: an environment of the caller's workspace, or 404.
pub fn environment_filter(
    state: &AppState,
    who: &Caller,
    q: &QueryMap,
) -> Result<Option<String>, ApiError> {
    match q.text("environment") {
        Some(e)
            if !state
                .config()
                .scope(&who.workspace)
                .environments
                .contains_key(&e) =>
        {
            Err(ApiError::environment_not_found(&e))
        }
        e => Ok(e),
    }
}

fn env_filter<'a>(
    state: &AppState,
    who: &Caller,
    f: &'a FraiseConfig,
    q: &QueryMap,
) -> Result<Vec<&'a String>, ApiError> {
    let only = environment_filter(state, who, q)?;
    Ok(f.environments
        .keys()
        .filter(|k| only.as_ref().is_none_or(|e| e == *k))
        .collect())
}

#[utoipa::path(get, path = "/api/v1/fraises", tag = "fraises",
    params(("environment" = Option<String>, Query), ("type" = Option<FraiseType>, Query), ("project" = Option<String>, Query), ("q" = Option<String>, Query), ("limit" = Option<u32>, Query, minimum = 1, maximum = 500), ("offset" = Option<u64>, Query)),
    responses((status = 200, body = FraiseList), (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody, description = "no such environment")))]
pub async fn list(
    State(state): State<AppState>,
    who: Caller,
    q: QueryMap,
) -> Result<Json<FraiseList>, ApiError> {
    let (limit, offset) = q.pagination(50)?;
    let kind: Option<FraiseType> = q.one_of("type", "api, etl, scheduled")?;
    let env = environment_filter(&state, &who, &q)?;
    let project = q.text("project");
    let text = q.text("q").map(|t| t.to_lowercase());
    let live = state.config();
    let matching: Vec<(&String, &FraiseConfig)> = live
        .scope(&who.workspace)
        .fraises
        .iter()
        .filter(|(_, f)| kind.is_none_or(|k| f.kind == k))
        .filter(|(_, f)| env.as_ref().is_none_or(|e| f.environments.contains_key(e)))
        .filter(|(_, f)| project.is_none() || f.project == project)
        .filter(|(n, f)| {
            text.as_ref().is_none_or(|t| {
                n.to_lowercase().contains(t)
                    || f.description
                        .as_deref()
                        .unwrap_or("")
                        .to_lowercase()
                        .contains(t)
            })
        })
        .collect();
    let total = matching.len() as u64;
    let mut fraises = Vec::new();
    for (name, f) in matching
        .into_iter()
        .skip(offset as usize)
        .take(limit as usize)
    {
        let mut statuses = Vec::new();
        let mut current_versions = BTreeMap::new();
        let mut last: Option<LastDeployment> = None;
        for e in f.environments.keys() {
            let s = state.engine.service_status(&who.workspace, name, e).await?;
            statuses.push(s.status());
            current_versions.insert(e.clone(), s.current_version().map(str::to_string));
            if let Some(l) = last_deployment(&s) {
                if last.as_ref().is_none_or(|x| x.id < l.id) {
                    last = Some(l);
                }
            }
        }
        fraises.push(FraiseSummary {
            name: name.clone(),
            kind: f.kind,
            description: f.description.clone(),
            project: f.project.clone(),
            git_provider: f.git_provider.clone(),
            git_repo: f.git_repo.clone(),
            git_branch: f.git_branch.clone(),
            status: FraiseStatus::overall(&statuses),
            environments: f.environments.keys().cloned().collect(),
            current_versions,
            last_deployment: last,
        });
    }
    Ok(Json(FraiseList {
        fraises,
        pagination: Pagination::new(total, limit, offset),
    }))
}

#[utoipa::path(get, path = "/api/v1/fraises/{fraise_name}", tag = "fraises",
    params(("fraise_name" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = super::error::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
) -> Result<Json<Value>, ApiError> {
    let f = lookup(&state, &who, &name)?;
    let mut envs = serde_json::Map::new();
    let mut statuses = Vec::new();
    let mut updated = state.started_at;
    for (e, fe) in &f.environments {
        let s = state
            .engine
            .service_status(&who.workspace, &name, e)
            .await?;
        statuses.push(s.status());
        if let Some(r) = &s.record {
            updated = updated.max(r.updated_at);
        }
        envs.insert(
            e.clone(),
            json!({
                "current_version": s.current_version(), "previous_version": s.previous_version(), "status": s.status(),
                "deployment_strategy": fe.strategy, "port": fe.port, "instances": fe.instances,
                "last_deployment": last_deployment(&s),
                "schedule": s.observed.as_ref().and_then(|o| o.schedule.as_ref()).map(schedule_view),
            }),
        );
    }
    Ok(Json(json!({
        "name": name, "type": f.kind, "description": f.description, "project": f.project,
        "git_provider": f.git_provider, "git_repo": f.git_repo, "git_branch": f.git_branch,
        "status": FraiseStatus::overall(&statuses),
        "created_at": views::ts(state.started_at), "updated_at": views::ts(updated),
        "versions": fraisier_engine::known_versions(&f),
        "dependencies": f.dependencies,
        "health_check": f.health_check,
        "environments": envs,
    })))
}

#[utoipa::path(get, path = "/api/v1/fraises/{fraise_name}/status", tag = "fraises",
    params(("fraise_name" = String, Path), ("environment" = Option<String>, Query)),
    responses((status = 200, body = Object), (status = 404, body = super::error::ErrorBody)))]
pub async fn status(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
    q: QueryMap,
) -> Result<Json<Value>, ApiError> {
    let f = lookup(&state, &who, &name)?;
    let mut envs = serde_json::Map::new();
    let mut statuses = Vec::new();
    for e in env_filter(&state, &who, &f, &q)? {
        let s = state
            .engine
            .service_status(&who.workspace, &name, e)
            .await?;
        statuses.push(s.status());
        let o = s.observed.clone().unwrap_or_default();
        let (live, healthy) = o.live_counts();
        let mut all = VersionMetrics::empty();
        for m in o.metrics.values() {
            all.add(m);
        }
        let summary = all.summary();
        let last_check = o.instances.iter().filter_map(|i| i.last_check_at).max();
        envs.insert(
            e.clone(),
            json!({
                "status": s.status(),
                "current_version": s.current_version(),
                "health_checks": {
                    "status": if live == 0 { "unknown" } else if healthy == live { "passing" } else { "failing" },
                    "checks_passed": healthy, "checks_total": live, "last_check": last_check.map(views::ts),
                },
                "metrics": {
                    "success_rate": summary.success_rate, "error_rate": summary.error_rate,
                    "latency_p50_ms": summary.latency_p50_ms, "latency_p99_ms": summary.latency_p99_ms,
                    "requests": summary.requests,
                    "by_version": o.metrics.iter().map(|(v, m)| (v.clone(), json!(m.summary()))).collect::<serde_json::Map<_, _>>(),
                },
                "instances": live,
                "instances_healthy": healthy,
                "router": { "port": o.port, "listening": o.listening, "error": o.router_error },
                "schedule": o.schedule.as_ref().map(schedule_view),
            }),
        );
    }
    Ok(Json(
        json!({ "fraise": name, "overall_status": FraiseStatus::overall(&statuses), "environments": envs }),
    ))
}

#[utoipa::path(get, path = "/api/v1/fraises/{fraise_name}/history", tag = "fraises",
    params(("fraise_name" = String, Path), ("environment" = Option<String>, Query), ("limit" = Option<u32>, Query, minimum = 1, maximum = 500), ("offset" = Option<u64>, Query), ("status" = Option<RunStatus>, Query)),
    responses((status = 200, body = Object), (status = 404, body = super::error::ErrorBody)))]
pub async fn history(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
    q: QueryMap,
) -> Result<Json<Value>, ApiError> {
    lookup(&state, &who, &name)?;
    let environment = environment_filter(&state, &who, &q)?;
    let limit = q.int("limit", 20, 1, 500)? as u32;
    let offset = q.int("offset", 0, 0, i64::MAX as u64)?;
    let status: Option<RunStatus> =
        q.one_of("status", "pending, in_progress, success, failed, cancelled")?;
    let filter = RunFilter {
        fraise: Some(name.clone()),
        environment: environment.clone(),
        status,
        sort: RunSort {
            field: RunSortField::CreatedAt,
            descending: true,
        },
        limit,
        offset,
        ..RunFilter::default()
    };
    let (runs, total) = state
        .engine
        .store()
        .list_runs(&who.workspace, &filter)
        .await?;
    let history: Vec<Value> = runs
        .iter()
        .map(|r| {
            json!({
                "id": run_id_string(r.id), "environment": r.environment, "version": r.version, "previous_version": r.previous_version,
                "status": r.status, "type": r.kind, "strategy": r.strategy, "triggered_by": r.triggered_by,
                "created_at": views::ts(r.created_at), "completed_at": views::ts_opt(r.completed_at),
                "duration_seconds": views::duration_seconds(r),
            })
        })
        .collect();
    Ok(Json(
        json!({ "fraise": name, "environment": environment, "history": history, "total": total }),
    ))
}
