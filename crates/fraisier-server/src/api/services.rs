//! Service deployments (seed 001): a fraise in an environment as one long-lived object —
//! deploy with a spec, validate, state, health, rollback and live progress.

use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use fraisier_engine::{BusMessage, DeployRequest, Engine, RollbackRequest};
use fraisier_model::run::{to_wire, Health, RunStatus, ServiceState};
use fraisier_model::service::InstanceState;
use fraisier_model::Strategy;
use fraisier_store::{run_id_string, Run};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use super::error::ApiError;
use super::extract::{parse_json_lenient, JsonBody, OptionalBody, QueryMap};
use super::gate::authorize;
use super::gate::Caller;
use super::params::{ServiceName, StrategyName, Version};
use super::reference::DeploymentRef;
use super::views::{self, StepView};
use super::{deployments, AppState, Params};
use fraisier_model::access::Permission;

/// Seed 001's deployment spec. Commands, paths and hooks are fixed by `fraisier.yaml` (written
/// by admins); a spec may repeat them but not change them.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploySpec {
    /// A fraise, or fraise@environment.
    #[schema(value_type = ServiceName)]
    pub name: String,
    #[schema(value_type = Option<Version>)]
    pub version: Option<String>,
    pub environment: Option<String>,
    #[schema(value_type = Option<StrategyName>)]
    pub strategy: Option<Strategy>,
    #[schema(value_type = Option<Object>)]
    pub strategy_config: Option<Map<String, Value>>,
    pub artifact_path: Option<String>,
    pub working_directory: Option<String>,
    pub service_name: Option<String>,
    pub health_check_url: Option<String>,
    pub rollback_on_failure: Option<bool>,
    #[serde(default)]
    pub dependencies: Vec<String>,
    pub pre_deploy_hooks: Option<Vec<String>>,
    pub post_deploy_hooks: Option<Vec<String>>,
    /// Default true: answer when the run is done (201). false: answer at once (202).
    pub wait: Option<bool>,
    #[schema(minimum = 1, maximum = 604800)]
    pub timeout: Option<u64>,
    #[serde(default)]
    pub skip_health_check: bool,
    #[serde(default)]
    pub skip_backup: bool,
    /// Free-form, kept with the run (an object).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

#[derive(Serialize, ToSchema)]
pub struct DeployResult {
    pub id: String,
    pub version: String,
    pub start_time: Option<String>,
    pub end_time: Option<String>,
    /// Go-style, e.g. "5m0s".
    pub duration: String,
    pub success: bool,
    pub message: String,
    pub previous_version: Option<String>,
    pub steps: Vec<StepView>,
}

#[derive(Serialize, ToSchema)]
pub struct ValidationResult {
    pub valid: bool,
    pub issues: Vec<Value>,
    pub warnings: Vec<Value>,
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackSpec {
    #[schema(value_type = Option<Version>)]
    pub version: Option<String>,
    pub environment: Option<String>,
    pub reason: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RollbackDone {
    pub message: String,
    pub version: String,
    pub timestamp: String,
    pub id: String,
}

#[derive(Serialize, ToSchema)]
pub struct Replicas {
    pub desired: u32,
    pub available: u32,
    pub ready: u32,
    pub updated: u32,
}

#[derive(Serialize, ToSchema)]
pub struct ServiceEventView {
    pub timestamp: String,
    /// info | warning | error
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    pub source: String,
}

#[derive(Serialize, ToSchema)]
pub struct ServiceView {
    pub name: String,
    pub version: Option<String>,
    pub environment: String,
    pub state: ServiceState,
    pub health: Health,
    pub last_updated: String,
    pub replicas: Replicas,
    #[schema(value_type = Object)]
    pub configuration: Value,
    pub events: Vec<ServiceEventView>,
}

#[derive(Serialize, ToSchema)]
pub struct ServiceListItem {
    pub name: String,
    pub version: Option<String>,
    pub environment: String,
    pub state: ServiceState,
    pub health: Health,
    pub updated_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct ServiceList {
    pub deployments: Vec<ServiceListItem>,
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

fn spec_error(field: &str, message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "INVALID_DEPLOYMENT_SPEC", message)
        .with_details(json!({ "field": field }))
}

/// The environment a seed-001 name refers to: `fraise@env`, `?environment=`, the body's, or
/// the fraise's only environment.
pub fn resolve(
    state: &AppState,
    who: &Caller,
    name: &str,
    environment: Option<&str>,
) -> Result<(String, String), ApiError> {
    let (fraise, env) = match name.split_once('@') {
        Some((f, e)) => (f, Some(e)),
        None => (name, environment),
    };
    let live = state.config();
    let f = live
        .scope(&who.workspace)
        .fraises
        .get(fraise)
        .filter(|_| fraisier_model::names::is_valid_name(fraise))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "DEPLOYMENT_NOT_FOUND",
                format!("Deployment {name} not found"),
            )
            .with_details(json!({ "deployment": name }))
        })?;
    let env = match env {
        Some(e) => e.to_string(),
        None if f.environments.len() == 1 => {
            f.environments.keys().next().cloned().unwrap_or_default()
        }
        None => {
            let envs: Vec<&String> = f.environments.keys().collect();
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "DEPLOYMENT_AMBIGUOUS",
                format!("{fraise} runs in several environments ({}): name one with ?environment=, \"environment\" or {fraise}@<environment>", envs.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(", ")),
            )
            .with_details(json!({ "field": "environment", "deployment": fraise, "environments": envs })));
        }
    };
    if !f.environments.contains_key(&env) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "DEPLOYMENT_NOT_FOUND",
            format!("Deployment {fraise}@{env} not found"),
        )
        .with_details(json!({ "deployment": name, "environment": env })));
    }
    Ok((fraise.to_string(), env))
}

