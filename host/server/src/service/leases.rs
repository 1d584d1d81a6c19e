//! Ownership of running tasks: this host's claim (the store's
//! [`TaskStore::claim`](taskflow_backend::storage::TaskStore::claim), which starts an
//! attempt under a lease), the heartbeat that renews this host's leases (and
//! hears cancel requests), and the reaper that takes back the tasks of hosts
//! that stopped renewing theirs.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use taskflow_backend::queue::QueueEntry;
use taskflow_backend::storage::{Change, Claim, Held, LeaseState, StorageError};
use taskflow_model::task::{Task, TaskId, TaskStatus};

use super::{ServiceError, TaskService};

/// The reaper's name in the store's table of fleet jobs.
const REAPER_JOB: &str = "reaper";
/// Expired leases taken back per reaper round.
const REAP_BATCH: usize = 256;

/// When this host last saw the store fail. Through an outage no host can
/// renew its leases, and they run out though their hosts still run their
/// tasks: the reaper of a host that saw the store fail holds off for a
/// lease, which gives every live host's heartbeat (a third of a lease) time
/// to renew. A host cut off alone sees the failures; the others do not, and
/// take its tasks back as they should.
#[derive(Debug, Default)]
pub(super) struct StoreTrouble(std::sync::Mutex<Option<Instant>>);

impl StoreTrouble {
    /// The store just failed here.
    pub(super) fn seen(&self) {
        *self.lock() = Some(Instant::now());
    }

