//! The API end to end against the real binary: auth, a first deploy, runs, logs, events,
//! fraises, environments, health, metrics, and precise refusals of bad input.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

async fn started() -> (Workspace, Server, u16) {
    let ws = Workspace::new();
    ws.release("1.0.0", &[]);
    ws.release("2.0.0", &[]);
    let port = free_port();
    let server = Server::start(&ws, &config_yaml(&ws, port, 2, "rolling", "")).await;
    (ws, server, port)
}

#[tokio::test]
async fn deploy_flow_and_reads() {
    let (_ws, s, port) = started().await;

    // Without a token: 401 in the error format; /health needs none.
    let r = s
        .http
        .get(format!("{}/deployments", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "UNAUTHORIZED");
    assert!(v["error"]["request_id"]
        .as_str()
        .unwrap()
        .starts_with("req_"));
    let r = s
        .http
        .get(format!("{}/health", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Username/password for a token.
    let r = s
        .http
        .post(format!("{}/auth/token", s.url))
        .json(&json!({"username": "admin", "password": "test-admin-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 3600);
    let r = s
        .http
        .post(format!("{}/auth/token", s.url))
        .json(&json!({"username": "admin", "password": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = s
        .http
        .post(format!("{}/auth/refresh", s.url))
        .bearer_auth(t["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The seed's deploy without a version takes the latest known one.
    let (status, created) = s
        .post(
            "/deployments/app/production",
            json!({"strategy": "rolling"}),
        )
        .await;
    assert_eq!(status, 202, "{created}");
    assert_eq!(created["version"], "2.0.0");
    assert_eq!(created["status"], "pending");
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("dep_"));
    let run = s.wait_run(&id, Duration::from_secs(60)).await;
    assert_eq!(run["status"], "success", "{run:#}");
    assert_eq!(run["health_check_status"], "passing");
    assert_eq!(run["health_check_details"]["checks_total"], 2);
    // Ended in one write with its last event: the first read that sees it over finds it, and
    // the line that tells it came before.
    assert_eq!(
        run["events"].as_array().unwrap().last().unwrap()["event_type"],
        "deployment.completed",
        "{run:#}"
    );
    assert_eq!(router_version(port).await.as_deref(), Some("2.0.0"));

    let (status, logs) = s.get(&format!("/deployments/{id}/logs?lines=50")).await;
    assert_eq!(status, 200);
    let last = logs["logs"].as_array().unwrap().last().unwrap()["message"].to_string();
    assert!(last.contains("Deployment succeeded"), "{logs:#}");
    assert_eq!(logs["deployment_id"], id.as_str());
    let (_, errors_only) = s.get(&format!("/deployments/{id}/logs?level=error")).await;
    assert!(errors_only["logs"].as_array().unwrap().is_empty());
    let (status, events) = s.get(&format!("/deployments/{id}/events")).await;
    assert_eq!(status, 200);
    assert_eq!(events["events"][0]["event_type"], "deployment.started");
    assert!(events["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["event_type"] == "instance.healthy"));

    // Lists, filters, pagination.
    let (_, list) = s
        .get("/deployments?environment=production&status=success&limit=10&offset=0")
        .await;
    assert_eq!(list["pagination"]["total"], 1);
    assert_eq!(list["deployments"][0]["id"], id.as_str());
    let (_, list) = s.get("/deployments?status=failed").await;
    assert_eq!(list["pagination"]["total"], 0);
    let (_, list) = s.get("/deployments?q=app&sort=-created_at").await;
    assert_eq!(list["pagination"]["total"], 1);

    // Fraises and environments.
    let (status, f) = s.get("/fraises/app").await;
    assert_eq!(status, 200);
    assert_eq!(f["environments"]["production"]["current_version"], "2.0.0");
    let (_, st) = s.get("/fraises/app/status?environment=production").await;
    assert_eq!(st["environments"]["production"]["instances_healthy"], 2);
    assert_eq!(st["environments"]["production"]["status"], "healthy");
    let (_, h) = s.get("/fraises/app/history?environment=production").await;
    assert_eq!(h["total"], 1);
    let (_, fl) = s.get("/fraises?type=api&environment=production").await;
    assert_eq!(fl["fraises"][0]["current_versions"]["production"], "2.0.0");
    let (_, envs) = s.get("/environments").await;
    assert_eq!(envs["environments"].as_array().unwrap().len(), 2);
    let (status, es) = s.get("/environments/production/status").await;
    assert_eq!(status, 200);
    assert_eq!(es["fraises"]["healthy"], 1);

    // Roll back to 1.0.0? Never deployed: not kept. Deploy 1.0.0 then roll back to 2.0.0.
    let id2 = s
        .deploy("app", "production", json!({"version": "1.0.0"}))
        .await;
    assert_eq!(
        s.wait_run(&id2, Duration::from_secs(60)).await["status"],
        "success"
    );
    assert_eq!(router_version(port).await.as_deref(), Some("1.0.0"));
    let (status, rb) = s
        .post(
            "/deployments/app/production/rollback",
            json!({"reason": "test"}),
        )
        .await;
    assert_eq!(status, 202, "{rb}");
    assert_eq!(rb["to_version"], "2.0.0");
    assert_eq!(rb["from_version"], "1.0.0");
    let rb = s
        .wait_run(rb["id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    assert_eq!(rb["status"], "success", "{rb:#}");
    assert_eq!(router_version(port).await.as_deref(), Some("2.0.0"));

    // Metrics in Prometheus text.
    let r = s
        .http
        .get(format!("{}/metrics", s.url))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(
        text.contains("fraisier_deployments_total{status=\"success\"} 3"),
        "{text}"
    );
    assert!(text.contains("fraisier_router_requests_total{fraise=\"app\",environment=\"production\",version=\"2.0.0\"}"), "{text}");
    if let Ok(out) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(text.as_bytes())?;
            c.wait_with_output()
        })
    {
        assert!(
            out.status.success(),
            "promtool: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        assert!(
            std::env::var("CI").is_err(),
            "promtool must be installed in CI"
        );
    }

    // OpenAPI document.
    let (status, doc) = s.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["paths"]["/api/v1/deployments/{fraise}/{environment}"]["post"].is_object());
}

#[tokio::test]
async fn bad_input_is_refused_precisely_and_changes_nothing() {
    let (_ws, s, _port) = started().await;
    // (method, path, body, status, code)
    type Case = (
        &'static str,
        &'static str,
        Option<Vec<u8>>,
        u16,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/deployments/app/production",
            Some(b"{not json".to_vec()),
            400,
            "INVALID_PARAMETERS",
        ),
        (
            "POST",
            "/deployments/app/production",
            Some(br#"{"version": 2}"#.to_vec()),
            400,
            "INVALID_PARAMETERS",
        ),
        (
            "POST",
            "/deployments/app/production",
            Some(br#"{"strategy": "yolo"}"#.to_vec()),
            400,
            "INVALID_PARAMETERS",
        ),
        (
            "POST",
            "/deployments/app/production",
            Some(br#"{"strategy_config": {"max_surge": -1}}"#.to_vec()),
            400,
            "INVALID_PARAMETERS",
        ),
        (
            "POST",
            "/deployments/app/production",
            Some(br#"{"strategy_config": {"bogus": 1}}"#.to_vec()),
            400,
            "INVALID_PARAMETERS",
        ),
        (
            "POST",
            "/deployments/app/production",
            Some(br#"{"version": "9.9.9"}"#.to_vec()),
            400,
            "ARTIFACT_NOT_FOUND",
        ),
        (
            "POST",
            "/deployments/app/production",
            Some(br#"{"version": "../../etc"}"#.to_vec()),
            400,
            "INVALID_PARAMETERS",
        ),
        (
            "POST",
            "/deployments/app/production",
            Some(b"{\"version\": \"\xff\"}".to_vec()),
            400,
            "INVALID_PARAMETERS",
        ),
        (
            "POST",
            "/deployments/nope/production",
            Some(b"{}".to_vec()),
            404,
            "FRAISE_NOT_FOUND",
        ),
        (
            "POST",
            "/deployments/app/nowhere",
            Some(b"{}".to_vec()),
            404,
            "ENVIRONMENT_NOT_FOUND",
        ),
        (
            "POST",
            "/deployments/..%2F..%2Fetc/production",
            Some(b"{}".to_vec()),
            404,
            "FRAISE_NOT_FOUND",
        ),
        (
            "POST",
            "/deployments/app/production/rollback",
            Some(b"{}".to_vec()),
            400,
            "BACKUP_NOT_FOUND",
        ),
        (
            "GET",
            "/deployments?limit=-1",
            None,
            400,
            "INVALID_PARAMETERS",
        ),
        (
            "GET",
            "/deployments?limit=100000",
            None,
            400,
            "INVALID_PARAMETERS",
        ),
        (
            "GET",
            "/deployments?created_after=yesterday",
            None,
            400,
            "INVALID_PARAMETERS",
        ),
        (
            "GET",
            "/deployments?status=great",
            None,
            400,
            "INVALID_PARAMETERS",
        ),
        (
            "GET",
            "/deployments?sort=name",
            None,
            400,
            "INVALID_PARAMETERS",
        ),
        (
            "GET",
            "/deployments/dep_99999",
            None,
            404,
            "DEPLOYMENT_NOT_FOUND",
        ),
        (
            "GET",
            "/deployments/dep_x/logs",
            None,
            404,
            "DEPLOYMENT_NOT_FOUND",
        ),
        ("GET", "/fraises/..%2Fx", None, 404, "FRAISE_NOT_FOUND"),
        (
            "GET",
            "/environments/nowhere/status",
            None,
            404,
            "ENVIRONMENT_NOT_FOUND",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let url = format!("{}{}", s.url, path);
        let req = match method {
            "POST" => s
                .http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.unwrap()),
            _ => s.http.get(&url),
        };
        let r = req.bearer_auth(&s.token).send().await.unwrap();
        let got = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(
            (got, v["error"]["code"].as_str().unwrap_or("")),
            (status, code),
            "{method} {path}: {v}"
        );
        if status == 400 && code == "INVALID_PARAMETERS" {
            assert!(
                v["error"]["details"]["field"].is_string(),
                "{method} {path} names no field: {v}"
            );
        }
    }
    // An oversized body: 413.
    let big = format!(
        "{{\"metadata\": {{\"x\": \"{}\"}}}}",
        "a".repeat(2 * 1024 * 1024)
    );
    // Its own connection: the server answers before reading the whole body, then closes it.
    let r = reqwest::Client::new()
        .post(format!("{}/deployments/app/production", s.url))
        .bearer_auth(&s.token)
        .header("content-type", "application/json")
        .body(big.into_bytes())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 413, "{v}");
    assert_eq!(v["error"]["code"], "INVALID_PARAMETERS");
    // Nothing was recorded by any of it.
    let (_, list) = s.get("/deployments").await;
    assert_eq!(list["pagination"]["total"], 0, "{list}");

    // A deploy while one runs: 409, and still only one run.
    let id = s
        .deploy("app", "production", json!({"version": "1.0.0"}))
        .await;
    let (status, v) = s
        .post("/deployments/app/production", json!({"version": "2.0.0"}))
        .await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["error"]["code"], "DEPLOYMENT_IN_PROGRESS");
    assert_eq!(v["error"]["details"]["deployment_id"], id.as_str());
    s.wait_run(&id, Duration::from_secs(60)).await;
    let (_, list) = s.get("/deployments").await;
    assert_eq!(list["pagination"]["total"], 1);
}
