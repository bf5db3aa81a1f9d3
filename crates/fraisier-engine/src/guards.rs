//! What keeps changes out of an environment for a while: a lock someone takes (and lifts),
//! freeze windows (seed 004) with the users they still let in, and change windows (seed 003's
//! `changeWindow`: the recurring times it accepts changes at all). Every deploy, rollback and
//! change of variables asks here first; a run already going is never stopped by them.

use chrono::{DateTime, Utc};
use fraisier_store::{EnvironmentLock, FreezeWindow, NewFreezeWindow};

use crate::{Engine, EngineError};

/// A freeze window asked for.
#[derive(Clone, Debug)]
pub struct FreezeRequest {
    pub tenant: String,
    pub environment: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub reason: Option<String>,
    pub exceptions: Vec<String>,
    pub by: String,
}

// === impl Engine ===

impl Engine {
    /// Refuses a change by `who` to what runs in an environment that is locked, or inside a
    /// freeze window that does not name `who` among its exceptions.
    pub(crate) async fn check_guards(
        &self,
        tenant: &str,
        environment: &str,
        who: &str,
    ) -> Result<(), EngineError> {
        // Looked at first so that nothing is prepared in vain; the store looks again as it
        // records the run (`Store::create_run`).
        if let Some(barrier) = self.store().barrier(tenant, environment, who).await? {
            return Err(barrier.into());
        }
        self.check_change_window(tenant, environment, who, Utc::now())
    }

    fn known_environment(&self, tenant: &str, environment: &str) -> Result<(), EngineError> {
        if self
            .config()
            .scope(tenant)
            .environments
            .contains_key(environment)
        {
            Ok(())
        } else {
            Err(EngineError::EnvironmentNotFound(environment.to_string()))
        }
    }

    /// Locks an environment: deploys, rollbacks and variable changes are refused there until
    /// it is unlocked. Refused when someone holds its lock already.
    pub async fn lock_environment(
        &self,
        tenant: &str,
        environment: &str,
        by: &str,
        reason: Option<&str>,
    ) -> Result<EnvironmentLock, EngineError> {
        self.known_environment(tenant, environment)?;
        self.store()
            .lock_environment(tenant, environment, by, reason)
            .await?
            .map_err(|l| EngineError::AlreadyLocked(Box::new(l)))
    }

    /// Lifts an environment's lock; the lock it had, if any.
    pub async fn unlock_environment(
        &self,
        tenant: &str,
        environment: &str,
    ) -> Result<Option<EnvironmentLock>, EngineError> {
        self.known_environment(tenant, environment)?;
        Ok(self.store().unlock_environment(tenant, environment).await?)
    }

    pub async fn environment_lock(
        &self,
        tenant: &str,
        environment: &str,
    ) -> Result<Option<EnvironmentLock>, EngineError> {
        self.known_environment(tenant, environment)?;
        Ok(self.store().environment_lock(tenant, environment).await?)
    }

    pub async fn add_freeze_window(&self, r: &FreezeRequest) -> Result<FreezeWindow, EngineError> {
        self.known_environment(&r.tenant, &r.environment)?;
        let invalid = |field: &str, message: String| EngineError::InvalidParameters {
            field: field.into(),
            message,
        };
        if r.ends_at <= r.starts_at {
            return Err(invalid("end", "end must come after start".into()));
        }
        if r.ends_at <= Utc::now() {
            return Err(invalid("end", "the window is over already".into()));
        }
        if r.exceptions.len() > 100 {
            return Err(invalid("exceptions", "at most 100 users".into()));
        }
        for (i, e) in r.exceptions.iter().enumerate() {
            if e.is_empty() || e.len() > 128 || e.chars().any(char::is_control) {
                return Err(invalid(
                    &format!("exceptions[{i}]"),
                    "a user name: 1 to 128 characters".into(),
                ));
            }
        }
        Ok(self
            .store()
            .add_freeze_window(&NewFreezeWindow {
                tenant_id: r.tenant.clone(),
                environment: r.environment.clone(),
                starts_at: r.starts_at,
                ends_at: r.ends_at,
                reason: r.reason.clone(),
                exceptions: r.exceptions.clone(),
                created_by: r.by.clone(),
            })
            .await?)
    }

    /// The windows not over yet; with `active`, only those in force now.
    pub async fn freeze_windows(
        &self,
        tenant: &str,
        environment: &str,
        active: bool,
    ) -> Result<Vec<FreezeWindow>, EngineError> {
        self.known_environment(tenant, environment)?;
        Ok(self
            .store()
            .freeze_windows(tenant, environment, active.then(Utc::now))
            .await?)
    }

