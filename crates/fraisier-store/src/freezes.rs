//! What keeps deploys out of an environment: a lock someone holds (until they unlock it),
//! freeze windows (from a start to an end, with the users still let in), and its limits (how
//! many instances it may run).

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::AnyConnection;
use sqlx::Row;

use crate::sql::{json, json_text, millis, now, ts};
use crate::turns::Priority;
use crate::{Result, Store};

#[derive(Clone, Debug, PartialEq)]
pub struct EnvironmentLock {
    pub environment: String,
    pub locked_by: String,
    pub reason: Option<String>,
    pub locked_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FreezeWindow {
    pub id: i64,
    pub environment: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub reason: Option<String>,
    /// Users who may still deploy while it is active.
    pub exceptions: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
}

impl FreezeWindow {
    pub fn active_at(&self, t: DateTime<Utc>) -> bool {
        self.starts_at <= t && t < self.ends_at
    }
}

/// A window to record.
#[derive(Clone, Debug)]
pub struct NewFreezeWindow {
    pub tenant_id: String,
    pub environment: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub reason: Option<String>,
    pub exceptions: Vec<String>,
    pub created_by: String,
}

/// How much an environment may run, as set through the API.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EnvironmentLimits {
    /// Instances of all its fraises together; `None`: no limit.
    pub max_instances: Option<u64>,
    pub updated_by: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
}

/// An environment's lock, by workspace and environment.
const LOCK_QUERY: &str = "SELECT environment, locked_by, reason, locked_at FROM environment_locks \
     WHERE tenant_id = $1 AND environment = $2";
const WINDOW_COLUMNS: &str =
    "id, environment, starts_at, ends_at, reason, exceptions, created_at, created_by";

/// What keeps a change out of an environment.
#[derive(Clone, Debug, PartialEq)]
pub enum Barrier {
    Locked(EnvironmentLock),
    Frozen(FreezeWindow),
}

// === impl Store ===

impl Store {
    /// Locks an environment; `Err(existing)` when someone already holds its lock.
    pub async fn lock_environment(
        &self,
        tenant: &str,
        environment: &str,
        by: &str,
        reason: Option<&str>,
    ) -> Result<std::result::Result<EnvironmentLock, EnvironmentLock>> {
        let mut tx = self.begin_write_as(Priority::Interactive).await?;
        self.hold_environment(&mut tx, tenant, environment).await?;
        if let Some(row) = sqlx::query(LOCK_QUERY)
            .bind(tenant)
            .bind(environment)
            .fetch_optional(&mut *tx)
            .await?
        {
            return Ok(Err(lock_from_row(&row)?));
        }
        sqlx::query(
            "INSERT INTO environment_locks (tenant_id, environment, locked_by, reason, locked_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(tenant)
        .bind(environment)
        .bind(by)
        .bind(reason)
        .bind(millis(now()))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(self
            .environment_lock(tenant, environment)
            .await?
            .expect("just written")))
    }

    /// Removes an environment's lock; the lock it had, if any.
    pub async fn unlock_environment(
        &self,
        tenant: &str,
        environment: &str,
    ) -> Result<Option<EnvironmentLock>> {
        let held = self.environment_lock(tenant, environment).await?;
        let turn = self.turn(Priority::Interactive).await;
        let done =
            sqlx::query("DELETE FROM environment_locks WHERE tenant_id = $1 AND environment = $2")
                .bind(tenant)
                .bind(environment)
                .execute(&self.writer)
                .await;
        drop(turn);
        done?;
        Ok(held)
    }

    pub async fn environment_lock(
        &self,
        tenant: &str,
        environment: &str,
    ) -> Result<Option<EnvironmentLock>> {
        sqlx::query(LOCK_QUERY)
            .bind(tenant)
            .bind(environment)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| lock_from_row(&r))
            .transpose()
    }

    /// What keeps a change by `who` out of an environment now, if anything: its lock, or an
    /// active freeze window that does not name `who` among its exceptions.
    pub async fn barrier(
        &self,
        tenant: &str,
        environment: &str,
        who: &str,
    ) -> Result<Option<Barrier>> {
        let mut conn = self.pool.acquire().await?;
        barrier_in(&mut conn, tenant, environment, who).await
    }

    pub async fn add_freeze_window(&self, w: &NewFreezeWindow) -> Result<FreezeWindow> {
        let mut tx = self.begin_write_as(Priority::Interactive).await?;
        self.hold_environment(&mut tx, &w.tenant_id, &w.environment)
            .await?;
        let row = sqlx::query(&format!(
            "INSERT INTO freeze_windows (tenant_id, environment, starts_at, ends_at, reason, exceptions, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {WINDOW_COLUMNS}"
        ))
        .bind(&w.tenant_id)
        .bind(&w.environment)
        .bind(millis(w.starts_at))
        .bind(millis(w.ends_at))
        .bind(&w.reason)
        .bind(json_text(&w.exceptions))
        .bind(millis(now()))
        .bind(&w.created_by)
        .fetch_one(&mut *tx)
        .await?;
        let window = window_from_row(&row)?;
        tx.commit().await?;
        Ok(window)
    }

    /// An environment's windows not over yet, by start; with `active_at`, only those active
    /// then.
    pub async fn freeze_windows(
        &self,
        tenant: &str,
        environment: &str,
        active_at: Option<DateTime<Utc>>,
    ) -> Result<Vec<FreezeWindow>> {
        let rows = sqlx::query(&format!(
            "SELECT {WINDOW_COLUMNS} FROM freeze_windows \
             WHERE tenant_id = $1 AND environment = $2 AND ends_at > $3 ORDER BY starts_at, id"
        ))
        .bind(tenant)
        .bind(environment)
        .bind(millis(now()))
        .fetch_all(&self.pool)
        .await?;
        let all: Vec<FreezeWindow> = rows.iter().map(window_from_row).collect::<Result<_>>()?;
        Ok(match active_at {
            Some(t) => all.into_iter().filter(|w| w.active_at(t)).collect(),
            None => all,
        })
    }

    /// Removes a window; whether it was there.
    pub async fn delete_freeze_window(
        &self,
        tenant: &str,
        environment: &str,
        id: i64,
    ) -> Result<bool> {
        let turn = self.turn(Priority::Interactive).await;
        let done = sqlx::query(
            "DELETE FROM freeze_windows WHERE tenant_id = $1 AND environment = $2 AND id = $3",
        )
        .bind(tenant)
        .bind(environment)
        .bind(id)
        .execute(&self.writer)
        .await;
        drop(turn);
        Ok(done?.rows_affected() > 0)
    }
}

