//! Environments (seed 000): the configured stages and the state of what runs in them.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::gate::Caller;
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

async fn counts(state: &AppState, who: &Caller, env: &str) -> Result<Counts, ApiError> {
    let mut c = Counts {
        total: 0,
        deployed: 0,
        healthy: 0,
        degraded: 0,
        unhealthy: 0,
    };
    for (name, f) in &state.config.scope(&who.workspace).fraises {
        if !f.environments.contains_key(env) {
            continue;
        }
        c.total += 1;
        let s = state
            .engine
            .service_status(&who.workspace, name, env)
            .await?;
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
    Ok(c)
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

/// An environment of the caller's workspace; another workspace's answers 404.
fn lookup<'a>(
    state: &'a AppState,
    who: &Caller,
    name: &str,
) -> Result<&'a fraisier_model::config::EnvironmentConfig, ApiError> {
    state
        .config
        .scope(&who.workspace)
        .environments
        .get(name)
        .filter(|_| fraisier_model::names::is_valid_name(name))
        .ok_or_else(|| ApiError::environment_not_found(name))
}

#[utoipa::path(get, path = "/api/v1/environments", tag = "environments", responses((status = 200, body = Object)))]
pub async fn list(State(state): State<AppState>, who: Caller) -> Result<Json<Value>, ApiError> {
    let mut out = Vec::new();
    for (name, e) in &state.config.scope(&who.workspace).environments {
        let c = counts(&state, &who, name).await?;
        out.push(json!({
            "name": name, "display_name": e.display_name.clone().unwrap_or_else(|| name.clone()), "description": e.description,
            "provider": e.provider, "fraises_deployed": c.deployed, "fraises_total": c.total, "status": status_word(&c),
        }));
    }
    Ok(Json(json!({ "environments": out })))
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
    let fraises: Vec<&String> = state
        .config
        .scope(&who.workspace)
        .fraises
        .iter()
        .filter(|(_, f)| f.environments.contains_key(&name))
        .map(|(n, _)| n)
        .collect();
    Ok(Json(json!({
        "name": name, "display_name": e.display_name.clone().unwrap_or_else(|| name.clone()), "description": e.description,
        "provider": e.provider, "fraises": fraises, "fraises_deployed": c.deployed, "status": status_word(&c),
    })))
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
    Ok(Json(json!({
        "name": name,
        "status": status_word(&c),
        "provider": {
            "type": e.provider, "status": if provider_up { "connected" } else { "disconnected" },
            "hosts": 1, "hosts_healthy": u8::from(provider_up),
        },
        "database": {
            "status": if db.is_ok() { "connected" } else { "disconnected" }, "backend": store.backend(),
            "connections": in_use, "max_connections": max,
            "response_time_ms": db.map(|d| d.as_secs_f64() * 1000.0).ok(),
        },
        "nats": { "status": "not_configured", "streams": 0, "events_published": 0 },
        "fraises": { "total": c.total, "deployed": c.deployed, "healthy": c.healthy, "degraded": c.degraded, "unhealthy": c.unhealthy },
    })))
}
