//! Task storage: every status change of every task is persisted through
//! [`TaskStore`]. The embedded default (`taskflow-files`: sharded JSON
//! files) and PostgreSQL (`taskflow-postgres`) implement it; [`lease`] holds
//! the claim and lease rules every store shares.

pub mod lease;

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};

use taskflow_model::task::{Task, TaskId, TaskStatus};

pub use lease::{
    Change, ChangeFn, Claim, Claimed, Held, LeaseState, Published, Renewed, Saved, Updated,
};
pub use taskflow_model::api::{HostBeat, StatusCounts, TaskPage};
pub use taskflow_model::query::{ListFacts, ListQuery};

/// Position in submission order, as handed to clients in `next_cursor`.
///
/// It carries the id as well as the sequence so that two tasks sharing a
/// sequence (e.g. restored next to live ones) are neither skipped nor repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    /// Sequence of the last task on the page.
    pub sequence: u64,
    /// Id of the last task on the page.
    pub id: TaskId,
}

impl Cursor {
    /// The cursor just after `task`.
    pub fn after(task: &Task) -> Self {
        Self {
            sequence: task.sequence,
            id: task.id,
        }
    }

    /// The opaque string form.
    pub fn encode(&self) -> String {
        format!("{}_{}", self.sequence, self.id)
    }

    /// Parses a string made by [`encode`](Cursor::encode).
    pub fn decode(cursor: &str) -> Result<Self, StorageError> {
        let invalid = || StorageError::InvalidCursor(cursor.chars().take(100).collect());
        let (sequence, id) = cursor.split_once('_').ok_or_else(invalid)?;
        Ok(Self {
            sequence: sequence.parse().map_err(|_| invalid())?,
            id: id.parse().map_err(|_| invalid())?,
        })
    }
}

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A file-system operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "write".
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A stored task could not be parsed.
    #[error("{} does not hold a valid task ({source}); move it aside or restore it from a backup", path.display())]
    Corrupt {
        /// The offending file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A task could not be encoded as JSON.
    #[error("cannot encode {what} as JSON: {source}")]
    Encode {
        /// What was being encoded, e.g. "task 3f2b…".
        what: String,
        /// The encoding error.
        #[source]
        source: serde_json::Error,
    },
    /// A list cursor that this store did not hand out.
    #[error(
        "invalid cursor {0:?}: pass the next_cursor of the previous page unchanged, or no cursor for the first page"
    )]
    InvalidCursor(String),
    /// A list limit of zero.
    #[error("limit must be at least 1")]
    InvalidLimit,
    /// A file that is not a usable backup.
    #[error("{} is not a usable TaskFlow backup: {reason}", path.display())]
    InvalidBackup {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Another host has the store open (names the store, e.g. its directory).
    #[error(
        "{0} is in use by another TaskFlow host; stop it, or give this host a store of its own"
    )]
    InUse(String),
    /// The backend cannot serve requests.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A write was sent to be committed and its answer was lost: it may or
    /// may not be stored.
    #[error("the outcome of a commit is unknown: {0}")]
    OutcomeUnknown(String),
}

/// One task of a submission: the task, and whether it was created now
/// (`false`: an earlier submission with the same idempotency key exists).
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The task.
    pub task: Task,
    /// `false` when an earlier submission with the same idempotency key exists.
    pub created: bool,
}

/// A task deleted by retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    /// The task.
    pub id: TaskId,
    /// Keys of its bodies in the blob store, if it kept any there.
    pub blobs: Vec<String>,
}

impl Expired {
    /// What deleting `task` leaves to delete in the blob store.
    pub fn of(task: &Task) -> Self {
        Self {
            id: task.id,
            blobs: task.blobs().map(|blob| blob.key.clone()).collect(),
        }
    }
}

/// Persistent task metadata, shared by the API and the workers. Used as
/// `Arc<dyn TaskStore>`.
#[async_trait::async_trait]
pub trait TaskStore: Send + Sync {
    /// Creates or replaces the task; durable when this returns.
    async fn save(&self, task: &Task) -> Result<(), StorageError>;

    /// Accepts new tasks, all or none, durable when this returns. Each gets
    /// the next submission sequence number of the store, unless its
    /// idempotency key is stored already: then the stored task is returned
    /// in its place and nothing is written for it. Calls racing with one key
    /// create one task, whichever host of the store they come from.
    async fn insert(&self, tasks: Vec<Task>) -> Result<Vec<Submitted>, StorageError>;

    /// Saves a task read from a backup, keeping its sequence number; later
    /// submissions are numbered after it.
    async fn restore(&self, task: &Task) -> Result<(), StorageError>;

    /// The task with `id`, if stored.
    async fn load(&self, id: TaskId) -> Result<Option<Task>, StorageError>;

    /// Deletes the task; `false` when it was not stored.
    async fn delete(&self, id: TaskId) -> Result<bool, StorageError>;

    /// One page of tasks matching `query`, in submission order.
    async fn list(&self, query: &ListQuery) -> Result<TaskPage, StorageError>;

