//! Deploy overhead: a rolling deploy of instances that are ready at once (HTTP probe every
//! 200 ms), from the POST to `success`, with the time of every step as the server recorded it.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use chrono::{DateTime, Utc};
use fraisier_store::{parse_run_id, Store, DEFAULT_TENANT};
use serde_json::json;

use crate::fraisier::{self, Bins, Server};
use crate::procs;
use crate::stats::{median, secs, Verdict};

#[derive(Clone, Debug)]
pub struct DeployOpts {
    pub instances: u32,
    /// Rolling deploys measured after the initial one (versions alternate).
    pub deploys: u32,
}

pub async fn run(bins: &Bins, o: &DeployOpts) -> Result<Vec<Verdict>> {
    println!();
    println!(
        "== Deploy overhead: rolling deploy of {} instances ready at once ==",
        o.instances
    );
    let dir = tempfile::Builder::new()
        .prefix("fraisier-bench-")
        .tempdir()?;
    let releases = dir.path().join("releases");
    fraisier::demo_release(&releases, "1.0.0", &[])?;
    fraisier::demo_release(&releases, "2.0.0", &[])?;
    let config = dir.path().join("fraisier.yaml");
    let port = procs::free_port()?;
    std::fs::write(
        &config,
        fraisier::app_config(bins, dir.path(), port, o.instances, "rolling"),
    )?;
    let data_dir = dir.path().join("data");
    let server = Server::start(bins, &config, &data_dir).await?;
    // A second handle on the same SQLite database, for the steps' millisecond timestamps (the
    // API shows whole seconds).
    let store = Store::open_sqlite_in(&data_dir).await?;
    println!(
        "app: fraisier-demo (release build), health check http /health every 200 ms, healthy_threshold 1; \
         strategy rolling with the defaults (max_surge 1, max_instances_down 1)"
    );
    println!("timing: client = from sending the POST until a poll (every 10 ms) sees `success`; server = the run's created_at → completed_at");

    let mut rolling = Vec::new();
    let mut from = "none".to_string();
    for k in 0..=o.deploys {
        let version = if k % 2 == 0 { "1.0.0" } else { "2.0.0" };
        let started = Instant::now();
        let id = server
            .deploy("app", "production", &json!({"version": version}))
            .await?;
        let run = server
            .wait_run(&id, Duration::from_secs(120), Duration::from_millis(10))
            .await?;
        let client = started.elapsed();
        if run["status"] != "success" {
            bail!(
                "deploy {id} ended {}: {run}\nserver log:\n{}",
                run["status"],
                server.log_tail()
            );
        }
        let label = if k == 0 {
            format!("initial deploy: 0 → {} x {version}", o.instances)
        } else {
            format!("rolling {from} → {version} ({} instances)", o.instances)
        };
        println!();
        println!("{id}  {label}: client {}", secs(client));
        print_steps(&store, &id).await?;
        if k > 0 {
            rolling.push(client.as_secs_f64());
        }
        from = version.to_string();
    }
    store.close().await;
    drop(server);
    if rolling.is_empty() {
        return Ok(Vec::new());
    }
    let med = median(&rolling);
    let worst = rolling.iter().copied().fold(0.0, f64::max);
    println!();
    println!(
        "rolling deploys of {} instances, POST → success: median {med:.3} s, worst {worst:.3} s over {}",
        o.instances,
        rolling.len()
    );
    Ok(vec![Verdict {
        what: format!("rolling deploy of {} instances (median)", o.instances),
        measured: format!("{med:.3} s"),
        target: "<= 2 s".to_string(),
        met: med <= 2.0,
    }])
}

/// The run's steps from the store: offset from the run's creation and duration, in ms.
async fn print_steps(store: &Store, id: &str) -> Result<()> {
    let Some(n) = parse_run_id(id) else {
        bail!("not a run id: {id}");
    };
    let run = store.run(DEFAULT_TENANT, n).await?;
    let steps = store.steps(n).await?;
    let created = run.created_at;
    let ms = |a: DateTime<Utc>, b: DateTime<Utc>| (b - a).num_milliseconds();
    if let Some(done) = run.completed_at {
        println!(
            "  server: created → completed {} ms (created → started {} ms)",
            ms(created, done),
            run.started_at.map_or(0, |s| ms(created, s))
        );
    }
    println!(
        "  {:<46} {:>9} {:>9}  message",
        "step", "at (ms)", "took (ms)"
    );
    for s in steps {
        let took = s
            .ended_at
            .map_or_else(|| "-".to_string(), |e| ms(s.started_at, e).to_string());
        let message = s.message.filter(|m| *m != s.name).unwrap_or_default();
        println!(
            "  {:<46} {:>9} {:>9}  {message}",
            s.name,
            ms(created, s.started_at),
            took,
        );
    }
    Ok(())
}
