//! The router against a published request corpus: gunicorn 27.0.1's `tests/requests` (MIT;
//! `tests/corpus/gunicorn/`), raw requests written by another project to catch parsers that
//! read framing loosely — request smuggling's ground (RFC 9112 §6). Each case is sent over a
//! real socket; what the router answered and what reached the upstream are compared with what
//! this file expects of Fraisier, case by case. A case the corpus gains and this file does not
//! list fails the test.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt as _, Full};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::tests::TestUpstream;
use super::Router;

/// What Fraisier does with a corpus case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Answered 400 and closed; nothing reached the upstream.
    Refused,
    /// Answered 431 (too many headers) and closed; nothing reached the upstream.
    Refused431,
    /// The head passes and its chunked body breaks the grammar: the router cuts the request
    /// off (400), and no request after it reaches the upstream.
    BodyCut,
    /// Every request served, all of them reaching the upstream.
    Served(usize),
    /// The request is not complete yet: nothing answered, nothing forwarded, the connection
    /// open for the rest.
    Waits,
}

use Expect::*;

/// Fraisier's verdict on every case, with why where it differs from gunicorn's.
fn expectations() -> BTreeMap<&'static str, Expect> {
    [
        // --- gunicorn refuses ---
        ("invalid/001", Waits), // the head never ends: the router waits for it
        ("invalid/002", Refused), // bad method characters
        ("invalid/003", Refused), // bad request line
        ("invalid/003b", Refused),
        ("invalid/003c", Served(1)), // `-bl` is a token, so a method (RFC 9110 §9.1)
        ("invalid/004", Refused),    // bad version
        ("invalid/005", Refused),    // bad header name
        ("invalid/006", Served(1)),  // a long target: over gunicorn's limit, not hyper's
        ("invalid/007", Served(1)),  // a long header value: likewise
        ("invalid/008", Served(1)),
        ("invalid/009", Refused431), // too many headers: hyper answers 431
        ("invalid/010", Served(1)),  // gunicorn's configured limits, not framing
        ("invalid/011", Served(1)),
        ("invalid/012", Served(1)),
        ("invalid/013", Refused),
        ("invalid/014", Refused), // Content-Length: -1
        ("invalid/015", Refused), // Content-Length: 0x…
        ("invalid/016", Refused),
        ("invalid/017", Served(1)), // gunicorn's configured limits, not framing
        ("invalid/018", Refused),
        ("invalid/019", Served(1)), // gunicorn's forwarded-header policy
        ("invalid/020", Refused),   // Content-Length with spaces inside
        ("invalid/021", Refused),   // two Content-Lengths
        ("invalid/022", Refused),   // Content-Length: +…
        ("invalid/023", Refused),
        ("invalid/024", Refused),
        ("invalid/040", Refused), // Transfer_Encoding: an underscore framing header
        ("invalid/041", Served(1)), // two Content-Types: not framing, forwarded
        ("invalid/042", Refused),
        ("invalid/chunked_01", BodyCut), // chunk size 6_0
        ("invalid/chunked_02", BodyCut),
        ("invalid/chunked_03", Refused), // chunked, chunked
        ("invalid/chunked_04", Refused),
        ("invalid/chunked_05", Refused),
        ("invalid/chunked_06", BodyCut),
        ("invalid/chunked_07", Refused),
        ("invalid/chunked_08", Refused),
        ("invalid/chunked_09", BodyCut), // `0 ` with no extension after the space
        ("invalid/chunked_10", Refused),
        ("invalid/chunked_11", BodyCut),
        ("invalid/chunked_12", BodyCut),
        ("invalid/chunked_13", BodyCut),
        ("invalid/chunked_14", Refused),
        ("invalid/invalid_field_value_01", Refused),
        ("invalid/limit_header_default_01", Served(1)), // gunicorn's header size limit
        ("invalid/nonascii_01", Refused),
        ("invalid/nonascii_02", Refused),
        ("invalid/nonascii_03", Refused),
        ("invalid/nonascii_04", Refused),
        ("invalid/obs_fold_01", Refused),
        ("invalid/pp_01", Refused), // PROXY protocol lines: not HTTP here
        ("invalid/pp_02", Refused),
        ("invalid/pp_03", Refused),
        ("invalid/prefix_01", Refused),
        ("invalid/prefix_02", Refused),
        ("invalid/prefix_03", Refused),
        ("invalid/prefix_04", Refused),
        ("invalid/prefix_05", Refused),
        ("invalid/prefix_06", Refused),
        ("invalid/rfc9110_field_value_ctl_bel_01", Refused),
        ("invalid/rfc9110_field_value_ctl_del_01", Refused),
        ("invalid/rfc9110_trailer_forbidden_cl_01", Served(1)), // trailers are dropped, never framing
        ("invalid/rfc9110_trailer_forbidden_host_01", Served(1)),
        ("invalid/rfc9110_trailer_forbidden_te_01", Served(1)),
        ("invalid/rfc9112_bare_lf_01", Served(1)), // hyper reads bare LF; the head goes upstream with CRLF
        ("invalid/rfc9112_chunked_missing_final_crlf_01", Waits), // the body is not over yet
        ("invalid/rfc9112_chunked_size_minus_sign_01", BodyCut),
        ("invalid/rfc9112_chunked_size_plus_sign_01", BodyCut),
        ("invalid/rfc9112_leading_crlf_02", Served(1)), // empty lines before a request are ignored (RFC 9112 §2.2)
        ("invalid/rfc9112_smuggle_cl_list_form_01", Refused), // Content-Length: 5, 5
        ("invalid/rfc9112_smuggle_cl_te_chunked_01", Refused), // Content-Length and Transfer-Encoding
        ("invalid/rfc9112_target_asterisk_non_options_01", Served(1)), // hyper's URI grammar; not framing
        ("invalid/rfc9112_target_authority_non_connect_01", Served(1)),
        ("invalid/rfc9112_target_non_ascii_01", Refused),
        ("invalid/rfc9112_target_non_ascii_02", Served(1)),
        ("invalid/rfc9112_target_nul_01", Refused),
        ("invalid/rfc9112_target_relative_01", Refused),
        ("invalid/rfc9112_te_identity_with_cl_01", Refused),
        ("invalid/rfc9112_te_not_chunked_final_01", Refused),
        ("invalid/version_01", Refused),
        ("invalid/version_02", Refused),
        // --- gunicorn serves ---
        ("valid/001", Served(1)),
        ("valid/002", Served(1)),
        ("valid/003", Served(1)),
        ("valid/004", Served(1)),
        ("valid/005", Served(1)),
        ("valid/006", Served(1)),
        ("valid/007", Served(1)),
        ("valid/008", Served(1)),
        ("valid/010", Served(1)),
        ("valid/011", Served(1)),
        ("valid/012", Served(1)),
        ("valid/013", Served(1)),
        ("valid/014", Refused), // `"` in the target: not a URI character (RFC 3986)
        ("valid/015", Served(1)),
        ("valid/017", Served(1)),
        ("valid/018", Served(2)), // two requests, pipelined
        ("valid/019", Served(1)),
        ("valid/020", Served(1)),
        ("valid/021", Served(1)),
        ("valid/022", Served(2)),
        ("valid/023", Served(2)),
        ("valid/024", Served(1)),
        ("valid/025", Refused), // chunked, then a second Transfer-Encoding line: refused here
        ("valid/025_line", Refused),
        ("valid/026", Served(1)),
        ("valid/028", Refused), // `Content-Length :` (RFC 9112 §5.1: MUST refuse)
        ("valid/029", Refused), // Transfer-Encoding: identity, chunked: only chunked is decoded
        ("valid/030", Refused),
        ("valid/031", Served(1)),
        ("valid/031compat", Served(1)),
        ("valid/031compat2", Served(1)),
        ("valid/040", Refused), // Transfer_Encoding / Content_Length beside Content-Length
        ("valid/040_compat", Refused),
        ("valid/099", Waits), // a body shorter than its Content-Length: the rest is awaited
        ("valid/100", Served(1)),
        ("valid/compat_obs_fold", Refused), // obs-fold is refused (RFC 9112 §5.2 allows it)
        ("valid/compat_obs_fold_huge", Refused),
        ("valid/padding_01", Served(1)),
        ("valid/pp_01", Refused), // PROXY protocol: not spoken here
        ("valid/pp_02", Refused),
        ("valid/pp_03", Served(1)), // no PROXY line: a plain request
        ("valid/pp_04", Refused),
        ("valid/pp_05", Refused),
        ("valid/rfc9110_body_framing_get_cl_nonzero_01", Served(1)),
        ("valid/rfc9110_body_framing_get_cl_zero_01", Served(1)),
        ("valid/rfc9110_body_framing_http10_cl_01", Served(1)),
        ("valid/rfc9110_field_name_special_chars_01", Served(1)),
        ("valid/rfc9110_field_value_htab_trim_01", Served(1)),
        ("valid/rfc9110_field_value_obs_text_01", Served(1)),
        ("valid/rfc9112_chunked_ext_quoted_01", Served(1)),
        ("valid/rfc9112_chunked_size_leading_zeros_01", Served(1)),
        ("valid/rfc9112_chunked_size_uppercase_hex_01", Served(1)),
        ("valid/rfc9112_leading_crlf_01", Served(1)),
        ("valid/rfc9112_smuggle_gzip_chunked_01", Refused), // gzip, chunked: only chunked is decoded
        ("valid/rfc9112_smuggle_te_identity_chunked_01", Refused),
        ("valid/rfc9112_target_absolute_01", Served(1)),
        ("valid/rfc9112_target_absolute_https_01", Served(1)),
        ("valid/rfc9112_target_absolute_ipv6_01", Served(1)),
        ("valid/rfc9112_target_absolute_userinfo_01", Served(1)),
        ("valid/rfc9112_target_asterisk_options_01", Served(1)),
        ("valid/rfc9112_target_authority_connect_01", Served(1)),
        ("valid/rfc9112_target_authority_ipv6_01", Served(1)),
    ]
    .into_iter()
    .collect()
}

