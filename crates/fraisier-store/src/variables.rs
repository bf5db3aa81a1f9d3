//! A service deployment's variables set through the API: plain ones, and secrets kept only
//! sealed (the store never sees a secret's plaintext).

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::sql::{millis, now, ts};
use crate::turns::Priority;
use crate::{Result, Store, StoreError};

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Variable {
    pub name: String,
    pub secret: bool,
    /// The value; for a secret, its sealed form (JSON).
    pub value: String,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

/// A secret variable anywhere, for re-sealing under a new key.
#[derive(Clone, Debug, PartialEq)]
pub struct SecretSlot {
    pub tenant_id: String,
    pub fraise: String,
    pub environment: String,
    pub name: String,
    pub value: String,
}

// === impl Store ===

impl Store {
    /// The variables of a fraise in an environment, by name.
    pub async fn variables(
        &self,
        tenant: &str,
        fraise: &str,
        environment: &str,
    ) -> Result<Vec<Variable>> {
        let rows = sqlx::query(
            "SELECT name, secret, value, updated_at, updated_by FROM variables \
             WHERE tenant_id = $1 AND fraise = $2 AND environment = $3 ORDER BY name",
        )
        .bind(tenant)
        .bind(fraise)
        .bind(environment)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(variable_from_row).collect()
    }

    /// Sets (`Some`) or removes (`None`) variables of one kind, all or none. A name held by a
    /// variable of the other kind is `AlreadyExists(name)`. Returns the names that changed.
    pub async fn change_variables(
        &self,
        tenant: &str,
        fraise: &str,
        environment: &str,
        secret: bool,
        changes: &[(String, Option<String>)],
        by: &str,
    ) -> Result<Vec<String>> {
        let mut tx = self.begin_write_as(Priority::Interactive).await?;
        // The environment's own variables go with it when it is deleted.
        if fraise.is_empty() {
            self.hold_environment(&mut tx, tenant, environment).await?;
        }
        let at = millis(now());
        let mut changed = Vec::new();
        for (name, value) in changes {
            let existing = sqlx::query(
                "SELECT secret, value FROM variables \
                 WHERE tenant_id = $1 AND fraise = $2 AND environment = $3 AND name = $4",
            )
            .bind(tenant)
            .bind(fraise)
            .bind(environment)
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = &existing {
                let kind: i64 = row.try_get("secret")?;
                if (kind != 0) != secret {
                    return Err(StoreError::AlreadyExists(name.clone()));
                }
            }
            match value {
                Some(v) => {
                    let same = match &existing {
                        Some(row) => {
                            let old: String = row.try_get("value")?;
                            !secret && old == *v
                        }
                        None => false,
                    };
                    if same {
                        continue;
                    }
                    sqlx::query(
                        "INSERT INTO variables (tenant_id, fraise, environment, name, secret, value, updated_at, updated_by) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                         ON CONFLICT (tenant_id, fraise, environment, name) DO UPDATE SET \
                         value = excluded.value, updated_at = excluded.updated_at, updated_by = excluded.updated_by",
                    )
                    .bind(tenant)
                    .bind(fraise)
                    .bind(environment)
                    .bind(name)
                    .bind(i64::from(secret))
                    .bind(v)
                    .bind(at)
                    .bind(by)
                    .execute(&mut *tx)
                    .await?;
                    changed.push(name.clone());
                }
                None => {
                    if existing.is_none() {
                        continue;
                    }
                    sqlx::query(
                        "DELETE FROM variables \
                         WHERE tenant_id = $1 AND fraise = $2 AND environment = $3 AND name = $4",
                    )
                    .bind(tenant)
                    .bind(fraise)
                    .bind(environment)
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                    changed.push(name.clone());
                }
            }
        }
        tx.commit().await?;
        Ok(changed)
    }

    /// Puts variables back as they were (`None`: absent), with who set them and when; for a
    /// change whose release failed.
    pub async fn restore_variables(
        &self,
        tenant: &str,
        fraise: &str,
        environment: &str,
        prior: &[(String, Option<Variable>)],
    ) -> Result<()> {
        let mut tx = self.begin_write_as(Priority::Interactive).await?;
        for (name, before) in prior {
            sqlx::query(
                "DELETE FROM variables \
                 WHERE tenant_id = $1 AND fraise = $2 AND environment = $3 AND name = $4",
            )
            .bind(tenant)
            .bind(fraise)
            .bind(environment)
            .bind(name)
            .execute(&mut *tx)
            .await?;
            if let Some(v) = before {
                sqlx::query(
                    "INSERT INTO variables (tenant_id, fraise, environment, name, secret, value, updated_at, updated_by) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(tenant)
                .bind(fraise)
                .bind(environment)
                .bind(name)
                .bind(i64::from(v.secret))
                .bind(&v.value)
                .bind(millis(v.updated_at))
                .bind(&v.updated_by)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await
    }

    /// Every secret, in every workspace.
    pub async fn secret_slots(&self) -> Result<Vec<SecretSlot>> {
        let rows = sqlx::query(
            "SELECT tenant_id, fraise, environment, name, value FROM variables WHERE secret = 1",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SecretSlot {
                    tenant_id: r.try_get("tenant_id")?,
                    fraise: r.try_get("fraise")?,
                    environment: r.try_get("environment")?,
                    name: r.try_get("name")?,
                    value: r.try_get("value")?,
                })
            })
            .collect()
    }

    /// Replaces sealed values (after a key rotation), all or none; `updated_*` stay.
    pub async fn reseal(&self, slots: &[SecretSlot]) -> Result<()> {
        let mut tx = self.begin_write_as(Priority::Interactive).await?;
        for s in slots {
            sqlx::query(
                "UPDATE variables SET value = $5 \
                 WHERE tenant_id = $1 AND fraise = $2 AND environment = $3 AND name = $4 AND secret = 1",
            )
            .bind(&s.tenant_id)
            .bind(&s.fraise)
            .bind(&s.environment)
            .bind(&s.name)
            .bind(&s.value)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }
}

fn variable_from_row(row: &AnyRow) -> Result<Variable> {
    let secret: i64 = row.try_get("secret")?;
    Ok(Variable {
        name: row.try_get("name")?,
        secret: secret != 0,
        value: row.try_get("value")?,
        updated_at: ts(row, "updated_at")?,
        updated_by: row.try_get("updated_by")?,
    })
}
