//! From a request to a prepared run: which fraise, environment, version, strategy and options,
//! checked against the configuration and the artifacts on disk before anything is recorded.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::{DateTime, Utc};
use fraisier_model::config::{FraiseConfig, FraiseEnvironmentConfig, WorkspaceConfig};
use fraisier_model::names::{is_valid_name, version_problem};
use fraisier_model::service::{DesiredInstance, DesiredService, ReleaseSpec};
use fraisier_model::{version, FraiseType, Strategy, StrategyConfig};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::EngineError;

/// A request to move a fraise in an environment to a version (seeds 000 and 001).
#[derive(Clone, Debug, Default)]
pub struct DeployRequest {
    pub tenant: String,
    pub fraise: String,
    pub environment: String,
    pub version: Option<String>,
    pub strategy: Option<Strategy>,
    pub strategy_config: Option<Map<String, Value>>,
    pub skip_health_check: bool,
    pub skip_backup: bool,
    /// Seconds the whole run may take before it fails (default 3600).
    pub timeout_secs: Option<u64>,
    /// `false` leaves a failed version in place (seed 001); default true.
    pub rollback_on_failure: Option<bool>,
    /// Extra dependencies named by the request, checked like the configured ones.
    pub extra_dependencies: Vec<String>,
    pub metadata: Value,
    pub triggered_by: String,
    pub trigger_type: String,
    /// For a fraise built from git: a branch or tag to deploy, resolved now.
    pub git_ref: Option<String>,
    /// Deploy even when the commit already runs there.
    pub force: bool,
    /// With `git_ref`: the commit the ref named when the host reported the push (a webhook),
    /// deployed even if the ref has moved on since.
    pub commit: Option<String>,
    /// `version` is a version of the artifact store, deployed as it is even for a fraise
    /// built from git (an upload, an adopted artifact).
    pub from_store: bool,
    /// `false` skips the fraise's migrations (default: run them).
    pub migrate: Option<bool>,
}

#[derive(Clone, Debug, Default)]
pub struct RollbackRequest {
    pub tenant: String,
    pub fraise: String,
    pub environment: String,
    pub to_version: Option<String>,
    pub reason: Option<String>,
    pub triggered_by: String,
    pub trigger_type: String,
    /// `false` leaves the database as it is (default: undo what the version's deploy applied).
    pub migrate: Option<bool>,
}

/// Options a run keeps in the store so that a resumed run behaves as first asked.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunOptions {
    pub skip_health_check: bool,
    pub skip_backup: bool,
    pub timeout_secs: u64,
    pub rollback_on_failure: bool,
    #[serde(default)]
    pub dependencies: Vec<String>,
    #[serde(default)]
    pub reason: Option<String>,
    /// The service's desired state when the run started: what a rollback restores.
    #[serde(default)]
    pub snapshot: Option<DesiredService>,
    /// Whether `snapshot` has been taken (it may legitimately be `None`).
    #[serde(default)]
    pub snapshot_taken: bool,
    /// The agents new instances go to, chosen with the snapshot (so a resumed run plans the
    /// same); empty: the server's own agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    /// Agents holding the service's instances that were offline then: the run plans without
    /// those instances (it cannot reach them); each agent stops them when it rejoins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<String>,
    #[serde(default)]
    pub approval: Option<ApprovalPolicy>,
    /// Variables set through the API when the run was asked for, over the configured ones.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Secrets then, sealed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, fraisier_model::secret::Sealed>,
    /// For a `config` run: the changed variables as they were before (`None`: absent), put
    /// back if the run does not release them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub revert: BTreeMap<String, Option<fraisier_store::Variable>>,
    /// The bytes the run's version runs, in the artifact store (fixed when it was asked for,
    /// or by the run's build step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<fraisier_model::service::ArtifactRef>,
    /// A commit to build into the run's version first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildPlan>,
    /// The commit already runs there: the run ends at once (`skipped: already deployed`).
    #[serde(default)]
    pub already_deployed: bool,
    /// Run the fraise's migrations (`up` on deploy, `down` on rollback).
    #[serde(default)]
    pub migrate: bool,
    /// What this run's migrations did, kept as they run so that a failure undoes exactly that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationRecord>,
}

/// Migrations a run applied with `up` (or, for a rollback, undid with `down`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationRecord {
    /// The version whose release ran them.
    pub version: String,
    /// Applied migrations (as `status` counts them) before the command ran.
    pub before: u64,
    /// How many it applied (or undid); `None` until it ended, or when `status` could not say.
    pub steps: Option<u64>,
    /// They have been undone since.
    #[serde(default)]
    pub reverted: bool,
}

/// What a run builds: a commit of a repository, named by the ref it was asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BuildPlan {
    pub url: String,
    pub commit: String,
    pub reference: String,
}

