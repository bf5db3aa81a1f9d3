//! What a pushed ref deploys: every environment, of every fraise built from the pushed
//! repository, that follows the branch (`branch`) or takes tags (`tags: true`), each at the
//! commit the host reported. An environment busy with a run is queued, and once the run is
//! over the latest push queued there is deployed (the older ones are superseded).

use std::collections::HashSet;

use fraisier_model::webhook::{GitHost, Push, RefKind};
use fraisier_store::DeliveryTarget;
use serde::Serialize;
use serde_json::json;

use crate::{DeployRequest, Engine, EngineError};

/// A target's `error.code` while it waits for the active run.
pub const QUEUED: &str = "QUEUED";

/// One environment a push concerned, and what became of it.
#[derive(Clone, Debug, Serialize)]
pub struct PushTarget {
    pub workspace: String,
    pub fraise: String,
    pub environment: String,
    #[serde(rename = "ref")]
    pub reference: String,
    pub commit: String,
    /// The run started, or `None` when it was refused (`error`).
    pub deployment_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<TargetError>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TargetError {
    pub code: &'static str,
    pub message: String,
}

// === impl Engine ===

impl Engine {
    /// Starts a deploy for each environment that follows a pushed ref. Deleted refs deploy
    /// nothing; a refusal (a run already active there, an unknown commit) is reported for
    /// that environment and does not stop the others.
    pub async fn deploy_push(&self, host: GitHost, push: &Push, delivery: &str) -> Vec<PushTarget> {
        let mut out = Vec::new();
        for change in &push.changes {
            let Some(commit) = &change.commit else {
                continue;
            };
            for (workspace, ws) in &self.inner.config.workspaces {
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
                        if !follows {
                            continue;
                        }
                        let req = push_request(
                            host.as_str(),
                            delivery,
                            workspace,
                            fraise,
                            environment,
                            &change.name,
                            commit,
                        );
                        let result = self.submit(req).await;
                        out.push(PushTarget {
                            workspace: workspace.clone(),
                            fraise: fraise.clone(),
                            environment: environment.clone(),
                            reference: change.name.clone(),
                            commit: commit.clone(),
                            deployment_id: result
                                .as_ref()
                                .ok()
                                .map(|r| fraisier_store::run_id_string(r.id)),
                            error: result.err().map(|e| match e {
                                EngineError::InProgress { active_id, .. } => TargetError {
                                    code: QUEUED,
                                    message: format!(
                                        "waits for {active_id} to finish; then the latest push queued here is deployed"
                                    ),
                                },
                                e => TargetError {
                                    code: e.code(),
                                    message: e.to_string(),
                                },
                            }),
                        });
                    }
                }
            }
        }
        out
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
            } else if matches!(
                self.store()
                    .active_run_for(&t.workspace, &t.fraise, &t.environment)
                    .await,
                Ok(Some(_))
            ) {
                // Still busy: asked cheaply, before `submit` would fetch the repository.
                None
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
                    Err(EngineError::InProgress { .. }) => None,
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
        triggered_by: format!("webhook:{provider}"),
        trigger_type: "webhook".into(),
        ..DeployRequest::default()
    }
}