    /// Every stored task in submission order (recovery and backup).
    async fn all(&self) -> Result<Vec<Task>, StorageError>;

    /// The task submitted with this idempotency key, if any.
    async fn find_by_idempotency_key(&self, key: &str) -> Result<Option<Task>, StorageError>;

    /// How many tasks are in each status.
    async fn counts(&self) -> Result<StatusCounts, StorageError>;

    /// Whether the store can take changes now (readiness).
    async fn check(&self) -> Result<(), StorageError>;

    /// Reads the task with `id` under a lock on it, lets `change` edit it
    /// and say what to write, and writes that, atomically with respect to
    /// every other `update` and [`save_leased`](Self::save_leased) from any
    /// host; `None` when there is no such task.
    async fn update(&self, id: TaskId, change: ChangeFn) -> Result<Option<Updated>, StorageError>;

    /// Claims the task `id` for `owner`, starting its next attempt under a
    /// lease of `ttl` and a new fencing token: the one claim of every
    /// queue's deliveries. A running task whose lease expired is taken over
    /// (or cancelled, or failed when no attempt is left).
    async fn claim(&self, id: TaskId, owner: &str, ttl: Duration) -> Result<Claim, StorageError> {
        lease::claim_by_update(self, id, owner, ttl).await
    }

    /// The lease holder's write: saves `task` only if it is still running in
    /// the store under the claim `token`; a status other than running ends
    /// the lease. A retry (`task` pending) saved after a cancel request is
    /// written cancelled ([`Saved::Cancelled`]); [`Saved::Lost`] (nothing
    /// written) when the lease was lost.
    async fn save_leased(&self, task: &Task, token: u64) -> Result<Saved, StorageError>;

    /// Extends, for `ttl` from now, the leases of `owner` that `held` lists
    /// and that it still holds, publishing their progress and log lines;
    /// those, with any cancel request on them.
    async fn renew(
        &self,
        owner: &str,
        held: &[Held],
        ttl: std::time::Duration,
    ) -> Result<Vec<Renewed>, StorageError>;

    /// Up to `limit` running tasks whose lease has expired (for the reaper).
    async fn expired(&self, limit: usize) -> Result<Vec<TaskId>, StorageError>;

    /// What the lease holder of a running task last published of it
    /// (`None` when it is not running).
    async fn published(&self, id: TaskId) -> Result<Option<Published>, StorageError>;

    /// The outbox of a queue outside the store (SQS), between the commit of
    /// a task and its message: records that the queue holds an entry for
    /// each of `ids`. A store that keeps no outbox (its queue is filled
    /// again from it at startup, or is the store itself) ignores it.
    async fn mark_enqueued(&self, _ids: &[TaskId]) -> Result<(), StorageError> {
        Ok(())
    }

    /// Claims up to `limit` pending tasks stored at least `age` ago and
    /// never marked enqueued, for this host's sweeper to send within
    /// `hold`: the sweepers of other hosts skip them meanwhile, and take
    /// them after it should this one stop before sending.
    async fn claim_unsent(
        &self,
        _age: std::time::Duration,
        _hold: std::time::Duration,
        _limit: usize,
    ) -> Result<Vec<Task>, StorageError> {
        Ok(Vec::new())
    }

    /// Retention: deletes up to `limit` tasks in the terminal `status` that
    /// finished before `finished_before`, oldest first, and says which
    /// (their bodies in a blob store are the caller's to delete). Tasks
    /// another call is deleting at that moment are skipped, not waited for.
    async fn expire(
        &self,
        status: TaskStatus,
        finished_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Expired>, StorageError>;

    /// Makes `owner` the one host that runs the fleet-wide `job` for `ttl`
    /// from now (again, if it is already); `false` while another host
    /// holds it. A store opened by one process only always says `true`.
    async fn lead(
        &self,
        _job: &str,
        _owner: &str,
        _ttl: std::time::Duration,
    ) -> Result<bool, StorageError> {
        Ok(true)
    }

    /// Records a host's heartbeat for the fleet's list of hosts (replacing
    /// its previous one), and forgets hosts silent since `forget_before`.
    async fn beat(&self, beat: &HostBeat, forget_before: DateTime<Utc>)
    -> Result<(), StorageError>;

    /// The hosts whose last heartbeat is at or after `since`, by name.
    async fn hosts(&self, since: DateTime<Utc>) -> Result<Vec<HostBeat>, StorageError>;

    /// Folds the changes of status counts written since the last call into
    /// the counts, where the store keeps counts that way; run by the one
    /// host leading the retention job.
    async fn compact_counts(&self) -> Result<(), StorageError> {
        Ok(())
    }
}

/// Maps an I/O error to [`StorageError::Io`] naming the action and path.
pub fn io_error(
    action: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> StorageError {
    let path = path.to_path_buf();
    move |source| StorageError::Io {
        action,
        path,
        source,
    }
}

/// Runs blocking file I/O on tokio's blocking pool, off the async executor.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StorageError::Unavailable(format!("storage I/O thread failed: {e}")))?
}
