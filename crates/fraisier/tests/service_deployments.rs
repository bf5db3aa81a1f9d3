//! Seed 001 — a fraise in an environment as one object: synchronous deploys with steps,
//! validation, state, health, rollback, live WebSocket progress; plus hooks, jobs and
//! dependencies, and the CLI on top of it all.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

const EXTRA: &str = r#"
  migrate:
    type: etl
    command: "echo migrating to $FRAISIER_VERSION; ls demo.env"
    artifact_path: "RELEASES/{version}"
    environments:
      production: {}
  nightly:
    type: scheduled
    schedule: "* * * * * *"
    command: "echo tick $FRAISIER_EXECUTION_ID on $FRAISIER_VERSION; if grep -q HEALTHY=false demo.env; then exit 4; fi"
    artifact_path: "RELEASES/{version}"
    environments:
      production: {}
  frontend:
    type: api
    command: "exec DEMO"
    artifact_path: "RELEASES/{version}"
    dependencies: [app]
    environments:
      staging: { port: FRONT_PORT }
"#;

async fn server() -> (Workspace, Server, u16) {
    let ws = Workspace::new();
    ws.release("1.0.0", &[]);
    ws.release("2.0.0", &[]);
    ws.release("3.0.0", &["DEMO_HEALTHY=false"]);
    let port = free_port();
    let extra = EXTRA
        .replace(
            "RELEASES",
            &ws.path().join("releases").display().to_string(),
        )
        .replace("DEMO", &demo_bin().display().to_string())
        .replace("FRONT_PORT", &free_port().to_string());
    let yaml = config_yaml(&ws, port, 2, "rolling", &extra)
        .replace("    drain_timeout: 5s\n", "    drain_timeout: 5s\n    pre_deploy_hooks: [\"echo pre-deploy hook for $FRAISIER_VERSION in $FRAISIER_DEPLOYMENT_ID\"]\n");
    let s = Server::start(&ws, &yaml).await;
    (ws, s, port)
}

