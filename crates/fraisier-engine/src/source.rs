//! Releases built from git: which commit a request means (a tag or commit as `version`, a
//! branch or tag as `ref`, else the configured branch), the version it gets, and the build
//! step that turns it into an artifact in the store.

use fraisier_model::config::FraiseConfig;

use crate::git::GitError;
use crate::request::{BuildPlan, DeployRequest};
use crate::{Engine, EngineError};

/// A request's commit and the version it runs as.
pub(crate) struct SourceResolution {
    pub version: String,
    pub plan: BuildPlan,
}

// === impl Engine ===

impl Engine {
    /// For a fraise built from git: fetches its mirror and resolves what the request names.
    /// `None` for other fraises.
    pub(crate) async fn resolve_source(
        &self,
        req: &DeployRequest,
        f: &FraiseConfig,
    ) -> Result<Option<SourceResolution>, EngineError> {
        let Some(url) = f.git_url() else {
            if req.git_ref.is_some() {
                return Err(EngineError::InvalidParameters {
                    field: "ref".into(),
                    message: format!(
                        "{} is not built from git (no source.git in fraisier.yaml): name a version",
                        req.fraise
                    ),
                });
            }
            return Ok(None);
        };
        let (field, reference) = match (&req.version, &req.git_ref) {
            (Some(_), Some(_)) => {
                return Err(EngineError::InvalidParameters {
                    field: "ref".into(),
                    message: "give a version (tag or commit) or a ref (branch or tag), not both"
                        .into(),
                })
            }
            (Some(v), None) => ("version", v.clone()),
            (None, Some(r)) => ("ref", r.clone()),
            (None, None) => ("ref", f.git_default_branch()),
        };
        let mirror = self
            .inner
            .mirrors
            .fetch(&url)
            .await
            .map_err(|e| EngineError::SourceUnavailable(e.to_string()))?;
        let target = req.commit.as_deref().unwrap_or(&reference);
        let resolved = self
            .inner
            .mirrors
            .resolve(&mirror, &url, target)
            .await
            .map_err(|e| match e {
                GitError::UnknownRef { .. } => EngineError::InvalidParameters {
                    field: field.into(),
                    message: e.to_string(),
                },
                e => EngineError::SourceUnavailable(e.to_string()),
            })?;
        Ok(Some(SourceResolution {
            version: resolved.version,
            plan: BuildPlan {
                url,
                commit: resolved.commit,
                reference,
            },
        }))
    }

    pub(crate) fn mirrors(&self) -> &crate::git::Mirrors {
        &self.inner.mirrors
    }
}
