//! A run's database migrations. A deploy runs `up` in the new release before traffic moves,
//! counting applied migrations with `status` before and after, and keeps the count in the run
//! as it goes; a failure undoes exactly that many with `down` before the previous version
//! takes traffic back. A rollback undoes what the deploy of the version it leaves applied.

use std::collections::BTreeMap;

use fraisier_model::config::MigrationsConfig;
use fraisier_model::run::{Component, EventType, FailureCode, LogLevel};
use fraisier_model::service::{ExecRequest, ExecResult};
use serde_json::{json, Value};

use super::{failure, Failure, RunCtx};
use crate::request::{MigrationRecord, RunOptions};

const FAILED: FailureCode = FailureCode::MigrationFailed;

// === impl RunCtx ===

impl RunCtx<'_> {
    fn migrations(&self) -> Option<MigrationsConfig> {
        self.fraise.migrations.clone().filter(|_| self.opts.migrate)
    }

    /// `up` in the run's release. Safe to repeat: a resumed run keeps the count from before.
    pub(super) async fn migrate_up(&mut self) -> Result<Option<String>, Failure> {
        let Some(m) = self.migrations() else {
            return Ok(Some(self.no_migrations()));
        };
        self.interrupted()?;
        let version = self.run.version.clone();
        // Resumed: the count from before `up` first ran stands.
        let before = match &self.opts.migration {
            Some(r) if r.version == version && !r.reverted => r.before,
            _ => {
                let n = self.count(&m, &version).await?;
                self.opts.migration = Some(MigrationRecord {
                    version: version.clone(),
                    before: n,
                    steps: None,
                    reverted: false,
                });
                self.save_options().await?;
                n
            }
        };
        let up = self
            .command(
                &version,
                &m.up,
                BTreeMap::new(),
                "migrations up",
                m.timeout.0,
            )
            .await;
        // Counted whether `up` succeeded or not: a half-applied batch is undone too.
        let after = self.count(&m, &version).await;
        if let (Ok(after), Some(r)) = (&after, self.opts.migration.as_mut()) {
            r.steps = Some(after.saturating_sub(before));
        }
        self.save_options().await?;
        let after = after?;
        match up {
            Ok(r) if r.exit_code == Some(0) => {
                let applied = after.saturating_sub(before);
                self.engine
                    .event(
                        &self.run,
                        EventType::MigrationApplied,
                        json!({ "version": version, "before": before, "after": after, "steps": applied }),
                    )
                    .await;
                Ok(Some(format!(
                    "{applied} migration(s) applied ({before} → {after})"
                )))
            }
            Ok(r) => Err(failure(
                FAILED,
                format!(
                    "migrations up {} ({} of them applied, to be undone)",
                    ended(&r, m.timeout.0),
                    after.saturating_sub(before)
                ),
                json!({ "exit_code": r.exit_code, "before": before, "after": after }),
            )),
            Err(f) => Err(f),
        }
    }

    /// For a rollback run: undoes what the deploy of the version it leaves applied, in that
    /// version's release, before the target takes traffic.
    pub(super) async fn migrate_back(&mut self) -> Result<Option<String>, Failure> {
        let Some(m) = self.migrations() else {
            return Ok(Some(self.no_migrations()));
        };
        let Some(leaving) = self.run.previous_version.clone() else {
            return Ok(Some("no migrations to undo: nothing ran here".into()));
        };
        if let Some(done) = self.opts.migration.as_ref().filter(|r| r.reverted) {
            return Ok(Some(format!(
                "{} migration(s) of {leaving} undone already",
                done.steps.unwrap_or(0)
            )));
        }
        let applied = self
            .engine
            .applied_migrations(
                &self.run.tenant_id,
                &self.run.fraise,
                &self.run.environment,
                &leaving,
            )
            .await
            .map_err(|e| failure(FailureCode::DeploymentFailed, e.to_string(), json!({})))?;
        let Some((deploy_id, record, _)) = applied else {
            return Ok(Some(format!(
                "no migrations to undo: the deploy of {leaving} recorded none"
            )));
        };
        if self.opts.migration.is_none() {
            self.opts.migration = Some(MigrationRecord {
                reverted: false,
                ..record.clone()
            });
            self.save_options().await?;
        }
        match self.revert(&m).await {
            Ok(message) => {
                // The deploy's migrations are undone: no later rollback undoes them again.
                self.engine
                    .mark_reverted(&self.run.tenant_id, deploy_id)
                    .await;
                Ok(Some(message))
            }
            Err(why) => Err(failure(FailureCode::RollbackFailed, why, json!({}))),
        }
    }

    /// Undoes this run's recorded migrations with `down`; the message, or why it could not
    /// (the database's state included). Does not look at cancellation: it is part of
    /// stopping.
    pub(super) async fn revert(&mut self, m: &MigrationsConfig) -> Result<String, String> {
        let Some(record) = self.opts.migration.clone().filter(|r| !r.reverted) else {
            return Ok("no migrations to undo".into());
        };
        let Some(recorded) = record.steps else {
            let why = format!(
                "cannot tell how many migrations {} applied (its status did not say): the database is left as it is",
                record.version
            );
            self.down_failed(&record, None, &why).await;
            return Err(why);
        };
        if recorded == 0 {
            return Ok("no migrations to undo".into());
        }
        // Undo what is there now above the count before (a resumed run may have undone part
        // already): never below it.
        let now = match self.count(m, &record.version).await {
            Ok(n) => n,
            Err(f) => {
                let why = format!("migrations down cannot start: {}", f.message);
                self.down_failed(&record, None, &why).await;
                return Err(why);
            }
        };
        let steps = now.saturating_sub(record.before);
        if steps == 0 {
            if let Some(r) = self.opts.migration.as_mut() {
                r.reverted = true;
            }
            let _ = self.save_options().await;
            return Ok(format!(
                "the database is back at {} migrations already",
                record.before
            ));
        }
        let env = BTreeMap::from([("FRAISIER_MIGRATION_STEPS".to_string(), steps.to_string())]);
        let down = self
            .command(
                &record.version,
                &m.down,
                env,
                "migrations down",
                m.timeout.0,
            )
            .await;
        let now = self.count(m, &record.version).await.ok();
        let ok = matches!(&down, Ok(r) if r.exit_code == Some(0)) && now == Some(record.before);
        if !ok {
            let what = match &down {
                Ok(r) if r.exit_code != Some(0) => {
                    format!("`{}` {}", m.down, ended(r, m.timeout.0))
                }
                Ok(_) => format!("`{}` left a different count", m.down),
                Err(f) => f.message.clone(),
            };
            let state = match now {
                Some(n) => format!(
                    "the database has {n} migrations applied; before the deploy of {} it had {}",
                    record.version, record.before
                ),
                None => "its status cannot tell how many migrations are applied".into(),
            };
            let why = format!("migrations down failed: {what}; {state}");
            self.down_failed(&record, now, &why).await;
            return Err(why);
        }
        if let Some(r) = self.opts.migration.as_mut() {
            r.reverted = true;
        }
        let _ = self.save_options().await;
        self.engine
            .event(
                &self.run,
                EventType::MigrationReverted,
                json!({ "version": record.version, "steps": steps, "now": record.before }),
            )
            .await;
        Ok(format!(
            "{steps} migration(s) of {} undone (back to {})",
            record.version, record.before
        ))
    }

    async fn down_failed(&self, record: &MigrationRecord, now: Option<u64>, why: &str) {
        self.engine
            .log(
                &self.run,
                LogLevel::Error,
                Component::Migration,
                why,
                json!({}),
            )
            .await;
        self.engine
            .event(
                &self.run,
                EventType::MigrationDownFailed,
                json!({ "version": record.version, "before": record.before, "steps": record.steps, "now": now, "message": why }),
            )
            .await;
    }

    fn no_migrations(&self) -> String {
        if self.fraise.migrations.is_some() {
            "skipped: migrate is false".into()
        } else {
            "no migrations".into()
        }
    }

    /// How many migrations `status` says are applied (its last line).
    async fn count(&mut self, m: &MigrationsConfig, version: &str) -> Result<u64, Failure> {
        let r = self
            .command(
                version,
                &m.status,
                BTreeMap::new(),
                "migrations status",
                m.timeout.0,
            )
            .await?;
        let last = r
            .output
            .iter()
            .rev()
            .map(|l| l.trim())
            .find(|l| !l.is_empty())
            .unwrap_or("");
        match (r.exit_code, last.parse::<u64>()) {
            (Some(0), Ok(n)) => Ok(n),
            (Some(0), Err(_)) => Err(failure(
                FAILED,
                format!(
                    "`{}` printed {last:?}, not the number of applied migrations",
                    m.status
                ),
                json!({ "command": m.status }),
            )),
            _ => Err(failure(
                FAILED,
                format!("`{}` {}", m.status, ended(&r, m.timeout.0)),
                json!({ "command": m.status, "exit_code": r.exit_code }),
            )),
        }
    }

    /// Runs a command once in `version`'s release with its variables and secrets; its output
    /// goes to the run's log under `migration`.
    async fn command(
        &mut self,
        version: &str,
        command: &str,
        mut env: BTreeMap<String, String>,
        what: &str,
        timeout_ms: u64,
    ) -> Result<ExecResult, Failure> {
        env.insert(
            "FRAISIER_DEPLOYMENT_ID".into(),
            fraisier_store::run_id_string(self.run.id),
        );
        let req = ExecRequest {
            fraise: self.agent_name(),
            environment: self.run.environment.clone(),
            version: version.to_string(),
            release: self.release_for(version),
            command: command.to_string(),
            env,
            timeout_ms,
        };
        self.engine
            .log(
                &self.run,
                LogLevel::Info,
                Component::Migration,
                &format!("Running {what} in {version}: {command}"),
                json!({}),
            )
            .await;
        let result = self.engine.provider().exec(&req).await.map_err(|e| {
            failure(
                FAILED,
                format!("{what} could not run: {e}"),
                json!({ "command": command }),
            )
        })?;
        for line in &result.output {
            self.engine
                .log(
                    &self.run,
                    LogLevel::Info,
                    Component::Migration,
                    line,
                    json!({ "source": what }),
                )
                .await;
        }
        Ok(result)
    }
}

