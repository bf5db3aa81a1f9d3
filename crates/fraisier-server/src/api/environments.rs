//! Environments (seed 000): the configured stages and the state of what runs in them; their
//! locks (seed 003) and freeze windows (seed 004), which keep changes out for a while, and their
//! limits (seed 003).

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use fraisier_engine::guards::FreezeRequest;
use fraisier_engine::EngineError;
use fraisier_model::access::Permission;
use fraisier_store::{EnvironmentLock, FreezeWindow};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::environment_admin::{view, view_of};
use super::error::{ApiError, ErrorBody};
use super::extract::{check_text, JsonBody, OptionalBody, QueryMap};
use super::gate::{authorize, AuditNote, Caller};
use super::views::{ts, Pagination};
use super::{AppState, Params};
use fraisier_model::run::FraiseStatus;

/// How the fraises of an environment stand, counted from their one derived status.
struct Counts {
    total: u64,
    deployed: u64,
    healthy: u64,
    degraded: u64,
    unhealthy: u64,
}

/// Where each fraise of an environment stands, asked once (each asks the agent).
async fn statuses(
    state: &AppState,
    who: &Caller,
    env: &str,
) -> Result<Vec<(String, fraisier_engine::ServiceStatus)>, ApiError> {
    let mut out = Vec::new();
    for (name, f) in &state.config().scope(&who.workspace).fraises {
        if f.environments.contains_key(env) {
            let s = state
                .engine
                .service_status(&who.workspace, name, env)
                .await?;
            out.push((name.clone(), s));
        }
    }
    Ok(out)
}

fn counts_of(statuses: &[(String, fraisier_engine::ServiceStatus)]) -> Counts {
    let mut c = Counts {
        total: 0,
        deployed: 0,
        healthy: 0,
        degraded: 0,
        unhealthy: 0,
    };
    for (_, s) in statuses {
        c.total += 1;
        if s.current_version().is_some() {
            c.deployed += 1;
        }
        match s.status() {
            FraiseStatus::Healthy => c.healthy += 1,
            FraiseStatus::Degraded | FraiseStatus::Deploying => c.degraded += 1,
            FraiseStatus::Unhealthy => c.unhealthy += 1,
            FraiseStatus::Unknown => {}
        }
    }
    c
}

async fn counts(state: &AppState, who: &Caller, env: &str) -> Result<Counts, ApiError> {
    Ok(counts_of(&statuses(state, who, env).await?))
}

fn status_word(c: &Counts) -> &'static str {
    if c.unhealthy > 0 {
        "unhealthy"
    } else if c.degraded > 0 {
        "degraded"
    } else if c.deployed == 0 {
        "unknown"
    } else {
        "healthy"
    }
}

/// An environment of the caller's workspace, as it is now; another workspace's answers 404.
pub(super) fn lookup(
    state: &AppState,
    who: &Caller,
    name: &str,
) -> Result<fraisier_model::config::EnvironmentConfig, ApiError> {
    state
        .engine
        .environment(&who.workspace, name)
        .map_err(|_| ApiError::environment_not_found(name))
}

#[utoipa::path(get, path = "/api/v1/environments", tag = "environments",
    params(("include_state" = Option<bool>, Query, description = "seed 004's includeState: each environment's current release and what runs there")),
    responses((status = 200, body = Object), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    who: Caller,
    q: QueryMap,
) -> Result<Json<Value>, ApiError> {
    let include_state = q.bool("include_state")?;
    let services = if include_state {
        state.engine.store().services(&who.workspace).await?
    } else {
        Vec::new()
    };
    let records = state
        .engine
        .store()
        .environment_records_of(&who.workspace)
        .await?;
    let live = state.config();
    let mut out = Vec::new();
    for (name, e) in live.scope(&who.workspace).environments_in_order() {
        let c = counts(&state, &who, name).await?;
        let record = records.iter().find(|r| r.name == *name);
        let mut entry = json!(view(&state, &who.workspace, name, e, record));
        entry["provider"] = json!(e.provider);
        entry["fraises_deployed"] = json!(c.deployed);
        entry["fraises_total"] = json!(c.total);
        entry["status"] = json!(status_word(&c));
        if include_state {
            entry["current_release"] = current_release(&state, &who, name).await?;
            entry["releases"] = services
                .iter()
                .filter(|s| s.environment == *name)
                .filter_map(|s| {
                    Some(json!({ "fraise": s.fraise, "version": s.current_version.as_ref()? }))
                })
                .collect();
        }
        out.push(entry);
    }
    Ok(Json(json!({ "environments": out })))
}

