//! The reverse proxy in front of one fraise × environment: it spreads requests over the
//! instances the reconciler allows, by weight, and counts what it sees per version.
//!
//! Layout: `workers` (the router's threads), `conn` (a client connection), `proxy` (one
//! exchange), `h1` (HTTP/1.1 to an upstream), `table` (weighted pick), `upstream` (a backend's
//! pool and leases), `body` (bodies that hold leases), `metrics` (per-version counters). This
//! file owns the API, the listener and shutdown.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, Weak};
use std::time::Duration;

use fraisier_model::metrics::VersionMetrics;
use hyper::server::conn::http1;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

mod body;
mod conn;
mod framing;
mod h1;
mod metrics;
mod proxy;
mod table;
mod upstream;
mod workers;

#[cfg(test)]
mod corpus_tests;
#[cfg(test)]
mod tests;

use self::conn::{Conns, Live};
use self::metrics::VersionCounters;
use self::table::Table;
use self::upstream::Upstream;
use self::workers::{Sharded, Workers};

/// Longest pause of the accept loop after an error such as EMFILE.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// Pending connections the kernel queues for the listener.
const BACKLOG: u32 = 1024;
/// How long connections get to close once the router stops them after the grace period.
const STOP_WAIT: Duration = Duration::from_secs(1);
/// How often shutdown looks whether everything ended.
const SHUTDOWN_POLL: Duration = Duration::from_millis(5);

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
/// Its tasks run on the process's router threads (one single-threaded runtime per core, shared
/// by every router; see `workers`), not on the caller's runtime; the methods can be called from
/// anywhere. [`Router::shutdown`] stops it gracefully; dropping the last clone without it stops
/// it at once, closing connections with requests in flight.
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
    /// The current table, one slot per worker so that a pick read-locks a lock no other core
    /// touches; [`Router::set_backends`] swaps the same table into every slot.
    tables: Sharded<RwLock<Arc<Table>>>,
    registry: Mutex<Registry>,
    server: http1::Builder,
    conns: Conns,
    /// The period of each connection's idle check and coarse clock ([`conn::IDLE_CHECK`]).
    idle_check: Duration,
    /// Tasks alive (accept loop, connections, tunnels); see [`Live`].
    live: AtomicUsize,
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
#[repr(u8)]
enum Phase {
    Running = 0,
    /// Not accepting; connections close once their current exchange ends.
    Draining = 1,
    /// Everything still open is dropped.
    Stopped = 2,
}

// === impl Router ===

impl Router {
    /// Binds `addr` (e.g. 127.0.0.1:18080) and starts serving in background tasks. With no
    /// backends yet, every request gets 503 `NO_HEALTHY_INSTANCE`.
    pub async fn bind(addr: SocketAddr) -> io::Result<Router> {
        Router::bind_with(addr, conn::IDLE_CHECK).await
    }

    /// [`Router::bind`] with another idle-check period (tests make time pass faster).
    async fn bind_with(addr: SocketAddr, idle_check: Duration) -> io::Result<Router> {
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
        let shared = Arc::new(Shared {
            workers: Arc::clone(&workers),
            tables: {
                let empty = Arc::new(Table::empty());
                Sharded::new(workers.count(), || RwLock::new(Arc::clone(&empty)))
            },
            registry: Mutex::default(),
            // No hyper timer: idle and stalled connections are closed by `conn` instead.
            // Flattened writes: a response's head and (small) body go out as one buffer.
            server: {
                let mut server = http1::Builder::new();
                server.writev(false);
                server
            },
            conns: Conns::default(),
            idle_check,
            live: AtomicUsize::new(0),
        });
        let (phase, phase_rx) = watch::channel(Phase::Running);
        let live = Live::new(&shared);
        home.spawn(accept_loop(listener, Arc::clone(&shared), phase_rx, live));
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
        let old = shared.swap_table(Table::new(entries));
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
        let shared = &handle.shared;
        handle.phase.send_replace(Phase::Draining);
        shared.conns.signal_all(Phase::Draining);
        if !shared.ended_within(grace).await {
            handle.phase.send_replace(Phase::Stopped);
            shared.conns.signal_all(Phase::Stopped);
            shared.ended_within(STOP_WAIT).await;
        }
        // Every slot held the same table.
        let old = shared.swap_table(Table::empty());
        if let Some(table) = old.first() {
            table.upstreams().iter().for_each(|u| u.close_idle());
        }
    }
}

// === impl Handle ===

impl Drop for Handle {
    fn drop(&mut self) {
        // The last `Router` is gone: stop everything now (the accept loop and tunnels see the
        // watch sender go).
        self.shared.conns.signal_all(Phase::Stopped);
    }
}

// === impl Shared ===

impl Shared {
    /// Whether every task of the router ended within `limit`.
    async fn ended_within(&self, limit: Duration) -> bool {
        let ended = async {
            while self.live.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(SHUTDOWN_POLL).await;
            }
        };
        tokio::time::timeout(limit, ended).await.is_ok()
    }

    /// A read of the current table; hold it only to pick, never across an await.
    fn table(&self) -> RwLockReadGuard<'_, Arc<Table>> {
        // Nothing panics while holding these locks, so poison carries no broken invariant.
        self.tables
            .local()
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts `table` in every worker's slot; returns the tables replaced, to be dropped outside
    /// the locks (that may close the idle connections of departed backends).
    fn swap_table(&self, table: Table) -> Vec<Arc<Table>> {
        let table = Arc::new(table);
        self.tables
            .iter()
            .map(|slot| {
                let mut slot = slot.write().unwrap_or_else(PoisonError::into_inner);
                std::mem::replace(&mut *slot, Arc::clone(&table))
            })
            .collect()
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
                .or_insert_with(|| Arc::new(VersionCounters::new(workers))),
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

// === impl Phase ===

impl Phase {
    fn from_u8(phase: u8) -> Phase {
        match phase {
            0 => Phase::Running,
            1 => Phase::Draining,
            _ => Phase::Stopped,
        }
    }
}

/// Accepts until the router drains, handing each connection to the next worker; errors never
/// end it (EMFILE and kin back off briefly).
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut phase: watch::Receiver<Phase>,
    _live: Live,
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
                let live = Live::new(&shared);
                let (shared, phase) = (Arc::clone(&shared), phase.clone());
                if workers::current() == Some(index) {
                    tokio::spawn(conn::serve(stream, peer, shared, phase, live));
                    continue;
                }
                // Re-registered with the chosen worker's reactor: once per connection.
                match stream.into_std() {
                    Ok(stream) => drop(worker.spawn(async move {
                        match TcpStream::from_std(stream) {
                            Ok(stream) => conn::serve(stream, peer, shared, phase, live).await,
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
