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
//!
//! Like nginx's workers, one single-threaded runtime per CPU accepts on the
//! one listening socket and keeps its own keep-alive connections to every
//! backend (hyper's HTTP/1 server and client, [`pool`]): a request stays
//! on one thread from client to backend and back. Request
//! bodies are held whole (up to `--max-buffered-bytes` over all requests at
//! once); responses are streamed.

mod pool;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use std::convert::Infallible;

use anyhow::Context;
use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::http::uri::{Authority, PathAndQuery};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_http::timeout::TimeoutBody;

use taskflow_http::{HttpError, REQUEST_ID, request_id_of};

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

    /// Most request-body bytes held at once over all requests (a body is
    /// held until a backend has taken it, so that a refused request can go to
    /// the next one); a request that would go over gets 503 and Retry-After.
    #[arg(long, env = "TASKFLOW_LB_MAX_BUFFERED_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_buffered_bytes: usize,

    /// Threads serving clients, each accepting connections and keeping its
    /// own connections to the backends [default: one per CPU].
    #[arg(long, env = "TASKFLOW_LB_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
}

use pool::{Pool, PooledBody, SendError};

/// One backend and what the balancer knows of it.
struct Backend {
    /// Its place in the balancer's list (and in each connection pool).
    index: usize,
    url: reqwest::Url,
    /// Its `host:port`, to connect to.
    address: String,
    /// The same, as the `Host` header of requests to it (made once).
    host: HeaderValue,
    /// The URL's path without a trailing slash, when it has one of its own:
    /// the prefix of every forwarded path.
    prefix: Option<String>,
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
    /// For health checks; requests go through each serving thread's own.
    pool: Arc<Pool>,
    connect_timeout: Duration,
    read_timeout: Duration,
    max_body_bytes: usize,
    body_timeout: Duration,
    /// One permit per request-body byte held.
    buffered: Arc<Semaphore>,
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
        // (`host_str` keeps an IPv6 address in brackets.)
        let authority_of = |url: &reqwest::Url| {
            let host = url.host_str().unwrap_or_default();
            format!("{host}:{}", url.port_or_known_default().unwrap_or(80)).parse::<Authority>()
        };
        anyhow::ensure!(!config.backends.is_empty(), "give at least one --backend");
        for url in &config.backends {
            anyhow::ensure!(
                url.scheme() == "http" && url.has_host() && url.query().is_none(),
                "backend {url} is not an http:// URL with a host and no query (the balancer reaches hosts over plain HTTP, inside your network)"
            );
            // The URL is shown in logs and at /lb/backends.
            anyhow::ensure!(
                url.username().is_empty() && url.password().is_none(),
                "backend URLs take no credentials"
            );
            anyhow::ensure!(
                authority_of(url).is_ok(),
                "backend {url} has no usable host and port"
            );
        }
        let connect_timeout = Duration::from_millis(config.timeout_ms);
        let read_timeout = Duration::from_millis(config.read_timeout_ms);
        let backends: Vec<Backend> = config
            .backends
            .iter()
            .enumerate()
            .map(|(index, url)| Backend {
                index,
                host: authority_of(url)
                    .ok()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                    .unwrap_or(HeaderValue::from_static("invalid")),
                address: authority_of(url).map_or_else(|_| "invalid:80".into(), |a| a.to_string()),
                prefix: (url.path() != "/").then(|| url.path().trim_end_matches('/').to_string()),
                url: url.clone(),
                healthy: AtomicBool::new(true),
                requests: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                latency_micros: AtomicU64::new(0),
            })
            .collect();
        Ok(Arc::new(Self {
            pool: Pool::new(backends.len(), connect_timeout),
            backends,
            next: AtomicUsize::new(0),
            connect_timeout,
            read_timeout,
            max_body_bytes: config.max_body_bytes,
            body_timeout: Duration::from_millis(config.body_timeout_ms),
            buffered: Arc::new(Semaphore::new(
                config.max_buffered_bytes.min(Semaphore::MAX_PERMITS),
            )),
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
        let healthy = match backend.request(
            Method::GET,
            &PathAndQuery::from_static("/ready"),
            HeaderMap::new(),
            Bytes::new(),
        ) {
            Some(request) => tokio::time::timeout(timeout, async {
                let response = self
                    .pool
                    .send(backend.index, &backend.address, request)
                    .await
                    .ok()?;
                let ok = response.status().is_success();
                // Read to the end, so that the connection can be used again.
                response.into_body().collect().await.ok()?;
                Some(ok)
            })
            .await
            .ok()
            .flatten()
            .unwrap_or(false),
            None => false,
        };
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
    fn rotation(&self) -> impl Iterator<Item = &Backend> {
        let healthy = |b: &&Backend| b.healthy.load(Ordering::Relaxed);
        let count = self.backends.iter().filter(healthy).count();
        let only_healthy = count > 0;
        let turns = if only_healthy {
            count
        } else {
            self.backends.len()
        };
        let start = self.next.fetch_add(1, Ordering::Relaxed) % turns;
        self.backends
            .iter()
            .filter(move |b| !only_healthy || healthy(b))
            .cycle()
            .skip(start)
            .take(turns)
    }

    /// Forwards one request, through `pool`, to the first backend of the
    /// rotation that takes it.
    async fn forward(
        &self,
        pool: &Arc<Pool>,
        client: &HeaderValue,
        request: Request,
    ) -> Result<Response, HttpError> {
        let (parts, body) = request.into_parts();
        // Held until the answer's headers are back: released on return.
        let (body, _held) = if body.is_end_stream() {
            // No body (a GET): nothing to wait for.
            (Bytes::new(), None)
        } else {
            tokio::time::timeout(self.body_timeout, self.read_body(body))
                .await
                .map_err(|_| {
                    HttpError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "request_timeout",
                        format!(
                            "the request body did not arrive within {} ms",
                            self.body_timeout.as_millis()
                        ),
                    )
                })??
        };
        let request_id = request_id_of(&parts.headers);
        let request_id_value = HeaderValue::from_str(&request_id).ok();
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let is_idempotent = parts.method.is_idempotent();
        let headers = forwarded_headers(parts.headers, client, request_id_value.clone());

        for backend in self.rotation() {
            let outgoing = backend
                .request(
                    parts.method.clone(),
                    &path_and_query,
                    headers.clone(),
                    body.clone(),
                )
                .ok_or_else(|| HttpError::bad_request("the request's path cannot be forwarded"))?;
            backend.requests.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let sent = tokio::time::timeout(
                self.read_timeout,
                pool.send(backend.index, &backend.address, outgoing),
            )
            .await;
            if !sent
                .as_ref()
                .is_ok_and(|r| r.as_ref().is_ok_and(|r| !r.status().is_server_error()))
            {
                backend.failures.fetch_add(1, Ordering::Relaxed);
            } else {
                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                backend.latency_micros.fetch_add(micros, Ordering::Relaxed);
            }
            match sent {
                Ok(Ok(response)) => {
                    return Ok(relay(response, request_id_value, self.read_timeout));
                }
                // Nothing reached the backend: it is down, and the next one
                // gets the request.
                Ok(Err(e @ SendError::NotSent(_))) => {
                    tracing::warn!(backend = %backend.url, %request_id, error = %e, "backend refused the connection; trying the next");
                    self.mark(backend, false);
                }
                // Slow, not down: sending the work elsewhere would repeat it.
                Err(_) => {
                    tracing::warn!(backend = %backend.url, %request_id, path = %path_and_query, "backend did not answer in time");
                    return Err(HttpError::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        "gateway_timeout",
                        format!("the backend did not answer in time (request id {request_id})"),
                    ));
                }
                // The connection broke; repeating an idempotent request cannot
                // do anything twice. The health checks judge the backend.
                Ok(Err(e)) if is_idempotent => {
                    tracing::warn!(backend = %backend.url, %request_id, error = %e, "backend failed mid-request; trying the next");
                }
                // A POST the backend may have acted on: repeating could do it twice.
                Ok(Err(e)) => {
                    tracing::error!(backend = %backend.url, %request_id, path = %path_and_query, error = %e, "backend failed mid-request");
                    return Err(HttpError::new(
                        StatusCode::BAD_GATEWAY,
                        "bad_gateway",
                        format!(
                            "the backend failed while handling the request (request id {request_id}); check whether it took effect before repeating it"
                        ),
                    ));
                }
            }
        }
        Err(HttpError::new(
            StatusCode::BAD_GATEWAY,
            "no_backend",
            format!("no backend could take the request (request id {request_id}); retry shortly"),
        ))
    }
}

impl Balancer {
    /// Reads a request body whole, taking a permit of the buffered-bytes
    /// budget for each byte as it arrives.
    async fn read_body(
        &self,
        mut body: Body,
    ) -> Result<(Bytes, Option<OwnedSemaphorePermit>), HttpError> {
        // A body that arrives as one frame (most) is kept as it came; only
        // a second frame starts a buffer.
        let mut first: Option<Bytes> = None;
        let mut bytes = BytesMut::new();
        let mut held: Option<OwnedSemaphorePermit> = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| {
                HttpError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the request body could not be read",
                )
            })?;
            let Ok(chunk) = frame.into_data() else {
                continue;
            };
            let so_far = first.as_ref().map_or(bytes.len(), Bytes::len);
            if so_far + chunk.len() > self.max_body_bytes {
                return Err(HttpError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!(
                        "the request body is over the balancer's limit of {} bytes",
                        self.max_body_bytes
                    ),
                ));
            }
            let permits = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
            let permit = self
                .buffered
                .clone()
                .try_acquire_many_owned(permits)
                .map_err(|_| busy())?;
            match &mut held {
                Some(held) => held.merge(permit),
                None => held = Some(permit),
            }
            match first.take() {
                None if bytes.is_empty() => first = Some(chunk),
                None => bytes.extend_from_slice(&chunk),
                Some(earlier) => {
                    bytes.extend_from_slice(&earlier);
                    bytes.extend_from_slice(&chunk);
                }
            }
        }
        Ok((first.unwrap_or_else(|| bytes.freeze()), held))
    }
}

