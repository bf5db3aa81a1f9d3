//! Environments as the API left them: the settings it set on each (over what fraisier.yaml
//! declares, or alone for one the file does not declare), and the ones it deleted, kept so
//! that a restart does not bring a declared one back.

use chrono::{DateTime, Utc};
use fraisier_model::environment::EnvironmentSettings;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::sql::{json, json_text, millis, now, ts, ts_opt};
use crate::turns::Priority;
use crate::{Result, Store};

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

    /// Records an environment's settings, replacing those it had; one that was deleted (or had
    /// no row) is created now, by `by`.
    pub async fn put_environment(
        &self,
        tenant: &str,
        name: &str,
        settings: &EnvironmentSettings,
        by: &str,
    ) -> Result<EnvironmentRecord> {
        let mut tx = self.begin_write_as(Priority::Interactive).await?;
        let at = millis(now());
        let live =
            sqlx::query("SELECT deleted_at FROM environments WHERE tenant_id = $1 AND name = $2")
                .bind(tenant)
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?
                .map(|row| row.try_get::<Option<i64>, _>("deleted_at"))
                .transpose()?;
        match live {
            Some(None) => {
                sqlx::query(
                    "UPDATE environments SET settings = $1, updated_at = $2, updated_by = $3 \
                     WHERE tenant_id = $4 AND name = $5",
                )
                .bind(json_text(settings))
                .bind(at)
                .bind(by)
                .bind(tenant)
                .bind(name)
                .execute(&mut *tx)
                .await?;
            }
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
                .await?;
            }
            None => {
                sqlx::query(
                    "INSERT INTO environments (tenant_id, name, settings, deleted_at, created_at, \
                     created_by, updated_at, updated_by) VALUES ($1, $2, $3, NULL, $4, $5, $4, $5)",
                )
                .bind(tenant)
                .bind(name)
                .bind(json_text(settings))
                .bind(at)
                .bind(by)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(self
            .environment_record(tenant, name)
            .await?
            .expect("just written"))
    }

    /// Marks an environment deleted and, in the same transaction, drops what only it had: its
    /// lock, freeze windows, limits and variables. Its runs stay in the history.
    pub async fn delete_environment(&self, tenant: &str, name: &str, by: &str) -> Result<()> {
        let mut tx = self.begin_write_as(Priority::Interactive).await?;
        let at = millis(now());
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
            sqlx::query(
                "INSERT INTO environments (tenant_id, name, settings, deleted_at, created_at, \
                 created_by, updated_at, updated_by) VALUES ($1, $2, $3, $4, $4, $5, $4, $5)",
            )
            .bind(tenant)
            .bind(name)
            .bind(json_text(&EnvironmentSettings::default()))
            .bind(at)
            .bind(by)
            .execute(&mut *tx)
            .await?;
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
        tx.commit().await?;
        Ok(())
    }
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
