//! Git sources: a bare mirror per repository on the server (fetched, never re-cloned), refs
//! resolved to commits, a commit's version (its tag, else its short id), and a clean tree of
//! a commit to build in. Runs the `git` program with no terminal and no shell: request values
//! reach it only as single arguments, after `--` where git allows.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::process::Command;

/// A fetch or clone that takes longer than this is abandoned.
const FETCH_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("git {what} failed: {detail}")]
    Failed { what: String, detail: String },
    #[error("{reference:?} is neither a branch, a tag nor a commit of {url}")]
    UnknownRef { url: String, reference: String },
    #[error("git {0} timed out")]
    TimedOut(String),
}

/// The server's mirrors, one lock per repository so fetches of one never interleave.
#[derive(Clone)]
pub struct Mirrors {
    root: PathBuf,
    locks: Arc<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>>,
    /// When each mirror was last fetched.
    fetched: Arc<Mutex<HashMap<PathBuf, std::time::Instant>>>,
}

/// How the server proves who it is to a repository.
#[derive(Clone, Default)]
pub enum GitAuth {
    #[default]
    Anonymous,
    /// An access token over https, sent as HTTP Basic credentials.
    Token { username: String, token: String },
    /// A deploy key (an OpenSSH private key) over ssh.
    SshKey { key: String },
}

impl std::fmt::Debug for GitAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GitAuth::Anonymous => f.write_str("Anonymous"),
            GitAuth::Token { username, .. } => f
                .debug_struct("Token")
                .field("username", username)
                .finish_non_exhaustive(),
            GitAuth::SshKey { .. } => f.write_str("SshKey"),
        }
    }
}

/// What git is given to authenticate, held for as long as it runs: environment variables
/// (never arguments, which any user of the host may read) and, for a deploy key, an
/// `ssh-agent` of its own that holds the key in memory only.
pub struct GitSession {
    env: Vec<(&'static str, String)>,
    _agent: Option<SshAgent>,
}

impl GitSession {
    pub fn apply(&self, cmd: &mut Command) {
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
    }
}

impl GitAuth {
    /// Tells credentials apart without revealing them (a digest, never stored with them).
    fn fingerprint(&self) -> Option<[u8; 32]> {
        let material = match self {
            GitAuth::Anonymous => return None,
            GitAuth::Token { username, token } => format!("token\0{username}\0{token}"),
            GitAuth::SshKey { key } => format!("ssh\0{}", key.trim()),
        };
        Some(Sha256::digest(material.as_bytes()).into())
    }

