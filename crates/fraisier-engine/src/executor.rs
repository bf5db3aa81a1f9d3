//! Executes one run as a durable sequence of steps: gates, backup, hooks, the strategy's
//! phases, final health. Each step is recorded before and after it runs, so a restarted
//! server resumes after the last finished step; a failure after traffic moved restores the
//! desired state the run started from.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::Utc;
use fraisier_model::analysis::{judge, Verdict};
use fraisier_model::approval::{self, Requirement, Standing};
use fraisier_model::config::{FraiseConfig, FraiseEnvironmentConfig};
use fraisier_model::metrics::VersionMetrics;
use fraisier_model::plan::{self, Gate, Goal, Phase};
use fraisier_model::run::{Component, LogLevel, RunKind, RunStatus, ServiceState, StepStatus};
use fraisier_model::service::{
    service_key, DesiredService, ExecRequest, InstanceState, ObservedService, ReleaseSpec,
    ScheduleSpec,
};
use fraisier_model::{FraiseType, Millis, StrategyConfig};
use fraisier_store::{run_id_string, Run};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::request::{self, RunOptions};

mod migrate;
use crate::{BusMessage, Engine, ProviderError};

/// How often a run waiting for approval looks at the store for votes cast through another
/// server (votes through this one wake it at once).
const APPROVAL_RECHECK: Duration = Duration::from_secs(5);

/// Why a run stopped short.
#[derive(Debug)]
struct Failure {
    code: &'static str,
    message: String,
    details: Value,
    /// Set when the run stopped because somebody cancelled it.
    cancelled_by: Option<String>,
}

enum Unit {
    /// The commit already runs there: the run ends at once.
    AlreadyDeployed,
    Build,
    Dependencies,
    Backup,
    PreHooks,
    /// The fraise's migrations `up`, in the new release, before traffic moves.
    Migrate,
    /// A rollback's `down` of what the deploy of the version it leaves applied.
    MigrateBack,
    Phase(Phase),
    Job,
    Install,
    PostHooks,
    FinalHealth,
}

struct RunCtx<'a> {
    engine: &'a Engine,
    run: Run,
    opts: RunOptions,
    fraise: FraiseConfig,
    env: FraiseEnvironmentConfig,
    cancel: watch::Receiver<Option<String>>,
    deadline: Instant,
    /// The last desired state this run applied.
    applied: Option<DesiredService>,
    last_traffic_pct: Option<u32>,
    metrics_at_start: BTreeMap<String, VersionMetrics>,
}

fn failure(code: &'static str, message: impl Into<String>, details: Value) -> Failure {
    Failure {
        code,
        message: message.into(),
        details,
        cancelled_by: None,
    }
}

pub(crate) async fn execute(engine: &Engine, run: Run, cancel: watch::Receiver<Option<String>>) {
    let id = run.id;
    let live = engine.config();
    let scope = live.scope(&run.tenant_id);
    let (fraise, env) = match request::lookup(scope, &run.fraise, &run.environment) {
        Ok((f, e)) => (f.clone(), e.clone()),
        Err(e) => {
            // The configuration changed under a resumed run: nothing sensible to resume.
            let mut run = run;
            finish_without_steps(engine, &mut run, &format!("cannot resume: {e}")).await;
            return;
        }
    };
    let opts: RunOptions = serde_json::from_value(run.options.clone()).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(opts.timeout_secs.max(1));
    let mut ctx = RunCtx {
        engine,
        run,
        opts,
        fraise,
        env,
        cancel,
        deadline,
        applied: None,
        last_traffic_pct: None,
        metrics_at_start: BTreeMap::new(),
    };
    if let Err(e) = ctx.drive().await {
        tracing::error!(run = %run_id_string(id), error = %e, "run stopped on a store error");
    }
}

async fn finish_without_steps(engine: &Engine, run: &mut Run, message: &str) {
    let opts: RunOptions = serde_json::from_value(run.options.clone()).unwrap_or_default();
    revert_variables(engine, run, &opts).await;
    run.status = RunStatus::Failed;
    run.error_code = Some("DEPLOYMENT_FAILED".into());
    run.error_message = Some(message.to_string());
    run.completed_at = Some(Utc::now());
    let _ = engine.store().save_run(run).await;
    engine
        .log(
            run,
            LogLevel::Error,
            Component::Deployment,
            message,
            json!({}),
        )
        .await;
    engine
        .event(run, "deployment.failed", json!({ "error": message }))
        .await;
    engine.bus().publish(BusMessage::Finished {
        run_id: run.id,
        status: run.status,
    });
}

/// A configuration change that was not released is not kept: its variables go back to what
/// they were, so what the API shows is what runs.
async fn revert_variables(engine: &Engine, run: &Run, opts: &RunOptions) {
    if run.kind != RunKind::Config || opts.revert.is_empty() {
        return;
    }
    let prior: Vec<_> = opts.revert.clone().into_iter().collect();
    let names: Vec<&str> = opts.revert.keys().map(String::as_str).collect();
    match engine
        .store()
        .restore_variables(&run.tenant_id, &run.fraise, &run.environment, &prior)
        .await
    {
        Ok(()) => {
            let message = format!(
                "The change was not released: variables put back as they were ({})",
                names.join(", ")
            );
            engine
                .log(
                    run,
                    LogLevel::Warn,
                    Component::Deployment,
                    &message,
                    json!({ "variables": names }),
                )
                .await
        }
        Err(e) => {
            tracing::error!(run = %run_id_string(run.id), error = %e, "cannot put variables back")
        }
    }
}

// === impl RunCtx ===

