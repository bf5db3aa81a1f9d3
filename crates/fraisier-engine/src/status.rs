//! A fraise in an environment as it stands — what the store recorded, the run moving it, what
//! the agent observes — gathered and judged in one place, for every view and for the
//! dependency gate.

use fraisier_model::names::agent_name;
use fraisier_model::run::{FraiseStatus, Health, RunKind, ServiceState};
use fraisier_model::service::{ExecutionStatus, ObservedService};
use fraisier_model::FraiseType;
use fraisier_store::{Run, ServiceRecord};

use crate::{Engine, EngineError};

#[derive(Clone, Debug)]
pub struct ServiceStatus {
    pub workspace: String,
    pub fraise: String,
    pub environment: String,
    pub kind: FraiseType,
    pub record: Option<ServiceRecord>,
    /// The run pending or in progress, if any.
    pub active: Option<Run>,
    /// The latest run, finished or not.
    pub last: Option<Run>,
    pub observed: Option<ObservedService>,
    /// Why the agent could not be asked, when it could not.
    pub unobserved: Option<String>,
}

// === impl ServiceStatus ===

impl ServiceStatus {
    pub fn current_version(&self) -> Option<&str> {
        self.record.as_ref()?.current_version.as_deref()
    }

    pub fn previous_version(&self) -> Option<&str> {
        self.record.as_ref()?.previous_version.as_deref()
    }

    /// Seed 000's status: deploying while a run moves it; unknown before its first deploy;
    /// for jobs, whether the last deploy and the last finished execution succeeded; for
    /// services, the health the agent observes.
    pub fn status(&self) -> FraiseStatus {
        if self.active.is_some() {
            return FraiseStatus::Deploying;
        }
        if self.current_version().is_none() {
            return FraiseStatus::Unknown;
        }
        if self.kind != FraiseType::Api {
            let last_execution_failed = self
                .observed
                .as_ref()
                .and_then(|o| o.schedule.as_ref())
                .and_then(|s| {
                    s.executions
                        .iter()
                        .find(|e| e.status != ExecutionStatus::Running)
                })
                .is_some_and(|e| e.status != ExecutionStatus::Succeeded);
            let deployed_well = self
                .record
                .as_ref()
                .is_some_and(|r| r.state == ServiceState::Healthy);
            return if deployed_well && !last_execution_failed {
                FraiseStatus::Healthy
            } else {
                FraiseStatus::Unhealthy
            };
        }
        match self.health() {
            Health::Unknown => FraiseStatus::Unknown,
            Health::Healthy => FraiseStatus::Healthy,
            Health::Degraded => FraiseStatus::Degraded,
            Health::Unhealthy => FraiseStatus::Unhealthy,
        }
    }

    /// Seed 001's state: the run moving it first, then what the last run left.
    pub fn state(&self) -> ServiceState {
        match (&self.active, &self.record) {
            (Some(r), _) if r.kind == RunKind::Rollback => ServiceState::RollingBack,
            (Some(_), _) => ServiceState::Deploying,
            (None, Some(rec)) => rec.state,
            (None, None) => ServiceState::Unknown,
        }
    }

    /// The instances' health as the agent sees it.
    pub fn health(&self) -> Health {
        self.observed
            .as_ref()
            .map_or(Health::Unknown, ObservedService::health)
    }

    /// Whether another fraise may depend on this one now, and why not: deployed there, and
    /// serving (a healthy instance; for a job, its last deploy succeeded).
    pub fn serves(&self) -> Result<(), String> {
        if self.current_version().is_none() {
            return Err("it has never been deployed there".into());
        }
        if self.kind != FraiseType::Api {
            let state = self
                .record
                .as_ref()
                .map_or(ServiceState::Unknown, |r| r.state);
            return match state {
                ServiceState::Healthy => Ok(()),
                s => Err(format!("its state is {}", fraisier_model::run::to_wire(&s))),
            };
        }
        if let Some(e) = &self.unobserved {
            return Err(format!("cannot observe it: {e}"));
        }
        match &self.observed {
            Some(o) if o.healthy_count() > 0 => Ok(()),
            _ => Err("no instance is healthy".into()),
        }
    }
}

// === impl Engine ===

impl Engine {
    /// Where a fraise stands in an environment of a workspace.
    pub async fn service_status(
        &self,
        workspace: &str,
        fraise: &str,
        environment: &str,
    ) -> Result<ServiceStatus, EngineError> {
        let store = self.store();
        let record = store.service(workspace, fraise, environment).await?;
        let active = store.active_run_for(workspace, fraise, environment).await?;
        let last = store.last_run_for(workspace, fraise, environment).await?;
        let (observed, unobserved) = match self
            .provider()
            .observe(&agent_name(workspace, fraise), environment)
            .await
        {
            Ok(o) => (o, None),
            Err(e) => (None, Some(e.to_string())),
        };
        let kind = self
            .config()
            .scope(workspace)
            .fraises
            .get(fraise)
            .map(|f| f.kind)
            .unwrap_or_default();
        Ok(ServiceStatus {
            workspace: workspace.to_string(),
            fraise: fraise.to_string(),
            environment: environment.to_string(),
            kind,
            record,
            active,
            last,
            observed,
            unobserved,
        })
    }
}
