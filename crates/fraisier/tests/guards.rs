//! Locks and freeze windows against the real binary: a locked environment refuses deploys,
//! rollbacks and variable changes, naming who locked it and why, until it is unlocked; a freeze
//! window refuses them while it is in force, except to the users it names; bad windows change
//! nothing — from the API and the CLI.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::*;
use serde_json::{json, Value};

async fn as_user(s: &Server, token: &str, path: &str, body: Value) -> (u16, Value) {
    let r = s
        .http
        .post(format!("{}{path}", s.url))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn locks_and_freeze_windows_keep_changes_out_except_for_whom_they_name() {
    let ws = Workspace::new();
    ws.release("1.0.0", &[]);
    ws.release("2.0.0", &[]);
    let s = Server::start(&ws, &config_yaml(&ws, free_port(), 1, "rolling", "")).await;
    let id = s
        .deploy("app", "production", json!({"version": "1.0.0"}))
        .await;
    assert_eq!(
        s.wait_run(&id, Duration::from_secs(60)).await["status"],
        "success"
    );

    // Locked: every change is refused, naming who and why; a second lock is a conflict.
    let (status, v) = s
        .post(
            "/environments/production/lock",
            json!({"reason": "database maintenance"}),
        )
        .await;
    assert_eq!(
        (status, v["locked"].clone(), v["locked_by"].as_str()),
        (200, json!(true), Some("admin")),
        "{v}"
    );
    let (status, v) = s.post("/environments/production/lock", json!({})).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("ENVIRONMENT_LOCKED")),
        "{v}"
    );
    for (path, body) in [
        ("/deployments/app/production", json!({"version": "2.0.0"})),
        ("/deployments/app/production/rollback", json!({})),
    ] {
        let (status, v) = s.post(path, body).await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (422, Some("ENVIRONMENT_LOCKED")),
            "{path}: {v}"
        );
        assert_eq!(v["error"]["details"]["locked_by"], "admin", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("database maintenance"),
            "{v}"
        );
    }
    let r = s
        .http
        .put(format!("{}/deployments/app@production/env", s.url))
        .bearer_auth(&s.token)
        .json(&json!({"GREETING": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        422,
        "a variable change is a change too"
    );
    let (_, v) = s.get("/environments/production").await;
    assert_eq!(v["lock"]["reason"], "database maintenance", "{v}");
    // Other environments are not concerned.
    let id = s
        .deploy("app", "staging", json!({"version": "1.0.0"}))
        .await;
    assert_eq!(
        s.wait_run(&id, Duration::from_secs(60)).await["status"],
        "success"
    );
    let (status, v) = s.post("/environments/production/unlock", json!({})).await;
    assert_eq!((status, v["locked"].clone()), (200, json!(false)), "{v}");

    // A freeze window in force: refused, naming the window and its end, except to `releaser`.
    let releaser = user_token(&s, "releaser", &["release_manager"]).await;
    let start = (Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let end = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (status, w) = s
        .post(
            "/environments/production/freeze-windows",
            json!({"start": start, "end": end, "reason": "launch week", "exceptions": ["releaser"]}),
        )
        .await;
    assert_eq!(status, 201, "{w}");
    assert_eq!(
        (
            w["id"].as_str(),
            w["active"].clone(),
            w["created_by"].as_str()
        ),
        (Some("frz_00001"), json!(true), Some("admin")),
        "{w}"
    );
    let (status, v) = s
        .post("/deployments/app/production", json!({"version": "2.0.0"}))
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (422, Some("ENVIRONMENT_FROZEN")),
        "{v}"
    );
    assert_eq!(v["error"]["details"]["freeze_window"], "frz_00001", "{v}");
    assert!(v["error"]["details"]["ends_at"].is_string(), "{v}");
    let (status, v) = as_user(
        &s,
        &releaser,
        "/deployments/app/production",
        json!({"version": "2.0.0"}),
    )
    .await;
    assert_eq!(status, 202, "the exception deploys: {v}");
    assert_eq!(
        s.wait_run(v["id"].as_str().unwrap(), Duration::from_secs(60))
            .await["status"],
        "success"
    );

    // A window to come is listed, not active.
    let later = (Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let after = (Utc::now() + chrono::Duration::days(2)).to_rfc3339();
    let (status, _) = s
        .post(
            "/environments/production/freeze-windows",
            json!({"startTime": later, "end": after}),
        )
        .await;
    assert_eq!(status, 400, "an unknown field is refused, camelCase or not");
    let (status, _) = s
        .post(
            "/environments/production/freeze-windows",
            json!({"start": later, "end": after}),
        )
        .await;
    assert_eq!(status, 201);
    let (_, v) = s.get("/environments/production/freeze-windows").await;
    assert_eq!(v["freeze_windows"].as_array().unwrap().len(), 2, "{v}");
    let (_, v) = s
        .get("/environments/production/freeze-windows?active=true")
        .await;
    assert_eq!(v["freeze_windows"].as_array().unwrap().len(), 1, "{v}");

    // Bad windows name their field and change nothing.
    let past = (Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    for (body, field) in [
        (json!({"start": end, "end": start}), "end"),
        (json!({"start": past, "end": past}), "end"),
        (json!({"start": "tomorrow", "end": end}), "start"),
        (
            json!({"start": start, "end": end, "exceptions": [""]}),
            "exceptions[0]",
        ),
    ] {
        let (status, v) = s
            .post("/environments/production/freeze-windows", body.clone())
            .await;
        assert_eq!(
            (status, v["error"]["details"]["field"].as_str()),
            (400, Some(field)),
            "{body}: {v}"
        );
    }
    let (status, v) = s
        .post(
            "/environments/nowhere/freeze-windows",
            json!({"start": start, "end": end}),
        )
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("ENVIRONMENT_NOT_FOUND"))
    );
    let (_, v) = s.get("/environments/production/freeze-windows").await;
    assert_eq!(v["freeze_windows"].as_array().unwrap().len(), 2, "{v}");

    // Removed, the environment takes deploys again.
    for window in ["frz_00009", "bogus"] {
        let (status, v) = s
            .delete(&format!("/environments/production/freeze-windows/{window}"))
            .await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (404, Some("FREEZE_WINDOW_NOT_FOUND")),
            "{v}"
        );
    }
    let (status, v) = s
        .delete("/environments/production/freeze-windows/frz_00001")
        .await;
    assert_eq!((status, v), (200, json!({"deleted": true})));
    let id = s
        .deploy("app", "production", json!({"version": "1.0.0"}))
        .await;
    assert_eq!(
        s.wait_run(&id, Duration::from_secs(60)).await["status"],
        "success"
    );

    // The CLI, beside the routes.
    let text = cli(
        &s,
        &["environment", "lock", "production", "--reason", "audit"],
    );
    assert!(text.contains("production locked by admin"), "{text}");
    let text = cli(&s, &["environment", "unlock", "production"]);
    assert!(text.contains("production unlocked"), "{text}");
    let text = cli(
        &s,
        &[
            "environment",
            "freeze",
            "staging",
            "--until",
            "2h",
            "--reason",
            "demo",
            "--except",
            "releaser",
        ],
    );
    assert!(
        text.contains("frz_00003") && text.contains("releaser"),
        "{text}"
    );
    let text = cli(&s, &["environment", "freezes", "staging", "--active"]);
    assert!(text.contains("frz_00003") && text.contains("yes"), "{text}");
    cli(&s, &["environment", "unfreeze", "staging", "frz_00003"]);
    let text = cli(&s, &["environment", "freezes", "staging"]);
    assert!(!text.contains("frz_00003"), "{text}");
}

