//! What a pushed ref deploys: every environment, of every fraise built from the pushed
//! repository, that follows the branch (`branch`) or takes tags (`tags: true`), each at the
//! commit the host reported.

use fraisier_model::webhook::{GitHost, Push, RefKind};
use serde::Serialize;
use serde_json::json;

use crate::{DeployRequest, Engine};

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
                        let req = DeployRequest {
                            tenant: workspace.clone(),
                            fraise: fraise.clone(),
                            environment: environment.clone(),
                            git_ref: Some(change.name.clone()),
                            commit: Some(commit.clone()),
                            metadata: json!({ "webhook": { "provider": host.as_str(), "delivery": delivery } }),
                            triggered_by: format!("webhook:{}", host.as_str()),
                            trigger_type: "webhook".into(),
                            ..DeployRequest::default()
                        };
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
                            error: result.err().map(|e| TargetError {
                                code: e.code(),
                                message: e.to_string(),
                            }),
                        });
                    }
                }
            }
        }
        out
    }
}