#[tokio::test]
async fn seed_001_deploy_validate_state_health_rollback() {
    let (_ws, s, port) = server().await;

    // Synchronous deploy: 201 with the steps.
    let (status, r) = s.post("/deployments", json!({"name": "app", "version": "1.0.0", "environment": "production", "strategy": "rolling", "rollback_on_failure": true})).await;
    assert_eq!(status, 201, "{r:#}");
    assert_eq!(r["success"], true);
    assert_eq!(r["version"], "1.0.0");
    assert!(r["duration"].as_str().unwrap().ends_with('s'));
    let steps = r["steps"].as_array().unwrap();
    assert!(steps.len() >= 4, "{r:#}");
    assert!(
        steps
            .iter()
            .all(|st| st["status"] == "completed" || st["status"] == "skipped"),
        "{r:#}"
    );
    assert!(steps.iter().any(|st| st["name"] == "pre-deploy hooks"));
    let (_, logs) = s
        .get(&format!(
            "/deployments/{}/logs?component=hook",
            r["id"].as_str().unwrap()
        ))
        .await;
    let hook_lines: Vec<&str> = logs["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert!(
        hook_lines
            .iter()
            .any(|l| l.contains("pre-deploy hook for 1.0.0 in dep_")),
        "{hook_lines:?}"
    );
    assert_eq!(router_version(port).await.as_deref(), Some("1.0.0"));

    // Validation.
    let (status, v) = s.post("/deployments/validate", json!({"name": "app", "version": "2.0.0", "environment": "production", "strategy": "canary"})).await;
    assert_eq!((status, v["valid"].clone()), (200, json!(true)), "{v}");
    for (body, field) in [
        (json!({"name": "nope", "environment": "production"}), "name"),
        (
            json!({"name": "app", "environment": "production", "strategy": "yolo"}),
            "strategy",
        ),
        (
            json!({"name": "app", "environment": "production", "version": "9.9.9"}),
            "version",
        ),
        (
            json!({"name": "app", "environment": "production", "pre_deploy_hooks": ["rm -rf /"]}),
            "pre_deploy_hooks",
        ),
        // No request points the server at another host (SSRF): only the configured probe.
        (
            json!({"name": "app", "environment": "production", "health_check_url": "http://169.254.169.254/health"}),
            "health_check_url",
        ),
    ] {
        let (status, v) = s.post("/deployments/validate", body.clone()).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["valid"], false);
        assert_eq!(v["issues"][0]["field"], field, "{body}: {v}");
    }
    // Every problem at once, each with its field.
    let (status, v) = s
        .post(
            "/deployments/validate",
            json!({"name": "app", "environment": "production", "version": "", "strategy": "yolo",
                   "dependencies": ["nope"], "timeout": 0}),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    let mut fields: Vec<&str> = v["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["field"].as_str().unwrap())
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        ["dependencies[0]", "strategy", "timeout", "version"],
        "{v}"
    );
    let (status, v) = s.post("/deployments/validate", json!({"name": "app", "version": "2.0.0", "environment": "production", "health_check_url": "http://localhost:8080/health"})).await;
    assert_eq!(
        (status, v["valid"].clone()),
        (200, json!(true)),
        "the instance's own probe: {v}"
    );
    // Hooks come from the configuration only.
    let (status, v) = s
        .post(
            "/deployments",
            json!({"name": "app", "environment": "production", "pre_deploy_hooks": ["curl evil"]}),
        )
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("INVALID_DEPLOYMENT_SPEC")),
        "{v}"
    );

    // State of the service deployment, by the names seed 001 and DESIGN §5 allow.
    let (status, d) = s.get("/deployments/app@production").await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["state"], "healthy");
    assert_eq!(d["health"], "healthy");
    assert_eq!(d["version"], "1.0.0");
    assert_eq!(
        d["replicas"],
        json!({"desired": 2, "available": 2, "ready": 2, "updated": 2})
    );
    assert!(!d["events"].as_array().unwrap().is_empty());
    let (status, d2) = s.get("/deployments/app?environment=production").await;
    assert_eq!((status, d2["name"].clone()), (200, json!("app")));
    let (status, e) = s.get("/deployments/app").await;
    assert_eq!(
        (status, e["error"]["details"]["field"].clone()),
        (409, json!("environment")),
        "an ambiguous name conflicts with the several deployments it names: {e}"
    );
    let (status, e) = s.get("/deployments/ghost").await;
    assert_eq!(
        (status, e["error"]["code"].clone()),
        (404, json!("DEPLOYMENT_NOT_FOUND"))
    );
    let (_, list) = s.get("/deployments?state=healthy").await;
    assert!(
        list["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "app" && d["environment"] == "production"),
        "{list}"
    );
    assert_eq!(list["limit"], 50);

    // Health, per instance.
    let (status, h) = s.get("/deployments/app@production/health").await;
    assert_eq!(status, 200);
    assert_eq!(h["overall"], "healthy");
    assert_eq!(
        h["components"]["service"]["checks"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(h["components"]["router"]["status"], "healthy");

    // 409 while a run is active.
    let (status, started) = s
        .post(
            "/deployments",
            json!({"name": "app", "version": "2.0.0", "environment": "production", "wait": false}),
        )
        .await;
    assert_eq!(status, 202, "{started}");
    let (status, v) = s
        .post(
            "/deployments",
            json!({"name": "app", "version": "1.0.0", "environment": "production"}),
        )
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("DEPLOYMENT_IN_PROGRESS"))
    );
    s.wait_run(started["id"].as_str().unwrap(), Duration::from_secs(60))
        .await;

    // Rollback (seed 001): synchronous, 200.
    let (status, rb) = s
        .post(
            "/deployments/app@production/rollback",
            json!({"version": "1.0.0"}),
        )
        .await;
    assert_eq!(status, 200, "{rb}");
    assert_eq!(rb["message"], "Rollback completed successfully");
    assert_eq!(rb["version"], "1.0.0");
    assert_eq!(router_version(port).await.as_deref(), Some("1.0.0"));
    let (status, rb) = s.post("/deployments/app@staging/rollback", json!({})).await;
    assert_eq!(
        (status, rb["error"]["code"].as_str()),
        (400, Some("BACKUP_NOT_FOUND")),
        "{rb}"
    );

    // A failed synchronous deploy: 500 with the code and the steps.
    let (status, f) = s.post("/deployments", json!({"name": "app", "version": "3.0.0", "environment": "production", "strategy_config": {"health_check_timeout": "1s"}})).await;
    assert_eq!(status, 500, "{f}");
    assert_eq!(f["error"]["code"], "HEALTH_CHECK_FAILED");
    assert!(f["error"]["details"]["result"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .any(|st| st["status"] == "failed"));
    assert_eq!(router_version(port).await.as_deref(), Some("1.0.0"));
}

#[tokio::test]
async fn websocket_progress_follows_a_run() {
    let (_ws, s, _port) = server().await;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!(
        "{}/deployments/app@production/progress",
        s.url.replacen("http", "ws", 1)
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", s.token).parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let hello: Value =
        serde_json::from_str(ws.next().await.unwrap().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(hello["step"], "idle");
    let id = s
        .deploy("app", "production", json!({"version": "1.0.0"}))
        .await;
    let mut messages = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, ws.next()).await {
        let Ok(text) = m.to_text() else { break };
        let v: Value = serde_json::from_str(text).unwrap();
        let done = v["step"] == "finished";
        messages.push(v);
        if done {
            break;
        }
    }
    assert!(messages.len() >= 4, "{messages:#?}");
    for m in &messages {
        for key in ["step", "status", "message", "progress_pct", "timestamp"] {
            assert!(!m[key].is_null(), "{key} missing in {m}");
        }
    }
    assert!(messages.iter().any(|m| m["status"] == "running"));
    let last = messages.last().unwrap();
    assert_eq!(
        (last["status"].as_str(), last["progress_pct"].as_u64()),
        (Some("success"), Some(100)),
        "{last}"
    );
    let pcts: Vec<u64> = messages
        .iter()
        .map(|m| m["progress_pct"].as_u64().unwrap())
        .collect();
    assert!(
        pcts.windows(2).all(|w| w[0] <= w[1]),
        "progress only grows: {pcts:?}"
    );
    assert_eq!(
        s.wait_run(&id, Duration::from_secs(10)).await["status"],
        "success"
    );

    // Without an upgrade it is a precise refusal, not a hang.
    let (status, v) = s.get("/deployments/app@production/progress").await;
    assert_eq!(status, 400, "{v}");
}

/// Polls the fraise's status until `done` holds for its schedule in production.
async fn wait_schedule(s: &Server, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, v) = s.get("/fraises/nightly/status").await;
        assert_eq!(status, 200, "{v}");
        let env = v["environments"]["production"].clone();
        if done(&env) {
            return env;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {env:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn executions_of<'a>(env: &'a Value, version: &str) -> Vec<&'a Value> {
    env["schedule"]["executions"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["version"] == version).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn scheduled_jobs_run_on_their_schedule_and_record_every_execution() {
    let (ws, s, _port) = server().await;
    let id = s
        .deploy("nightly", "production", json!({"version": "1.0.0"}))
        .await;
    let run = s.wait_run(&id, Duration::from_secs(60)).await;
    assert_eq!(run["status"], "success", "{run:#}");
    let (_, events) = s.get(&format!("/deployments/{id}/events")).await;
    assert!(
        events.to_string().contains("schedule.updated"),
        "{events:#}"
    );

    // Every second, on the deployed release; each execution recorded with its output.
    let env = wait_schedule(&s, "two executions of 1.0.0", |env| {
        executions_of(env, "1.0.0")
            .iter()
            .filter(|e| e["status"] == "succeeded")
            .count()
            >= 2
    })
    .await;
    assert_eq!(env["schedule"]["cron"], "* * * * * *");
    assert_eq!(env["schedule"]["timezone"], "UTC");
    assert!(env["schedule"]["next_run_at"].is_string(), "{env:#}");
    let done = executions_of(&env, "1.0.0")
        .into_iter()
        .find(|e| e["status"] == "succeeded")
        .unwrap()
        .clone();
    assert_eq!(done["exit_code"], 0);
    assert_eq!(
        done["output"][0],
        format!("tick {} on 1.0.0", done["id"]),
        "{done:#}"
    );
    assert!(done["ended_at"].is_string());
    assert_eq!(env["status"], "healthy");
    let out = Command::new(fraisier_bin())
        .args(["status", "nightly", "--config"])
        .arg(ws.config_path())
        .arg("--server")
        .arg(&s.url)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(
        table.contains("next run")
            && table.contains("* * * * * *")
            && table.contains("succeeded (0)"),
        "{table}"
    );

    // A release whose job fails: recorded with its exit code, and the fraise is unhealthy.
    let id = s
        .deploy("nightly", "production", json!({"version": "3.0.0"}))
        .await;
    assert_eq!(
        s.wait_run(&id, Duration::from_secs(60)).await["status"],
        "success"
    );
    let env = wait_schedule(&s, "a failed execution of 3.0.0", |env| {
        executions_of(env, "3.0.0")
            .iter()
            .any(|e| e["status"] == "failed")
    })
    .await;
    let failed = executions_of(&env, "3.0.0")
        .into_iter()
        .find(|e| e["status"] == "failed")
        .unwrap()
        .clone();
    assert_eq!(failed["exit_code"], 4, "{failed:#}");
    assert_eq!(env["status"], "unhealthy", "{env:#}");

    // Rolling back schedules the previous release again.
    let (status, rb) = s
        .post("/deployments/nightly/production/rollback", json!({}))
        .await;
    assert_eq!(status, 202, "{rb}");
    assert_eq!(rb["to_version"], "1.0.0", "{rb}");
    let rb_id = rb["id"].as_str().unwrap().to_string();
    assert_eq!(
        s.wait_run(&rb_id, Duration::from_secs(60)).await["status"],
        "success"
    );
    let env = wait_schedule(&s, "1.0.0 scheduled again", |env| {
        env["schedule"]["version"] == "1.0.0"
            && env["schedule"]["executions"][0]["version"] == "1.0.0"
            && env["schedule"]["executions"][0]["status"] == "succeeded"
    })
    .await;
    assert_eq!(env["status"], "healthy", "{env:#}");
}

#[tokio::test]
async fn jobs_and_dependencies() {
    let (_ws, s, _port) = server().await;
    // An etl fraise runs its command once (here the latest release, 3.0.0); its output is in the run's logs.
    let id = s.deploy("migrate", "production", json!({})).await;
    let run = s.wait_run(&id, Duration::from_secs(60)).await;
    assert_eq!(run["status"], "success", "{run:#}");
    let (_, logs) = s
        .get(&format!("/deployments/{id}/logs?component=provider"))
        .await;
    let lines: Vec<&str> = logs["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert!(lines.contains(&"migrating to 3.0.0"), "{lines:?}");
    assert!(
        lines.contains(&"demo.env"),
        "the job runs in its release: {lines:?}"
    );

    // frontend depends on app, which is not deployed to staging yet.
    let (status, v) = s
        .post("/deployments/frontend/staging", json!({"version": "1.0.0"}))
        .await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["error"]["code"], "DEPENDENCY_FAILED");
    assert_eq!(v["error"]["details"]["dependency"], "app");
    let id = s
        .deploy("app", "staging", json!({"version": "1.0.0"}))
        .await;
    assert_eq!(
        s.wait_run(&id, Duration::from_secs(60)).await["status"],
        "success"
    );
    let id = s
        .deploy("frontend", "staging", json!({"version": "1.0.0"}))
        .await;
    assert_eq!(
        s.wait_run(&id, Duration::from_secs(60)).await["status"],
        "success"
    );
}

#[tokio::test]
async fn cli_deploys_lists_and_reports_failures() {
    let (ws, s, port) = server().await;
    let cli = |args: &[&str]| {
        Command::new(fraisier_bin())
            .args(args)
            .arg("--config")
            .arg(ws.config_path())
            .arg("--server")
            .arg(&s.url)
            .output()
            .unwrap()
    };
    let out = cli(&[
        "deploy",
        "app",
        "production",
        "--version",
        "1.0.0",
        "--wait",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("SUCCESS"), "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("100%"),
        "a progress bar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(router_version(port).await.as_deref(), Some("1.0.0"));

    let out = cli(&["--json", "list"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["deployments"][0]["status"], "success");
    let out = cli(&["status", "app"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("production") && stdout.contains("1.0.0") && stdout.contains("2/2"),
        "{stdout}"
    );
    let out = cli(&["logs", "dep_00001"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Deployment succeeded"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = cli(&["logs", "dep_00001", "-f"]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Deployment started")
    );
    let out = cli(&["history", "app"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("dep_00001"));

    // A failing deploy exits non-zero and says why.
    let out = cli(&[
        "deploy",
        "app",
        "production",
        "--version",
        "3.0.0",
        "--wait",
        "--strategy-config",
        "{\"health_check_timeout\": \"1s\"}",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("HEALTH_CHECK_FAILED"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // An unknown fraise: non-zero, with the API's code.
    let out = cli(&["deploy", "ghost", "production"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("FRAISE_NOT_FOUND"));
    // Rollback through the CLI.
    let out = cli(&[
        "deploy",
        "app",
        "production",
        "--version",
        "2.0.0",
        "--wait",
    ]);
    assert!(out.status.success());
    let out = cli(&["rollback", "app", "production", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(router_version(port).await.as_deref(), Some("1.0.0"));
}