#[tokio::test]
async fn change_windows_let_changes_in_only_when_open_except_for_whom_they_name() {
    let ws = Workspace::new();
    ws.release("1.0.0", &[]);
    let yaml = config_yaml(&ws, free_port(), 1, "rolling", "")
        .replace(
            "  production: { display_name: Production, description: Live environment, provider: local }",
            "  production: { provider: local, change_windows: [ { cron: \"0 0 1 1 *\", duration: 1m, timezone: UTC } ], change_window_exceptions: [releaser] }",
        )
        .replace(
            "  staging: { display_name: Staging, provider: local }",
            "  staging: { provider: local, change_windows: [ { cron: \"* * * * *\", duration: 1h } ] }",
        );
    assert!(yaml.contains("0 0 1 1 *"), "{yaml}");
    let s = Server::start(&ws, &yaml).await;

    // Its rules, as declared (seed 003's environment config).
    let (status, c) = s.get("/environments/production/config").await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["change_windows"][0]["cron"], "0 0 1 1 *", "{c}");
    assert_eq!(c["change_window_exceptions"], json!(["releaser"]), "{c}");
    assert_eq!(
        (c["is_production"].clone(), c["lock"].clone()),
        (json!(true), Value::Null),
        "{c}"
    );
    assert!(c["required_roles"]
        .as_array()
        .unwrap()
        .contains(&json!("release_manager")));

    // Production opens on New Year's midnight only: refused now, saying when it opens.
    let (status, v) = s
        .post("/deployments/app/production", json!({"version": "1.0.0"}))
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (422, Some("OUTSIDE_CHANGE_WINDOW")),
        "{v}"
    );
    let next = v["error"]["details"]["next_window_at"].as_str().unwrap();
    assert!(
        next.ends_with("-01-01T00:00:00.000Z") || next.ends_with("-01-01T00:00:00Z"),
        "{v}"
    );
    // Staging is always open.
    let id = s
        .deploy("app", "staging", json!({"version": "1.0.0"}))
        .await;
    assert_eq!(
        s.wait_run(&id, Duration::from_secs(60)).await["status"],
        "success"
    );
    // The named exception changes production at any time.
    let token = user_token(&s, "releaser", &["release_manager"]).await;
    let (status, v) = as_user(
        &s,
        &token,
        "/deployments/app/production",
        json!({"version": "1.0.0"}),
    )
    .await;
    assert_eq!(status, 202, "{v}");

    // A window that cannot be read is refused at load, with its key.
    let bad = config_yaml(&ws, free_port(), 1, "rolling", "").replace(
        "  staging: { display_name: Staging, provider: local }",
        "  staging: { provider: local, change_windows: [ { cron: \"61 * * * *\", duration: 10s, timezone: Mars/Olympus } ] }",
    );
    let (ok, text) = validate(&ws, &bad);
    assert!(!ok, "{text}");
    for key in [
        "environments.staging.change_windows[0].cron",
        "environments.staging.change_windows[0].duration",
        "environments.staging.change_windows[0].timezone",
    ] {
        assert!(text.contains(key), "{key}: {text}");
    }
}

