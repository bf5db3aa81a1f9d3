//! Webhook deliveries as received: who sent what, whether it was accepted, and the runs it
//! started in each workspace. A delivery id accepted once is never acted on again.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::sql::{self, millis, now, ts, Args};
use crate::turns::Priority;
use crate::{Result, Store, StoreError, DEFAULT_TENANT};

/// A delivery as it arrived; `outcome` and `message` are what became of it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NewDelivery {
    pub provider: String,
    pub event: String,
    /// The host's id for it (the same on a redelivery).
    pub delivery_id: Option<String>,
    pub repository: String,
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    pub commit: Option<String>,
    pub outcome: String,
    pub message: String,
    /// The sender's address.
    pub source: String,
}

/// An environment a delivery concerned.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DeliveryTarget {
    pub workspace: String,
    pub fraise: String,
    pub environment: String,
    #[serde(rename = "ref")]
    pub reference: String,
    pub commit: String,
    pub deployment_id: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Delivery {
    pub id: i64,
    #[serde(flatten)]
    pub delivery: NewDelivery,
    pub received_at: DateTime<Utc>,
    pub targets: Vec<DeliveryTarget>,
}

/// An environment a delivery could not deploy yet (a run was active there).
#[derive(Clone, Debug, PartialEq)]
pub struct QueuedTarget {
    /// The delivery's row.
    pub delivery: i64,
    pub provider: String,
    /// The host's id for the delivery.
    pub delivery_id: Option<String>,
    pub target: DeliveryTarget,
}

#[derive(Clone, Debug, Default)]
pub struct DeliveryFilter {
    pub provider: Option<String>,
    pub outcome: Option<String>,
    pub repository: Option<String>,
    pub limit: u32,
    pub offset: u64,
}

const COLUMNS: &str = "id, provider, event, delivery_id, repository, ref, commit_sha, outcome, \
    message, source, received_at";

// === impl Store ===

