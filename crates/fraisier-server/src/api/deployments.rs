//! Deployment runs (seed 000): list, inspect, create, cancel, roll back, logs and events.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fraisier_engine::{BusMessage, DeployRequest, Engine, RollbackRequest};
use fraisier_model::run::{Component, LogLevel, RunStatus, ServiceState};
use fraisier_model::Strategy;
use fraisier_store::{
    parse_run_id, run_id_string, LogFilter, Run, RunFilter, RunSort, RunSortField,
};
use futures_util::stream::{self, Stream};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use utoipa::ToSchema;

use super::error::ApiError;
use super::extract::{OptionalBody, QueryMap};
use super::gate::Caller;
use super::gate::{authorize, AuditNote};
use super::params::{RunSortKey, SseFrame, StrategyName, Version};
use super::reference::DeploymentRef;
use super::views::{self, Pagination, RunDetails, RunSummary};
use super::{services, AppState, Params};
use fraisier_model::access::Permission;

/// `GET /deployments`: runs (seed 000), or service deployments with `state` (seed 001).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum DeploymentsPage {
    Runs(RunList),
    Services(services::ServiceList),
}

#[derive(Serialize, ToSchema)]
pub struct RunList {
    pub deployments: Vec<RunSummary>,
    pub pagination: Pagination,
}

