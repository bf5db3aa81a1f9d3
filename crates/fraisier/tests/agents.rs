//! Agents joining a server: join tokens, registration, heartbeats, offline detection, drain,
//! labels, revocation — through the real binary, an agent started as on another host.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

async fn wait_for(s: &Server, agent: &str, what: impl Fn(&Value) -> bool) -> Value {
    wait_get(s, &format!("/agents/{agent}"), what).await
}

/// Waits until a listing names exactly these agents (heartbeats are late on a loaded host).
async fn wait_list(s: &Server, path: &str, names: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = s.get(path).await;
        let got: Vec<&str> = v["agents"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x["name"].as_str()).collect())
            .unwrap_or_default();
        if got == names {
            return v;
        }
        assert!(Instant::now() < deadline, "{path}: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn call(
    s: &Server,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = s.http.request(method, format!("{}{path}", s.url));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn yaml(ws: &Workspace) -> String {
    config_yaml(ws, free_port(), 1, "rolling", "").replace(
        "  rate_limits: off\n",
        "  rate_limits: off\n  agent_heartbeat_interval: 200ms\n  agent_offline_after: 3s\n",
    )
}

#[tokio::test]
async fn agents_join_report_drain_and_are_revoked() {
    let ws = Workspace::new();
    let s = Server::start(&ws, &yaml(&ws)).await;

    // The server's own agent is the first agent, and reports like any other.
    let local = wait_for(&s, "local", |v| {
        v["status"] == "online" && v["host"]["cpus"].as_u64() >= Some(1)
    })
    .await;
    assert_eq!(local["local"], true, "{local}");
    assert!(local["host"]["cpus"].as_u64().unwrap() >= 1, "{local}");
    assert!(!local["host"]["hostname"].as_str().unwrap().is_empty());

    // Join tokens: bad requests change nothing.
    for (body, field) in [
        (json!({"uses": 0}), "uses"),
        (json!({"expires_in": "30d"}), "expires_in"),
        (json!({"expires_in": "900h"}), "expires_in"),
        (json!({"colour": 1}), "colour"),
    ] {
        let (status, v) = s.post("/agents/join-tokens", body.clone()).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["details"]["field"], field, "{body}: {v}");
    }
    let (status, t) = s
        .post(
            "/agents/join-tokens",
            json!({"uses": 2, "expiresIn": "10m"}),
        )
        .await;
    assert_eq!(status, 201, "{t}");
    let token = t["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("fjt_"), "{t}");
    assert_eq!(t["uses"], 2);

    // A viewer sees agents but makes no tokens and changes none.
    let viewer = user_token(&s, "vera", &["viewer"]).await;
    let bearer = format!("Bearer {viewer}");
    let (status, _) = call(
        &s,
        reqwest::Method::GET,
        "/agents",
        &[("authorization", &bearer)],
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, v) = call(
        &s,
        reqwest::Method::POST,
        "/agents/join-tokens",
        &[("authorization", &bearer)],
        Some(json!({})),
    )
    .await;
    assert_eq!(
        (status, v["error"]["details"]["permission"].clone()),
        (403, json!("agent:create")),
        "{v}"
    );

    // An agent as on another host joins with the token, its name and labels.
    let dir = ws.path().join("web-1");
    let mut agent = AgentProcess::start(
        &s.url,
        &dir,
        &[
            "--join-token",
            &token,
            "--name",
            "web-1",
            "--labels",
            "role=web,zone=a",
        ],
    );
    let web1 = wait_for(&s, "web-1", |v| v["status"] == "online").await;
    assert_eq!(
        web1["labels"],
        json!({"role": "web", "zone": "a"}),
        "{web1}"
    );
    assert_eq!(web1["local"], false);
    assert!(web1["capabilities"]
        .as_array()
        .unwrap()
        .contains(&json!("process")));
    let id = web1["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("agt_"), "{web1}");
    assert_eq!(s.get(&format!("/agents/{id}")).await.1["name"], "web-1");
    // It keeps its credential, readable by it alone; the server keeps digests only.
    // Registered before the answer reaches it: the agent writes its membership just after.
    let kept = dir.join("membership.json");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !kept.exists() {
        assert!(Instant::now() < deadline, "no {}", kept.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&kept).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let credential = serde_json::from_str::<Value>(&std::fs::read_to_string(&kept).unwrap())
        .unwrap()["credential"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(credential.starts_with("fag_"));
    for secret in [&token, &credential] {
        assert!(
            files_containing(&s.data_dir, secret.as_bytes()).is_empty(),
            "a secret is in clear in the server's data dir"
        );
    }

    // Registrations the server refuses.
    let register = |token: &str, name: &str| json!({"join_token": token, "name": name, "labels": {}, "version": "t"});
    let (status, v) = s.post("/agents/register", register(&token, "web-1")).await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (409, json!("AGENT_NAME_TAKEN")),
        "{v}"
    );
    let (status, v) = s
        .post("/agents/register", register("fjt_nope", "web-9"))
        .await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (401, json!("INVALID_JOIN_TOKEN")),
        "{v}"
    );
    let (status, v) = s.post("/agents/register", register(&token, "local")).await;
    assert_eq!(
        (status, v["error"]["details"]["field"].clone()),
        (400, json!("name")),
        "{v}"
    );
    let (status, v) = s
        .post(
            "/agents/register",
            json!({"join_token": token, "name": "web-9", "labels": {"bad key": "x"}}),
        )
        .await;
    assert_eq!(
        (status, v["error"]["details"]["field"].clone()),
        (400, json!("labels")),
        "{v}"
    );
    // The refusals spent nothing: the second use admits web-2, and then the token is spent.
    let (status, m) = s.post("/agents/register", register(&token, "web-2")).await;
    assert_eq!(status, 201, "{m}");
    let web2_id = m["id"].as_str().unwrap().to_string();
    let web2_credential = m["credential"].as_str().unwrap().to_string();
    let (status, v) = s.post("/agents/register", register(&token, "web-3")).await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (401, json!("INVALID_JOIN_TOKEN")),
        "{v}"
    );

    // An agent's credential reports for its own agent, and opens nothing else.
    let agent_header = [("x-agent-token", web2_credential.as_str())];
    let beat = json!({"version": "t", "services": 0, "instances": 0});
    let (status, ack) = call(
        &s,
        reqwest::Method::POST,
        &format!("/agents/{web2_id}/heartbeat"),
        &agent_header,
        Some(beat.clone()),
    )
    .await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["heartbeat_interval_ms"], 200);
    assert_eq!(ack["status"], "online");
    let (status, _) = call(
        &s,
        reqwest::Method::POST,
        &format!("/agents/{id}/heartbeat"),
        &agent_header,
        Some(beat.clone()),
    )
    .await;
    assert_eq!(status, 403, "an agent reported for another");
    for path in [
        "/agents",
        "/artifacts",
        "/artifacts/signing-key",
        "/deployments",
    ] {
        let (status, _) = call(&s, reqwest::Method::GET, path, &agent_header, None).await;
        assert_eq!(status, 403, "an agent credential opened {path}");
    }
    let (status, _) = s
        .post(&format!("/agents/{web2_id}/heartbeat"), beat.clone())
        .await;
    assert_eq!(status, 403, "a user's token reported as an agent");
    let (status, _) = call(
        &s,
        reqwest::Method::POST,
        &format!("/agents/{web2_id}/heartbeat"),
        &[("x-agent-token", "fag_forged")],
        Some(beat.clone()),
    )
    .await;
    assert_eq!(status, 401);

    // web-2 says no more: offline once offline_after passes; web-1 stays online.
    wait_for(&s, &web2_id, |v| v["status"] == "offline").await;
    let offline = wait_list(&s, "/agents?status=offline", &["web-2"]).await;
    assert_eq!(offline["total"], 1, "{offline}");
    assert_eq!(s.get("/agents?status=sleeping").await.0, 400);

    // Operators drain and relabel; the agent's heartbeats never undo it.
    let (status, v) = s
        .put_json("/agents/web-1", json!({"status": "draining"}))
        .await;
    assert_eq!(
        (status, v["status"].clone()),
        (200, json!("draining")),
        "{v}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.get("/agents/web-1").await.1["status"], "draining");
    let (status, v) = s
        .put_json("/agents/web-1", json!({"status": "offline"}))
        .await;
    assert_eq!(
        (status, v["error"]["details"]["field"].clone()),
        (400, json!("status")),
        "{v}"
    );
    let (status, v) = s
        .put_json(
            "/agents/web-1",
            json!({"labels": {"zoneName": "b", "role": "web"}}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["labels"],
        json!({"role": "web", "zoneName": "b"}),
        "user keys are kept as sent"
    );
    let text = cli(&s, &["agent", "resume", "web-1"]);
    assert!(text.contains("online"), "{text}");
    let text = cli(&s, &["agent", "list"]);
    assert!(
        text.contains("web-1") && text.contains("local") && text.contains("offline"),
        "{text}"
    );
    let token2 = cli(&s, &["agent", "join-token", "--expires-in", "5m"]);
    assert!(token2.trim_start().starts_with("fjt_"), "{token2}");

    // A restarted agent keeps its membership: same id, no second registration.
    agent.terminate();
    let agent = AgentProcess::start(&s.url, &dir, &[]);
    let again = wait_for(&s, "web-1", |v| {
        v["status"] == "online" && v["last_heartbeat_at"] != web1["last_heartbeat_at"]
    })
    .await;
    assert_eq!(again["id"], web1["id"]);
    assert_eq!(s.get("/agents").await.1["total"], 3, "local, web-1, web-2");
    agent.wait_log("already a member").await;

    // The local agent stays; a revoked agent is refused at once and its name is free again.
    let (status, v) = s.delete("/agents/local").await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (409, json!("AGENT_IS_LOCAL")),
        "{v}"
    );
    let (status, _) = s.delete(&format!("/agents/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(s.get("/agents/web-1").await.0, 404);
    assert_eq!(s.delete(&format!("/agents/{id}")).await.0, 404);
    agent.wait_log("refuses this agent's credential").await;
    let (status, _) = call(
        &s,
        reqwest::Method::POST,
        &format!("/agents/{web2_id}/heartbeat"),
        &agent_header,
        Some(beat),
    )
    .await;
    assert_eq!(status, 200, "revoking one agent left the others alone");
    let (status, t) = s.post("/agents/join-tokens", json!({})).await;
    assert_eq!(status, 201);
    let (status, v) = s
        .post(
            "/agents/register",
            register(t["token"].as_str().unwrap(), "web-1"),
        )
        .await;
    assert_eq!(status, 201, "the name of a revoked agent is free: {v}");

    // Every change is in the audit trail, with who made it.
    let (_, audit) = s.get("/audit?limit=200").await;
    let actions: Vec<&str> = audit["audit"]
        .as_array()
        .expect("an audit list")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in [
        "agent.join_token",
        "agent.register",
        "agent.update",
        "agent.revoke",
    ] {
        assert!(actions.contains(&a), "{a} not audited: {actions:?}");
    }
}

#[tokio::test]
async fn an_agent_without_a_token_or_with_a_bad_one_says_why() {
    let ws = Workspace::new();
    let s = Server::start(&ws, &yaml(&ws)).await;
    let out = Command::new(fraisier_bin())
        .args(["agent", "--server", &s.url, "--state-dir"])
        .arg(ws.path().join("a"))
        .args(["--name", "web-1"])
        .env_remove("FRAISIER_CONFIG")
        .env_remove("FRAISIER_JOIN_TOKEN")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(text.contains("--join-token"), "{text}");
    let out = Command::new(fraisier_bin())
        .args(["agent", "--server", &s.url, "--state-dir"])
        .arg(ws.path().join("b"))
        .args(["--name", "web-1", "--join-token", "fjt_wrong"])
        .env_remove("FRAISIER_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("401") && text.contains("join token"),
        "{text}"
    );
    assert!(!ws.path().join("b/membership.json").exists());
    let elsewhere = ws.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let out = Command::new(fraisier_bin())
        .args(["agent", "--server", &s.url])
        .env_remove("FRAISIER_CONFIG")
        .current_dir(&elsewhere)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--state-dir"));
}

/// Agents are not held to the people's rate limits: with three writes an hour allowed, they
/// keep heartbeating and stay online.
#[tokio::test]
async fn agents_heartbeat_past_the_peoples_rate_limits() {
    let ws = Workspace::new();
    let yaml = yaml(&ws).replace(
        "  rate_limits: off\n",
        "  rate_limits: { write: 3/h, authenticated: 1000/h, read: 2000/h }\n",
    );
    assert!(yaml.contains("write: 3/h"), "{yaml}");
    let s = Server::start(&ws, &yaml).await;
    let (status, t) = s.post("/agents/join-tokens", json!({})).await;
    assert_eq!(status, 201, "{t}");
    let (status, m) = s
        .post(
            "/agents/register",
            json!({"join_token": t["token"], "name": "web-1"}),
        )
        .await;
    assert_eq!(status, 201, "{m}");
    let id = m["id"].as_str().unwrap();
    let credential = m["credential"].as_str().unwrap();
    for n in 0..10 {
        let (status, v) = call(
            &s,
            reqwest::Method::POST,
            &format!("/agents/{id}/heartbeat"),
            &[("x-agent-token", credential)],
            Some(json!({"version": "t"})),
        )
        .await;
        assert_eq!(status, 200, "heartbeat {n}: {v}");
    }
    // The local agent reports every 200 ms: far more than three writes, and it stays online.
    wait_for(&s, "local", |v| v["status"] == "online").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(s.get("/agents/local").await.1["status"], "online");
    // People are still held to theirs.
    let mut limited = false;
    for _ in 0..5 {
        let (status, _) = s.post("/agents/join-tokens", json!({})).await;
        limited |= status == 429;
    }
    assert!(limited, "the admin's writes were not limited");
}
