//! The request-framing guard: sees every byte a client sends before hyper does, and refuses a
//! request whose framing two HTTP implementations could read differently (RFC 9112 §6) — the
//! ground request smuggling stands on. hyper itself refuses most of these, but reads a request
//! with `Transfer-Encoding` and `Content-Length`, or two equal `Content-Length`s, and drops the
//! evidence before the router sees the head; so the guard reads each head first.
//!
//! A head is held back until it is complete and judged. A refused one never reaches hyper:
//! hyper is handed a head it rejects instead (a header named by a NUL byte), so it answers
//! `400 Bad Request` after the responses it owes and closes the connection. Bodies are followed
//! (by length, or chunk by chunk) only to know where the next head starts; a chunked body that
//! breaks the grammar ends the stream, which the router answers as a broken upload. After an
//! upgrade (or `CONNECT`) the bytes pass untouched: they belong to another protocol.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What hyper is handed instead of a refused head.
const POISON: &[u8] = b"GET / HTTP/1.1\r\n\x00: refused\r\n\r\n";
/// Headers per request the guard parses; more is refused (hyper allows 100).
const MAX_HEADERS: usize = 128;
/// A head longer than this is released unjudged: hyper refuses it (431) and closes.
const MAX_HEAD: usize = 64 * 1024;
const READ_CHUNK: usize = 8 * 1024;

/// How a judged request's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body: the next head follows.
    None,
    Length(u64),
    Chunked,
    /// An upgrade or a tunnel: what follows is not HTTP/1.1 requests.
    Tunnel,
}

/// Why a head was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The head does not parse (or has more headers than allowed).
    Malformed,
    SeveralContentLengths,
    InvalidContentLength,
    TransferEncodingWithContentLength,
    SeveralTransferEncodings,
    /// A coding other than a single `chunked` (the router decodes nothing else).
    UnsupportedTransferCoding,
    TransferEncodingInHttp10,
    SeveralHosts,
    /// `Content_Length`, `Transfer_Encoding`: read as framing by some servers behind proxies.
    UnderscoreFramingHeader,
}

pub(super) struct FramingGuard<S> {
    inner: S,
    /// Bytes read from the client and not yet given to hyper.
    buf: BytesMut,
    /// How many bytes at the front of `buf` are judged and may be given to hyper.
    released: usize,
    state: State,
    scratch: Box<[u8; READ_CHUNK]>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Head,
    Body(u64),
    Chunk(Chunk),
    Tunnel,
    /// Handing hyper the poison head, from this offset; then end of stream.
    Refused(usize),
    /// Nothing more is given to hyper.
    Ended,
}

/// Where a chunked body is (RFC 9112 §7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// In the chunk-size digits.
    Size {
        size: u64,
        digits: u32,
    },
    /// Whitespace after the size: only `;` (an extension) or more whitespace may follow.
    SizeSpace {
        size: u64,
    },
    /// In an extension, up to CR.
    Extension {
        size: u64,
    },
    /// CR seen after a size line; LF expected.
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    FinalLf,
}

// === impl FramingGuard ===

impl<S> FramingGuard<S> {
    pub(super) fn new(inner: S) -> Self {
        FramingGuard {
            inner,
            buf: BytesMut::new(),
            released: 0,
            state: State::Head,
            scratch: Box::new([0; READ_CHUNK]),
        }
    }

