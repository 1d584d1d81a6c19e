//! The task service: the one place where tasks change state. The HTTP API
//! calls it to submit, read and cancel; workers call it to run. Every change
//! is saved to storage before anyone is told about it.
//!
//! One concern per module, each an `impl TaskService` block:
//! - [`submission`]: validation, idempotency keys, all-or-none acceptance;
//! - [`execution`]: a delivery's run from start to its recorded outcome,
//!   retries and their backoff;
//! - [`leases`]: ownership of running tasks: the claim, the heartbeat that
//!   renews this host's leases, the reaper that takes back expired ones;
//! - [`recovery`]: startup recovery, restore from a backup, release on shutdown;
//! - [`reads`]: reading, listing, cancelling and retrying tasks, their
//!   logs, statistics;
//! - [`hosts`]: this host's heartbeat in the fleet's list of hosts;
//! - [`plugins`]: plugin upload and removal, shared with the fleet;
//! - [`outbox`]: sending what was stored but never queued (SQS);
//! - [`retention`]: deleting finished tasks past their age, and their bodies;
//! - this module: the service's state.
//!
//! Nothing that decides who runs a task lives in this host's memory: a task
//! runs under a lease in the store, and every write of its outcome is
//! conditional on still holding it. The map of tasks running here only
//! serves to renew their leases, interrupt them and show their progress.

mod execution;
mod hosts;
mod leases;
mod outbox;
mod plugins;
mod reads;
mod recovery;
mod retention;
mod submission;

pub use execution::backoff;
pub use retention::{Retained, Retention, SweepCursor};

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use taskflow_backend::blobs::{BlobError, ClaimCheck};
use taskflow_backend::queue::{Queue, QueueError};
pub use taskflow_backend::storage::Submitted;
use taskflow_backend::storage::{StorageError, TaskStore};
pub use taskflow_model::api::{HostStats, Stats, SystemStats, TaskView};
use taskflow_model::task::{TaskId, TaskStatus, ValidationError};
use taskflow_runtime::{PluginError, PluginRegistry};

pub use crate::backup::RestoreSummary;
use crate::metrics::Metrics;

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
    /// The task's status does not allow a retry (the message says why).
    #[error("task {id} cannot be retried: {reason}")]
    NotRetryable {
        /// The task.
        id: TaskId,
        /// Why not.
        reason: String,
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
    /// The blob store of large bodies failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
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
    /// This host's name in the leases it holds; unique among the hosts
    /// sharing a store.
    pub owner: String,
    /// How long a lease lasts unless renewed: a task whose host stopped
    /// runs again elsewhere after about this long.
    pub lease: Duration,
    /// How long finished tasks are kept.
    pub retention: Retention,
}

impl ServiceConfig {
    /// Settings with a lease of `lease` and a fresh host name.
    pub fn new(workers: usize, retry_base: Duration, lease: Duration) -> Self {
        Self {
            workers,
            retry_base,
            owner: host_name(),
            lease,
            retention: Retention::default(),
        }
    }
}

/// A name for this host process, unique among the hosts sharing a store:
/// the machine's name, the process id and a random suffix.
pub fn host_name() -> String {
    let machine = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "host".into());
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
    format!("{machine}-{}-{suffix}", std::process::id())
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
    /// The claim's fencing token.
    token: u64,
    /// The queue delivery it came with (kept invisible while it runs).
    delivery: taskflow_backend::queue::Delivery,
    /// Stops the run: a cancel, or the lease lost (then `lost` is set).
    stop: Arc<Notify>,
    lost: Arc<AtomicBool>,
    /// Its progress and log lines so far.
    live: Arc<taskflow_runtime::Live>,
}

/// The task service. Cheap to share as `Arc<TaskService>`.
pub struct TaskService {
    queue: Arc<dyn Queue>,
    store: Arc<dyn TaskStore>,
    registry: Arc<PluginRegistry>,
    metrics: Arc<Metrics>,
    config: ServiceConfig,
    restoring: tokio::sync::Mutex<()>,
    running: Mutex<HashMap<TaskId, Running>>,
    /// The fleet's plugins, on shared backends.
    catalog: Option<taskflow_postgres::PluginCatalog>,
    /// Where large payloads and results are kept.
    bodies: ClaimCheck,
    /// When this host last saw the store fail (the reaper holds off after).
    store_trouble: leases::StoreTrouble,
    started_at: Instant,
    /// The attempts run here since start, by plugin version.
    runs: hosts::RunCounts,
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
            restoring: tokio::sync::Mutex::new(()),
            running: Mutex::new(HashMap::new()),
            catalog: None,
            bodies: ClaimCheck::inline(),
            store_trouble: leases::StoreTrouble::default(),
            started_at: Instant::now(),
            runs: hosts::RunCounts::default(),
        }
    }

    /// Keeps large payloads and results as `bodies` says.
    pub fn with_claim_check(mut self, bodies: ClaimCheck) -> Self {
        self.bodies = bodies;
        self
    }

    /// The plugin registry (the host watches its directory; the API lists
    /// plugins through [`plugins`](Self::plugins)).
    pub fn registry(&self) -> &Arc<PluginRegistry> {
        &self.registry
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The queue (the workers take their deliveries from it).
    pub fn queue(&self) -> &Arc<dyn Queue> {
        &self.queue
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

    /// This host's settings.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    fn running_lock(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, Running>> {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
