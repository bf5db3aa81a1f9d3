//! A run's build step: a clean tree of the commit, the fraise's `build` run in it on the
//! server, and what it produced (`artifact.path`, else the whole tree) packed into the
//! artifact store as the run's version. Safe to repeat: the tree is made afresh, and a
//! version the store already has is used as it is.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fraisier_model::artifact::ArtifactKind;
use fraisier_model::config::FraiseConfig;
use fraisier_model::run::{Component, LogLevel};
use fraisier_model::service::ArtifactRef;
use fraisier_store::Run;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::artifacts::{artifact_ref, pack_dir};
use crate::git::GitError;
use crate::request::BuildPlan;
use crate::{ArtifactPush, Engine, EngineError};

/// A logged line of build output is cut at this many bytes.
const MAX_LINE_BYTES: usize = 4096;

/// What of the server's environment a build sees: where tools are and how they talk, never
/// the server's settings or credentials (a build runs the repository's code).
const BUILD_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "CARGO_HOME",
    "RUSTUP_HOME",
    "GOPATH",
    "GOCACHE",
    "GOMODCACHE",
    "NPM_CONFIG_CACHE",
    "PIP_CACHE_DIR",
];

/// How long output is still read after the build's shell exited (a background process it
/// left may hold the pipe open).
const DRAIN: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub(crate) enum BuildError {
    #[error("cannot check out {commit}: {source}")]
    Source { commit: String, source: GitError },
    #[error("the build `{command}` {status}")]
    Failed { command: String, status: String },
    #[error("the build timed out after {0:?}")]
    TimedOut(Duration),
    #[error("the build was stopped")]
    Interrupted,
    #[error("the build left no {0} to release")]
    NothingBuilt(String),
    #[error("{0}")]
    Io(String),
    #[error("cannot store the release: {0}")]
    Store(#[from] EngineError),
}

/// What a build produced.
pub(crate) struct Built {
    pub artifact: ArtifactRef,
    /// The store had the version already (built by another run, or before a restart).
    pub reused: bool,
}

// === impl Engine ===

impl Engine {
    /// Builds `plan` into the store as `run.version`. Stops (killing the build) when `cancel`
    /// is set or at `stop_at`, reporting [`BuildError::Interrupted`] for the caller to explain.
    pub(crate) async fn build_release(
        &self,
        run: &Run,
        f: &FraiseConfig,
        plan: &BuildPlan,
        mut cancel: watch::Receiver<Option<String>>,
        stop_at: Instant,
    ) -> Result<Built, BuildError> {
        if let Some(v) = self.stored_version(run).await? {
            return Ok(Built {
                artifact: v,
                reused: true,
            });
        }
        let tree = self
            .inner
            .settings
            .work_dir
            .join("builds")
            .join(format!("{}-{}", run.fraise, run.id));
        let _ = tokio::fs::remove_dir_all(&tree).await;
        let result = self
            .build_in(run, f, plan, &tree, &mut cancel, stop_at)
            .await;
        if let Err(e) = tokio::fs::remove_dir_all(&tree).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(tree = %tree.display(), error = %e, "cannot remove a build tree");
            }
        }
        result
    }

    async fn build_in(
        &self,
        run: &Run,
        f: &FraiseConfig,
        plan: &BuildPlan,
        tree: &Path,
        cancel: &mut watch::Receiver<Option<String>>,
        stop_at: Instant,
    ) -> Result<Built, BuildError> {
        let source = |e| BuildError::Source {
            commit: plan.commit.clone(),
            source: e,
        };
        let auth = self
            .git_auth(&run.tenant_id, f)
            .await
            .map_err(BuildError::Store)?;
        let mirror = self
            .mirrors()
            .fetch(&plan.url, &auth)
            .await
            .map_err(source)?;
        self.mirrors()
            .export(&mirror, &plan.commit, tree)
            .await
            .map_err(source)?;
        self.log(
            run,
            LogLevel::Info,
            Component::Build,
            &format!(
                "Checked out {} ({}) of {}",
                &plan.commit[..plan.commit.len().min(12)],
                plan.reference,
                plan.url
            ),
            json!({ "commit": plan.commit, "ref": plan.reference }),
        )
        .await;
        if let Some(command) = f.build.as_deref().filter(|c| !c.trim().is_empty()) {
            let limit = Duration::from_millis(f.build_timeout.0);
            let started = std::time::Instant::now();
            self.run_build(run, plan, command, tree, cancel, stop_at, limit)
                .await?;
            self.log(
                run,
                LogLevel::Info,
                Component::Build,
                &format!(
                    "Build succeeded in {:.1} s",
                    started.elapsed().as_secs_f64()
                ),
                json!({ "duration_ms": started.elapsed().as_millis() as u64 }),
            )
            .await;
        }
        let what = f.artifact.as_ref().map_or("", |a| a.path.as_str());
        // Resolved, so that a symlink committed as `dist` cannot pack what lies outside.
        let inside = match (
            std::fs::canonicalize(tree.join(what)),
            std::fs::canonicalize(tree),
        ) {
            (Ok(dir), Ok(root)) if dir.is_dir() && dir.starts_with(&root) => Some(dir),
            _ => None,
        };
        let Some(dir) = inside else {
            return Err(BuildError::NothingBuilt(format!(
                "directory {what:?} inside the checkout"
            )));
        };
        self.store_build(run, f, plan, &dir).await
    }

    /// Runs the build command in `tree`, its output (stdout and stderr, in order) logged line
    /// by line under component `build`.
    #[allow(clippy::too_many_arguments)]
    async fn run_build(
        &self,
        run: &Run,
        plan: &BuildPlan,
        command: &str,
        tree: &Path,
        cancel: &mut watch::Receiver<Option<String>>,
        run_deadline: Instant,
        limit: Duration,
    ) -> Result<(), BuildError> {
        let build_deadline = Instant::now() + limit;
        self.log(
            run,
            LogLevel::Info,
            Component::Build,
            &format!("Running the build: {command}"),
            json!({}),
        )
        .await;
        let inherited = std::env::vars().filter(|(k, _)| BUILD_ENV.contains(&k.as_str()));
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(format!("exec 2>&1\n{command}"))
            .current_dir(tree)
            .env_clear()
            .envs(inherited)
            .env("FRAISIER_COMMIT", &plan.commit)
            .env("FRAISIER_REF", &plan.reference)
            .env("FRAISIER_VERSION", &run.version)
            .env("FRAISIER_FRAISE", &run.fraise)
            .env("FRAISIER_ENVIRONMENT", &run.environment)
            .env(
                "FRAISIER_DEPLOYMENT_ID",
                fraisier_store::run_id_string(run.id),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BuildError::Io(format!("cannot start sh: {e}")))?;
        let group = child.id();
        let mut output = BufReader::new(child.stdout.take().expect("piped"));
        let mut buf = Vec::new();
        let mut open = true;
        let mut cancel_open = true;
        let status = loop {
            tokio::select! {
                read = output.read_until(b'\n', &mut buf), if open => match read {
                    Ok(0) | Err(_) => open = false,
                    Ok(_) => self.build_line(run, &mut buf).await,
                },
                status = child.wait() => break status,
                changed = cancel.changed(), if cancel_open => match changed {
                    Ok(()) if cancel.borrow().is_some() => {
                        kill_group(group).await;
                        return Err(BuildError::Interrupted);
                    }
                    Ok(()) => {}
                    Err(_) => cancel_open = false,
                },
                _ = tokio::time::sleep_until(build_deadline.min(run_deadline)) => {
                    kill_group(group).await;
                    // The run's own deadline is the caller's to report.
                    return Err(if build_deadline <= run_deadline {
                        BuildError::TimedOut(limit)
                    } else {
                        BuildError::Interrupted
                    });
                }
            }
        };
        // Whatever the build started in the background goes with it; what it wrote is read.
        kill_group(group).await;
        let drain_until = Instant::now() + DRAIN;
        while open {
            match tokio::time::timeout_at(drain_until, output.read_until(b'\n', &mut buf)).await {
                Ok(Ok(n)) if n > 0 => self.build_line(run, &mut buf).await,
                _ => open = false,
            }
        }
        if !buf.is_empty() {
            self.build_line(run, &mut buf).await;
        }
        let status = status.map_err(|e| BuildError::Io(e.to_string()))?;
        if status.success() {
            return Ok(());
        }
        Err(BuildError::Failed {
            command: command.to_string(),
            status: match status.code() {
                Some(c) => format!("exited with {c}"),
                None => "was killed by a signal".into(),
            },
        })
    }

    async fn build_line(&self, run: &Run, buf: &mut Vec<u8>) {
        while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            buf.pop();
        }
        let mut line = String::from_utf8_lossy(buf).into_owned();
        buf.clear();
        if line.len() > MAX_LINE_BYTES {
            let mut cut = MAX_LINE_BYTES;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        self.log(
            run,
            LogLevel::Info,
            Component::Build,
            &line,
            json!({ "source": "build" }),
        )
        .await;
    }

    /// Packs `dir` into the store as the run's version.
    async fn store_build(
        &self,
        run: &Run,
        f: &FraiseConfig,
        plan: &BuildPlan,
        dir: &Path,
    ) -> Result<Built, BuildError> {
        let tmp = self.blobs().root().join("tmp");
        tokio::fs::create_dir_all(&tmp)
            .await
            .map_err(|e| BuildError::Io(e.to_string()))?;
        let packed: PathBuf = tmp.join(format!("build-{}-{}.tar.gz", run.fraise, run.id));
        let (src, dest) = (dir.to_path_buf(), packed.clone());
        tokio::task::spawn_blocking(move || pack_dir(&src, &dest))
            .await
            .map_err(|e| BuildError::Io(e.to_string()))?
            .map_err(|e| BuildError::Io(format!("cannot pack the build: {e}")))?;
        let file = tokio::fs::File::open(&packed)
            .await
            .map_err(|e| BuildError::Io(e.to_string()))?;
        let push = ArtifactPush {
            tenant: run.tenant_id.clone(),
            name: run.fraise.clone(),
            kind: ArtifactKind::of_fraise(f.kind),
            version: run.version.clone(),
            description: f.description.clone(),
            tags: Vec::new(),
            metadata: json!({
                "source": "git",
                "repository": plan.url,
                "commit": plan.commit,
                "ref": plan.reference,
                "run": fraisier_store::run_id_string(run.id),
            }),
            by: run.triggered_by.clone(),
            limit: u64::MAX,
        };
        let pushed = self.push_artifact(&push, file).await;
        let _ = tokio::fs::remove_file(&packed).await;
        match pushed {
            Ok(p) => Ok(Built {
                artifact: artifact_ref(&p.version),
                reused: !p.created,
            }),
            // Another run built the same version meanwhile (builds need not be reproducible
            // byte for byte): a version never changes, so the stored one is the release.
            Err(EngineError::ArtifactConflict(_)) => match self.stored_version(run).await? {
                Some(artifact) => Ok(Built {
                    artifact,
                    reused: true,
                }),
                None => Err(BuildError::Io(format!(
                    "artifact {} exists with another type",
                    run.fraise
                ))),
            },
            Err(e) => Err(e.into()),
        }
    }

    async fn stored_version(&self, run: &Run) -> Result<Option<ArtifactRef>, EngineError> {
        match self
            .store()
            .artifact_version(&run.tenant_id, &run.fraise, &run.version)
            .await
        {
            Ok(v) => Ok(Some(artifact_ref(&v))),
            Err(fraisier_store::StoreError::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// Kills a build's process group (the shell and all it started); gone already is fine.
async fn kill_group(group: Option<u32>) {
    let Some(pgid) = group else { return };
    let _ = tokio::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}
