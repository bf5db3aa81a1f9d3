//! The agent's state directory: where each file lives, what the persisted records hold, and
//! writing files so that a crash leaves either the old or the new content, never a torn one.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use fraisier_model::service::service_key;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Mode of the state directory and of files holding secrets (agent.json, desired env).
pub const PRIVATE_DIR_MODE: u32 = 0o700;
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Paths inside one agent's state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

/// One instance process as persisted in `instances.json`, enough to find it again after the
/// agent restarts and to be sure it is the same process (pid plus kernel start time).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub fraise: String,
    pub environment: String,
    pub id: String,
    pub version: String,
    pub weight: u32,
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks since boot) read right after spawn.
    pub start_ticks: u64,
    pub port: u16,
    pub started_at: DateTime<Utc>,
    pub restarts: u32,
    /// Was it healthy when recorded: a re-adopted instance keeps serving at once.
    pub healthy: bool,
    /// Removed from the desired state and being drained when recorded.
    pub draining: bool,
}

/// `instances.json`, written by every service's reconciler: each replaces its own records and
/// the whole file is rewritten atomically, one writer at a time.
pub struct InstanceBook {
    path: PathBuf,
    records: tokio::sync::Mutex<BTreeMap<String, Vec<InstanceRecord>>>,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

// === impl StateDir ===

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the directory tree; the root is private to the agent's user (0700).
    pub fn create(&self) -> io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_DIR_MODE)
            .create(&self.root)?;
        fs::set_permissions(&self.root, fs::Permissions::from_mode(PRIVATE_DIR_MODE))?;
        for dir in [
            self.desired_dir(),
            self.releases_dir(),
            self.root.join("logs"),
        ] {
            fs::create_dir_all(dir)?;
        }
        Ok(())
    }

    pub fn agent_info(&self) -> PathBuf {
        self.root.join("agent.json")
    }

    pub fn lock_file(&self) -> PathBuf {
        self.root.join("agent.lock")
    }

    pub fn instances_file(&self) -> PathBuf {
        self.root.join("instances.json")
    }

    pub fn desired_dir(&self) -> PathBuf {
        self.root.join("desired")
    }

    pub fn desired_file(&self, fraise: &str, environment: &str) -> PathBuf {
        self.desired_dir()
            .join(format!("{fraise}@{environment}.json"))
    }

    /// The record of a scheduled job's executions.
    pub fn schedule_file(&self, fraise: &str, environment: &str) -> PathBuf {
        self.root
            .join("schedules")
            .join(format!("{fraise}@{environment}.json"))
    }

    /// The server this agent fetches artifacts from, and its credential there (0600).
    pub fn server_link(&self) -> PathBuf {
        self.root.join("server.json")
    }

    /// Who this agent is on the server it joined, and its credential there (0600).
    pub fn membership(&self) -> PathBuf {
        self.root.join("membership.json")
    }

    pub fn releases_dir(&self) -> PathBuf {
        self.root.join("releases")
    }

    pub fn log_file(&self, fraise: &str, environment: &str, instance: &str) -> PathBuf {
        self.root
            .join("logs")
            .join(format!("{fraise}@{environment}"))
            .join(format!("{instance}.log"))
    }
}

/// Caps every log in the state directory (`agent.log`, instances' logs) at `max_bytes`: a
/// larger one is copied to `<name>.1` (replacing the previous copy) and emptied in place.
/// Writers hold these files open in append mode, so they carry on at the new end; a line
/// written between the copy and the truncation is lost, as with logrotate's copytruncate.
pub fn cap_logs(dir: &StateDir, max_bytes: u64) {
    let mut logs = vec![dir.root().join("agent.log")];
    if let Ok(services) = fs::read_dir(dir.root().join("logs")) {
        for service in services.flatten() {
            if let Ok(files) = fs::read_dir(service.path()) {
                logs.extend(
                    files
                        .flatten()
                        .map(|f| f.path())
                        .filter(|p| p.extension().is_some_and(|e| e == "log")),
                );
            }
        }
    }
    for log in logs {
        if let Err(e) = cap_log(&log, max_bytes) {
            tracing::warn!(path = %log.display(), error = %e, "cannot cap the log");
        }
    }
}

fn cap_log(path: &Path, max_bytes: u64) -> io::Result<bool> {
    match fs::metadata(path) {
        Ok(m) if m.len() > max_bytes => {}
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    let mut old = path.as_os_str().to_owned();
    old.push(".1");
    fs::copy(path, &old)?;
    OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

// === impl InstanceBook ===

impl InstanceBook {
    /// Starts from `records` (those just re-adopted), keyed by service.
    pub fn new(path: PathBuf, records: Vec<InstanceRecord>) -> Self {
        let mut by_service: BTreeMap<String, Vec<InstanceRecord>> = BTreeMap::new();
        for r in records {
            by_service
                .entry(service_key(&r.fraise, &r.environment))
                .or_default()
                .push(r);
        }
        InstanceBook {
            path,
            records: tokio::sync::Mutex::new(by_service),
        }
    }

    /// Instances recorded, across services.
    pub async fn count(&self) -> usize {
        self.records.lock().await.values().map(Vec::len).sum()
    }

    /// Replaces the records of one service and rewrites the file if anything changed.
    pub async fn update(&self, service: &str, records: Vec<InstanceRecord>) -> io::Result<()> {
        let mut all = self.records.lock().await;
        let unchanged = match all.get(service) {
            Some(old) => *old == records,
            None => records.is_empty(),
        };
        if unchanged {
            return Ok(());
        }
        if records.is_empty() {
            all.remove(service);
        } else {
            all.insert(service.to_string(), records);
        }
        let flat: Vec<InstanceRecord> = all.values().flatten().cloned().collect();
        let path = self.path.clone();
        // Held across the write so that files land in the order of the updates.
        tokio::task::spawn_blocking(move || write_json_atomic(&path, &flat, PRIVATE_FILE_MODE))
            .await
            .map_err(io::Error::other)?
    }
}

/// Writes `bytes` to `path` through a temp file in the same directory: write, fsync, rename,
/// fsync the directory. Readers see the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let temp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T, mode: u32) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    write_atomic(path, &bytes, mode)
}

/// Reads a JSON file; `Ok(None)` when it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_log_is_kept_once_and_emptied_while_its_writer_goes_on() {
        use std::io::Write;
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        let log = dir.log_file("api", "production", "i1");
        fs::create_dir_all(log.parent().unwrap()).unwrap();
        let mut writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        writer.write_all(&[b'x'; 2000]).unwrap();
        fs::write(dir.root().join("agent.log"), b"small").unwrap();

        cap_logs(&dir, 1000);
        assert_eq!(fs::metadata(&log).unwrap().len(), 0);
        assert_eq!(
            fs::metadata(log.with_extension("log.1")).unwrap().len(),
            2000
        );
        assert_eq!(fs::read(dir.root().join("agent.log")).unwrap(), b"small");
        // Append mode: the writer continues at the start of the emptied file, no hole.
        writer.write_all(b"after").unwrap();
        assert_eq!(fs::read(&log).unwrap(), b"after");
    }

    #[test]
    fn atomic_write_replaces_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_json_atomic(&path, &vec![1, 2], PRIVATE_FILE_MODE).unwrap();
        write_json_atomic(&path, &vec![3], PRIVATE_FILE_MODE).unwrap();
        assert_eq!(read_json::<Vec<u32>>(&path).unwrap(), Some(vec![3]));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let leftovers = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temp file is left behind");
        assert_eq!(
            read_json::<Vec<u32>>(&dir.path().join("missing")).unwrap(),
            None
        );
    }
}
