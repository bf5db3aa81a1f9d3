//! The desired states a run applies: which releases, which instances, which generation;
//! and handing them to the provider after they are recorded.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use fraisier_model::plan::{self, Goal, Phase};
use fraisier_model::run::{FailureCode, RunKind};
use fraisier_model::service::{DesiredService, ObservedService, ReleaseSpec, ScheduleSpec};
use fraisier_model::{FraiseType, StrategyConfig};
use serde_json::json;
use tokio::time::Instant;

use super::{failure, strategy_config_of, Failure, RunCtx};
use crate::{request, ProviderError};

// === impl RunCtx ===

impl RunCtx<'_> {
    /// The strategy's phases from the snapshot: deterministic, so a resumed run gets the same.
    pub(super) fn plan(&self) -> Vec<Phase> {
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

    pub(super) fn previous_version(&self) -> Option<String> {
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

    pub(super) fn release_for(&self, version: &str) -> ReleaseSpec {
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
    pub(super) async fn desired_with(
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
            .map_err(|e| failure(FailureCode::ProviderError, e.to_string(), json!({})))?;
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
    pub(super) async fn apply(
        &mut self,
        desired: &DesiredService,
    ) -> Result<ObservedService, Failure> {
        let store = self.engine.store();
        let mut record = self
            .engine
            .service_record(&self.run)
            .await
            .map_err(|e| failure(FailureCode::ProviderError, e.to_string(), json!({})))?;
        record.desired = Some(desired.clone());
        record.updated_at = Utc::now();
        store
            .put_service(&record)
            .await
            .map_err(|e| failure(FailureCode::ProviderError, e.to_string(), json!({})))?;
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
                        FailureCode::ProviderError,
                        format!("the agent did not take the desired state: {e}"),
                        json!({}),
                    ));
                }
            }
        }
    }
}
