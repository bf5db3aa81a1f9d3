//! The API over a big history: 100,000 runs seeded into a fresh SQLite data dir with
//! `Store::import_runs` before the server starts, then the latency of listing and of
//! creating runs, and the server's resident memory before and after.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use chrono::Utc;
use fraisier_model::run::{RunKind, RunStatus};
use fraisier_store::{Run, Store, DEFAULT_TENANT};
use serde_json::json;

use crate::fraisier::{Bins, Server};
use crate::procs;
use crate::stats::{mib, ms, Summary, Verdict};

#[derive(Clone, Debug)]
pub struct ApiOpts {
    pub runs: u32,
    pub fraises: u32,
    pub requests: u32,
    pub concurrency: u32,
    /// Each round POSTs once to every fraise, then waits for all those runs to finish.
    pub post_rounds: u32,
}

/// POSTs measured one at a time on an idle server.
const ISOLATED_POSTS: u32 = 100;

fn fraise_name(i: u32) -> String {
    format!("etl_{i:03}")
}

pub async fn run(bins: &Bins, o: &ApiOpts) -> Result<Vec<Verdict>> {
    println!();
    println!(
        "== API with {} stored runs (SQLite, release build) ==",
        o.runs
    );
    let dir = tempfile::Builder::new()
        .prefix("fraisier-bench-")
        .tempdir()?;
    let data_dir = dir.path().join("data");
    let releases = dir.path().join("releases");
    std::fs::create_dir_all(releases.join("1.0.0"))?;
    std::fs::write(releases.join("1.0.0/job.txt"), "a job that does nothing\n")?;

    let started = Instant::now();
    let store = Store::open_sqlite_in(&data_dir).await?;
    store.import_runs(&seed_runs(o.runs, o.fraises)).await?;
    store.close().await;
    drop(store);
    let db_kib = ["fraisier.db", "fraisier.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(data_dir.join(f)).ok())
        .map(|m| m.len() / 1024)
        .sum::<u64>();
    println!(
        "seeded {} runs over {} fraises with Store::import_runs in {:.2} s; database {}",
        o.runs,
        o.fraises,
        started.elapsed().as_secs_f64(),
        mib(db_kib)
    );

    let config = dir.path().join("fraisier.yaml");
    std::fs::write(&config, etl_config(&data_dir, &releases, o.fraises))?;
    let started = Instant::now();
    let server = Server::start(bins, &config, &data_dir).await?;
    println!(
        "server up and healthy in {:.2} s with {} `type: etl` fraises (command `true`)",
        started.elapsed().as_secs_f64(),
        o.fraises
    );
    let rss_before = memory(&server);
    println!(
        "server VmRSS {}, agent VmRSS {}",
        rss_before.0, rss_before.1
    );

    // The list, as the dashboard and `fraisier list` ask for it.
    let list = "/deployments?limit=50&sort=-created_at";
    let (status, first) = server.get(list).await?;
    let total = first["pagination"]["total"].as_u64().unwrap_or(0);
    if status != 200 || total < u64::from(o.runs) {
        bail!("GET {list}: {status}, total {total}: {first}");
    }
    for _ in 0..50 {
        server.get(list).await?;
    }
    println!();
    let (get_one, _) = measure_get(&server, list, 1, (o.requests / 4).max(1)).await?;
    let (get, errors) = measure_get(&server, list, o.concurrency, o.requests).await?;
    println!("server VmRSS after the GETs {}", memory(&server).0);

    // Creating runs: one active run per fraise × environment, so each round POSTs once to
    // every fraise and then waits until all those runs have finished.
    let mut post_lat = Vec::new();
    let mut post_errors = 0;
    let mut post_cpu = Vec::new();
    for round in 0..o.post_rounds {
        let ticks = procs::process_ticks(&[server.pid()]);
        let started = Instant::now();
        let (lat, errors) = concurrently(&server, o.concurrency, o.fraises, |s, i| {
            Box::pin(async move {
                let path = format!("/deployments/{}/production", fraise_name(i));
                let body = json!({"version": "1.0.0"});
                let t = Instant::now();
                let status = s.timed(reqwest::Method::POST, &path, Some(&body)).await?;
                Ok((status == 202, t.elapsed()))
            })
        })
        .await?;
        let posted = started.elapsed();
        post_cpu.push(cpu_ms_per_request(&server, ticks, lat.len()));
        post_errors += errors;
        post_lat.extend(lat);
        let drained = wait_idle(&server, Duration::from_secs(300)).await?;
        println!(
            "POST round {}: {} runs created in {:.2} s, all finished {:.2} s later (errors {errors}); server VmRSS {}",
            round + 1,
            o.fraises,
            posted.as_secs_f64(),
            drained.as_secs_f64(),
            memory(&server).0
        );
    }
    let post = Summary::of(&mut post_lat);
    println!();
    println!(
        "POST /deployments/{{fraise}}/production → 202, {} concurrent, runs executing meanwhile: {} requests, errors {post_errors}; \
         server CPU {} ms/request (the runs' work included)",
        o.concurrency,
        post.count,
        post_cpu
            .iter()
            .map(|c| format!("{c:.2}"))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    print_summary(&post);

    // The same request on an idle server: one at a time, each run finished before the next.
    let isolated_n = o.fraises.min(ISOLATED_POSTS);
    let mut isolated_lat = Vec::new();
    let mut isolated_errors = 0;
    for i in 0..isolated_n {
        let path = format!("/deployments/{}/production", fraise_name(i));
        let body = json!({"version": "1.0.0"});
        let t = Instant::now();
        let status = server
            .timed(reqwest::Method::POST, &path, Some(&body))
            .await?;
        let took = t.elapsed();
        if status == 202 {
            isolated_lat.push(took);
        } else {
            isolated_errors += 1;
        }
        wait_idle(&server, Duration::from_secs(60)).await?;
    }
    let isolated = Summary::of(&mut isolated_lat);
    println!();
    println!(
        "POST /deployments/{{fraise}}/production → 202, one at a time on an idle server (each run finished before the next POST): {} requests, errors {isolated_errors}",
        isolated.count
    );
    print_summary(&isolated);

    let rss_after = memory(&server);
    println!();
    println!(
        "server memory (VmRSS): before {} → after {}",
        rss_before.0, rss_after.0
    );
    println!(
        "agent memory (VmRSS):  before {} → after {}",
        rss_before.1, rss_after.1
    );
    if let Some(peak) = procs::peak_rss_kib(server.pid()) {
        println!("server peak (VmHWM): {}", mib(peak));
    }
    drop(server);
    Ok(vec![
        Verdict {
            what: format!("GET /deployments p99, {} runs, 1 at a time", o.runs),
            measured: ms(get_one.p99),
            target: "<= 20 ms".to_string(),
            met: get_one.p99 <= Duration::from_millis(20),
        },
        Verdict {
            what: format!(
                "GET /deployments p99, {} runs, {} concurrent",
                o.runs, o.concurrency
            ),
            measured: ms(get.p99),
            target: "<= 20 ms".to_string(),
            met: get.p99 <= Duration::from_millis(20) && errors == 0,
        },
        Verdict {
            what: format!("POST p99, {} concurrent, runs executing", o.concurrency),
            measured: ms(post.p99),
            target: "<= 20 ms".to_string(),
            met: post.p99 <= Duration::from_millis(20) && post_errors == 0,
        },
        Verdict {
            what: "POST p99, one at a time, idle server".to_string(),
            measured: ms(isolated.p99),
            target: "<= 20 ms".to_string(),
            met: isolated.p99 <= Duration::from_millis(20) && isolated_errors == 0,
        },
    ])
}

fn print_summary(s: &Summary) {
    println!(
        "  p50 {}   p90 {}   p99 {}   max {}",
        ms(s.p50),
        ms(s.p90),
        ms(s.p99),
        ms(s.max)
    );
}

/// `n` GETs of `path`, `concurrency` at a time: latencies and failures, printed.
async fn measure_get(
    server: &Server,
    path: &'static str,
    concurrency: u32,
    n: u32,
) -> Result<(Summary, u64)> {
    let ticks = procs::process_ticks(&[server.pid()]);
    let started = Instant::now();
    let (mut lat, errors) = concurrently(server, concurrency, n, |s, _| {
        Box::pin(async move {
            let t = Instant::now();
            let status = s.timed(reqwest::Method::GET, path, None).await?;
            Ok((status == 200, t.elapsed()))
        })
    })
    .await?;
    let elapsed = started.elapsed();
    let cpu = cpu_ms_per_request(server, ticks, lat.len());
    let get = Summary::of(&mut lat);
    println!(
        "GET {path}: {} requests, {concurrency} concurrent, {:.0} req/s, server CPU {cpu:.2} ms/request, errors {errors}",
        get.count,
        get.count as f64 / elapsed.as_secs_f64()
    );
    print_summary(&get);
    Ok((get, errors))
}

/// The server's CPU time since `ticks`, per request.
fn cpu_ms_per_request(server: &Server, ticks: u64, requests: usize) -> f64 {
    let used = procs::process_ticks(&[server.pid()]).saturating_sub(ticks);
    used as f64 * procs::TICK_US / 1000.0 / requests.max(1) as f64
}

/// (server, agent) VmRSS with its anonymous and file-backed parts, formatted.
fn memory(server: &Server) -> (String, String) {
    let fmt = |pid: Option<u32>| {
        let Some(pid) = pid else {
            return "?".to_string();
        };
        let total = procs::rss_kib(pid).map_or_else(|| "?".to_string(), mib);
        match procs::rss_split_kib(pid) {
            Some((anon, file)) => format!("{total} (anon {}, file {})", mib(anon), mib(file)),
            None => total,
        }
    };
    (fmt(Some(server.pid())), fmt(server.agent_pid()))
}

type Job<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(bool, Duration)>> + 'a>>;

/// Runs `job(server, i)` for i in 0..n, `workers` at a time, each worker taking the next i;
/// returns the latencies of the successful ones and the count of the others. The workers are
/// futures of the caller's task, not spawned tasks: dropping the caller (Ctrl-C) drops them,
/// and nothing keeps the server alive past its owner.
async fn concurrently<'a>(
    server: &'a Server,
    workers: u32,
    n: u32,
    job: impl Fn(&'a Server, u32) -> Job<'a>,
) -> Result<(Vec<Duration>, u64)> {
    let next = std::cell::Cell::new(0u32);
    let (next, job) = (&next, &job);
    let results = futures_util::future::join_all((0..workers.max(1)).map(|_| async move {
        let mut lat = Vec::new();
        let mut errors = 0u64;
        loop {
            let i = next.get();
            if i >= n {
                break;
            }
            next.set(i + 1);
            match job(server, i).await {
                Ok((true, d)) => lat.push(d),
                _ => errors += 1,
            }
        }
        (lat, errors)
    }))
    .await;
    let mut lat = Vec::new();
    let mut errors = 0;
    for (l, e) in results {
        lat.extend(l);
        errors += e;
    }
    Ok((lat, errors))
}

/// Waits until no run is pending or in progress; how long that took.
async fn wait_idle(server: &Server, timeout: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let mut active = 0;
        for status in ["pending", "in_progress"] {
            let (code, v) = server
                .get(&format!("/deployments?status={status}&limit=1"))
                .await?;
            if code != 200 {
                bail!("GET /deployments?status={status}: {code} {v}");
            }
            active += v["pagination"]["total"].as_u64().unwrap_or(0);
        }
        if active == 0 {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            bail!("{active} runs still active after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `n` finished runs over `fraises` fraises in production, one every 5 minutes up to now.
fn seed_runs(n: u32, fraises: u32) -> Vec<Run> {
    let now = Utc::now();
    (1..=n)
        .map(|i| {
            let created_at = now - chrono::Duration::minutes(5 * i64::from(n - i + 1));
            let status = match i % 50 {
                0 => RunStatus::Cancelled,
                7 | 19 | 33 => RunStatus::Failed,
                _ => RunStatus::Success,
            };
            let failed = status == RunStatus::Failed;
            Run {
                id: i64::from(i),
                tenant_id: DEFAULT_TENANT.to_string(),
                fraise: fraise_name(i % fraises.max(1)),
                environment: "production".to_string(),
                kind: if i % 40 == 0 { RunKind::Rollback } else { RunKind::Deploy },
                status,
                version: format!("1.{}.{}", i / 1000, i % 1000),
                previous_version: (i > fraises).then(|| format!("1.{}.{}", (i - 1) / 1000, (i - 1) % 1000)),
                strategy: "rolling".to_string(),
                strategy_config: json!({"max_surge": 1, "max_instances_down": 1}),
                triggered_by: ["alice", "bob", "ci"][(i % 3) as usize].to_string(),
                trigger_type: if i % 3 == 2 { "webhook" } else { "api" }.to_string(),
                options: json!({}),
                metadata: json!({"commit": format!("{:040x}", u128::from(i) * 2_654_435_761)}),
                created_at,
                updated_at: created_at + chrono::Duration::seconds(42),
                started_at: Some(created_at + chrono::Duration::milliseconds(30)),
                completed_at: Some(created_at + chrono::Duration::seconds(42)),
                health_check_status: if failed {
                    fraisier_model::run::HealthCheckStatus::Failing
                } else {
                    fraisier_model::run::HealthCheckStatus::Passing
                },
                health_details: json!({"checks_passed": 2, "checks_total": 2}),
                metrics: json!({"success_rate": 99.9, "error_rate": 0.1, "latency_p50_ms": 3, "latency_p99_ms": 12}),
                error_code: failed.then(|| "HEALTH_CHECK_FAILED".to_string()),
                error_message: failed.then(|| "instance did not become healthy".to_string()),
                cancel_requested_by: (status == RunStatus::Cancelled).then(|| "alice".to_string()),
                cancelled_at: (status == RunStatus::Cancelled).then_some(created_at + chrono::Duration::seconds(42)),
                progress: 5,
                events_count: 6,
                log_lines: 20,
            }
        })
        .collect()
}

fn etl_config(data_dir: &std::path::Path, releases: &std::path::Path, fraises: u32) -> String {
    let mut yaml = format!(
        "server:\n  listen: \"127.0.0.1:0\"\n  data_dir: \"{}\"\nenvironments:\n  production: {{ display_name: Production, provider: local }}\nfraises:\n",
        data_dir.display()
    );
    for i in 0..fraises {
        yaml.push_str(&format!(
            "  {}:\n    type: etl\n    command: \"true\"\n    artifact_path: \"{}/{{version}}\"\n    environments:\n      production: {{}}\n",
            fraise_name(i),
            releases.display()
        ));
    }
    yaml
}
