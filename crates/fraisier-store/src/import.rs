//! Bulk loading of runs with their own ids and timestamps (the benchmark seeds 100,000 this
//! way): multi-row inserts in one transaction, then id allocation resumes above the largest.

use fraisier_model::run::to_wire;

use crate::runs::RUN_COLUMNS;
use crate::sql::{json_text, millis};
use crate::store::Backend;
use crate::{Result, Run, Store};

/// 28 arguments a row: 300 rows stay well under SQLite's 32,766 and PostgreSQL's 65,535
/// arguments a statement.
const ROWS_PER_STATEMENT: usize = 300;

// === impl Store ===

impl Store {
    /// Inserts `runs` as given (ids, statuses, timestamps, counters), all or none.
    pub async fn import_runs(&self, runs: &[Run]) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for chunk in runs.chunks(ROWS_PER_STATEMENT) {
            let mut args = self.backend.bulk_args();
            let rows: Vec<String> = chunk
                .iter()
                .map(|run| {
                    let values = [
                        args.push(run.id),
                        args.push(run.tenant_id.as_str()),
                        args.push(run.fraise.as_str()),
                        args.push(run.environment.as_str()),
                        args.push(to_wire(&run.kind)),
                        args.push(to_wire(&run.status)),
                        args.push(run.version.as_str()),
                        args.push(run.previous_version.clone()),
                        args.push(run.strategy.as_str()),
                        args.push(json_text(&run.strategy_config)),
                        args.push(run.triggered_by.as_str()),
                        args.push(run.trigger_type.as_str()),
                        args.push(json_text(&run.options)),
                        args.push(json_text(&run.metadata)),
                        args.push(millis(run.created_at)),
                        args.push(millis(run.updated_at)),
                        args.push(run.started_at.map(millis)),
                        args.push(run.completed_at.map(millis)),
                        args.push(run.health_check_status.as_str()),
                        args.push(json_text(&run.health_details)),
                        args.push(json_text(&run.metrics)),
                        args.push(run.error_code.clone()),
                        args.push(run.error_message.clone()),
                        args.push(run.cancel_requested_by.clone()),
                        args.push(run.cancelled_at.map(millis)),
                        args.push(run.progress),
                        args.push(run.events_count),
                        args.push(run.log_lines),
                    ];
                    format!("({})", values.join(", "))
                })
                .collect();
            let statement = format!(
                "INSERT INTO runs ({RUN_COLUMNS}) VALUES {}",
                rows.join(", ")
            );
            args.bind(sqlx::query(&statement)).execute(&mut *tx).await?;
        }
        if self.backend == Backend::Postgres {
            // Explicit ids do not advance an identity's sequence; SQLite's AUTOINCREMENT
            // follows the largest id by itself.
            sqlx::query(
                "SELECT setval(pg_get_serial_sequence('runs', 'id'), MAX(id)) FROM runs HAVING MAX(id) IS NOT NULL",
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.runs_changed();
        Ok(())
    }
}
