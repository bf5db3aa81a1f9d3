//! Workspaces (tenants) and the projects inside them: names with a display name and a
//! description, either declared in fraisier.yaml (kept in step at every start) or made
//! through the API.

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::sql::{self, millis, now, ts};
use crate::turns::Priority;
use crate::{Result, Store, StoreError};

/// A workspace, or a project of one (`workspace` set).
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    /// The workspace a project belongs to; `None` for a workspace.
    pub workspace: Option<String>,
    pub name: String,
    pub display_name: Option<String>,
    pub description: Option<String>,
    /// Written in fraisier.yaml: changed there, not through the API.
    pub declared: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a group is made or changed with.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupFields {
    pub name: String,
    pub display_name: Option<String>,
    pub description: Option<String>,
}

/// Which of the two tables: a workspace, or a project of a workspace.
#[derive(Clone, Copy)]
enum Kind<'a> {
    Workspace,
    Project { workspace: &'a str },
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

// === impl Kind ===

impl<'a> Kind<'a> {
    fn table(self) -> &'static str {
        match self {
            Kind::Workspace => "workspaces",
            Kind::Project { .. } => "projects",
        }
    }

    /// The rows of this kind: every workspace, or the projects of one. Parameters after
    /// `first` are the caller's.
    fn scope(self, first: usize) -> String {
        match self {
            Kind::Workspace => "1 = 1".into(),
            Kind::Project { .. } => format!("workspace = ${first}"),
        }
    }

    /// Binds the scope's parameter, if it has one.
    fn bind<'q>(self, q: Query<'q>) -> Query<'q>
    where
        'a: 'q,
    {
        match self {
            Kind::Workspace => q,
            Kind::Project { workspace } => q.bind(workspace),
        }
    }

    fn what(self, name: &str) -> String {
        match self {
            Kind::Workspace => format!("workspace {name:?}"),
            Kind::Project { .. } => format!("project {name:?}"),
        }
    }
}

// === impl Store ===

impl Store {
    pub async fn workspaces(&self) -> Result<Vec<Group>> {
        self.groups(Kind::Workspace).await
    }

    pub async fn workspace(&self, name: &str) -> Result<Group> {
        self.group(Kind::Workspace, name).await
    }

    pub async fn create_workspace(&self, fields: &GroupFields) -> Result<Group> {
        self.create_group(Kind::Workspace, fields, false).await
    }

    pub async fn update_workspace(&self, fields: &GroupFields) -> Result<Group> {
        self.update_group(Kind::Workspace, fields).await
    }

    pub async fn delete_workspace(&self, name: &str) -> Result<()> {
        self.delete_group(Kind::Workspace, name).await
    }

    /// Makes the workspaces written in fraisier.yaml exist with what it says of them; one
    /// no longer written there stays, as if made through the API.
    pub async fn declare_workspaces(&self, declared: &[GroupFields]) -> Result<()> {
        self.declare(Kind::Workspace, declared).await
    }

    pub async fn projects(&self, workspace: &str) -> Result<Vec<Group>> {
        self.groups(Kind::Project { workspace }).await
    }

    pub async fn project(&self, workspace: &str, name: &str) -> Result<Group> {
        self.group(Kind::Project { workspace }, name).await
    }

    pub async fn create_project(&self, workspace: &str, fields: &GroupFields) -> Result<Group> {
        self.create_group(Kind::Project { workspace }, fields, false)
            .await
    }

    pub async fn update_project(&self, workspace: &str, fields: &GroupFields) -> Result<Group> {
        self.update_group(Kind::Project { workspace }, fields).await
    }

    pub async fn delete_project(&self, workspace: &str, name: &str) -> Result<()> {
        self.delete_group(Kind::Project { workspace }, name).await
    }

    /// As `declare_workspaces`, for the projects a workspace's fraises name.
    pub async fn declare_projects(&self, workspace: &str, declared: &[GroupFields]) -> Result<()> {
        self.declare(Kind::Project { workspace }, declared).await
    }

    async fn groups(&self, kind: Kind<'_>) -> Result<Vec<Group>> {
        let q = format!(
            "SELECT * FROM {} WHERE {} ORDER BY name",
            kind.table(),
            kind.scope(1)
        );
        let rows = kind.bind(sqlx::query(&q)).fetch_all(&self.pool).await?;
        rows.iter().map(|r| group_from_row(kind, r)).collect()
    }

