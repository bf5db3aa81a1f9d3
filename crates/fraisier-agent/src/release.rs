//! Releases on disk (`releases/<fraise>/<version>/`): install one from its source, digest the
//! unpacked tree (and keep a manifest of it, file by file), list and prune them, and hash one
//! again on request to tell whether anything was changed by hand since (drift).
//!
//! Installing goes through a temp directory renamed into place, so a crash leaves either no
//! release or a whole one; an existing release is never reinstalled (its digest is what
//! rollback and drift detection compare against).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use fraisier_model::artifact::ArtifactFormat;
use fraisier_model::service::{Change, FileChange, InstalledRelease, ReleaseCheck, ReleaseSpec};
use sha2::{Digest, Sha256};

use crate::fetch::Fetcher;
use crate::state_dir::{read_json, write_json_atomic};

/// Prefix of install directories not yet renamed into place; leftovers are crash debris.
const TEMP_PREFIX: &str = ".install-";
/// Where a fetched artifact waits to be unpacked (debris too, when a crash leaves it).
const FETCH_PREFIX: &str = ".install-fetch-";

/// The releases of every fraise on this agent.
pub struct ReleaseStore {
    root: PathBuf,
    /// One lock per fraise: installs and prunes of a fraise's releases never interleave, even
    /// when two of its environments reconcile at once.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// `installed()` per fraise, read from disk once and forgotten by every install and
    /// prune: every reconciler pass of every service publishes it.
    listings: Arc<Listings>,
    /// Brings artifacts from the server.
    fetcher: Arc<Fetcher>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("release source {0} does not exist")]
    SourceMissing(PathBuf),
    #[error("archive entry {entry:?} would be written outside the release directory")]
    EntryEscapes { entry: String },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Fetch(#[from] crate::fetch::FetchError),
    #[error("zip artifacts cannot be unpacked by the agent yet; push a .tar.gz")]
    ZipUnsupported,
    #[error("release {version} of {fraise} is not installed here")]
    NotInstalled { fraise: String, version: String },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ReleaseError + 'a {
    move |source| ReleaseError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Remembered listings, each with a generation that every change of the disk bumps: a
/// listing read while the disk changed is not kept.
#[derive(Default)]
struct Listings {
    by_fraise: Mutex<HashMap<String, Listing>>,
}

#[derive(Default)]
struct Listing {
    generation: u64,
    releases: Option<Vec<InstalledRelease>>,
}

impl Listings {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Listing>> {
        self.by_fraise.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The remembered listing, or the generation to hand to `keep` after reading the disk.
    fn get(&self, fraise: &str) -> Result<Vec<InstalledRelease>, u64> {
        let map = self.lock();
        match map.get(fraise) {
            Some(Listing {
                releases: Some(r), ..
            }) => Ok(r.clone()),
            Some(l) => Err(l.generation),
            None => Err(0),
        }
    }

    fn keep(&self, fraise: &str, generation: u64, releases: &[InstalledRelease]) {
        let mut map = self.lock();
        let listing = map.entry(fraise.to_string()).or_default();
        if listing.generation == generation {
            listing.releases = Some(releases.to_vec());
        }
    }

    /// Call after the disk changed.
    fn forget(&self, fraise: &str) {
        let mut map = self.lock();
        let listing = map.entry(fraise.to_string()).or_default();
        listing.generation += 1;
        listing.releases = None;
    }
}

// === impl ReleaseStore ===

impl ReleaseStore {
    pub fn new(root: impl Into<PathBuf>, fetcher: Arc<Fetcher>) -> Self {
        ReleaseStore {
            root: root.into(),
            locks: Mutex::default(),
            listings: Arc::default(),
            fetcher,
        }
    }

    pub fn fetcher(&self) -> &Fetcher {
        &self.fetcher
    }

    /// Where `version` of `fraise` is (or will be) unpacked.
    pub fn dir(&self, fraise: &str, version: &str) -> PathBuf {
        self.root.join(fraise).join(version)
    }

    /// Installs the release unless it is already there; returns its record either way.
    pub async fn ensure(
        &self,
        fraise: &str,
        version: &str,
        spec: &ReleaseSpec,
    ) -> Result<InstalledRelease, ReleaseError> {
        let lock = self.lock(fraise);
        let _held = lock.lock().await;
        let fraise_dir = self.root.join(fraise);
        let version = version.to_string();
        let mut source = spec.source.clone();
        // An artifact is fetched unless the release is there already; the fetched file is the
        // source, and goes once it is unpacked.
        let mut fetched_dir = None;
        if let Some(a) = spec
            .artifact
            .as_ref()
            .filter(|_| !fraise_dir.join(&version).is_dir())
        {
            let file = match a.format {
                ArtifactFormat::TarGz => "artifact.tar.gz".to_string(),
                ArtifactFormat::File => a.file_name.clone().unwrap_or_else(|| "artifact".into()),
                ArtifactFormat::Zip => return Err(ReleaseError::ZipUnsupported),
            };
            let dir = fraise_dir.join(format!(
                "{FETCH_PREFIX}{}",
                a.digest.trim_start_matches("sha256:")
            ));
            let _ = tokio::fs::remove_dir_all(&dir).await;
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(io_err("create", &dir))?;
            let path = dir.join(file);
            if let Err(e) = self.fetcher.fetch(&a.digest, &path).await {
                let _ = tokio::fs::remove_dir_all(&dir).await;
                return Err(e.into());
            }
            source = Some(path);
            fetched_dir = Some(dir);
        }
        let artifact = spec.artifact.as_ref().map(|a| a.digest.clone());
        let listings = self.listings.clone();
        let fraise_name = fraise.to_string();
        // The blocking install runs on even if this future is dropped; it forgets the listing
        // itself once the disk has changed.
        let installed = tokio::task::spawn_blocking(move || {
            let installed = install(&fraise_dir, &version, source.as_deref(), artifact);
            listings.forget(&fraise_name);
            installed
        })
        .await
        .map_err(|e| ReleaseError::Io {
            action: "install",
            path: PathBuf::new(),
            source: io::Error::other(e),
        })?;
        if let Some(dir) = fetched_dir {
            let _ = tokio::fs::remove_dir_all(&dir).await;
        }
        installed
    }

    /// The releases of `fraise` on disk, oldest first.
    pub fn installed(&self, fraise: &str) -> Vec<InstalledRelease> {
        match self.listings.get(fraise) {
            Ok(releases) => releases,
            Err(generation) => {
                let releases = self.read_installed(fraise);
                self.listings.keep(fraise, generation, &releases);
                releases
            }
        }
    }

    fn read_installed(&self, fraise: &str) -> Vec<InstalledRelease> {
        let mut out: Vec<InstalledRelease> = list_versions(&self.root.join(fraise))
            .into_iter()
            .filter_map(|v| {
                read_json(&record_path(&self.root.join(fraise), &v))
                    .ok()
                    .flatten()
            })
            .collect();
        out.sort_by(|a, b| {
            a.installed_at
                .cmp(&b.installed_at)
                .then_with(|| fraisier_model::version::compare(&a.version, &b.version))
        });
        out
    }

    /// Deletes the releases of `fraise` that are neither in `keep` nor among the newest
    /// `keep_others` of the rest. Returns the versions removed.
    pub async fn prune(
        &self,
        fraise: &str,
        keep: &BTreeSet<String>,
        keep_others: usize,
    ) -> Vec<String> {
        let lock = self.lock(fraise);
        let _held = lock.lock().await;
        let fraise_dir = self.root.join(fraise);
        let installed = self.read_installed(fraise);
        let mut others: Vec<&InstalledRelease> = installed
            .iter()
            .filter(|r| !keep.contains(&r.version))
            .collect();
        others.reverse(); // newest first
        let mut doomed: Vec<String> = others
            .iter()
            .skip(keep_others)
            .map(|r| r.version.clone())
            .collect();
        // A directory without its record is an install cut short after the rename.
        let recorded: BTreeSet<&str> = installed.iter().map(|r| r.version.as_str()).collect();
        doomed.extend(
            list_versions(&fraise_dir)
                .into_iter()
                .filter(|v| !recorded.contains(v.as_str()) && !keep.contains(v)),
        );
        for version in &doomed {
            let _ = fs::remove_file(record_path(&fraise_dir, version));
            let _ = fs::remove_file(manifest_path(&fraise_dir, version));
            if let Err(e) = fs::remove_dir_all(fraise_dir.join(version)) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(fraise, version, error = %e, "cannot remove release");
                }
            }
        }
        self.listings.forget(fraise);
        doomed
    }

    /// Hashes an installed release again and compares it with what was recorded when it was
    /// installed, file by file when its manifest is there.
    ///
    /// Without the fraise's lock: a long hash must not hold up an install. A release pruned
    /// meanwhile is reported not installed.
    pub async fn verify(&self, fraise: &str, version: &str) -> Result<ReleaseCheck, ReleaseError> {
        let fraise_dir = self.root.join(fraise);
        let (fraise, version) = (fraise.to_string(), version.to_string());
        tokio::task::spawn_blocking(move || {
            let record: InstalledRelease = read_json(&record_path(&fraise_dir, &version))
                .ok()
                .flatten()
                .ok_or_else(|| ReleaseError::NotInstalled {
                    fraise: fraise.clone(),
                    version: version.clone(),
                })?;
            let dir = fraise_dir.join(&version);
            let (actual, now) = survey(&dir).map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    ReleaseError::NotInstalled {
                        fraise: fraise.clone(),
                        version: version.clone(),
                    }
                } else {
                    io_err("digest", &dir)(e)
                }
            })?;
            let manifest: Option<Manifest> = read_json(&manifest_path(&fraise_dir, &version))
                .ok()
                .flatten();
            let changes = match manifest {
                Some(then) if record.digest != actual => compare(&then, &now),
                _ => Vec::new(),
            };
            Ok(ReleaseCheck {
                version,
                artifact: record.artifact,
                expected: record.digest,
                actual,
                changes,
            })
        })
        .await
        .map_err(|e| ReleaseError::Io {
            action: "verify",
            path: PathBuf::new(),
            source: io::Error::other(e),
        })?
    }

    /// Removes install directories a crash left behind.
    pub fn remove_debris(&self) {
        let Ok(fraises) = fs::read_dir(&self.root) else {
            return;
        };
        for fraise in fraises.flatten() {
            let Ok(entries) = fs::read_dir(fraise.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
    }

    fn lock(&self, fraise: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(fraise.to_string()).or_default().clone()
    }
}

fn record_path(fraise_dir: &Path, version: &str) -> PathBuf {
    fraise_dir.join(format!("{version}.json"))
}

/// Each entry of a release tree by relative path: `D` for a directory, `L<target>` for a
/// symlink, `F<exec bit><sha256>` for a file.
type Manifest = BTreeMap<String, String>;

fn manifest_path(fraise_dir: &Path, version: &str) -> PathBuf {
    fraise_dir.join(format!("{version}.manifest.json"))
}

/// What differs between a tree's manifest then and now.
fn compare(then: &Manifest, now: &Manifest) -> Vec<FileChange> {
    let mut out: Vec<FileChange> = then
        .iter()
        .filter_map(|(path, entry)| {
            let change = match now.get(path) {
                None => Change::Removed,
                Some(e) if e != entry => Change::Modified,
                Some(_) => return None,
            };
            Some(FileChange {
                path: path.clone(),
                change,
            })
        })
        .chain(
            now.keys()
                .filter(|p| !then.contains_key(*p))
                .map(|p| FileChange {
                    path: p.clone(),
                    change: Change::Added,
                }),
        )
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn list_versions(fraise_dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(fraise_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect()
}

/// Installs `version` into `fraise_dir/version` from `source` (blocking).
fn install(
    fraise_dir: &Path,
    version: &str,
    source: Option<&Path>,
    artifact: Option<String>,
) -> Result<InstalledRelease, ReleaseError> {
    let dest = fraise_dir.join(version);
    let record = record_path(fraise_dir, version);
    if dest.is_dir() {
        if let Some(existing) = read_json::<InstalledRelease>(&record).ok().flatten() {
            return Ok(existing);
        }
        // Renamed into place but the record was not written: finish the job.
        return write_record(&dest, &record, version, artifact);
    }
    fs::create_dir_all(fraise_dir).map_err(io_err("create", fraise_dir))?;
    let temp = fraise_dir.join(format!("{TEMP_PREFIX}{version}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&temp);
    let filled = fill(&temp, source);
    if let Err(e) = filled {
        let _ = fs::remove_dir_all(&temp);
        return Err(e);
    }
    fs::rename(&temp, &dest).map_err(io_err("rename into place", &dest))?;
    write_record(&dest, &record, version, artifact)
}

fn write_record(
    dest: &Path,
    record: &Path,
    version: &str,
    artifact: Option<String>,
) -> Result<InstalledRelease, ReleaseError> {
    let (digest, manifest) = survey(dest).map_err(io_err("digest", dest))?;
    let installed = InstalledRelease {
        version: version.to_string(),
        digest,
        artifact,
        installed_at: Utc::now(),
    };
    // The manifest before the record: a release is listed once its record is written.
    if let Some(fraise_dir) = dest.parent() {
        let path = manifest_path(fraise_dir, version);
        write_json_atomic(&path, &manifest, 0o644).map_err(io_err("write", &path))?;
    }
    write_json_atomic(record, &installed, 0o644).map_err(io_err("write", record))?;
    Ok(installed)
}

/// Puts the content of `source` into the new directory `dest`.
fn fill(dest: &Path, source: Option<&Path>) -> Result<(), ReleaseError> {
    let Some(source) = source else {
        return fs::create_dir(dest).map_err(io_err("create", dest));
    };
    let meta =
        fs::metadata(source).map_err(|_| ReleaseError::SourceMissing(source.to_path_buf()))?;
    if meta.is_dir() {
        return copy_tree(source, dest);
    }
    let name = source.to_string_lossy();
    if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        fs::create_dir(dest).map_err(io_err("create", dest))?;
        let file = File::open(source).map_err(io_err("open", source))?;
        return unpack_tar_gz(file, dest);
    }
    fs::create_dir(dest).map_err(io_err("create", dest))?;
    let file_name = source.file_name().unwrap_or(source.as_os_str());
    let target = dest.join(file_name);
    fs::copy(source, &target).map_err(io_err("copy", source))?;
    Ok(())
}

/// Copies a directory tree, keeping file modes and copying symlinks as symlinks.
fn copy_tree(src: &Path, dest: &Path) -> Result<(), ReleaseError> {
    fs::create_dir(dest).map_err(io_err("create", dest))?;
    let entries = fs::read_dir(src).map_err(io_err("read", src))?;
    for entry in entries {
        let entry = entry.map_err(io_err("read", src))?;
        let from = entry.path();
        let to = dest.join(entry.file_name());
        let kind = entry.file_type().map_err(io_err("stat", &from))?;
        if kind.is_symlink() {
            let target = fs::read_link(&from).map_err(io_err("read link", &from))?;
            std::os::unix::fs::symlink(target, &to).map_err(io_err("create link", &to))?;
        } else if kind.is_dir() {
            copy_tree(&from, &to)?;
        } else {
            // `fs::copy` carries the permission bits over.
            fs::copy(&from, &to).map_err(io_err("copy", &from))?;
        }
    }
    let mode = fs::metadata(src)
        .map_err(io_err("stat", src))?
        .permissions();
    fs::set_permissions(dest, mode).map_err(io_err("chmod", dest))
}

/// Unpacks a gzipped tar into `dest`, refusing (not skipping) any entry that would land
/// outside it: an absolute path or one with `..`.
pub fn unpack_tar_gz(reader: impl Read, dest: &Path) -> Result<(), ReleaseError> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(reader));
    archive.set_preserve_permissions(true);
    let entries = archive.entries().map_err(io_err("read archive", dest))?;
    for entry in entries {
        let mut entry = entry.map_err(io_err("read archive", dest))?;
        let path = entry
            .path()
            .map_err(io_err("read archive", dest))?
            .into_owned();
        let escapes = path.components().any(|c| {
            matches!(
                c,
                Component::ParentDir | Component::RootDir | Component::Prefix(_)
            )
        });
        if escapes {
            return Err(ReleaseError::EntryEscapes {
                entry: path.to_string_lossy().into_owned(),
            });
        }
        // `unpack_in` also refuses writes through symlinks that point outside `dest`.
        let unpacked = entry.unpack_in(dest).map_err(io_err("unpack", &path))?;
        if !unpacked {
            return Err(ReleaseError::EntryEscapes {
                entry: path.to_string_lossy().into_owned(),
            });
        }
    }
    Ok(())
}

/// sha256 over the tree: every entry in sorted relative-path order with its kind, and for
/// files the exec bit and contents, for symlinks the target. Timestamps and owners are left
/// out so that the same content always gives the same digest.
pub fn digest_tree(root: &Path) -> io::Result<String> {
    survey(root).map(|(digest, _)| digest)
}

/// The tree's digest (as `digest_tree`) and its manifest, in one pass over the files.
fn survey(root: &Path) -> io::Result<(String, Manifest)> {
    let mut paths = Vec::new();
    collect(root, Path::new(""), &mut paths)?;
    paths.sort();
    let mut hasher = Sha256::new();
    let mut manifest = Manifest::new();
    let mut buf = vec![0u8; 64 * 1024];
    for rel in &paths {
        let full = root.join(rel);
        let meta = fs::symlink_metadata(&full)?;
        let rel_bytes = rel.to_string_lossy();
        let entry = if meta.file_type().is_symlink() {
            let target = fs::read_link(&full)?.to_string_lossy().into_owned();
            hasher.update(b"L");
            hasher.update(rel_bytes.as_bytes());
            hasher.update([0]);
            hasher.update(target.as_bytes());
            format!("L{target}")
        } else if meta.is_dir() {
            hasher.update(b"D");
            hasher.update(rel_bytes.as_bytes());
            "D".to_string()
        } else {
            hasher.update(b"F");
            hasher.update(rel_bytes.as_bytes());
            hasher.update([0]);
            let exec = meta.permissions().mode() & 0o111 != 0;
            hasher.update([u8::from(exec)]);
            hasher.update(meta.len().to_le_bytes());
            let mut file_hasher = Sha256::new();
            let mut file = File::open(&full)?;
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                file_hasher.update(&buf[..n]);
            }
            format!("F{}{}", u8::from(exec), hex::encode(file_hasher.finalize()))
        };
        hasher.update([0xff]);
        manifest.insert(rel_bytes.into_owned(), entry);
    }
    Ok((hex::encode(hasher.finalize()), manifest))
}

fn collect(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let path = rel.join(entry.file_name());
        let is_dir = entry.file_type()?.is_dir();
        out.push(path.clone());
        if is_dir {
            collect(root, &path, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, content: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn tar_gz(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (path, content) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(0o755);
            header.set_entry_type(tar::EntryType::Regular);
            // `set_path` refuses `..`, so write the raw name as a hostile archive would.
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_cksum();
            builder.append(&header, content.as_bytes()).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn digest_is_stable_and_tracks_content_and_exec_bit() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("a/b.txt"), "hello");
        write(&dir.path().join("run.sh"), "echo hi");
        let first = digest_tree(dir.path()).unwrap();
        assert_eq!(first, digest_tree(dir.path()).unwrap());

        write(&dir.path().join("a/b.txt"), "hellO");
        let changed = digest_tree(dir.path()).unwrap();
        assert_ne!(first, changed);

        let script = dir.path().join("run.sh");
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        assert_ne!(changed, digest_tree(dir.path()).unwrap());
    }

    #[tokio::test]
    async fn verify_finds_files_changed_added_and_removed_by_hand() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        write(&src.join("app.sh"), "echo one");
        write(&src.join("conf/app.env"), "A=1");
        write(&src.join("README"), "read me");
        let store = ReleaseStore::new(
            tmp.path().join("releases"),
            Arc::new(Fetcher::load(tmp.path().join("server.json"))),
        );
        let spec = ReleaseSpec {
            source: Some(src.clone()),
            command: "true".into(),
            working_directory: None,
            env: Default::default(),
            secrets: Default::default(),
            artifact: None,
        };
        let installed = store.ensure("app", "1.0.0", &spec).await.unwrap();
        let clean = store.verify("app", "1.0.0").await.unwrap();
        assert!(!clean.drifted(), "{clean:?}");
        assert_eq!(clean.expected, installed.digest);
        assert!(clean.changes.is_empty());

        let dir = store.dir("app", "1.0.0");
        write(&dir.join("conf/app.env"), "A=2");
        write(&dir.join("hotfix.sh"), "echo patched");
        fs::remove_file(dir.join("README")).unwrap();
        let check = store.verify("app", "1.0.0").await.unwrap();
        assert!(check.drifted());
        assert_eq!(check.expected, installed.digest);
        assert_eq!(check.actual, digest_tree(&dir).unwrap());
        let changes: Vec<(&str, Change)> = check
            .changes
            .iter()
            .map(|c| (c.path.as_str(), c.change))
            .collect();
        assert_eq!(
            changes,
            vec![
                ("README", Change::Removed),
                ("conf/app.env", Change::Modified),
                ("hotfix.sh", Change::Added),
            ]
        );
        // An exec bit flipped by hand is a change too.
        write(&dir.join("conf/app.env"), "A=1");
        fs::write(dir.join("README"), "read me").unwrap();
        fs::remove_file(dir.join("hotfix.sh")).unwrap();
        assert!(!store.verify("app", "1.0.0").await.unwrap().drifted());
        fs::set_permissions(dir.join("app.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        let check = store.verify("app", "1.0.0").await.unwrap();
        assert_eq!(
            check.changes,
            vec![FileChange {
                path: "app.sh".into(),
                change: Change::Modified
            }]
        );
        assert!(matches!(
            store.verify("app", "9.9.9").await,
            Err(ReleaseError::NotInstalled { .. })
        ));
    }

    #[test]
    fn same_tree_elsewhere_has_same_digest() {
        let a = tempfile::tempdir().unwrap();
        write(&a.path().join("x/y"), "1");
        std::os::unix::fs::symlink("x/y", a.path().join("link")).unwrap();
        let b = tempfile::tempdir().unwrap();
        copy_tree(a.path(), &b.path().join("copy")).unwrap();
        assert!(fs::symlink_metadata(b.path().join("copy/link"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            digest_tree(a.path()).unwrap(),
            digest_tree(&b.path().join("copy")).unwrap()
        );
    }

    #[test]
    fn unpack_refuses_entries_escaping_the_dir() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("rel");
        fs::create_dir(&dest).unwrap();
        let archive = tar_gz(&[("ok.txt", "fine"), ("../evil.txt", "pwned")]);
        let err = unpack_tar_gz(&archive[..], &dest).unwrap_err();
        assert!(matches!(err, ReleaseError::EntryEscapes { .. }), "{err}");
        assert!(!dir.path().join("evil.txt").exists());

        let good = tar_gz(&[("bin/app", "#!/bin/sh\n")]);
        let dest2 = dir.path().join("rel2");
        fs::create_dir(&dest2).unwrap();
        unpack_tar_gz(&good[..], &dest2).unwrap();
        let mode = fs::metadata(dest2.join("bin/app"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "exec bits survive");
    }

    #[tokio::test]
    async fn installs_once_and_prunes_unreferenced() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        write(&src.join("index.html"), "v");
        let store = ReleaseStore::new(
            dir.path().join("releases"),
            Arc::new(Fetcher::load(dir.path().join("server.json"))),
        );
        let spec = ReleaseSpec {
            source: Some(src.clone()),
            command: "true".into(),
            working_directory: None,
            env: Default::default(),
            secrets: Default::default(),
            artifact: None,
        };
        let mut digests = Vec::new();
        for (i, v) in ["1.0.0", "1.1.0", "1.2.0", "2.0.0"].into_iter().enumerate() {
            digests.push(store.ensure("api", v, &spec).await.unwrap().digest);
            // The listing is remembered between installs, and never stale after one.
            assert_eq!(store.installed("api").len(), i + 1);
        }
        // Same content, same digest; a second install of an existing version is a no-op.
        assert!(digests.windows(2).all(|w| w[0] == w[1]));
        write(&src.join("index.html"), "changed");
        let again = store.ensure("api", "1.0.0", &spec).await.unwrap();
        assert_eq!(again.digest, digests[0]);

        let keep: BTreeSet<String> = ["1.0.0".to_string()].into();
        let removed = store.prune("api", &keep, 1).await;
        assert_eq!(removed.len(), 2, "{removed:?}");
        let left: Vec<String> = store
            .installed("api")
            .into_iter()
            .map(|r| r.version)
            .collect();
        assert_eq!(left, vec!["1.0.0".to_string(), "2.0.0".to_string()]);
        assert!(!store.dir("api", "1.1.0").exists());
    }
}
