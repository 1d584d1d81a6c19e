//! Submission: validation, idempotency keys, all-or-none acceptance.

use std::sync::Arc;

use taskflow_backend::queue::QueueEntry;
use taskflow_backend::storage::StorageError;
use taskflow_model::task::{NewTask, ValidationError};

use super::{DetachedError, ServiceError, Submitted, TaskService};

impl TaskService {
    /// Validates and accepts a task: stored, then queued. A task with an
    /// idempotency key that was seen before returns the earlier task.
    pub async fn submit(self: &Arc<Self>, new: NewTask) -> Result<Submitted, ServiceError> {
        let mut submitted = self.submit_all(vec![new]).await.map_err(|(_, e)| e)?;
        submitted.pop().ok_or_else(|| {
            ServiceError::Storage(StorageError::Unavailable("nothing was accepted".into()))
        })
    }

    /// Accepts many tasks, all or none: every one is validated before any is
    /// saved, and they are saved together (a failure saves none of them).
    /// On error, the index names the offending task.
    pub async fn submit_batch(
        self: &Arc<Self>,
        batch: Vec<NewTask>,
    ) -> Result<Vec<Submitted>, (usize, ServiceError)> {
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

    async fn submit_all(
        self: &Arc<Self>,
        batch: Vec<NewTask>,
    ) -> Result<Vec<Submitted>, (usize, ServiceError)> {
        // Validate first: an invalid request is rejected even if its key is known.
        // The store numbers the tasks when it accepts them.
        let mut tasks = Vec::with_capacity(batch.len());
        let mut known = std::collections::HashSet::new();
        for (index, new) in batch.into_iter().enumerate() {
            let task = new
                .validate(0)
                .map_err(|e| (index, ServiceError::from(e)))?;
            if !known.contains(&task.plugin) {
                if !self
                    .plugin_known(&task.plugin)
                    .await
                    .map_err(|e| (index, e))?
                {
                    return Err((index, ServiceError::UnknownPlugin(task.plugin)));
                }
                known.insert(task.plugin.clone());
            }
            tasks.push(task);
        }
        let accepted = self
            .detached(|this| async move {
                // Large payloads go to the blob store first: the records
                // that point to them are then never without them.
                let mut moved = Vec::with_capacity(tasks.len());
                for (index, task) in tasks.iter_mut().enumerate() {
                    match this.bodies.store_payload(task).await {
                        Ok(payload) => moved.push(payload.zip(task.payload_blob.clone())),
                        Err(e) => {
                            // None of the batch is accepted: nor are its bodies kept.
                            for (_, blob) in moved.iter().flatten() {
                                this.bodies.discard(blob).await;
                            }
                            return Err((index, e.into()));
                        }
                    }
                }
                let mut submitted = match this.store.insert(tasks).await {
                    Ok(submitted) => submitted,
                    // The tasks may be stored: their bodies stay (the orphan
                    // sweep takes them if no task points to them).
                    Err(e @ StorageError::OutcomeUnknown(_)) => return Err((0, e.into())),
                    Err(e) => {
                        for (_, blob) in moved.iter().flatten() {
                            this.bodies.discard(blob).await;
                        }
                        return Err((0, e.into()));
                    }
                };
                this.enqueue(&submitted).await;
                // The client sees its payload as it sent it; a key seen
                // before gives the earlier task, whose payload is its own.
                for (outcome, moved) in submitted.iter_mut().zip(moved) {
                    match (outcome.created, moved) {
                        (true, Some((payload, _))) => {
                            outcome.task.payload = payload;
                            outcome.task.payload_blob = None;
                        }
                        (false, Some((_, blob))) => this.bodies.discard(&blob).await,
                        _ => {}
                    }
                    if !outcome.created {
                        this.bodies
                            .resolve(&mut outcome.task)
                            .await
                            .map_err(|e| (0, e.into()))?;
                    }
                }
                Ok(submitted)
            })
            .await;
        accepted.map_err(|e: DetachedError<(usize, ServiceError)>| e.into_inner(|e| (0, e)))
    }

    /// Queues the created tasks among `submitted`, which the store holds
    /// already: they are accepted, whatever the queue says. Should it refuse
    /// now, or the host stop before it is asked, the tasks still run: an
    /// in-process queue is filled again from the store at startup, and
    /// SQS's sweeper sends what was never sent.
    async fn enqueue(&self, submitted: &[Submitted]) {
        let created: Vec<QueueEntry> = submitted
            .iter()
            .filter(|s| s.created)
            .map(|s| QueueEntry::from(&s.task))
            .collect();
        self.queue_stored(created).await;
    }

    /// Queues tasks the store holds pending already (as [`enqueue`](Self::enqueue)
    /// says: a refusal now is made good later).
    pub(super) async fn queue_stored(&self, created: Vec<QueueEntry>) {
        if created.is_empty() {
            return;
        }
        let count = created.len();
        let ids: Vec<_> = created.iter().map(|e| e.id).collect();
        match self.queue.push_all(created).await {
            Ok(()) => {
                self.mark_enqueued(&ids).await;
                tracing::debug!(tasks = count, "tasks accepted");
            }
            Err(e) => {
                tracing::warn!(tasks = count, error = %e, "tasks accepted but not queued yet; they are queued once the queue answers")
            }
        }
    }
}
