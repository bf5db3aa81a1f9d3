//! The desired state the engine writes for a fraise in an environment, and the observed state
//! an agent reports back. This is the whole contract between control plane and data plane.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::FraiseType;
use crate::metrics::VersionMetrics;

/// How to decide that an instance is ready to take traffic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProbeKind {
    Http {
        path: String,
        /// Accepted statuses; empty means any 2xx or 3xx.
        #[serde(default)]
        expected_status: Vec<u16>,
    },
    Tcp,
    Command {
        command: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthCheckSpec {
    #[serde(flatten)]
    pub kind: ProbeKind,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

/// How to run one version: where its release comes from and the process to start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReleaseSpec {
    /// A directory, file or `.tar.gz` on the agent's host, copied or unpacked into the
    /// release directory (the agent's own tests; the server hands out `artifact`s).
    pub source: Option<PathBuf>,
    /// The release's bytes in the server's artifact store, which the agent fetches by digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactRef>,
    pub command: String,
    pub working_directory: Option<PathBuf>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Secret variables, sealed (crate::secret) for `fraise/environment/NAME`: opened by the
    /// agent only as it starts a process, never written out in clear.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, crate::secret::Sealed>,
}

/// Bytes of the server's artifact store, as a release's source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRef {
    /// `sha256:<hex>`: what the agent fetches and checks.
    pub digest: String,
    pub format: crate::artifact::ArtifactFormat,
    /// For a single file: the name it gets in the release directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
}

/// Where an agent fetches artifacts: the server's API base URL and the credential agents
/// present there (`X-Agent-Token`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerLink {
    pub url: String,
    pub token: String,
    /// The agent's id there (`agt_…`): where it sends its heartbeats. Absent from links kept
    /// by agents older than registration, which then fetch but do not report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
}

/// The token never prints.
impl std::fmt::Debug for ServerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerLink")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// One instance the agent must keep running. `weight` 0 means running but given no new
/// requests (a blue set waiting to be switched to, or one kept for instant switch-back).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredInstance {
    pub id: String,
    pub version: String,
    pub weight: u32,
    /// The agent it runs on, by name; absent: the server's own (`local`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DesiredService {
    pub fraise: String,
    pub environment: String,
    /// Bumped on every change so an agent can say which desired state it has converged to.
    pub generation: u64,
    pub kind: FraiseType,
    /// The router's port; `None` for fraises without long-running instances.
    pub port: Option<u16>,
    pub health_check: Option<HealthCheckSpec>,
    /// Every version any listed instance runs, plus versions kept for rollback.
    pub releases: BTreeMap<String, ReleaseSpec>,
    pub instances: Vec<DesiredInstance>,
    /// How long removed instances may finish in-flight requests before they are stopped.
    pub drain_timeout_ms: u64,
    /// Between SIGTERM and SIGKILL.
    pub stop_grace_ms: u64,
    /// For `scheduled` fraises: what to run and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
}

/// A `scheduled` fraise's job: the release `version` (one of `releases`) runs its command on
/// the `cron` schedule, read in `timezone`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    pub cron: String,
    /// `UTC` when absent; an offset (`+02:00`) or a tz database name.
    #[serde(default)]
    pub timezone: Option<String>,
    pub version: String,
    /// An execution still running after this long is killed (its whole process group).
    pub timeout_ms: u64,
}

/// How one execution of a scheduled job ended, or that it is still running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    Running,
    /// Exit code 0.
    Succeeded,
    /// A non-zero exit code, or the command could not start.
    Failed,
    TimedOut,
    /// The agent stopped while it ran; how it ended is unknown.
    Interrupted,
}

/// One execution of a scheduled job, as the agent records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduledExecution {
    /// Counts up per fraise × environment, from 1.
    pub id: u64,
    pub version: String,
    /// The schedule's time this execution is for.
    pub scheduled_for: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub status: ExecutionStatus,
    pub exit_code: Option<i32>,
    /// The last lines of its combined stdout and stderr.
    #[serde(default)]
    pub output: Vec<String>,
}

