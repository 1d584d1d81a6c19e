//! Startup recovery, restore from a backup, and release of running tasks on shutdown.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use taskflow_backend::queue::{Delivery, QueueEntry};
use taskflow_model::task::{Task, TaskError, TaskId, TaskStatus};
use taskflow_runtime::FailureKind;

use super::{Recovery, RestoreSummary, ServiceError, TaskService};

impl TaskService {
    /// Startup: takes back the running tasks whose lease expired (with a
    /// store of this host's own, every task it finds running: its host has
    /// stopped), and, for an in-process queue, queues every pending task
    /// again in priority order. A task that was running on its last allowed
    /// attempt fails instead: if it is what brought its host down, running
    /// it again would bring this one down too.
    pub async fn recover(&self) -> Result<Recovery, ServiceError> {
        let (requeued, interrupted) = self.reap().await?;
        let mut recovery = Recovery {
            requeued,
            interrupted,
        };
        if self.queue.is_shared() {
            return Ok(recovery);
        }
        recovery.requeued = 0;
        let mut tasks = self.store.all().await?;
        tasks.retain(|t| t.status == TaskStatus::Pending);
        tasks.sort_by_key(|t| (t.priority, t.sequence));
        for task in tasks {
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
                if this
                    .store
                    .load(task.id)
                    .await?
                    .is_some_and(|live| !live.status.is_terminal())
                {
                    summary.skipped += 1;
                    continue;
                }
                let task = crate::backup::as_restored(task);
                this.store.restore(&task).await?;
                summary.restored += 1;
                if task.status == TaskStatus::Pending {
                    this.queue
                        .push(QueueEntry::from(&task), Duration::ZERO)
                        .await?;
                    this.mark_enqueued(&[task.id]).await;
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

    /// Marks every task still running here as pending again (graceful
    /// shutdown past its grace period), so it runs again at once, here after
    /// a restart or on another host. The interrupted attempt does not count:
    /// the host stopped it, not the task's own doing, and a task on its last
    /// attempt keeps that attempt.
    pub async fn release_running(&self) {
        let held: Vec<(TaskId, u64, Delivery)> = self
            .running_lock()
            .iter()
            .map(|(id, r)| (*id, r.token, r.delivery.clone()))
            .collect();
        for (id, token, delivery) in held {
            let released = match self.store.load(id).await {
                Ok(Some(task)) if task.status == TaskStatus::Running => {
                    let why = TaskError {
                        kind: FailureKind::Interrupted,
                        message: "the host shut down while this task ran; the attempt does not count and it will run again".into(),
                    };
                    self.hand_back(task, token, &delivery, Duration::ZERO, Some(why))
                        .await
                        .map(|_| ())
                }
                Ok(_) => Ok(()),
                Err(e) => Err(e.into()),
            };
            if let Err(e) = released {
                tracing::error!(task_id = %id, error = %e, "cannot release interrupted task; it runs again once its lease expires");
            }
        }
    }

    /// Gives back every delivery the queue fetched for this host but no
    /// worker took (the workers have stopped), so that it runs elsewhere
    /// at once instead of after its lease.
    pub async fn release_held(&self) {
        let held = self.queue.held();
        if !held.is_empty() {
            tracing::info!(
                tasks = held.len(),
                "giving back tasks fetched for workers that stopped"
            );
        }
        for delivery in held {
            self.give_back(delivery).await;
        }
    }
}
