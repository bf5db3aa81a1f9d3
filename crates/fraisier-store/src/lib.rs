//! Persistence of runs, steps, events, logs, service deployments, users and API keys, on SQLite (the
//! embedded default) or PostgreSQL, behind one API with the same behaviour on both.

use chrono::{DateTime, Utc};
use fraisier_model::run::{
    Component, HealthCheckStatus, LogLevel, RunKind, RunStatus, ServiceState, StepStatus,
};
use fraisier_model::service::DesiredService;
use serde_json::Value;

mod agents;
mod api_keys;
mod approvals;
mod artifacts;
mod audit;
pub mod blobs;
mod environments;
mod events;
mod freezes;
mod groups;
mod import;
mod jobs;
mod logs;
mod migrate;
mod notifications;
mod runs;
mod services;
mod sql;
mod stats;
mod steps;
mod store;
mod targets;
mod totals;
mod turns;
mod users;
mod variables;
mod webhooks;

pub use agents::{
    Agent, JoinToken, NewAgent, NewJoinToken, Refusal, LOCAL_AGENT, SHARED_WORKSPACE,
};
pub use api_keys::{ApiKey, KeyHolder, NewApiKey};
pub use artifacts::{
    Artifact, ArtifactFilter, ArtifactVersion, NewArtifactVersion, VersionConflict,
};
pub use audit::{
    genesis as audit_genesis, AuditFilter, AuditOutcome, AuditRecord, ChainBreak, NewAuditRecord,
};
pub use environments::{
    Created as EnvironmentCreated, Deleted as EnvironmentDeleted, EnvironmentRecord,
    EnvironmentWatch,
};
pub use freezes::{Barrier, EnvironmentLimits, EnvironmentLock, FreezeWindow, NewFreezeWindow};
pub use groups::{Group, GroupFields};
pub use notifications::{Attempt, NewNotification, Notification, NotificationFilter};
pub use runs::Renewal;
pub use store::Store;
pub use targets::{
    parse_target_group_id, parse_target_id, NewTarget, NewTargetGroup, Target, TargetChange,
    TargetGroup, TargetGroupChange,
};
pub use users::TokenSubject;
pub use variables::{SecretSlot, Variable};
pub use webhooks::{Delivery, DeliveryFilter, DeliveryTarget, NewDelivery, QueuedTarget};

