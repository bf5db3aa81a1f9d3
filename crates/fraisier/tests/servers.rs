//! Several servers on one PostgreSQL: a run is held by the server executing it; killed
//! (`kill -9`) mid-run, another server takes it over once the hold lapses and finishes it; a
//! cancel recorded on one server stops a run executing on another; environments written on
//! one reach the other. Skipped (passing) when
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

fn psql(url: &str, sql: &str) {
    let out = Command::new("psql")
        .args([url, "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    drop(b);
    drop(a);
}

/// Environments made, changed and deleted on one server reach the other within its reread
/// (every 3 s), and the checks that matter are the store's: a create of a name the other
/// made is 409 even before it has reread, and a change of one the other deleted is 404.
#[tokio::test]
async fn environments_written_on_one_server_reach_the_other() {
    let Some(db) = Database::create() else {
        println!("skipped: FRAISIER_TEST_DATABASE_URL is not set");
        return;
    };
    let ws = Workspace::new();
    let yaml = config_yaml(&ws, free_port(), 1, "rolling", "").replace(
        "  rate_limits: off\n",
        &format!("  rate_limits: off\n  database_url: \"{}\"\n", db.url),
    );
    let a = Server::start(&ws, &yaml).await;
    let b = Server::start(&ws, &yaml).await;

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
    // b writes nothing now: only its reread brings a's next one.
    let (status, v) = a.post("/environments", json!({ "name": "perf" })).await;
    assert_eq!(status, 201, "{v}");
    let made = Instant::now();
    wait_get(&b, "/environments/perf", |_| true).await;
    assert!(
        made.elapsed() < Duration::from_secs(6),
        "{:?}",
        made.elapsed()
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
