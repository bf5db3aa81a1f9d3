//! Sends the notification outbox: each due announcement POSTed in its kind's format (JSON
//! signed with HMAC-SHA256 for `webhook`; Slack's, Discord's and Teams' incoming-webhook
//! bodies), every attempt recorded, failures retried with backoff (1, 2, 4, 8 s) and given up
//! after 5 attempts. Off every run's path: a slow receiver delays nothing but itself.

use std::time::{Duration, Instant};

use chrono::Utc;
use fraisier_engine::Engine;
use fraisier_model::config::{NotificationConfig, NotificationKind};
use fraisier_store::{Attempt, Notification};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

/// Attempts before a notification is given up.
const MAX_ATTEMPTS: i64 = 5;

pub fn spawn(engine: Engine) {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("a plain reqwest client builds");
        loop {
            match engine.store().due_notifications(32).await {
                Ok(due) => {
                    for n in due {
                        send(&engine, &http, n).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the notification outbox"),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
}

async fn send(engine: &Engine, http: &reqwest::Client, n: Notification) {
    let attempt = n.attempt_count + 1;
    let started = Instant::now();
    let (status_code, error) = match engine.notification_target(&n) {
        None => (None, Some("no longer configured".to_string())),
        Some(target) => post(http, &target, &n).await,
    };
    let sent = status_code.is_some_and(|c| (200..300).contains(&c));
    let gone = error.as_deref() == Some("no longer configured");
    let status = if sent {
        "sent"
    } else if gone || attempt >= MAX_ATTEMPTS {
        "failed"
    } else {
        "pending"
    };
    let next = Utc::now() + chrono::Duration::seconds(1 << (attempt - 1).clamp(0, 5));
    let record = Attempt {
        attempt,
        at: Utc::now(),
        status_code,
        error,
        duration_ms: started.elapsed().as_millis() as i64,
    };
    if let Err(e) = engine
        .store()
        .record_attempt(n.id, &record, status, next)
        .await
    {
        tracing::warn!(error = %e, "cannot record a notification attempt");
    }
}

async fn post(
    http: &reqwest::Client,
    target: &NotificationConfig,
    n: &Notification,
) -> (Option<i64>, Option<String>) {
    let text = n.new.payload["text"].as_str().unwrap_or_default();
    let body = match target.kind {
        NotificationKind::Webhook => n.new.payload.clone(),
        NotificationKind::Slack => json!({ "text": text }),
        NotificationKind::Discord => json!({ "content": text }),
        NotificationKind::Teams => json!({ "text": text }),
        NotificationKind::Email => return (None, Some("email is not supported".into())),
    };
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let mut req = http
        .post(&target.url)
        .header("content-type", "application/json")
        .header("user-agent", "fraisier")
        .header("x-fraisier-event", &n.new.event)
        .header("x-fraisier-delivery", format!("ntf_{:06}", n.id));
    if let Some(secret) = &target.secret {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(&bytes);
        req = req.header(
            "x-fraisier-signature",
            format!("sha256={}", hex::encode(mac.finalize().into_bytes())),
        );
    }
    match req.body(bytes).send().await {
        Ok(r) if r.status().is_success() => (Some(i64::from(r.status().as_u16())), None),
        Ok(r) => (
            Some(i64::from(r.status().as_u16())),
            Some(format!("the receiver answered {}", r.status())),
        ),
        // The error names the URL, which may carry a token: say what kind of failure only.
        Err(e) if e.is_timeout() => (None, Some("timed out after 10 s".into())),
        Err(e) if e.is_connect() => (None, Some("cannot connect".into())),
        Err(_) => (None, Some("the request failed".into())),
    }
}
