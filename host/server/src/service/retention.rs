//! Retention: nothing is kept forever. A finished task is deleted once it
//! is older than its status's age ([`Retention`]), with its bodies and
//! whole logs in the blob store; blobs no task points to any more (a result
//! written by a host that lost its lease, a payload whose task was never
//! stored, the log of an attempt gone from a long history) are swept once
//! old enough not to be on their way still. The same job folds
//! the store's count changes into its counts, so `/stats` never scans.
//!
//! One host of the fleet runs the job at a time (the store's `lead`), in
//! batches with a pause between them, so deleting a large backlog never
//! stalls the hot path.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use taskflow_backend::blobs::{self, BlobStore};
use taskflow_model::task::TaskStatus;

use super::{ServiceError, TaskService};

/// The name of the job in the store's leadership table.
const JOB: &str = "retention";
/// Tasks deleted in one statement.
const BATCH: usize = 500;
/// Shortest pause between two batches; the pause is also at least
/// [`PAUSE_PER_BATCH_TIME`] times what the batch took, so that the job
/// keeps to about a third of the store's time while tasks run meanwhile.
const BATCH_PAUSE: Duration = Duration::from_millis(50);
const PAUSE_PER_BATCH_TIME: u32 = 2;
/// Blob keys the orphan sweep looks at per prefix in one round.
const SWEEP_KEYS: usize = 1000;

/// How long finished tasks are kept, by status (`None`: forever), and how
/// the job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Completed tasks.
    pub completed: Option<Duration>,
    /// Failed tasks.
    pub failed: Option<Duration>,
    /// Cancelled tasks.
    pub cancelled: Option<Duration>,
    /// Age past which a body in the blob store that no task points to is
    /// deleted.
    pub orphaned_bodies: Duration,
    /// How often the job runs.
    pub interval: Duration,
}

const DAY: Duration = Duration::from_secs(24 * 3600);

impl Default for Retention {
    fn default() -> Self {
        Self {
            completed: Some(7 * DAY),
            failed: Some(30 * DAY),
            cancelled: Some(30 * DAY),
            orphaned_bodies: Duration::from_secs(3600),
            interval: Duration::from_secs(10),
        }
    }
}

impl Retention {
    /// The age of each terminal status.
    fn ages(&self) -> [(TaskStatus, Option<Duration>); 3] {
        [
            (TaskStatus::Completed, self.completed),
            (TaskStatus::Failed, self.failed),
            (TaskStatus::Cancelled, self.cancelled),
        ]
    }
}

/// Where the orphan sweep goes on from, per body prefix.
#[derive(Debug, Default)]
pub struct SweepCursor {
    after: [Option<String>; blobs::TASK_PREFIXES.len()],
}

/// What one round of the job deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retained {
    /// Finished tasks.
    pub tasks: usize,
    /// Their bodies in the blob store.
    pub bodies: usize,
    /// Bodies no task pointed to.
    pub orphaned_bodies: usize,
}

