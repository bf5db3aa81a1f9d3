//! Agents and the join tokens they register with: made by an admin, stored only as digests,
//! spent in the same transaction that records the agent they admitted.

use chrono::{DateTime, Utc};
use fraisier_model::agent::{Heartbeat, HostFacts, Labels};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::sql::{self, json, json_text, millis, now, ts, ts_opt};
use crate::store::WriteTx;
use crate::turns::Priority;
use crate::{Result, Store, StoreError};

/// The workspace of the server's own agent: it serves every workspace.
pub const SHARED_WORKSPACE: &str = "*";
/// The name of the server's own agent.
pub const LOCAL_AGENT: &str = fraisier_model::agent::LOCAL;

/// An agent as the store keeps it; whether it is online is worked out from `last_heartbeat_at`.
#[derive(Clone, Debug, PartialEq)]
pub struct Agent {
    pub id: i64,
    /// [`SHARED_WORKSPACE`] for the server's own agent.
    pub workspace: String,
    pub name: String,
    pub labels: Labels,
    /// An operator asked that nothing new be placed there.
    pub draining: bool,
    pub version: String,
    pub capabilities: Vec<String>,
    pub host: HostFacts,
    pub services: u32,
    pub instances: u32,
    pub registered_at: DateTime<Utc>,
    pub registered_by: String,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
}

impl Agent {
    pub fn is_local(&self) -> bool {
        self.workspace == SHARED_WORKSPACE && self.name == LOCAL_AGENT
    }

    /// Online, offline or draining now (`AgentStatus::judge` over what is recorded).
    pub fn status(
        &self,
        now: DateTime<Utc>,
        offline_after: fraisier_model::Millis,
    ) -> fraisier_model::agent::AgentStatus {
        fraisier_model::agent::AgentStatus::judge(
            self.last_heartbeat_at,
            self.draining,
            now,
            offline_after,
        )
    }
}

/// A join token as listed: never the token itself.
#[derive(Clone, Debug, PartialEq)]
pub struct JoinToken {
    pub id: i64,
    pub workspace: String,
    pub uses_left: u32,
    pub expires_at: DateTime<Utc>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub struct NewJoinToken {
    pub workspace: String,
    /// sha256 of the token, hex.
    pub token_hash: String,
    pub uses: u32,
    pub expires_at: DateTime<Utc>,
    pub created_by: String,
}

/// An agent joining.
#[derive(Clone, Debug)]
pub struct NewAgent {
    pub name: String,
    pub labels: Labels,
    /// sha256 of its credential, hex.
    pub credential_hash: String,
    pub heartbeat: Heartbeat,
}

/// Why a registration was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Unknown, expired or used up: the same answer for each, so a guesser learns nothing.
    InvalidJoinToken,
    /// A live agent of the workspace has that name.
    NameTaken { workspace: String },
}

const AGENT_COLUMNS: &str = "id, workspace, name, labels, draining, version, capabilities, host, \
     services, instances, registered_at, registered_by, last_heartbeat_at";

// === impl Store ===

impl Store {
    pub async fn create_join_token(&self, new: &NewJoinToken) -> Result<JoinToken> {
        let turn = self.turn(Priority::Interactive).await;
        let row = sqlx::query(
            "INSERT INTO agent_join_tokens (workspace, token_hash, uses_left, expires_at, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             RETURNING id, workspace, uses_left, expires_at, created_by, created_at",
        )
        .bind(&new.workspace)
        .bind(&new.token_hash)
        .bind(i64::from(new.uses))
        .bind(millis(new.expires_at))
        .bind(&new.created_by)
        .bind(millis(now()))
        .fetch_one(&self.writer)
        .await;
        drop(turn);
        let row = row?;
        Ok(JoinToken {
            id: row.try_get("id")?,
            workspace: row.try_get("workspace")?,
            uses_left: row.try_get::<i64, _>("uses_left")?.max(0) as u32,
            expires_at: ts(&row, "expires_at")?,
            created_by: row.try_get("created_by")?,
            created_at: ts(&row, "created_at")?,
        })
    }