fn check_fixed(
    spec: &DeploySpec,
    f: &fraisier_model::FraiseConfig,
    allowed_hosts: &[String],
) -> Result<(), ApiError> {
    let differs = |field: &str| {
        spec_error(field, format!("{field} is set by administrators in fraisier.yaml (fraises.{}.{field}) and cannot be changed by a request", spec.name))
    };
    if let Some(p) = &spec.artifact_path {
        if Some(p) != f.artifact_path.as_ref() {
            return Err(differs("artifact_path"));
        }
    }
    if let Some(w) = &spec.working_directory {
        if Some(std::path::Path::new(w)) != f.working_directory.as_deref() {
            return Err(differs("working_directory"));
        }
    }
    if let Some(h) = &spec.pre_deploy_hooks {
        if h != &f.pre_deploy_hooks {
            return Err(differs("pre_deploy_hooks"));
        }
    }
    if let Some(h) = &spec.post_deploy_hooks {
        if h != &f.post_deploy_hooks {
            return Err(differs("post_deploy_hooks"));
        }
    }
    if let Some(url) = &spec.health_check_url {
        let path = f.health_check.as_ref().map(|h| h.path.as_str());
        if let Some(problem) = health_url_problem(url, path, allowed_hosts) {
            return Err(spec_error("health_check_url", problem));
        }
    }
    Ok(())
}

/// A request's `health_check_url` only names the probe configured in fraisier.yaml (which is
/// what runs): the configured path, alone or on the instance's own host (loopback) or a host
/// of `server.allowed_health_hosts`. Anything else is refused rather than ignored, so that no
/// request can look like it points the server at another host (no SSRF).
fn health_url_problem(url: &str, path: Option<&str>, allowed_hosts: &[String]) -> Option<String> {
    let Some(path) = path else {
        return Some("this fraise has no HTTP health check configured; probes are configured in fraisier.yaml".into());
    };
    let (host, url_path) = match url.split_once("://") {
        None => (None, url),
        Some((scheme, rest)) => {
            if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
                return Some(format!(
                    "health_check_url must be http or https, got {scheme}://"
                ));
            }
            let (authority, p) = rest
                .find('/')
                .map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
            if authority.contains('@') {
                return Some("health_check_url must not carry credentials".into());
            }
            let host = match authority.strip_prefix('[') {
                Some(v6) => v6.split(']').next().unwrap_or(""),
                None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
            };
            (Some(host.to_ascii_lowercase()), p)
        }
    };
    let url_path = url_path.split(['?', '#']).next().unwrap_or("");
    if url_path != path {
        return Some(format!(
            "health_check_url must name the configured health check path ({path}); probes are configured in fraisier.yaml"
        ));
    }
    match host {
        None => None,
        Some(h) if matches!(h.as_str(), "localhost" | "127.0.0.1" | "::1") => None,
        Some(h) if allowed_hosts.iter().any(|a| a.eq_ignore_ascii_case(&h)) => None,
        Some(h) => Some(format!(
            "health_check_url may name only the fraise's own instances (localhost) or a host of server.allowed_health_hosts, not {h}"
        )),
    }
}

