//! The notification outbox: each announcement of a run's event, due, sent or given up on,
//! with every attempt made to send it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::sql::{json, json_text, millis, now, ts, Args};
use crate::turns::Priority;
use crate::{Result, Store};

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NewNotification {
    pub tenant_id: String,
    pub run_id: Option<i64>,
    pub fraise: String,
    pub environment: String,
    /// `started`, `succeeded`, `failed`, `rolled_back`, `approval_requested`.
    pub event: String,
    /// `webhook`, `slack`, `discord`, `teams`.
    pub kind: String,
    /// Where it is configured: `global`, `environment` or `fraise`…
    pub scope: String,
    /// …and its index in that list.
    pub position: i64,
    /// The destination as shown: its scheme and host only.
    pub target: String,
    /// A digest of the whole destination, so that a notification reaches only the destination
    /// it was written for even when the configuration is reordered; `None` in rows written
    /// before it was kept.
    pub fingerprint: Option<String>,
    pub payload: Value,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Attempt {
    pub attempt: i64,
    pub at: DateTime<Utc>,
    pub status_code: Option<i64>,
    pub error: Option<String>,
    pub duration_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Notification {
    pub id: i64,
    #[serde(flatten)]
    pub new: NewNotification,
    /// `pending`, `sent` or `failed`.
    pub status: String,
    /// How many attempts were made.
    pub attempt_count: i64,
    /// Each of them (filled by `notifications`, not by `due_notifications`).
    pub attempts: Vec<Attempt>,
    pub next_attempt_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Default)]
pub struct NotificationFilter {
    pub status: Option<String>,
    pub event: Option<String>,
    pub fraise: Option<String>,
    pub limit: u32,
    pub offset: u64,
}

const COLUMNS: &str = "id, tenant_id, run_id, fraise, environment, event, kind, scope, position, \
    target, fingerprint, payload, status, attempts, next_attempt_at, created_at";

// === impl Store ===

impl Store {
    pub async fn enqueue_notification(&self, n: &NewNotification) -> Result<i64> {
        let at = millis(now());
        let turn = self.turn(Priority::Background).await;
        let row = sqlx::query(
            "INSERT INTO notifications (tenant_id, run_id, fraise, environment, event, kind, scope, \
             position, target, payload, status, attempts, next_attempt_at, created_at, updated_at, fingerprint) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'pending', 0, $11, $11, $11, $12) RETURNING id",
        )
        .bind(&n.tenant_id)
        .bind(n.run_id)
        .bind(&n.fraise)
        .bind(&n.environment)
        .bind(&n.event)
        .bind(&n.kind)
        .bind(&n.scope)
        .bind(n.position)
        .bind(&n.target)
        .bind(json_text(&n.payload))
        .bind(at)
        .bind(&n.fingerprint)
        .fetch_one(&self.writer)
        .await;
        drop(turn);
        Ok(row?.try_get("id")?)
    }

    /// Pending notifications whose time has come, oldest first.
    pub async fn due_notifications(&self, limit: i64) -> Result<Vec<Notification>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM notifications WHERE status = 'pending' AND next_attempt_at <= $1 \
             ORDER BY next_attempt_at, id LIMIT $2"
        ))
        .bind(millis(now()))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Claims a due notification for one attempt: pushes its next attempt to `until`, so no
    /// other sender finds it due meanwhile. Whether this caller got it.
    pub async fn claim_notification(&self, id: i64, until: DateTime<Utc>) -> Result<bool> {
        let at = now();
        let turn = self.turn(Priority::Background).await;
        let done = sqlx::query(
            "UPDATE notifications SET next_attempt_at = $1 \
             WHERE id = $2 AND status = 'pending' AND next_attempt_at <= $3",
        )
        .bind(millis(until))
        .bind(id)
        .bind(millis(at))
        .execute(&self.writer)
        .await;
        drop(turn);
        Ok(done?.rows_affected() == 1)
    }

    /// Records an attempt, and what the notification is now: `sent`, `failed`, or `pending`
    /// again at `next`.
    pub async fn record_attempt(
        &self,
        id: i64,
        attempt: &Attempt,
        status: &str,
        next: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.begin_write_as(Priority::Background).await?;
        sqlx::query(
            "INSERT INTO notification_attempts (notification, attempt, at, status_code, error, duration_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(attempt.attempt)
        .bind(millis(attempt.at))
        .bind(attempt.status_code)
        .bind(&attempt.error)
        .bind(attempt.duration_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE notifications SET status = $2, attempts = $3, next_attempt_at = $4, updated_at = $5 \
             WHERE id = $1",
        )
        .bind(id)
        .bind(status)
        .bind(attempt.attempt)
        .bind(millis(next))
        .bind(millis(now()))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A page of a workspace's notifications, newest first, with their attempts.
    pub async fn notifications(
        &self,
        tenant: &str,
        f: &NotificationFilter,
    ) -> Result<(Vec<Notification>, u64)> {
        let mut args = Args::default();
        let mut clauses = vec![format!("tenant_id = {}", args.push(tenant))];
        if let Some(s) = &f.status {
            clauses.push(format!("status = {}", args.push(s.as_str())));
        }
        if let Some(e) = &f.event {
            clauses.push(format!("event = {}", args.push(e.as_str())));
        }
        if let Some(x) = &f.fraise {
            clauses.push(format!("fraise = {}", args.push(x.as_str())));
        }
        let filter = clauses.join(" AND ");
        let (rows, total) = self
            .newest_page("notifications", COLUMNS, &filter, args, f.limit, f.offset)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut n = from_row(row)?;
            let attempts = sqlx::query(
                "SELECT attempt, at, status_code, error, duration_ms FROM notification_attempts \
                 WHERE notification = $1 ORDER BY attempt",
            )
            .bind(n.id)
            .fetch_all(&self.pool)
            .await?;
            for a in &attempts {
                n.attempts.push(Attempt {
                    attempt: a.try_get("attempt")?,
                    at: ts(a, "at")?,
                    status_code: a.try_get("status_code")?,
                    error: a.try_get("error")?,
                    duration_ms: a.try_get("duration_ms")?,
                });
            }
            out.push(n);
        }
        Ok((out, total))
    }
}

fn from_row(row: &AnyRow) -> Result<Notification> {
    Ok(Notification {
        id: row.try_get("id")?,
        new: NewNotification {
            tenant_id: row.try_get("tenant_id")?,
            run_id: row.try_get("run_id")?,
            fraise: row.try_get("fraise")?,
            environment: row.try_get("environment")?,
            event: row.try_get("event")?,
            kind: row.try_get("kind")?,
            scope: row.try_get("scope")?,
            position: row.try_get("position")?,
            target: row.try_get("target")?,
            fingerprint: row.try_get("fingerprint")?,
            payload: json(row, "payload")?,
        },
        status: row.try_get("status")?,
        attempt_count: row.try_get("attempts")?,
        attempts: Vec::new(),
        next_attempt_at: ts(row, "next_attempt_at")?,
        created_at: ts(row, "created_at")?,
    })
}