    /// Spends one use of the join token and records the agent, in one transaction: a token of
    /// one use admits one agent, however many present it at once.
    pub async fn register_agent(
        &self,
        token_hash: &str,
        new: &NewAgent,
    ) -> Result<std::result::Result<Agent, Refusal>> {
        let at = now();
        let mut tx = self.begin_write_as(Priority::Interactive).await?;
        // Spent by the UPDATE itself: on PostgreSQL a concurrent spend is waited for and the
        // condition judged again, so two registrations never share the last use. A refusal
        // below rolls the spend back.
        let token = sqlx::query(
            "UPDATE agent_join_tokens SET uses_left = uses_left - 1 \
             WHERE token_hash = $1 AND expires_at > $2 AND uses_left > 0 \
             RETURNING workspace, created_by",
        )
        .bind(token_hash)
        .bind(millis(at))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(token) = token else {
            return Ok(Err(Refusal::InvalidJoinToken));
        };
        let workspace: String = token.try_get("workspace")?;
        let created_by: String = token.try_get("created_by")?;
        let taken = sqlx::query(
            "SELECT id FROM agents WHERE workspace IN ($1, $2) AND name = $3 AND revoked_at IS NULL",
        )
        .bind(&workspace)
        .bind(SHARED_WORKSPACE)
        .bind(&new.name)
        .fetch_optional(&mut *tx)
        .await?;
        if taken.is_some() {
            return Ok(Err(Refusal::NameTaken { workspace }));
        }
        let row = insert_agent(
            &mut tx,
            &workspace,
            new,
            &format!("join token of {created_by}"),
            at,
            Some(at),
        )
        .await;
        let row = match row {
            Err(e) if sql::is_unique_violation(&e) => {
                return Ok(Err(Refusal::NameTaken { workspace }))
            }
            r => r?,
        };
        tx.commit().await?;
        Ok(Ok(agent_from_row(&row)?))
    }

    /// Records (or re-keys) the server's own agent, the first agent of every workspace.
    pub async fn ensure_local_agent(
        &self,
        credential_hash: &str,
        heartbeat: &Heartbeat,
    ) -> Result<Agent> {
        let mut tx = self.begin_write_as(Priority::Interactive).await?;
        let existing = sqlx::query(
            "SELECT id FROM agents WHERE workspace = $1 AND name = $2 AND revoked_at IS NULL",
        )
        .bind(SHARED_WORKSPACE)
        .bind(LOCAL_AGENT)
        .fetch_optional(&mut *tx)
        .await?;
        let row = match existing {
            Some(row) => {
                let id: i64 = row.try_get("id")?;
                sqlx::query(&format!(
                    "UPDATE agents SET credential_hash = $1 WHERE id = $2 RETURNING {AGENT_COLUMNS}"
                ))
                .bind(credential_hash)
                .bind(id)
                .fetch_one(&mut *tx)
                .await?
            }
            None => {
                let new = NewAgent {
                    name: LOCAL_AGENT.into(),
                    labels: Labels::new(),
                    credential_hash: credential_hash.into(),
                    heartbeat: heartbeat.clone(),
                };
                // Not heard from until its first heartbeat.
                insert_agent(&mut tx, SHARED_WORKSPACE, &new, "the server", now(), None).await?
            }
        };
        tx.commit().await?;
        agent_from_row(&row)
    }

