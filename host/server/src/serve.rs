//! `taskflow serve`: the backends the configuration names
//! ([`Backends::open`]), the runtime, the workers and the HTTP API, started
//! together and shut down in order.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use taskflow_runtime::{PluginRegistry, Runtime};

use crate::api::{self, AuthConfig};
use crate::backends::Backends;
use crate::config::ServeConfig;
use crate::metrics::Metrics;
use crate::service::{ServiceConfig, TaskService};
use crate::worker::WorkerPool;

/// A started host: the service and the address it listens on.
pub struct Server {
    service: Arc<TaskService>,
    listener: TcpListener,
    router: axum::Router,
    workers: WorkerPool,
    /// Stops the heartbeat and the reaper, which run until the workers are done.
    background: CancellationToken,
    tracker: TaskTracker,
    _watch: taskflow_runtime::registry::WatchGuard,
    grace: Duration,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Opens the backends, loads the plugins, recovers unfinished tasks,
    /// starts the workers and binds the listener. Any wrong setting stops here
    /// with a message that names it.
    pub async fn start(config: ServeConfig) -> anyhow::Result<Self> {
        config.validate()?;
        let runtime = Runtime::new(config.runtime_config())?;
        let registry = PluginRegistry::open(runtime, config.plugin_dir(), Some(config.cache_dir()))
            .await
            .with_context(|| {
                format!(
                    "cannot open the plugin directory {}",
                    config.plugin_dir().display()
                )
            })?;
        let watch = registry.watch()?;
        tracing::info!(plugins = registry.list().len(), dir = %config.plugin_dir().display(), "plugins loaded");

        // Stops the background tasks (heartbeat, reaper, sweeper, retention,
        // catalog, credentials), which run until the workers are done.
        let background = CancellationToken::new();
        let workers = config.worker_count();
        let mut settings = ServiceConfig::new(
            workers,
            Duration::from_millis(config.retry_base_ms),
            Duration::from_secs(config.lease_secs),
        );
        if let Some(id) = &config.host_id {
            settings.owner.clone_from(id);
        }
        settings.retention = config.retention();
        let Backends {
            store,
            queue,
            bodies,
            catalog,
            credentials,
        } = Backends::open(&config, &settings.owner, settings.lease, background.clone()).await?;
        tracing::info!(host = %settings.owner, queue = ?config.queue, storage = ?config.storage, blobs = ?config.blobs, "backends open");
        let mut service = TaskService::new(
            queue,
            store,
            registry.clone(),
            Arc::new(Metrics::new(&settings.owner)),
            settings,
        )
        .with_claim_check(bodies);
        if let Some(catalog) = &catalog {
            service = service.with_catalog(catalog.clone());
        }
        let service = Arc::new(service);
        let recovery = service
            .recover()
            .await
            .context("cannot recover unfinished tasks")?;
        if recovery.requeued > 0 {
            tracing::info!(
                requeued = recovery.requeued,
                interrupted = recovery.interrupted,
                "unfinished tasks queued again"
            );
        }
        let pool = WorkerPool::start(service.clone(), workers);
        let tracker = TaskTracker::new();
        tracker.spawn(service.clone().heartbeat(background.clone()));
        tracker.spawn(service.clone().reaper(background.clone()));
        tracker.spawn(service.clone().announce(background.clone()));
        if service.queue().needs_outbox() {
            tracker.spawn(service.clone().sweep(background.clone()));
        }
        tracker.spawn(service.clone().retention(background.clone()));
        if let Some(catalog) = catalog {
            tracker.spawn(crate::fleet::sync(
                catalog,
                registry,
                service.metrics().clone(),
                background.clone(),
            ));
        }
        if let Some(keep_fresh) = credentials {
            tracker.spawn(keep_fresh);
        }
        tracker.close();

        let auth = AuthConfig {
            api_token: config.api_token.clone(),
            admin_token: config.admin_token.clone(),
        };
        let router = api::router(service.clone(), auth, config.max_body_bytes);
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        Ok(Self {
            service,
            listener,
            router,
            workers: pool,
            background,
            tracker,
            _watch: watch,
            grace: Duration::from_secs(config.shutdown_grace_secs),
        })
    }

    /// The address the API listens on.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// The task service.
    pub fn service(&self) -> &Arc<TaskService> {
        &self.service
    }

    /// Serves until `shutdown` resolves, then stops taking requests, lets
    /// running tasks finish within the grace period, and returns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let addr = self.local_addr()?;
        tracing::info!(%addr, "TaskFlow listening");
        axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .context("the HTTP server failed")?;
        tracing::info!("shutting down: finishing running tasks");
        self.workers.shutdown(self.grace).await;
        self.background.cancel();
        self.tracker.wait().await;
        Ok(())
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}
