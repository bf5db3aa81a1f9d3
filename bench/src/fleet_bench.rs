//! The control plane with a fleet: `--agents` agents (in-process clients of the real server,
//! speaking its protocol: registration with a join token, heartbeats, the task stream)
//! connected at once — the server's CPU and memory while they heartbeat, and the time from
//! a desired-state change to every agent acknowledging it; then a rolling deploy across 4
//! targets of 2 instances each, POST → `success`.
//!
//! The agents are simulated: each answers `apply` at once with every instance healthy (the
//! instances are "ready at once"), so what is measured is the control plane — the server's
//! fan-out, its bookkeeping and the engine's gates — not process start-up, which the
//! `deploy` benchmark measures with real instances.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use fraisier_model::agent::{HostFacts, Membership, Registration};
use fraisier_model::service::{
    DesiredService, InstalledRelease, InstanceState, ObservedInstance, ObservedService,
};
use fraisier_model::stream::{Answer, Ask, Refusal};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::fraisier::{self, Bins, Server};
use crate::procs;
use crate::stats::{median, ms, percentile, secs, Verdict};

#[derive(Clone, Debug)]
pub struct FleetOpts {
    pub agents: u32,
    /// Desired-state changes to every agent measured.
    pub changes: u32,
    /// Rolling deploys across 4 targets measured after the initial one.
    pub deploys: u32,
    /// How long the agents heartbeat while the server's CPU is measured.
    pub idle: Duration,
}

/// When each agent received each generation of each service.
type Received = Arc<Mutex<Vec<(String, u64, Instant)>>>;

struct Fake {
    received: Received,
}

