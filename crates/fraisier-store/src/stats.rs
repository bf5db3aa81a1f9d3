//! Run figures of a workspace for `/metrics` (totals per final status, active runs per
//! environment, the histogram of run durations), computed by SQL aggregates so they cost the
//! same at any size.

use fraisier_model::run::RunStatus;
use sqlx::Row;

use crate::sql::{self, wire, Args, ACTIVE_STATUSES, FINAL_STATUSES};
use crate::{Result, RunStats, Store};

const FINAL: [RunStatus; 3] = [RunStatus::Success, RunStatus::Failed, RunStatus::Cancelled];

// === impl Store ===

impl Store {
    /// `duration_bounds_secs` are the histogram's upper bounds, ascending; a duration equal to
    /// a bound falls in that bound's bucket (Prometheus `le`).
    pub async fn run_stats(&self, tenant: &str, duration_bounds_secs: &[f64]) -> Result<RunStats> {
        let rows = sqlx::query(&format!(
            "SELECT status, COUNT(*) AS n FROM runs WHERE tenant_id = $1 AND status IN {FINAL_STATUSES} GROUP BY status"
        ))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        let mut totals: Vec<(RunStatus, u64)> = FINAL.iter().map(|s| (*s, 0)).collect();
        for row in &rows {
            let status: RunStatus = wire(row, "status")?;
            let n = sql::count(row, "n")?;
            if let Some(slot) = totals.iter_mut().find(|(s, _)| *s == status) {
                slot.1 = n;
            }
        }

        let rows = sqlx::query(&format!(
            "SELECT environment, COUNT(*) AS n FROM runs WHERE tenant_id = $1 AND status IN {ACTIVE_STATUSES} \
             GROUP BY environment ORDER BY environment"
        ))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        let active = rows
            .iter()
            .map(|row| Ok((row.try_get("environment")?, sql::count(row, "n")?)))
            .collect::<Result<_>>()?;

        // Cumulative counts per bound come out of one scan; the buckets are their differences.
        let mut args = Args::default();
        let tenant_arg = args.push(tenant);
        let mut columns = vec![
            "COUNT(*) AS n".to_string(),
            "CAST(COALESCE(SUM(d), 0) AS BIGINT) AS sum_ms".to_string(),
        ];
        for (i, bound) in duration_bounds_secs.iter().enumerate() {
            let p = args.push(bound * 1000.0);
            columns.push(format!(
                "CAST(COALESCE(SUM(CASE WHEN d <= {p} THEN 1 ELSE 0 END), 0) AS BIGINT) AS le{i}"
            ));
        }
        let query = format!(
            "SELECT {} FROM (SELECT completed_at - COALESCE(started_at, created_at) AS d FROM runs \
             WHERE tenant_id = {tenant_arg} AND status IN {FINAL_STATUSES} AND completed_at IS NOT NULL) finished",
            columns.join(", ")
        );
        let row = args.bind(sqlx::query(&query)).fetch_one(&self.pool).await?;
        let duration_count = sql::count(&row, "n")?;
        let sum_ms: i64 = row.try_get("sum_ms")?;
        let mut duration_buckets = Vec::with_capacity(duration_bounds_secs.len() + 1);
        let mut below = 0;
        for i in 0..duration_bounds_secs.len() {
            let cumulative = sql::count(&row, &format!("le{i}"))?;
            duration_buckets.push(cumulative.saturating_sub(below));
            below = below.max(cumulative);
        }
        duration_buckets.push(duration_count.saturating_sub(below));

        Ok(RunStats {
            totals,
            active,
            duration_buckets,
            duration_sum: sum_ms as f64 / 1000.0,
            duration_count,
        })
    }
}