    /// Opens a session for `url`. A token goes in a header for that URL only, with redirects
    /// off, so it goes nowhere else. A deploy key is loaded into a private agent; host keys
    /// are trusted on first use and kept in `known_hosts`.
    pub async fn session(&self, url: &str, known_hosts: &Path) -> Result<GitSession, GitError> {
        use base64::Engine as _;
        match self {
            GitAuth::Anonymous => Ok(GitSession {
                env: Vec::new(),
                _agent: None,
            }),
            GitAuth::Token { username, token } => {
                let basic =
                    base64::engine::general_purpose::STANDARD.encode(format!("{username}:{token}"));
                Ok(GitSession {
                    env: vec![
                        ("GIT_CONFIG_COUNT", "2".into()),
                        ("GIT_CONFIG_KEY_0", format!("http.{url}.extraHeader")),
                        (
                            "GIT_CONFIG_VALUE_0",
                            format!("Authorization: Basic {basic}"),
                        ),
                        ("GIT_CONFIG_KEY_1", "http.followRedirects".into()),
                        ("GIT_CONFIG_VALUE_1", "false".into()),
                    ],
                    _agent: None,
                })
            }
            GitAuth::SshKey { key } => {
                let agent = SshAgent::start(key).await?;
                let quoted =
                    |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
                let ssh = format!(
                    "ssh -F /dev/null -o BatchMode=yes -o IdentityFile=none -o IdentityAgent={} \
                     -o UserKnownHostsFile={} -o StrictHostKeyChecking=accept-new",
                    quoted(&agent.socket),
                    quoted(known_hosts)
                );
                Ok(GitSession {
                    env: vec![("GIT_SSH_COMMAND", ssh)],
                    _agent: Some(agent),
                })
            }
        }
    }
}

/// An `ssh-agent` holding one deploy key, on a socket in a directory only this user can
/// enter; stopped, and its directory removed, when dropped.
struct SshAgent {
    child: tokio::process::Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl SshAgent {
    async fn start(key: &str) -> Result<SshAgent, GitError> {
        use std::os::unix::fs::DirBuilderExt;
        use tokio::io::AsyncWriteExt;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let failed = |detail: String| GitError::Failed {
            what: "ssh-agent".into(),
            detail,
        };
        // Unix socket paths are short (108 bytes): not under the data dir.
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("fraisier-ssh-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| failed(format!("{}: {e}", dir.display())))?;
        let socket = dir.join("agent");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let mut agent = SshAgent {
            child: child.map_err(|e| failed(format!("cannot run ssh-agent: {e}")))?,
            dir,
            socket,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !agent.socket.exists() {
            if std::time::Instant::now() > deadline
                || agent.child.try_wait().ok().flatten().is_some()
            {
                return Err(failed("ssh-agent did not start".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A lifetime, so that an agent outliving a killed server forgets the key anyway.
        let lifetime = (FETCH_TIMEOUT + Duration::from_secs(60))
            .as_secs()
            .to_string();
        let mut add = Command::new("ssh-add")
            .args(["-q", "-t", &lifetime, "-"])
            .env("SSH_AUTH_SOCK", &agent.socket)
            .env_remove("SSH_ASKPASS")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed(format!("cannot run ssh-add: {e}")))?;
        let mut stdin = add.stdin.take().expect("piped");
        let mut text = key.trim_end().to_string();
        text.push('\n');
        let _ = stdin.write_all(text.as_bytes()).await;
        drop(stdin);
        let out = tokio::time::timeout(Duration::from_secs(10), add.wait_with_output())
            .await
            .map_err(|_| failed("ssh-add timed out".into()))?
            .map_err(|e| failed(e.to_string()))?;
        if !out.status.success() {
            // ssh-add's reason names no part of the key.
            return Err(GitError::Failed {
                what: "ssh-add".into(),
                detail: format!(
                    "the deploy key is not a private key ssh-add accepts (without a passphrase): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(agent)
    }
}

impl Drop for SshAgent {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How a request names a commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    /// A branch or a tag.
    Ref,
    /// A tag or a commit id.
    Version,
    /// A commit id only (a host's report of a push).
    Commit,
}

/// A ref resolved in a mirror.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub commit: String,
    /// The tag the commit carries (the highest, if several), or its 12-character short id.
    pub version: String,
}

// === impl Mirrors ===

impl Mirrors {
    pub fn new(root: impl Into<PathBuf>) -> Mirrors {
        Mirrors {
            root: root.into(),
            locks: Arc::default(),
            fetched: Arc::default(),
        }
    }

    /// The mirror of `url`, fetched unless it was within `age`.
    pub async fn fetch_within(
        &self,
        url: &str,
        auth: &GitAuth,
        age: Duration,
    ) -> Result<PathBuf, GitError> {
        let dir = self.dir(url, auth);
        let recent = self
            .fetched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&dir)
            .is_some_and(|t| t.elapsed() < age);
        if recent && dir.join("HEAD").exists() {
            return Ok(dir);
        }
        self.fetch(url, auth).await
    }

    /// The SSH host keys of the repositories fetched with a deploy key (trusted on first use).
    pub fn known_hosts(&self) -> PathBuf {
        self.root.join("known_hosts")
    }

    /// One mirror per repository and credential: what one credential fetched is never read
    /// through another, or through none (a workspace naming the same URL without the token).
    fn dir(&self, url: &str, auth: &GitAuth) -> PathBuf {
        let mut h = Sha256::new();
        h.update(url.as_bytes());
        if let Some(f) = auth.fingerprint() {
            h.update(b"\0");
            h.update(f);
        }
        let id = hex::encode(&h.finalize()[..10]);
        self.root.join(format!("{id}.git"))
    }

    /// The mirror of `url`, brought up to date.
    pub async fn fetch(&self, url: &str, auth: &GitAuth) -> Result<PathBuf, GitError> {
        let dir = self.dir(url, auth);
        let lock = self
            .locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(dir.clone())
            .or_default()
            .clone();
        let _held = lock.lock().await;
        let session = auth.session(url, &self.known_hosts()).await?;
        let mut cmd = Command::new("git");
        let fresh = !dir.join("HEAD").exists();
        let tmp = self.root.join(format!(
            ".clone-{}-{}",
            dir.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        if fresh {
            std::fs::create_dir_all(&self.root).map_err(|e| GitError::Failed {
                what: "clone".into(),
                detail: format!("{}: {e}", self.root.display()),
            })?;
            let _ = std::fs::remove_dir_all(&tmp);
            cmd.args(["clone", "--mirror", "--quiet", "--", url])
                .arg(&tmp);
        } else {
            cmd.arg("--git-dir")
                .arg(&dir)
                .args(["fetch", "--prune", "--tags", "--quiet", "origin"]);
        }
        session.apply(&mut cmd);
        let what = if fresh { "clone" } else { "fetch" };
        if let Err(e) = run(&mut cmd, what, FETCH_TIMEOUT).await {
            if fresh {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            return Err(e);
        }
        if fresh {
            std::fs::rename(&tmp, &dir).map_err(|e| GitError::Failed {
                what: "clone".into(),
                detail: e.to_string(),
            })?;
        }
        self.fetched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(dir.clone(), std::time::Instant::now());
        Ok(dir)
    }

    /// What a request names, with its version: a `ref` is a branch or a tag; a `version` is a
    /// tag or a commit (never a branch, which could shadow either).
    pub async fn resolve(
        &self,
        mirror: &Path,
        url: &str,
        reference: &str,
        kind: Naming,
    ) -> Result<Resolved, GitError> {
        let unknown = || GitError::UnknownRef {
            url: url.to_string(),
            reference: reference.to_string(),
        };
        if reference.is_empty() || reference.starts_with('-') || reference.contains("..") {
            return Err(unknown());
        }
        let mut commit = None;
        let is_hex = reference.len() >= 7
            && reference.len() <= 64
            && reference.bytes().all(|b| b.is_ascii_hexdigit());
        let candidates = match kind {
            Naming::Ref => vec![
                format!("refs/heads/{reference}^{{commit}}"),
                format!("refs/tags/{reference}^{{commit}}"),
            ],
            Naming::Version => vec![format!("refs/tags/{reference}^{{commit}}")],
            Naming::Commit => Vec::new(),
        };
        for candidate in candidates {
            if let Ok(c) = git(
                mirror,
                &["rev-parse", "--verify", "--quiet", &candidate],
                Duration::from_secs(30),
            )
            .await
            {
                commit = Some(c.trim().to_string());
                break;
            }
        }
        if commit.is_none() && is_hex && kind != Naming::Ref {
            commit = commit_by_id(mirror, reference).await;
        }
        let commit = commit.ok_or_else(unknown)?;
        let tags = git(
            mirror,
            &["tag", "--points-at", &commit],
            Duration::from_secs(30),
        )
        .await?;
        let tags: Vec<&str> = tags
            .lines()
            .map(str::trim)
            .filter(|t| fraisier_model::names::version_problem(t).is_none())
            .collect();
        let version = match fraisier_model::version::latest(tags.iter().copied()) {
            Some(tag) => tag.to_string(),
            None => commit.chars().take(12).collect(),
        };
        Ok(Resolved { commit, version })
    }

    /// Whether `commit` is what `reference` names now or was named before: on the branch's
    /// history, or the tag's commit. A host's report of a push is believed only so far.
    pub async fn belongs(&self, mirror: &Path, commit: &str, reference: &str) -> bool {
        let branch = format!("refs/heads/{reference}");
        if git(
            mirror,
            &["merge-base", "--is-ancestor", commit, &branch],
            Duration::from_secs(30),
        )
        .await
        .is_ok()
        {
            return true;
        }
        let tag = format!("refs/tags/{reference}^{{commit}}");
        matches!(
            git(mirror, &["rev-parse", "--verify", "--quiet", &tag], Duration::from_secs(30)).await,
            Ok(c) if c.trim() == commit
        )
    }

    /// Writes the tree of `commit` (no `.git`) into `dest`, which must not exist.
    pub async fn export(&self, mirror: &Path, commit: &str, dest: &Path) -> Result<(), GitError> {
        let failed = |detail: String| GitError::Failed {
            what: "archive".into(),
            detail,
        };
        std::fs::create_dir_all(dest).map_err(|e| failed(e.to_string()))?;
        let archive = dest.with_extension("tar");
        let archive_arg = archive.to_string_lossy().into_owned();
        git(
            mirror,
            &["archive", "--format=tar", "-o", &archive_arg, commit],
            FETCH_TIMEOUT,
        )
        .await?;
        let (from, to) = (archive.clone(), dest.to_path_buf());
        let unpacked = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&from)?;
            let mut tar = tar::Archive::new(file);
            tar.set_preserve_permissions(true);
            tar.unpack(&to)
        })
        .await
        .map_err(|e| failed(e.to_string()))?;
        let _ = std::fs::remove_file(&archive);
        unpacked.map_err(|e| failed(e.to_string()))
    }
}

/// The branches and tags a repository has, with the commit each names, without fetching it
/// (`git ls-remote`): `(commit, refs/heads/… or refs/tags/…)`.
pub async fn ls_remote(url: &str) -> Result<Vec<(String, String)>, GitError> {
    // A URL from a request: https only, no credential helpers, no redirects.
    let out = run(
        Command::new("git")
            .args([
                "-c",
                "protocol.allow=never",
                "-c",
                "protocol.https.allow=always",
                "-c",
                "credential.helper=",
                "-c",
                "http.followRedirects=false",
            ])
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .args(["ls-remote", "--heads", "--tags", "--", url]),
        "ls-remote",
        Duration::from_secs(30),
    )
    .await?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(c, r)| {
            (
                c.trim().to_string(),
                r.trim().trim_end_matches("^{}").to_string(),
            )
        })
        .collect())
}

/// The one commit whose id starts with `prefix`, looked up among objects only: a branch or
/// tag named like the id (which `rev-parse` would prefer) does not shadow it.
async fn commit_by_id(mirror: &Path, prefix: &str) -> Option<String> {
    let t = Duration::from_secs(30);
    let objects = git(
        mirror,
        &["rev-parse", &format!("--disambiguate={prefix}")],
        t,
    )
    .await
    .ok()?;
    let mut commits = Vec::new();
    for oid in objects.lines().map(str::trim).filter(|o| !o.is_empty()) {
        if git(mirror, &["cat-file", "-t", oid], t).await.ok()?.trim() == "commit" {
            commits.push(oid.to_string());
        }
    }
    (commits.len() == 1).then(|| commits.remove(0))
}

/// `git --git-dir DIR ARGS…`: its standard output, or why it failed.
async fn git(dir: &Path, args: &[&str], timeout: Duration) -> Result<String, GitError> {
    let what = args.first().copied().unwrap_or("git").to_string();
    run(
        Command::new("git").arg("--git-dir").arg(dir).args(args),
        &what,
        timeout,
    )
    .await
}

async fn run(cmd: &mut Command, what: &str, timeout: Duration) -> Result<String, GitError> {
    if !cmd.as_std().get_envs().any(|(k, _)| k == "GIT_SSH_COMMAND") {
        cmd.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
    }
    cmd.env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "true")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| GitError::TimedOut(what.to_string()))?
        .map_err(|e| GitError::Failed {
            what: what.to_string(),
            detail: format!("cannot run git: {e}"),
        })?;
    if !out.status.success() {
        let detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(GitError::Failed {
            what: what.to_string(),
            detail: if detail.is_empty() {
                format!("exited with {}", out.status)
            } else {
                detail
            },
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(dir: &Path, script: &str) {
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
            .status()
            .unwrap();
        assert!(st.success(), "{script}");
    }

    #[tokio::test]
    async fn mirrors_resolve_branches_tags_and_commits_and_export_clean_trees() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        sh(
            &work,
            "git init -q -b main && echo one > a.txt && git add a.txt && git commit -qm one",
        );
        let url = format!("file://{}", work.display());
        let mirrors = Mirrors::new(dir.path().join("mirrors"));
        let m = mirrors.fetch(&url, &GitAuth::Anonymous).await.unwrap();
        let first = mirrors
            .resolve(&m, &url, "main", Naming::Ref)
            .await
            .unwrap();
        assert_eq!(first.version.len(), 12);
        assert!(first.commit.starts_with(&first.version));

        sh(
            &work,
            "echo two > a.txt && git commit -qam two && git tag v2.0.0",
        );
        let m = mirrors.fetch(&url, &GitAuth::Anonymous).await.unwrap();
        let tagged = mirrors
            .resolve(&m, &url, "main", Naming::Ref)
            .await
            .unwrap();
        assert_eq!(tagged.version, "v2.0.0");
        assert_eq!(
            mirrors
                .resolve(&m, &url, "v2.0.0", Naming::Version)
                .await
                .unwrap(),
            tagged
        );
        assert_eq!(
            mirrors
                .resolve(&m, &url, &first.version, Naming::Version)
                .await
                .unwrap(),
            first
        );
        // A branch named like a commit or a tag shadows neither; a version is never a branch.
        let shadow = first.commit[..12].to_string();
        sh(&work, &format!("git branch {shadow} && git branch v9 HEAD"));
        let m = mirrors.fetch(&url, &GitAuth::Anonymous).await.unwrap();
        assert_eq!(
            mirrors
                .resolve(&m, &url, &shadow, Naming::Commit)
                .await
                .unwrap()
                .commit,
            first.commit
        );
        assert!(mirrors
            .resolve(&m, &url, "v9", Naming::Version)
            .await
            .is_err());
        assert!(mirrors
            .resolve(&m, &url, "main", Naming::Commit)
            .await
            .is_err());
        assert!(mirrors.belongs(&m, &first.commit, "main").await);
        assert!(mirrors.belongs(&m, &tagged.commit, "v2.0.0").await);
        assert!(!mirrors.belongs(&m, &first.commit, "v2.0.0").await);
        for bad in ["nope", "--upload-pack=x", "main..v2.0.0", ""] {
            for naming in [Naming::Ref, Naming::Version, Naming::Commit] {
                assert!(
                    matches!(
                        mirrors.resolve(&m, &url, bad, naming).await,
                        Err(GitError::UnknownRef { .. })
                    ),
                    "{bad}"
                );
            }
        }

        let tree = dir.path().join("tree");
        mirrors.export(&m, &first.commit, &tree).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(tree.join("a.txt")).unwrap(),
            "one\n"
        );
        assert!(!tree.join(".git").exists());

        let err = mirrors
            .fetch("file:///nowhere/at/all", &GitAuth::Anonymous)
            .await
            .unwrap_err();
        assert!(matches!(err, GitError::Failed { .. }), "{err}");
    }
}
