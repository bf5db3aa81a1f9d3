//! The response bodies the proxy sends back: an upstream's, read off the connection its lease
//! holds (and pooled again when it ends), or one the router wrote itself.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::conn::Exchange;
use super::upstream::Lease;

/// What goes back to the client. Not boxed: one allocation less per request.
#[derive(Debug)]
pub(super) struct ProxyBody {
    kind: Kind,
    /// Ends the request on its client connection when the body is dropped.
    _exchange: Exchange,
}

#[derive(Debug)]
enum Kind {
    /// The lease holds the connection the body is read from; `None` once the body ended
    /// (and the lease was released) or broke.
    Upstream(Option<Lease>),
    /// A response the router wrote itself (errors, the head of an upgrade).
    Local(Option<Bytes>),
}

// === impl ProxyBody ===

impl ProxyBody {
    pub(super) fn upstream(lease: Lease, exchange: Exchange) -> ProxyBody {
        let mut this = ProxyBody {
            kind: Kind::Upstream(Some(lease)),
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
        if let Kind::Upstream(lease) = &mut self.kind {
            if lease
                .as_mut()
                .and_then(Lease::conn_mut)
                .is_some_and(|c| c.body_ended())
            {
                if let Some(lease) = lease.take() {
                    lease.release();
                }
            }
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(lease) => {
                let Some(conn) = lease.as_mut().and_then(Lease::conn_mut) else {
                    return Poll::Ready(None);
                };
                match ready!(conn.poll_body(cx)) {
                    Some(Ok(data)) => {
                        this.release_if_ended();
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    None => {
                        if let Some(lease) = lease.take() {
                            lease.release();
                        }
                        Poll::Ready(None)
                    }
                    // The exchange is broken: dropping the lease closes the connection.
                    Some(Err(e)) => {
                        drop(lease.take());
                        Poll::Ready(Some(Err(e)))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream(lease) => lease
                .as_ref()
                .and_then(Lease::conn)
                .is_none_or(|c| c.body_ended()),
            Kind::Local(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(lease) => lease
                .as_ref()
                .and_then(Lease::conn)
                .map_or_else(|| SizeHint::with_exact(0), |c| c.body_size_hint()),
            Kind::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}