    /// Judges what is buffered as far as it can: moves `released` and `state` on. Returns
    /// whether it needs more bytes to go on.
    fn advance(&mut self) -> bool {
        loop {
            let pending = &self.buf[self.released..];
            match self.state {
                State::Head => {
                    if pending.is_empty() {
                        return true;
                    }
                    match judge_head(pending) {
                        Judged::Partial if pending.len() > MAX_HEAD => {
                            // hyper will refuse it as too large and close.
                            self.released = self.buf.len();
                            self.state = State::Tunnel;
                        }
                        Judged::Partial => return true,
                        Judged::Refused(refusal) => {
                            tracing::debug!(?refusal, "refused a request's framing");
                            self.buf.truncate(self.released);
                            self.state = State::Refused(0);
                            return false;
                        }
                        Judged::Complete(len, framing) => {
                            self.released += len;
                            self.state = match framing {
                                Framing::None | Framing::Length(0) => State::Head,
                                Framing::Length(n) => State::Body(n),
                                Framing::Chunked => {
                                    State::Chunk(Chunk::Size { size: 0, digits: 0 })
                                }
                                Framing::Tunnel => State::Tunnel,
                            };
                        }
                    }
                }
                State::Body(left) => {
                    if pending.is_empty() {
                        return true;
                    }
                    let take = (pending.len() as u64).min(left);
                    self.released += take as usize;
                    self.state = match left - take {
                        0 => State::Head,
                        n => State::Body(n),
                    };
                }
                State::Chunk(chunk) => {
                    if pending.is_empty() {
                        return true;
                    }
                    match step_chunked(chunk, pending) {
                        Step::Consumed(n, next) => {
                            self.released += n;
                            self.state = next.map_or(State::Head, State::Chunk);
                        }
                        Step::Invalid(n) => {
                            // What came before is given; the stream ends where the grammar broke.
                            self.released += n;
                            self.buf.truncate(self.released);
                            self.state = State::Ended;
                            return false;
                        }
                    }
                }
                State::Tunnel => {
                    self.released = self.buf.len();
                    return true;
                }
                State::Refused(_) | State::Ended => return false,
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FramingGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.released > 0 {
                let n = this.released.min(dst.remaining());
                dst.put_slice(&this.buf[..n]);
                this.buf.advance(n);
                this.released -= n;
                return Poll::Ready(Ok(()));
            }
            match this.state {
                State::Refused(at) => {
                    let n = (POISON.len() - at).min(dst.remaining());
                    dst.put_slice(&POISON[at..at + n]);
                    this.state = if at + n == POISON.len() {
                        State::Ended
                    } else {
                        State::Refused(at + n)
                    };
                    return Poll::Ready(Ok(()));
                }
                State::Ended => return Poll::Ready(Ok(())),
                // Past an upgrade nothing is judged: read straight into hyper's buffer.
                State::Tunnel if this.buf.is_empty() => {
                    return Pin::new(&mut this.inner).poll_read(cx, dst);
                }
                _ => {}
            }
            if !this.advance() {
                continue;
            }
            if this.released > 0 {
                continue;
            }
            // More bytes are needed to judge. (Read through a scratch buffer: filling the spare
            // capacity of `buf` in place would need `unsafe`.)
            let mut read = ReadBuf::new(&mut this.scratch[..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            let n = read.filled().len();
            this.buf.extend_from_slice(read.filled());
            if n == 0 {
                // The client closed: hand over what is left (hyper sees a cut-off request).
                this.released = this.buf.len();
                this.state = State::Ended;
                if this.released == 0 {
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FramingGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

enum Judged {
    Partial,
    Complete(usize, Framing),
    Refused(Refusal),
}

/// Parses a request head as hyper will (httparse, strict) and judges its framing.
fn judge_head(bytes: &[u8]) -> Judged {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(bytes) {
        Ok(httparse::Status::Partial) => Judged::Partial,
        Ok(httparse::Status::Complete(len)) => match framing(&req) {
            Ok(f) => Judged::Complete(len, f),
            Err(r) => Judged::Refused(r),
        },
        Err(_) => Judged::Refused(Refusal::Malformed),
    }
}

/// RFC 9112 §6.1–6.3, read strictly: one `Content-Length` of digits, or one
/// `Transfer-Encoding: chunked` (never both, never in HTTP/1.0), one `Host`.
pub(super) fn framing(req: &httparse::Request<'_, '_>) -> Result<Framing, Refusal> {
    let mut length: Option<u64> = None;
    let mut lengths = 0;
    let mut codings = 0;
    let mut hosts = 0;
    let mut upgrade = false;
    for h in req.headers.iter() {
        let name = h.name;
        let value = trim(h.value);
        if name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
                return Err(Refusal::InvalidContentLength);
            }
            let n = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(Refusal::InvalidContentLength)?;
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            codings += 1;
            if !value.eq_ignore_ascii_case(b"chunked") {
                return Err(Refusal::UnsupportedTransferCoding);
            }
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        } else if name.eq_ignore_ascii_case("content_length")
            || name.eq_ignore_ascii_case("transfer_encoding")
        {
            return Err(Refusal::UnderscoreFramingHeader);
        }
    }
    if lengths > 1 {
        return Err(Refusal::SeveralContentLengths);
    }
    if codings > 1 {
        return Err(Refusal::SeveralTransferEncodings);
    }
    if codings == 1 && lengths == 1 {
        return Err(Refusal::TransferEncodingWithContentLength);
    }
    if codings == 1 && req.version == Some(0) {
        return Err(Refusal::TransferEncodingInHttp10);
    }
    if hosts > 1 {
        return Err(Refusal::SeveralHosts);
    }
    if upgrade || req.method == Some("CONNECT") {
        return Ok(Framing::Tunnel);
    }
    Ok(match (codings, length) {
        (1, _) => Framing::Chunked,
        (_, Some(n)) => Framing::Length(n),
        _ => Framing::None,
    })
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

enum Step {
    /// This many bytes belong to the body; `None`: the body ended with them.
    Consumed(usize, Option<Chunk>),
    /// The grammar broke after this many bytes.
    Invalid(usize),
}

/// Follows a chunked body over `bytes` from state `at`: as far as the bytes go, or to the end
/// of the body.
fn step_chunked(mut at: Chunk, bytes: &[u8]) -> Step {
    let mut i = 0;
    while i < bytes.len() {
        if let Chunk::Data(left) = at {
            let take = ((bytes.len() - i) as u64).min(left);
            i += take as usize;
            at = match left - take {
                0 => Chunk::DataCr,
                n => Chunk::Data(n),
            };
            continue;
        }
        let b = bytes[i];
        i += 1;
        at = match (at, b) {
            (Chunk::Size { size, digits }, b) if b.is_ascii_hexdigit() => {
                let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                match size.checked_mul(16).and_then(|s| s.checked_add(d)) {
                    Some(s) if digits < 16 => Chunk::Size {
                        size: s,
                        digits: digits + 1,
                    },
                    _ => return Step::Invalid(i - 1),
                }
            }
            (Chunk::Size { digits: 0, .. }, _) => return Step::Invalid(i - 1),
            (Chunk::Size { size, .. }, b'\r') => Chunk::SizeLf { size },
            (Chunk::Size { size, .. }, b' ' | b'\t') => Chunk::SizeSpace { size },
            (Chunk::Size { size, .. } | Chunk::SizeSpace { size }, b';') => {
                Chunk::Extension { size }
            }
            (Chunk::SizeSpace { size }, b' ' | b'\t') => Chunk::SizeSpace { size },
            (Chunk::SizeSpace { .. }, _) => return Step::Invalid(i - 1),
            (Chunk::Size { .. }, _) => return Step::Invalid(i - 1),
            (Chunk::Extension { size }, b'\r') => Chunk::SizeLf { size },
            (Chunk::Extension { .. }, b'\n') => return Step::Invalid(i - 1),
            (Chunk::Extension { .. }, b) if b < 0x20 && b != b'\t' || b == 0x7f => {
                return Step::Invalid(i - 1)
            }
            (Chunk::Extension { size }, _) => Chunk::Extension { size },
            (Chunk::SizeLf { size: 0 }, b'\n') => Chunk::TrailerStart,
            (Chunk::SizeLf { size }, b'\n') => Chunk::Data(size),
            (Chunk::SizeLf { .. }, _) => return Step::Invalid(i - 1),
            (Chunk::DataCr, b'\r') => Chunk::DataLf,
            (Chunk::DataLf, b'\n') => Chunk::Size { size: 0, digits: 0 },
            (Chunk::DataCr | Chunk::DataLf, _) => return Step::Invalid(i - 1),
            (Chunk::TrailerStart, b'\r') => Chunk::FinalLf,
            (Chunk::TrailerStart | Chunk::TrailerLine, b'\n') => return Step::Invalid(i - 1),
            (Chunk::TrailerLine, b'\r') => Chunk::TrailerLf,
            (Chunk::TrailerStart | Chunk::TrailerLine, _) => Chunk::TrailerLine,
            (Chunk::TrailerLf, b'\n') => Chunk::TrailerStart,
            (Chunk::TrailerLf, _) => return Step::Invalid(i - 1),
            (Chunk::FinalLf, b'\n') => return Step::Consumed(i, None),
            (Chunk::FinalLf, _) => return Step::Invalid(i - 1),
            (Chunk::Data(_), _) => unreachable!("handled above"),
        };
    }
    Step::Consumed(i, Some(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(head: &str) -> Result<Framing, Refusal> {
        match judge_head(head.as_bytes()) {
            Judged::Complete(_, f) => Ok(f),
            Judged::Refused(r) => Err(r),
            Judged::Partial => panic!("partial: {head:?}"),
        }
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        use Refusal::*;
        let cases = [
            (
                "Content-Length: 5\r\nContent-Length: 5\r\n",
                SeveralContentLengths,
            ),
            (
                "Content-Length: 5\r\nContent-Length: 6\r\n",
                SeveralContentLengths,
            ),
            ("Content-Length: 5, 5\r\n", InvalidContentLength),
            ("Content-Length: +5\r\n", InvalidContentLength),
            ("Content-Length: -1\r\n", InvalidContentLength),
            ("Content-Length: 0x10\r\n", InvalidContentLength),
            ("Content-Length: \r\n", InvalidContentLength),
            (
                "Content-Length: 99999999999999999999\r\n",
                InvalidContentLength,
            ),
            (
                "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                TransferEncodingWithContentLength,
            ),
            (
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                TransferEncodingWithContentLength,
            ),
            (
                "Transfer-Encoding: chunked, chunked\r\n",
                UnsupportedTransferCoding,
            ),
            (
                "Transfer-Encoding: gzip, chunked\r\n",
                UnsupportedTransferCoding,
            ),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                SeveralTransferEncodings,
            ),
            ("Transfer-Encoding: identity\r\n", UnsupportedTransferCoding),
            ("Transfer_Encoding: chunked\r\n", UnderscoreFramingHeader),
            ("Host: a\r\nHost: b\r\n", SeveralHosts),
        ];
        for (headers, refusal) in cases {
            let head = format!("POST / HTTP/1.1\r\nHost: x\r\n{headers}\r\n")
                .replace("Host: x\r\nHost: a", "Host: a");
            assert_eq!(judged(&head), Err(refusal), "{headers:?}");
        }
        assert_eq!(
            judged("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(TransferEncodingInHttp10)
        );
        assert_eq!(
            judged("GET / HTTP/1.1\r\nFoo : bar\r\n\r\n"),
            Err(Malformed)
        );
    }

    #[test]
    fn plain_framing_is_read() {
        assert_eq!(
            judged("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok(Framing::None)
        );
        assert_eq!(
            judged("POST / HTTP/1.1\r\nContent-Length:  12 \r\n\r\n"),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            judged("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            judged("GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"),
            Ok(Framing::Tunnel)
        );
        assert!(matches!(
            judge_head(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Judged::Partial
        ));
    }

    #[test]
    fn chunked_bodies_are_followed_to_their_end() {
        let body = b"5\r\nhello\r\n6 ;ext=1\r\n world\r\n0\r\nX-Trailer: y\r\n\r\nNEXT";
        match step_chunked(Chunk::Size { size: 0, digits: 0 }, body) {
            Step::Consumed(n, None) => assert_eq!(&body[n..], b"NEXT"),
            _ => panic!("the body should end before NEXT"),
        }
        // Byte by byte, the same.
        let mut at = Chunk::Size { size: 0, digits: 0 };
        let mut ended = None;
        for (i, b) in body.iter().enumerate() {
            match step_chunked(at, std::slice::from_ref(b)) {
                Step::Consumed(1, Some(next)) => at = next,
                Step::Consumed(1, None) => {
                    ended = Some(i + 1);
                    break;
                }
                _ => panic!("byte {i}"),
            }
        }
        assert_eq!(ended, Some(body.len() - 4));
        for bad in [
            &b"6_0\r\n"[..],
            b"0 \r\n",
            b"+5\r\n",
            b"-5\r\n",
            b"5\nhello",
            b"5\r\nhelloXX",
            b"\r\n",
            b"0\r\n\n",
        ] {
            assert!(
                matches!(
                    step_chunked(Chunk::Size { size: 0, digits: 0 }, bad),
                    Step::Invalid(_)
                ),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
