//! Reading, listing and cancelling tasks; statistics and metrics.

use std::sync::atomic::Ordering;

use chrono::Utc;

use super::{ServiceError, Stats, TaskService, TaskView};
use crate::storage::{ListQuery, TaskPage};
use crate::task::{TaskId, TaskStatus};
use crate::telemetry::Gauges;

impl TaskService {
    /// The task with `id`, with live progress while it runs.
    pub async fn get(&self, id: TaskId) -> Result<TaskView, ServiceError> {
        let task = self
            .store
            .load(id)
            .await?
            .ok_or(ServiceError::NotFound(id))?;
        let progress = (task.status == TaskStatus::Running)
            .then(|| {
                self.running_lock()
                    .get(&id)
                    .map(|r| r.progress.load(Ordering::Relaxed))
            })
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
        let mut task = self
            .store
            .load(id)
            .await?
            .ok_or(ServiceError::NotFound(id))?;
        let interruptible = self
            .running_lock()
            .get(&id)
            .map(|running| running.cancel.clone());
        match task.status {
            TaskStatus::Running if interruptible.is_some() => {
                if let Some(cancel) = interruptible {
                    cancel.notify_one();
                }
                tracing::info!(task_id = %id, "cancelling running task");
                Ok(TaskView {
                    task,
                    progress: None,
                })
            }
            // Pending, or stored as running with no worker here running it.
            TaskStatus::Pending | TaskStatus::Running => {
                task.status = TaskStatus::Cancelled;
                task.finished_at = Some(Utc::now());
                task.retry_at = None;
                self.store.save(&task).await?;
                self.queue.remove(id).await?;
                tracing::info!(task_id = %id, "task cancelled");
                Ok(TaskView {
                    task,
                    progress: None,
                })
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