pub async fn run(bins: &Bins, o: &FleetOpts) -> Result<Vec<Verdict>> {
    println!();
    println!(
        "== A fleet: {} agents on one server; a rolling deploy across 4 targets ==",
        o.agents
    );
    let dir = tempfile::Builder::new()
        .prefix("fraisier-bench-")
        .tempdir()?;
    let releases = dir.path().join("releases");
    for v in ["1.0.0", "2.0.0"] {
        fraisier::demo_release(&releases, v, &[])?;
    }
    let config = dir.path().join("fraisier.yaml");
    std::fs::write(&config, fleet_config(bins, dir.path())?)?;
    let server = Server::start(bins, &config, &dir.path().join("data")).await?;
    println!(
        "agents: in-process clients of the real protocol (register with a join token, heartbeat every 5 s, one task-stream WebSocket each); \
         each answers `apply` at once with its instances healthy"
    );

    let rss_before = procs::rss_kib(server.pid()).unwrap_or(0);
    let (_, t) = server
        .post("/agents/join-tokens", &json!({ "uses": o.agents }))
        .await?;
    let token = t["token"]
        .as_str()
        .ok_or_else(|| anyhow!("no join token: {t}"))?
        .to_string();
    let joined = Instant::now();
    let mut fakes = Vec::new();
    for i in 0..o.agents {
        let mut labels = vec![("fleet", "all")];
        if i < 4 {
            labels.push(("tier", "web"));
        }
        fakes.push(join(&server.url, &token, &format!("sim-{i:03}"), &labels).await?);
    }
    wait_online(&server, o.agents as usize + 1).await?;
    println!(
        "{} agents registered and online in {} (streams open)",
        o.agents,
        secs(joined.elapsed())
    );

    // Idle: the agents only heartbeat.
    let ticks = procs::process_ticks(&[server.pid()]);
    let idle_from = Instant::now();
    tokio::time::sleep(o.idle).await;
    let cpu = (procs::process_ticks(&[server.pid()]) - ticks) as f64 * procs::TICK_US
        / 1e6
        / idle_from.elapsed().as_secs_f64();
    let rss = procs::rss_kib(server.pid()).unwrap_or(0);
    println!(
        "server at rest with {} agents heartbeating, over {}: CPU {:.1} % of one core; VmRSS {:.1} MiB (before they joined {:.1} MiB)",
        o.agents,
        secs(o.idle),
        cpu * 100.0,
        rss as f64 / 1024.0,
        rss_before as f64 / 1024.0
    );

    // A desired-state change every agent must take: a recreate stops the old instance on
    // every target in one step.
    let mut acks = Vec::new();
    let mut worst_change = Duration::ZERO;
    for k in 0..=o.changes {
        let version = if k % 2 == 0 { "1.0.0" } else { "2.0.0" };
        let sent = Instant::now();
        let id = server
            .deploy("app", "production", &json!({ "version": version }))
            .await?;
        let run = server
            .wait_run(&id, Duration::from_secs(300), Duration::from_millis(10))
            .await?;
        let done = sent.elapsed();
        if run["status"] != "success" {
            bail!("{id} ended {}: {run}\n{}", run["status"], server.log_tail());
        }
        // Each agent's first apply after the POST: the change reaching it.
        let mut firsts: Vec<Duration> = fakes
            .iter()
            .filter_map(|f| {
                f.received
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(s, _, at)| s == "app" && *at >= sent)
                    .map(|(_, _, at)| at.duration_since(sent))
                    .min()
            })
            .collect();
        if firsts.len() != fakes.len() {
            bail!(
                "{id}: only {} of {} agents received the change",
                firsts.len(),
                fakes.len()
            );
        }
        firsts.sort();
        let p50 = percentile(&firsts, 50.0);
        let p99 = percentile(&firsts, 99.0);
        let last = *firsts.last().unwrap_or(&Duration::ZERO);
        let label = if k == 0 { "initial deploy" } else { "recreate" };
        println!(
            "{id} {label} → {version}: change acknowledged by all {}: p50 {}  p99 {}  last {}; POST → success {}",
            fakes.len(),
            ms(p50),
            ms(p99),
            ms(last),
            secs(done)
        );
        if k > 0 {
            acks.push(p99.as_secs_f64());
            worst_change = worst_change.max(p99);
        }
    }

    // A rolling deploy across 4 targets of 2 instances each.
    let mut rolling = Vec::new();
    for k in 0..=o.deploys {
        let version = if k % 2 == 0 { "1.0.0" } else { "2.0.0" };
        let sent = Instant::now();
        let id = server
            .deploy("web", "production", &json!({ "version": version }))
            .await?;
        let run = server
            .wait_run(&id, Duration::from_secs(120), Duration::from_millis(10))
            .await?;
        let took = sent.elapsed();
        if run["status"] != "success" {
            bail!("{id} ended {}: {run}\n{}", run["status"], server.log_tail());
        }
        let steps = run["steps"].as_array().map_or(0, Vec::len);
        let label = if k == 0 { "initial" } else { "rolling" };
        println!(
            "{id} web {label} → {version} across 4 targets x 2 instances: POST → success {} ({steps} steps)",
            secs(took)
        );
        if k > 0 {
            rolling.push(took.as_secs_f64());
        }
    }
    let rss_end = procs::rss_kib(server.pid()).unwrap_or(0);
    let peak = procs::peak_rss_kib(server.pid()).unwrap_or(0);
    println!(
        "server memory at the end: VmRSS {:.1} MiB, VmHWM {:.1} MiB",
        rss_end as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    drop(server);

    let mut verdicts = Vec::new();
    if !acks.is_empty() {
        let med = median(&acks);
        verdicts.push(Verdict {
            what: format!(
                "desired-state change acknowledged by all {} agents, p99 (median of {})",
                o.agents,
                acks.len()
            ),
            measured: format!("{:.0} ms (worst {})", med * 1000.0, ms(worst_change)),
            target: "<= 1 s".into(),
            met: med <= 1.0,
        });
    }
    if !rolling.is_empty() {
        let med = median(&rolling);
        verdicts.push(Verdict {
            what: "rolling deploy across 4 targets x 2 instances (median)".into(),
            measured: format!("{med:.3} s"),
            target: "<= 3 s".into(),
            met: med <= 3.0,
        });
    }
    Ok(verdicts)
}

fn fleet_config(bins: &Bins, dir: &std::path::Path) -> Result<String> {
    let (p1, p2) = (procs::free_port()?, procs::free_port()?);
    Ok(format!(
        r#"server:
  listen: "127.0.0.1:0"
  data_dir: "{data}"
  rate_limits: off
environments:
  production: {{ display_name: Production, provider: local }}
fraises:
  app:
    type: api
    command: "exec {demo}"
    artifact_path: "{releases}/{{version}}"
    health_check: {{ type: http, path: /health, interval: 200ms, timeout: 1s, healthy_threshold: 1 }}
    environments:
      production: {{ port: {p1}, instances: 1, strategy: recreate, targets: {{ labels: {{ fleet: all }} }} }}
  web:
    type: api
    command: "exec {demo}"
    artifact_path: "{releases}/{{version}}"
    health_check: {{ type: http, path: /health, interval: 200ms, timeout: 1s, healthy_threshold: 1 }}
    environments:
      production: {{ port: {p2}, instances: 2, strategy: rolling, targets: {{ labels: {{ tier: web }} }} }}
"#,
        data = dir.join("data").display(),
        demo = bins.demo.display(),
        releases = dir.join("releases").display(),
    ))
}

