//! Instance processes: start one as the leader of its own process group (so it and its
//! children can be signalled together and outlive the agent), recognise it again after an
//! agent restart, notice when it exits, and stop it (SIGTERM, then SIGKILL after a grace).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fraisier_model::service::ReleaseSpec;
use tokio::process::Child;

use crate::signal::{signal_group, Signal};

/// Variables passed on from the agent's own environment; everything else an instance sees
/// comes from its release spec, so the server's secrets never leak into instances.
const INHERITED: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR",
];
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// How often a stopping or exited process is looked at.
const POLL: Duration = Duration::from_millis(25);

/// How to start an instance.
#[derive(Clone, Debug)]
pub struct Launch<'a> {
    pub command: &'a str,
    pub cwd: &'a Path,
    pub env: &'a [(String, String)],
    /// stdout and stderr are appended here.
    pub log: &'a Path,
}

/// A running instance process, either started by this agent (`child` is set, and the agent
/// reaps it) or adopted from a previous agent (reaped by init).
#[derive(Debug)]
pub struct InstanceProcess {
    pub pid: u32,
    /// Kernel start time, with the pid the process's identity (pids get reused).
    pub start_ticks: u64,
    pub started_at: DateTime<Utc>,
    child: Option<Child>,
}

/// The state letter and start time of `/proc/<pid>/stat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ProcStat {
    state: char,
    start_ticks: u64,
}

// === impl InstanceProcess ===

impl InstanceProcess {
    pub fn spawn(launch: &Launch<'_>) -> io::Result<InstanceProcess> {
        if let Some(dir) = launch.log.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(launch.log)?;
        let started_at = Utc::now();
        writeln!(
            log,
            "--- fraisier: starting at {} in {}",
            started_at.to_rfc3339(),
            launch.cwd.display()
        )?;
        let mut command = tokio::process::Command::new("sh");
        command
            .arg("-c")
            .arg(launch.command)
            .current_dir(launch.cwd)
            .env_clear()
            .envs(inherited_env())
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            // Its own group: stopping signals the whole tree, and a signal aimed at the
            // agent's group (Ctrl-C, the agent dying) does not reach it.
            .process_group(0)
            .kill_on_drop(false);
        let child = command.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| io::Error::other("spawned process has no pid"))?;
        // The process exists from fork on; its start time does not change across exec.
        let start_ticks = proc_stat(pid).map(|s| s.start_ticks).unwrap_or_default();
        Ok(InstanceProcess {
            pid,
            start_ticks,
            started_at,
            child: Some(child),
        })
    }

    /// Takes over a process a previous agent started, if it is still the same process.
    pub fn adopt(pid: u32, start_ticks: u64, started_at: DateTime<Utc>) -> Option<InstanceProcess> {
        let stat = proc_stat(pid)?;
        (stat.state != 'Z' && stat.start_ticks == start_ticks).then_some(InstanceProcess {
            pid,
            start_ticks,
            started_at,
            child: None,
        })
    }

    /// `Some(reason)` once the process has exited; the rest of its group is killed then, so a
    /// restarted instance never competes with leftovers of the previous one for its port.
    pub fn exited(&mut self) -> Option<String> {
        if self.is_alive() {
            return None;
        }
        // The leader is a zombie or gone: SIGKILL the group before reaping, while the pgid
        // cannot yet be reused.
        let _ = signal_group(self.pid, Signal::Kill);
        Some(match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => describe(status),
            Some(Ok(None)) => "exited".into(),
            Some(Err(e)) => format!("exited (status unavailable: {e})"),
            None => "exited (status unknown: adopted from a previous agent)".into(),
        })
    }

    /// SIGTERM to the group, SIGKILL after `grace`; returns once the leader is gone.
    pub async fn stop(mut self, grace: Duration) {
        let _ = signal_group(self.pid, Signal::Term);
        let deadline = tokio::time::Instant::now() + grace;
        while self.is_alive() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
        // Also reaches children that ignored SIGTERM or outlived the leader.
        let _ = signal_group(self.pid, Signal::Kill);
        if let Some(child) = self.child.as_mut() {
            let _ = child.wait().await;
        } else {
            while self.is_alive() {
                tokio::time::sleep(POLL).await;
            }
        }
    }

    /// Alive and still the process we started (not a zombie, not a reused pid). An unknown
    /// start time (0: `/proc` was unreadable at spawn) falls back to the pid alone.
    fn is_alive(&self) -> bool {
        proc_stat(self.pid).is_some_and(|s| {
            s.state != 'Z' && (self.start_ticks == 0 || s.start_ticks == self.start_ticks)
        })
    }
}

