//! The vocabulary of a deployment run and of a service deployment's state, as the API spells it.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Status of a run (seed 000).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Pending,
    InProgress,
    Success,
    Failed,
    Cancelled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    Deploy,
    Rollback,
    /// A change of environment variables or secrets: the same version, rolled onto fresh
    /// instances with the environment's strategy.
    Config,
}

/// Status of one step of a run (seed 001).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Running,
    Completed,
    Failed,
    Skipped,
}

/// State of a fraise in an environment (seed 001).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    Unknown,
    Deploying,
    Healthy,
    Unhealthy,
    Failed,
    RollingBack,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Unknown,
    Healthy,
    Unhealthy,
    Degraded,
}

/// Status of a fraise in an environment, or over its environments (seed 000's `status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FraiseStatus {
    Healthy,
    Degraded,
    Unhealthy,
    Deploying,
    Unknown,
}

impl FraiseStatus {
    /// A fraise over its environments: deploying if any is, healthy if every deployed one is,
    /// degraded if some serve, unhealthy if none does.
    pub fn overall(statuses: &[FraiseStatus]) -> FraiseStatus {
        use FraiseStatus::*;
        if statuses.iter().all(|s| *s == Unknown) {
            Unknown
        } else if statuses.contains(&Deploying) {
            Deploying
        } else if statuses.iter().all(|s| matches!(s, Healthy | Unknown)) {
            Healthy
        } else if statuses.iter().any(|s| matches!(s, Healthy | Degraded)) {
            Degraded
        } else {
            Unhealthy
        }
    }
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    Deployment,
    HealthCheck,
    Provider,
    Hook,
    /// Fetching the source and running the fraise's `build`.
    Build,
    /// The fraise's database migrations, up and down.
    Migration,
}

/// What a run's health check found (seed 000's `health_check_status`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckStatus {
    #[default]
    Unknown,
    Passing,
    Failing,
    Skipped,
}

/// Why a run ended short: the `error_code` of a failed or cancelled run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailureCode {
    DeploymentFailed,
    DeploymentCancelled,
    ProviderError,
    HealthCheckFailed,
    DependencyFailed,
    BuildFailed,
    MigrationFailed,
    RollbackFailed,
    InvalidDeploymentSpec,
    ApprovalRejected,
    ApprovalExpired,
}

/// The kinds of event a run records (seed 000's events), as the API spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    DeploymentStarted,
    DeploymentResumed,
    DeploymentCompleted,
    DeploymentFailed,
    DeploymentCancelled,
    ApprovalRequested,
    ApprovalGranted,
    ApprovalRejected,
    ApprovalExpired,
    TrafficShifted,
    InstanceHealthy,
    HealthCheckPassed,
    HealthCheckFailed,
    AnalysisPassed,
    AnalysisFailed,
    HookCompleted,
    HookFailed,
    MigrationApplied,
    MigrationReverted,
    MigrationDownFailed,
    RollbackStarted,
    RollbackCompleted,
    RollbackFailed,
    ScheduleUpdated,
}

/// The wire spelling of any of these enums, and back; unknown spellings are `None`.
pub fn to_wire<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

pub fn from_wire<T: DeserializeOwned>(s: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
}

// === impl RunStatus ===

impl RunStatus {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Success | RunStatus::Failed | RunStatus::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::InProgress => "in_progress",
            RunStatus::Success => "success",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }
}

impl HealthCheckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthCheckStatus::Unknown => "unknown",
            HealthCheckStatus::Passing => "passing",
            HealthCheckStatus::Failing => "failing",
            HealthCheckStatus::Skipped => "skipped",
        }
    }
}

