//! The reverse proxy in front of one fraise × environment: it spreads requests over the
//! instances the reconciler allows, by weight, and counts what it sees per version.
//!
//! Layout: `table` (weighted pick), `upstream` (a backend's pool and leases), `proxy` (one
//! exchange), `body` (bodies that hold leases), `metrics` (per-version counters). This file
//! owns the listener, the client connections and shutdown.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, Weak};
use std::time::Duration;

use fraisier_model::metrics::VersionMetrics;
use http::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

mod body;
mod metrics;
mod proxy;
mod table;
mod upstream;
mod workers;

#[cfg(test)]
mod tests;

use self::metrics::VersionCounters;
use self::proxy::ConnCtx;
use self::table::Table;
use self::upstream::Upstream;
use self::workers::Workers;

/// Longest pause of the accept loop after an error such as EMFILE.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// Pending connections the kernel queues for the listener.
const BACKLOG: u32 = 1024;
/// How long connections get to close once the router stops them after the grace period.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// An instance the router may send requests to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// The instance's id; [`Router::in_flight`] is keyed by it.
    pub id: String,
    /// The version it runs; [`Router::metrics`] is keyed by it.
    pub version: String,
    pub addr: SocketAddr,
    /// Share of new requests relative to the other backends; 0 takes none (draining).
    pub weight: u32,
}

/// A running router. Cheap to clone (an `Arc`); clones drive the same listener and table.
///
/// [`Router::shutdown`] stops it gracefully; dropping the last clone without it stops it at
/// once, closing connections with requests in flight.
#[derive(Clone, Debug)]
pub struct Router {
    inner: Arc<Handle>,
}

/// What the `Router` clones share; its drop (the last clone's) stops every task.
#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
    phase: watch::Sender<Phase>,
    local_addr: SocketAddr,
}

/// What the router's tasks share.
#[derive(Debug)]
struct Shared {
    workers: Arc<Workers>,
    table: RwLock<Table>,
    registry: Mutex<Registry>,
    server: http1::Builder,
}

/// Everything the router has been told about, beyond the current table: backends that still
/// have requests in flight, and the counters of every version seen since bind.
#[derive(Debug, Default)]
struct Registry {
    upstreams: HashMap<String, Vec<Weak<Upstream>>>,
    versions: BTreeMap<String, Arc<VersionCounters>>,
}

/// The router's life, broadcast to its tasks. Ordered: a task waits for "at least" a phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Running,
    /// Not accepting; connections close once their current exchange ends.
    Draining,
    /// Everything still open is dropped.
    Stopped,
}

// === impl Router ===

