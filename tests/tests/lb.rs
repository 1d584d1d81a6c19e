//! `taskflow lb`: round robin, forwarded headers and bodies, failover when a
//! backend goes away and return when it comes back; in-process against
//! small HTTP backends, and as the real binary in front of real hosts.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use serde_json::{Value, json};
use taskflow_lb::{Balancer, LbConfig};
use taskflow_tests::process::{HostProcess, free_port};
use taskflow_tests::{get_json, install_plugins, list_all, poll_json, taskflow_binary};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a backend received: `"METHOD /path?query body"` per request.
type Received = Arc<Mutex<Vec<String>>>;

fn entries(received: &Received) -> Vec<String> {
    received.lock().expect("received").clone()
}

/// A backend on its own runtime, so that stopping it closes every one of
/// its connections, as a process that dies would.
struct TestBackend {
    addr: SocketAddr,
    received: Received,
    health_checks: Arc<AtomicUsize>,
    /// What its `/ready` says: 200 when set, 503 (its backends down) when not.
    ready: Arc<AtomicBool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How long `/slow` takes to answer.
const SLOW: Duration = Duration::from_secs(2);

impl TestBackend {
    /// Answers `/ready` (200, or 503 once [`ready`](Self::ready) is
    /// cleared), `418` on `/teapot`, and everything else with what it
    /// received, naming itself; `/slow` only after [`SLOW`]. Every request
    /// but readiness checks is recorded, on arrival.
    fn start(name: &'static str, addr: SocketAddr) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound, bound_at) = std::sync::mpsc::channel();
        let received = Received::default();
        let health_checks = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(true));
        let (log, checks, is_ready) = (received.clone(), health_checks.clone(), ready.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let listener = runtime
                .block_on(TcpListener::bind(addr))
                .expect("bind backend");
            bound
                .send(listener.local_addr().expect("addr"))
                .expect("report address");
            let app = Router::new()
                .route(
                    "/ready",
                    axum::routing::get(move || async move {
                        checks.fetch_add(1, Ordering::SeqCst);
                        if is_ready.load(Ordering::SeqCst) {
                            (StatusCode::OK, "ok")
                        } else {
                            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable")
                        }
                    }),
                )
                .route(
                    "/teapot",
                    axum::routing::get(|| async { (StatusCode::IM_A_TEAPOT, "short and stout") }),
                )
                .fallback(move |request: Request| async move {
                    let (parts, body) = request.into_parts();
                    let header = |name: &str| {
                        parts
                            .headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    let mut seen = json!({
                        "backend": name,
                        "method": parts.method.as_str(),
                        "path": parts.uri.path(),
                        "query": parts.uri.query(),
                        "request_id": header("x-request-id"),
                        "forwarded_for": header("x-forwarded-for"),
                        "forwarded_host": header("x-forwarded-host"),
                        "forwarded_proto": header("x-forwarded-proto"),
                        "connection": header("connection"),
                        "secret_hop": header("x-secret-hop"),
                        "kept": header("x-kept"),
                    });
                    let body = axum::body::to_bytes(body, usize::MAX).await.expect("body");
                    let body = String::from_utf8_lossy(&body).into_owned();
                    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                    log.lock()
                        .expect("received")
                        .push(format!("{} {target} {body}", parts.method));
                    if parts.uri.path() == "/slow" {
                        tokio::time::sleep(SLOW).await;
                    }
                    seen["body"] = json!(body);
                    axum::Json(seen)
                });
            runtime.block_on(async move {
                tokio::select! {
                    _ = axum::serve(listener, app) => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime drops every connection it still serves.
            runtime.shutdown_background();
        });
        let addr = bound_at.recv().expect("backend address");
        Self {
            addr,
            received,
            health_checks,
            ready,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn url(&self) -> reqwest::Url {
        format!("http://{}", self.addr).parse().expect("url")
    }

    /// The requests it received (health checks aside).
    fn received(&self) -> Vec<String> {
        entries(&self.received)
    }

    /// The health checks it answered.
    fn health_checks(&self) -> usize {
        self.health_checks.load(Ordering::SeqCst)
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("backend thread");
        }
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A client that fails a test rather than hang it.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

fn config(backends: Vec<reqwest::Url>) -> LbConfig {
    LbConfig {
        listen: any_port(),
        backends,
        health_interval_ms: 100,
        timeout_ms: 1000,
        read_timeout_ms: 5000,
        body_timeout_ms: 5000,
        max_body_bytes: 1024 * 1024,
        max_buffered_bytes: 16 * 1024 * 1024,
        threads: None,
    }
}

/// The balancer on a port of its own; returns its base URL.
async fn start_balancer(config: &LbConfig) -> String {
    let balancer = Balancer::new(config).expect("balancer");
    balancer.spawn_health_checks(
        Duration::from_millis(config.health_interval_ms),
        Duration::from_millis(config.timeout_ms),
    );
    let listener = TcpListener::bind(any_port()).await.expect("bind balancer");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(taskflow_lb::serve(
        balancer,
        listener,
        std::future::pending(),
    ));
    url
}

async fn who_answers(client: &reqwest::Client, lb: &str) -> String {
    let response = client
        .get(format!("{lb}/whoami"))
        .send()
        .await
        .expect("request through the balancer");
    assert_eq!(response.status(), StatusCode::OK);
    let seen: Value = response.json().await.expect("json");
    seen["backend"].as_str().expect("backend name").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_round_robin_with_their_id_address_and_body() {
    let (a, b) = (
        TestBackend::start("a", any_port()),
        TestBackend::start("b", any_port()),
    );
    let lb = start_balancer(&config(vec![a.url(), b.url()])).await;
    let client = client();

    let mut answered = Vec::new();
    for _ in 0..6 {
        answered.push(who_answers(&client, &lb).await);
    }
    for pair in answered.windows(2) {
        assert_ne!(pair[0], pair[1], "turns alternate: {answered:?}");
    }

    let response = client
        .post(format!("{lb}/tasks/batch?dry=1"))
        .header("x-request-id", "req-42")
        .header("connection", "keep-alive")
        .body("{\"tasks\": []}")
        .send()
        .await
        .expect("post");
    assert_eq!(response.headers()["x-request-id"], "req-42");
    let seen: Value = response.json().await.expect("json");
    assert_eq!(seen["method"], "POST");
    assert_eq!(
        (seen["path"].as_str(), seen["query"].as_str()),
        (Some("/tasks/batch"), Some("dry=1"))
    );
    assert_eq!(seen["body"], "{\"tasks\": []}");
    assert_eq!(seen["request_id"], "req-42");
    assert_eq!(seen["forwarded_for"], "127.0.0.1");
    assert_eq!(seen["forwarded_proto"], "http");
    assert_eq!(seen["forwarded_host"].as_str(), lb.strip_prefix("http://"));
    assert_ne!(
        seen["connection"], "keep-alive",
        "hop-by-hop headers stay with their connection"
    );

    // Without an id from the client, the balancer makes one and returns it.
    let response = client
        .get(format!("{lb}/whoami"))
        .send()
        .await
        .expect("get");
    let returned = response.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_owned();
    let seen: Value = response.json().await.expect("json");
    assert_eq!(seen["request_id"], returned.as_str());

    // Statuses come back as the backend gave them.
    let teapot = client
        .get(format!("{lb}/teapot"))
        .send()
        .await
        .expect("teapot");
    assert_eq!(teapot.status(), StatusCode::IM_A_TEAPOT);
    assert_eq!(teapot.text().await.expect("text"), "short and stout");

    let too_big = client
        .post(format!("{lb}/tasks"))
        .body(vec![b'x'; 2 * 1024 * 1024])
        .send()
        .await
        .expect("send");
    assert_eq!(too_big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = too_big.json().await.expect("json error");
    assert_eq!(body["error"], "payload_too_large");
}

/// A backend that answers but is not ready (its own backends are down)
/// leaves the rotation and returns once ready; headers that the client's
/// `Connection` header names stay with that connection; `/lb/backends`
/// counts each backend's requests, failures and latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_decides_the_rotation_and_backends_are_counted() {
    let (a, b) = (
        TestBackend::start("a", any_port()),
        TestBackend::start("b", any_port()),
    );
    let lb = start_balancer(&config(vec![a.url(), b.url()])).await;
    let client = client();

    let seen: Value = client
        .get(format!("{lb}/whoami"))
        .header("connection", "x-secret-hop")
        .header("x-secret-hop", "for this connection only")
        .header("x-kept", "for the backend")
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(
        seen["secret_hop"],
        Value::Null,
        "named by Connection: {seen}"
    );
    assert_eq!(seen["kept"], "for the backend", "{seen}");

    b.ready.store(false, Ordering::SeqCst);
    // Out of the rotation within a few checks (100 ms apart).
    let backends = poll_json(
        &client,
        &format!("{lb}/lb/backends"),
        Duration::from_secs(10),
        |backends| backends[1]["healthy"] == false,
    )
    .await;
    assert_eq!(backends[0]["healthy"], true, "{backends}");
    for _ in 0..6 {
        assert_eq!(who_answers(&client, &lb).await, "a");
    }
    b.ready.store(true, Ordering::SeqCst);
    poll_json(
        &client,
        &format!("{lb}/lb/backends"),
        Duration::from_secs(10),
        |backends| backends[1]["healthy"] == true,
    )
    .await;

    let backends = get_json(&client, &format!("{lb}/lb/backends")).await;
    let requests = |i: usize| backends[i]["requests"].as_u64().expect("requests");
    assert_eq!(requests(0) + requests(1), 7, "{backends}");
    assert!(requests(0) >= 6, "{backends}");
    for i in 0..2 {
        assert_eq!(backends[i]["failures"], 0, "{backends}");
        if requests(i) > 0 {
            assert!(
                backends[i]["mean_latency_ms"]
                    .as_f64()
                    .is_some_and(|ms| ms > 0.0),
                "{backends}"
            );
        }
    }
}

/// A client that stops sending its body half way gets 408 once the body
/// timeout passes; nothing reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_too_slow_to_send_its_body_gets_408() {
    let a = TestBackend::start("a", any_port());
    let lb = start_balancer(&LbConfig {
        body_timeout_ms: 300,
        ..config(vec![a.url()])
    })
    .await;
    let mut socket = TcpStream::connect(lb.trim_start_matches("http://"))
        .await
        .expect("connect to the balancer");
    socket
        .write_all(b"POST /tasks HTTP/1.1\r\nhost: lb\r\ncontent-length: 100\r\n\r\n{\"plugin\":")
        .await
        .expect("send half a request");
    let started = std::time::Instant::now();
    let mut answer = vec![0; 512];
    let read = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut answer))
        .await
        .expect("an answer within 10 s")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..read]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(a.received().is_empty(), "{:?}", a.received());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_backend_leaves_the_rotation_and_returns_when_healthy() {
    let a = TestBackend::start("a", any_port());
    let mut b = TestBackend::start("b", any_port());
    let b_addr = b.addr;
    let lb = start_balancer(&config(vec![a.url(), b.url()])).await;
    let client = client();
    assert_eq!(
        [
            who_answers(&client, &lb).await,
            who_answers(&client, &lb).await
        ]
        .iter()
        .filter(|n| *n == "b")
        .count(),
        1
    );

    b.stop();
    // Every request still succeeds: one refused by b is tried on a.
    for _ in 0..6 {
        assert_eq!(who_answers(&client, &lb).await, "a");
    }
    let backends: Value = client
        .get(format!("{lb}/lb/backends"))
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    assert_eq!(backends[1]["healthy"], false, "{backends}");

    let _b = TestBackend::start("b", b_addr);
    poll_json(
        &client,
        &format!("{lb}/lb/backends"),
        Duration::from_secs(10),
        |backends| backends[1]["healthy"] == true,
    )
    .await;
    let mut answered = Vec::new();
    for _ in 0..4 {
        answered.push(who_answers(&client, &lb).await);
    }
    assert!(
        answered.contains(&"b".to_owned()),
        "b is back in the rotation: {answered:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_backend_down_clients_get_a_clear_502() {
    let mut a = TestBackend::start("a", any_port());
    let url = a.url();
    a.stop();
    let lb = start_balancer(&config(vec![url])).await;
    let response = client()
        .get(format!("{lb}/tasks"))
        .header("x-request-id", "r-1")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body: Value = response.json().await.expect("json error");
    assert_eq!(body["error"], "no_backend");
    assert!(
        body["message"].as_str().is_some_and(|m| m.contains("r-1")),
        "{body}"
    );
}

/// A backend that answers `/ready` but reads every other request whole
/// and then closes the connection without a word, as a host that crashes
/// while handling it would.
struct DroppingBackend {
    addr: SocketAddr,
    received: Received,
    task: tokio::task::JoinHandle<()>,
}

impl DroppingBackend {
    async fn start() -> Self {
        let listener = TcpListener::bind(any_port())
            .await
            .expect("bind dropping backend");
        let addr = listener.local_addr().expect("addr");
        let received = Received::default();
        let log = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let Some((target, body)) = read_request(&mut socket).await else {
                        return;
                    };
                    if target == "GET /ready" {
                        let _ = socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
                        return;
                    }
                    log.lock()
                        .expect("received")
                        .push(format!("{target} {body}"));
                    // Dropping the socket closes the connection, unanswered.
                });
            }
        });
        Self {
            addr,
            received,
            task,
        }
    }