/// Body of `POST /deployments/{fraise}/{environment}`.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    #[schema(value_type = Option<Version>)]
    pub version: Option<String>,
    /// rolling | blue_green (blue-green) | canary | recreate
    #[schema(value_type = Option<StrategyName>)]
    pub strategy: Option<Strategy>,
    #[schema(value_type = Option<Object>)]
    pub strategy_config: Option<Map<String, Value>>,
    #[serde(default)]
    pub skip_health_check: bool,
    #[serde(default)]
    pub skip_backup: bool,
    #[serde(default)]
    pub wait: bool,
    /// Seconds (default 3600).
    #[schema(minimum = 1, maximum = 604800)]
    pub timeout: Option<u64>,
    /// Free-form, kept with the run (an object).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    /// For a fraise built from git: a branch or tag, resolved now (`version` names a tag or a
    /// commit instead).
    #[serde(default, rename = "ref")]
    #[schema(max_length = 255)]
    pub git_ref: Option<String>,
    /// Deploy even if the commit already runs in the environment.
    #[serde(default)]
    pub force: bool,
    /// `false` skips the fraise's migrations (default: run them).
    pub migrate: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct Created {
    pub id: String,
    /// Present when the environment requires approvals: the run waits `pending` for them.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub approval: Option<Value>,
    pub fraise: String,
    pub environment: String,
    pub status: RunStatus,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: String,
    pub previous_version: Option<String>,
    pub strategy: String,
    pub created_at: String,
    pub status_url: String,
    pub events_url: String,
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    #[schema(value_type = Option<Version>)]
    pub to_version: Option<String>,
    pub reason: Option<String>,
    /// `false` leaves the database as it is (default: `down` what the deploy of the version
    /// left behind applied).
    pub migrate: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct RollbackAccepted {
    pub id: String,
    pub fraise: String,
    pub environment: String,
    pub status: RunStatus,
    #[serde(rename = "type")]
    pub kind: String,
    pub from_version: Option<String>,
    pub to_version: String,
    pub created_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct Cancelled {
    pub id: String,
    pub status: RunStatus,
    pub cancelled_at: Option<String>,
    pub cancelled_by: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct LogsResponse {
    pub deployment_id: String,
    pub logs: Vec<views::LogView>,
    pub total_lines: u64,
    pub truncated: bool,
}

#[derive(Serialize, ToSchema)]
pub struct EventsResponse {
    pub deployment_id: String,
    pub events: Vec<views::EventView>,
    pub total: u64,
}

pub fn run_id(id: &str) -> Result<i64, ApiError> {
    parse_run_id(id).ok_or_else(|| ApiError::run_not_found(id))
}

fn parse_sort(q: &QueryMap) -> Result<RunSort, ApiError> {
    let raw = q.get("sort").unwrap_or("-created_at");
    let (descending, field) = match raw.strip_prefix('-') {
        Some(f) => (true, f),
        None => (false, raw.strip_prefix('+').unwrap_or(raw)),
    };
    let field = match field {
        "created_at" => RunSortField::CreatedAt,
        "updated_at" => RunSortField::UpdatedAt,
        "status" => RunSortField::Status,
        _ => return Err(ApiError::invalid("sort", format!("sort must be created_at, updated_at or status, optionally prefixed with '-', got {raw:?}"))),
    };
    Ok(RunSort { field, descending })
}

/// `?project=`: the fraises of that project in the caller's workspace; a project that does
/// not exist there is 404.
pub async fn project_fraises(
    state: &AppState,
    who: &Caller,
    q: &QueryMap,
) -> Result<Option<Vec<String>>, ApiError> {
    let Some(project) = q.text("project") else {
        return Ok(None);
    };
    super::projects::find(state, who, &project).await?;
    Ok(Some(
        state
            .config()
            .scope(&who.workspace)
            .fraises
            .iter()
            .filter(|(_, f)| f.project.as_deref() == Some(project.as_str()))
            .map(|(n, _)| n.clone())
            .collect(),
    ))
}

/// Whether each run is the one a rollback of its service would undo.
async fn rollback_flags(
    state: &AppState,
    tenant: &str,
    runs: &[Run],
) -> Result<Vec<bool>, ApiError> {
    let services = state.engine.store().services(tenant).await?;
    let last: HashMap<(&str, &str), Option<i64>> = services
        .iter()
        .map(|s| ((s.fraise.as_str(), s.environment.as_str()), s.last_run_id))
        .collect();
    Ok(runs
        .iter()
        .map(|r| {
            r.status == RunStatus::Success
                && r.previous_version.is_some()
                && last
                    .get(&(r.fraise.as_str(), r.environment.as_str()))
                    .copied()
                    .flatten()
                    == Some(r.id)
        })
        .collect())
}

#[utoipa::path(get, path = "/api/v1/deployments", tag = "deployments",
    params(("environment" = Option<String>, Query), ("status" = Option<RunStatus>, Query), ("fraise" = Option<String>, Query),
           ("limit" = Option<u32>, Query, minimum = 1, maximum = 500), ("offset" = Option<u64>, Query), ("sort" = Option<RunSortKey>, Query), ("q" = Option<String>, Query),
           ("created_after" = Option<String>, Query, format = DateTime), ("created_before" = Option<String>, Query, format = DateTime),
           ("state" = Option<ServiceState>, Query, description = "seed 001: list service deployments (in that state) instead of runs")),
    responses((status = 200, body = DeploymentsPage, description = "runs; with `state`, service deployments"), (status = 400, body = super::error::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    who: Caller,
    q: QueryMap,
) -> Result<Response, ApiError> {
    // Every value is checked, whichever listing is asked for.
    let (limit, offset) = q.pagination(50)?;
    let filter = RunFilter {
        fraise: q.text("fraise"),
        fraises: project_fraises(&state, &who, &q).await?,
        environment: q.text("environment"),
        status: q.one_of("status", "pending, in_progress, success, failed, cancelled")?,
        q: q.text("q"),
        created_after: q.time("created_after")?,
        created_before: q.time("created_before")?,
        sort: parse_sort(&q)?,
        limit,
        offset,
    };
    let state_filter: Option<ServiceState> = q.one_of(
        "state",
        "unknown, deploying, healthy, unhealthy, failed, rolling_back",
    )?;
    if state_filter.is_some() || q.get("view") == Some("services") {
        return services::list(&state, &who, &q)
            .await
            .map(IntoResponse::into_response);
    }
    let (runs, total) = state
        .engine
        .store()
        .list_runs(&who.workspace, &filter)
        .await?;
    let flags = rollback_flags(&state, &who.workspace, &runs).await?;
    let approvals = state.engine.approvals_of(&runs).await?;
    let deployments = runs
        .iter()
        .zip(flags)
        .map(|(r, f)| views::summary(r, f, approvals.get(&r.id)))
        .collect();
    Ok(Json(RunList {
        deployments,
        pagination: Pagination::new(total, limit, offset),
    })
    .into_response())
}

pub async fn details(state: &AppState, tenant: &str, run: &Run) -> Result<RunDetails, ApiError> {
    let store = state.engine.store();
    let flags = rollback_flags(state, tenant, std::slice::from_ref(run)).await?;
    let events = store.events(run.id, None).await?;
    let steps = store.steps(run.id).await?;
    let approvals = state.engine.approvals_of(std::slice::from_ref(run)).await?;
    let id = run_id_string(run.id);
    Ok(RunDetails {
        summary: views::summary(run, flags[0], approvals.get(&run.id)),
        trigger_type: run.trigger_type.clone(),
        provider: state.engine.provider().kind().to_string(),
        strategy_config: run.strategy_config.clone(),
        health_check_details: if run.health_details.is_null() {
            json!({})
        } else {
            run.health_details.clone()
        },
        events: events
            .iter()
            .map(|e| views::EventRef {
                id: views::event_id(e.id),
                event_type: e.event_type.clone(),
                timestamp: views::ts(e.timestamp),
            })
            .collect(),
        logs: views::LogsRef {
            url: format!("/api/v1/deployments/{id}/logs"),
            lines: run.log_lines,
        },
        steps: steps.iter().map(views::step).collect(),
        metadata: run.metadata.clone(),
        cancelled_at: views::ts_opt(run.cancelled_at),
        cancelled_by: run.cancel_requested_by.clone(),
        status_url: format!("/api/v1/deployments/{id}"),
        events_url: format!("/api/v1/deployments/{id}/events"),
    })
}

/// `GET /deployments/{ref}`: a run (`dep_…`) or, for any other ref, a service deployment (seed 001).
#[utoipa::path(get, path = "/api/v1/deployments/{deployment_id}", tag = "deployments", operation_id = "get_deployment",
    params(("deployment_id" = String, Path, description = "a run id (dep_00001), or a fraise / fraise@environment for seed 001's service view"),
           ("environment" = Option<String>, Query)),
    responses((status = 200, body = RunDetails, description = "a run; for a fraise, seed 001's service view"), (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody, description = "DEPLOYMENT_AMBIGUOUS: the fraise runs in several environments; name one")))]
pub async fn get(
    State(state): State<AppState>,
    who: Caller,
    target: DeploymentRef,
) -> Result<Response, ApiError> {
    match target {
        DeploymentRef::Run(run) => {
            Ok(Json(details(&state, &who.workspace, &run).await?).into_response())
        }
        DeploymentRef::Service {
            fraise,
            environment,
        } => services::get(&state, &who, &fraise, &environment)
            .await
            .map(IntoResponse::into_response),
    }
}

#[utoipa::path(post, path = "/api/v1/deployments/{fraise}/{environment}", tag = "deployments",
    params(("fraise" = String, Path), ("environment" = String, Path)),
    request_body = Option<CreateBody>,
    responses((status = 202, body = Created, headers(("Location" = String, description = "the run")), links(("GetRun" = (operation_id = "get_deployment", parameters(("deployment_id" = "$response.body#/id")))), ("RunEvents" = (operation_id = "get_deployment_events", parameters(("deployment_id" = "$response.body#/id")))))), (status = 200, body = RunDetails, description = "with wait=true, once the run finished"),
              (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody),
              (status = 409, body = super::error::ErrorBody), (status = 413, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    who: Caller,
    Params((fraise, environment)): Params<(String, String)>,
    OptionalBody(body): OptionalBody<CreateBody>,
) -> Result<Response, ApiError> {
    authorize(&state, &who, Permission::DeploymentCreate, &environment)?;
    let wait_secs = body
        .timeout
        .unwrap_or(fraisier_engine::DEFAULT_TIMEOUT_SECS);
    let req = DeployRequest {
        tenant: who.workspace.clone(),
        fraise,
        environment,
        version: body.version,
        strategy: body.strategy,
        strategy_config: body.strategy_config,
        skip_health_check: body.skip_health_check,
        skip_backup: body.skip_backup,
        timeout_secs: body.timeout,
        rollback_on_failure: None,
        extra_dependencies: Vec::new(),
        metadata: Value::Object(body.metadata.unwrap_or_default()),
        triggered_by: who.username.clone(),
        trigger_type: "api".into(),
        git_ref: body.git_ref,
        force: body.force,
        commit: None,
        from_store: false,
        migrate: body.migrate,
    };
    let run = state.engine.submit(req).await?;
    // A run waiting for approval may wait a day: answer now.
    if body.wait && !fraisier_engine::awaits_approval(&run) {
        let run = state
            .engine
            .wait(&who.workspace, run.id, Duration::from_secs(wait_secs))
            .await?;
        let status = if run.status.is_final() {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        };
        let r = (status, Json(details(&state, &who.workspace, &run).await?)).into_response();
        return Ok(noted(r, &run));
    }
    Ok(noted(
        (StatusCode::ACCEPTED, Json(created(&run))).into_response(),
        &run,
    ))
}

/// Tells the audit trail which run a request created or acted on; an answer that accepted or
/// created a run says where it is (`Location`).
pub fn noted(mut r: Response, run: &Run) -> Response {
    if matches!(r.status().as_u16(), 201 | 202) {
        if let Ok(v) = axum::http::HeaderValue::from_str(&format!(
            "/api/v1/deployments/{}",
            run_id_string(run.id)
        )) {
            r.headers_mut().insert(axum::http::header::LOCATION, v);
        }
    }
    r.extensions_mut().insert(AuditNote {
        resource: Some(run_id_string(run.id)),
        service: Some(format!("{}@{}", run.fraise, run.environment)),
        ..AuditNote::default()
    });
    r
}

pub fn created(run: &Run) -> Created {
    let id = run_id_string(run.id);
    let approval = fraisier_engine::approval_policy_of(run).map(|p| {
        json!({ "required": p.required, "received": 0, "approvers": [], "status": "pending",
                "expires_at": views::ts(p.expires_at), "require_sod": p.require_sod, "requested_by": run.triggered_by })
    });
    Created {
        approval,
        status_url: format!("/api/v1/deployments/{id}"),
        events_url: format!("/api/v1/deployments/{id}/events"),
        id,
        fraise: run.fraise.clone(),
        environment: run.environment.clone(),
        status: run.status,
        kind: fraisier_model::run::to_wire(&run.kind),
        version: run.version.clone(),
        previous_version: run.previous_version.clone(),
        strategy: run.strategy.clone(),
        created_at: views::ts(run.created_at),
    }
}

#[utoipa::path(delete, path = "/api/v1/deployments/{deployment_id}", tag = "deployments",
    params(("deployment_id" = String, Path)),
    responses((status = 202, body = Cancelled), (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    who: Caller,
    Params(id): Params<String>,
) -> Result<Response, ApiError> {
    let id = run_id(&id)?;
    let run = state.engine.run(&who.workspace, id).await?;
    authorize(&state, &who, Permission::DeploymentUpdate, &run.environment)?;
    state
        .engine
        .cancel(&who.workspace, id, &who.username)
        .await?;
    // Cancelling restores the previous version; give it a moment so the answer is final.
    let run = state
        .engine
        .wait(&who.workspace, id, Duration::from_secs(15))
        .await?;
    let r = (
        StatusCode::ACCEPTED,
        Json(Cancelled {
            id: run_id_string(run.id),
            status: run.status,
            cancelled_at: views::ts_opt(run.cancelled_at),
            cancelled_by: run.cancel_requested_by.clone(),
        }),
    )
        .into_response();
    Ok(noted(r, &run))
}

#[utoipa::path(post, path = "/api/v1/deployments/{fraise}/{environment}/rollback", tag = "deployments",
    params(("fraise" = String, Path), ("environment" = String, Path)),
    request_body = Option<RollbackBody>,
    responses((status = 202, body = RollbackAccepted, headers(("Location" = String, description = "the run")), links(("GetRun" = (operation_id = "get_deployment", parameters(("deployment_id" = "$response.body#/id")))), ("RunEvents" = (operation_id = "get_deployment_events", parameters(("deployment_id" = "$response.body#/id")))))), (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody, description = "ENVIRONMENT_LOCKED or ENVIRONMENT_FROZEN")))]
pub async fn rollback(
    State(state): State<AppState>,
    who: Caller,
    Params((fraise, environment)): Params<(String, String)>,
    OptionalBody(body): OptionalBody<RollbackBody>,
) -> Result<Response, ApiError> {
    authorize(&state, &who, Permission::RollbackCreate, &environment)?;
    let run = state
        .engine
        .rollback(RollbackRequest {
            tenant: who.workspace.clone(),
            fraise,
            environment,
            to_version: body.to_version,
            reason: body.reason,
            triggered_by: who.username.clone(),
            trigger_type: "api".into(),
            migrate: body.migrate,
        })
        .await?;
    let r = (
        StatusCode::ACCEPTED,
        Json(RollbackAccepted {
            id: run_id_string(run.id),
            fraise: run.fraise.clone(),
            environment: run.environment.clone(),
            status: run.status,
            kind: "rollback".into(),
            from_version: run.previous_version.clone(),
            to_version: run.version.clone(),
            created_at: views::ts(run.created_at),
        }),
    )
        .into_response();
    Ok(noted(r, &run))
}

fn log_filter(q: &QueryMap) -> Result<LogFilter, ApiError> {
    Ok(LogFilter {
        lines: q.int("lines", 100, 1, 1000)? as u32,
        level: q.one_of::<LogLevel>("level", "debug, info, warn, error")?,
        component: q.one_of::<Component>(
            "component",
            "deployment, health_check, provider, hook, build, migration",
        )?,
        after_id: None,
    })
}

#[utoipa::path(get, path = "/api/v1/deployments/{deployment_id}/logs", tag = "deployments",
    params(("deployment_id" = String, Path), ("lines" = Option<u32>, Query, minimum = 1, maximum = 1000), ("follow" = Option<bool>, Query),
           ("level" = Option<LogLevel>, Query), ("component" = Option<Component>, Query)),
    responses((status = 200, description = "JSON, or with follow=true an SSE stream of `log` events ending with `end`",
                  content((LogsResponse = "application/json"), (SseFrame = "text/event-stream"))),
              (status = 404, body = super::error::ErrorBody)))]
