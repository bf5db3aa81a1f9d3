//! Every process the harness starts is owned by a guard whose drop stops it: on success, on
//! error, on panic and on Ctrl-C (main drops the benchmark's future, which drops the guards).
//! Stopping is SIGTERM, a bounded wait, then SIGKILL — and the children the process had
//! (nginx workers) are killed too if they outlive it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// A child process stopped on drop.
pub struct Proc {
    name: String,
    child: Option<Child>,
    /// Also SIGKILL its children that outlive it (nginx workers); not for `fraisier serve`,
    /// whose child is the agent, which must outlive it and be stopped by `agent stop`.
    reap_children: bool,
}

// === impl Proc ===

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Proc> {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {name} ({cmd:?})"))?;
        Ok(Proc {
            name: name.to_string(),
            child: Some(child),
            reap_children: false,
        })
    }

    /// Kill the children it leaves behind when it is stopped.
    pub fn reaping_children(mut self) -> Proc {
        self.reap_children = true;
        self
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// Fails with the exit status if the process has already ended.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                bail!("{} exited early: {status}", self.name);
            }
        }
        Ok(())
    }

    /// SIGTERM, up to `grace` for it to exit, then SIGKILL; then, if asked, SIGKILL for any
    /// of its children still alive. Idempotent.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = child.id();
        let children = if self.reap_children {
            children_of(pid)
        } else {
            Vec::new()
        };
        signal(pid, "TERM");
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !matches!(child.try_wait(), Ok(Some(_))) {
            eprintln!("bench: {} did not stop on SIGTERM; killing it", self.name);
            let _ = child.kill();
            let _ = child.wait();
        }
        for c in children {
            if is_alive(c) {
                signal(c, "KILL");
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// Sends a signal with kill(1): the workspace forbids `unsafe`, so no libc::kill.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

pub fn is_alive(pid: u32) -> bool {
    // A zombie has a /proc entry but is gone for our purposes.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| stat_fields(&s).and_then(|f| f.first().map(|st| *st != "Z")))
        .unwrap_or(false)
}

/// The fields of /proc/<pid>/stat after the command name: state is [0], ppid [1],
/// starttime (field 22) [19].
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().collect())
}

fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_fields(&stat)?.get(19)?.parse().ok()
}

/// Pids whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| stat_fields(&s)?.get(1)?.parse::<u32>().ok())
                == Some(pid)
        })
        .collect()
}

/// Resident memory (VmRSS) in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmRSS:")
}

/// The anonymous (allocated) and file-backed (mapped files, e.g. SQLite's mmap) parts of
/// VmRSS, in KiB: VmRSS counts a mapped file once per mapping.
pub fn rss_split_kib(pid: u32) -> Option<(u64, u64)> {
    Some((
        proc_status_kib(pid, "RssAnon:")?,
        proc_status_kib(pid, "RssFile:")?,
    ))
}

/// Peak resident memory (VmHWM) in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmHWM:")
}

fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU time of the whole machine and of "our" processes, in clock ticks, at one instant.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuSnapshot {
    total: u64,
    busy: u64,
    /// Time the hypervisor ran something else while this guest had work (part of `busy`).
    steal: u64,
    ours: u64,
}

/// Takes a snapshot; `ours` are the pids of the benchmark's processes (this process counts
/// with the children it has reaped, such as finished wrk runs).
pub fn cpu_snapshot(ours: &[u32]) -> CpuSnapshot {
    let mut snap = CpuSnapshot::default();
    if let Ok(stat) = std::fs::read_to_string("/proc/stat") {
        if let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) {
            (snap.total, snap.busy, snap.steal) = machine_times(line);
        }
    }
    let me = std::process::id();
    snap.ours = ours
        .iter()
        .filter_map(|&pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let f = stat_fields(&stat)?;
            // utime [11], stime [12], cutime [13], cstime [14]
            let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
            Some(n(11) + n(12) + if pid == me { n(13) + n(14) } else { 0 })
        })
        .sum();
    snap
}

