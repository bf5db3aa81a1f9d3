//! One proxied exchange: pick a backend, forward the request, retry what is safe to retry, and
//! turn what failed into the router's error responses.

use std::convert::Infallible;
use std::future::{poll_fn, Future as _};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body as _, Incoming};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt as _;

use super::body::ProxyBody;
use super::conn::{ConnCtx, Exchange, Live};
use super::h1::{self, Conn, Forwarding, SendError, KEEP_ALIVE};
use super::upstream::{Lease, Upstream};
use super::{until, Phase};

/// One try plus at most two retries.
const MAX_ATTEMPTS: usize = 3;
/// Idle-check periods an upstream has to answer a request with a response head: with the
/// 30 s period, a request that got no answer for 60–90 s is answered 504. Counted on the
/// connection's coarse clock, so it costs no timer per request. The body is not timed: a
/// stream (server-sent events, say) may stay quiet for long.
const HEAD_TIMEOUT_TICKS: u32 = 3;

static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

const NO_HEALTHY_INSTANCE: &[u8] = br#"{"error":{"code":"NO_HEALTHY_INSTANCE","message":"no healthy instance can take this request"}}"#;
const REQUEST_BODY_INCOMPLETE: &[u8] = br#"{"error":{"code":"REQUEST_BODY_INCOMPLETE","message":"the request body ended before its announced end"}}"#;
const UPSTREAM_TIMEOUT: &[u8] = br#"{"error":{"code":"UPSTREAM_TIMEOUT","message":"the upstream instance did not answer in time"}}"#;
const UPSTREAM_UNAVAILABLE: &[u8] = br#"{"error":{"code":"UPSTREAM_UNAVAILABLE","message":"the upstream instance could not be reached"}}"#;

