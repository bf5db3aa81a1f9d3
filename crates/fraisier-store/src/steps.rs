//! The steps of a run, in order: each phase recorded when it starts and when it ends, so that
//! a restarted server knows where a run stopped.

use fraisier_model::run::{to_wire, StepStatus};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::sql::{millis, now, ts, ts_opt, wire};
use crate::turns::Priority;
use crate::{Result, Step, Store, StoreError};

const STEP_COLUMNS: &str = "id, run_id, seq, name, status, message, error, started_at, ended_at";

// === impl Store ===

impl Store {
    /// Records a `running` step after the run's existing steps. Unknown run: `NotFound`.
    pub async fn start_step(&self, run_id: i64, name: &str) -> Result<Step> {
        let mut tx = self.begin_write().await?;
        // Locks the run's row (on SQLite the write lock is already held) so that steps of one
        // run started at the same time count their predecessors one after the other.
        let locked = sqlx::query("UPDATE runs SET progress = progress WHERE id = $1")
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        if locked.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        let row = sqlx::query(&format!(
            "INSERT INTO steps (tenant_id, run_id, seq, name, status, started_at) \
             SELECT tenant_id, id, (SELECT COUNT(*) FROM steps WHERE run_id = $1), $2, $3, $4 \
             FROM runs WHERE id = $1 \
             RETURNING {STEP_COLUMNS}"
        ))
        .bind(run_id)
        .bind(name)
        .bind(to_wire(&StepStatus::Running))
        .bind(millis(now()))
        .fetch_one(&mut *tx)
        .await?;
        let step = step_from_row(&row)?;
        tx.commit().await?;
        Ok(step)
    }

    pub async fn finish_step(
        &self,
        step_id: i64,
        status: StepStatus,
        message: Option<&str>,
        error: Option<&str>,
    ) -> Result<Step> {
        let _turn = self.turn(Priority::Background).await;
        let row = sqlx::query(&format!(
            "UPDATE steps SET status = $2, message = $3, error = $4, ended_at = $5 \
             WHERE id = $1 RETURNING {STEP_COLUMNS}"
        ))
        .bind(step_id)
        .bind(to_wire(&status))
        .bind(message)
        .bind(error)
        .bind(millis(now()))
        .fetch_one(&self.writer)
        .await?;
        step_from_row(&row)
    }

    /// Ends the steps of `run_id` a stopped server left running: they did not finish, and
    /// the server that resumes the run starts them again. Returns how many there were.
    pub async fn interrupt_steps(&self, run_id: i64, why: &str) -> Result<u64> {
        let _turn = self.turn(Priority::Background).await;
        let done = sqlx::query(
            "UPDATE steps SET status = $2, error = $3, ended_at = $4 \
             WHERE run_id = $1 AND status = $5",
        )
        .bind(run_id)
        .bind(to_wire(&StepStatus::Failed))
        .bind(why)
        .bind(millis(now()))
        .bind(to_wire(&StepStatus::Running))
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }

    /// The run's steps in the order they started.
    pub async fn steps(&self, run_id: i64) -> Result<Vec<Step>> {
        let rows = sqlx::query(&format!(
            "SELECT {STEP_COLUMNS} FROM steps WHERE run_id = $1 ORDER BY seq"
        ))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(step_from_row).collect()
    }
}

fn step_from_row(row: &AnyRow) -> Result<Step> {
    Ok(Step {
        id: row.try_get("id")?,
        run_id: row.try_get("run_id")?,
        seq: row.try_get("seq")?,
        name: row.try_get("name")?,
        status: wire(row, "status")?,
        message: row.try_get("message")?,
        error: row.try_get("error")?,
        started_at: ts(row, "started_at")?,
        ended_at: ts_opt(row, "ended_at")?,
    })
}
