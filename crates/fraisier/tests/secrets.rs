//! Secrets and environment variables as releases, against the real binary: sealed at rest and
//! in the agent's files, injected into instances, redacted from hook output, rolled out by a
//! `config` run with no failed request, put back when that run fails, and still opened after
//! the key is rotated — from the API and the CLI.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const SECRET: &str = "hunter2-correct-horse";
const TOKEN: &str = "tok-5f1e2d3c4b";

fn yaml(ws: &Workspace, port: u16) -> String {
    format!(
        r#"
server:
  listen: "127.0.0.1:0"
  data_dir: "{data}"
  rate_limits: off
roles:
  keeper: {{ permissions: ["secret:*", "deployment:read"], environments: [staging] }}
environments:
  production: {{}}
  staging: {{}}
fraises:
  app:
    command: "exec {demo}"
    artifact_path: "{releases}/{{version}}"
    health_check: {{ type: http, path: /health, interval: 100ms, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 2 }}
    drain_timeout: 2s
    stop_grace: 2s
    env: {{ DEMO_SHOW: "DB_PASSWORD,API_TOKEN,GREETING,FROM_YAML", FROM_YAML: yaml }}
    pre_deploy_hooks: ["echo connecting with $DB_PASSWORD"]
    environments:
      production: {{ port: {port}, instances: 2, strategy: rolling, strategy_config: {{ health_check_timeout: 3s }} }}
"#,
        data = ws.data_dir().display(),
        demo = demo_bin().display(),
        releases = ws.path().join("releases").display(),
    )
}

async fn put(s: &Server, path: &str, body: Value) -> (u16, Value, Option<String>) {
    let r = s
        .http
        .put(format!("{}{}", s.url, path))
        .bearer_auth(&s.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    (status, r.json().await.unwrap_or(Value::Null), location)
}

/// What the demo app answers through the router.
async fn served(port: u16) -> Value {
    reqwest::get(format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// What the instances were started with, as the demo app shows it.
async fn shown(port: u16) -> Value {
    served(port).await["env"].clone()
}

/// The config run a change started: checked, then waited for.
async fn config_run(s: &Server, v: &Value, location: Option<String>) -> Value {
    let d = &v["deployment"];
    assert_eq!(d["type"], "config", "{v}");
    assert_eq!(d["version"], "1.0.0", "a config run keeps the version: {v}");
    let id = d["id"].as_str().unwrap();
    assert_eq!(
        location.as_deref(),
        Some(&*format!("/api/v1/deployments/{id}"))
    );
    s.wait_run(id, Duration::from_secs(60)).await
}

/// Files under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    found.push(p.display().to_string());
                }
            }
        }
    }
    found
}