/// Why a request got no upstream response. Each variant says which side failed and whether
/// the request may go to another backend.
#[derive(Debug, thiserror::Error)]
pub(super) enum ProxyError {
    #[error("no backend has weight > 0")]
    NoBackend,
    /// Nothing reached the upstream, so any request may be retried.
    #[error("connecting to backend {id} at {addr} failed")]
    Connect {
        id: String,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The client's request body broke off before a response head: not the upstream's fault,
    /// not counted against its version, never retried.
    #[error("the client's request body broke off")]
    ClientBody {
        #[source]
        source: hyper::Error,
    },
    /// No response head within the head timeout; never retried (the upstream may be acting on
    /// the request).
    #[error("backend {id} at {addr} did not answer in time")]
    Timeout { id: String, addr: SocketAddr },
    /// The exchange broke before a response head; only a replayable request may be retried,
    /// and only if the connection closed (a garbled response is not the network's fault).
    #[error("backend {id} at {addr} failed before responding")]
    Upstream {
        id: String,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// What one attempt on one backend gave.
enum Attempt {
    /// The response head, and the connection its body is read from (pooled again if the
    /// exchange ends cleanly; a tunnel after a `101`).
    Answered(Response<()>, Box<Conn>),
    /// The request body comes back (unread unless the error says otherwise), except after a
    /// timeout.
    Failed(ProxyError, Option<Incoming>),
}

/// Serves one request: the hyper service of a client connection.
///
/// Latency, as counted per version, runs from the moment hyper hands over the parsed request
/// head to the moment the upstream's response head is parsed: the router's own overhead plus
/// the upstream's time to first byte, not the time to stream the body.
pub(super) async fn proxy(
    ctx: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let received = Instant::now();
    let exchange = ctx.begin();
    let ctx = exchange.ctx();
    let (mut parts, mut body) = req.into_parts();
    let client_upgrade = if is_upgrade(&parts.headers) {
        parts.extensions.remove::<OnUpgrade>()
    } else {
        None
    };
    prepare_request(&mut parts, client_upgrade.is_some());
    // Retrying needs no copy of the request: the head is only borrowed by an attempt, and a
    // bodiless request's body is never polled. A request that reached an upstream is sent
    // again only if it is idempotent, had no body, and the connection closed before any answer
    // (the keep-alive race: the upstream closed it just as the request went out).
    let replayable =
        client_upgrade.is_none() && is_idempotent(&parts.method) && body.is_end_stream();

    let mut tried = [0usize; MAX_ATTEMPTS];
    let mut last_error = ProxyError::NoBackend;
    for attempt in 0..MAX_ATTEMPTS {
        let picked = {
            let table = ctx.shared.table();
            let upstream = match attempt {
                0 => table.pick(),
                _ => table.pick_except(&tried[..attempt]),
            };
            upstream.cloned()
        };
        let Some(upstream) = picked else { break };
        tried[attempt] = Arc::as_ptr(&upstream) as usize;
        let mut lease = Lease::new(upstream);
        let forwarding = Forwarding {
            client_ip: &ctx.client_ip,
            upstream: lease.upstream().addr,
        };
        let upgrade = client_upgrade.is_some();
        match send(ctx, lease.upstream(), &parts, &forwarding, body, upgrade).await {
            Attempt::Answered(resp, mut conn) => {
                let status = resp.status();
                lease
                    .upstream()
                    .counters
                    .record_response(received.elapsed(), status.is_server_error());
                return Ok(match client_upgrade {
                    Some(client) if status == StatusCode::SWITCHING_PROTOCOLS => {
                        upgraded(resp, client, lease, conn, exchange)
                    }
                    refused_upgrade => {
                        // The request's header map is done with: the next response head on
                        // this connection is parsed into it.
                        conn.recycle(std::mem::take(&mut parts.headers));
                        lease.hold(conn);
                        let (mut parts, ()) = resp.into_parts();
                        parts.version = Version::HTTP_11;
                        strip_hop_by_hop(&mut parts.headers);
                        // The framing guard stopped reading requests at the upgrade: the
                        // connection ends with this answer.
                        if refused_upgrade.is_some() {
                            parts
                                .headers
                                .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        }
                        Response::from_parts(parts, ProxyBody::upstream(lease, exchange))
                    }
                });
            }
            Attempt::Failed(error, returned) => {
                if !matches!(error, ProxyError::ClientBody { .. }) {
                    lease.upstream().counters.record_undelivered();
                }
                drop(lease);
                // Nothing reached the upstream after a failed connect: any request may go
                // elsewhere.
                let retry = matches!(error, ProxyError::Connect { .. })
                    || (replayable && error.closed_before_response());
                tracing::debug!(error = %DisplayChain(&error), attempt, retry, "proxy attempt failed");
                last_error = error;
                match returned {
                    Some(returned) if retry => body = returned,
                    _ => break,
                }
            }
        }
    }
    Ok(last_error.into_response(exchange))
}

/// Gets a connection to `upstream` and sends the request on it, up to the response head. An
/// upgrade gets a connection of its own, since after a `101` it becomes a tunnel.
async fn send(
    ctx: &ConnCtx,
    upstream: &Upstream,
    head: &request::Parts,
    forwarding: &Forwarding<'_>,
    body: Incoming,
    upgrade: bool,
) -> Attempt {
    let start = ctx.tick();
    let conn = if upgrade {
        upstream.connect().await
    } else {
        upstream.checkout().await
    };
    let mut conn = match conn {
        Ok(conn) => conn,
        Err(source) => {
            let error = ProxyError::Connect {
                id: upstream.id.clone(),
                addr: upstream.addr,
                source,
            };
            return Attempt::Failed(error, Some(body));
        }
    };
    let sent = {
        let mut sending = std::pin::pin!(conn.send(head, forwarding, body));
        poll_fn(|cx| {
            if ctx.tick().wrapping_sub(start) >= HEAD_TIMEOUT_TICKS {
                return Poll::Ready(None);
            }
            sending.as_mut().poll(cx).map(Some)
        })
        .await
    };
    match sent {
        Some(Ok(resp)) => Attempt::Answered(resp, conn),
        Some(Err((SendError::Upstream(source), body))) => {
            let error = ProxyError::Upstream {
                id: upstream.id.clone(),
                addr: upstream.addr,
                source,
            };
            Attempt::Failed(error, Some(body))
        }
        Some(Err((SendError::ClientBody(source), body))) => {
            Attempt::Failed(ProxyError::ClientBody { source }, Some(body))
        }
        // Dropping the connection closes it: the upstream may still answer, to no one.
        None => Attempt::Failed(
            ProxyError::Timeout {
                id: upstream.id.clone(),
                addr: upstream.addr,
            },
            None,
        ),
    }
}

/// Answers the client's upgrade with the upstream's 101 and splices the two connections in a
/// task that holds the lease, so a WebSocket counts as in flight (and delays draining) until it
/// closes or the router stops.
fn upgraded(
    resp: Response<()>,
    client: OnUpgrade,
    lease: Lease,
    conn: Box<Conn>,
    exchange: Exchange,
) -> Response<ProxyBody> {
    let ctx = exchange.ctx();
    let (mut phase, live) = (ctx.phase_rx.clone(), Live::new(&ctx.shared));
    tokio::spawn(async move {
        let splice = async {
            let mut client = TokioIo::new(client.await?);
            let (mut upstream, early) = conn.into_tunnel();
            // What the upstream sent right behind its 101 goes first.
            client.write_all(&early).await?;
            tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        };
        tokio::select! {
            result = splice => if let Err(error) = result {
                tracing::debug!(%error, "upgrade failed");
            },
            () = until(&mut phase, Phase::Stopped) => {}
        }
        drop((lease, live));
    });
    let (mut parts, ()) = resp.into_parts();
    let upgrade = parts.headers.remove(header::UPGRADE);
    strip_hop_by_hop(&mut parts.headers);
    if let Some(upgrade) = upgrade {
        parts.headers.insert(header::UPGRADE, upgrade);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    Response::from_parts(parts, ProxyBody::local(Bytes::new(), exchange))
}

/// Turns the request head into the one sent upstream: origin-form URI, HTTP/1.1, hop-by-hop
/// headers dropped (but an upgrade's own). The `X-Forwarded-*` headers are written on the way
/// out (`h1`).
fn prepare_request(parts: &mut request::Parts, upgrade: bool) {
    if parts.uri.authority().is_some() {
        // Absolute-form (proxy-style) request target: upstreams expect origin-form.
        parts.uri = parts
            .uri
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
    }
    // The upstream connection is ours and keep-alive: never speak HTTP/1.0 to it.
    parts.version = Version::HTTP_11;
    let headers = &mut parts.headers;
    if upgrade {
        let upgrade = headers.remove(header::UPGRADE);
        strip_hop_by_hop(headers);
        if let Some(upgrade) = upgrade {
            headers.insert(header::UPGRADE, upgrade);
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
    } else {
        strip_hop_by_hop(headers);
    }
}

/// Removes the hop-by-hop headers and those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass of cheap name comparisons finds the ones present (most messages carry none,
    // and an empty Vec allocates nothing); then those `Connection` names. Removing each of
    // the nine names by string would parse and hash every one of them.
    let mut gone: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .cloned()
        .collect();
    if gone.is_empty() {
        return;
    }
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',').map(str::trim) {
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                if !is_hop_by_hop(&name) {
                    gone.push(name);
                }
            }
        }
    }
    for name in gone {
        headers.remove(name);
    }
}

/// The hop-by-hop headers: RFC 9110 §7.6.1's, plus the non-standard ones proxies still meet.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    // Standard names compare as enum tags, so this is a handful of integer comparisons.
    *name == header::CONNECTION
        || *name == header::TE
        || *name == header::TRAILER
        || *name == header::TRANSFER_ENCODING
        || *name == header::UPGRADE
        || *name == header::PROXY_AUTHENTICATE
        || *name == header::PROXY_AUTHORIZATION
        || *name == KEEP_ALIVE
        || *name == PROXY_CONNECTION
}