#[tokio::test]
async fn limits_refuse_a_deploy_that_would_run_too_many_instances() {
    let ws = Workspace::new();
    ws.release("1.0.0", &[]);
    let web = format!(
        "  web:\n    type: api\n    command: \"exec {}\"\n    artifact_path: \"{}/{{version}}\"\n    environments:\n      production: {{ port: {}, instances: 2 }}\n",
        demo_bin().display(),
        ws.path().join("releases").display(),
        free_port()
    );
    let s = Server::start(&ws, &config_yaml(&ws, free_port(), 1, "rolling", &web)).await;

    let (status, v) = s
        .put_json(
            "/environments/production/limits",
            json!({"maxInstances": 2}),
        )
        .await;
    assert_eq!(
        (
            status,
            v["max_instances"].as_u64(),
            v["instances_in_use"].as_u64()
        ),
        (200, Some(2), Some(0)),
        "{v}"
    );
    let id = s
        .deploy("app", "production", json!({"version": "1.0.0"}))
        .await;
    assert_eq!(
        s.wait_run(&id, Duration::from_secs(60)).await["status"],
        "success"
    );
    // web's 2 beside app's 1 would make 3.
    let (status, v) = s
        .post("/deployments/web/production", json!({"version": "1.0.0"}))
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (422, Some("ENVIRONMENT_LIMIT_EXCEEDED")),
        "{v}"
    );
    assert_eq!(
        v["error"]["details"],
        json!({"environment": "production", "max_instances": 2, "requested": 2, "in_use": 1})
    );
    // Redeploying what fits is fine: a fraise is not counted against itself.
    let id = s
        .deploy(
            "app",
            "production",
            json!({"version": "1.0.0", "force": true}),
        )
        .await;
    s.wait_run(&id, Duration::from_secs(60)).await;
    for (body, field) in [
        (json!({"max_instances": 0}), "max_instances"),
        (json!({"max_instances": "many"}), "max_instances"),
        (json!({"max": 3}), "max"),
        // An empty body is no "lift the limit": that takes `null`.
        (json!({}), "max_instances"),
    ] {
        let (status, v) = s
            .put_json("/environments/production/limits", body.clone())
            .await;
        assert_eq!(
            (status, v["error"]["details"]["field"].as_str()),
            (400, Some(field)),
            "{body}: {v}"
        );
    }
    let (_, v) = s.get("/environments/production/limits").await;
    assert_eq!(v["max_instances"], 2, "bad input changed nothing: {v}");
    // Lifted (from the CLI), web deploys.
    let text = cli(&s, &["environment", "limits", "production", "--no-limit"]);
    assert!(text.contains("limit no limit"), "{text}");
    let id = s
        .deploy("web", "production", json!({"version": "1.0.0"}))
        .await;
    assert_eq!(
        s.wait_run(&id, Duration::from_secs(60)).await["status"],
        "success"
    );
    let text = cli(
        &s,
        &[
            "environment",
            "limits",
            "production",
            "--max-instances",
            "2",
        ],
    );
    assert!(
        text.contains("3 instance(s) running, limit 2 (exceeded)"),
        "{text}"
    );
}

