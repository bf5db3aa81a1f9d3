//! Targets kept as data (seed 004) and target groups: the hosts and services a workspace
//! describes beside its agents, and the named sets of targets an environment's fraises are
//! placed on — by membership, by labels, or both. Members are kept by reference (`agt_…`,
//! `tgt_…`), so an agent and a described target are members alike.

use chrono::{DateTime, Utc};
use fraisier_model::agent::Labels;
use fraisier_model::target::{Connection, TargetType};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::sql::{self, json, json_text, millis, now, ts};
use crate::store::WriteTx;
use crate::turns::Priority;
use crate::{Result, Store, StoreError};

/// A target described through the API: never an agent (agents join).
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub id: i64,
    pub workspace: String,
    /// The environment it serves, if it was given one.
    pub environment: Option<String>,
    pub name: String,
    pub kind: TargetType,
    pub connection: Connection,
    pub labels: Labels,
    pub deployment_directory: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Target {
    pub fn reference(&self) -> String {
        format!("tgt_{}", self.id)
    }
}

#[derive(Clone, Debug)]
pub struct NewTarget {
    pub workspace: String,
    pub environment: Option<String>,
    pub name: String,
    pub kind: TargetType,
    pub connection: Connection,
    pub labels: Labels,
    pub deployment_directory: Option<String>,
    pub created_by: String,
}

/// A change to a described target: `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct TargetChange {
    pub name: Option<String>,
    /// `Some(None)` takes it out of any environment.
    pub environment: Option<Option<String>>,
    pub connection: Option<Connection>,
    pub labels: Option<Labels>,
    pub deployment_directory: Option<Option<String>>,
}

/// A named set of an environment's targets: its members, and every target carrying its
/// labels (when it has any).
#[derive(Clone, Debug, PartialEq)]
pub struct TargetGroup {
    pub id: i64,
    pub workspace: String,
    pub environment: String,
    pub name: String,
    pub description: Option<String>,
    pub labels: Labels,
    /// `agt_…` and `tgt_…`, in the order they were added.
    pub members: Vec<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl TargetGroup {
    pub fn reference(&self) -> String {
        format!("tgg_{}", self.id)
    }
}

#[derive(Clone, Debug)]
pub struct NewTargetGroup {
    pub workspace: String,
    pub environment: String,
    pub name: String,
    pub description: Option<String>,
    pub labels: Labels,
    pub members: Vec<String>,
    pub created_by: String,
}

#[derive(Clone, Debug, Default)]
pub struct TargetGroupChange {
    pub name: Option<String>,
    pub description: Option<Option<String>>,
    pub labels: Option<Labels>,
    /// Replaces the members.
    pub members: Option<Vec<String>>,
}

const TARGET_COLUMNS: &str = "id, workspace, environment, name, target_type, connection, labels, \
     deployment_directory, created_by, created_at, updated_at";
const GROUP_COLUMNS: &str =
    "id, workspace, environment, name, description, labels, created_by, created_at, updated_at";

/// `tgt_42` ⇄ 42.
pub fn parse_target_id(s: &str) -> Option<i64> {
    parse_ref(s, "tgt_")
}

/// `tgg_42` ⇄ 42.
pub fn parse_target_group_id(s: &str) -> Option<i64> {
    parse_ref(s, "tgg_")
}

fn parse_ref(s: &str, prefix: &str) -> Option<i64> {
    let digits = s.strip_prefix(prefix)?;
    if digits.is_empty() || digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

// === impl Store ===

impl Store {
    /// Records a described target; `AlreadyExists` when the workspace has one of that name,
    /// `EnvironmentGone` when its environment was deleted meanwhile.
    pub async fn create_target(&self, new: &NewTarget) -> Result<Target> {
        let at = now();
        let mut tx = self.begin_write_as(Priority::Interactive).await?;
        if let Some(environment) = &new.environment {
            self.hold_environment(&mut tx, &new.workspace, environment)
                .await?;
        }
        let row = sqlx::query(&format!(
            "INSERT INTO targets (workspace, environment, name, target_type, connection, labels, \
             deployment_directory, created_by, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) RETURNING {TARGET_COLUMNS}"
        ))
        .bind(&new.workspace)
        .bind(new.environment.as_deref())
        .bind(&new.name)
        .bind(new.kind.as_str())
        .bind(json_text(&new.connection))
        .bind(json_text(&new.labels))
        .bind(new.deployment_directory.as_deref())
        .bind(&new.created_by)
        .bind(millis(at))
        .fetch_one(&mut *tx)
        .await;
        let target = match row.map_err(StoreError::from) {
            Err(e) if sql::is_unique_violation(&e) => {
                return Err(StoreError::AlreadyExists(format!("target {}", new.name)))
            }
            r => target_from_row(&r?)?,
        };
        tx.commit().await?;
        Ok(target)
    }

    /// The workspace's described targets, by id.
    pub async fn targets(&self, workspace: &str) -> Result<Vec<Target>> {
        let rows = sqlx::query(&format!(
            "SELECT {TARGET_COLUMNS} FROM targets WHERE workspace = $1 ORDER BY id"
        ))
        .bind(workspace)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(target_from_row).collect()
    }

    /// A described target, by `tgt_…` id or by name.
    pub async fn target_by_ref(&self, workspace: &str, reference: &str) -> Result<Target> {
        let row = match parse_target_id(reference) {
            Some(id) => {
                sqlx::query(&format!(
                    "SELECT {TARGET_COLUMNS} FROM targets WHERE workspace = $1 AND id = $2"
                ))
                .bind(workspace)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {TARGET_COLUMNS} FROM targets WHERE workspace = $1 AND name = $2"
                ))
                .bind(workspace)
                .bind(reference)
                .fetch_optional(&self.pool)
                .await?
            }
        };
        row.map(|r| target_from_row(&r))
            .transpose()?
            .ok_or(StoreError::NotFound)
    }