pub const DEFAULT_TENANT: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row does not exist, or belongs to another tenant.
    #[error("not found")]
    NotFound,
    /// Another run is pending or in progress for the same tenant × fraise × environment.
    #[error("deployment {active_id} is already active for this fraise and environment")]
    ActiveRunExists {
        active_id: String,
        fraise: String,
        environment: String,
    },
    /// A unique name (e.g. a username within a tenant) is already taken.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The environment named was deleted before the write that needed it could commit.
    #[error("environment {0} was deleted")]
    EnvironmentGone(String),
    /// A lock or freeze window committed before the change keeps it out of the environment.
    #[error("the environment is locked or frozen")]
    Barred(Box<Barrier>),
    /// The url is shown with its password redacted.
    #[error("unsupported database url {0:?} (expected sqlite://… or postgres://…)")]
    UnsupportedUrl(String),
    /// The driver's error is the source; it is not repeated in the message so that callers
    /// choose whether to show internals.
    #[error("database error")]
    Database(#[source] sqlx::Error),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// `dep_00042` ⇄ 42.
pub fn run_id_string(id: i64) -> String {
    format!("dep_{id:05}")
}

pub fn parse_run_id(s: &str) -> Option<i64> {
    let digits = s.strip_prefix("dep_")?;
    if digits.is_empty() || digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A person who signs in; usernames are unique across workspaces.
#[derive(Clone, Debug, PartialEq)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub password_hash: String,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A user in one workspace, with the roles they hold there.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub user: User,
    pub workspace: String,
    pub roles: Vec<String>,
}

/// What a caller supplies to create a run; the store assigns id, status `pending`, timestamps.
#[derive(Clone, Debug, PartialEq)]
pub struct NewRun {
    pub tenant_id: String,
    pub fraise: String,
    pub environment: String,
    pub kind: RunKind,
    pub version: String,
    pub previous_version: Option<String>,
    pub strategy: String,
    /// The fully parsed strategy config, as JSON.
    pub strategy_config: Value,
    pub triggered_by: String,
    pub trigger_type: String,
    /// Request options (skip_health_check, skip_backup, timeout, wait, rollback_on_failure,
    /// reason, hooks…) kept so a resumed run behaves as asked.
    pub options: Value,
    pub metadata: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub id: i64,
    pub tenant_id: String,
    pub fraise: String,
    pub environment: String,
    pub kind: RunKind,
    pub status: RunStatus,
    pub version: String,
    pub previous_version: Option<String>,
    pub strategy: String,
    pub strategy_config: Value,
    pub triggered_by: String,
    pub trigger_type: String,
    pub options: Value,
    pub metadata: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub health_check_status: HealthCheckStatus,
    /// Health summary: checks_passed, checks_total, last_check_at.
    pub health_details: Value,
    /// Router figures at the end of the run (success_rate, error_rate, latency_p50_ms, …).
    pub metrics: Value,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub cancel_requested_by: Option<String>,
    pub cancelled_at: Option<DateTime<Utc>>,
    /// Index of the last phase the engine finished (for resuming); -1 before any.
    pub progress: i64,
    pub events_count: i64,
    pub log_lines: i64,
}

/// Filters of `GET /deployments`; `None` means no filter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunFilter {
    pub fraise: Option<String>,
    /// Runs of any of these fraises (a project's); an empty list matches nothing.
    pub fraises: Option<Vec<String>>,
    pub environment: Option<String>,
    pub status: Option<RunStatus>,
    /// Free text matched (case-insensitively, substring) against fraise, environment,
    /// version, triggered_by and the run id.
    pub q: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    pub sort: RunSort,
    /// Page size; 0 means no limit (the API caps it before it gets here).
    pub limit: u32,
    pub offset: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RunSortField {
    #[default]
    CreatedAt,
    UpdatedAt,
    Status,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunSort {
    pub field: RunSortField,
    pub descending: bool,
}

/// `sort=-created_at`: newest first.
impl Default for RunSort {
    fn default() -> Self {
        RunSort {
            field: RunSortField::CreatedAt,
            descending: true,
        }
    }
}

/// The columns of a run one write touches ([`Store::write_run`]), by what they record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunColumns {
    /// Status and its times; the cancel (kept once recorded).
    pub status: bool,
    /// Error code and message, health check, metrics.
    pub outcome: bool,
    /// The last finished step.
    pub progress: bool,
    /// The engine's working options (snapshot, approval, build, migrations) and metadata.
    pub options: bool,
    pub version: bool,
}

impl RunColumns {
    pub const ALL: RunColumns = RunColumns {
        status: true,
        outcome: true,
        progress: true,
        options: true,
        version: true,
    };
    pub const STATUS: RunColumns = RunColumns {
        status: true,
        ..RunColumns::NONE
    };
    pub const PROGRESS: RunColumns = RunColumns {
        progress: true,
        ..RunColumns::NONE
    };
    pub const OPTIONS: RunColumns = RunColumns {
        options: true,
        ..RunColumns::NONE
    };
    /// A run's end: its status and how it went.
    pub const END: RunColumns = RunColumns {
        status: true,
        outcome: true,
        ..RunColumns::NONE
    };
    const NONE: RunColumns = RunColumns {
        status: false,
        outcome: false,
        progress: false,
        options: false,
        version: false,
    };
}

#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub id: i64,
    pub run_id: i64,
    /// Position in the run, from 0.
    pub seq: i64,
    pub name: String,
    pub status: StepStatus,
    pub message: Option<String>,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub id: i64,
    pub tenant_id: String,
    pub run_id: Option<i64>,
    pub fraise: String,
    pub environment: String,
    /// e.g. `deployment.started`, `instance.healthy`, `traffic.shifted`, `analysis.failed`.
    pub event_type: String,
    pub data: Value,
    pub timestamp: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LogLine {
    pub id: i64,
    pub run_id: i64,
    pub level: LogLevel,
    pub component: Component,
    pub message: String,
    pub details: Value,
    pub timestamp: DateTime<Utc>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogFilter {
    /// The last `lines` matching lines (in chronological order); 0 means all of them.
    pub lines: u32,
    /// Minimum level: `warn` returns warn and error.
    pub level: Option<LogLevel>,
    pub component: Option<Component>,
    /// Only lines with id greater than this (for following).
    pub after_id: Option<i64>,
}

/// A fraise in an environment: what runs there now and what ran before.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceRecord {
    pub tenant_id: String,
    pub fraise: String,
    pub environment: String,
    pub current_version: Option<String>,
    pub previous_version: Option<String>,
    pub state: ServiceState,
    /// The desired state last written for the agent (None before the first deploy).
    pub desired: Option<DesiredService>,
    pub last_run_id: Option<i64>,
    pub updated_at: DateTime<Utc>,
}

/// Figures for `/metrics`, read from the store so they survive restarts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunStats {
    /// Final runs per status.
    pub totals: Vec<(RunStatus, u64)>,
    /// Active (pending or in progress) runs per environment.
    pub active: Vec<(String, u64)>,
    /// Durations in seconds of finished runs: counts per upper bound (non-cumulative),
    /// for the bounds given to `run_stats`, plus the overflow count last; and the sum.
    pub duration_buckets: Vec<u64>,
    pub duration_sum: f64,
    pub duration_count: u64,
}

// === impl StoreError ===

/// The one place where the driver's "no row" becomes the domain's `NotFound`.
impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            e => StoreError::Database(e),
        }
    }
}