pub async fn logs(
    State(state): State<AppState>,
    who: Caller,
    Params(id): Params<String>,
    q: QueryMap,
) -> Result<Response, ApiError> {
    let run = state.engine.run(&who.workspace, run_id(&id)?).await?;
    let filter = log_filter(&q)?;
    let follow = q.bool("follow")?;
    let store = state.engine.store();
    if follow {
        // Subscribe before reading the backlog so nothing falls between the two.
        let rx = state.engine.bus().subscribe();
        let (lines, _) = store.logs(run.id, &filter).await?;
        let backlog: Vec<SseEvent> = lines
            .iter()
            .map(|l| sse_json("log", &views::log(l), l.id))
            .collect();
        let last = lines.last().map_or(0, |l| l.id);
        let finished = run.status.is_final();
        let (level, component) = (filter.level, filter.component);
        let id = run.id;
        return Ok(follow_stream(
            state.engine.clone(),
            who.workspace.clone(),
            rx,
            run.id,
            backlog,
            last,
            finished,
            move |m| match m {
                BusMessage::Log(l)
                    if level.is_none_or(|lv| l.level >= lv)
                        && component.is_none_or(|c| c == l.component) =>
                {
                    Some((l.id, sse_json("log", &views::log(l), l.id)))
                }
                _ => None,
            },
            move |engine, after| async move {
                let f = fraisier_store::LogFilter {
                    lines: 0,
                    level,
                    component,
                    after_id: Some(after),
                };
                let (lines, _) = engine.store().logs(id, &f).await.unwrap_or_default();
                lines
                    .iter()
                    .map(|l| (l.id, sse_json("log", &views::log(l), l.id)))
                    .collect()
            },
        )
        .into_response());
    }
    let (lines, total) = store.logs(run.id, &filter).await?;
    Ok(Json(LogsResponse {
        deployment_id: run_id_string(run.id),
        truncated: total > lines.len() as u64,
        logs: lines.iter().map(views::log).collect(),
        total_lines: total,
    })
    .into_response())
}