/// User plus system CPU time of processes (all their threads, not their children), in clock
/// ticks (USER_HZ, 100 a second on Linux).
pub fn process_ticks(pids: &[u32]) -> u64 {
    let (user, sys) = process_ticks_split(pids);
    user + sys
}

/// (user, system) CPU time of processes, in clock ticks.
pub fn process_ticks_split(pids: &[u32]) -> (u64, u64) {
    pids.iter()
        .filter_map(|pid| user_system_ticks(Path::new(&format!("/proc/{pid}"))))
        .fold((0, 0), |(u, s), (a, b)| (u + a, s + b))
}

/// (utime, stime) of the process or thread whose /proc directory is `dir`.
fn user_system_ticks(dir: &Path) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    let f = stat_fields(&stat)?;
    let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    Some((n(11), n(12)))
}

/// User plus system CPU time, in clock ticks, of the threads of `pid` whose name starts with
/// `prefix` — e.g. the router's workers inside the bench process, apart from its other threads.
pub fn thread_ticks(pid: u32, prefix: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| {
            let dir = t.ok()?.path();
            let name = std::fs::read_to_string(dir.join("comm")).ok()?;
            if !name.starts_with(prefix) {
                return None;
            }
            user_system_ticks(&dir).map(|(user, system)| user + system)
        })
        .sum()
}

/// Microseconds per clock tick (USER_HZ is 100 on every Linux this runs on).
pub const TICK_US: f64 = 10_000.0;

/// Share of the machine's CPU (0–1) used between two snapshots by processes other than ours:
/// the interference of whatever else runs on the machine.
pub fn foreign_share(before: &CpuSnapshot, after: &CpuSnapshot) -> f64 {
    let total = after.total.saturating_sub(before.total);
    if total == 0 {
        return 0.0;
    }
    let busy = after.busy.saturating_sub(before.busy);
    let ours = after.ours.saturating_sub(before.ours);
    busy.saturating_sub(ours) as f64 / total as f64
}

/// Total, busy and stolen ticks from the `cpu ` line of `/proc/stat`.
fn machine_times(line: &str) -> (u64, u64, u64) {
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest is inside user).
    let total: u64 = v.iter().take(8).sum();
    (total, total - at(3) - at(4), at(7))
}

/// The share of the machine's time stolen by the hypervisor between two snapshots: a guest's
/// vCPU that had work but was not running (counted in [`foreign_share`] too).
pub fn steal_share(before: &CpuSnapshot, after: &CpuSnapshot) -> f64 {
    let total = after.total.saturating_sub(before.total);
    if total == 0 {
        return 0.0;
    }
    after.steal.saturating_sub(before.steal) as f64 / total as f64
}

/// Waits (up to `limit`) until other processes use less than `threshold` of the machine over
/// half a second; returns their last measured share.
pub async fn wait_quiet(ours: &[u32], threshold: f64, limit: Duration) -> f64 {
    let deadline = Instant::now() + limit;
    loop {
        let before = cpu_snapshot(ours);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let share = foreign_share(&before, &cpu_snapshot(ours));
        if share < threshold || Instant::now() > deadline {
            return share;
        }
    }
}

/// A free loopback port (bound, read, released: another process could take it in between,
/// which on a bench machine does not happen in practice).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Owns a Fraisier agent's state directory: on drop, `fraisier agent stop --state-dir`
/// (drains and stops its instances and routers), then SIGKILL for the agent and any
/// instance that survived (matched by pid and kernel start time, never by name).
pub struct AgentGuard {
    pub fraisier: PathBuf,
    pub state_dir: PathBuf,
    /// The agent's pid and start time once seen, so that it can be stopped even if its state
    /// dir is gone.
    known: Option<(u32, u64)>,
}

// === impl AgentGuard ===

impl AgentGuard {
    pub fn new(fraisier: PathBuf, state_dir: PathBuf) -> AgentGuard {
        AgentGuard {
            fraisier,
            state_dir,
            known: None,
        }
    }

    /// Notes the running agent's identity (call once it is up).
    pub fn remember(&mut self) {
        self.known = self.pid().and_then(|p| Some((p, start_ticks(p)?)));
    }

