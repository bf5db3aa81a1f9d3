//! HTTP/1.1 to an upstream instance, spoken by the router itself: write a request head and
//! stream its body, parse the response head, and frame the response body (length, chunked, or
//! until close) out of one read buffer, handing body bytes on without copying them.
//!
//! Why not hyper's client: it is general (a dispatcher, a task-facing sender, a header map
//! built per response, a clone of the request head to retry), and on a proxy's hot path that
//! kept the router at 0.75–0.82× nginx's throughput on 2 cores (docs/benchmarks.md). The
//! upstreams are our own instances on loopback, speaking HTTP/1.1 keep-alive; what a proxy
//! needs of a client is small, and it is all here. Deliberate limits: response trailers are
//! dropped (nginx does the same), an HTTP/1.0 upstream gets a new connection per request, and
//! a connection goes back to the pool only once both the request and the response are whole.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf as _, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, Method, Response, StatusCode, Version};
use hyper::body::{Body as _, Incoming, SizeHint};
use tokio::io::AsyncWrite as _;
use tokio::net::TcpStream;

/// Headers a response head may carry.
const MAX_HEADERS: usize = 128;
/// Longest response head, and longest chunk-size or trailer line.
const MAX_HEAD: usize = 64 * 1024;
/// Free space made in the read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;
/// Request body bytes gathered before they are written.
const WRITE_CHUNK: usize = 64 * 1024;

/// A keep-alive connection to one upstream instance, used by one exchange at a time and driven
/// by the task of the request that holds it: no task of its own, no wake-up hop.
#[derive(Debug)]
pub(super) struct Conn {
    stream: TcpStream,
    read: BytesMut,
    write: Vec<u8>,
    /// The response body being read, as far as it has been.
    body: Framing,
    /// The upstream may take another request on this connection once this exchange ends.
    keep_alive: bool,
    /// Header value positions of the head being parsed (kept to reuse the allocation).
    scratch: Vec<(HeaderName, Range<usize>)>,
    /// An emptied header map (a request's, once it went out) that the next response head is
    /// parsed into, so that no exchange allocates one.
    spare: HeaderMap,
    /// How much of `write` is out.
    written: usize,
    /// A request body still going out while the response comes back: a full-duplex upstream
    /// (an echo, a stream processor) answers before it has read all of it.
    upload: Option<Upload>,
}

#[derive(Debug)]
struct Upload {
    body: Incoming,
    /// Re-chunked on the way out (the client sent no `Content-Length`).
    chunked: bool,
    /// Every frame of `body` is in `write` (or out).
    done: bool,
}

/// What the router adds to a request head on its way upstream.
#[derive(Debug)]
pub(super) struct Forwarding<'a> {
    /// Appended to `X-Forwarded-For`.
    pub(super) client_ip: &'a HeaderValue,
    /// The `Host` of a request that came without one (HTTP/1.0 clients may omit it; HTTP/1.1
    /// upstreams require it).
    pub(super) upstream: SocketAddr,
}

