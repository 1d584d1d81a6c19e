//! Task queues: the seam between accepting a task and a worker running it.
//!
//! The queue holds only what ordering needs ([`QueueEntry`]: id, priority,
//! submission sequence); the task itself lives in storage, and the store,
//! not the queue, claims it: a queue only delivers ids. The embedded default
//! is `taskflow-files`' in-memory heap; `taskflow-postgres` delivers from the
//! tasks table itself and `taskflow-aws` from SQS, both shared by every host.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use taskflow_model::task::{Task, TaskId};

pub use taskflow_model::api::QueueDepth;

/// What the queue orders by: priority 1 first, then lowest sequence
/// (submission order) first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// The queued task.
    pub id: TaskId,
    /// 1 (highest) to 10 (lowest).
    pub priority: u8,
    /// Submission order; keeps equal priorities first-in first-out.
    pub sequence: u64,
    /// The task's plugin (a message attribute on SQS, for operators).
    #[serde(default)]
    pub plugin: String,
}

impl From<&Task> for QueueEntry {
    fn from(task: &Task) -> Self {
        Self {
            id: task.id,
            priority: task.priority,
            sequence: task.sequence,
            plugin: task.plugin.clone(),
        }
    }
}

/// An entry handed to a worker by [`Queue::pop`].
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The entry that was popped.
    pub entry: QueueEntry,
    /// Identifies this delivery to [`Queue::ack`] (an SQS receipt handle in
    /// the distributed backend).
    pub receipt: String,
    /// How many times this entry was delivered, this time included (more
    /// than one after a retry or a host that never acknowledged it).
    pub receive_count: u32,
}

impl Delivery {
    /// A first delivery of `entry`.
    pub fn first(entry: QueueEntry, receipt: String) -> Self {
        Self {
            entry,
            receipt,
            receive_count: 1,
        }
    }
}

/// A task whose queue entry was delivered too often without being
/// acknowledged (an SQS dead-letter queue caught it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The task.
    pub id: TaskId,
    /// Deliveries before it was given up on.
    pub receive_count: u32,
    /// Identifies it to [`Queue::bury`].
    pub receipt: String,
}

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The backend cannot be reached or refused the request.
    #[error(
        "queue unavailable: {0}; check the queue backend settings and that the service is reachable"
    )]
    Unavailable(String),
    /// An entry names a priority outside 1..=10.
    #[error("priority {0} is out of range: use 1 (highest) to 10 (lowest)")]
    InvalidPriority(u8),
}

/// A priority queue of task ids, shared by the API (push, remove) and the
/// workers (pop, ack). Used as `Arc<dyn Queue>`.
/// Requests a queue made to its service, by what they were for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueRequests {
    /// Moving tasks: sends, receives, deletes, visibility changes.
    pub tasks: u64,
    /// Answering operators: depth (stats, metrics) and readiness checks.
    pub status: u64,
}

#[async_trait::async_trait]
pub trait Queue: Send + Sync {
    /// Enqueues `entry`. A non-zero `delay` (retry backoff) keeps it
    /// invisible to [`pop`](Queue::pop) until the delay has passed. Pushing an
    /// id that is already queued keeps the entry already there.
    async fn push(&self, entry: QueueEntry, delay: Duration) -> Result<(), QueueError>;

    /// Enqueues new entries, ready at once, in as few requests as the
    /// backend allows.
    async fn push_all(&self, entries: Vec<QueueEntry>) -> Result<(), QueueError> {
        for entry in entries {
            self.push(entry, Duration::ZERO).await?;
        }
        Ok(())
    }

    /// Delivers `delivery`'s entry again after `delay`: a retry after a
    /// failure, or a task handed back unrun. The delivery was answered for,
    /// so the next one is fresh (its receive count starts again at 1):
    /// only deliveries no host answered for count toward dead letters.
    async fn retry(&self, delivery: &Delivery, delay: Duration) -> Result<(), QueueError> {
        self.ack(delivery).await?;
        self.push(delivery.entry.clone(), delay).await
    }

    /// Keeps `deliveries`, whose tasks still run, from being delivered
    /// again for `ttl` (SQS: their visibility timeout).
    async fn extend(&self, _deliveries: &[Delivery], _ttl: Duration) -> Result<(), QueueError> {
        Ok(())
    }

    /// Whether a delivery that is never acknowledged comes back by itself
    /// (SQS): then a task taken back from a host that stopped needs no
    /// new entry.
    fn redelivers(&self) -> bool {
        false
    }

    /// Up to ten entries given up on after too many deliveries.
    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        Ok(Vec::new())
    }

    /// Drops dead letters once their tasks are recorded as failed.
    async fn bury(&self, _dead: &[DeadLetter]) -> Result<(), QueueError> {
        Ok(())
    }

    /// Takes the highest-priority ready entry, waiting up to `wait` for one
    /// to arrive or become due; `None` when none did.
    async fn pop(&self, wait: Duration) -> Result<Option<Delivery>, QueueError>;

    /// Takes every delivery this host fetched but handed to no worker (a
    /// `pop` dropped before it returned); a stopping host gives each back.
    /// A queue must lose none of them: what a dropped `pop` fetched lands
    /// here, not in the void.
    fn held(&self) -> Vec<Delivery> {
        Vec::new()
    }

    /// Reports that the task of `delivery` is finished, so the backend never
    /// delivers it again.
    async fn ack(&self, delivery: &Delivery) -> Result<(), QueueError>;

    /// Drops the queued entry of `id` (cancel); `false` when it was not queued.
    async fn remove(&self, id: TaskId) -> Result<bool, QueueError>;

    /// Whether `id` is queued (ready or delayed), not counting delivered
    /// entries; `None` where the queue cannot look an entry up (SQS).
    async fn contains(&self, id: TaskId) -> Result<Option<bool>, QueueError>;

    /// How many entries are queued, by priority.
    async fn depth(&self) -> Result<QueueDepth, QueueError>;

    /// Whether the queue can serve now (readiness); cheap.
    async fn check(&self) -> Result<(), QueueError> {
        Ok(())
    }

    /// Requests made to the queue service so far, where it counts them
    /// (SQS: what it is billed by).
    fn requests(&self) -> Option<QueueRequests> {
        None
    }

    /// Whether the queue lives outside this host, so that what was queued
    /// survives it; an in-process queue is filled again at startup.
    fn is_shared(&self) -> bool {
        false
    }

    /// Whether a task can be stored and never queued (the host stops, or
    /// the queue refuses, between the store's commit and the push): a
    /// queue outside both the store and the host (SQS). The store then
    /// keeps an outbox ([`TaskStore::mark_enqueued`](crate::storage::TaskStore::mark_enqueued))
    /// and the hosts sweep it.
    fn needs_outbox(&self) -> bool {
        false
    }
}

/// Counts a worker as waiting inside `pop` while alive (a `pop` dropped
/// midway included).
pub struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    pub fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
