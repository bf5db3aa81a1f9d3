//! Environment variables and secrets set through the API, and the runs that apply them: a
//! change is recorded, then released like a version — a `config` run rolls the service's
//! instances onto the new environment with the environment's strategy, and rolls back if they
//! do not come up. Secrets are sealed here, before the store sees them.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::PoisonError;

use chrono::Utc;
use fraisier_model::names::agent_name;
use fraisier_model::run::RunKind;
use fraisier_model::secret::{self, Sealed, SecretKeys, NONCE_LEN};
use fraisier_model::Strategy;
use fraisier_store::{NewRun, Run, StoreError, Variable};
use serde_json::{json, Value};

use crate::request::{self, RunOptions};
use crate::{in_progress, Engine, EngineError};

/// Where an environment's own variables are kept: a fraise of no name, which no fraise can
/// have.
const ENVIRONMENT_WIDE: &str = "";

/// What a change of an environment's variables did.
#[derive(Clone, Debug)]
pub struct EnvironmentVariablesChanged {
    /// Names whose value changed (set, replaced or removed).
    pub changed: Vec<String>,
    /// The `config` run releasing them to each fraise running there.
    pub runs: Vec<Run>,
}

fn check_values(values: &BTreeMap<String, Option<String>>) -> Result<(), EngineError> {
    for (name, value) in values {
        if let Some(p) = secret::variable_name_problem(name) {
            return Err(EngineError::InvalidParameters {
                field: name.clone(),
                message: format!("variable name {name:?} {p}"),
            });
        }
        if value.as_deref().is_some_and(|v| v.contains('\0')) {
            return Err(EngineError::InvalidParameters {
                field: name.clone(),
                message: format!("the value of {name} contains a NUL character"),
            });
        }
    }
    Ok(())
}

/// Plain variables or secrets: the two never share a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VariableKind {
    Plain,
    Secret,
}

/// A change asked for through the API.
#[derive(Clone)]
pub struct VariableChange {
    pub tenant: String,
    pub fraise: String,
    pub environment: String,
    pub kind: VariableKind,
    /// Name → new value, or `None` to remove it.
    pub values: BTreeMap<String, Option<String>>,
    pub triggered_by: String,
    pub trigger_type: String,
}

