//! Several servers on one PostgreSQL: a run is held by the server executing it; killed
//! (`kill -9`) mid-run, another server takes it over once the hold lapses and finishes it; a
//! cancel recorded on one server stops a run executing on another, whose followers (events,
//! progress) see it to its end from the store; environments written on one reach the other;
//! one stopped cleanly hands its jobs to the other at once. Skipped (passing) when
//! `FRAISIER_TEST_DATABASE_URL` is not set; CI sets it.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A database of its own on the test server, dropped at the end.
struct Database {
    admin: String,
    name: String,
    url: String,
}

impl Database {
    fn create() -> Option<Database> {
        let admin = std::env::var("FRAISIER_TEST_DATABASE_URL").ok()?;
        let name = format!(
            "fraisier_servers_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        let (base, _) = admin.rsplit_once('/').expect("a database url with a path");
        psql(&admin, &format!("CREATE DATABASE {name}"));
        Some(Database {
            url: format!("{base}/{name}"),
            admin,
            name,
        })
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                &self.admin,
                "-q",
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

/// Runs `sql`; what it printed, unaligned and without headers (`psql -tA`): one value for a
/// one-value query.
fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Polls `sql` until it answers `want` (up to `limit`).
async fn wait_value(url: &str, sql: &str, want: &str, limit: Duration) {
    let started = Instant::now();
    loop {
        let got = psql(url, sql);
        if got == want {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{sql}: {got:?}, not {want:?} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A server stopped cleanly (SIGTERM) gives its jobs up between two pieces of work, so the
/// other server on the database takes them on at its next ask — within seconds, where a
/// crashed holder's jobs wait for its lease to lapse (30 s here).
#[tokio::test]
async fn a_server_stopped_cleanly_hands_its_jobs_over_at_once() {
    let Some(db) = Database::create() else {
        println!("skipped: FRAISIER_TEST_DATABASE_URL is not set");
        return;
    };
    let ws = Workspace::new();
    let yaml = config_yaml(&ws, free_port(), 1, "rolling", "").replace(
        "  rate_limits: off\n",
        &format!(
            "  rate_limits: off\n  database_url: \"{}\"\n  run_lease: 30s\n",
            db.url
        ),
    );
    assert!(yaml.contains(&db.name), "{yaml}");
    let mut a = Server::start(&ws, &yaml).await;
    // Notifications and queued pushes (no NATS here), both a's.
    let jobs = "SELECT count(*) FROM job_leases";
    wait_value(&db.url, jobs, "2", Duration::from_secs(20)).await;
    let owners = "SELECT count(DISTINCT owner) FROM job_leases";
    assert_eq!(psql(&db.url, owners), "1");
    let first = psql(&db.url, "SELECT min(owner) FROM job_leases");
    let b = Server::start(&ws, &yaml).await;
    // b asks every 10 s (a third of the lease) and finds them a's.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held_by_first = format!("SELECT count(*) FROM job_leases WHERE owner = '{first}'");
    assert_eq!(psql(&db.url, &held_by_first), "2");

    let took = a.terminate();
    assert!(took < Duration::from_secs(10), "SIGTERM took {took:?}");
    // Given up on the way out: nothing of a's is left to lapse.
    assert_eq!(psql(&db.url, &held_by_first), "0");
    // b takes them on at its next ask (within a third of the lease), not 30 s later.
    wait_value(&db.url, jobs, "2", Duration::from_secs(15)).await;
    assert_eq!(psql(&db.url, &held_by_first), "0");
    let (status, _) = b.get("/health").await;
    assert_eq!(status, 200);
}

async fn wait_in_progress(s: &Server, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = s.get(&format!("/deployments/{id}")).await;
        if v["status"] == "in_progress" && v["steps"].as_array().is_some_and(|a| !a.is_empty()) {
            return v;
        }
        assert!(Instant::now() < deadline, "the run did not start: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn log_text(s: &Server, id: &str) -> String {
    let (_, logs) = s.get(&format!("/deployments/{id}/logs?lines=1000")).await;
    logs.to_string()
}

#[tokio::test]
async fn another_server_takes_over_the_run_of_one_killed_mid_run() {
    let Some(db) = Database::create() else {
        println!("skipped: FRAISIER_TEST_DATABASE_URL is not set");
        return;
    };
    let ws = Workspace::new();
    for v in ["1.0.0", "2.0.0", "3.0.0"] {
        ws.release(v, &[]);
    }
    let port = free_port();
    let yaml = config_yaml(&ws, port, 2, "canary", "")
        .replace(
            "  rate_limits: off\n",
            &format!(
                "  rate_limits: off\n  database_url: \"{}\"\n  run_lease: 2s\n",
                db.url
            ),
        )
        .replace(
            &format!("production: {{ port: {port}, instances: 2, strategy: canary }}"),
            &format!(
                "production: {{ port: {port}, instances: 2, strategy: canary, strategy_config: {{ steps: [{{ weight: 50, pause: 4s }}], health_check_timeout: 20s }} }}"
            ),
        );
    assert!(
        yaml.contains("pause: 4s") && yaml.contains(&db.name),
        "{yaml}"
    );
    // Two servers, one database, one data dir (keys, blobs and the local agent are shared).
    let mut a = Server::start(&ws, &yaml).await;
    let b = Server::start(&ws, &yaml).await;
    assert_ne!(a.url, b.url);

    let first = a
        .deploy(
            "app",
            "production",
            json!({ "version": "1.0.0", "strategy": "recreate" }),
        )
        .await;
    let v = b.wait_run(&first, Duration::from_secs(60)).await;
    assert_eq!(
        v["status"], "success",
        "both servers read the same runs: {v}"
    );

    // A holds the canary, paused at 50%; A dies.
    let run = a
        .deploy("app", "production", json!({ "version": "2.0.0" }))
        .await;
    wait_in_progress(&a, &run).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let load = Load::start(port, 4);
    a.kill9();
    let killed = Instant::now();
    let killed_at = chrono::Utc::now();

    // B takes it over once the hold lapses, and finishes it.
    let v = b.wait_run(&run, Duration::from_secs(90)).await;
    let took = killed.elapsed();
    let report = load.stop().await;
    assert_eq!(v["status"], "success", "{v}");
    assert_eq!(v["version"], "2.0.0");
    let (_, logs) = b.get(&format!("/deployments/{run}/logs?lines=1000")).await;
    let taken_at = logs["logs"]
        .as_array()
        .and_then(|l| {
            l.iter().find(|e| {
                e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("taken over by server"))
            })
        })
        .and_then(|e| e["timestamp"].as_str())
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .unwrap_or_else(|| panic!("no takeover logged: {logs}"));
    assert_eq!(
        report.failed, 0,
        "the local agent kept serving through the takeover: {:?}",
        report.errors
    );
    assert_eq!(router_version(port).await.as_deref(), Some("2.0.0"));
    let pids = instance_pids(&b.agent_dir());
    assert_eq!(pids.len(), 2, "no instance orphaned or doubled: {pids:?}");
    let lapse = (taken_at.with_timezone(&chrono::Utc) - killed_at).num_milliseconds();
    // The hold lapses 2 s after its last renewal at most, and is looked for every second.
    assert!(lapse <= 3_500, "taken over {lapse} ms after the kill");
    println!(
        "takeover: taken over {lapse} ms after its server was killed (run_lease 2s); finished {:.1} s after ({} requests, 0 failed)",
        took.as_secs_f64(),
        report.ok
    );

    // A cancel recorded on B stops a run executing on A (restarted).
    a.restart().await;
    let run = a
        .deploy("app", "production", json!({ "version": "3.0.0" }))
        .await;
    wait_in_progress(&a, &run).await;
    let (status, v) = b.delete(&format!("/deployments/{run}")).await;
    assert!(status < 300, "{status}: {v}");
    let v = b.wait_run(&run, Duration::from_secs(60)).await;
    assert_eq!(v["status"], "cancelled", "{v}");
    assert_eq!(v["cancelled_by"], "admin", "{v}");
    assert!(
        !log_text(&a, &run).await.contains("taken over"),
        "A executed it to the end"
    );
    assert_eq!(router_version(port).await.as_deref(), Some("2.0.0"));

    // Followers on B of a run A executes: B's bus carries nothing of it, the store does.
    let run = a
        .deploy("app", "production", json!({ "version": "3.0.0" }))
        .await;
    wait_in_progress(&a, &run).await;
    let events = tokio::spawn(sse_until_end(
        b.http.clone(),
        format!("{}/deployments/{run}/events?follow=true", b.url),
        b.token.clone(),
    ));
    let progress = tokio::spawn(progress_until_finished(
        format!(
            "{}/deployments/{run}/progress",
            b.url.replacen("http", "ws", 1)
        ),
        b.token.clone(),
    ));
    let v = a.wait_run(&run, Duration::from_secs(60)).await;
    assert_eq!(v["status"], "success", "{v}");
    let text = tokio::time::timeout(Duration::from_secs(10), events)
        .await
        .expect("B's event stream ends with the run")
        .unwrap();
    let ids: Vec<i64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id:"))
        .map(|i| i.trim().parse().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "each once, in order: {ids:?}"
    );
    let (_, all) = a.get(&format!("/deployments/{run}/events")).await;
    assert_eq!(ids.len() as u64, all["total"].as_u64().unwrap(), "{text}");
    assert!(
        text.contains("event: end") || text.contains("event:end"),
        "{text}"
    );
    let messages = tokio::time::timeout(Duration::from_secs(10), progress)
        .await
        .expect("B's progress socket closes with the run")
        .unwrap();
    assert_told_to_success(&messages);

    // A socket on B for the service, opened while nothing runs there, follows the next run
    // A starts (found in the store) and stays open for the one after.
    let mut idle = open_progress(
        format!(
            "{}/deployments/app@production/progress",
            b.url.replacen("http", "ws", 1)
        ),
        &b.token,
    )
    .await;
    let hello = read_progress(&mut idle, |_| true).await;
    assert_eq!(hello[0]["step"], "idle", "{hello:#?}");
    let run = a
        .deploy("app", "production", json!({ "version": "2.0.0" }))
        .await;
    let followed = tokio::spawn(async move {
        let messages = read_progress(&mut idle, |m| m["step"] == "finished").await;
        (idle, messages)
    });
    let v = a.wait_run(&run, Duration::from_secs(60)).await;
    assert_eq!(v["status"], "success", "{v}");
    let (mut idle, messages) = tokio::time::timeout(Duration::from_secs(10), followed)
        .await
        .expect("B's service socket tells the run's end")
        .unwrap();
    assert_eq!(
        messages[0]["message"],
        format!("following {run}"),
        "{messages:#?}"
    );
    assert_told_to_success(&messages);
    let after = tokio::time::timeout(
        Duration::from_millis(1500),
        futures_util::StreamExt::next(&mut idle),
    )
    .await;
    assert!(
        after.is_err(),
        "still open, waiting for the next: {after:?}"
    );

    // Runs short enough to start and end between two of B's looks at the store (once a
    // second) are told too, each once and in order: B asks for the run after the last it told,
    // not for the one active when it looks.
    let mut quick = Vec::new();
    for version in ["3.0.0", "2.0.0"] {
        let run = a
            .deploy(
                "app",
                "production",
                json!({ "version": version, "strategy": "recreate" }),
            )
            .await;
        let v = a.wait_run(&run, Duration::from_secs(60)).await;
        assert_eq!(v["status"], "success", "{v}");
        quick.push(run);
    }
    let last = format!("{} success", quick[1]);
    let messages = tokio::time::timeout(
        Duration::from_secs(10),
        read_progress(&mut idle, |m| m["message"] == last.as_str()),
    )
    .await
    .expect("B's service socket tells both quick runs");
    let told: Vec<&str> = messages
        .iter()
        .filter(|m| m["step"] == "connected" || m["step"] == "finished")
        .filter_map(|m| m["message"].as_str())
        .collect();
    assert_eq!(
        told,
        [
            format!("following {}", quick[0]),
            format!("{} success", quick[0]),
            format!("following {}", quick[1]),
            last.clone(),
        ],
        "{messages:#?}"
    );
    drop(idle);
    drop(b);
    drop(a);
}

/// Progress messages of a run another server executed, told from its recorded steps: more
/// than a hello and an end, ending with its success.
fn assert_told_to_success(messages: &[Value]) {
    let last = messages.last().unwrap();
    assert_eq!(
        (last["step"].as_str(), last["status"].as_str()),
        (Some("finished"), Some("success")),
        "{messages:#?}"
    );
    assert!(messages.len() > 2, "the steps A recorded: {messages:#?}");
}

type ProgressSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open_progress(url: String, token: &str) -> ProgressSocket {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

/// A progress socket's messages, read until one satisfies `last` or the socket closes.
async fn read_progress(ws: &mut ProgressSocket, last: impl Fn(&Value) -> bool) -> Vec<Value> {
    use futures_util::StreamExt;
    let mut messages = Vec::new();
    while let Some(Ok(m)) = ws.next().await {
        if m.is_close() {
            break;
        }
        let Ok(text) = m.to_text() else { break };
        let v = serde_json::from_str::<Value>(text).unwrap();
        let done = last(&v);
        messages.push(v);
        if done {
            break;
        }
    }
    messages
}

/// A webhook receiver: every body POSTed to it, answered 200 after a while.
async fn receiver() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let got: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let seen = got.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = conn.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let Some(end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let length: usize = text[..end]
                        .lines()
                        .filter_map(|l| l.split_once(':'))
                        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, v)| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + length {
                        // Slow to answer, as a busy chat service is: a second sender would
                        // find the notification still due meanwhile.
                        tokio::time::sleep(Duration::from_millis(800)).await;
                        seen.lock().unwrap().push(
                            String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).to_string(),
                        );
                        let _ = conn
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .await;
                        return;
                    }
                }
            });
        }
    });
    (port, got)
}

