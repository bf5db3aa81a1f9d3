//! The artifact registry (seed 003): versions pushed as streams into the content-addressed
//! blob store and recorded by digest; read back by name and version; never deleted while a
//! service deployment of the workspace runs them.

use fraisier_model::artifact::{artifact_name_problem, ArtifactFormat, ArtifactKind};
use fraisier_model::config::FraiseConfig;
use fraisier_model::environment::PromotionPolicy;
use fraisier_model::names::version_problem;
use fraisier_model::service::ArtifactRef;
use fraisier_store::blobs::{BlobError, BlobRef, BlobStore};
use fraisier_store::{
    Artifact, ArtifactFilter, ArtifactVersion, NewArtifactVersion, Run, StoreError, VersionConflict,
};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::{DeployRequest, Engine, EngineError};

/// A version to push: what it is called and what it carries.
#[derive(Clone, Debug)]
pub struct ArtifactPush {
    pub tenant: String,
    pub name: String,
    pub kind: ArtifactKind,
    pub version: String,
    pub description: Option<String>,
    pub tags: Vec<String>,
    pub metadata: Value,
    pub by: String,
    /// Bytes accepted at most.
    pub limit: u64,
}

/// A version of a fraise's artifact carried into an environment: deployed there from the
/// store, as it is. With `from`, what runs in that environment (and, when `version` is named
/// too, only if it is that version).
#[derive(Clone, Debug)]
pub struct Promotion {
    pub tenant: String,
    pub artifact: String,
    pub version: Option<String>,
    pub from: Option<String>,
    pub to: String,
    pub strategy: Option<fraisier_model::Strategy>,
    pub by: String,
}

/// A pushed version and whether it is new (the same bytes again are not).
#[derive(Clone, Debug)]
pub struct Pushed {
    pub version: ArtifactVersion,
    pub created: bool,
}

// === impl Engine ===

impl Engine {
    pub fn blobs(&self) -> &BlobStore {
        &self.inner.blobs
    }

    /// Checks a push before its bytes are read.
    pub fn check_push(&self, push: &ArtifactPush) -> Result<(), EngineError> {
        if let Some(p) = artifact_name_problem(&push.name) {
            return Err(EngineError::InvalidParameters {
                field: "name".into(),
                message: format!("artifact name {:?}: {p}", push.name),
            });
        }
        if let Some(p) = version_problem(&push.version) {
            return Err(EngineError::InvalidParameters {
                field: "version".into(),
                message: format!("version {:?}: {p}", push.version),
            });
        }
        Ok(())
    }

    /// Streams a version's bytes into the blob store and records it.
    pub async fn push_artifact(
        &self,
        push: &ArtifactPush,
        body: impl AsyncRead + Unpin,
    ) -> Result<Pushed, EngineError> {
        self.check_push(push)?;
        let blob = self.put_upload(body, push.limit).await?;
        self.record_push(push, &blob).await
    }

    /// Streams uploaded bytes into the blob store, before what they are is known (a form may
    /// name it after its file); [`Engine::record_push`] or [`Engine::discard_upload`] follows.
    pub async fn put_upload(
        &self,
        body: impl AsyncRead + Unpin,
        limit: u64,
    ) -> Result<BlobRef, EngineError> {
        let blob = self.blobs().put(body, limit).await.map_err(|e| match e {
            BlobError::TooLarge { limit } => EngineError::ArtifactTooLarge { limit },
            BlobError::Empty => EngineError::InvalidParameters {
                field: "body".into(),
                message: "the upload is empty: send the artifact's bytes as the body".into(),
            },
            BlobError::Read(e) => EngineError::InvalidParameters {
                field: "body".into(),
                message: format!("the upload could not be read: {e}"),
            },
            e => EngineError::Blob(e.to_string()),
        })?;
        *self
            .inner
            .uploads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(blob.digest.clone())
            .or_default() += 1;
        Ok(blob)
    }

    /// Drops stored upload bytes that no version names.
    pub async fn discard_upload(&self, blob: &BlobRef) {
        self.upload_settled(&blob.digest);
        self.forget_blob(&blob.digest).await;
    }