#[tokio::test]
async fn an_environment_reports_its_health_metrics_and_runs() {
    let ws = Workspace::new();
    ws.release("1.0.0", &[]);
    let port = free_port();
    let s = Server::start(&ws, &config_yaml(&ws, port, 2, "rolling", "")).await;
    let id = s
        .deploy("app", "production", json!({"version": "1.0.0"}))
        .await;
    assert_eq!(
        s.wait_run(&id, Duration::from_secs(60)).await["status"],
        "success"
    );
    // Requests through the router, counted by it.
    let http = reqwest::Client::new();
    for _ in 0..20 {
        let r = http
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    let (status, v) = s.get("/environments/production/health").await;
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("healthy")),
        "{v}"
    );
    assert_eq!(
        (
            v["fraises"][0]["fraise"].as_str(),
            v["fraises"][0]["instances"].as_u64(),
            v["fraises"][0]["instances_healthy"].as_u64(),
            v["fraises"][0]["current_version"].as_str()
        ),
        (Some("app"), Some(2), Some(2), Some("1.0.0")),
        "{v}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let v = loop {
        let (_, v) = s.get("/environments/production/metrics").await;
        if v["requests"].as_u64().unwrap_or(0) >= 20 {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(v["success_rate"], 100.0, "{v}");
    assert!(
        v["fraises"]["app"]["requests"].as_u64().unwrap() >= 20,
        "{v}"
    );
    let (_, v) = s.get("/environments/staging/health").await;
    assert_eq!(v["status"], "unknown", "nothing deployed there: {v}");

    let (status, v) = s.get("/environments/production/deployments").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["pagination"]["total"], 1, "{v}");
    assert_eq!(v["deployments"][0]["id"], id.as_str(), "{v}");
    let (status, v) = s.get("/environments/staging/deployments").await;
    assert_eq!(
        (status, v["pagination"]["total"].as_u64()),
        (200, Some(0)),
        "{v}"
    );
    let (status, v) = s
        .get("/environments/production/deployments?environment=staging")
        .await;
    assert_eq!(
        (status, v["error"]["details"]["field"].as_str()),
        (400, Some("environment"))
    );
    let (status, _) = s.get("/environments/nowhere/health").await;
    assert_eq!(status, 404);

    // Seed 004's includeState: the current release of each environment.
    let (status, v) = s.get("/environments?includeState=true").await;
    assert_eq!(status, 200, "{v}");
    let prod = v["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "production")
        .unwrap()
        .clone();
    assert_eq!(
        (
            prod["current_release"]["id"].as_str(),
            prod["current_release"]["name"].as_str()
        ),
        (Some(id.as_str()), Some("app-v1.0.0")),
        "{prod:#}"
    );
    assert_eq!(
        prod["releases"],
        json!([{"fraise": "app", "version": "1.0.0"}])
    );
    let (_, v) = s.get("/environments").await;
    assert!(v["environments"][0].get("current_release").is_none(), "{v}");
    let (status, _) = s.get("/environments?includeState=maybe").await;
    assert_eq!(status, 400);
}
