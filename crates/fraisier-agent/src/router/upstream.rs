//! One backend as the proxy sees it: its address, its idle keep-alive connections, and the
//! leases that count its in-flight requests.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::TrySendError;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::ReqBody;
use super::metrics::VersionCounters;
use super::workers;

/// How long a TCP connect may take before the attempt counts as failed (and is retried).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle connections kept per backend and worker; more are closed when they come back.
const MAX_IDLE: usize = 256;

type Driver = http1::Connection<TokioIo<TcpStream>, ReqBody>;

#[derive(Debug)]
pub(super) struct Upstream {
    pub(super) id: String,
    pub(super) version: String,
    pub(super) addr: SocketAddr,
    pub(super) counters: Arc<VersionCounters>,
    in_flight: AtomicU64,
    /// One pool per router worker: a connection is driven by the thread that uses it, and
    /// staying on one thread is the point. LIFO, so the hottest connections are reused and the
    /// rest may idle out upstream.
    idle: Box<[Mutex<Vec<Conn>>]>,
}

/// A keep-alive connection to an upstream, driven by the request that uses it rather than by a
/// task of its own: sending, reading the head and streaming the body all happen in the client
/// connection's task, with no task hop (and no wake-up) per request.
#[derive(Debug)]
pub(super) struct Conn {
    sender: SendRequest<ReqBody>,
    /// Boxed once per connection so it can move in and out of the pool pinned.
    driver: Pin<Box<Driver>>,
    /// The driver returned: the connection is over and must not be polled again.
    ended: bool,
}

/// A request's hold on its backend, from the pick until the response body ends (or the request
/// is abandoned): while it lives the backend counts the request as in flight, which is what
/// draining waits for. It also carries the connection, driving it while the body streams and
/// pooling it when the exchange ended cleanly — linkerd's `retain` idea, plus reuse.
#[derive(Debug)]
pub(super) struct Lease {
    upstream: Arc<Upstream>,
    conn: Option<Conn>,
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

    /// A ready connection from this worker's pool, or a new one.
    pub(super) async fn checkout(&self) -> io::Result<Conn> {
        loop {
            let conn = self.idle_conns().pop();
            let Some(mut conn) = conn else {
                return self.connect().await;
            };
            // Let the driver see what happened while the connection idled (a close, most
            // likely); it registers this task for the connection's readiness from now on.
            poll_fn(|cx| {
                conn.drive(cx);
                Poll::Ready(())
            })
            .await;
            if conn.is_ready() {
                return Ok(conn);
            }
        }
    }

    /// Opens a connection with TCP_NODELAY.
    async fn connect(&self) -> io::Result<Conn> {
        let (sender, driver) = http1::Builder::new()
            .handshake(TokioIo::new(self.tcp_connect().await?))
            .await
            .map_err(io::Error::other)?;
        Ok(Conn {
            sender,
            driver: Box::pin(driver),
            ended: false,
        })
    }

    /// Opens a connection for an upgrade: driven by a task of its own, since after a `101` it
    /// becomes a tunnel that outlives the request; never pooled.
    pub(super) async fn connect_upgradable(&self) -> io::Result<SendRequest<ReqBody>> {
        let (sender, driver) = http1::Builder::new()
            .handshake(TokioIo::new(self.tcp_connect().await?))
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(async move {
            if let Err(error) = driver.with_upgrades().await {
                tracing::debug!(%error, "upstream connection ended");
            }
        });
        Ok(sender)
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
        for pool in &self.idle {
            pool.lock().unwrap_or_else(PoisonError::into_inner).clear();
        }
    }

    fn checkin(&self, conn: Conn) {
        let mut idle = self.idle_conns();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// This worker's pool (uncontended: only this thread takes it, but for shutdown).
    fn idle_conns(&self) -> std::sync::MutexGuard<'_, Vec<Conn>> {
        let pool = &self.idle[workers::current().unwrap_or(0) % self.idle.len()];
        // Nothing panics while holding this lock; a poisoned pool is still a valid pool.
        pool.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl Conn ===

impl Conn {
    /// Sends `req` and drives the connection until the response head arrives. On error, the
    /// request comes back if it never left.
    pub(super) async fn send(
        &mut self,
        req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<ReqBody>>> {
        let mut response = std::pin::pin!(self.sender.try_send_request(req));
        let (driver, ended) = (&mut self.driver, &mut self.ended);
        poll_fn(|cx| {
            // Write the request (and later read the response) first, then look for the head;
            // if the connection ends, the response future fails on this same poll.
            if !*ended && driver.as_mut().poll(cx).is_ready() {
                *ended = true;
            }
            response.as_mut().poll(cx)
        })
        .await
    }

    /// Lets the connection make progress (read body bytes, finish an exchange, notice a close).
    pub(super) fn drive(&mut self, cx: &mut Context<'_>) {
        if !self.ended {
            if let Poll::Ready(result) = self.driver.as_mut().poll(cx) {
                if let Err(error) = result {
                    tracing::debug!(%error, "upstream connection ended");
                }
                self.ended = true;
            }
        }
    }

    /// Free for another request.
    fn is_ready(&self) -> bool {
        !self.ended && self.sender.is_ready()
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

    /// Keeps `conn`, whose response body is streaming: [`Lease::drive`] moves it along, and it
    /// goes back to the pool if the exchange ends cleanly.
    pub(super) fn hold(&mut self, conn: Conn) {
        self.conn = Some(conn);
    }

    pub(super) fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(conn) = &mut self.conn {
            conn.drive(cx);
        }
    }

    /// The response body ended cleanly: hand the connection back and end the lease.
    pub(super) fn release(mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        // One more turn lets the driver close the exchange and ask for the next request. No
        // one needs waking for an idle connection: its next user polls it first.
        conn.drive(&mut Context::from_waker(Waker::noop()));
        if conn.is_ready() {
            self.upstream.checkin(conn);
        }
        // Otherwise the upstream is still reading our request body (it answered early) or
        // closed: the connection is not reusable and dropping it closes it.
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // A connection still held here saw an unfinished exchange: dropping it closes it.
        self.upstream.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