fn cli(s: &Server, args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(fraisier_bin())
        .args(["--server", &s.url])
        .args(args)
        .env("FRAISIER_TOKEN", &s.token)
        .env("HOME", s.data_dir.parent().unwrap())
        .env_remove("FRAISIER_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "fraisier {args:?}: exit {:?}: {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn secrets_and_env_are_released_like_versions() {
    let ws = Workspace::new();
    ws.release("1.0.0", &[]);
    let port = free_port();
    let s = Server::start(&ws, &yaml(&ws, port)).await;
    let secrets = "/deployments/app@production/secrets";
    let env = "/deployments/app@production/env";

    // Before the first deploy: recorded, nothing to roll out yet.
    let (status, v, _) = put(&s, secrets, json!({ "DB_PASSWORD": SECRET })).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["changed"], json!(["DB_PASSWORD"]));
    assert!(v.get("deployment").is_none(), "{v}");
    let (status, v) = s.get(secrets).await;
    assert_eq!(status, 200);
    assert_eq!(v["secrets"][0]["name"], "DB_PASSWORD");
    assert_eq!(v["secrets"][0]["value"], "********");
    assert_eq!(v["secrets"][0]["updated_by"], "admin");
    assert!(!v.to_string().contains(SECRET));

    // Bad input names its field and changes nothing.
    for (path, body, code, field) in [
        (secrets, json!({"1BAD": "x"}), 400, "1BAD"),
        (secrets, json!({"PORT": "x"}), 400, "PORT"),
        (secrets, json!({"X": 5}), 400, "X"),
        (env, json!({"DB_PASSWORD": "plain"}), 409, "DB_PASSWORD"),
    ] {
        let (status, v, _) = put(&s, path, body.clone()).await;
        assert_eq!(status, code, "{body}: {v}");
        assert_eq!(v["error"]["details"]["field"], field, "{body}: {v}");
    }
    assert_eq!(s.get(env).await.1["env"], json!([]));
    assert_eq!(s.get(env).await.1["configured"]["FROM_YAML"], "yaml");

    // The first deploy takes the secret; the hook's output hides it.
    let run = s
        .deploy("app", "production", json!({"version": "1.0.0"}))
        .await;
    let done = s.wait_run(&run, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "success", "{done:#}");
    assert_eq!(shown(port).await["DB_PASSWORD"], SECRET);
    assert_eq!(shown(port).await["FROM_YAML"], "yaml");
    let (_, logs) = s.get(&format!("/deployments/{run}/logs?lines=1000")).await;
    let text = logs.to_string();
    assert!(
        text.contains("connecting with [secret DB_PASSWORD]"),
        "{logs:#}"
    );
    assert!(!text.contains(SECRET));

    // A variable set under load: a config run rolls it out, no request fails.
    let load = Load::start(port, 4);
    let (status, v, location) = put(&s, env, json!({ "GREETING": "hello" })).await;
    assert_eq!(status, 202, "{v}");
    let done = config_run(&s, &v, location).await;
    assert_eq!(done["status"], "success", "{done:#}");
    assert_eq!(shown(port).await["GREETING"], "hello");
    assert_eq!(shown(port).await["DB_PASSWORD"], SECRET);

    // A change the instances do not survive is rolled back, and not kept.
    let (status, v, location) = put(&s, env, json!({ "DEMO_HEALTHY": "false" })).await;
    assert_eq!(status, 202, "{v}");
    let done = config_run(&s, &v, location).await;
    assert_eq!(done["status"], "failed", "{done:#}");
    let (_, now) = s.get(env).await;
    let names: Vec<&str> = now["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["GREETING"], "{now}");
    assert_eq!(shown(port).await["GREETING"], "hello");
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(report.ok > 50, "{report:?}");

    // The same value again is no change: no run.
    let (status, v, _) = put(&s, secrets, json!({ "DB_PASSWORD": SECRET })).await;
    assert_eq!((status, v["changed"].clone()), (200, json!([])), "{v}");

    // A new key: stored secrets are re-sealed, and the agent opens both old and new.
    let (status, v) = s.post("/secrets/keys/rotate", json!({})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["resealed"], 1);
    assert_eq!(v["key_ids"].as_array().unwrap().len(), 2);
    let out = cli(
        &s,
        &["secret", "set", "app", "production", "API_TOKEN", "--wait"],
        &format!("{TOKEN}\n"),
    );
    assert!(out.contains("SUCCESS"), "{out}");
    assert_eq!(shown(port).await["API_TOKEN"], TOKEN);
    assert_eq!(shown(port).await["DB_PASSWORD"], SECRET);
    let listed = cli(&s, &["secret", "list", "app", "production"], "");
    assert!(
        listed.contains("API_TOKEN") && listed.contains("********"),
        "{listed}"
    );
    assert!(!listed.contains(TOKEN));

    // Unset: the next instances are started without it.
    let out = cli(
        &s,
        &[
            "secret",
            "unset",
            "app",
            "production",
            "API_TOKEN",
            "--wait",
        ],
        "",
    );
    assert!(out.contains("SUCCESS"), "{out}");
    assert!(shown(port).await.get("API_TOKEN").is_none());

    // A rollback takes today's secrets with the older code: a replaced password stays replaced.
    ws.release("2.0.0", &[]);
    let run = s
        .deploy("app", "production", json!({"version": "2.0.0"}))
        .await;
    assert_eq!(
        s.wait_run(&run, Duration::from_secs(60)).await["status"],
        "success"
    );
    let (status, v, location) =
        put(&s, secrets, json!({ "DB_PASSWORD": "rotated-after-leak" })).await;
    assert_eq!(status, 202, "{v}");
    let d = &v["deployment"];
    assert_eq!(
        (d["type"].as_str(), d["version"].as_str()),
        (Some("config"), Some("2.0.0"))
    );
    assert_eq!(
        location.as_deref(),
        Some(&*format!(
            "/api/v1/deployments/{}",
            d["id"].as_str().unwrap()
        ))
    );
    let done = s
        .wait_run(d["id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    assert_eq!(done["status"], "success", "{done:#}");
    let (status, v) = s
        .post(
            "/deployments/app/production/rollback",
            json!({ "to_version": "1.0.0" }),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let done = s
        .wait_run(v["id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    assert_eq!(done["status"], "success", "{done:#}");
    let served = served(port).await;
    assert_eq!(served["version"], "1.0.0");
    assert_eq!(served["env"]["DB_PASSWORD"], "rotated-after-leak");

    // Who may change secrets where: a role scoped to staging is refused in production.
    let (status, v) = s
        .post(
            "/users",
            json!({"username": "kim", "password": "kim-password-1", "roles": ["keeper"]}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let (_, t) = s
        .post(
            "/auth/token",
            json!({"username": "kim", "password": "kim-password-1"}),
        )
        .await;
    let kim = t["access_token"].as_str().unwrap();
    let r = s
        .http
        .put(format!("{}{secrets}", s.url))
        .bearer_auth(kim)
        .json(&json!({"DB_PASSWORD": "mine"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "PERMISSION_DENIED");
    assert_eq!(v["error"]["details"]["environment"], "production", "{v}");
    assert_eq!(v["error"]["details"]["permission"], "secret:update", "{v}");

    // Nowhere on disk in clear: not the store, not the agent's desired states or records.
    for needle in [SECRET, TOKEN, "rotated-after-leak"] {
        let found = files_containing(&s.data_dir, needle);
        assert!(found.is_empty(), "{needle} in clear in {found:?}");
    }
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(s.data_dir.join("secret-keys.json"))
            .unwrap()
            .permissions()
            .mode()
    };
    assert_eq!(mode & 0o777, 0o600);
}
