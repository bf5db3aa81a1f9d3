//! The router against nginx at several connection counts and on two upstreams: the demo
//! app (started by a real Fraisier agent) and a fast static one (nginx serving a small
//! file). At each point: wrk straight to the upstream, through nginx as a reverse proxy, and
//! through Fraisier's router, one after the other, in an order rotated every point.
//!
//! The router here is `fraisier_agent::router::Router` in the bench process (the same code
//! the agent runs — benchmark 1 measures both side by side and finds them alike), because
//! the agent's own router fronts only the fraise's instances, never a static upstream.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use fraisier_agent::router::{Backend, Router};

use crate::fraisier::{self, Bins};
use crate::load;
use crate::procs;
use crate::router_bench::{check_answers, nginx_version, rotated, Nginx, QUIET};
use crate::stats::{ms, Verdict};

#[derive(Clone, Debug)]
pub struct SweepOpts {
    pub connections: Vec<u32>,
    pub duration: Duration,
    pub warmup: Duration,
}

pub async fn run(bins: &Bins, o: &SweepOpts) -> Result<Vec<Verdict>> {
    println!();
    println!(
        "== Router vs nginx at {} connections, on the demo app and on a static upstream ==",
        o.connections
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (dir, server) = fraisier::deployed_demo(bins, procs::free_port()?, 1).await?;
    let demo = SocketAddr::from((
        [127, 0, 0, 1],
        server.instance_ports("app", "production", 1).await?[0],
    ));
    let static_server = Nginx::start_in(&dir.path().join("nginx-static"), None)?;
    let statik = SocketAddr::from(([127, 0, 0, 1], static_server.port));
    println!(
        "nginx: {} as the proxy (worker_processes auto, upstream keepalive 64, proxy_http_version 1.1, access_log off) and as the static upstream (a 44-byte JSON file)",
        nginx_version()
    );
    println!(
        "router: fraisier_agent::router::Router in the bench process; load: wrk -t min(2, c) -c c --latency, {} s per run after a {} s warm-up per target, 1 round, order rotated per point",
        o.duration.as_secs(),
        o.warmup.as_secs()
    );

    let mut ours = vec![std::process::id(), server.pid(), static_server.proc.pid()];
    ours.extend(server.agent_pid());
    ours.extend(procs::children_of(static_server.proc.pid()));
    let mut worst: Option<(f64, String)> = None;
    for (i, (label, upstream)) in [("demo app", demo), ("static file", statik)]
        .into_iter()
        .enumerate()
    {
        let proxy = Nginx::start_in(
            &dir.path().join(format!("nginx-proxy-{i}")),
            Some((&[upstream], 64)),
        )?;
        let router = Router::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        router.set_backends(vec![Backend {
            id: "bench-0".into(),
            version: "1.0.0".into(),
            addr: upstream,
            weight: 1,
        }]);
        let mut mine = ours.clone();
        mine.push(proxy.proc.pid());
        mine.extend(procs::children_of(proxy.proc.pid()));
        if i == 0 {
            mine.extend(
                procs::instance_records(server.agent_dir())
                    .iter()
                    .filter_map(|r| u32::try_from(r["pid"].as_u64()?).ok()),
            );
        }
        let targets = [
            ("direct", upstream),
            ("nginx", SocketAddr::from(([127, 0, 0, 1], proxy.port))),
            ("router", router.local_addr()),
        ];
        for (_, addr) in &targets {
            check_answers(&format!("http://{addr}/")).await?;
            load::wrk(&format!("http://{addr}/"), 2, 16, o.warmup).await?;
        }
        println!();
        println!("-- upstream: {label} ({upstream}) --");
        println!(
            "{:>5}  {:>12} {:>12} {:>12}  {:>13}  {:>10} {:>10} {:>10}  errors  others",
            "conns",
            "direct r/s",
            "nginx r/s",
            "router r/s",
            "router/nginx",
            "p99 dir",
            "p99 ngx",
            "p99 rtr"
        );
        for (k, &c) in o.connections.iter().enumerate() {
            let mut rps = [0.0f64; 3];
            let mut p99 = [Duration::ZERO; 3];
            let mut errors = 0;
            let mut others: f64 = 0.0;
            for j in rotated(3, k) {
                let (_, addr) = targets[j];
                procs::wait_quiet(&mine, QUIET, Duration::from_secs(60)).await;
                let before = procs::cpu_snapshot(&mine);
                let r = load::wrk(&format!("http://{addr}/"), c.min(2), c, o.duration).await?;
                others = others.max(procs::foreign_share(&before, &procs::cpu_snapshot(&mine)));
                rps[j] = r.requests_per_sec;
                p99[j] = r.p99;
                errors += r.errors;
            }
            let ratio = rps[2] / rps[1].max(1.0);
            println!(
                "{c:>5}  {:>12.0} {:>12.0} {:>12.0}  {:>12.2}x  {:>10} {:>10} {:>10}  {errors:>6}  {:>4.0} %",
                rps[0],
                rps[1],
                rps[2],
                ratio,
                ms(p99[0]),
                ms(p99[1]),
                ms(p99[2]),
                others * 100.0
            );
            if worst.as_ref().is_none_or(|(w, _)| ratio < *w) {
                worst = Some((ratio, format!("{label}, {c} connections")));
            }
        }
        router.shutdown(Duration::from_secs(1)).await;
        drop(proxy);
    }
    drop(static_server);
    drop(server);
    Ok(worst
        .map(|(ratio, at)| {
            vec![Verdict {
                what: "router/nginx throughput, lowest over every point".into(),
                measured: format!("{ratio:.2}x ({at})"),
                target: ">= 1.0x".into(),
                met: ratio >= 1.0,
            }]
        })
        .unwrap_or_default())
}
