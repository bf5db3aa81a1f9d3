//! One backend as the proxy sees it: its address, its idle keep-alive connections, and the
//! leases that count its in-flight requests.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::TcpStream;

use super::h1::Conn;
use super::metrics::VersionCounters;
use super::workers::Sharded;

/// How long a TCP connect may take before the attempt counts as failed (and is retried).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle connections kept per backend and worker; more are closed when they come back.
const MAX_IDLE: usize = 256;

#[derive(Debug)]
pub(super) struct Upstream {
    pub(super) id: String,
    pub(super) version: String,
    pub(super) addr: SocketAddr,
    pub(super) counters: Arc<VersionCounters>,
    /// Per worker; a lease takes and gives back on the same shard, so each stays ≥ 0.
    in_flight: Sharded<AtomicU64>,
    /// One pool per router worker: a connection is driven by the thread that uses it, and
    /// staying on one thread is the point. LIFO, so the hottest connections are reused and the
    /// rest may idle out upstream.
    #[expect(clippy::vec_box, reason = "a connection moves in and out per request")]
    idle: Sharded<Mutex<Vec<Box<Conn>>>>,
}

/// A request's hold on its backend, from the pick until the response body ends (or the request
/// is abandoned): while it lives the backend counts the request as in flight, which is what
/// draining waits for. It also carries the connection, driving it while the body streams and
/// pooling it when the exchange ended cleanly — linkerd's `retain` idea, plus reuse.
#[derive(Debug)]
pub(super) struct Lease {
    upstream: Arc<Upstream>,
    /// The `in_flight` shard this lease counts in.
    shard: usize,
    conn: Option<Box<Conn>>,
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
            in_flight: Sharded::new(workers, || AtomicU64::new(0)),
            idle: Sharded::new(workers, Mutex::default),
        }
    }

    pub(super) fn in_flight(&self) -> u64 {
        self.in_flight
            .iter()
            .map(|n| n.load(Ordering::Acquire))
            .sum()
    }

    /// A ready connection from this worker's pool, or a new one.
    pub(super) async fn checkout(&self) -> io::Result<Box<Conn>> {
        loop {
            let conn = self.idle_conns().pop();
            match conn {
                // One the upstream closed while it idled is dropped here, not found broken
                // after the request went out.
                Some(conn) if conn.is_open() => return Ok(conn),
                Some(_) => continue,
                None => return self.connect().await,
            }
        }
    }

    /// Opens a new connection (never pooled yet; an upgrade's stays out of the pool).
    pub(super) async fn connect(&self) -> io::Result<Box<Conn>> {
        // Boxed once per connection: it moves in and out of the pool and the lease per request.
        Ok(Box::new(Conn::new(self.tcp_connect().await?)))
    }

    async fn tcp_connect(&self) -> io::Result<TcpStream> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// Closes every idle connection (router shutdown).
    pub(super) fn close_idle(&self) {
        for pool in self.idle.iter() {
            pool.lock().unwrap_or_else(PoisonError::into_inner).clear();
        }
    }

    fn checkin(&self, conn: Box<Conn>) {
        let mut idle = self.idle_conns();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// This worker's pool (uncontended: only this thread takes it, but for shutdown).
    #[expect(clippy::vec_box, reason = "a connection moves in and out per request")]
    fn idle_conns(&self) -> std::sync::MutexGuard<'_, Vec<Box<Conn>>> {
        let pool = self.idle.local();
        // Nothing panics while holding this lock; a poisoned pool is still a valid pool.
        pool.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl Lease ===

impl Lease {
    pub(super) fn new(upstream: Arc<Upstream>) -> Lease {
        let shard = upstream.in_flight.local_index();
        upstream.in_flight.get(shard).fetch_add(1, Ordering::AcqRel);
        Lease {
            upstream,
            shard,
            conn: None,
        }
    }

    pub(super) fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// Keeps `conn`, whose response body is streaming (read through [`Lease::conn_mut`]); it
    /// goes back to the pool if the exchange ends cleanly.
    pub(super) fn hold(&mut self, conn: Box<Conn>) {
        self.conn = Some(conn);
    }

    pub(super) fn conn(&self) -> Option<&Conn> {
        self.conn.as_deref()
    }

    pub(super) fn conn_mut(&mut self) -> Option<&mut Conn> {
        self.conn.as_deref_mut()
    }

    /// The response body ended cleanly: hand the connection back and end the lease.
    pub(super) fn release(mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if conn.reusable() {
            self.upstream.checkin(conn);
        }
        // Otherwise the upstream answered before reading the whole request body, closes after
        // this response, or sent more than it was asked: dropping the connection closes it.
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // A connection still held here saw an unfinished exchange: dropping it closes it.
        let shard = self.upstream.in_flight.get(self.shard);
        shard.fetch_sub(1, Ordering::AcqRel);
    }
}