impl TaskService {
    /// Runs the retention job every [`Retention::interval`] until `stop`,
    /// whenever this host leads it.
    pub async fn retention(self: Arc<Self>, stop: CancellationToken) {
        let settings = self.config.retention.clone();
        let mut cursor = SweepCursor::default();
        let mut failing = false;
        loop {
            tokio::select! {
                () = tokio::time::sleep(settings.interval) => {}
                () = stop.cancelled() => return,
            }
            match self.retain_once(&mut cursor, &stop).await {
                Ok(done) => {
                    if failing {
                        tracing::info!("the retention job runs again");
                        failing = false;
                    }
                    if done != Retained::default() {
                        tracing::info!(
                            tasks = done.tasks,
                            bodies = done.bodies,
                            orphaned_bodies = done.orphaned_bodies,
                            "retention deleted finished tasks"
                        );
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "the retention job failed; retrying");
                        failing = true;
                    }
                }
            }
        }
    }

    /// One round of the retention job, if this host leads it (or takes the
    /// lead now): counts compacted, what is due deleted, one step of the
    /// orphan sweep.
    pub async fn retain_once(
        &self,
        cursor: &mut SweepCursor,
        stop: &CancellationToken,
    ) -> Result<Retained, ServiceError> {
        let settings = &self.config.retention;
        let hold = settings.interval * 3 + Duration::from_secs(30);
        if !self.store.lead(JOB, &self.config.owner, hold).await? {
            return Ok(Retained::default());
        }
        self.store.compact_counts().await?;
        let mut done = Retained::default();
        let now = Utc::now();
        let blob_store = self.bodies.blobs();
        for (status, age) in settings.ages() {
            let Some(before) = age.and_then(|age| before(now, age)) else {
                continue;
            };
            loop {
                let started = std::time::Instant::now();
                let expired = self.store.expire(status, before, BATCH).await?;
                let keys: Vec<String> = expired.iter().flat_map(|e| e.blobs.clone()).collect();
                done.tasks += expired.len();
                self.metrics
                    .record_retention(status.as_str(), expired.len());
                if let Some(blob_store) = blob_store
                    && !keys.is_empty()
                {
                    // Should this fail, the orphan sweep takes them later.
                    match blob_store.delete_many(&keys).await {
                        Ok(()) => {
                            done.bodies += keys.len();
                            self.metrics.record_retention("bodies", keys.len());
                        }
                        Err(e) => {
                            tracing::warn!(bodies = keys.len(), error = %e, "cannot delete the bodies of expired tasks; the orphan sweep takes them later");
                        }
                    }
                }
                if expired.len() < BATCH || stop.is_cancelled() {
                    break;
                }
                tokio::time::sleep(BATCH_PAUSE.max(started.elapsed() * PAUSE_PER_BATCH_TIME)).await;
                // A long backlog: stay the one host deleting it.
                if !self.store.lead(JOB, &self.config.owner, hold).await? {
                    return Ok(done);
                }
            }
        }
        if let Some(blob_store) = blob_store {
            done.orphaned_bodies = self
                .sweep_orphans(blob_store.as_ref(), cursor, now, settings.orphaned_bodies)
                .await?;
        }
        Ok(done)
    }

    /// One step of the orphan sweep: looks at the next keys of each body
    /// prefix and deletes those old enough that no task points to; how many.
    async fn sweep_orphans(
        &self,
        blob_store: &dyn BlobStore,
        cursor: &mut SweepCursor,
        now: DateTime<Utc>,
        age: Duration,
    ) -> Result<usize, ServiceError> {
        let Some(written_before) = before(now, age) else {
            return Ok(0);
        };
        let mut deleted = 0;
        for (prefix, after) in blobs::TASK_PREFIXES.iter().zip(cursor.after.iter_mut()) {
            let listed = blob_store
                .list(prefix, after.as_deref(), SWEEP_KEYS)
                .await?;
            // A short page was the end: start again from the first key.
            *after = (listed.len() >= SWEEP_KEYS)
                .then(|| listed.last().map(|blob| blob.key.clone()))
                .flatten();
            let mut orphans = Vec::new();
            for blob in listed.into_iter().filter(|b| b.written_at < written_before) {
                let Some(id) = blobs::task_of_key(&blob.key) else {
                    continue; // not a body this host writes
                };
                let pointed_to = self
                    .store
                    .load(id)
                    .await?
                    .is_some_and(|task| task.blobs().any(|body| body.key == blob.key));
                if !pointed_to {
                    orphans.push(blob.key);
                }
            }
            if !orphans.is_empty() {
                blob_store.delete_many(&orphans).await?;
                deleted += orphans.len();
                self.metrics
                    .record_retention("orphaned_bodies", orphans.len());
            }
        }
        Ok(deleted)
    }
}

/// `now` less `age`; `None` when that is before any time there is.
fn before(now: DateTime<Utc>, age: Duration) -> Option<DateTime<Utc>> {
    chrono::Duration::from_std(age)
        .ok()
        .and_then(|age| now.checked_sub_signed(age))
}
