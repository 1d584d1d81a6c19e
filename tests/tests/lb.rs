//! `taskflow lb`: round robin, forwarded headers and bodies, failover when a
//! backend goes away and return when it comes back; in-process against
//! small HTTP backends, and as the real binary in front of real hosts.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use serde_json::{Value, json};
use taskflow::lb::{Balancer, LbConfig};
use taskflow_tests::{install_plugins, poll_json, taskflow_binary};
use tokio::net::TcpListener;

/// A backend on its own runtime, so that stopping it closes every one of
/// its connections, as a process that dies would.
struct TestBackend {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestBackend {
    /// Answers `/health`, `418` on `/teapot`, and everything else with what
    /// it received, naming itself.
    fn start(name: &'static str, addr: SocketAddr) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound, bound_at) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            let listener = runtime.block_on(TcpListener::bind(addr)).expect("bind backend");
            bound.send(listener.local_addr().expect("addr")).expect("report address");
            let app = Router::new()
                .route("/health", axum::routing::get(|| async { "ok" }))
                .route("/teapot", axum::routing::get(|| async { (StatusCode::IM_A_TEAPOT, "short and stout") }))
                .fallback(move |request: Request| async move {
                    let (parts, body) = request.into_parts();
                    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
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
                    });
                    let body = axum::body::to_bytes(body, usize::MAX).await.expect("body");
                    seen["body"] = json!(String::from_utf8_lossy(&body));
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
        Self { addr, stop: Some(stop), thread: Some(thread) }
    }

    fn url(&self) -> reqwest::Url {
        format!("http://{}", self.addr).parse().expect("url")
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
    reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("client")
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
        max_body_bytes: 1024 * 1024,
    }
}

/// The balancer on a port of its own; returns its base URL.
async fn start_balancer(config: &LbConfig) -> String {
    let balancer = Balancer::new(config).expect("balancer");
    balancer.spawn_health_checks(Duration::from_millis(config.health_interval_ms), Duration::from_millis(config.timeout_ms));
    let listener = TcpListener::bind(any_port()).await.expect("bind balancer");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        axum::serve(listener, taskflow::lb::router(balancer).into_make_service_with_connect_info::<SocketAddr>()).await
    });
    url
}

