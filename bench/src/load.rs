//! Load generators: `wrk` (closed loop, as many requests as the connections can carry: the
//! throughput figure) and a small fixed-rate generator (open loop at a rate well below
//! saturation: the latency a hop adds when the machine is not queueing).

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::stats::Summary;

/// What one `wrk` run printed.
#[derive(Clone, Debug, Default)]
pub struct WrkResult {
    pub requests_per_sec: f64,
    pub requests: u64,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Non-2xx/3xx responses plus socket errors.
    pub errors: u64,
}

/// `wrk -t threads -c connections -d duration --latency url`.
pub async fn wrk(
    url: &str,
    threads: u32,
    connections: u32,
    duration: Duration,
) -> Result<WrkResult> {
    let secs = duration.as_secs().max(1);
    let child = tokio::process::Command::new("wrk")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{secs}s"))
        .arg("--latency")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot run wrk (apt-get install -y wrk, or run scripts/bench.sh)")?;
    let out = tokio::time::timeout(Duration::from_secs(secs + 30), child.wait_with_output())
        .await
        .context("wrk did not finish")??;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_wrk(&text).with_context(|| format!("unexpected wrk output:\n{text}"))
}

fn parse_wrk(text: &str) -> Result<WrkResult> {
    let mut r = WrkResult::default();
    let mut in_distribution = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("Latency Distribution") {
            in_distribution = true;
            continue;
        }
        if in_distribution {
            let mut it = t.split_whitespace();
            match (it.next(), it.next()) {
                (Some("50%"), Some(v)) => r.p50 = wrk_duration(v)?,
                (Some("90%"), Some(v)) => r.p90 = wrk_duration(v)?,
                (Some("99%"), Some(v)) => r.p99 = wrk_duration(v)?,
                (Some("75%"), Some(_)) => {}
                _ => in_distribution = false,
            }
        }
        if let Some(rest) = t.strip_prefix("Latency") {
            // "Latency   1.23ms  456.00us  12.34ms   78.90%": avg, stdev, max.
            if let Some(max) = rest.split_whitespace().nth(2) {
                r.max = wrk_duration(max).unwrap_or_default();
            }
        }
        if let Some(rest) = t.strip_prefix("Requests/sec:") {
            r.requests_per_sec = rest.trim().parse()?;
        }
        if t.contains(" requests in ") {
            r.requests = t.split_whitespace().next().unwrap_or("0").parse()?;
        }
        if let Some(rest) = t.strip_prefix("Non-2xx or 3xx responses:") {
            r.errors += rest.trim().parse::<u64>()?;
        }
        if let Some(rest) = t.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            r.errors += rest
                .split(',')
                .filter_map(|p| p.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    if r.requests_per_sec == 0.0 || r.p99.is_zero() {
        bail!("no Requests/sec or latency distribution");
    }
    Ok(r)
}

/// wrk's `12.34us`, `1.23ms`, `1.02s`, `1.50m`.
fn wrk_duration(v: &str) -> Result<Duration> {
    let split = v
        .find(|c: char| c.is_ascii_alphabetic())
        .ok_or_else(|| anyhow!("no unit in {v:?}"))?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse()?;
    let nanos_per_unit = match unit {
        "us" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        "h" => 3600e9,
        _ => bail!("unknown unit in {v:?}"),
    };
    Ok(Duration::from_nanos((n * nanos_per_unit).round() as u64))
}

/// What the fixed-rate generator measured.
#[derive(Clone, Debug, Default)]
pub struct RateResult {
    pub sent: u64,
    pub errors: u64,
    /// Requests that could not be sent on time because the previous one on the same
    /// connection had not been answered yet (a sign the rate saturates the target).
    pub late: u64,
    pub latency: Summary,
    pub achieved_rate: f64,
}

/// Sends `GET /` to `addr` at `rate` requests per second in total, spread evenly over
/// `connections` keep-alive HTTP/1.1 connections, for `duration`; latency is measured from
/// the moment each request is written until its response body has been read.
pub async fn fixed_rate(
    addr: SocketAddr,
    rate: u32,
    connections: u32,
    duration: Duration,
) -> Result<RateResult> {
    let connections = connections.max(1);
    let period = Duration::from_secs_f64(f64::from(connections) / f64::from(rate.max(1)));
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let end = start + duration;
    let mut tasks = Vec::new();
    for i in 0..connections {
        let offset = period.mul_f64(f64::from(i) / f64::from(connections));
        tasks.push(tokio::spawn(one_connection(
            addr,
            start + offset,
            end,
            period,
        )));
    }
    let mut all = Vec::new();
    let mut result = RateResult::default();
    for t in tasks {
        let (samples, errors, late) = t.await??;
        result.sent += samples.len() as u64 + errors;
        result.errors += errors;
        result.late += late;
        all.extend(samples);
    }
    result.achieved_rate = result.sent as f64 / duration.as_secs_f64();
    result.latency = Summary::of(&mut all);
    Ok(result)
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn one_connection(
    addr: SocketAddr,
    start: tokio::time::Instant,
    end: tokio::time::Instant,
    period: Duration,
) -> Result<(Vec<Duration>, u64, u64)> {
    let mut sender = connect(addr).await?;
    let mut ticks = tokio::time::interval_at(start, period);
    // A late tick is not made up with a burst: the next request goes one period later.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let host = addr.to_string();
    let mut samples = Vec::new();
    let (mut errors, mut late) = (0u64, 0u64);
    loop {
        let tick = ticks.tick().await;
        if tick >= end {
            break;
        }
        if tokio::time::Instant::now() > tick + period {
            late += 1;
        }
        let req = Request::get("/")
            .header("host", host.as_str())
            .body(Empty::<Bytes>::new())?;
        let sent = Instant::now();
        let ok = match sender.send_request(req).await {
            Ok(resp) => {
                let status = resp.status();
                resp.into_body().collect().await.is_ok() && status.is_success()
            }
            Err(_) => false,
        };
        if ok {
            samples.push(sent.elapsed());
        } else {
            errors += 1;
            if sender.ready().await.is_err() {
                sender = connect(addr).await?;
            }
        }
    }
    Ok((samples, errors, late))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 10s test @ http://127.0.0.1:8080/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.23ms  456.00us  12.34ms   78.90%
    Req/Sec    25.00k     1.23k   30.00k    70.00%
  Latency Distribution
     50%    1.10ms
     75%    1.40ms
     90%    1.80ms
     99%  850.00us
  500000 requests in 10.00s, 80.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 12
Requests/sec:  50000.00
Transfer/sec:      8.00MB
";

    #[test]
    fn parses_wrk_output() {
        let r = parse_wrk(WRK).unwrap();
        assert_eq!(r.requests_per_sec, 50000.0);
        assert_eq!(r.requests, 500_000);
        assert_eq!(r.p50, Duration::from_micros(1100));
        assert_eq!(r.p90, Duration::from_micros(1800));
        assert_eq!(r.p99, Duration::from_micros(850));
        assert_eq!(r.max, Duration::from_micros(12340));
        assert_eq!(r.errors, 15);
        assert!(parse_wrk("nothing").is_err());
    }
}
