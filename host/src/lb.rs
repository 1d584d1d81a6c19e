//! `taskflow lb`: a round-robin HTTP load balancer for several API instances
//! that share the distributed backends.
//!
//! Each request goes to the next healthy backend in turn. A backend whose
//! connection fails leaves the rotation at once and the request is tried on
//! the next one (the body is held until a backend has taken it, so nothing is
//! lost); active readiness checks of each backend's `/ready` take failed
//! backends out (also a host whose own backends are down) and bring them
//! back when they answer again. The client's request id (or a new one) and
//! address are forwarded (`X-Request-Id`, `X-Forwarded-For`,
//! `X-Forwarded-Proto`, `X-Forwarded-Host`); hop-by-hop headers, and those
//! the `Connection` header names, are not. `/lb/backends` counts each
//! backend's requests, failures and latency.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use clap::Args;
use serde::Serialize;

use crate::api::error::ApiError;
use crate::api::middleware::{REQUEST_ID, request_id_of};

/// `taskflow lb` settings.
#[derive(Debug, Clone, Args)]
pub struct LbConfig {
    /// Address to listen on.
    #[arg(long, env = "TASKFLOW_LB_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,

    /// Base URL of a backend, e.g. http://10.0.1.5:8080; repeat the flag, or
    /// separate URLs with commas in the variable.
    #[arg(
        long = "backend",
        env = "TASKFLOW_LB_BACKENDS",
        value_delimiter = ',',
        required = true
    )]
    pub backends: Vec<reqwest::Url>,

    /// Time between two health checks of a backend.
    #[arg(long, env = "TASKFLOW_LB_HEALTH_INTERVAL_MS", default_value_t = 1000)]
    pub health_interval_ms: u64,

    /// Time a backend has to answer a health check or a forwarded request's
    /// connection.
    #[arg(long, env = "TASKFLOW_LB_TIMEOUT_MS", default_value_t = 2000)]
    pub timeout_ms: u64,

    /// Longest a backend may stay silent while it answers a request.
    #[arg(long, env = "TASKFLOW_LB_READ_TIMEOUT_MS", default_value_t = 60_000)]
    pub read_timeout_ms: u64,

    /// Longest a client may take to send its request body: a slower one
    /// gets 408 and frees the memory and connection it held.
    #[arg(long, env = "TASKFLOW_LB_BODY_TIMEOUT_MS", default_value_t = 30_000)]
    pub body_timeout_ms: u64,

    /// Largest request body forwarded (plugin uploads are the largest).
    #[arg(long, env = "TASKFLOW_LB_MAX_BODY_BYTES", default_value_t = 128 * 1024 * 1024)]
    pub max_body_bytes: usize,
}

/// One backend and what the balancer knows of it.
struct Backend {
    url: reqwest::Url,
    healthy: AtomicBool,
    /// Requests sent to it, and of those the ones that failed (no answer,
    /// or a 5xx answer).
    requests: AtomicU64,
    failures: AtomicU64,
    /// Sum of the times to its answers' headers, in microseconds.
    latency_micros: AtomicU64,
}

/// The balancer's shared state.
pub struct Balancer {
    backends: Vec<Backend>,
    next: AtomicUsize,
    client: reqwest::Client,
    max_body_bytes: usize,
    body_timeout: Duration,
}

/// A backend as `GET /lb/backends` shows it.
#[derive(Debug, Serialize)]
pub struct BackendStatus {
    /// Its base URL.
    pub url: String,
    /// Whether it is in the rotation.
    pub healthy: bool,
    /// Requests sent to it.
    pub requests: u64,
    /// Of those, the ones it did not answer or answered with a 5xx status.
    pub failures: u64,
    /// Mean time to its answers' headers, in milliseconds.
    pub mean_latency_ms: f64,
}

/// Headers that describe one connection, not the request: never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

