//! The audit trail as the API shows it: the workspace's records, filtered and paged, and the
//! records of one run or service deployment. Nothing here changes a record.

use axum::extract::State;
use axum::Json;
use fraisier_store::{run_id_string, AuditFilter, AuditOutcome, AuditRecord};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::QueryMap;
use super::gate::Caller;
use super::params::AuditOutcomeName;
use super::reference::DeploymentRef;
use super::views::{ts, Pagination};
use super::AppState;

#[derive(Serialize, ToSchema)]
pub struct AuditView {
    /// `aud_000001`
    pub id: String,
    pub timestamp: String,
    pub workspace: String,
    /// The username, empty for an anonymous caller.
    pub user: String,
    /// user | api_key | anonymous
    pub actor_kind: String,
    /// The API key's name, when one was used.
    pub api_key: Option<String>,
    pub action: String,
    pub resource: String,
    pub service: Option<String>,
    pub method: String,
    pub path: String,
    pub request_id: String,
    pub source: String,
    #[schema(value_type = Option<AuditOutcomeName>)]
    pub outcome: Option<AuditOutcome>,
    pub status: u16,
    /// The error code, for refusals and failures.
    pub detail: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Serialize, ToSchema)]
pub struct AuditList {
    pub audit: Vec<AuditView>,
    pub pagination: Pagination,
}

fn view(r: &AuditRecord) -> AuditView {
    AuditView {
        id: format!("aud_{:06}", r.id),
        timestamp: ts(r.created_at),
        workspace: r.record.workspace.clone(),
        user: r.record.actor.clone(),
        actor_kind: r.record.actor_kind.clone(),
        api_key: r.record.credential.clone(),
        action: r.record.action.clone(),
        resource: r.record.resource.clone(),
        service: r.record.service.clone(),
        method: r.record.method.clone(),
        path: r.record.path.clone(),
        request_id: r.record.request_id.clone(),
        source: r.record.source.clone(),
        outcome: r.record.outcome,
        status: r.record.status,
        detail: r.record.detail.clone(),
        prev_hash: r.prev_hash.clone(),
        hash: r.hash.clone(),
    }
}

fn filter(q: &QueryMap) -> Result<AuditFilter, ApiError> {
    let (limit, offset) = q.pagination(50)?;
    Ok(AuditFilter {
        actor: q.text("user"),
        action: q.text("action"),
        resource: q.text("resource"),
        service: None,
        outcome: q.one_of(
            "outcome",
            "success, failure, unauthenticated, denied, rate_limited",
        )?,
        since: q.time("since")?,
        until: q.time("until")?,
        limit,
        offset,
    })
}

async fn page(state: &AppState, who: &Caller, f: AuditFilter) -> Result<Json<AuditList>, ApiError> {
    let (records, total) = state.engine.store().audit(&who.workspace, &f).await?;
    Ok(Json(AuditList {
        audit: records.iter().map(view).collect(),
        pagination: Pagination::new(total, f.limit, f.offset),
    }))
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit",
    params(("user" = Option<String>, Query), ("action" = Option<String>, Query, description = "e.g. deployment.create"),
           ("resource" = Option<String>, Query, description = "e.g. dep_00012 or user:alice"),
           ("outcome" = Option<AuditOutcomeName>, Query),
           ("since" = Option<String>, Query, format = DateTime), ("until" = Option<String>, Query, format = DateTime), ("limit" = Option<u32>, Query, minimum = 1, maximum = 500), ("offset" = Option<u64>, Query)),
    responses((status = 200, body = AuditList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    who: Caller,
    q: QueryMap,
) -> Result<Json<AuditList>, ApiError> {
    page(&state, &who, filter(&q)?).await
}

/// Seed 003's `/deployments/{id}/audit`: a run's records (`dep_…`), or a service deployment's.
#[utoipa::path(get, path = "/api/v1/deployments/{deployment_id}/audit", tag = "audit",
    params(("deployment_id" = String, Path, description = "a run id, fraise or fraise@environment"), ("environment" = Option<String>, Query),
           ("user" = Option<String>, Query), ("action" = Option<String>, Query), ("outcome" = Option<AuditOutcomeName>, Query),
           ("since" = Option<String>, Query, format = DateTime), ("until" = Option<String>, Query, format = DateTime), ("limit" = Option<u32>, Query, minimum = 1, maximum = 500), ("offset" = Option<u64>, Query)),
    responses((status = 200, body = AuditList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "DEPLOYMENT_AMBIGUOUS"), (status = 429, body = ErrorBody)))]
pub async fn of_deployment(
    State(state): State<AppState>,
    who: Caller,
    target: DeploymentRef,
    q: QueryMap,
) -> Result<Json<AuditList>, ApiError> {
    let mut f = filter(&q)?;
    match target {
        DeploymentRef::Run(run) => f.resource = Some(run_id_string(run.id)),
        DeploymentRef::Service {
            fraise,
            environment,
        } => {
            f.resource = None;
            f.service = Some(format!("{fraise}@{environment}"));
        }
    }
    page(&state, &who, f).await
}
