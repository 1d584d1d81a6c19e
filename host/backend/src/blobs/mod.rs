//! Blobs: bytes kept by key outside the task records. Payloads and results
//! too large for a record (a claim check, see [`ClaimCheck`]) and the bytes
//! of the fleet's plugins.
//!
//! [`BlobStore`] is the seam; `taskflow-aws`' S3 store (`TASKFLOW_BLOBS=s3`)
//! and `taskflow-postgres`' table (for plugin bytes when there is no S3)
//! implement it. Keys are spread over prefixes by the task id's first two
//! hex digits, as S3 likes them:
//!
//! | what | key |
//! |---|---|
//! | a payload | `payloads/<shard>/<task id>` |
//! | a result | `results/<shard>/<task id>/<lease token>` |
//! | an attempt's whole log | `logs/<shard>/<task id>/<attempt>-<lease token>` |
//! | a plugin | `plugins/<sha-256>.wasm` |
//!
//! The keys of results and logs name the claim that wrote them, so a host
//! that lost its lease can never overwrite what the host that took the task
//! over wrote.

mod claim_check;

use bytes::Bytes;
use chrono::{DateTime, Utc};

pub use claim_check::{ClaimCheck, DEFAULT_THRESHOLD};

use taskflow_model::task::TaskId;

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The blob store cannot serve requests now.
    #[error("blob store unavailable: {0}")]
    Unavailable(String),
    /// A blob a task record points to is not in the store.
    #[error("blob {0} is not in the blob store")]
    Missing(String),
    /// A blob whose bytes differ from what its record says.
    #[error("blob {key} does not match its record: {reason}")]
    Corrupt {
        /// Its key.
        key: String,
        /// What differs.
        reason: String,
    },
    /// A record points to a blob but this host has no blob store.
    #[error(
        "task {0} keeps a body in the blob store, and this host has none: start it with the fleet's TASKFLOW_BLOBS settings"
    )]
    NoStore(TaskId),
}

/// Bytes by key. Used as `Arc<dyn BlobStore>`.
#[async_trait::async_trait]
pub trait BlobStore: Send + Sync {
    /// Stores `bytes` under `key`, replacing what was there; durable when
    /// this returns.
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), BlobError>;

    /// The bytes under `key`; `None` when there are none.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, BlobError>;

    /// Deletes what is under `key`; nothing there is not an error.
    async fn delete(&self, key: &str) -> Result<(), BlobError>;

    /// Deletes what is under each of `keys`; as [`delete`](Self::delete),
    /// in as few requests as the store allows.
    async fn delete_many(&self, keys: &[String]) -> Result<(), BlobError> {
        for key in keys {
            self.delete(key).await?;
        }
        Ok(())
    }

    /// Up to `limit` blobs whose keys start with `prefix`, in key order,
    /// from just after `after` (from the first when `None`).
    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Listed>, BlobError>;

    /// Whether the store answers now (readiness).
    async fn check(&self) -> Result<(), BlobError>;
}

/// A blob as [`BlobStore::list`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its key.
    pub key: String,
    /// When it was last written.
    pub written_at: DateTime<Utc>,
}

/// Prefixes of the blobs of tasks (payloads, results and logs).
pub const TASK_PREFIXES: [&str; 3] = ["payloads/", "results/", "logs/"];

/// The task whose blob is under `key` (a payload, result or log key), if it
/// is one.
pub fn task_of_key(key: &str) -> Option<TaskId> {
    let rest = TASK_PREFIXES
        .iter()
        .find_map(|prefix| key.strip_prefix(prefix))?;
    rest.split('/').nth(1)?.parse().ok()
}

/// Key of a task's payload.
pub fn payload_key(id: TaskId) -> String {
    format!("payloads/{}/{id}", id.shard())
}

/// Key of the result a claim (`token`) of a task wrote.
pub fn result_key(id: TaskId, token: u64) -> String {
    format!("results/{}/{id}/{token}", id.shard())
}

/// Key of the whole log of attempt `number` of a task, written by the
/// claim `token`.
pub fn log_key(id: TaskId, number: u32, token: u64) -> String {
    format!("logs/{}/{id}/{number}-{token}", id.shard())
}

/// Key of a plugin's bytes, by their SHA-256.
pub fn plugin_key(digest: &str) -> String {
    format!("plugins/{digest}.wasm")
}
