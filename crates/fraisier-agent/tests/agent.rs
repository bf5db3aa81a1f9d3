//! The agent end to end: a real agent process (this test binary re-run as the child, see
//! `agent_process_entry`) on a temp state dir, driven over its control API with `AgentClient`,
//! running `python3 -m http.server` instances behind its router.
//!
//! Every test owns a `Fixture` whose `Drop` kills the agent and every process that carries
//! the fixture's release dir in its environment, so a failing test leaves nothing behind.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fraisier_agent::process::is_running;
use fraisier_agent::signal::{signal_group, signal_process, Signal};
use fraisier_agent::{run, AgentError, AgentOptions};
use fraisier_client::{AgentClient, AgentClientError};
use fraisier_model::service::{
    DesiredInstance, DesiredService, ExecRequest, HealthCheckSpec, InstanceState, ObservedService,
    ProbeKind, ReleaseSpec,
};
use fraisier_model::FraiseType;

const CHILD_ENV: &str = "FRAISIER_TEST_AGENT_DIR";
const WAIT: Duration = Duration::from_secs(30);

/// Not a test: the body of the agent child process. Does nothing unless `CHILD_ENV` is set.
#[test]
fn agent_process_entry() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(run(AgentOptions::new(dir))).unwrap();
}

/// One agent's state dir, its process and two release sources; cleans everything on drop.
struct Fixture {
    dir: tempfile::TempDir,
    agent: Option<Child>,
}

