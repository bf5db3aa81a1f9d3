//! `fraisier-bench`: Fraisier's benchmark harness. It prints figures and ratios measured side
//! by side in one run — router vs nginx on the same upstream, the overhead of a rolling
//! deploy, the API over 100,000 stored runs — against the targets of the issue. Benchmarks,
//! not timed tests: nothing here fails a build because a machine is slow.
//!
//! Every process it starts (servers, agents and their instances, nginx, wrk) is stopped on
//! the way out, also on error and on Ctrl-C; temp dirs are removed; ports are ephemeral;
//! every wait is bounded.

mod api_bench;
mod deploy_bench;
mod fleet_bench;
mod fraisier;
mod instructions_bench;
mod load;
mod procs;
mod router_bench;
mod stats;
mod sweep_bench;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::{Args, FromArgMatches, Parser, Subcommand};

use crate::api_bench::ApiOpts;
use crate::deploy_bench::DeployOpts;
use crate::fleet_bench::FleetOpts;
use crate::fraisier::Bins;
use crate::router_bench::RouterOpts;
use crate::stats::Verdict;
use crate::sweep_bench::SweepOpts;

#[derive(Parser)]
#[command(
    name = "fraisier-bench",
    about = "Fraisier's benchmarks: router vs nginx, deploy overhead, the API over 100,000 runs, a fleet of 100 agents"
)]
struct Cli {
    /// Where `fraisier` and `fraisier-demo` are (default: this binary's directory, i.e.
    /// target/release)
    #[arg(long, global = true)]
    bin_dir: Option<PathBuf>,
    /// Short runs that check the harness works; the figures mean little
    #[arg(long, global = true)]
    quick: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Direct vs nginx vs Fraisier's router on the same upstream
    Router(RouterArgs),
    /// A rolling deploy of instances that are ready at once, POST → success, per step
    Deploy(DeployArgs),
    /// GET and POST /deployments with 100,000 runs stored; server memory
    Api(ApiArgs),
    /// 100 agents on one server: its CPU and memory, a change reaching every agent, and a
    /// rolling deploy across 4 targets
    Fleet(FleetArgs),
    /// Router vs nginx at 1, 16, 64 and 256 connections, on the demo app and a static upstream
    Sweep(SweepArgs),
    /// All three with their defaults, then the targets
    All,
    /// User-space instructions per request, router vs nginx on a static upstream, counted by
    /// callgrind: a figure that repeats where throughput does not
    Instructions(InstructionsArgs),
    /// Only Fraisier's router in front of one upstream, until Ctrl-C: a fixed process to
    /// profile (`perf stat -p`, `strace -c -p`) while a load tool runs against it
    Proxy(ProxyArgs),
}

#[derive(Args)]
struct InstructionsArgs {
    /// wrk connections
    #[arg(long, default_value_t = 4)]
    connections: u32,
    /// Seconds per proxy (after a 2 s warm-up)
    #[arg(long, default_value_t = 6)]
    duration: u64,
}

#[derive(Args)]
struct ProxyArgs {
    /// The upstream to forward to, e.g. 127.0.0.1:8080
    #[arg(long)]
    upstream: std::net::SocketAddr,
    /// Where to listen (default: an ephemeral port on 127.0.0.1, printed)
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
}

#[derive(Args)]
struct RouterArgs {
    /// Seconds per measured run
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of warm-up per target before the rounds
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Rounds; the order of the targets rotates every round; figures are medians
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// wrk threads
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// wrk connections
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Instances of the demo app behind the proxies
    #[arg(long, default_value_t = 1)]
    instances: u32,
    /// Requests per second of the fixed-rate latency runs (0: skip them)
    #[arg(long, default_value_t = 2000)]
    rate: u32,
    /// Connections of the fixed-rate latency runs
    #[arg(long, default_value_t = 8)]
    rate_connections: u32,
    /// Do not also measure the library router inside the bench process
    #[arg(long)]
    no_lib_router: bool,
    /// Measure only these targets, e.g. `--only agent,lib` to profile (ratios need direct,
    /// nginx and agent)
    #[arg(long, value_delimiter = ',', value_parser = ["direct", "nginx", "agent", "lib"])]
    only: Vec<String>,
    /// nginx's upstream `keepalive`: idle connections to the upstream cached per worker
    #[arg(long, default_value_t = 64)]
    nginx_keepalive: u32,
}