/// The latest release that succeeded in an environment (seed 004's `currentRelease`).
async fn current_release(state: &AppState, who: &Caller, env: &str) -> Result<Value, ApiError> {
    let filter = fraisier_store::RunFilter {
        environment: Some(env.to_string()),
        status: Some(fraisier_model::run::RunStatus::Success),
        limit: 1,
        ..fraisier_store::RunFilter::default()
    };
    let (runs, _) = state
        .engine
        .store()
        .list_runs(&who.workspace, &filter)
        .await?;
    Ok(runs.first().map_or(Value::Null, |r| {
        let v = r.version.trim_start_matches('v');
        json!({
            "id": fraisier_store::run_id_string(r.id),
            "name": format!("{}-v{v}", r.fraise),
            "fraise": r.fraise,
            "version": r.version,
            "deployed_at": r.completed_at.map(ts),
        })
    }))
}

#[utoipa::path(get, path = "/api/v1/environments/{environment_name}", tag = "environments",
    params(("environment_name" = String, Path)), responses((status = 200, body = Object), (status = 404, body = super::error::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
) -> Result<Json<Value>, ApiError> {
    let e = lookup(&state, &who, &name)?;
    let c = counts(&state, &who, &name).await?;
    let live = state.config();
    let fraises: Vec<&String> = live
        .scope(&who.workspace)
        .fraises
        .iter()
        .filter(|(_, f)| f.environments.contains_key(&name))
        .map(|(n, _)| n)
        .collect();
    let lock = state.engine.environment_lock(&who.workspace, &name).await?;
    let frozen = state
        .engine
        .freeze_windows(&who.workspace, &name, true)
        .await?;
    let mut out = json!(view_of(&state, &who.workspace, &name).await?);
    out["provider"] = json!(e.provider);
    out["fraises"] = json!(fraises);
    out["fraises_deployed"] = json!(c.deployed);
    out["status"] = json!(status_word(&c));
    out["lock"] = json!(lock.as_ref().map(lock_view));
    out["active_freeze_windows"] = json!(frozen.iter().map(window_view).collect::<Vec<_>>());
    Ok(Json(out))
}

#[utoipa::path(get, path = "/api/v1/environments/{environment_name}/status", tag = "environments",
    params(("environment_name" = String, Path)), responses((status = 200, body = Object), (status = 404, body = super::error::ErrorBody)))]
pub async fn status(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
) -> Result<Json<Value>, ApiError> {
    let e = lookup(&state, &who, &name)?;
    let c = counts(&state, &who, &name).await?;
    let store = state.engine.store();
    let db = store.ping().await;
    let (in_use, max) = store.pool_size();
    let provider_up = state.engine.provider().available().await;
    let hosts = state
        .engine
        .fleet()
        .hosts(&who.workspace, &name)
        .await
        .map_err(fraisier_engine::EngineError::Provider)?;
    let healthy = hosts
        .iter()
        .filter(|(_, s)| *s != fraisier_model::agent::AgentStatus::Offline)
        .count();
    let nats = match &state.nats {
        Some(n) => {
            let h = n.health().await;
            json!({
                "status": if h["status"] == "healthy" { "connected" } else { "disconnected" },
                "stream": h["stream"], "streams": h["streams"],
                // This environment's events the stream has acknowledged, from any server.
                "events_published": store.published_events(&who.workspace, &name).await?,
            })
        }
        None => json!({ "status": "not_configured", "streams": 0, "events_published": 0 }),
    };
    Ok(Json(json!({
        "name": name,
        "status": status_word(&c),
        "provider": {
            "type": e.provider, "status": if provider_up { "connected" } else { "disconnected" },
            "hosts": hosts.len(), "hosts_healthy": healthy,
            "agents": hosts.iter().map(|(n, s)| json!({"name": n, "status": s})).collect::<Vec<_>>(),
        },
        "database": {
            "status": if db.is_ok() { "connected" } else { "disconnected" }, "backend": store.backend(),
            "connections": in_use, "max_connections": max,
            "response_time_ms": db.map(|d| d.as_secs_f64() * 1000.0).ok(),
        },
        "nats": nats,
        "fraises": { "total": c.total, "deployed": c.deployed, "healthy": c.healthy, "degraded": c.degraded, "unhealthy": c.unhealthy },
    })))
}

