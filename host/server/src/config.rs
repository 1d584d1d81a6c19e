//! Server configuration: command-line flags with environment-variable
//! fallbacks, checked once at startup so a wrong setting stops the host with a
//! clear message instead of failing later.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use taskflow_runtime::{Limits, RuntimeConfig};

/// `taskflow serve` settings. Every flag can also be set through the
/// environment variable named beside it.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "TASKFLOW_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory for task files, backups and the compile cache.
    #[arg(long, env = "TASKFLOW_DATA_DIR", default_value = "taskflow-data")]
    pub data_dir: PathBuf,

    /// Plugin directory, watched for changes [default: DATA_DIR/plugins].
    #[arg(long, env = "TASKFLOW_PLUGIN_DIR")]
    pub plugin_dir: Option<PathBuf>,

    /// Tasks run concurrently [default: 4 per CPU, 16 on PostgreSQL storage].
    #[arg(long, env = "TASKFLOW_WORKERS")]
    pub workers: Option<usize>,

    /// Task queue backend.
    #[arg(long, env = "TASKFLOW_QUEUE", value_enum, default_value_t = QueueBackend::Local)]
    pub queue: QueueBackend,

    /// Task metadata backend.
    #[arg(long, env = "TASKFLOW_STORAGE", value_enum, default_value_t = StorageBackend::Files)]
    pub storage: StorageBackend,

    /// PostgreSQL (`--storage postgres`, `--queue postgres`): what
    /// `taskflow-postgres` reads.
    #[command(flatten)]
    pub postgres: taskflow_postgres::PostgresArgs,

    /// How long a host holds a running task without renewing its lease, in
    /// seconds: the task of a host that stopped runs elsewhere after this.
    #[arg(long, env = "TASKFLOW_LEASE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease_secs: u64,

    /// SQS (`--queue sqs`): what `taskflow-aws` reads for it.
    #[command(flatten)]
    pub sqs: taskflow_aws::sqs::SqsArgs,

    /// Where payloads and results above --blob-threshold-bytes are kept
    /// (the task record keeps their key, size and SHA-256); with PostgreSQL,
    /// also where the fleet's plugin bytes are.
    #[arg(long, env = "TASKFLOW_BLOBS", value_enum, default_value_t = BlobBackend::Inline)]
    pub blobs: BlobBackend,

    /// S3 (`--blobs s3`): what `taskflow-aws` reads for it.
    #[command(flatten)]
    pub s3: taskflow_aws::s3::S3Args,

    /// Payloads and results larger than this many bytes go to the blob store.
    #[arg(long, env = "TASKFLOW_BLOB_THRESHOLD_BYTES", default_value_t = taskflow_backend::blobs::DEFAULT_THRESHOLD as u64, value_parser = clap::value_parser!(u64).range(1..=1_073_741_824))]
    pub blob_threshold_bytes: u64,

    /// This host's name in the leases it holds [default: machine name,
    /// process id and a random suffix]; unique among hosts sharing a database.
    #[arg(long, env = "TASKFLOW_HOST_ID")]
    pub host_id: Option<String>,

    /// Acknowledge a change only once its journal write is fsynced, and
    /// flush task files before their journal goes (survives power loss, not
    /// only process crashes; slower).
    #[arg(long, env = "TASKFLOW_FSYNC", default_value_t = false, action = clap::ArgAction::Set)]
    pub fsync: bool,

    /// Default timeout of one task attempt, in milliseconds.
    #[arg(long, env = "TASKFLOW_TASK_TIMEOUT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub task_timeout_ms: u64,

    /// Default memory cap of a task, in MiB.
    #[arg(long, env = "TASKFLOW_TASK_MEMORY_MB", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub task_memory_mb: u64,

    /// Largest memory cap any plugin may be given, in MiB.
    #[arg(long, env = "TASKFLOW_MAX_MEMORY_MB", default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_memory_mb: u64,

    /// Fuel per task (instruction budget); off when unset.
    #[arg(long, env = "TASKFLOW_TASK_FUEL")]
    pub task_fuel: Option<u64>,

    /// Largest request body, in bytes (plugin uploads may be larger, see
    /// --max-plugin-bytes).
    #[arg(long, env = "TASKFLOW_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Bearer token required on every endpoint but /health, /ready and /metrics.
    #[arg(long, env = "TASKFLOW_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// Bearer token required to upload or remove plugins, back up and restore.
    #[arg(long, env = "TASKFLOW_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Time running tasks get to finish on shutdown, in seconds.
    #[arg(long, env = "TASKFLOW_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    /// Base of the exponential retry backoff, in milliseconds.
    #[arg(long, env = "TASKFLOW_RETRY_BASE_MS", default_value_t = 500)]
    pub retry_base_ms: u64,

    /// How long a completed task is kept after it finished: a number with
    /// `s`, `m`, `h` or `d` (`90m`, `7d`), or `forever`.
    #[arg(long, env = "TASKFLOW_RETAIN_COMPLETED", default_value = "7d", value_parser = parse_age)]
    pub retain_completed: Age,

    /// How long a failed task is kept after it finished (as `TASKFLOW_RETAIN_COMPLETED`).
    #[arg(long, env = "TASKFLOW_RETAIN_FAILED", default_value = "30d", value_parser = parse_age)]
    pub retain_failed: Age,

    /// How long a cancelled task is kept after it finished (as `TASKFLOW_RETAIN_COMPLETED`).
    #[arg(long, env = "TASKFLOW_RETAIN_CANCELLED", default_value = "30d", value_parser = parse_age)]
    pub retain_cancelled: Age,

    /// Age past which a body in the blob store that no task points to is
    /// deleted (as `TASKFLOW_RETAIN_COMPLETED`, not `forever`).
    #[arg(long, env = "TASKFLOW_RETAIN_ORPHANED_BODIES", default_value = "1h", value_parser = parse_age)]
    pub retain_orphaned_bodies: Age,

    /// How often the retention job runs, in seconds.
    #[arg(long, env = "TASKFLOW_RETENTION_INTERVAL_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub retention_interval_secs: u64,

    /// Disable the pooling instance allocator.
    #[arg(long, env = "TASKFLOW_NO_POOLING", default_value_t = false, action = clap::ArgAction::Set)]
    pub no_pooling: bool,

    /// Longest a plugin may take to compile, in seconds; a compiler still
    /// running then is stopped and that version rejected.
    #[arg(long, env = "TASKFLOW_COMPILE_TIMEOUT_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub compile_timeout_secs: u64,

    /// The `taskflow` executable to compile plugins in, as a child process
    /// (see [`RuntimeConfig::compiler`]). Set by `taskflow serve` to itself;
    /// a host embedded in another program compiles in its own process.
    #[arg(skip)]
    pub compiler: Option<PathBuf>,
}

