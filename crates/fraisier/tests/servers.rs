//! Several servers on one PostgreSQL: a run is held by the server executing it; killed
//! (`kill -9`) mid-run, another server takes it over once the hold lapses and finishes it; a
//! cancel recorded on one server stops a run executing on another. Skipped (passing) when
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