/// The answer when the balancer already holds as many body bytes as it may.
fn busy() -> HttpError {
    HttpError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "busy",
        "the balancer is holding as many request bodies as it may; retry shortly",
    )
    .with_retry_after(1)
}

impl Backend {
    /// `path_and_query` under the backend's base URL, in origin form (the
    /// connection is to the backend already).
    fn uri_for(&self, path_and_query: &PathAndQuery) -> Option<Uri> {
        match &self.prefix {
            None => Some(Uri::from(path_and_query.clone())),
            Some(prefix) => format!("{prefix}{path_and_query}").parse().ok(),
        }
    }

    /// A request for this backend.
    fn request(
        &self,
        method: Method,
        path_and_query: &PathAndQuery,
        headers: HeaderMap,
        body: Bytes,
    ) -> Option<axum::http::Request<Full<Bytes>>> {
        let mut request = axum::http::Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = self.uri_for(path_and_query)?;
        *request.headers_mut() = headers;
        request
            .headers_mut()
            .insert(header::HOST, self.host.clone());
        Some(request)
    }
}

/// Removes the headers that describe one connection: the hop-by-hop ones,
/// and every header the `Connection` header names (RFC 9110 §7.6.1).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one look at each name, no lookups.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
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
fn forwarded_headers(
    mut headers: HeaderMap,
    client: &HeaderValue,
    request_id: Option<HeaderValue>,
) -> HeaderMap {
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(earlier) => HeaderValue::from_str(&format!(
            "{earlier}, {}",
            client.to_str().unwrap_or_default()
        ))
        .ok(),
        None => Some(client.clone()),
    };
    strip_hop_by_hop(&mut headers);
    let original_host = headers.remove(header::HOST);
    if let Some(value) = request_id {
        headers.insert(REQUEST_ID.clone(), value);
    }
    if let Some(value) = forwarded_for {
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

/// Responses up to this size (with a Content-Length) are relayed without a
/// read timeout of their own.
const SMALL_RESPONSE_BYTES: u64 = 64 * 1024;

/// The backend's response, streamed back to the client; a backend silent
/// for longer than `read_timeout` in the middle of its body ends it.
fn relay(
    response: axum::http::Response<PooledBody>,
    request_id: Option<HeaderValue>,
    read_timeout: Duration,
) -> Response {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(value) = request_id {
        parts.headers.entry(REQUEST_ID.clone()).or_insert(value);
    }
    // A small body of known length is in hand or about to be: passed on as
    // it is, its length known to the server (no timer per frame). Others
    // are watched for a backend falling silent.
    let small = body
        .size_hint()
        .exact()
        .is_some_and(|length| length <= SMALL_RESPONSE_BYTES);
    let body = if small {
        Body::new(body)
    } else {
        Body::new(TimeoutBody::new(read_timeout, body))
    };
    Response::from_parts(parts, body)
}

/// Serves the balancer on `listener` until `shutdown` resolves, then lets
/// the requests in progress finish: `GET /lb/backends` answers itself,
/// everything else is forwarded through keep-alive connections of this
/// call's own (one pool per serving thread).
pub async fn serve(
    balancer: Arc<Balancer>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    let pool = Pool::new(balancer.backends.len(), balancer.connect_timeout);
    let mut server = hyper::server::conn::http1::Builder::new();
    server.writev(false);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, address) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, typically: wait rather than spin.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = Arc::new(Connection {
            balancer: balancer.clone(),
            pool: pool.clone(),
            client: HeaderValue::from_str(&address.ip().to_string())
                .unwrap_or(HeaderValue::from_static("unknown")),
        });
        let service = hyper::service::service_fn(move |request: axum::http::Request<Incoming>| {
            let connection = connection.clone();
            async move { Ok::<_, Infallible>(connection.handle(request.map(Body::new)).await) }
        });
        let served = graceful.watch(server.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = served.await {
                tracing::debug!(%error, "client connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
}

/// One client connection.
struct Connection {
    balancer: Arc<Balancer>,
    pool: Arc<Pool>,
    /// The client's address, as `X-Forwarded-For` names it.
    client: HeaderValue,
}

impl Connection {
    async fn handle(&self, request: Request) -> Response {
        if request.uri().path() == "/lb/backends" && request.method() == Method::GET {
            return axum::Json(self.balancer.status()).into_response();
        }
        self.balancer
            .forward(&self.pool, &self.client, request)
            .await
            .into_response()
    }
}

/// Runs the balancer until `shutdown` resolves: health checks on the
/// caller's runtime, clients served by `--threads` threads, each a
/// single-threaded runtime accepting on the one listening socket, as
/// nginx's workers do. A connection, and each of its requests from client
/// to backend and back, stays on the thread that accepted it.
pub async fn run(
    config: LbConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let balancer = Balancer::new(&config)?;
    balancer.spawn_health_checks(
        Duration::from_millis(config.health_interval_ms.max(1)),
        Duration::from_millis(config.timeout_ms),
    );
    let threads = config.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        usize::from,
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let shared =
        listener(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
    let mut serving = Vec::new();
    for index in 0..threads {
        let listener = shared
            .try_clone()
            .context("cannot share the listening socket")?;
        let balancer = balancer.clone();
        let stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("lb-{index}"))
            .spawn(move || -> anyhow::Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("cannot start a serving thread's runtime")?;
                runtime
                    .block_on(async move {
                        let listener = tokio::net::TcpListener::from_std(listener)?;
                        serve(balancer, listener, stop.cancelled_owned()).await;
                        Ok::<(), std::io::Error>(())
                    })
                    .context("the load balancer's HTTP server failed")
            })
            .context("cannot start a serving thread")?;
        serving.push(thread);
    }
    let backends: Vec<String> = config.backends.iter().map(ToString::to_string).collect();
    tracing::info!(addr = %config.listen, ?backends, threads, "TaskFlow load balancer listening");
    shutdown.await;
    stop.cancel();
    tokio::task::spawn_blocking(move || {
        for thread in serving {
            match thread.join() {
                Ok(result) => result?,
                Err(_) => anyhow::bail!("a serving thread panicked"),
            }
        }
        Ok(())
    })
    .await
    .context("cannot wait for the serving threads")?
}

/// The listening socket on `addr`: every serving thread waits on it, and
/// the one free first accepts (busy threads take fewer connections).
fn listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)?.into_std()
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
            max_buffered_bytes: 1500,
            threads: None,
        }
    }

    fn balancer(backends: &[&str]) -> Arc<Balancer> {
        Balancer::new(&config(backends)).expect("balancer")
    }

    fn first_choices(balancer: &Balancer, turns: usize) -> Vec<String> {
        (0..turns)
            .map(|_| {
                balancer
                    .rotation()
                    .next()
                    .expect("a backend")
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
        assert_eq!(lb.rotation().count(), 2, "a failed backend is not tried");

        lb.mark(&lb.backends[1], false);
        lb.mark(&lb.backends[2], false);
        assert_eq!(
            lb.rotation().count(),
            3,
            "with none healthy, every backend is tried"
        );
    }

    #[test]
    fn paths_and_queries_go_under_the_backend_base_url() {
        let lb = balancer(&["http://a:1/api/", "http://b:2", "http://[::1]:3/"]);
        let uri = |backend: usize, pq: &'static str| {
            lb.backends[backend]
                .uri_for(&PathAndQuery::from_static(pq))
                .map(|u| u.to_string())
        };
        assert_eq!(
            uri(0, "/tasks?limit=5").as_deref(),
            Some("/api/tasks?limit=5")
        );
        assert_eq!(uri(0, "/health").as_deref(), Some("/api/health"));
        assert_eq!(uri(1, "/tasks?limit=5").as_deref(), Some("/tasks?limit=5"));
        assert_eq!(uri(2, "/health").as_deref(), Some("/health"));
        assert_eq!(lb.backends[2].address, "[::1]:3");
        assert_eq!(lb.backends[0].host, "a:1");
    }

    #[test]
    fn backend_urls_are_checked() {
        for bad in [
            "ftp://a:1",
            "https://a:1",
            "http://user:secret@a:1",
            "http://a:1/?x=1",
        ] {
            assert!(
                Balancer::new(&config(&[bad])).is_err(),
                "{bad} should be refused"
            );
        }
    }

    #[tokio::test]
    async fn a_body_in_several_frames_is_read_whole() {
        let lb = balancer(&["http://a:1"]);
        let (mut sender, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(4);
        tokio::spawn(async move {
            for frame in ["ab", "cd", "e"] {
                if sender
                    .send_data(Bytes::from_static(frame.as_bytes()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        let (body, _held) = lb.read_body(Body::new(body)).await.expect("read");
        assert_eq!(&body[..], b"abcde");
    }

    #[tokio::test]
    async fn bodies_held_at_once_stay_within_the_budget() {
        let lb = balancer(&["http://a:1"]);
        let (first, held) = lb
            .read_body(Body::from(vec![1u8; 1000]))
            .await
            .expect("within budget");
        assert_eq!(first.len(), 1000);
        let refused = lb.read_body(Body::from(vec![2u8; 1000])).await.err();
        assert_eq!(
            refused.map(|e| e.into_response().status()),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
        drop(held);
        let (again, _held) = lb
            .read_body(Body::from(vec![3u8; 1000]))
            .await
            .expect("budget freed");
        assert_eq!(again.len(), 1000);
        let too_large = lb.read_body(Body::from(vec![4u8; 1025])).await.err();
        assert_eq!(
            too_large.map(|e| e.into_response().status()),
            Some(StatusCode::PAYLOAD_TOO_LARGE)
        );
    }
}