async fn wait_online(server: &Server, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = server.get("/agents?status=online").await?;
        let online = v["agents"].as_array().map_or(0, Vec::len);
        if online >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {online} of {n} agents online after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Registers one simulated agent and starts its heartbeats and its task stream.
async fn join(url: &str, token: &str, name: &str, labels: &[(&str, &str)]) -> Result<Fake> {
    let http = reqwest::Client::new();
    let reg = Registration {
        join_token: token.to_string(),
        name: name.to_string(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        version: "bench".into(),
        capabilities: vec!["process".into(), "router".into()],
        host: HostFacts {
            hostname: name.to_string(),
            os: "linux".into(),
            arch: std::env::consts::ARCH.into(),
            cpus: 2,
            memory_bytes: 0,
        },
    };
    let r = http
        .post(format!("{url}/agents/register"))
        .json(&reg)
        .send()
        .await?;
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("registering {name}: {status} {body}");
    }
    let m: Membership = serde_json::from_value(body).context("a membership")?;
    let received: Received = Arc::default();
    // Heartbeats.
    {
        let (url, m, http, beat) = (url.to_string(), m.clone(), http.clone(), reg.heartbeat());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(m.heartbeat_interval_ms.max(100))).await;
                let _ = http
                    .post(format!("{url}/agents/{}/heartbeat", m.id))
                    .header("x-agent-token", &m.credential)
                    .json(&beat)
                    .send()
                    .await;
            }
        });
    }
    // The task stream.
    let ws_url = format!("{url}/agents/{}/task-stream", m.id).replacen("http", "ws", 1);
    let mut request = ws_url.as_str().into_client_request()?;
    request
        .headers_mut()
        .insert("x-agent-token", m.credential.parse()?);
    let (ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .with_context(|| format!("task stream of {name}"))?;
    let (mut sink, mut stream) = ws.split();
    let seen = received.clone();
    tokio::spawn(async move {
        let mut services: HashMap<String, ObservedService> = HashMap::new();
        while let Some(Ok(msg)) = stream.next().await {
            let text = match msg {
                Message::Text(t) => t,
                Message::Ping(p) => {
                    let _ = sink.send(Message::Pong(p)).await;
                    continue;
                }
                Message::Close(_) => break,
                _ => continue,
            };
            let Ok(ask) = serde_json::from_str::<Ask>(&text) else {
                continue;
            };
            let answer = match ask {
                Ask::Apply { id, desired } => {
                    seen.lock().unwrap().push((
                        desired.fraise.clone(),
                        desired.generation,
                        Instant::now(),
                    ));
                    let o = observed(&desired);
                    services.insert(
                        format!("{}@{}", desired.fraise, desired.environment),
                        o.clone(),
                    );
                    ok(id, json!(o))
                }
                Ask::Observe {
                    id,
                    fraise,
                    environment,
                } => ok(id, json!(services.get(&format!("{fraise}@{environment}")))),
                Ask::Exec { id, .. } | Ask::Verify { id, .. } => Answer {
                    id,
                    ok: None,
                    error: Some(Refusal {
                        status: 501,
                        code: "SIMULATED".into(),
                        message: "a simulated agent runs nothing".into(),
                    }),
                },
            };
            if let Ok(text) = serde_json::to_string(&answer) {
                if sink.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
            }
        }
    });
    Ok(Fake { received })
}

fn ok(id: u64, v: Value) -> Answer {
    Answer {
        id,
        ok: Some(v),
        error: None,
    }
}

/// What a real agent would report once the desired state's instances are up and healthy.
fn observed(d: &DesiredService) -> ObservedService {
    let now = chrono::Utc::now();
    ObservedService {
        fraise: d.fraise.clone(),
        environment: d.environment.clone(),
        generation: d.generation,
        port: d.port,
        listening: d.port.is_some(),
        instances: d
            .instances
            .iter()
            .map(|i| ObservedInstance {
                id: i.id.clone(),
                version: i.version.clone(),
                pid: None,
                port: None,
                state: InstanceState::Healthy,
                weight: i.weight,
                restarts: 0,
                started_at: Some(now),
                last_check_at: Some(now),
                checks_passed: 1,
                checks_total: 1,
                last_error: None,
                in_flight: 0,
            })
            .collect(),
        releases: d
            .releases
            .iter()
            .map(|(v, spec)| InstalledRelease {
                version: v.clone(),
                digest: "0".repeat(64),
                artifact: spec.artifact.as_ref().map(|a| a.digest.clone()),
                installed_at: now,
            })
            .collect(),
        ..ObservedService::default()
    }
}
