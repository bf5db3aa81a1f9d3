//! Sends the notification outbox: each due announcement POSTed in its kind's format (JSON
//! signed with HMAC-SHA256 for `webhook`; Slack's, Discord's and Teams' incoming-webhook
//! bodies) or mailed through the configured SMTP server (`email`), every attempt recorded,
//! failures retried with backoff (1, 2, 4, 8 s) and given up after 5 attempts (at once when
//! the mail server refuses for good). Off every run's path: a slow receiver delays nothing
//! but itself.

use std::time::{Duration, Instant};

use chrono::Utc;
use fraisier_engine::Engine;
use fraisier_model::config::{NotificationConfig, NotificationKind, SmtpConfig, SmtpTls};
use fraisier_store::{Attempt, Notification};
use hmac::{Hmac, Mac};
use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::json;
use sha2::Sha256;

/// Attempts before a notification is given up.
const MAX_ATTEMPTS: i64 = 5;

/// How long one attempt may take, whatever the kind.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// What one attempt came to.
struct Outcome {
    /// The HTTP status, or the SMTP server's last reply code.
    status_code: Option<i64>,
    /// Why it was not delivered; `None` when it was.
    error: Option<String>,
    /// Trying again cannot help (the destination is gone, or the mail server refused for good).
    permanent: bool,
}

impl Outcome {
    fn sent(status_code: i64) -> Outcome {
        Outcome {
            status_code: Some(status_code),
            error: None,
            permanent: false,
        }
    }

    fn failed(status_code: Option<i64>, error: impl Into<String>) -> Outcome {
        Outcome {
            status_code,
            error: Some(error.into()),
            permanent: false,
        }
    }
}

