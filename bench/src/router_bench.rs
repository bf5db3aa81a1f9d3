//! Router vs nginx: the same upstream (fraisier-demo instances started by a real Fraisier
//! agent), hit directly, through nginx and through Fraisier's router, with the same load
//! generator and settings, in one run, in an order rotated every round.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fraisier_agent::router::{Backend, Router};

use crate::fraisier::{self, Bins, Server};
use crate::load::{self, RateResult, WrkResult};
use crate::procs::{self, Proc};
use crate::stats::{median, ms, ms_f, Verdict};

#[derive(Clone, Debug)]
pub struct RouterOpts {
    pub duration: Duration,
    pub warmup: Duration,
    pub rounds: u32,
    pub threads: u32,
    pub connections: u32,
    pub instances: u32,
    /// Requests per second of the fixed-rate latency measurement (0 skips it).
    pub rate: u32,
    pub rate_connections: u32,
    /// Also measure the library router in the bench process.
    pub lib_router: bool,
    /// Measure only these targets (direct, nginx, agent, lib); empty: all.
    pub only: Vec<String>,
    /// nginx's `keepalive` (idle upstream connections cached per worker).
    pub nginx_keepalive: u32,
}

/// Other processes may use this share of the CPUs before a run starts.
pub(crate) const QUIET: f64 = 0.10;

struct Target {
    key: &'static str,
    name: &'static str,
    addr: SocketAddr,
    wrk: Vec<WrkResult>,
    rate: Vec<RateResult>,
    /// CPU share other processes used during each run.
    others: Vec<f64>,
    /// The proxy's processes (none for direct), for its CPU time per request.
    proxy_pids: Vec<u32>,
    /// CPU µs per request of the proxy and of the upstream, per wrk run.
    proxy_cpu: Vec<f64>,
    upstream_cpu: Vec<f64>,
}

// === impl Target ===

