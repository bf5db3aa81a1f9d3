//! Environments as data (seeds 003 and 004): made, changed and deleted through the API next
//! to those fraisier.yaml declares, the same objects to the engine (approvals, promotions),
//! kept across a restart with the API's fields holding over the file's; an environment's own
//! variables, released to every fraise there by a config run; every route's 400/403/404/409/422
//! paths, the audit trail and the CLI.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn yaml(ws: &Workspace, port: u16, staging: u16, web: u16) -> String {
    format!(
        r#"
server:
  listen: "127.0.0.1:0"
  data_dir: "{data}"
  rate_limits: off
environments:
  production: {{ display_name: Production, required_approvals: 1 }}
  staging: {{ display_name: Staging }}
  sandbox: {{ description: nobody deploys here }}
fraises:
  app:
    command: "exec {demo}"
    artifact_path: "{releases}/{{version}}"
    health_check: {{ type: http, path: /health, interval: 100ms, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 2 }}
    drain_timeout: 2s
    stop_grace: 2s
    env: {{ DEMO_SHOW: "GREETING,LEVEL", LEVEL: from-yaml }}
    environments:
      production: {{ port: {port}, instances: 1, strategy: rolling }}
      staging: {{ port: {staging}, instances: 2, strategy: rolling, strategy_config: {{ health_check_timeout: 5s }} }}
  web:
    command: "exec {demo}"
    artifact_path: "{releases}/{{version}}"
    health_check: {{ type: http, path: /health, interval: 100ms, timeout: 1s }}
    env: {{ DEMO_SHOW: "GREETING,LEVEL" }}
    environments:
      staging: {{ port: {web} }}
"#,
        data = ws.data_dir().display(),
        demo = demo_bin().display(),
        releases = ws.path().join("releases").display(),
    )
}

