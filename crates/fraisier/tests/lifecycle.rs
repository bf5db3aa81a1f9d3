//! Around the strategies: recreate, releases kept and pruned for rollback, skipped backups,
//! configuration errors that stop the server, and the agent outliving the server.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test]
async fn recreate_replaces_everything_at_once() {
    let ws = Workspace::new();
    ws.release("1.0.0", &[]);
    ws.release("2.0.0", &[]);
    let port = free_port();
    let s = Server::start(&ws, &config_yaml(&ws, port, 3, "recreate", "")).await;
    for v in ["1.0.0", "2.0.0"] {
        let id = s.deploy("app", "production", json!({"version": v})).await;
        let run = s.wait_run(&id, Duration::from_secs(60)).await;
        assert_eq!(run["status"], "success", "{run:#}");
        assert_eq!(run["strategy"], "recreate");
    }
    let (_, st) = s.get("/fraises/app/status?environment=production").await;
    assert_eq!(
        st["environments"]["production"]["instances_healthy"], 3,
        "{st}"
    );
    assert_eq!(router_version(port).await.as_deref(), Some("2.0.0"));
    let (_, v) = s
        .post(
            "/deployments/validate",
            json!({"name": "app", "environment": "production"}),
        )
        .await;
    assert!(
        v["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["field"] == "strategy"),
        "recreate warns of downtime: {v}"
    );
}

#[tokio::test]
async fn rollback_reaches_any_version_the_store_has() {
    let ws = Workspace::new();
    for v in ["1.0.0", "2.0.0", "3.0.0", "4.0.0"] {
        ws.release(v, &[]);
    }
    let port = free_port();
    // Keep no release beyond those the desired state pins (current and previous).
    let yaml = config_yaml(&ws, port, 1, "rolling", "")
        .replace("  data_dir:", "  keep_releases: 0\n  data_dir:");
    let s = Server::start(&ws, &yaml).await;
    for v in ["1.0.0", "2.0.0", "3.0.0"] {
        let id = s.deploy("app", "production", json!({"version": v})).await;
        assert_eq!(
            s.wait_run(&id, Duration::from_secs(60)).await["status"],
            "success"
        );
    }
    let releases = s.agent_dir().join("releases/app");
    assert!(
        !releases.join("1.0.0").exists(),
        "1.0.0 was pruned from the host"
    );
    // Pruned from the host, kept in the artifact store: the agent fetches it again.
    let (status, v) = s
        .post(
            "/deployments/app/production/rollback",
            json!({"to_version": "1.0.0"}),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let done = s
        .wait_run(v["id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    assert_eq!(done["status"], "success", "{done:#}");
    assert_eq!(router_version(port).await.as_deref(), Some("1.0.0"));
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(releases.join("1.0.0.json")).unwrap())
            .unwrap();
    let (_, stored) = s.get("/artifacts/app/versions/1.0.0").await;
    assert_eq!(
        record["artifact"], stored["digest"],
        "the release records its artifact"
    );
    // Never deployed, but at artifact_path: stored now, and reached.
    let (status, v) = s
        .post(
            "/deployments/app/production/rollback",
            json!({"to_version": "4.0.0"}),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let done = s
        .wait_run(v["id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    assert_eq!(done["status"], "success", "{done:#}");
    assert_eq!(router_version(port).await.as_deref(), Some("4.0.0"));
    // Nowhere at all: refused, saying where it looked.
    let (status, v) = s
        .post(
            "/deployments/app/production/rollback",
            json!({"to_version": "9.9.9"}),
        )
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("BACKUP_NOT_FOUND")),
        "{v}"
    );
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("artifact store") && message.contains("releases/9.9.9"),
        "{message}"
    );
    // Nothing was started by the refusal.
    let (_, list) = s.get("/deployments?type=rollback").await;
    assert_eq!(list["pagination"]["total"], 5);
}

#[tokio::test]
async fn a_bad_configuration_stops_the_server_with_the_key_at_fault() {
    let ws = Workspace::new();
    let yaml = config_yaml(&ws, free_port(), 2, "rolling", "")
        .replace("interval: 100ms", "interval: 5x")
        .replace("instances: 2", "instances: 0");
    std::fs::write(ws.config_path(), yaml).unwrap();
    let out = Command::new(fraisier_bin())
        .args(["serve", "--config"])
        .arg(ws.config_path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fraisier.yaml"), "names the file: {err}");
    assert!(
        err.contains("fraises.app.health_check.interval"),
        "names the key: {err}"
    );
    assert!(!ws.data_dir().exists(), "nothing started");

    let yaml = config_yaml(&ws, free_port(), 0, "rolling", "");
    std::fs::write(ws.config_path(), yaml).unwrap();
    let out = Command::new(fraisier_bin())
        .args(["serve", "--config"])
        .arg(ws.config_path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("fraises.app.environments.production.instances: must be between 1 and 64"),
        "{err}"
    );
}

#[tokio::test]
async fn a_taken_port_stops_the_server_before_it_starts_an_agent() {
    let ws = Workspace::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let yaml = config_yaml(&ws, free_port(), 1, "rolling", "")
        .replace("listen: \"127.0.0.1:0\"", &format!("listen: \"{addr}\""));
    std::fs::write(ws.config_path(), yaml).unwrap();
    let out = Command::new(fraisier_bin())
        .args(["serve", "--config"])
        .arg(ws.config_path())
        .env("FRAISIER_ADMIN_PASSWORD", "test-admin-password")
        .env("FRAISIER_LOG", "info")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    let cause = "Address already in use";
    assert_eq!(err.matches(cause).count(), 1, "the cause once: {err}");
    // Written to a pipe, the log has no terminal colours.
    assert!(!err.contains('\u{1b}'), "colour codes in a log: {err:?}");
    let agent = ws.data_dir().join("agent").join("agent.json");
    assert!(
        !agent.exists(),
        "an agent was started for a server that could not listen"
    );
    drop(taken);
}

#[tokio::test]
async fn the_agent_outlives_the_server_until_stopped() {
    let ws = Workspace::new();
    ws.release("1.0.0", &[]);
    let port = free_port();
    let mut s = Server::start(&ws, &config_yaml(&ws, port, 2, "rolling", "")).await;
    let id = s
        .deploy("app", "production", json!({"version": "1.0.0"}))
        .await;
    assert_eq!(
        s.wait_run(&id, Duration::from_secs(60)).await["status"],
        "success"
    );
    s.kill9();
    assert_eq!(
        router_version(port).await.as_deref(),
        Some("1.0.0"),
        "serving without the server"
    );
    // The documented command stops the agent and every instance.
    let out = Command::new(fraisier_bin())
        .args(["agent", "stop", "--config"])
        .arg(ws.config_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        router_version(port).await,
        None,
        "nothing serves after agent stop"
    );
    let leftovers = Command::new("pgrep")
        .args(["-f", &ws.path().display().to_string()])
        .output()
        .unwrap();
    assert!(
        leftovers.stdout.is_empty(),
        "processes left behind: {}",
        String::from_utf8_lossy(&leftovers.stdout)
    );
}

#[tokio::test]
async fn login_elsewhere_and_versions_that_cannot_be_resolved() {
    let ws = Workspace::new();
    ws.release("1.0.0", &[]);
    let extra = "  bare:\n    type: api\n    command: \"exec true\"\n    environments:\n      production: { port: PORT }\n".replace("PORT", &free_port().to_string());
    let s = Server::start(&ws, &config_yaml(&ws, free_port(), 1, "rolling", &extra)).await;

    // No version listed, none on disk: 400 saying how to declare one.
    let (status, v) = s.post("/deployments/bare/production", json!({})).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("INVALID_PARAMETERS")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("fraises.bare.versions"),
        "{v}"
    );

    // Away from the server's host: log in once, then auth:token renews the saved token.
    let home = tempfile::tempdir().unwrap();
    let cli = |args: &[&str]| {
        Command::new(fraisier_bin())
            .args(args)
            .env("HOME", home.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("FRAISIER_CONFIG")
            .current_dir(home.path())
            .output()
            .unwrap()
    };
    let out = cli(&["auth:token"]);
    assert!(!out.status.success(), "no config, no login: no token");
    let out = cli(&[
        "auth:login",
        "--server",
        &s.url,
        "--username",
        "admin",
        "--password",
        "wrong",
    ]);
    assert!(!out.status.success());
    let out = cli(&[
        "auth:login",
        "--server",
        &s.url,
        "--username",
        "admin",
        "--password",
        "test-admin-password",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved = home.path().join(".config/fraisier/credentials.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&saved).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let out = cli(&["auth:token"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let r = s
        .http
        .get(format!("{}/fraises", s.url))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let out = cli(&["list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// As the README starts it: `fraisier serve` in the config's directory, relative paths.
#[tokio::test]
async fn serve_from_the_config_directory_with_relative_paths() {
    let ws = Workspace::new();
    ws.release("1.0.0", &[]);
    std::fs::create_dir_all(ws.path().join("bin")).unwrap();
    std::fs::copy(demo_bin(), ws.path().join("bin/demo")).unwrap();
    let port = free_port();
    let yaml = format!(
        "server: {{ listen: \"127.0.0.1:0\", data_dir: \".fraisier\" }}\nenvironments: {{ production: {{}} }}\nfraises:\n  app:\n    command: \"exec ./bin/demo\"\n    working_directory: \".\"\n    artifact_path: \"releases/{{version}}\"\n    health_check: {{ path: /health, interval: 100ms }}\n    environments:\n      production: {{ port: {port} }}\n"
    );
    std::fs::write(ws.path().join("fraisier.yaml"), yaml).unwrap();
    let mut child = Command::new(fraisier_bin())
        .arg("serve")
        .current_dir(ws.path())
        .env_remove("FRAISIER_CONFIG")
        .env("FRAISIER_ADMIN_PASSWORD", "pw")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.starts_with("fraisier listening on "))
            .unwrap()
    })
    .await
    .unwrap();
    let url = line.split_whitespace().nth(3).unwrap().to_string();
    let agent_dir = ws.path().join(".fraisier/agent");
    let token = {
        let out = Command::new(fraisier_bin())
            .arg("auth:token")
            .current_dir(ws.path())
            .env_remove("FRAISIER_CONFIG")
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let http = reqwest::Client::new();
    let r: serde_json::Value = http
        .post(format!("{url}/deployments/app/production"))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = r["id"].as_str().unwrap().to_string();
    let mut status = String::new();
    for _ in 0..300 {
        let run: serde_json::Value = http
            .get(format!("{url}/deployments/{id}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        status = run["status"].as_str().unwrap().to_string();
        if status != "pending" && status != "in_progress" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let served = router_version(port).await;
    let _ = child.kill();
    let _ = child.wait();
    stop_agent(&agent_dir);
    assert_eq!(status, "success");
    assert_eq!(served.as_deref(), Some("1.0.0"));
}

#[tokio::test]
async fn cancel_timeout_and_skipped_health_check() {
    let ws = Workspace::new();
    ws.release("1.0.0", &[]);
    ws.release("2.0.0", &["DEMO_STARTUP_DELAY=4s"]);
    let port = free_port();
    let s = Server::start(&ws, &config_yaml(&ws, port, 2, "rolling", "")).await;
    let id = s
        .deploy(
            "app",
            "production",
            json!({"version": "1.0.0", "skip_health_check": true}),
        )
        .await;
    let run = s.wait_run(&id, Duration::from_secs(60)).await;
    assert_eq!(run["status"], "success");
    assert_eq!(run["health_check_status"], "skipped");

    // Cancel through the CLI while 2.0.0 starts: stops at a safe point, 1.0.0 stays.
    let load = Load::start(port, 2);
    let id = s
        .deploy(
            "app",
            "production",
            json!({"version": "2.0.0", "strategy_config": {"max_instances_down": 0}}),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = Command::new(fraisier_bin())
        .args(["cancel", &id, "--config"])
        .arg(ws.config_path())
        .arg("--server")
        .arg(&s.url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("cancelled"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let run = s.wait_run(&id, Duration::from_secs(60)).await;
    assert_eq!(run["status"], "cancelled", "{run:#}");
    assert_eq!(run["cancelled_by"], "admin");
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert_eq!(router_version(port).await.as_deref(), Some("1.0.0"));
    let (status, v) = s.delete(&format!("/deployments/{id}")).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("DEPLOYMENT_FINISHED"))
    );

    // A run that outlives its timeout fails and restores what ran.
    let id = s
        .deploy(
            "app",
            "production",
            json!({"version": "2.0.0", "timeout": 1}),
        )
        .await;
    let run = s.wait_run(&id, Duration::from_secs(60)).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert!(
        run["error"]["message"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{run:#}"
    );
    assert_eq!(router_version(port).await.as_deref(), Some("1.0.0"));
}