/// gunicorn's file format: physical newlines are dropped; `\r\n`, `\n`, `\t`, `\0` and `\xHH`
/// stand for bytes (gunicorn's `tests/treq.py`).
fn decode(raw: &[u8]) -> Vec<u8> {
    let text: Vec<u8> = raw.iter().copied().filter(|b| *b != b'\n').collect();
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'\\' && i + 1 < text.len() {
            match text[i + 1] {
                b'r' if text[i + 2..].starts_with(b"\\n") => {
                    out.extend_from_slice(b"\r\n");
                    i += 4;
                    continue;
                }
                b'n' => {
                    out.push(b'\n');
                    i += 2;
                    continue;
                }
                b't' => {
                    out.push(b'\t');
                    i += 2;
                    continue;
                }
                b'0' => {
                    out.push(0);
                    i += 2;
                    continue;
                }
                b'x' if i + 3 < text.len() => {
                    if let Ok(b) = u8::from_str_radix(
                        std::str::from_utf8(&text[i + 2..i + 4]).unwrap_or("zz"),
                        16,
                    ) {
                        out.push(b);
                        i += 4;
                        continue;
                    }
                }
                _ => {}
            }
        }
        out.push(text[i]);
        i += 1;
    }
    out
}

#[derive(Debug)]
struct Outcome {
    statuses: Vec<u16>,
    /// The router closed the connection (rather than keeping it for the next request).
    closed: bool,
    reached_upstream: usize,
}

