//! API keys: made by a user for one workspace, stored only as a hash, looked up by that hash.

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::sql::{json, json_text, millis, now, ts, ts_opt};
use crate::turns::Priority;
use crate::{Result, Store, StoreError};

/// A key as listed: never the key itself.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiKey {
    pub id: i64,
    pub workspace: String,
    pub user_id: i64,
    pub username: String,
    pub name: String,
    /// The first characters of the key, to recognize it by.
    pub prefix: String,
    pub roles: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug)]
pub struct NewApiKey {
    pub workspace: String,
    pub user_id: i64,
    pub name: String,
    pub prefix: String,
    /// sha256 of the whole key, hex.
    pub key_hash: String,
    pub roles: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A key presented with a request, with what its maker is now.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyHolder {
    pub key: ApiKey,
    pub user_disabled: bool,
    /// The maker's roles in the key's workspace now; `None` if they left it.
    pub user_roles: Option<Vec<String>>,
}

const KEY_COLUMNS: &str = "k.id, k.workspace, k.user_id, u.username, k.name, k.prefix, k.roles, \
     k.created_at, k.expires_at, k.last_used_at, k.revoked_at";

// === impl Store ===

impl Store {
    pub async fn create_api_key(&self, new: &NewApiKey) -> Result<ApiKey> {
        let id: i64 = {
            let _turn = self.turn(Priority::Interactive).await;
            let row = sqlx::query(
                "INSERT INTO api_keys (workspace, user_id, name, prefix, key_hash, roles, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            )
            .bind(&new.workspace)
            .bind(new.user_id)
            .bind(&new.name)
            .bind(&new.prefix)
            .bind(&new.key_hash)
            .bind(json_text(&new.roles))
            .bind(millis(now()))
            .bind(new.expires_at.map(millis))
            .fetch_one(&self.writer)
            .await?;
            row.try_get("id")?
        };
        self.api_key(&new.workspace, id).await
    }

    pub async fn api_key(&self, workspace: &str, id: i64) -> Result<ApiKey> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys k JOIN users u ON u.id = k.user_id \
             WHERE k.workspace = $1 AND k.id = $2"
        ))
        .bind(workspace)
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        key_from_row(&row)
    }

    /// Keys of a workspace, newest first; only one user's when `user_id` is given.
    pub async fn api_keys(&self, workspace: &str, user_id: Option<i64>) -> Result<Vec<ApiKey>> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys k JOIN users u ON u.id = k.user_id \
             WHERE k.workspace = $1 AND ($2 IS NULL OR k.user_id = $2) ORDER BY k.id DESC"
        ))
        .bind(workspace)
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    /// The key with this hash and its maker as they are now; `NotFound` for no such key.
    pub async fn api_key_by_hash(&self, key_hash: &str) -> Result<KeyHolder> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS}, u.disabled, \
               (SELECT m.roles FROM memberships m WHERE m.user_id = k.user_id AND m.workspace = k.workspace) AS user_roles \
             FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.key_hash = $1"
        ))
        .bind(key_hash)
        .fetch_one(&self.pool)
        .await?;
        let disabled: i64 = row.try_get("disabled")?;
        Ok(KeyHolder {
            key: key_from_row(&row)?,
            user_disabled: disabled != 0,
            user_roles: crate::sql::json_opt(&row, "user_roles")?,
        })
    }

    /// Revokes a key (kept, listed as revoked); `NotFound` for another workspace's key.
    pub async fn revoke_api_key(&self, workspace: &str, id: i64) -> Result<ApiKey> {
        {
            let _turn = self.turn(Priority::Interactive).await;
            let done = sqlx::query(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $3) WHERE workspace = $1 AND id = $2",
            )
            .bind(workspace)
            .bind(id)
            .bind(millis(now()))
            .execute(&self.writer)
            .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound);
            }
        }
        self.api_key(workspace, id).await
    }

    /// Notes a use of a key (callers write this at most once a minute per key).
    pub async fn touch_api_key(&self, id: i64, at: DateTime<Utc>) -> Result<()> {
        let _turn = self.turn(Priority::Background).await;
        sqlx::query("UPDATE api_keys SET last_used_at = $2 WHERE id = $1")
            .bind(id)
            .bind(millis(at))
            .execute(&self.writer)
            .await?;
        Ok(())
    }
}

fn key_from_row(row: &AnyRow) -> Result<ApiKey> {
    Ok(ApiKey {
        id: row.try_get("id")?,
        workspace: row.try_get("workspace")?,
        user_id: row.try_get("user_id")?,
        username: row.try_get("username")?,
        name: row.try_get("name")?,
        prefix: row.try_get("prefix")?,
        roles: json(row, "roles")?,
        created_at: ts(row, "created_at")?,
        expires_at: ts_opt(row, "expires_at")?,
        last_used_at: ts_opt(row, "last_used_at")?,
        revoked_at: ts_opt(row, "revoked_at")?,
    })
}
