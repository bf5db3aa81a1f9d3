//! The integration-test harness: a real `fraisier serve` (and the agent it starts) on
//! ephemeral ports with a temp data dir, releases of the demo app, a load generator, and
//! cleanup of every process started, even when a test fails.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn fraisier_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fraisier"))
}

/// The demo app is a binary of the `fraisier-demo` package, built into the same target dir.
pub fn demo_bin() -> PathBuf {
    let p = fraisier_bin().with_file_name("fraisier-demo");
    assert!(
        p.exists(),
        "{} is missing: build the workspace (cargo build --workspace) before the tests",
        p.display()
    );
    p
}

/// A port no one listens on, for a server or a router the test configures. Taken below the
/// kernel's ephemeral range (32768 and up), where nothing the system hands out — a load
/// generator's source port, another server's `:0` — can take it between now and its use. Each
/// test process walks the range from a start of its own, so parallel tests rarely meet, and
/// a port someone holds is skipped.
pub fn free_port() -> u16 {
    const FIRST: u64 = 20_000;
    const SPAN: u64 = 12_000;
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let start = *START.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::from(d.subsec_nanos()))
            .unwrap_or(0);
        (u64::from(std::process::id()) * 7_919 + nanos) % SPAN
    });
    for _ in 0..50 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (start + n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A temp dir with releases of the demo app: `<dir>/releases/<version>/demo.env`.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Workspace {
        Workspace {
            dir: tempfile::Builder::new()
                .prefix("fraisier-it-")
                .tempdir()
                .unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A release of the demo app for `version`, behaving as `env` lines say (DEMO_ERROR_RATE=…).
    pub fn release(&self, version: &str, env: &[&str]) {
        let d = self.path().join("releases").join(version);
        std::fs::create_dir_all(&d).unwrap();
        let mut text = format!("DEMO_VERSION={version}\n");
        for l in env {
            text.push_str(l);
            text.push('\n');
        }
        std::fs::write(d.join("demo.env"), text).unwrap();
    }

    pub fn data_dir(&self) -> PathBuf {
        self.path().join("data")
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("fraisier.yaml")
    }
}

/// A config with one api fraise `app` in `production` (and `staging`) on the given router ports.
pub fn config_yaml(
    ws: &Workspace,
    port: u16,
    instances: u32,
    strategy: &str,
    extra_fraise: &str,
) -> String {
    format!(
        r#"
server:
  listen: "127.0.0.1:0"
  data_dir: "{data}"
  rate_limits: off
environments:
  production: {{ display_name: Production, description: Live environment, provider: local }}
  staging: {{ display_name: Staging, provider: local }}
fraises:
  app:
    type: api
    description: Demo app
    command: "exec {demo}"
    artifact_path: "{releases}/{{version}}"
    health_check: {{ type: http, path: /health, interval: 100ms, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 2 }}
    drain_timeout: 5s
    stop_grace: 2s
    environments:
      production: {{ port: {port}, instances: {instances}, strategy: {strategy} }}
      staging: {{ port: {staging}, instances: 1, strategy: rolling }}
{extra_fraise}
"#,
        data = ws.data_dir().display(),
        demo = demo_bin().display(),
        releases = ws.path().join("releases").display(),
        staging = free_port(),
    )
}

pub struct Server {
    pub child: Option<Child>,
    pub url: String,
    pub token: String,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub http: reqwest::Client,
}

impl Server {
    /// Writes the config and starts `fraisier serve`; returns once it answers with a token.
    pub async fn start(ws: &Workspace, yaml: &str) -> Server {
        std::fs::write(ws.config_path(), yaml).unwrap();
        let (child, url) = spawn_serve(&ws.config_path());
        let token = cli_token(&ws.config_path());
        let s = Server {
            child: Some(child),
            url,
            token,
            config: ws.config_path(),
            data_dir: ws.data_dir(),
            http: reqwest::Client::new(),
        };
        s.wait_healthy().await;
        s
    }

    /// Starts the server again on the same config (after `kill`); the URL changes (new port).
    pub async fn restart(&mut self) {
        let (child, url) = spawn_serve(&self.config);
        self.child = Some(child);
        self.url = url;
        self.wait_healthy().await;
    }

    async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = self.http.get(format!("{}/health", self.url)).send().await {
                if r.status().is_success() {
                    let v: Value = r.json().await.unwrap();
                    if v["components"]["providers"]["status"] == "healthy" {
                        return;
                    }
                }
            }
            assert!(Instant::now() < deadline, "server did not become healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, as a service manager stops it; waits (up to 20 s) for it to exit and returns
    /// how long that took.
    pub fn terminate(&mut self) -> Duration {
        let started = Instant::now();
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            while c.try_wait().ok().flatten().is_none() {
                if started.elapsed() > Duration::from_secs(20) {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("the server did not exit within 20 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        started.elapsed()
    }

    /// SIGKILL: no chance to clean up, as in a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{}", self.url, path))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{}", self.url, path))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn put_json(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .put(format!("{}{}", self.url, path))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .delete(format!("{}{}", self.url, path))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Starts a deploy and returns its run id.
    pub async fn deploy(&self, fraise: &str, env: &str, body: Value) -> String {
        let (status, v) = self
            .post(&format!("/deployments/{fraise}/{env}"), body)
            .await;
        assert_eq!(status, 202, "deploy refused: {v}");
        v["id"].as_str().unwrap().to_string()
    }

    /// Polls a run until it is final; returns the run.
    pub async fn wait_run(&self, id: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, v) = self.get(&format!("/deployments/{id}")).await;
            assert_eq!(status, 200, "{v}");
            if matches!(
                v["status"].as_str(),
                Some("success" | "failed" | "cancelled")
            ) {
                return v;
            }
            assert!(Instant::now() < deadline, "run {id} did not finish: {v:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn agent_dir(&self) -> PathBuf {
        self.data_dir.join("agent")
    }
}

fn spawn_serve(config: &Path) -> (Child, String) {
    let mut child = Command::new(fraisier_bin())
        .args(["serve", "--config"])
        .arg(config)
        .env("FRAISIER_ADMIN_PASSWORD", "test-admin-password")
        .env("FRAISIER_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start fraisier serve");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("fraisier listening on ") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                }
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server did not print its address");
    (child, url)
}

/// `fraisier auth:token` on the server's host: prints only a token.
pub fn cli_token(config: &Path) -> String {
    let out = Command::new(fraisier_bin())
        .args(["auth:token", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "auth:token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let token = token.trim().to_string();
    assert_eq!(token.split('.').count(), 3, "not a JWT: {token:?}");
    token
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        stop_agent(&self.agent_dir());
    }
}

/// Stops the agent and all its instances; then makes sure nothing it started survives.
pub fn stop_agent(agent_dir: &Path) {
    let _ = Command::new(fraisier_bin())
        .args(["agent", "stop", "--state-dir"])
        .arg(agent_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Ok(text) = std::fs::read_to_string(agent_dir.join("agent.json")) {
        if let Some(pid) = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["pid"].as_u64())
        {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

/// Constant GET load through a router: counts every request and failure until stopped.
pub struct Load {
    pub ok: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
    pub versions: Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>>,
}

#[derive(Debug)]
pub struct LoadReport {
    pub ok: u64,
    pub failed: u64,
    pub errors: Vec<String>,
    pub versions: std::collections::BTreeMap<String, u64>,
}

impl Load {
    pub fn start(port: u16, workers: usize) -> Load {
        Load::start_at(&format!("127.0.0.1:{port}"), workers)
    }

    /// Load on a router at `host:port` (an agent in another network namespace).
    pub fn start_at(addr: &str, workers: usize) -> Load {
        let addr = addr.to_string();
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let versions = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(workers)
            .build()
            .unwrap();
        let tasks = (0..workers)
            .map(|_| {
                let (ok, failed, stop, client, versions, addr) = (
                    ok.clone(),
                    failed.clone(),
                    stop.clone(),
                    client.clone(),
                    versions.clone(),
                    addr.clone(),
                );
                tokio::spawn(async move {
                    let mut errors = Vec::new();
                    let url = format!("http://{addr}/");
                    // Bounded: at most 10 minutes or 2 million requests per worker.
                    let deadline = Instant::now() + Duration::from_secs(600);
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed)
                        && Instant::now() < deadline
                        && n < 2_000_000
                    {
                        n += 1;
                        match client.get(&url).send().await {
                            Ok(r) if r.status().is_success() => {
                                let v: Value = r.json().await.unwrap_or_default();
                                let version = v["version"].as_str().unwrap_or("?").to_string();
                                *versions.lock().unwrap().entry(version).or_default() += 1;
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                if errors.len() < 10 {
                                    errors.push(format!(
                                        "status {}: {}",
                                        r.status(),
                                        r.text().await.unwrap_or_default()
                                    ));
                                }
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                if errors.len() < 10 {
                                    errors.push(format!("{e:?}"));
                                }
                            }
                        }
                    }
                    errors
                })
            })
            .collect();
        Load {
            ok,
            failed,
            stop,
            tasks,
            versions,
        }
    }

    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        for t in self.tasks {
            errors.extend(t.await.unwrap());
        }
        LoadReport {
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            errors,
            versions: self.versions.lock().unwrap().clone(),
        }
    }
}

/// GET through the router until it answers 200, with the version it reports.
pub async fn router_version(port: u16) -> Option<String> {
    let r = reqwest::get(format!("http://127.0.0.1:{port}/"))
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    let v: Value = r.json().await.ok()?;
    v["version"].as_str().map(str::to_string)
}

/// `git -C dir ARGS…` as a test author would run it; its output, trimmed.
pub fn git(repo: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A helper process of the tests' own (`tests/support/SCRIPT PORT ARGS…`, in Python): it
/// listens on PORT (a free one) or on one it binds itself (no race with other tests), prints
/// `{"ready": port}`, then one JSON line per thing it saw, and runs until its stdin closes.
/// Killed when dropped.
pub struct Sidecar {
    pub port: u16,
    child: Child,
    lines: Arc<std::sync::Mutex<Vec<Value>>>,
}

impl Sidecar {
    pub fn start(python: &str, script: &str, args: &[&str]) -> Sidecar {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/support")
            .join(script);
        let port = free_port();
        let mut child = Command::new(python)
            .arg(&path)
            .arg(port.to_string())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{python} {script}: {e} (.ci/run installs what it needs)"));
        let stdout = child.stdout.take().unwrap();
        let lines: Arc<std::sync::Mutex<Vec<Value>>> = Default::default();
        let seen = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    seen.lock().unwrap().push(v);
                }
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let ready = |lines: &[Value]| lines.iter().find_map(|l| l["ready"].as_u64());
        let port = loop {
            if let Some(p) = ready(&lines.lock().unwrap()) {
                break p as u16;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{script} exited ({status}): are its modules installed for {python}?");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{script} never started"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Sidecar { port, child, lines }
    }

    /// What it has printed so far.
    pub fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The files under `dir` that hold `needle` anywhere: a secret must be in none.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| std::fs::read(p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)))
        .collect()
}

/// `fraisier validate` of `yaml` written as the workspace's config: whether it passed, and what
/// it printed (stdout and stderr).
pub fn validate(ws: &Workspace, yaml: &str) -> (bool, String) {
    std::fs::write(ws.config_path(), yaml).unwrap();
    let out = Command::new(fraisier_bin())
        .arg("--config")
        .arg(ws.config_path())
        .arg("validate")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// The CLI against a server as its admin; what it printed. Fails the test if it fails.
pub fn cli(s: &Server, args: &[&str]) -> String {
    let out = Command::new(fraisier_bin())
        .args(["--server", &s.url])
        .args(args)
        .env("FRAISIER_TOKEN", &s.token)
        .env_remove("FRAISIER_CONFIG")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {text}");
    text
}

/// An error answer's code; empty for an answer that is not an error.
pub fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

/// Adds a user with `roles` (password `<name>-password`); their access token.
pub async fn user_token(s: &Server, username: &str, roles: &[&str]) -> String {
    let password = format!("{username}-password");
    let (status, v) = s
        .post(
            "/users",
            serde_json::json!({"username": username, "password": password, "roles": roles}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = s
        .post(
            "/auth/token",
            serde_json::json!({"username": username, "password": password}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    v["access_token"].as_str().unwrap().to_string()
}

/// `fraisier agent --server …` as a child, as on another host (inside a network namespace
/// when given one); stopped with its instances when dropped, even those it left behind
/// after a kill.
pub struct AgentProcess {
    child: Option<Child>,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    netns: Option<String>,
}

impl AgentProcess {
    pub fn start(server: &str, state_dir: &Path, args: &[&str]) -> AgentProcess {
        AgentProcess::start_in(None, server, state_dir, args)
    }

    pub fn start_in(
        netns: Option<&str>,
        server: &str,
        state_dir: &Path,
        args: &[&str],
    ) -> AgentProcess {
        AgentProcess::start_with(netns, server, state_dir, args, &[])
    }

    /// With these variables set in its environment (and `SSL_CERT_FILE` / `SSL_CERT_DIR`
    /// removed unless given: the agent trusts no certificate store but the one asked for).
    pub fn start_with(
        netns: Option<&str>,
        server: &str,
        state_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> AgentProcess {
        std::fs::create_dir_all(state_dir).unwrap();
        let log = state_dir.with_extension("log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(fraisier_bin());
                c
            }
            None => Command::new(fraisier_bin()),
        };
        let child = cmd
            .args(["agent", "--server", server, "--state-dir"])
            .arg(state_dir)
            .args(args)
            .env("FRAISIER_LOG", "info")
            .env_remove("FRAISIER_CONFIG")
            .env_remove("FRAISIER_JOIN_TOKEN")
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        AgentProcess {
            child: Some(child),
            state_dir: state_dir.to_path_buf(),
            log,
            netns: netns.map(str::to_string),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the agent's log says `text`.
    pub async fn wait_log(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "never logged {text:?}: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM: the agent leaves, its instances keep running for the next one.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    /// SIGKILL of the agent alone: its instances keep running, as on a host whose agent dies.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        // `agent stop` talks to the agent's loopback control API: from inside its namespace.
        let mut stop = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(fraisier_bin());
                c
            }
            None => Command::new(fraisier_bin()),
        };
        let _ = stop
            .args(["agent", "stop", "--state-dir"])
            .arg(&self.state_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.kill9();
        // A test that failed while the agent was dead leaves its instances: stop them too.
        for pid in instance_pids(&self.state_dir) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("fraisier-demo") {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
}

/// The pids of every instance an agent's state dir records.
pub fn instance_pids(state_dir: &Path) -> Vec<u64> {
    std::fs::read_to_string(state_dir.join("instances.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r["pid"].as_u64())
        .collect()
}

/// Waits until `GET path` answers 200 with what `what` wants.
pub async fn wait_get(s: &Server, path: &str, what: impl Fn(&Value) -> bool) -> Value {
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
