//! Zero downtime, measured: constant load through the router while each strategy deploys,
//! with every request counted; failed canaries and never-healthy versions roll back; a
//! server killed mid-run does not interrupt traffic and finishes the run after a restart.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const RUN_TIMEOUT: Duration = Duration::from_secs(90);

async fn serving_1_0_0(
    instances: u32,
    extra_releases: &[(&str, &[&str])],
) -> (Workspace, Server, u16) {
    let ws = Workspace::new();
    ws.release("1.0.0", &[]);
    ws.release("2.0.0", &[]);
    for (v, env) in extra_releases {
        ws.release(v, env);
    }
    let port = free_port();
    let s = Server::start(&ws, &config_yaml(&ws, port, instances, "rolling", "")).await;
    let id = s
        .deploy("app", "production", json!({"version": "1.0.0"}))
        .await;
    let run = s.wait_run(&id, RUN_TIMEOUT).await;
    assert_eq!(run["status"], "success", "{run:#}");
    assert_eq!(router_version(port).await.as_deref(), Some("1.0.0"));
    (ws, s, port)
}

fn event_types(run: &Value) -> Vec<String> {
    run["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap().to_string())
        .collect()
}

/// Deploys 2.0.0 with `body` under load and asserts not one request failed.
async fn zero_downtime(strategy: &str, strategy_config: Value) {
    let (_ws, s, port) = serving_1_0_0(2, &[]).await;
    let load = Load::start(port, 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = s
        .deploy(
            "app",
            "production",
            json!({"version": "2.0.0", "strategy": strategy, "strategy_config": strategy_config}),
        )
        .await;
    let run = s.wait_run(&id, RUN_TIMEOUT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = load.stop().await;
    assert_eq!(run["status"], "success", "{run:#}");
    println!("{strategy}: {report:?}");
    assert_eq!(
        report.failed, 0,
        "{strategy}: failed requests: {:?}",
        report.errors
    );
    assert!(
        report.ok >= 1000,
        "{strategy}: only {} requests were made",
        report.ok
    );
    assert!(
        report.versions.get("1.0.0").copied().unwrap_or(0) > 0
            && report.versions.get("2.0.0").copied().unwrap_or(0) > 0,
        "{report:?}"
    );
    assert_eq!(router_version(port).await.as_deref(), Some("2.0.0"));
    let (_, st) = s.get("/fraises/app/status?environment=production").await;
    assert_eq!(st["environments"]["production"]["instances"], 2, "{st}");
    assert_eq!(
        st["environments"]["production"]["instances_healthy"], 2,
        "{st}"
    );
    assert!(event_types(&run).contains(&"traffic.shifted".to_string()));
}

#[tokio::test]
async fn rolling_deploy_drops_no_request() {
    zero_downtime("rolling", json!({"max_surge": 1, "max_instances_down": 1})).await;
}

#[tokio::test]
async fn blue_green_deploy_drops_no_request() {
    zero_downtime("blue_green", json!({"scale_down_delay": "1s"})).await;
}

#[tokio::test]
async fn canary_deploy_drops_no_request() {
    zero_downtime("canary", json!({"steps": [{"weight": 20, "pause": "1s"}, {"weight": 50, "pause": "1s"}], "analysis": {"min_requests": 10}})).await;
}

#[tokio::test]
async fn failing_canary_is_rolled_back_automatically() {
    let (_ws, s, port) = serving_1_0_0(2, &[("2.1.0", &["DEMO_ERROR_RATE=50"])]).await;
    let load = Load::start(port, 4);
    let id = s
        .deploy("app", "production", json!({"version": "2.1.0", "strategy": "canary",
            "strategy_config": {"steps": [{"weight": 30, "pause": "3s"}], "analysis": {"max_error_rate": 5, "min_requests": 20}}}))
        .await;
    let run = s.wait_run(&id, RUN_TIMEOUT).await;
    let during = load.stop().await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(run["error"]["code"], "DEPLOYMENT_FAILED");
    assert!(
        run["error"]["message"]
            .as_str()
            .unwrap()
            .contains("canary analysis failed"),
        "{run:#}"
    );
    let types = event_types(&run);
    assert!(types.contains(&"analysis.failed".to_string()), "{types:?}");
    assert!(
        types.contains(&"rollback.completed".to_string()),
        "{types:?}"
    );
    let (_, events) = s.get(&format!("/deployments/{id}/events")).await;
    let failed = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_type"] == "analysis.failed")
        .unwrap();
    assert!(
        failed["data"]["canary"]["window"]["error_rate"]
            .as_f64()
            .unwrap()
            > 5.0,
        "{failed}"
    );
    assert!(
        failed["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("error rate"),
        "{failed}"
    );
    // The canary's own errors reached clients while it was judged, and only those.
    assert!(during.ok > 0);
    assert!(
        during
            .errors
            .iter()
            .all(|e| e.contains("\"version\":\"2.1.0\"")),
        "only the canary failed requests: {:?}",
        during.errors
    );
    // The stable version keeps serving, alone, without errors.
    let after = Load::start(port, 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = after.stop().await;
    assert_eq!(after.failed, 0, "{:?}", after.errors);
    assert_eq!(
        after.versions.keys().cloned().collect::<Vec<_>>(),
        vec!["1.0.0".to_string()]
    );
    let (_, f) = s.get("/fraises/app").await;
    assert_eq!(f["environments"]["production"]["current_version"], "1.0.0");
}

#[tokio::test]
async fn never_healthy_version_fails_and_previous_keeps_serving() {
    let (_ws, s, port) = serving_1_0_0(2, &[("3.0.0", &["DEMO_HEALTHY=false"])]).await;
    let load = Load::start(port, 4);
    let id = s
        .deploy(
            "app",
            "production",
            json!({"version": "3.0.0", "strategy_config": {"health_check_timeout": "2s"}}),
        )
        .await;
    let run = s.wait_run(&id, RUN_TIMEOUT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = load.stop().await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(run["error"]["code"], "HEALTH_CHECK_FAILED", "{run:#}");
    assert!(event_types(&run).contains(&"rollback.completed".to_string()));
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert_eq!(
        report.versions.keys().cloned().collect::<Vec<_>>(),
        vec!["1.0.0".to_string()]
    );
    assert_eq!(router_version(port).await.as_deref(), Some("1.0.0"));
    let (_, st) = s.get("/fraises/app/status?environment=production").await;
    assert_eq!(
        st["environments"]["production"]["instances_healthy"], 2,
        "{st}"
    );
    assert_eq!(st["environments"]["production"]["current_version"], "1.0.0");
}

#[tokio::test]
async fn server_killed_mid_run_keeps_traffic_and_finishes_the_run_after_restart() {
    let (_ws, mut s, port) = serving_1_0_0(2, &[("2.5.0", &["DEMO_STARTUP_DELAY=1500ms"])]).await;
    let load = Load::start(port, 4);
    let id = s.deploy("app", "production", json!({"version": "2.5.0", "strategy": "rolling", "strategy_config": {"max_surge": 1, "max_instances_down": 0}})).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    s.kill9();
    // Down for a while: the agent keeps serving on its own.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let while_down = load.ok.load(std::sync::atomic::Ordering::Relaxed);
    s.restart().await;
    let run = s.wait_run(&id, RUN_TIMEOUT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = load.stop().await;
    assert_eq!(
        run["status"], "success",
        "a resumed run finishes its plan: {run:#}"
    );
    assert!(
        event_types(&run).contains(&"deployment.resumed".to_string()),
        "{:?}",
        event_types(&run)
    );
    assert!(while_down > 0);
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert_eq!(router_version(port).await.as_deref(), Some("2.5.0"));
}
