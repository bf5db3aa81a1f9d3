//! The artifact registry's records (seed 003): named artifacts of a workspace and their
//! immutable versions, each naming a blob by digest. The bytes are in `blobs`.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::sql::{contains_pattern, count, json, json_text, millis, now, ts};
use crate::turns::Priority;
use crate::{Result, Store, StoreError};

#[derive(Clone, Debug, PartialEq)]
pub struct Artifact {
    pub id: i64,
    pub tenant_id: String,
    pub name: String,
    /// Seed 003's artifact type (`api`, `model`, `client`, `server`), as the wire spells it.
    pub kind: String,
    pub description: Option<String>,
    pub tags: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_at: DateTime<Utc>,
    pub versions: u64,
    /// The most recently added version.
    pub latest: Option<String>,
    /// Bytes of all its versions.
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ArtifactVersion {
    pub version: String,
    /// `sha256:<hex>` of the bytes.
    pub digest: String,
    pub size: u64,
    /// `tar.gz`, `zip` or `file`.
    pub format: String,
    pub metadata: Value,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
}

/// A version to record, and the artifact it belongs to (made on first use).
#[derive(Clone, Debug)]
pub struct NewArtifactVersion {
    pub tenant_id: String,
    pub name: String,
    pub kind: String,
    pub description: Option<String>,
    pub tags: Vec<String>,
    pub version: String,
    pub digest: String,
    pub size: u64,
    pub format: String,
    pub metadata: Value,
    pub created_by: String,
}

/// Why a version could not be recorded.
#[derive(Clone, Debug, PartialEq)]
pub enum VersionConflict {
    /// The artifact exists with another type.
    Kind { existing: String },
    /// The version exists with other bytes: versions never change.
    Digest { existing: String },
}

#[derive(Clone, Debug, Default)]
pub struct ArtifactFilter {
    pub kind: Option<String>,
    /// A substring of the name or description.
    pub q: Option<String>,
    pub limit: u32,
    pub offset: u64,
}

const ARTIFACT_COLUMNS: &str = "a.id, a.tenant_id, a.name, a.kind, a.description, a.tags, \
     a.created_at, a.created_by, a.updated_at, \
     (SELECT COUNT(*) FROM artifact_versions v WHERE v.artifact_id = a.id) AS versions, \
     (SELECT CAST(COALESCE(SUM(v.size), 0) AS BIGINT) FROM artifact_versions v WHERE v.artifact_id = a.id) AS size, \
     (SELECT v.version FROM artifact_versions v WHERE v.artifact_id = a.id ORDER BY v.id DESC LIMIT 1) AS latest";

const VERSION_COLUMNS: &str =
    "v.version, v.digest, v.size, v.format, v.metadata, v.created_at, v.created_by";

// === impl Store ===

impl Store {
    /// Records a version, making its artifact if it is new. The same version with the same
    /// bytes again is no change (`Ok(.., false)`); with other bytes, or under an artifact of
    /// another type, it is refused.
    pub async fn add_artifact_version(
        &self,
        new: &NewArtifactVersion,
    ) -> Result<std::result::Result<(ArtifactVersion, bool), VersionConflict>> {
        let mut tx = self.begin_write_as(Priority::Interactive).await?;
        let at = millis(now());
        let existing =
            sqlx::query("SELECT id, kind FROM artifacts WHERE tenant_id = $1 AND name = $2")
                .bind(&new.tenant_id)
                .bind(&new.name)
                .fetch_optional(&mut *tx)
                .await?;
        let artifact_id: i64 = match existing {
            Some(row) => {
                let kind: String = row.try_get("kind")?;
                if kind != new.kind {
                    return Ok(Err(VersionConflict::Kind { existing: kind }));
                }
                row.try_get("id")?
            }
            None => sqlx::query(
                "INSERT INTO artifacts (tenant_id, name, kind, description, tags, created_at, created_by, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $6) RETURNING id",
            )
            .bind(&new.tenant_id)
            .bind(&new.name)
            .bind(&new.kind)
            .bind(&new.description)
            .bind(json_text(&new.tags))
            .bind(at)
            .bind(&new.created_by)
            .fetch_one(&mut *tx)
            .await?
            .try_get("id")?,
        };
        let present = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM artifact_versions v WHERE v.artifact_id = $1 AND v.version = $2"
        ))
        .bind(artifact_id)
        .bind(&new.version)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = present {
            let v = version_from_row(&row)?;
            if v.digest != new.digest {
                return Ok(Err(VersionConflict::Digest { existing: v.digest }));
            }
            return Ok(Ok((v, false)));
        }
        sqlx::query(
            "INSERT INTO artifact_versions (artifact_id, version, digest, size, format, metadata, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(artifact_id)
        .bind(&new.version)
        .bind(&new.digest)
        .bind(new.size as i64)
        .bind(&new.format)
        .bind(json_text(&new.metadata))
        .bind(at)
        .bind(&new.created_by)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE artifacts SET updated_at = $1 WHERE id = $2")
            .bind(at)
            .bind(artifact_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let v = self
            .artifact_version(&new.tenant_id, &new.name, &new.version)
            .await?;
        Ok(Ok((v, true)))
    }

    /// A workspace's artifacts by name, with how many are there in all.
    pub async fn artifacts(
        &self,
        tenant: &str,
        f: &ArtifactFilter,
    ) -> Result<(Vec<Artifact>, u64)> {
        let q = f.q.as_deref().map(contains_pattern);
        let filter = "a.tenant_id = $1 AND ($2 IS NULL OR a.kind = $2) \
             AND ($3 IS NULL OR lower(a.name) LIKE $3 ESCAPE '\\' OR lower(a.description) LIKE $3 ESCAPE '\\')";
        let total = sqlx::query(&format!(
            "SELECT COUNT(*) AS n FROM artifacts a WHERE {filter}"
        ))
        .bind(tenant)
        .bind(&f.kind)
        .bind(&q)
        .fetch_one(&self.pool)
        .await?;
        let rows = sqlx::query(&format!(
            "SELECT {ARTIFACT_COLUMNS} FROM artifacts a WHERE {filter} ORDER BY a.name LIMIT $4 OFFSET $5"
        ))
        .bind(tenant)
        .bind(&f.kind)
        .bind(&q)
        .bind(i64::from(f.limit.max(1)))
        .bind(f.offset as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok((
            rows.iter().map(artifact_from_row).collect::<Result<_>>()?,
            count(&total, "n")?,
        ))
    }

    pub async fn artifact(&self, tenant: &str, name: &str) -> Result<Artifact> {
        let row = sqlx::query(&format!(
            "SELECT {ARTIFACT_COLUMNS} FROM artifacts a WHERE a.tenant_id = $1 AND a.name = $2"
        ))
        .bind(tenant)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        artifact_from_row(&row)
    }

    /// An artifact's versions, newest first.
    pub async fn artifact_versions(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Vec<ArtifactVersion>> {
        let rows = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM artifact_versions v JOIN artifacts a ON a.id = v.artifact_id \
             WHERE a.tenant_id = $1 AND a.name = $2 ORDER BY v.id DESC"
        ))
        .bind(tenant)
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(version_from_row).collect()
    }

    pub async fn artifact_version(
        &self,
        tenant: &str,
        name: &str,
        version: &str,
    ) -> Result<ArtifactVersion> {
        let row = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM artifact_versions v JOIN artifacts a ON a.id = v.artifact_id \
             WHERE a.tenant_id = $1 AND a.name = $2 AND v.version = $3"
        ))
        .bind(tenant)
        .bind(name)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        version_from_row(&row)
    }

    /// Replaces a version's metadata (its bytes and digest never change).
    pub async fn set_version_metadata(
        &self,
        tenant: &str,
        name: &str,
        version: &str,
        metadata: &Value,
    ) -> Result<()> {
        let turn = self.turn(Priority::Interactive).await;
        let done = sqlx::query(
            "UPDATE artifact_versions SET metadata = $4 WHERE version = $3 AND artifact_id = \
             (SELECT id FROM artifacts WHERE tenant_id = $1 AND name = $2)",
        )
        .bind(tenant)
        .bind(name)
        .bind(version)
        .bind(json_text(metadata))
        .execute(&self.writer)
        .await;
        drop(turn);
        match done?.rows_affected() {
            0 => Err(StoreError::NotFound),
            _ => Ok(()),
        }
    }

    /// Appends `entry` to the list `key` of a version's metadata, in one write: two appends at
    /// once both land.
    pub async fn append_version_metadata(
        &self,
        tenant: &str,
        name: &str,
        version: &str,
        key: &str,
        entry: &Value,
    ) -> Result<()> {
        let mut tx = self.begin_write_as(Priority::Interactive).await?;
        // SQLite's write transaction is exclusive already; PostgreSQL's must lock the row.
        let lock = if self.backend == crate::store::Backend::Postgres {
            " FOR UPDATE OF v"
        } else {
            ""
        };
        let row = sqlx::query(&format!(
            "SELECT v.id, v.metadata FROM artifact_versions v JOIN artifacts a ON a.id = v.artifact_id \
             WHERE a.tenant_id = $1 AND a.name = $2 AND v.version = $3{lock}"
        ))
        .bind(tenant)
        .bind(name)
        .bind(version)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        let id: i64 = row.try_get("id")?;
        let mut metadata: Value = json(&row, "metadata")?;
        if !metadata.is_object() {
            metadata = Value::Object(serde_json::Map::new());
        }
        match metadata.get_mut(key).and_then(Value::as_array_mut) {
            Some(list) => list.push(entry.clone()),
            None => metadata[key] = Value::Array(vec![entry.clone()]),
        }
        sqlx::query("UPDATE artifact_versions SET metadata = $1 WHERE id = $2")
            .bind(json_text(&metadata))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Changes an artifact's description and tags (`None`: left as they are).
    pub async fn update_artifact(
        &self,
        tenant: &str,
        name: &str,
        description: Option<Option<&str>>,
        tags: Option<&[String]>,
    ) -> Result<Artifact> {
        let turn = self.turn(Priority::Interactive).await;
        let done = sqlx::query(
            "UPDATE artifacts SET \
             description = CASE WHEN $3 = 1 THEN $4 ELSE description END, \
             tags = CASE WHEN $5 = 1 THEN $6 ELSE tags END, updated_at = $7 \
             WHERE tenant_id = $1 AND name = $2",
        )
        .bind(tenant)
        .bind(name)
        .bind(i64::from(description.is_some()))
        .bind(description.flatten())
        .bind(i64::from(tags.is_some()))
        .bind(tags.map(json_text))
        .bind(millis(now()))
        .execute(&self.writer)
        .await;
        drop(turn);
        if done?.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        self.artifact(tenant, name).await
    }

    /// Removes one version; returns it (its blob may now be unreferenced).
    pub async fn delete_artifact_version(
        &self,
        tenant: &str,
        name: &str,
        version: &str,
    ) -> Result<ArtifactVersion> {
        let v = self.artifact_version(tenant, name, version).await?;
        let mut tx = self.begin_write_as(Priority::Interactive).await?;
        sqlx::query(
            "DELETE FROM artifact_versions WHERE version = $3 AND artifact_id = \
             (SELECT id FROM artifacts WHERE tenant_id = $1 AND name = $2)",
        )
        .bind(tenant)
        .bind(name)
        .bind(version)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(v)
    }

    /// Removes an artifact and all its versions; returns the versions.
    pub async fn delete_artifact(&self, tenant: &str, name: &str) -> Result<Vec<ArtifactVersion>> {
        self.artifact(tenant, name).await?;
        let versions = self.artifact_versions(tenant, name).await?;
        let mut tx = self.begin_write_as(Priority::Interactive).await?;
        sqlx::query(
            "DELETE FROM artifact_versions WHERE artifact_id = \
             (SELECT id FROM artifacts WHERE tenant_id = $1 AND name = $2)",
        )
        .bind(tenant)
        .bind(name)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM artifacts WHERE tenant_id = $1 AND name = $2")
            .bind(tenant)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(versions)
    }

    /// Whether a version of this workspace names these bytes.
    pub async fn blob_in_workspace(&self, tenant: &str, digest: &str) -> Result<bool> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM artifact_versions v JOIN artifacts a ON a.id = v.artifact_id              WHERE a.tenant_id = $1 AND v.digest = $2",
        )
        .bind(tenant)
        .bind(digest)
        .fetch_one(&self.pool)
        .await?;
        Ok(count(&row, "n")? > 0)
    }

    /// Whether any version of any workspace still names these bytes.
    pub async fn blob_referenced(&self, digest: &str) -> Result<bool> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM artifact_versions WHERE digest = $1")
            .bind(digest)
            .fetch_one(&self.pool)
            .await?;
        Ok(count(&row, "n")? > 0)
    }
}

fn artifact_from_row(row: &AnyRow) -> Result<Artifact> {
    Ok(Artifact {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        name: row.try_get("name")?,
        kind: row.try_get("kind")?,
        description: row.try_get("description")?,
        tags: json(row, "tags")?,
        created_at: ts(row, "created_at")?,
        created_by: row.try_get("created_by")?,
        updated_at: ts(row, "updated_at")?,
        versions: count(row, "versions")?,
        latest: row.try_get("latest")?,
        size: count(row, "size")?,
    })
}

fn version_from_row(row: &AnyRow) -> Result<ArtifactVersion> {
    let size: i64 = row.try_get("size")?;
    Ok(ArtifactVersion {
        version: row.try_get("version")?,
        digest: row.try_get("digest")?,
        size: size as u64,
        format: row.try_get("format")?,
        metadata: json(row, "metadata")?,
        created_at: ts(row, "created_at")?,
        created_by: row.try_get("created_by")?,
    })
}