fn deploy_request(
    state: &AppState,
    who: &Caller,
    spec: DeploySpec,
) -> Result<DeployRequest, ApiError> {
    let (fraise, environment) = resolve(state, who, &spec.name, spec.environment.as_deref())?;
    let live = state.config();
    check_fixed(
        &spec,
        &live.scope(&who.workspace).fraises[&fraise],
        &live.server.allowed_health_hosts,
    )?;
    let mut metadata = if let Some(m) = spec.metadata {
        Value::Object(m)
    } else {
        json!({})
    };
    if let Some(s) = spec.service_name {
        metadata["service_name"] = json!(s);
    }
    Ok(DeployRequest {
        tenant: who.workspace.clone(),
        fraise,
        environment,
        version: spec.version,
        strategy: spec.strategy,
        strategy_config: spec.strategy_config,
        skip_health_check: spec.skip_health_check,
        skip_backup: spec.skip_backup,
        timeout_secs: spec.timeout,
        rollback_on_failure: spec.rollback_on_failure,
        extra_dependencies: spec.dependencies,
        metadata,
        triggered_by: who.username.clone(),
        trigger_type: "api".into(),
        git_ref: None,
        force: false,
        commit: None,
        from_store: false,
        migrate: None,
    })
}

/// Go's duration spelling (`5m0s`, `1.5s`), as seed 001 shows it.
pub fn go_duration(secs: f64) -> String {
    let total = secs.max(0.0);
    let h = (total / 3600.0).floor();
    let m = ((total - h * 3600.0) / 60.0).floor();
    let s = total - h * 3600.0 - m * 60.0;
    let s = if (s - s.round()).abs() < 0.0005 {
        format!("{}", s.round() as u64)
    } else {
        format!("{s:.3}").trim_end_matches('0').to_string()
    };
    match (h as u64, m as u64) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m}m{s}s"),
        (h, m) => format!("{h}h{m}m{s}s"),
    }
}

async fn result_of(engine: &Engine, run: &Run) -> Result<DeployResult, ApiError> {
    let steps = engine.store().steps(run.id).await?;
    let success = run.status == RunStatus::Success;
    Ok(DeployResult {
        id: run_id_string(run.id),
        version: run.version.clone(),
        start_time: views::ts_opt(run.started_at),
        end_time: views::ts_opt(run.completed_at),
        duration: go_duration(views::duration_seconds(run).unwrap_or(0.0)),
        success,
        message: if success {
            format!(
                "{} {} deployed to {}",
                run.fraise, run.version, run.environment
            )
        } else {
            run.error_message
                .clone()
                .unwrap_or_else(|| format!("deployment {}", to_wire(&run.status)))
        },
        previous_version: run.previous_version.clone(),
        steps: steps.iter().map(views::step).collect(),
    })
}

#[utoipa::path(post, path = "/api/v1/deployments", tag = "service deployments",
    request_body = DeploySpec,
    responses((status = 201, body = DeployResult, headers(("Location" = String, description = "the run")), links(("GetRun" = (operation_id = "get_deployment", parameters(("deployment_id" = "$response.body#/id")))), ("RunEvents" = (operation_id = "get_deployment_events", parameters(("deployment_id" = "$response.body#/id")))))), (status = 202, body = deployments::Created, description = "with wait=false, or when the run waits for approval", headers(("Location" = String, description = "the run")), links(("GetRun" = (operation_id = "get_deployment", parameters(("deployment_id" = "$response.body#/id")))), ("RunEvents" = (operation_id = "get_deployment_events", parameters(("deployment_id" = "$response.body#/id")))))),
              (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody),
              (status = 500, body = super::error::ErrorBody, description = "the deployment failed; details.result holds the steps"), (status = 422, body = super::error::ErrorBody, description = "ENVIRONMENT_LOCKED or ENVIRONMENT_FROZEN")))]