/// What the instances behind a router were started with, as the demo app shows it.
async fn shown(port: u16) -> Value {
    let v: Value = reqwest::get(format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["env"].clone()
}

async fn names(s: &Server) -> Vec<String> {
    let (status, v) = s.get("/environments").await;
    assert_eq!(status, 200, "{v}");
    v["environments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn environments_are_data_the_engine_and_a_restart_honour() {
    let ws = Workspace::new();
    ws.release("1.0.0", &[]);
    let (port, staging_port) = (free_port(), free_port());
    let mut s = Server::start(&ws, &yaml(&ws, port, staging_port, free_port())).await;

    // The file's environments, in order (sandbox has no known place: 0).
    assert_eq!(names(&s).await, ["sandbox", "staging", "production"]);
    let (status, prod) = s.get("/environments/production").await;
    assert_eq!(status, 200, "{prod}");
    assert_eq!(prod["id"], "production");
    assert_eq!(prod["display_name"], "Production");
    assert_eq!(prod["order_index"], 4);
    assert_eq!(prod["is_production"], true);
    assert_eq!(prod["required_approvals"], 1);
    assert_eq!(prod["require_separation_of_duties"], true);
    assert_eq!(prod["config"]["deployment_timeout"], 3600);
    assert_eq!(prod["config"]["health_check_interval"], Value::Null);
    assert_eq!(prod["promotion_policy"], "default");
    assert_eq!(prod["defined_in"], "file");
    assert_eq!(prod["created_at"], Value::Null);

    // Seed 004's request, as written there (camelCase, seconds).
    let (status, qa) = s
        .post(
            "/environments",
            json!({
                "name": "qa", "displayName": "QA", "orderIndex": 2,
                "config": { "deploymentTimeout": 600, "healthCheckInterval": 30 },
                "requiredApprovals": 2, "requireSod": true, "promotionPolicy": "default"
            }),
        )
        .await;
    assert_eq!(status, 201, "{qa}");
    assert_eq!(qa["name"], "qa");
    assert_eq!(qa["display_name"], "QA");
    assert_eq!(qa["order_index"], 2);
    assert_eq!(qa["is_production"], false);
    assert_eq!(qa["required_approvals"], 2);
    assert_eq!(qa["config"]["deployment_timeout"], 600);
    assert_eq!(qa["config"]["health_check_interval"], 30.0);
    assert_eq!(qa["defined_in"], "api");
    assert_eq!(qa["created_by"], "admin");
    assert!(qa["created_at"].is_string(), "{qa}");
    assert_eq!(names(&s).await, ["sandbox", "qa", "staging", "production"]);
    // It is an environment like the others: locks, freeze windows and target groups take it.
    let (status, v) = s
        .post("/environments/qa/lock", json!({ "reason": "testing" }))
        .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = s
        .post("/environments/qa/target-groups", json!({ "name": "web" }))
        .await;
    assert_eq!(status, 201, "{v}");
    let group = v["id"].as_str().unwrap().to_string();

    // Bad input names its field and changes nothing.
    for (body, status, code_, field) in [
        (json!({ "name": "qa" }), 409, "ENVIRONMENT_EXISTS", None),
        (
            json!({ "name": "production" }),
            409,
            "ENVIRONMENT_EXISTS",
            None,
        ),
        (
            json!({ "displayName": "No name" }),
            400,
            "INVALID_PARAMETERS",
            Some("name"),
        ),
        (
            json!({ "name": "../x" }),
            400,
            "INVALID_PARAMETERS",
            Some("name"),
        ),
        (
            json!({ "name": "status" }),
            400,
            "INVALID_PARAMETERS",
            Some("name"),
        ),
        (
            json!({ "name": "ok", "requiredApprovals": 11 }),
            400,
            "INVALID_PARAMETERS",
            Some("required_approvals"),
        ),
        (
            json!({ "name": "ok", "config": { "deploymentTimeout": 0 } }),
            400,
            "INVALID_PARAMETERS",
            Some("deployment_timeout"),
        ),
        (
            json!({ "name": "ok", "config": { "healthCheckInterval": 7200 } }),
            400,
            "INVALID_PARAMETERS",
            Some("health_check_interval"),
        ),
        (
            json!({ "name": "ok", "promotionPolicy": "whenever" }),
            400,
            "INVALID_PARAMETERS",
            None,
        ),
        (
            json!({ "name": "ok", "colour": "red" }),
            400,
            "INVALID_PARAMETERS",
            None,
        ),
        // Seed 004 answers with requireSeparationOfDuties; requests say requireSod.
        (
            json!({ "name": "ok", "requireSeparationOfDuties": false }),
            400,
            "INVALID_PARAMETERS",
            None,
        ),
        (json!({ "name": 7 }), 400, "INVALID_PARAMETERS", None),
        // serde would fill `config` from an array by position.
        (
            json!({ "name": "ok", "config": [null, null] }),
            400,
            "INVALID_PARAMETERS",
            None,
        ),
    ] {
        let (got, v) = s.post("/environments", body.clone()).await;
        assert_eq!((got, code(&v)), (status, code_), "{body}: {v}");
        if let Some(field) = field {
            assert_eq!(v["error"]["details"]["field"], field, "{body}: {v}");
        }
    }
    assert!(!names(&s).await.contains(&"ok".to_string()));

    // A change of a declared environment: the engine asks for two approvals at once.
    let (status, v) = s
        .put_json(
            "/environments/production",
            json!({ "requiredApprovals": 2, "description": "live" }),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["required_approvals"], 2);
    assert_eq!(v["display_name"], "Production", "untouched fields stay");
    assert_eq!(v["defined_in"], "file_and_api");
    assert_eq!(v["updated_by"], "admin");
    let (status, created) = s
        .post("/deployments/app/production", json!({ "version": "1.0.0" }))
        .await;
    assert_eq!(status, 202, "{created}");
    assert_eq!(created["approval"]["required"], 2, "{created}");
    let pending = created["id"].as_str().unwrap().to_string();
    let (status, v) = s.delete(&format!("/deployments/{pending}")).await;
    assert!(status < 300, "{v}");
    for (path, body, status, code_) in [
        (
            "/environments/nowhere",
            json!({ "description": "x" }),
            404,
            "ENVIRONMENT_NOT_FOUND",
        ),
        (
            "/environments/production",
            json!({ "name": "prod" }),
            400,
            "INVALID_PARAMETERS",
        ),
        (
            "/environments/production",
            json!({ "orderIndex": -1 }),
            400,
            "INVALID_PARAMETERS",
        ),
        (
            "/environments/production",
            json!({ "displayName": "" }),
            400,
            "INVALID_PARAMETERS",
        ),
    ] {
        let (got, v) = s.put_json(path, body.clone()).await;
        assert_eq!((got, code(&v)), (status, code_), "{path} {body}: {v}");
    }
    assert_eq!(
        s.get("/environments/production").await.1["required_approvals"],
        2
    );

    // A sequential promotion policy: production takes promotions from staging only.
    let (status, v) = s
        .put_json(
            "/environments/production",
            json!({ "promotionPolicy": "sequential" }),
        )
        .await;
    assert_eq!(
        (status, v["promotion_policy"].as_str()),
        (200, Some("sequential")),
        "{v}"
    );
    let (status, v) = s
        .post(
            "/artifacts/app/promote",
            json!({ "from": "qa", "to": "production" }),
        )
        .await;
    assert_eq!((status, code(&v)), (422, "PROMOTION_BLOCKED"), "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("staging"),
        "{v}"
    );
    let (status, v) = s
        .post(
            "/artifacts/app/promote",
            json!({ "to": "production", "version": "1.0.0" }),
        )
        .await;
    assert_eq!(
        (status, code(&v)),
        (422, "PROMOTION_BLOCKED"),
        "without from: {v}"
    );
    // From staging, what runs there moves on (and waits for production's two approvals).
    let run = s
        .deploy("app", "staging", json!({ "version": "1.0.0" }))
        .await;
    let done = s.wait_run(&run, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "success", "{done:#}");
    let (status, v) = s
        .post(
            "/artifacts/app/promote",
            json!({ "from": "staging", "to": "production" }),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let promoted = v["id"].as_str().unwrap().to_string();
    let (status, v) = s.delete(&format!("/deployments/{promoted}")).await;
    assert!(status < 300, "{v}");

    // Deleting: refused while a fraise is configured there or a group is in it.
    let (status, v) = s.delete("/environments/staging").await;
    assert_eq!((status, code(&v)), (409, "ENVIRONMENT_IN_USE"), "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("app"),
        "{v}"
    );
    let (status, v) = s.delete("/environments/qa").await;
    assert_eq!((status, code(&v)), (409, "ENVIRONMENT_IN_USE"), "{v}");
    let (status, _) = s.delete(&format!("/target-groups/{group}")).await;
    assert_eq!(status, 200);
    let (status, v) = s.delete("/environments/qa").await;
    assert_eq!((status, v["deleted"].clone()), (200, json!(true)), "{v}");
    let (status, v) = s.get("/environments/qa").await;
    assert_eq!((status, code(&v)), (404, "ENVIRONMENT_NOT_FOUND"));
    let (status, _) = s.delete("/environments/qa").await;
    assert_eq!(status, 404);
    // One the file declares and no fraise uses can go too.
    let (status, v) = s.delete("/environments/sandbox").await;
    assert_eq!(status, 200, "{v}");
    // Made again, it starts afresh: its lock went with it.
    let (status, v) = s.post("/environments", json!({ "name": "qa" })).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["required_approvals"], 0);
    let (_, v) = s.get("/environments/qa").await;
    assert_eq!(v["lock"], Value::Null, "{v}");

    // Seed 003's PUT …/config takes the same settings and answers the configuration.
    let (status, v) = s
        .put_json(
            "/environments/staging/config",
            json!({ "config": { "deploymentTimeout": "2m" }, "isProduction": false }),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["deployment_timeout_seconds"], 120, "{v}");
    assert_eq!(v["defined_in"], "file_and_api", "{v}");
    assert!(v["required_roles"].is_array(), "{v}");
    assert_eq!(
        s.get("/environments/staging").await.1["config"]["deployment_timeout"],
        120
    );

    // A restart: the store's changes hold over the file's (production says 1 there).
    s.kill9();
    s.restart().await;
    assert_eq!(names(&s).await, ["qa", "staging", "production"]);
    let (_, prod) = s.get("/environments/production").await;
    assert_eq!(prod["required_approvals"], 2, "{prod}");
    assert_eq!(prod["promotion_policy"], "sequential");
    assert_eq!(prod["description"], "live");
    assert_eq!(prod["defined_in"], "file_and_api");

    // Who may: a developer reads, and may not create, change or delete.
    let dev = user_token(&s, "dev", &["developer"]).await;
    for (method, path, body) in [
        ("POST", "/environments", Some(json!({ "name": "dev2" }))),
        ("PUT", "/environments/qa", Some(json!({ "orderIndex": 9 }))),
        ("DELETE", "/environments/qa", None),
        (
            "PUT",
            "/environments/staging/variables",
            Some(json!({ "X": "1" })),
        ),
    ] {
        let mut r = s
            .http
            .request(method.parse().unwrap(), format!("{}{path}", s.url))
            .bearer_auth(&dev);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 403, "{method} {path}");
    }
    let (_, v) = s.get("/environments/qa").await;
    assert_eq!(v["order_index"], 2, "unchanged by the refused update: {v}");

    // Every change is in the audit trail.
    let (_, audit) = s.get("/audit?limit=200").await;
    let actions: Vec<&str> = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in [
        "environment.create",
        "environment.update",
        "environment.delete",
    ] {
        assert!(actions.contains(&a), "{a} not audited: {actions:?}");
    }
}

#[tokio::test]
async fn an_environments_variables_reach_every_fraise_there_below_its_own() {
    let ws = Workspace::new();
    ws.release("1.0.0", &[]);
    let (port, staging_port, web_port) = (free_port(), free_port(), free_port());
    let s = Server::start(&ws, &yaml(&ws, port, staging_port, web_port)).await;
    let path = "/environments/staging/variables";

    // Nothing runs there yet: recorded, for the first deploy.
    let (status, v) = s.put_json(path, json!({ "GREETING": "hello" })).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["changed"], json!(["GREETING"]));
    assert_eq!(v["deployments"], json!([]));
    let (status, v) = s.get(path).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["variables"][0]["name"], "GREETING");
    assert_eq!(v["variables"][0]["value"], "hello");
    assert_eq!(v["variables"][0]["updated_by"], "admin");
    let run = s
        .deploy("app", "staging", json!({ "version": "1.0.0" }))
        .await;
    let done = s.wait_run(&run, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "success", "{done:#}");
    assert_eq!(shown(staging_port).await["GREETING"], "hello");
    assert_eq!(shown(staging_port).await["LEVEL"], "from-yaml");
    let run = s
        .deploy("web", "staging", json!({ "version": "1.0.0" }))
        .await;
    let done = s.wait_run(&run, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "success", "{done:#}");

    // Set under load: one config run per fraise there rolls it out, no request fails; the
    // environment's value holds over the file's.
    let load = Load::start(staging_port, 4);
    let (status, v) = s
        .put_json(
            path,
            json!({ "GREETING": "bonjour", "LEVEL": "from-environment" }),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["changed"], json!(["GREETING", "LEVEL"]));
    let deployments = v["deployments"].as_array().unwrap();
    let fraises: Vec<&str> = deployments
        .iter()
        .map(|d| d["fraise"].as_str().unwrap())
        .collect();
    assert_eq!(fraises, ["app", "web"], "one config run per fraise: {v}");
    for d in deployments {
        assert_eq!(d["type"], "config");
        let done = s
            .wait_run(d["id"].as_str().unwrap(), Duration::from_secs(60))
            .await;
        assert_eq!(done["status"], "success", "{done:#}");
    }
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(shown(staging_port).await["GREETING"], "bonjour");
    assert_eq!(shown(staging_port).await["LEVEL"], "from-environment");
    assert_eq!(shown(web_port).await["GREETING"], "bonjour");

    // The fraise's own variable wins over the environment's.
    let (status, v) = s
        .put_json("/deployments/app@staging/env", json!({ "GREETING": "hi" }))
        .await;
    assert_eq!(status, 202, "{v}");
    let done = s
        .wait_run(
            v["deployment"]["id"].as_str().unwrap(),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(done["status"], "success", "{done:#}");
    assert_eq!(shown(staging_port).await["GREETING"], "hi");

    // Removing one, and bad input.
    let (status, v) = s.put_json(path, json!({ "LEVEL": null })).await;
    assert_eq!(status, 202, "{v}");
    for d in v["deployments"].as_array().unwrap() {
        let done = s
            .wait_run(d["id"].as_str().unwrap(), Duration::from_secs(60))
            .await;
        assert_eq!(done["status"], "success", "{done:#}");
    }
    assert_eq!(shown(staging_port).await["LEVEL"], "from-yaml");
    for (body, status, field) in [
        (json!({ "1BAD": "x" }), 400, Some("1BAD")),
        (json!({ "X": 5 }), 400, Some("X")),
        (json!({ "FRAISIER_X": "x" }), 400, Some("FRAISIER_X")),
    ] {
        let (got, v) = s.put_json(path, body.clone()).await;
        assert_eq!(got, status, "{body}: {v}");
        assert_eq!(
            v["error"]["details"]["field"].as_str(),
            field,
            "{body}: {v}"
        );
    }
    let (status, v) = s.get("/environments/nowhere/variables").await;
    assert_eq!((status, code(&v)), (404, "ENVIRONMENT_NOT_FOUND"));
    // A locked environment refuses them.
    s.post("/environments/staging/lock", json!({ "reason": "release" }))
        .await;
    let (status, v) = s.put_json(path, json!({ "X": "1" })).await;
    assert_eq!((status, code(&v)), (422, "ENVIRONMENT_LOCKED"), "{v}");
    s.post("/environments/staging/unlock", json!({})).await;

    // The CLI: make, show, change, list, set a variable, delete.
    let out = cli(
        &s,
        &[
            "environment",
            "create",
            "perf",
            "--display-name",
            "Performance",
            "--order",
            "3",
            "--deployment-timeout",
            "10m",
            "--promotion-policy",
            "sequential",
        ],
    );
    assert!(out.contains("Performance"), "{out}");
    assert!(out.contains("600s"), "{out}");
    let out = cli(
        &s,
        &["environment", "update", "perf", "--required-approvals", "1"],
    );
    assert!(
        out.lines()
            .any(|l| l.contains("required approvals") && l.trim_end().ends_with(" 1")),
        "{out}"
    );
    let out = cli(&s, &["environment", "show", "perf"]);
    assert!(out.contains("sequential") && out.contains("api"), "{out}");
    let out = cli(&s, &["environment", "list"]);
    assert!(out.contains("perf") && out.contains("DEFINED IN"), "{out}");
    let out = cli(&s, &["environment", "variables", "perf", "A=1", "B=2"]);
    assert!(out.contains("A, B changed"), "{out}");
    let out = cli(&s, &["environment", "variables", "perf"]);
    assert!(out.contains("A=1") && out.contains("B=2"), "{out}");
    cli(&s, &["environment", "delete", "perf"]);
    let (status, _) = s.get("/environments/perf").await;
    assert_eq!(status, 404);
    // Its variables went with it.
    let (status, v) = s.post("/environments", json!({ "name": "perf" })).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        s.get("/environments/perf/variables").await.1["variables"],
        json!([])
    );
}