/// An environment's lock: who holds it and why.
#[derive(Serialize, ToSchema)]
pub struct LockView {
    pub environment: String,
    pub locked: bool,
    pub locked_by: Option<String>,
    pub reason: Option<String>,
    pub locked_at: Option<String>,
}

fn lock_view(l: &EnvironmentLock) -> LockView {
    LockView {
        environment: l.environment.clone(),
        locked: true,
        locked_by: Some(l.locked_by.clone()),
        reason: l.reason.clone(),
        locked_at: Some(ts(l.locked_at)),
    }
}

/// `POST …/lock`: why (optional).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LockBody {
    #[serde(default)]
    #[schema(max_length = 500)]
    pub reason: Option<String>,
}

/// Marks a response as about an environment, for the audit trail.
pub(super) fn noted(mut r: Response, environment: &str) -> Response {
    r.extensions_mut().insert(AuditNote {
        resource: Some(format!("environment:{environment}")),
        ..AuditNote::default()
    });
    r
}

#[utoipa::path(post, path = "/api/v1/environments/{environment_name}/lock", tag = "environments",
    params(("environment_name" = String, Path)), request_body(content = Option<LockBody>),
    responses((status = 200, body = LockView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "ENVIRONMENT_LOCKED: someone holds its lock")))]
pub async fn lock(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
    OptionalBody(body): OptionalBody<LockBody>,
) -> Result<Response, ApiError> {
    lookup(&state, &who, &name)?;
    authorize(&state, &who, Permission::EnvironmentUpdate, &name)?;
    check_text("reason", &body.reason, 500)?;
    let l = state
        .engine
        .lock_environment(&who.workspace, &name, &who.username, body.reason.as_deref())
        .await?;
    Ok(noted(Json(lock_view(&l)).into_response(), &name))
}

#[utoipa::path(post, path = "/api/v1/environments/{environment_name}/unlock", tag = "environments",
    params(("environment_name" = String, Path)),
    responses((status = 200, body = LockView, description = "unlocked (also when it was not locked)"), (status = 404, body = ErrorBody)))]
pub async fn unlock(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
) -> Result<Response, ApiError> {
    lookup(&state, &who, &name)?;
    authorize(&state, &who, Permission::EnvironmentUpdate, &name)?;
    state
        .engine
        .unlock_environment(&who.workspace, &name)
        .await?;
    let view = LockView {
        environment: name.clone(),
        locked: false,
        locked_by: None,
        reason: None,
        locked_at: None,
    };
    Ok(noted(Json(view).into_response(), &name))
}

/// A freeze window (seed 004).
#[derive(Serialize, ToSchema)]
pub struct FreezeWindowView {
    /// `frz_…`
    pub id: String,
    pub environment_id: String,
    pub start: String,
    pub end: String,
    pub reason: Option<String>,
    /// Users who may still deploy while it is active.
    pub exceptions: Vec<String>,
    pub active: bool,
    pub created_by: String,
    pub created_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct FreezeWindowList {
    pub freeze_windows: Vec<FreezeWindowView>,
    pub pagination: Pagination,
}

fn window_view(w: &FreezeWindow) -> FreezeWindowView {
    FreezeWindowView {
        id: format!("frz_{:05}", w.id),
        environment_id: w.environment.clone(),
        start: ts(w.starts_at),
        end: ts(w.ends_at),
        reason: w.reason.clone(),
        exceptions: w.exceptions.clone(),
        active: w.active_at(Utc::now()),
        created_by: w.created_by.clone(),
        created_at: ts(w.created_at),
    }
}

/// `POST …/freeze-windows`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FreezeWindowBody {
    /// RFC 3339.
    pub start: DateTime<Utc>,
    /// RFC 3339, after `start` and not past.
    pub end: DateTime<Utc>,
    #[serde(default)]
    #[schema(max_length = 500)]
    pub reason: Option<String>,
    /// User names still allowed to deploy (a webhook deploys as `webhook:<host>`).
    #[serde(default)]
    #[schema(max_items = 100)]
    pub exceptions: Vec<String>,
}

