//! Reading, listing, cancelling and retrying tasks; statistics and metrics.

use chrono::Utc;

use taskflow_backend::queue::QueueEntry;
use taskflow_backend::storage::{Change, LeaseState, ListQuery, Published, TaskPage};
use taskflow_model::api::TaskLogs;
use taskflow_model::task::{Task, TaskId, TaskStatus};
use taskflow_runtime::plugin::PluginInfo;

use super::{HostStats, ServiceError, Stats, SystemStats, TaskService, TaskView};
use crate::metrics::Gauges;

impl TaskService {
    /// The task with `id`, with its bodies (from the blob store if need
    /// be), and its progress and log lines so far while it runs.
    pub async fn get(&self, id: TaskId) -> Result<TaskView, ServiceError> {
        let mut task = self
            .store
            .load(id)
            .await?
            .ok_or(ServiceError::NotFound(id))?;
        let progress = self.show_live(&mut task).await?;
        self.bodies.resolve(&mut task).await?;
        Ok(TaskView { task, progress })
    }

    /// For a running task: puts the newest log lines of its running attempt
    /// in it, and says its progress (live when it runs here, as its host
    /// last published them otherwise).
    async fn show_live(&self, task: &mut Task) -> Result<Option<u8>, ServiceError> {
        if task.status != TaskStatus::Running {
            return Ok(None);
        }
        let here = self.running_lock().get(&task.id).map(|run| Published {
            progress: run.live.progress(),
            logs: run.live.preview(),
        });
        let published = match here {
            Some(here) => Some(here),
            None => self.store.published(task.id).await?,
        };
        let Some(published) = published else {
            return Ok(None);
        };
        if let Some(attempt) = task.running_attempt() {
            attempt.show_live(published.logs);
        }
        Ok(Some(published.progress))
    }

    /// A page of tasks. Bodies kept in the blob store are left there (the
    /// tasks show `payload_blob` and `result_blob`), and the attempts of
    /// their history come without log lines ([`logs`](Self::logs) has
    /// them): pages stay small.
    pub async fn list(&self, query: &ListQuery) -> Result<TaskPage, ServiceError> {
        let mut page = self.store.list(query).await?;
        for attempt in page.tasks.iter_mut().flat_map(|task| &mut task.history) {
            attempt.logs = Vec::new();
        }
        Ok(page)
    }

    /// Every task with its bodies (from the blob store if need be), for a
    /// backup that stands on its own: each attempt with the first lines of
    /// its log (`logs_dropped` counting the rest of a whole log left in the
    /// blob store).
    pub async fn export(&self) -> Result<Vec<Task>, ServiceError> {
        let mut tasks = self.store.all().await?;
        for task in &mut tasks {
            self.bodies.resolve(task).await?;
            for attempt in &mut task.history {
                attempt.logs_blob = None;
            }
        }
        Ok(tasks)
    }

    /// Cancels a pending task at once, or interrupts a running one on
    /// whichever host runs it (its worker records the cancellation when the
    /// instance has stopped). A running task whose host is gone is
    /// cancelled at once.
    pub async fn cancel(&self, id: TaskId) -> Result<TaskView, ServiceError> {
        let change = Box::new(|task: &mut Task, lease: &LeaseState| match task.status {
            TaskStatus::Pending => {
                task.cancel(Utc::now());
                Change::Save
            }
            TaskStatus::Running if lease.expired => {
                task.cancel(Utc::now());
                Change::Save
            }
            TaskStatus::Running => Change::RequestCancel,
            _ => Change::Keep,
        });
        let updated = self
            .store
            .update(id, change)
            .await?
            .ok_or(ServiceError::NotFound(id))?;
        let mut task = updated.task;
        match updated.change {
            Change::Save => {
                self.queue.remove(id).await?;
                tracing::info!(task_id = %id, "task cancelled");
            }
            Change::RequestCancel => {
                // Here at once; on another host at its next heartbeat.
                if let Some(run) = self
                    .running_lock()
                    .get(&id)
                    .filter(|r| r.token == updated.token)
                {
                    run.stop.notify_one();
                }
                tracing::info!(task_id = %id, "cancelling running task");
            }
            Change::Keep | Change::Claim { .. } => {
                return Err(ServiceError::NotCancellable {
                    id,
                    status: task.status,
                });
            }
        }
        self.bodies.resolve(&mut task).await?;
        Ok(TaskView {
            task,
            progress: None,
        })
    }

