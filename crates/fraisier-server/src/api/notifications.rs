//! `GET /notifications/deliveries`: the announcements of the workspace's runs, each with
//! every attempt to send it. Destinations are shown by scheme and host only.

use axum::extract::State;
use axum::Json;
use fraisier_store::{Notification, NotificationFilter};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::QueryMap;
use super::gate::Caller;
use super::views::{ts, Pagination};
use super::AppState;

/// Where a notification stands.
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "snake_case")]
pub enum NotificationStatusName {
    Pending,
    Sent,
    Failed,
}

/// The run events notifications are sent for.
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "snake_case")]
pub enum NotifyEventName {
    Started,
    Succeeded,
    Failed,
    RolledBack,
    ApprovalRequested,
}

#[derive(Serialize, ToSchema)]
pub struct AttemptView {
    pub attempt: i64,
    pub at: String,
    /// The receiver's HTTP status, when it answered.
    pub status_code: Option<i64>,
    pub error: Option<String>,
    pub duration_ms: i64,
}

#[derive(Serialize, ToSchema)]
pub struct NotificationView {
    /// `ntf_000001`
    pub id: String,
    /// started | succeeded | failed | rolled_back | approval_requested
    pub event: String,
    /// webhook | slack | discord | teams
    #[serde(rename = "type")]
    pub kind: String,
    /// Where it is configured: global | environment | fraise
    pub scope: String,
    /// Scheme and host of the destination.
    pub target: String,
    pub fraise: String,
    pub environment: String,
    pub deployment_id: Option<String>,
    /// pending | sent | failed
    pub status: String,
    pub attempts: Vec<AttemptView>,
    pub next_attempt_at: Option<String>,
    pub created_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct NotificationList {
    pub deliveries: Vec<NotificationView>,
    pub pagination: Pagination,
}

#[utoipa::path(get, path = "/api/v1/notifications/deliveries", tag = "notifications",
    params(("status" = Option<NotificationStatusName>, Query),
           ("event" = Option<NotifyEventName>, Query),
           ("fraise" = Option<String>, Query), ("limit" = Option<u32>, Query, minimum = 1, maximum = 500), ("offset" = Option<u64>, Query)),
    responses((status = 200, body = NotificationList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn deliveries(
    State(state): State<AppState>,
    who: Caller,
    q: QueryMap,
) -> Result<Json<NotificationList>, ApiError> {
    let (limit, offset) = q.pagination(50)?;
    let status = one_of(&q, "status", &["pending", "sent", "failed"])?;
    let event = one_of(
        &q,
        "event",
        &[
            "started",
            "succeeded",
            "failed",
            "rolled_back",
            "approval_requested",
        ],
    )?;
    let f = NotificationFilter {
        status,
        event,
        fraise: q.text("fraise"),
        limit,
        offset,
    };
    let (list, total) = state
        .engine
        .store()
        .notifications(&who.workspace, &f)
        .await?;
    Ok(Json(NotificationList {
        deliveries: list.iter().map(view).collect(),
        pagination: Pagination::new(total, f.limit, f.offset),
    }))
}

fn one_of(q: &QueryMap, key: &str, allowed: &[&str]) -> Result<Option<String>, ApiError> {
    match q.0.iter().find(|(k, _)| k == key) {
        None => Ok(None),
        Some((_, v)) if allowed.contains(&v.as_str()) => Ok(Some(v.clone())),
        Some((_, v)) => Err(ApiError::invalid(
            key,
            format!("{key} must be one of {}, got {v:?}", allowed.join(", ")),
        )),
    }
}

fn view(n: &Notification) -> NotificationView {
    NotificationView {
        id: format!("ntf_{:06}", n.id),
        event: n.new.event.clone(),
        kind: n.new.kind.clone(),
        scope: n.new.scope.clone(),
        target: n.new.target.clone(),
        fraise: n.new.fraise.clone(),
        environment: n.new.environment.clone(),
        deployment_id: n.new.run_id.map(fraisier_store::run_id_string),
        status: n.status.clone(),
        attempts: n
            .attempts
            .iter()
            .map(|a| AttemptView {
                attempt: a.attempt,
                at: ts(a.at),
                status_code: a.status_code,
                error: a.error.clone(),
                duration_ms: a.duration_ms,
            })
            .collect(),
        next_attempt_at: (n.status == "pending").then(|| ts(n.next_attempt_at)),
        created_at: ts(n.created_at),
    }
}