impl FailureCode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCode::DeploymentFailed => "DEPLOYMENT_FAILED",
            FailureCode::DeploymentCancelled => "DEPLOYMENT_CANCELLED",
            FailureCode::ProviderError => "PROVIDER_ERROR",
            FailureCode::HealthCheckFailed => "HEALTH_CHECK_FAILED",
            FailureCode::DependencyFailed => "DEPENDENCY_FAILED",
            FailureCode::BuildFailed => "BUILD_FAILED",
            FailureCode::MigrationFailed => "MIGRATION_FAILED",
            FailureCode::RollbackFailed => "ROLLBACK_FAILED",
            FailureCode::InvalidDeploymentSpec => "INVALID_DEPLOYMENT_SPEC",
            FailureCode::ApprovalRejected => "APPROVAL_REJECTED",
            FailureCode::ApprovalExpired => "APPROVAL_EXPIRED",
        }
    }
}

impl std::fmt::Display for FailureCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::DeploymentStarted => "deployment.started",
            EventType::DeploymentResumed => "deployment.resumed",
            EventType::DeploymentCompleted => "deployment.completed",
            EventType::DeploymentFailed => "deployment.failed",
            EventType::DeploymentCancelled => "deployment.cancelled",
            EventType::ApprovalRequested => "approval.requested",
            EventType::ApprovalGranted => "approval.granted",
            EventType::ApprovalRejected => "approval.rejected",
            EventType::ApprovalExpired => "approval.expired",
            EventType::TrafficShifted => "traffic.shifted",
            EventType::InstanceHealthy => "instance.healthy",
            EventType::HealthCheckPassed => "health_check.passed",
            EventType::HealthCheckFailed => "health_check.failed",
            EventType::AnalysisPassed => "analysis.passed",
            EventType::AnalysisFailed => "analysis.failed",
            EventType::HookCompleted => "hook.completed",
            EventType::HookFailed => "hook.failed",
            EventType::MigrationApplied => "migration.applied",
            EventType::MigrationReverted => "migration.reverted",
            EventType::MigrationDownFailed => "migration.down_failed",
            EventType::RollbackStarted => "rollback.started",
            EventType::RollbackCompleted => "rollback.completed",
            EventType::RollbackFailed => "rollback.failed",
            EventType::ScheduleUpdated => "schedule.updated",
        }
    }
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Deployment => "deployment",
            Component::HealthCheck => "health_check",
            Component::Provider => "provider",
            Component::Hook => "hook",
            Component::Build => "build",
            Component::Migration => "migration",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fraise_over_its_environments() {
        use FraiseStatus::*;
        assert_eq!(FraiseStatus::overall(&[]), Unknown);
        assert_eq!(FraiseStatus::overall(&[Unknown, Unknown]), Unknown);
        assert_eq!(FraiseStatus::overall(&[Healthy, Unknown]), Healthy);
        assert_eq!(FraiseStatus::overall(&[Healthy, Deploying]), Deploying);
        assert_eq!(FraiseStatus::overall(&[Healthy, Unhealthy]), Degraded);
        assert_eq!(FraiseStatus::overall(&[Degraded]), Degraded);
        assert_eq!(FraiseStatus::overall(&[Unhealthy, Unknown]), Unhealthy);
    }

    #[test]
    fn wire_spellings_round_trip() {
        assert_eq!(to_wire(&RunStatus::InProgress), "in_progress");
        assert_eq!(
            from_wire::<RunStatus>("in_progress"),
            Some(RunStatus::InProgress)
        );
        assert_eq!(from_wire::<RunStatus>("bogus"), None);
        assert_eq!(
            to_wire(&FailureCode::HealthCheckFailed),
            FailureCode::HealthCheckFailed.as_str()
        );
        assert_eq!(
            to_wire(&HealthCheckStatus::Passing),
            HealthCheckStatus::Passing.as_str()
        );
        assert_eq!(
            EventType::MigrationDownFailed.as_str(),
            "migration.down_failed"
        );
        assert_eq!(to_wire(&ServiceState::RollingBack), "rolling_back");
        assert_eq!(
            RunStatus::Cancelled.as_str(),
            to_wire(&RunStatus::Cancelled)
        );
    }
}
