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
        let store = self.store();
        if let Some(lock) = store.environment_lock(tenant, environment).await? {
            return Err(EngineError::EnvironmentLocked(Box::new(lock)));
        }
        let active = store
            .freeze_windows(tenant, environment, Some(Utc::now()))
            .await?;
        if let Some(w) = active
            .into_iter()
            .find(|w| !w.exceptions.iter().any(|e| e == who))
        {
            return Err(EngineError::EnvironmentFrozen(Box::new(w)));
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
        let Some(e) = self.config().scope(tenant).environments.get(environment) else {
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
