//! Approvals: a second person's yes (or no) on a run waiting in a guarded environment, and the
//! runs the caller could approve now.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fraisier_engine::ApprovalView;
use fraisier_model::access::Permission;
use fraisier_model::approval::Decision;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::deployments::{self, run_id};
use super::error::{ApiError, ErrorBody};
use super::extract::OptionalBody;
use super::gate::{authorize, Caller};
use super::views::{self, RunDetails};
use super::{AppState, Params};

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    #[schema(max_length = 2000)]
    pub comment: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct PendingApproval {
    pub deployment_id: String,
    pub fraise: String,
    pub environment: String,
    pub version: String,
    /// deploy | rollback
    #[serde(rename = "type")]
    pub kind: String,
    pub requested_by: String,
    pub requested_at: String,
    pub expires_at: String,
    pub required: u32,
    pub received: u32,
    pub approvers: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct PendingApprovals {
    pub approvals: Vec<PendingApproval>,
    pub total: u64,
}

const MAX_COMMENT: usize = 2000;

async fn decide(
    state: &AppState,
    who: &Caller,
    id: &str,
    decision: Decision,
    body: DecisionBody,
) -> Result<Response, ApiError> {
    if body
        .comment
        .as_ref()
        .is_some_and(|c| c.chars().count() > MAX_COMMENT)
    {
        return Err(ApiError::invalid(
            "comment",
            format!("comment must be at most {MAX_COMMENT} characters"),
        ));
    }
    let n = run_id(id)?;
    let run = state.engine.run(&who.workspace, n).await?;
    authorize(state, who, Permission::DeploymentApprove, &run.environment)?;
    state
        .engine
        .decide(
            &who.workspace,
            n,
            &who.username,
            decision,
            body.comment.as_deref().filter(|c| !c.trim().is_empty()),
        )
        .await?;
    // The decision that settles it wakes the run at once; give it that moment so the answer
    // shows the run started (or ended).
    let settled = decision == Decision::Reject
        || state
            .engine
            .approvals_of(std::slice::from_ref(&run))
            .await?
            .get(&run.id)
            .is_some_and(|a| a.status != "pending");
    let mut run = state.engine.run(&who.workspace, n).await?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    while settled
        && run.status == fraisier_model::run::RunStatus::Pending
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        run = state.engine.run(&who.workspace, n).await?;
    }
    let details = deployments::details(state, &who.workspace, &run).await?;
    Ok(deployments::noted(Json(details).into_response(), &run))
}

/// Approves a run waiting in a guarded environment; once enough people have, it starts.
#[utoipa::path(post, path = "/api/v1/deployments/{deployment_id}/approve", tag = "approvals",
    params(("deployment_id" = String, Path)), request_body = Option<DecisionBody>,
    responses((status = 200, body = RunDetails, description = "the run, with its approval"), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody, description = "no approver role in that environment, or the caller asked for the run"),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "not waiting for approval, or already decided by the caller"),
              (status = 413, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn approve(
    State(state): State<AppState>,
    who: Caller,
    Params(id): Params<String>,
    OptionalBody(body): OptionalBody<DecisionBody>,
) -> Result<Response, ApiError> {
    decide(&state, &who, &id, Decision::Approve, body).await
}

/// Rejects a run waiting for approval: it ends `cancelled` without having changed anything.
#[utoipa::path(post, path = "/api/v1/deployments/{deployment_id}/reject", tag = "approvals",
    params(("deployment_id" = String, Path)), request_body = Option<DecisionBody>,
    responses((status = 200, body = RunDetails), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn reject(
    State(state): State<AppState>,
    who: Caller,
    Params(id): Params<String>,
    OptionalBody(body): OptionalBody<DecisionBody>,
) -> Result<Response, ApiError> {
    decide(&state, &who, &id, Decision::Reject, body).await
}

/// Seed 002's `GET /my/pending-approvals`: runs waiting for approval that the caller may
/// approve now (a role allowed there, not their own request, not decided yet).
#[utoipa::path(get, path = "/api/v1/my/pending-approvals", tag = "approvals",
    responses((status = 200, body = PendingApprovals), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn mine(
    State(state): State<AppState>,
    who: Caller,
) -> Result<Json<PendingApprovals>, ApiError> {
    let waiting = state.engine.awaiting_approval(&who.workspace).await?;
    let approvals: Vec<PendingApproval> = waiting
        .into_iter()
        .filter(|(r, a)| {
            authorize(&state, &who, Permission::DeploymentApprove, &r.environment).is_ok()
                && !(a.require_sod && r.triggered_by == who.username)
                && !a.approvers.iter().any(|x| x.user == who.username)
                && a.status == "pending"
        })
        .map(|(r, a): (_, ApprovalView)| PendingApproval {
            deployment_id: fraisier_store::run_id_string(r.id),
            fraise: r.fraise.clone(),
            environment: r.environment.clone(),
            version: r.version.clone(),
            kind: fraisier_model::run::to_wire(&r.kind),
            requested_by: r.triggered_by.clone(),
            requested_at: views::ts(r.created_at),
            expires_at: views::ts(a.expires_at),
            required: a.required,
            received: a.received,
            approvers: a.approvers.iter().map(|x| x.user.clone()).collect(),
        })
        .collect();
    Ok(Json(PendingApprovals {
        total: approvals.len() as u64,
        approvals,
    }))
}
