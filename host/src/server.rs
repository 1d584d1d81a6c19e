//! `taskflow serve`: wires the configured backends, the runtime, the workers
//! and the HTTP API together, and shuts them down in order.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, AuthConfig};
use crate::blobs::{BlobStore, ClaimCheck, PgBlobs, S3Blobs};
use crate::config::{BlobBackend, QueueBackend, ServeConfig, StorageBackend};
use crate::fleet::PluginCatalog;
use crate::queue::sqs::SqsSettings;
use crate::queue::{LocalQueue, PgQueue, Queue, SqsQueue};
use crate::runtime::{PluginRegistry, Runtime};
use crate::secrets::DatabaseSecret;
use crate::service::{ServiceConfig, TaskService};
use crate::storage::postgres::connect::with_credentials;
use crate::storage::{FileStore, PgStore, TaskStore};
use crate::telemetry::Metrics;
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
    _watch: crate::runtime::registry::WatchGuard,
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

        let aws = if config.queue == QueueBackend::Sqs
            || config.blobs == BlobBackend::S3
            || config.database_secret.is_some()
        {
            Some(aws_config().await?)
        } else {
            None
        };
        // Stops the background tasks (heartbeat, reaper, sweeper, retention,
        // catalog, credentials), which run until the workers are done.
        let background = CancellationToken::new();
        let (postgres, credentials) = match config.storage {
            StorageBackend::Postgres => {
                let (store, keep_fresh) =
                    connect_postgres(&config, aws.as_ref(), background.clone()).await?;
                (Some(store), keep_fresh)
            }
            StorageBackend::Files => (None, None),
        };
        if let Some(postgres) = &postgres {
            crate::storage::postgres::fleet_settings::agree(
                postgres.pool(),
                &fleet_settings(&config),
            )
            .await
            .context("cannot join the fleet")?;
        }
        let store: Arc<dyn TaskStore> = match &postgres {
            Some(postgres) => Arc::new(postgres.clone()),
            None => Arc::new(
                FileStore::open(config.tasks_dir(), config.fsync)
                    .await
                    .with_context(|| {
                        format!(
                            "cannot open task storage in {}",
                            config.tasks_dir().display()
                        )
                    })?,
            ),
        };
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
        let s3: Option<Arc<dyn BlobStore>> = match (&aws, config.blobs) {
            (Some(aws), BlobBackend::S3) => {
                let bucket = config.s3_bucket.as_deref().unwrap_or_default();
                Some(Arc::new(S3Blobs::open(aws, bucket).await.with_context(
                    || format!("cannot open the S3 bucket {bucket:?} (TASKFLOW_S3_BUCKET)"),
                )?))
            }
            _ => None,
        };
        let queue: Arc<dyn Queue> = match config.queue {
            QueueBackend::Local => Arc::new(LocalQueue::new()),
            QueueBackend::Postgres => {
                // `validate` made sure the store is PostgreSQL.
                let store = postgres
                    .clone()
                    .context("TASKFLOW_QUEUE=postgres needs TASKFLOW_STORAGE=postgres")?;
                Arc::new(
                    PgQueue::start(store, settings.owner.clone(), settings.lease)
                        .await
                        .context("cannot listen for tasks in PostgreSQL (TASKFLOW_DATABASE_URL)")?,
                )
            }
            QueueBackend::Sqs => {
                // `validate` made sure the store is PostgreSQL (it keeps
                // the outbox).
                let aws = aws
                    .as_ref()
                    .context("TASKFLOW_QUEUE=sqs needs the AWS settings")?;
                Arc::new(connect_sqs(&config, aws, settings.lease).await?)
            }
        };
        tracing::info!(host = %settings.owner, queue = ?config.queue, storage = ?config.storage, blobs = ?config.blobs, "backends open");
        let mut service = TaskService::new(
            queue,
            store,
            registry.clone(),
            Arc::new(Metrics::default()),
            settings,
        );
        if let Some(s3) = &s3 {
            service =
                service.with_claim_check(ClaimCheck::new(s3.clone(), config.blob_threshold()));
        }
        // On shared backends the fleet shares its plugins too, their bytes
        // in S3 when there is S3.
        let catalog = postgres.as_ref().map(|postgres| {
            let blobs = s3
                .clone()
                .unwrap_or_else(|| Arc::new(PgBlobs::new(postgres.pool().clone())));
            PluginCatalog::new(postgres.pool().clone(), blobs)
        });
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
        if service.queue().needs_outbox() {
            tracker.spawn(service.clone().sweep(background.clone()));
        }
        tracker.spawn(service.clone().retention(background.clone()));
        if let Some(catalog) = catalog {
            tracker.spawn(catalog.sync(registry, service.metrics().clone(), background.clone()));
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

/// Opens the PostgreSQL store of `config`, with the credentials of
/// `TASKFLOW_DATABASE_SECRET` when it is set, and what keeps them in step
/// with the secret until `stop`.
async fn connect_postgres(
    config: &ServeConfig,
    aws: Option<&aws_config::SdkConfig>,
    stop: CancellationToken,
) -> anyhow::Result<(PgStore, Option<impl Future<Output = ()> + Send + 'static>)> {
    let url = config.database_url.as_deref().unwrap_or_default();
    let base = crate::storage::postgres::connect::options(url, config.database_ca.as_deref())
        .map_err(anyhow::Error::msg)?;
    let secret = match (&config.database_secret, aws) {
        (Some(id), Some(aws)) => {
            let secret = DatabaseSecret::new(aws, id);
            let credentials = secret
                .credentials()
                .await
                .context("TASKFLOW_DATABASE_SECRET")?;
            Some((secret, credentials))
        }
        _ => None,
    };
    let options = match &secret {
        Some((_, credentials)) => with_credentials(base.clone(), credentials),
        None => base.clone(),
    };
    let store = PgStore::connect(options, config.database_pool_size)
        .await
        .context("cannot open task storage in PostgreSQL (TASKFLOW_DATABASE_URL)")?;
    let keep_fresh = secret.map(|(secret, credentials)| {
        secret.keep_fresh(store.pool().clone(), base, credentials, stop)
    });
    Ok((store, keep_fresh))
}

/// The settings every host sharing this host's database must share.
fn fleet_settings(config: &ServeConfig) -> crate::storage::postgres::fleet_settings::FleetSettings {
    let mut settings = std::collections::BTreeMap::new();
    let queue = match config.queue {
        QueueBackend::Local => "local",
        QueueBackend::Postgres => "postgres",
        QueueBackend::Sqs => "sqs",
    };
    settings.insert("TASKFLOW_QUEUE".to_string(), queue.to_string());
    if config.queue == QueueBackend::Sqs {
        settings.insert(
            "TASKFLOW_SQS_QUEUE_PREFIX".to_string(),
            config.sqs_queue_prefix.clone(),
        );
        settings.insert("TASKFLOW_SQS_BANDS".to_string(), config.sqs_bands.clone());
    }
    let blobs = match config.blobs {
        BlobBackend::Inline => "inline",
        BlobBackend::S3 => "s3",
    };
    settings.insert("TASKFLOW_BLOBS".to_string(), blobs.to_string());
    if let Some(bucket) = config
        .s3_bucket
        .as_ref()
        .filter(|_| config.blobs == BlobBackend::S3)
    {
        settings.insert("TASKFLOW_S3_BUCKET".to_string(), bucket.clone());
    }
    settings
}

/// The AWS SDK settings; no region stops here.
async fn aws_config() -> anyhow::Result<aws_config::SdkConfig> {
    let sdk = crate::aws::sdk_config().await;
    if sdk.region().is_none() {
        anyhow::bail!(
            "TASKFLOW_QUEUE=sqs, TASKFLOW_BLOBS=s3 and TASKFLOW_DATABASE_SECRET need an AWS region: set AWS_REGION (e.g. us-east-1)"
        );
    }
    Ok(sdk)
}

/// Opens the SQS queues of `config`; a missing queue or credentials stop
/// here with the setting to fix.
async fn connect_sqs(
    config: &ServeConfig,
    sdk: &aws_config::SdkConfig,
    lease: Duration,
) -> anyhow::Result<SqsQueue> {
    let bands = crate::queue::sqs::parse_bands(&config.sqs_bands)
        .map_err(|e| anyhow::anyhow!("TASKFLOW_SQS_BANDS: {e}"))?;
    let settings = SqsSettings {
        prefix: config.sqs_queue_prefix.clone(),
        bands,
        lease,
    };
    SqsQueue::start(aws_sdk_sqs::Client::new(sdk), settings)
        .await
        .context("cannot open the SQS queues (TASKFLOW_QUEUE=sqs)")
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
