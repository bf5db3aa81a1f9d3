//! A tiny HTTP app for Fraisier's README tour, integration tests and router benchmarks: it
//! serves its version, and misbehaves (slow start, errors, latency, crash) as configured.
//!
//! `GET /health` → 200 `{"status":"ok","version":…}` once ready, else 503; any other path →
//! 200 `{"version":…,"instance":…,"pid":…,"env":{…}}` (`env`: the variables `DEMO_SHOW`
//! names), or 500 for `DEMO_ERROR_RATE` percent of them.
//! SIGTERM (or SIGINT) stops accepting and exits once in-flight requests are answered.

mod config;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::config::Config;

/// What every request reads; the bodies are rendered once and shared (a refcount per request).
struct App {
    config: Config,
    ready: AtomicBool,
    /// Non-health requests so far, for the deterministic error rate.
    served: AtomicU64,
    body_ok: Bytes,
    body_error: Bytes,
    health_ok: Bytes,
    health_waiting: Bytes,
}

// === impl App ===

impl App {
    fn new(config: Config) -> App {
        let version = &config.version;
        let render = |v: serde_json::Value| Bytes::from(v.to_string());
        App {
            body_ok: render(serde_json::json!({
                "version": version,
                "instance": config.instance,
                "pid": std::process::id(),
                "env": config
                    .show
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect::<serde_json::Map<String, serde_json::Value>>(),
            })),
            body_error: render(serde_json::json!({
                "error": {"code": "INJECTED_FAILURE", "message": "DEMO_ERROR_RATE failure"},
                "version": version,
            })),
            health_ok: render(serde_json::json!({"status": "ok", "version": version})),
            health_waiting: render(serde_json::json!({
                "status": if config.healthy { "starting" } else { "unhealthy" },
                "version": version,
            })),
            ready: AtomicBool::new(config.healthy && config.startup_delay.is_zero()),
            served: AtomicU64::new(0),
            config,
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.uri().path() == "/health" {
            return if self.ready.load(Ordering::Relaxed) {
                json(StatusCode::OK, &self.health_ok)
            } else {
                json(StatusCode::SERVICE_UNAVAILABLE, &self.health_waiting)
            };
        }
        if !self.config.latency.is_zero() {
            tokio::time::sleep(self.config.latency).await;
        }
        let n = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        if config::fails(n, self.config.error_rate) {
            json(StatusCode::INTERNAL_SERVER_ERROR, &self.body_error)
        } else {
            json(StatusCode::OK, &self.body_ok)
        }
    }
}

fn json(status: StatusCode, body: &Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.clone()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("fraisier-demo: {e}");
            return ExitCode::from(2);
        }
    };
    let addr = SocketAddr::new(config.host, config.port);
    let listener = match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("fraisier-demo: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("fraisier-demo: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let app = Arc::new(App::new(config));
    let config = &app.config;
    if config.healthy && !config.startup_delay.is_zero() {
        let (app, delay) = (Arc::clone(&app), config.startup_delay);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            app.ready.store(true, Ordering::Relaxed);
        });
    }
    if let Some(after) = config.crash_after {
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            eprintln!("fraisier-demo: crashing as DEMO_CRASH_AFTER asks");
            std::process::exit(1);
        });
    }
    eprintln!(
        "fraisier-demo {} (instance {:?}, pid {}) listening on {addr}",
        config.version,
        config.instance,
        std::process::id()
    );

    let (stop, stop_rx) = watch::channel(false);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve(stream, Arc::clone(&app), stop_rx.clone()));
                }
                Err(e) => {
                    // EMFILE and kin: pause instead of spinning.
                    eprintln!("fraisier-demo: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    drop(listener);
    drop(stop_rx);
    stop.send_replace(true);
    // Each connection holds a receiver until its last response is written.
    stop.closed().await;
    eprintln!("fraisier-demo: stopped");
    ExitCode::SUCCESS
}

/// One keep-alive connection; on stop it finishes the current request and closes.
async fn serve(stream: TcpStream, app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    // hyper's graceful shutdown leaves a connection that never sent a request open until it
    // does; such a connection has nothing in flight and is simply dropped.
    let used = Arc::new(AtomicBool::new(false));
    let service = {
        let used = Arc::clone(&used);
        service_fn(move |req| {
            used.store(true, Ordering::Relaxed);
            let app = Arc::clone(&app);
            async move { Ok::<_, Infallible>(app.handle(req).await) }
        })
    };
    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        biased;
        _ = conn.as_mut() => return,
        () = async { let _ = stop.wait_for(|stopping| *stopping).await; } => {}
    }
    if used.load(Ordering::Relaxed) {
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }
}