    pub async fn update_target(
        &self,
        workspace: &str,
        id: i64,
        change: &TargetChange,
    ) -> Result<Target> {
        let mut tx = self.begin_write_as(Priority::Interactive).await?;
        if let Some(Some(environment)) = &change.environment {
            self.hold_environment(&mut tx, workspace, environment)
                .await?;
        }
        // Each field its own column: a change names only what it changes.
        let row = sqlx::query(&format!(
            "UPDATE targets SET name = COALESCE($1, name), \
             environment = CASE WHEN $2 = 1 THEN $3 ELSE environment END, \
             connection = COALESCE($4, connection), labels = COALESCE($5, labels), \
             deployment_directory = CASE WHEN $6 = 1 THEN $7 ELSE deployment_directory END, \
             updated_at = $8 WHERE workspace = $9 AND id = $10 RETURNING {TARGET_COLUMNS}"
        ))
        .bind(change.name.as_deref())
        .bind(i64::from(change.environment.is_some()))
        .bind(change.environment.clone().flatten())
        .bind(change.connection.as_ref().map(json_text))
        .bind(change.labels.as_ref().map(json_text))
        .bind(i64::from(change.deployment_directory.is_some()))
        .bind(change.deployment_directory.clone().flatten())
        .bind(millis(now()))
        .bind(workspace)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await;
        let target = match row.map_err(StoreError::from) {
            Err(e) if sql::is_unique_violation(&e) => {
                return Err(StoreError::AlreadyExists(format!(
                    "target {}",
                    change.name.as_deref().unwrap_or_default()
                )))
            }
            r => r?
                .map(|r| target_from_row(&r))
                .transpose()?
                .ok_or(StoreError::NotFound)?,
        };
        tx.commit().await?;
        Ok(target)
    }

    /// Deletes a described target and its memberships.
    pub async fn delete_target(&self, workspace: &str, id: i64) -> Result<bool> {
        let mut tx = self.begin_write_as(Priority::Interactive).await?;
        let gone = sqlx::query("DELETE FROM targets WHERE workspace = $1 AND id = $2")
            .bind(workspace)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
        if gone {
            forget_member(&mut tx, workspace, &format!("tgt_{id}")).await?;
        }
        tx.commit().await?;
        Ok(gone)
    }

