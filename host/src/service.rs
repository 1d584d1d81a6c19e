//! The task service: the one place where tasks change state. The HTTP API
//! calls it to submit, read and cancel; workers call it to run. Every change
//! is saved to storage before anyone is told about it.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use rand::Rng;
use serde::Serialize;
use tokio::sync::Notify;
use utoipa::ToSchema;

use crate::queue::{Delivery, Queue, QueueDepth, QueueEntry, QueueError};
use crate::runtime::plugin::PluginInfo;
use crate::runtime::{Failure, FailureKind, Limits, PluginError, PluginRegistry, RegistryStats, TaskInput};
use crate::storage::{ListQuery, StatusCounts, StorageError, TaskPage, TaskStore};
pub use crate::storage::backup::RestoreSummary;
use crate::task::{NewTask, Task, TaskError, TaskId, TaskOutput, TaskStatus, ValidationError};
use crate::telemetry::{Gauges, Metrics};

/// Longest retry backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Lock stripes serialising state changes of one task (see [`TaskService::lock`]).
const LOCK_STRIPES: usize = 256;
/// Delay before retrying a delivery that hit a storage error.
const STORAGE_RETRY_DELAY: Duration = Duration::from_secs(1);
/// Tries at saving a task's outcome before giving the task back to the queue.
const FINISH_SAVE_ATTEMPTS: u32 = 5;

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

/// A submission's outcome: the task, and whether it was created now (or
/// already existed under the same idempotency key).
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The task.
    pub task: Task,
    /// `false` when an earlier submission with the same idempotency key exists.
    pub created: bool,
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
            Self::Aborted(why) => from_abort(ServiceError::Storage(StorageError::Unavailable(format!("the work was aborted: {why}")))),
        }
    }
}

impl From<DetachedError<ServiceError>> for ServiceError {
    fn from(error: DetachedError<ServiceError>) -> Self {
        error.into_inner(|e| e)
    }
}

/// One run of a task's plugin: the version that ran (none when the plugin
/// was gone) and what it produced.
#[derive(Clone)]
struct Attempt {
    digest: Option<String>,
    result: Result<crate::runtime::Success, Failure>,
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
    sequence: AtomicU64,
    locks: Vec<tokio::sync::Mutex<()>>,
    idempotency: tokio::sync::Mutex<()>,
    restoring: tokio::sync::Mutex<()>,
    running: Mutex<HashMap<TaskId, Running>>,
    /// Cancelled tasks whose cancellation could not be saved yet.
    unsaved_cancels: Mutex<std::collections::HashSet<TaskId>>,
    started_at: Instant,
}