impl Balancer {
    /// A balancer over `config.backends`, all taken as healthy until a check
    /// or a request says otherwise.
    pub fn new(config: &LbConfig) -> anyhow::Result<Arc<Self>> {
        anyhow::ensure!(!config.backends.is_empty(), "give at least one --backend");
        for url in &config.backends {
            anyhow::ensure!(
                matches!(url.scheme(), "http" | "https") && url.has_host(),
                "backend {url} is not an http(s) URL with a host"
            );
            // The URL is shown in logs and at /lb/backends.
            anyhow::ensure!(
                url.username().is_empty() && url.password().is_none(),
                "backend URLs take no credentials"
            );
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(config.timeout_ms))
            .read_timeout(Duration::from_millis(config.read_timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("cannot build the HTTP client")?;
        let backends = config
            .backends
            .iter()
            .map(|url| Backend {
                url: url.clone(),
                healthy: AtomicBool::new(true),
                requests: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                latency_micros: AtomicU64::new(0),
            })
            .collect();
        Ok(Arc::new(Self {
            backends,
            next: AtomicUsize::new(0),
            client,
            max_body_bytes: config.max_body_bytes,
            body_timeout: Duration::from_millis(config.body_timeout_ms),
        }))
    }

    /// Every backend, whether it is in the rotation, and its counts.
    pub fn status(&self) -> Vec<BackendStatus> {
        self.backends
            .iter()
            .map(|b| {
                let requests = b.requests.load(Ordering::Relaxed);
                let answered = requests.saturating_sub(b.failures.load(Ordering::Relaxed));
                BackendStatus {
                    url: b.url.to_string(),
                    healthy: b.healthy.load(Ordering::Relaxed),
                    requests,
                    failures: b.failures.load(Ordering::Relaxed),
                    mean_latency_ms: if answered == 0 {
                        0.0
                    } else {
                        b.latency_micros.load(Ordering::Relaxed) as f64 / answered as f64 / 1000.0
                    },
                }
            })
            .collect()
    }

    /// Checks every backend's `/ready` every `interval`, until the balancer
    /// is dropped.
    pub fn spawn_health_checks(self: &Arc<Self>, interval: Duration, timeout: Duration) {
        let balancer = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(balancer) = balancer.upgrade() else {
                    return;
                };
                let mut checks = tokio::task::JoinSet::new();
                for index in 0..balancer.backends.len() {
                    let balancer = balancer.clone();
                    checks.spawn(async move {
                        balancer.check(&balancer.backends[index], timeout).await
                    });
                }
                while checks.join_next().await.is_some() {}
            }
        });
    }

    async fn check(&self, backend: &Backend, timeout: Duration) {
        // Readiness, not liveness: a host whose database or queue is down
        // answers 503 and leaves the rotation.
        let url = backend.url_for("/ready", None);
        let healthy = self
            .client
            .get(url)
            .timeout(timeout)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        self.mark(backend, healthy);
    }

    fn mark(&self, backend: &Backend, healthy: bool) {
        if backend.healthy.swap(healthy, Ordering::Relaxed) != healthy {
            if healthy {
                tracing::info!(backend = %backend.url, "backend healthy again; back in the rotation");
            } else {
                tracing::warn!(backend = %backend.url, "backend failed; out of the rotation");
            }
        }
    }

    /// The healthy backends, starting at the next turn among them, so that
    /// each gets an equal share; when none is known healthy, every backend
    /// (one may have just come back).
    fn rotation(&self) -> Vec<&Backend> {
        let healthy: Vec<&Backend> = self
            .backends
            .iter()
            .filter(|b| b.healthy.load(Ordering::Relaxed))
            .collect();
        let candidates = if healthy.is_empty() {
            self.backends.iter().collect()
        } else {
            healthy
        };
        let start = self.next.fetch_add(1, Ordering::Relaxed) % candidates.len();
        candidates[start..]
            .iter()
            .chain(&candidates[..start])
            .copied()
            .collect()
    }

    /// Forwards one request to the first backend of the rotation that
    /// takes it.
    async fn forward(&self, client: SocketAddr, request: Request) -> Result<Response, ApiError> {
        let (parts, body) = request.into_parts();
        let body = tokio::time::timeout(
            self.body_timeout,
            axum::body::to_bytes(body, self.max_body_bytes),
        )
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body did not arrive within {} ms",
                    self.body_timeout.as_millis()
                ),
            )
        })?
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "the request body is over the balancer's limit of {} bytes",
                    self.max_body_bytes
                ),
            )
        })?;
        let request_id = request_id_of(&parts.headers);
        let headers = forwarded_headers(&parts.headers, client, &request_id);
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());

        for backend in self.rotation() {
            let url = backend.url_for(parts.uri.path(), parts.uri.query());
            backend.requests.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let sent = self
                .client
                .request(parts.method.clone(), url)
                .headers(headers.clone())
                .body(body.clone())
                .send()
                .await;
            if !sent.as_ref().is_ok_and(|r| !r.status().is_server_error()) {
                backend.failures.fetch_add(1, Ordering::Relaxed);
            } else {
                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                backend.latency_micros.fetch_add(micros, Ordering::Relaxed);
            }
            match sent {
                Ok(response) => return Ok(relay(response, &request_id)),
                // Nothing reached the backend: it is down, and the next one
                // gets the request.
                Err(e) if e.is_connect() => {
                    tracing::warn!(backend = %backend.url, %request_id, error = %e, "backend refused the connection; trying the next");
                    self.mark(backend, false);
                }
                // Slow, not down: sending the work elsewhere would repeat it.
                Err(e) if e.is_timeout() => {
                    tracing::warn!(backend = %backend.url, %request_id, path = path_and_query, "backend did not answer in time");
                    return Err(ApiError::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        "gateway_timeout",
                        format!("the backend did not answer in time (request id {request_id})"),
                    ));
                }
                // The connection broke; repeating an idempotent request cannot
                // do anything twice. The health checks judge the backend.
                Err(e) if parts.method.is_idempotent() => {
                    tracing::warn!(backend = %backend.url, %request_id, error = %e, "backend failed mid-request; trying the next");
                }
                // A POST the backend may have acted on: repeating could do it twice.
                Err(e) => {
                    tracing::error!(backend = %backend.url, %request_id, path = path_and_query, error = %e, "backend failed mid-request");
                    return Err(ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        "bad_gateway",
                        format!(
                            "the backend failed while handling the request (request id {request_id}); check whether it took effect before repeating it"
                        ),
                    ));
                }
            }
        }
        Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "no_backend",
            format!("no backend could take the request (request id {request_id}); retry shortly"),
        ))
    }
}

