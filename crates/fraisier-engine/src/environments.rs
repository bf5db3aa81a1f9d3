//! Environments as data: the configuration the engine works from is fraisier.yaml's with the
//! API's environment changes applied. A change goes to the store first, then the live copy is
//! rebuilt from the file and every row, so the two never disagree for long: on PostgreSQL,
//! other servers rebuild theirs as soon as the database tells them (`LISTEN`/`NOTIFY`).
//!
//! Which wins: a field set through the API keeps its API value across restarts even when the
//! file says otherwise (the server warns at start); an environment deleted through the API
//! stays deleted unless a fraise in the file is configured for it. Everything else about an
//! environment (roles, notifications, change windows) is the file's alone.

use std::sync::{Arc, PoisonError, RwLock};

use fraisier_model::config::{Config, EnvironmentConfig};
use fraisier_model::environment::EnvironmentSettings;
use fraisier_model::names::name_problem;
use fraisier_store::{EnvironmentCreated, EnvironmentDeleted, EnvironmentRecord};

use crate::{Engine, EngineError};

/// How often a server on PostgreSQL rereads the environments others may have changed, when
/// it cannot listen for their changes.
pub const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(3);
/// How often it rereads them while it listens: a change is told at once, so this only bounds
/// how long a change can go unseen should a listening connection stop hearing without
/// closing.
pub const RELOAD_LISTENING: std::time::Duration = std::time::Duration::from_secs(30);
/// The pause before listening again after the listening connection was lost.
const LISTEN_AGAIN_AFTER: std::time::Duration = std::time::Duration::from_millis(200);

/// The configuration as the engine sees it now.
pub struct LiveConfig {
    /// fraisier.yaml as loaded.
    declared: Arc<Config>,
    current: RwLock<Arc<Config>>,
    /// Held from reading the rows to installing what they make: two reloads cannot finish
    /// in the wrong order and leave an older view in place.
    reloading: tokio::sync::Mutex<()>,
}

/// What the file says and the API overrode, for the start-up warning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overridden {
    pub workspace: String,
    pub environment: String,
    /// Fields whose API value holds over the file's; empty with `deleted`.
    pub fields: Vec<&'static str>,
    pub deleted: bool,
    pub by: String,
}

// === impl LiveConfig ===