pub async fn create(
    State(state): State<AppState>,
    who: Caller,
    JsonBody(spec): JsonBody<DeploySpec>,
) -> Result<Response, ApiError> {
    let wait = spec.wait.unwrap_or(true);
    let timeout = spec
        .timeout
        .unwrap_or(fraisier_engine::DEFAULT_TIMEOUT_SECS);
    let req = deploy_request(&state, &who, spec)?;
    authorize(&state, &who, Permission::DeploymentCreate, &req.environment)?;
    let run = state.engine.submit(req).await?;
    if !wait || fraisier_engine::awaits_approval(&run) {
        return Ok(deployments::noted(
            (StatusCode::ACCEPTED, Json(deployments::created(&run))).into_response(),
            &run,
        ));
    }
    let run = state
        .engine
        .wait(&who.workspace, run.id, Duration::from_secs(timeout))
        .await?;
    let result = result_of(&state.engine, &run).await?;
    let noted = |r: Response| deployments::noted(r, &run);
    match run.status {
        RunStatus::Success => Ok(noted((StatusCode::CREATED, Json(result)).into_response())),
        RunStatus::Pending | RunStatus::InProgress => Ok(noted(
            (StatusCode::ACCEPTED, Json(deployments::created(&run))).into_response(),
        )),
        _ => {
            let code = match run.error_code.as_deref() {
                Some("HEALTH_CHECK_FAILED") => "HEALTH_CHECK_FAILED",
                Some("DEPENDENCY_FAILED") => "DEPENDENCY_FAILED",
                Some("ROLLBACK_FAILED") => "ROLLBACK_FAILED",
                Some("DEPLOYMENT_CANCELLED") => "DEPLOYMENT_CANCELLED",
                _ => "DEPLOYMENT_FAILED",
            };
            let e = ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, code, result.message.clone()).with_details(json!({
                "deployment": run.fraise, "operation": "deploy", "cause": run.error_message, "deployment_id": run_id_string(run.id),
                "result": result,
            }));
            Ok(noted(e.into_response()))
        }
    }
}

#[utoipa::path(post, path = "/api/v1/deployments/validate", tag = "service deployments",
    request_body = DeploySpec,
    responses((status = 200, body = ValidationResult), (status = 400, body = ValidationResult)))]
pub async fn validate(
    State(state): State<AppState>,
    who: Caller,
    body: axum::body::Bytes,
) -> Response {
    let issue = |field: String, message: String| fraisier_engine::ValidationIssue {
        field,
        message,
        severity: Some("error".into()),
    };
    let invalid = |issues: Vec<fraisier_engine::ValidationIssue>| {
        (
            StatusCode::BAD_REQUEST,
            Json(ValidationResult {
                valid: false,
                issues: issues.iter().map(|i| json!(i)).collect(),
                warnings: vec![],
            }),
        )
            .into_response()
    };
    // Every problem at once: fields that do not parse are reported and left out.
    let (spec, problems) = parse_json_lenient::<DeploySpec>(&body);
    let mut early: Vec<_> = problems.into_iter().map(|(f, m)| issue(f, m)).collect();
    let Some(spec) = spec else {
        return invalid(early);
    };
    let req = match deploy_request(&state, &who, spec) {
        Ok(r) => r,
        Err(e) => {
            let field = e
                .details
                .get("field")
                .and_then(Value::as_str)
                .unwrap_or("name")
                .to_string();
            early.push(issue(field, e.message));
            return invalid(early);
        }
    };
    let mut v = state.engine.validate(&req).await;
    early.append(&mut v.issues);
    v.issues = early;
    if let Err(e) = authorize(&state, &who, Permission::DeploymentCreate, &req.environment) {
        v.issues.push(fraisier_engine::ValidationIssue {
            field: "environment".into(),
            message: e.message,
            severity: Some("error".into()),
        });
    }
    let valid = v.issues.is_empty();
    let body = ValidationResult {
        valid,
        issues: v.issues.iter().map(|i| json!(i)).collect(),
        warnings: v
            .warnings
            .iter()
            .map(|w| json!({ "field": w.field, "message": w.message }))
            .collect(),
    };
    (
        if valid {
            StatusCode::OK
        } else {
            StatusCode::BAD_REQUEST
        },
        Json(body),
    )
        .into_response()
}