#[utoipa::path(post, path = "/api/v1/environments/{environment_name}/freeze-windows", tag = "environments",
    params(("environment_name" = String, Path)), request_body = FreezeWindowBody,
    responses((status = 201, body = FreezeWindowView, headers(("Location" = String, description = "the window"))),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn add_freeze_window(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
    JsonBody(body): JsonBody<FreezeWindowBody>,
) -> Result<Response, ApiError> {
    lookup(&state, &who, &name)?;
    authorize(&state, &who, Permission::EnvironmentUpdate, &name)?;
    check_text("reason", &body.reason, 500)?;
    let w = state
        .engine
        .add_freeze_window(&FreezeRequest {
            tenant: who.workspace.clone(),
            environment: name.clone(),
            starts_at: body.start,
            ends_at: body.end,
            reason: body.reason,
            exceptions: body.exceptions,
            by: who.username.clone(),
        })
        .await?;
    let view = window_view(&w);
    let mut r = (StatusCode::CREATED, Json(&view)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "/api/v1/environments/{name}/freeze-windows/{}",
        view.id
    )) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(noted(r, &name))
}

#[utoipa::path(get, path = "/api/v1/environments/{environment_name}/freeze-windows", tag = "environments",
    params(("environment_name" = String, Path), ("active" = Option<bool>, Query, description = "only those in force now")),
    responses((status = 200, body = FreezeWindowList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn freeze_windows(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
    q: QueryMap,
) -> Result<Json<FreezeWindowList>, ApiError> {
    lookup(&state, &who, &name)?;
    let active = q.bool("active")?;
    let list = state
        .engine
        .freeze_windows(&who.workspace, &name, active)
        .await?;
    let total = list.len() as u64;
    Ok(Json(FreezeWindowList {
        freeze_windows: list.iter().map(window_view).collect(),
        pagination: Pagination::new(total, total.max(1) as u32, 0),
    }))
}

#[utoipa::path(delete, path = "/api/v1/environments/{environment_name}/freeze-windows/{window_id}", tag = "environments",
    params(("environment_name" = String, Path), ("window_id" = String, Path, description = "frz_…")),
    responses((status = 200, body = Object, description = "{\"deleted\": true}"), (status = 404, body = ErrorBody)))]
pub async fn delete_freeze_window(
    State(state): State<AppState>,
    who: Caller,
    Params((name, window)): Params<(String, String)>,
) -> Result<Response, ApiError> {
    lookup(&state, &who, &name)?;
    authorize(&state, &who, Permission::EnvironmentUpdate, &name)?;
    let id = window
        .strip_prefix("frz_")
        .unwrap_or(&window)
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::from(EngineError::FreezeWindowNotFound(0)))?;
    state
        .engine
        .delete_freeze_window(&who.workspace, &name, id)
        .await?;
    Ok(noted(
        Json(json!({ "deleted": true })).into_response(),
        &name,
    ))
}

/// An environment's limits (seed 003) and what it runs now.
#[derive(Serialize, ToSchema)]
pub struct LimitsView {
    pub environment: String,
    /// The most instances its fraises may run together; `null`: no limit.
    pub max_instances: Option<u64>,
    /// Instances of the fraises deployed there now.
    pub instances_in_use: u64,
    /// What runs is over the limit (set below it): deploys that keep it over are refused.
    pub exceeded: bool,
    pub updated_by: Option<String>,
    pub updated_at: Option<String>,
}

