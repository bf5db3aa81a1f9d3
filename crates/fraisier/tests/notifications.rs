//! Notifications against the real binary and local receivers: each configured destination
//! (top level, environment, fraise) hears of the events it asked for, in its kind's format,
//! signed when it has a secret; a receiver that fails is retried with backoff, and every
//! attempt is on record with the destination shown by host only.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// A receiver: `/flaky` answers 500 twice then 200, `/down` always 503, the rest 200.
async fn receiver() -> (u16, Arc<Mutex<Vec<Received>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let seen = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let n = conn.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let mut lines = head.lines();
                let path = lines
                    .next()
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|target| target.split('?').next())
                    .unwrap_or("")
                    .to_string();
                let headers: BTreeMap<String, String> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                let len: usize = headers
                    .get("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let n = conn.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = buf[head_end..].to_vec();
                let status = {
                    let mut seen = seen.lock().unwrap();
                    let earlier = seen.iter().filter(|r| r.path == path).count();
                    seen.push(Received {
                        path: path.clone(),
                        headers,
                        body,
                    });
                    match path.as_str() {
                        "/flaky" if earlier < 2 => "500 Internal Server Error",
                        "/down" => "503 Service Unavailable",
                        _ => "200 OK",
                    }
                };
                let _ = conn
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    (port, got)
}

fn bodies(got: &Arc<Mutex<Vec<Received>>>, path: &str) -> Vec<(BTreeMap<String, String>, Value)> {
    got.lock()
        .unwrap()
        .iter()
        .filter(|r| r.path == path)
        .map(|r| {
            (
                r.headers.clone(),
                serde_json::from_slice(&r.body).unwrap_or(Value::Null),
            )
        })
        .collect()
}