/// Seed 001's view of a service deployment, from its one derived status.
pub async fn get(
    state: &AppState,
    who: &Caller,
    fraise: &str,
    env: &str,
) -> Result<Json<ServiceView>, ApiError> {
    let s = state
        .engine
        .service_status(&who.workspace, fraise, env)
        .await?;
    let live = state.config();
    let f = &live.scope(&who.workspace).fraises[fraise];
    let fe = &f.environments[env];
    let current = s.current_version().map(str::to_string);
    let live = s
        .observed
        .as_ref()
        .map(|o| {
            o.instances
                .iter()
                .filter(|i| i.state != InstanceState::Draining)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let replicas = Replicas {
        desired: s
            .record
            .as_ref()
            .and_then(|r| r.desired.as_ref())
            .map_or(0, |d| d.serving().count() as u32),
        available: live
            .iter()
            .filter(|i| i.state == InstanceState::Healthy && i.weight > 0)
            .count() as u32,
        ready: live
            .iter()
            .filter(|i| i.state == InstanceState::Healthy)
            .count() as u32,
        updated: live
            .iter()
            .filter(|i| current.as_deref() == Some(i.version.as_str()))
            .count() as u32,
    };
    let events = state
        .engine
        .store()
        .service_events(&who.workspace, fraise, env, 20)
        .await?;
    Ok(Json(ServiceView {
        name: fraise.to_string(),
        version: current,
        environment: env.to_string(),
        state: s.state(),
        health: s.health(),
        last_updated: views::ts(s.record.as_ref().map_or(state.started_at, |r| r.updated_at)),
        replicas,
        configuration: json!({
            "type": f.kind, "strategy": fe.strategy, "strategy_config": fe.strategy_config, "port": fe.port,
            "instances": fe.instances, "health_check": f.health_check, "dependencies": f.dependencies,
            "project": f.project,
        }),
        events: events
            .iter()
            .map(|e| ServiceEventView {
                timestamp: views::ts(e.timestamp),
                kind: if e.event_type.ends_with("failed") {
                    "error"
                } else if e.event_type.contains("rollback") || e.event_type.contains("cancel") {
                    "warning"
                } else {
                    "info"
                }
                .into(),
                message: match e.run_id {
                    Some(id) => format!("{} ({})", e.event_type, run_id_string(id)),
                    None => e.event_type.clone(),
                },
                source: "engine".into(),
            })
            .collect(),
    }))
}

pub async fn list(
    state: &AppState,
    who: &Caller,
    q: &QueryMap,
) -> Result<Json<ServiceList>, ApiError> {
    let (limit, offset) = q.pagination(50)?;
    let wanted: Option<ServiceState> = q.one_of(
        "state",
        "unknown, deploying, healthy, unhealthy, failed, rolling_back",
    )?;
    let env_filter = q.text("environment");
    let mut items = Vec::new();
    for (fraise, f) in &state.config().scope(&who.workspace).fraises {
        for env in f.environments.keys() {
            if env_filter.as_deref().is_some_and(|e| e != env) {
                continue;
            }
            let s = state
                .engine
                .service_status(&who.workspace, fraise, env)
                .await?;
            if wanted.is_some_and(|w| w != s.state()) {
                continue;
            }
            items.push(ServiceListItem {
                name: fraise.clone(),
                version: s.current_version().map(str::to_string),
                environment: env.clone(),
                state: s.state(),
                health: s.health(),
                updated_at: views::ts(s.record.as_ref().map_or(state.started_at, |r| r.updated_at)),
            });
        }
    }
    let total = items.len() as u64;
    let deployments = items
        .into_iter()
        .skip(offset as usize)
        .take(limit as usize)
        .collect();
    Ok(Json(ServiceList {
        deployments,
        total,
        limit,
        offset,
    }))
}

#[utoipa::path(get, path = "/api/v1/deployments/{name}/health", tag = "service deployments",
    params(("name" = String, Path, description = "fraise or fraise@environment"), ("environment" = Option<String>, Query)),
    responses((status = 200, body = Object), (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody, description = "DEPLOYMENT_AMBIGUOUS: the fraise runs in several environments; name one")))]