impl Target {
    fn new(
        key: &'static str,
        name: &'static str,
        addr: SocketAddr,
        proxy_pids: Vec<u32>,
    ) -> Target {
        Target {
            key,
            name,
            addr,
            proxy_pids,
            proxy_cpu: Vec::new(),
            upstream_cpu: Vec::new(),
            wrk: Vec::new(),
            rate: Vec::new(),
            others: Vec::new(),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    fn rps(&self) -> f64 {
        median(
            &self
                .wrk
                .iter()
                .map(|r| r.requests_per_sec)
                .collect::<Vec<_>>(),
        )
    }

    fn wrk_ms(&self, pick: fn(&WrkResult) -> Duration) -> f64 {
        median(
            &self
                .wrk
                .iter()
                .map(|r| pick(r).as_secs_f64() * 1000.0)
                .collect::<Vec<_>>(),
        )
    }

    fn rate_ms(&self, pick: fn(&RateResult) -> Duration) -> f64 {
        median(
            &self
                .rate
                .iter()
                .map(|r| pick(r).as_secs_f64() * 1000.0)
                .collect::<Vec<_>>(),
        )
    }
}

pub async fn run(bins: &Bins, o: &RouterOpts) -> Result<Vec<Verdict>> {
    println!("== Router vs nginx: the same upstream, the same load, side by side ==");
    let router_port = procs::free_port()?;
    let (dir, server) = fraisier::deployed_demo(bins, router_port, o.instances).await?;
    let ports = server
        .instance_ports("app", "production", o.instances as usize)
        .await?;
    let upstreams: Vec<SocketAddr> = ports
        .iter()
        .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
        .collect();

    let nginx = Nginx::start(dir.path(), &upstreams, o.nginx_keepalive)?;
    let lib = if o.lib_router {
        let router = Router::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        router.set_backends(
            upstreams
                .iter()
                .enumerate()
                .map(|(i, addr)| Backend {
                    id: format!("bench-{i}"),
                    version: "1.0.0".to_string(),
                    addr: *addr,
                    weight: 1,
                })
                .collect(),
        );
        Some(router)
    } else {
        None
    };

    let upstream_pids: Vec<u32> = procs::instance_records(server.agent_dir())
        .iter()
        .filter_map(|r| u32::try_from(r["pid"].as_u64()?).ok())
        .collect();
    let mut targets = vec![
        Target::new("direct", "direct", upstreams[0], Vec::new()),
        Target::new(
            "nginx",
            "nginx",
            SocketAddr::from(([127, 0, 0, 1], nginx.port)),
            procs::children_of(nginx.proc.pid()),
        ),
        Target::new(
            "agent",
            "fraisier router (agent)",
            SocketAddr::from(([127, 0, 0, 1], router_port)),
            server.agent_pid().into_iter().collect(),
        ),
    ];
    if let Some(r) = &lib {
        targets.push(Target::new(
            "lib",
            "fraisier router (lib)",
            r.local_addr(),
            vec![std::process::id()],
        ));
    }
    targets.retain(|t| o.only.is_empty() || o.only.iter().any(|k| k == t.key));
    for t in &targets {
        check_answers(&t.url())
            .await
            .with_context(|| format!("{} at {}", t.name, t.url()))?;
    }

    println!(
        "upstream: {} x fraisier-demo 1.0.0 (release build), started by the Fraisier agent on {}",
        upstreams.len(),
        upstreams
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  direct: wrk to the first instance{}",
        if upstreams.len() > 1 {
            " only (the proxies spread over all)"
        } else {
            ""
        }
    );
    println!(
        "  nginx: {} — worker_processes auto, upstream keepalive {} (idle connections cached per worker), proxy_http_version 1.1, access_log off",
        nginx_version(),
        o.nginx_keepalive
    );
    println!("  fraisier router (agent): the router of `fraisier agent`, deployed by `fraisier serve` (POST /deployments/app/production)");
    if lib.is_some() {
        println!("  fraisier router (lib): fraisier_agent::router::Router in the bench process, same backends");
    }
    println!(
        "load: wrk -t{} -c{} --latency, {} s per run after a {} s warm-up, {} round(s), order rotated each round; \
         wrk, the proxies and the upstream share the machine's {} CPUs alike for every target",
        o.threads,
        o.connections,
        o.duration.as_secs(),
        o.warmup.as_secs(),
        o.rounds,
        cpus()
    );

    // Our processes, to tell the CPU they use from what anything else on the machine uses.
    let mut ours = vec![std::process::id(), server.pid(), nginx.proc.pid()];
    ours.extend(server.agent_pid());
    ours.extend(procs::children_of(nginx.proc.pid()));
    ours.extend(&upstream_pids);
    println!(
        "each run waits (up to 60 s) until other processes use < {:.0} % of the CPUs, and reports what they used during it (\"others\")",
        QUIET * 100.0
    );

    for t in &targets {
        load::wrk(&t.url(), o.threads, o.connections, o.warmup).await?;
    }
    println!();
    println!("-- throughput: wrk, closed loop --");
    for round in 0..o.rounds as usize {
        for i in rotated(targets.len(), round) {
            let t = &mut targets[i];
            procs::wait_quiet(&ours, QUIET, Duration::from_secs(60)).await;
            let before = procs::cpu_snapshot(&ours);
            let (proxy0, up0) = (
                procs::process_ticks_split(&t.proxy_pids),
                procs::process_ticks(&upstream_pids),
            );
            let r = load::wrk(&t.url(), o.threads, o.connections, o.duration).await?;
            let others = procs::foreign_share(&before, &procs::cpu_snapshot(&ours));
            let per_req = |ticks: u64| ticks as f64 * procs::TICK_US / r.requests.max(1) as f64;
            let proxy1 = procs::process_ticks_split(&t.proxy_pids);
            let proxy_sys = per_req(proxy1.1 - proxy0.1);
            let proxy_cpu = per_req(proxy1.0 - proxy0.0) + proxy_sys;
            let upstream_cpu = per_req(procs::process_ticks(&upstream_pids) - up0);
            println!(
                "round {}  {:<24} {:>7.0} req/s  p50 {:>9}  p99 {:>9}  max {:>9}  errors {}  cpu/req: proxy {:>4.1} us (sys {:>4.1}), upstream {:>4.1} us  others {:.0} %",
                round + 1,
                t.name,
                r.requests_per_sec,
                ms(r.p50),
                ms(r.p99),
                ms(r.max),
                r.errors,
                proxy_cpu,
                proxy_sys,
                upstream_cpu,
                others * 100.0
            );
            t.proxy_cpu.push(proxy_cpu);
            t.upstream_cpu.push(upstream_cpu);
            t.others.push(others);
            t.wrk.push(r);
        }
    }

    if o.rate > 0 {
        println!();
        println!(
            "-- latency at a fixed rate: {} req/s over {} keep-alive connections, {} s per run, \
             from writing the request to the last byte of the response --",
            o.rate,
            o.rate_connections,
            o.duration.as_secs()
        );
        for round in 0..o.rounds as usize {
            for i in rotated(targets.len(), round) {
                let t = &mut targets[i];
                procs::wait_quiet(&ours, QUIET, Duration::from_secs(60)).await;
                let before = procs::cpu_snapshot(&ours);
                let r = load::fixed_rate(t.addr, o.rate, o.rate_connections, o.duration).await?;
                let others = procs::foreign_share(&before, &procs::cpu_snapshot(&ours));
                t.others.push(others);
                println!(
                    "round {}  {:<24} {:>7} sent {:>8.0} req/s  p50 {:>10}  p90 {:>10}  p99 {:>10}  max {:>10}  errors {}  late {}  others {:.0} %",
                    round + 1,
                    t.name,
                    r.sent,
                    r.achieved_rate,
                    ms(r.latency.p50),
                    ms(r.latency.p90),
                    ms(r.latency.p99),
                    ms(r.latency.max),
                    r.errors,
                    r.late,
                    others * 100.0
                );
                t.rate.push(r);
            }
        }
    }

    // Everything measured: stop the extra router before printing.
    if let Some(r) = lib {
        r.shutdown(Duration::from_secs(1)).await;
    }
    drop(nginx);

    println!();
    println!("-- summary (median of {} round(s)) --", o.rounds);
    let mut table = String::new();
    let _ = writeln!(
        table,
        "{:<24} {:>10} {:>10} {:>10} {:>13} {:>13} {:>14} {:>14}",
        "target",
        "wrk req/s",
        "wrk p50",
        "wrk p99",
        "proxy cpu/req",
        "upstr cpu/req",
        "fixed-rate p50",
        "fixed-rate p99"
    );
    for t in &targets {
        let proxy = if t.proxy_pids.is_empty() {
            "-".to_string()
        } else {
            format!("{:.1} us", median(&t.proxy_cpu))
        };
        let _ = writeln!(
            table,
            "{:<24} {:>10.0} {:>10} {:>10} {:>13} {:>13} {:>14} {:>14}",
            t.name,
            t.rps(),
            ms_f(t.wrk_ms(|r| r.p50)),
            ms_f(t.wrk_ms(|r| r.p99)),
            proxy,
            format!("{:.1} us", median(&t.upstream_cpu)),
            rate_cell(t, |r| r.latency.p50),
            rate_cell(t, |r| r.latency.p99),
        );
    }
    print!("{table}");
    let worst_others = targets
        .iter()
        .flat_map(|t| t.others.iter().copied())
        .fold(0.0, f64::max);
    if worst_others > QUIET {
        println!(
            "note: other processes used up to {:.0} % of the CPUs during some runs: those figures are disturbed",
            worst_others * 100.0
        );
    }
    let find = |key: &str| targets.iter().find(|t| t.key == key);
    let mut verdicts = Vec::new();
    if let (Some(direct), Some(nginx_t), Some(router)) =
        (find("direct"), find("nginx"), find("agent"))
    {
        let ratio = router.rps() / nginx_t.rps();
        let ratio_direct = router.rps() / direct.rps();
        let nginx_direct = nginx_t.rps() / direct.rps();
        let added_sat = router.wrk_ms(|r| r.p99) - direct.wrk_ms(|r| r.p99);
        let added_sat_nginx = nginx_t.wrk_ms(|r| r.p99) - direct.wrk_ms(|r| r.p99);
        println!("throughput router/nginx: {ratio:.2}x   router/direct: {ratio_direct:.2}x   nginx/direct: {nginx_direct:.2}x");
        println!(
            "p99 added over direct under wrk saturation: router {added_sat:+.3} ms, nginx {added_sat_nginx:+.3} ms \
             (at saturation p99 is mostly queueing: a slower hop can even lower it)"
        );
        verdicts.push(Verdict {
            what: "router/nginx throughput (wrk, median)".to_string(),
            measured: format!("{ratio:.2}x"),
            target: ">= 1.00x".to_string(),
            met: ratio >= 1.0,
        });
        if o.rate > 0 {
            let added = router.rate_ms(|r| r.latency.p99) - direct.rate_ms(|r| r.latency.p99);
            let added_nginx =
                nginx_t.rate_ms(|r| r.latency.p99) - direct.rate_ms(|r| r.latency.p99);
            println!(
                "p99 added over direct at {} req/s: router {added:+.3} ms, nginx {added_nginx:+.3} ms",
                o.rate
            );
            verdicts.push(Verdict {
                what: format!("router p99 added over direct at {} req/s", o.rate),
                measured: format!("{added:+.3} ms"),
                target: "<= 1 ms".to_string(),
                met: added <= 1.0,
            });
        }
    } else {
        println!("(ratios and targets need the direct, nginx and agent targets)");
    }
    let counted = router_counts(&server).await;
    if !counted.is_empty() {
        println!("{counted}");
    }
    drop(server);
    Ok(verdicts)
}

/// What the server reports of the agent router's own counters: a cross-check that the load
/// went through it.
async fn router_counts(server: &Server) -> String {
    match server.get("/fraises/app/status").await {
        Ok((200, v)) => {
            let m = &v["environments"]["production"]["metrics"];
            format!(
                "the agent's router counted {} requests, error rate {}",
                m["requests"], m["error_rate"]
            )
        }
        _ => String::new(),
    }
}

/// A fixed-rate figure for the summary, or "-" when that part was skipped.
fn rate_cell(t: &Target, pick: fn(&RateResult) -> Duration) -> String {
    if t.rate.is_empty() {
        "-".to_string()
    } else {
        ms_f(t.rate_ms(pick))
    }
}

/// Indexes 0..n starting at `round % n`.
pub(crate) fn rotated(n: usize, round: usize) -> Vec<usize> {
    (0..n).map(|i| (i + round) % n).collect()
}

pub(crate) async fn check_answers(url: &str) -> Result<()> {
    let r = reqwest::get(url).await?;
    let status = r.status();
    let body = r.text().await?;
    if !status.is_success() || !body.contains("\"version\"") {
        bail!("GET {url}: {status} {body}");
    }
    Ok(())
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

pub(crate) fn nginx_version() -> String {
    Command::new("nginx")
        .arg("-v")
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stderr)
                .trim()
                .replace("nginx version: ", "")
        })
        .unwrap_or_else(|| "nginx".to_string())
}