#[utoipa::path(get, path = "/api/v1/deployments/{deployment_id}/events", tag = "deployments", operation_id = "get_deployment_events",
    params(("deployment_id" = String, Path), ("follow" = Option<bool>, Query)),
    responses((status = 200, description = "JSON, or with follow=true an SSE stream of `event` events ending with `end`",
                  content((EventsResponse = "application/json"), (SseFrame = "text/event-stream"))),
              (status = 404, body = super::error::ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    who: Caller,
    Params(id): Params<String>,
    q: QueryMap,
) -> Result<Response, ApiError> {
    let run = state.engine.run(&who.workspace, run_id(&id)?).await?;
    let follow = q.bool("follow")?;
    let rx = follow.then(|| state.engine.bus().subscribe());
    let events = state.engine.store().events(run.id, None).await?;
    if let Some(rx) = rx {
        let backlog = events
            .iter()
            .map(|e| sse_json("event", &views::event(e), e.id))
            .collect();
        let last = events.last().map_or(0, |e| e.id);
        let id = run.id;
        return Ok(follow_stream(
            state.engine.clone(),
            who.workspace.clone(),
            rx,
            run.id,
            backlog,
            last,
            run.status.is_final(),
            move |m| match m {
                BusMessage::Event(e) => Some((e.id, sse_json("event", &views::event(e), e.id))),
                _ => None,
            },
            move |engine, after| async move {
                let events = engine
                    .store()
                    .events(id, Some(after))
                    .await
                    .unwrap_or_default();
                events
                    .iter()
                    .map(|e| (e.id, sse_json("event", &views::event(e), e.id)))
                    .collect()
            },
        )
        .into_response());
    }
    Ok(Json(EventsResponse {
        deployment_id: run_id_string(run.id),
        total: events.len() as u64,
        events: events.iter().map(views::event).collect(),
    })
    .into_response())
}

fn sse_json<T: Serialize>(name: &str, v: &T, id: i64) -> SseEvent {
    SseEvent::default()
        .event(name)
        .id(id.to_string())
        .json_data(v)
        .unwrap_or_default()
}

/// How often a follower of a run another server executes reads the store: that server's bus
/// is not this one's.
const FOLLOW_POLL: Duration = Duration::from_secs(1);

/// An SSE stream: the backlog, then the run's items until it finishes — from the bus while
/// this server executes the run, from the store (`poll`, items after an id) while another
/// server does. Items are sent once each, by id.
#[allow(clippy::too_many_arguments)]
fn follow_stream<P, F>(
    engine: Engine,
    tenant: String,
    mut rx: tokio::sync::broadcast::Receiver<std::sync::Arc<BusMessage>>,
    run_id: i64,
    backlog: Vec<SseEvent>,
    mut last: i64,
    finished: bool,
    pick: impl Fn(&BusMessage) -> Option<(i64, SseEvent)> + Send + 'static,
    poll: P,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>>
where
    P: Fn(Engine, i64) -> F + Send + 'static,
    F: std::future::Future<Output = Vec<(i64, SseEvent)>> + Send,
{
    let (tx, out) = mpsc::channel::<SseEvent>(256);
    tokio::spawn(async move {
        for e in backlog {
            if tx.send(e).await.is_err() {
                return;
            }
        }
        let end = |status: Value| SseEvent::default().event("end").data(status.to_string());
        if finished {
            let _ = tx.send(end(json!({}))).await;
            return;
        }
        let mut tick = tokio::time::interval(FOLLOW_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The run's status is recorded final before its last event and log line: one more
        // read of the store after seeing it so, then the end.
        let mut ending = false;
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                m = rx.recv() => match m {
                    Ok(m) if m.run_id() == Some(run_id) => {
                        if let BusMessage::Finished { status, .. } = &*m {
                            let _ = tx.send(end(json!({ "status": status }))).await;
                            return;
                        }
                        if let Some((id, e)) = pick(&m).filter(|(id, _)| *id > last) {
                            last = id;
                            if tx.send(e).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let _ = tx
                            .send(SseEvent::default().event("lagged").data(n.to_string()))
                            .await;
                    }
                    Err(_) => return,
                },
                _ = tick.tick() => {
                    if engine.executes(run_id) {
                        continue;
                    }
                    // Executed elsewhere (or over): what the store has, then whether it ended.
                    let status = engine.run(&tenant, run_id).await.ok().map(|r| r.status);
                    for (id, e) in poll(engine.clone(), last).await {
                        if id > last {
                            last = id;
                            if tx.send(e).await.is_err() {
                                return;
                            }
                        }
                    }
                    if let Some(status) = status.filter(|s| s.is_final()) {
                        if ending {
                            let _ = tx.send(end(json!({ "status": status }))).await;
                            return;
                        }
                        ending = true;
                    }
                }
            }
        }
    });
    let s = stream::unfold(out, |mut out| async move {
        out.recv().await.map(|e| (Ok(e), out))
    });
    Sse::new(s).keep_alive(KeepAlive::default())
}