    /// Records stored bytes as the version `push` names (or, refused, drops them).
    pub async fn record_push(
        &self,
        push: &ArtifactPush,
        blob: &BlobRef,
    ) -> Result<Pushed, EngineError> {
        let recorded = self.record_version(push, blob).await;
        self.upload_settled(&blob.digest);
        if recorded.is_err() {
            // The bytes just stored may belong to nothing now.
            self.forget_blob(&blob.digest).await;
        }
        recorded
    }

    async fn record_version(
        &self,
        push: &ArtifactPush,
        blob: &BlobRef,
    ) -> Result<Pushed, EngineError> {
        self.check_push(push)?;
        let format = self.format_of(&blob.digest).await?;
        let recorded = self
            .store()
            .add_artifact_version(&NewArtifactVersion {
                tenant_id: push.tenant.clone(),
                name: push.name.clone(),
                kind: push.kind.as_str().to_string(),
                description: push.description.clone(),
                tags: push.tags.clone(),
                version: push.version.clone(),
                digest: blob.digest.clone(),
                size: blob.size,
                format: format.as_str().to_string(),
                metadata: push.metadata.clone(),
                created_by: push.by.clone(),
            })
            .await?;
        match recorded {
            Ok((version, created)) => Ok(Pushed { version, created }),
            Err(VersionConflict::Kind { existing }) => Err(EngineError::ArtifactConflict(format!(
                "artifact {} is of type {existing}, not {}",
                push.name,
                push.kind.as_str()
            ))),
            Err(VersionConflict::Digest { existing }) => Err(EngineError::ArtifactConflict(format!(
                "version {} of {} exists with other bytes ({existing}); versions never change: push a new version",
                push.version, push.name
            ))),
        }
    }

    /// An upload's bytes are recorded or dropped: no longer kept from `forget_blob`.
    fn upload_settled(&self, digest: &str) {
        let mut pending = self
            .inner
            .uploads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = pending.get_mut(digest) {
            *n -= 1;
            if *n == 0 {
                pending.remove(digest);
            }
        }
    }