/// An HTTP/1.1 `Connection: upgrade` request with an `Upgrade` header (WebSocket and kin).
fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && h1::has_token(headers, "upgrade")
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

fn json_response(
    status: StatusCode,
    body: &'static [u8],
    exchange: Exchange,
) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::local(Bytes::from_static(body), exchange));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Shows an error with its sources, for logs.
struct DisplayChain<'a>(&'a dyn std::error::Error);

// === impl ProxyError ===

impl ProxyError {
    /// The connection broke after the request went out but before any response byte.
    fn closed_before_response(&self) -> bool {
        match self {
            ProxyError::NoBackend
            | ProxyError::Connect { .. }
            | ProxyError::ClientBody { .. }
            | ProxyError::Timeout { .. } => false,
            ProxyError::Upstream { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            ),
        }
    }

    /// The one place a proxy failure becomes HTTP; the client sees a code, never the cause.
    fn into_response(self, exchange: Exchange) -> Response<ProxyBody> {
        match self {
            ProxyError::NoBackend => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                NO_HEALTHY_INSTANCE,
                exchange,
            ),
            ProxyError::ClientBody { source } => {
                tracing::debug!(error = %source, "client request body broke off");
                json_response(StatusCode::BAD_REQUEST, REQUEST_BODY_INCOMPLETE, exchange)
            }
            error @ ProxyError::Timeout { .. } => {
                tracing::warn!(%error, "upstream timed out");
                json_response(StatusCode::GATEWAY_TIMEOUT, UPSTREAM_TIMEOUT, exchange)
            }
            error => {
                tracing::warn!(error = %DisplayChain(&error), "upstream unavailable");
                json_response(StatusCode::BAD_GATEWAY, UPSTREAM_UNAVAILABLE, exchange)
            }
        }
    }
}

