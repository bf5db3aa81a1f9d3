//! Executes one run as a durable sequence of steps: gates, backup, hooks, the strategy's
//! phases, final health. Each step is recorded before and after it runs, so a restarted
//! server resumes after the last finished step; a failure after traffic moved restores the
//! desired state the run started from.
//!
//! Here: the run's steps (`units`) and the loop that records and performs them. Beside it,
//! `desired` builds and applies desired states, `gates` judges observations (pure), `watch`
//! is the one loop that observes the provider for a gate, `commands` runs hooks, jobs,
//! smoke tests and builds, `migrate` the schema, `approval` holds a run until it may start,
//! and `outcome` ends it. What a run tells goes through the engine's journal.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::Utc;
use fraisier_model::config::{FraiseConfig, FraiseEnvironmentConfig};
use fraisier_model::metrics::VersionMetrics;
use fraisier_model::plan::{Gate, Phase};
use fraisier_model::run::{
    Component, EventType, FailureCode, LogLevel, RunKind, RunStatus, ServiceState, StepStatus,
};
use fraisier_model::service::{DesiredService, ObservedService};
use fraisier_model::{FraiseType, StrategyConfig};
use fraisier_store::{run_id_string, Run, RunColumns};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::request::{self, RunOptions};
use crate::Engine;

mod approval;
mod commands;
mod desired;
mod gates;
mod migrate;
mod outcome;
mod poll;

/// Why a run stopped short.
#[derive(Debug)]
struct Failure {
    code: FailureCode,
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

fn failure(code: FailureCode, message: impl Into<String>, details: Value) -> Failure {
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
            outcome::finish_without_steps(engine, &mut run, &format!("cannot resume: {e}")).await;
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
            store.write_run(&self.run, RunColumns::STATUS).await?;
            let data = json!({
                "fraise": self.run.fraise, "environment": self.run.environment,
                "strategy": self.run.strategy, "version": self.run.version,
                "previous_version": self.run.previous_version, "type": self.kind_word(),
            });
            self.event(EventType::DeploymentStarted, data.clone()).await;
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
            self.log(LogLevel::Info, Component::Deployment, &msg, data)
                .await;
        } else {
            // The step the stopped server was in did not finish: it starts again below.
            store
                .interrupt_steps(
                    self.run.id,
                    "interrupted: the server running it stopped; it was started again",
                )
                .await?;
            self.log(
                LogLevel::Warn,
                Component::Deployment,
                "Resuming after a server restart",
                json!({ "completed_steps": self.run.progress + 1 }),
            )
            .await;
            self.event(
                EventType::DeploymentResumed,
                json!({ "completed_steps": self.run.progress + 1 }),
            )
            .await;
        }

        let mut service = match self.engine.service_record(&self.run).await {
            Ok(s) => s,
            Err(e) => {
                let f = failure(
                    FailureCode::ProviderError,
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
                    let f = failure(FailureCode::ProviderError, e.to_string(), json!({}));
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
            store.write_run(&self.run, RunColumns::OPTIONS).await?;
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
            self.progress(&name, "running", &format!("{name}…"), pct);
            self.log(
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
                    // With what the step found of health: a resumed run does not look again.
                    let columns = RunColumns {
                        outcome: true,
                        ..RunColumns::PROGRESS
                    };
                    store.write_run(&self.run, columns).await?;
                    self.progress(
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
                    self.progress(&name, "failed", &f.message, pct);
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
                            FailureCode::DependencyFailed,
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

    async fn phase(&mut self, phase: &Phase) -> Result<Option<String>, Failure> {
        let desired = self.desired_with(phase.instances.clone()).await?;
        self.log(LogLevel::Info, Component::Provider, &format!("Applying desired state: {}", phase.name), json!({
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
            self.event(EventType::TrafficShifted, json!({ "version": self.run.version, "percent": phase.traffic_pct, "phase": phase.name }))
                .await;
        }
        Ok(Some(phase.name.clone()))
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
                code: FailureCode::DeploymentCancelled,
                message: format!("cancelled by {by}"),
                details: json!({}),
                cancelled_by: Some(by),
            });
        }
        if Instant::now() >= self.deadline {
            return Err(failure(
                FailureCode::DeploymentFailed,
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

    /// Records the run's working options (and metadata) so that a resumed run finds them.
    async fn save_options(&mut self) -> Result<(), Failure> {
        self.run.options = serde_json::to_value(&self.opts).unwrap_or(Value::Null);
        self.engine
            .store()
            .write_run(&self.run, fraisier_store::RunColumns::OPTIONS)
            .await
            .map_err(|e| {
                failure(
                    FailureCode::DeploymentFailed,
                    format!("cannot record the run: {e}"),
                    json!({}),
                )
            })
    }

    async fn log(&self, level: LogLevel, component: Component, message: &str, details: Value) {
        self.engine
            .log(&self.run, level, component, message, details)
            .await
    }

    async fn event(&self, event: EventType, data: Value) {
        self.engine.event(&self.run, event, data).await
    }

    fn progress(&self, step: &str, status: &str, message: &str, pct: u32) {
        self.engine.progress(&self.run, step, status, message, pct)
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
