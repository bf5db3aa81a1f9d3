//! Two agents, each in its own network namespace with its own address (ip netns, veth), as
//! on two hosts: one fraise placed on both by labels, deployed with each strategy under load
//! through both routers with zero failed requests; one agent cut off (link down) and brought
//! back; the server restarted while the agents keep serving.
//!
//! Needs root and iproute2 (`.ci/run` installs it); it creates its namespaces and links under
//! names of its own and removes them however it ends.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A network namespace joined to this one by a veth pair: `host_ip` here, `ip` there.
struct Netns {
    name: String,
    host_if: String,
    host_ip: String,
    ip: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {} (this test needs root and iproute2)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    fn new(index: u32) -> Netns {
        // Unique per test process: nextest runs each test in a process of its own.
        let tag = std::process::id() % 50_000;
        let name = format!("fr{tag}n{index}");
        let host_if = format!("fr{tag}h{index}");
        let peer = format!("fr{tag}p{index}");
        let net = format!("10.{}.{}", 100 + index, tag % 250);
        let ns = Netns {
            name: name.clone(),
            host_if: host_if.clone(),
            host_ip: format!("{net}.1"),
            ip: format!("{net}.2"),
        };
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", ns.host_ip),
            "dev",
            &host_if,
        ]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "netns",
            "exec",
            &name,
            "ip",
            "addr",
            "add",
            &format!("{}/24", ns.ip),
            "dev",
            &peer,
        ]);
        ip(&["netns", "exec", &name, "ip", "link", "set", &peer, "up"]);
        ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"]);
        ns
    }

    fn link(&self, up: bool) {
        ip(&["link", "set", &self.host_if, if up { "up" } else { "down" }]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

async fn version_at(addr: &str) -> Option<String> {
    let r = reqwest::get(format!("http://{addr}/")).await.ok()?;
    let v: Value = r.json().await.ok()?;
    v["version"].as_str().map(str::to_string)
}

#[tokio::test]
async fn one_fraise_on_two_hosts_under_every_strategy_and_every_mishap() {
    let a = Netns::new(1);
    let b = Netns::new(2);
    let ws = Workspace::new();
    for v in [
        "1.0.0", "2.0.0", "3.0.0", "4.0.0", "5.0.0", "6.0.0", "7.0.0", "8.0.0",
    ] {
        ws.release(v, &[]);
    }
    let port = free_port();
    let api = free_port();
    let yaml = config_yaml(&ws, port, 2, "rolling", "")
        .replace("listen: \"127.0.0.1:0\"", &format!("listen: \"0.0.0.0:{api}\""))
        .replace(
            "  rate_limits: off\n",
            "  rate_limits: off\n  agent_heartbeat_interval: 200ms\n  agent_offline_after: 2s\n",
        )
        .replace(
            &format!("production: {{ port: {port}, instances: 2, strategy: rolling }}"),
            &format!(
                "production: {{ port: {port}, instances: 2, strategy: rolling, targets: {{ labels: {{ role: web }} }},\n        strategy_defaults: {{ canary: {{ steps: [{{ weight: 50, pause: 1s }}], analysis: {{ min_requests: 10 }} }}, blue_green: {{ scale_down_delay: 0s }} }} }}"
            ),
        );
    assert!(
        yaml.contains("role: web") && yaml.contains("0.0.0.0"),
        "{yaml}"
    );
    let mut s = Server::start(&ws, &yaml).await;

    let (_, t) = s.post("/agents/join-tokens", json!({"uses": 2})).await;
    let token = t["token"].as_str().unwrap().to_string();
    let (dir_a, dir_b) = (ws.path().join("web-a"), ws.path().join("web-b"));
    let url_a = format!("http://{}:{api}", a.host_ip);
    let url_b = format!("http://{}:{api}", b.host_ip);
    let _agent_a = AgentProcess::start_in(
        Some(&a.name),
        &url_a,
        &dir_a,
        &[
            "--join-token",
            &token,
            "--name",
            "web-a",
            "--labels",
            "role=web",
        ],
    );
    let mut agent_b = AgentProcess::start_in(
        Some(&b.name),
        &url_b,
        &dir_b,
        &[
            "--join-token",
            &token,
            "--name",
            "web-b",
            "--labels",
            "role=web,zone=b",
        ],
    );
    for name in ["web-a", "web-b"] {
        let v = wait_get(&s, &format!("/agents/{name}"), |v| v["status"] == "online").await;
        assert_eq!(v["host"]["os"], "linux");
    }
    // Each task stream is up before the first deploy (a stream still dialling is a blip).
    tokio::time::sleep(Duration::from_millis(800)).await;

    let run = s
        .deploy("app", "production", json!({"version": "1.0.0"}))
        .await;
    let v = s.wait_run(&run, Duration::from_secs(60)).await;
    assert_eq!(v["status"], "success", "{v}");
    let (at_a, at_b) = (format!("{}:{port}", a.ip), format!("{}:{port}", b.ip));
    assert_eq!(version_at(&at_a).await.as_deref(), Some("1.0.0"));
    assert_eq!(version_at(&at_b).await.as_deref(), Some("1.0.0"));
    assert_eq!(instance_pids(&dir_a).len(), 2, "instances is per target");
    assert_eq!(instance_pids(&dir_b).len(), 2);

    // Every strategy, under load through both routers: nothing fails.
    for (version, strategy) in [
        ("2.0.0", "rolling"),
        ("3.0.0", "blue_green"),
        ("4.0.0", "canary"),
        ("5.0.0", "recreate"),
    ] {
        let loads = [Load::start_at(&at_a, 3), Load::start_at(&at_b, 3)];
        tokio::time::sleep(Duration::from_millis(300)).await;
        let run = s
            .deploy(
                "app",
                "production",
                json!({"version": version, "strategy": strategy}),
            )
            .await;
        let v = s.wait_run(&run, Duration::from_secs(90)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        for (load, host) in loads.into_iter().zip(["web-a", "web-b"]) {
            let r = load.stop().await;
            assert!(r.ok > 50, "{strategy} on {host}: {r:?}");
            if strategy != "recreate" {
                assert_eq!(r.failed, 0, "{strategy} on {host}: {:?}", r.errors);
            }
            assert!(
                r.versions.contains_key(version),
                "{strategy} on {host}: {r:?}"
            );
        }
        assert_eq!(v["status"], "success", "{strategy}: {v}");
        assert_eq!(version_at(&at_a).await.as_deref(), Some(version));
        assert_eq!(version_at(&at_b).await.as_deref(), Some(version));
        assert_eq!(
            instance_pids(&dir_a).len() + instance_pids(&dir_b).len(),
            4,
            "{strategy}"
        );
    }

    // web-b cut off: offline, still serving on its own, and left out of the next deploy,
    // which puts every instance on web-a; back, it is handed its share (none) and stops
    // the old ones: no orphan, no duplicate.
    let before = instance_pids(&dir_b);
    b.link(false);
    wait_get(&s, "/agents/web-b", |v| v["status"] == "offline").await;
    let (_, status) = s.get("/environments/production/status").await;
    assert_eq!(status["provider"]["hosts"], 2, "{status}");
    assert_eq!(status["provider"]["hosts_healthy"], 1, "{status}");
    let run = s
        .deploy("app", "production", json!({"version": "6.0.0"}))
        .await;
    let v = s.wait_run(&run, Duration::from_secs(60)).await;
    assert_eq!(v["status"], "success", "{v}");
    assert_eq!(version_at(&at_a).await.as_deref(), Some("6.0.0"));
    assert_eq!(
        instance_pids(&dir_a).len(),
        2,
        "instances is per target: one target now"
    );
    assert_eq!(
        instance_pids(&dir_b),
        before,
        "the cut-off agent was not touched"
    );
    b.link(true);
    wait_get(&s, "/agents/web-b", |v| v["status"] == "online").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !instance_pids(&dir_b).is_empty() {
        assert!(
            Instant::now() < deadline,
            "web-b kept its old instances: {:?}",
            instance_pids(&dir_b)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The server restarts (kill -9); web-a keeps serving through it; both rejoin it.
    let load = Load::start_at(&at_a, 2);
    s.kill9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.restart().await;
    wait_get(&s, "/agents/web-a", |v| v["status"] == "online").await;
    wait_get(&s, "/agents/web-b", |v| v["status"] == "online").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let run = s
        .deploy("app", "production", json!({"version": "7.0.0"}))
        .await;
    let v = s.wait_run(&run, Duration::from_secs(60)).await;
    assert_eq!(v["status"], "success", "{v}");
    let r = load.stop().await;
    assert_eq!(r.failed, 0, "through the restart: {:?}", r.errors);
    assert_eq!(version_at(&at_a).await.as_deref(), Some("7.0.0"));
    assert_eq!(version_at(&at_b).await.as_deref(), Some("7.0.0"));
    assert_eq!(instance_pids(&dir_a).len(), 2);
    assert_eq!(instance_pids(&dir_b).len(), 2);
    let (_, status) = s.get("/environments/production/status").await;
    assert_eq!(status["provider"]["hosts_healthy"], 2, "{status}");

    // web-b dies during a rolling deploy: the run fails naming it and puts web-a back on
    // 7.0.0 without it; back, web-b is handed 7.0.0 too: no orphan, no duplicate.
    let run = s
        .deploy("app", "production", json!({"version": "8.0.0"}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while version_at(&at_a).await.as_deref() != Some("8.0.0") {
        assert!(Instant::now() < deadline, "web-a never served 8.0.0");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent_b.kill9();
    let v = s.wait_run(&run, Duration::from_secs(90)).await;
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(
        v["error"]["code"], "PROVIDER_ERROR",
        "rolled back, not ROLLBACK_FAILED: {v}"
    );
    assert!(v["error"].to_string().contains("web-b"), "{v}");
    let (_, logs) = s.get(&format!("/deployments/{run}/logs?lines=1000")).await;
    assert!(
        logs.to_string().contains("Restored without web-b"),
        "{logs}"
    );
    assert_eq!(version_at(&at_a).await.as_deref(), Some("7.0.0"));
    assert_eq!(instance_pids(&dir_a).len(), 2);
    let agent_b = AgentProcess::start_in(Some(&b.name), &url_b, &dir_b, &[]);
    wait_get(&s, "/agents/web-b", |v| v["status"] == "online").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pids = instance_pids(&dir_b);
        if version_at(&at_b).await.as_deref() == Some("7.0.0") && pids.len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "web-b did not come back to 7.0.0 with 2 instances: {pids:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(agent_b);
}