/// An SSE stream's text, read until its `end` event.
async fn sse_until_end(http: reqwest::Client, url: String, token: String) -> String {
    let mut r = http.get(url).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut text = String::new();
    while let Some(chunk) = r.chunk().await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&chunk));
        if text.contains("event: end") || text.contains("event:end") {
            break;
        }
    }
    text
}

/// A progress WebSocket's messages, read until it closes.
async fn progress_until_finished(url: String, token: String) -> Vec<Value> {
    let mut ws = open_progress(url, &token).await;
    read_progress(&mut ws, |_| false).await
}

/// Notifications are sent once by whichever server holds the job. Environments made,
/// changed and deleted on one server reach the other within its reread (every 3 s), and the checks that matter are the store's: a create of a name the other
/// made is 409 even before it has reread, and a change of one the other deleted is 404.
#[tokio::test]
async fn notifications_go_out_once_and_environments_reach_every_server() {
    let Some(db) = Database::create() else {
        println!("skipped: FRAISIER_TEST_DATABASE_URL is not set");
        return;
    };
    let ws = Workspace::new();
    ws.release("1.0.0", &[]);
    let (hook, posts) = receiver().await;
    let yaml = config_yaml(&ws, free_port(), 1, "rolling", "").replace(
        "  rate_limits: off\n",
        &format!("  rate_limits: off\n  database_url: \"{}\"\n", db.url),
    ) + &format!(
        "notifications:\n  - {{ type: webhook, url: \"http://127.0.0.1:{hook}/hook\" }}\n"
    );
    let a = Server::start(&ws, &yaml).await;
    let b = Server::start(&ws, &yaml).await;

    // Notifications go out once, whichever server holds the job.
    let run = b
        .deploy("app", "staging", json!({ "version": "1.0.0" }))
        .await;
    let v = b.wait_run(&run, Duration::from_secs(60)).await;
    assert_eq!(v["status"], "success", "{v}");
    let started = Instant::now();
    while posts.lock().unwrap().len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            posts.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Time for a second server's copies, if it sent any.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let bodies = posts.lock().unwrap().clone();
    let mut distinct = bodies.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        bodies.len(),
        "each notification once: {bodies:#?}"
    );

    let (status, v) = a
        .post(
            "/environments",
            json!({ "name": "qa", "requiredApprovals": 1 }),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = b.post("/environments", json!({ "name": "qa" })).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("ENVIRONMENT_EXISTS")),
        "{v}"
    );
    let seen = wait_get(&b, "/environments/qa", |v| v["required_approvals"] == 1).await;
    assert_eq!(seen["defined_in"], "api");
    // b writes nothing now: only a's word brings a's next one. a tells at commit (NOTIFY);
    // b, listening, rereads at once — its reread by the clock comes every 30 s only.
    let (on_a, on_b) = (&a, &b);
    let made_on_a_seen_on_b = |name: &'static str| async move {
        let (status, v) = on_a.post("/environments", json!({ "name": name })).await;
        assert_eq!(status, 201, "{v}");
        let made = Instant::now();
        wait_get(on_b, &format!("/environments/{name}"), |_| true).await;
        made.elapsed()
    };
    let took = made_on_a_seen_on_b("perf").await;
    assert!(
        took < Duration::from_secs(2),
        "seen on b {took:?} after it was made on a"
    );
    println!("environment made on a, seen on b after {took:?}");
    // The listening connections cut (a database restart, a proxy's idle timeout): each server
    // listens again, rereads what it may have missed, and hears the next change at once.
    let listening = "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = current_database() AND query ILIKE 'LISTEN%'";
    assert_eq!(psql(&db.url, listening), "2", "both servers listen");
    psql(
        &db.url,
        &listening.replace("count(*)", "pg_terminate_backend(pid)"),
    );
    let took = made_on_a_seen_on_b("soak").await;
    assert!(
        took < Duration::from_secs(5),
        "seen on b {took:?} after it was made on a, its listener cut"
    );
    wait_value(&db.url, listening, "2", Duration::from_secs(10)).await;
    let took = made_on_a_seen_on_b("load").await;
    assert!(
        took < Duration::from_secs(2),
        "told again once listening again: {took:?}"
    );
    // Two changes of different fields, one on each server: both hold.
    let (status, v) = a
        .put_json("/environments/qa", json!({ "displayName": "QA" }))
        .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = b
        .put_json("/environments/qa", json!({ "orderIndex": 2 }))
        .await;
    assert_eq!(status, 200, "{v}");
    let both = wait_get(&a, "/environments/qa", |v| v["order_index"] == 2).await;
    assert_eq!(both["display_name"], "QA", "{both}");
    assert_eq!(both["required_approvals"], 1, "{both}");

    let (status, v) = a.delete("/environments/qa").await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = b
        .put_json("/environments/qa", json!({ "orderIndex": 5 }))
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("ENVIRONMENT_NOT_FOUND")),
        "a change after another server's deletion does not bring it back: {v}"
    );
    let started = Instant::now();
    loop {
        let (status, _) = b.get("/environments/qa").await;
        if status == 404 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "b still shows qa"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(b);
    drop(a);
}