impl LiveConfig {
    pub fn new(declared: Arc<Config>) -> LiveConfig {
        LiveConfig {
            current: RwLock::new(declared.clone()),
            declared,
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// The configuration now; a later change does not alter the one returned.
    pub fn current(&self) -> Arc<Config> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// fraisier.yaml as loaded, without the API's changes.
    pub fn declared(&self) -> &Config {
        &self.declared
    }

    /// Rebuilds the live configuration from the file and the store's rows, read now.
    pub async fn reload(
        &self,
        store: &fraisier_store::Store,
    ) -> Result<Vec<Overridden>, EngineError> {
        let _one_at_a_time = self.reloading.lock().await;
        let records = store.environment_records().await?;
        let (config, overridden) = merge(&self.declared, &records);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
        Ok(overridden)
    }
}

/// The file's configuration with the API's environments applied, and what the API holds
/// against the file.
pub fn merge(declared: &Config, records: &[EnvironmentRecord]) -> (Config, Vec<Overridden>) {
    let mut config = declared.clone();
    let mut overridden = Vec::new();
    for r in records {
        let in_file = declared
            .workspaces
            .get(&r.tenant_id)
            .and_then(|w| w.environments.get(&r.name));
        let ws = config.workspaces.entry(r.tenant_id.clone()).or_default();
        if r.deleted_at.is_some() {
            // A fraise cannot be configured for an environment that is not there: the file's
            // fraise keeps it.
            let used = ws
                .fraises
                .values()
                .any(|f| f.environments.contains_key(&r.name));
            if !used && ws.environments.remove(&r.name).is_some() {
                overridden.push(Overridden {
                    workspace: r.tenant_id.clone(),
                    environment: r.name.clone(),
                    fields: Vec::new(),
                    deleted: true,
                    by: r.updated_by.clone(),
                });
            }
            continue;
        }
        if let Some(e) = in_file {
            let fields = r.settings.differences(e);
            if !fields.is_empty() {
                overridden.push(Overridden {
                    workspace: r.tenant_id.clone(),
                    environment: r.name.clone(),
                    fields,
                    deleted: false,
                    by: r.updated_by.clone(),
                });
            }
        }
        let e = ws
            .environments
            .entry(r.name.clone())
            .or_insert_with(|| EnvironmentConfig::made(&r.name));
        r.settings.apply_to(e);
    }
    (config, overridden)
}

/// Which fraises of fraisier.yaml are configured for an environment, if any: it cannot be
/// deleted then.
fn configured_for(config: &Config, tenant: &str, name: &str) -> Option<String> {
    let ws = config.scope(tenant);
    let fraises: Vec<&str> = ws
        .fraises
        .iter()
        .filter(|(_, f)| f.environments.contains_key(name))
        .map(|(n, _)| n.as_str())
        .collect();
    (!fraises.is_empty()).then(|| {
        format!(
            "fraisier.yaml configures {} for it (fraises.<name>.environments.{name}); remove that first",
            fraises.join(", ")
        )
    })
}

fn invalid(field: &str, message: String) -> EngineError {
    EngineError::InvalidParameters {
        field: field.to_string(),
        message: format!("{field}: {message}"),
    }
}

fn check(settings: &EnvironmentSettings) -> Result<(), EngineError> {
    match settings.problems().into_iter().next() {
        Some((field, message)) => Err(invalid(field, message)),
        None => Ok(()),
    }
}

// === impl Engine ===

impl Engine {
    /// Keeps this server's view of the environments in line with what other servers on
    /// the same PostgreSQL database write: rereads them whenever one tells of a change
    /// (`LISTEN`), and every [`RELOAD_EVERY`] when it cannot listen. Runs until the engine
    /// stops.
    pub(crate) async fn follow_environments(&self) {
        let mut watch: Option<fraisier_store::EnvironmentWatch> = None;
        loop {
            if watch.is_none() {
                watch = self.store().watch_environments().await.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot listen for environment changes; rereading them every few seconds");
                    None
                });
                if watch.is_some() {
                    // What changed before it listened is not told: read it now.
                    self.reread_environments().await;
                }
            }
            let waited = match watch.as_mut() {
                Some(w) => tokio::select! {
                    told = w.changed() => told,
                    _ = tokio::time::sleep(RELOAD_LISTENING) => Ok(()),
                },
                None => {
                    tokio::time::sleep(RELOAD_EVERY).await;
                    Ok(())
                }
            };
            match waited {
                Ok(()) => self.reread_environments().await,
                // sqlx could not make the connection again: listened for anew at the top,
                // and reread once it listens.
                Err(e) => {
                    tracing::warn!(error = %e, "lost the connection that listens for environment changes");
                    watch = None;
                    // Not at once: a database that drops every new connection is not
                    // hammered.
                    tokio::time::sleep(LISTEN_AGAIN_AFTER).await;
                }
            }
        }
    }

    async fn reread_environments(&self) {
        if let Err(e) = self.reload_environments().await {
            tracing::warn!(error = %e, "could not reread the environments");
        }
    }

    /// Rebuilds the live configuration from the store; what the API holds against the file.
    pub async fn reload_environments(&self) -> Result<Vec<Overridden>, EngineError> {
        self.inner.config.reload(self.store()).await
    }

    /// An environment as fraisier.yaml declares it, without the API's changes.
    pub fn declared_environment(&self, tenant: &str, name: &str) -> Option<&EnvironmentConfig> {
        self.inner
            .config
            .declared()
            .workspaces
            .get(tenant)?
            .environments
            .get(name)
    }

    /// A run's time limit in an environment when the request gives none, in seconds.
    pub fn default_timeout_secs(&self, tenant: &str, name: &str) -> u64 {
        crate::request::default_timeout(self.config().scope(tenant), name)
    }

    /// An environment of a workspace, as configured now.
    pub fn environment(&self, tenant: &str, name: &str) -> Result<EnvironmentConfig, EngineError> {
        self.config()
            .scope(tenant)
            .environments
            .get(name)
            .filter(|_| fraisier_model::names::is_valid_name(name))
            .cloned()
            .ok_or_else(|| EngineError::EnvironmentNotFound(name.to_string()))
    }