async fn who_answers(client: &reqwest::Client, lb: &str) -> String {
    let response = client.get(format!("{lb}/whoami")).send().await.expect("request through the balancer");
    assert_eq!(response.status(), StatusCode::OK);
    let seen: Value = response.json().await.expect("json");
    seen["backend"].as_str().expect("backend name").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_round_robin_with_their_id_address_and_body() {
    let (a, b) = (TestBackend::start("a", any_port()), TestBackend::start("b", any_port()));
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
    assert_eq!((seen["path"].as_str(), seen["query"].as_str()), (Some("/tasks/batch"), Some("dry=1")));
    assert_eq!(seen["body"], "{\"tasks\": []}");
    assert_eq!(seen["request_id"], "req-42");
    assert_eq!(seen["forwarded_for"], "127.0.0.1");
    assert_eq!(seen["forwarded_proto"], "http");
    assert_eq!(seen["forwarded_host"].as_str(), lb.strip_prefix("http://"));
    assert_ne!(seen["connection"], "keep-alive", "hop-by-hop headers stay with their connection");

    // Without an id from the client, the balancer makes one and returns it.
    let response = client.get(format!("{lb}/whoami")).send().await.expect("get");
    let returned = response.headers()["x-request-id"].to_str().expect("id").to_owned();
    let seen: Value = response.json().await.expect("json");
    assert_eq!(seen["request_id"], returned.as_str());

    // Statuses come back as the backend gave them.
    let teapot = client.get(format!("{lb}/teapot")).send().await.expect("teapot");
    assert_eq!(teapot.status(), StatusCode::IM_A_TEAPOT);
    assert_eq!(teapot.text().await.expect("text"), "short and stout");

    let too_big = client.post(format!("{lb}/tasks")).body(vec![b'x'; 2 * 1024 * 1024]).send().await.expect("send");
    assert_eq!(too_big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = too_big.json().await.expect("json error");
    assert_eq!(body["error"], "payload_too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_backend_leaves_the_rotation_and_returns_when_healthy() {
    let a = TestBackend::start("a", any_port());
    let mut b = TestBackend::start("b", any_port());
    let b_addr = b.addr;
    let lb = start_balancer(&config(vec![a.url(), b.url()])).await;
    let client = client();
    assert_eq!(
        [who_answers(&client, &lb).await, who_answers(&client, &lb).await].iter().filter(|n| *n == "b").count(),
        1
    );

    b.stop();
    // Every request still succeeds: one refused by b is tried on a.
    for _ in 0..6 {
        assert_eq!(who_answers(&client, &lb).await, "a");
    }
    let backends: Value = client.get(format!("{lb}/lb/backends")).send().await.expect("status").json().await.expect("json");
    assert_eq!(backends[1]["healthy"], false, "{backends}");

    let _b = TestBackend::start("b", b_addr);
    poll_json(&client, &format!("{lb}/lb/backends"), Duration::from_secs(10), |backends| backends[1]["healthy"] == true).await;
    let mut answered = Vec::new();
    for _ in 0..4 {
        answered.push(who_answers(&client, &lb).await);
    }
    assert!(answered.contains(&"b".to_owned()), "b is back in the rotation: {answered:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_backend_down_clients_get_a_clear_502() {
    let mut a = TestBackend::start("a", any_port());
    let url = a.url();
    a.stop();
    let lb = start_balancer(&config(vec![url])).await;
    let response = client().get(format!("{lb}/tasks")).header("x-request-id", "r-1").send().await.expect("send");
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body: Value = response.json().await.expect("json error");
    assert_eq!(body["error"], "no_backend");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("r-1")), "{body}");
}

/// A child process, killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lb_command_balances_real_hosts_and_survives_one_dying() {
    let client = client();
    let mut hosts = Vec::new();
    let mut urls = Vec::new();
    let data = tempfile::tempdir().expect("tempdir");
    for n in 0..2 {
        let dir = data.path().join(format!("host-{n}"));
        install_plugins(&dir.join("plugins"), &["echo"]);
        let port = free_port();
        let host = Command::new(taskflow_binary())
            .args(["serve", "--workers", "1", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(&dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn host");
        hosts.push(Process(host));
        let url = format!("http://127.0.0.1:{port}");
        poll_json(&client, &format!("{url}/health"), Duration::from_secs(60), |h| h["status"] == "ok").await;
        urls.push(url);
    }
    let lb_port = free_port();
    let _lb = Process(
        Command::new(taskflow_binary())
            .args(["lb", "--listen", &format!("127.0.0.1:{lb_port}"), "--health-interval-ms", "100"])
            .args(urls.iter().flat_map(|url| ["--backend", url.as_str()]))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn lb"),
    );
    let lb = format!("http://127.0.0.1:{lb_port}");
    poll_json(&client, &format!("{lb}/lb/backends"), Duration::from_secs(30), |b| b.as_array().is_some_and(|a| a.len() == 2)).await;

    let plugins_through_lb = |count: usize| {
        let (client, lb) = (client.clone(), lb.clone());
        async move {
            for i in 0..count {
                let response =
                    client.get(format!("{lb}/plugins")).header("x-request-id", format!("lb-{i}")).send().await.expect("through lb");
                assert_eq!(response.status(), StatusCode::OK);
                assert_eq!(response.headers()["x-request-id"], format!("lb-{i}").as_str());
                let plugins: Value = response.json().await.expect("json");
                assert_eq!(plugins["plugins"][0]["name"], "echo");
            }
        }
    };
    plugins_through_lb(4).await;

    drop(hosts.remove(0));
    plugins_through_lb(6).await;
    let backends = poll_json(&client, &format!("{lb}/lb/backends"), Duration::from_secs(10), |b| b[0]["healthy"] == false).await;
    assert_eq!(backends[1]["healthy"], true, "{backends}");
}
