//! The server itself: health of its parts, Prometheus metrics, and a landing page.

use std::fmt::Write;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use fraisier_model::metrics::LATENCY_BOUNDS_MS;
use fraisier_model::run::RunStatus;
use serde_json::json;

use super::gate::Caller;
use super::views;
use super::AppState;

/// Upper bounds (s) of the deployment-duration histogram.
const DURATION_BOUNDS: &[f64] = &[10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0];

#[utoipa::path(get, path = "/api/v1/health", tag = "system", security(()),
    responses((status = 200, body = Object, description = "healthy or degraded"), (status = 503, body = Object, description = "the database is down")))]
pub async fn health(State(state): State<AppState>) -> Response {
    let store = state.engine.store();
    let db = store.ping().await;
    let provider_up = state.engine.provider().available().await;
    let nats = match &state.nats {
        Some(n) => n.health().await,
        None => json!({ "status": "not_configured", "connected": false, "streams": 0 }),
    };
    // A bus that is down loses nothing (the store keeps the events): degraded, not down.
    let status = match (&db, provider_up) {
        (Err(_), _) => "unhealthy",
        (Ok(_), false) => "degraded",
        _ if nats["status"] == "unhealthy" => "degraded",
        _ => "healthy",
    };
    let body = json!({
        "status": status,
        "timestamp": views::ts(chrono::Utc::now()),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": (chrono::Utc::now() - state.started_at).num_seconds(),
        "components": {
            "database": match &db {
                Ok(d) => json!({ "status": "healthy", "backend": store.backend(), "response_time_ms": (d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0 }),
                Err(e) => json!({ "status": "unhealthy", "backend": store.backend(), "error": e.to_string() }),
            },
            "nats": nats,
            "providers": {
                "status": if provider_up { "healthy" } else { "unhealthy" },
                "available_providers": 1, "connected_providers": u8::from(provider_up),
                "local_agent": if provider_up { "connected" } else { "unreachable" },
            },
        },
    });
    let code = if status == "unhealthy" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(body)).into_response()
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    bounds_s: &[f64],
    counts: &[u64],
    sum: f64,
) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0u64;
    for (b, c) in bounds_s.iter().zip(counts) {
        cumulative += c;
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
    }
    let total: u64 = counts.iter().sum();
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
}

#[utoipa::path(get, path = "/api/v1/metrics", tag = "system",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>, who: Caller) -> Response {
    let store = state.engine.store();
    let live = state.config();
    let scope = live.scope(&who.workspace);
    let stats = match store.run_stats(&who.workspace, DURATION_BOUNDS).await {
        Ok(s) => s,
        Err(e) => return super::error::ApiError::internal(e).into_response(),
    };
    let mut out = String::with_capacity(4096);
    out.push_str("# HELP fraisier_deployments_total Total deployments that reached a final status\n# TYPE fraisier_deployments_total counter\n");
    for status in [RunStatus::Success, RunStatus::Failed, RunStatus::Cancelled] {
        let n = stats
            .totals
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(
            out,
            "fraisier_deployments_total{{status=\"{}\"}} {n}",
            status.as_str()
        );
    }
    out.push_str("# HELP fraisier_deployment_duration_seconds Deployment duration\n# TYPE fraisier_deployment_duration_seconds histogram\n");
    histogram(
        &mut out,
        "fraisier_deployment_duration_seconds",
        "",
        DURATION_BOUNDS,
        &stats.duration_buckets,
        stats.duration_sum,
    );
    out.push_str("# HELP fraisier_active_deployments Active deployments\n# TYPE fraisier_active_deployments gauge\n");
    for env in scope.environments.keys() {
        let n = stats
            .active
            .iter()
            .find(|(e, _)| e == env)
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(
            out,
            "fraisier_active_deployments{{environment=\"{}\"}} {n}",
            escape(env)
        );
    }

    let mut requests = String::new();
    let mut errors = String::new();
    let mut latency = String::new();
    let mut instances = String::new();
    let bounds_s: Vec<f64> = LATENCY_BOUNDS_MS.iter().map(|b| b / 1000.0).collect();
    for (fraise, f) in &scope.fraises {
        for env in f.environments.keys() {
            let agent_name = fraisier_model::names::agent_name(&who.workspace, fraise);
            let Ok(Some(o)) = state.engine.provider().observe(&agent_name, env).await else {
                continue;
            };
            let healthy = o.healthy_count();
            let _ = writeln!(
                instances,
                "fraisier_instances{{fraise=\"{}\",environment=\"{}\"}} {}",
                escape(fraise),
                escape(env),
                o.instances.len()
            );
            let _ = writeln!(
                instances,
                "fraisier_instances_healthy{{fraise=\"{}\",environment=\"{}\"}} {healthy}",
                escape(fraise),
                escape(env)
            );
            for (version, m) in &o.metrics {
                let labels = format!(
                    "fraise=\"{}\",environment=\"{}\",version=\"{}\"",
                    escape(fraise),
                    escape(env),
                    escape(version)
                );
                let _ = writeln!(
                    requests,
                    "fraisier_router_requests_total{{{labels}}} {}",
                    m.requests
                );
                let _ = writeln!(
                    errors,
                    "fraisier_router_errors_total{{{labels}}} {}",
                    m.errors
                );
                // The last count is the overflow bucket: it only adds to +Inf and _count.
                histogram(
                    &mut latency,
                    "fraisier_router_request_duration_seconds",
                    &labels,
                    &bounds_s,
                    &m.latency_buckets,
                    m.latency_sum_ms / 1000.0,
                );
            }
        }
    }
    out.push_str("# HELP fraisier_instances Instances the agent runs per fraise and environment\n# TYPE fraisier_instances gauge\n");
    out.push_str(
        &instances
            .lines()
            .filter(|l| l.starts_with("fraisier_instances{"))
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
    );
    out.push_str("# HELP fraisier_instances_healthy Healthy instances per fraise and environment\n# TYPE fraisier_instances_healthy gauge\n");
    out.push_str(
        &instances
            .lines()
            .filter(|l| l.starts_with("fraisier_instances_healthy"))
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
    );
    out.push_str("# HELP fraisier_router_requests_total Requests proxied by the router\n# TYPE fraisier_router_requests_total counter\n");
    out.push_str(&requests);
    out.push_str("# HELP fraisier_router_errors_total Requests answered with 5xx or not delivered\n# TYPE fraisier_router_errors_total counter\n");
    out.push_str(&errors);
    out.push_str("# HELP fraisier_router_request_duration_seconds Time from request to upstream response head\n# TYPE fraisier_router_request_duration_seconds histogram\n");
    out.push_str(&latency);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

pub async fn index() -> Html<&'static str> {
    Html(include_str!("../dashboard.html"))
}
