//! Wire shapes of runs, steps, events and log lines, built from store rows.

use chrono::{DateTime, SecondsFormat, Utc};
use fraisier_model::run::{to_wire, RunKind, RunStatus};
use fraisier_store::{run_id_string, Event, LogLine, Run, Step};
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn ts_opt(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(ts)
}

#[derive(Serialize, ToSchema)]
pub struct LastDeployment {
    pub id: String,
    pub timestamp: String,
    pub status: RunStatus,
}

/// A run as listed (seed 000 `GET /deployments`).
#[derive(Serialize, ToSchema)]
pub struct RunSummary {
    pub id: String,
    pub fraise: String,
    pub environment: String,
    pub status: RunStatus,
    #[serde(rename = "type")]
    pub kind: RunKind,
    pub triggered_by: String,
    pub version: String,
    pub previous_version: Option<String>,
    pub strategy: String,
    pub created_at: String,
    pub updated_at: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub duration_seconds: Option<f64>,
    /// passing | failing | skipped | unknown
    pub health_check_status: String,
    pub rollback_available: bool,
    pub events_count: i64,
    #[schema(value_type = Object)]
    pub metrics: Value,
    pub error: Option<RunErrorView>,
    /// For a run in an environment that requires approvals: `{required, received,
    /// approvers, status, expires_at, …}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub approval: Option<Value>,
}

#[derive(Serialize, ToSchema)]
pub struct RunErrorView {
    pub code: String,
    pub message: String,
}

#[derive(Serialize, ToSchema)]
pub struct EventRef {
    pub id: String,
    pub event_type: String,
    pub timestamp: String,
}

#[derive(Serialize, ToSchema)]
pub struct LogsRef {
    pub url: String,
    pub lines: i64,
}

#[derive(Serialize, ToSchema)]
pub struct StepView {
    pub name: String,
    /// running | completed | failed | skipped
    pub status: String,
    pub message: Option<String>,
    pub start_time: String,
    pub end_time: Option<String>,
    pub error: Option<String>,
}

/// A run in full (seed 000 `GET /deployments/{id}`).
#[derive(Serialize, ToSchema)]
pub struct RunDetails {
    #[serde(flatten)]
    pub summary: RunSummary,
    pub trigger_type: String,
    pub provider: String,
    #[schema(value_type = Object)]
    pub strategy_config: Value,
    #[schema(value_type = Object)]
    pub health_check_details: Value,
    pub events: Vec<EventRef>,
    pub logs: LogsRef,
    pub steps: Vec<StepView>,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub cancelled_at: Option<String>,
    pub cancelled_by: Option<String>,
    pub status_url: String,
    pub events_url: String,
}

#[derive(Serialize, ToSchema)]
pub struct EventView {
    pub id: String,
    pub event_type: String,
    pub timestamp: String,
    #[schema(value_type = Object)]
    pub data: Value,
}

#[derive(Serialize, ToSchema)]
pub struct LogView {
    pub timestamp: String,
    pub level: String,
    pub component: String,
    pub message: String,
    #[schema(value_type = Object)]
    pub details: Value,
}

#[derive(Serialize, ToSchema)]
pub struct Pagination {
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
    pub pages: u64,
    pub has_more: bool,
}

impl Pagination {
    pub fn new(total: u64, limit: u32, offset: u64) -> Pagination {
        Pagination {
            total,
            limit,
            offset,
            pages: total.div_ceil(limit.max(1) as u64),
            has_more: offset + (limit as u64) < total,
        }
    }
}

pub fn duration_seconds(run: &Run) -> Option<f64> {
    let end = run.completed_at?;
    let start = run.started_at.unwrap_or(run.created_at);
    Some(((end - start).num_milliseconds() as f64 / 1000.0 * 10.0).round() / 10.0)
}

pub fn summary(
    run: &Run,
    rollback_available: bool,
    approval: Option<&fraisier_engine::ApprovalView>,
) -> RunSummary {
    RunSummary {
        id: run_id_string(run.id),
        fraise: run.fraise.clone(),
        environment: run.environment.clone(),
        status: run.status,
        kind: run.kind,
        triggered_by: run.triggered_by.clone(),
        version: run.version.clone(),
        previous_version: run.previous_version.clone(),
        strategy: run.strategy.clone(),
        created_at: ts(run.created_at),
        updated_at: ts(run.updated_at),
        started_at: ts_opt(run.started_at),
        completed_at: ts_opt(run.completed_at),
        duration_seconds: duration_seconds(run),
        health_check_status: run.health_check_status.as_str().to_string(),
        rollback_available,
        events_count: run.events_count,
        metrics: if run.metrics.is_null() {
            json!({})
        } else {
            run.metrics.clone()
        },
        error: run.error_code.as_ref().map(|code| RunErrorView {
            code: code.clone(),
            message: run.error_message.clone().unwrap_or_default(),
        }),
        approval: approval.map(approval_json),
    }
}

pub fn approval_json(a: &fraisier_engine::ApprovalView) -> Value {
    json!({
        "required": a.required, "received": a.received, "status": a.status,
        "approvers": a.approvers.iter().map(|x| json!({ "user": x.user, "at": ts(x.at), "comment": x.comment })).collect::<Vec<_>>(),
        "expires_at": ts(a.expires_at), "require_sod": a.require_sod, "requested_by": a.requested_by,
        "rejected_by": a.rejected_by, "comment": a.comment,
    })
}

pub fn step(s: &Step) -> StepView {
    StepView {
        name: s.name.clone(),
        status: to_wire(&s.status),
        message: s.message.clone(),
        start_time: ts(s.started_at),
        end_time: ts_opt(s.ended_at),
        error: s.error.clone(),
    }
}

pub fn event_id(id: i64) -> String {
    format!("evt_{id:03}")
}

pub fn event(e: &Event) -> EventView {
    EventView {
        id: event_id(e.id),
        event_type: e.event_type.clone(),
        timestamp: ts(e.timestamp),
        data: e.data.clone(),
    }
}

pub fn log(l: &LogLine) -> LogView {
    LogView {
        timestamp: ts(l.timestamp),
        level: l.level.as_str().to_string(),
        component: l.component.as_str().to_string(),
        message: l.message.clone(),
        details: l.details.clone(),
    }
}
