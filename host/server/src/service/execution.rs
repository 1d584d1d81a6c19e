//! Execution: one queue delivery run from start to its recorded outcome,
//! and the backoff of retries.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use rand::Rng;
use tokio::sync::Notify;

use taskflow_backend::blobs::BlobError;
use taskflow_backend::queue::Delivery;
use taskflow_backend::storage::{Claim, Claimed, Saved};
use taskflow_model::attempt::AttemptOutcome;
use taskflow_model::task::{Task, TaskError, TaskId, TaskStatus};
use taskflow_runtime::{Failure, FailureKind, Limits, Live, Ran, RunLogs, TaskInput};

use super::{Running, ServiceError, TaskService};

/// Longest retry backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Delay before retrying a delivery that hit a storage error.
const STORAGE_RETRY_DELAY: Duration = Duration::from_secs(1);
/// How long a task waits for its plugin to reach this host before it is
/// claimed again.
const PLUGIN_WAIT: Duration = Duration::from_millis(500);
/// Longest wait between tries at saving a task's outcome.
const MAX_SAVE_RETRY_DELAY: Duration = Duration::from_secs(5);
/// Delay before a task whose payload could not be read is claimed again.
const BODY_RETRY_DELAY: Duration = Duration::from_secs(2);

/// What recording an outcome did.
enum Finished {
    /// Recorded: the task is done with (completed, failed or cancelled).
    Done,
    /// Recorded as pending: run it again after this backoff.
    Retry(Duration),
    /// Not recorded: the lease went to another host.
    Lost,
}

/// One run of a task's plugin: the version that ran (none when the plugin
/// was gone) and what it produced.
#[derive(Clone)]
struct Attempt {
    digest: Option<String>,
    result: Result<taskflow_runtime::Success, Failure>,
    logs: RunLogs,
}

/// How a run ended: with the plugin's answer, or stopped by a cancel (with
/// what the plugin had logged by then).
#[derive(Clone)]
enum Ended {
    Ran(Attempt),
    Cancelled(RunLogs),
}

impl Ended {
    fn logs(&self) -> &RunLogs {
        match self {
            Self::Ran(attempt) => &attempt.logs,
            Self::Cancelled(logs) => logs,
        }
    }
}

impl TaskService {
    /// Claims the task of `delivery` for this host; `None` when it is not
    /// to run now, the delivery then answered for as the claim requires.
    async fn start(&self, delivery: &Delivery) -> Option<Claimed> {
        match self.claim(delivery.entry.id).await {
            Ok(Claim::Run(claimed)) => Some(*claimed),
            Ok(Claim::NotDue(wait)) => {
                self.requeue(delivery, wait).await;
                None
            }
            Ok(Claim::Skip) => {
                // Cancelled, finished or deleted since it was queued.
                self.ack(delivery).await;
                None
            }
            Ok(Claim::Busy) => {
                // Another host runs it: a queue that redelivers keeps this
                // entry, should that host stop before it finishes.
                if self.queue.redelivers() {
                    self.requeue(delivery, self.config.lease).await;
                } else {
                    self.ack(delivery).await;
                }
                None
            }
            Err(e) => {
                self.store_trouble.seen();
                tracing::error!(task_id = %delivery.entry.id, error = %e, "cannot start task; retrying shortly");
                self.requeue(delivery, STORAGE_RETRY_DELAY).await;
                None
            }
        }
    }