    fn url(&self) -> reqwest::Url {
        format!("http://{}", self.addr).parse().expect("url")
    }

    fn received(&self) -> Vec<String> {
        entries(&self.received)
    }
}

impl Drop for DroppingBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one HTTP/1.1 request with a `content-length` body (or none):
/// `("METHOD /target", body)`.
async fn read_request(socket: &mut TcpStream) -> Option<(String, String)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let read = socket.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        let read = socket.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buffer.extend_from_slice(&chunk[..read]);
    }
    let mut request_line = head.lines().next()?.split(' ');
    let target = format!("{} {}", request_line.next()?, request_line.next()?);
    Some((
        target,
        String::from_utf8_lossy(&buffer[head_end..head_end + length]).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_takes_the_backend_out_and_the_request_goes_to_the_next() {
    let a = TestBackend::start("a", any_port());
    let mut b = TestBackend::start("b", any_port());
    // Health checks run once at the start, then not for a minute: only the
    // request path can notice that b is gone.
    let lb = start_balancer(&LbConfig {
        health_interval_ms: 60_000,
        ..config(vec![a.url(), b.url()])
    })
    .await;
    let client = client();
    poll_json(
        &client,
        &format!("{lb}/lb/backends"),
        Duration::from_secs(10),
        |_| a.health_checks() == 1 && b.health_checks() == 1,
    )
    .await;
    let answered = [
        who_answers(&client, &lb).await,
        who_answers(&client, &lb).await,
    ];
    assert!(
        answered.contains(&"a".to_owned()) && answered.contains(&"b".to_owned()),
        "{answered:?}"
    );

    b.stop();
    // Every request still succeeds: each one b refuses is tried on a.
    for _ in 0..6 {
        assert_eq!(who_answers(&client, &lb).await, "a");
    }
    assert_eq!(
        a.received().len(),
        7,
        "a answered each request once: {:?}",
        a.received()
    );
    let backends: Value = client
        .get(format!("{lb}/lb/backends"))
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    assert_eq!(backends[0]["healthy"], true, "{backends}");
    assert_eq!(
        backends[1]["healthy"], false,
        "the refused connection took b out: {backends}"
    );
    assert_eq!(a.health_checks(), 1, "no health check ran since the first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_whose_connection_broke_gets_a_502_and_is_not_replayed_but_a_get_is() {
    let dropper = DroppingBackend::start().await;
    let b = TestBackend::start("b", any_port());
    let lb = start_balancer(&config(vec![dropper.url(), b.url()])).await;
    let client = client();

    // The first turn is the dropping backend's: it reads the POST, then
    // hangs up. The POST may have taken effect there, so it is not sent to b.
    let response = client
        .post(format!("{lb}/tasks"))
        .header("x-request-id", "post-1")
        .body(r#"{"plugin": "echo"}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body: Value = response.json().await.expect("the error is JSON");
    assert_eq!(body["error"], "bad_gateway", "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("post-1")),
        "{body}"
    );
    assert_eq!(
        dropper.received(),
        [r#"POST /tasks {"plugin": "echo"}"#],
        "the POST reached the dropping backend"
    );
    assert!(
        b.received().is_empty(),
        "the POST was not replayed on b: {:?}",
        b.received()
    );

    // GET, PUT and DELETE cannot do anything twice: each broken one is sent
    // to b, and the client never sees the failure.
    let requests = [
        ("GET", "/tasks?n=1"),
        ("GET", "/tasks?n=2"),
        ("PUT", "/plugins/p3"),
        ("PUT", "/plugins/p4"),
        ("DELETE", "/plugins/p5"),
        ("DELETE", "/plugins/p6"),
    ];
    let mut sent = Vec::new();
    for (method, target) in requests {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let response = client
            .request(method.clone(), format!("{lb}{target}"))
            .send()
            .await
            .expect("through the balancer");
        assert_eq!(response.status(), StatusCode::OK, "{method} {target}");
        let seen: Value = response.json().await.expect("json");
        assert_eq!(seen["backend"], "b", "{method} {target}: {seen}");
        sent.push(format!("{method} {target} "));
    }
    assert_eq!(b.received(), sent, "b got each request once");
    // Turns alternate, so every other request met the dropping backend first.
    let broken = dropper.received();
    assert!(
        broken[1..].iter().any(|r| r.starts_with("GET ")),
        "a GET met the broken backend: {broken:?}"
    );
    assert!(broken[1..].iter().all(|r| sent.contains(r)), "{broken:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_slower_than_the_read_timeout_gets_a_504_and_no_repeat() {
    let (a, b) = (
        TestBackend::start("a", any_port()),
        TestBackend::start("b", any_port()),
    );
    let lb = start_balancer(&LbConfig {
        read_timeout_ms: 300,
        ..config(vec![a.url(), b.url()])
    })
    .await;
    let client = client();

    for (n, method) in [reqwest::Method::GET, reqwest::Method::POST]
        .into_iter()
        .enumerate()
    {
        let started = std::time::Instant::now();
        let response = client
            .request(method.clone(), format!("{lb}/slow?n={n}"))
            .header("x-request-id", format!("slow-{n}"))
            .send()
            .await
            .expect("through the balancer");
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT, "{method}");
        assert!(
            started.elapsed() < SLOW,
            "the balancer gave up before the backend answered"
        );
        let body: Value = response.json().await.expect("the error is JSON");
        assert_eq!(body["error"], "gateway_timeout", "{body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains(&format!("slow-{n}"))),
            "{body}"
        );
    }
    // Each request reached one backend, once: a slow backend's work is not
    // repeated on another.
    let mut received: Vec<String> = a.received().into_iter().chain(b.received()).collect();
    received.sort();
    assert_eq!(
        received,
        ["GET /slow?n=0 ", "POST /slow?n=1 "],
        "a: {:?}, b: {:?}",
        a.received(),
        b.received()
    );
}

/// A child process, killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the load clients saw: each POST's marker and whether it was
/// accepted, and every failed request.
#[derive(Default)]
struct Load {
    posts: Vec<(String, bool)>,
    failures: usize,
}

/// `clients` loops, each sending `POST /tasks` (payload marked uniquely)
/// then `GET /health` through the balancer, until `stop`.
fn start_load(
    lb: &str,
    clients: usize,
    round: &'static str,
    load: Arc<Mutex<Load>>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            let (lb, load, stop) = (lb.to_string(), load.clone(), stop.clone());
            tokio::spawn(async move {
                let http = client();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let marker = format!("{round}-{c}-{i}");
                    i += 1;
                    let posted = http
                        .post(format!("{lb}/tasks"))
                        .json(&json!({"plugin": "echo", "payload": {"marker": marker}}))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    let checked = http
                        .get(format!("{lb}/health"))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    let mut load = load.lock().expect("load");
                    load.posts.push((marker, posted));
                    load.failures += usize::from(!posted) + usize::from(!checked);
                }
            })
        })
        .collect()
}

/// Runs the load for `time`; returns the requests each backend got meanwhile.
async fn load_for(
    lb: &str,
    round: &'static str,
    load: &Arc<Mutex<Load>>,
    time: Duration,
) -> Vec<u64> {
    let http = client();
    let before = backend_requests(&http, lb).await;
    let stop = Arc::new(AtomicBool::new(false));
    let clients = start_load(lb, 3, round, load.clone(), stop.clone());
    tokio::time::sleep(time).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("load client");
    }
    let after = backend_requests(&http, lb).await;
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

async fn backend_requests(http: &reqwest::Client, lb: &str) -> Vec<u64> {
    get_json(http, &format!("{lb}/lb/backends"))
        .await
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["requests"].as_u64().expect("requests"))
        .collect()
}

fn assert_even(counts: &[u64], what: &str) {
    let total: u64 = counts.iter().sum();
    let mean = total as f64 / counts.len() as f64;
    assert!(total >= 30, "{what}: too few requests to judge: {counts:?}");
    for count in counts {
        assert!(
            (*count as f64 - mean).abs() <= mean * 0.1 + 2.0,
            "{what}: requests spread evenly: {counts:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_behind_the_lb_share_evenly_lose_one_briefly_and_get_it_back() {
    let http = client();
    let data = tempfile::tempdir().expect("tempdir");
    let dirs: Vec<_> = (1..=3)
        .map(|n| data.path().join(format!("host-{n}")))
        .collect();
    let mut hosts = Vec::new();
    for (n, dir) in dirs.iter().enumerate() {
        install_plugins(&dir.join("plugins"), &["echo"]);
        hosts.push(HostProcess::start_with(dir, 8001 + n as u16, &["--workers", "1"]).await);
    }
    let lb_port = free_port();
    let _lb = Process(
        Command::new(taskflow_binary())
            .args([
                "lb",
                "--listen",
                &format!("127.0.0.1:{lb_port}"),
                "--health-interval-ms",
                "100",
            ])
            .args([
                "--backend",
                "http://127.0.0.1:8001",
                "--backend",
                "http://127.0.0.1:8002",
            ])
            .args(["--backend", "http://127.0.0.1:8003"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn lb"),
    );
    let lb = format!("http://127.0.0.1:{lb_port}");
    let all_healthy = |b: &Value| {
        b.as_array()
            .is_some_and(|a| a.len() == 3 && a.iter().all(|b| b["healthy"] == true))
    };
    poll_json(
        &http,
        &format!("{lb}/lb/backends"),
        Duration::from_secs(30),
        all_healthy,
    )
    .await;
    let load = Arc::new(Mutex::new(Load::default()));

    // Even spread.
    let spread = load_for(&lb, "before", &load, Duration::from_secs(2)).await;
    assert_even(&spread, "three healthy hosts");
    assert_eq!(
        load.lock().expect("load").failures,
        0,
        "no failure while all are up"
    );

    // Host 3 killed under load: a few requests in flight on it fail, then
    // it is out of the rotation and nothing fails.
    let stop = Arc::new(AtomicBool::new(false));
    let clients = start_load(&lb, 3, "kill", load.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    hosts.pop().expect("host 3").kill();
    poll_json(
        &http,
        &format!("{lb}/lb/backends"),
        Duration::from_secs(10),
        |b| b[2]["healthy"] == false,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let failed_at_ejection = load.lock().expect("load").failures;
    let posts_at_ejection = load.lock().expect("load").posts.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("load client");
    }
    let (failures, posts) = {
        let load = load.lock().expect("load");
        (load.failures, load.posts.len())
    };
    println!("killed host: {failed_at_ejection} failed requests, {posts} posts so far");
    assert!(
        failed_at_ejection <= 6,
        "at most the requests in flight on the killed host fail: {failed_at_ejection}"
    );
    assert!(
        posts > posts_at_ejection + 30,
        "the load went on: {posts_at_ejection} → {posts}"
    );
    assert_eq!(
        failures, failed_at_ejection,
        "nothing fails once the host is out"
    );

    // Restarted on its data directory: back in the rotation, its share again.
    hosts.push(HostProcess::start_with(&dirs[2], 8003, &["--workers", "1"]).await);
    poll_json(
        &http,
        &format!("{lb}/lb/backends"),
        Duration::from_secs(30),
        all_healthy,
    )
    .await;
    let spread = load_for(&lb, "after", &load, Duration::from_secs(2)).await;
    assert_even(&spread, "the restarted host rejoined");
    assert_eq!(
        load.lock().expect("load").failures,
        failures,
        "no failure after the rejoin"
    );

    // No POST reached two hosts: every marker is in at most one host's
    // tasks, every accepted one in exactly one.
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for host in &hosts {
        for task in list_all(&http, &host.url, "").await {
            let marker = task["payload"]["marker"]
                .as_str()
                .expect("marker")
                .to_string();
            *seen.entry(marker).or_default() += 1;
        }
    }
    let load = load.lock().expect("load");
    for (marker, accepted) in &load.posts {
        let copies = seen.get(marker).copied().unwrap_or(0);
        assert!(copies <= 1, "{marker} was run by {copies} hosts");
        if *accepted {
            assert_eq!(copies, 1, "accepted {marker} is on a host");
        }
    }
}