/// Why an exchange got no response head.
#[derive(Debug, thiserror::Error)]
pub(super) enum SendError {
    #[error(transparent)]
    Upstream(#[from] io::Error),
    /// The client's request body broke off (the client went away mid-upload): nothing the
    /// upstream did, so it must not count against its version.
    #[error("the client's request body broke off")]
    ClientBody(#[source] hyper::Error),
}

/// What stopped a request from going out.
enum WriteFailure {
    Socket(io::Error),
    ClientBody(hyper::Error),
}

pub(super) static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// How the current response body ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body left to read.
    Done,
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    UntilClose,
}

/// How a response's `Content-Length` must change on its way to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Length {
    /// Sent along with `Transfer-Encoding`, which wins (and is redone by our server side): a
    /// proxy must remove it.
    Drop,
    /// Repeated (`7, 7`, or two fields): one value.
    One(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines, then an empty line.
    Trailers,
}

// === impl Conn ===

impl Conn {
    pub(super) fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            read: BytesMut::with_capacity(READ_CHUNK),
            write: Vec::with_capacity(1024),
            body: Framing::Done,
            keep_alive: true,
            scratch: Vec::new(),
            spare: HeaderMap::new(),
            written: 0,
            upload: None,
        }
    }

    /// Keeps `headers`, emptied, for the next response head (the last one took the spare).
    pub(super) fn recycle(&mut self, mut headers: HeaderMap) {
        headers.clear();
        self.spare = headers;
    }

    /// Whether an idle connection can still carry a request: the upstream has not closed it
    /// (or sent anything unasked). No syscall unless the socket saw an event since its last
    /// read, which ended short (see [`Conn::poll_fill`]).
    pub(super) fn is_open(&self) -> bool {
        match self
            .stream
            .poll_read_ready(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut byte = [0u8; 1];
                matches!(self.stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Sends the request `head` (with the router's [`Forwarding`] headers) and `body`, and reads
    /// up to the end of the response head; the body is then read with [`Conn::poll_body`]. The
    /// request body streams while the head is awaited and, if the upstream answers before it
    /// is out, while the response is read. The head is borrowed, and the body comes back with
    /// an error: the caller can send them again elsewhere when that is safe.
    pub(super) async fn send(
        &mut self,
        head: &request::Parts,
        forwarding: &Forwarding<'_>,
        body: Incoming,
    ) -> Result<Response<()>, (SendError, Incoming)> {
        let head_only = head.method == Method::HEAD;
        let upgrading = head.headers.contains_key(header::UPGRADE);
        let done = body.is_end_stream();
        let chunked = !done && !head.headers.contains_key(header::CONTENT_LENGTH);
        self.write.clear();
        encode_head(head, forwarding, chunked, &mut self.write);
        self.written = 0;
        self.keep_alive = true;
        self.body = Framing::Done;
        let mut upload = Upload {
            body,
            chunked,
            done,
        };
        let mut write_error: Option<io::Error> = None;
        let result = poll_fn(|cx| {
            if write_error.is_none() {
                match self.poll_upload(cx, &mut upload) {
                    Ok(()) => {}
                    // The upstream may have answered and closed (an early 413): look for the
                    // answer before reporting this.
                    Err(WriteFailure::Socket(e)) => write_error = Some(e),
                    Err(WriteFailure::ClientBody(e)) => {
                        return Poll::Ready(Err(SendError::ClientBody(e)));
                    }
                }
            }
            loop {
                if let Some(resp) = self.parse_head(head_only, upgrading)? {
                    return Poll::Ready(Ok(resp));
                }
                if ready!(self.poll_fill(cx))? == 0 {
                    return Poll::Ready(Err(SendError::Upstream(
                        write_error.take().unwrap_or_else(|| {
                            let what = if self.read.is_empty() {
                                "upstream closed the connection before responding"
                            } else {
                                "upstream closed the connection mid-head"
                            };
                            io::Error::new(io::ErrorKind::UnexpectedEof, what)
                        }),
                    )));
                }
            }
        })
        .await;
        match result {
            Ok(resp) => {
                if write_error.is_some() {
                    // The upstream stopped reading the request: the connection is done.
                    self.keep_alive = false;
                } else if !self.all_out(&upload) {
                    self.upload = Some(upload);
                }
                Ok(resp)
            }
            Err(e) => Err((e, upload.body)),
        }
    }

    /// Writes what is buffered and refills from the request body, until the socket or the body
    /// would block or the request is out.
    fn poll_upload(
        &mut self,
        cx: &mut Context<'_>,
        upload: &mut Upload,
    ) -> Result<(), WriteFailure> {
        loop {
            if self.written < self.write.len() {
                match Pin::new(&mut self.stream).poll_write(cx, &self.write[self.written..]) {
                    Poll::Ready(Ok(0)) => {
                        return Err(WriteFailure::Socket(io::ErrorKind::WriteZero.into()))
                    }
                    Poll::Ready(Ok(n)) => self.written += n,
                    Poll::Ready(Err(e)) => return Err(WriteFailure::Socket(e)),
                    Poll::Pending => return Ok(()),
                }
                continue;
            }
            if upload.done {
                return Ok(());
            }
            self.write.clear();
            self.written = 0;
            // Gather what the client body has ready into one write.
            while self.write.len() < WRITE_CHUNK {
                match Pin::new(&mut upload.body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        let Ok(data) = frame.into_data() else {
                            continue; // request trailers are not forwarded
                        };
                        if data.is_empty() {
                            continue;
                        }
                        if upload.chunked {
                            self.write
                                .extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                            self.write.extend_from_slice(&data);
                            self.write.extend_from_slice(b"\r\n");
                        } else {
                            self.write.extend_from_slice(&data);
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Err(WriteFailure::ClientBody(e)),
                    Poll::Ready(None) => {
                        if upload.chunked {
                            self.write.extend_from_slice(b"0\r\n\r\n");
                        }
                        upload.done = true;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            if self.write.is_empty() {
                return Ok(());
            }
        }
    }

    /// Every byte of the request is on the wire.
    fn all_out(&self, upload: &Upload) -> bool {
        upload.done && self.written == self.write.len()
    }

    /// Moves a request body that is still going out (see [`Conn::send`]) along.
    fn poll_pending_upload(&mut self, cx: &mut Context<'_>) {
        let Some(mut upload) = self.upload.take() else {
            return;
        };
        match self.poll_upload(cx, &mut upload) {
            Ok(()) if self.all_out(&upload) => {}
            Ok(()) => self.upload = Some(upload),
            // The upstream stopped reading it, or the client's body broke off: the response
            // may still end, but the connection is not reused.
            Err(_) => self.keep_alive = false,
        }
    }

    /// Parses a complete response head out of the read buffer, skipping interim (1xx)
    /// responses but `101`; `None` while more bytes are needed.
    fn parse_head(&mut self, head_only: bool, upgrading: bool) -> io::Result<Option<Response<()>>> {
        loop {
            if self.read.is_empty() {
                return Ok(None);
            }
            // Uninitialized: filling 128 empty headers first cost more than parsing a small
            // head.
            let mut headers =
                [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut []);
            let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut parsed,
                &self.read,
                &mut headers,
            ) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) if self.read.len() > MAX_HEAD => {
                    return Err(invalid("response head too large"));
                }
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(e) => return Err(invalid(&format!("malformed response head: {e}"))),
            };
            let code = parsed.code.unwrap_or(0);
            if (100..200).contains(&code) && code != 101 {
                self.read.advance(len);
                continue;
            }
            if code == 101 && !upgrading {
                return Err(invalid(
                    "101 Switching Protocols to a request that asked no upgrade",
                ));
            }
            let status = StatusCode::from_u16(code).map_err(|_| invalid("bad status code"))?;
            let version = if parsed.version == Some(0) {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            };
            let base = self.read.as_ptr() as usize;
            self.scratch.clear();
            let (mut close, mut connection_kept) = (false, false);
            for h in parsed.headers.iter() {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| invalid("bad header name"))?;
                // The usual `Connection: keep-alive` (or `close`) and `Keep-Alive` are
                // hop-by-hop and say nothing the client needs: read here and left out of the
                // map, so that most responses need no stripping on their way out. A
                // `Connection` naming anything else goes in, for the proxy to act on.
                if name == header::CONNECTION {
                    if let Some(says_close) = keep_alive_or_close(h.value) {
                        close |= says_close;
                        continue;
                    }
                    connection_kept = true;
                } else if name == KEEP_ALIVE {
                    continue;
                }
                let start = h.value.as_ptr() as usize - base;
                self.scratch.push((name, start..start + h.value.len()));
            }
            let head = self.read.split_to(len).freeze();
            let mut map = std::mem::take(&mut self.spare);
            map.reserve(self.scratch.len());
            for (name, range) in self.scratch.drain(..) {
                let value = HeaderValue::from_maybe_shared(head.slice(range))
                    .map_err(|_| invalid("bad header value"))?;
                map.append(name, value);
            }
            // After a 101 the connection is the upgrade's tunnel.
            self.keep_alive = version == Version::HTTP_11
                && code != 101
                && !close
                && !(connection_kept && has_token(&map, "close"));
            let (body, length) = framing(status, head_only, &map)?;
            if let Some(length) = length {
                // RFC 9112 §6.3: what the client is told must match what it gets.
                match length {
                    Length::Drop => map.remove(header::CONTENT_LENGTH),
                    Length::One(n) => map.insert(header::CONTENT_LENGTH, HeaderValue::from(n)),
                };
            }
            self.body = body;
            if self.body == Framing::UntilClose {
                self.keep_alive = false;
            }
            let mut resp = Response::new(());
            *resp.status_mut() = status;
            *resp.version_mut() = version;
            *resp.headers_mut() = map;
            return Ok(Some(resp));
        }
    }

    /// The next piece of the response body, `None` at its end.
    pub(super) fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        self.poll_pending_upload(cx);
        loop {
            match self.body {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(left) => {
                    if let Some(data) = self.take(left) {
                        let left = left - data.len() as u64;
                        self.body = if left == 0 {
                            Framing::Done
                        } else {
                            Framing::Length(left)
                        };
                        return Poll::Ready(Some(Ok(data)));
                    }
                }
                Framing::UntilClose => {
                    if let Some(data) = self.take(u64::MAX) {
                        return Poll::Ready(Some(Ok(data)));
                    }
                }
                Framing::Chunked(chunk) => match self.chunked(chunk) {
                    Ok(Some(data)) => return Poll::Ready(Some(Ok(data))),
                    Ok(None) if self.body == Framing::Done => return Poll::Ready(None),
                    Ok(None) if self.body != Framing::Chunked(chunk) => continue,
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(Some(Err(e))),
                },
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) if self.body == Framing::UntilClose => {
                    self.body = Framing::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "upstream closed the connection mid-body",
                    ))))
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
    }

    /// One step of chunked decoding over the buffered bytes: data when there is some, else
    /// `None` with `self.body` advanced (or unchanged when more bytes are needed).
    fn chunked(&mut self, chunk: Chunk) -> io::Result<Option<Bytes>> {
        match chunk {
            Chunk::Size => {
                let Some(line) = self.line()? else {
                    return Ok(None);
                };
                let size = parse_chunk_size(&line)?;
                self.body = Framing::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                });
                Ok(None)
            }
            Chunk::Data(left) => {
                let Some(data) = self.take(left) else {
                    return Ok(None);
                };
                let left = left - data.len() as u64;
                self.body = Framing::Chunked(if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                });
                Ok(Some(data))
            }
            Chunk::DataEnd => {
                if self.read.len() < 2 {
                    return Ok(None);
                }
                if &self.read[..2] != b"\r\n" {
                    return Err(invalid("chunk data not followed by CRLF"));
                }
                self.read.advance(2);
                self.body = Framing::Chunked(Chunk::Size);
                Ok(None)
            }
            Chunk::Trailers => {
                // Trailer fields are dropped; the empty line ends the body.
                while let Some(line) = self.line()? {
                    if line.is_empty() {
                        self.body = Framing::Done;
                        break;
                    }
                }
                Ok(None)
            }
        }
    }

    /// Up to `max` buffered body bytes, without copying; `None` when nothing is buffered.
    fn take(&mut self, max: u64) -> Option<Bytes> {
        if self.read.is_empty() {
            return None;
        }
        let n = usize::try_from(max)
            .unwrap_or(usize::MAX)
            .min(self.read.len());
        Some(self.read.split_to(n).freeze())
    }

    /// A CRLF-terminated line out of the buffer (without the CRLF), `None` until it is whole.
    fn line(&mut self) -> io::Result<Option<BytesMut>> {
        match self.read.windows(2).position(|w| w == b"\r\n") {
            Some(end) => {
                let line = self.read.split_to(end);
                self.read.advance(2);
                Ok(Some(line))
            }
            None if self.read.len() > MAX_HEAD => Err(invalid("chunk line too long")),
            None => Ok(None),
        }
    }

    /// Reads what the socket has into the buffer; `Ok(0)` at end of stream. Through
    /// `AsyncRead`, whose short reads clear the socket's readiness: the next read waits for
    /// epoll instead of costing an `EAGAIN` syscall first.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ_CHUNK / 4 {
            self.read.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.read)
    }

    /// The response body has been read to its end.
    pub(super) fn body_ended(&self) -> bool {
        self.body == Framing::Done
    }

    pub(super) fn body_size_hint(&self) -> SizeHint {
        match self.body {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }

    /// Whether the exchange ended cleanly and the connection may carry another request.
    pub(super) fn reusable(&self) -> bool {
        self.keep_alive
            && self.body == Framing::Done
            && self.read.is_empty()
            && self.upload.is_none()
    }

    /// The connection after a `101`: the socket, and what the upstream already sent past the
    /// head.
    pub(super) fn into_tunnel(self: Box<Self>) -> (TcpStream, BytesMut) {
        (self.stream, self.read)
    }
}