    /// Queues a failed or cancelled task again for one more attempt, with
    /// the same payload; its history keeps the earlier attempts.
    pub async fn retry(&self, id: TaskId) -> Result<TaskView, ServiceError> {
        let change = Box::new(|task: &mut Task, _: &LeaseState| match task.retry() {
            Ok(()) => Change::Save,
            Err(_) => Change::Keep,
        });
        let updated = self
            .store
            .update(id, change)
            .await?
            .ok_or(ServiceError::NotFound(id))?;
        let mut task = updated.task;
        if !matches!(updated.change, Change::Save) {
            let reason = task.clone().retry().err().map_or_else(
                || "it changed meanwhile; try again".to_owned(),
                |e| e.message,
            );
            return Err(ServiceError::NotRetryable { id, reason });
        }
        self.queue_stored(vec![QueueEntry::from(&task)]).await;
        tracing::info!(task_id = %id, attempt = task.attempts + 1, "task queued again by request");
        self.bodies.resolve(&mut task).await?;
        Ok(TaskView {
            task,
            progress: None,
        })
    }

    /// The plugin's log lines of each attempt of the task kept in its
    /// history: whole logs read from the blob store, a running attempt's
    /// newest lines.
    pub async fn logs(&self, id: TaskId) -> Result<TaskLogs, ServiceError> {
        let mut task = self
            .store
            .load(id)
            .await?
            .ok_or(ServiceError::NotFound(id))?;
        self.show_live(&mut task).await?;
        self.bodies.resolve_logs(&mut task).await?;
        Ok(TaskLogs {
            id,
            status: task.status,
            attempts: task.attempts,
            history: task.history,
        })
    }

    /// The plugins loaded on this host, by name.
    pub fn plugins(&self) -> Vec<PluginInfo> {
        self.registry.list()
    }

    /// Readiness: whether each backend answers now (`blobs`: where large
    /// bodies and whole logs go), asked all at once.
    pub async fn readiness(&self) -> Vec<(&'static str, Result<(), String>)> {
        let blobs = async {
            match self.bodies.blobs() {
                Some(blobs) => Some(blobs.check().await.map_err(|e| e.to_string())),
                None => None,
            }
        };
        let (queue, storage, blobs) = tokio::join!(self.queue.check(), self.store.check(), blobs);
        let mut backends = vec![
            ("queue", queue.map_err(|e| e.to_string())),
            ("storage", storage.map_err(|e| e.to_string())),
        ];
        backends.extend(blobs.map(|outcome| ("blobs", outcome)));
        backends
    }

    /// Queue, task and plugin statistics.
    pub async fn stats(&self) -> Result<Stats, ServiceError> {
        Ok(Stats {
            system: SystemStats {
                queue: self.queue.depth().await?,
                tasks: self.store.counts().await?,
            },
            host: HostStats {
                name: self.config.owner.clone(),
                workers: self.config.workers,
                running: self.running_count(),
                plugins: self.registry.list(),
                registry: self.registry.stats(),
                uptime_seconds: self.started_at.elapsed().as_secs(),
            },
        })
    }

    /// Prometheus text for `GET /metrics`.
    pub async fn render_metrics(&self) -> Result<String, ServiceError> {
        let depth = self.queue.depth().await?;
        let counts = self.store.counts().await?;
        let gauges = Gauges {
            queue_requests: self
                .queue
                .requests()
                .map(|requests| (requests.tasks, requests.status)),
            tasks_by_status: counts
                .iter()
                .map(|(status, n)| (status.to_string(), *n))
                .collect(),
            queue_depth: depth.ready.iter().map(|(p, n)| (*p, *n)).collect(),
            delayed: depth.delayed,
            running: self.running_count(),
            plugins: self.registry.stats().loaded,
        };
        Ok(self.metrics.render(&gauges))
    }
}
