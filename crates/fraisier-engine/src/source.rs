//! Releases built from git: which commit a request means (a tag or commit as `version`, a
//! branch or tag as `ref`, else the configured branch), the version it gets, and the build
//! step that turns it into an artifact in the store.

use fraisier_model::config::FraiseConfig;

use crate::git::{GitError, Naming};
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
        if req.from_store {
            return Ok(None);
        }
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
        // `submit` fetched it just now, outside the engine's lock.
        let auth = self.git_auth(&req.tenant, f).await?;
        let mirror = self
            .inner
            .mirrors
            .fetch_within(&url, &auth, std::time::Duration::from_secs(10))
            .await
            .map_err(|e| EngineError::SourceUnavailable(e.to_string()))?;
        let (target, naming) = match (&req.commit, field) {
            (Some(c), _) => (c.as_str(), Naming::Commit),
            (None, "version") => (reference.as_str(), Naming::Version),
            (None, _) => (reference.as_str(), Naming::Ref),
        };
        let resolved = self
            .inner
            .mirrors
            .resolve(&mirror, &url, target, naming)
            .await
            .map_err(|e| match e {
                GitError::UnknownRef { .. } => EngineError::InvalidParameters {
                    field: field.into(),
                    message: e.to_string(),
                },
                e => EngineError::SourceUnavailable(e.to_string()),
            })?;
        // A reported commit must be the ref's (not a fork's, fetched with a pull request).
        if req.commit.is_some()
            && !self
                .inner
                .mirrors
                .belongs(&mirror, &resolved.commit, &reference)
                .await
        {
            return Err(EngineError::InvalidParameters {
                field: "commit".into(),
                message: format!("commit {} is not on {reference}", resolved.commit),
            });
        }
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

/// Where a fraise's releases come from, as `GET /deployments/sources` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SourceInfo {
    pub fraise: String,
    /// `git`, `artifact_path`, or `registry` (versions pushed to the artifact store only).
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub url: Option<String>,
    /// Deployed when a request names nothing.
    pub branch: Option<String>,
    pub build: Option<String>,
    pub artifact_path: Option<String>,
    /// The environments webhooks deploy.
    pub follows: Vec<Follow>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Follow {
    pub environment: String,
    pub branch: Option<String>,
    pub tags: bool,
}