fn ended(r: &ExecResult, timeout_ms: u64) -> String {
    if r.timed_out {
        format!("timed out after {} s", timeout_ms / 1000)
    } else {
        match r.exit_code {
            Some(c) => format!("exited with {c}"),
            None => "was killed by a signal".into(),
        }
    }
}

// === impl Engine ===

impl crate::Engine {
    /// The migrations the deploy that brought `version` applied and nobody undid: that
    /// deploy's id and record. Deploys that applied nothing (a redeploy of the same commit,
    /// `migrate: false`) are passed over.
    pub(crate) async fn applied_migrations(
        &self,
        tenant: &str,
        fraise: &str,
        environment: &str,
        version: &str,
    ) -> Result<Option<(i64, MigrationRecord, Option<String>)>, fraisier_store::StoreError> {
        for d in self
            .store()
            .deploys_of(tenant, fraise, environment, version, 20)
            .await?
        {
            let record = serde_json::from_value::<RunOptions>(d.options.clone())
                .ok()
                .and_then(|o| o.migration);
            if let Some(r) = record.filter(|r| !r.reverted && r.steps != Some(0)) {
                return Ok(Some((d.id, r, d.previous_version.clone())));
            }
        }
        Ok(None)
    }

    /// Records on a deploy that its migrations were undone (by a rollback).
    pub(crate) async fn mark_reverted(&self, tenant: &str, run_id: i64) {
        let Ok(mut run) = self.store().run(tenant, run_id).await else {
            return;
        };
        let Ok(mut opts) = serde_json::from_value::<RunOptions>(run.options.clone()) else {
            return;
        };
        if let Some(r) = opts.migration.as_mut() {
            r.reverted = true;
        }
        run.options = serde_json::to_value(&opts).unwrap_or(Value::Null);
        // The deploy finished, perhaps on another server, whose lease is still on its row.
        if let Err(e) = self.store().write_finished_run_options(&run).await {
            tracing::warn!(error = %e, "cannot mark a deploy's migrations undone");
        }
    }
}
