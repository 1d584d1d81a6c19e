//! Execution: one queue delivery run from start to its recorded outcome,
//! and the backoff of retries.

use std::sync::Arc;
use std::sync::atomic::AtomicU8;
use std::time::{Duration, Instant};

use chrono::Utc;
use rand::Rng;
use tokio::sync::Notify;

use super::{Running, ServiceError, TaskService};
use crate::queue::{Delivery, QueueEntry};
use crate::runtime::{Failure, FailureKind, Limits, TaskInput};
use crate::storage::StorageError;
use crate::task::{Task, TaskError, TaskId, TaskOutput, TaskStatus};

/// Longest retry backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Delay before retrying a delivery that hit a storage error.
const STORAGE_RETRY_DELAY: Duration = Duration::from_secs(1);
/// Tries at saving a task's outcome before giving the task back to the queue.
const FINISH_SAVE_ATTEMPTS: u32 = 5;

/// One run of a task's plugin: the version that ran (none when the plugin
/// was gone) and what it produced.
#[derive(Clone)]
struct Attempt {
    digest: Option<String>,
    result: Result<crate::runtime::Success, Failure>,
}

impl TaskService {
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
    async fn start(
        &self,
        id: TaskId,
    ) -> Result<Option<(Task, Arc<Notify>, Arc<AtomicU8>)>, StorageError> {
        let _guard = self.lock(id).await;
        let Some(mut task) = self.store.load(id).await? else {
            return Ok(None);
        };
        let orphan = task.status == TaskStatus::Running && !self.running_lock().contains_key(&id);
        if task.status != TaskStatus::Pending && !orphan {
            return Ok(None);
        }
        // A cancel whose outcome could not be saved still stands.
        let cancelled = orphan && self.unsaved_cancels().remove(&id);
        // No attempt is left: an orphan whose last outcome was lost, or a
        // task restored (or released at shutdown) during its last attempt.
        let exhausted = task.attempts >= task.max_attempts;
        if cancelled || exhausted {
            task.status = if cancelled {
                TaskStatus::Cancelled
            } else {
                TaskStatus::Failed
            };
            task.finished_at = Some(Utc::now());
            if !cancelled {
                let message = if orphan {
                    "the outcome of its last attempt could not be recorded"
                } else {
                    "its last attempt was interrupted and no attempt is left"
                };
                task.last_error = Some(TaskError {
                    kind: FailureKind::Interrupted,
                    message: message.into(),
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
        self.running_lock().insert(
            id,
            Running {
                cancel: cancel.clone(),
                progress: progress.clone(),
            },
        );
        Ok(Some((task, cancel, progress)))
    }

    /// Runs one attempt on the version of the plugin serving now.
    async fn execute(&self, task: &Task, progress: Arc<AtomicU8>) -> Attempt {
        let Ok(entry) = self.registry.get(&task.plugin) else {
            let message = format!("plugin {:?} is no longer loaded", task.plugin);
            return Attempt {
                digest: None,
                result: Err(Failure {
                    kind: FailureKind::PluginNotFound,
                    message,
                }),
            };
        };
        let limits = self.limits_for(task, &entry.limits);
        let input = TaskInput {
            id: task.id.to_string(),
            plugin: task.plugin.clone(),
            priority: task.priority,
            attempt: task.attempts,
            payload: task.payload_bytes(),
        };
        let result = self
            .registry
            .runtime()
            .run(&entry.plugin, input, limits, Some(progress))
            .await;
        Attempt {
            digest: Some(entry.plugin.digest.clone()),
            result,
        }
    }

    /// Task setting first, then the plugin's sidecar, then the host default.
    fn limits_for(&self, task: &Task, plugin: &crate::runtime::registry::PluginLimits) -> Limits {
        let defaults = self.registry.runtime().config().default_limits;
        Limits {
            timeout: task
                .timeout()
                .or(plugin.timeout_ms.map(Duration::from_millis))
                .unwrap_or(defaults.timeout),
            memory_bytes: plugin
                .memory_mb
                .map_or(defaults.memory_bytes, |mb| mb.saturating_mul(1024 * 1024)),
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
            Some(Attempt {
                result: Ok(success),
                ..
            }) => {
                task.status = TaskStatus::Completed;
                task.finished_at = Some(now);
                task.plugin_digest = Some(success.plugin_digest);
                task.result = Some(TaskOutput::from_bytes(&success.output));
                task.last_error = None;
                "completed"
            }
            Some(Attempt {
                digest,
                result: Err(failure),
            }) => {
                // The version that failed, not whichever serves now.
                if digest.is_some() {
                    task.plugin_digest = digest;
                }
                let retry = failure.kind.is_retryable() && task.attempts < task.max_attempts;
                task.last_error = Some(TaskError {
                    kind: failure.kind,
                    message: failure.message,
                });
                if retry {
                    let delay = backoff(self.config.retry_base, task.attempts);
                    task.status = TaskStatus::Pending;
                    task.retry_at = chrono::Duration::from_std(delay).ok().map(|d| now + d);
                    self.store.save(&task).await?;
                    self.queue.push(QueueEntry::from(&task), delay).await?;
                    self.running_lock().remove(&task.id);
                    self.metrics
                        .record_attempt(&task.plugin, "retried", elapsed);
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
}

/// Exponential backoff with jitter: `base · 2^(attempt-1)`, capped, then a
/// random point in its upper half so retries of many tasks spread out.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let exponential = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(MAX_BACKOFF);
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
                assert!(
                    delay >= low && delay <= high,
                    "attempt {attempt}: {delay:?} not in [{low:?}, {high:?}]"
                );
            }
        }
    }

    #[test]
    fn backoff_jitter_spreads_retries() {
        let delays: std::collections::HashSet<Duration> = (0..200)
            .map(|_| backoff(Duration::from_millis(500), 3))
            .collect();
        assert!(
            delays.len() > 150,
            "only {} distinct delays in 200",
            delays.len()
        );
    }
}