async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn runs_are_announced_where_asked_and_retried_until_heard() {
    let (rport, got) = receiver().await;
    let ws = Workspace::new();
    ws.release("1.0.0", &[]);
    ws.release("2.0.0", &["DEMO_HEALTHY=false"]);
    let port = free_port();
    let base = format!("http://127.0.0.1:{rport}");
    let yaml = config_yaml(&ws, port, 1, "rolling, strategy_config: { health_check_timeout: 3s }", "")
        .replace(
            "  production: { display_name: Production, description: Live environment, provider: local }",
            &format!("  production: {{ display_name: Production, provider: local, notifications: [ {{ type: slack, url: \"{base}/slack\", on: [succeeded, failed] }} ] }}"),
        )
        .replace(
            "    drain_timeout: 5s\n",
            &format!("    drain_timeout: 5s\n    notifications:\n      - {{ type: discord, url: \"{base}/flaky\", on: [failed] }}\n      - {{ type: teams, url: \"{base}/down?token=t0ps3cret\", on: [succeeded] }}\n"),
        )
        + &format!("notifications:\n  - {{ type: webhook, url: \"{base}/hook\", secret: \"notify-secret-1\" }}\n");
    let s = Server::start(&ws, &yaml).await;

    let id = s
        .deploy("app", "production", json!({"version": "1.0.0"}))
        .await;
    assert_eq!(
        s.wait_run(&id, Duration::from_secs(60)).await["status"],
        "success"
    );
    until("started and succeeded reach the webhook", || {
        bodies(&got, "/hook").len() >= 2
    })
    .await;
    let hook = bodies(&got, "/hook");
    assert_eq!(hook[0].1["event"], "started", "{hook:?}");
    assert_eq!(hook[1].1["event"], "succeeded", "{hook:?}");
    assert_eq!(hook[1].1["deployment_id"], id.as_str());
    assert_eq!(hook[1].1["version"], "1.0.0");
    // Signed over the exact body.
    for r in got.lock().unwrap().iter().filter(|r| r.path == "/hook") {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"notify-secret-1").unwrap();
        mac.update(&r.body);
        let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(r.headers.get("x-fraisier-signature"), Some(&expected));
    }
    until("slack hears of the success", || {
        !bodies(&got, "/slack").is_empty()
    })
    .await;
    let slack = bodies(&got, "/slack");
    assert!(
        slack[0].1["text"]
            .as_str()
            .unwrap()
            .contains("app 1.0.0 is live in production"),
        "{slack:?}"
    );
    assert!(
        bodies(&got, "/flaky").is_empty(),
        "discord asked for failures only"
    );

    // A failed deploy: the webhook, Slack and Discord hear of it; Discord's receiver fails
    // twice and is retried until it answers.
    let id = s
        .deploy("app", "production", json!({"version": "2.0.0"}))
        .await;
    assert_eq!(
        s.wait_run(&id, Duration::from_secs(60)).await["status"],
        "failed"
    );
    until("discord is heard on the third attempt", || {
        bodies(&got, "/flaky").len() >= 3
    })
    .await;
    let discord = bodies(&got, "/flaky");
    assert!(
        discord[2].1["content"]
            .as_str()
            .unwrap()
            .contains("app 2.0.0 failed in production"),
        "{discord:?}"
    );
    until("the webhook hears of the failure", || {
        bodies(&got, "/hook")
            .iter()
            .any(|(_, b)| b["event"] == "failed")
    })
    .await;
    until("slack hears of the failure", || {
        bodies(&got, "/slack").len() >= 2
    })
    .await;

    // The record: every attempt, destinations by host only, the given-up ones retried.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let flaky = loop {
        let (_, v) = s.get("/notifications/deliveries?limit=100").await;
        let found = v["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["type"] == "discord")
            .cloned()
            .unwrap_or(Value::Null);
        if found["status"] == "sent" {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "discord never sent: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let codes: Vec<i64> = flaky["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [500, 500, 200], "{flaky:#}");
    assert_eq!(flaky["target"], base.as_str(), "{flaky:#}");
    assert_eq!(flaky["deployment_id"], id.as_str());
    let (_, v) = s.get("/notifications/deliveries?limit=100").await;
    let text = v.to_string();
    assert!(
        !text.contains("t0ps3cret") && !text.contains("/down"),
        "{text}"
    );
    let teams = v["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["type"] == "teams")
        .unwrap()
        .clone();
    assert!(
        teams["attempts"].as_array().unwrap().len() >= 2,
        "{teams:#}"
    );
    assert_eq!(
        teams["attempts"][0]["error"], "the receiver answered 503 Service Unavailable",
        "{teams:#}"
    );
    // The CLI shows the same record.
    let out = std::process::Command::new(fraisier_bin())
        .args(["--server", &s.url, "notifications", "--status", "sent"])
        .env("FRAISIER_TOKEN", &s.token)
        .env_remove("FRAISIER_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("discord") && text.contains("3 (200)"),
        "{text}"
    );
    assert!(!text.contains("t0ps3cret"), "{text}");
    let (status, v) = s.get("/notifications/deliveries?status=maybe").await;
    assert_eq!(
        (status, v["error"]["details"]["field"].as_str()),
        (400, Some("status"))
    );
}

/// aiosmtpd's sink (`tests/support/smtp_sink.py`) on a free port, with AUTH as `user`.
fn smtp_sink(user: &str, password: &str) -> Sidecar {
    let python = std::env::var("FRAISIER_SMTP_SINK_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/.cache/fraisier-fuzz-venv/bin/python",
            std::env::var("HOME").unwrap()
        )
    });
    Sidecar::start(&python, "smtp_sink.py", &[user, password])
}

fn messages(sink: &Sidecar) -> Vec<Value> {
    sink.lines()
        .into_iter()
        .filter(|l| l.get("body").is_some())
        .collect()
}

