//! Service deployments (a fraise in an environment): what runs there now, what ran before, and
//! the desired state last written for the agent.

use fraisier_model::run::to_wire;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::sql::{json_opt, json_text, millis, ts, wire};
use crate::turns::Priority;
use crate::{Result, ServiceRecord, Store};

const SERVICE_COLUMNS: &str = "tenant_id, fraise, environment, current_version, previous_version, \
    state, desired, last_run_id, updated_at";

// === impl Store ===

impl Store {
    pub async fn service(
        &self,
        tenant: &str,
        fraise: &str,
        environment: &str,
    ) -> Result<Option<ServiceRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {SERVICE_COLUMNS} FROM services WHERE tenant_id = $1 AND fraise = $2 AND environment = $3"
        ))
        .bind(tenant)
        .bind(fraise)
        .bind(environment)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(service_from_row).transpose()
    }

    /// Inserts or replaces the record of `rec`'s tenant × fraise × environment, keeping the
    /// `updated_at` it carries.
    pub async fn put_service(&self, rec: &ServiceRecord) -> Result<()> {
        let _turn = self.turn(Priority::Background).await;
        sqlx::query(
            "INSERT INTO services (tenant_id, fraise, environment, current_version, \
             previous_version, state, desired, last_run_id, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (tenant_id, fraise, environment) DO UPDATE SET \
             current_version = excluded.current_version, previous_version = excluded.previous_version, \
             state = excluded.state, desired = excluded.desired, last_run_id = excluded.last_run_id, \
             updated_at = excluded.updated_at",
        )
        .bind(&rec.tenant_id)
        .bind(&rec.fraise)
        .bind(&rec.environment)
        .bind(&rec.current_version)
        .bind(&rec.previous_version)
        .bind(to_wire(&rec.state))
        .bind(rec.desired.as_ref().map(json_text))
        .bind(rec.last_run_id)
        .bind(millis(rec.updated_at))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// The tenant's service deployments, by fraise then environment.
    pub async fn services(&self, tenant: &str) -> Result<Vec<ServiceRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {SERVICE_COLUMNS} FROM services WHERE tenant_id = $1 ORDER BY fraise, environment"
        ))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(service_from_row).collect()
    }

    /// Every tenant's service deployments (for the engine's reconcile after a restart).
    pub async fn all_services(&self) -> Result<Vec<ServiceRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {SERVICE_COLUMNS} FROM services ORDER BY tenant_id, fraise, environment"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(service_from_row).collect()
    }
}

fn service_from_row(row: &AnyRow) -> Result<ServiceRecord> {
    Ok(ServiceRecord {
        tenant_id: row.try_get("tenant_id")?,
        fraise: row.try_get("fraise")?,
        environment: row.try_get("environment")?,
        current_version: row.try_get("current_version")?,
        previous_version: row.try_get("previous_version")?,
        state: wire(row, "state")?,
        desired: json_opt(row, "desired")?,
        last_run_id: row.try_get("last_run_id")?,
        updated_at: ts(row, "updated_at")?,
    })
}
