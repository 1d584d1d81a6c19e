//! Keep-alive connections to the backends: one [`Pool`] per serving thread,
//! so that a connection, its task and the requests on it stay on that
//! thread.
//!
//! A connection goes back to the pool only once the response on it has been
//! read to its end (HTTP/1 carries one exchange at a time); a response body
//! dropped before its end closes the connection. A request given to a pooled
//! connection that the backend had closed, before anything of it was
//! written, moves on to another connection: only a request that may have
//! reached the backend fails.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{Request, Response};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

type Sender = SendRequest<Full<Bytes>>;

/// Most idle connections kept per backend; more are closed when their
/// response ends.
const MAX_IDLE_PER_BACKEND: usize = 512;

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made, or it failed before any of the request
    /// was written: nothing reached the backend.
    #[error("cannot reach the backend: {0}")]
    NotSent(String),
    /// The connection failed after the request, or part of it, was written:
    /// the backend may have acted on it.
    #[error("the connection to the backend failed: {0}")]
    Failed(#[source] hyper::Error),
}

/// Idle connections to each backend, by the backend's index.
pub struct Pool {
    idle: Mutex<Vec<Vec<Sender>>>,
    connect_timeout: Duration,
}

impl Pool {
    /// An empty pool for `backends` backends.
    pub fn new(backends: usize, connect_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new((0..backends).map(|_| Vec::new()).collect()),
            connect_timeout,
        })
    }

    /// Sends `request` (origin-form URI, `Host` set) to backend `backend` at
    /// `address` (`host:port`), on an idle connection if there is one.
    pub async fn send(
        self: &Arc<Self>,
        backend: usize,
        address: &str,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Response<PooledBody>, SendError> {
        while let Some(mut sender) = self.checkout(backend) {
            if sender.ready().await.is_err() {
                continue; // closed while idle
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.lease(backend, sender, response)),
                Err(mut error) => match error.take_message() {
                    // The backend had closed it; nothing was written.
                    Some(unsent) => request = unsent,
                    None => return Err(SendError::Failed(error.into_error())),
                },
            }
        }
        let mut sender = self.connect(address).await?;
        match sender.try_send_request(request).await {
            Ok(response) => Ok(self.lease(backend, sender, response)),
            Err(error) if error.message().is_some() => {
                Err(SendError::NotSent(error.into_error().to_string()))
            }
            Err(error) => Err(SendError::Failed(error.into_error())),
        }
    }

    fn checkout(&self, backend: usize) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let senders = idle.get_mut(backend)?;
        while let Some(sender) = senders.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    fn give_back(&self, backend: usize, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(senders) = idle.get_mut(backend)
            && senders.len() < MAX_IDLE_PER_BACKEND
        {
            senders.push(sender);
        }
    }

    /// A new connection, its task spawned on the caller's runtime.
    async fn connect(&self, address: &str) -> Result<Sender, SendError> {
        let stream = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect(address),
        )
        .await
        .map_err(|_| {
            SendError::NotSent(format!(
                "no connection within {} ms",
                self.connect_timeout.as_millis()
            ))
        })?
        .map_err(|e| SendError::NotSent(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SendError::NotSent(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "backend connection ended with an error");
            }
        });
        Ok(sender)
    }

    fn lease(
        self: &Arc<Self>,
        backend: usize,
        sender: Sender,
        response: Response<Incoming>,
    ) -> Response<PooledBody> {
        response.map(|inner| PooledBody {
            inner,
            lease: Some(Lease {
                pool: self.clone(),
                backend,
                sender,
            }),
        })
    }
}

/// The connection a response arrived on, until its body ends.
struct Lease {
    pool: Arc<Pool>,
    backend: usize,
    sender: Sender,
}

/// A response body that returns its connection to the pool when it ends.
pub struct PooledBody {
    inner: Incoming,
    lease: Option<Lease>,
}

impl PooledBody {
    fn give_back(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.pool.give_back(lease.backend, lease.sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.give_back(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.give_back(),
            Poll::Ready(Some(Err(_))) => this.lease = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // Read to its end (or empty from the start): the connection is free.
        if self.inner.is_end_stream() {
            self.give_back();
        }
    }
}