pub async fn health(
    State(state): State<AppState>,
    who: Caller,
    target: DeploymentRef,
) -> Result<Json<Value>, ApiError> {
    let (fraise, env) = target.service();
    let s = state
        .engine
        .service_status(&who.workspace, fraise, env)
        .await?;
    let (observed, agent_message) = (s.observed.clone(), s.unobserved.clone());
    let overall = s.health();
    let checks: Vec<Value> = observed
        .as_ref()
        .map(|o| {
            o.instances
                .iter()
                .map(|i| {
                    let status = match i.state {
                        InstanceState::Healthy => "healthy",
                        InstanceState::Starting | InstanceState::Draining => "unknown",
                        _ => "unhealthy",
                    };
                    json!({
                        "name": format!("instance {} ({})", i.id, i.version),
                        "status": status,
                        "message": i.last_error.clone().unwrap_or_else(|| to_wire(&i.state)),
                        "checks_passed": i.checks_passed, "checks_total": i.checks_total,
                        "last_run": i.last_check_at.map(views::ts),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let router = observed.as_ref().map(|o| {
        json!({
            "name": format!("router :{}", o.port.map_or("-".to_string(), |p| p.to_string())),
            "status": if o.listening { "healthy" } else { "unhealthy" },
            "message": o.router_error.clone().unwrap_or_else(|| if o.listening { "listening".into() } else { "not listening".into() }),
        })
    });
    let last_check = observed
        .as_ref()
        .and_then(|o| o.instances.iter().filter_map(|i| i.last_check_at).max())
        .map(views::ts);
    Ok(Json(json!({
        "overall": overall,
        "components": {
            "service": { "name": fraise, "status": match overall { Health::Degraded => Health::Unhealthy, h => h }, "message": format!("{} instance(s)", checks.len()), "checks": checks },
            "router": router,
        },
        "last_check": last_check.unwrap_or_else(|| views::ts(Utc::now())),
        "message": agent_message.unwrap_or_else(|| format!("{fraise} in {env} is {}", to_wire(&overall))),
    })))
}

#[utoipa::path(post, path = "/api/v1/deployments/{name}/rollback", tag = "service deployments",
    params(("name" = String, Path, description = "fraise or fraise@environment")),
    request_body = Option<RollbackSpec>,
    responses((status = 200, body = RollbackDone), (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody),
              (status = 409, body = super::error::ErrorBody), (status = 500, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody, description = "ENVIRONMENT_LOCKED or ENVIRONMENT_FROZEN")))]
pub async fn rollback(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
    q: QueryMap,
    OptionalBody(spec): OptionalBody<RollbackSpec>,
) -> Result<Response, ApiError> {
    let (fraise, environment) = resolve(
        &state,
        &who,
        &name,
        spec.environment.as_deref().or(q.get("environment")),
    )?;
    authorize(&state, &who, Permission::RollbackCreate, &environment)?;
    let run = state
        .engine
        .rollback(RollbackRequest {
            tenant: who.workspace.clone(),
            fraise,
            environment,
            to_version: spec.version,
            reason: spec.reason,
            triggered_by: who.username.clone(),
            trigger_type: "api".into(),
            migrate: None,
        })
        .await?;
    let run = state
        .engine
        .wait(&who.workspace, run.id, Duration::from_secs(900))
        .await?;
    if run.status != RunStatus::Success {
        let e = ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "ROLLBACK_FAILED", run.error_message.clone().unwrap_or_else(|| "rollback did not complete".into()))
            .with_details(json!({ "deployment": run.fraise, "operation": "rollback", "cause": run.error_message, "deployment_id": run_id_string(run.id) }));
        return Ok(deployments::noted(e.into_response(), &run));
    }
    let r = Json(RollbackDone {
        message: "Rollback completed successfully".into(),
        version: run.version.clone(),
        timestamp: views::ts(run.completed_at.unwrap_or_else(Utc::now)),
        id: run_id_string(run.id),
    })
    .into_response();
    Ok(deployments::noted(r, &run))
}

/// `ws://…/deployments/{name}/progress`: progress messages of a run (by id) or of the
/// service's runs (by name) as they happen.
#[utoipa::path(get, path = "/api/v1/deployments/{name}/progress", tag = "service deployments",
    params(("name" = String, Path, description = "a run id, fraise or fraise@environment")),
    responses((status = 101, description = "WebSocket of progress messages {step, status, message, progress_pct, timestamp}"), (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)))]
pub async fn progress(
    State(state): State<AppState>,
    who: Caller,
    target: DeploymentRef,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let target = match target {
        DeploymentRef::Run(run) => Target::Run(*run),
        DeploymentRef::Service {
            fraise,
            environment: env,
        } => {
            let active = state
                .engine
                .store()
                .active_run_for(&who.workspace, &fraise, &env)
                .await?;
            Target::Service {
                fraise,
                env,
                active,
            }
        }
    };
    let ws = ws.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETERS",
            format!("this endpoint speaks WebSocket: {e}"),
        )
    })?;
    let (engine, tenant) = (state.engine.clone(), who.workspace.clone());
    Ok(ws.on_upgrade(move |socket| follow_progress(socket, engine, tenant, target)))
}