// === impl Fixture ===

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        for v in ["1.0.0", "2.0.0"] {
            let src = dir.path().join("src").join(v);
            fs::create_dir_all(&src).unwrap();
            fs::write(src.join("index.html"), format!("hello from {v}\n")).unwrap();
        }
        Fixture { dir, agent: None }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Starts an agent process and waits until it answers.
    async fn start_agent(&mut self) -> AgentClient {
        let exe = std::env::current_exe().unwrap();
        fs::create_dir_all(self.state_dir()).unwrap();
        let stderr = fs::File::create(self.dir.path().join("agent.stderr")).unwrap();
        let child = Command::new(exe)
            .args([
                "--exact",
                "agent_process_entry",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, self.state_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let pid = child.id();
        self.agent = Some(child);
        let started = Instant::now();
        loop {
            if let Ok(client) = AgentClient::from_state_dir(&self.state_dir()) {
                if let Ok(health) = client.health().await {
                    if health.pid == pid {
                        return client;
                    }
                }
            }
            if let Some(status) = self.agent.as_mut().unwrap().try_wait().unwrap() {
                panic!("agent exited with {status}: {}", self.agent_stderr());
            }
            assert!(
                started.elapsed() < WAIT,
                "agent did not start: {}",
                self.agent_stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILLs the agent alone, as a crash would; its instances live on.
    fn crash_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the agent process to exit by itself.
    async fn agent_exits(&mut self) -> std::process::ExitStatus {
        let child = self.agent.as_mut().expect("an agent");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.agent = None;
                return status;
            }
            assert!(started.elapsed() < WAIT, "agent did not exit");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn agent_stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("agent.stderr")).unwrap_or_default()
    }

    fn desired(&self, generation: u64, port: u16, instances: &[(&str, &str)]) -> DesiredService {
        let releases = ["1.0.0", "2.0.0"]
            .into_iter()
            .map(|v| {
                let spec = ReleaseSpec {
                    source: Some(self.dir.path().join("src").join(v)),
                    command: "exec python3 -m http.server $PORT --bind 127.0.0.1".into(),
                    working_directory: None,
                    env: BTreeMap::from([("GREETING".to_string(), format!("v{v}"))]),
                    secrets: Default::default(),
                    artifact: None,
                };
                (v.to_string(), spec)
            })
            .collect();
        DesiredService {
            fraise: "web".into(),
            environment: "production".into(),
            generation,
            kind: FraiseType::Api,
            port: Some(port),
            health_check: Some(HealthCheckSpec {
                kind: ProbeKind::Http {
                    path: "/".into(),
                    expected_status: vec![],
                },
                interval_ms: 100,
                timeout_ms: 1000,
                healthy_threshold: 1,
                unhealthy_threshold: 2,
            }),
            releases,
            instances: instances
                .iter()
                .map(|(id, v)| DesiredInstance {
                    id: id.to_string(),
                    version: v.to_string(),
                    weight: 100,
                    target: None,
                })
                .collect(),
            drain_timeout_ms: 2000,
            stop_grace_ms: 2000,
            schedule: None,
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.crash_agent();
        kill_processes_of(self.dir.path());
    }
}

/// SIGKILLs the group of every process whose environment points into `root` (instances and
/// exec commands get `FRAISIER_RELEASE_DIR=<state>/releases/...`).
fn kill_processes_of(root: &Path) {
    let needle = format!("FRAISIER_RELEASE_DIR={}", root.display());
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = fs::read(entry.path().join("environ")) else {
            continue;
        };
        let matches = environ
            .split(|b| *b == 0)
            .any(|var| var.starts_with(needle.as_bytes()));
        if matches {
            let _ = signal_group(pid, Signal::Kill);
            let _ = signal_process(pid, Signal::Kill);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_for<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn converged(client: &AgentClient, desired: &DesiredService) -> ObservedService {
    let mut last = None;
    let started = Instant::now();
    loop {
        let observed = client
            .service(&desired.fraise, &desired.environment)
            .await
            .unwrap();
        if let Some(o) = observed.as_ref().filter(|o| o.converged_to(desired)) {
            return o.clone();
        }
        last = observed.or(last);
        assert!(
            started.elapsed() < WAIT,
            "not converged to generation {}: {last:#?}",
            desired.generation
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get_body(port: u16) -> Option<String> {
    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/index.html"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    if response.status() != 200 {
        return None;
    }
    response.text().await.ok()
}

fn pids(observed: &ObservedService) -> Vec<u32> {
    observed.instances.iter().filter_map(|i| i.pid).collect()
}

#[tokio::test]
async fn deploys_scales_and_swaps_instances_behind_the_router() {
    let mut fx = Fixture::new();
    let client = fx.start_agent().await;
    let port = free_port();

    let one = fx.desired(1, port, &[("a", "1.0.0")]);
    client.put_service(&one).await.unwrap();
    let observed = converged(&client, &one).await;
    assert!(observed.listening, "{observed:#?}");
    assert_eq!(get_body(port).await.as_deref(), Some("hello from 1.0.0\n"));

    let two = fx.desired(2, port, &[("a", "1.0.0"), ("b", "1.0.0")]);
    client.put_service(&two).await.unwrap();
    let observed = converged(&client, &two).await;
    let old_pids = pids(&observed);
    assert_eq!(old_pids.len(), 2);

    // A new set replaces the old one while a client keeps calling, as the engine does it: new
    // set beside the old, then the old removed (drained before stopped). No request fails.
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let traffic = tokio::spawn(async move {
        let (mut ok, mut failed) = (0u32, Vec::new());
        loop {
            let r = reqwest::Client::new()
                .get(format!("http://127.0.0.1:{port}/index.html"))
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            match r {
                Ok(r) if r.status() == 200 => ok += 1,
                Ok(r) => failed.push(format!("{ok}: {} {:?}", r.status(), r.text().await)),
                Err(e) => failed.push(format!("{ok}: {e:?}")),
            }
            if stop_rx.try_recv().is_ok() {
                return (ok, failed);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let both = fx.desired(
        3,
        port,
        &[
            ("a", "1.0.0"),
            ("b", "1.0.0"),
            ("c", "2.0.0"),
            ("d", "2.0.0"),
        ],
    );
    client.put_service(&both).await.unwrap();
    converged(&client, &both).await;
    let swap = fx.desired(4, port, &[("c", "2.0.0"), ("d", "2.0.0")]);
    client.put_service(&swap).await.unwrap();
    let observed = converged(&client, &swap).await;
    stop_tx.send(()).unwrap();
    let (ok, failed) = traffic.await.unwrap();
    assert!(
        ok > 5 && failed.is_empty(),
        "{ok} ok, failed after {failed:?}"
    );
    assert_eq!(observed.instances.len(), 2);
    assert_eq!(get_body(port).await.as_deref(), Some("hello from 2.0.0\n"));
    for pid in old_pids {
        wait_for("old instance to be gone", async || {
            (!is_running(pid)).then_some(())
        })
        .await;
    }
    let versions: Vec<&str> = observed
        .releases
        .iter()
        .map(|r| r.version.as_str())
        .collect();
    assert!(
        versions.contains(&"1.0.0") && versions.contains(&"2.0.0"),
        "{versions:?}"
    );
    wait_for("router metrics for 2.0.0", async || {
        let o = client.service("web", "production").await.unwrap()?;
        o.metrics
            .get("2.0.0")
            .is_some_and(|m| m.requests >= 1)
            .then_some(())
    })
    .await;

    // The instance env reached the process.
    let pid = observed.instance("c").unwrap().pid.unwrap();
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    for var in [
        "GREETING=v2.0.0",
        "FRAISIER_INSTANCE=c",
        "FRAISIER_VERSION=2.0.0",
        "FRAISIER_FRAISE=web",
    ] {
        assert!(environ.contains(var), "{var} missing");
    }

    // Delete: drained, stopped, forgotten.
    client.delete_service("web", "production").await.unwrap();
    wait_for("service to be forgotten", async || {
        client
            .service("web", "production")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(!is_running(pid));
    client.shutdown().await.unwrap();
}

#[tokio::test]
async fn control_api_refuses_bad_requests() {
    let mut fx = Fixture::new();
    let client = fx.start_agent().await;
    let info = fraisier_client::read_agent_info(&fx.state_dir()).unwrap();
    let mode = fs::metadata(fx.state_dir().join("agent.json")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    let intruder = AgentClient::new(info.control_url.clone(), "not-the-token");
    assert!(matches!(
        intruder.health().await,
        Err(AgentClientError::Rejected { status: 401, .. })
    ));

    let mut bad = fx.desired(1, free_port(), &[("a", "9.9.9")]);
    match client.put_service(&bad).await {
        Err(AgentClientError::Rejected {
            status: 400, code, ..
        }) => assert_eq!(code, "INVALID_PARAMETERS"),
        other => panic!("{other:?}"),
    }
    bad.instances = vec![];
    bad.generation = 5;
    client.put_service(&bad).await.unwrap();
    bad.generation = 4;
    match client.put_service(&bad).await {
        Err(AgentClientError::Rejected {
            status: 409, code, ..
        }) => assert_eq!(code, "STALE_GENERATION"),
        other => panic!("{other:?}"),
    }
    assert!(client.service("web", "staging").await.unwrap().is_none());
    assert_eq!(client.services().await.unwrap().len(), 1);

    // A second agent on the same directory is refused with a clear error.
    let second = run(AgentOptions::new(fx.state_dir())).await;
    assert!(
        matches!(second, Err(AgentError::AlreadyRunning { .. })),
        "{second:?}"
    );
    client.shutdown().await.unwrap();
    fx.agent_exits().await;
}

#[tokio::test]
async fn exec_reports_output_exit_code_and_timeout() {
    let mut fx = Fixture::new();
    let client = fx.start_agent().await;
    let desired = fx.desired(1, free_port(), &[]);
    let request = ExecRequest {
        fraise: "web".into(),
        environment: "production".into(),
        version: "1.0.0".into(),
        release: desired.releases["1.0.0"].clone(),
        command: "echo $GREETING $FRAISIER_VERSION ${PORT:-noport} $EXTRA; cat index.html; echo err >&2; exit 3".into(),
        env: BTreeMap::from([("EXTRA".to_string(), "extra".to_string())]),
        timeout_ms: 10_000,
    };
    let result = client.exec(&request).await.unwrap();
    assert_eq!(result.exit_code, Some(3));
    assert!(!result.timed_out);
    assert_eq!(
        result.output,
        vec!["v1.0.0 1.0.0 noport extra", "hello from 1.0.0", "err"]
    );

    let slow = ExecRequest {
        command: "sleep 30".into(),
        timeout_ms: 300,
        ..request
    };
    let started = Instant::now();
    let result = client.exec(&slow).await.unwrap();
    assert!(result.timed_out);
    assert_eq!(result.exit_code, None);
    assert!(started.elapsed() < Duration::from_secs(10));
    client.shutdown().await.unwrap();
}

#[tokio::test]
async fn crashed_instance_is_restarted() {
    let mut fx = Fixture::new();
    let client = fx.start_agent().await;
    let port = free_port();
    let desired = fx.desired(1, port, &[("a", "1.0.0")]);
    client.put_service(&desired).await.unwrap();
    let observed = converged(&client, &desired).await;
    let pid = observed.instance("a").unwrap().pid.unwrap();

    signal_group(pid, Signal::Kill).unwrap();
    let restarted = wait_for("a restart", async || {
        let o = client.service("web", "production").await.unwrap()?;
        let a = o.instance("a")?.clone();
        (a.restarts >= 1 && a.state == InstanceState::Healthy).then_some(a)
    })
    .await;
    assert_ne!(restarted.pid, Some(pid));
    assert_eq!(get_body(port).await.as_deref(), Some("hello from 1.0.0\n"));
    client.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_new_agent_readopts_live_instances() {
    let mut fx = Fixture::new();
    let client = fx.start_agent().await;
    let port = free_port();
    let desired = fx.desired(1, port, &[("a", "1.0.0")]);
    client.put_service(&desired).await.unwrap();
    let pid = converged(&client, &desired)
        .await
        .instance("a")
        .unwrap()
        .pid
        .unwrap();

    fx.crash_agent();
    assert!(is_running(pid), "the instance outlives its agent");

    let client = fx.start_agent().await;
    let observed = converged(&client, &desired).await;
    assert_eq!(
        observed.instance("a").unwrap().pid,
        Some(pid),
        "same process, re-adopted"
    );
    assert_eq!(observed.instance("a").unwrap().restarts, 0);
    let body = wait_for("the router to serve again", async || get_body(port).await).await;
    assert_eq!(body, "hello from 1.0.0\n");
    client.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_leaves_no_process_behind() {
    let mut fx = Fixture::new();
    let client = fx.start_agent().await;
    let desired = fx.desired(1, free_port(), &[("a", "1.0.0"), ("b", "2.0.0")]);
    client.put_service(&desired).await.unwrap();
    let observed = converged(&client, &desired).await;
    let instance_pids = pids(&observed);
    assert_eq!(instance_pids.len(), 2);

    client.shutdown().await.unwrap();
    assert!(fx.agent_exits().await.success());
    for pid in instance_pids {
        assert!(!is_running(pid), "instance {pid} survived shutdown");
    }
    assert!(!fx.state_dir().join("agent.json").exists());
    // The desired state survives: the next agent brings the service back.
    assert!(fx.state_dir().join("desired/web@production.json").exists());
}

#[tokio::test]
async fn a_taken_router_port_is_reported_and_retried() {
    let mut fx = Fixture::new();
    let client = fx.start_agent().await;
    let squatter = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let desired = fx.desired(1, port, &[]);
    client.put_service(&desired).await.unwrap();
    let observed = wait_for("the bind error", async || {
        let o = client.service("web", "production").await.unwrap()?;
        o.router_error.is_some().then_some(o)
    })
    .await;
    assert!(!observed.listening);
    drop(squatter);
    wait_for("the router to bind", async || {
        let o = client.service("web", "production").await.unwrap()?;
        (o.listening && o.router_error.is_none()).then_some(())
    })
    .await;
    client.shutdown().await.unwrap();
}
