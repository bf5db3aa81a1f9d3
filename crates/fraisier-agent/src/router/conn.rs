//! One client connection: serve its requests, close it when it idles, drain it when the router
//! stops.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::framing::FramingGuard;
use super::{proxy, Phase, Shared};

/// A connection with no request in progress and none started or ended for a whole period is
/// closed at the next check: idle keep-alive connections and stalled request heads (slowloris)
/// go after 30–60 s. Each check is also a tick of the connection's clock, which the upstream
/// timeout counts in (`proxy`). One timer per connection per period, where hyper's header-read
/// timeout would allocate and arm one per request.
pub(super) const IDLE_CHECK: Duration = Duration::from_secs(30);

/// What a connection's requests share, and how the router reaches the connection.
#[derive(Debug)]
pub(super) struct ConnCtx {
    pub(super) shared: Arc<Shared>,
    /// Formatted once per connection, then cloned (a refcount) into each request.
    pub(super) client_ip: HeaderValue,
    /// For upgraded connections, which outlive the connection's task.
    pub(super) phase_rx: watch::Receiver<Phase>,
    /// Requests whose response has not ended.
    outstanding: AtomicU32,
    /// A request started or ended since the last idle check.
    active: AtomicBool,
    /// A request ever arrived: draining drops a connection that never sent one at once
    /// (hyper's graceful shutdown would wait for its first request).
    used: AtomicBool,
    /// Idle checks so far: a coarse clock that costs no clock read per request.
    ticks: AtomicU32,
    /// The router's phase as pushed to this connection (never decreases), and the task to wake
    /// when it changes: per-connection atomics, so that the task's many wake-ups poll no
    /// shared lock.
    phase: AtomicU8,
    waker: AtomicWaker,
}

/// A request's mark on its connection, from its head until its response ends (the response
/// body holds it).
#[derive(Debug)]
pub(super) struct Exchange(Arc<ConnCtx>);

/// The router's live connections, for shutdown to reach.
#[derive(Debug, Default)]
pub(super) struct Conns {
    list: Mutex<ConnList>,
}

#[derive(Debug, Default)]
struct ConnList {
    conns: Vec<Weak<ConnCtx>>,
    /// Length at which closed connections are next pruned (amortized O(1) per connection).
    prune_at: usize,
}

/// Counts a task of the router (accept loop, connection, tunnel) while it lives: shutdown
/// waits for the count to reach zero.
#[derive(Debug)]
pub(super) struct Live(Arc<Shared>);

// === impl ConnCtx ===

impl ConnCtx {
    /// Marks the start of a request; the returned exchange ends it when dropped.
    pub(super) fn begin(self: Arc<Self>) -> Exchange {
        self.used.store(true, Ordering::Relaxed);
        self.active.store(true, Ordering::Relaxed);
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        Exchange(self)
    }

    pub(super) fn signal(&self, phase: Phase) {
        self.phase.fetch_max(phase as u8, Ordering::AcqRel);
        self.waker.wake();
    }

    /// Ready with the new phase once it differs from `seen`.
    fn poll_phase(&self, cx: &mut Context<'_>, seen: Phase) -> Poll<Phase> {
        self.waker.register(cx.waker());
        let now = Phase::from_u8(self.phase.load(Ordering::Acquire));
        if now == seen {
            Poll::Pending
        } else {
            Poll::Ready(now)
        }
    }

    /// The connection's coarse clock, in idle-check periods.
    pub(super) fn tick(&self) -> u32 {
        self.ticks.load(Ordering::Relaxed)
    }

    /// Whether an idle check finds nothing going on (and starts a new period).
    fn idle(&self) -> bool {
        let active = self.active.swap(false, Ordering::Relaxed);
        !active && self.outstanding.load(Ordering::Relaxed) == 0
    }
}

// === impl Exchange ===

impl Exchange {
    pub(super) fn ctx(&self) -> &Arc<ConnCtx> {
        &self.0
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
        self.0.active.store(true, Ordering::Relaxed);
    }
}

// === impl Conns ===

impl Conns {
    fn register(&self, ctx: &Arc<ConnCtx>) {
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        if list.conns.len() >= list.prune_at {
            list.conns.retain(|c| c.strong_count() > 0);
            list.prune_at = (list.conns.len() * 2).max(64);
        }
        list.conns.push(Arc::downgrade(ctx));
    }

    pub(super) fn signal_all(&self, phase: Phase) {
        let list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        list.conns
            .iter()
            .filter_map(Weak::upgrade)
            .for_each(|c| c.signal(phase));
    }
}

// === impl Live ===

impl Live {
    pub(super) fn new(shared: &Arc<Shared>) -> Live {
        shared.live.fetch_add(1, Ordering::AcqRel);
        Live(Arc::clone(shared))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one client connection (HTTP/1.1 keep-alive, upgrades allowed) until it closes, idles
/// out, or the router stops.
pub(super) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    phase_rx: watch::Receiver<Phase>,
    _live: Live,
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
        outstanding: AtomicU32::new(0),
        active: AtomicBool::new(false),
        used: AtomicBool::new(false),
        ticks: AtomicU32::new(0),
        phase: AtomicU8::new(Phase::Running as u8),
        waker: AtomicWaker::new(),
        phase_rx,
    });
    shared.conns.register(&ctx);
    // A shutdown that began before the registration did not reach this connection.
    ctx.signal(*ctx.phase_rx.borrow());

    let service = {
        let ctx = Arc::clone(&ctx);
        service_fn(move |req| proxy::proxy(Arc::clone(&ctx), req))
    };
    // Every byte goes through the framing guard before hyper parses it.
    let conn = shared
        .server
        .serve_connection(TokioIo::new(FramingGuard::new(stream)), service)
        .with_upgrades();
    tokio::pin!(conn);
    let period = shared.idle_check;
    let idle_check = tokio::time::sleep(period);
    tokio::pin!(idle_check);
    let (mut seen, mut draining) = (Phase::Running, false);
    loop {
        tokio::select! {
            biased;
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, %peer, "client connection ended");
                }
                return;
            }
            now = poll_fn(|cx| ctx.poll_phase(cx, seen)) => {
                seen = now;
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
            () = idle_check.as_mut() => {
                // The next turn of the loop polls the connection, and so any request waiting
                // for its upstream, which then sees the new tick.
                ctx.ticks.fetch_add(1, Ordering::Relaxed);
                if ctx.idle() {
                    tracing::debug!(%peer, "closing idle client connection");
                    return;
                }
                idle_check.as_mut().reset(Instant::now() + period);
            }
        }
    }
}