    /// The agent's pid from `agent.json`, once it is written.
    pub fn pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.state_dir.join("agent.json")).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        v["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
    }

    fn stop(&self) {
        let known = self
            .known
            .filter(|&(pid, ticks)| is_alive(pid) && start_ticks(pid) == Some(ticks));
        if !self.state_dir.join("agent.json").exists() {
            // No state left to stop it by: the agent and its instances (its children) go.
            if let Some((pid, _)) = known {
                eprintln!("bench: agent {pid} has no state dir left; killing it and its instances");
                let children = children_of(pid);
                signal(pid, "KILL");
                children.into_iter().for_each(|c| signal(c, "KILL"));
            }
            return;
        }
        let agent_pid = self.pid().or(known.map(|k| k.0));
        let stopped = Command::new(&self.fraisier)
            .args(["agent", "stop", "--state-dir"])
            .arg(&self.state_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(|mut c| wait_bounded(&mut c, Duration::from_secs(30)));
        if !matches!(stopped, Ok(true)) {
            eprintln!(
                "bench: `fraisier agent stop --state-dir {}` failed; killing what is left",
                self.state_dir.display()
            );
        }
        if let Some(pid) = agent_pid {
            let deadline = Instant::now() + Duration::from_secs(5);
            while is_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if is_alive(pid) {
                signal(pid, "KILL");
            }
        }
        for (pid, ticks) in instance_pids(&self.state_dir) {
            if is_alive(pid) && start_ticks(pid) == Some(ticks) {
                eprintln!("bench: instance {pid} outlived its agent; killing it");
                signal(pid, "KILL");
            }
        }
    }
}

impl Drop for AgentGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits up to `limit`; kills the child past it. True if it exited with success.
fn wait_bounded(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

/// Every instance record in the agent's `instances.json`, whatever its nesting.
pub fn instance_records(state_dir: &Path) -> Vec<Value> {
    fn walk(v: &Value, out: &mut Vec<Value>) {
        match v {
            Value::Object(m) if m.contains_key("pid") && m.contains_key("port") => {
                out.push(v.clone());
            }
            Value::Object(m) => m.values().for_each(|v| walk(v, out)),
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(text) = std::fs::read_to_string(state_dir.join("instances.json")) {
        if let Ok(v) = serde_json::from_str::<Value>(&text) {
            walk(&v, &mut out);
        }
    }
    out
}

fn instance_pids(state_dir: &Path) -> Vec<(u32, u64)> {
    instance_records(state_dir)
        .iter()
        .filter_map(|r| {
            Some((
                u32::try_from(r["pid"].as_u64()?).ok()?,
                r["start_ticks"].as_u64()?,
            ))
        })
        .collect()
}

/// True if the current user is root (nginx then needs `user root;` to read our temp dir).
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|u| u.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_told_apart_from_other_processes() {
        let (total, busy, steal) = machine_times("cpu  100 0 50 800 10 0 5 35 0 0");
        assert_eq!((total, busy, steal), (1000, 190, 35));
        let before = CpuSnapshot::default();
        let after = CpuSnapshot {
            total,
            busy,
            steal,
            ours: 100,
        };
        assert!((steal_share(&before, &after) - 0.035).abs() < 1e-9);
        // Steal is part of what is not ours.
        assert!((foreign_share(&before, &after) - 0.09).abs() < 1e-9);
    }

    #[test]
    fn stat_fields_skip_the_command_name() {
        let stat = "42 (a (weird) name) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 0";
        let f = stat_fields(stat).unwrap();
        assert_eq!(f[0], "S");
        assert_eq!(f[1], "7");
        assert_eq!(f[19], "12345");
    }

    #[test]
    fn a_stopped_process_is_gone() {
        let mut p = Proc::spawn("sleep", Command::new("sleep").arg("30")).unwrap();
        let pid = p.pid();
        assert!(is_alive(pid));
        p.stop(Duration::from_secs(2));
        assert!(!is_alive(pid));
    }
}
