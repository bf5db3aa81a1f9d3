//! Holding a run in a guarded environment until enough people said yes, and ending it
//! unstarted when they said no, the window closed or it was withdrawn.

use std::time::Duration;

use chrono::Utc;
use fraisier_model::approval::{self, Requirement, Standing};
use fraisier_model::run::{Component, EventType, FailureCode, LogLevel, RunStatus};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::RunCtx;
use crate::BusMessage;
use fraisier_store::RunColumns;

/// How often a run waiting for approval looks at the store for votes cast through another
/// server (votes through this one wake it at once).
const APPROVAL_RECHECK: Duration = Duration::from_secs(5);

// === impl RunCtx ===

impl RunCtx<'_> {
    /// Holds a run in a guarded environment `pending` until enough people approved it; a
    /// no, the window closing or a cancel ends it `cancelled` before anything moved. Returns
    /// whether the run goes on. Votes are read from the store, so approvals given through
    /// another server count too.
    pub(super) async fn await_approval(&mut self) -> Result<bool, fraisier_store::StoreError> {
        let Some(mut policy) = self.opts.approval.clone().filter(|p| !p.granted) else {
            return Ok(true);
        };
        let store = self.engine.store().clone();
        if !policy.requested {
            let data = json!({
                "required": policy.required, "expires_at": policy.expires_at,
                "requested_by": self.run.triggered_by, "require_sod": policy.require_sod,
            });
            self.event(EventType::ApprovalRequested, data.clone()).await;
            self.log(
                LogLevel::Info,
                Component::Deployment,
                &format!(
                    "Waiting for {} approval(s) before deploying to {} (until {})",
                    policy.required,
                    self.run.environment,
                    policy
                        .expires_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
                data,
            )
            .await;
            policy.requested = true;
            self.save_policy(&policy).await?;
        }
        let mut bus = self.engine.bus().subscribe();
        let requirement = Requirement {
            required: policy.required,
            expires_at: policy.expires_at,
        };
        loop {
            let votes = store.votes(self.run.id).await?;
            match approval::judge(&requirement, &votes, Utc::now()) {
                Standing::Granted => {
                    let approvers: Vec<&str> = votes
                        .iter()
                        .filter(|v| v.decision == approval::Decision::Approve)
                        .map(|v| v.user.as_str())
                        .collect();
                    self.log(
                        LogLevel::Info,
                        Component::Deployment,
                        &format!("Approved by {}", approvers.join(", ")),
                        json!({ "approvers": approvers }),
                    )
                    .await;
                    policy.granted = true;
                    self.save_policy(&policy).await?;
                    // The run's own time starts now, not when it was asked for.
                    self.deadline =
                        Instant::now() + Duration::from_secs(self.opts.timeout_secs.max(1));
                    return Ok(true);
                }
                Standing::Rejected { by, comment } => {
                    let message = match comment {
                        Some(c) => format!("rejected by {by}: {c}"),
                        None => format!("rejected by {by}"),
                    };
                    self.end_unstarted(FailureCode::ApprovalRejected, &message, &by)
                        .await?;
                    return Ok(false);
                }
                Standing::Expired => {
                    self.event(
                        EventType::ApprovalExpired,
                        json!({ "expires_at": policy.expires_at, "received": votes.len() }),
                    )
                    .await;
                    let message = format!(
                        "not approved in time: the approval window closed at {}",
                        policy
                            .expires_at
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    );
                    self.end_unstarted(FailureCode::ApprovalExpired, &message, "approval window")
                        .await?;
                    return Ok(false);
                }
                Standing::Waiting { received } => {
                    self.progress(
                        "approval",
                        "waiting",
                        &format!("{received}/{} approvals", policy.required),
                        0,
                    );
                }
            }
            // Cancelled while waiting: through this server, or recorded by another.
            let fresh = store.run(&self.run.tenant_id, self.run.id).await?;
            let by = self
                .cancel
                .borrow()
                .clone()
                .or(fresh.cancel_requested_by.clone());
            if let Some(by) = by {
                self.end_unstarted(
                    FailureCode::DeploymentCancelled,
                    &format!("cancelled by {by} before it was approved"),
                    &by,
                )
                .await?;
                return Ok(false);
            }
            let until_expiry = (policy.expires_at - Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO);
            let nap = until_expiry.min(APPROVAL_RECHECK);
            let mut cancel = self.cancel.clone();
            let id = self.run.id;
            tokio::select! {
                _ = tokio::time::sleep(nap) => {}
                _ = cancel.changed() => {}
                _ = async {
                    loop {
                        match bus.recv().await {
                            Ok(m) if matches!(&*m, BusMessage::Decided { run_id } if *run_id == id) => break,
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
                            _ => {}
                        }
                    }
                } => {}
            }
        }
    }

    pub(super) async fn save_policy(
        &mut self,
        policy: &crate::request::ApprovalPolicy,
    ) -> Result<(), fraisier_store::StoreError> {
        self.opts.approval = Some(policy.clone());
        self.run.options = serde_json::to_value(&self.opts).unwrap_or(Value::Null);
        self.engine
            .store()
            .write_run(&self.run, RunColumns::OPTIONS)
            .await
    }

    /// Ends a run that never started (refused or withdrawn approval): `cancelled`, nothing to
    /// restore.
    pub(super) async fn end_unstarted(
        &mut self,
        code: FailureCode,
        message: &str,
        by: &str,
    ) -> Result<(), fraisier_store::StoreError> {
        self.revert_variables().await;
        let now = Utc::now();
        self.run.status = RunStatus::Cancelled;
        self.run.completed_at = Some(now);
        self.run.cancelled_at = Some(now);
        self.run.cancel_requested_by = Some(by.to_string());
        self.run.error_code = Some(code.as_str().to_string());
        self.run.error_message = Some(message.to_string());
        self.log(
            LogLevel::Warn,
            Component::Deployment,
            message,
            json!({ "code": code }),
        )
        .await;
        let data = json!({ "status": "cancelled", "error": { "code": code, "message": message } });
        self.engine
            .end(
                &self.run,
                RunColumns::END,
                EventType::DeploymentCancelled,
                data,
            )
            .await?;
        self.progress("finished", "failed", message, 100);
        self.engine.bus().publish(BusMessage::Finished {
            run_id: self.run.id,
            status: RunStatus::Cancelled,
        });
        Ok(())
    }
}
