//! The job of a `scheduled` fraise in one environment: when its cron schedule fires, run the
//! scheduled release's command to completion, and record every execution (start, end, exit
//! code, the tail of its output) in the state directory, where it survives agent restarts.
//!
//! One execution at a time: a fire that comes while the previous execution still runs is
//! skipped and counted. A deploy that changes the version lets a running execution finish on
//! its old release (the version stays "in use", so it is not pruned). Fires missed while the
//! agent was not running are not caught up, as with cron.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fraisier_model::cron::{zoneinfo_dir, CronSchedule, ScheduleZone};
use fraisier_model::service::{
    ExecResult, ExecutionStatus, ObservedSchedule, ReleaseSpec, ScheduleSpec, ScheduledExecution,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Notify};

use crate::exec::{run_command, CommandSpec, RunningCommands};
use crate::process::{self, Identity};
use crate::secrets::AgentSecrets;
use crate::state_dir::{read_json, write_json_atomic, PRIVATE_FILE_MODE};

/// Executions kept in the record, newest first.
const KEEP_EXECUTIONS: usize = 50;
/// Output lines kept per execution in the record, and bytes per line: the record is rewritten
/// at every start and end of an execution, so it must stay small.
const KEEP_OUTPUT_LINES: usize = 100;
const KEEP_LINE_BYTES: usize = 1024;
/// Executions reported in the observed state (polled several times a second).
const REPORT_EXECUTIONS: usize = 20;

/// What `schedules/<fraise>@<environment>.json` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ExecutionRecord {
    last_id: u64,
    skipped: u64,
    /// Newest first.
    executions: VecDeque<ScheduledExecution>,
}

/// A parsed schedule and when it fires next.
struct Timer {
    spec: ScheduleSpec,
    cron: CronSchedule,
    zone: ScheduleZone,
    next_at: Option<DateTime<Utc>>,
}

struct Running {
    execution: ScheduledExecution,
    /// The command's result and when it ended, sent before the reconciler is woken.
    ended: oneshot::Receiver<(std::io::Result<ExecResult>, DateTime<Utc>)>,
}

/// Everything a service's reconciler needs to start an execution.
pub(crate) struct Launcher<'a> {
    pub fraise: &'a str,
    pub environment: &'a str,
    pub release: Option<&'a ReleaseSpec>,
    pub release_dir: PathBuf,
    pub secrets: &'a AgentSecrets,
    pub commands: &'a Arc<RunningCommands>,
    /// Notified when an execution ends, so that the reconciler records it at once.
    pub wake: &'a Arc<Notify>,
}

pub(crate) struct ScheduledJob {
    path: PathBuf,
    record: ExecutionRecord,
    timer: Option<Timer>,
    /// Why the desired schedule cannot run (bad expression or zone); shown in observed.
    error: Option<String>,
    running: Option<Running>,
}

// === impl ScheduledJob ===

