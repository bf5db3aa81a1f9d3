//! User-space instructions per proxied request: Fraisier's router against nginx in front of
//! the same static upstream, each counted by callgrind while wrk drives it. Throughput on a
//! shared 2-vCPU guest moves by ±10–25 % from one run to the next; an instruction count
//! repeats, so this is the figure that shows whether a change to the router's hot path made
//! it cheaper. Kernel work is not counted (compare syscalls with `perf stat -e
//! 'syscalls:sys_enter_*'` against `fraisier-bench proxy`).
//!
//! Under callgrind a proxy runs some 50 times slower, so it is the bottleneck whatever the
//! connection count, and work paid per second rather than per request (timer ticks, going to
//! sleep in `epoll_wait`) weighs more than it does natively. Both proxies are measured the
//! same way, one after the other.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::load;
use crate::procs::{self, Proc};
use crate::router_bench::{nginx_version, Nginx};

#[derive(Clone, Debug)]
pub struct InstructionsOpts {
    pub connections: u32,
    pub duration: Duration,
}

/// Prints each proxy's instructions per request and their ratio; there is no target to meet.
pub async fn run(o: &InstructionsOpts) -> Result<()> {
    let valgrind = Command::new("valgrind")
        .arg("--version")
        .output()
        .context("valgrind is needed: apt-get install -y valgrind")?;
    println!();
    println!("== User-space instructions per request (callgrind), router vs nginx ==");
    println!(
        "{}, {}; static nginx upstream; wrk -t1 -c{}, {} s per proxy after a 2 s warm-up",
        String::from_utf8_lossy(&valgrind.stdout).trim(),
        nginx_version(),
        o.connections,
        o.duration.as_secs()
    );
    let dir = tempfile::Builder::new()
        .prefix("fraisier-bench-instructions-")
        .tempdir()?;
    let static_server = Nginx::start_in(&dir.path().join("static"), None)?;
    let upstream = SocketAddr::from(([127, 0, 0, 1], static_server.port));

    let nginx = {
        let wrapper = callgrind(dir.path(), "nginx");
        let mut proxy =
            Nginx::start_under(&wrapper, &dir.path().join("proxy"), Some((&[upstream], 64)))?;
        let per = count("nginx", &mut proxy.proc, proxy.port, dir.path(), o).await?;
        proxy.proc.stop(Duration::from_secs(5));
        per
    };
    let router = {
        let port = procs::free_port()?;
        let [program, args @ ..] = &callgrind(dir.path(), "router")[..] else {
            unreachable!("a wrapper has a program")
        };
        let mut proc = Proc::spawn(
            "router under callgrind",
            Command::new(program)
                .args(args)
                .arg(std::env::current_exe()?)
                .args(["proxy", "--upstream", &upstream.to_string(), "--listen"])
                .arg(format!("127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        wait_listening(&mut proc, port).await?;
        let per = count("router", &mut proc, port, dir.path(), o).await?;
        proc.stop(Duration::from_secs(5));
        per
    };
    println!(
        "router/nginx instructions per request: {:.2}",
        router / nginx
    );
    Ok(())
}

/// valgrind's command line, its dump named after `name` and the pid.
fn callgrind(dir: &Path, name: &str) -> Vec<String> {
    vec![
        "valgrind".into(),
        "--tool=callgrind".into(),
        format!("--callgrind-out-file={}/cg.{name}.%p", dir.display()),
    ]
}

async fn wait_listening(proc: &mut Proc, port: u16) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        proc.check_running()?;
        if std::time::Instant::now() > deadline {
            bail!("nothing listens on {port} after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Warms the proxy up, zeroes its counters, drives it, dumps them and prints its
/// instructions per request.
async fn count(
    name: &str,
    proc: &mut Proc,
    port: u16,
    dir: &Path,
    o: &InstructionsOpts,
) -> Result<f64> {
    let url = format!("http://127.0.0.1:{port}/");
    load::wrk(&url, 1, o.connections, Duration::from_secs(2)).await?;
    let pid = proc.pid();
    callgrind_control("-z", pid)?;
    let r = load::wrk(&url, 1, o.connections, o.duration).await?;
    if r.errors > 0 {
        bail!(
            "{name}: wrk saw {} errors; the count would mean nothing",
            r.errors
        );
    }
    callgrind_control("-d", pid)?;
    // The first dump asked for is `.1`; zeroing does not number one.
    let dump = dir.join(format!("cg.{name}.{pid}.1"));
    let text = std::fs::read_to_string(&dump)
        .with_context(|| format!("{name}: callgrind wrote no dump at {}", dump.display()))?;
    let total: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("totals:"))
        .and_then(|t| t.trim().parse().ok())
        .with_context(|| format!("{name}: no totals in {}", dump.display()))?;
    let per = total as f64 / r.requests.max(1) as f64;
    println!(
        "{name:<8} {:>10} requests {total:>14} instructions {per:>8.0} per request",
        r.requests
    );
    Ok(per)
}

/// `callgrind_control OPTION PID`. It exits 0 even when it reached no run: a dump that did
/// not happen shows as a missing file, a zeroing that did not as a count that includes the
/// start and the warm-up (several times the others).
fn callgrind_control(option: &str, pid: u32) -> Result<()> {
    Command::new("callgrind_control")
        .args([option, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("callgrind_control (valgrind) is needed")?;
    Ok(())
}