pub fn spawn(engine: Engine) {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .build()
            .expect("a plain reqwest client builds");
        // One server sends them: each would send every one otherwise.
        let mut lease = engine.job_lease("notifications");
        loop {
            if !lease.held().await {
                lease.idle(Duration::from_secs(1)).await;
                continue;
            }
            match engine.store().due_notifications(32).await {
                Ok(due) => {
                    for n in due {
                        // Asked again before each: a batch can outlast the lease.
                        if !lease.held().await {
                            break;
                        }
                        // And claimed: a sender that lost the lease mid-batch finds it
                        // taken rather than sending it a second time.
                        let until = chrono::Utc::now()
                            + chrono::Duration::from_std(ATTEMPT_TIMEOUT * 3)
                                .unwrap_or(chrono::Duration::seconds(30));
                        match engine.store().claim_notification(n.id, until).await {
                            Ok(true) => send(&engine, &http, n).await,
                            Ok(false) => {}
                            Err(e) => tracing::warn!(error = %e, "cannot claim a notification"),
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the notification outbox"),
            }
            lease.idle(Duration::from_millis(250)).await;
        }
    });
}

async fn send(engine: &Engine, http: &reqwest::Client, n: Notification) {
    let attempt = n.attempt_count + 1;
    let started = Instant::now();
    let outcome = match engine.notification_target(&n) {
        None => Outcome {
            permanent: true,
            ..Outcome::failed(None, "no longer configured")
        },
        Some(target) if target.kind == NotificationKind::Email => {
            match engine.config().smtp.as_ref() {
                Some(smtp) => mail(smtp, &target, &n).await,
                None => Outcome {
                    permanent: true,
                    ..Outcome::failed(None, "no smtp server is configured")
                },
            }
        }
        Some(target) => post(http, &target, &n).await,
    };
    let Outcome {
        status_code,
        error,
        permanent,
    } = outcome;
    let status = if error.is_none() {
        "sent"
    } else if permanent || attempt >= MAX_ATTEMPTS {
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

async fn post(http: &reqwest::Client, target: &NotificationConfig, n: &Notification) -> Outcome {
    let text = n.new.payload["text"].as_str().unwrap_or_default();
    let body = match target.kind {
        NotificationKind::Webhook => n.new.payload.clone(),
        NotificationKind::Slack => json!({ "text": text }),
        NotificationKind::Discord => json!({ "content": text }),
        NotificationKind::Teams => json!({ "text": text }),
        NotificationKind::Email => unreachable!("mailed, not posted"),
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
        Ok(r) if r.status().is_success() => Outcome::sent(i64::from(r.status().as_u16())),
        Ok(r) => Outcome::failed(
            Some(i64::from(r.status().as_u16())),
            format!("the receiver answered {}", r.status()),
        ),
        // The error names the URL, which may carry a token: say what kind of failure only.
        Err(e) if e.is_timeout() => Outcome::failed(None, "timed out after 10 s"),
        Err(e) if e.is_connect() => Outcome::failed(None, "cannot connect"),
        Err(_) => Outcome::failed(None, "the request failed"),
    }
}

/// Mails the announcement: its line of text as the subject, the facts as a plain-text body.
async fn mail(smtp: &SmtpConfig, target: &NotificationConfig, n: &Notification) -> Outcome {
    let message = match message(smtp, target, n) {
        Ok(m) => m,
        Err(why) => {
            return Outcome {
                permanent: true,
                ..Outcome::failed(None, why)
            }
        }
    };
    let transport = match transport(smtp) {
        Ok(t) => t,
        Err(why) => {
            return Outcome {
                permanent: true,
                ..Outcome::failed(None, why)
            }
        }
    };
    // lettre's timeout is per command: the attempt as a whole gets one too.
    let sent = match tokio::time::timeout(ATTEMPT_TIMEOUT, transport.send(message)).await {
        Ok(sent) => sent,
        Err(_) => return Outcome::failed(None, "timed out after 10 s"),
    };
    match sent {
        Ok(reply) => Outcome::sent(smtp_code(reply.code())),
        Err(e) => {
            let code = e.status().map(smtp_code);
            let error = if let Some(code) = code {
                // The server's own words for a refusal: no credential is in them.
                format!(
                    "the mail server answered {code}: {}",
                    first_line(&e.to_string())
                )
            } else if e.is_timeout() {
                "timed out after 10 s".into()
            } else {
                format!(
                    "cannot reach the mail server: {}",
                    first_line(&e.to_string())
                )
            };
            Outcome {
                status_code: code,
                error: Some(error),
                permanent: e.is_permanent(),
            }
        }
    }
}

fn message(
    smtp: &SmtpConfig,
    target: &NotificationConfig,
    n: &Notification,
) -> Result<Message, String> {
    let p = &n.new.payload;
    let from: Mailbox = smtp
        .from
        .parse()
        .map_err(|e| format!("smtp.from {:?}: {e}", smtp.from))?;
    let mut builder = Message::builder()
        .from(from)
        .subject(format!(
            "[fraisier] {}",
            p["text"].as_str().unwrap_or_default()
        ))
        .header(ContentType::TEXT_PLAIN);
    for to in &target.to {
        let to: Mailbox = to.parse().map_err(|e| format!("recipient {to:?}: {e}"))?;
        builder = builder.to(to);
    }
    let mut body = format!("{}\n\n", p["text"].as_str().unwrap_or_default());
    for key in [
        "event",
        "deployment_id",
        "workspace",
        "fraise",
        "environment",
        "version",
        "previous_version",
        "type",
        "triggered_by",
        "timestamp",
    ] {
        if let Some(v) = p[key].as_str() {
            body.push_str(&format!("{key}: {v}\n"));
        }
    }
    if let Some(e) = p["error"].as_object() {
        for (k, v) in [("error", &e.get("code")), ("message", &e.get("message"))] {
            if let Some(v) = v.and_then(|v| v.as_str()) {
                body.push_str(&format!("{k}: {v}\n"));
            }
        }
    }
    builder
        .body(body)
        .map_err(|e| format!("cannot build the message: {e}"))
}

fn transport(smtp: &SmtpConfig) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let tls = || {
        TlsParameters::new(smtp.host.clone())
            .map_err(|e| format!("cannot set up TLS to {}: {e}", smtp.host))
    };
    let security = match smtp.tls {
        SmtpTls::Starttls => Tls::Required(tls()?),
        SmtpTls::Tls => Tls::Wrapper(tls()?),
        // Load refuses `none` to anything but this machine.
        SmtpTls::None => Tls::None,
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.as_str())
        .port(smtp.port())
        .tls(security)
        .timeout(Some(ATTEMPT_TIMEOUT));
    if let (Some(user), Some(password)) = (&smtp.username, &smtp.password) {
        builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
    }
    Ok(builder.build())
}

fn smtp_code(code: lettre::transport::smtp::response::Code) -> i64 {
    code.to_string().parse().unwrap_or(0)
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}