    /// Creates an environment; 409 when one of that name exists.
    pub async fn create_environment(
        &self,
        tenant: &str,
        name: &str,
        settings: &EnvironmentSettings,
        by: &str,
    ) -> Result<EnvironmentConfig, EngineError> {
        if let Some(p) = name_problem(name) {
            return Err(invalid("name", format!("invalid environment name: {p}")));
        }
        check(settings)?;
        // Only the fields asked for are kept: one the file declares (deleted through the API
        // and made again) starts from the file's declaration, as on every reload.
        let declared = self.declared_environment(tenant, name).is_some();
        let created = self
            .store()
            .create_environment(tenant, name, settings, declared, by)
            .await?;
        self.reload_environments().await?;
        match created {
            EnvironmentCreated::Exists => Err(EngineError::EnvironmentExists(name.to_string())),
            EnvironmentCreated::Made(_) => self.environment(tenant, name),
        }
    }

    /// Changes the fields `changes` sets; the others stay.
    pub async fn update_environment(
        &self,
        tenant: &str,
        name: &str,
        changes: &EnvironmentSettings,
        by: &str,
    ) -> Result<EnvironmentConfig, EngineError> {
        self.environment(tenant, name)?;
        check(changes)?;
        if changes.is_empty() {
            return self.environment(tenant, name);
        }
        let declared = self.declared_environment(tenant, name).is_some();
        let updated = self
            .store()
            .update_environment(tenant, name, changes, declared, by)
            .await?;
        // Another server may have deleted it since this one last read the rows.
        self.reload_environments().await?;
        match updated {
            None => Err(EngineError::EnvironmentNotFound(name.to_string())),
            Some(_) => self.environment(tenant, name),
        }
    }

    /// Deletes an environment no fraise is configured for and no target group, described
    /// target or active run is in, with its lock, freeze windows, limits and own variables.
    /// Its runs stay in the history.
    pub async fn delete_environment(
        &self,
        tenant: &str,
        name: &str,
        by: &str,
    ) -> Result<(), EngineError> {
        self.environment(tenant, name)?;
        if let Some(reason) = configured_for(&self.config(), tenant, name) {
            return Err(EngineError::EnvironmentInUse {
                name: name.to_string(),
                reason,
            });
        }
        let deleted = self.store().delete_environment(tenant, name, by).await;
        // Also when another server deleted it first: this one's view catches up now.
        self.reload_environments().await?;
        match deleted? {
            EnvironmentDeleted::Done => Ok(()),
            EnvironmentDeleted::InUse(why) => Err(EngineError::EnvironmentInUse {
                name: name.to_string(),
                reason: format!("{why}; delete or finish those first"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn record(name: &str, settings: EnvironmentSettings, deleted: bool) -> EnvironmentRecord {
        EnvironmentRecord {
            tenant_id: "default".into(),
            name: name.into(),
            settings,
            deleted_at: deleted.then(Utc::now),
            created_at: Utc::now(),
            created_by: "alice".into(),
            updated_at: Utc::now(),
            updated_by: "alice".into(),
        }
    }

    #[test]
    fn the_api_holds_over_the_file_and_a_used_environment_stays() {
        let declared = Config::parse(
            "environments:\n  staging: {}\n  production: { required_approvals: 1 }\n  old: {}\n\
             fraises:\n  app:\n    command: x\n    environments:\n      production: { port: 9100 }\n      staging: { port: 9101 }\n",
        )
        .unwrap();
        let approvals = EnvironmentSettings {
            required_approvals: Some(2),
            ..EnvironmentSettings::default()
        };
        let made = EnvironmentSettings {
            display_name: Some("QA".into()),
            ..EnvironmentSettings::default()
        };
        let records = [
            record("production", approvals, false),
            record("qa", made, false),
            record("old", EnvironmentSettings::default(), true),
            // Deleted, but the file's fraise is configured for it: it stays.
            record("staging", EnvironmentSettings::default(), true),
        ];
        let (merged, overridden) = merge(&declared, &records);
        let envs = &merged.scope("default").environments;
        assert_eq!(envs["production"].required_approvals, 2);
        assert_eq!(envs["qa"].display_name.as_deref(), Some("QA"));
        assert_eq!(envs["qa"].order(), 2);
        assert!(!envs.contains_key("old"));
        assert!(envs.contains_key("staging"));
        assert_eq!(
            overridden
                .iter()
                .map(|o| (o.environment.as_str(), o.fields.clone(), o.deleted))
                .collect::<Vec<_>>(),
            [
                ("production", vec!["required_approvals"], false),
                ("old", vec![], true)
            ]
        );
    }
}
