//! The outbox of a queue outside the store (SQS): a task is committed to
//! the store first and sent to the queue after, so a host that stops (or a
//! queue that refuses) in between leaves a task stored and never sent. The
//! store marks what was sent; every host's sweeper claims what was not,
//! once it is old enough not to be on its way still, and sends it.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use taskflow_backend::queue::QueueEntry;
use taskflow_model::task::TaskId;

use super::{ServiceError, TaskService};

/// How often the sweeper looks for tasks never sent.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// How long a stored task may be on its way to the queue before the
/// sweeper sends it.
const SWEEP_AGE: Duration = Duration::from_secs(10);
/// How long a sweeper's claim keeps other hosts' sweepers off the tasks it
/// took (should it stop before sending them, they are taken after it).
const SWEEP_HOLD: Duration = Duration::from_secs(30);
/// Tasks claimed per round; a full round is followed by another at once.
const SWEEP_BATCH: usize = 500;

impl TaskService {
    /// Records that the queue holds entries for `ids`, where the store
    /// keeps an outbox for this queue; a failure only means the sweeper
    /// sends them once more (a duplicate is dropped by its claim).
    pub(super) async fn mark_enqueued(&self, ids: &[TaskId]) {
        if !self.queue.needs_outbox() || ids.is_empty() {
            return;
        }
        if let Err(e) = self.store.mark_enqueued(ids).await {
            tracing::warn!(tasks = ids.len(), error = %e, "cannot record tasks as sent; the sweeper sends them again");
        }
    }

    /// Sends the tasks the store holds as accepted but never queued, every
    /// few seconds until `stop`. Run it where the queue needs an outbox.
    pub async fn sweep(self: Arc<Self>, stop: CancellationToken) {
        let mut failing = false;
        loop {
            tokio::select! {
                () = tokio::time::sleep(SWEEP_INTERVAL) => {}
                () = stop.cancelled() => return,
            }
            loop {
                match self.sweep_once().await {
                    Ok(swept) => {
                        if failing {
                            tracing::info!("the outbox sweeper sends again");
                            failing = false;
                        }
                        if swept < SWEEP_BATCH || stop.is_cancelled() {
                            break;
                        }
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "the outbox sweeper cannot send; retrying");
                            failing = true;
                        }
                        break;
                    }
                }
            }
        }
    }

    /// One round of the sweeper: claims, sends and marks; how many it took.
    pub async fn sweep_once(&self) -> Result<usize, ServiceError> {
        let tasks = self
            .store
            .claim_unsent(SWEEP_AGE, SWEEP_HOLD, SWEEP_BATCH)
            .await?;
        if tasks.is_empty() {
            return Ok(0);
        }
        tracing::warn!(
            tasks = tasks.len(),
            "sending tasks whose messages were never sent"
        );
        let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
        self.queue
            .push_all(tasks.iter().map(QueueEntry::from).collect())
            .await?;
        self.mark_enqueued(&ids).await;
        Ok(ids.len())
    }
}