impl Router {
    /// Binds `addr` (e.g. 127.0.0.1:18080) and starts serving in background tasks. With no
    /// backends yet, every request gets 503 `NO_HEALTHY_INSTANCE`.
    pub async fn bind(addr: SocketAddr) -> io::Result<Router> {
        let workers = Workers::get()?;
        let (_, home) = workers.next();
        let listener = {
            // Registered with the worker that will run the accept loop.
            let _entered = home.enter();
            let socket = match addr {
                SocketAddr::V4(_) => TcpSocket::new_v4()?,
                SocketAddr::V6(_) => TcpSocket::new_v6()?,
            };
            // A restarted agent must not wait for the old one's TIME_WAIT sockets.
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(BACKLOG)?
        };
        let local_addr = listener.local_addr()?;
        let mut server = http1::Builder::new();
        // The timer enforces hyper's 30 s header-read timeout: slow or idle clients cannot hold
        // connections forever.
        server.timer(TokioTimer::new());
        let shared = Arc::new(Shared {
            workers: Arc::clone(&workers),
            table: RwLock::new(Table::empty()),
            registry: Mutex::default(),
            server,
        });
        let (phase, phase_rx) = watch::channel(Phase::Running);
        home.spawn(accept_loop(listener, Arc::clone(&shared), phase_rx));
        Ok(Router {
            inner: Arc::new(Handle {
                shared,
                phase,
                local_addr,
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Replaces the whole routing table atomically. Only backends with weight > 0 get new
    /// requests; requests already sent to a backend that leaves finish there. A backend that
    /// stays (same id, version and address) keeps its idle connections.
    pub fn set_backends(&self, backends: Vec<Backend>) {
        let shared = &self.inner.shared;
        let mut registry = shared.registry();
        let entries = backends
            .into_iter()
            .map(|b| {
                let upstream = registry.upstream(b.id, b.version, b.addr, shared.workers.count());
                (upstream, b.weight)
            })
            .collect();
        let table = Table::new(entries);
        let old = std::mem::replace(
            &mut *shared.table.write().unwrap_or_else(PoisonError::into_inner),
            table,
        );
        registry.prune();
        drop(registry);
        // Outside the locks: this may close the idle connections of departed backends.
        drop(old);
    }

    /// Requests currently being proxied to this backend id, from the pick until the response
    /// body ended (including backends no longer in the table) — drain until this is 0 before
    /// stopping an instance. An upgraded connection (WebSocket) counts until it closes.
    pub fn in_flight(&self, backend_id: &str) -> u64 {
        let registry = self.inner.shared.registry();
        registry.upstreams.get(backend_id).map_or(0, |all| {
            all.iter()
                .filter_map(Weak::upgrade)
                .map(|u| u.in_flight())
                .sum()
        })
    }

    /// Cumulative per-version counters since bind. `errors` counts responses with status ≥ 500
    /// and attempts that got no response (each failed attempt of a retried request counts as
    /// a request and an error of the version that failed); latency buckets count responses.
    /// Requests refused for want of any backend (503) belong to no version and are not counted.
    pub fn metrics(&self) -> BTreeMap<String, VersionMetrics> {
        let registry = self.inner.shared.registry();
        registry
            .versions
            .iter()
            .map(|(version, counters)| (version.clone(), counters.snapshot()))
            .collect()
    }

    /// Stops accepting, lets in-flight requests (and open upgraded connections) finish up to
    /// `grace`, then drops whatever is left and returns. Idle keep-alive connections close
    /// at once. Clones of this router are stopped too.
    pub async fn shutdown(self, grace: Duration) {
        let handle = &self.inner;
        handle.phase.send_replace(Phase::Draining);
        // Every task holds a receiver: `closed` resolves when the last one ended.
        if tokio::time::timeout(grace, handle.phase.closed())
            .await
            .is_err()
        {
            handle.phase.send_replace(Phase::Stopped);
            let _ = tokio::time::timeout(STOP_WAIT, handle.phase.closed()).await;
        }
        let table = std::mem::replace(
            &mut *handle
                .shared
                .table
                .write()
                .unwrap_or_else(PoisonError::into_inner),
            Table::empty(),
        );
        table.upstreams().iter().for_each(|u| u.close_idle());
    }
}

// === impl Shared ===

impl Shared {
    /// A read of the current table; hold it only to pick, never across an await.
    fn table(&self) -> RwLockReadGuard<'_, Table> {
        // Nothing panics while holding these locks, so poison carries no broken invariant.
        self.table.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl Registry ===

impl Registry {
    /// The live upstream for this backend if there is one (so a backend that stays keeps its
    /// pool and its in-flight count), else a new one.
    fn upstream(
        &mut self,
        id: String,
        version: String,
        addr: SocketAddr,
        workers: usize,
    ) -> Arc<Upstream> {
        let known = self.upstreams.entry(id.clone()).or_default();
        let existing = known
            .iter()
            .filter_map(Weak::upgrade)
            .find(|u| u.addr == addr && u.version == version);
        if let Some(existing) = existing {
            return existing;
        }
        let counters = Arc::clone(
            self.versions
                .entry(version.clone())
                .or_insert_with(|| Arc::new(VersionCounters::new())),
        );
        let upstream = Arc::new(Upstream::new(id, version, addr, counters, workers));
        known.push(Arc::downgrade(&upstream));
        upstream
    }

    /// Forgets upstreams that are neither in a table nor leased.
    fn prune(&mut self) {
        self.upstreams.retain(|_, all| {
            all.retain(|u| u.strong_count() > 0);
            !all.is_empty()
        });
    }
}

/// Accepts until the router drains, handing each connection to the next worker; errors never
/// end it (EMFILE and kin back off briefly).
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut phase: watch::Receiver<Phase>,
) {
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            biased;
            () = until(&mut phase, Phase::Draining) => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::ZERO;
                let (index, worker) = shared.workers.next();
                let (shared, phase) = (Arc::clone(&shared), phase.clone());
                if workers::current() == Some(index) {
                    tokio::spawn(serve(stream, peer, shared, phase));
                    continue;
                }
                // Re-registered with the chosen worker's reactor: once per connection.
                match stream.into_std() {
                    Ok(stream) => drop(worker.spawn(async move {
                        match TcpStream::from_std(stream) {
                            Ok(stream) => serve(stream, peer, shared, phase).await,
                            Err(error) => tracing::debug!(%error, "connection handoff failed"),
                        }
                    })),
                    Err(error) => tracing::debug!(%error, "connection handoff failed"),
                }
            }
            // The client gave up between SYN and accept: nothing wrong with the listener.
            Err(e) if is_connection_error(&e) => {}
            Err(error) => {
                backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_BACKOFF);
                tracing::warn!(%error, ?backoff, "accept failed; backing off");
                tokio::select! {
                    () = until(&mut phase, Phase::Draining) => return,
                    () = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
}

/// Serves one client connection (HTTP/1.1 keep-alive, upgrades allowed) until it closes or the
/// router stops.
async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut phase: watch::Receiver<Phase>,
) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "TCP_NODELAY refused");
    }
    let Ok(client_ip) = HeaderValue::from_maybe_shared(bytes::Bytes::from(peer.ip().to_string()))
    else {
        return;
    };
    let ctx = Arc::new(ConnCtx {
        shared: Arc::clone(&shared),
        client_ip,
        phase: phase.clone(),
        used: AtomicBool::new(false),
    });
    let service = {
        let ctx = Arc::clone(&ctx);
        service_fn(move |req| proxy::proxy(Arc::clone(&ctx), req))
    };
    let conn = shared
        .server
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            biased;
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, %peer, "client connection ended");
                }
                return;
            }
            changed = phase.changed() => {
                let now = match changed {
                    Ok(()) => *phase.borrow_and_update(),
                    Err(_) => Phase::Stopped,
                };
                match now {
                    Phase::Running => {}
                    Phase::Draining if !ctx.used.load(Ordering::Relaxed) => return,
                    Phase::Draining if !draining => {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    Phase::Draining => {}
                    Phase::Stopped => return,
                }
            }
        }
    }
}

/// Resolves once the router reaches `phase` (or its last handle is gone).
async fn until(phase: &mut watch::Receiver<Phase>, at_least: Phase) {
    let _ = phase.wait_for(|p| *p >= at_least).await;
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}