impl RunCtx<'_> {
    async fn drive(&mut self) -> Result<(), fraisier_store::StoreError> {
        let store = self.engine.store().clone();
        let resumed = self.run.status == RunStatus::InProgress;
        if !resumed && !self.opts.already_deployed && !self.await_approval().await? {
            return Ok(());
        }
        if !resumed {
            self.run.status = RunStatus::InProgress;
            self.run.started_at = Some(Utc::now());
            store.save_run(&self.run).await?;
            let data = json!({
                "fraise": self.run.fraise, "environment": self.run.environment,
                "strategy": self.run.strategy, "version": self.run.version,
                "previous_version": self.run.previous_version, "type": self.kind_word(),
            });
            self.engine
                .event(&self.run, "deployment.started", data.clone())
                .await;
            let msg = format!(
                "{} started: {} {} → {} in {} ({})",
                match self.run.kind {
                    RunKind::Deploy => "Deployment",
                    RunKind::Rollback => "Rollback",
                    RunKind::Config => "Configuration change",
                },
                self.run.fraise,
                self.run.previous_version.as_deref().unwrap_or("(none)"),
                self.run.version,
                self.run.environment,
                self.run.strategy
            );
            self.engine
                .log(&self.run, LogLevel::Info, Component::Deployment, &msg, data)
                .await;
        } else {
            self.engine
                .log(
                    &self.run,
                    LogLevel::Warn,
                    Component::Deployment,
                    "Resuming after a server restart",
                    json!({ "completed_steps": self.run.progress + 1 }),
                )
                .await;
            self.engine
                .event(
                    &self.run,
                    "deployment.resumed",
                    json!({ "completed_steps": self.run.progress + 1 }),
                )
                .await;
        }

        let mut service = match self.engine.service_record(&self.run).await {
            Ok(s) => s,
            Err(e) => {
                let f = failure(
                    "PROVIDER_ERROR",
                    format!("cannot read the service state: {e}"),
                    json!({}),
                );
                return self.fail(f).await;
            }
        };
        if !self.opts.snapshot_taken {
            self.opts.snapshot = service.desired.clone();
            self.opts.targets = match self
                .engine
                .fleet()
                .select(&self.run.tenant_id, &self.run.fraise, &self.run.environment)
                .await
            {
                Ok(t) => t,
                Err(e) => {
                    let f = failure("PROVIDER_ERROR", e.to_string(), json!({}));
                    return self.fail(f).await;
                }
            };
            let offline = self
                .engine
                .fleet()
                .offline(&self.run.tenant_id)
                .await
                .unwrap_or_default();
            self.opts.unreachable = self
                .opts
                .snapshot
                .iter()
                .flat_map(|d| d.instances.iter().map(crate::fleet::target_of))
                .filter(|t| offline.contains(t))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            self.opts.snapshot_taken = true;
            self.run.options = serde_json::to_value(&self.opts).unwrap_or(Value::Null);
            store.save_run(&self.run).await?;
        }
        self.applied = service.desired.clone();
        service.state = if self.run.kind == RunKind::Rollback {
            ServiceState::RollingBack
        } else {
            ServiceState::Deploying
        };
        service.last_run_id = Some(self.run.id);
        service.updated_at = Utc::now();
        store.put_service(&service).await?;
        if let Some(o) = self.observed().await {
            self.metrics_at_start = o.metrics;
        }

        let units = self.units();
        let total = units.len() as u32;
        for (i, unit) in units.into_iter().enumerate() {
            if (i as i64) <= self.run.progress {
                continue;
            }
            if let Err(f) = self.interrupted() {
                return self.fail(f).await;
            }
            let name = unit_name(&unit, self.opts.skip_health_check);
            let step = store.start_step(self.run.id, &name).await?;
            let pct = i as u32 * 100 / total;
            self.engine
                .progress(&self.run, &name, "running", &format!("{name}…"), pct);
            self.engine
                .log(
                    &self.run,
                    LogLevel::Info,
                    Component::Deployment,
                    &format!("Step {}: {name}", i + 1),
                    json!({ "step": name }),
                )
                .await;
            match self.perform(&unit).await {
                Ok(message) => {
                    let status = if message.as_deref().is_some_and(|m| m.starts_with("skipped")) {
                        StepStatus::Skipped
                    } else {
                        StepStatus::Completed
                    };
                    store
                        .finish_step(step.id, status, message.as_deref(), None)
                        .await?;
                    self.run.progress = i as i64;
                    store.save_run(&self.run).await?;
                    self.engine.progress(
                        &self.run,
                        &name,
                        "success",
                        message.as_deref().unwrap_or("done"),
                        (i as u32 + 1) * 100 / total,
                    );
                }
                Err(f) => {
                    store
                        .finish_step(step.id, StepStatus::Failed, None, Some(&f.message))
                        .await?;
                    self.engine
                        .progress(&self.run, &name, "failed", &f.message, pct);
                    return self.fail(f).await;
                }
            }
        }
        self.succeed().await
    }

    /// What the provider reports for this run's service; `None` when it cannot tell now.
    async fn observed(&self) -> Option<ObservedService> {
        let provider = self.engine.provider();
        provider
            .observe(&self.agent_name(), &self.run.environment)
            .await
            .ok()
            .flatten()
    }

    /// The fraise's name on the agent (qualified by its workspace outside `default`).
    fn agent_name(&self) -> String {
        fraisier_model::names::agent_name(&self.run.tenant_id, &self.run.fraise)
    }

    fn kind_word(&self) -> &'static str {
        match self.run.kind {
            RunKind::Deploy => "deploy",
            RunKind::Rollback => "rollback",
            RunKind::Config => "config",
        }
    }

    fn units(&self) -> Vec<Unit> {
        if self.opts.already_deployed {
            return vec![Unit::AlreadyDeployed];
        }
        // Built first: a build that fails has moved nothing.
        let mut units = Vec::new();
        if self.opts.build.is_some() {
            units.push(Unit::Build);
        }
        units.extend([Unit::Dependencies, Unit::Backup]);
        // Steps for migrations only where there are some.
        let migrates = self.fraise.migrations.is_some();
        match (self.fraise.kind, self.run.kind) {
            // A job's new environment is for its next run; a configuration change runs no
            // job and no hooks (they are for new code: migrations, cache warm-ups).
            (FraiseType::Etl | FraiseType::Scheduled, RunKind::Config) => units.push(Unit::Install),
            (FraiseType::Etl | FraiseType::Scheduled, RunKind::Rollback) => {
                units.extend(migrates.then_some(Unit::MigrateBack));
                units.push(Unit::Install)
            }
            (FraiseType::Etl, RunKind::Deploy) => {
                units.push(Unit::PreHooks);
                units.extend(migrates.then_some(Unit::Migrate));
                units.push(Unit::Install);
                units.push(Unit::Job);
                units.push(Unit::PostHooks);
            }
            // Installing a scheduled fraise's release also hands the agent its schedule.
            (FraiseType::Scheduled, RunKind::Deploy) => {
                units.push(Unit::PreHooks);
                units.extend(migrates.then_some(Unit::Migrate));
                units.push(Unit::Install);
                units.push(Unit::PostHooks);
            }
            (_, kind) => {
                match kind {
                    RunKind::Deploy => {
                        units.push(Unit::PreHooks);
                        units.extend(migrates.then_some(Unit::Migrate));
                    }
                    RunKind::Rollback => units.extend(migrates.then_some(Unit::MigrateBack)),
                    RunKind::Config => {}
                }
                units.extend(self.plan().into_iter().map(Unit::Phase));
                if kind == RunKind::Deploy {
                    units.push(Unit::PostHooks);
                }
                units.push(Unit::FinalHealth);
            }
        }
        units
    }

    /// The strategy's phases from the snapshot: deterministic, so a resumed run gets the same.
    fn plan(&self) -> Vec<Phase> {
        let config: StrategyConfig = strategy_config_of(&self.run).unwrap_or_else(|| {
            StrategyConfig::parse(fraisier_model::Strategy::Rolling, &Default::default())
                .expect("defaults parse")
        });
        let mut current = self
            .opts
            .snapshot
            .as_ref()
            .map(|d| d.instances.clone())
            .unwrap_or_default();
        // Instances on agents offline when the run started are out of reach: not planned
        // with (their agents stop them when they rejoin).
        // (Ordinals still count them, so no id is given twice.)
        let next_ordinal = plan::next_ordinal(&current);
        current.retain(|i| !self.opts.unreachable.contains(&crate::fleet::target_of(i)));
        let goal = Goal {
            current: &current,
            version: &self.run.version,
            // `instances` is per target.
            instances: self.env.instances * self.opts.targets.len().max(1) as u32,
            next_ordinal,
            targets: &self.opts.targets,
        };
        plan::plan(&config, &goal)
    }

    async fn perform(&mut self, unit: &Unit) -> Result<Option<String>, Failure> {
        match unit {
            Unit::AlreadyDeployed => Ok(Some(format!(
                "skipped: already deployed ({} runs in {}; ask with force to deploy it again)",
                self.run.version, self.run.environment
            ))),
            Unit::Build => self.build().await,
            Unit::Migrate => self.migrate_up().await,
            Unit::MigrateBack => self.migrate_back().await,
            Unit::Dependencies => {
                let deps = self.opts.dependencies.clone();
                if deps.is_empty() {
                    return Ok(Some("no dependencies".into()));
                }
                self.engine
                    .check_dependencies(&self.run.tenant_id, &self.run.environment, &deps)
                    .await
                    .map_err(|e| {
                        failure(
                            "DEPENDENCY_FAILED",
                            e.to_string(),
                            json!({ "dependencies": deps }),
                        )
                    })?;
                Ok(Some(format!("{} healthy", deps.join(", "))))
            }
            Unit::Backup if self.run.kind == RunKind::Config => Ok(Some(
                "the running instances stay until their replacements are healthy".to_string(),
            )),
            Unit::Backup => Ok(Some(
                match (&self.previous_version(), self.opts.skip_backup) {
                    (None, _) => "nothing to keep: first deploy".to_string(),
                    (Some(v), true) => format!("skipped: release {v} is not pinned for rollback"),
                    (Some(v), false) => format!("release {v} kept for rollback"),
                },
            )),
            Unit::PreHooks => {
                self.hooks(&self.fraise.pre_deploy_hooks.clone(), "pre-deploy")
                    .await
            }
            Unit::PostHooks => {
                self.hooks(&self.fraise.post_deploy_hooks.clone(), "post-deploy")
                    .await
            }
            Unit::Phase(phase) => self.phase(phase).await,
            Unit::Install => {
                let desired = self.desired_with(Vec::new()).await?;
                self.apply(&desired).await?;
                if desired.schedule.is_some() {
                    return self.scheduled(&desired).await;
                }
                Ok(Some(format!("release {} installed", self.run.version)))
            }
            Unit::Job => self.job().await,
            Unit::FinalHealth => self.final_health().await,
        }
    }

    fn previous_version(&self) -> Option<String> {
        self.opts
            .snapshot
            .as_ref()
            .and_then(|d| {
                d.instances
                    .iter()
                    .find(|i| i.weight > 0)
                    .or(d.instances.first())
            })
            .map(|i| i.version.clone())
            .or_else(|| self.run.previous_version.clone())
    }

    fn release_for(&self, version: &str) -> ReleaseSpec {
        let artifact = self
            .opts
            .artifact
            .clone()
            .filter(|_| version == self.run.version);
        let fresh = || request::release_spec(&self.fraise, &self.env, &self.opts, artifact.clone());
        // A version that ran before keeps the spec it ran with (source, command, env)...
        let kept = self
            .opts
            .snapshot
            .as_ref()
            .and_then(|d| d.releases.get(version).cloned());
        match kept {
            Some(spec) if version != self.run.version => spec,
            // ...but a rollback takes today's variables and secrets: a password replaced since
            // (perhaps because it leaked) must not come back with the old code.
            Some(spec) if self.run.kind == RunKind::Rollback => {
                let now = fresh();
                ReleaseSpec {
                    env: now.env,
                    secrets: now.secrets,
                    ..spec
                }
            }
            _ => fresh(),
        }
    }

    /// A desired state with `instances`, the releases they run, and the backup release.
    async fn desired_with(
        &self,
        instances: Vec<fraisier_model::service::DesiredInstance>,
    ) -> Result<DesiredService, Failure> {
        let mut versions: BTreeSet<String> = instances.iter().map(|i| i.version.clone()).collect();
        versions.insert(self.run.version.clone());
        // A config run's "previous version" is its own: the release kept for a later rollback
        // stays as it was.
        if self.run.kind == RunKind::Config {
            if let Some(d) = &self.opts.snapshot {
                versions.extend(d.releases.keys().cloned());
            }
        }
        if !self.opts.skip_backup {
            if let Some(prev) = self.previous_version() {
                versions.insert(prev);
            }
        }
        let releases = versions
            .into_iter()
            .map(|v| (v.clone(), self.release_for(&v)))
            .collect();
        let record = self
            .engine
            .service_record(&self.run)
            .await
            .map_err(|e| failure("PROVIDER_ERROR", e.to_string(), json!({})))?;
        let generation = record.desired.as_ref().map_or(0, |d| d.generation) + 1;
        // The environment's default probe interval, as it is now: it may change through the API.
        let probe_interval = self
            .engine
            .config()
            .scope(&self.run.tenant_id)
            .environments
            .get(&self.run.environment)
            .and_then(|e| e.health_check_interval);
        let mut desired = request::desired(
            &self.agent_name(),
            &self.run.environment,
            &self.fraise,
            &self.env,
            generation,
            instances,
            releases,
        );
        desired.health_check = self.fraise.health_check_spec(probe_interval);
        if self.fraise.kind == FraiseType::Scheduled {
            desired.schedule = self.fraise.schedule.as_ref().map(|cron| ScheduleSpec {
                cron: cron.clone(),
                timezone: self.fraise.timezone.clone(),
                version: self.run.version.clone(),
                timeout_ms: self.fraise.schedule_timeout.0,
            });
        }
        Ok(desired)
    }

    /// Records the desired state (so a crash cannot lose it), then hands it to the provider.
    async fn apply(&mut self, desired: &DesiredService) -> Result<ObservedService, Failure> {
        let store = self.engine.store();
        let mut record = self
            .engine
            .service_record(&self.run)
            .await
            .map_err(|e| failure("PROVIDER_ERROR", e.to_string(), json!({})))?;
        record.desired = Some(desired.clone());
        record.updated_at = Utc::now();
        store
            .put_service(&record)
            .await
            .map_err(|e| failure("PROVIDER_ERROR", e.to_string(), json!({})))?;
        self.applied = Some(desired.clone());
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            match self.engine.provider().apply(desired).await {
                Ok(o) => return Ok(o),
                Err(ProviderError::Unreachable(e)) if Instant::now() < until => {
                    tracing::warn!(error = %e, "agent unreachable, retrying");
                    self.sleep(Duration::from_millis(500)).await?;
                }
                Err(e) => {
                    return Err(failure(
                        "PROVIDER_ERROR",
                        format!("the agent did not take the desired state: {e}"),
                        json!({}),
                    ));
                }
            }
        }
    }

    async fn phase(&mut self, phase: &Phase) -> Result<Option<String>, Failure> {
        let desired = self.desired_with(phase.instances.clone()).await?;
        self.engine
            .log(&self.run, LogLevel::Info, Component::Provider, &format!("Applying desired state: {}", phase.name), json!({
                "generation": desired.generation,
                "instances": phase.instances.iter().map(|i| json!({"id": i.id, "version": i.version, "weight": i.weight})).collect::<Vec<_>>(),
            }))
            .await;
        self.apply(&desired).await?;
        let mut observed = None;
        for gate in &phase.gates {
            match gate {
                Gate::Delay(d) => self.sleep(d.as_duration()).await?,
                Gate::Converged { timeout } => {
                    observed = Some(self.converged(&desired, *timeout).await?)
                }
                Gate::SmokeTest { command } => self.smoke_test(command, observed.as_ref()).await?,
                Gate::Hold(d) => self.hold(&desired, *d).await?,
                Gate::Analysis {
                    canary_version,
                    stable_version,
                    window,
                    analysis,
                } => {
                    self.analysis(
                        &desired,
                        canary_version,
                        stable_version.as_deref(),
                        *window,
                        analysis,
                    )
                    .await?
                }
            }
        }
        if self.last_traffic_pct != Some(phase.traffic_pct) {
            self.last_traffic_pct = Some(phase.traffic_pct);
            self.engine
                .event(&self.run, "traffic.shifted", json!({ "version": self.run.version, "percent": phase.traffic_pct, "phase": phase.name }))
                .await;
        }
        Ok(Some(phase.name.clone()))
    }

    /// Waits until the agent has installed the scheduled release and times its schedule.
    async fn scheduled(&mut self, desired: &DesiredService) -> Result<Option<String>, Failure> {
        let version = &self.run.version.clone();
        loop {
            self.interrupted()?;
            let o = self.observed().await;
            let schedule = o
                .as_ref()
                .filter(|o| o.generation >= desired.generation)
                .and_then(|o| o.schedule.as_ref().map(|s| (o, s)));
            if let Some((o, s)) = schedule {
                if let Some(error) = &s.error {
                    return Err(failure(
                        "INVALID_DEPLOYMENT_SPEC",
                        format!("the agent cannot run the schedule: {error}"),
                        json!({ "field": "schedule" }),
                    ));
                }
                if &s.version == version && o.releases.iter().any(|r| &r.version == version) {
                    let next = s
                        .next_run_at
                        .map_or_else(|| "never".to_string(), |t| t.to_rfc3339());
                    self.engine
                        .event(
                            &self.run,
                            "schedule.updated",
                            json!({ "cron": s.cron, "timezone": s.timezone, "version": version, "next_run_at": s.next_run_at }),
                        )
                        .await;
                    return Ok(Some(format!(
                        "release {version} installed and scheduled: {} ({}), next run {next}",
                        s.cron, s.timezone
                    )));
                }
            }
            // Installing a large release may take a while: the run's own timeout bounds it.
            self.sleep(Duration::from_millis(100)).await?;
        }
    }

    /// Waits until the provider runs exactly `desired`, every instance healthy.
    async fn converged(
        &mut self,
        desired: &DesiredService,
        timeout: Millis,
    ) -> Result<ObservedService, Failure> {
        let until = Instant::now() + timeout.as_duration();
        let mut announced: BTreeSet<String> = BTreeSet::new();
        let mut last_apply = Instant::now();
        let mut last: Option<ObservedService> = None;
        loop {
            self.interrupted()?;
            match self
                .engine
                .provider()
                .observe(&desired.fraise, &desired.environment)
                .await
            {
                Ok(Some(o)) => {
                    for d in &desired.instances {
                        if let Some(i) = o.instance(&d.id) {
                            if i.state == InstanceState::Healthy && announced.insert(d.id.clone()) {
                                self.engine.event(&self.run, "instance.healthy", json!({ "instance": d.id, "version": d.version, "port": i.port })).await;
                                self.engine
                                    .log(
                                        &self.run,
                                        LogLevel::Info,
                                        Component::HealthCheck,
                                        &format!("Instance {} ({}) is healthy", d.id, d.version),
                                        json!({ "port": i.port, "checks_passed": i.checks_passed }),
                                    )
                                    .await;
                            }
                        }
                    }
                    if o.converged_to(desired) {
                        return Ok(o);
                    }
                    if o.generation < desired.generation
                        && last_apply.elapsed() > Duration::from_secs(2)
                    {
                        // The agent lost or never got this generation (it restarted): say it again.
                        let _ = self.engine.provider().apply(desired).await;
                        last_apply = Instant::now();
                    }
                    last = Some(o);
                }
                Ok(None) => {
                    if last_apply.elapsed() > Duration::from_secs(1) {
                        let _ = self.engine.provider().apply(desired).await;
                        last_apply = Instant::now();
                    }
                }
                Err(ProviderError::Lost(e)) => {
                    return Err(failure(
                        "PROVIDER_ERROR",
                        format!("agent lost: {e}"),
                        json!({}),
                    ));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "observe failed while waiting for convergence")
                }
            }
            if Instant::now() >= until {
                let details = last
                    .as_ref()
                    .map(|o| unhealthy_details(o, desired))
                    .unwrap_or(json!({ "agent": "no observation" }));
                self.engine
                    .event(&self.run, "health_check.failed", details.clone())
                    .await;
                return Err(failure(
                    "HEALTH_CHECK_FAILED",
                    format!(
                        "instances of {} did not become healthy within {timeout}",
                        self.run.version
                    ),
                    details,
                ));
            }
            self.sleep(self.engine.settings().poll_interval).await?;
        }
    }

    async fn hold(&mut self, desired: &DesiredService, d: Millis) -> Result<(), Failure> {
        let until = Instant::now() + d.as_duration();
        while Instant::now() < until {
            self.sleep(
                self.engine
                    .settings()
                    .poll_interval
                    .max(Duration::from_millis(200)),
            )
            .await?;
            if let Ok(Some(o)) = self
                .engine
                .provider()
                .observe(&desired.fraise, &desired.environment)
                .await
            {
                let bad = desired.serving().filter(|i| {
                    o.instance(&i.id).is_none_or(|x| {
                        matches!(x.state, InstanceState::Unhealthy | InstanceState::Crashed)
                    })
                });
                if let Some(i) = bad.map(|i| i.id.clone()).next() {
                    return Err(failure(
                        "HEALTH_CHECK_FAILED",
                        format!("instance {i} became unhealthy after the switch"),
                        unhealthy_details(&o, desired),
                    ));
                }
            }
        }
        Ok(())
    }

    async fn analysis(
        &mut self,
        desired: &DesiredService,
        canary: &str,
        stable: Option<&str>,
        window: Millis,
        a: &fraisier_model::strategy::Analysis,
    ) -> Result<(), Failure> {
        let observe = |o: &ObservedService, v: Option<&str>| {
            v.and_then(|v| o.metrics.get(v).cloned())
                .unwrap_or_else(VersionMetrics::empty)
        };
        let start = match self
            .engine
            .provider()
            .observe(&desired.fraise, &desired.environment)
            .await
        {
            Ok(Some(o)) => o,
            _ => ObservedService::default(),
        };
        let (c0, s0) = (observe(&start, Some(canary)), observe(&start, stable));
        let begin = Instant::now();
        self.engine
            .log(
                &self.run,
                LogLevel::Info,
                Component::HealthCheck,
                &format!(
                    "Analysing {canary} for {window} against {}",
                    stable.unwrap_or("thresholds")
                ),
                json!({ "analysis": a }),
            )
            .await;
        loop {
            self.sleep(
                self.engine
                    .settings()
                    .poll_interval
                    .max(Duration::from_millis(200)),
            )
            .await?;
            let Ok(Some(o)) = self
                .engine
                .provider()
                .observe(&desired.fraise, &desired.environment)
                .await
            else {
                continue;
            };
            if let Some(i) = desired
                .instances
                .iter()
                .filter(|i| i.version == canary)
                .find(|i| {
                    o.instance(&i.id).is_none_or(|x| {
                        matches!(x.state, InstanceState::Unhealthy | InstanceState::Crashed)
                    })
                })
            {
                let details = unhealthy_details(&o, desired);
                self.engine.event(&self.run, "analysis.failed", json!({ "reason": format!("canary instance {} is unhealthy", i.id), "instances": details })).await;
                return Err(failure(
                    "DEPLOYMENT_FAILED",
                    format!("canary analysis failed: instance {} is unhealthy", i.id),
                    details,
                ));
            }
            let cw = observe(&o, Some(canary)).since(&c0);
            let sw = observe(&o, stable).since(&s0);
            let final_check = begin.elapsed() >= window.as_duration();
            let figures = json!({
                "canary": { "version": canary, "window": cw.summary() },
                "stable": { "version": stable, "window": sw.summary() },
                "window_ms": begin.elapsed().as_millis() as u64,
            });
            match judge(&cw, stable.map(|_| &sw), a, final_check) {
                Verdict::Fail { reason } => {
                    let mut data = figures.clone();
                    data["reason"] = json!(reason);
                    self.engine
                        .event(&self.run, "analysis.failed", data.clone())
                        .await;
                    self.engine
                        .log(
                            &self.run,
                            LogLevel::Error,
                            Component::HealthCheck,
                            &format!("Canary analysis failed: {reason}"),
                            data.clone(),
                        )
                        .await;
                    return Err(failure(
                        "DEPLOYMENT_FAILED",
                        format!("canary analysis failed: {reason}"),
                        data,
                    ));
                }
                Verdict::Pass if final_check => {
                    self.engine
                        .event(&self.run, "analysis.passed", figures.clone())
                        .await;
                    self.engine
                        .log(
                            &self.run,
                            LogLevel::Info,
                            Component::HealthCheck,
                            "Canary analysis passed",
                            figures,
                        )
                        .await;
                    return Ok(());
                }
                _ => {}
            }
        }
    }

    async fn smoke_test(
        &mut self,
        command: &str,
        observed: Option<&ObservedService>,
    ) -> Result<(), Failure> {
        let urls: Vec<String> = observed
            .map(|o| {
                o.instances
                    .iter()
                    .filter(|i| i.version == self.run.version && i.weight == 0)
                    .filter_map(|i| i.port.map(|p| format!("http://127.0.0.1:{p}")))
                    .collect()
            })
            .unwrap_or_default();
        let env = BTreeMap::from([
            ("FRAISIER_TARGET_URLS".to_string(), urls.join(" ")),
            (
                "FRAISIER_TARGET_URL".to_string(),
                urls.first().cloned().unwrap_or_default(),
            ),
        ]);
        self.exec(command, env, Component::Hook, "smoke test", 300_000)
            .await
            .map(|_| ())
    }

    async fn hooks(&mut self, hooks: &[String], which: &str) -> Result<Option<String>, Failure> {
        if hooks.is_empty() {
            return Ok(Some(format!("no {which} hooks")));
        }
        for hook in hooks {
            self.exec(
                hook,
                BTreeMap::new(),
                Component::Hook,
                &format!("{which} hook"),
                600_000,
            )
            .await?;
        }
        Ok(Some(format!("{} {which} hook(s) succeeded", hooks.len())))
    }

    /// Builds the run's commit into the store, unless the run's version is there already.
    async fn build(&mut self) -> Result<Option<String>, Failure> {
        if let Some(a) = &self.opts.artifact {
            return Ok(Some(format!(
                "skipped: release {} is in the store ({})",
                self.run.version, a.digest
            )));
        }
        let Some(plan) = self.opts.build.clone() else {
            return Ok(Some("skipped: nothing to build".into()));
        };
        let built = self
            .engine
            .build_release(
                &self.run,
                &self.fraise,
                &plan,
                self.cancel.clone(),
                self.deadline,
            )
            .await;
        let built = match built {
            Ok(b) => b,
            Err(crate::build::BuildError::Interrupted) => {
                self.interrupted()?;
                return Err(failure("BUILD_FAILED", "the build was stopped", json!({})));
            }
            Err(e) => {
                return Err(failure(
                    "BUILD_FAILED",
                    e.to_string(),
                    json!({ "commit": plan.commit, "ref": plan.reference }),
                ))
            }
        };
        let digest = built.artifact.digest.clone();
        if let Some(m) = self.run.metadata.as_object_mut() {
            m.insert("artifact_digest".into(), json!(digest));
        }
        self.opts.artifact = Some(built.artifact);
        self.run.options = serde_json::to_value(&self.opts).unwrap_or(Value::Null);
        self.engine.store().save_run(&self.run).await.map_err(|e| {
            failure(
                "DEPLOYMENT_FAILED",
                format!("cannot record the build: {e}"),
                json!({}),
            )
        })?;
        Ok(Some(if built.reused {
            format!(
                "release {} was in the store already ({digest})",
                self.run.version
            )
        } else {
            format!(
                "built {} from {} ({digest})",
                self.run.version,
                &plan.commit[..plan.commit.len().min(12)]
            )
        }))
    }

    async fn job(&mut self) -> Result<Option<String>, Failure> {
        let command = self.fraise.command.clone().unwrap_or_default();
        let left = self
            .deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as u64;
        let code = self
            .exec(
                &command,
                BTreeMap::new(),
                Component::Provider,
                "job",
                left.max(1000),
            )
            .await?;
        Ok(Some(format!("job exited with {code}")))
    }

    /// Runs a command once on the target in the run's release; logs its output.
    async fn exec(
        &mut self,
        command: &str,
        mut env: BTreeMap<String, String>,
        component: Component,
        what: &str,
        timeout_ms: u64,
    ) -> Result<i32, Failure> {
        self.interrupted()?;
        env.insert("FRAISIER_DEPLOYMENT_ID".into(), run_id_string(self.run.id));
        if let Some(prev) = &self.run.previous_version {
            env.insert("FRAISIER_PREVIOUS_VERSION".into(), prev.clone());
        }
        let req = ExecRequest {
            fraise: self.agent_name(),
            environment: self.run.environment.clone(),
            version: self.run.version.clone(),
            release: self.release_for(&self.run.version),
            command: command.to_string(),
            env,
            timeout_ms,
        };
        self.engine
            .log(
                &self.run,
                LogLevel::Info,
                component,
                &format!("Running {what}: {command}"),
                json!({}),
            )
            .await;
        let result = self.engine.provider().exec(&req).await.map_err(|e| {
            failure(
                "PROVIDER_ERROR",
                format!("{what} could not run: {e}"),
                json!({ "command": command }),
            )
        })?;
        for line in &result.output {
            self.engine
                .log(
                    &self.run,
                    LogLevel::Info,
                    component,
                    line,
                    json!({ "source": what }),
                )
                .await;
        }
        match result.exit_code {
            Some(0) => {
                self.engine.event(&self.run, "hook.completed", json!({ "command": command, "kind": what, "duration_ms": result.duration_ms })).await;
                Ok(0)
            }
            code => {
                let why = if result.timed_out {
                    format!("timed out after {timeout_ms} ms")
                } else {
                    format!(
                        "exited with {}",
                        code.map_or("a signal".to_string(), |c| c.to_string())
                    )
                };
                let message = format!("{what} `{command}` {why}");
                self.engine
                    .event(
                        &self.run,
                        "hook.failed",
                        json!({ "command": command, "kind": what, "exit_code": code }),
                    )
                    .await;
                Err(failure(
                    "DEPLOYMENT_FAILED",
                    message,
                    json!({ "command": command, "exit_code": code, "timed_out": result.timed_out }),
                ))
            }
        }
    }

    async fn final_health(&mut self) -> Result<Option<String>, Failure> {
        if self.opts.skip_health_check {
            self.run.health_check_status = "skipped".into();
            return Ok(Some("skipped".into()));
        }
        let desired = self.applied.clone().unwrap_or_default();
        let o = self.observed().await.unwrap_or_default();
        let total = desired.instances.len();
        let healthy = desired
            .instances
            .iter()
            .filter(|d| {
                o.instance(&d.id)
                    .is_some_and(|i| i.state == InstanceState::Healthy)
            })
            .count();
        let last_check = o.instances.iter().filter_map(|i| i.last_check_at).max();
        self.run.health_details =
            json!({ "checks_passed": healthy, "checks_total": total, "last_check_at": last_check });
        if healthy < total {
            self.run.health_check_status = "failing".into();
            return Err(failure(
                "HEALTH_CHECK_FAILED",
                format!("{healthy} of {total} instances healthy after the deploy"),
                unhealthy_details(&o, &desired),
            ));
        }
        self.run.health_check_status = "passing".into();
        self.engine
            .event(
                &self.run,
                "health_check.passed",
                json!({ "checks_passed": healthy, "checks_total": total }),
            )
            .await;
        Ok(Some(format!("{healthy}/{total} instances healthy")))
    }

    /// Holds a run in a guarded environment `pending` until enough people approved it; a
    /// no, the window closing or a cancel ends it `cancelled` before anything moved. Returns
    /// whether the run goes on. Votes are read from the store, so approvals given through
    /// another server count too.
    async fn await_approval(&mut self) -> Result<bool, fraisier_store::StoreError> {
        let Some(mut policy) = self.opts.approval.clone().filter(|p| !p.granted) else {
            return Ok(true);
        };
        let store = self.engine.store().clone();
        if !policy.requested {
            let data = json!({
                "required": policy.required, "expires_at": policy.expires_at,
                "requested_by": self.run.triggered_by, "require_sod": policy.require_sod,
            });
            self.engine
                .event(&self.run, "approval.requested", data.clone())
                .await;
            self.engine
                .log(
                    &self.run,
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
                    self.engine
                        .log(
                            &self.run,
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
                    self.end_unstarted("APPROVAL_REJECTED", &message, &by)
                        .await?;
                    return Ok(false);
                }
                Standing::Expired => {
                    self.engine
                        .event(
                            &self.run,
                            "approval.expired",
                            json!({ "expires_at": policy.expires_at, "received": votes.len() }),
                        )
                        .await;
                    let message = format!(
                        "not approved in time: the approval window closed at {}",
                        policy
                            .expires_at
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    );
                    self.end_unstarted("APPROVAL_EXPIRED", &message, "approval window")
                        .await?;
                    return Ok(false);
                }
                Standing::Waiting { received } => {
                    self.engine.progress(
                        &self.run,
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
                    "DEPLOYMENT_CANCELLED",
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

    async fn save_policy(
        &mut self,
        policy: &crate::request::ApprovalPolicy,
    ) -> Result<(), fraisier_store::StoreError> {
        self.opts.approval = Some(policy.clone());
        self.run.options = serde_json::to_value(&self.opts).unwrap_or(Value::Null);
        self.engine.store().save_run(&self.run).await
    }

    /// Ends a run that never started (refused or withdrawn approval): `cancelled`, nothing to
    /// restore.
    async fn end_unstarted(
        &mut self,
        code: &str,
        message: &str,
        by: &str,
    ) -> Result<(), fraisier_store::StoreError> {
        self.revert_variables().await;
        let now = Utc::now();
        self.run.status = RunStatus::Cancelled;
        self.run.completed_at = Some(now);
        self.run.cancelled_at = Some(now);
        self.run.cancel_requested_by = Some(by.to_string());
        self.run.error_code = Some(code.to_string());
        self.run.error_message = Some(message.to_string());
        self.engine.store().save_run(&self.run).await?;
        self.engine
            .log(
                &self.run,
                LogLevel::Warn,
                Component::Deployment,
                message,
                json!({ "code": code }),
            )
            .await;
        self.engine
            .event(
                &self.run,
                "deployment.cancelled",
                json!({ "status": "cancelled", "error": { "code": code, "message": message } }),
            )
            .await;
        self.engine
            .progress(&self.run, "finished", "failed", message, 100);
        self.engine.bus().publish(BusMessage::Finished {
            run_id: self.run.id,
            status: RunStatus::Cancelled,
        });
        Ok(())
    }

    /// Cancellation and the run's own timeout, checked at every safe point.
    fn interrupted(&mut self) -> Result<(), Failure> {
        let by = self
            .cancel
            .borrow()
            .clone()
            .or_else(|| self.run.cancel_requested_by.clone());
        if let Some(by) = by {
            return Err(Failure {
                code: "DEPLOYMENT_CANCELLED",
                message: format!("cancelled by {by}"),
                details: json!({}),
                cancelled_by: Some(by),
            });
        }
        if Instant::now() >= self.deadline {
            return Err(failure(
                "DEPLOYMENT_FAILED",
                format!("timed out after {} s", self.opts.timeout_secs),
                json!({ "timeout": self.opts.timeout_secs }),
            ));
        }
        Ok(())
    }

    /// Sleeps, waking early (with a failure) on cancellation.
    async fn sleep(&mut self, d: Duration) -> Result<(), Failure> {
        let until = Instant::now() + d;
        let mut cancel = self.cancel.clone();
        let _ = tokio::time::timeout_at(until.min(self.deadline), cancel.changed()).await;
        self.interrupted()
    }

    async fn fail(&mut self, f: Failure) -> Result<(), fraisier_store::StoreError> {
        let store = self.engine.store().clone();
        let cancelled = f.cancelled_by.is_some();
        self.engine
            .log(
                &self.run,
                if cancelled {
                    LogLevel::Warn
                } else {
                    LogLevel::Error
                },
                Component::Deployment,
                &f.message,
                json!({ "code": f.code, "details": f.details }),
            )
            .await;
        let snapshot = self.opts.snapshot.clone();
        let moved =
            self.applied.as_ref().map(|d| d.generation) != snapshot.as_ref().map(|d| d.generation);
        let mut state = ServiceState::Failed;
        let mut error_code = f.code.to_string();
        let mut message = f.message.clone();
        // The schema goes back first, then the code: the previous version never runs on
        // migrations it does not know. A `down` that fails leaves the new version, which
        // matches the schema the database was left with.
        let mut schema_stuck = false;
        let undo = self.opts.rollback_on_failure || cancelled;
        if let (RunKind::Deploy, true, Some(m)) =
            (self.run.kind, undo, self.fraise.migrations.clone())
        {
            if self.opts.migration.as_ref().is_some_and(|r| !r.reverted) {
                match self.revert(&m).await {
                    Ok(done) => {
                        self.engine
                            .log(
                                &self.run,
                                LogLevel::Info,
                                Component::Migration,
                                &done,
                                json!({}),
                            )
                            .await
                    }
                    Err(why) => {
                        error_code = "ROLLBACK_FAILED".into();
                        message = format!("{message}; then {why}");
                        schema_stuck = true;
                    }
                }
            }
        }
        if self.run.kind == RunKind::Rollback
            && self.opts.migration.as_ref().is_some_and(|r| r.reverted)
        {
            // The database is back where the target needs it; the version this rollback
            // leaves would run on migrations it no longer has.
            error_code = "ROLLBACK_FAILED".into();
            message = format!(
                "{message}; the database was migrated down for {}, so {} is not put back",
                self.run.version,
                self.run
                    .previous_version
                    .as_deref()
                    .unwrap_or("the previous version")
            );
            schema_stuck = true;
        }
        if schema_stuck {
            state = ServiceState::Unhealthy;
        } else if moved && undo {
            match self.restore(snapshot).await {
                Ok(()) => state = ServiceState::Healthy,
                Err(e) => {
                    error_code = "ROLLBACK_FAILED".into();
                    message = format!("{message}; then the rollback failed: {e}");
                }
            }
        } else if !moved {
            // Nothing changed on the target: what ran before still runs.
            state = self
                .engine
                .service_record(&self.run)
                .await
                .map(|s| {
                    if s.current_version.is_some() {
                        ServiceState::Healthy
                    } else {
                        ServiceState::Unknown
                    }
                })
                .unwrap_or(ServiceState::Unknown);
        } else {
            state = ServiceState::Unhealthy;
        }
        if let Ok(mut record) = self.engine.service_record(&self.run).await {
            record.state = state;
            record.updated_at = Utc::now();
            store.put_service(&record).await?;
        }
        self.revert_variables().await;
        self.run.status = if cancelled {
            RunStatus::Cancelled
        } else {
            RunStatus::Failed
        };
        self.run.completed_at = Some(Utc::now());
        if cancelled {
            self.run.cancelled_at = self.run.completed_at;
            self.run.cancel_requested_by = f.cancelled_by.clone();
        }
        self.run.error_code = Some(error_code.clone());
        self.run.error_message = Some(message.clone());
        if self.run.health_check_status == "unknown" && f.code == "HEALTH_CHECK_FAILED" {
            self.run.health_check_status = "failing".into();
        }
        store.save_run(&self.run).await?;
        let event = if cancelled {
            "deployment.cancelled"
        } else {
            "deployment.failed"
        };
        self.engine
            .event(&self.run, event, json!({ "status": self.run.status, "error": { "code": error_code, "message": message }, "duration_seconds": self.duration_secs() }))
            .await;
        self.engine
            .progress(&self.run, "finished", "failed", &message, 100);
        self.engine.bus().publish(BusMessage::Finished {
            run_id: self.run.id,
            status: self.run.status,
        });
        Ok(())
    }

    async fn revert_variables(&self) {
        revert_variables(self.engine, &self.run, &self.opts).await
    }

    /// Puts the desired state back to what it was when the run started.
    async fn restore(&mut self, snapshot: Option<DesiredService>) -> Result<(), String> {
        let store = self.engine.store().clone();
        let step = store
            .start_step(self.run.id, "rollback")
            .await
            .map_err(|e| e.to_string())?;
        let previous = snapshot
            .as_ref()
            .and_then(|d| d.instances.first())
            .map(|i| i.version.clone());
        self.engine
            .event(
                &self.run,
                "rollback.started",
                json!({ "to_version": previous }),
            )
            .await;
        self.engine.progress(
            &self.run,
            "rollback",
            "warning",
            "restoring the previous version",
            90,
        );
        // Cancellation must not interrupt the restore itself, and the run timeout may have passed.
        let (_tx, rx) = watch::channel(None);
        self.cancel = rx;
        self.run.cancel_requested_by = None;
        self.deadline = Instant::now() + Duration::from_secs(600);
        let instances = snapshot
            .as_ref()
            .map(|d| d.instances.clone())
            .unwrap_or_default();
        let mut desired = self.desired_with(instances).await.map_err(|f| f.message)?;
        if let Some(s) = &snapshot {
            desired.releases = s.releases.clone();
        }
        // Restoring must not give up as fast as a gate on an untested version may.
        let timeout = strategy_config_of(&self.run).map_or(Millis::from_secs(60), |c| {
            c.health_check_timeout().max(Millis::from_secs(60))
        });
        // A target lost meanwhile does not stop the others being put back: it is passed
        // over, and handed the restored state when it returns (`Fleet::rejoined`).
        let key = service_key(&desired.fraise, &desired.environment);
        let fleet = self.engine.fleet().clone();
        fleet.pass_over_lost(&key, true);
        let result = async {
            self.apply(&desired).await?;
            let passed = fleet.passed_over(&key);
            let mut reachable = desired.clone();
            reachable
                .instances
                .retain(|i| !passed.contains(&crate::fleet::target_of(i)));
            if reachable.instances.is_empty() && !passed.is_empty() {
                // Every target that held instances is lost: nothing to wait for here.
                return Ok(ObservedService::default());
            }
            self.converged(&reachable, timeout).await
        }
        .await;
        let passed = fleet.passed_over(&key);
        fleet.pass_over_lost(&key, false);
        if !passed.is_empty() {
            let names: Vec<&str> = passed.iter().map(String::as_str).collect();
            self.engine
                .log(
                    &self.run,
                    LogLevel::Warn,
                    Component::Provider,
                    &format!(
                        "Restored without {} (lost): it is handed the previous version when it returns",
                        names.join(", ")
                    ),
                    json!({ "agents": names }),
                )
                .await;
        }
        match result {
            Ok(_) => {
                store
                    .finish_step(
                        step.id,
                        StepStatus::Completed,
                        Some("previous version restored"),
                        None,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                self.engine
                    .event(
                        &self.run,
                        "rollback.completed",
                        json!({ "to_version": previous }),
                    )
                    .await;
                self.engine
                    .log(
                        &self.run,
                        LogLevel::Info,
                        Component::Deployment,
                        &format!(
                            "Rolled back to {}",
                            previous.as_deref().unwrap_or("no instances")
                        ),
                        json!({}),
                    )
                    .await;
                Ok(())
            }
            Err(f) => {
                store
                    .finish_step(step.id, StepStatus::Failed, None, Some(&f.message))
                    .await
                    .map_err(|e| e.to_string())?;
                self.engine
                    .event(&self.run, "rollback.failed", json!({ "error": f.message }))
                    .await;
                Err(f.message)
            }
        }
    }

    async fn succeed(&mut self) -> Result<(), fraisier_store::StoreError> {
        let store = self.engine.store().clone();
        let mut record = self
            .engine
            .service_record(&self.run)
            .await
            .map_err(|_| fraisier_store::StoreError::NotFound)?;
        if record.current_version.as_deref() != Some(self.run.version.as_str()) {
            record.previous_version = record
                .current_version
                .take()
                .or(record.previous_version.take());
        }
        record.current_version = Some(self.run.version.clone());
        record.state = ServiceState::Healthy;
        record.desired = self.applied.clone().or(record.desired);
        record.updated_at = Utc::now();
        store.put_service(&record).await?;
        if let Some(o) = self.observed().await {
            let now = o
                .metrics
                .get(&self.run.version)
                .cloned()
                .unwrap_or_else(VersionMetrics::empty);
            let before = self
                .metrics_at_start
                .get(&self.run.version)
                .cloned()
                .unwrap_or_else(VersionMetrics::empty);
            self.run.metrics =
                serde_json::to_value(now.since(&before).summary()).unwrap_or(Value::Null);
        }
        self.run.status = RunStatus::Success;
        self.run.completed_at = Some(Utc::now());
        store.save_run(&self.run).await?;
        let duration = self.duration_secs();
        self.engine.event(&self.run, "deployment.completed", json!({ "status": "success", "version": self.run.version, "duration_seconds": duration })).await;
        self.engine
            .log(
                &self.run,
                LogLevel::Info,
                Component::Deployment,
                &format!(
                    "Deployment succeeded: {} {} is live in {} ({duration:.1} s)",
                    self.run.fraise, self.run.version, self.run.environment
                ),
                json!({}),
            )
            .await;
        self.engine.progress(
            &self.run,
            "finished",
            "success",
            "deployment succeeded",
            100,
        );
        self.engine.bus().publish(BusMessage::Finished {
            run_id: self.run.id,
            status: RunStatus::Success,
        });
        Ok(())
    }

    fn duration_secs(&self) -> f64 {
        match (self.run.started_at, self.run.completed_at) {
            (Some(s), Some(e)) => (e - s).num_milliseconds() as f64 / 1000.0,
            _ => 0.0,
        }
    }
}

fn strategy_config_of(run: &Run) -> Option<StrategyConfig> {
    let strategy: fraisier_model::Strategy = run.strategy.parse().ok()?;
    // Stored configs are fully resolved and serialize durations as "2s", which parse back as-is.
    StrategyConfig::parse(strategy, run.strategy_config.as_object()?).ok()
}

fn unit_name(unit: &Unit, skip_health: bool) -> String {
    match unit {
        Unit::AlreadyDeployed => "already deployed".into(),
        Unit::Build => "build release".into(),
        Unit::Migrate => "migrations up".into(),
        Unit::MigrateBack => "migrations down".into(),
        Unit::Dependencies => "check dependencies".into(),
        Unit::Backup => "keep previous release".into(),
        Unit::PreHooks => "pre-deploy hooks".into(),
        Unit::Phase(p) => p.name.clone(),
        Unit::Job => "run job".into(),
        Unit::Install => "install release".into(),
        Unit::PostHooks => "post-deploy hooks".into(),
        Unit::FinalHealth if skip_health => "final health check (skipped)".into(),
        Unit::FinalHealth => "final health check".into(),
    }
}

fn unhealthy_details(o: &ObservedService, desired: &DesiredService) -> Value {
    let instances: Vec<Value> = desired
        .instances
        .iter()
        .map(|d| match o.instance(&d.id) {
            Some(i) => json!({ "instance": d.id, "version": d.version, "state": i.state, "restarts": i.restarts, "last_error": i.last_error, "port": i.port }),
            None => json!({ "instance": d.id, "version": d.version, "state": "not_started" }),
        })
        .collect();
    json!({ "instances": instances, "router_error": o.router_error })
}