enum Target {
    Run(Run),
    Service {
        fraise: String,
        env: String,
        active: Option<Run>,
    },
}

async fn follow_progress(mut socket: WebSocket, engine: Engine, tenant: String, target: Target) {
    let mut rx = engine.bus().subscribe();
    let send = |v: Value| Message::Text(v.to_string().into());
    let now = || views::ts(Utc::now());
    let (mut run_id, fraise, env) = match &target {
        Target::Run(r) => (Some(r.id), r.fraise.clone(), r.environment.clone()),
        Target::Service {
            fraise,
            env,
            active,
        } => (active.as_ref().map(|r| r.id), fraise.clone(), env.clone()),
    };
    let hello = match &target {
        Target::Run(r) if r.status.is_final() => {
            let status = if r.status == RunStatus::Success {
                "success"
            } else {
                "failed"
            };
            let _ = socket.send(send(json!({ "step": "finished", "status": status, "message": format!("{} {}", run_id_string(r.id), to_wire(&r.status)), "progress_pct": 100, "timestamp": now() }))).await;
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
        Target::Run(r)
        | Target::Service {
            active: Some(r), ..
        } => {
            json!({ "step": "connected", "status": "running", "message": format!("following {}", run_id_string(r.id)), "progress_pct": 0, "timestamp": now() })
        }
        Target::Service { .. } => {
            json!({ "step": "idle", "status": "success", "message": format!("no deployment of {fraise} in {env} is running; waiting for the next one"), "progress_pct": 0, "timestamp": now() })
        }
    };
    if socket.send(send(hello)).await.is_err() {
        return;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6 * 3600);
    // A run another server executes: its steps, as the store records them, stand for the
    // progress its bus carries there.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut steps_seen: Vec<(String, String)> = Vec::new();
    let mut pct_sent = 0u32;
    // A service's socket opened while nothing ran there waits for every next run: one that
    // another server executes is found in the store (several servers share only a
    // PostgreSQL database), followed, and let go when it ends.
    let waits_for_runs = run_id.is_none();
    let others_run = waits_for_runs && engine.store().backend() != "sqlite";
    // The newest run of the service the walk through the store has passed (told, or left to
    // the bus): the store is asked for the next one after it, not for the one active at the
    // moment of looking, so a run that starts and ends between two looks is told too.
    // `None` until the first look (the tick's first is at once) says where to begin.
    let mut seen_up_to: Option<i64> = None;
    // Runs this server's bus told, not to be told again when the walk reaches them. Only
    // the walk moves `seen_up_to`: a later run of this server's must not skip an earlier one
    // of another's not yet reached.
    let mut told_by_bus = std::collections::BTreeSet::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if run_id.is_some_and(|id| waits_for_runs && engine.executes(id)) {
                    // Taken over by this server: its bus tells the rest.
                    run_id = None;
                }
                if others_run && run_id.is_none() {
                    let Some(after) = seen_up_to else {
                        // After the last run; one active now is still to be told.
                        if let Ok(last) = engine.store().last_run_for(&tenant, &fraise, &env).await {
                            seen_up_to = Some(last.map_or(0, |r| if r.status.is_final() { r.id } else { r.id - 1 }));
                            tick.reset_immediately();
                        }
                        continue;
                    };
                    let Ok(Some(r)) = engine.store().next_run_after(&tenant, &fraise, &env, after).await else { continue };
                    seen_up_to = Some(r.id);
                    let by_bus = told_by_bus.contains(&r.id);
                    told_by_bus.retain(|id| *id > r.id);
                    // This server's own runs are told by its bus, as they go; one that ended
                    // before this look was told then (its lease names this server).
                    if by_bus
                        || engine.executes(r.id)
                        || (r.status.is_final()
                            && matches!(engine.store().run_lease(r.id).await, Ok(Some((owner, _))) if owner == engine.server_id()))
                    {
                        // The next may be there already: looked for at once.
                        tick.reset_immediately();
                        continue;
                    }
                    run_id = Some(r.id);
                    (steps_seen, pct_sent) = (Vec::new(), 0);
                    let hello = json!({ "step": "connected", "status": "running", "message": format!("following {}", run_id_string(r.id)), "progress_pct": 0, "timestamp": now() });
                    if socket.send(send(hello)).await.is_err() {
                        return;
                    }
                }
                let Some(id) = run_id.filter(|id| !engine.executes(*id)) else { continue };
                let Ok(run) = engine.store().run(&tenant, id).await else { continue };
                let steps = engine.store().steps(id).await.unwrap_or_default();
                // From the steps over, never less than sent: more steps start as it goes.
                let over = steps.iter().filter(|st| st.ended_at.is_some()).count();
                pct_sent = pct_sent.max((99 * over / (steps.len() + 1)) as u32);
                for (i, st) in steps.iter().enumerate() {
                    let now_seen = (st.name.clone(), to_wire(&st.status));
                    if steps_seen.get(i) == Some(&now_seen) {
                        continue;
                    }
                    let message = st.message.clone().or(st.error.clone()).unwrap_or_default();
                    let update = json!({ "step": st.name, "status": now_seen.1, "message": message, "progress_pct": pct_sent, "timestamp": now() });
                    if socket.send(send(update)).await.is_err() {
                        return;
                    }
                    if i < steps_seen.len() { steps_seen[i] = now_seen } else { steps_seen.push(now_seen) }
                }
                if run.status.is_final() {
                    let status = if run.status == RunStatus::Success { "success" } else { "failed" };
                    let finished = send(json!({ "step": "finished", "status": status, "message": format!("{} {}", run_id_string(id), to_wire(&run.status)), "progress_pct": 100, "timestamp": now() }));
                    if waits_for_runs {
                        // Back to waiting, as for a run of this server's; the next run may
                        // be recorded already, so it is looked for at once.
                        run_id = None;
                        if socket.send(finished).await.is_err() {
                            return;
                        }
                        tick.reset_immediately();
                        continue;
                    }
                    let _ = socket.send(finished).await;
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
            },
            m = rx.recv() => match m {
                Ok(m) => {
                    let mine = |p: &fraisier_engine::Progress| {
                        p.tenant_id == tenant
                            && if waits_for_runs {
                                p.fraise == fraise && p.environment == env
                            } else {
                                run_id == Some(p.run_id)
                            }
                    };
                    let out = match &*m {
                        BusMessage::Progress(p) if mine(p) => {
                            if waits_for_runs {
                                // This server executes it now: told from here on by the bus,
                                // no longer from the store.
                                if others_run {
                                    told_by_bus.insert(p.run_id);
                                }
                                if run_id == Some(p.run_id) {
                                    run_id = None;
                                }
                            }
                            send(json!(p))
                        }
                        BusMessage::Finished { run_id: id, .. } if !waits_for_runs && Some(*id) == run_id => Message::Close(None),
                        _ => continue,
                    };
                    let closing = matches!(out, Message::Close(_));
                    if socket.send(out).await.is_err() || closing {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                _ => {}
            },
            _ = tokio::time::sleep_until(deadline) => { let _ = socket.send(Message::Close(None)).await; return; }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::go_duration;

    #[test]
    fn health_urls_name_only_the_configured_probe_on_allowed_hosts() {
        use super::health_url_problem as problem;
        let allowed = vec!["probe.internal".to_string()];
        for ok in [
            "/health",
            "http://localhost:8080/health",
            "http://127.0.0.1/health?x=1",
            "https://[::1]:9/health",
            "http://PROBE.internal/health",
        ] {
            assert_eq!(problem(ok, Some("/health"), &allowed), None, "{ok}");
        }
        for bad in [
            "http://169.254.169.254/health",
            "http://10.0.0.1/health",
            "http://metadata.google.internal/health",
            "http://localhost@evil.example/health",
            "file:///etc/passwd",
            "gopher://localhost/health",
            "/admin",
            "http://localhost/admin/health",
        ] {
            assert!(problem(bad, Some("/health"), &allowed).is_some(), "{bad}");
        }
        assert!(problem("/health", None, &allowed).is_some());
    }

    #[test]
    fn durations_read_like_go() {
        assert_eq!(go_duration(300.0), "5m0s");
        assert_eq!(go_duration(1.5), "1.5s");
        assert_eq!(go_duration(3723.0), "1h2m3s");
        assert_eq!(go_duration(0.0), "0s");
    }
}