impl Store {
    /// An environment's limits (none set: the default, no limit).
    pub async fn environment_limits(
        &self,
        tenant: &str,
        environment: &str,
    ) -> Result<EnvironmentLimits> {
        let row = sqlx::query(
            "SELECT max_instances, updated_by, updated_at FROM environment_limits \
             WHERE tenant_id = $1 AND environment = $2",
        )
        .bind(tenant)
        .bind(environment)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(EnvironmentLimits::default());
        };
        let max: Option<i64> = row.try_get("max_instances")?;
        Ok(EnvironmentLimits {
            max_instances: max.map(|m| m.max(0) as u64),
            updated_by: row.try_get("updated_by")?,
            updated_at: Some(ts(&row, "updated_at")?),
        })
    }

    pub async fn set_environment_limits(
        &self,
        tenant: &str,
        environment: &str,
        max_instances: Option<u64>,
        by: &str,
    ) -> Result<EnvironmentLimits> {
        let mut tx = self.begin_write_as(Priority::Interactive).await?;
        self.hold_environment(&mut tx, tenant, environment).await?;
        sqlx::query(
            "INSERT INTO environment_limits (tenant_id, environment, max_instances, updated_by, updated_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, environment) DO UPDATE SET \
             max_instances = excluded.max_instances, updated_by = excluded.updated_by, updated_at = excluded.updated_at",
        )
        .bind(tenant)
        .bind(environment)
        .bind(max_instances.map(|m| m as i64))
        .bind(by)
        .bind(millis(now()))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.environment_limits(tenant, environment).await
    }
}

/// [`Store::barrier`], read on `conn`. In the transaction that records a change, under the
/// environment's hold, it sees every lock and window committed before the change, however
/// long ago its requester looked.
pub(crate) async fn barrier_in(
    conn: &mut AnyConnection,
    tenant: &str,
    environment: &str,
    who: &str,
) -> Result<Option<Barrier>> {
    if let Some(row) = sqlx::query(LOCK_QUERY)
        .bind(tenant)
        .bind(environment)
        .fetch_optional(&mut *conn)
        .await?
    {
        return Ok(Some(Barrier::Locked(lock_from_row(&row)?)));
    }
    let at = now();
    let rows = sqlx::query(&format!(
        "SELECT {WINDOW_COLUMNS} FROM freeze_windows \
         WHERE tenant_id = $1 AND environment = $2 AND starts_at <= $3 AND ends_at > $3 \
         ORDER BY starts_at, id"
    ))
    .bind(tenant)
    .bind(environment)
    .bind(millis(at))
    .fetch_all(&mut *conn)
    .await?;
    for row in &rows {
        let w = window_from_row(row)?;
        if !w.exceptions.iter().any(|e| e == who) {
            return Ok(Some(Barrier::Frozen(w)));
        }
    }
    Ok(None)
}

fn lock_from_row(row: &AnyRow) -> Result<EnvironmentLock> {
    Ok(EnvironmentLock {
        environment: row.try_get("environment")?,
        locked_by: row.try_get("locked_by")?,
        reason: row.try_get("reason")?,
        locked_at: ts(row, "locked_at")?,
    })
}

fn window_from_row(row: &AnyRow) -> Result<FreezeWindow> {
    Ok(FreezeWindow {
        id: row.try_get("id")?,
        environment: row.try_get("environment")?,
        starts_at: ts(row, "starts_at")?,
        ends_at: ts(row, "ends_at")?,
        reason: row.try_get("reason")?,
        exceptions: json(row, "exceptions")?,
        created_at: ts(row, "created_at")?,
        created_by: row.try_get("created_by")?,
    })
}