impl Backend {
    /// `path` (and `query`) under the backend's base URL.
    fn url_for(&self, path: &str, query: Option<&str>) -> reqwest::Url {
        let mut url = self.url.clone();
        url.set_path(&format!("{}{path}", self.url.path().trim_end_matches('/')));
        url.set_query(query);
        url
    }
}

/// Removes the headers that describe one connection: the hop-by-hop ones,
/// and every header the `Connection` header names (RFC 9110 §7.6.1).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
}

/// The request's headers as the backend gets them.
fn forwarded_headers(incoming: &HeaderMap, client: SocketAddr, request_id: &str) -> HeaderMap {
    let mut headers = incoming.clone();
    strip_hop_by_hop(&mut headers);
    let original_host = headers.remove(header::HOST);
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID.clone(), value);
    }
    let forwarded_for = match incoming
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(earlier) => format!("{earlier}, {}", client.ip()),
        None => client.ip().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(HeaderName::from_static("x-forwarded-for"), value);
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("http"),
    );
    if let Some(host) = original_host {
        headers.insert(HeaderName::from_static("x-forwarded-host"), host);
    }
    headers
}

/// The backend's response, streamed back to the client.
fn relay(response: reqwest::Response, request_id: &str) -> Response {
    let status = response.status();
    let mut headers = response.headers().clone();
    strip_hop_by_hop(&mut headers);
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.entry(REQUEST_ID.clone()).or_insert(value);
    }
    let mut relayed = Response::new(Body::from_stream(response.bytes_stream()));
    *relayed.status_mut() = status;
    *relayed.headers_mut() = headers;
    relayed
}

/// The balancer's router: `GET /lb/backends` answers itself; everything else
/// is forwarded.
pub fn router(balancer: Arc<Balancer>) -> Router {
    Router::new()
        .route(
            "/lb/backends",
            axum::routing::get(
                |State(b): State<Arc<Balancer>>| async move { axum::Json(b.status()) },
            ),
        )
        .fallback(
            |State(b): State<Arc<Balancer>>,
             ConnectInfo(client): ConnectInfo<SocketAddr>,
             request: Request| async move {
                b.forward(client, request).await.into_response()
            },
        )
        .with_state(balancer)
}

/// Runs the balancer until `shutdown` resolves.
pub async fn run(
    config: LbConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let balancer = Balancer::new(&config)?;
    balancer.spawn_health_checks(
        Duration::from_millis(config.health_interval_ms.max(1)),
        Duration::from_millis(config.timeout_ms),
    );
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let backends: Vec<String> = config.backends.iter().map(ToString::to_string).collect();
    tracing::info!(addr = %config.listen, ?backends, "TaskFlow load balancer listening");
    axum::serve(
        listener,
        router(balancer).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .context("the load balancer's HTTP server failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(backends: &[&str]) -> LbConfig {
        LbConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            backends: backends
                .iter()
                .map(|url| url.parse().expect("url"))
                .collect(),
            health_interval_ms: 1000,
            timeout_ms: 1000,
            read_timeout_ms: 1000,
            body_timeout_ms: 1000,
            max_body_bytes: 1024,
        }
    }

    fn balancer(backends: &[&str]) -> Arc<Balancer> {
        Balancer::new(&config(backends)).expect("balancer")
    }

    fn first_choices(balancer: &Balancer, turns: usize) -> Vec<String> {
        (0..turns)
            .map(|_| {
                balancer.rotation()[0]
                    .url
                    .host_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn healthy_backends_share_turns_evenly() {
        let lb = balancer(&["http://a:1", "http://b:1", "http://c:1"]);
        lb.mark(&lb.backends[0], false);
        let chosen = first_choices(&lb, 6);
        assert_eq!(chosen.iter().filter(|h| *h == "b").count(), 3, "{chosen:?}");
        assert_eq!(chosen.iter().filter(|h| *h == "c").count(), 3, "{chosen:?}");
        assert_eq!(lb.rotation().len(), 2, "a failed backend is not tried");

        lb.mark(&lb.backends[1], false);
        lb.mark(&lb.backends[2], false);
        assert_eq!(
            lb.rotation().len(),
            3,
            "with none healthy, every backend is tried"
        );
    }

    #[test]
    fn paths_and_queries_go_under_the_backend_base_url() {
        let lb = balancer(&["http://a:1/api/"]);
        assert_eq!(
            lb.backends[0].url_for("/tasks", Some("limit=5")).as_str(),
            "http://a:1/api/tasks?limit=5"
        );
        assert_eq!(
            lb.backends[0].url_for("/health", None).as_str(),
            "http://a:1/api/health"
        );
    }

    #[test]
    fn backend_urls_are_checked() {
        for bad in ["ftp://a:1", "http://user:secret@a:1"] {
            assert!(
                Balancer::new(&config(&[bad])).is_err(),
                "{bad} should be refused"
            );
        }
    }
}