impl ScheduledJob {
    /// Loads the record at `path`; an execution it shows running was cut off by the agent
    /// stopping.
    pub fn load(path: PathBuf) -> ScheduledJob {
        let mut record: ExecutionRecord = match read_json(&path) {
            Ok(r) => r.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable execution record; starting a new one");
                ExecutionRecord::default()
            }
        };
        let mut changed = false;
        for e in &mut record.executions {
            if e.status == ExecutionStatus::Running {
                e.status = ExecutionStatus::Interrupted;
                changed = true;
            }
        }
        let job = ScheduledJob {
            path,
            record,
            timer: None,
            error: None,
            running: None,
        };
        if changed {
            job.save();
        }
        job
    }

    /// Takes the desired schedule (or its absence); a changed one is parsed and timed afresh.
    pub fn set_spec(&mut self, spec: Option<&ScheduleSpec>, now: DateTime<Utc>) {
        let Some(spec) = spec else {
            self.timer = None;
            self.error = None;
            return;
        };
        if let Some(timer) = self.timer.as_mut() {
            if &timer.spec == spec {
                return;
            }
            // A deploy changes the version, not when the job runs: a fire due in this very
            // instant must not be lost to a re-timing.
            if timer.spec.cron == spec.cron && timer.spec.timezone == spec.timezone {
                timer.spec = spec.clone();
                return;
            }
        }
        let parsed = CronSchedule::parse(&spec.cron).and_then(|cron| {
            let zone =
                ScheduleZone::parse(spec.timezone.as_deref().unwrap_or("UTC"), &zoneinfo_dir())?;
            Ok((cron, zone))
        });
        match parsed {
            Ok((cron, zone)) => {
                let next_at = cron.next_after(now, &zone);
                self.timer = Some(Timer {
                    spec: spec.clone(),
                    cron,
                    zone,
                    next_at,
                });
                self.error = None;
            }
            Err(e) => {
                self.timer = None;
                self.error = Some(format!("schedule {:?}: {e}", spec.cron));
            }
        }
    }

    /// The version a scheduled execution should run next, if any.
    pub fn scheduled_version(&self) -> Option<&str> {
        self.timer.as_ref().map(|t| t.spec.version.as_str())
    }

    /// The version a running execution uses: it must not be pruned under it.
    pub fn running_version(&self) -> Option<&str> {
        self.running.as_ref().map(|r| r.execution.version.as_str())
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Records a finished execution. Call on every pass.
    pub fn collect(&mut self) {
        let Some(running) = self.running.as_mut() else {
            return;
        };
        let (result, ended_at) = match running.ended.try_recv() {
            Err(oneshot::error::TryRecvError::Empty) => return,
            Ok(ended) => ended,
            Err(oneshot::error::TryRecvError::Closed) => (
                Err(std::io::Error::other(
                    "the execution's task ended without a result",
                )),
                Utc::now(),
            ),
        };
        let Some(Running { mut execution, .. }) = self.running.take() else {
            return;
        };
        execution.ended_at = Some(ended_at);
        match result {
            Ok(result) => {
                execution.exit_code = result.exit_code;
                execution.status = match (result.timed_out, result.exit_code) {
                    (true, _) => ExecutionStatus::TimedOut,
                    (false, Some(0)) => ExecutionStatus::Succeeded,
                    (false, Some(_)) => ExecutionStatus::Failed,
                    // Killed by a signal: the agent shutting down, or someone else.
                    (false, None) => ExecutionStatus::Interrupted,
                };
                let skip = result.output.len().saturating_sub(KEEP_OUTPUT_LINES);
                execution.output = result
                    .output
                    .into_iter()
                    .skip(skip)
                    .map(|mut line| {
                        if line.len() > KEEP_LINE_BYTES {
                            let mut cut = KEEP_LINE_BYTES;
                            while !line.is_char_boundary(cut) {
                                cut -= 1;
                            }
                            line.truncate(cut);
                        }
                        line
                    })
                    .collect();
            }
            Err(e) => {
                execution.status = ExecutionStatus::Failed;
                execution.output = vec![format!("the command could not run: {e}")];
            }
        }
        tracing::info!(
            record = %self.path.display(),
            id = execution.id,
            status = ?execution.status,
            exit_code = ?execution.exit_code,
            "scheduled execution ended"
        );
        self.replace(execution);
        self.save();
    }

    /// Starts an execution if the schedule is due; returns how long until it next fires.
    pub fn fire_if_due(&mut self, now: DateTime<Utc>, launcher: Launcher<'_>) -> Option<Duration> {
        let timer = self.timer.as_mut()?;
        let due = timer.next_at?;
        if now >= due {
            // One fire however late we are: a machine that slept through several does not
            // run the job several times in a row.
            timer.next_at = timer.cron.next_after(now, &timer.zone);
            if self.running.is_some() {
                self.record.skipped += 1;
                tracing::warn!(fraise = launcher.fraise, environment = launcher.environment, scheduled_for = %due, "previous execution still running; this one is skipped");
                self.save();
            } else {
                let spec = timer.spec.clone();
                self.start(&spec, due, launcher);
            }
        }
        let next = self.timer.as_ref()?.next_at?;
        Some((next - now).to_std().unwrap_or(Duration::ZERO))
    }

    fn start(&mut self, spec: &ScheduleSpec, due: DateTime<Utc>, launcher: Launcher<'_>) {
        self.record.last_id += 1;
        let id = self.record.last_id;
        let mut execution = ScheduledExecution {
            id,
            version: spec.version.clone(),
            scheduled_for: due,
            started_at: Utc::now(),
            ended_at: None,
            status: ExecutionStatus::Running,
            exit_code: None,
            output: Vec::new(),
        };
        let Some(release) = launcher.release else {
            execution.ended_at = Some(execution.started_at);
            execution.status = ExecutionStatus::Failed;
            execution.output = vec![format!(
                "release {} is not in the desired state",
                spec.version
            )];
            self.replace(execution);
            self.save();
            return;
        };
        let who = Identity {
            fraise: launcher.fraise,
            environment: launcher.environment,
            version: &spec.version,
            instance: "scheduled",
        };
        let opened = match launcher.secrets.open(who, &release.secrets) {
            Ok(o) => o,
            Err(e) => {
                execution.ended_at = Some(execution.started_at);
                execution.status = ExecutionStatus::Failed;
                execution.output = vec![e];
                self.replace(execution);
                self.save();
                return;
            }
        };
        let redactor = opened.redactor();
        let mut env = process::instance_env(release, who, &launcher.release_dir, None, &opened);
        env.push(("FRAISIER_EXECUTION_ID".into(), id.to_string()));
        env.push(("FRAISIER_SCHEDULED_FOR".into(), due.to_rfc3339()));
        let command = CommandSpec {
            command: release.command.clone(),
            cwd: process::working_dir(release, &launcher.release_dir),
            env,
            // The output is kept, and shown by the API: no secret's value in it.
            redact: redactor,
        };
        let timeout = Duration::from_millis(spec.timeout_ms);
        let commands = launcher.commands.clone();
        let wake = launcher.wake.clone();
        tracing::info!(
            fraise = launcher.fraise,
            environment = launcher.environment,
            id,
            version = %spec.version,
            "scheduled execution started"
        );
        // Recorded as running before it starts: after a crash the record shows it
        // interrupted, and its id is never given again.
        self.replace(execution.clone());
        self.save();
        let (tx, ended) = oneshot::channel();
        tokio::spawn(async move {
            let result = run_command(&command, timeout, &commands).await;
            // The result goes first: the woken reconciler must find it.
            let _ = tx.send((result, Utc::now()));
            wake.notify_one();
        });
        self.running = Some(Running { execution, ended });
    }

    /// Puts `execution` in the record in place of its earlier state, newest first.
    fn replace(&mut self, execution: ScheduledExecution) {
        let executions = &mut self.record.executions;
        match executions.iter_mut().find(|e| e.id == execution.id) {
            Some(slot) => *slot = execution,
            None => {
                executions.push_front(execution);
                executions.truncate(KEEP_EXECUTIONS);
            }
        }
    }

    fn save(&self) {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = write_json_atomic(&self.path, &self.record, PRIVATE_FILE_MODE) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write the execution record");
        }
    }

    /// What the agent reports; `None` for a service that never had a schedule.
    pub fn observed(&self) -> Option<ObservedSchedule> {
        if self.timer.is_none() && self.error.is_none() && self.record.executions.is_empty() {
            return None;
        }
        Some(ObservedSchedule {
            cron: self
                .timer
                .as_ref()
                .map(|t| t.spec.cron.clone())
                .unwrap_or_default(),
            timezone: self
                .timer
                .as_ref()
                .map(|t| t.zone.name())
                .unwrap_or_default(),
            version: self
                .scheduled_version()
                .map(str::to_string)
                .unwrap_or_default(),
            next_run_at: self.timer.as_ref().and_then(|t| t.next_at),
            executions: self
                .record
                .executions
                .iter()
                .take(REPORT_EXECUTIONS)
                .cloned()
                .collect(),
            skipped: self.record.skipped,
            error: self.error.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cron: &str, version: &str) -> ScheduleSpec {
        ScheduleSpec {
            cron: cron.into(),
            timezone: None,
            version: version.into(),
            timeout_ms: 5_000,
        }
    }

    fn release(command: &str) -> ReleaseSpec {
        ReleaseSpec {
            source: None,
            command: command.into(),
            working_directory: None,
            env: Default::default(),
            secrets: Default::default(),
            artifact: None,
        }
    }

    async fn run_once(job: &mut ScheduledJob, dir: &std::path::Path, command: &str) {
        run_release(job, dir, &release(command), &AgentSecrets::none()).await
    }

    async fn run_release(
        job: &mut ScheduledJob,
        dir: &std::path::Path,
        release: &ReleaseSpec,
        secrets: &AgentSecrets,
    ) {
        let commands = Arc::new(RunningCommands::default());
        let wake = Arc::new(Notify::new());
        let due = job.timer.as_ref().unwrap().next_at.unwrap();
        job.fire_if_due(
            due,
            Launcher {
                fraise: "nightly",
                environment: "production",
                release: Some(release),
                release_dir: dir.to_path_buf(),
                secrets,
                commands: &commands,
                wake: &wake,
            },
        );
        assert!(job.is_running());
        tokio::time::timeout(Duration::from_secs(10), wake.notified())
            .await
            .expect("the execution ends");
        job.collect();
        assert!(!job.is_running());
    }

    #[tokio::test]
    async fn secrets_reach_the_job_and_not_its_kept_output() {
        use fraisier_model::secret::{slot, SecretKeys};
        let dir = tempfile::tempdir().unwrap();
        let mut job = ScheduledJob::load(dir.path().join("job.json"));
        job.set_spec(Some(&spec("* * * * *", "1.0.0")), Utc::now());
        let keys = SecretKeys::new(vec![("k1".into(), [4; 32])]);
        let mut r = release("echo token=$API_TOKEN; echo length=${#API_TOKEN}");
        let sealed = keys
            .seal(
                &slot("nightly", "production", "API_TOKEN"),
                "s3cr3t-token",
                [1; 24],
            )
            .unwrap();
        r.secrets.insert("API_TOKEN".into(), sealed.clone());
        run_release(&mut job, dir.path(), &r, &AgentSecrets::with_keys(keys)).await;
        let e = &job.observed().unwrap().executions[0];
        assert_eq!(e.status, ExecutionStatus::Succeeded, "{:?}", e.output);
        assert_eq!(e.output, vec!["token=[secret API_TOKEN]", "length=12"]);
        assert!(!std::fs::read_to_string(dir.path().join("job.json"))
            .unwrap()
            .contains("s3cr3t"));

        // Without the key the job does not start, and says why.
        let (commands, wake, none) = (
            Arc::new(RunningCommands::default()),
            Arc::new(Notify::new()),
            AgentSecrets::none(),
        );
        let due = job.timer.as_ref().unwrap().next_at.unwrap();
        job.fire_if_due(
            due,
            Launcher {
                fraise: "nightly",
                environment: "production",
                release: Some(&r),
                release_dir: dir.path().to_path_buf(),
                secrets: &none,
                commands: &commands,
                wake: &wake,
            },
        );
        assert!(!job.is_running());
        let e = &job.observed().unwrap().executions[0];
        assert_eq!(e.status, ExecutionStatus::Failed);
        assert!(
            e.output[0].contains("cannot open secret API_TOKEN"),
            "{:?}",
            e.output
        );
    }

    #[tokio::test]
    async fn runs_when_due_and_records_the_execution() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("schedules/nightly@production.json");
        let mut job = ScheduledJob::load(path.clone());
        let now = Utc::now();
        job.set_spec(Some(&spec("* * * * *", "1.0.0")), now);
        let next = job.timer.as_ref().unwrap().next_at.unwrap();
        assert!(next > now && next - now <= chrono::Duration::seconds(60));

        run_once(
            &mut job,
            dir.path(),
            "echo run $FRAISIER_EXECUTION_ID of $FRAISIER_VERSION; exit 3",
        )
        .await;
        let observed = job.observed().unwrap();
        let e = &observed.executions[0];
        assert_eq!(e.id, 1);
        assert_eq!(e.status, ExecutionStatus::Failed);
        assert_eq!(e.exit_code, Some(3));
        assert_eq!(e.output, vec!["run 1 of 1.0.0"]);
        assert!(observed.next_run_at.unwrap() > next, "timed again");

        // The record survives a restart of the agent.
        let reloaded = ScheduledJob::load(path);
        assert_eq!(reloaded.record.executions.len(), 1);
        assert_eq!(reloaded.record.last_id, 1);
    }

    #[tokio::test]
    async fn a_fire_during_an_execution_is_skipped_and_the_old_release_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let mut job = ScheduledJob::load(dir.path().join("job.json"));
        job.set_spec(Some(&spec("* * * * *", "1.0.0")), Utc::now());
        let commands = Arc::new(RunningCommands::default());
        let secrets = AgentSecrets::none();
        let wake = Arc::new(Notify::new());
        let slow = release("sleep 0.5; echo done");
        let launcher = |release| Launcher {
            fraise: "nightly",
            environment: "production",
            release,
            release_dir: dir.path().to_path_buf(),
            secrets: &secrets,
            commands: &commands,
            wake: &wake,
        };
        let first_due = job.timer.as_ref().unwrap().next_at.unwrap();
        job.fire_if_due(first_due, launcher(Some(&slow)));
        // A deploy lands: the running execution keeps its version.
        job.set_spec(Some(&spec("* * * * *", "2.0.0")), first_due);
        assert_eq!(job.running_version(), Some("1.0.0"));
        assert_eq!(job.scheduled_version(), Some("2.0.0"));
        let second_due = job.timer.as_ref().unwrap().next_at.unwrap();
        job.fire_if_due(second_due, launcher(Some(&slow)));
        assert_eq!(job.record.skipped, 1);

        tokio::time::timeout(Duration::from_secs(10), wake.notified())
            .await
            .unwrap();
        job.collect();
        let e = &job.observed().unwrap().executions[0];
        assert_eq!(
            (e.version.as_str(), e.status),
            ("1.0.0", ExecutionStatus::Succeeded)
        );
        assert_eq!(e.output, vec!["done"]);
    }

    #[tokio::test]
    async fn an_execution_cut_off_by_a_restart_is_recorded_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.json");
        let mut job = ScheduledJob::load(path.clone());
        job.set_spec(Some(&spec("* * * * *", "1.0.0")), Utc::now());
        let commands = Arc::new(RunningCommands::default());
        let secrets = AgentSecrets::none();
        let wake = Arc::new(Notify::new());
        let slow = release("sleep 30");
        let due = job.timer.as_ref().unwrap().next_at.unwrap();
        job.fire_if_due(
            due,
            Launcher {
                fraise: "nightly",
                environment: "production",
                release: Some(&slow),
                release_dir: dir.path().to_path_buf(),
                secrets: &secrets,
                commands: &commands,
                wake: &wake,
            },
        );
        commands.kill_all();
        let reloaded = ScheduledJob::load(path);
        assert_eq!(
            reloaded.record.executions[0].status,
            ExecutionStatus::Interrupted
        );
    }

    #[test]
    fn a_bad_schedule_is_reported_not_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut job = ScheduledJob::load(dir.path().join("job.json"));
        job.set_spec(Some(&spec("61 * * * *", "1.0.0")), Utc::now());
        let observed = job.observed().unwrap();
        assert!(observed.error.unwrap().contains("minute"), "named field");
        assert!(observed.next_run_at.is_none());
    }
}