#[derive(Args)]
struct DeployArgs {
    /// Instances of the app
    #[arg(long, default_value_t = 4)]
    instances: u32,
    /// Rolling deploys measured after the initial one (versions alternate)
    #[arg(long, default_value_t = 3)]
    deploys: u32,
}

#[derive(Args)]
struct ApiArgs {
    /// Runs seeded before the server starts
    #[arg(long, default_value_t = 100_000)]
    runs: u32,
    /// `type: etl` fraises in the config (one active run per fraise × environment)
    #[arg(long, default_value_t = 300)]
    fraises: u32,
    /// GET /deployments requests
    #[arg(long, default_value_t = 2000)]
    requests: u32,
    /// Requests in flight at once
    #[arg(long, default_value_t = 4)]
    concurrency: u32,
    /// POST rounds: each POSTs once to every fraise, then waits for the runs to finish
    #[arg(long, default_value_t = 2)]
    post_rounds: u32,
}

#[derive(Args)]
struct SweepArgs {
    /// Connection counts
    #[arg(long, value_delimiter = ',', default_values_t = [1, 16, 64, 256])]
    connections: Vec<u32>,
    /// Seconds per measured run
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Seconds of warm-up per target and upstream
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Rounds per point; figures are medians, the ratio is the median of each round's
    #[arg(long, default_value_t = 3)]
    rounds: u32,
}

impl SweepArgs {
    fn opts(&self, quick: bool) -> SweepOpts {
        SweepOpts {
            connections: self.connections.iter().map(|c| (*c).max(1)).collect(),
            duration: Duration::from_secs(if quick { 1 } else { self.duration.max(1) }),
            warmup: Duration::from_secs(self.warmup.max(1)),
            rounds: if quick { 1 } else { self.rounds.max(1) },
        }
    }
}

#[derive(Args)]
struct FleetArgs {
    /// Simulated agents connected at once
    #[arg(long, default_value_t = 100)]
    agents: u32,
    /// Desired-state changes to every agent measured after the initial deploy
    #[arg(long, default_value_t = 5)]
    changes: u32,
    /// Rolling deploys across 4 targets measured after the initial one
    #[arg(long, default_value_t = 3)]
    deploys: u32,
    /// Seconds the agents only heartbeat while the server's CPU is measured
    #[arg(long, default_value_t = 20)]
    idle: u64,
}

impl FleetArgs {
    fn opts(&self, quick: bool) -> FleetOpts {
        FleetOpts {
            agents: if quick { 20 } else { self.agents.max(4) },
            changes: if quick { 1 } else { self.changes.max(1) },
            deploys: if quick { 1 } else { self.deploys.max(1) },
            idle: Duration::from_secs(if quick { 2 } else { self.idle.max(1) }),
        }
    }
}

/// A subcommand's arguments with every default.
fn defaults<T: Args + FromArgMatches>() -> Result<T> {
    let cmd = T::augment_args(clap::Command::new("defaults"));
    Ok(T::from_arg_matches(
        &cmd.try_get_matches_from(["defaults"])?,
    )?)
}

// === impl RouterArgs ===

impl RouterArgs {
    fn opts(&self, quick: bool) -> RouterOpts {
        RouterOpts {
            duration: Duration::from_secs(if quick { 2 } else { self.duration.max(1) }),
            warmup: Duration::from_secs(if quick { 1 } else { self.warmup.max(1) }),
            rounds: if quick { 1 } else { self.rounds.max(1) },
            threads: self.threads.max(1),
            connections: self.connections.max(1),
            instances: self.instances.max(1),
            rate: self.rate,
            rate_connections: self.rate_connections.max(1),
            lib_router: !self.no_lib_router,
            only: self.only.clone(),
            nginx_keepalive: self.nginx_keepalive.max(1),
        }
    }
}

