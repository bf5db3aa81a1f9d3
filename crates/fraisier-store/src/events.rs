//! Events (`deployment.started`, `traffic.shifted`, …) of runs and of service deployments, in
//! the order they happened; adding one counts it on its run. Each is also an outbox entry:
//! published to NATS JetStream (when the server has one) and marked so.

use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::sql::{json, json_text, millis, now, ts};
use crate::store::WriteTx;
use crate::{Event, Result, Store, StoreError};

const EVENT_COLUMNS: &str =
    "id, tenant_id, run_id, fraise, environment, event_type, data, created_at";

// === impl Store ===

impl Store {
    /// Records an event and, when it belongs to a run, counts it in the run's `events_count`
    /// in the same transaction. A run unknown to `tenant` is `NotFound`.
    pub async fn add_event(
        &self,
        tenant: &str,
        run_id: Option<i64>,
        fraise: &str,
        environment: &str,
        event_type: &str,
        data: &Value,
    ) -> Result<Event> {
        let mut tx = self.begin_write().await?;
        let event = self
            .insert_event(
                &mut tx,
                tenant,
                run_id,
                fraise,
                environment,
                event_type,
                data,
            )
            .await?;
        tx.commit().await?;
        Ok(event)
    }

    /// [`Store::add_event`] within a transaction of the caller's.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn insert_event(
        &self,
        tx: &mut WriteTx,
        tenant: &str,
        run_id: Option<i64>,
        fraise: &str,
        environment: &str,
        event_type: &str,
        data: &Value,
    ) -> Result<Event> {
        if let Some(run_id) = run_id {
            let done = sqlx::query(
                "UPDATE runs SET events_count = events_count + 1 WHERE tenant_id = $1 AND id = $2",
            )
            .bind(tenant)
            .bind(run_id)
            .execute(&mut **tx)
            .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound);
            }
        }
        let row = sqlx::query(&format!(
            "INSERT INTO events (tenant_id, run_id, fraise, environment, event_type, data, created_at, published_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {EVENT_COLUMNS}"
        ))
        .bind(tenant)
        .bind(run_id)
        .bind(fraise)
        .bind(environment)
        .bind(event_type)
        .bind(json_text(data))
        .bind(millis(now()))
        // Without a bus, never to be sent: the outbox holds only what a bus will take.
        .bind(
            (!self.roles.outbox.load(std::sync::atomic::Ordering::Relaxed)).then_some(0_i64),
        )
        .fetch_one(&mut **tx)
        .await?;
        event_from_row(&row)
    }

    /// The run's events, oldest first; with `after_id`, only those after it (for following).
    pub async fn events(&self, run_id: i64, after_id: Option<i64>) -> Result<Vec<Event>> {
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE run_id = $1 AND id > $2 ORDER BY id"
        ))
        .bind(run_id)
        .bind(after_id.unwrap_or(0))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    /// The newest `limit` events of a fraise in an environment (0: all), oldest first.
    pub async fn service_events(
        &self,
        tenant: &str,
        fraise: &str,
        environment: &str,
        limit: u32,
    ) -> Result<Vec<Event>> {
        let limit = if limit == 0 {
            i64::MAX
        } else {
            i64::from(limit)
        };
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events \
             WHERE tenant_id = $1 AND fraise = $2 AND environment = $3 ORDER BY id DESC LIMIT $4"
        ))
        .bind(tenant)
        .bind(fraise)
        .bind(environment)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut events = rows
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>>>()?;
        events.reverse();
        Ok(events)
    }
}

impl Store {
    /// Events not yet published to the event bus, oldest first.
    pub async fn unpublished_events(&self, limit: u32) -> Result<Vec<Event>> {
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE published_at IS NULL ORDER BY id LIMIT $1"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    /// Marks events as published (acknowledged by the bus).
    pub async fn mark_published(&self, ids: &[i64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut args = crate::sql::Args::default();
        let list: Vec<String> = ids.iter().map(|id| args.push(*id)).collect();
        let at = args.push(millis(now()));
        let turn = self.turn(crate::turns::Priority::Background).await;
        let done = args
            .bind(sqlx::query(&format!(
                "UPDATE events SET published_at = {at} WHERE id IN ({}) AND published_at IS NULL",
                list.join(", ")
            )))
            .execute(&self.writer)
            .await;
        drop(turn);
        done?;
        Ok(())
    }

    /// Events of an environment the bus has acknowledged.
    pub async fn published_events(&self, tenant: &str, environment: &str) -> Result<u64> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM events \
             WHERE tenant_id = $1 AND environment = $2 AND published_at > 0",
        )
        .bind(tenant)
        .bind(environment)
        .fetch_one(&self.pool)
        .await?;
        crate::sql::count(&row, "n")
    }
}

fn event_from_row(row: &AnyRow) -> Result<Event> {
    Ok(Event {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        run_id: row.try_get("run_id")?,
        fraise: row.try_get("fraise")?,
        environment: row.try_get("environment")?,
        event_type: row.try_get("event_type")?,
        data: json(row, "data")?,
        timestamp: ts(row, "created_at")?,
    })
}
