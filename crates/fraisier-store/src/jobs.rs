//! Work that one server at a time does for all the servers on a database — sending
//! notifications, deploying queued pushes, publishing events — held by a lease in the store,
//! as runs are.

use chrono::{DateTime, Utc};

use crate::sql::{millis, now};
use crate::turns::Priority;
use crate::{Result, Store};

// === impl Store ===

impl Store {
    /// Takes or renews the lease on a job for `owner` until `until`; whether `owner` holds it
    /// now. One statement: the lease moves only when it lapsed or is the owner's already.
    pub async fn hold_job(&self, job: &str, owner: &str, until: DateTime<Utc>) -> Result<bool> {
        let turn = self.turn(Priority::Background).await;
        let row = sqlx::query(
            "INSERT INTO job_leases (name, owner, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at \
             WHERE job_leases.owner = excluded.owner OR job_leases.expires_at < $4 \
             RETURNING owner",
        )
        .bind(job)
        .bind(owner)
        .bind(millis(until))
        .bind(millis(now()))
        .fetch_optional(&self.writer)
        .await;
        drop(turn);
        Ok(row?.is_some())
    }

    /// Lets `owner`'s lease on a job go (a clean stop): the next server to ask takes the job
    /// at once, rather than when the lease would have lapsed.
    pub async fn release_job(&self, job: &str, owner: &str) -> Result<()> {
        let turn = self.turn(Priority::Background).await;
        let done = sqlx::query("DELETE FROM job_leases WHERE name = $1 AND owner = $2")
            .bind(job)
            .bind(owner)
            .execute(&self.writer)
            .await;
        drop(turn);
        done?;
        Ok(())
    }
}
