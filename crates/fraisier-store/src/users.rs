//! Users of a tenant: creation with a unique username, lookup for login, password changes.

use sqlx::any::AnyRow;
use sqlx::Row;

use crate::sql::{self, json, json_text, millis, now, ts};
use crate::turns::Priority;
use crate::{Result, Store, StoreError, User};

const USER_COLUMNS: &str = "id, tenant_id, username, password_hash, roles, created_at";

// === impl Store ===

impl Store {
    /// A username already taken in the tenant is `AlreadyExists`.
    pub async fn create_user(
        &self,
        tenant: &str,
        username: &str,
        password_hash: &str,
        roles: &[String],
    ) -> Result<User> {
        let _turn = self.turn(Priority::Interactive).await;
        let row = sqlx::query(&format!(
            "INSERT INTO users (tenant_id, username, password_hash, roles, created_at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING {USER_COLUMNS}"
        ))
        .bind(tenant)
        .bind(username)
        .bind(password_hash)
        .bind(json_text(&roles))
        .bind(millis(now()))
        .fetch_one(&self.writer)
        .await
        .map_err(StoreError::from);
        match row {
            Ok(row) => user_from_row(&row),
            Err(e) if sql::is_unique_violation(&e) => {
                Err(StoreError::AlreadyExists(format!("user {username:?}")))
            }
            Err(e) => Err(e),
        }
    }

    pub async fn user_by_name(&self, tenant: &str, username: &str) -> Result<User> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 AND username = $2"
        ))
        .bind(tenant)
        .bind(username)
        .fetch_one(&self.pool)
        .await?;
        user_from_row(&row)
    }

    pub async fn set_password(
        &self,
        tenant: &str,
        username: &str,
        password_hash: &str,
    ) -> Result<()> {
        let _turn = self.turn(Priority::Interactive).await;
        let done = sqlx::query(
            "UPDATE users SET password_hash = $3 WHERE tenant_id = $1 AND username = $2",
        )
        .bind(tenant)
        .bind(username)
        .bind(password_hash)
        .execute(&self.writer)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    pub async fn count_users(&self, tenant: &str) -> Result<u64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM users WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_one(&self.pool)
            .await?;
        sql::count(&row, "n")
    }
}

fn user_from_row(row: &AnyRow) -> Result<User> {
    Ok(User {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        username: row.try_get("username")?,
        password_hash: row.try_get("password_hash")?,
        roles: json(row, "roles")?,
        created_at: ts(row, "created_at")?,
    })
}
