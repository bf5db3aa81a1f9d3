//! What a pushed ref deploys: every environment, of every fraise built from the pushed
//! repository, that follows the branch (`branch`) or takes tags (`tags: true`), each at the
//! commit the host reported. Every target is queued in the store as the delivery is recorded,
//! and one loop deploys them: the latest push queued for an environment once no run is active
//! there (the older ones are superseded). The queue survives a restart; the host is answered
//! without waiting for a fetch or a build.

use std::collections::HashSet;

use fraisier_model::webhook::{Push, RefKind};
use fraisier_store::DeliveryTarget;
use serde_json::json;

use crate::{DeployRequest, Engine, EngineError};

/// A target's `error.code` while it waits for the active run.
pub const QUEUED: &str = "QUEUED";

/// A target's `error_message` until the queue has first looked at it.
pub const ACCEPTED: &str = "accepted: deploying it next";

// === impl Engine ===

impl Engine {
    /// Every environment a push concerns: of every fraise built from the pushed repository,
    /// those that follow the pushed branch (or take tags), each at the commit the host
    /// reported. Routing only — no git, nothing started — so that a delivery is recorded and
    /// answered at once; each target waits `QUEUED` for [`Engine::deploy_queued_pushes`].
    /// Deleted refs concern nothing.
    pub fn push_targets(&self, push: &Push) -> Vec<DeliveryTarget> {
        let mut out = Vec::new();
        for change in &push.changes {
            let Some(commit) = &change.commit else {
                continue;
            };
            for (workspace, ws) in &self.config().workspaces {
                for (fraise, f) in &ws.fraises {
                    // By URL only: an `owner/name` alone would match the same name on
                    // another host.
                    if f.source.is_none() || !push.repository.is(f.git_url().as_deref(), None) {
                        continue;
                    }
                    for (environment, fe) in &f.environments {
                        let follows = match change.kind {
                            RefKind::Branch => fe.branch.as_deref() == Some(change.name.as_str()),
                            RefKind::Tag => fe.tags,
                        };
                        if follows {
                            out.push(DeliveryTarget {
                                workspace: workspace.clone(),
                                fraise: fraise.clone(),
                                environment: environment.clone(),
                                reference: change.name.clone(),
                                commit: commit.clone(),
                                deployment_id: None,
                                error_code: Some(QUEUED.into()),
                                error_message: Some(ACCEPTED.into()),
                            });
                        }
                    }
                }
            }
        }
        out
    }

    /// Has the queue look at what waits now, rather than at its next round.
    pub fn wake_push_queue(&self) {
        self.inner.push_queue.notify_one();
    }
}

impl Engine {
    /// Deploys, where the run they waited for is over, the latest push queued for each
    /// environment; older ones queued there are superseded. Level-triggered: called in a loop.
    pub async fn deploy_queued_pushes(&self) {
        let queued = match self.store().queued_targets().await {
            Ok(q) => q,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read queued pushes");
                return;
            }
        };
        let mut latest = HashSet::new();
        for q in queued {
            let t = &q.target;
            let key = (t.workspace.clone(), t.fraise.clone(), t.environment.clone());
            let settled = if !latest.insert(key) {
                Some(settle(
                    t,
                    None,
                    Some("SUPERSEDED"),
                    "a later push to this environment is deployed instead",
                ))
            } else if let Ok(Some(active)) = self
                .store()
                .active_run_for(&t.workspace, &t.fraise, &t.environment)
                .await
            {
                // Still busy: asked cheaply, before `submit` would fetch the repository.
                waiting(t, &active)
            } else if let Err(held) = self
                .check_guards(&t.workspace, &t.environment, &push_user(&q.provider))
                .await
            {
                // Locked, frozen or outside its change window: kept queued, and deployed
                // (the latest push) once that lifts — as a sync window holds auto-sync.
                held_back(t, &held)
            } else {
                let delivery = q
                    .delivery_id
                    .clone()
                    .unwrap_or_else(|| format!("whd_{:06}", q.delivery));
                let req = push_request(
                    &q.provider,
                    &delivery,
                    &t.workspace,
                    &t.fraise,
                    &t.environment,
                    &t.reference,
                    &t.commit,
                );
                match self.submit(req).await {
                    Ok(run) => Some(settle(
                        t,
                        Some(fraisier_store::run_id_string(run.id)),
                        None,
                        "",
                    )),
                    Err(EngineError::InProgress { active_id, .. }) => {
                        Some(settle(t, None, Some(QUEUED), &waits_for(&active_id)))
                    }
                    // A guard taken while the push was being prepared (its source fetched,
                    // or by another server): held like one found above.
                    Err(
                        e @ (EngineError::EnvironmentLocked(_)
                        | EngineError::EnvironmentFrozen(_)
                        | EngineError::OutsideChangeWindow { .. }),
                    ) => held_back(t, &e),
                    Err(e) => Some(settle(t, None, Some(e.code()), &e.to_string())),
                }
            };
            if let Some(s) = settled {
                if let Err(e) = self.store().settle_target(&q, &s).await {
                    tracing::warn!(error = %e, "cannot record a queued push");
                }
            }
        }
    }
}

/// Who a webhook deploys as (`triggered_by`): what a freeze window's exceptions name.
fn push_user(provider: &str) -> String {
    format!("webhook:{provider}")
}

/// A target kept queued while a guard holds its environment (told why, once).
fn held_back(t: &DeliveryTarget, why: &EngineError) -> Option<DeliveryTarget> {
    let message = format!("held: {why}; the latest push queued here is deployed once that lifts");
    (t.error_message.as_deref() != Some(message.as_str()))
        .then(|| settle(t, None, Some(QUEUED), &message))
}

fn waits_for(active_id: &str) -> String {
    format!("waits for {active_id} to finish; then the latest push queued here is deployed")
}

/// A busy environment's target, told what it waits for (once: unchanged, nothing is written).
fn waiting(t: &DeliveryTarget, active: &fraisier_store::Run) -> Option<DeliveryTarget> {
    let message = waits_for(&fraisier_store::run_id_string(active.id));
    (t.error_message.as_deref() != Some(message.as_str()))
        .then(|| settle(t, None, Some(QUEUED), &message))
}

fn settle(
    t: &DeliveryTarget,
    deployment_id: Option<String>,
    code: Option<&str>,
    message: &str,
) -> DeliveryTarget {
    DeliveryTarget {
        deployment_id,
        error_code: code.map(str::to_string),
        error_message: code.map(|_| message.to_string()),
        ..t.clone()
    }
}

#[allow(clippy::too_many_arguments)]
fn push_request(
    provider: &str,
    delivery: &str,
    workspace: &str,
    fraise: &str,
    environment: &str,
    reference: &str,
    commit: &str,
) -> DeployRequest {
    DeployRequest {
        tenant: workspace.to_string(),
        fraise: fraise.to_string(),
        environment: environment.to_string(),
        git_ref: Some(reference.to_string()),
        commit: Some(commit.to_string()),
        metadata: json!({ "webhook": { "provider": provider, "delivery": delivery } }),
        triggered_by: push_user(provider),
        trigger_type: "webhook".into(),
        ..DeployRequest::default()
    }
}
