//! A run's structured log lines: appended one at a time (and counted on the run), read back
//! as the last N lines matching a minimum level and a component.

use fraisier_model::run::{to_wire, Component, LogLevel};
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::sql::{self, json, json_text, millis, now, ts, wire, Args};
use crate::{LogFilter, LogLine, Result, Store, StoreError};

const LOG_COLUMNS: &str = "id, run_id, level, component, message, details, created_at";
const LEVELS: [LogLevel; 4] = [
    LogLevel::Debug,
    LogLevel::Info,
    LogLevel::Warn,
    LogLevel::Error,
];

// === impl Store ===

impl Store {
    /// Appends a line and counts it in the run's `log_lines`, in one transaction. Unknown
    /// run: `NotFound`.
    pub async fn add_log(
        &self,
        run_id: i64,
        level: LogLevel,
        component: Component,
        message: &str,
        details: &Value,
    ) -> Result<LogLine> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("UPDATE runs SET log_lines = log_lines + 1 WHERE id = $1")
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        let row = sqlx::query(&format!(
            "INSERT INTO logs (tenant_id, run_id, level, component, message, details, created_at) \
             SELECT tenant_id, id, $2, $3, $4, $5, $6 FROM runs WHERE id = $1 \
             RETURNING {LOG_COLUMNS}"
        ))
        .bind(run_id)
        .bind(to_wire(&level))
        .bind(to_wire(&component))
        .bind(message)
        .bind(json_text(details))
        .bind(millis(now()))
        .fetch_one(&mut *tx)
        .await?;
        let line = log_from_row(&row)?;
        tx.commit().await?;
        Ok(line)
    }

    /// The last `f.lines` lines matching `f`, oldest first, and how many match in all.
    pub async fn logs(&self, run_id: i64, f: &LogFilter) -> Result<(Vec<LogLine>, u64)> {
        let mut args = Args::default();
        let mut clauses = vec![format!("run_id = {}", args.push(run_id))];
        if let Some(min) = f.level {
            let levels: Vec<String> = LEVELS
                .iter()
                .filter(|l| **l >= min)
                .map(|l| args.push(to_wire(l)))
                .collect();
            clauses.push(format!("level IN ({})", levels.join(", ")));
        }
        if let Some(component) = f.component {
            clauses.push(format!("component = {}", args.push(to_wire(&component))));
        }
        if let Some(after) = f.after_id {
            clauses.push(format!("id > {}", args.push(after)));
        }
        let filter = clauses.join(" AND ");

        let total = args
            .clone()
            .bind(sqlx::query(&format!(
                "SELECT COUNT(*) AS n FROM logs WHERE {filter}"
            )))
            .fetch_one(&self.pool)
            .await?;
        let total = sql::count(&total, "n")?;

        let limit = if f.lines == 0 {
            i64::MAX
        } else {
            i64::from(f.lines)
        };
        let page = format!(
            "SELECT {LOG_COLUMNS} FROM logs WHERE {filter} ORDER BY id DESC LIMIT {}",
            args.push(limit)
        );
        let rows = args.bind(sqlx::query(&page)).fetch_all(&self.pool).await?;
        let mut lines = rows.iter().map(log_from_row).collect::<Result<Vec<_>>>()?;
        lines.reverse();
        Ok((lines, total))
    }
}

fn log_from_row(row: &AnyRow) -> Result<LogLine> {
    Ok(LogLine {
        id: row.try_get("id")?,
        run_id: row.try_get("run_id")?,
        level: wire(row, "level")?,
        component: wire(row, "component")?,
        message: row.try_get("message")?,
        details: json(row, "details")?,
        timestamp: ts(row, "created_at")?,
    })
}