/// Whether `pid` is a live process (a zombie counts as exited).
pub fn is_running(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|s| s.state != 'Z')
}

/// The start time recorded for re-adoption, read from `/proc/<pid>/stat`.
pub fn start_ticks(pid: u32) -> Option<u64> {
    proc_stat(pid).map(|s| s.start_ticks)
}

/// Who an instance (or a one-shot command) is, for its `FRAISIER_*` variables.
#[derive(Clone, Copy, Debug)]
pub struct Identity<'a> {
    pub fraise: &'a str,
    pub environment: &'a str,
    pub version: &'a str,
    pub instance: &'a str,
}

/// The environment of an instance: the release's own variables, its secrets (opened), then
/// the agent's, which win. `port` is `None` for one-shot commands, which serve nothing.
pub fn instance_env(
    release: &ReleaseSpec,
    who: Identity<'_>,
    release_dir: &Path,
    port: Option<u16>,
    secrets: &crate::secrets::Opened,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = release
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.extend(secrets.values.iter().cloned());
    if let Some(port) = port {
        env.push(("PORT".into(), port.to_string()));
    }
    // The agent knows `workspace.fraise`; the instance is told both parts apart.
    let (workspace, fraise) = fraisier_model::names::split_agent_name(who.fraise);
    env.extend([
        (
            "FRAISIER_RELEASE_DIR".into(),
            release_dir.to_string_lossy().into_owned(),
        ),
        ("FRAISIER_VERSION".into(), who.version.into()),
        ("FRAISIER_WORKSPACE".into(), workspace.into()),
        ("FRAISIER_FRAISE".into(), fraise.into()),
        ("FRAISIER_ENVIRONMENT".into(), who.environment.into()),
        ("FRAISIER_INSTANCE".into(), who.instance.into()),
    ]);
    env
}

/// Where an instance runs: its `working_directory` (relative ones inside the release) or the
/// release directory itself.
pub fn working_dir(release: &ReleaseSpec, release_dir: &Path) -> PathBuf {
    match &release.working_directory {
        Some(wd) => release_dir.join(wd),
        None => release_dir.to_path_buf(),
    }
}

/// The allowlisted part of the agent's environment, with a default `PATH`.
pub fn inherited_env() -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = INHERITED
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .collect();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    env
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "exited".into(),
    }
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Fields after the command name (which may hold spaces and parentheses, hence `rfind`):
/// state is field 3, starttime field 22.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start_ticks = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start_ticks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_names() {
        let line = "4242 (my (odd) app) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                state: 'S',
                start_ticks: 987654
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn reads_its_own_start_time() {
        let me = std::process::id();
        assert!(start_ticks(me).is_some());
        assert!(is_running(me));
    }

    #[tokio::test]
    async fn stop_terminates_the_group_and_adoption_checks_identity() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        let env = vec![("WHO".to_string(), "me".to_string())];
        let launch = Launch {
            command: "echo hello $WHO; sleep 30 & sleep 30",
            cwd: dir.path(),
            env: &env,
            log: &log,
        };
        let mut p = InstanceProcess::spawn(&launch).unwrap();
        let pid = p.pid;
        for _ in 0..200 {
            if fs::read_to_string(&log).unwrap().contains("hello me") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(p.exited().is_none());
        let adopted = InstanceProcess::adopt(pid, p.start_ticks, p.started_at).unwrap();
        assert!(InstanceProcess::adopt(pid, p.start_ticks + 1, p.started_at).is_none());
        drop(adopted);
        p.stop(Duration::from_secs(2)).await;
        assert!(!is_running(pid));
        assert!(fs::read_to_string(&log).unwrap().contains("hello me"));
    }

    #[tokio::test]
    async fn notices_an_exit() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        let launch = Launch {
            command: "exit 7",
            cwd: dir.path(),
            env: &[],
            log: &log,
        };
        let mut p = InstanceProcess::spawn(&launch).unwrap();
        let mut reason = None;
        for _ in 0..200 {
            reason = p.exited();
            if reason.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(reason.as_deref(), Some("exited with status 7"));
    }
}