/// nginx in the foreground (`daemon off`) as a reverse proxy with keep-alive to the
/// upstream; stopped on drop (SIGTERM to the master, then SIGKILL for stray workers).
pub(crate) struct Nginx {
    pub(crate) proc: Proc,
    pub(crate) port: u16,
}

// === impl Nginx ===

impl Nginx {
    fn start(dir: &Path, upstreams: &[SocketAddr], keepalive: u32) -> Result<Nginx> {
        Self::start_in(&dir.join("nginx"), Some((upstreams, keepalive)))
    }

    /// A reverse proxy to `upstream` (with its keepalive), or with `None` a static server of
    /// one small file (`GET /` answers it), each in a root of its own.
    pub(crate) fn start_in(root: &Path, upstream: Option<(&[SocketAddr], u32)>) -> Result<Nginx> {
        Self::launch(root, upstream, None)
    }

    /// The same nginx as one process (no master, one worker) started by `wrapper`, e.g.
    /// valgrind, which follows no forks; it may take a while to listen.
    pub(crate) fn start_under(
        wrapper: &[String],
        root: &Path,
        upstream: Option<(&[SocketAddr], u32)>,
    ) -> Result<Nginx> {
        Self::launch(root, upstream, Some(wrapper))
    }

    fn launch(
        root: &Path,
        upstream: Option<(&[SocketAddr], u32)>,
        wrapper: Option<&[String]>,
    ) -> Result<Nginx> {
        let root = root.to_path_buf();
        std::fs::create_dir_all(root.join("logs"))?;
        std::fs::create_dir_all(root.join("www"))?;
        std::fs::write(
            root.join("www/index.json"),
            "{\"version\":\"static\",\"served_by\":\"nginx\"}\n",
        )?;
        let port = procs::free_port()?;
        let (upstream, location) = match upstream {
            Some((upstreams, keepalive)) => {
                let servers: String = upstreams
                    .iter()
                    .map(|a| format!("    server {a};\n"))
                    .collect();
                (
                    format!(
                        "  upstream demo {{\n{servers}    keepalive {keepalive};\n    keepalive_requests 100000;\n  }}\n"
                    ),
                    "      proxy_pass http://demo;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_set_header Host $host;\n      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n".to_string(),
                )
            }
            None => (
                String::new(),
                format!(
                    "      root {};\n      index index.json;\n      default_type application/json;\n",
                    root.join("www").display()
                ),
            ),
        };
        let user = if procs::running_as_root() {
            "user root;\n"
        } else {
            ""
        };
        let (master, workers) = if wrapper.is_some() {
            ("off", "1")
        } else {
            ("on", "auto")
        };
        let conf = format!(
            r#"# A production-style nginx: keep-alive, no access log; a reverse proxy or a static server.
{user}daemon off;
master_process {master};
worker_processes {workers};
pid {root}/nginx.pid;
error_log {root}/logs/error.log warn;
events {{
  worker_connections 4096;
}}
http {{
  access_log off;
  client_body_temp_path {root}/client_body;
  proxy_temp_path {root}/proxy;
  fastcgi_temp_path {root}/fastcgi;
  uwsgi_temp_path {root}/uwsgi;
  scgi_temp_path {root}/scgi;
  keepalive_requests 100000;
{upstream}  server {{
    listen 127.0.0.1:{port} reuseport;
    location / {{
{location}    }}
  }}
}}
"#,
            root = root.display()
        );
        let conf_path = root.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let mut cmd = match wrapper {
            Some([program, args @ ..]) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg("nginx");
                cmd
            }
            _ => Command::new("nginx"),
        };
        let mut proc = Proc::spawn(
            "nginx",
            cmd.arg("-p")
                .arg(&root)
                .arg("-e")
                .arg(root.join("logs/error.log"))
                .arg("-c")
                .arg(&conf_path)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(root.join("logs/stderr.log"))?),
        )
        .context("is nginx installed? (apt-get install -y nginx, or run scripts/bench.sh)")?
        .reaping_children();
        let wait = if wrapper.is_some() { 60 } else { 10 };
        let deadline = std::time::Instant::now() + Duration::from_secs(wait);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            proc.check_running().with_context(|| {
                format!(
                    "nginx did not start; {}",
                    fraisier::tail(&root.join("logs/error.log"))
                )
            })?;
            if std::time::Instant::now() > deadline {
                bail!("nginx is not listening on {port} after {wait} s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Nginx { proc, port })
    }
}