/// What a run in a guarded environment needs before it starts, fixed when it is asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApprovalPolicy {
    pub required: u32,
    pub expires_at: DateTime<Utc>,
    /// Separation of duties: whoever asked cannot approve.
    pub require_sod: bool,
    /// `approval.requested` has been announced.
    #[serde(default)]
    pub requested: bool,
    /// Enough people said yes; the run went on (a resumed run does not ask again).
    #[serde(default)]
    pub granted: bool,
}

/// The approval policy of an environment, for a run asked for now.
pub(crate) fn approval_policy(
    config: &WorkspaceConfig,
    environment: &str,
    now: DateTime<Utc>,
) -> Option<ApprovalPolicy> {
    let e = config.environments.get(environment)?;
    (e.required_approvals > 0).then(|| ApprovalPolicy {
        required: e.required_approvals,
        expires_at: now + chrono::Duration::milliseconds(e.approval_timeout.0 as i64),
        require_sod: e.require_sod,
        requested: false,
        granted: false,
    })
}

pub const DEFAULT_TIMEOUT_SECS: u64 = 3600;

/// A run's time limit in an environment when the request gives none: its
/// `deployment_timeout`, else an hour.
pub fn default_timeout(config: &WorkspaceConfig, environment: &str) -> u64 {
    config
        .environments
        .get(environment)
        .and_then(|e| e.deployment_timeout)
        .map_or(DEFAULT_TIMEOUT_SECS, |t| t.0.div_ceil(1000))
}

pub(crate) fn lookup<'a>(
    config: &'a WorkspaceConfig,
    fraise: &str,
    environment: &str,
) -> Result<(&'a FraiseConfig, &'a FraiseEnvironmentConfig), EngineError> {
    // Names that cannot exist (`../x`, reserved words) are simply not found.
    let f = config
        .fraises
        .get(fraise)
        .filter(|_| is_valid_name(fraise))
        .ok_or_else(|| EngineError::FraiseNotFound(fraise.to_string()))?;
    if !config.environments.contains_key(environment) || !is_valid_name(environment) {
        return Err(EngineError::EnvironmentNotFound(environment.to_string()));
    }
    let fe = f
        .environments
        .get(environment)
        .ok_or_else(|| EngineError::NotInEnvironment {
            fraise: fraise.to_string(),
            environment: environment.to_string(),
        })?;
    Ok((f, fe))
}

/// Versions listed in the config plus those found at `artifact_path`.
pub fn known_versions(f: &FraiseConfig) -> Vec<String> {
    let mut all: BTreeSet<String> = f.versions.iter().cloned().collect();
    if let Some(pattern) = &f.artifact_path {
        all.extend(discover_versions(pattern));
    }
    let mut v: Vec<String> = all.into_iter().collect();
    v.sort_by(|a, b| version::compare(a, b));
    v
}

/// Lists versions that exist on disk for a pattern such as `/srv/a/{version}` or
/// `/srv/a/app-{version}.tar.gz` or `/srv/{version}/app.tar.gz`.
fn discover_versions(pattern: &str) -> Vec<String> {
    let Some((pre, post)) = pattern.split_once("{version}") else {
        return Vec::new();
    };
    let (dir, name_prefix) = match pre.rfind('/') {
        Some(i) => (&pre[..i.max(1)], &pre[i + 1..]),
        None => (".", pre),
    };
    let (name_suffix, rest) = match post.find('/') {
        Some(i) => (&post[..i], Some(&post[i..])),
        None => (post, None),
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(v) = name
            .strip_prefix(name_prefix)
            .and_then(|n| n.strip_suffix(name_suffix))
        else {
            continue;
        };
        if v.is_empty() || version_problem(v).is_some() {
            continue;
        }
        if let Some(rest) = rest {
            if !Path::new(&format!("{dir}/{name}{rest}")).exists() {
                continue;
            }
        }
        out.push(v.to_string());
    }
    out
}

/// Picks and checks the version to deploy.
pub(crate) fn resolve_version(
    f: &FraiseConfig,
    fraise: &str,
    requested: Option<&str>,
    registry: &[String],
) -> Result<String, EngineError> {
    let mut known = known_versions(f);
    known.extend(
        registry
            .iter()
            .filter(|v| !known.contains(v))
            .cloned()
            .collect::<Vec<_>>(),
    );
    let version = match requested {
        Some(v) => {
            if let Some(p) = version_problem(v) {
                return Err(EngineError::InvalidParameters {
                    field: "version".into(),
                    message: format!("invalid version {v:?}: {p}"),
                });
            }
            v.to_string()
        }
        None => version::latest(known.iter().map(String::as_str))
            .map(str::to_string)
            .ok_or_else(|| {
                EngineError::NoVersionKnown(format!(
                    "no version of {fraise} is known: pass \"version\" in the request, list versions under \
                     fraises.{fraise}.versions in fraisier.yaml, put releases at its artifact_path, or push \
                     one with `fraisier artifact push --name {fraise}`"
                ))
            })?,
    };
    if registry.contains(&version) {
        return Ok(version);
    }
    match f.artifact_for(&version) {
        Some(path) if !path.exists() => Err(EngineError::ArtifactNotFound {
            message: format!("artifact for {fraise} {version} not found at {}", path.display()),
            version,
        }),
        None if !known.contains(&version) => Err(EngineError::ArtifactNotFound {
            message: format!(
                "version {version} of {fraise} is not listed under fraises.{fraise}.versions and the fraise has no artifact_path"
            ),
            version,
        }),
        _ => Ok(version),
    }
}

