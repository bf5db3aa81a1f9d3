//! Votes on runs that need approval: one per person and run, kept with the run.

use fraisier_model::approval::{Decision, Vote};
use sqlx::Row;

use crate::sql::{self, millis, now, ts, wire, Args};
use crate::turns::Priority;
use crate::{Result, Store, StoreError};

// === impl Store ===

impl Store {
    /// Records `user`'s decision on run `run_id` of `tenant`; a second vote by the same person
    /// is `AlreadyExists`, a run of another tenant `NotFound`.
    pub async fn add_vote(
        &self,
        tenant: &str,
        run_id: i64,
        user: &str,
        decision: Decision,
        comment: Option<&str>,
    ) -> Result<Vote> {
        let at = now();
        let _turn = self.turn(Priority::Interactive).await;
        let done = sqlx::query(
            "INSERT INTO approvals (tenant_id, run_id, username, decision, comment, created_at) \
             SELECT $1, id, $3, $4, $5, $6 FROM runs WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(run_id)
        .bind(user)
        .bind(fraisier_model::run::to_wire(&decision))
        .bind(comment)
        .bind(millis(at))
        .execute(&self.writer)
        .await
        .map_err(StoreError::from);
        match done {
            Ok(d) if d.rows_affected() == 0 => Err(StoreError::NotFound),
            Ok(_) => Ok(Vote {
                user: user.to_string(),
                decision,
                comment: comment.map(str::to_string),
                at,
            }),
            Err(e) if sql::is_unique_violation(&e) => Err(StoreError::AlreadyExists(format!(
                "a decision of {user} on this run"
            ))),
            Err(e) => Err(e),
        }
    }

    /// The votes on a run, oldest first.
    pub async fn votes(&self, run_id: i64) -> Result<Vec<Vote>> {
        Ok(self
            .votes_for(&[run_id])
            .await?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// The votes on several runs, as (run id, vote), oldest first.
    pub async fn votes_for(&self, run_ids: &[i64]) -> Result<Vec<(i64, Vote)>> {
        if run_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = Args::default();
        let list: Vec<String> = run_ids.iter().map(|id| args.push(*id)).collect();
        let query = format!(
            "SELECT run_id, username, decision, comment, created_at FROM approvals \
             WHERE run_id IN ({}) ORDER BY id",
            list.join(", ")
        );
        let rows = args.bind(sqlx::query(&query)).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("run_id")?,
                    Vote {
                        user: r.try_get("username")?,
                        decision: wire(r, "decision")?,
                        comment: r.try_get("comment")?,
                        at: ts(r, "created_at")?,
                    },
                ))
            })
            .collect()
    }
}
