//! The bodies the proxy moves: requests going upstream, and responses that keep their backend's
//! lease until they end.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::conn::Exchange;
use super::upstream::Lease;

/// What goes upstream: the client's body as it streams in, or nothing (a replayed request,
/// which is only ever one that had no body).
#[derive(Debug)]
pub(super) enum ReqBody {
    Client(Incoming),
    Empty,
}

/// What goes back to the client. Not boxed: one allocation less per request.
#[derive(Debug)]
pub(super) struct ProxyBody {
    kind: Kind,
    /// Ends the request on its client connection when the body is dropped.
    _exchange: Exchange,
}

#[derive(Debug)]
enum Kind {
    /// `lease` is `None` once the body ended (and the lease was released).
    Upstream {
        body: Incoming,
        lease: Option<Lease>,
    },
    /// A response the router wrote itself (errors, the head of an upgrade).
    Local(Option<Bytes>),
}

// === impl ReqBody ===

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Client(body) => Pin::new(body).poll_frame(cx),
            ReqBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Client(body) => body.is_end_stream(),
            ReqBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Client(body) => body.size_hint(),
            ReqBody::Empty => SizeHint::with_exact(0),
        }
    }
}

// === impl ProxyBody ===

impl ProxyBody {
    pub(super) fn upstream(body: Incoming, lease: Lease, exchange: Exchange) -> ProxyBody {
        let mut this = ProxyBody {
            kind: Kind::Upstream {
                body,
                lease: Some(lease),
            },
            _exchange: exchange,
        };
        // A bodiless response (HEAD, 204, Content-Length: 0) is over already; hyper may never
        // poll it, so release now rather than when the body is dropped.
        this.release_if_ended();
        this
    }

    pub(super) fn local(bytes: Bytes, exchange: Exchange) -> ProxyBody {
        ProxyBody {
            kind: Kind::Local((!bytes.is_empty()).then_some(bytes)),
            _exchange: exchange,
        }
    }

    fn release_if_ended(&mut self) {
        if let Kind::Upstream { body, lease } = &mut self.kind {
            if body.is_end_stream() {
                if let Some(lease) = lease.take() {
                    lease.release();
                }
            }
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream { body, lease } => {
                let mut frame = Pin::new(&mut *body).poll_frame(cx);
                if frame.is_pending() {
                    if let Some(lease) = lease {
                        // The upstream connection is driven from here: let it read, then look
                        // again.
                        lease.drive(cx);
                        frame = Pin::new(&mut *body).poll_frame(cx);
                    }
                }
                let frame = ready!(frame);
                match &frame {
                    None => {
                        if let Some(lease) = lease.take() {
                            lease.release();
                        }
                    }
                    // The exchange is broken: dropping the lease closes the connection.
                    Some(Err(_)) => drop(lease.take()),
                    Some(Ok(_)) => this.release_if_ended(),
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream { body, .. } => body.is_end_stream(),
            Kind::Local(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream { body, .. } => body.size_hint(),
            Kind::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}
