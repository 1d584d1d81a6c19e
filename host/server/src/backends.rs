//! The backends a host's configuration names, opened: setup as data.
//!
//! Each backend crate says what it reads, and `serve`'s settings flatten
//! them in: PostgreSQL [`taskflow_postgres::PostgresArgs`], SQS
//! [`taskflow_aws::sqs::SqsArgs`], S3 [`taskflow_aws::s3::S3Args`]; the
//! files store takes `TASKFLOW_DATA_DIR` and `TASKFLOW_FSYNC`, the claim
//! check `TASKFLOW_BLOB_THRESHOLD_BYTES`, the AWS SDK its own settings
//! (`AWS_REGION`, credentials, `AWS_ENDPOINT_URL`). [`ServeConfig::validate`] has refused
//! the combinations that cannot work before anything opens.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use taskflow_aws::sqs::SqsSettings;
use taskflow_aws::{S3Blobs, SqsQueue};
use taskflow_backend::blobs::{BlobStore, ClaimCheck};
use taskflow_backend::queue::Queue;
use taskflow_backend::storage::TaskStore;
use taskflow_files::{FileStore, FsBlobs, LocalQueue};
use taskflow_postgres::connect::with_credentials;
use taskflow_postgres::{PgBlobs, PgQueue, PgStore, PluginCatalog};
use tokio_util::sync::CancellationToken;

use crate::config::{BlobBackend, QueueBackend, ServeConfig, StorageBackend};
use crate::secrets::DatabaseSecret;

/// Work that runs beside the host until its stop signal.
pub type Background = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A host's backends, open.
pub struct Backends {
    /// Where tasks are recorded.
    pub store: Arc<dyn TaskStore>,
    /// Where tasks wait for a worker.
    pub queue: Arc<dyn Queue>,
    /// Where bodies above the threshold go (S3, when there is S3; else they
    /// stay in their records) and whole logs of attempts (S3, else the
    /// PostgreSQL blob table, else the data directory's `blobs/`).
    pub bodies: ClaimCheck,
    /// The fleet's plugin catalog, on shared backends.
    pub catalog: Option<PluginCatalog>,
    /// Keeps the database credentials in step with their secret, when they
    /// come from one.
    pub credentials: Option<Background>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends")
            .field("queue_shared", &self.queue.is_shared())
            .field("bodies", &self.bodies)
            .field("catalog", &self.catalog.is_some())
            .finish_non_exhaustive()
    }
}

impl Backends {
    /// Opens the backends `config` names for the host `owner`, whose leases
    /// last `lease`; what runs beside them stops with `stop`. A backend that
    /// cannot be opened stops here with the setting to fix.
    pub async fn open(
        config: &ServeConfig,
        owner: &str,
        lease: Duration,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let aws = if config.queue == QueueBackend::Sqs
            || config.blobs == BlobBackend::S3
            || config.postgres.database_secret.is_some()
        {
            Some(aws_config().await?)
        } else {
            None
        };
        let (postgres, credentials) = match config.storage {
            StorageBackend::Postgres => {
                let (store, keep_fresh) = connect_postgres(config, aws.as_ref(), stop).await?;
                (
                    Some(store),
                    keep_fresh.map(|work| Box::pin(work) as Background),
                )
            }
            StorageBackend::Files => (None, None),
        };
        if let Some(postgres) = &postgres {
            taskflow_postgres::fleet_settings::agree(postgres.pool(), &fleet_settings(config))
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
        let s3: Option<Arc<dyn BlobStore>> = match (&aws, config.blobs) {
            (Some(aws), BlobBackend::S3) => {
                let bucket = config.s3.s3_bucket.as_deref().unwrap_or_default();
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
                    PgQueue::start(store, owner.to_string(), lease)
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
                Arc::new(connect_sqs(config, aws, lease).await?)
            }
        };
        // On shared backends the fleet shares its plugins too, their bytes
        // in S3 when there is S3.
        let catalog = postgres.as_ref().map(|postgres| {
            let blobs = s3
                .clone()
                .unwrap_or_else(|| Arc::new(PgBlobs::new(postgres.pool().clone())));
            PluginCatalog::new(postgres.pool().clone(), blobs)
        });
        let bodies = match (s3, &postgres) {
            (Some(s3), _) => ClaimCheck::new(s3, config.blob_threshold()),
            (None, Some(postgres)) => {
                ClaimCheck::logs_only(Arc::new(PgBlobs::new(postgres.pool().clone())))
            }
            (None, None) => ClaimCheck::logs_only(Arc::new(FsBlobs::new(
                config.data_dir.join("blobs"),
                config.fsync,
            ))),
        };
        Ok(Self {
            store,
            queue,
            bodies,
            catalog,
            credentials,
        })
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
    let url = config.postgres.database_url.as_deref().unwrap_or_default();
    let base = taskflow_postgres::connect::options(url, config.postgres.database_ca.as_deref())
        .map_err(anyhow::Error::msg)?;
    let secret = match (&config.postgres.database_secret, aws) {
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
    let store = PgStore::connect(options, config.postgres.database_pool_size)
        .await
        .context("cannot open task storage in PostgreSQL (TASKFLOW_DATABASE_URL)")?;
    let keep_fresh = secret.map(|(secret, credentials)| {
        secret.keep_fresh(store.pool().clone(), base, credentials, stop)
    });
    Ok((store, keep_fresh))
}

/// The settings every host sharing this host's database must share.
fn fleet_settings(config: &ServeConfig) -> taskflow_postgres::fleet_settings::FleetSettings {
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
            config.sqs.sqs_queue_prefix.clone(),
        );
        settings.insert(
            "TASKFLOW_SQS_BANDS".to_string(),
            config.sqs.sqs_bands.clone(),
        );
    }
    let blobs = match config.blobs {
        BlobBackend::Inline => "inline",
        BlobBackend::S3 => "s3",
    };
    settings.insert("TASKFLOW_BLOBS".to_string(), blobs.to_string());
    if let Some(bucket) = config
        .s3
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
    let sdk = taskflow_aws::sdk_config().await;
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
    let bands = taskflow_aws::sqs::parse_bands(&config.sqs.sqs_bands)
        .map_err(|e| anyhow::anyhow!("TASKFLOW_SQS_BANDS: {e}"))?;
    let settings = SqsSettings {
        prefix: config.sqs.sqs_queue_prefix.clone(),
        bands,
        lease,
    };
    SqsQueue::start(aws_sdk_sqs::Client::new(sdk), settings)
        .await
        .context("cannot open the SQS queues (TASKFLOW_QUEUE=sqs)")
}