/// What the agent reports of a scheduled job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObservedSchedule {
    pub cron: String,
    pub timezone: String,
    /// The release the next execution will run.
    pub version: String,
    pub next_run_at: Option<DateTime<Utc>>,
    /// Newest first; the one running, if any, is first.
    pub executions: Vec<ScheduledExecution>,
    /// Fires skipped because the previous execution was still running.
    pub skipped: u64,
    /// Why the desired schedule cannot run, if it cannot.
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Process started, not yet healthy.
    Starting,
    /// Passing its health check.
    Healthy,
    /// Was healthy, now failing its health check.
    Unhealthy,
    /// Removed from the desired state; finishing in-flight requests.
    Draining,
    /// Exited; will be restarted after a backoff.
    Crashed,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObservedInstance {
    pub id: String,
    pub version: String,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    pub state: InstanceState,
    pub weight: u32,
    pub restarts: u32,
    pub started_at: Option<DateTime<Utc>>,
    pub last_check_at: Option<DateTime<Utc>>,
    pub checks_passed: u64,
    pub checks_total: u64,
    pub last_error: Option<String>,
    pub in_flight: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstalledRelease {
    pub version: String,
    /// sha256 over the unpacked tree (paths and contents), hex.
    pub digest: String,
    /// The artifact it was unpacked from (`sha256:<hex>`), when it came from the server's store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    pub installed_at: DateTime<Utc>,
}

/// A release directory hashed again on request. Drift is any difference between the tree
/// now and the digest taken when it was installed: files changed by hand on the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseCheck {
    pub version: String,
    /// The artifact it was unpacked from (`sha256:<hex>`), when it came from the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    /// The tree's digest when it was installed.
    pub expected: String,
    /// The tree's digest now.
    pub actual: String,
    /// What differs, file by file (empty for a release installed before the agent kept a
    /// manifest: then only the digests tell).
    #[serde(default)]
    pub changes: Vec<FileChange>,
}

impl ReleaseCheck {
    pub fn drifted(&self) -> bool {
        self.expected != self.actual
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChange {
    /// Relative to the release directory.
    pub path: String,
    pub change: Change,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Added,
    Removed,
    Modified,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ObservedService {
    pub fraise: String,
    pub environment: String,
    /// The generation of the desired state this observation answers.
    pub generation: u64,
    pub port: Option<u16>,
    /// Whether the router is bound to `port`.
    pub listening: bool,
    pub router_error: Option<String>,
    pub instances: Vec<ObservedInstance>,
    /// Router counters per version since the agent started.
    pub metrics: BTreeMap<String, VersionMetrics>,
    pub releases: Vec<InstalledRelease>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ObservedSchedule>,
}

/// A command run once to completion by the agent: a hook, a smoke test or an `etl` job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub fraise: String,
    pub environment: String,
    pub version: String,
    pub release: ReleaseSpec,
    pub command: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub timeout_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecResult {
    /// `None` when the command was killed (timeout or signal).
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub duration_ms: u64,
    /// Combined stdout and stderr, one entry per line, trimmed to the last lines if long.
    pub output: Vec<String>,
}

// === impl DesiredService ===

impl DesiredService {
    pub fn key(&self) -> String {
        service_key(&self.fraise, &self.environment)
    }

    /// Desired instances that may receive new requests once healthy.
    pub fn serving(&self) -> impl Iterator<Item = &DesiredInstance> {
        self.instances.iter().filter(|i| i.weight > 0)
    }
}

// === impl ObservedService ===

impl ObservedService {
    pub fn instance(&self, id: &str) -> Option<&ObservedInstance> {
        self.instances.iter().find(|i| i.id == id)
    }

    /// True when every desired instance runs and is healthy, and nothing removed is still
    /// draining: the agent has done everything `desired` asks.
    pub fn converged_to(&self, desired: &DesiredService) -> bool {
        self.generation >= desired.generation
            && desired.instances.iter().all(|d| {
                self.instance(&d.id).is_some_and(|o| {
                    o.state == InstanceState::Healthy
                        && o.version == d.version
                        && o.weight == d.weight
                })
            })
            && self
                .instances
                .iter()
                .all(|o| desired.instances.iter().any(|d| d.id == o.id))
    }

    /// Instances not draining, and how many of those are healthy.
    pub fn live_counts(&self) -> (usize, usize) {
        let live = self
            .instances
            .iter()
            .filter(|i| i.state != InstanceState::Draining);
        let (mut total, mut healthy) = (0, 0);
        for i in live {
            total += 1;
            healthy += usize::from(i.state == InstanceState::Healthy);
        }
        (total, healthy)
    }

    /// Healthy when every live instance is, degraded when some are, unknown without any.
    pub fn health(&self) -> crate::run::Health {
        use crate::run::Health;
        match self.live_counts() {
            (0, _) => Health::Unknown,
            (_, 0) => Health::Unhealthy,
            (total, healthy) if healthy < total => Health::Degraded,
            _ => Health::Healthy,
        }
    }

    pub fn healthy_count(&self) -> usize {
        self.instances
            .iter()
            .filter(|i| i.state == InstanceState::Healthy)
            .count()
    }
}

pub fn service_key(fraise: &str, environment: &str) -> String {
    format!("{fraise}/{environment}")
}

/// What a running agent writes to `<state_dir>/agent.json` (mode 0600) once its control API
/// listens, so the server and the CLI on the same host can find and authenticate to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub pid: u32,
    /// e.g. `http://127.0.0.1:41234`
    pub control_url: String,
    /// Bearer token for the control API.
    pub token: String,
    pub version: String,
    pub started_at: DateTime<Utc>,
}
