//! The engine's refusals and failures, with the API error code each one maps to.

use fraisier_store::StoreError;

use crate::provider::ProviderError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("fraise {0:?} not found")]
    FraiseNotFound(String),
    #[error("environment {0:?} not found")]
    EnvironmentNotFound(String),
    #[error("environment {0:?} already exists")]
    EnvironmentExists(String),
    #[error("environment {name:?} cannot be deleted: {reason}")]
    EnvironmentInUse { name: String, reason: String },
    #[error("fraise {fraise:?} is not deployed to environment {environment:?} (add it under fraises.{fraise}.environments)")]
    NotInEnvironment { fraise: String, environment: String },
    #[error("deployment {0} not found")]
    RunNotFound(String),
    #[error("{message}")]
    InvalidParameters { field: String, message: String },
    #[error("{message}")]
    InvalidSpec { field: String, message: String },
    #[error("{message}")]
    ArtifactNotFound { version: String, message: String },
    #[error("{0}")]
    NoVersionKnown(String),
    #[error("deployment {active_id} is already in progress for {fraise} in {environment}")]
    InProgress {
        active_id: String,
        fraise: String,
        environment: String,
    },
    #[error("dependency {dependency:?} is not healthy in {environment}: {reason}")]
    DependencyFailed {
        dependency: String,
        environment: String,
        reason: String,
    },
    #[error("{message}")]
    BackupNotFound {
        version: Option<String>,
        message: String,
    },
    #[error("deployment {0} has already finished")]
    AlreadyFinished(String),
    /// The run does not wait for approval (never needed it, already granted, or over).
    #[error("deployment {id} is not waiting for approval: {reason}")]
    ApprovalNotPending { id: String, reason: String },
    /// Separation of duties.
    #[error("{user} asked for deployment {id} and cannot approve it (separation of duties)")]
    SelfApproval { id: String, user: String },
    #[error("{user} has already decided on deployment {id}")]
    AlreadyDecided { id: String, user: String },
    /// A variable's name is taken by one of the other kind (plain vs secret).
    #[error("{name} is already {held_as}; unset it there first")]
    VariableConflict { name: String, held_as: &'static str },
    #[error("secrets: {0}")]
    Secret(fraisier_model::secret::SecretError),
    #[error("artifact {name}{} not found", version.as_ref().map(|v| format!(" version {v}")).unwrap_or_default())]
    ArtifactMissing {
        name: String,
        version: Option<String>,
    },
    #[error("{0}")]
    ArtifactConflict(String),
    #[error("{0}")]
    ArtifactInUse(String),
    #[error("{0}")]
    NotPromotable(String),
    #[error("{0}")]
    PromotionBlocked(String),
    #[error("{} is locked by {}{}: unlock it first (POST /environments/{}/unlock)", .0.environment, .0.locked_by, .0.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default(), .0.environment)]
    EnvironmentLocked(Box<fraisier_store::EnvironmentLock>),
    #[error("{} is already locked by {}{}", .0.environment, .0.locked_by, .0.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())]
    AlreadyLocked(Box<fraisier_store::EnvironmentLock>),
    #[error("{} is frozen until {} (freeze window frz_{:05}{})", .0.environment, .0.ends_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), .0.id, .0.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    EnvironmentFrozen(Box<fraisier_store::FreezeWindow>),
    #[error("no freeze window frz_{0:05}")]
    FreezeWindowNotFound(i64),
    #[error("{environment} accepts changes only inside its change windows{}", .next.map(|n| format!("; the next opens at {}", n.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))).unwrap_or_default())]
    OutsideChangeWindow {
        environment: String,
        next: Option<chrono::DateTime<chrono::Utc>>,
    },
    #[error("{environment} may run {max_instances} instances: this deploy asks for {requested} beside the {in_use} of its other fraises (raise it with PUT /environments/{environment}/limits)")]
    LimitExceeded {
        environment: String,
        max_instances: u64,
        requested: u64,
        in_use: u64,
    },
    #[error("no secret {name} is stored in workspace {workspace}: store it with `fraisier secret workspace set {name}` (or PUT /secrets/{name})")]
    SecretNotFound { workspace: String, name: String },
    #[error("no scanner is configured: set server.artifact_scanner in fraisier.yaml (a command that prints its findings as JSON)")]
    ScannerNotConfigured,
    #[error("the scan failed: {0}")]
    ScanFailed(String),
    #[error(
        "the artifact is larger than the server accepts ({limit} bytes; server.max_artifact_bytes)"
    )]
    ArtifactTooLarge { limit: u64 },
    /// The git repository cannot be fetched or read.
    #[error("source: {0}")]
    SourceUnavailable(String),
    /// The blob store on disk failed.
    #[error("artifact storage: {0}")]
    Blob(String),
    /// A fraise's `targets` pick a target group that does not exist, or a target no
    /// provider can deploy to.
    #[error(transparent)]
    Misplaced(#[from] crate::fleet::Misplaced),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

impl From<fraisier_store::Barrier> for EngineError {
    fn from(barrier: fraisier_store::Barrier) -> EngineError {
        match barrier {
            fraisier_store::Barrier::Locked(lock) => EngineError::EnvironmentLocked(Box::new(lock)),
            fraisier_store::Barrier::Frozen(w) => EngineError::EnvironmentFrozen(Box::new(w)),
        }
    }
}

impl EngineError {
    /// The API error code (DESIGN §4).
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::FraiseNotFound(_) => "FRAISE_NOT_FOUND",
            EngineError::EnvironmentNotFound(_) | EngineError::NotInEnvironment { .. } => {
                "ENVIRONMENT_NOT_FOUND"
            }
            EngineError::RunNotFound(_) => "DEPLOYMENT_NOT_FOUND",
            EngineError::EnvironmentExists(_) => "ENVIRONMENT_EXISTS",
            EngineError::EnvironmentInUse { .. } => "ENVIRONMENT_IN_USE",
            EngineError::InvalidParameters { .. } | EngineError::NoVersionKnown(_) => {
                "INVALID_PARAMETERS"
            }
            EngineError::InvalidSpec { .. } => "INVALID_DEPLOYMENT_SPEC",
            EngineError::ArtifactNotFound { .. } => "ARTIFACT_NOT_FOUND",
            EngineError::InProgress { .. } => "DEPLOYMENT_IN_PROGRESS",
            EngineError::DependencyFailed { .. } => "DEPENDENCY_FAILED",
            EngineError::BackupNotFound { .. } => "BACKUP_NOT_FOUND",
            EngineError::AlreadyFinished(_) => "DEPLOYMENT_FINISHED",
            EngineError::ApprovalNotPending { .. } => "APPROVAL_NOT_PENDING",
            EngineError::SelfApproval { .. } => "PERMISSION_DENIED",
            EngineError::AlreadyDecided { .. } => "ALREADY_DECIDED",
            EngineError::VariableConflict { .. } => "VARIABLE_CONFLICT",
            EngineError::Secret(fraisier_model::secret::SecretError::External) => {
                "SECRET_KEY_EXTERNAL"
            }
            EngineError::Secret(_) => "INTERNAL_ERROR",
            EngineError::ArtifactMissing { .. } => "ARTIFACT_NOT_FOUND",
            EngineError::ArtifactConflict(_) => "ARTIFACT_CONFLICT",
            EngineError::ArtifactInUse(_) => "ARTIFACT_IN_USE",
            EngineError::NotPromotable(_) => "NOT_PROMOTABLE",
            EngineError::PromotionBlocked(_) => "PROMOTION_BLOCKED",
            EngineError::EnvironmentLocked(_) | EngineError::AlreadyLocked(_) => {
                "ENVIRONMENT_LOCKED"
            }
            EngineError::EnvironmentFrozen(_) => "ENVIRONMENT_FROZEN",
            EngineError::Misplaced(crate::fleet::Misplaced::NoGroup { .. }) => {
                "TARGET_GROUP_NOT_FOUND"
            }
            EngineError::Misplaced(crate::fleet::Misplaced::Unsupported(_)) => {
                "PROVIDER_UNSUPPORTED"
            }
            EngineError::Misplaced(crate::fleet::Misplaced::Unreadable(_)) => "INTERNAL_ERROR",
            EngineError::FreezeWindowNotFound(_) => "FREEZE_WINDOW_NOT_FOUND",
            EngineError::OutsideChangeWindow { .. } => "OUTSIDE_CHANGE_WINDOW",
            EngineError::LimitExceeded { .. } => "ENVIRONMENT_LIMIT_EXCEEDED",
            EngineError::SecretNotFound { .. } => "SECRET_NOT_FOUND",
            EngineError::ScannerNotConfigured => "SCANNER_NOT_CONFIGURED",
            EngineError::ScanFailed(_) => "SCAN_FAILED",
            EngineError::ArtifactTooLarge { .. } => "ARTIFACT_TOO_LARGE",
            EngineError::Blob(_) => "INTERNAL_ERROR",
            EngineError::SourceUnavailable(_) => "SOURCE_UNAVAILABLE",
            EngineError::Store(StoreError::NotFound) => "NOT_FOUND",
            EngineError::Store(_) => "INTERNAL_ERROR",
            EngineError::Provider(_) => "PROVIDER_ERROR",
        }
    }
}
