//! Instance health: run http / tcp / command probes on an interval, and turn their results
//! into Starting / Healthy / Unhealthy with the configured thresholds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use fraisier_model::service::{HealthCheckSpec, ProbeKind};
use http_body_util::Empty;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::exec::{run_command, CommandSpec, RunningCommands};

/// What the probes concluded about the current incarnation of an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Starting,
    Healthy,
    Unhealthy,
}

/// Threshold bookkeeping for one instance, shared between its probe task (writer) and the
/// reconciler (reader).
#[derive(Clone, Debug)]
pub struct HealthTracker {
    pub health: Health,
    passes_in_row: u32,
    failures_in_row: u32,
    pub checks_passed: u64,
    pub checks_total: u64,
    pub last_check_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// When it last became healthy; feeds the restart backoff's reset.
    pub healthy_since: Option<Instant>,
}

/// Everything a probe needs to reach one instance.
#[derive(Clone)]
pub struct ProbeTarget {
    pub port: u16,
    /// For command probes: the instance's directory and environment.
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    /// A failing probe's last line becomes `last_error`, which the API shows.
    pub redact: fraisier_model::secret::Redactor,
}

/// The probe used when a service has no health check: can we connect to its port?
pub fn default_spec() -> HealthCheckSpec {
    HealthCheckSpec {
        kind: ProbeKind::Tcp,
        interval_ms: 500,
        timeout_ms: 500,
        healthy_threshold: 1,
        unhealthy_threshold: 3,
    }
}

// === impl HealthTracker ===

impl Default for HealthTracker {
    fn default() -> Self {
        HealthTracker::new(Health::Starting, None)
    }
}

impl HealthTracker {
    pub fn new(health: Health, healthy_since: Option<Instant>) -> Self {
        HealthTracker {
            health,
            passes_in_row: 0,
            failures_in_row: 0,
            checks_passed: 0,
            checks_total: 0,
            last_check_at: None,
            last_error: None,
            healthy_since,
        }
    }

    /// Records one probe result; returns true when `health` changed.
    pub fn record(
        &mut self,
        result: Result<(), String>,
        spec: &HealthCheckSpec,
        now: Instant,
        at: DateTime<Utc>,
    ) -> bool {
        self.checks_total += 1;
        self.last_check_at = Some(at);
        let before = self.health;
        match result {
            Ok(()) => {
                self.checks_passed += 1;
                self.passes_in_row += 1;
                self.failures_in_row = 0;
                self.last_error = None;
                if self.health != Health::Healthy
                    && self.passes_in_row >= spec.healthy_threshold.max(1)
                {
                    self.health = Health::Healthy;
                    self.healthy_since = Some(now);
                }
            }
            Err(e) => {
                self.failures_in_row += 1;
                self.passes_in_row = 0;
                self.last_error = Some(e);
                if self.health == Health::Healthy
                    && self.failures_in_row >= spec.unhealthy_threshold.max(1)
                {
                    self.health = Health::Unhealthy;
                    self.healthy_since = None;
                }
            }
        }
        self.health != before
    }

    /// A new process replaced the old one: it must prove itself again. Totals are kept.
    pub fn restarted(&mut self) {
        self.health = Health::Starting;
        self.passes_in_row = 0;
        self.failures_in_row = 0;
        self.healthy_since = None;
    }
}

/// Probes `target` every `spec.interval_ms` until aborted, recording into `tracker` and
/// waking the reconciler when the health changes. The first probe runs at once.
pub fn spawn_prober(
    spec: HealthCheckSpec,
    target: ProbeTarget,
    tracker: Arc<Mutex<HealthTracker>>,
    wake: Arc<Notify>,
    commands: Arc<RunningCommands>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let interval = Duration::from_millis(spec.interval_ms.max(10));
        let timeout = Duration::from_millis(spec.timeout_ms.max(1));
        loop {
            let started = Instant::now();
            let result = probe_once(&spec.kind, timeout, &target, &commands).await;
            let changed = tracker.lock().unwrap_or_else(|e| e.into_inner()).record(
                result,
                &spec,
                Instant::now(),
                Utc::now(),
            );
            if changed {
                wake.notify_one();
            }
            tokio::time::sleep(interval.saturating_sub(started.elapsed())).await;
        }
    })
}

/// Runs one probe; `Err` carries a short reason for `last_error`.
pub async fn probe_once(
    kind: &ProbeKind,
    timeout: Duration,
    target: &ProbeTarget,
    commands: &RunningCommands,
) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], target.port));
    match kind {
        ProbeKind::Tcp => match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("tcp connect to {addr}: {e}")),
            Err(_) => Err(format!(
                "tcp connect to {addr}: timed out after {timeout:?}"
            )),
        },
        ProbeKind::Http {
            path,
            expected_status,
        } => {
            let status = http_get(addr, path, None, timeout).await?;
            let accepted = if expected_status.is_empty() {
                (200..400).contains(&status)
            } else {
                expected_status.contains(&status)
            };
            if accepted {
                Ok(())
            } else {
                Err(format!("GET {path} answered {status}"))
            }
        }
        ProbeKind::Command { command } => {
            let spec = CommandSpec {
                command: command.clone(),
                cwd: target.cwd.clone(),
                env: target.env.clone(),
                redact: target.redact.clone(),
            };
            let result = run_command(&spec, timeout, commands)
                .await
                .map_err(|e| format!("cannot run health command: {e}"))?;
            match (result.timed_out, result.exit_code) {
                (true, _) => Err(format!("health command timed out after {timeout:?}")),
                (false, Some(0)) => Ok(()),
                (false, code) => Err(format!(
                    "health command exited with {}{}",
                    code.map_or("a signal".to_string(), |c| format!("status {c}")),
                    result
                        .output
                        .last()
                        .map(|l| format!(": {l}"))
                        .unwrap_or_default()
                )),
            }
        }
    }
}