/// The strategy and its config: request values over the environment's configured ones.
pub(crate) fn resolve_strategy(
    fe: &FraiseEnvironmentConfig,
    strategy: Option<Strategy>,
    requested: Option<&Map<String, Value>>,
) -> Result<(Strategy, StrategyConfig), EngineError> {
    let strategy = strategy.unwrap_or(fe.strategy);
    // `strategy_config` holds defaults for the configured strategy; `strategy_defaults` for others.
    let mut merged = if strategy == fe.strategy {
        fe.strategy_config.clone()
    } else {
        fe.strategy_defaults
            .get(&strategy)
            .cloned()
            .unwrap_or_default()
    };
    if let Some(r) = requested {
        for (k, v) in r {
            merged.insert(k.clone(), v.clone());
        }
    }
    let parsed =
        StrategyConfig::parse(strategy, &merged).map_err(|e| EngineError::InvalidParameters {
            field: format!("strategy_config.{}", e.field),
            message: format!("strategy_config.{}: {}", e.field, e.message),
        })?;
    Ok((strategy, parsed))
}

/// A release as configured, with the variables and secrets set through the API (which win
/// over the configured variables of the same name), running `artifact`.
pub(crate) fn release_spec(
    f: &FraiseConfig,
    fe: &FraiseEnvironmentConfig,
    opts: &RunOptions,
    artifact: Option<fraisier_model::service::ArtifactRef>,
) -> ReleaseSpec {
    let mut env: BTreeMap<String, String> = f.env.clone();
    env.extend(fe.env.clone());
    env.extend(opts.env.clone());
    for name in opts.secrets.keys() {
        env.remove(name);
    }
    ReleaseSpec {
        // Agents fetch releases from the store by digest; nothing is read from this host's disk.
        source: None,
        artifact,
        command: f.command.clone().unwrap_or_default(),
        working_directory: f.working_directory.clone(),
        env,
        secrets: opts.secrets.clone(),
    }
}

/// A desired state for the service with the given instances and releases.
pub(crate) fn desired(
    fraise: &str,
    environment: &str,
    f: &FraiseConfig,
    fe: &FraiseEnvironmentConfig,
    generation: u64,
    instances: Vec<DesiredInstance>,
    releases: BTreeMap<String, ReleaseSpec>,
) -> DesiredService {
    DesiredService {
        fraise: fraise.to_string(),
        environment: environment.to_string(),
        generation,
        kind: f.kind,
        port: if f.kind == FraiseType::Api {
            fe.port
        } else {
            None
        },
        // The environment's default interval is the executor's to add.
        health_check: f.health_check_spec(None),
        releases,
        instances,
        drain_timeout_ms: f.drain_timeout.0,
        stop_grace_ms: f.stop_grace.0,
        schedule: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_environment_gives_the_default_time_limit() {
        let c = fraisier_model::config::Config::parse(
            "environments:\n  qa: { deployment_timeout: 90s }\n  staging: { deployment_timeout: 1500ms }\n  production: {}\n",
        )
        .unwrap();
        let ws = c.scope("default");
        assert_eq!(default_timeout(ws, "qa"), 90);
        assert_eq!(default_timeout(ws, "staging"), 2, "rounded up, never 0");
        assert_eq!(default_timeout(ws, "production"), DEFAULT_TIMEOUT_SECS);
        assert_eq!(default_timeout(ws, "nowhere"), DEFAULT_TIMEOUT_SECS);
    }

    #[test]
    fn discovers_versions_from_patterns() {
        let dir = std::env::temp_dir().join(format!("fraisier-discover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("dirs/1.0.0")).unwrap();
        std::fs::create_dir_all(dir.join("dirs/2.0.0")).unwrap();
        std::fs::create_dir_all(dir.join("nested/3.0.0")).unwrap();
        std::fs::write(dir.join("nested/3.0.0/app.tar.gz"), b"x").unwrap();
        std::fs::create_dir_all(dir.join("nested/4.0.0")).unwrap();
        std::fs::write(dir.join("app-1.2.3.tar.gz"), b"x").unwrap();
        let d = dir.display();
        let mut v = discover_versions(&format!("{d}/dirs/{{version}}"));
        v.sort();
        assert_eq!(v, ["1.0.0", "2.0.0"]);
        assert_eq!(
            discover_versions(&format!("{d}/nested/{{version}}/app.tar.gz")),
            ["3.0.0"]
        );
        assert_eq!(
            discover_versions(&format!("{d}/app-{{version}}.tar.gz")),
            ["1.2.3"]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