/// What to check: a fraise's repository and a ref, any repository and a ref, or an artifact.
#[derive(Clone, Debug, Default)]
pub struct SourceCheck {
    pub fraise: Option<String>,
    pub url: Option<String>,
    pub reference: Option<String>,
    pub artifact: Option<String>,
    pub version: Option<String>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SourceReport {
    pub valid: bool,
    /// The commit the ref names, when it could be told.
    pub commit: Option<String>,
    /// The version a deploy of it would run as.
    pub version: Option<String>,
    pub checks: Vec<SourceCheckLine>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct SourceCheckLine {
    pub check: &'static str,
    pub ok: bool,
    pub message: String,
}

impl SourceReport {
    fn line(&mut self, check: &'static str, ok: bool, message: impl Into<String>) {
        self.checks.push(SourceCheckLine {
            check,
            ok,
            message: message.into(),
        });
    }
}

impl Engine {
    /// Each fraise of the workspace and where its releases come from.
    pub fn sources(&self, tenant: &str) -> Vec<SourceInfo> {
        let live = self.config();
        let config = live.scope(tenant);
        config
            .fraises
            .iter()
            .map(|(name, f)| SourceInfo {
                fraise: name.clone(),
                kind: if f.source.is_some() {
                    "git"
                } else if f.artifact_path.is_some() {
                    "artifact_path"
                } else {
                    "registry"
                },
                url: f.git_url(),
                branch: f.source.as_ref().map(|_| f.git_default_branch()),
                build: f.build.clone(),
                artifact_path: f.artifact_path.clone(),
                follows: f
                    .environments
                    .iter()
                    .filter(|(_, e)| e.branch.is_some() || e.tags)
                    .map(|(env, e)| Follow {
                        environment: env.clone(),
                        branch: e.branch.clone(),
                        tags: e.tags,
                    })
                    .collect(),
            })
            .collect()
    }

    /// Checks a source without deploying it: the repository answers and the ref resolves, or
    /// the artifact version exists. Bad input is an error; a source that fails a check is a
    /// report with `valid: false`.
    pub async fn validate_source(
        &self,
        tenant: &str,
        check: &SourceCheck,
    ) -> Result<SourceReport, EngineError> {
        let mut report = SourceReport::default();
        let bad = |field: &str, message: String| EngineError::InvalidParameters {
            field: field.into(),
            message,
        };
        if let Some(p) = check
            .fraise
            .as_deref()
            .and_then(fraisier_model::names::name_problem)
        {
            return Err(bad("fraise", format!("fraise {p}")));
        }
        if let Some(p) = check
            .artifact
            .as_deref()
            .and_then(fraisier_model::artifact::artifact_name_problem)
        {
            return Err(bad("artifact", format!("artifact {p}")));
        }
        if let Some(p) = check
            .version
            .as_deref()
            .and_then(fraisier_model::names::version_problem)
        {
            return Err(bad("version", format!("version {p}")));
        }
        if check
            .reference
            .as_deref()
            .is_some_and(|r| r.is_empty() || r.len() > 255)
        {
            return Err(bad("ref", "ref must be 1 to 255 characters".into()));
        }
        if let Some(name) = &check.artifact {
            let version =
                check
                    .version
                    .as_deref()
                    .ok_or_else(|| EngineError::InvalidParameters {
                        field: "version".into(),
                        message: "give the artifact's version".into(),
                    })?;
            match self.store().artifact_version(tenant, name, version).await {
                Ok(v) => {
                    report.line(
                        "artifact",
                        true,
                        format!("{name} {version} is in the store ({})", v.digest),
                    );
                    report.version = Some(version.to_string());
                }
                Err(fraisier_store::StoreError::NotFound) => report.line(
                    "artifact",
                    false,
                    format!("the store has no version {version} of {name}"),
                ),
                Err(e) => return Err(e.into()),
            }
        } else if let Some(fraise) = &check.fraise {
            let live = self.config();
            let config = live.scope(tenant);
            let f = config
                .fraises
                .get(fraise)
                .ok_or_else(|| EngineError::FraiseNotFound(fraise.clone()))?;
            let req = DeployRequest {
                tenant: tenant.to_string(),
                fraise: fraise.clone(),
                git_ref: check.reference.clone(),
                ..DeployRequest::default()
            };
            match self.resolve_source(&req, f).await {
                Ok(Some(s)) => {
                    report.line("repository", true, format!("{} answers", s.plan.url));
                    report.line(
                        "ref",
                        true,
                        format!("{} is commit {}", s.plan.reference, s.plan.commit),
                    );
                    report.commit = Some(s.plan.commit);
                    report.version = Some(s.version);
                }
                Ok(None) => report.line(
                    "repository",
                    false,
                    format!("{fraise} is not built from git (no source.git)"),
                ),
                Err(EngineError::SourceUnavailable(why)) => report.line("repository", false, why),
                Err(EngineError::InvalidParameters { message, .. }) => {
                    report.line("repository", true, "the repository answers");
                    report.line("ref", false, message);
                }
                Err(e) => return Err(e),
            }
        } else if let Some(url) = &check.url {
            if let Some(p) = fraisier_model::config::git_url_problem(url) {
                return Err(EngineError::InvalidParameters {
                    field: "url".into(),
                    message: format!("url {p}"),
                });
            }
            if !url.starts_with("https://") {
                return Err(EngineError::InvalidParameters {
                    field: "url".into(),
                    message: "a URL is checked over https only; another repository is checked through the fraise that names it (give fraise)".into(),
                });
            }
            match crate::git::ls_remote(url).await {
                Err(e) => report.line("repository", false, e.to_string()),
                Ok(refs) => {
                    report.line(
                        "repository",
                        true,
                        format!("{url} answers ({} branches and tags)", refs.len()),
                    );
                    if let Some(r) = check.reference.as_deref() {
                        let found = refs.iter().find(|(commit, name)| {
                            name == &format!("refs/heads/{r}")
                                || name == &format!("refs/tags/{r}")
                                || (r.len() >= 7 && commit.starts_with(r))
                        });
                        match found {
                            Some((commit, name)) => {
                                report.line("ref", true, format!("{r} is {name} at {commit}"));
                                report.commit = Some(commit.clone());
                            }
                            None => report.line(
                                "ref",
                                false,
                                format!(
                                    "{r} is neither a branch, a tag nor the tip of one in {url}"
                                ),
                            ),
                        }
                    }
                }
            }
        } else {
            return Err(EngineError::InvalidParameters {
                field: "fraise".into(),
                message: "give fraise (and ref), url (and ref), or artifact and version".into(),
            });
        }
        report.valid = report.checks.iter().all(|c| c.ok);
        Ok(report)
    }
}
