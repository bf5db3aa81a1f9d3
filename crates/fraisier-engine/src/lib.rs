//! Runs deployments: turns requests into durable runs, walks each strategy's plan through the
//! provider, judges its gates, rolls back on failure, and resumes runs after a restart.

mod artifacts;
mod build;
pub mod bus;
mod credentials;
pub mod environments;
pub mod error;
mod executor;
pub mod fleet;
pub mod git;
pub mod guards;
pub mod jobs;
mod journal;
mod notify;
pub mod provider;
pub mod request;
mod scan;
mod source;
mod status;
mod storage;
mod variables;
mod webhooks;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fraisier_model::approval::{self, Decision, Requirement, Standing, Vote};
use fraisier_model::config::Config;
use fraisier_model::names::agent_name;
use fraisier_model::run::{Component, EventType, LogLevel, RunKind, RunStatus, ServiceState};
use fraisier_model::{FraiseType, Strategy};
use fraisier_store::{run_id_string, NewRun, Renewal, Run, ServiceRecord, Store, StoreError};
use serde_json::{json, Value};
use tokio::sync::watch;

pub use artifacts::{ArtifactPush, Promotion, Pushed};
pub use bus::{Bus, BusMessage, Progress};
pub use credentials::MAX_SECRET_CHARS;
pub use error::EngineError;
pub use provider::{Provider, ProviderError};
pub use request::{
    known_versions, ApprovalPolicy, BuildPlan, DeployRequest, RollbackRequest, RunOptions,
    DEFAULT_TIMEOUT_SECS,
};
pub use source::{Follow, SourceCheck, SourceCheckLine, SourceInfo, SourceReport};
pub use status::ServiceStatus;
pub use storage::{CleanupItem, CleanupReport, StorageStats};
pub use variables::{EnvironmentVariablesChanged, VariableChange, VariableKind, VariablesChanged};
pub use webhooks::{ACCEPTED, QUEUED};

/// Timing knobs; tests shorten them.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// How often gates look at the observed state.
    pub poll_interval: Duration,
    /// How often desired states are re-pushed to the provider when nothing runs.
    pub resync_interval: Duration,
    /// Where git mirrors and builds live (the server's data dir).
    pub work_dir: std::path::PathBuf,
    /// How long this server's hold on a run lasts unrenewed (`server.run_lease`).
    pub run_lease: Duration,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            poll_interval: Duration::from_millis(100),
            resync_interval: Duration::from_secs(5),
            work_dir: std::env::temp_dir().join("fraisier-work"),
            run_lease: Duration::from_secs(15),
        }
    }
}

fn server_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let mut salt = [0u8; 4];
    let _ = getrandom::getrandom(&mut salt);
    format!(
        "{host}/{}/{}",
        std::process::id(),
        salt.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    /// The fleet, as the provider every run acts through.
    provider: Arc<dyn Provider>,
    fleet: Arc<fleet::Fleet>,
    config: Arc<environments::LiveConfig>,
    bus: Bus,
    settings: EngineSettings,
    /// Cancel signals of the runs this process is executing.
    cancels: Mutex<HashMap<i64, watch::Sender<Option<String>>>>,
    /// Who this server is when it holds a run: host, process and a random part, so that a
    /// restarted process is someone else.
    server_id: String,
    /// What secrets are sealed with; replaced whole when the key is rotated.
    secret_keys: RwLock<fraisier_model::secret::SecretKeys>,
    /// Held from "is a run active?" to "the run is recorded" by everything that starts runs or
    /// changes what they would release (deploys, rollbacks, variables, key rotation), so that
    /// a change of variables and the run releasing it cannot be split by another.
    changes: tokio::sync::Mutex<()>,
    /// Artifacts' bytes, by digest.
    blobs: fraisier_store::blobs::BlobStore,
    mirrors: git::Mirrors,
    /// Wakes the loop that deploys queued pushes when a delivery queues one.
    push_queue: tokio::sync::Notify,
    /// Every task this engine started: its loops and its runs (for `halt`).
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    halted: std::sync::atomic::AtomicBool,
    /// Digests of uploads stored but not yet recorded or dropped, and how many of each.
    uploads: Mutex<HashMap<String, usize>>,
    jobs: jobs::Jobs,
}

/// What a validation found (seed 001's `POST /deployments/validate`).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Validation {
    pub issues: Vec<ValidationIssue>,
    pub warnings: Vec<ValidationIssue>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ValidationIssue {
    pub field: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
}

// === impl Engine ===