    async fn group(&self, kind: Kind<'_>, name: &str) -> Result<Group> {
        let q = format!(
            "SELECT * FROM {} WHERE name = $1 AND {}",
            kind.table(),
            kind.scope(2)
        );
        let row = kind
            .bind(sqlx::query(&q).bind(name))
            .fetch_one(&self.pool)
            .await?;
        group_from_row(kind, &row)
    }

    async fn create_group(&self, kind: Kind<'_>, f: &GroupFields, declared: bool) -> Result<Group> {
        {
            let _turn = self.turn(Priority::Interactive).await;
            let q = match kind {
                Kind::Workspace => "INSERT INTO workspaces (name, display_name, description, declared, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $5)",
                Kind::Project { .. } => "INSERT INTO projects (name, display_name, description, declared, created_at, updated_at, workspace) \
                     VALUES ($1, $2, $3, $4, $5, $5, $6)",
            };
            let q = sqlx::query(q)
                .bind(&f.name)
                .bind(&f.display_name)
                .bind(&f.description)
                .bind(i64::from(declared))
                .bind(millis(now()));
            match kind
                .bind(q)
                .execute(&self.writer)
                .await
                .map_err(StoreError::from)
            {
                Ok(_) => {}
                Err(e) if sql::is_unique_violation(&e) => {
                    return Err(StoreError::AlreadyExists(kind.what(&f.name)))
                }
                Err(e) => return Err(e),
            }
        }
        self.group(kind, &f.name).await
    }

    async fn update_group(&self, kind: Kind<'_>, f: &GroupFields) -> Result<Group> {
        {
            let _turn = self.turn(Priority::Interactive).await;
            let q = format!(
                "UPDATE {} SET display_name = $2, description = $3, updated_at = $4 WHERE name = $1 AND {}",
                kind.table(),
                kind.scope(5)
            );
            let q = sqlx::query(&q)
                .bind(&f.name)
                .bind(&f.display_name)
                .bind(&f.description)
                .bind(millis(now()));
            if kind.bind(q).execute(&self.writer).await?.rows_affected() == 0 {
                return Err(StoreError::NotFound);
            }
        }
        self.group(kind, &f.name).await
    }

    async fn delete_group(&self, kind: Kind<'_>, name: &str) -> Result<()> {
        let _turn = self.turn(Priority::Interactive).await;
        let q = format!(
            "DELETE FROM {} WHERE name = $1 AND {}",
            kind.table(),
            kind.scope(2)
        );
        if kind
            .bind(sqlx::query(&q).bind(name))
            .execute(&self.writer)
            .await?
            .rows_affected()
            == 0
        {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn declare(&self, kind: Kind<'_>, declared: &[GroupFields]) -> Result<()> {
        let mut tx = self.begin_write_as(Priority::Interactive).await?;
        let q = format!(
            "UPDATE {} SET declared = 0 WHERE {}",
            kind.table(),
            kind.scope(1)
        );
        kind.bind(sqlx::query(&q)).execute(&mut *tx).await?;
        let at = millis(now());
        for f in declared {
            let q = match kind {
                Kind::Workspace => "INSERT INTO workspaces (name, display_name, description, declared, created_at, updated_at) \
                     VALUES ($1, $2, $3, 1, $4, $4) ON CONFLICT (name) DO UPDATE SET \
                     display_name = excluded.display_name, description = excluded.description, declared = 1, updated_at = excluded.updated_at",
                Kind::Project { .. } => "INSERT INTO projects (name, display_name, description, declared, created_at, updated_at, workspace) \
                     VALUES ($1, $2, $3, 1, $4, $4, $5) ON CONFLICT (workspace, name) DO UPDATE SET declared = 1",
            };
            let q = sqlx::query(q)
                .bind(&f.name)
                .bind(&f.display_name)
                .bind(&f.description)
                .bind(at);
            kind.bind(q).execute(&mut *tx).await?;
        }
        tx.commit().await
    }
}

fn group_from_row(kind: Kind<'_>, row: &AnyRow) -> Result<Group> {
    let declared: i64 = row.try_get("declared")?;
    Ok(Group {
        workspace: match kind {
            Kind::Workspace => None,
            Kind::Project { .. } => Some(row.try_get("workspace")?),
        },
        name: row.try_get("name")?,
        display_name: row.try_get("display_name")?,
        description: row.try_get("description")?,
        declared: declared != 0,
        created_at: ts(row, "created_at")?,
        updated_at: ts(row, "updated_at")?,
    })
}