impl DeployArgs {
    fn opts(&self, quick: bool) -> DeployOpts {
        DeployOpts {
            instances: self.instances.max(1),
            deploys: if quick { 1 } else { self.deploys },
        }
    }
}

impl ApiArgs {
    fn opts(&self, quick: bool) -> ApiOpts {
        ApiOpts {
            runs: if quick { 10_000 } else { self.runs },
            fraises: if quick { 50 } else { self.fraises.max(1) },
            requests: if quick { 200 } else { self.requests },
            concurrency: self.concurrency.max(1),
            post_rounds: if quick { 1 } else { self.post_rounds },
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fraisier-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        // On a signal the benchmark's future is dropped here, and with it every guard: the
        // processes it started are stopped before main returns.
        tokio::select! {
            r = bench(&cli) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted (Ctrl-C); cleaning up")),
            _ = term.recv() => Err(anyhow!("terminated (SIGTERM); cleaning up")),
        }
    });
    // Tasks still holding guards are dropped with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(30));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fraisier-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(cli: &Cli) -> Result<()> {
    if let Cmd::Proxy(a) = &cli.command {
        return sweep_bench::proxy_until_stopped(a.listen, a.upstream).await;
    }
    let bin_dir = match &cli.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory for this binary")?
            .to_path_buf(),
    };
    let bins = Bins::in_dir(&bin_dir)?;
    print_machine(&bins);
    let quick = cli.quick;
    let verdicts: Vec<Verdict> = match &cli.command {
        Cmd::Router(a) => router_bench::run(&bins, &a.opts(quick)).await?,
        Cmd::Deploy(a) => deploy_bench::run(&bins, &a.opts(quick)).await?,
        Cmd::Api(a) => api_bench::run(&bins, &a.opts(quick)).await?,
        Cmd::Fleet(a) => fleet_bench::run(&bins, &a.opts(quick)).await?,
        Cmd::Sweep(a) => sweep_bench::run(&bins, &a.opts(quick)).await?,
        Cmd::Instructions(a) => {
            let o = instructions_bench::InstructionsOpts {
                connections: a.connections.max(1),
                duration: Duration::from_secs(if quick { 2 } else { a.duration.max(1) }),
            };
            instructions_bench::run(&o).await?;
            Vec::new()
        }
        Cmd::Proxy(_) => unreachable!("served above"),
        Cmd::All => {
            let mut v = router_bench::run(&bins, &defaults::<RouterArgs>()?.opts(quick)).await?;
            v.extend(deploy_bench::run(&bins, &defaults::<DeployArgs>()?.opts(quick)).await?);
            v.extend(api_bench::run(&bins, &defaults::<ApiArgs>()?.opts(quick)).await?);
            v.extend(fleet_bench::run(&bins, &defaults::<FleetArgs>()?.opts(quick)).await?);
            v.extend(sweep_bench::run(&bins, &defaults::<SweepArgs>()?.opts(quick)).await?);
            v
        }
    };
    stats::print_verdicts(&verdicts);
    Ok(())
}

/// What the figures were measured on.
fn print_machine(bins: &Bins) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, m)| m.trim())
        .to_string();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or_else(
            || "?".to_string(),
            |k| format!("{:.1} GiB", k as f64 / 1048576.0),
        );
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "fraisier-bench at {} — {} CPUs ({model}), {mem} RAM, Linux {}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        std::thread::available_parallelism().map_or(1, usize::from),
        kernel.trim(),
    );
    let built = |p: &std::path::Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .map(|t| {
                chrono::DateTime::<chrono::Utc>::from(t)
                    .format("%H:%M:%S")
                    .to_string()
            })
            .unwrap_or_else(|_| "?".to_string())
    };
    println!(
        "binaries: {} (built {}), fraisier-demo (built {}), fraisier-bench (built {})",
        bins.fraisier.display(),
        built(&bins.fraisier),
        built(&bins.demo),
        std::env::current_exe().map_or_else(|_| "?".to_string(), |p| built(&p))
    );
    println!();
}