    /// Runs the task of one queue delivery to its next state. Called by the
    /// workers; never fails: every problem is recorded on the task or logged.
    pub async fn process(&self, delivery: Delivery) {
        let id = delivery.entry.id;
        let Some(claimed) = self.start(&delivery).await else {
            return;
        };
        let Claimed { task, token } = claimed;
        if self.plugin_on_its_way(&task.plugin).await {
            self.wait_for_plugin(task, token, &delivery).await;
            return;
        }
        let (stop, lost, live) = (
            Arc::new(Notify::new()),
            Arc::new(AtomicBool::new(false)),
            Arc::new(Live::default()),
        );
        self.running_lock().insert(
            id,
            Running {
                token,
                delivery: delivery.clone(),
                stop: stop.clone(),
                lost: lost.clone(),
                live: live.clone(),
            },
        );

        let started = Instant::now();
        let outcome = tokio::select! {
            outcome = self.execute(&task, live.clone()) => match outcome {
                Ok(outcome) => Ended::Ran(outcome),
                Err(e) => {
                    self.postpone_unread(task, token, &delivery, e).await;
                    return;
                }
            },
            // The instance is dropped with the run; what it logged stays.
            () = stop.notified() => Ended::Cancelled(live.take()),
        };
        let elapsed = started.elapsed();
        // When the attempt ended, as its history records it: the same at
        // every try to save the outcome, so that a save tried again after
        // its answer was lost finds its own write.
        let ended_at = Utc::now();
        if lost.load(Ordering::Acquire) {
            self.lose(&task, token, elapsed);
            self.let_go(&delivery).await;
            return;
        }

        // The outcome is kept until it is saved: a storage outage must not
        // lose it, nor spend an attempt. The heartbeat keeps renewing the
        // lease meanwhile (once the store answers), and says when it is gone.
        let mut delay = STORAGE_RETRY_DELAY;
        let mut failures = 0u32;
        loop {
            match self
                .finish(task.clone(), token, outcome.clone(), elapsed, ended_at)
                .await
            {
                Ok(Finished::Done) => break,
                Ok(Finished::Retry(after)) => {
                    // Written: from here a lost entry costs only a wait
                    // for the reaper, never the task.
                    self.requeue(&delivery, after).await;
                    return;
                }
                Ok(Finished::Lost) => {
                    self.lose(&task, token, elapsed);
                    self.let_go(&delivery).await;
                    return;
                }
                Err(_) if lost.load(Ordering::Acquire) => {
                    self.lose(&task, token, elapsed);
                    self.let_go(&delivery).await;
                    return;
                }
                Err(e) => {
                    self.store_trouble.seen();
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(task_id = %id, error = %e, failures, "cannot record the task's outcome; retrying while its lease holds");
                    }
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2).min(MAX_SAVE_RETRY_DELAY);
                }
            }
        }
        self.ack(&delivery).await;
    }

    /// Gives back a claimed task whose plugin the fleet runs but this host
    /// has not loaded yet: claimable again in a moment (here or elsewhere).
    async fn wait_for_plugin(&self, task: Task, token: u64, delivery: &Delivery) {
        tracing::debug!(task_id = %task.id, plugin = %task.plugin, "the plugin is not loaded here yet; the task waits");
        if let Err(e) = self
            .hand_back(task, token, delivery, PLUGIN_WAIT, None)
            .await
        {
            tracing::warn!(task_id = %delivery.entry.id, error = %e, "cannot give back a task whose plugin is not loaded here");
        }
    }

    /// Gives back a task claimed here that this host will not run now:
    /// pending again with this attempt not counted (and `why` recorded, if
    /// given), its queue entry delivered again after `delay`, here or
    /// elsewhere. Cancelled instead when a cancel was waiting for it. An
    /// error leaves it claimed: the reaper takes it back once its lease
    /// runs out.
    pub(super) async fn hand_back(
        &self,
        mut task: Task,
        token: u64,
        delivery: &Delivery,
        delay: Duration,
        why: Option<TaskError>,
    ) -> Result<Saved, ServiceError> {
        task.uncount_attempt();
        task.retry_at = (!delay.is_zero())
            .then(|| {
                chrono::Duration::from_std(delay)
                    .ok()
                    .map(|wait| Utc::now() + wait)
            })
            .flatten();
        if why.is_some() {
            task.last_error = why;
        }
        let saved = self.store.save_leased(&task, token).await?;
        match saved {
            Saved::Written => self.requeue(delivery, delay).await,
            Saved::Cancelled => self.ack(delivery).await,
            Saved::Lost => self.let_go(delivery).await,
        }
        Ok(saved)
    }

    /// Gives back a delivery this host fetched and will not run (it is
    /// stopping): its task, claimed here, goes back to pending with the
    /// attempt not counted, its entry delivered again at once.
    pub async fn give_back(&self, delivery: Delivery) {
        let Some(Claimed { task, token }) = self.start(&delivery).await else {
            return;
        };
        if let Err(e) = self
            .hand_back(task, token, &delivery, Duration::ZERO, None)
            .await
        {
            tracing::warn!(task_id = %delivery.entry.id, error = %e, "cannot give back a task claimed here; it runs once its lease expires");
        }
    }

    /// A run whose lease went to another host: its outcome is dropped.
    fn lose(&self, task: &Task, token: u64, elapsed: Duration) {
        self.forget(task.id, token);
        self.metrics
            .record_attempt(&task.plugin, "lease_lost", elapsed);
        tracing::warn!(task_id = %task.id, "this host lost the task's lease while it ran; its outcome is dropped");
    }

    /// Stops tracking the run of `id` under `token`.
    fn forget(&self, id: TaskId, token: u64) {
        let mut running = self.running_lock();
        if running.get(&id).is_some_and(|r| r.token == token) {
            running.remove(&id);
        }
    }

    /// Runs one attempt on the version of the plugin serving now; an error
    /// when the payload's store does not answer (nothing ran).
    async fn execute(&self, task: &Task, live: Arc<Live>) -> Result<Attempt, BlobError> {
        let Ok(entry) = self.registry.get(&task.plugin) else {
            let message = format!("plugin {:?} is no longer loaded", task.plugin);
            return Ok(Attempt {
                digest: None,
                result: Err(Failure {
                    kind: FailureKind::PluginNotFound,
                    message,
                }),
                logs: RunLogs::default(),
            });
        };
        let limits = self.limits_for(task, &entry.limits);
        let payload = match self.bodies.payload(task).await {
            Ok(payload) => payload,
            // A store that does not answer may later: not an attempt.
            Err(e @ BlobError::Unavailable(_)) => return Err(e),
            Err(e) => {
                // A body that is gone or altered will not come back.
                let kind = match e {
                    BlobError::NoStore(_) | BlobError::Unavailable(_) => FailureKind::Retryable,
                    BlobError::Missing(_) | BlobError::Corrupt { .. } => FailureKind::Fatal,
                };
                return Ok(Attempt {
                    digest: None,
                    result: Err(Failure {
                        kind,
                        message: format!("cannot read the payload: {e}"),
                    }),
                    logs: RunLogs::default(),
                });
            }
        };
        let input = TaskInput {
            id: task.id.to_string(),
            plugin: task.plugin.clone(),
            priority: task.priority,
            attempt: task.attempts,
            payload,
        };
        let Ran { result, logs } = self
            .registry
            .runtime()
            .run_logged(&entry.plugin, input, limits, Some(live))
            .await;
        Ok(Attempt {
            digest: Some(entry.plugin.digest.clone()),
            result,
            logs,
        })
    }

    /// Gives back a task whose payload could not be read (its store did not
    /// answer): nothing ran, so the attempt is not counted; it is claimed
    /// again after a short wait, here or elsewhere.
    async fn postpone_unread(&self, task: Task, token: u64, delivery: &Delivery, e: BlobError) {
        self.forget(task.id, token);
        tracing::warn!(task_id = %task.id, error = %e, "cannot read the task's payload; it waits, its attempt not counted");
        let why = TaskError {
            kind: FailureKind::Retryable,
            message: format!("cannot read the payload (not counted as an attempt): {e}"),
        };
        if let Err(e) = self
            .hand_back(task, token, delivery, BODY_RETRY_DELAY, Some(why))
            .await
        {
            tracing::warn!(task_id = %delivery.entry.id, error = %e, "cannot give back a task whose payload could not be read; it runs once its lease expires");
        }
    }

    /// Task setting first, then the plugin's sidecar, then the host default.
    fn limits_for(&self, task: &Task, plugin: &taskflow_runtime::registry::PluginLimits) -> Limits {
        let defaults = self.registry.runtime().config().default_limits;
        Limits {
            timeout: task
                .timeout()
                .or(plugin.timeout_ms.map(Duration::from_millis))
                .unwrap_or(defaults.timeout),
            memory_bytes: plugin
                .memory_mb
                .map_or(defaults.memory_bytes, |mb| mb.saturating_mul(1024 * 1024)),
            reuse_tasks: plugin.reuse_tasks.unwrap_or(defaults.reuse_tasks),
            ..defaults
        }
    }

    /// Records the outcome of a run: completed, failed, back to pending for a
    /// retry, or cancelled, with what the plugin logged (the whole log in
    /// the blob store when the record cannot hold it);
    /// [`Finished::Lost`] when the lease was lost meanwhile and nothing was
    /// written.
    async fn finish(
        &self,
        mut task: Task,
        token: u64,
        ended: Ended,
        elapsed: Duration,
        ended_at: chrono::DateTime<Utc>,
    ) -> Result<Finished, ServiceError> {
        let now = Utc::now();
        let mut retry = None;
        let whole = (!ended.logs().fits_the_record()).then(|| ended.logs().clone());
        let label = match ended {
            Ended::Cancelled(logs) => {
                task.cancel(ended_at);
                if let Some(attempt) = task.history.last_mut() {
                    attempt.add_logs(logs.lines, logs.dropped);
                }
                "cancelled"
            }
            Ended::Ran(Attempt {
                result: Ok(success),
                logs,
                ..
            }) => {
                task.status = TaskStatus::Completed;
                task.finished_at = Some(now);
                task.end_attempt(
                    AttemptOutcome::Completed,
                    Some(&success.plugin_digest),
                    logs,
                    ended_at,
                );
                task.plugin_digest = Some(success.plugin_digest);
                // In the blob store before the record says completed.
                self.bodies
                    .store_result(&mut task, &success.output, token)
                    .await?;
                task.last_error = None;
                "completed"
            }
            Ended::Ran(Attempt {
                digest,
                result: Err(failure),
                logs,
            }) => {
                let retryable = failure.kind.is_retryable() && task.attempts < task.max_attempts;
                task.last_error = Some(TaskError {
                    kind: failure.kind,
                    message: failure.message,
                });
                let ended = if retryable {
                    AttemptOutcome::Retried
                } else {
                    AttemptOutcome::Failed
                };
                task.end_attempt(ended, digest.as_deref(), logs, ended_at);
                // The version that failed, not whichever serves now.
                if digest.is_some() {
                    task.plugin_digest = digest;
                }
                if retryable {
                    let delay = backoff(self.config.retry_base, task.attempts);
                    task.status = TaskStatus::Pending;
                    task.retry_at = chrono::Duration::from_std(delay).ok().map(|d| now + d);
                    retry = Some(delay);
                    "retried"
                } else {
                    task.status = TaskStatus::Failed;
                    task.finished_at = Some(now);
                    "failed"
                }
            }
        };
        if let Some(whole) = &whole {
            self.bodies.store_logs(&mut task, whole, token).await?;
        }
        let (label, retry) = match self.store.save_leased(&task, token).await? {
            Saved::Written => (label, retry),
            Saved::Lost => return Ok(Finished::Lost),
            Saved::Cancelled => {
                // A cancel was requested while the attempt ran: no retry.
                task.cancel(now);
                ("cancelled", None)
            }
        };
        self.forget(task.id, token);
        self.metrics.record_attempt(&task.plugin, label, elapsed);
        if let (Some(digest), "completed" | "failed" | "retried") = (&task.plugin_digest, label) {
            self.runs
                .record(&task.plugin, digest, label == "completed", elapsed);
        }
        if let Some(delay) = retry {
            tracing::info!(task_id = %task.id, plugin = %task.plugin, attempt = task.attempts, delay_ms = delay.as_millis() as u64, "task will be retried");
            return Ok(Finished::Retry(delay));
        }
        tracing::info!(
            task_id = %task.id,
            plugin = %task.plugin,
            status = %task.status,
            attempt = task.attempts,
            duration_ms = elapsed.as_millis() as u64,
            "task finished"
        );
        Ok(Finished::Done)
    }

    async fn ack(&self, delivery: &Delivery) {
        if let Err(e) = self.queue.ack(delivery).await {
            tracing::warn!(task_id = %delivery.entry.id, error = %e, "cannot acknowledge queue delivery");
        }
    }

    /// Lets go of the delivery of a task whose lease went elsewhere. The
    /// reaper that took the task back queued it again, unless the queue
    /// redelivers: then this entry is the task's only one and must stay.
    async fn let_go(&self, delivery: &Delivery) {
        if self.queue.redelivers() {
            self.requeue(delivery, Duration::ZERO).await;
        } else {
            self.ack(delivery).await;
        }
    }

    /// Delivers `delivery` again after `delay`.
    async fn requeue(&self, delivery: &Delivery, delay: Duration) {
        if let Err(e) = self.queue.retry(delivery, delay).await {
            tracing::error!(task_id = %delivery.entry.id, error = %e, "cannot queue the task again; the reaper or the sweeper will");
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
