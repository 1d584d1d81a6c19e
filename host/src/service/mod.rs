//! The task service: the one place where tasks change state. The HTTP API
//! calls it to submit, read and cancel; workers call it to run. Every change
//! is saved to storage before anyone is told about it.
//!
//! One concern per module, each an `impl TaskService` block:
//! - [`submission`]: validation, idempotency keys, all-or-none acceptance;
//! - [`execution`]: a delivery's run from start to its recorded outcome,
//!   retries and their backoff;
//! - [`recovery`]: startup recovery, restore from a backup, release on shutdown;
//! - [`reads`]: reading, listing and cancelling tasks, statistics;
//! - this module: the service's state and the locks every concern shares.

mod execution;
mod reads;
mod recovery;
mod submission;

pub use execution::backoff;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::AtomicU8;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Notify;
use utoipa::ToSchema;

use crate::queue::{Queue, QueueDepth, QueueError};
use crate::runtime::plugin::PluginInfo;
use crate::runtime::{PluginError, PluginRegistry, RegistryStats};
pub use crate::storage::Submitted;
pub use crate::storage::backup::RestoreSummary;
use crate::storage::{StatusCounts, StorageError, TaskStore};
use crate::task::{Task, TaskId, TaskStatus, ValidationError};
use crate::telemetry::Metrics;

/// Lock stripes serialising state changes of one task (see [`TaskService::lock`]).
const LOCK_STRIPES: usize = 256;

/// Why a service call failed. The API turns each into a status code.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A submitted field breaks a rule.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// The task names a plugin that is not loaded.
    #[error("no plugin named {0:?} is loaded; GET /plugins lists the loaded ones")]
    UnknownPlugin(String),
    /// No task with this id.
    #[error("no task with id {0}")]
    NotFound(TaskId),
    /// The task's status does not allow the operation.
    #[error("task {id} is {status}; only pending or running tasks can be cancelled")]
    NotCancellable {
        /// The task.
        id: TaskId,
        /// Its status.
        status: TaskStatus,
    },
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A plugin operation failed.
    #[error(transparent)]
    Plugin(#[from] PluginError),
}

/// A task as shown to clients: the record plus live progress while it runs.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct TaskView {
    /// The task record.
    #[serde(flatten)]
    pub task: Task,
    /// Percent done, as last reported by the plugin, while running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<u8>,
}

/// `GET /stats`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct Stats {
    /// Queued tasks by priority.
    pub queue: QueueDepth,
    /// Tasks running now.
    pub running: usize,
    /// Tasks by status.
    #[schema(value_type = HashMap<String, u64>)]
    pub tasks: StatusCounts,
    /// Worker count.
    pub workers: usize,
    /// Loaded plugins and their versions.
    pub plugins: Vec<PluginInfo>,
    /// Plugin registry counters.
    pub registry: RegistryStats,
    /// Seconds since the host started.
    pub uptime_seconds: u64,
}

/// What startup recovery did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Tasks queued again (pending, or running when the host stopped).
    pub requeued: usize,
    /// Of those, tasks that were running.
    pub interrupted: usize,
}

/// Settings of the service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Workers running tasks (reported in stats).
    pub workers: usize,
    /// Base of the exponential retry backoff.
    pub retry_base: Duration,
}

/// Why detached work did not produce its result.
enum DetachedError<E> {
    /// The work failed.
    Failed(E),
    /// The work's task panicked or was cancelled.
    Aborted(String),
}

impl<E> DetachedError<E> {
    /// The work's own error, or one made from the abort message.
    fn into_inner(self, from_abort: impl FnOnce(ServiceError) -> E) -> E {
        match self {
            Self::Failed(e) => e,
            Self::Aborted(why) => from_abort(ServiceError::Storage(StorageError::Unavailable(
                format!("the work was aborted: {why}"),
            ))),
        }
    }
}

impl From<DetachedError<ServiceError>> for ServiceError {
    fn from(error: DetachedError<ServiceError>) -> Self {
        error.into_inner(|e| e)
    }
}

/// A task a worker is running right now.
struct Running {
    cancel: Arc<Notify>,
    progress: Arc<AtomicU8>,
}

/// The task service. Cheap to share as `Arc<TaskService>`.
pub struct TaskService {
    queue: Arc<dyn Queue>,
    store: Arc<dyn TaskStore>,
    registry: Arc<PluginRegistry>,
    metrics: Arc<Metrics>,
    config: ServiceConfig,
    locks: Vec<tokio::sync::Mutex<()>>,
    restoring: tokio::sync::Mutex<()>,
    running: Mutex<HashMap<TaskId, Running>>,
    /// Cancelled tasks whose cancellation could not be saved yet.
    unsaved_cancels: Mutex<std::collections::HashSet<TaskId>>,
    started_at: Instant,
}

impl std::fmt::Debug for TaskService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskService")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
impl TaskService {
    /// A service over the given backends.
    pub fn new(
        queue: Arc<dyn Queue>,
        store: Arc<dyn TaskStore>,
        registry: Arc<PluginRegistry>,
        metrics: Arc<Metrics>,
        config: ServiceConfig,
    ) -> Self {
        Self {
            queue,
            store,
            registry,
            metrics,
            config,
            locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            restoring: tokio::sync::Mutex::new(()),
            running: Mutex::new(HashMap::new()),
            unsaved_cancels: Mutex::new(std::collections::HashSet::new()),
            started_at: Instant::now(),
        }
    }

    /// The plugin registry.
    pub fn registry(&self) -> &Arc<PluginRegistry> {
        &self.registry
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The queue.
    pub fn queue(&self) -> &Arc<dyn Queue> {
        &self.queue
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn TaskStore> {
        &self.store
    }

    /// Runs `work` in its own task and waits for it. A request whose client
    /// hangs up is dropped at its next await; work that must not stop half
    /// way (save, then queue) runs detached from it.
    async fn detached<T, E, F, Fut>(self: &Arc<Self>, work: F) -> Result<T, DetachedError<E>>
    where
        F: FnOnce(Arc<Self>) -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        // Keeps the request's span, so the work's log lines carry its request id.
        let work = tracing::Instrument::instrument(work(self.clone()), tracing::Span::current());
        match tokio::spawn(work).await {
            Ok(result) => result.map_err(DetachedError::Failed),
            Err(e) => Err(DetachedError::Aborted(e.to_string())),
        }
    }

    /// Tasks running now.
    pub fn running_count(&self) -> usize {
        self.running_lock().len()
    }

    /// Serialises state changes of one task (worker start/finish, cancel),
    /// so a cancel cannot be overwritten by a worker that read the task just
    /// before it.
    async fn lock(&self, id: TaskId) -> tokio::sync::MutexGuard<'_, ()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut hasher);
        self.locks[(hasher.finish() as usize) % LOCK_STRIPES]
            .lock()
            .await
    }

    fn running_lock(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, Running>> {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn unsaved_cancels(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<TaskId>> {
        self.unsaved_cancels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
