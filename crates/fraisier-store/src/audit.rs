//! The audit trail: an append-only chain of records of who did (or was refused) what. Each
//! record carries the hash of the one before it, so an edit or a deletion in the database
//! breaks the chain where it was made, and [`Store::verify_audit`] finds it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::sql::{self, millis, now, ts, Args};
use crate::store::Backend;
use crate::turns::Priority;
use crate::{Result, Store};

/// Serializes appends to the chain on PostgreSQL (several servers on one database).
const PG_AUDIT_LOCK: i64 = 0x6175_6469_7400; // "audit"

/// The hash the first record links to.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

pub fn genesis() -> &'static str {
    GENESIS
}

/// How a request ended, as the trail records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    /// A 2xx or 3xx answer.
    Success,
    /// The request was understood and authorized, and failed (4xx other than the refusals
    /// below, or 5xx).
    Failure,
    /// 401: no valid credential.
    Unauthenticated,
    /// 403: a valid credential without the permission.
    Denied,
    /// 429.
    RateLimited,
}

/// What a caller supplies; the store adds id, time and the chain.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NewAuditRecord {
    pub workspace: String,
    /// Username, or empty for an anonymous caller.
    pub actor: String,
    /// `user`, `api_key` or `anonymous`.
    pub actor_kind: String,
    /// The API key's name, when the caller used one.
    pub credential: Option<String>,
    /// e.g. `deployment.create`, `user.update`, `auth.login`.
    pub action: String,
    /// What was acted on: `dep_00012`, `user:alice`, or the path when nothing more precise.
    pub resource: String,
    /// `fraise@environment` when the action concerned one.
    pub service: Option<String>,
    pub method: String,
    pub path: String,
    pub request_id: String,
    pub source: String,
    pub outcome: Option<AuditOutcome>,
    pub status: u16,
    /// A short word on why, for refusals and failures (an error code).
    pub detail: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditRecord {
    pub id: i64,
    #[serde(flatten)]
    pub record: NewAuditRecord,
    pub created_at: DateTime<Utc>,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub resource: Option<String>,
    pub service: Option<String>,
    pub outcome: Option<AuditOutcome>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub limit: u32,
    pub offset: u64,
}

/// The first record whose stored hash is not what its content and predecessor give.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainBreak {
    pub id: i64,
    pub reason: String,
}

const COLUMNS: &str = "id, workspace, actor, actor_kind, credential, action, resource, service, \
    method, path, request_id, source, outcome, status, detail, created_at, prev_hash, hash";

/// Records verified per read while walking the chain.
const VERIFY_PAGE: i64 = 1000;

// === impl Store ===

