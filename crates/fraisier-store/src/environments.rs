//! Environments as the API left them: the settings it set on each (over what fraisier.yaml
//! declares, or alone for one the file does not declare), and the ones it deleted, kept so
//! that a restart does not bring a declared one back.

use chrono::{DateTime, Utc};
use fraisier_model::environment::EnvironmentSettings;
use sqlx::any::AnyRow;
use sqlx::postgres::PgListener;
use sqlx::Row;

use crate::sql::{count, json, json_text, millis, now, ts, ts_opt, ACTIVE_STATUSES};
use crate::store::{Backend, WriteTx};
use crate::turns::Priority;
use crate::{Result, Store, StoreError};

/// One environment's row.
#[derive(Clone, Debug, PartialEq)]
pub struct EnvironmentRecord {
    pub tenant_id: String,
    pub name: String,
    /// The fields the API set; applied over the file's declaration.
    pub settings: EnvironmentSettings,
    /// When the API deleted it; it stays deleted until created again.
    pub deleted_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

/// Mixed into the hash of an environment's name for its advisory lock, apart from other
/// advisory locks on hashed text.
const PG_ENVIRONMENT_LOCK_SEED: i64 = 0x656e_7669_726f; // "enviro"

const COLUMNS: &str =
    "tenant_id, name, settings, deleted_at, created_at, created_by, updated_at, updated_by";

// === impl Store ===

impl Store {
    /// Every workspace's environment rows, by workspace and name.
    pub async fn environment_records(&self) -> Result<Vec<EnvironmentRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM environments ORDER BY tenant_id, name"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record_from_row).collect()
    }