    async fn format_of(&self, digest: &str) -> Result<ArtifactFormat, EngineError> {
        let (mut f, _) = self
            .blobs()
            .open(digest)
            .await
            .map_err(|e| EngineError::Blob(e.to_string()))?
            .ok_or_else(|| EngineError::Blob(format!("{digest} vanished after it was stored")))?;
        let mut head = [0u8; 4];
        let mut n = 0;
        while n < head.len() {
            match f.read(&mut head[n..]).await {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) => return Err(EngineError::Blob(e.to_string())),
            }
        }
        Ok(ArtifactFormat::sniff(&head[..n]))
    }

    pub async fn artifacts(
        &self,
        tenant: &str,
        filter: &ArtifactFilter,
    ) -> Result<(Vec<Artifact>, u64), EngineError> {
        Ok(self.store().artifacts(tenant, filter).await?)
    }

    pub async fn artifact(&self, tenant: &str, name: &str) -> Result<Artifact, EngineError> {
        self.store()
            .artifact(tenant, name)
            .await
            .map_err(|e| not_found(e, name, None))
    }

    pub async fn artifact_versions(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Vec<ArtifactVersion>, EngineError> {
        self.artifact(tenant, name).await?;
        Ok(self.store().artifact_versions(tenant, name).await?)
    }

    /// A version, or the newest when `version` is `None`.
    pub async fn artifact_version(
        &self,
        tenant: &str,
        name: &str,
        version: Option<&str>,
    ) -> Result<ArtifactVersion, EngineError> {
        match version {
            Some(v) => self
                .store()
                .artifact_version(tenant, name, v)
                .await
                .map_err(|e| not_found(e, name, Some(v))),
            None => self
                .artifact_versions(tenant, name)
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| EngineError::ArtifactMissing {
                    name: name.to_string(),
                    version: None,
                }),
        }
    }

    /// Changes an artifact's description and tags.
    pub async fn update_artifact(
        &self,
        tenant: &str,
        name: &str,
        description: Option<Option<&str>>,
        tags: Option<&[String]>,
    ) -> Result<Artifact, EngineError> {
        self.store()
            .update_artifact(tenant, name, description, tags)
            .await
            .map_err(|e| not_found(e, name, None))
    }

    /// Starts the deploy a promotion asks for and records it on the version
    /// (`metadata.promotions`).
    pub async fn promote(&self, p: &Promotion) -> Result<Run, EngineError> {
        let live = self.config();
        let ws = live.scope(&p.tenant);
        // The target's rule first: it holds whatever the artifact.
        if let Some(to) = ws.environments.get(&p.to) {
            if to.promotion_policy == PromotionPolicy::Sequential {
                match (ws.environment_before(&p.to), &p.from) {
                    (Some(before), Some(from)) if before == from => {}
                    (Some(before), _) => {
                        return Err(EngineError::PromotionBlocked(format!(
                            "{} takes promotions from {before} only (promotion_policy: sequential): give \"from\": \"{before}\"",
                            p.to
                        )))
                    }
                    (None, _) => {
                        return Err(EngineError::PromotionBlocked(format!(
                            "no environment comes before {} by order_index, and it takes promotions only from the one before it (promotion_policy: sequential): deploy to it instead",
                            p.to
                        )))
                    }
                }
            }
        }
        self.artifact(&p.tenant, &p.artifact).await?;
        if !ws.fraises.contains_key(&p.artifact) {
            return Err(EngineError::NotPromotable(format!(
                "no fraise is called {}: only a fraise's artifact is deployed, so only it can be promoted",
                p.artifact
            )));
        }
        let version = match (&p.from, &p.version) {
            (Some(from), version) => {
                if !ws.environments.contains_key(from) {
                    return Err(EngineError::EnvironmentNotFound(from.clone()));
                }
                if *from == p.to {
                    return Err(EngineError::InvalidParameters {
                        field: "from".into(),
                        message: "from and to name the same environment".into(),
                    });
                }
                let running = self
                    .store()
                    .service(&p.tenant, &p.artifact, from)
                    .await?
                    .and_then(|s| s.current_version);
                match (running, version) {
                    (None, _) => {
                        return Err(EngineError::NotPromotable(format!(
                            "{} runs nothing in {from} to promote",
                            p.artifact
                        )))
                    }
                    (Some(r), Some(v)) if r != *v => {
                        return Err(EngineError::NotPromotable(format!(
                            "{} {v} is not what runs in {from} ({r}): promote what was proven there",
                            p.artifact
                        )))
                    }
                    (Some(r), _) => r,
                }
            }
            (None, Some(v)) => v.clone(),
            (None, None) => {
                return Err(EngineError::InvalidParameters {
                    field: "version".into(),
                    message: "name the version to promote, or from: the environment whose running version to promote".into(),
                })
            }
        };
        let found = self
            .artifact_version(&p.tenant, &p.artifact, Some(&version))
            .await?;
        let run = self
            .submit(DeployRequest {
                tenant: p.tenant.clone(),
                fraise: p.artifact.clone(),
                environment: p.to.clone(),
                version: Some(version.clone()),
                from_store: true,
                strategy: p.strategy,
                metadata: serde_json::json!({
                    "promotion": { "from": p.from, "artifact_digest": found.digest },
                }),
                triggered_by: p.by.clone(),
                trigger_type: "promotion".into(),
                ..DeployRequest::default()
            })
            .await?;
        let entry = serde_json::json!({
            "environment": p.to,
            "from": p.from,
            "deployment_id": fraisier_store::run_id_string(run.id),
            "by": p.by,
            "at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
        // The run is what counts; a lost note on the version is worth a warning, not a failure.
        if let Err(e) = self
            .store()
            .append_version_metadata(&p.tenant, &p.artifact, &version, "promotions", &entry)
            .await
        {
            tracing::warn!(error = %e, "cannot record a promotion on its version");
        }
        Ok(run)
    }

    /// Removes a version (or, with `None`, the artifact and all its versions), unless a
    /// service deployment of the workspace runs one of them; blobs no version names any more
    /// are removed too.
    pub async fn delete_artifact(
        &self,
        tenant: &str,
        name: &str,
        version: Option<&str>,
    ) -> Result<(), EngineError> {
        let doomed = match version {
            Some(v) => vec![self.artifact_version(tenant, name, Some(v)).await?],
            None => self.artifact_versions(tenant, name).await?,
        };
        for s in self.store().services(tenant).await? {
            let running = s.fraise == name
                && doomed
                    .iter()
                    .any(|d| s.current_version.as_deref() == Some(d.version.as_str()));
            if running {
                return Err(EngineError::ArtifactInUse(format!(
                    "{name} {} runs in {}: deploy another version there first",
                    s.current_version.unwrap_or_default(),
                    s.environment
                )));
            }
        }
        let removed = match version {
            Some(v) => vec![self
                .store()
                .delete_artifact_version(tenant, name, v)
                .await
                .map_err(|e| not_found(e, name, Some(v)))?],
            None => self.store().delete_artifact(tenant, name).await?,
        };
        for v in removed {
            self.forget_blob(&v.digest).await;
        }
        Ok(())
    }

    /// The bytes a release of `version` runs, in the store: the registry's version when it has
    /// one, else what `artifact_path` names — a directory packed, a `.tar.gz` or a file as
    /// is — stored and recorded as that version. `None` for a fraise with neither (its
    /// command needs no files).
    pub(crate) async fn release_artifact(
        &self,
        tenant: &str,
        fraise: &str,
        f: &FraiseConfig,
        version: &str,
    ) -> Result<Option<ArtifactRef>, EngineError> {
        match self.store().artifact_version(tenant, fraise, version).await {
            Ok(v) => return Ok(Some(artifact_ref(&v))),
            Err(StoreError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        let Some(path) = f.artifact_for(version).filter(|p| p.exists()) else {
            return Ok(None);
        };
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let (reader_path, packed) = if path.is_dir() {
            let tmp = self.blobs().root().join("tmp");
            std::fs::create_dir_all(&tmp).map_err(|e| EngineError::Blob(e.to_string()))?;
            let packed = tmp.join(format!(
                "pack-{fraise}-{version}-{}.tar.gz",
                std::process::id()
            ));
            let (src, dest) = (path.clone(), packed.clone());
            tokio::task::spawn_blocking(move || pack_dir(&src, &dest))
                .await
                .map_err(|e| EngineError::Blob(e.to_string()))?
                .map_err(|e| EngineError::Blob(format!("cannot pack {}: {e}", path.display())))?;
            (packed.clone(), Some(packed))
        } else {
            (path.clone(), None)
        };
        let file = tokio::fs::File::open(&reader_path)
            .await
            .map_err(|e| EngineError::Blob(format!("{}: {e}", reader_path.display())))?;
        let kind = ArtifactKind::of_fraise(f.kind);
        let push = ArtifactPush {
            tenant: tenant.to_string(),
            name: fraise.to_string(),
            kind,
            version: version.to_string(),
            description: f.description.clone(),
            tags: Vec::new(),
            metadata: serde_json::json!({
                "source": "artifact_path",
                "path": path.display().to_string(),
                "file_name": file_name,
            }),
            by: "fraisier".into(),
            limit: u64::MAX,
        };
        let pushed = self.push_artifact(&push, file).await;
        if let Some(p) = packed {
            let _ = tokio::fs::remove_file(p).await;
        }
        Ok(Some(artifact_ref(&pushed?.version)))
    }

    /// Makes `version` of artifact `from` also that version of the fraise's own artifact (the
    /// same bytes, no copy), so that the fraise can deploy it. Nothing to do when the fraise's
    /// artifact has it already.
    pub async fn adopt_artifact(
        &self,
        tenant: &str,
        fraise: &str,
        from: &str,
        version: &str,
        by: &str,
    ) -> Result<(), EngineError> {
        let live = self.config();
        let config = live.scope(tenant);
        let f = config
            .fraises
            .get(fraise)
            .ok_or_else(|| EngineError::FraiseNotFound(fraise.to_string()))?;
        let source = self
            .store()
            .artifact_version(tenant, from, version)
            .await
            .map_err(|e| not_found(e, from, Some(version)))?;
        if from == fraise {
            return Ok(());
        }
        let kind = ArtifactKind::of_fraise(f.kind);
        let mut metadata = source.metadata.clone();
        if let Some(m) = metadata.as_object_mut() {
            m.insert(
                "adopted_from".into(),
                serde_json::json!(format!("{from}@{version}")),
            );
        }
        let recorded = self
            .store()
            .add_artifact_version(&NewArtifactVersion {
                tenant_id: tenant.to_string(),
                name: fraise.to_string(),
                kind: kind.as_str().to_string(),
                description: f.description.clone(),
                tags: Vec::new(),
                version: version.to_string(),
                digest: source.digest.clone(),
                size: source.size,
                format: source.format.clone(),
                metadata,
                created_by: by.to_string(),
            })
            .await?;
        match recorded {
            Ok(_) => Ok(()),
            Err(VersionConflict::Digest { existing }) => Err(EngineError::ArtifactConflict(
                format!("{fraise} has a version {version} already, with other bytes ({existing})"),
            )),
            Err(VersionConflict::Kind { existing }) => Err(EngineError::ArtifactConflict(format!(
                "artifact {fraise} is of type {existing}, not {}",
                kind.as_str()
            ))),
        }
    }

    /// A stored version reused for a commit must have been built from that commit of that
    /// repository: a version name alone (a moved tag, an upload named like a commit id) does
    /// not say what the bytes are.
    pub(crate) async fn check_provenance(
        &self,
        tenant: &str,
        fraise: &str,
        version: &str,
        plan: &crate::request::BuildPlan,
    ) -> Result<(), EngineError> {
        let v = self
            .store()
            .artifact_version(tenant, fraise, version)
            .await?;
        let m = &v.metadata;
        let built = m.get("source").and_then(Value::as_str) == Some("git")
            && m.get("commit").and_then(Value::as_str) == Some(plan.commit.as_str())
            && m.get("repository").and_then(Value::as_str) == Some(plan.url.as_str());
        if built {
            return Ok(());
        }
        Err(EngineError::ArtifactConflict(format!(
            "version {version} of {fraise} in the store was not built from commit {} of {}: \
             delete it (fraisier artifact delete) or deploy it as it is (POST /deployments/direct)",
            plan.commit, plan.url
        )))
    }

    /// The versions the registry has of a fraise's artifact.
    pub(crate) async fn registry_versions(
        &self,
        tenant: &str,
        fraise: &str,
    ) -> Result<Vec<String>, EngineError> {
        Ok(self
            .store()
            .artifact_versions(tenant, fraise)
            .await?
            .into_iter()
            .map(|v| v.version)
            .collect())
    }

    /// Removes a blob no version names; a failure only leaves a file for cleanup to find.
    /// Removes a blob no version names — unless an upload of the same bytes is still being
    /// read or checked, which would then find its bytes gone.
    async fn forget_blob(&self, digest: &str) {
        let uploading = self
            .inner
            .uploads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(digest);
        if uploading {
            return;
        }
        match self.store().blob_referenced(digest).await {
            Ok(false) => {
                if let Err(e) = self.blobs().remove(digest).await {
                    tracing::warn!(%digest, error = %e, "cannot remove an unreferenced blob");
                }
            }
            Ok(true) => {}
            Err(e) => tracing::warn!(%digest, error = %e, "cannot tell whether a blob is used"),
        }
    }
}

pub(crate) fn artifact_ref(v: &ArtifactVersion) -> ArtifactRef {
    let format = match v.format.as_str() {
        "tar.gz" => ArtifactFormat::TarGz,
        "zip" => ArtifactFormat::Zip,
        _ => ArtifactFormat::File,
    };
    ArtifactRef {
        digest: v.digest.clone(),
        format,
        file_name: v
            .metadata
            .get("file_name")
            .and_then(Value::as_str)
            .map(str::to_string),
    }
}

fn not_found(e: StoreError, name: &str, version: Option<&str>) -> EngineError {
    match e {
        StoreError::NotFound => EngineError::ArtifactMissing {
            name: name.to_string(),
            version: version.map(str::to_string),
        },
        e => EngineError::Store(e),
    }
}

/// Packs a directory into a gzipped tar at `dest`: entries sorted, owners and times zeroed, so
/// that the same tree always packs to the same bytes (and the same digest).
pub(crate) fn pack_dir(src: &std::path::Path, dest: &std::path::Path) -> std::io::Result<()> {
    let file = std::fs::File::create(dest)?;
    let gz = flate2::GzBuilder::new().write(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    append_sorted(&mut tar, src, std::path::Path::new(""))?;
    let gz = tar.into_inner()?;
    let file = gz.finish()?;
    file.sync_all()
}

fn append_sorted<W: std::io::Write>(
    tar: &mut tar::Builder<W>,
    root: &std::path::Path,
    rel: &std::path::Path,
) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = rel.join(e.file_name());
        let kind = e.file_type()?;
        if kind.is_dir() {
            tar.append_dir(&name, e.path())?;
            append_sorted(tar, root, &name)?;
        } else {
            tar.append_path_with_name(e.path(), &name)?;
        }
    }
    Ok(())
}
