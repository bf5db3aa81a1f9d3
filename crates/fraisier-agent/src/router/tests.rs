//! Router behaviour against real sockets: small hyper upstreams started and stopped inside each
//! test, on 127.0.0.1:0.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::task::{JoinHandle, JoinSet};

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::*;

type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>
        + Send
        + Sync,
>;

/// A hyper server on an ephemeral port; dropping it aborts its accept loop and connections.
pub(super) struct TestUpstream {
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

type TestClient = Client<HttpConnector, Full<Bytes>>;

// === impl TestUpstream ===

impl TestUpstream {
    /// Answers 200 with `name` as the body after `delay`.
    async fn start(name: &'static str, delay: Duration) -> TestUpstream {
        Self::start_with(Arc::new(move |_req| {
            Box::pin(async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Response::new(Full::new(Bytes::from_static(name.as_bytes())))
            })
        }))
        .await
    }

    pub(super) async fn start_with(handler: Handler) -> TestUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let (h, a) = (Arc::clone(&hits), Arc::clone(&accepted));
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                a.fetch_add(1, SeqCst);
                let (handler, hits) = (Arc::clone(&handler), Arc::clone(&h));
                let service = service_fn(move |req| {
                    hits.fetch_add(1, SeqCst);
                    let fut = handler(req);
                    async move { Ok::<_, std::convert::Infallible>(fut.await) }
                });
                conns.spawn(async move {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        TestUpstream {
            addr,
            hits,
            accepted,
            task,
        }
    }

    pub(super) fn backend(&self, id: &str, version: &str, weight: u32) -> Backend {
        Backend {
            id: id.into(),
            version: version.into(),
            addr: self.addr,
            weight,
        }
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(
    client: &TestClient,
    method: &str,
    url: &str,
    body: &'static str,
) -> (StatusCode, String) {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let resp = client.request(req).await.expect("router answered");
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("full body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn get(client: &TestClient, url: &str) -> (StatusCode, String) {
    send(client, "GET", url, "").await
}

/// An address with nothing listening on it.
async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A raw TCP upstream: for each connection, reads one request head and hands the stream and
/// what it read to `on_head`. Abort the handle to stop it.
async fn raw_head_upstream<F, Fut>(on_head: F) -> (SocketAddr, JoinHandle<()>)
where
    F: Fn(TcpStream, Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let on_head = Arc::new(on_head);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let on_head = Arc::clone(&on_head);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                on_head(stream, seen).await;
            });
        }
    });
    (addr, task)
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs `total` GETs from `workers` concurrent tasks; returns the bodies of the 200s and the
/// failures (non-200 or transport error).
async fn load(url: String, workers: usize, total: usize) -> (Vec<String>, Vec<String>) {
    let client = client();
    let mut tasks = JoinSet::new();
    for w in 0..workers {
        let (client, url) = (client.clone(), url.clone());
        let n = total / workers + usize::from(w < total % workers);
        tasks.spawn(async move {
            let (mut ok, mut failed) = (Vec::new(), Vec::new());
            for _ in 0..n {
                let req = Request::get(&url).body(Full::new(Bytes::new())).unwrap();
                match client.request(req).await {
                    Ok(resp) if resp.status() == StatusCode::OK => {
                        let body = resp.into_body().collect().await;
                        match body {
                            Ok(b) => ok.push(String::from_utf8_lossy(&b.to_bytes()).into_owned()),
                            Err(e) => failed.push(format!("body: {e}")),
                        }
                    }
                    Ok(resp) => failed.push(format!("status {}", resp.status())),
                    Err(e) => failed.push(format!("request: {e:?}")),
                }
            }
            (ok, failed)
        });
    }
    let (mut ok, mut failed) = (Vec::new(), Vec::new());
    while let Some(done) = tasks.join_next().await {
        let (o, f) = done.unwrap();
        ok.extend(o);
        failed.extend(f);
    }
    (ok, failed)
}