    /// One workspace's environment rows, by name.
    pub async fn environment_records_of(&self, tenant: &str) -> Result<Vec<EnvironmentRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM environments WHERE tenant_id = $1 ORDER BY name"
        ))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record_from_row).collect()
    }

    pub async fn environment_record(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<EnvironmentRecord>> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM environments WHERE tenant_id = $1 AND name = $2"
        ))
        .bind(tenant)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| record_from_row(&r))
        .transpose()
    }

    /// Creates an environment with the fields the API set. `declared`: fraisier.yaml
    /// declares one of that name, so only a deletion through the API left room for it.
    /// Checked and written in one transaction, so two servers cannot both create it.
    pub async fn create_environment(
        &self,
        tenant: &str,
        name: &str,
        settings: &EnvironmentSettings,
        declared: bool,
        by: &str,
    ) -> Result<Created> {
        let mut tx = self.begin_write_as(Priority::Interactive).await?;
        let at = millis(now());
        let row = sqlx::query(&format!(
            "SELECT deleted_at FROM environments WHERE tenant_id = $1 AND name = $2{}",
            self.row_lock()
        ))
        .bind(tenant)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let deleted = row
            .map(|r| r.try_get::<Option<i64>, _>("deleted_at"))
            .transpose()?;
        let written = match deleted {
            Some(None) => return Ok(Created::Exists),
            None if declared => return Ok(Created::Exists),
            Some(Some(_)) => {
                sqlx::query(
                    "UPDATE environments SET settings = $1, deleted_at = NULL, created_at = $2, \
                     created_by = $3, updated_at = $2, updated_by = $3 WHERE tenant_id = $4 AND name = $5",
                )
                .bind(json_text(settings))
                .bind(at)
                .bind(by)
                .bind(tenant)
                .bind(name)
                .execute(&mut *tx)
                .await
            }
            None => insert_row(&mut tx, tenant, name, settings, None, at, by).await,
        };
        match written.map_err(crate::StoreError::from) {
            Err(e) if crate::sql::is_unique_violation(&e) => return Ok(Created::Exists),
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        self.tell_environments_changed(&mut tx).await?;
        tx.commit().await?;
        Ok(Created::Made(Box::new(
            self.environment_record(tenant, name)
                .await?
                .expect("just written"),
        )))
    }

    /// Sets the fields `changes` sets over those the API set before, in one transaction (two
    /// changes of different fields both hold). `None` when there is no such environment:
    /// deleted through the API, or neither written nor `declared` by the file.
    pub async fn update_environment(
        &self,
        tenant: &str,
        name: &str,
        changes: &EnvironmentSettings,
        declared: bool,
        by: &str,
    ) -> Result<Option<EnvironmentRecord>> {
        // Two first changes of a declared environment both find no row to lock and both
        // insert one: the second, told so, goes again and finds the first's.
        match self
            .update_environment_once(tenant, name, changes, declared, by)
            .await
        {
            Err(e) if crate::sql::is_unique_violation(&e) => {
                self.update_environment_once(tenant, name, changes, declared, by)
                    .await
            }
            done => done,
        }
    }

    async fn update_environment_once(
        &self,
        tenant: &str,
        name: &str,
        changes: &EnvironmentSettings,
        declared: bool,
        by: &str,
    ) -> Result<Option<EnvironmentRecord>> {
        let mut tx = self.begin_write_as(Priority::Interactive).await?;
        let at = millis(now());
        let row = sqlx::query(&format!(
            "SELECT settings, deleted_at FROM environments WHERE tenant_id = $1 AND name = $2{}",
            self.row_lock()
        ))
        .bind(tenant)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        match row {
            Some(row) => {
                if row.try_get::<Option<i64>, _>("deleted_at")?.is_some() {
                    return Ok(None);
                }
                let mut settings: EnvironmentSettings = json(&row, "settings")?;
                settings.merge(changes);
                sqlx::query(
                    "UPDATE environments SET settings = $1, updated_at = $2, updated_by = $3 \
                     WHERE tenant_id = $4 AND name = $5",
                )
                .bind(json_text(&settings))
                .bind(at)
                .bind(by)
                .bind(tenant)
                .bind(name)
                .execute(&mut *tx)
                .await?;
            }
            None if !declared => return Ok(None),
            None => {
                insert_row(&mut tx, tenant, name, changes, None, at, by).await?;
            }
        }
        self.tell_environments_changed(&mut tx).await?;
        tx.commit().await?;
        self.environment_record(tenant, name).await
    }

    /// Deletes an environment no target group or described target is in and no run is active
    /// in — checked in the same transaction as the deletion — and drops what only it had: its
    /// lock, freeze windows, limits and own variables. Its runs stay in the history.
    /// (Whether a fraise of fraisier.yaml is configured for it is the engine's to check.)
    pub async fn delete_environment(&self, tenant: &str, name: &str, by: &str) -> Result<Deleted> {
        match self.delete_environment_once(tenant, name, by).await {
            Err(e) if crate::sql::is_unique_violation(&e) => {
                self.delete_environment_once(tenant, name, by).await
            }
            done => done,
        }
    }

    async fn delete_environment_once(&self, tenant: &str, name: &str, by: &str) -> Result<Deleted> {
        let mut tx = self.begin_write_as(Priority::Interactive).await?;
        let at = millis(now());
        // A target or group being put in it waits for the outcome, and sees it.
        self.hold_environment(&mut tx, tenant, name).await?;
        // Then its row, on PostgreSQL, so a concurrent create or update waits for the outcome.
        sqlx::query(&format!(
            "SELECT name FROM environments WHERE tenant_id = $1 AND name = $2{}",
            self.row_lock()
        ))
        .bind(tenant)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        for (what, query) in [
            (
                "target group(s)",
                "SELECT COUNT(*) AS n FROM target_groups WHERE workspace = $1 AND environment = $2",
            ),
            (
                "described target(s)",
                "SELECT COUNT(*) AS n FROM targets WHERE workspace = $1 AND environment = $2",
            ),
            (
                "active run(s)",
                &*format!(
                    "SELECT COUNT(*) AS n FROM runs WHERE tenant_id = $1 AND environment = $2 \
                     AND status IN {ACTIVE_STATUSES}"
                ),
            ),
        ] {
            let row = sqlx::query(query)
                .bind(tenant)
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
            let n = count(&row, "n")?;
            if n > 0 {
                return Ok(Deleted::InUse(format!("it has {n} {what}")));
            }
        }
        let updated = sqlx::query(
            "UPDATE environments SET settings = $1, deleted_at = $2, updated_at = $2, updated_by = $3 \
             WHERE tenant_id = $4 AND name = $5",
        )
        .bind(json_text(&EnvironmentSettings::default()))
        .bind(at)
        .bind(by)
        .bind(tenant)
        .bind(name)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            let none = EnvironmentSettings::default();
            insert_row(&mut tx, tenant, name, &none, Some(at), at, by).await?;
        }
        for table in ["environment_locks", "freeze_windows", "environment_limits"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE tenant_id = $1 AND environment = $2"
            ))
            .bind(tenant)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        }
        // The environment's own variables (fraise ""): those of fraises there belong to them.
        sqlx::query(
            "DELETE FROM variables WHERE tenant_id = $1 AND fraise = '' AND environment = $2",
        )
        .bind(tenant)
        .bind(name)
        .execute(&mut *tx)
        .await?;
        self.tell_environments_changed(&mut tx).await?;
        tx.commit().await?;
        Ok(Deleted::Done)
    }

    /// Tells the other servers on the database, once `tx` commits, that an environment row
    /// changed (PostgreSQL's `NOTIFY` is sent at commit and dropped at rollback). SQLite
    /// has no other servers.
    async fn tell_environments_changed(&self, tx: &mut WriteTx) -> Result<()> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(ENVIRONMENTS_CHANNEL)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// What tells this server that another changed an environment: `None` on SQLite, where
    /// there is no other. Needs a connection of its own, kept open while it is held.
    pub async fn watch_environments(&self) -> Result<Option<EnvironmentWatch>> {
        let Some(url) = &self.listen_url else {
            return Ok(None);
        };
        let mut listener = PgListener::connect(url).await?;
        listener.listen(ENVIRONMENTS_CHANNEL).await?;
        Ok(Some(EnvironmentWatch { listener }))
    }

    /// Keeps the environment from being deleted, or from being put things in while it is
    /// deleted, until `tx` ends — and answers `EnvironmentGone` once it is deleted. Its row
    /// cannot be the lock: an environment fraisier.yaml declares has none until it is changed
    /// or deleted through the API. So on PostgreSQL a transaction-scoped advisory lock on its
    /// name is; SQLite's write transaction is exclusive already. A name with no row (declared
    /// in fraisier.yaml, which the caller checked) is not deleted.
    pub(crate) async fn hold_environment(
        &self,
        tx: &mut WriteTx,
        tenant: &str,
        name: &str,
    ) -> Result<()> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, $2))")
                .bind(format!("{tenant}/{name}"))
                .bind(PG_ENVIRONMENT_LOCK_SEED)
                .execute(&mut **tx)
                .await?;
        }
        let deleted =
            sqlx::query("SELECT deleted_at FROM environments WHERE tenant_id = $1 AND name = $2")
                .bind(tenant)
                .bind(name)
                .fetch_optional(&mut **tx)
                .await?
                .map(|r| r.try_get::<Option<i64>, _>("deleted_at"))
                .transpose()?
                .flatten()
                .is_some();
        if deleted {
            return Err(StoreError::EnvironmentGone(name.to_string()));
        }
        Ok(())
    }

    /// Locks the row read in a write transaction on PostgreSQL; SQLite's write transaction is
    /// exclusive already.
    fn row_lock(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        }
    }
}

