//! A real `fraisier serve` (and the agent it starts) on an ephemeral port with a temp data
//! dir, driven over its HTTP API as users and CI drive it.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::procs::{self, AgentGuard, Proc};

/// Where the release binaries are.
#[derive(Clone, Debug)]
pub struct Bins {
    pub fraisier: PathBuf,
    pub demo: PathBuf,
}

// === impl Bins ===

impl Bins {
    pub fn in_dir(dir: &Path) -> Result<Bins> {
        let bins = Bins {
            fraisier: dir.join("fraisier"),
            demo: dir.join("fraisier-demo"),
        };
        for b in [&bins.fraisier, &bins.demo] {
            if !b.exists() {
                bail!(
                    "{} is missing: cargo build --release -p fraisier -p fraisier-demo -p fraisier-bench",
                    b.display()
                );
            }
        }
        Ok(bins)
    }
}

/// A running server. Drop stops the server (SIGTERM), then the agent and its instances.
pub struct Server {
    // Dropped in this order after `Drop::drop`: the agent guard stops the agent last.
    proc: Proc,
    agent: AgentGuard,
    /// `http://127.0.0.1:PORT/api/v1`
    pub url: String,
    pub token: String,
    pub http: reqwest::Client,
    log: PathBuf,
}

// === impl Server ===