/// The request line and headers as they go upstream: origin-form target, HTTP/1.1, the
/// client's headers (hop-by-hop ones already gone), then `X-Forwarded-For` (the client's list
/// plus its address, in one line because many frameworks read only the first),
/// `X-Forwarded-Proto` and `X-Forwarded-Host` unless a previous proxy set them, and `Host` if
/// the client sent none. Written here rather than inserted into the header map: one pass, no
/// map growth.
fn encode_head(head: &request::Parts, fwd: &Forwarding<'_>, chunked: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    let target = head.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let (mut xff, mut proto, mut fwd_host, mut host) = (false, false, false, None);
    for (name, value) in &head.headers {
        if *name == X_FORWARDED_FOR {
            xff = true;
            continue;
        }
        if *name == header::HOST {
            host = Some(value);
        } else if *name == X_FORWARDED_PROTO {
            proto = true;
        } else if *name == X_FORWARDED_HOST {
            fwd_host = true;
        }
        line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if xff {
        for value in head.headers.get_all(&X_FORWARDED_FOR) {
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(fwd.client_ip.as_bytes());
    out.extend_from_slice(b"\r\n");
    if !proto {
        out.extend_from_slice(b"x-forwarded-proto: http\r\n");
    }
    match host {
        Some(host) if !fwd_host => line(out, b"x-forwarded-host", host.as_bytes()),
        Some(_) => {}
        None => line(out, b"host", fwd.upstream.to_string().as_bytes()),
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How the body of a response with this status and these headers is delimited, and whether its
/// `Content-Length` must be tidied before the response goes on.
fn framing(
    status: StatusCode,
    head_only: bool,
    headers: &HeaderMap,
) -> io::Result<(Framing, Option<Length>)> {
    if head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Done, None));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        let last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|t| !t.is_empty());
        // Another final coding (gzip alone, say) would reach the client undecoded and
        // unlabelled once `Transfer-Encoding` is stripped as hop-by-hop: refused.
        let framing = match last {
            Some(t) if t.eq_ignore_ascii_case("chunked") => Framing::Chunked(Chunk::Size),
            _ => return Err(invalid("unsupported transfer coding")),
        };
        let tidy = headers
            .contains_key(header::CONTENT_LENGTH)
            .then_some(Length::Drop);
        return Ok((framing, tidy));
    }
    let (mut length, mut values) = (None, 0);
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            values += 1;
            let n = std::str::from_utf8(part)
                .ok()
                .map(str::trim)
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| invalid("bad content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(invalid("conflicting content-length values"));
            }
            length = Some(n);
        }
    }
    let tidy = length.filter(|_| values > 1).map(Length::One);
    Ok(match length {
        Some(0) => (Framing::Done, tidy),
        Some(n) => (Framing::Length(n), tidy),
        None => (Framing::UntilClose, None),
    })
}