fn url(router: &Router, path: &str) -> String {
    format!("http://{}{path}", router.local_addr())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_weighted_split_realizes_weights() {
    let stable = TestUpstream::start("stable", Duration::ZERO).await;
    let canary = TestUpstream::start("canary", Duration::ZERO).await;
    let router = Router::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    router.set_backends(vec![
        stable.backend("s1", "v1", 90),
        canary.backend("c1", "v2", 10),
    ]);

    let (ok, failed) = load(url(&router, "/"), 8, 2_000).await;
    assert!(failed.is_empty(), "{failed:?}");
    let to_canary = ok.iter().filter(|b| *b == "canary").count();
    // ±5% of the expected 200; smooth weighted round-robin actually gives exactly 200.
    assert!(
        (190..=210).contains(&to_canary),
        "canary got {to_canary} of 2000"
    );
    assert_eq!(ok.len(), 2_000);

    // A 50/50 split over a short window stays close too: what canary analysis relies on.
    router.set_backends(vec![
        stable.backend("s1", "v1", 50),
        canary.backend("c1", "v2", 50),
    ]);
    let (ok, failed) = load(url(&router, "/"), 4, 200).await;
    assert!(failed.is_empty(), "{failed:?}");
    let to_canary = ok.iter().filter(|b| *b == "canary").count();
    assert!(
        (95..=105).contains(&to_canary),
        "canary got {to_canary} of 200"
    );
    router.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_table_swap_under_load_drops_nothing() {
    let a = TestUpstream::start("a", Duration::ZERO).await;
    let b = TestUpstream::start("b", Duration::ZERO).await;
    let c = TestUpstream::start("c", Duration::ZERO).await;
    let slow = TestUpstream::start("slow", Duration::from_millis(200)).await;
    let router = Router::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();

    // Slow requests go to `slow`, which then leaves the table while they are in flight.
    router.set_backends(vec![slow.backend("slow", "v0", 1)]);
    let slow_requests: Vec<_> = (0..10)
        .map(|_| {
            let (client, url) = (client(), url(&router, "/slow"));
            tokio::spawn(async move { get(&client, &url).await })
        })
        .collect();
    wait_until("10 slow requests are in flight", || {
        router.in_flight("slow") == 10
    })
    .await;
    router.set_backends(vec![a.backend("a", "v1", 1), b.backend("b", "v1", 1)]);
    assert_eq!(
        router.in_flight("slow"),
        10,
        "a removed backend keeps its in-flight requests"
    );

    let busy = tokio::spawn(load(url(&router, "/"), 16, 4_000));
    let tables = [
        vec![a.backend("a", "v1", 1), b.backend("b", "v1", 1)],
        vec![b.backend("b", "v1", 1), c.backend("c", "v2", 1)],
        vec![a.backend("a", "v1", 0), c.backend("c", "v2", 3)],
        vec![c.backend("c", "v2", 1)],
        vec![
            a.backend("a", "v1", 5),
            b.backend("b", "v1", 1),
            c.backend("c", "v2", 1),
        ],
    ];
    let mut swaps = 0;
    while !busy.is_finished() {
        router.set_backends(tables[swaps % tables.len()].clone());
        swaps += 1;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let (ok, failed) = busy.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} failures: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert_eq!(ok.len(), 4_000);
    assert!(swaps > 10, "only {swaps} swaps happened during the load");

    for slow_request in slow_requests {
        assert_eq!(
            slow_request.await.unwrap(),
            (StatusCode::OK, "slow".to_string())
        );
    }
    wait_until("slow drains", || router.in_flight("slow") == 0).await;

    // Remove `c`, wait for it to drain, stop it: later traffic never notices.
    router.set_backends(vec![a.backend("a", "v1", 1), b.backend("b", "v1", 1)]);
    wait_until("c drains", || router.in_flight("c") == 0).await;
    drop(c);
    let (ok, failed) = load(url(&router, "/"), 4, 400).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert!(ok.iter().all(|b| b == "a" || b == "b"));
    for id in ["a", "b", "c", "slow"] {
        assert_eq!(router.in_flight(id), 0, "{id}");
    }
    router.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_retries_a_dead_backend() {
    let live = TestUpstream::start("live", Duration::ZERO).await;
    let router = Router::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dead = Backend {
        id: "dead".into(),
        version: "v2".into(),
        addr: dead_addr().await,
        weight: 1,
    };
    router.set_backends(vec![live.backend("live", "v1", 1), dead]);

    let (ok, failed) = load(url(&router, "/"), 4, 400).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert!(ok.iter().all(|b| b == "live"));

    // A refused connect sent nothing, so even a POST with a body goes elsewhere safely.
    let client = client();
    for _ in 0..20 {
        assert_eq!(
            send(&client, "POST", &url(&router, "/"), "payload").await,
            (StatusCode::OK, "live".to_string())
        );
    }

    let metrics = router.metrics();
    assert_eq!(metrics["v1"].requests, 420);
    assert_eq!(metrics["v1"].errors, 0);
    // Retries do not move the schedule: the dead backend still got exactly its share of
    // first attempts, each counted as an error.
    assert_eq!(metrics["v2"].requests, 210, "{:?}", metrics["v2"]);
    assert_eq!(metrics["v2"].errors, metrics["v2"].requests);
    assert_eq!(router.in_flight("dead"), 0);

    // Only dead backends left: 502 after the retries.
    router.set_backends(vec![Backend {
        id: "dead".into(),
        version: "v2".into(),
        addr: dead_addr().await,
        weight: 1,
    }]);
    let (status, body) = get(&client, &url(&router, "/")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains(r#""code":"UPSTREAM_UNAVAILABLE""#), "{body}");
    router.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_replays_only_idempotent_bodiless_requests_after_a_reset() {
    // Reads a request head, then hangs up without answering.
    let (closer_addr, closer) = raw_head_upstream(|_stream, _head| async {}).await;
    let live = TestUpstream::start("live", Duration::ZERO).await;
    let router = Router::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let closer_backend = Backend {
        id: "closer".into(),
        version: "v2".into(),
        addr: closer_addr,
        weight: 1,
    };
    router.set_backends(vec![closer_backend, live.backend("live", "v1", 1)]);

    let client = client();
    for _ in 0..20 {
        assert_eq!(
            get(&client, &url(&router, "/")).await,
            (StatusCode::OK, "live".into())
        );
    }
    let mut bad_gateway = 0;
    for _ in 0..20 {
        let (status, body) = send(&client, "POST", &url(&router, "/"), "payload").await;
        match status {
            StatusCode::OK => assert_eq!(body, "live"),
            StatusCode::BAD_GATEWAY => bad_gateway += 1,
            other => panic!("unexpected {other}"),
        }
    }
    // Half the POSTs reached the closer, which may have acted on them: never replayed.
    assert_eq!(bad_gateway, 10);
    let v2 = &router.metrics()["v2"];
    assert_eq!((v2.requests, v2.errors), (20, 20));
    router.shutdown(Duration::from_secs(1)).await;
    closer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_without_backends_answers_503() {
    let up = TestUpstream::start("up", Duration::ZERO).await;
    let router = Router::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let client = client();
    let (status, body) = get(&client, &url(&router, "/")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"]["code"], "NO_HEALTHY_INSTANCE");
    assert!(json["error"]["message"].is_string());

    // Weight 0 means draining: no new requests either.
    router.set_backends(vec![up.backend("up", "v1", 0)]);
    let (status, _) = get(&client, &url(&router, "/")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(up.hits.load(SeqCst), 0);
    router.set_backends(vec![up.backend("up", "v1", 1)]);
    assert_eq!(
        get(&client, &url(&router, "/")).await,
        (StatusCode::OK, "up".into())
    );
    router.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_metrics_count_requests_errors_and_latency_per_version() {
    let slowish = TestUpstream::start("v1", Duration::from_millis(20)).await;
    let failing = TestUpstream::start_with(Arc::new(|_req| {
        Box::pin(async {
            let mut resp = Response::new(Full::new(Bytes::from_static(b"boom")));
            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            resp
        })
    }))
    .await;
    let router = Router::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    router.set_backends(vec![
        slowish.backend("i1", "v1", 1),
        failing.backend("i2", "v2", 1),
    ]);
    let client = client();
    for _ in 0..40 {
        let _ = get(&client, &url(&router, "/")).await;
    }

    let metrics = router.metrics();
    let (v1, v2) = (&metrics["v1"], &metrics["v2"]);
    assert_eq!((v1.requests, v1.errors), (20, 0));
    assert_eq!(
        (v2.requests, v2.errors),
        (20, 20),
        "5xx from upstream count as errors"
    );
    assert_eq!(v1.latency_buckets.iter().sum::<u64>(), 20);
    assert!(v1.latency_sum_ms >= 20.0 * 20.0, "{}", v1.latency_sum_ms);
    let fast_buckets = VersionMetrics::bucket_index(10.0);
    assert_eq!(
        v1.latency_buckets[..=fast_buckets].iter().sum::<u64>(),
        0,
        "{v1:?}"
    );
    assert!(v1.quantile_ms(0.99) >= 20.0);
    assert_eq!(v2.latency_buckets.iter().sum::<u64>(), 20);
    router.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_shutdown_waits_for_in_flight() {
    let slow = TestUpstream::start("slow", Duration::from_millis(300)).await;
    let router = Router::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    router.set_backends(vec![slow.backend("slow", "v1", 1)]);
    let addr = router.local_addr();
    let request = {
        let (client, url) = (client(), url(&router, "/"));
        tokio::spawn(async move { get(&client, &url).await })
    };
    wait_until("the request is in flight", || router.in_flight("slow") == 1).await;
    // A connection that never sends a request must not hold shutdown for the whole grace.
    let mut silent = TcpStream::connect(addr).await.unwrap();

    let started = Instant::now();
    let shutdown = tokio::spawn(router.clone().shutdown(Duration::from_secs(5)));
    wait_until("the listener closes", || {
        std::net::TcpStream::connect(addr).is_err()
    })
    .await;
    shutdown.await.unwrap();
    let took = started.elapsed();
    assert_eq!(request.await.unwrap(), (StatusCode::OK, "slow".into()));
    assert!(
        took >= Duration::from_millis(150),
        "returned before the request ended: {took:?}"
    );
    assert!(
        took < Duration::from_secs(4),
        "waited for the whole grace: {took:?}"
    );
    assert_eq!(router.in_flight("slow"), 0);
    let closed = silent.read(&mut [0u8; 1]).await;
    assert!(
        matches!(closed, Ok(0) | Err(_)),
        "silent connection still open: {closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_streams_large_bodies_both_ways() {
    let echo = TestUpstream::start_with(Arc::new(|req| {
        Box::pin(async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            Response::new(Full::new(body))
        })
    }))
    .await;
    let router = Router::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    router.set_backends(vec![echo.backend("e", "v1", 1)]);
    let client = client();
    let payload: Bytes = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    for _ in 0..3 {
        let req = Request::post(url(&router, "/echo"))
            .body(Full::new(payload.clone()))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(body == payload, "echoed {} bytes", body.len());
    }
    // Each exchange ended cleanly, so the connections were reused: at most one per worker
    // (pools are per worker thread), whichever client connection the exchanges came on.
    let workers = Workers::get().unwrap().count() as u64;
    assert!(
        echo.accepted.load(SeqCst) <= workers,
        "{}",
        echo.accepted.load(SeqCst)
    );
    assert_eq!(router.in_flight("e"), 0);
    router.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_shutdown_gives_up_after_grace() {
    let stuck = TestUpstream::start("stuck", Duration::from_secs(30)).await;
    let router = Router::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    router.set_backends(vec![stuck.backend("stuck", "v1", 1)]);
    let request = {
        let (client, url) = (client(), url(&router, "/"));
        tokio::spawn(async move {
            client
                .request(Request::get(url).body(Full::default()).unwrap())
                .await
        })
    };
    wait_until("the request is in flight", || {
        router.in_flight("stuck") == 1
    })
    .await;
    let started = Instant::now();
    router.clone().shutdown(Duration::from_millis(200)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        request.await.unwrap().is_err(),
        "the stuck request was cut off"
    );
    wait_until("the lease is released", || router.in_flight("stuck") == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_reuses_upstream_connections_and_forwards_client_address() {
    let echo = TestUpstream::start_with(Arc::new(|req| {
        Box::pin(async move {
            let xff = req.headers().get("x-forwarded-for").cloned();
            let hop = req.headers().contains_key("x-hop");
            let body = format!("{}|{hop}", xff.as_ref().map_or("", |v| v.to_str().unwrap()));
            Response::new(Full::new(Bytes::from(body)))
        })
    }))
    .await;
    let router = Router::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    router.set_backends(vec![echo.backend("e", "v1", 1)]);
    let client = client();
    for _ in 0..200 {
        let req = Request::get(url(&router, "/"))
            .header("connection", "x-hop")
            .header("x-hop", "secret")
            .body(Full::default())
            .unwrap();
        let resp = client.request(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"127.0.0.1|false");
    }
    assert_eq!(echo.hits.load(SeqCst), 200);
    // Keep-alive upstream: at most one connection per router worker, not one per request.
    let workers = Workers::get().unwrap().count() as u64;
    assert!(
        echo.accepted.load(SeqCst) <= workers,
        "{} upstream connections",
        echo.accepted.load(SeqCst)
    );
    router.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_splices_upgraded_connections() {
    // Upstream: answers `Upgrade: echo` with 101, then echoes bytes.
    let echo = TestUpstream::start_with(Arc::new(|mut req| {
        Box::pin(async move {
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 64];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "echo")
                .body(Full::default())
                .unwrap()
        })
    }))
    .await;
    let router = Router::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    router.set_backends(vec![echo.backend("e", "v1", 1)]);

    let mut stream = TcpStream::connect(router.local_addr()).await.unwrap();
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    stream.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping");
    assert_eq!(
        router.in_flight("e"),
        1,
        "an open upgraded connection is in flight"
    );
    drop(stream);
    wait_until("the tunnel closes", || router.in_flight("e") == 0).await;
    router.shutdown(Duration::from_secs(1)).await;
}

/// An upstream that speaks raw bytes: for each request (head, then a `Content-Length` body) it
/// writes what `answer` returns for the request line, and closes after it if told to.
async fn raw_upstream(
    answer: fn(&str) -> (&'static [u8], bool),
) -> (SocketAddr, Arc<AtomicU64>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&accepted);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < head_end + length {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head_end + length);
                    let (response, close) = answer(head.lines().next().unwrap_or(""));
                    if stream.write_all(response).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_reads_every_response_framing() {
    let (addr, accepted, task) = raw_upstream(|line| match line.split(' ').nth(1) {
        Some("/chunked") => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            false,
        ),
        // Both framings: chunked wins, and the client must not be told 3 bytes.
        Some("/both") => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            false,
        ),
        Some("/twice") => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
            false,
        ),
        Some("/hints") => (
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            false,
        ),
        Some("/empty") => (b"HTTP/1.1 204 No Content\r\nX-Seen: 1\r\n\r\n", false),
        Some("/head") => (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", false),
        Some("/close") => (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
            true,
        ),
        Some("/http10") => (b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nv1.0", false),
        Some("/garbled") => (b"HTTP/1.1 2x0 Hmm\r\n\r\n", true),
        // Keep-alive by its head, closed right after: what an upstream's idle timeout does.
        Some("/drop") => (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndrop", true),
        // Keep-alive by their framing, but they say close and leave the connection open: the
        // router must not pool them. The first says only keep-alive/close (read off as the
        // head is parsed); the second also names a header, which must not reach the client.
        Some("/says-close") => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: keep-alive, Close\r\n\r\nshut",
            false,
        ),
        Some("/names-a-header") => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\n\r\nnamed",
            false,
        ),
        _ => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\nplain",
            false,
        ),
    })
    .await;
    let router = Router::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    router.set_backends(vec![Backend {
        id: "raw".into(),
        version: "v1".into(),
        addr,
        weight: 1,
    }]);
    let client = client();

    // Framings after which the connection is reused.
    for _ in 0..3 {
        assert_eq!(
            get(&client, &url(&router, "/chunked")).await,
            (StatusCode::OK, "hello world".into())
        );
        assert_eq!(
            get(&client, &url(&router, "/both")).await,
            (StatusCode::OK, "hello".into())
        );
        assert_eq!(
            get(&client, &url(&router, "/twice")).await,
            (StatusCode::OK, "ok".into())
        );
        assert_eq!(
            get(&client, &url(&router, "/hints")).await,
            (StatusCode::OK, "ok".into())
        );
        let (status, body) = get(&client, &url(&router, "/empty")).await;
        assert_eq!((status, body.as_str()), (StatusCode::NO_CONTENT, ""));
        let (status, body) = send(&client, "HEAD", &url(&router, "/head"), "").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, ""));
        assert_eq!(
            get(&client, &url(&router, "/")).await,
            (StatusCode::OK, "plain".into())
        );
    }
    // The upstream's own hop-by-hop headers stay behind.
    let resp = client
        .get(url(&router, "/").parse().unwrap())
        .await
        .unwrap();
    for gone in ["connection", "keep-alive"] {
        assert!(!resp.headers().contains_key(gone), "{gone} passed on");
    }
    drop(resp.into_body().collect().await.unwrap());
    let workers = Workers::get().unwrap().count() as u64;
    assert!(
        accepted.load(SeqCst) <= workers,
        "{} upstream connections for keep-alive framings",
        accepted.load(SeqCst)
    );

    // Framings that end the connection: each costs one (but the first on each worker, which
    // may take a connection pooled above), and the next request still works.
    let before = accepted.load(SeqCst);
    for _ in 0..3 {
        assert_eq!(
            get(&client, &url(&router, "/close")).await,
            (StatusCode::OK, "until the end".into())
        );
        assert_eq!(
            get(&client, &url(&router, "/http10")).await,
            (StatusCode::OK, "v1.0".into())
        );
    }
    let opened = accepted.load(SeqCst) - before;
    assert!(
        opened >= 6u64.saturating_sub(workers),
        "closing framings were pooled: {opened} new connections"
    );
    // Back to back on one client connection (so one router worker, one pool): only the first
    // may take a pooled connection; if either were pooled, the next would reuse it.
    for (path, body) in [("/says-close", "shut"), ("/names-a-header", "named")] {
        let mut stream = TcpStream::connect(router.local_addr()).await.unwrap();
        let before = accepted.load(SeqCst);
        for _ in 0..4 {
            let request = format!("GET {path} HTTP/1.1\r\nHost: app\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut seen = Vec::new();
            read_until(&mut stream, &mut seen, &format!("\r\n\r\n{body}")).await;
            let head = String::from_utf8_lossy(&seen).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            for gone in ["connection:", "x-secret:"] {
                assert!(!head.contains(gone), "{gone} passed on: {head}");
            }
        }
        let opened = accepted.load(SeqCst) - before;
        assert!(opened >= 3, "{path} was pooled: {opened} new connections");
    }

    // A pooled connection the upstream closed while it idled is noticed before use: a POST,
    // which is never replayed, still goes through.
    for _ in 0..3 {
        assert_eq!(
            get(&client, &url(&router, "/drop")).await,
            (StatusCode::OK, "drop".into())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            send(&client, "POST", &url(&router, "/"), "payload").await,
            (StatusCode::OK, "plain".into())
        );
    }

    // A response that is not HTTP is the upstream's failure, not retried as a lost request.
    let (status, body) = get(&client, &url(&router, "/garbled")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("UPSTREAM_UNAVAILABLE"), "{body}");
    assert_eq!(router.in_flight("raw"), 0);
    router.shutdown(Duration::from_secs(1)).await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_passes_on_an_early_answer_and_streams_chunked_uploads() {
    // Answers 413 as soon as it has a head, without reading the body, then closes politely.
    let (addr, early) = raw_head_upstream(|mut stream, _head| async move {
        let answer =
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbig";
        let _ = stream.write_all(answer).await;
        let _ = stream.shutdown().await;
        // Drain until the router hangs up, so our close sends no reset.
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    let router = Router::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    router.set_backends(vec![Backend {
        id: "early".into(),
        version: "v1".into(),
        addr,
        weight: 1,
    }]);
    // 32 MiB: more than the socket buffers take, so the answer comes mid-body.
    let mut client = TcpStream::connect(router.local_addr()).await.unwrap();
    let size = 32 * 1024 * 1024;
    let head = format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n");
    client.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = client.into_split();
    let writer = tokio::spawn(async move {
        let block = vec![b'x'; 64 * 1024];
        for _ in 0..size / block.len() {
            if wr.write_all(&block).await.is_err() {
                return;
            }
        }
    });
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&response).contains("\r\n\r\nbig") {
        match tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => response.extend_from_slice(&buf[..n]),
            other => panic!(
                "no answer: {other:?}, got {:?}",
                String::from_utf8_lossy(&response)
            ),
        }
    }
    assert!(
        response.starts_with(b"HTTP/1.1 413"),
        "{:?}",
        String::from_utf8_lossy(&response)
    );
    writer.abort();
    drop(rd);
    wait_until("the early exchange ends", || router.in_flight("early") == 0).await;
    early.abort();

    // A chunked upload (no Content-Length) is streamed on upstream chunked, and echoed whole.
    let echo = TestUpstream::start_with(Arc::new(|req| {
        Box::pin(async move {
            let chunked = req.headers().get("transfer-encoding").cloned();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let text = format!("{:?}:{}", chunked, String::from_utf8_lossy(&body));
            Response::new(Full::new(Bytes::from(text)))
        })
    }))
    .await;
    router.set_backends(vec![echo.backend("e", "v1", 1)]);
    let mut stream = TcpStream::connect(router.local_addr()).await.unwrap();
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    stream.write_all(b"2\r\nde\r\n0\r\n\r\n").await.unwrap();
    let mut response = Vec::new();
    while !String::from_utf8_lossy(&response).contains("abcde") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("echo answered")
            .unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&response));
        response.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&response);
    assert!(text.contains("Some(\"chunked\"):abcde"), "{text}");
    router.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_breaks_off_its_upload_is_not_the_versions_error() {
    let echo = TestUpstream::start_with(Arc::new(|req| {
        Box::pin(async move {
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            Response::new(Full::new(body.unwrap_or_default()))
        })
    }))
    .await;
    let router = Router::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    router.set_backends(vec![echo.backend("e", "v1", 1)]);
    for _ in 0..3 {
        let mut stream = TcpStream::connect(router.local_addr()).await.unwrap();
        stream
            .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nonly this")
            .await
            .unwrap();
        wait_until("the upload reaches the upstream", || {
            router.in_flight("e") == 1
        })
        .await;
        drop(stream);
        wait_until("the exchange ends", || router.in_flight("e") == 0).await;
    }
    let v1 = &router.metrics()["v1"];
    assert_eq!((v1.requests, v1.errors), (0, 0), "{v1:?}");
    // The upstream is fine for everyone else.
    assert_eq!(
        send(&client(), "POST", &url(&router, "/"), "whole").await,
        (StatusCode::OK, "whole".into())
    );
    router.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_keeps_uploading_while_a_full_duplex_upstream_answers() {
    // Answers at once with the request body itself as the response body, streamed.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let echo = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    Ok::<_, std::convert::Infallible>(Response::new(req.into_body()))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let router = Router::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    router.set_backends(vec![Backend {
        id: "duplex".into(),
        version: "v1".into(),
        addr,
        weight: 1,
    }]);
    let mut stream = TcpStream::connect(router.local_addr()).await.unwrap();
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
        .await
        .unwrap();
    let mut seen = Vec::new();
    read_until(&mut stream, &mut seen, "hello").await;
    // The head and the first half came back before the second half was sent.
    stream.write_all(b"world").await.unwrap();
    read_until(&mut stream, &mut seen, "helloworld").await;
    assert!(
        seen.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&seen)
    );
    wait_until("the exchange ends", || router.in_flight("duplex") == 0).await;
    router.shutdown(Duration::from_secs(1)).await;
    echo.abort();
}

/// Reads from `stream` into `seen` until it contains `what` (10 s at most).
async fn read_until(stream: &mut TcpStream, seen: &mut Vec<u8>, what: &str) {
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(seen).contains(what) {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {what:?} in {:?}", String::from_utf8_lossy(seen)))
            .unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(seen));
        seen.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_answers_gets_504_but_a_slow_body_does_not() {
    // Answers `/slow-body` with a head at once and the body later, and anything else never.
    let (addr, upstream) = raw_head_upstream(|mut stream, head| async move {
        if head.starts_with(b"GET /slow-body ") {
            let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
            let _ = stream.write_all(head).await;
            tokio::time::sleep(Duration::from_millis(600)).await;
            let _ = stream.write_all(b"4\r\nlate\r\n0\r\n\r\n").await;
        }
        // Hold the connection open without answering.
        let _ = stream.read(&mut [0u8; 64]).await;
    })
    .await;
    // Idle checks every 50 ms: the head timeout is 100–150 ms.
    let router = Router::bind_with("127.0.0.1:0".parse().unwrap(), Duration::from_millis(50))
        .await
        .unwrap();
    router.set_backends(vec![Backend {
        id: "mute".into(),
        version: "v1".into(),
        addr,
        weight: 1,
    }]);
    let client = client();
    let (status, body) =
        tokio::time::timeout(Duration::from_secs(5), get(&client, &url(&router, "/")))
            .await
            .expect("the router answered for the mute upstream");
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(body.contains("UPSTREAM_TIMEOUT"), "{body}");
    let v1 = &router.metrics()["v1"];
    assert_eq!(
        (v1.requests, v1.errors),
        (1, 1),
        "a mute instance is its version's error"
    );
    wait_until("the lease ends", || router.in_flight("mute") == 0).await;

    // The body is not timed: a stream may stay quiet longer than the head timeout.
    assert_eq!(
        get(&client, &url(&router, "/slow-body")).await,
        (StatusCode::OK, "late".into())
    );
    router.shutdown(Duration::from_secs(1)).await;
    upstream.abort();
}