    /// Records a target group with its first members; `AlreadyExists` when the environment
    /// has a group of that name, `EnvironmentGone` when it was deleted meanwhile.
    pub async fn create_target_group(&self, new: &NewTargetGroup) -> Result<TargetGroup> {
        let at = now();
        let mut tx = self.begin_write_as(Priority::Interactive).await?;
        self.hold_environment(&mut tx, &new.workspace, &new.environment)
            .await?;
        let row = sqlx::query(&format!(
            "INSERT INTO target_groups (workspace, environment, name, description, labels, \
             created_by, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
             RETURNING {GROUP_COLUMNS}"
        ))
        .bind(&new.workspace)
        .bind(&new.environment)
        .bind(&new.name)
        .bind(new.description.as_deref())
        .bind(json_text(&new.labels))
        .bind(&new.created_by)
        .bind(millis(at))
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::from);
        let row = match row {
            Err(e) if sql::is_unique_violation(&e) => {
                return Err(StoreError::AlreadyExists(format!(
                    "target group {} in {}",
                    new.name, new.environment
                )))
            }
            r => r?,
        };
        let id: i64 = row.try_get("id")?;
        set_members(&mut tx, id, &new.members).await?;
        let group = group_from_row(&row, new.members.clone())?;
        tx.commit().await?;
        Ok(group)
    }

    /// A workspace's target groups, of one environment or all, by id.
    pub async fn target_groups(
        &self,
        workspace: &str,
        environment: Option<&str>,
    ) -> Result<Vec<TargetGroup>> {
        let rows = sqlx::query(&format!(
            "SELECT {GROUP_COLUMNS} FROM target_groups \
             WHERE workspace = $1 AND ($2 IS NULL OR environment = $2) ORDER BY id"
        ))
        .bind(workspace)
        .bind(environment)
        .fetch_all(&self.pool)
        .await?;
        let members = self.target_group_members(workspace).await?;
        rows.iter()
            .map(|r| {
                let id: i64 = r.try_get("id")?;
                let mine = members
                    .iter()
                    .filter(|(g, _)| *g == id)
                    .map(|(_, m)| m.clone())
                    .collect();
                group_from_row(r, mine)
            })
            .collect()
    }

    pub async fn target_group(&self, workspace: &str, id: i64) -> Result<TargetGroup> {
        let row = sqlx::query(&format!(
            "SELECT {GROUP_COLUMNS} FROM target_groups WHERE workspace = $1 AND id = $2"
        ))
        .bind(workspace)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        let members = self.group_members(id).await?;
        group_from_row(&row, members)
    }

    /// An environment's target group, by name.
    pub async fn target_group_named(
        &self,
        workspace: &str,
        environment: &str,
        name: &str,
    ) -> Result<Option<TargetGroup>> {
        let Some(row) = sqlx::query(&format!(
            "SELECT {GROUP_COLUMNS} FROM target_groups \
             WHERE workspace = $1 AND environment = $2 AND name = $3"
        ))
        .bind(workspace)
        .bind(environment)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let id: i64 = row.try_get("id")?;
        let members = self.group_members(id).await?;
        Ok(Some(group_from_row(&row, members)?))
    }

    pub async fn update_target_group(
        &self,
        workspace: &str,
        id: i64,
        change: &TargetGroupChange,
    ) -> Result<TargetGroup> {
        let mut tx = self.begin_write_as(Priority::Interactive).await?;
        let row = sqlx::query(&format!(
            "UPDATE target_groups SET name = COALESCE($1, name), \
             description = CASE WHEN $2 = 1 THEN $3 ELSE description END, \
             labels = COALESCE($4, labels), updated_at = $5 \
             WHERE workspace = $6 AND id = $7 RETURNING {GROUP_COLUMNS}"
        ))
        .bind(change.name.as_deref())
        .bind(i64::from(change.description.is_some()))
        .bind(change.description.clone().flatten())
        .bind(change.labels.as_ref().map(json_text))
        .bind(millis(now()))
        .bind(workspace)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::from);
        let row = match row {
            Err(e) if sql::is_unique_violation(&e) => {
                return Err(StoreError::AlreadyExists(format!(
                    "target group {}",
                    change.name.as_deref().unwrap_or_default()
                )))
            }
            r => r?.ok_or(StoreError::NotFound)?,
        };
        if let Some(members) = &change.members {
            sqlx::query("DELETE FROM target_group_members WHERE group_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            set_members(&mut tx, id, members).await?;
        }
        let members = sqlx::query(
            "SELECT member FROM target_group_members WHERE group_id = $1 ORDER BY position",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get("member"))
        .collect::<Result<Vec<String>, _>>()?;
        let group = group_from_row(&row, members)?;
        tx.commit().await?;
        Ok(group)
    }

    pub async fn delete_target_group(&self, workspace: &str, id: i64) -> Result<bool> {
        let mut tx = self.begin_write_as(Priority::Interactive).await?;
        let gone = sqlx::query("DELETE FROM target_groups WHERE workspace = $1 AND id = $2")
            .bind(workspace)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
        if gone {
            sqlx::query("DELETE FROM target_group_members WHERE group_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(gone)
    }

    /// Puts one target (`agt_…` or `tgt_…`) in exactly these groups of the workspace, and
    /// takes it out of the workspace's others. (The server's own agent serves every
    /// workspace; only this workspace's groups are touched.)
    pub async fn set_target_groups(
        &self,
        workspace: &str,
        member: &str,
        groups: &[i64],
    ) -> Result<()> {
        let mut tx = self.begin_write_as(Priority::Interactive).await?;
        forget_member(&mut tx, workspace, member).await?;
        for g in groups {
            let position: i64 = sqlx::query(
                "SELECT COALESCE(MAX(position), -1) + 1 AS next FROM target_group_members WHERE group_id = $1",
            )
            .bind(g)
            .fetch_one(&mut *tx)
            .await?
            .try_get("next")?;
            sqlx::query(
                "INSERT INTO target_group_members (group_id, member, position) VALUES ($1, $2, $3)",
            )
            .bind(g)
            .bind(member)
            .bind(position)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every membership in the workspace's groups: (group id, member).
    pub async fn target_group_members(&self, workspace: &str) -> Result<Vec<(i64, String)>> {
        sqlx::query(
            "SELECT m.group_id, m.member FROM target_group_members m \
             JOIN target_groups g ON g.id = m.group_id WHERE g.workspace = $1 \
             ORDER BY m.group_id, m.position",
        )
        .bind(workspace)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("group_id")?, r.try_get("member")?)))
        .collect()
    }

    async fn group_members(&self, id: i64) -> Result<Vec<String>> {
        sqlx::query("SELECT member FROM target_group_members WHERE group_id = $1 ORDER BY position")
            .bind(id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok(r.try_get("member")?))
            .collect()
    }
}

