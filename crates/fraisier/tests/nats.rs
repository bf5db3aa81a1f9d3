//! Events on NATS JetStream (`server.nats_url`): every event is published once, in order,
//! on its subject. Recorded while NATS is down, events wait in the store and are published
//! when it comes up; a NATS restart in the middle duplicates and loses nothing. `/health` and
//! the environment's status tell it as it is. The test runs a NATS server of its own
//! (`nats-server`, JetStream on a temp dir), so it can stop and start it.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

struct NatsServer {
    child: Child,
}

impl NatsServer {
    fn start(port: u16, dir: &std::path::Path) -> NatsServer {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (Debian's nats-server package; .ci/run installs it)");
        NatsServer { child }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_health(s: &Server, what: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, h) = s.get("/health").await;
        if what(&h["components"]["nats"]) {
            return h;
        }
        assert!(Instant::now() < deadline, "nats never got there: {h}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every event the API lists for these runs, as (type, deployment id), in order.
async fn api_events(s: &Server, runs: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for id in runs {
        let (_, v) = s.get(&format!("/deployments/{id}/events")).await;
        for e in v["events"].as_array().expect("events") {
            out.push((e["event_type"].as_str().unwrap().to_string(), id.clone()));
        }
    }
    out
}

/// The stream's messages: (subject, type, deployment id), in order.
async fn stream_events(port: u16) -> Vec<(String, String, String)> {
    let client = async_nats::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("FRAISIER_EVENTS").await.unwrap();
    let info = stream.info().await.unwrap().clone();
    let mut out = Vec::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let m = stream.get_raw_message(seq).await.unwrap();
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        out.push((
            m.subject.to_string(),
            v["type"].as_str().unwrap().to_string(),
            v["deployment_id"].as_str().unwrap_or_default().to_string(),
        ));
    }
    out
}

#[tokio::test]
async fn events_reach_jetstream_once_in_order_even_across_outages() {
    let ws = Workspace::new();
    for v in ["1.0.0", "2.0.0", "3.0.0"] {
        ws.release(v, &[]);
    }
    let nats_port = free_port();
    let js_dir = ws.path().join("jetstream");
    let port = free_port();
    let yaml = config_yaml(&ws, port, 1, "rolling", "").replace(
        "  rate_limits: off\n",
        &format!("  rate_limits: off\n  nats_url: \"nats://127.0.0.1:{nats_port}\"\n"),
    );
    let s = Server::start(&ws, &yaml).await;

    // No NATS yet: the server runs, says so, and keeps the events.
    let h = wait_health(&s, |n| n["connected"] == false).await;
    assert_eq!(h["components"]["nats"]["status"], "unhealthy", "{h}");
    assert_eq!(h["status"], "degraded", "{h}");
    let first = s
        .deploy("app", "production", json!({ "version": "1.0.0" }))
        .await;
    assert_eq!(
        s.wait_run(&first, Duration::from_secs(60)).await["status"],
        "success"
    );

    // NATS comes up: the backlog goes out, in order.
    let mut nats = NatsServer::start(nats_port, &js_dir);
    let want = api_events(&s, std::slice::from_ref(&first)).await;
    assert!(want.len() >= 4, "{want:?}");
    wait_health(&s, |n| {
        n["connected"] == true && n["events_published"].as_u64() >= Some(want.len() as u64)
    })
    .await;
    let got = stream_events(nats_port).await;
    assert_eq!(
        got.iter()
            .map(|(_, t, d)| (t.clone(), d.clone()))
            .collect::<Vec<_>>(),
        want,
        "every event once, in order"
    );
    for (subject, t, _) in &got {
        assert_eq!(
            subject,
            &format!("fraisier.events.default.app.production.{t}")
        );
    }

    // Up: a deploy's events arrive as it runs.
    let second = s
        .deploy("app", "production", json!({ "version": "2.0.0" }))
        .await;
    assert_eq!(
        s.wait_run(&second, Duration::from_secs(60)).await["status"],
        "success"
    );
    let runs = vec![first.clone(), second.clone()];
    let want = api_events(&s, &runs).await;
    wait_health(&s, |n| {
        n["events_published"].as_u64() >= Some(want.len() as u64)
    })
    .await;

    // NATS restarts (its stream on disk) while a deploy runs: nothing lost, nothing twice.
    drop(nats);
    let third = s
        .deploy("app", "production", json!({ "version": "3.0.0" }))
        .await;
    assert_eq!(
        s.wait_run(&third, Duration::from_secs(60)).await["status"],
        "success"
    );
    nats = NatsServer::start(nats_port, &js_dir);
    let runs = vec![first, second, third];
    let want = api_events(&s, &runs).await;
    wait_health(&s, |n| {
        n["connected"] == true && n["events_published"].as_u64() >= Some(want.len() as u64)
    })
    .await;
    let got: Vec<(String, String)> = stream_events(nats_port)
        .await
        .into_iter()
        .map(|(_, t, d)| (t, d))
        .collect();
    assert_eq!(got, want, "every event once, in order, across the outage");

    let (_, h) = s.get("/health").await;
    let n = &h["components"]["nats"];
    assert_eq!(
        (n["status"].as_str(), n["stream"].as_str()),
        (Some("healthy"), Some("FRAISIER_EVENTS")),
        "{h}"
    );
    assert!(n["streams"].as_u64() >= Some(1), "{h}");
    assert_eq!(n["messages"].as_u64(), Some(want.len() as u64), "{h}");
    let (_, status) = s.get("/environments/production/status").await;
    assert_eq!(status["nats"]["status"], "connected", "{status}");
    assert_eq!(
        status["nats"]["events_published"].as_u64(),
        Some(want.len() as u64),
        "{status}"
    );
    drop(nats);
}