/// A router and an upstream of its own for one case, the bytes sent, and every answer read
/// until the router closes or stays quiet for a while (a kept-alive connection).
async fn run(bytes: Vec<u8>) -> Outcome {
    let seen = Arc::new(Mutex::new(0usize));
    let count = Arc::clone(&seen);
    let upstream = TestUpstream::start_with(Arc::new(move |req| {
        let count = Arc::clone(&count);
        Box::pin(async move {
            // A request has reached the upstream once its body is complete.
            if req.into_body().collect().await.is_ok() {
                *count.lock().unwrap() += 1;
            }
            Response::new(Full::new(Bytes::from_static(b"ok")))
        })
    }))
    .await;
    let router = Router::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    router.set_backends(vec![upstream.backend("b1", "1.0.0", 1)]);
    let mut stream = TcpStream::connect(router.local_addr()).await.unwrap();
    let _ = stream.write_all(&bytes).await;
    let mut answer = Vec::new();
    let mut closed = false;
    let mut chunk = [0u8; 4096];
    loop {
        let quiet = if answer.is_empty() { 2000 } else { 300 };
        match tokio::time::timeout(Duration::from_millis(quiet), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => answer.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&answer);
    // Status lines of HTTP/1.1 and (answering a 1.0 request) HTTP/1.0 responses.
    let statuses = text
        .match_indices("HTTP/1.")
        .filter(|(i, _)| text.get(i + 8..i + 9) == Some(" "))
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect();
    let reached_upstream = *seen.lock().unwrap();
    drop(router);
    Outcome {
        statuses,
        closed,
        reached_upstream,
    }
}

fn holds(expect: Expect, o: &Outcome) -> bool {
    let ok = |s: &u16| (200..300).contains(s);
    match expect {
        Refused => o.closed && o.statuses == [400] && o.reached_upstream == 0,
        Refused431 => o.closed && o.statuses == [431] && o.reached_upstream == 0,
        BodyCut => o.closed && o.statuses.last() == Some(&400) && o.reached_upstream == 0,
        Served(n) => o.statuses.len() == n && o.statuses.iter().all(ok) && o.reached_upstream == n,
        Waits => o.statuses.is_empty() && !o.closed && o.reached_upstream == 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gunicorn_corpus_gets_the_answers_listed() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/gunicorn");
    let expected = expectations();
    let mut cases = Vec::new();
    for kind in ["invalid", "valid"] {
        for entry in std::fs::read_dir(dir.join(kind)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "http") {
                let name = format!("{kind}/{}", path.file_stem().unwrap().to_string_lossy());
                cases.push((name, decode(&std::fs::read(&path).unwrap())));
            }
        }
    }
    cases.sort();
    // Each case on its own router, sixteen at a time.
    let mut outcomes = Vec::new();
    for batch in cases.chunks(16) {
        let mut set = tokio::task::JoinSet::new();
        for (name, bytes) in batch.iter().cloned() {
            set.spawn(async move { (name, run(bytes).await) });
        }
        while let Some(done) = set.join_next().await {
            outcomes.push(done.unwrap());
        }
    }
    outcomes.sort_by(|a, b| a.0.cmp(&b.0));
    let mut wrong = Vec::new();
    for (name, outcome) in &outcomes {
        match expected.get(name.as_str()) {
            None => wrong.push(format!("{name}: not listed; got {outcome:?}")),
            Some(e) if !holds(*e, outcome) => {
                wrong.push(format!("{name}: expected {e:?}, got {outcome:?}"))
            }
            Some(_) => {}
        }
    }
    assert_eq!(
        outcomes.len(),
        expected.len(),
        "the corpus and the list differ in size"
    );
    assert!(
        wrong.is_empty(),
        "{} of {} cases:\n{}",
        wrong.len(),
        outcomes.len(),
        wrong.join("\n")
    );
}

#[tokio::test]
async fn smuggling_attempts_beyond_the_corpus_are_refused() {
    // Two equal lengths, which hyper alone would fold into one.
    let o = run(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"
            .to_vec(),
    )
    .await;
    assert!(holds(Refused, &o), "{o:?}");
    // A first request served, then CL.TE on the same connection: nothing of the second (nor
    // the request hidden in its body) reaches the upstream.
    let o = run(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\nPOST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /hidden HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()).await;
    assert_eq!(
        (o.statuses.as_slice(), o.closed, o.reached_upstream),
        (&[200, 400][..], true, 1),
        "{o:?}"
    );
    // An upgrade the upstream refuses ends the connection: what follows is not read as HTTP.
    let o = run(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nGET /after HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()).await;
    assert_eq!(
        (o.statuses.as_slice(), o.closed, o.reached_upstream),
        (&[200][..], true, 1),
        "{o:?}"
    );
}