/// Names only: the values may be secrets.
impl fmt::Debug for VariableChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VariableChange")
            .field("tenant", &self.tenant)
            .field("fraise", &self.fraise)
            .field("environment", &self.environment)
            .field("kind", &self.kind)
            .field("names", &self.values.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// What a change did.
#[derive(Clone, Debug)]
pub struct VariablesChanged {
    /// Names whose value changed (set, replaced or removed).
    pub changed: Vec<String>,
    /// The `config` run releasing them; `None` when nothing changed or the fraise has never
    /// been deployed there (its first deploy takes them).
    pub run: Option<Run>,
}

/// The variables a run releases, fixed when it is asked for so a resumed run gets the same.
#[derive(Clone, Debug, Default)]
pub(crate) struct Released {
    pub env: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, Sealed>,
}

// === impl Engine ===

impl Engine {
    /// The variables of one kind of a fraise in an environment; secrets still sealed.
    pub async fn variables(
        &self,
        tenant: &str,
        fraise: &str,
        environment: &str,
        kind: VariableKind,
    ) -> Result<Vec<Variable>, EngineError> {
        request::lookup(self.config().scope(tenant), fraise, environment)?;
        let all = self.store().variables(tenant, fraise, environment).await?;
        Ok(all
            .into_iter()
            .filter(|v| v.secret == (kind == VariableKind::Secret))
            .collect())
    }

    /// The variables fraisier.yaml gives a fraise in an environment (the API's win over them).
    pub fn configured_env(
        &self,
        tenant: &str,
        fraise: &str,
        environment: &str,
    ) -> Result<BTreeMap<String, String>, EngineError> {
        let live = self.config();
        let (f, fe) = request::lookup(live.scope(tenant), fraise, environment)?;
        let mut env = f.env.clone();
        env.extend(fe.env.clone());
        Ok(env)
    }

    /// Records a change of variables, then releases it with a `config` run. Refused while a
    /// run is active there: the change would either miss it or change it half-way.
    pub async fn change_variables(
        &self,
        change: VariableChange,
    ) -> Result<VariablesChanged, EngineError> {
        let live = self.config();
        let config = live.scope(&change.tenant);
        request::lookup(config, &change.fraise, &change.environment)?;
        self.check_guards(&change.tenant, &change.environment, &change.triggered_by)
            .await?;
        check_values(&change.values)?;
        let _changing = self.inner.changes.lock().await;
        let store = self.store();
        if let Some(active) = store
            .active_run_for(&change.tenant, &change.fraise, &change.environment)
            .await?
        {
            return Err(in_progress(&active));
        }
        let secret = change.kind == VariableKind::Secret;
        let slot_of = |name: &str| {
            secret::slot(
                &agent_name(&change.tenant, &change.fraise),
                &change.environment,
                name,
            )
        };
        let existing: BTreeMap<String, Variable> = store
            .variables(&change.tenant, &change.fraise, &change.environment)
            .await?
            .into_iter()
            .map(|v| (v.name.clone(), v))
            .collect();
        let mut writes = Vec::new();
        for (name, value) in &change.values {
            let stored = match value {
                None => None,
                Some(v) if secret => {
                    // A secret set again to the value it has is no change: no run for it.
                    let same = existing
                        .get(name)
                        .filter(|e| e.secret)
                        .and_then(|e| serde_json::from_str::<Sealed>(&e.value).ok())
                        .and_then(|s| self.secret_keys().open(&slot_of(name), &s).ok())
                        .is_some_and(|old| &old == v);
                    if same {
                        continue;
                    }
                    Some(self.seal_text(&slot_of(name), v)?)
                }
                Some(v) => Some(v.clone()),
            };
            writes.push((name.clone(), stored));
        }
        let changed = store
            .change_variables(
                &change.tenant,
                &change.fraise,
                &change.environment,
                secret,
                &writes,
                &change.triggered_by,
            )
            .await
            .map_err(|e| match e {
                StoreError::AlreadyExists(name) => EngineError::VariableConflict {
                    name,
                    held_as: if secret {
                        "a plain variable (env)"
                    } else {
                        "a secret"
                    },
                },
                e => EngineError::Store(e),
            })?;
        if changed.is_empty() {
            return Ok(VariablesChanged { changed, run: None });
        }
        let prior: BTreeMap<String, Option<Variable>> = changed
            .iter()
            .map(|n| (n.clone(), existing.get(n).cloned()))
            .collect();
        match self.reconfigure(&change, &changed, prior.clone()).await {
            Ok(run) => Ok(VariablesChanged { changed, run }),
            Err(e) => {
                // Not released, so not kept.
                let prior: Vec<_> = prior.into_iter().collect();
                store
                    .restore_variables(&change.tenant, &change.fraise, &change.environment, &prior)
                    .await?;
                Err(e)
            }
        }
    }

    /// A `config` run of the version running now, or `None` when nothing runs there yet.
    async fn reconfigure(
        &self,
        change: &VariableChange,
        changed: &[String],
        revert: BTreeMap<String, Option<Variable>>,
    ) -> Result<Option<Run>, EngineError> {
        match self.reconfiguration(change, changed, revert).await? {
            Some(new) => self.create_and_start(new).await.map(Some),
            None => Ok(None),
        }
    }

    /// The `config` run `reconfigure` starts, not recorded yet.
    async fn reconfiguration(
        &self,
        change: &VariableChange,
        changed: &[String],
        revert: BTreeMap<String, Option<Variable>>,
    ) -> Result<Option<NewRun>, EngineError> {
        let live = self.config();
        let config = live.scope(&change.tenant);
        let (_, fe) = request::lookup(config, &change.fraise, &change.environment)?;
        let service = self
            .store()
            .service(&change.tenant, &change.fraise, &change.environment)
            .await?;
        let Some(version) = service.and_then(|s| s.current_version) else {
            return Ok(None);
        };
        // The same version on both sides: a canary's analysis could not tell them apart.
        let strategy = match fe.strategy {
            Strategy::Canary => Strategy::Rolling,
            s => s,
        };
        let (strategy, strategy_config) = request::resolve_strategy(fe, Some(strategy), None)?;
        let released = self
            .released(&change.tenant, &change.fraise, &change.environment)
            .await?;
        let options = RunOptions {
            timeout_secs: request::default_timeout(config, &change.environment),
            rollback_on_failure: true,
            approval: request::approval_policy(config, &change.environment, Utc::now()),
            env: released.env,
            secrets: released.secrets,
            revert,
            ..RunOptions::default()
        };
        let what = match change.kind {
            VariableKind::Plain => "env",
            VariableKind::Secret => "secrets",
        };
        let new = NewRun {
            tenant_id: change.tenant.clone(),
            fraise: change.fraise.clone(),
            environment: change.environment.clone(),
            kind: RunKind::Config,
            previous_version: Some(version.clone()),
            version,
            strategy: strategy.as_str().to_string(),
            strategy_config: serde_json::to_value(&strategy_config).unwrap_or(Value::Null),
            triggered_by: change.triggered_by.clone(),
            trigger_type: change.trigger_type.clone(),
            // `revert` must not be lost: a failed run could not put the variables back.
            options: serde_json::to_value(&options).expect("plain data serializes"),
            metadata: json!({ "changed": { what: changed } }),
        };
        Ok(Some(new))
    }

    /// An environment's own variables, which every fraise there gets (below its own).
    pub async fn environment_variables(
        &self,
        tenant: &str,
        environment: &str,
    ) -> Result<Vec<Variable>, EngineError> {
        self.environment(tenant, environment)?;
        Ok(self
            .store()
            .variables(tenant, ENVIRONMENT_WIDE, environment)
            .await?)
    }

    /// Records a change of an environment's variables, then releases it with a `config` run
    /// of every fraise running there. Refused while a run is active on any of them. A run
    /// that fails puts its fraise's instances back; the variables stay as set (its next
    /// deploy takes them), since the other fraises may have taken them already.
    pub async fn change_environment_variables(
        &self,
        tenant: &str,
        environment: &str,
        values: &BTreeMap<String, Option<String>>,
        triggered_by: &str,
    ) -> Result<EnvironmentVariablesChanged, EngineError> {
        self.environment(tenant, environment)?;
        self.check_guards(tenant, environment, triggered_by).await?;
        check_values(values)?;
        let _changing = self.inner.changes.lock().await;
        let store = self.store();
        let fraises: Vec<String> = self
            .config()
            .scope(tenant)
            .fraises
            .iter()
            .filter(|(_, f)| f.environments.contains_key(environment))
            .map(|(n, _)| n.clone())
            .collect();
        for fraise in &fraises {
            if let Some(active) = store.active_run_for(tenant, fraise, environment).await? {
                return Err(in_progress(&active));
            }
        }
        let existing: BTreeMap<String, Variable> = store
            .variables(tenant, ENVIRONMENT_WIDE, environment)
            .await?
            .into_iter()
            .map(|v| (v.name.clone(), v))
            .collect();
        let writes: Vec<_> = values.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        let changed = store
            .change_variables(
                tenant,
                ENVIRONMENT_WIDE,
                environment,
                false,
                &writes,
                triggered_by,
            )
            .await?;
        if changed.is_empty() {
            return Ok(EnvironmentVariablesChanged {
                changed,
                runs: Vec::new(),
            });
        }
        // Every run is made ready, then all are recorded at once or none: a fraise that
        // cannot take the change, or a run refused as it is recorded (an active run, or a
        // lock taken since the check), leaves the change unmade.
        let started = async {
            let mut ready = Vec::new();
            for fraise in fraises {
                let change = VariableChange {
                    tenant: tenant.to_string(),
                    fraise,
                    environment: environment.to_string(),
                    kind: VariableKind::Plain,
                    values: BTreeMap::new(),
                    triggered_by: triggered_by.to_string(),
                    trigger_type: "api".into(),
                };
                if let Some(new) = self
                    .reconfiguration(&change, &changed, BTreeMap::new())
                    .await?
                {
                    ready.push(new);
                }
            }
            self.create_and_start_all(ready).await
        }
        .await;
        match started {
            Ok(runs) => Ok(EnvironmentVariablesChanged { changed, runs }),
            Err(e) => {
                let prior: Vec<_> = changed
                    .iter()
                    .map(|n| (n.clone(), existing.get(n).cloned()))
                    .collect();
                store
                    .restore_variables(tenant, ENVIRONMENT_WIDE, environment, &prior)
                    .await?;
                Err(e)
            }
        }
    }

    /// What a run asked for now releases: the API's plain variables and sealed secrets.
    pub(crate) async fn released(
        &self,
        tenant: &str,
        fraise: &str,
        environment: &str,
    ) -> Result<Released, EngineError> {
        let mut released = Released::default();
        // The environment's own first: the fraise's win over them.
        for v in self
            .store()
            .variables(tenant, ENVIRONMENT_WIDE, environment)
            .await?
        {
            released.env.insert(v.name, v.value);
        }
        for v in self.store().variables(tenant, fraise, environment).await? {
            if v.secret {
                let sealed: Sealed = serde_json::from_str(&v.value).map_err(|e| {
                    EngineError::Store(StoreError::Corrupt(format!(
                        "secret {} of {fraise} in {environment}: {e}",
                        v.name
                    )))
                })?;
                released.secrets.insert(v.name, sealed);
            } else {
                released.env.insert(v.name, v.value);
            }
        }
        Ok(released)
    }

    /// Rotation: `add` makes (and keeps, in the key file) the keys with a new one last; every
    /// stored secret is re-sealed with it, and it seals from then on. One at a time, and never
    /// between a change of secrets and its run. Returns the keys and how many values were
    /// re-sealed. (Values sealed in past runs' options and in desired states already handed
    /// out keep their old key: after a leak, change the secrets themselves.)
    pub async fn rotate_secret_keys(
        &self,
        add: impl FnOnce(&SecretKeys) -> Result<SecretKeys, secret::SecretError>,
    ) -> Result<(SecretKeys, usize), EngineError> {
        let _changing = self.inner.changes.lock().await;
        let keys = add(&self.secret_keys()).map_err(EngineError::Secret)?;
        let store = self.store();
        let mut slots = store.secret_slots().await?;
        for s in &mut slots {
            let slot = secret::slot(
                &agent_name(&s.tenant_id, &s.fraise),
                &s.environment,
                &s.name,
            );
            let sealed: Sealed = serde_json::from_str(&s.value)
                .map_err(|e| EngineError::Store(StoreError::Corrupt(e.to_string())))?;
            let plain = keys.open(&slot, &sealed).map_err(EngineError::Secret)?;
            let again = keys
                .seal(&slot, &plain, nonce()?)
                .map_err(EngineError::Secret)?;
            s.value = serde_json::to_string(&again).expect("plain data serializes");
        }
        store.reseal(&slots).await?;
        *self
            .inner
            .secret_keys
            .write()
            .unwrap_or_else(PoisonError::into_inner) = keys.clone();
        Ok((keys, slots.len()))
    }

    /// A value sealed for its slot with the newest key, as the store keeps it (JSON).
    pub(crate) fn seal_text(&self, slot: &str, value: &str) -> Result<String, EngineError> {
        let sealed = self
            .secret_keys()
            .seal(slot, value, nonce()?)
            .map_err(EngineError::Secret)?;
        Ok(serde_json::to_string(&sealed).expect("plain data serializes"))
    }

    /// The keys secrets are sealed with now.
    pub fn secret_keys(&self) -> SecretKeys {
        self.inner
            .secret_keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn nonce() -> Result<[u8; NONCE_LEN], EngineError> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::getrandom(&mut n)
        .map_err(|e| EngineError::Secret(secret::SecretError::Random(e.to_string())))?;
    Ok(n)
}