impl Store {
    /// Appends a record to the chain.
    pub async fn append_audit(&self, record: &NewAuditRecord) -> Result<AuditRecord> {
        let mut tx = self.begin_write_as(Priority::Interactive).await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(PG_AUDIT_LOCK)
                .execute(&mut *tx)
                .await?;
        }
        let prev: Option<String> =
            sqlx::query("SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1")
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get("hash"))
                .transpose()?;
        let prev_hash = prev.unwrap_or_else(|| GENESIS.to_string());
        let created_at = now();
        let hash = chain_hash(&prev_hash, record, created_at);
        let outcome = record
            .outcome
            .map(|o| sql::json_text(&o).trim_matches('"').to_string());
        let row = sqlx::query(
            "INSERT INTO audit_log (workspace, actor, actor_kind, credential, action, resource, service, \
             method, path, request_id, source, outcome, status, detail, created_at, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) RETURNING id",
        )
        .bind(&record.workspace)
        .bind(&record.actor)
        .bind(&record.actor_kind)
        .bind(&record.credential)
        .bind(&record.action)
        .bind(&record.resource)
        .bind(&record.service)
        .bind(&record.method)
        .bind(&record.path)
        .bind(&record.request_id)
        .bind(&record.source)
        .bind(outcome)
        .bind(i64::from(record.status))
        .bind(&record.detail)
        .bind(millis(created_at))
        .bind(&prev_hash)
        .bind(&hash)
        .fetch_one(&mut *tx)
        .await?;
        let id: i64 = row.try_get("id")?;
        tx.commit().await?;
        Ok(AuditRecord {
            id,
            record: record.clone(),
            created_at,
            prev_hash,
            hash,
        })
    }

    /// One page of a workspace's records matching `f`, newest first, and how many match.
    pub async fn audit(&self, workspace: &str, f: &AuditFilter) -> Result<(Vec<AuditRecord>, u64)> {
        let mut args = Args::default();
        let mut clauses = vec![format!("workspace = {}", args.push(workspace))];
        if let Some(a) = &f.actor {
            clauses.push(format!("actor = {}", args.push(a.as_str())));
        }
        if let Some(a) = &f.action {
            clauses.push(format!("action = {}", args.push(a.as_str())));
        }
        if let Some(r) = &f.resource {
            clauses.push(format!("resource = {}", args.push(r.as_str())));
        }
        if let Some(s) = &f.service {
            clauses.push(format!("service = {}", args.push(s.as_str())));
        }
        if let Some(o) = f.outcome {
            let o = sql::json_text(&o).trim_matches('"').to_string();
            clauses.push(format!("outcome = {}", args.push(o)));
        }
        if let Some(t) = f.since {
            clauses.push(format!("created_at >= {}", args.push(millis(t))));
        }
        if let Some(t) = f.until {
            clauses.push(format!("created_at < {}", args.push(millis(t))));
        }
        let filter = clauses.join(" AND ");
        let (rows, total) = self
            .newest_page("audit_log", COLUMNS, &filter, args, f.limit, f.offset)
            .await?;
        let records = rows.iter().map(record_from_row).collect::<Result<_>>()?;
        Ok((records, total))
    }

    /// Walks the whole chain from the first record: the first one altered, removed or
    /// reordered, or `None` when every link holds. Returns also how many records were checked.
    pub async fn verify_audit(&self) -> Result<(u64, Option<ChainBreak>)> {
        let mut expected_prev = GENESIS.to_string();
        let mut after = 0i64;
        let mut checked = 0u64;
        loop {
            let rows = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2"
            ))
            .bind(after)
            .bind(VERIFY_PAGE)
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                return Ok((checked, None));
            }
            for row in &rows {
                let id: i64 = row.try_get("id")?;
                let record = match record_from_row(row) {
                    Ok(r) => r,
                    Err(e) => {
                        return Ok((
                            checked,
                            Some(ChainBreak {
                                id,
                                reason: format!("the record cannot be read: {e}"),
                            }),
                        ))
                    }
                };
                if record.prev_hash != expected_prev {
                    return Ok((
                        checked,
                        Some(ChainBreak {
                            id,
                            reason: "it does not link to the record before it (a record was removed, inserted or its hash changed)".into(),
                        }),
                    ));
                }
                if chain_hash(&record.prev_hash, &record.record, record.created_at) != record.hash {
                    return Ok((
                        checked,
                        Some(ChainBreak {
                            id,
                            reason: "its content does not match its hash (the record was altered)"
                                .into(),
                        }),
                    ));
                }
                expected_prev = record.hash;
                after = id;
                checked += 1;
            }
        }
    }
}

/// sha256 over the previous hash and every field of the record, length-prefixed so that no
/// two different records serialize alike.
fn chain_hash(prev: &str, r: &NewAuditRecord, created_at: DateTime<Utc>) -> String {
    let outcome = r
        .outcome
        .map(|o| sql::json_text(&o).trim_matches('"').to_string())
        .unwrap_or_default();
    let status = r.status.to_string();
    let at = millis(created_at).to_string();
    let fields: [&str; 17] = [
        prev,
        &r.workspace,
        &r.actor,
        &r.actor_kind,
        r.credential.as_deref().unwrap_or("\u{0}"),
        &r.action,
        &r.resource,
        r.service.as_deref().unwrap_or("\u{0}"),
        &r.method,
        &r.path,
        &r.request_id,
        &r.source,
        &outcome,
        &status,
        r.detail.as_deref().unwrap_or("\u{0}"),
        &at,
        "fraisier-audit-v1",
    ];
    let mut h = Sha256::new();
    for f in fields {
        h.update((f.len() as u64).to_be_bytes());
        h.update(f.as_bytes());
    }
    hex::encode(h.finalize())
}

fn record_from_row(row: &AnyRow) -> Result<AuditRecord> {
    let status: i64 = row.try_get("status")?;
    let outcome: Option<String> = row.try_get("outcome")?;
    Ok(AuditRecord {
        id: row.try_get("id")?,
        record: NewAuditRecord {
            workspace: row.try_get("workspace")?,
            actor: row.try_get("actor")?,
            actor_kind: row.try_get("actor_kind")?,
            credential: row.try_get("credential")?,
            action: row.try_get("action")?,
            resource: row.try_get("resource")?,
            service: row.try_get("service")?,
            method: row.try_get("method")?,
            path: row.try_get("path")?,
            request_id: row.try_get("request_id")?,
            source: row.try_get("source")?,
            outcome: outcome
                .map(|o| {
                    serde_json::from_value(serde_json::Value::String(o.clone()))
                        .map_err(|_| crate::StoreError::Corrupt(format!("outcome: {o}")))
                })
                .transpose()?,
            status: u16::try_from(status)
                .map_err(|_| crate::StoreError::Corrupt(format!("status: {status}")))?,
            detail: row.try_get("detail")?,
        },
        created_at: ts(row, "created_at")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}
