//! Which announcements a run's event makes: to every notification configured at the top
//! level, for its environment and for its fraise, that asked for that event. They are written
//! to the store's outbox with the event, and sent off the run's path by the server.

use chrono::Utc;
use fraisier_model::config::{NotificationConfig, NotificationKind, NotifyOn};
use fraisier_model::run::{EventType, RunKind};
use fraisier_store::{NewNotification, Notification, Run};
use serde_json::{json, Value};

use crate::Engine;

// === impl Engine ===

impl Engine {
    pub(crate) async fn notify(&self, run: &Run, event_type: EventType, data: &Value) {
        let on = match (event_type, run.kind) {
            (EventType::DeploymentStarted, _) => NotifyOn::Started,
            (EventType::DeploymentCompleted, RunKind::Rollback) => NotifyOn::RolledBack,
            (EventType::DeploymentCompleted, _) => NotifyOn::Succeeded,
            (EventType::DeploymentFailed, _) => NotifyOn::Failed,
            (EventType::RollbackCompleted, _) => NotifyOn::RolledBack,
            (EventType::ApprovalRequested, _) => NotifyOn::ApprovalRequested,
            _ => return,
        };
        let config = self.config();
        let ws = config.scope(&run.tenant_id);
        let mut targets: Vec<(&str, usize, &NotificationConfig)> = Vec::new();
        targets.extend(
            config
                .notifications
                .iter()
                .enumerate()
                .map(|(i, n)| ("global", i, n)),
        );
        if let Some(e) = ws.environments.get(&run.environment) {
            targets.extend(
                e.notifications
                    .iter()
                    .enumerate()
                    .map(|(i, n)| ("environment", i, n)),
            );
        }
        if let Some(f) = ws.fraises.get(&run.fraise) {
            targets.extend(
                f.notifications
                    .iter()
                    .enumerate()
                    .map(|(i, n)| ("fraise", i, n)),
            );
        }
        let payload = payload(run, on, event_type, data);
        for (scope, position, n) in targets.into_iter().filter(|(_, _, n)| n.on.contains(&on)) {
            let new = NewNotification {
                tenant_id: run.tenant_id.clone(),
                run_id: Some(run.id),
                fraise: run.fraise.clone(),
                environment: run.environment.clone(),
                event: on.as_str().to_string(),
                kind: n.kind.as_str().to_string(),
                scope: scope.to_string(),
                position: position as i64,
                target: if n.kind == NotificationKind::Email {
                    format!("mailto:{}", n.to.join(","))
                } else {
                    shown(&n.url)
                },
                fingerprint: Some(fingerprint(n)),
                payload: payload.clone(),
            };
            if let Err(e) = self.store().enqueue_notification(&new).await {
                tracing::error!(error = %e, "cannot record a notification");
            }
        }
    }

    /// The configured destination of a recorded notification; `None` when the configuration
    /// no longer has it.
    pub fn notification_target(&self, n: &Notification) -> Option<NotificationConfig> {
        let config = self.config();
        let ws = config.scope(&n.new.tenant_id);
        let list = match n.new.scope.as_str() {
            "global" => &config.notifications,
            "environment" => &ws.environments.get(&n.new.environment)?.notifications,
            "fraise" => &ws.fraises.get(&n.new.fraise)?.notifications,
            _ => return None,
        };
        let at = list.get(usize::try_from(n.new.position).ok()?);
        match &n.new.fingerprint {
            // The destination it was written for, wherever the configuration has moved it; if
            // it is gone, nowhere (never the entry that took its place).
            Some(f) => at
                .filter(|c| fingerprint(c) == *f)
                .or_else(|| list.iter().find(|c| fingerprint(c) == *f))
                .cloned(),
            None => at.filter(|c| c.kind.as_str() == n.new.kind).cloned(),
        }
    }
}

/// A digest of where a notification goes (its kind, URL, secret and recipients): what tells
/// one destination from another.
fn fingerprint(n: &NotificationConfig) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [
        n.kind.as_str(),
        n.url.as_str(),
        n.secret.as_deref().unwrap_or(""),
        &n.to.join(","),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..16])
}

/// What every kind says: the facts as JSON, and one line of text for chat.
fn payload(run: &Run, on: NotifyOn, event_type: EventType, data: &Value) -> Value {
    let id = fraisier_store::run_id_string(run.id);
    let kind = match run.kind {
        RunKind::Deploy => "deploy",
        RunKind::Rollback => "rollback",
        RunKind::Config => "config",
    };
    let text = match on {
        NotifyOn::Started => format!(
            "{} {} → {} started in {} ({id}, by {})",
            run.fraise,
            run.previous_version.as_deref().unwrap_or("(none)"),
            run.version,
            run.environment,
            run.triggered_by
        ),
        NotifyOn::Succeeded => format!(
            "✅ {} {} is live in {} ({id})",
            run.fraise, run.version, run.environment
        ),
        NotifyOn::Failed => format!(
            "❌ {} {} failed in {}: {} ({id})",
            run.fraise,
            run.version,
            run.environment,
            data["error"]["message"].as_str().unwrap_or("see its log")
        ),
        NotifyOn::RolledBack => format!(
            "↩️ {} in {} rolled back to {} ({id})",
            run.fraise,
            run.environment,
            // A rollback run that succeeded went to its version; a run put back after a
            // failure (`rollback.completed`) returned to the one it started from.
            if run.kind == RunKind::Rollback && event_type != EventType::RollbackCompleted {
                run.version.as_str()
            } else {
                run.previous_version
                    .as_deref()
                    .unwrap_or("the previous version")
            }
        ),
        NotifyOn::ApprovalRequested => format!(
            "⏳ {} {} to {} waits for approval ({id}, asked by {})",
            run.fraise, run.version, run.environment, run.triggered_by
        ),
    };
    json!({
        "event": on.as_str(),
        "deployment_id": id,
        "workspace": run.tenant_id,
        "fraise": run.fraise,
        "environment": run.environment,
        "version": run.version,
        "previous_version": run.previous_version,
        "type": kind,
        "triggered_by": run.triggered_by,
        "error": data.get("error"),
        "timestamp": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "text": text,
    })
}

/// A URL as shown: scheme and host, never the path or query where tokens live.
fn shown(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            let host = host.rsplit('@').next().unwrap_or(host);
            format!("{scheme}://{host}")
        }
        None => "(hidden)".into(),
    }
}