    pub async fn delete_freeze_window(
        &self,
        tenant: &str,
        environment: &str,
        id: i64,
    ) -> Result<(), EngineError> {
        self.known_environment(tenant, environment)?;
        if self
            .store()
            .delete_freeze_window(tenant, environment, id)
            .await?
        {
            Ok(())
        } else {
            Err(EngineError::FreezeWindowNotFound(id))
        }
    }
}

impl Engine {
    /// Refuses a change outside an environment's change windows, when it has some, unless
    /// `who` is among its exceptions.
    pub(crate) fn check_change_window(
        &self,
        tenant: &str,
        environment: &str,
        who: &str,
        now: DateTime<Utc>,
    ) -> Result<(), EngineError> {
        let live = self.config();
        let Some(e) = live.scope(tenant).environments.get(environment) else {
            return Ok(());
        };
        if e.change_windows.is_empty() || e.change_window_exceptions.iter().any(|x| x == who) {
            return Ok(());
        }
        let mut next: Option<DateTime<Utc>> = None;
        for w in &e.change_windows {
            // Checked at load: a window that no longer parses lets nothing in.
            if let Ok(Some(_)) = w.open_at(now) {
                return Ok(());
            }
            if let Ok(Some(n)) = w.next_opening(now) {
                next = Some(next.map_or(n, |m| m.min(n)));
            }
        }
        Err(EngineError::OutsideChangeWindow {
            environment: environment.to_string(),
            next,
        })
    }
}

/// An environment's limits and what it runs now.
#[derive(Clone, Debug)]
pub struct LimitsView {
    pub limits: fraisier_store::EnvironmentLimits,
    /// Instances of the fraises deployed there, as configured.
    pub instances_in_use: u64,
}

impl Engine {
    /// Instances of the fraises deployed in an environment (those with a current version), as
    /// their configuration gives them; `except` is left out (the one about to be deployed).
    async fn instances_in_use(
        &self,
        tenant: &str,
        environment: &str,
        except: Option<&str>,
    ) -> Result<u64, EngineError> {
        let live = self.config();
        let ws = live.scope(tenant);
        Ok(self
            .store()
            .services(tenant)
            .await?
            .iter()
            .filter(|s| s.environment == environment && s.current_version.is_some())
            .filter(|s| except != Some(s.fraise.as_str()))
            .filter_map(|s| ws.fraises.get(&s.fraise))
            // Jobs run no standing instances.
            .filter(|f| f.kind == fraisier_model::FraiseType::Api)
            .filter_map(|f| f.environments.get(environment))
            .map(|fe| u64::from(fe.instances))
            .sum())
    }

    pub async fn environment_limits(
        &self,
        tenant: &str,
        environment: &str,
    ) -> Result<LimitsView, EngineError> {
        self.known_environment(tenant, environment)?;
        Ok(LimitsView {
            limits: self.store().environment_limits(tenant, environment).await?,
            instances_in_use: self.instances_in_use(tenant, environment, None).await?,
        })
    }

    /// Sets (or, `None`, lifts) the most instances an environment's fraises may run together.
    /// A limit below what runs now is kept: it refuses the deploys that would stay above it.
    pub async fn set_environment_limits(
        &self,
        tenant: &str,
        environment: &str,
        max_instances: Option<u64>,
        by: &str,
    ) -> Result<LimitsView, EngineError> {
        self.known_environment(tenant, environment)?;
        if max_instances.is_some_and(|m| !(1..=10_000).contains(&m)) {
            return Err(EngineError::InvalidParameters {
                field: "max_instances".into(),
                message: "max_instances is 1 to 10000, or null for no limit".into(),
            });
        }
        self.store()
            .set_environment_limits(tenant, environment, max_instances, by)
            .await?;
        self.environment_limits(tenant, environment).await
    }

    /// Refuses a deploy of `fraise` with `instances` that would take the environment over its
    /// limit.
    pub(crate) async fn check_limits(
        &self,
        tenant: &str,
        environment: &str,
        fraise: &str,
        instances: u32,
    ) -> Result<(), EngineError> {
        let kind = self
            .config()
            .scope(tenant)
            .fraises
            .get(fraise)
            .map(|f| f.kind);
        if kind != Some(fraisier_model::FraiseType::Api) {
            return Ok(());
        }
        let Some(max) = self
            .store()
            .environment_limits(tenant, environment)
            .await?
            .max_instances
        else {
            return Ok(());
        };
        let others = self
            .instances_in_use(tenant, environment, Some(fraise))
            .await?;
        let requested = u64::from(instances);
        if others + requested > max {
            return Err(EngineError::LimitExceeded {
                environment: environment.to_string(),
                max_instances: max,
                requested,
                in_use: others,
            });
        }
        Ok(())
    }
}