#[tokio::test]
async fn email_goes_through_the_smtp_server_with_its_login_and_bounces_are_not_retried() {
    let sink = smtp_sink("fraisier", "smtp-pa55word");
    let ws = Workspace::new();
    ws.release("1.0.0", &[]);
    let port = free_port();
    let yaml = config_yaml(&ws, port, 1, "rolling", "")
        + &format!(
            "smtp: {{ host: 127.0.0.1, port: {}, tls: none, username: fraisier, password: \"${{FRAISIER_TEST_SMTP_PASSWORD}}\", from: \"Fraisier <fraisier@example.com>\" }}\n\
             notifications:\n  - {{ type: email, to: [\"Ops <ops@example.com>\", dev@example.com], on: [succeeded] }}\n  - {{ type: email, to: [nobody@bounce.example], on: [succeeded] }}\n",
            sink.port
        );
    std::env::set_var("FRAISIER_TEST_SMTP_PASSWORD", "smtp-pa55word");
    let s = Server::start(&ws, &yaml).await;

    let id = s
        .deploy("app", "production", json!({"version": "1.0.0"}))
        .await;
    assert_eq!(
        s.wait_run(&id, Duration::from_secs(60)).await["status"],
        "success"
    );
    until("the mail reaches the SMTP server", || {
        !messages(&sink).is_empty()
    })
    .await;
    let mail = messages(&sink)[0].clone();
    assert_eq!(mail["login"], "fraisier", "{mail:#}");
    assert_eq!(mail["from"], "fraisier@example.com", "{mail:#}");
    assert_eq!(
        mail["to"],
        json!(["ops@example.com", "dev@example.com"]),
        "{mail:#}"
    );
    assert_eq!(
        mail["header_from"], "Fraisier <fraisier@example.com>",
        "{mail:#}"
    );
    assert_eq!(mail["content_type"], "text/plain", "{mail:#}");
    let subject = mail["subject"].as_str().unwrap();
    assert!(
        subject.starts_with("[fraisier] ") && subject.contains("app 1.0.0 is live in production"),
        "{mail:#}"
    );
    let body = mail["body"].as_str().unwrap();
    assert!(
        body.contains(&format!("deployment_id: {id}")) && body.contains("version: 1.0.0"),
        "{mail:#}"
    );

    // The record: the delivered one shows its SMTP reply and recipients; the bounced one
    // failed on its first attempt, with the server's reason, and is not retried.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (sent, bounced) = loop {
        let (_, v) = s.get("/notifications/deliveries?limit=100").await;
        let of = |to: &str| {
            v["deliveries"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["type"] == "email" && d["target"].as_str().unwrap().contains(to))
                .cloned()
                .unwrap_or(Value::Null)
        };
        let (sent, bounced) = (of("ops@example.com"), of("bounce.example"));
        if sent["status"] == "sent" && bounced["status"] == "failed" {
            break (sent, bounced);
        }
        assert!(std::time::Instant::now() < deadline, "{v:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(sent["attempts"][0]["status_code"], 250, "{sent:#}");
    assert_eq!(
        bounced["attempts"].as_array().unwrap().len(),
        1,
        "{bounced:#}"
    );
    assert_eq!(bounced["attempts"][0]["status_code"], 550, "{bounced:#}");
    let error = bounced["attempts"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("550") && error.contains("no such mailbox"),
        "{bounced:#}"
    );
    let (_, v) = s.get("/notifications/deliveries?limit=100").await;
    assert!(!v.to_string().contains("smtp-pa55word"), "{v}");
    let logins: Vec<Value> = sink
        .lines()
        .into_iter()
        .filter(|l| l.get("auth").is_some())
        .collect();
    assert!(
        !logins.is_empty() && logins.iter().all(|l| l["ok"] == true),
        "{logins:?}"
    );
}

#[test]
fn email_is_refused_at_load_without_a_server_or_with_bad_addresses() {
    let ws = Workspace::new();
    ws.release("1.0.0", &[]);
    let yaml = config_yaml(&ws, free_port(), 1, "rolling", "")
        + "notifications:\n  - { type: email, to: [\"not an address\"], url: \"https://x.example\" }\n";
    let (ok, text) = validate(&ws, &yaml);
    assert!(!ok, "{text}");
    for key in [
        "notifications[0].type",
        "notifications[0].to[0]",
        "notifications[0].url",
    ] {
        assert!(text.contains(key), "{key} missing from: {text}");
    }
    let yaml = config_yaml(&ws, free_port(), 1, "rolling", "")
        + "smtp: { host: mail.example.com, tls: none, username: u, password: p, from: fraisier@example.com }\n";
    let (ok, text) = validate(&ws, &yaml);
    assert!(!ok && text.contains("smtp.tls"), "{text}");
}
