//! Shared SQL plumbing: argument lists for queries assembled at run time, and the conversions
//! between domain values and columns (unix-millisecond timestamps, JSON text, wire enums).

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, Row};

use crate::{Result, Store, StoreError};

/// The statuses that hold the one-active-run slot; the partial unique index says the same.
pub(crate) const ACTIVE_STATUSES: &str = "('pending', 'in_progress')";
pub(crate) const FINAL_STATUSES: &str = "('success', 'failed', 'cancelled')";

/// Arguments of a query whose text is built at run time; `push` returns the placeholder.
#[derive(Clone, Debug, Default)]
pub(crate) struct Args {
    values: Vec<Arg>,
    anonymous: bool,
}

#[derive(Clone, Debug)]
pub(crate) enum Arg {
    Int(Option<i64>),
    Float(f64),
    Text(Option<String>),
}

// === impl Args ===

impl Args {
    /// Placeholders that can each be used once only, in order; see `Backend::bulk_args`.
    pub(crate) fn anonymous() -> Args {
        Args {
            values: Vec::new(),
            anonymous: true,
        }
    }

    pub(crate) fn push(&mut self, arg: impl Into<Arg>) -> String {
        self.values.push(arg.into());
        if self.anonymous {
            "?".to_string()
        } else {
            format!("${}", self.values.len())
        }
    }

    pub(crate) fn bind<'q>(
        self,
        mut query: Query<'q, Any, AnyArguments<'q>>,
    ) -> Query<'q, Any, AnyArguments<'q>> {
        for arg in self.values {
            query = match arg {
                Arg::Int(v) => query.bind(v),
                Arg::Float(v) => query.bind(v),
                Arg::Text(v) => query.bind(v),
            };
        }
        query
    }
}

impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::Int(Some(v))
    }
}

impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Self {
        Arg::Int(v)
    }
}

impl From<f64> for Arg {
    fn from(v: f64) -> Self {
        Arg::Float(v)
    }
}

impl From<String> for Arg {
    fn from(v: String) -> Self {
        Arg::Text(Some(v))
    }
}

impl From<Option<String>> for Arg {
    fn from(v: Option<String>) -> Self {
        Arg::Text(v)
    }
}

impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Text(Some(v.to_string()))
    }
}

// === column conversions ===

/// Now, at the precision the store keeps, so a value read back equals the value written.
pub(crate) fn now() -> DateTime<Utc> {
    from_millis(Utc::now().timestamp_millis()).unwrap_or_else(Utc::now)
}

pub(crate) fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_millis(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

pub(crate) fn ts(row: &AnyRow, col: &str) -> Result<DateTime<Utc>> {
    let ms: i64 = row.try_get(col)?;
    from_millis(ms).ok_or_else(|| corrupt(col, &ms.to_string()))
}

pub(crate) fn ts_opt(row: &AnyRow, col: &str) -> Result<Option<DateTime<Utc>>> {
    let ms: Option<i64> = row.try_get(col)?;
    ms.map(|ms| from_millis(ms).ok_or_else(|| corrupt(col, &ms.to_string())))
        .transpose()
}

pub(crate) fn json_text<T: Serialize + ?Sized>(v: &T) -> String {
    // Serializing plain data to a string cannot fail; "null" keeps the column NOT NULL-safe.
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_string())
}

pub(crate) fn json<T: DeserializeOwned>(row: &AnyRow, col: &str) -> Result<T> {
    let text: String = row.try_get(col)?;
    serde_json::from_str(&text).map_err(|e| corrupt(col, &e.to_string()))
}

pub(crate) fn json_opt<T: DeserializeOwned>(row: &AnyRow, col: &str) -> Result<Option<T>> {
    let text: Option<String> = row.try_get(col)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| corrupt(col, &e.to_string())))
        .transpose()
}

pub(crate) fn wire<T: DeserializeOwned>(row: &AnyRow, col: &str) -> Result<T> {
    let text: String = row.try_get(col)?;
    fraisier_model::run::from_wire(&text).ok_or_else(|| corrupt(col, &text))
}

pub(crate) fn count(row: &AnyRow, col: &str) -> Result<u64> {
    let n: i64 = row.try_get(col)?;
    u64::try_from(n).map_err(|_| corrupt(col, &n.to_string()))
}

fn corrupt(col: &str, detail: &str) -> StoreError {
    StoreError::Corrupt(format!("{col}: {detail}"))
}

// === errors ===

pub(crate) fn is_unique_violation(e: &StoreError) -> bool {
    matches!(e, StoreError::Database(sqlx::Error::Database(d)) if d.is_unique_violation())
}

/// A `LIKE … ESCAPE '\'` pattern matching `q` anywhere, compared against `lower(column)`.
pub(crate) fn contains_pattern(q: &str) -> String {
    let mut pattern = String::with_capacity(q.len() + 2);
    pattern.push('%');
    for c in q.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

// === impl Store ===

impl Store {
    /// One page of `table`'s rows matching `filter` (placeholders bound by `args`), newest
    /// (highest id) first, and how many match in all. `limit` 0 means no limit.
    pub(crate) async fn newest_page(
        &self,
        table: &str,
        columns: &str,
        filter: &str,
        mut args: Args,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<AnyRow>, u64)> {
        let total_row = args
            .clone()
            .bind(sqlx::query(&format!(
                "SELECT COUNT(*) AS n FROM {table} WHERE {filter}"
            )))
            .fetch_one(&self.pool)
            .await?;
        let total = count(&total_row, "n")?;
        let limit = if limit == 0 {
            i64::MAX
        } else {
            i64::from(limit)
        };
        let page = format!(
            "SELECT {columns} FROM {table} WHERE {filter} ORDER BY id DESC LIMIT {} OFFSET {}",
            args.push(limit),
            args.push(i64::try_from(offset).unwrap_or(i64::MAX))
        );
        let rows = args.bind(sqlx::query(&page)).fetch_all(&self.pool).await?;
        Ok((rows, total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(contains_pattern("Dep_0"), "%dep\\_0%");
        assert_eq!(contains_pattern("50%\\"), "%50\\%\\\\%");
    }

    #[test]
    fn placeholders_count_up() {
        let mut args = Args::default();
        assert_eq!(args.push(1i64), "$1");
        assert_eq!(args.push("x"), "$2");
    }
}
