//! Startup recovery, restore from a backup, and release of running tasks on shutdown.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::{Recovery, RestoreSummary, ServiceError, TaskService};
use crate::queue::QueueEntry;
use crate::runtime::FailureKind;
use crate::task::{Task, TaskError, TaskId, TaskStatus};

impl TaskService {
    /// Startup: queues again every task that was pending, or running when the host
    /// stopped, in priority order. A task that was running on its last
    /// allowed attempt fails instead: if it is what brought the host down,
    /// running it again would bring it down again.
    pub async fn recover(&self) -> Result<Recovery, ServiceError> {
        let mut tasks = self.store.all().await?;
        tasks.retain(|t| matches!(t.status, TaskStatus::Pending | TaskStatus::Running));
        tasks.sort_by_key(|t| (t.priority, t.sequence));
        let mut recovery = Recovery::default();
        for mut task in tasks {
            if task.status == TaskStatus::Running {
                recovery.interrupted += 1;
                let attempts_left = task.attempts < task.max_attempts;
                task.status = if attempts_left {
                    TaskStatus::Pending
                } else {
                    TaskStatus::Failed
                };
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
            let delay = task
                .retry_at
                .and_then(|at| (at - Utc::now()).to_std().ok())
                .unwrap_or_default();
            self.queue.push(QueueEntry::from(&task), delay).await?;
            recovery.requeued += 1;
        }
        Ok(recovery)
    }

    /// Restores tasks from a backup: saves them (replacing finished tasks
    /// with the same id) and queues the pending ones; later submissions are
    /// numbered after them. A task that is pending or running here
    /// is left alone, so a restore never runs a task twice at once.
    ///
    /// The work runs in its own task, detached from the request, one
    /// restore at a time.
    pub async fn restore(
        self: &Arc<Self>,
        tasks: Vec<Task>,
    ) -> Result<RestoreSummary, ServiceError> {
        // Check everything before writing anything: a bad backup changes nothing.
        for task in &tasks {
            task.check_restorable()?;
        }
        self.detached(|this| async move {
            let _one_at_a_time = this.restoring.lock().await;
            let mut summary = RestoreSummary {
                restored: 0,
                queued: 0,
                skipped: 0,
            };
            for task in tasks {
                let _guard = this.lock(task.id).await;
                if this
                    .store
                    .load(task.id)
                    .await?
                    .is_some_and(|live| !live.status.is_terminal())
                {
                    summary.skipped += 1;
                    continue;
                }
                let task = crate::storage::backup::as_restored(task);
                this.store.restore(&task).await?;
                summary.restored += 1;
                if task.status == TaskStatus::Pending {
                    this.queue
                        .push(QueueEntry::from(&task), Duration::ZERO)
                        .await?;
                    summary.queued += 1;
                }
            }
            tracing::info!(
                restored = summary.restored,
                queued = summary.queued,
                skipped = summary.skipped,
                "backup restored"
            );
            Ok(summary)
        })
        .await
        .map_err(ServiceError::from)
    }

    /// Marks every task still running as pending again (graceful shutdown
    /// past its grace period), so the next start runs them. The interrupted
    /// attempt does not count: the host stopped it, not the task's own doing,
    /// and a task on its last attempt keeps that attempt.
    pub async fn release_running(&self) {
        let ids: Vec<TaskId> = self.running_lock().keys().copied().collect();
        for id in ids {
            let _guard = self.lock(id).await;
            if let Ok(Some(mut task)) = self.store.load(id).await
                && task.status == TaskStatus::Running
            {
                task.status = TaskStatus::Pending;
                task.attempts = task.attempts.saturating_sub(1);
                task.last_error = Some(TaskError {
                    kind: FailureKind::Interrupted,
                    message: "the host shut down while this task ran; the attempt does not count and it will run again".into(),
                });
                if let Err(e) = self.store.save(&task).await {
                    tracing::error!(task_id = %id, error = %e, "cannot release interrupted task");
                }
            }
        }
    }
}