/// Where tasks wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueueBackend {
    /// In-process priority heap (embedded default).
    Local,
    /// The PostgreSQL tasks table, shared by every host (needs `--storage postgres`).
    Postgres,
    /// Amazon SQS, one queue per priority band (needs `--storage postgres`).
    Sqs,
}

/// Where large payloads and results are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BlobBackend {
    /// In the task record, whatever their size (embedded default).
    Inline,
    /// In Amazon S3, bucket `TASKFLOW_S3_BUCKET`.
    S3,
}

/// Where task records live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StorageBackend {
    /// Sharded JSON files under the data directory (embedded default).
    Files,
    /// PostgreSQL at `TASKFLOW_DATABASE_URL`.
    Postgres,
}

/// A setting that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl ServeConfig {
    /// Checks settings that depend on each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.task_memory_mb > self.max_memory_mb {
            return Err(ConfigError(format!(
                "TASKFLOW_TASK_MEMORY_MB ({}) is above TASKFLOW_MAX_MEMORY_MB ({})",
                self.task_memory_mb, self.max_memory_mb
            )));
        }
        if self.storage == StorageBackend::Postgres
            && !self.postgres.database_url.as_deref().is_some_and(|url| {
                url.starts_with("postgres://") || url.starts_with("postgresql://")
            })
        {
            return Err(ConfigError(
                "TASKFLOW_STORAGE=postgres needs TASKFLOW_DATABASE_URL, a postgres:// URL such as postgres://user@127.0.0.1:5432/taskflow".into(),
            ));
        }
        if self.storage != StorageBackend::Postgres {
            for (set, name) in [
                (self.postgres.database_ca.is_some(), "TASKFLOW_DATABASE_CA"),
                (
                    self.postgres.database_secret.is_some(),
                    "TASKFLOW_DATABASE_SECRET",
                ),
            ] {
                if set {
                    return Err(ConfigError(format!(
                        "{name} is set but TASKFLOW_STORAGE is not postgres: set TASKFLOW_STORAGE=postgres or unset {name}"
                    )));
                }
            }
        }
        if self.queue == QueueBackend::Postgres && self.storage != StorageBackend::Postgres {
            return Err(ConfigError(
                "TASKFLOW_QUEUE=postgres needs TASKFLOW_STORAGE=postgres: the queue is the PostgreSQL tasks table".into(),
            ));
        }
        if self.queue == QueueBackend::Sqs {
            if self.storage != StorageBackend::Postgres {
                return Err(ConfigError(
                    "TASKFLOW_QUEUE=sqs needs TASKFLOW_STORAGE=postgres: the messages carry task ids, the tasks live in PostgreSQL".into(),
                ));
            }
            taskflow_aws::sqs::parse_bands(&self.sqs.sqs_bands)
                .map_err(|e| ConfigError(format!("TASKFLOW_SQS_BANDS: {e}")))?;
            let prefix_ok = !self.sqs.sqs_queue_prefix.is_empty()
                && self.sqs.sqs_queue_prefix.len() <= 60
                && self
                    .sqs
                    .sqs_queue_prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !prefix_ok {
                return Err(ConfigError(
                    "TASKFLOW_SQS_QUEUE_PREFIX must be 1 to 60 letters, digits, '-' or '_' (SQS queue names)".into(),
                ));
            }
        }
        if self.blobs == BlobBackend::S3 {
            let bucket = self.s3.s3_bucket.as_deref().unwrap_or_default();
            if bucket.is_empty() {
                return Err(ConfigError(
                    "TASKFLOW_BLOBS=s3 needs TASKFLOW_S3_BUCKET, the name of an existing bucket"
                        .into(),
                ));
            }
            if !valid_bucket_name(bucket) {
                return Err(ConfigError(format!(
                    "TASKFLOW_S3_BUCKET {:?} is not a bucket name: 3 to 63 lowercase letters, digits, '.' or '-', starting and ending with a letter or digit",
                    bucket.chars().take(80).collect::<String>()
                )));
            }
        }
        if self
            .host_id
            .as_deref()
            .is_some_and(|id| id.is_empty() || id.len() > 200)
        {
            return Err(ConfigError(
                "TASKFLOW_HOST_ID must be 1 to 200 characters".into(),
            ));
        }
        if self.retain_orphaned_bodies.0.is_none() {
            return Err(ConfigError(
                "TASKFLOW_RETAIN_ORPHANED_BODIES cannot be forever: a body no task points to is never read again".into(),
            ));
        }
        if self.workers == Some(0) {
            return Err(ConfigError("TASKFLOW_WORKERS must be at least 1".into()));
        }
        if self.max_body_bytes < 1024 {
            return Err(ConfigError(
                "TASKFLOW_MAX_BODY_BYTES must be at least 1024".into(),
            ));
        }
        for (name, token) in [
            ("TASKFLOW_API_TOKEN", &self.api_token),
            ("TASKFLOW_ADMIN_TOKEN", &self.admin_token),
        ] {
            if token.as_ref().is_some_and(|t| t.len() < 16) {
                return Err(ConfigError(format!(
                    "{name} must be at least 16 characters"
                )));
            }
        }
        Ok(())
    }

    /// The blob threshold in bytes.
    pub fn blob_threshold(&self) -> usize {
        usize::try_from(self.blob_threshold_bytes).unwrap_or(usize::MAX)
    }

    /// The plugin directory.
    pub fn plugin_dir(&self) -> PathBuf {
        self.plugin_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("plugins"))
    }

    /// Directory of the task files.
    pub fn tasks_dir(&self) -> PathBuf {
        self.data_dir.join("tasks")
    }

    /// Directory of backups written by `POST /admin/backup` and `taskflow backup`.
    pub fn backup_dir(&self) -> PathBuf {
        self.data_dir.join("backups")
    }

    /// Directory of compiled plugin artifacts.
    pub fn cache_dir(&self) -> PathBuf {
        self.data_dir.join("cache")
    }

    /// Worker count: by default four per CPU on local storage, sixteen on
    /// PostgreSQL. A worker spends much of a short task waiting on storage
    /// writes (on PostgreSQL, on round trips to another process), so more
    /// workers than cores keep the cores busy; CPU-heavy tasks still share
    /// the cores fairly because guest code yields at every epoch tick.
    pub fn worker_count(&self) -> usize {
        let per_cpu = match self.storage {
            StorageBackend::Files => 4,
            StorageBackend::Postgres => 16,
        };
        self.workers.unwrap_or_else(|| {
            per_cpu
                * std::thread::available_parallelism()
                    .map(usize::from)
                    .unwrap_or(2)
        })
    }

    /// How long finished tasks are kept, and how the retention job runs.
    pub fn retention(&self) -> crate::service::Retention {
        crate::service::Retention {
            completed: self.retain_completed.0,
            failed: self.retain_failed.0,
            cancelled: self.retain_cancelled.0,
            orphaned_bodies: self
                .retain_orphaned_bodies
                .0
                .unwrap_or(crate::service::Retention::default().orphaned_bodies),
            interval: Duration::from_secs(self.retention_interval_secs),
        }
    }

    /// Runtime settings.
    pub fn runtime_config(&self) -> RuntimeConfig {
        let mb = |v: u64| {
            usize::try_from(v)
                .unwrap_or(usize::MAX)
                .saturating_mul(1024 * 1024)
        };
        let workers = u32::try_from(self.worker_count()).unwrap_or(u32::MAX);
        RuntimeConfig {
            pooling: !self.no_pooling,
            // Every worker holds one instance at a time; leave headroom for
            // instances still being torn down.
            max_concurrent_instances: workers.saturating_mul(2).max(64),
            max_memory_bytes: mb(self.max_memory_mb),
            fuel: self.task_fuel,
            compiler: self.compiler.clone(),
            compile_timeout: Duration::from_secs(self.compile_timeout_secs),
            default_limits: Limits {
                timeout: Duration::from_millis(self.task_timeout_ms),
                memory_bytes: mb(self.task_memory_mb),
                ..Limits::default()
            },
            ..RuntimeConfig::default()
        }
    }
}

/// How long something is kept: `None` for forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Age(pub Option<Duration>);

/// Parses an [`Age`]: a whole number with a unit (`30s`, `90m`, `12h`,
/// `7d`), or `forever`.
pub fn parse_age(text: &str) -> Result<Age, String> {
    if text == "forever" {
        return Ok(Age(None));
    }
    let invalid = || {
        format!(
            "{text:?} is not an age: write a whole number with s, m, h or d (e.g. 90m, 7d), or forever"
        )
    };
    let unit_at = text.len().checked_sub(1).ok_or_else(invalid)?;
    let (number, unit) = text.split_at(unit_at);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(invalid()),
    };
    number
        .checked_mul(seconds)
        .filter(|s| *s <= 100 * 365 * 86_400)
        .map(|s| Age(Some(Duration::from_secs(s))))
        .ok_or_else(|| format!("{text:?} is longer than 100 years: write forever"))
}

/// Whether `name` follows S3's rules for bucket names.
fn valid_bucket_name(name: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && edge(name.chars().next())
        && edge(name.chars().last())
        && !name.contains("..")
}