    /// Whether the store failed here within `window`.
    fn within(&self, window: Duration) -> bool {
        self.lock().is_some_and(|at| at.elapsed() < window)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl TaskService {
    /// Claims the task `id` for this host, starting its next attempt.
    pub(super) async fn claim(&self, id: TaskId) -> Result<Claim, StorageError> {
        self.store
            .claim(id, &self.config.owner, self.config.lease)
            .await
    }

    /// Interval of the heartbeat: a third of the lease, at most 2 s (it also
    /// carries progress and cancel requests between hosts).
    pub fn heartbeat_interval(&self) -> Duration {
        (self.config.lease / 3).clamp(Duration::from_millis(100), Duration::from_secs(2))
    }

    /// Renews the leases of the tasks running here, until `stop`. A task
    /// whose lease is gone is stopped (its outcome would be refused anyway);
    /// a task someone asked to cancel is interrupted.
    pub async fn heartbeat(self: Arc<Self>, stop: CancellationToken) {
        let mut ticks = ticks(self.heartbeat_interval());
        let mut failing = false;
        let mut extending: Option<tokio::task::JoinHandle<()>> = None;
        while next_tick(&mut ticks, &stop).await {
            let held: Vec<Held> = self
                .running_lock()
                .iter()
                .map(|(id, r)| Held {
                    id: *id,
                    token: r.token,
                    progress: r.live.progress(),
                    logs: r.live.unpublished(),
                })
                .collect();
            if held.is_empty() {
                continue;
            }
            let renewed = match self
                .store
                .renew(&self.config.owner, &held, self.config.lease)
                .await
            {
                Ok(renewed) => renewed,
                Err(e) => {
                    self.store_trouble.seen();
                    self.unpublish(&held);
                    if !failing {
                        tracing::warn!(error = %e, "cannot renew the leases of running tasks; retrying");
                        failing = true;
                    }
                    continue;
                }
            };
            if failing {
                tracing::info!("leases renewed again");
                failing = false;
            }
            let still_held: Vec<_> = {
                let running = self.running_lock();
                renewed
                    .iter()
                    .filter_map(|r| running.get(&r.id).map(|run| run.delivery.clone()))
                    .collect()
            };
            // The queue's extension runs beside the heartbeat: a queue that
            // hangs (its link stalled) must not hold up the store's renewals,
            // which are what keeps a task this host's. One at a time.
            if extending
                .as_ref()
                .is_none_or(tokio::task::JoinHandle::is_finished)
            {
                let this = self.clone();
                extending = Some(tokio::spawn(async move {
                    if let Err(e) = this.queue.extend(&still_held, this.config.lease).await {
                        tracing::warn!(error = %e, "cannot keep the queue entries of running tasks invisible");
                    }
                }));
            } else {
                tracing::debug!(
                    "the queue has not answered the last extension yet; skipping this one"
                );
            }
            let running = self.running_lock();
            for h in &held {
                let Some(run) = running.get(&h.id).filter(|r| r.token == h.token) else {
                    continue;
                };
                match renewed.iter().find(|r| r.id == h.id) {
                    Some(r) if r.cancel_requested => run.stop.notify_one(),
                    Some(_) => {}
                    None => {
                        run.lost.store(true, Ordering::Release);
                        run.stop.notify_one();
                    }
                }
            }
        }
        if let Some(extending) = extending {
            extending.abort();
        }
    }

    /// The renewal that carried `held`'s log lines failed: they go with the
    /// next one.
    fn unpublish(&self, held: &[Held]) {
        let running = self.running_lock();
        for h in held.iter().filter(|h| h.logs.is_some()) {
            if let Some(run) = running.get(&h.id) {
                run.live.unpublish();
            }
        }
    }

    /// Interval of the reaper: half a lease, at least 200 ms.
    pub fn reaper_interval(&self) -> Duration {
        (self.config.lease / 2).max(Duration::from_millis(200))
    }

    /// Takes back expired leases every reaper interval, until `stop`, while
    /// this host leads the reaper.
    pub async fn reaper(self: Arc<Self>, stop: CancellationToken) {
        let mut ticks = ticks(self.reaper_interval());
        let mut failing = false;
        while next_tick(&mut ticks, &stop).await {
            if self.store_trouble.within(self.config.lease) {
                // Leases that ran out in an outage are being renewed now.
                continue;
            }
            let reaped = self.reap_if_leading().await;
            match reaped {
                Ok(()) if failing => {
                    tracing::info!("the reaper works again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) => {
                    self.store_trouble.seen();
                    if !failing {
                        tracing::warn!(error = %e, "cannot take back expired leases; retrying");
                        failing = true;
                    }
                }
            }
        }
    }

    /// One round of the reaper, if this host leads it (one host of a fleet
    /// at a time, so reapers do not queue on each other's row locks; should
    /// the leader stop, another takes over within a lease).
    async fn reap_if_leading(&self) -> Result<(), ServiceError> {
        let owner = &self.config.owner;
        if !self
            .store
            .lead(REAPER_JOB, owner, self.config.lease)
            .await?
        {
            return Ok(());
        }
        self.reap().await?;
        self.fail_dead_letters().await
    }

    /// Takes back every running task whose lease expired: pending again
    /// (and queued) while attempts are left, failed as interrupted otherwise,
    /// cancelled when a cancel was requested. Each is re-checked under its
    /// lock, so hosts reaping at once take a task back once. Returns how
    /// many went back to pending, and how many were reaped in all.
    pub async fn reap(&self) -> Result<(usize, usize), ServiceError> {
        let (mut requeued, mut reaped) = (0, 0);
        loop {
            let expired = self.store.expired(REAP_BATCH).await?;
            let round = expired.len();
            let mut unreadable = 0;
            for id in expired {
                let change = Box::new(|task: &mut Task, lease: &LeaseState| {
                    if task.status != TaskStatus::Running || !lease.expired {
                        return Change::Keep;
                    }
                    if lease.cancel_requested {
                        task.cancel(Utc::now());
                    } else {
                        task.interrupt(Utc::now());
                    }
                    Change::Save
                });
                let updated = match self.store.update(id, change).await {
                    Ok(Some(updated)) => updated,
                    Ok(None) => continue,
                    // Written by a newer version, say: left to a host that
                    // can read it; the others are taken back all the same.
                    Err(e @ StorageError::Corrupt { .. }) => {
                        tracing::error!(task_id = %id, error = %e, "cannot read a task whose lease expired; leaving it to a host that can");
                        unreadable += 1;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                if updated.change != Change::Save {
                    continue;
                }
                reaped += 1;
                let task = updated.task;
                tracing::warn!(task_id = %id, status = %task.status, "took back a task whose lease expired");
                if task.status == TaskStatus::Pending {
                    // A queue that redelivers brings the entry the stopped
                    // host never acknowledged back by itself.
                    if !self.queue.redelivers() {
                        self.queue
                            .push(QueueEntry::from(&task), Duration::ZERO)
                            .await?;
                    }
                    requeued += 1;
                }
            }
            // A full round of rows this host cannot read would come back
            // the same: the next tick tries again.
            if round < REAP_BATCH || unreadable == round {
                return Ok((requeued, reaped));
            }
        }
    }
}

impl TaskService {
    /// Fails the tasks whose queue entries were given up on after too many
    /// deliveries (a task that kept stopping its hosts), then drops those
    /// entries.
    async fn fail_dead_letters(&self) -> Result<(), ServiceError> {
        loop {
            let dead = self.queue.dead_letters().await?;
            if dead.is_empty() {
                return Ok(());
            }
            for letter in &dead {
                let deliveries = letter.receive_count;
                let change = Box::new(move |task: &mut Task, lease: &LeaseState| {
                    // A task still held by a live host finishes on its own.
                    if task.status.is_terminal()
                        || (task.status == TaskStatus::Running && !lease.expired)
                    {
                        return Change::Keep;
                    }
                    task.status = TaskStatus::Failed;
                    task.finished_at = Some(Utc::now());
                    task.retry_at = None;
                    task.last_error = Some(taskflow_model::task::TaskError {
                        kind: taskflow_runtime::FailureKind::Interrupted,
                        message: format!(
                            "delivered {deliveries} times without finishing (it kept stopping its hosts); the dead-letter queue caught it"
                        ),
                    });
                    Change::Save
                });
                let Some(updated) = self.store.update(letter.id, change).await? else {
                    continue;
                };
                if updated.change == Change::Save {
                    tracing::error!(task_id = %letter.id, deliveries, "task failed: its queue entry went to the dead-letter queue");
                } else if updated.task.status == TaskStatus::Running {
                    // Its runner finishes it; but should the runner stop
                    // first, the task needs an entry to run again from, and
                    // its only one is this dead letter: a fresh one, out of
                    // sight for a lease, takes its place.
                    self.queue
                        .push(QueueEntry::from(&updated.task), self.config.lease)
                        .await?;
                    tracing::warn!(task_id = %letter.id, deliveries, "a running task's queue entry went to the dead-letter queue; queued it again behind its lease");
                }
            }
            self.queue.bury(&dead).await?;
        }
    }
}

/// An interval that lets a late tick go rather than catching up.
fn ticks(period: Duration) -> tokio::time::Interval {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks
}

/// Waits for the next tick; `false` once `stop` is cancelled.
async fn next_tick(ticks: &mut tokio::time::Interval, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = ticks.tick() => true,
        () = stop.cancelled() => false,
    }
}