impl std::fmt::Debug for TaskService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskService").field("config", &self.config).finish_non_exhaustive()
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
            sequence: AtomicU64::new(1),
            locks: (0..LOCK_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            idempotency: tokio::sync::Mutex::new(()),
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

    /// Startup: continues the submission sequence after the stored tasks and
    /// queues again every task that was pending, or running when the host
    /// stopped, in priority order. A task that was running on its last
    /// allowed attempt fails instead: if it is what brought the host down,
    /// running it again would bring it down again.
    pub async fn recover(&self) -> Result<Recovery, ServiceError> {
        let mut tasks = self.store.all().await?;
        let next = tasks.iter().map(|t| t.sequence).max().map_or(1, |max| max.saturating_add(1));
        self.sequence.fetch_max(next, Ordering::SeqCst);
        tasks.retain(|t| matches!(t.status, TaskStatus::Pending | TaskStatus::Running));
        tasks.sort_by_key(|t| (t.priority, t.sequence));
        let mut recovery = Recovery::default();
        for mut task in tasks {
            if task.status == TaskStatus::Running {
                recovery.interrupted += 1;
                let attempts_left = task.attempts < task.max_attempts;
                task.status = if attempts_left { TaskStatus::Pending } else { TaskStatus::Failed };
                task.finished_at = (!attempts_left).then(Utc::now);
                task.last_error = Some(TaskError {
                    kind: FailureKind::Interrupted,
                    message: if attempts_left {
                        "the host stopped while this task ran; it was queued again".into()
                    } else {
                        "the host stopped while this task ran its last attempt".into()
                    },
                });
                self.store.save(&task).await?;
                if !attempts_left {
                    continue;
                }
            }
            let delay = task.retry_at.and_then(|at| (at - Utc::now()).to_std().ok()).unwrap_or_default();
            self.queue.push(QueueEntry::from(&task), delay).await?;
            recovery.requeued += 1;
        }
        Ok(recovery)
    }

    /// Restores tasks from a backup: saves them (replacing finished tasks
    /// with the same id), queues the pending ones, and continues the
    /// submission sequence after them. A task that is pending or running here
    /// is left alone, so a restore never runs a task twice at once.
    ///
    /// The work runs in its own task, detached from the request, one
    /// restore at a time.
    pub async fn restore(self: &Arc<Self>, tasks: Vec<Task>) -> Result<RestoreSummary, ServiceError> {
        // Check everything before writing anything: a bad backup changes nothing.
        for task in &tasks {
            task.check_restorable()?;
        }
        self.detached(|this| async move {
            let _one_at_a_time = this.restoring.lock().await;
            if let Some(max) = tasks.iter().map(|t| t.sequence).max() {
                this.sequence.fetch_max(max.saturating_add(1), Ordering::SeqCst);
            }
            let mut summary = RestoreSummary { restored: 0, queued: 0, skipped: 0 };
            for task in tasks {
                let _guard = this.lock(task.id).await;
                if this.store.load(task.id).await?.is_some_and(|live| !live.status.is_terminal()) {
                    summary.skipped += 1;
                    continue;
                }
                let task = crate::storage::backup::as_restored(task);
                this.store.save(&task).await?;
                summary.restored += 1;
                if task.status == TaskStatus::Pending {
                    this.queue.push(QueueEntry::from(&task), Duration::ZERO).await?;
                    summary.queued += 1;
                }
            }
            tracing::info!(restored = summary.restored, queued = summary.queued, skipped = summary.skipped, "backup restored");
            Ok(summary)
        })
        .await
        .map_err(ServiceError::from)
    }

    /// Validates and accepts a task: saved, then queued. A task with an
    /// idempotency key that was seen before returns the earlier task.
    pub async fn submit(self: &Arc<Self>, new: NewTask) -> Result<Submitted, ServiceError> {
        let mut submitted = self.submit_all(vec![new]).await.map_err(|(_, e)| e)?;
        submitted.pop().ok_or_else(|| ServiceError::Storage(StorageError::Unavailable("nothing was accepted".into())))
    }

    /// Accepts many tasks, all or none: every one is validated before any is
    /// saved, and they are saved together (a failure saves none of them).
    /// On error, the index names the offending task.
    pub async fn submit_batch(self: &Arc<Self>, batch: Vec<NewTask>) -> Result<Vec<Submitted>, (usize, ServiceError)> {
        let mut seen_keys = std::collections::HashSet::new();
        for (index, new) in batch.iter().enumerate() {
            if let Some(key) = &new.idempotency_key
                && !seen_keys.insert(key.clone())
            {
                return Err((
                    index,
                    ServiceError::Validation(ValidationError {
                        field: "idempotency_key",
                        message: format!("{key:?} appears twice in the batch"),
                    }),
                ));
            }
        }
        self.submit_all(batch).await
    }

    async fn submit_all(self: &Arc<Self>, batch: Vec<NewTask>) -> Result<Vec<Submitted>, (usize, ServiceError)> {
        // Validate first: an invalid request is rejected even if its key is known.
        let tasks = batch
            .into_iter()
            .enumerate()
            .map(|(index, new)| self.validate(new).map_err(|e| (index, e)))
            .collect::<Result<Vec<Task>, _>>()?;
        let accepted = self
            .detached(|this| async move {
                // One keyed submission at a time, so two racing requests with
                // the same key cannot both create a task. Held until the tasks
                // are saved, inside the detached work.
                let _idempotency = match tasks.iter().any(|t| t.idempotency_key.is_some()) {
                    true => Some(this.idempotency.lock().await),
                    false => None,
                };
                let mut submitted = Vec::with_capacity(tasks.len());
                for (index, task) in tasks.into_iter().enumerate() {
                    let existing = match &task.idempotency_key {
                        Some(key) => this.store.find_by_idempotency_key(key).await.map_err(|e| (index, e.into()))?,
                        None => None,
                    };
                    submitted.push(match existing {
                        Some(existing) => Submitted { task: existing, created: false },
                        None => Submitted { task, created: true },
                    });
                }
                this.accept(&submitted).await?;
                Ok(submitted)
            })
            .await;
        accepted.map_err(|e: DetachedError<(usize, ServiceError)>| e.into_inner(|e| (0, e)))
    }

    /// Saves, then queues, the created tasks among `submitted`. Once the
    /// client hears 2xx, a crash at any instant leaves the tasks on disk, and
    /// recovery queues them again. All or none: they are saved together, or
    /// not at all. Errors carry the batch index.
    async fn accept(&self, submitted: &[Submitted]) -> Result<(), (usize, ServiceError)> {
        let created: Vec<(usize, &Task)> =
            submitted.iter().enumerate().filter(|(_, s)| s.created).map(|(i, s)| (i, &s.task)).collect();
        let Some(&(first, _)) = created.first() else { return Ok(()) };
        let tasks: Vec<Task> = created.iter().map(|(_, task)| (*task).clone()).collect();
        self.store.save_all(&tasks).await.map_err(|e| (first, e.into()))?;
        for (index, task) in created {
            self.queue.push(QueueEntry::from(task), Duration::ZERO).await.map_err(|e| (index, e.into()))?;
            tracing::debug!(task_id = %task.id, plugin = %task.plugin, priority = task.priority, "task accepted");
        }
        Ok(())
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

    fn validate(&self, new: NewTask) -> Result<Task, ServiceError> {
        let plugin = new.plugin.clone();
        let task = new.validate(self.sequence.fetch_add(1, Ordering::SeqCst))?;
        if !self.registry.contains(&plugin) {
            return Err(ServiceError::UnknownPlugin(plugin));
        }
        Ok(task)
    }

    /// The task with `id`, with live progress while it runs.
    pub async fn get(&self, id: TaskId) -> Result<TaskView, ServiceError> {
        let task = self.store.load(id).await?.ok_or(ServiceError::NotFound(id))?;
        let progress = (task.status == TaskStatus::Running)
            .then(|| self.running_lock().get(&id).map(|r| r.progress.load(Ordering::Relaxed)))
            .flatten();
        Ok(TaskView { task, progress })
    }

    /// A page of tasks.
    pub async fn list(&self, query: &ListQuery) -> Result<TaskPage, ServiceError> {
        Ok(self.store.list(query).await?)
    }

    /// Cancels a pending task at once, or interrupts a running one (its
    /// worker records the cancellation when the instance has stopped).
    pub async fn cancel(&self, id: TaskId) -> Result<TaskView, ServiceError> {
        let _guard = self.lock(id).await;
        let mut task = self.store.load(id).await?.ok_or(ServiceError::NotFound(id))?;
        let interruptible = self.running_lock().get(&id).map(|running| running.cancel.clone());
        match task.status {
            TaskStatus::Running if interruptible.is_some() => {
                if let Some(cancel) = interruptible {
                    cancel.notify_one();
                }
                tracing::info!(task_id = %id, "cancelling running task");
                Ok(TaskView { task, progress: None })
            }
            // Pending, or stored as running with no worker here running it.
            TaskStatus::Pending | TaskStatus::Running => {
                task.status = TaskStatus::Cancelled;
                task.finished_at = Some(Utc::now());
                task.retry_at = None;
                self.store.save(&task).await?;
                self.queue.remove(id).await?;
                tracing::info!(task_id = %id, "task cancelled");
                Ok(TaskView { task, progress: None })
            }
            status => Err(ServiceError::NotCancellable { id, status }),
        }
    }

    /// Queue, task and plugin statistics.
    pub async fn stats(&self) -> Result<Stats, ServiceError> {
        Ok(Stats {
            queue: self.queue.depth().await?,
            running: self.running_count(),
            tasks: self.store.counts().await?,
            workers: self.config.workers,
            plugins: self.registry.list(),
            registry: self.registry.stats(),
            uptime_seconds: self.started_at.elapsed().as_secs(),
        })
    }

    /// Prometheus text for `GET /metrics`.
    pub async fn render_metrics(&self) -> Result<String, ServiceError> {
        let depth = self.queue.depth().await?;
        let counts = self.store.counts().await?;
        let gauges = Gauges {
            tasks_by_status: counts.iter().map(|(status, n)| (status.to_string(), *n)).collect(),
            queue_depth: depth.ready.iter().map(|(p, n)| (*p, *n)).collect(),
            delayed: depth.delayed,
            running: self.running_count(),
            plugins: self.registry.stats().loaded,
        };
        Ok(self.metrics.render(&gauges))
    }

    /// Tasks running now.
    pub fn running_count(&self) -> usize {
        self.running_lock().len()
    }

    /// Runs the task of one queue delivery to its next state. Called by the
    /// workers; never fails: every problem is recorded on the task or logged.
    pub async fn process(&self, delivery: Delivery) {
        let id = delivery.entry.id;
        let (task, cancel, progress) = match self.start(id).await {
            Ok(Some(started)) => started,
            Ok(None) => {
                // Cancelled, finished or deleted since it was queued.
                self.ack(&delivery).await;
                return;
            }
            Err(e) => {
                tracing::error!(task_id = %id, error = %e, "cannot start task; retrying shortly");
                self.requeue(&delivery, STORAGE_RETRY_DELAY).await;
                return;
            }
        };

        let started = Instant::now();
        let outcome = tokio::select! {
            outcome = self.execute(&task, progress) => Some(outcome),
            () = cancel.notified() => None,
        };
        let elapsed = started.elapsed();

        // The outcome is kept until it is saved: a storage hiccup must not
        // leave the task `running` with nobody to finish it.
        let mut delay = STORAGE_RETRY_DELAY;
        for attempt in 1..=FINISH_SAVE_ATTEMPTS {
            match self.finish(task.clone(), outcome.clone(), elapsed).await {
                Ok(()) => break,
                Err(e) if attempt < FINISH_SAVE_ATTEMPTS => {
                    tracing::warn!(task_id = %id, error = %e, "cannot record the task's outcome; retrying");
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2);
                }
                Err(e) => {
                    // Left `running` on disk; the next start picks it up as an orphan.
                    tracing::error!(task_id = %id, error = %e, "cannot record the task's outcome; it runs again");
                    if outcome.is_none() {
                        self.unsaved_cancels().insert(id);
                    }
                    self.running_lock().remove(&id);
                    self.requeue(&delivery, STORAGE_RETRY_DELAY).await;
                    return;
                }
            }
        }
        self.ack(&delivery).await;
    }

    /// Marks a pending task running and registers it as running here;
    /// `None` when it is not to be run. A task stored as `running` that no
    /// worker here runs is an orphan (its outcome could not be saved) and is
    /// run again.
    async fn start(&self, id: TaskId) -> Result<Option<(Task, Arc<Notify>, Arc<AtomicU8>)>, StorageError> {
        let _guard = self.lock(id).await;
        let Some(mut task) = self.store.load(id).await? else { return Ok(None) };
        let orphan = task.status == TaskStatus::Running && !self.running_lock().contains_key(&id);
        if task.status != TaskStatus::Pending && !orphan {
            return Ok(None);
        }
        // A cancel whose outcome could not be saved still stands.
        let cancelled = self.unsaved_cancels().remove(&id);
        if orphan && (cancelled || task.attempts >= task.max_attempts) {
            task.status = if cancelled { TaskStatus::Cancelled } else { TaskStatus::Failed };
            task.finished_at = Some(Utc::now());
            if !cancelled {
                task.last_error = Some(TaskError {
                    kind: FailureKind::Interrupted,
                    message: "the outcome of its last attempt could not be recorded".into(),
                });
            }
            self.store.save(&task).await?;
            return Ok(None);
        }
        task.status = TaskStatus::Running;
        task.attempts = task.attempts.saturating_add(1);
        task.started_at = Some(Utc::now());
        task.retry_at = None;
        self.store.save(&task).await?;
        let (cancel, progress) = (Arc::new(Notify::new()), Arc::new(AtomicU8::new(0)));
        self.running_lock().insert(id, Running { cancel: cancel.clone(), progress: progress.clone() });
        Ok(Some((task, cancel, progress)))
    }

    /// Runs one attempt on the version of the plugin serving now.
    async fn execute(&self, task: &Task, progress: Arc<AtomicU8>) -> Attempt {
        let Ok(entry) = self.registry.get(&task.plugin) else {
            let message = format!("plugin {:?} is no longer loaded", task.plugin);
            return Attempt { digest: None, result: Err(Failure { kind: FailureKind::PluginNotFound, message }) };
        };
        let limits = self.limits_for(task, &entry.limits);
        let input = TaskInput {
            id: task.id.to_string(),
            plugin: task.plugin.clone(),
            priority: task.priority,
            attempt: task.attempts,
            payload: task.payload_bytes(),
        };
        let result = self.registry.runtime().run(&entry.plugin, input, limits, Some(progress)).await;
        Attempt { digest: Some(entry.plugin.digest.clone()), result }
    }

    /// Task setting first, then the plugin's sidecar, then the host default.
    fn limits_for(&self, task: &Task, plugin: &crate::runtime::registry::PluginLimits) -> Limits {
        let defaults = self.registry.runtime().config().default_limits;
        Limits {
            timeout: task.timeout().or(plugin.timeout_ms.map(Duration::from_millis)).unwrap_or(defaults.timeout),
            memory_bytes: plugin.memory_mb.map_or(defaults.memory_bytes, |mb| mb.saturating_mul(1024 * 1024)),
            ..defaults
        }
    }

    /// Records the outcome of a run: completed, failed, back to pending for a
    /// retry, or cancelled (`outcome` is `None`).
    async fn finish(
        &self,
        mut task: Task,
        outcome: Option<Attempt>,
        elapsed: Duration,
    ) -> Result<(), ServiceError> {
        let _guard = self.lock(task.id).await;
        let now = Utc::now();
        let label = match outcome {
            None => {
                task.status = TaskStatus::Cancelled;
                task.finished_at = Some(now);
                "cancelled"
            }
            Some(Attempt { result: Ok(success), .. }) => {
                task.status = TaskStatus::Completed;
                task.finished_at = Some(now);
                task.plugin_digest = Some(success.plugin_digest);
                task.result = Some(TaskOutput::from_bytes(&success.output));
                task.last_error = None;
                "completed"
            }
            Some(Attempt { digest, result: Err(failure) }) => {
                // The version that failed, not whichever serves now.
                if digest.is_some() {
                    task.plugin_digest = digest;
                }
                let retry = failure.kind.is_retryable() && task.attempts < task.max_attempts;
                task.last_error = Some(TaskError { kind: failure.kind, message: failure.message });
                if retry {
                    let delay = backoff(self.config.retry_base, task.attempts);
                    task.status = TaskStatus::Pending;
                    task.retry_at = chrono::Duration::from_std(delay).ok().map(|d| now + d);
                    self.store.save(&task).await?;
                    self.queue.push(QueueEntry::from(&task), delay).await?;
                    self.running_lock().remove(&task.id);
                    self.metrics.record_attempt(&task.plugin, "retried", elapsed);
                    tracing::info!(task_id = %task.id, plugin = %task.plugin, attempt = task.attempts, delay_ms = delay.as_millis() as u64, "task will be retried");
                    return Ok(());
                }
                task.status = TaskStatus::Failed;
                task.finished_at = Some(now);
                "failed"
            }
        };
        self.store.save(&task).await?;
        self.running_lock().remove(&task.id);
        self.metrics.record_attempt(&task.plugin, label, elapsed);
        tracing::info!(
            task_id = %task.id,
            plugin = %task.plugin,
            status = %task.status,
            attempt = task.attempts,
            duration_ms = elapsed.as_millis() as u64,
            "task finished"
        );
        Ok(())
    }

    /// Marks every task still running as pending again (graceful shutdown
    /// past its grace period), so the next start runs them.
    pub async fn release_running(&self) {
        let ids: Vec<TaskId> = self.running_lock().keys().copied().collect();
        for id in ids {
            let _guard = self.lock(id).await;
            if let Ok(Some(mut task)) = self.store.load(id).await
                && task.status == TaskStatus::Running
            {
                task.status = TaskStatus::Pending;
                task.last_error = Some(TaskError {
                    kind: FailureKind::Interrupted,
                    message: "the host shut down while this task ran; it will run again".into(),
                });
                if let Err(e) = self.store.save(&task).await {
                    tracing::error!(task_id = %id, error = %e, "cannot release interrupted task");
                }
            }
        }
    }

    async fn ack(&self, delivery: &Delivery) {
        if let Err(e) = self.queue.ack(delivery).await {
            tracing::warn!(task_id = %delivery.entry.id, error = %e, "cannot acknowledge queue delivery");
        }
    }

    async fn requeue(&self, delivery: &Delivery, delay: Duration) {
        self.ack(delivery).await;
        if let Err(e) = self.queue.push(delivery.entry.clone(), delay).await {
            tracing::error!(task_id = %delivery.entry.id, error = %e, "cannot requeue task; it runs after the next restart");
        }
    }

    /// Serialises state changes of one task (worker start/finish, cancel),
    /// so a cancel cannot be overwritten by a worker that read the task just
    /// before it.
    async fn lock(&self, id: TaskId) -> tokio::sync::MutexGuard<'_, ()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut hasher);
        self.locks[(hasher.finish() as usize) % LOCK_STRIPES].lock().await
    }

    fn running_lock(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, Running>> {
        self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn unsaved_cancels(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<TaskId>> {
        self.unsaved_cancels.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Exponential backoff with jitter: `base · 2^(attempt-1)`, capped, then a
/// random point in its upper half so retries of many tasks spread out.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let exponential = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20)).min(MAX_BACKOFF);
    let half = exponential / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's rule: `base · 2^(attempt-1)`, jittered into its upper
    /// half, at most 5 minutes. The bounds are written out, not recomputed.
    #[test]
    fn backoff_follows_the_documented_rule() {
        let ms = Duration::from_millis;
        let base = ms(100);
        for (attempt, low, high) in [
            (1, ms(50), ms(100)),
            (2, ms(100), ms(200)),
            (4, ms(400), ms(800)),
            (12, ms(102_400), ms(204_800)),
            (13, ms(150_000), ms(300_000)),
            (40, ms(150_000), ms(300_000)),
        ] {
            for _ in 0..200 {
                let delay = backoff(base, attempt);
                assert!(delay >= low && delay <= high, "attempt {attempt}: {delay:?} not in [{low:?}, {high:?}]");
            }
        }
    }

    #[test]
    fn backoff_jitter_spreads_retries() {
        let delays: std::collections::HashSet<Duration> = (0..200).map(|_| backoff(Duration::from_millis(500), 3)).collect();
        assert!(delays.len() > 150, "only {} distinct delays in 200", delays.len());
    }
}
