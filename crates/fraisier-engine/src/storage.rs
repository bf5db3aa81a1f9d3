//! The artifact store's upkeep: what it holds and costs, and a cleanup that keeps the newest
//! versions of each artifact and never removes one that runs anywhere, that a service would
//! roll back to, or that a run in progress uses.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::{Engine, EngineError};

/// What the store holds for a workspace.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StorageStats {
    pub artifacts: u64,
    pub versions: u64,
    /// Sum of the versions' sizes.
    pub bytes: u64,
    /// What is on disk: versions sharing bytes share a blob.
    pub stored_bytes: u64,
}

/// A version a cleanup removed, or kept for a reason.
#[derive(Clone, Debug, Serialize)]
pub struct CleanupItem {
    pub artifact: String,
    pub version: String,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CleanupReport {
    pub dry_run: bool,
    /// Versions kept per artifact, newest first.
    pub keep: u32,
    pub deleted: Vec<CleanupItem>,
    /// Older than `keep`, but kept: running, a rollback target, or used by a run.
    pub protected: Vec<CleanupItem>,
    pub freed_bytes: u64,
}

// === impl Engine ===

impl Engine {
    pub async fn storage_stats(&self, tenant: &str) -> Result<StorageStats, EngineError> {
        let (artifacts, _) = self.store().artifacts(tenant, &every_artifact()).await?;
        let mut stats = StorageStats {
            artifacts: artifacts.len() as u64,
            ..StorageStats::default()
        };
        let mut digests = BTreeSet::new();
        for a in &artifacts {
            for v in self.store().artifact_versions(tenant, &a.name).await? {
                stats.versions += 1;
                stats.bytes += v.size;
                if digests.insert(v.digest.clone()) {
                    stats.stored_bytes += v.size;
                }
            }
        }
        Ok(stats)
    }

    /// Removes the versions of each artifact beyond the newest `keep`, except those in use.
    pub async fn cleanup_artifacts(
        &self,
        tenant: &str,
        keep: u32,
        dry_run: bool,
    ) -> Result<CleanupReport, EngineError> {
        if keep == 0 {
            return Err(EngineError::InvalidParameters {
                field: "keep".into(),
                message: "keep at least 1 version of each artifact".into(),
            });
        }
        // No run may start (and pick a version) while what is in use is being worked out.
        let _changing = self.inner.changes.lock().await;
        // Each version in use, with the first reason found.
        let mut used: BTreeMap<(String, String), String> = BTreeMap::new();
        let mut why = |key: (String, String), reason: String| {
            used.entry(key).or_insert(reason);
        };
        for s in self.store().services(tenant).await? {
            if let Some(v) = &s.current_version {
                why(
                    (s.fraise.clone(), v.clone()),
                    format!("runs in {}", s.environment),
                );
            }
            if let Some(v) = &s.previous_version {
                why(
                    (s.fraise.clone(), v.clone()),
                    format!("the rollback target in {}", s.environment),
                );
            }
            if let Some(d) = &s.desired {
                for v in d.releases.keys() {
                    why(
                        (s.fraise.clone(), v.clone()),
                        format!("kept on the host in {}", s.environment),
                    );
                }
            }
        }
        for r in self.store().active_runs().await? {
            if r.tenant_id == tenant {
                why(
                    (r.fraise.clone(), r.version.clone()),
                    format!("used by {}", fraisier_store::run_id_string(r.id)),
                );
                if let Some(p) = &r.previous_version {
                    why(
                        (r.fraise.clone(), p.clone()),
                        format!("used by {}", fraisier_store::run_id_string(r.id)),
                    );
                }
            }
        }
        let (artifacts, _) = self.store().artifacts(tenant, &every_artifact()).await?;
        let mut report = CleanupReport {
            dry_run,
            keep,
            ..CleanupReport::default()
        };
        for a in artifacts {
            // Newest first.
            let versions = self.store().artifact_versions(tenant, &a.name).await?;
            for v in versions.into_iter().skip(keep as usize) {
                let key = (a.name.clone(), v.version.clone());
                let item = |reason: Option<String>| CleanupItem {
                    artifact: a.name.clone(),
                    version: v.version.clone(),
                    size: v.size,
                    reason,
                };
                if let Some(reason) = used.get(&key) {
                    report.protected.push(item(Some(reason.clone())));
                    continue;
                }
                if !dry_run {
                    match self
                        .delete_artifact(tenant, &a.name, Some(&v.version))
                        .await
                    {
                        Ok(()) => {}
                        Err(EngineError::ArtifactInUse(m)) => {
                            report.protected.push(item(Some(m)));
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
                report.freed_bytes += v.size;
                report.deleted.push(item(None));
            }
        }
        Ok(report)
    }
}

fn every_artifact() -> fraisier_store::ArtifactFilter {
    fraisier_store::ArtifactFilter {
        limit: u32::MAX,
        ..Default::default()
    }
}
