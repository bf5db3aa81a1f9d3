//! How a run ends: success recorded; or a failure, after which what moved goes back (schema
//! first, then code) and the variables of an unreleased change are put back.

use std::time::Duration;

use chrono::Utc;
use fraisier_model::metrics::VersionMetrics;
use fraisier_model::run::{
    Component, EventType, FailureCode, HealthCheckStatus, LogLevel, RunKind, RunStatus,
    ServiceState, StepStatus,
};
use fraisier_model::service::{service_key, DesiredService, ObservedService};
use fraisier_model::Millis;
use fraisier_store::{run_id_string, Run, RunColumns};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{strategy_config_of, Failure, RunCtx};
use crate::request::RunOptions;
use crate::{BusMessage, Engine};

// === impl RunCtx ===

impl RunCtx<'_> {
    pub(super) async fn fail(&mut self, f: Failure) -> Result<(), fraisier_store::StoreError> {
        let store = self.engine.store().clone();
        let cancelled = f.cancelled_by.is_some();
        self.log(
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
        let mut error_code = f.code;
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
                        self.log(LogLevel::Info, Component::Migration, &done, json!({}))
                            .await
                    }
                    Err(why) => {
                        error_code = FailureCode::RollbackFailed;
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
            error_code = FailureCode::RollbackFailed;
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
                    error_code = FailureCode::RollbackFailed;
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
        self.run.error_code = Some(error_code.as_str().to_string());
        self.run.error_message = Some(message.clone());
        if self.run.health_check_status == HealthCheckStatus::Unknown
            && f.code == FailureCode::HealthCheckFailed
        {
            self.run.health_check_status = HealthCheckStatus::Failing;
        }
        // With the options: a migration's `reverted` mark must not be lost.
        let columns = RunColumns {
            options: true,
            ..RunColumns::END
        };
        let event = if cancelled {
            EventType::DeploymentCancelled
        } else {
            EventType::DeploymentFailed
        };
        let data = json!({ "status": self.run.status, "error": { "code": error_code, "message": message }, "duration_seconds": self.duration_secs() });
        self.engine.end(&self.run, columns, event, data).await?;
        self.progress("finished", "failed", &message, 100);
        self.engine.bus().publish(BusMessage::Finished {
            run_id: self.run.id,
            status: self.run.status,
        });
        Ok(())
    }

    pub(super) async fn revert_variables(&self) {
        revert_variables(self.engine, &self.run, &self.opts).await
    }

    /// Puts the desired state back to what it was when the run started.
    pub(super) async fn restore(&mut self, snapshot: Option<DesiredService>) -> Result<(), String> {
        let store = self.engine.store().clone();
        let step = store
            .start_step(self.run.id, "rollback")
            .await
            .map_err(|e| e.to_string())?;
        let previous = snapshot
            .as_ref()
            .and_then(|d| d.instances.first())
            .map(|i| i.version.clone());
        self.event(
            EventType::RollbackStarted,
            json!({ "to_version": previous }),
        )
        .await;
        self.progress("rollback", "warning", "restoring the previous version", 90);
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
            self.log(
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
                self.event(
                    EventType::RollbackCompleted,
                    json!({ "to_version": previous }),
                )
                .await;
                self.log(
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
                self.event(EventType::RollbackFailed, json!({ "error": f.message }))
                    .await;
                Err(f.message)
            }
        }
    }

    pub(super) async fn succeed(&mut self) -> Result<(), fraisier_store::StoreError> {
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
        let duration = self.duration_secs();
        self.log(
            LogLevel::Info,
            Component::Deployment,
            &format!(
                "Deployment succeeded: {} {} is live in {} ({duration:.1} s)",
                self.run.fraise, self.run.version, self.run.environment
            ),
            json!({}),
        )
        .await;
        let data = json!({ "status": "success", "version": self.run.version, "duration_seconds": duration });
        self.engine
            .end(
                &self.run,
                RunColumns::END,
                EventType::DeploymentCompleted,
                data,
            )
            .await?;
        self.progress("finished", "success", "deployment succeeded", 100);
        self.engine.bus().publish(BusMessage::Finished {
            run_id: self.run.id,
            status: RunStatus::Success,
        });
        Ok(())
    }

    pub(super) fn duration_secs(&self) -> f64 {
        match (self.run.started_at, self.run.completed_at) {
            (Some(s), Some(e)) => (e - s).num_milliseconds() as f64 / 1000.0,
            _ => 0.0,
        }
    }
}

pub(super) async fn finish_without_steps(engine: &Engine, run: &mut Run, message: &str) {
    let opts: RunOptions = serde_json::from_value(run.options.clone()).unwrap_or_default();
    revert_variables(engine, run, &opts).await;
    run.status = RunStatus::Failed;
    run.error_code = Some(FailureCode::DeploymentFailed.as_str().to_string());
    run.error_message = Some(message.to_string());
    run.completed_at = Some(Utc::now());
    engine
        .log(
            run,
            LogLevel::Error,
            Component::Deployment,
            message,
            json!({}),
        )
        .await;
    let data = json!({ "error": message });
    if let Err(e) = engine
        .end(run, RunColumns::END, EventType::DeploymentFailed, data)
        .await
    {
        tracing::error!(run = run.id, error = %e, "cannot record the end of a run");
    }
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
