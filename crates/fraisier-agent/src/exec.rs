//! One-shot commands (hooks, smoke tests, `etl` jobs, command probes): run `sh -c` in its own
//! process group to completion or timeout, and keep the tail of its combined output.

use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fraisier_model::service::ExecResult;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::process::inherited_env;
use crate::signal::{signal_group, Signal};
use fraisier_model::secret::Redactor;

/// Lines of output kept: the end of a log says why it failed.
pub const MAX_OUTPUT_LINES: usize = 1000;
/// Longest line kept, so one runaway line cannot exhaust memory.
const MAX_LINE_BYTES: usize = 16 * 1024;
/// How long to keep reading output after the command ended (the pipe may be held open by a
/// process that ignored SIGKILL's group, e.g. one that called setsid).
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// What to run and where.
#[derive(Clone)]
pub struct CommandSpec {
    pub command: String,
    pub cwd: PathBuf,
    /// Added to the small inherited environment (see [`inherited_env`]).
    pub env: Vec<(String, String)>,
    /// Hides the values of the secrets in `env` in every line of output kept.
    pub redact: Redactor,
}

/// Names of variables only: values may be secrets.
impl std::fmt::Debug for CommandSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandSpec")
            .field("command", &self.command)
            .field("cwd", &self.cwd)
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Process groups of commands still running, so that shutdown can kill them.
#[derive(Debug, Default)]
pub struct RunningCommands {
    groups: Mutex<Groups>,
}

#[derive(Debug, Default)]
struct Groups {
    running: BTreeSet<u32>,
    /// After `kill_all`: a command that starts anyway (it raced the shutdown) is killed at
    /// once instead of being left to run.
    closed: bool,
}

/// Kills the group when dropped: a cancelled request or an aborted probe leaves nothing.
struct GroupGuard<'a> {
    pgid: u32,
    registry: &'a RunningCommands,
}

// === impl RunningCommands ===

impl RunningCommands {
    /// Kills every running command, and every one started from now on.
    pub fn kill_all(&self) {
        let running = {
            let mut groups = self.lock();
            groups.closed = true;
            std::mem::take(&mut groups.running)
        };
        for pgid in running {
            let _ = signal_group(pgid, Signal::Kill);
        }
    }

    fn insert(&self, pgid: u32) {
        let mut groups = self.lock();
        if groups.closed {
            let _ = signal_group(pgid, Signal::Kill);
        } else {
            groups.running.insert(pgid);
        }
    }

    fn remove(&self, pgid: u32) {
        self.lock().running.remove(&pgid);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Groups> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// === impl GroupGuard ===

impl Drop for GroupGuard<'_> {
    fn drop(&mut self) {
        // Also reaps leftovers a finished command started in the background: a hook must not
        // leave processes the agent does not track.
        let _ = signal_group(self.pgid, Signal::Kill);
        self.registry.remove(self.pgid);
    }
}

/// Runs `sh -c spec.command` to completion, killing its whole group at `timeout`.
pub async fn run_command(
    spec: &CommandSpec,
    timeout: Duration,
    registry: &RunningCommands,
) -> io::Result<ExecResult> {
    let started = Instant::now();
    // One pipe for stdout and stderr keeps their lines in the order they were written.
    let (writer, reader) = tokio::net::unix::pipe::pipe()?;
    let writer = writer.into_blocking_fd()?;
    let writer2 = writer.try_clone()?;
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg(&spec.command)
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(inherited_env())
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer2))
        .process_group(0);
    let mut child = command.spawn()?;
    // Our copies of the write end must close, or the reader never sees the end of output.
    drop(command);
    let pgid = child.id().unwrap_or_default();
    registry.insert(pgid);
    let guard = GroupGuard { pgid, registry };

    let mut lines = VecDeque::new();
    let mut output = BufReader::new(reader);
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut status = None;
    let mut timed_out = false;
    let mut output_open = true;
    while status.is_none() {
        tokio::select! {
            s = child.wait() => status = Some(s?),
            read = output.read_until(b'\n', &mut buf), if output_open => {
                if read? == 0 { output_open = false } else { keep_line(&mut lines, &mut buf, &spec.redact) }
            }
            _ = tokio::time::sleep_until(deadline) => {
                timed_out = true;
                let _ = signal_group(pgid, Signal::Kill);
                status = Some(child.wait().await?);
            }
        }
    }
    drop(guard);
    let drain_until = tokio::time::Instant::now() + OUTPUT_DRAIN;
    while output_open {
        match tokio::time::timeout_at(drain_until, output.read_until(b'\n', &mut buf)).await {
            Ok(Ok(n)) if n > 0 => keep_line(&mut lines, &mut buf, &spec.redact),
            _ => output_open = false,
        }
    }
    if !buf.is_empty() {
        keep_line(&mut lines, &mut buf, &spec.redact);
    }
    let exit_code = if timed_out {
        None
    } else {
        status.and_then(|s| s.code())
    };
    Ok(ExecResult {
        exit_code,
        timed_out,
        duration_ms: started.elapsed().as_millis() as u64,
        output: lines.into(),
    })
}

/// Keeps a line: redacted whole first, so that cutting a long line cannot leave part of a
/// secret behind.
fn keep_line(lines: &mut VecDeque<String>, buf: &mut Vec<u8>, redact: &Redactor) {
    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        buf.pop();
    }
    let mut line = redact.redact(&String::from_utf8_lossy(buf));
    if line.len() > MAX_LINE_BYTES {
        let mut cut = MAX_LINE_BYTES;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
    }
    lines.push_back(line);
    buf.clear();
    if lines.len() > MAX_OUTPUT_LINES {
        lines.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(command: &str) -> CommandSpec {
        CommandSpec {
            command: command.into(),
            cwd: std::env::temp_dir(),
            env: vec![("GREETING".into(), "bonjour".into())],
            redact: Redactor::default(),
        }
    }

    #[tokio::test]
    async fn combines_output_and_reports_exit_code() {
        let registry = RunningCommands::default();
        let r = run_command(
            &spec("echo $GREETING; echo oops >&2; exit 3"),
            Duration::from_secs(5),
            &registry,
        )
        .await
        .unwrap();
        assert_eq!(r.exit_code, Some(3));
        assert!(!r.timed_out);
        assert_eq!(r.output, vec!["bonjour", "oops"]);
    }

    #[tokio::test]
    async fn keeps_only_the_last_lines() {
        let registry = RunningCommands::default();
        let r = run_command(&spec("seq 1 1500"), Duration::from_secs(5), &registry)
            .await
            .unwrap();
        assert_eq!(r.output.len(), MAX_OUTPUT_LINES);
        assert_eq!(r.output.first().map(String::as_str), Some("501"));
        assert_eq!(r.output.last().map(String::as_str), Some("1500"));
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let registry = RunningCommands::default();
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let command = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let r = run_command(&spec(&command), Duration::from_millis(300), &registry)
            .await
            .unwrap();
        assert!(r.timed_out);
        assert_eq!(r.exit_code, None);
        assert!(r.duration_ms < 5000);
        let pid: u32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background sleep was in the group; give the kernel a moment to reap it.
        for _ in 0..50 {
            if !crate::process::is_running(pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("background child {pid} survived the timeout");
    }
}