impl Engine {
    pub fn new(
        store: Store,
        provider: Arc<dyn Provider>,
        config: Arc<Config>,
        secret_keys: fraisier_model::secret::SecretKeys,
        blobs: fraisier_store::blobs::BlobStore,
        settings: EngineSettings,
    ) -> Engine {
        let config = Arc::new(environments::LiveConfig::new(config));
        let fleet = Arc::new(fleet::Fleet::new(provider, store.clone(), config.clone()));
        let server_id = server_id();
        store.hold_runs_as(&server_id);
        Engine {
            inner: Arc::new(Inner {
                store,
                provider: fleet.clone(),
                fleet,
                config,
                bus: Bus::new(),
                cancels: Mutex::new(HashMap::new()),
                server_id,
                secret_keys: RwLock::new(secret_keys),
                changes: tokio::sync::Mutex::new(()),
                blobs,
                mirrors: git::Mirrors::new(settings.work_dir.join("git")),
                push_queue: tokio::sync::Notify::new(),
                tasks: Mutex::default(),
                halted: Default::default(),
                uploads: Mutex::default(),
                jobs: jobs::Jobs::default(),
                settings,
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Stops every task of this engine where it stands, writing nothing more: what a
    /// `kill -9` of the server does to its runs, for tests of what the next server makes
    /// of them.
    #[doc(hidden)]
    pub fn halt(&self) {
        self.inner
            .halted
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for task in self.inner.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Starts `work` as one of this engine's tasks.
    fn task<F>(&self, work: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handle = tokio::spawn(work);
        if self.inner.halted.load(std::sync::atomic::Ordering::SeqCst) {
            // A stopped server starts nothing more.
            handle.abort();
        }
        let mut tasks = self.inner.tasks.lock().unwrap();
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle.abort_handle());
        handle
    }

    /// The configuration now: fraisier.yaml with the API's environment changes.
    pub fn config(&self) -> Arc<Config> {
        self.inner.config.current()
    }

    pub fn bus(&self) -> &Bus {
        &self.inner.bus
    }

    pub fn provider(&self) -> &Arc<dyn Provider> {
        &self.inner.provider
    }

    /// The agents fraises are placed on, and how to reach those that joined.
    pub fn fleet(&self) -> &Arc<fleet::Fleet> {
        &self.inner.fleet
    }

    /// Checks a deploy request and records it as a pending run, then starts executing it.
    pub async fn submit(&self, req: DeployRequest) -> Result<Run, EngineError> {
        // The repository is fetched before the lock every deploy takes: a slow one must not
        // hold up the others. (A failure is reported by `prepare`.)
        let config = self.config();
        if let Some((url, f)) = config
            .scope(&req.tenant)
            .fraises
            .get(&req.fraise)
            .and_then(|f| Some((f.git_url()?, f)))
            .filter(|_| !req.from_store)
        {
            // A secret that cannot be opened is reported by `prepare`, which needs it too.
            if let Ok(auth) = self.git_auth(&req.tenant, f).await {
                let _ = self.inner.mirrors.fetch(&url, &auth).await;
            }
        }
        let _changing = self.inner.changes.lock().await;
        let new = self.prepare(&req).await?;
        self.create_and_start(new).await
    }

    /// Everything `submit` checks, without recording anything.
    pub async fn prepare(&self, req: &DeployRequest) -> Result<NewRun, EngineError> {
        let live = self.config();
        let config = live.scope(&req.tenant);
        let (f, fe) = request::lookup(config, &req.fraise, &req.environment)?;
        self.check_guards(&req.tenant, &req.environment, &req.triggered_by)
            .await?;
        self.check_limits(&req.tenant, &req.environment, &req.fraise, fe.instances)
            .await?;
        self.fleet()
            .check_placement(&req.tenant, &req.fraise, &req.environment)
            .await?;
        let source = self.resolve_source(req, f).await?;
        let version = match &source {
            Some(s) => s.version.clone(),
            None => {
                let registry = self.registry_versions(&req.tenant, &req.fraise).await?;
                request::resolve_version(f, &req.fraise, req.version.as_deref(), &registry)?
            }
        };
        let (strategy, strategy_config) =
            request::resolve_strategy(fe, req.strategy, req.strategy_config.as_ref())?;
        let mut dependencies = f.dependencies.clone();
        for (i, d) in req.extra_dependencies.iter().enumerate() {
            if !config.fraises.contains_key(d) {
                return Err(EngineError::InvalidSpec {
                    field: format!("dependencies[{i}]"),
                    message: format!("dependency {d:?} is not a known fraise"),
                });
            }
            if !dependencies.contains(d) {
                dependencies.push(d.clone());
            }
        }
        self.check_dependencies(&req.tenant, &req.environment, &dependencies)
            .await?;
        let service = self
            .inner
            .store
            .service(&req.tenant, &req.fraise, &req.environment)
            .await?;
        if let Some(active) = self
            .inner
            .store
            .active_run_for(&req.tenant, &req.fraise, &req.environment)
            .await?
        {
            return Err(in_progress(&active));
        }
        let timeout_secs = check_timeout(
            req.timeout_secs,
            request::default_timeout(config, &req.environment),
        )?;
        let released = self
            .released(&req.tenant, &req.fraise, &req.environment)
            .await?;
        let artifact = self
            .release_artifact(&req.tenant, &req.fraise, f, &version)
            .await?;
        let current = service.as_ref().and_then(|s| s.current_version.clone());
        let mut metadata = match &req.metadata {
            Value::Object(_) => req.metadata.clone(),
            _ => json!({}),
        };
        if let Some(a) = &artifact {
            metadata["artifact_digest"] = json!(a.digest);
        }
        if let (Some(s), Some(_)) = (&source, &artifact) {
            self.check_provenance(&req.tenant, &req.fraise, &version, &s.plan)
                .await?;
        }
        let (build, already_deployed) = match &source {
            Some(s) => {
                metadata["commit"] = json!(s.plan.commit);
                metadata["ref"] = json!(s.plan.reference);
                metadata["repository"] = json!(s.plan.url);
                (
                    artifact.is_none().then(|| s.plan.clone()),
                    !req.force && current.as_deref() == Some(version.as_str()),
                )
            }
            None => (None, false),
        };
        let options = RunOptions {
            env: released.env,
            secrets: released.secrets,
            artifact,
            build,
            already_deployed,
            skip_health_check: req.skip_health_check,
            skip_backup: req.skip_backup,
            timeout_secs,
            rollback_on_failure: req.rollback_on_failure.unwrap_or(true),
            migrate: req.migrate.unwrap_or(true),
            dependencies,
            approval: request::approval_policy(config, &req.environment, Utc::now()),
            ..RunOptions::default()
        };
        Ok(NewRun {
            tenant_id: req.tenant.clone(),
            fraise: req.fraise.clone(),
            environment: req.environment.clone(),
            kind: RunKind::Deploy,
            version,
            previous_version: current,
            strategy: strategy.as_str().to_string(),
            strategy_config: serde_json::to_value(&strategy_config).unwrap_or(Value::Null),
            triggered_by: req.triggered_by.clone(),
            trigger_type: req.trigger_type.clone(),
            options: serde_json::to_value(&options).unwrap_or(Value::Null),
            metadata,
        })
    }

    /// Seed 001's validation: every problem found at once, and warnings that do not block a
    /// deploy. Only an unknown fraise or environment stops it: nothing else can be judged.
    pub async fn validate(&self, req: &DeployRequest) -> Validation {
        let mut v = Validation::default();
        let mut problem = |field: &str, e: &EngineError| {
            v.issues.push(ValidationIssue {
                field: match e {
                    EngineError::InvalidParameters { field, .. }
                    | EngineError::InvalidSpec { field, .. } => field.clone(),
                    _ => field.to_string(),
                },
                message: e.to_string(),
                severity: Some("error".into()),
            })
        };
        let live = self.config();
        let config = live.scope(&req.tenant);
        let (f, fe) = match request::lookup(config, &req.fraise, &req.environment) {
            Ok(found) => found,
            Err(e) => {
                let field = match e {
                    EngineError::FraiseNotFound(_) => "name",
                    _ => "environment",
                };
                problem(field, &e);
                return v;
            }
        };
        let registry = self
            .registry_versions(&req.tenant, &req.fraise)
            .await
            .unwrap_or_default();
        if let Err(e) = request::resolve_version(f, &req.fraise, req.version.as_deref(), &registry)
        {
            problem("version", &e);
        }
        if let Err(e) = request::resolve_strategy(fe, req.strategy, req.strategy_config.as_ref()) {
            problem("strategy_config", &e);
        }
        let mut dependencies = f.dependencies.clone();
        for (i, d) in req.extra_dependencies.iter().enumerate() {
            if !config.fraises.contains_key(d) {
                problem(
                    "dependencies",
                    &EngineError::InvalidSpec {
                        field: format!("dependencies[{i}]"),
                        message: format!("dependency {d:?} is not a known fraise"),
                    },
                );
            } else if !dependencies.contains(d) {
                dependencies.push(d.clone());
            }
        }
        for d in &dependencies {
            if let Err(e) = self
                .check_dependencies(&req.tenant, &req.environment, std::slice::from_ref(d))
                .await
            {
                problem("dependencies", &e);
            }
        }
        if let Err(e) = check_timeout(req.timeout_secs, DEFAULT_TIMEOUT_SECS) {
            problem("timeout", &e);
        }
        match self
            .inner
            .store
            .active_run_for(&req.tenant, &req.fraise, &req.environment)
            .await
        {
            Ok(Some(active)) => problem("name", &in_progress(&active)),
            Ok(None) => {}
            Err(e) => problem("name", &EngineError::Store(e)),
        }
        if f.health_check.is_none() && f.kind == FraiseType::Api {
            v.warnings.push(ValidationIssue {
                field: "health_check".into(),
                message: "no health check configured: instances count as healthy once their port accepts connections".into(),
                severity: None,
            });
        }
        if req.strategy.unwrap_or(fe.strategy) == Strategy::Recreate {
            v.warnings.push(ValidationIssue {
                field: "strategy".into(),
                message: "recreate stops every instance before starting the new ones: requests fail meanwhile".into(),
                severity: None,
            });
        }
        v
    }

    /// Records a rollback run to `to_version` (default: the previous version).
    pub async fn rollback(&self, req: RollbackRequest) -> Result<Run, EngineError> {
        let _changing = self.inner.changes.lock().await;
        let live = self.config();
        let config = live.scope(&req.tenant);
        let (f, fe) = request::lookup(config, &req.fraise, &req.environment)?;
        self.check_guards(&req.tenant, &req.environment, &req.triggered_by)
            .await?;
        // No placement check: a rollback is not held up by a target added to its group
        // since; it goes to the group's agents.
        let store = &self.inner.store;
        if let Some(active) = store
            .active_run_for(&req.tenant, &req.fraise, &req.environment)
            .await?
        {
            return Err(in_progress(&active));
        }
        let service = store
            .service(&req.tenant, &req.fraise, &req.environment)
            .await?;
        let current = service.as_ref().and_then(|s| s.current_version.clone());
        let target = match (
            &req.to_version,
            service.as_ref().and_then(|s| s.previous_version.clone()),
        ) {
            (Some(v), _) => {
                if let Some(p) = version_problem_of(v) {
                    return Err(EngineError::InvalidParameters {
                        field: "to_version".into(),
                        message: p,
                    });
                }
                v.clone()
            }
            (None, Some(prev)) => prev,
            (None, None) => {
                return Err(EngineError::BackupNotFound {
                    version: None,
                    message: format!(
                        "{} has no previous version in {} to roll back to",
                        req.fraise, req.environment
                    ),
                })
            }
        };
        // The target's bytes: in the artifact store (or at artifact_path, from where they are
        // stored now), or at least still unpacked on the host.
        let artifact = self
            .release_artifact(&req.tenant, &req.fraise, f, &target)
            .await?;
        if artifact.is_none() && (f.kind == FraiseType::Api || f.kind == FraiseType::Etl) {
            let kept = match self
                .inner
                .provider
                .observe(&agent_name(&req.tenant, &req.fraise), &req.environment)
                .await
            {
                Ok(Some(o)) => o.releases.iter().any(|r| r.version == target),
                Ok(None) => false,
                Err(e) => return Err(EngineError::Provider(e)),
            };
            let listed = f.versions.contains(&target) && f.artifact_path.is_none();
            if !kept && !listed {
                return Err(EngineError::BackupNotFound {
                    message: format!(
                        "release {target} of {} cannot be restored: the artifact store has no such version, \
                         {}, and the host does not keep it",
                        req.fraise,
                        match f.artifact_for(&target) {
                            Some(p) => format!("nothing is at {}", p.display()),
                            None => "the fraise has no artifact_path".to_string(),
                        }
                    ),
                    version: Some(target),
                });
            }
        }
        // Undoing migrations leads back to the version the deploy came from, and nowhere else.
        if f.migrations.is_some() && req.migrate != Some(false) {
            if let Some(leaving) = &current {
                if let Some((_, r, from)) = self
                    .applied_migrations(&req.tenant, &req.fraise, &req.environment, leaving)
                    .await?
                {
                    if from.as_deref() != Some(target.as_str()) {
                        return Err(EngineError::InvalidParameters {
                            field: "to_version".into(),
                            message: format!(
                                "{leaving} applied {} migration(s) when it replaced {}: undoing them leads back to that version, not {target}; \
                                 roll back to it, or pass migrate: false to leave the database as it is",
                                r.steps.unwrap_or(0),
                                from.as_deref().unwrap_or("nothing")
                            ),
                        });
                    }
                }
            }
        }
        // Rollbacks go straight back: no canary analysis of a version that already ran.
        let strategy = match fe.strategy {
            Strategy::Canary => Strategy::Rolling,
            s => s,
        };
        let (strategy, strategy_config) = request::resolve_strategy(fe, Some(strategy), None)?;
        let released = self
            .released(&req.tenant, &req.fraise, &req.environment)
            .await?;
        let options = RunOptions {
            env: released.env,
            secrets: released.secrets,
            artifact,
            timeout_secs: request::default_timeout(config, &req.environment),
            rollback_on_failure: true,
            reason: req.reason.clone(),
            approval: request::approval_policy(config, &req.environment, Utc::now()),
            migrate: req.migrate.unwrap_or(true),
            ..RunOptions::default()
        };
        let new = NewRun {
            tenant_id: req.tenant.clone(),
            fraise: req.fraise.clone(),
            environment: req.environment.clone(),
            kind: RunKind::Rollback,
            version: target,
            previous_version: current,
            strategy: strategy.as_str().to_string(),
            strategy_config: serde_json::to_value(&strategy_config).unwrap_or(Value::Null),
            triggered_by: req.triggered_by.clone(),
            trigger_type: req.trigger_type.clone(),
            options: serde_json::to_value(&options).unwrap_or(Value::Null),
            metadata: json!({ "reason": req.reason }),
        };
        self.create_and_start(new).await
    }

    async fn create_and_start(&self, new: NewRun) -> Result<Run, EngineError> {
        let mut made = self.create_and_start_all(vec![new]).await?;
        Ok(made.remove(0))
    }

    /// Records the runs all at once or none (see [`fraisier_store::Store::create_runs`]),
    /// then starts each.
    async fn create_and_start_all(&self, new: Vec<NewRun>) -> Result<Vec<Run>, EngineError> {
        let runs = self
            .inner
            .store
            .create_runs(&new)
            .await
            .map_err(|e| match e {
                StoreError::ActiveRunExists {
                    active_id,
                    fraise,
                    environment,
                } => EngineError::InProgress {
                    active_id,
                    fraise,
                    environment,
                },
                StoreError::Barred(barrier) => (*barrier).into(),
                e => EngineError::Store(e),
            })?;
        for run in &runs {
            // Created free: this server takes it, unless another server's takeover got there
            // first, in which case that one runs it.
            match self
                .inner
                .store
                .claim_run(run.id, &self.inner.server_id, self.lease_until())
                .await
            {
                Ok(true) => self.spawn(run.clone()),
                Ok(false) => {
                    tracing::info!(run = %run_id_string(run.id), "another server took the new run")
                }
                // Left unheld: the takeover loop of some server picks it up.
                Err(e) => {
                    tracing::warn!(run = %run_id_string(run.id), error = %e, "cannot hold the new run yet")
                }
            }
        }
        Ok(runs)
    }

    /// Who this server is when it holds a run.
    pub fn server_id(&self) -> &str {
        &self.inner.server_id
    }

    fn lease_until(&self) -> DateTime<Utc> {
        Utc::now()
            + chrono::Duration::from_std(self.inner.settings.run_lease)
                .unwrap_or(chrono::TimeDelta::seconds(15))
    }

    /// Executes a run this server holds, and keeps holding it: the lease is renewed every
    /// third of its length. A renewal that finds the hold gone (another server took the run
    /// over) stops the execution at once; so does going two thirds of a lease without one
    /// succeeding, before another server may take it. A cancel recorded on any server
    /// arrives with the renewal.
    fn spawn(&self, run: Run) {
        let (tx, rx) = watch::channel(None);
        self.inner
            .cancels
            .lock()
            .unwrap()
            .insert(run.id, tx.clone());
        let engine = self.clone();
        self.task(async move {
            let id = run.id;
            let mut work = engine.task({
                let engine = engine.clone();
                async move { executor::execute(&engine, run, rx).await }
            });
            let lease = engine.inner.settings.run_lease;
            let every = lease / 3;
            let sqlite = engine.inner.store.backend() == "sqlite";
            let mut renewed = Instant::now();
            let mut finished = false;
            loop {
                tokio::select! {
                    _ = &mut work => {
                        finished = true;
                        break;
                    }
                    _ = tokio::time::sleep(every) => {}
                }
                // Bounded: a renewal stuck behind the database must not outlive the hold.
                let renewal = match tokio::time::timeout(
                    every,
                    engine.inner.store.renew_run_lease(
                        id,
                        &engine.inner.server_id,
                        engine.lease_until(),
                    ),
                )
                .await
                {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err("the database did not answer in time".to_string()),
                };
                match renewal {
                    Ok(Renewal::Held { cancel }) => {
                        renewed = Instant::now();
                        if let Some(by) = cancel.filter(|_| tx.borrow().is_none()) {
                            let _ = tx.send(Some(by));
                        }
                    }
                    // Its last writes (the final event, the log) are under way: let them be.
                    Ok(Renewal::Finished) => break,
                    Ok(Renewal::Lost) => {
                        if !work.is_finished() {
                            tracing::warn!(run = %run_id_string(id), "lost the hold on the run (another server took it over); stopping here");
                            work.abort();
                        }
                        break;
                    }
                    // On SQLite this server is the only one: a hold that lapses is taken by
                    // no one else (its own takeover passes over runs it executes), so a slow
                    // database is waited out rather than a run stopped.
                    Err(e) if !sqlite && renewed.elapsed() + every >= lease - every => {
                        tracing::error!(run = %run_id_string(id), error = %e, "cannot renew the hold on the run; stopping here so that another server can take it over");
                        work.abort();
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(run = %run_id_string(id), error = %e, "cannot renew the hold on the run yet")
                    }
                }
            }
            if !finished {
                // Aborted or ending: either way its task is over before the slot is freed.
                let _ = work.await;
            }
            engine.inner.cancels.lock().unwrap().remove(&id);
        });
    }

    /// Takes over the runs no server holds any more and executes them here.
    async fn take_over(&self, everything: bool) {
        let runs = match self
            .inner
            .store
            .claim_runs(
                &self.inner.server_id,
                self.lease_until(),
                50,
                everything,
                Utc::now()
                    - chrono::Duration::from_std(self.inner.settings.run_lease)
                        .unwrap_or(chrono::TimeDelta::seconds(15)),
            )
            .await
        {
            Ok(runs) => runs,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for runs to take over");
                return;
            }
        };
        for run in runs {
            if self.inner.cancels.lock().unwrap().contains_key(&run.id) {
                continue;
            }
            let message = if everything {
                "resumed by this server after a restart".to_string()
            } else {
                format!(
                    "taken over by server {} after the server running it stopped renewing its hold",
                    self.inner.server_id
                )
            };
            tracing::info!(run = %run_id_string(run.id), status = ?run.status, "{message}");
            self.log(
                &run,
                LogLevel::Warn,
                Component::Deployment,
                &message,
                json!({ "server": self.inner.server_id }),
            )
            .await;
            self.spawn(run);
        }
    }

    /// Asks a run to stop at its next safe point; it then restores the previous version.
    pub async fn cancel(&self, tenant: &str, id: i64, by: &str) -> Result<Run, EngineError> {
        let run = self.run(tenant, id).await?;
        if run.status.is_final() {
            return Err(EngineError::AlreadyFinished(run_id_string(id)));
        }
        let run = self.inner.store.request_cancel(tenant, id, by).await?;
        if let Some(tx) = self.inner.cancels.lock().unwrap().get(&id) {
            let _ = tx.send(Some(by.to_string()));
        }
        Ok(run)
    }

    /// Records `user`'s yes or no on a run waiting for approval and wakes the run. The caller
    /// has checked that `user` may approve in the run's environment.
    pub async fn decide(
        &self,
        tenant: &str,
        id: i64,
        user: &str,
        decision: Decision,
        comment: Option<&str>,
    ) -> Result<Run, EngineError> {
        let run = self.run(tenant, id).await?;
        let name = run_id_string(id);
        let not_pending = |reason: &str| EngineError::ApprovalNotPending {
            id: name.clone(),
            reason: reason.to_string(),
        };
        let policy = options_of(&run)
            .approval
            .ok_or_else(|| not_pending("its environment requires no approval"))?;
        if run.status.is_final() {
            return Err(not_pending(&format!(
                "it is {}",
                fraisier_model::run::to_wire(&run.status)
            )));
        }
        if policy.granted || run.status != RunStatus::Pending {
            return Err(not_pending("it was approved already"));
        }
        if Utc::now() >= policy.expires_at {
            return Err(not_pending("its approval window has closed"));
        }
        if policy.require_sod && run.triggered_by == user {
            return Err(EngineError::SelfApproval {
                id: name,
                user: user.to_string(),
            });
        }
        let store = &self.inner.store;
        let vote = store
            .add_vote(tenant, id, user, decision, comment)
            .await
            .map_err(|e| match e {
                StoreError::AlreadyExists(_) => EngineError::AlreadyDecided {
                    id: name.clone(),
                    user: user.to_string(),
                },
                StoreError::NotFound => EngineError::RunNotFound(name.clone()),
                e => EngineError::Store(e),
            })?;
        let votes = store.votes(id).await?;
        let received = votes
            .iter()
            .filter(|v| v.decision == Decision::Approve)
            .count();
        let (event, data) = match decision {
            Decision::Approve => (
                EventType::ApprovalGranted,
                json!({ "approver": user, "comment": vote.comment, "received": received, "required": policy.required }),
            ),
            Decision::Reject => (
                EventType::ApprovalRejected,
                json!({ "rejected_by": user, "comment": vote.comment }),
            ),
        };
        self.event(&run, event, data).await;
        self.inner.bus.publish(BusMessage::Decided { run_id: id });
        Ok(run)
    }

    /// Where the approvals of `runs` stand, for views; runs that need none are left out.
    pub async fn approvals_of(
        &self,
        runs: &[Run],
    ) -> Result<HashMap<i64, ApprovalView>, EngineError> {
        let guarded: Vec<(&Run, ApprovalPolicy)> = runs
            .iter()
            .filter_map(|r| options_of(r).approval.map(|p| (r, p)))
            .collect();
        let ids: Vec<i64> = guarded.iter().map(|(r, _)| r.id).collect();
        let votes = self.inner.store.votes_for(&ids).await?;
        let now = Utc::now();
        Ok(guarded
            .into_iter()
            .map(|(r, p)| {
                let mine = votes
                    .iter()
                    .filter(|(id, _)| *id == r.id)
                    .map(|(_, v)| v.clone())
                    .collect();
                (r.id, ApprovalView::of(r, &p, mine, now))
            })
            .collect())
    }

    /// Runs of `tenant` waiting for approval, with where each stands.
    pub async fn awaiting_approval(
        &self,
        tenant: &str,
    ) -> Result<Vec<(Run, ApprovalView)>, EngineError> {
        let runs: Vec<(Run, ApprovalPolicy)> = self
            .inner
            .store
            .active_runs()
            .await?
            .into_iter()
            .filter(|r| r.tenant_id == tenant && r.status == RunStatus::Pending)
            .filter_map(|r| {
                let p = options_of(&r).approval.filter(|p| !p.granted)?;
                Some((r, p))
            })
            .collect();
        let ids: Vec<i64> = runs.iter().map(|(r, _)| r.id).collect();
        let votes = self.inner.store.votes_for(&ids).await?;
        let now = Utc::now();
        Ok(runs
            .into_iter()
            .map(|(r, p)| {
                let mine = votes
                    .iter()
                    .filter(|(id, _)| *id == r.id)
                    .map(|(_, v)| v.clone())
                    .collect();
                let view = ApprovalView::of(&r, &p, mine, now);
                (r, view)
            })
            .collect())
    }

    /// Whether this server executes the run now (its bus carries the run's progress, logs
    /// and events); `false` for one another server holds.
    pub fn executes(&self, run_id: i64) -> bool {
        self.inner
            .cancels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&run_id)
    }

    pub async fn run(&self, tenant: &str, id: i64) -> Result<Run, EngineError> {
        self.inner.store.run(tenant, id).await.map_err(|e| match e {
            StoreError::NotFound => EngineError::RunNotFound(run_id_string(id)),
            e => EngineError::Store(e),
        })
    }

    /// Waits until the run is final or `timeout` passes; returns the run as it then is.
    pub async fn wait(&self, tenant: &str, id: i64, timeout: Duration) -> Result<Run, EngineError> {
        let mut rx = self.inner.bus.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let run = self.run(tenant, id).await?;
            if run.status.is_final() || tokio::time::Instant::now() >= deadline {
                return Ok(run);
            }
            // Wake on this run's completion, and look again at least every second regardless.
            let _ = tokio::time::timeout(Duration::from_secs(1).min(deadline - tokio::time::Instant::now()), async {
                loop {
                    match rx.recv().await {
                        Ok(m) if matches!(&*m, BusMessage::Finished { run_id, .. } if *run_id == id) => break,
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                        Err(_) => break,
                    }
                }
            })
            .await;
        }
    }

    /// Picks up runs a previous server process left unfinished, and keeps the provider's
    /// desired states in line with the store. Call once at start-up.
    pub async fn start(&self) -> Result<(), EngineError> {
        // Environments made, changed or deleted through the API, before any run is resumed.
        for o in self.reload_environments().await? {
            if o.deleted {
                tracing::warn!(workspace = %o.workspace, environment = %o.environment, by = %o.by,
                    "fraisier.yaml declares this environment, but it was deleted through the API: it stays deleted");
            } else {
                tracing::warn!(workspace = %o.workspace, environment = %o.environment, by = %o.by,
                    fields = %o.fields.join(", "),
                    "these fields were set through the API and hold over fraisier.yaml's values");
            }
        }
        if self.inner.store.backend() != "sqlite" {
            // Other servers on the same database change environments too.
            let engine = self.clone();
            self.task(async move { engine.follow_environments().await });
        }
        // On SQLite this server is the only one (the database is its data dir's): what the
        // last process held is its own at once. On PostgreSQL other servers may be running
        // theirs: only runs whose hold lapsed are taken.
        self.take_over(self.inner.store.backend() == "sqlite").await;
        let engine = self.clone();
        self.task(async move {
            loop {
                tokio::time::sleep(engine.inner.settings.run_lease / 2).await;
                engine.take_over(false).await;
            }
        });
        let engine = self.clone();
        self.task(async move {
            loop {
                engine.resync().await;
                tokio::time::sleep(engine.inner.settings.resync_interval).await;
            }
        });
        let engine = self.clone();
        self.task(async move {
            let mut lease = engine.job_lease("queued-pushes");
            loop {
                // One server deploys them: two would both submit a queued push.
                if lease.held().await {
                    engine.deploy_queued_pushes().await;
                }
                let idle = engine
                    .inner
                    .settings
                    .poll_interval
                    .max(Duration::from_millis(500));
                tokio::select! {
                    () = lease.idle(idle) => {}
                    () = engine.inner.push_queue.notified() => {}
                }
            }
        });
        Ok(())
    }

    /// Re-pushes every stored desired state the provider has not got (an agent restarted with
    /// a lost state, or the server crashed between recording and applying). Runs in progress
    /// push their own.
    async fn resync(&self) {
        let Ok(services) = self.inner.store.all_services().await else {
            return;
        };
        for s in services {
            let Some(desired) = &s.desired else { continue };
            // A run that is moving the service pushes its own states; one waiting (possibly
            // a day) for approval has not started, and must not keep the service unrepaired.
            let active = self
                .inner
                .store
                .active_run_for(&s.tenant_id, &s.fraise, &s.environment)
                .await
                .ok()
                .flatten();
            if active.is_some_and(|r| !awaits_approval(&r)) {
                continue;
            }
            match self
                .inner
                .provider
                .observe(&agent_name(&s.tenant_id, &s.fraise), &s.environment)
                .await
            {
                Ok(Some(o)) if o.generation >= desired.generation => {}
                Ok(_) => {
                    if let Err(e) = self.inner.provider.apply(desired).await {
                        tracing::warn!(fraise = %s.fraise, environment = %s.environment, error = %e, "re-applying desired state failed");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "provider not reachable for resync"),
            }
        }
    }

    /// A dependency is satisfied when its last deploy in the environment left it healthy and
    /// the provider sees a healthy instance (or, for jobs, its last run succeeded).
    async fn check_dependencies(
        &self,
        tenant: &str,
        environment: &str,
        deps: &[String],
    ) -> Result<(), EngineError> {
        for d in deps {
            let status = self.service_status(tenant, d, environment).await?;
            status
                .serves()
                .map_err(|reason| EngineError::DependencyFailed {
                    dependency: d.clone(),
                    environment: environment.to_string(),
                    reason,
                })?;
        }
        Ok(())
    }

    /// Writes a run log line to the store and the bus.
    pub(crate) fn settings(&self) -> &EngineSettings {
        &self.inner.settings
    }

    /// The state record of a fraise in an environment, created on first use.
    pub(crate) async fn service_record(&self, run: &Run) -> Result<ServiceRecord, EngineError> {
        Ok(self
            .inner
            .store
            .service(&run.tenant_id, &run.fraise, &run.environment)
            .await?
            .unwrap_or_else(|| ServiceRecord {
                tenant_id: run.tenant_id.clone(),
                fraise: run.fraise.clone(),
                environment: run.environment.clone(),
                current_version: None,
                previous_version: None,
                state: ServiceState::Unknown,
                desired: None,
                last_run_id: None,
                updated_at: Utc::now(),
            }))
    }
}

/// A run's approval as the API shows it: `{required, received, approvers, status, …}`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ApprovalView {
    pub required: u32,
    pub received: u32,
    pub approvers: Vec<Approver>,
    /// pending | granted | rejected | expired | withdrawn (the run ended otherwise first)
    pub status: &'static str,
    pub expires_at: DateTime<Utc>,
    pub require_sod: bool,
    pub requested_by: String,
    pub rejected_by: Option<String>,
    pub comment: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Approver {
    pub user: String,
    pub at: DateTime<Utc>,
    pub comment: Option<String>,
}

impl ApprovalView {
    fn of(run: &Run, policy: &ApprovalPolicy, votes: Vec<Vote>, now: DateTime<Utc>) -> Self {
        let req = Requirement {
            required: policy.required,
            expires_at: policy.expires_at,
        };
        let standing = if policy.granted {
            Standing::Granted
        } else {
            approval::judge(&req, &votes, now)
        };
        let (status, rejected_by, comment) = match standing {
            Standing::Granted => ("granted", None, None),
            Standing::Rejected { by, comment } => ("rejected", Some(by), comment),
            Standing::Expired => ("expired", None, None),
            Standing::Waiting { .. } if run.status.is_final() => ("withdrawn", None, None),
            Standing::Waiting { .. } => ("pending", None, None),
        };
        let approvers: Vec<Approver> = votes
            .into_iter()
            .filter(|v| v.decision == Decision::Approve)
            .map(|v| Approver {
                user: v.user,
                at: v.at,
                comment: v.comment,
            })
            .collect();
        ApprovalView {
            required: policy.required,
            received: approvers.len() as u32,
            approvers,
            status,
            expires_at: policy.expires_at,
            require_sod: policy.require_sod,
            requested_by: run.triggered_by.clone(),
            rejected_by,
            comment,
        }
    }
}

/// The approval a run needs, if its environment required one when it was asked for.
pub fn approval_policy_of(run: &Run) -> Option<ApprovalPolicy> {
    options_of(run).approval
}

/// A pending run held for approvals it has not got yet.
pub fn awaits_approval(run: &Run) -> bool {
    run.status == RunStatus::Pending && options_of(run).approval.is_some_and(|p| !p.granted)
}

pub(crate) fn options_of(run: &Run) -> RunOptions {
    serde_json::from_value(run.options.clone()).unwrap_or_default()
}

fn in_progress(active: &Run) -> EngineError {
    EngineError::InProgress {
        active_id: run_id_string(active.id),
        fraise: active.fraise.clone(),
        environment: active.environment.clone(),
    }
}

/// A run's time limit: the request's, within a week, or the environment's default.
fn check_timeout(requested: Option<u64>, default: u64) -> Result<u64, EngineError> {
    let secs = requested.unwrap_or(default);
    if secs == 0 || secs > 7 * 24 * 3600 {
        return Err(EngineError::InvalidParameters {
            field: "timeout".into(),
            message: "timeout must be between 1 and 604800 seconds".into(),
        });
    }
    Ok(secs)
}

fn version_problem_of(v: &str) -> Option<String> {
    fraisier_model::names::version_problem(v).map(|p| format!("invalid version {v:?}: {p}"))
}