/// A minimal HTTP/1.1 GET on loopback: returns the status code. Used by probes and to ask a
/// previous agent whether it still answers.
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    bearer: Option<&str>,
    timeout: Duration,
) -> Result<u16, String> {
    let exchange = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, mut conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io)
            .await
            .map_err(|e| format!("http handshake with {addr}: {e}"))?;
        let mut request = http::Request::get(path)
            .header(http::header::HOST, addr.to_string())
            .header(http::header::CONNECTION, "close");
        if let Some(token) = bearer {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| format!("bad probe request {path:?}: {e}"))?;
        // Drive the connection and the request together; the connection closes when dropped.
        // A server that closes right after answering (HTTP/1.0) ends `conn` in the same poll
        // that delivers the response: the response is then still waiting in `send`.
        let send = sender.send_request(request);
        tokio::pin!(send);
        let response = tokio::select! {
            biased;
            response = &mut send => response,
            ended = &mut conn => match send.await {
                Ok(response) => Ok(response),
                Err(e) => {
                    return Err(match ended {
                        Ok(()) => format!("GET {path}: connection closed before a response ({e})"),
                        Err(c) => format!("GET {path}: {c}"),
                    })
                }
            },
        };
        response
            .map(|r| r.status().as_u16())
            .map_err(|e| format!("GET {path}: {e}"))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("GET {path}: timed out after {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(healthy: u32, unhealthy: u32) -> HealthCheckSpec {
        HealthCheckSpec {
            healthy_threshold: healthy,
            unhealthy_threshold: unhealthy,
            ..default_spec()
        }
    }

    #[test]
    fn thresholds_gate_transitions() {
        let s = spec(2, 2);
        let now = Instant::now();
        let mut t = HealthTracker::default();
        assert!(!t.record(Err("refused".into()), &s, now, Utc::now()));
        assert_eq!(
            t.health,
            Health::Starting,
            "failing while starting stays starting"
        );
        assert!(!t.record(Ok(()), &s, now, Utc::now()));
        assert!(t.record(Ok(()), &s, now, Utc::now()));
        assert_eq!(t.health, Health::Healthy);
        assert_eq!(t.healthy_since, Some(now));
        assert!(!t.record(Err("500".into()), &s, now, Utc::now()));
        assert!(t.record(Err("500".into()), &s, now, Utc::now()));
        assert_eq!(t.health, Health::Unhealthy);
        assert_eq!(t.last_error.as_deref(), Some("500"));
        assert_eq!((t.checks_passed, t.checks_total), (2, 5));
        t.restarted();
        assert_eq!(t.health, Health::Starting);
        assert_eq!(t.checks_total, 5);
    }

    /// An HTTP/1.0 server answers and closes at once: the probe must still read the status.
    #[tokio::test]
    async fn http_probe_reads_answers_of_servers_that_close_at_once() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.0 204 No Content\r\n\r\n").await;
            }
        });
        for _ in 0..100 {
            let status = http_get(addr, "/health", None, Duration::from_secs(2)).await;
            assert_eq!(status, Ok(204));
        }
        server.abort();
    }

    #[tokio::test]
    async fn tcp_probe_sees_a_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = ProbeTarget {
            port: listener.local_addr().unwrap().port(),
            cwd: std::env::temp_dir(),
            env: Vec::new(),
            redact: Default::default(),
        };
        let commands = RunningCommands::default();
        let timeout = Duration::from_millis(500);
        assert!(probe_once(&ProbeKind::Tcp, timeout, &target, &commands)
            .await
            .is_ok());
        drop(listener);
        assert!(probe_once(&ProbeKind::Tcp, timeout, &target, &commands)
            .await
            .is_err());
        let cmd = ProbeKind::Command {
            command: "test \"$X\" = 1".into(),
        };
        let with_env = ProbeTarget {
            env: vec![("X".into(), "1".into())],
            ..target.clone()
        };
        assert!(probe_once(&cmd, timeout, &with_env, &commands)
            .await
            .is_ok());
        assert!(probe_once(&cmd, timeout, &target, &commands).await.is_err());
        // A failing probe's output is shown by the API: a secret in it is hidden.
        let leaky = ProbeKind::Command {
            command: "echo \"cannot log in with $DB_PASSWORD\"; exit 1".into(),
        };
        let with_secret = ProbeTarget {
            env: vec![("DB_PASSWORD".into(), "pa55word-xyz".into())],
            redact: fraisier_model::secret::Redactor::new([("DB_PASSWORD", "pa55word-xyz")]),
            ..target.clone()
        };
        let err = probe_once(&leaky, timeout, &with_secret, &commands)
            .await
            .unwrap_err();
        assert!(
            err.ends_with("cannot log in with [secret DB_PASSWORD]"),
            "{err}"
        );
    }
}