/// The channel environment changes are told on (PostgreSQL `LISTEN`/`NOTIFY`).
const ENVIRONMENTS_CHANNEL: &str = "fraisier_environments";

/// A connection listening for environment changes other servers commit.
pub struct EnvironmentWatch {
    listener: PgListener,
}

impl EnvironmentWatch {
    /// Returns when an environment may have changed: one was written, or the connection was
    /// lost and sqlx has made it again and listens anew (what was told meanwhile is lost, so
    /// the caller rereads either way). An error when it could not be made again.
    pub async fn changed(&mut self) -> Result<()> {
        self.listener.try_recv().await?;
        Ok(())
    }
}

impl std::fmt::Debug for EnvironmentWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvironmentWatch")
            .field("channel", &ENVIRONMENTS_CHANNEL)
            .finish_non_exhaustive()
    }
}

/// What creating an environment did.
#[derive(Clone, Debug, PartialEq)]
pub enum Created {
    Made(Box<EnvironmentRecord>),
    /// One of that name is there (written, or declared and never deleted).
    Exists,
}

/// What deleting an environment did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deleted {
    Done,
    /// Refused: why.
    InUse(String),
}

/// An environment's first row: made at `at` by `by`, deleted then too with `deleted_at`.
async fn insert_row(
    tx: &mut WriteTx,
    tenant: &str,
    name: &str,
    settings: &EnvironmentSettings,
    deleted_at: Option<i64>,
    at: i64,
    by: &str,
) -> std::result::Result<sqlx::any::AnyQueryResult, sqlx::Error> {
    sqlx::query(
        "INSERT INTO environments (tenant_id, name, settings, deleted_at, created_at, \
         created_by, updated_at, updated_by) VALUES ($1, $2, $3, $4, $5, $6, $5, $6)",
    )
    .bind(tenant)
    .bind(name)
    .bind(json_text(settings))
    .bind(deleted_at)
    .bind(at)
    .bind(by)
    .execute(&mut **tx)
    .await
}

fn record_from_row(row: &AnyRow) -> Result<EnvironmentRecord> {
    Ok(EnvironmentRecord {
        tenant_id: row.try_get("tenant_id")?,
        name: row.try_get("name")?,
        settings: json(row, "settings")?,
        deleted_at: ts_opt(row, "deleted_at")?,
        created_at: ts(row, "created_at")?,
        created_by: row.try_get("created_by")?,
        updated_at: ts(row, "updated_at")?,
        updated_by: row.try_get("updated_by")?,
    })
}