    /// The live agent a credential belongs to.
    pub async fn agent_by_credential(&self, credential_hash: &str) -> Result<Option<Agent>> {
        sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE credential_hash = $1 AND revoked_at IS NULL"
        ))
        .bind(credential_hash)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| agent_from_row(&r))
        .transpose()
    }

    /// The live agents a workspace sees: its own and the server's, by id.
    pub async fn agents(&self, workspace: &str) -> Result<Vec<Agent>> {
        let rows = sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents \
             WHERE workspace IN ($1, $2) AND revoked_at IS NULL ORDER BY id"
        ))
        .bind(workspace)
        .bind(SHARED_WORKSPACE)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(agent_from_row).collect()
    }

    /// A live agent the workspace sees, by id.
    pub async fn agent(&self, workspace: &str, id: i64) -> Result<Agent> {
        sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents \
             WHERE workspace IN ($1, $2) AND id = $3 AND revoked_at IS NULL"
        ))
        .bind(workspace)
        .bind(SHARED_WORKSPACE)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| agent_from_row(&r))
        .transpose()?
        .ok_or(StoreError::NotFound)
    }

    /// A live agent the workspace sees, by `agt_…` id or by name.
    pub async fn agent_by_ref(&self, workspace: &str, reference: &str) -> Result<Agent> {
        match reference
            .strip_prefix("agt_")
            .and_then(|n| n.parse::<i64>().ok())
        {
            Some(id) => self.agent(workspace, id).await,
            None => self
                .agents(workspace)
                .await?
                .into_iter()
                .find(|a| a.name == reference)
                .ok_or(StoreError::NotFound),
        }
    }

    /// What the agent said in its heartbeat, and when: only the columns it reports, so an
    /// operator's change to labels or draining is never written over.
    pub async fn record_heartbeat(&self, id: i64, hb: &Heartbeat) -> Result<Agent> {
        let turn = self.turn(Priority::Interactive).await;
        let row = sqlx::query(&format!(
            "UPDATE agents SET version = $1, capabilities = $2, host = $3, services = $4, \
             instances = $5, last_heartbeat_at = $6 WHERE id = $7 AND revoked_at IS NULL \
             RETURNING {AGENT_COLUMNS}"
        ))
        .bind(&hb.version)
        .bind(json_text(&hb.capabilities))
        .bind(json_text(&hb.host))
        .bind(i64::from(hb.services))
        .bind(i64::from(hb.instances))
        .bind(millis(now()))
        .bind(id)
        .fetch_optional(&self.writer)
        .await;
        drop(turn);
        row?.map(|r| agent_from_row(&r))
            .transpose()?
            .ok_or(StoreError::NotFound)
    }

    /// An operator's change: labels, draining, or both.
    pub async fn update_agent(
        &self,
        id: i64,
        labels: Option<&Labels>,
        draining: Option<bool>,
    ) -> Result<Agent> {
        let turn = self.turn(Priority::Interactive).await;
        let row = sqlx::query(&format!(
            "UPDATE agents SET labels = COALESCE($1, labels), draining = COALESCE($2, draining) \
             WHERE id = $3 AND revoked_at IS NULL RETURNING {AGENT_COLUMNS}"
        ))
        .bind(labels.map(json_text))
        .bind(draining.map(i64::from))
        .bind(id)
        .fetch_optional(&self.writer)
        .await;
        drop(turn);
        row?.map(|r| agent_from_row(&r))
            .transpose()?
            .ok_or(StoreError::NotFound)
    }

    /// Revokes an agent: its credential stops working at once; its name is free again. The
    /// row stays, so the audit trail's `agt_…` still says who that was.
    pub async fn revoke_agent(&self, id: i64, by: &str) -> Result<bool> {
        let turn = self.turn(Priority::Interactive).await;
        let done = sqlx::query(
            "UPDATE agents SET revoked_at = $1, revoked_by = $2 WHERE id = $3 AND revoked_at IS NULL",
        )
        .bind(millis(now()))
        .bind(by)
        .bind(id)
        .execute(&self.writer)
        .await;
        drop(turn);
        Ok(done?.rows_affected() > 0)
    }
}

async fn insert_agent(
    tx: &mut WriteTx,
    workspace: &str,
    new: &NewAgent,
    by: &str,
    at: DateTime<Utc>,
    heard_at: Option<DateTime<Utc>>,
) -> Result<AnyRow> {
    let hb = &new.heartbeat;
    Ok(sqlx::query(&format!(
        "INSERT INTO agents (workspace, name, labels, credential_hash, draining, version, \
         capabilities, host, services, instances, registered_at, registered_by, last_heartbeat_at) \
         VALUES ($1, $2, $3, $4, 0, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING {AGENT_COLUMNS}"
    ))
    .bind(workspace)
    .bind(&new.name)
    .bind(json_text(&new.labels))
    .bind(&new.credential_hash)
    .bind(&hb.version)
    .bind(json_text(&hb.capabilities))
    .bind(json_text(&hb.host))
    .bind(i64::from(hb.services))
    .bind(i64::from(hb.instances))
    .bind(millis(at))
    .bind(by)
    .bind(heard_at.map(millis))
    .fetch_one(&mut **tx)
    .await?)
}

fn agent_from_row(row: &AnyRow) -> Result<Agent> {
    let count = |col: &str| -> Result<u32> {
        Ok(row.try_get::<i64, _>(col)?.clamp(0, i64::from(u32::MAX)) as u32)
    };
    Ok(Agent {
        id: row.try_get("id")?,
        workspace: row.try_get("workspace")?,
        name: row.try_get("name")?,
        labels: json(row, "labels")?,
        draining: row.try_get::<i64, _>("draining")? != 0,
        version: row.try_get("version")?,
        capabilities: json(row, "capabilities")?,
        host: json(row, "host")?,
        services: count("services")?,
        instances: count("instances")?,
        registered_at: ts(row, "registered_at")?,
        registered_by: row.try_get("registered_by")?,
        last_heartbeat_at: ts_opt(row, "last_heartbeat_at")?,
    })
}