impl Store {
    /// Records a delivery. With `dedup` (an accepted delivery carrying an id), a delivery
    /// already accepted under that id makes this return `None` and record nothing.
    pub async fn record_delivery(&self, d: &NewDelivery, dedup: bool) -> Result<Option<i64>> {
        let key = d
            .delivery_id
            .as_ref()
            .filter(|_| dedup)
            .map(|id| format!("{}:{id}", d.provider));
        let turn = self.turn(Priority::Interactive).await;
        let result = sqlx::query(
            "INSERT INTO webhook_deliveries (provider, event, delivery_id, dedup_key, repository, ref, \
             commit_sha, outcome, message, source, received_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
        )
        .bind(&d.provider)
        .bind(&d.event)
        .bind(&d.delivery_id)
        .bind(key)
        .bind(&d.repository)
        .bind(&d.reference)
        .bind(&d.commit)
        .bind(&d.outcome)
        .bind(&d.message)
        .bind(&d.source)
        .bind(millis(now()))
        .fetch_one(&self.writer)
        .await
        .map_err(crate::StoreError::from);
        drop(turn);
        match result {
            Ok(row) => Ok(Some(row.try_get("id")?)),
            Err(e) if sql::is_unique_violation(&e) => {
                // A delivery that deployed nothing for want of a chance (every environment
                // refused it) may be delivered again; one that was acted on may not.
                let released = sqlx::query(
                    "UPDATE webhook_deliveries SET dedup_key = NULL \
                     WHERE dedup_key = $1 AND outcome = 'failed'",
                )
                .bind(format!(
                    "{}:{}",
                    d.provider,
                    d.delivery_id.as_deref().unwrap_or_default()
                ))
                .execute(&self.writer)
                .await?;
                if released.rows_affected() > 0 {
                    return Box::pin(self.record_delivery(d, dedup)).await;
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Marks the pushes queued for an environment before delivery `newer` superseded: a
    /// later push to it has started.
    pub async fn supersede_queued(
        &self,
        workspace: &str,
        fraise: &str,
        environment: &str,
        newer: i64,
    ) -> Result<()> {
        let queued: Vec<QueuedTarget> = self
            .queued_targets()
            .await?
            .into_iter()
            .filter(|q| {
                q.delivery < newer
                    && q.target.workspace == workspace
                    && q.target.fraise == fraise
                    && q.target.environment == environment
            })
            .collect();
        for q in queued {
            let settled = DeliveryTarget {
                error_code: Some("SUPERSEDED".into()),
                error_message: Some("a later push to this environment is deployed instead".into()),
                ..q.target.clone()
            };
            self.settle_target(&q, &settled).await?;
        }
        Ok(())
    }

    /// Environments that wait for their active run to finish before a push deploys there,
    /// the latest delivery first.
    pub async fn queued_targets(&self) -> Result<Vec<QueuedTarget>> {
        let rows = sqlx::query(
            "SELECT t.delivery, t.workspace, t.fraise, t.environment, t.ref, t.commit_sha, \
             t.deployment_id, t.error_code, t.error_message, d.provider, d.delivery_id \
             FROM webhook_targets t JOIN webhook_deliveries d ON d.id = t.delivery \
             WHERE t.error_code = 'QUEUED' ORDER BY t.delivery DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(QueuedTarget {
                    delivery: r.try_get("delivery")?,
                    provider: r.try_get("provider")?,
                    delivery_id: r.try_get("delivery_id")?,
                    target: target_from_row(r)?,
                })
            })
            .collect()
    }

    /// What became of a queued environment; the delivery's outcome follows its targets.
    pub async fn settle_target(&self, q: &QueuedTarget, settled: &DeliveryTarget) -> Result<()> {
        let mut tx = self.begin_write_as(Priority::Background).await?;
        sqlx::query(
            "UPDATE webhook_targets SET deployment_id = $5, error_code = $6, error_message = $7 \
             WHERE delivery = $1 AND workspace = $2 AND fraise = $3 AND environment = $4",
        )
        .bind(q.delivery)
        .bind(&q.target.workspace)
        .bind(&q.target.fraise)
        .bind(&q.target.environment)
        .bind(&settled.deployment_id)
        .bind(&settled.error_code)
        .bind(&settled.error_message)
        .execute(&mut *tx)
        .await?;
        let codes: Vec<(Option<String>, Option<String>)> = sqlx::query(
            "SELECT deployment_id, error_code FROM webhook_targets WHERE delivery = $1",
        )
        .bind(q.delivery)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("deployment_id")?, r.try_get("error_code")?)))
        .collect::<Result<_>>()?;
        let outcome = if codes.iter().any(|(d, _)| d.is_some()) {
            "deployed"
        } else if codes.iter().any(|(_, c)| c.as_deref() == Some("QUEUED")) {
            "queued"
        } else if codes
            .iter()
            .all(|(_, c)| c.as_deref() == Some("SUPERSEDED"))
        {
            "superseded"
        } else {
            "failed"
        };
        sqlx::query("UPDATE webhook_deliveries SET outcome = $2 WHERE id = $1")
            .bind(q.delivery)
            .bind(outcome)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// What became of a recorded delivery, and the environments it concerned.
    pub async fn finish_delivery(
        &self,
        id: i64,
        outcome: &str,
        message: &str,
        targets: &[DeliveryTarget],
    ) -> Result<()> {
        let mut tx = self.begin_write_as(Priority::Interactive).await?;
        sqlx::query("UPDATE webhook_deliveries SET outcome = $2, message = $3 WHERE id = $1")
            .bind(id)
            .bind(outcome)
            .bind(message)
            .execute(&mut *tx)
            .await?;
        for t in targets {
            sqlx::query(
                "INSERT INTO webhook_targets (delivery, workspace, fraise, environment, ref, commit_sha, \
                 deployment_id, error_code, error_message) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(id)
            .bind(&t.workspace)
            .bind(&t.fraise)
            .bind(&t.environment)
            .bind(&t.reference)
            .bind(&t.commit)
            .bind(&t.deployment_id)
            .bind(&t.error_code)
            .bind(&t.error_message)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A delivery's outcome and the environments it concerned.
    pub async fn delivery_state(&self, id: i64) -> Result<(String, Vec<DeliveryTarget>)> {
        // Targets first: a target and the outcome are settled in one transaction, so an
        // outcome read after a settled target is at least as new. (Read the other way round,
        // a settlement committed in between paired an old outcome with a new target.)
        let targets = self.delivery_targets(id).await?;
        let outcome: String = sqlx::query("SELECT outcome FROM webhook_deliveries WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?
            .try_get("outcome")?;
        Ok((outcome, targets))
    }

    async fn delivery_targets(&self, id: i64) -> Result<Vec<DeliveryTarget>> {
        sqlx::query(
            "SELECT workspace, fraise, environment, ref, commit_sha, deployment_id, error_code, \
             error_message FROM webhook_targets WHERE delivery = $1 ORDER BY workspace, fraise, environment",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(target_from_row)
        .collect()
    }

    /// A page of deliveries, newest first, and how many match. The default workspace sees
    /// every delivery; another sees those that concerned it, and only its own targets.
    pub async fn deliveries(
        &self,
        workspace: &str,
        f: &DeliveryFilter,
    ) -> Result<(Vec<Delivery>, u64)> {
        let mut args = Args::default();
        let mut clauses = vec!["1 = 1".to_string()];
        let scoped = workspace != DEFAULT_TENANT;
        if scoped {
            clauses.push(format!(
                "id IN (SELECT delivery FROM webhook_targets WHERE workspace = {})",
                args.push(workspace)
            ));
        }
        if let Some(p) = &f.provider {
            clauses.push(format!("provider = {}", args.push(p.as_str())));
        }
        if let Some(o) = &f.outcome {
            clauses.push(format!("outcome = {}", args.push(o.as_str())));
        }
        if let Some(r) = &f.repository {
            clauses.push(format!("repository = {}", args.push(r.as_str())));
        }
        let filter = clauses.join(" AND ");
        let (rows, total) = self
            .newest_page(
                "webhook_deliveries",
                COLUMNS,
                &filter,
                args,
                f.limit,
                f.offset,
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut d = delivery_from_row(row)?;
            for t in self.delivery_targets(d.id).await? {
                if !scoped || t.workspace == workspace {
                    d.targets.push(t);
                }
            }
            out.push(d);
        }
        Ok((out, total))
    }
}

fn delivery_from_row(row: &AnyRow) -> Result<Delivery> {
    Ok(Delivery {
        id: row.try_get("id")?,
        delivery: NewDelivery {
            provider: row.try_get("provider")?,
            event: row.try_get("event")?,
            delivery_id: row.try_get("delivery_id")?,
            repository: row.try_get("repository")?,
            reference: row.try_get("ref")?,
            commit: row.try_get("commit_sha")?,
            outcome: row.try_get("outcome")?,
            message: row.try_get("message")?,
            source: row.try_get("source")?,
        },
        received_at: ts(row, "received_at")?,
        targets: Vec::new(),
    })
}

fn target_from_row(row: &AnyRow) -> Result<DeliveryTarget> {
    Ok(DeliveryTarget {
        workspace: row.try_get("workspace")?,
        fraise: row.try_get("fraise")?,
        environment: row.try_get("environment")?,
        reference: row.try_get("ref")?,
        commit: row.try_get("commit_sha")?,
        deployment_id: row.try_get("deployment_id")?,
        error_code: row.try_get("error_code")?,
        error_message: row.try_get("error_message")?,
    })
}