/// `PUT …/limits`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsBody {
    /// 1 to 10000; `null` lifts the limit. Required: an empty body changes nothing.
    #[serde(deserialize_with = "super::extract::nullable")]
    #[schema(minimum = 1, maximum = 10000, required = true)]
    pub max_instances: Option<u64>,
}

fn limits_view(name: &str, l: &fraisier_engine::guards::LimitsView) -> LimitsView {
    LimitsView {
        environment: name.to_string(),
        max_instances: l.limits.max_instances,
        instances_in_use: l.instances_in_use,
        exceeded: l
            .limits
            .max_instances
            .is_some_and(|m| l.instances_in_use > m),
        updated_by: l.limits.updated_by.clone(),
        updated_at: l.limits.updated_at.map(ts),
    }
}

#[utoipa::path(get, path = "/api/v1/environments/{environment_name}/limits", tag = "environments",
    params(("environment_name" = String, Path)),
    responses((status = 200, body = LimitsView), (status = 404, body = ErrorBody)))]
pub async fn limits(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
) -> Result<Json<LimitsView>, ApiError> {
    lookup(&state, &who, &name)?;
    let l = state
        .engine
        .environment_limits(&who.workspace, &name)
        .await?;
    Ok(Json(limits_view(&name, &l)))
}

#[utoipa::path(put, path = "/api/v1/environments/{environment_name}/limits", tag = "environments",
    params(("environment_name" = String, Path)), request_body = LimitsBody,
    responses((status = 200, body = LimitsView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_limits(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
    JsonBody(body): JsonBody<LimitsBody>,
) -> Result<Response, ApiError> {
    lookup(&state, &who, &name)?;
    authorize(&state, &who, Permission::EnvironmentUpdate, &name)?;
    let l = state
        .engine
        .set_environment_limits(&who.workspace, &name, body.max_instances, &who.username)
        .await?;
    Ok(noted(Json(limits_view(&name, &l)).into_response(), &name))
}

/// How each fraise stands in an environment, and the environment as a whole.
#[derive(Serialize, ToSchema)]
pub struct EnvironmentHealth {
    pub environment: String,
    /// healthy | degraded | unhealthy | unknown
    pub status: &'static str,
    pub fraises: Vec<FraiseHealth>,
}

#[derive(Serialize, ToSchema)]
pub struct FraiseHealth {
    pub fraise: String,
    #[schema(value_type = String)]
    pub status: FraiseStatus,
    pub current_version: Option<String>,
    pub instances: u64,
    pub instances_healthy: u64,
}

#[utoipa::path(get, path = "/api/v1/environments/{environment_name}/health", tag = "environments",
    params(("environment_name" = String, Path)),
    responses((status = 200, body = EnvironmentHealth), (status = 404, body = ErrorBody)))]
pub async fn health(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
) -> Result<Json<EnvironmentHealth>, ApiError> {
    lookup(&state, &who, &name)?;
    let all = statuses(&state, &who, &name).await?;
    let c = counts_of(&all);
    let fraises = all
        .into_iter()
        .map(|(fraise, s)| {
            let (live, healthy) = s
                .observed
                .as_ref()
                .map(|o| o.live_counts())
                .unwrap_or((0, 0));
            FraiseHealth {
                fraise,
                status: s.status(),
                current_version: s.current_version().map(str::to_string),
                instances: live as u64,
                instances_healthy: healthy as u64,
            }
        })
        .collect();
    Ok(Json(EnvironmentHealth {
        environment: name,
        status: status_word(&c),
        fraises,
    }))
}

#[utoipa::path(get, path = "/api/v1/environments/{environment_name}/metrics", tag = "environments",
    params(("environment_name" = String, Path)),
    responses((status = 200, body = Object, description = "the routers' counters summed over the environment's fraises, and each fraise's"), (status = 404, body = ErrorBody)))]