async fn set_members(tx: &mut WriteTx, group: i64, members: &[String]) -> Result<()> {
    for (position, m) in members.iter().enumerate() {
        sqlx::query(
            "INSERT INTO target_group_members (group_id, member, position) VALUES ($1, $2, $3)",
        )
        .bind(group)
        .bind(m)
        .bind(position as i64)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

async fn forget_member(tx: &mut WriteTx, workspace: &str, member: &str) -> Result<()> {
    sqlx::query(
        "DELETE FROM target_group_members WHERE member = $1 \
         AND group_id IN (SELECT id FROM target_groups WHERE workspace = $2)",
    )
    .bind(member)
    .bind(workspace)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn target_from_row(row: &AnyRow) -> Result<Target> {
    let kind: String = row.try_get("target_type")?;
    Ok(Target {
        id: row.try_get("id")?,
        workspace: row.try_get("workspace")?,
        environment: row.try_get("environment")?,
        name: row.try_get("name")?,
        kind: kind
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("target_type: {e}")))?,
        connection: json(row, "connection")?,
        labels: json(row, "labels")?,
        deployment_directory: row.try_get("deployment_directory")?,
        created_by: row.try_get("created_by")?,
        created_at: ts(row, "created_at")?,
        updated_at: ts(row, "updated_at")?,
    })
}

fn group_from_row(row: &AnyRow, members: Vec<String>) -> Result<TargetGroup> {
    Ok(TargetGroup {
        id: row.try_get("id")?,
        workspace: row.try_get("workspace")?,
        environment: row.try_get("environment")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        labels: json(row, "labels")?,
        members,
        created_by: row.try_get("created_by")?,
        created_at: ts(row, "created_at")?,
        updated_at: ts(row, "updated_at")?,
    })
}