// === impl DisplayChain ===

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(headers: &[(&str, &str)]) -> request::Parts {
        let mut req = Request::builder().uri("http://example.com/a?b=1");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn request_head_loses_hop_by_hop() {
        let mut parts = head(&[
            ("host", "app.example"),
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("proxy-authorization", "basic x"),
            ("accept", "*/*"),
        ]);
        prepare_request(&mut parts, false);
        let h = &parts.headers;
        for gone in [
            "connection",
            "keep-alive",
            "x-secret",
            "te",
            "proxy-authorization",
        ] {
            assert!(!h.contains_key(gone), "{gone} kept");
        }
        assert_eq!(parts.uri, "/a?b=1");
        assert_eq!(parts.version, Version::HTTP_11);
        assert_eq!(h["accept"], "*/*");
        assert_eq!(h["host"], "app.example");
    }

    #[test]
    fn hop_by_hop_headers_are_stripped_whatever_else_is_there() {
        const HOP_BY_HOP: [&str; 9] = [
            "connection",
            "keep-alive",
            "proxy-authenticate",
            "proxy-authorization",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ];
        let mut headers = HeaderMap::new();
        for name in HOP_BY_HOP {
            assert!(is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
            headers.append(name, HeaderValue::from_static("x"));
            headers.append(name, HeaderValue::from_static("y"));
        }
        headers.append("connection", HeaderValue::from_static("x-one, X-Two"));
        for kept in ["x-one", "x-two", "x-three", "accept"] {
            headers.insert(kept, HeaderValue::from_static("1"));
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<_> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "x-three"]);

        assert!(!is_hop_by_hop(&header::CONTENT_LENGTH));
        assert!(!is_hop_by_hop(&HeaderName::from_static("x-keep-alive")));
        // Responses lose them too.
        let mut headers = HeaderMap::new();
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
    }

    #[test]
    fn upgrade_keeps_its_own_headers() {
        let mut parts = head(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("keep-alive", "1"),
        ]);
        assert!(is_upgrade(&parts.headers));
        prepare_request(&mut parts, true);
        assert_eq!(parts.headers["upgrade"], "websocket");
        assert_eq!(parts.headers["connection"], "upgrade");
        assert!(!parts.headers.contains_key("keep-alive"));
        assert!(!is_upgrade(&head(&[("upgrade", "websocket")]).headers));
    }
}