pub async fn metrics(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
) -> Result<Json<Value>, ApiError> {
    use fraisier_model::metrics::VersionMetrics;
    lookup(&state, &who, &name)?;
    let mut all = VersionMetrics::empty();
    let mut per_fraise = serde_json::Map::new();
    for (fraise, s) in statuses(&state, &who, &name).await? {
        let mut mine = VersionMetrics::empty();
        for m in s.observed.iter().flat_map(|o| o.metrics.values()) {
            mine.add(m);
            all.add(m);
        }
        per_fraise.insert(fraise, json!(mine.summary()));
    }
    let summary = all.summary();
    Ok(Json(json!({
        "environment": name,
        "requests": summary.requests,
        "success_rate": summary.success_rate,
        "error_rate": summary.error_rate,
        "latency_p50_ms": summary.latency_p50_ms,
        "latency_p99_ms": summary.latency_p99_ms,
        "fraises": per_fraise,
    })))
}

#[utoipa::path(get, path = "/api/v1/environments/{environment_name}/deployments", tag = "environments",
    params(("environment_name" = String, Path), ("fraise" = Option<String>, Query),
           ("status" = Option<fraisier_model::run::RunStatus>, Query),
           ("limit" = Option<u32>, Query, minimum = 1, maximum = 500), ("offset" = Option<u64>, Query)),
    responses((status = 200, body = Object, description = "as GET /deployments?environment=…"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn deployments(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
    q: QueryMap,
) -> Result<Response, ApiError> {
    lookup(&state, &who, &name)?;
    if q.get("environment").is_some() {
        return Err(ApiError::invalid(
            "environment",
            "the path names the environment already",
        ));
    }
    let mut q = q;
    q.0.push(("environment".into(), name));
    super::deployments::list(State(state), who, q).await
}

#[utoipa::path(get, path = "/api/v1/environments/{environment_name}/config", tag = "environments",
    params(("environment_name" = String, Path)),
    responses((status = 200, body = Object, description = "the environment's rules and settings (fraisier.yaml's, with the API's changes), its lock and limits"),
              (status = 404, body = ErrorBody)))]
pub async fn config(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
) -> Result<Json<Value>, ApiError> {
    lookup(&state, &who, &name)?;
    Ok(Json(config_view(&state, &who, &name).await?))
}

#[utoipa::path(put, path = "/api/v1/environments/{environment_name}/config", tag = "environments",
    params(("environment_name" = String, Path)),
    request_body(content = Option<super::environment_admin::EnvironmentSettingsBody>, description = "seed 003's configuration update: the settings PUT /environments/{name} takes"),
    responses((status = 200, body = Object, description = "the configuration, changed"),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_config(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
    OptionalBody(body): OptionalBody<super::environment_admin::EnvironmentSettingsBody>,
) -> Result<Response, ApiError> {
    lookup(&state, &who, &name)?;
    authorize(&state, &who, Permission::EnvironmentUpdate, &name)?;
    state
        .engine
        .update_environment(&who.workspace, &name, &body.settings(), &who.username)
        .await?;
    let view = config_view(&state, &who, &name).await?;
    Ok(noted(Json(view).into_response(), &name))
}

/// Seed 003's configuration of an environment: its rules and settings, lock and limits.
async fn config_view(state: &AppState, who: &Caller, name: &str) -> Result<Value, ApiError> {
    let e = lookup(state, who, name)?;
    let rules = e.rules(name);
    let lock = state.engine.environment_lock(&who.workspace, name).await?;
    let limits = state
        .engine
        .environment_limits(&who.workspace, name)
        .await?;
    let settings = view_of(state, &who.workspace, name).await?;
    Ok(json!({
        "name": name,
        "display_name": settings.display_name,
        "description": e.description,
        "provider": e.provider,
        "order_index": settings.order_index,
        "is_production": settings.is_production,
        "required_roles": rules.required_roles,
        "required_approvals": e.required_approvals,
        "require_sod": e.require_sod,
        "approval_timeout_seconds": e.approval_timeout.as_secs_f64(),
        "deployment_timeout_seconds": settings.config.deployment_timeout,
        "health_check_interval_seconds": settings.config.health_check_interval,
        "promotion_policy": settings.promotion_policy,
        "change_windows": e.change_windows,
        "change_window_exceptions": e.change_window_exceptions,
        "notifications": e.notifications.len(),
        "lock": lock.as_ref().map(lock_view),
        "limits": limits_view(name, &limits),
        "defined_in": settings.defined_in,
    }))
}
