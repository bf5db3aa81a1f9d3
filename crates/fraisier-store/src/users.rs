//! People: users (global, unique usernames) and their roles in each workspace they belong to,
//! and the one lookup every authenticated request makes.

use sqlx::any::AnyRow;
use sqlx::Row;

use crate::sql::{self, json, json_text, millis, now, ts};
use crate::turns::Priority;
use crate::{Member, Result, Store, StoreError, User};

const USER_COLUMNS: &str =
    "u.id, u.username, u.password_hash, u.disabled, u.created_at, u.updated_at";

/// What a token's bearer is now: looked up on every request so that a disabled user, a changed
/// role or a revoked token takes effect at once.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenSubject {
    pub username: String,
    pub disabled: bool,
    /// `None`: the user is no member of the token's workspace (any more).
    pub roles: Option<Vec<String>>,
    pub revoked: bool,
}

// === impl Store ===

impl Store {
    /// A new user with `roles` in `workspace`; a username already taken is `AlreadyExists`.
    pub async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        workspace: &str,
        roles: &[String],
    ) -> Result<Member> {
        let mut tx = self.begin_write_as(Priority::Interactive).await?;
        let at = millis(now());
        let row = sqlx::query(
            "INSERT INTO users (username, password_hash, created_at, updated_at, disabled) \
             VALUES ($1, $2, $3, $3, 0) RETURNING id",
        )
        .bind(username)
        .bind(password_hash)
        .bind(at)
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::from);
        let id: i64 = match row {
            Ok(row) => row.try_get("id")?,
            Err(e) if sql::is_unique_violation(&e) => {
                return Err(StoreError::AlreadyExists(format!("user {username:?}")))
            }
            Err(e) => return Err(e),
        };
        sqlx::query(
            "INSERT INTO memberships (user_id, workspace, roles, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(workspace)
        .bind(json_text(&roles))
        .bind(at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.member(workspace, username).await
    }

    pub async fn user_by_name(&self, username: &str) -> Result<User> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users u WHERE u.username = $1"
        ))
        .bind(username)
        .fetch_one(&self.pool)
        .await?;
        user_from_row(&row)
    }

    /// A user as a member of `workspace`; `NotFound` when either does not exist.
    pub async fn member(&self, workspace: &str, username: &str) -> Result<Member> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS}, m.workspace, m.roles FROM users u \
             JOIN memberships m ON m.user_id = u.id AND m.workspace = $1 WHERE u.username = $2"
        ))
        .bind(workspace)
        .bind(username)
        .fetch_one(&self.pool)
        .await?;
        member_from_row(&row)
    }

    /// Members of a workspace, by username.
    pub async fn members(&self, workspace: &str) -> Result<Vec<Member>> {
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS}, m.workspace, m.roles FROM users u \
             JOIN memberships m ON m.user_id = u.id AND m.workspace = $1 ORDER BY u.username"
        ))
        .bind(workspace)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(member_from_row).collect()
    }

    /// The workspaces a user belongs to, with the roles held in each.
    pub async fn memberships(&self, user_id: i64) -> Result<Vec<(String, Vec<String>)>> {
        let rows = sqlx::query(
            "SELECT workspace, roles FROM memberships WHERE user_id = $1 ORDER BY workspace",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("workspace")?, json(r, "roles")?)))
            .collect()
    }

    /// Sets a user's roles in a workspace, making them a member if they were not.
    pub async fn set_roles(
        &self,
        workspace: &str,
        username: &str,
        roles: &[String],
    ) -> Result<Member> {
        let user = self.user_by_name(username).await?;
        let _turn = self.turn(Priority::Interactive).await;
        let at = millis(now());
        sqlx::query(
            "INSERT INTO memberships (user_id, workspace, roles, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (user_id, workspace) DO UPDATE SET roles = excluded.roles",
        )
        .bind(user.id)
        .bind(workspace)
        .bind(json_text(&roles))
        .bind(at)
        .execute(&self.writer)
        .await?;
        sqlx::query("UPDATE users SET updated_at = $2 WHERE id = $1")
            .bind(user.id)
            .bind(at)
            .execute(&self.writer)
            .await?;
        drop(_turn);
        self.member(workspace, username).await
    }

    /// Disables or re-enables a user everywhere; their tokens and keys stop working at once.
    pub async fn set_disabled(&self, username: &str, disabled: bool) -> Result<()> {
        let _turn = self.turn(Priority::Interactive).await;
        let done =
            sqlx::query("UPDATE users SET disabled = $2, updated_at = $3 WHERE username = $1")
                .bind(username)
                .bind(i64::from(disabled))
                .bind(millis(now()))
                .execute(&self.writer)
                .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    pub async fn set_password(&self, username: &str, password_hash: &str) -> Result<()> {
        let _turn = self.turn(Priority::Interactive).await;
        let done =
            sqlx::query("UPDATE users SET password_hash = $2, updated_at = $3 WHERE username = $1")
                .bind(username)
                .bind(password_hash)
                .bind(millis(now()))
                .execute(&self.writer)
                .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Takes a user out of a workspace (with the API keys they made there); a user left in no
    /// workspace is deleted. `NotFound` when they were no member.
    pub async fn remove_member(&self, workspace: &str, username: &str) -> Result<()> {
        let user = self.user_by_name(username).await?;
        let mut tx = self.begin_write_as(Priority::Interactive).await?;
        let done = sqlx::query("DELETE FROM memberships WHERE user_id = $1 AND workspace = $2")
            .bind(user.id)
            .bind(workspace)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        sqlx::query("DELETE FROM api_keys WHERE user_id = $1 AND workspace = $2")
            .bind(user.id)
            .bind(workspace)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM users WHERE id = $1 AND NOT EXISTS \
             (SELECT 1 FROM memberships WHERE user_id = $1)",
        )
        .bind(user.id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    pub async fn count_users(&self) -> Result<u64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&self.pool)
            .await?;
        sql::count(&row, "n")
    }

    /// The bearer of a token for user `user_id` in `workspace` with id `jti`, as they are now;
    /// `NotFound` when the user no longer exists.
    pub async fn token_subject(
        &self,
        user_id: i64,
        workspace: &str,
        jti: &str,
    ) -> Result<TokenSubject> {
        let row = sqlx::query(
            "SELECT u.username, u.disabled, \
               (SELECT m.roles FROM memberships m WHERE m.user_id = u.id AND m.workspace = $2) AS roles, \
               (SELECT COUNT(*) FROM revoked_tokens r WHERE r.jti = $3) AS revoked \
             FROM users u WHERE u.id = $1",
        )
        .bind(user_id)
        .bind(workspace)
        .bind(jti)
        .fetch_one(&self.pool)
        .await?;
        let disabled: i64 = row.try_get("disabled")?;
        Ok(TokenSubject {
            username: row.try_get("username")?,
            disabled: disabled != 0,
            roles: sql::json_opt(&row, "roles")?,
            revoked: sql::count(&row, "revoked")? > 0,
        })
    }

    /// Records that token `jti` may no longer be used; kept until it would have expired.
    pub async fn revoke_token(
        &self,
        jti: &str,
        expires_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<()> {
        let _turn = self.turn(Priority::Interactive).await;
        sqlx::query(
            "INSERT INTO revoked_tokens (jti, expires_at, revoked_at) VALUES ($1, $2, $3) \
             ON CONFLICT (jti) DO NOTHING",
        )
        .bind(jti)
        .bind(millis(expires_at))
        .bind(millis(now()))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Forgets revocations of tokens that have expired anyway.
    pub async fn prune_revoked_tokens(&self) -> Result<u64> {
        let _turn = self.turn(Priority::Background).await;
        let done = sqlx::query("DELETE FROM revoked_tokens WHERE expires_at < $1")
            .bind(millis(now()))
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected())
    }
}

fn user_from_row(row: &AnyRow) -> Result<User> {
    let disabled: i64 = row.try_get("disabled")?;
    Ok(User {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        password_hash: row.try_get("password_hash")?,
        disabled: disabled != 0,
        created_at: ts(row, "created_at")?,
        updated_at: ts(row, "updated_at")?,
    })
}

fn member_from_row(row: &AnyRow) -> Result<Member> {
    Ok(Member {
        user: user_from_row(row)?,
        workspace: row.try_get("workspace")?,
        roles: json(row, "roles")?,
    })
}