impl Server {
    /// Starts `fraisier serve --config config` (which must say `listen: "127.0.0.1:0"` and
    /// `data_dir: data_dir`) and returns once the API and the agent answer.
    pub async fn start(bins: &Bins, config: &Path, data_dir: &Path) -> Result<Server> {
        let log = config.with_file_name("server.log");
        // Declared first so that an early return stops the server before the agent.
        let agent = AgentGuard::new(bins.fraisier.clone(), data_dir.join("agent"));
        let mut proc = Proc::spawn(
            "fraisier serve",
            Command::new(&bins.fraisier)
                .args(["serve", "--config"])
                .arg(config)
                .env("FRAISIER_ADMIN_PASSWORD", "bench-admin-password")
                .env("FRAISIER_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(File::create(&log)?),
        )?;
        let stdout = proc
            .child_mut()
            .and_then(|c| c.stdout.take())
            .ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Reads the address line, then keeps draining stdout so the server never blocks on it.
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
        let url = match tokio::time::timeout(Duration::from_secs(60), rx).await {
            Ok(Ok(url)) => url,
            _ => bail!(
                "fraisier serve did not print its address; its log ({}):\n{}",
                log.display(),
                tail(&log)
            ),
        };
        let token = cli_token(bins, config).await?;
        let mut server = Server {
            proc,
            agent,
            url,
            token,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()?,
            log,
        };
        server.wait_healthy().await?;
        server.agent.remember();
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.pid()
    }

    pub fn agent_dir(&self) -> &Path {
        &self.agent.state_dir
    }

    /// The server's log so far, for error messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }

    async fn wait_healthy(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(format!("{}/health", self.url)).send().await {
                if let Ok(v) = r.json::<Value>().await {
                    if v["components"]["providers"]["status"] == "healthy" {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the server or its agent did not become healthy in 30 s; log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn get(&self, path: &str) -> Result<(u16, Value)> {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    /// A request whose body is read but not parsed: what a benchmark times, without the
    /// client's JSON work on the same CPUs as the server.
    pub async fn timed(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<u16> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(body);
        }
        let r = req.send().await?;
        let status = r.status().as_u16();
        r.bytes().await?;
        Ok(status)
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    /// `POST /deployments/{fraise}/{env}`; the run id of the 202.
    pub async fn deploy(&self, fraise: &str, env: &str, body: &Value) -> Result<String> {
        let (status, v) = self
            .post(&format!("/deployments/{fraise}/{env}"), body)
            .await?;
        if status != 202 {
            bail!("deploy of {fraise} in {env} refused: {status} {v}");
        }
        v["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no id in {v}"))
    }

    /// Polls a run every `poll` until it is final; the run, and when it was seen final.
    pub async fn wait_run(&self, id: &str, timeout: Duration, poll: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, v) = self.get(&format!("/deployments/{id}")).await?;
            if status != 200 {
                bail!("GET /deployments/{id}: {status} {v}");
            }
            if matches!(
                v["status"].as_str(),
                Some("success" | "failed" | "cancelled")
            ) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("run {id} did not finish in {timeout:?}: {v}");
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Ports of the live (not draining) instances of `fraise` in `env`, from the agent's
    /// `instances.json`; waits until there are `n`.
    pub async fn instance_ports(&self, fraise: &str, env: &str, n: usize) -> Result<Vec<u16>> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut ports: Vec<u16> = procs::instance_records(self.agent_dir())
                .iter()
                .filter(|r| {
                    r["fraise"] == fraise && r["environment"] == env && r["draining"] != true
                })
                .filter_map(|r| u16::try_from(r["port"].as_u64()?).ok())
                .collect();
            ports.sort_unstable();
            if ports.len() == n {
                return Ok(ports);
            }
            if Instant::now() > deadline {
                bail!("expected {n} instances of {fraise}@{env}, the agent records {ports:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The server first, so that it cannot start the agent again; the agent guard (a
        // field) then stops the agent and every instance.
        self.proc.stop(Duration::from_secs(10));
    }
}

/// `fraisier auth:token --config X`: an admin token minted from the data dir.
async fn cli_token(bins: &Bins, config: &Path) -> Result<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(&bins.fraisier)
            .args(["auth:token", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("fraisier auth:token timed out")??;
    if !out.status.success() {
        bail!(
            "fraisier auth:token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// The last lines of a log file.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A release of the demo app: `<dir>/<version>/demo.env` with `DEMO_VERSION` and `env`.
pub fn demo_release(releases: &Path, version: &str, env: &[&str]) -> Result<()> {
    let d = releases.join(version);
    std::fs::create_dir_all(&d)?;
    let mut text = format!("DEMO_VERSION={version}\n");
    for l in env {
        text.push_str(l);
        text.push('\n');
    }
    std::fs::write(d.join("demo.env"), text)?;
    Ok(())
}

/// A server in a temp dir with the demo app's 1.0.0 deployed to `production` behind the
/// router on `port`, with `instances` instances; the dir goes when dropped.
pub async fn deployed_demo(
    bins: &Bins,
    port: u16,
    instances: u32,
) -> Result<(tempfile::TempDir, Server)> {
    let dir = tempfile::Builder::new()
        .prefix("fraisier-bench-")
        .tempdir()?;
    demo_release(&dir.path().join("releases"), "1.0.0", &[])?;
    let config = dir.path().join("fraisier.yaml");
    std::fs::write(
        &config,
        app_config(bins, dir.path(), port, instances, "rolling"),
    )?;
    let server = Server::start(bins, &config, &dir.path().join("data")).await?;
    let id = server
        .deploy(
            "app",
            "production",
            &serde_json::json!({"version": "1.0.0"}),
        )
        .await?;
    let run = server
        .wait_run(&id, Duration::from_secs(60), Duration::from_millis(50))
        .await?;
    if run["status"] != "success" {
        bail!("deploy of the demo app failed: {run}");
    }
    Ok((dir, server))
}

/// A config with one api fraise `app` (the demo app) in `production`, on router port
/// `port`, with `instances` instances, a 200 ms HTTP probe and the given strategy.
pub fn app_config(bins: &Bins, dir: &Path, port: u16, instances: u32, strategy: &str) -> String {
    format!(
        r#"server:
  listen: "127.0.0.1:0"
  data_dir: "{data}"
environments:
  production: {{ display_name: Production, provider: local }}
fraises:
  app:
    type: api
    description: The demo app
    command: "exec {demo}"
    artifact_path: "{releases}/{{version}}"
    health_check: {{ type: http, path: /health, interval: 200ms, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 3 }}
    drain_timeout: 5s
    stop_grace: 2s
    environments:
      production: {{ port: {port}, instances: {instances}, strategy: {strategy} }}
"#,
        data = dir.join("data").display(),
        demo = bins.demo.display(),
        releases = dir.join("releases").display(),
    )
}
