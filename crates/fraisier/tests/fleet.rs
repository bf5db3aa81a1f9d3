//! A fraise placed on an agent that joined, by its labels: deployed, rolled under load and
//! observed through the agent's task stream; the agent lost mid-run; the agent back.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// `fraisier agent --server …` as a child; stopped (with its instances) when dropped.
struct RemoteAgent {
    child: Option<Child>,
    state_dir: PathBuf,
    log: PathBuf,
}

impl RemoteAgent {
    fn start(server: &str, state_dir: &Path, args: &[&str]) -> RemoteAgent {
        std::fs::create_dir_all(state_dir).unwrap();
        let log = state_dir.with_extension("log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(fraisier_bin())
            .args(["agent", "--server", server, "--state-dir"])
            .arg(state_dir)
            .args(args)
            .env("FRAISIER_LOG", "info")
            .env_remove("FRAISIER_CONFIG")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        RemoteAgent {
            child: Some(child),
            state_dir: state_dir.to_path_buf(),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL of the agent alone: its instances keep running, as on a host whose agent dies.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RemoteAgent {
    fn drop(&mut self) {
        stop_agent(&self.state_dir);
        self.kill9();
        // A test that failed while the agent was dead leaves its instances: stop them too.
        kill_instances(&self.state_dir);
    }
}

fn kill_instances(state_dir: &Path) {
    for pid in instance_pids(state_dir) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("fraisier-demo") {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

async fn wait_for(s: &Server, path: &str, what: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, v) = s.get(path).await;
        if status == 200 && what(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{path} never got there: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The pids of every instance an agent's state dir records.
fn instance_pids(state_dir: &Path) -> Vec<u64> {
    std::fs::read_to_string(state_dir.join("instances.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r["pid"].as_u64())
        .collect()
}

fn alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test]
async fn a_fraise_placed_by_labels_runs_on_the_agent_that_joined() {
    let ws = Workspace::new();
    for v in ["1.0.0", "2.0.0", "3.0.0"] {
        ws.release(v, &[]);
    }
    let port = free_port();
    let yaml = config_yaml(&ws, port, 2, "rolling", "").replace(
        &format!("production: {{ port: {port}, instances: 2, strategy: rolling }}"),
        &format!(
            "production: {{ port: {port}, instances: 2, strategy: rolling, targets: {{ labels: {{ role: web }} }} }}"
        ),
    );
    assert!(yaml.contains("role: web"), "{yaml}");
    let yaml = yaml.replace(
        "  rate_limits: off\n",
        "  rate_limits: off\n  agent_heartbeat_interval: 200ms\n  agent_offline_after: 2s\n",
    );
    let s = Server::start(&ws, &yaml).await;

    // No agent carries role=web yet: the run says so and nothing is started anywhere.
    let run = s
        .deploy("app", "production", json!({"version": "1.0.0"}))
        .await;
    let v = s.wait_run(&run, Duration::from_secs(30)).await;
    assert_eq!(v["status"], "failed", "{v}");
    assert!(v["error"].to_string().contains("role=web"), "{v}");

    let (_, t) = s.post("/agents/join-tokens", json!({})).await;
    let token = t["token"].as_str().unwrap().to_string();
    let dir = ws.path().join("web-1");
    let mut agent = RemoteAgent::start(
        &s.url,
        &dir,
        &[
            "--join-token",
            &token,
            "--name",
            "web-1",
            "--labels",
            "role=web",
        ],
    );
    wait_for(&s, "/agents/web-1", |v| v["status"] == "online").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.log().contains("task stream open") {
        assert!(Instant::now() < deadline, "{}", agent.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let run = s
        .deploy("app", "production", json!({"version": "1.0.0"}))
        .await;
    let v = s.wait_run(&run, Duration::from_secs(60)).await;
    assert_eq!(v["status"], "success", "{v}");
    assert_eq!(router_version(port).await.as_deref(), Some("1.0.0"));
    // The instances are the remote agent's, not the local one's.
    let pids = instance_pids(&dir);
    assert_eq!(pids.len(), 2, "web-1 runs both instances: {pids:?}");
    assert!(
        instance_pids(&s.agent_dir())
            .iter()
            .all(|p| !pids.contains(p)),
        "the local agent runs none of them"
    );
    let (_, status) = s.get("/deployments/app@production/health").await;
    assert_eq!(status["overall"], "healthy", "{status}");
    assert_eq!(
        status["components"]["service"]["checks"]
            .as_array()
            .map(Vec::len),
        Some(2),
        "{status}"
    );

    // A rolling deploy through the remote agent's router, under load: nothing fails.
    let load = Load::start(port, 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let run = s
        .deploy("app", "production", json!({"version": "2.0.0"}))
        .await;
    let v = s.wait_run(&run, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = load.stop().await;
    assert_eq!(v["status"], "success", "{v}");
    assert!(report.ok > 100, "{report:?}");
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert_eq!(router_version(port).await.as_deref(), Some("2.0.0"));

    // The agent dies mid-run: the step fails naming it, and nothing more is started.
    let run = s
        .deploy(
            "app",
            "production",
            json!({"version": "3.0.0", "timeout": 20}),
        )
        .await;
    agent.kill9();
    let v = s.wait_run(&run, Duration::from_secs(60)).await;
    assert_eq!(v["status"], "failed", "{v}");
    let failed_step = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["status"] == "failed")
        .cloned()
        .unwrap();
    assert!(
        failed_step["error"].to_string().contains("agent web-1"),
        "{v}"
    );
    // Failed as soon as the agent was lost (2 s here), not at the run's 20 s timeout.
    assert!(v["duration_seconds"].as_f64().unwrap() < 15.0, "{v}");
    // Its instances live on without it (its router was part of it).
    let orphans = instance_pids(&dir);
    assert!(
        !orphans.is_empty() && orphans.iter().all(|p| alive(*p)),
        "{orphans:?}"
    );

    // Back, it re-adopts what it ran and converges: no duplicate, no orphan.
    let before: Vec<u64> = instance_pids(&dir);
    let agent = RemoteAgent::start(&s.url, &dir, &[]);
    wait_for(&s, "/agents/web-1", |v| v["status"] == "online").await;
    let run = s
        .deploy(
            "app",
            "production",
            json!({"version": "2.0.0", "force": true}),
        )
        .await;
    let v = s.wait_run(&run, Duration::from_secs(60)).await;
    assert_eq!(v["status"], "success", "{v}");
    let after = instance_pids(&dir);
    assert_eq!(after.len(), 2, "{after:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while before.iter().any(|p| !after.contains(p) && alive(*p)) {
        assert!(
            Instant::now() < deadline,
            "an instance was orphaned: {before:?} → {after:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(agent);
}
