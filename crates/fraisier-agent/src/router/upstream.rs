//! One backend as the proxy sees it: its address, its idle keep-alive connections, and the
//! leases that count its in-flight requests.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::ReqBody;
use super::metrics::VersionCounters;
use super::workers;

/// How long a TCP connect may take before the attempt counts as failed (and is retried).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle connections kept per backend; more are closed when they come back.
const MAX_IDLE: usize = 256;

#[derive(Debug)]
pub(super) struct Upstream {
    pub(super) id: String,
    pub(super) version: String,
    pub(super) addr: SocketAddr,
    pub(super) counters: Arc<VersionCounters>,
    in_flight: AtomicU64,
    /// One pool per router worker, since a connection's driver task lives on the worker that
    /// opened it. LIFO, so the hottest connections are reused and the rest may idle out.
    idle: Box<[Mutex<Vec<SendRequest<ReqBody>>>]>,
}

/// A request's hold on its backend, from the pick until the response body ends (or the request
/// is abandoned): while it lives the backend counts the request as in flight, which is what
/// draining waits for. It also carries the connection back to the pool when the exchange ended
/// cleanly — linkerd's `retain` idea, plus connection reuse.
#[derive(Debug)]
pub(super) struct Lease {
    upstream: Arc<Upstream>,
    conn: Option<SendRequest<ReqBody>>,
}

// === impl Upstream ===

impl Upstream {
    pub(super) fn new(
        id: String,
        version: String,
        addr: SocketAddr,
        counters: Arc<VersionCounters>,
        workers: usize,
    ) -> Upstream {
        Upstream {
            id,
            version,
            addr,
            counters,
            in_flight: AtomicU64::new(0),
            idle: (0..workers.max(1)).map(|_| Mutex::default()).collect(),
        }
    }

    pub(super) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// A ready connection from the pool, or a new one.
    pub(super) async fn checkout(&self) -> io::Result<SendRequest<ReqBody>> {
        loop {
            let conn = self.idle_conns().pop();
            match conn {
                // Pooled connections were ready when they came back; one that is not any more
                // was closed by the upstream meanwhile.
                Some(conn) if conn.is_ready() => return Ok(conn),
                Some(_) => continue,
                None => return self.connect(false).await,
            }
        }
    }

    /// Opens a connection with TCP_NODELAY and spawns its driver task. `upgrades` keeps the
    /// socket usable after a `101 Switching Protocols`; such connections are never pooled.
    pub(super) async fn connect(&self, upgrades: bool) -> io::Result<SendRequest<ReqBody>> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        if upgrades {
            tokio::spawn(async move {
                if let Err(error) = conn.with_upgrades().await {
                    tracing::debug!(%error, "upstream connection ended");
                }
            });
        } else {
            tokio::spawn(async move {
                if let Err(error) = conn.await {
                    tracing::debug!(%error, "upstream connection ended");
                }
            });
        }
        Ok(sender)
    }

    /// Closes every idle connection (router shutdown).
    pub(super) fn close_idle(&self) {
        for pool in &self.idle {
            pool.lock().unwrap_or_else(PoisonError::into_inner).clear();
        }
    }

    fn checkin(&self, conn: SendRequest<ReqBody>) {
        let mut idle = self.idle_conns();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// This worker's pool (uncontended: only this thread takes it, but for shutdown).
    fn idle_conns(&self) -> std::sync::MutexGuard<'_, Vec<SendRequest<ReqBody>>> {
        let pool = &self.idle[workers::current().unwrap_or(0) % self.idle.len()];
        // Nothing panics while holding this lock; a poisoned pool is still a valid pool.
        pool.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl Lease ===

impl Lease {
    pub(super) fn new(upstream: Arc<Upstream>) -> Lease {
        upstream.in_flight.fetch_add(1, Ordering::AcqRel);
        Lease {
            upstream,
            conn: None,
        }
    }

    pub(super) fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// Keeps `conn` for the pool if the exchange ends cleanly.
    pub(super) fn hold(&mut self, conn: SendRequest<ReqBody>) {
        self.conn = Some(conn);
    }

    /// The response body ended cleanly: hand the connection back and end the lease.
    pub(super) fn release(mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if conn.is_ready() {
            self.upstream.checkin(conn);
        } else if !conn.is_closed() {
            // The driver has not yet noticed the exchange ended (or is still writing the
            // request body); pool the connection once it has, off the request's path.
            let upstream = Arc::clone(&self.upstream);
            tokio::spawn(async move {
                if conn.ready().await.is_ok() {
                    upstream.checkin(conn);
                }
            });
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // A connection still held here saw an unfinished exchange: dropping it closes it.
        self.upstream.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