/// For a `Connection` value made only of `keep-alive` and `close` tokens (any case, any
/// spacing), whether it says `close`; `None` for any other value.
fn keep_alive_or_close(value: &[u8]) -> Option<bool> {
    let mut close = false;
    for token in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
        if token.eq_ignore_ascii_case(b"close") {
            close = true;
        } else if !token.eq_ignore_ascii_case(b"keep-alive") {
            return None;
        }
    }
    Some(close)
}

/// Whether a `Connection` header lists `token`.
pub(super) fn has_token(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

fn parse_chunk_size(line: &[u8]) -> io::Result<u64> {
    // Hex digits, then optional whitespace, then nothing or chunk extensions (`;name=value`,
    // ignored).
    let end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(end);
    let rest = rest.trim_ascii_start();
    if !(rest.is_empty() || rest[0] == b';') {
        return Err(invalid("bad chunk size"));
    }
    let significant = &digits[digits
        .iter()
        .position(|b| *b != b'0')
        .unwrap_or(digits.len())..];
    if digits.is_empty() || significant.len() > 15 {
        return Err(invalid("bad chunk size"));
    }
    Ok(significant.iter().fold(0u64, |acc, b| {
        acc * 16 + u64::from((*b as char).to_digit(16).unwrap_or(0))
    }))
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let ok = StatusCode::OK;
        let f = |status, head_only, pairs: &[(&str, &str)]| {
            framing(status, head_only, &headers(pairs)).unwrap()
        };
        let cl5 = [("content-length", "5")];
        assert_eq!(f(ok, true, &cl5), (Framing::Done, None));
        assert_eq!(f(StatusCode::NO_CONTENT, false, &[]), (Framing::Done, None));
        assert_eq!(
            f(StatusCode::NOT_MODIFIED, false, &cl5),
            (Framing::Done, None)
        );
        assert_eq!(
            f(
                ok,
                false,
                &[
                    ("transfer-encoding", "gzip, chunked"),
                    ("content-length", "3")
                ]
            ),
            (Framing::Chunked(Chunk::Size), Some(Length::Drop))
        );
        assert_eq!(
            f(ok, false, &[("transfer-encoding", "chunked")]),
            (Framing::Chunked(Chunk::Size), None)
        );
        assert!(framing(ok, false, &headers(&[("transfer-encoding", "gzip")])).is_err());
        assert_eq!(
            f(ok, false, &[("content-length", "7")]),
            (Framing::Length(7), None)
        );
        assert_eq!(
            f(ok, false, &[("content-length", "7, 7")]),
            (Framing::Length(7), Some(Length::One(7)))
        );
        assert_eq!(
            f(
                ok,
                false,
                &[("content-length", "7"), ("content-length", "7")]
            ),
            (Framing::Length(7), Some(Length::One(7)))
        );
        assert_eq!(
            f(ok, false, &[("content-length", "0")]),
            (Framing::Done, None)
        );
        assert_eq!(f(ok, false, &[]), (Framing::UntilClose, None));
        for bad in ["7, 8", "-1", "+7", "", "0x10", "99999999999999999999999"] {
            assert!(
                framing(ok, false, &headers(&[("content-length", bad)])).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn connection_values_of_keep_alive_and_close_only_are_read_off() {
        assert_eq!(keep_alive_or_close(b"keep-alive"), Some(false));
        assert_eq!(keep_alive_or_close(b"Keep-Alive , CLOSE"), Some(true));
        assert_eq!(keep_alive_or_close(b"close"), Some(true));
        assert_eq!(keep_alive_or_close(b"Upgrade"), None);
        assert_eq!(keep_alive_or_close(b"keep-alive, x-secret"), None);
        assert_eq!(keep_alive_or_close(b""), None);
    }

    #[test]
    fn chunk_sizes_parse_with_extensions() {
        assert_eq!(parse_chunk_size(b"1a").unwrap(), 26);
        assert_eq!(parse_chunk_size(b"FF;name=value").unwrap(), 255);
        assert_eq!(parse_chunk_size(b"0").unwrap(), 0);
        assert_eq!(parse_chunk_size(b"a \t;x").unwrap(), 10);
        assert_eq!(parse_chunk_size(b"00000000000000000001").unwrap(), 1);
        for bad in [
            &b""[..],
            b"g",
            b";x",
            b"1234567890abcdef0",
            b"5 junk",
            b"5x",
        ] {
            assert!(parse_chunk_size(bad).is_err(), "{bad:?}");
        }
    }

    fn encoded(req: http::request::Builder) -> String {
        let (parts, ()) = req.body(()).unwrap().into_parts();
        let fwd = Forwarding {
            client_ip: &HeaderValue::from_static("10.0.0.7"),
            upstream: "127.0.0.1:9000".parse().unwrap(),
        };
        let mut out = Vec::new();
        encode_head(&parts, &fwd, false, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn request_head_is_http_11_with_forwarded_headers() {
        let (parts, ()) = Request::post("/a/b?c=d")
            .header("host", "app")
            .header("x-one", "1")
            .body(())
            .unwrap()
            .into_parts();
        let fwd = Forwarding {
            client_ip: &HeaderValue::from_static("10.0.0.7"),
            upstream: "127.0.0.1:9000".parse().unwrap(),
        };
        let mut out = Vec::new();
        encode_head(&parts, &fwd, true, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /a/b?c=d HTTP/1.1\r\nhost: app\r\nx-one: 1\r\nx-forwarded-for: 10.0.0.7\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: app\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn forwarded_headers_from_a_previous_proxy_are_kept() {
        let head = encoded(
            Request::get("/")
                .header("x-forwarded-for", "1.1.1.1")
                .header("x-forwarded-for", "2.2.2.2")
                .header("x-forwarded-proto", "https")
                .header("x-forwarded-host", "public.example")
                .header("host", "internal"),
        );
        assert_eq!(head.matches("x-forwarded-for").count(), 1, "{head}");
        assert!(
            head.contains("x-forwarded-for: 1.1.1.1, 2.2.2.2, 10.0.0.7\r\n"),
            "{head}"
        );
        assert!(head.contains("x-forwarded-proto: https\r\n"), "{head}");
        assert!(!head.contains("x-forwarded-proto: http\r\n"), "{head}");
        assert_eq!(head.matches("x-forwarded-host").count(), 1, "{head}");
        assert!(head.contains("host: internal\r\n"), "{head}");
    }

    #[test]
    fn a_request_without_host_gets_the_upstreams() {
        let head = encoded(Request::get("/x").version(Version::HTTP_10));
        assert!(head.starts_with("GET /x HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("host: 127.0.0.1:9000\r\n"), "{head}");
        assert!(!head.contains("x-forwarded-host"), "{head}");
    }
}
