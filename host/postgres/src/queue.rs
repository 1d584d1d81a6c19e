//! The tasks table as the queue (`TASKFLOW_QUEUE=postgres`), for fleets that
//! have PostgreSQL and nothing else.
//!
//! A pending row is a queued task: there is nothing to push. The store
//! claims due rows with `FOR UPDATE SKIP LOCKED` in priority then submission
//! order ([`PgStore::claim_due`]), so the order is exact across every host,
//! several at a time for the workers waiting here, and the queue delivers
//! their ids: a worker's claim of a delivered id takes the store's claim as
//! made (see [`taskflow_backend::storage::lease`]). Hosts wake on `LISTEN/NOTIFY` (a trigger
//! notifies when a row becomes pending) and poll as well, since
//! notifications are best effort; delayed retries wait in `visible_at`, out of
//! the index claims walk until a claim finds them due.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::PgStore;
use crate::store::{is_pending, pending_depth};
use taskflow_backend::queue::{
    Delivery, Queue, QueueDepth, QueueEntry, QueueError, QueueRequests, Waiting,
};
use taskflow_backend::storage::StorageError;
use taskflow_model::task::{PRIORITY_HIGHEST, PRIORITY_LOWEST, TaskId};

/// The channel the `tasks_pending` trigger notifies.
const CHANNEL: &str = "taskflow_pending";
/// Most tasks claimed in one round trip.
const MAX_CLAIM: usize = 32;
/// Least time between two claims of a host: workers that come free
/// meanwhile are claimed for together, one round trip for all.
const CLAIM_COOLDOWN: Duration = Duration::from_millis(5);
/// After a claim that found nothing, how long a host claims again only on a
/// notification: an idle host polls twice a second, whatever its workers.
/// (A retry whose backoff ends is found by this poll: it notifies nothing.)
const IDLE_POLL: Duration = Duration::from_millis(500);

/// The PostgreSQL queue. Dropping it stops its listener.
pub struct PgQueue {
    claims: Arc<Claims>,
    stop: CancellationToken,
}

/// What a claim needs, shared with the claim in flight: a claim runs in a
/// task of its own, so a `pop` dropped meanwhile (a worker stopping) loses
/// nothing: what it claimed waits in the buffer, for the next `pop` or for
/// [`Queue::held`].
struct Claims {
    store: PgStore,
    owner: String,
    ttl: Duration,
    /// Claimed for this host, not yet handed to a worker.
    claimed: Mutex<VecDeque<QueueEntry>>,
    /// One claim query at a time; it claims for every waiting worker.
    claiming: tokio::sync::Mutex<LastClaim>,
    /// Workers inside `pop`.
    waiting: AtomicUsize,
    /// Wakes the workers waiting for a task: on a notification, and when a
    /// claim took some for them.
    wake: Arc<Notify>,
    /// What the notification channel heard.
    heard: Arc<Heard>,
    /// Claim queries, and depth queries (stats, metrics), made so far.
    claim_queries: AtomicU64,
    depth_queries: AtomicU64,
}

/// The last claim of a host.
#[derive(Debug, Default)]
struct LastClaim {
    /// When it was made.
    at: Option<tokio::time::Instant>,
    /// Set when it found nothing: the notifications heard before it, and
    /// when. Nothing can be due before the next notification or poll.
    empty: Option<(u64, tokio::time::Instant)>,
}

/// The notification channel as the claims see it.
#[derive(Debug, Default)]
struct Heard {
    /// Notifications received so far.
    notifications: AtomicU64,
    /// Whether the channel is up (else every claim queries: polling).
    listening: AtomicBool,
}

impl Claims {
    fn buffer(&self) -> std::sync::MutexGuard<'_, VecDeque<QueueEntry>> {
        self.claimed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Claims due rows for every waiting worker into the buffer, unless the
    /// buffer already holds some (claimed by the claim before); whether
    /// the buffer holds any afterwards.
    async fn claim(self: Arc<Self>) -> Result<bool, QueueError> {
        let mut last = self.claiming.lock().await;
        if !self.buffer().is_empty() {
            return Ok(true);
        }
        let heard = self.heard.notifications.load(Ordering::Acquire);
        if let Some((before, at)) = last.empty
            && before == heard
            && self.heard.listening.load(Ordering::Acquire)
            && at.elapsed() < IDLE_POLL
        {
            return Ok(false); // nothing new since a claim found nothing
        }
        // Right after a claim, wait a moment: the workers that come free
        // meanwhile wait on the lock and are counted in.
        if let Some(at) = last.at {
            tokio::time::sleep_until(at + CLAIM_COOLDOWN).await;
        }
        // Read before the query: a notification that comes during it makes
        // the next claim query again.
        let heard = self.heard.notifications.load(Ordering::Acquire);
        let now = tokio::time::Instant::now();
        last.at = Some(now);
        self.claim_queries.fetch_add(1, Ordering::Relaxed);
        let want = self.waiting.load(Ordering::Relaxed).clamp(1, MAX_CLAIM);
        let claimed = self
            .store
            .claim_due(&self.owner, self.ttl, want)
            .await
            .map_err(from_storage)?;
        let count = claimed.len();
        last.empty = (count == 0).then_some((heard, now));
        self.buffer().extend(claimed.iter().map(QueueEntry::from));
        if count > 1 {
            // Claimed for workers that wait for a notification too.
            self.wake.notify_waiters();
        }
        Ok(count > 0)
    }
}

fn delivery_of(entry: QueueEntry) -> Delivery {
    let receipt = format!("postgres:{}", entry.id);
    Delivery::first(entry, receipt)
}

impl PgQueue {
    /// A queue over the tasks table of `store`, which claims for `owner`
    /// with leases of `ttl`; starts listening for new tasks.
    pub async fn start(store: PgStore, owner: String, ttl: Duration) -> Result<Self, QueueError> {
        let mut listener = PgListener::connect_with(store.pool())
            .await
            .map_err(unavailable)?;
        listener.listen(CHANNEL).await.map_err(unavailable)?;
        let wake = Arc::new(Notify::new());
        let heard = Arc::new(Heard::default());
        heard.listening.store(true, Ordering::Release);
        let stop = CancellationToken::new();
        tokio::spawn(listen(listener, wake.clone(), heard.clone(), stop.clone()));
        Ok(Self {
            claims: Arc::new(Claims {
                store,
                owner,
                ttl,
                claimed: Mutex::new(VecDeque::new()),
                claiming: tokio::sync::Mutex::new(LastClaim::default()),
                waiting: AtomicUsize::new(0),
                wake,
                heard,
                claim_queries: AtomicU64::new(0),
                depth_queries: AtomicU64::new(0),
            }),
            stop,
        })
    }

    fn take(&self) -> Option<Delivery> {
        self.claims.buffer().pop_front().map(delivery_of)
    }

    fn pool(&self) -> &PgPool {
        self.claims.store.pool()
    }
}

impl Drop for PgQueue {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Wakes waiting workers on every notification, until `stop`. The listener
/// reconnects by itself after a lost connection; workers poll meanwhile.
async fn listen(
    mut listener: PgListener,
    wake: Arc<Notify>,
    heard: Arc<Heard>,
    stop: CancellationToken,
) {
    let mut failing = false;
    loop {
        let received = tokio::select! {
            received = listener.recv() => received,
            () = stop.cancelled() => return,
        };
        match received {
            Ok(_) => {
                failing = false;
                heard.notifications.fetch_add(1, Ordering::AcqRel);
                heard.listening.store(true, Ordering::Release);
                wake.notify_waiters();
            }
            Err(e) => {
                heard.listening.store(false, Ordering::Release);
                if !failing {
                    tracing::warn!(error = %e, "lost the PostgreSQL notification channel; polling until it is back");
                    failing = true;
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = stop.cancelled() => return,
                }
            }
        }
    }
}

fn unavailable(error: impl std::fmt::Display) -> QueueError {
    QueueError::Unavailable(format!("PostgreSQL: {error}"))
}

fn from_storage(error: StorageError) -> QueueError {
    QueueError::Unavailable(error.to_string())
}

#[async_trait::async_trait]
impl Queue for PgQueue {
    /// Nothing to do: the pending row is the queue entry (a trigger wakes the hosts).
    async fn push(&self, entry: QueueEntry, _delay: Duration) -> Result<(), QueueError> {
        if !(PRIORITY_HIGHEST..=PRIORITY_LOWEST).contains(&entry.priority) {
            return Err(QueueError::InvalidPriority(entry.priority));
        }
        Ok(())
    }

    async fn pop(&self, wait: Duration) -> Result<Option<Delivery>, QueueError> {
        let _waiting = Waiting::new(&self.claims.waiting);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(delivery) = self.take() {
                return Ok(Some(delivery));
            }
            let notified = self.claims.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let claimed = tokio::spawn(self.claims.clone().claim())
                .await
                .map_err(|e| QueueError::Unavailable(format!("the claim stopped: {e}")))??;
            if claimed {
                continue;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(None);
            }
        }
    }

    fn held(&self) -> Vec<Delivery> {
        self.claims.buffer().drain(..).map(delivery_of).collect()
    }

    /// Nothing to do: the task's own row records that it finished.
    async fn ack(&self, _delivery: &Delivery) -> Result<(), QueueError> {
        Ok(())
    }

    /// Nothing to do: a cancelled row is no longer pending.
    async fn remove(&self, id: TaskId) -> Result<bool, QueueError> {
        is_pending(self.pool(), id).await.map_err(from_storage)
    }

    async fn contains(&self, id: TaskId) -> Result<Option<bool>, QueueError> {
        is_pending(self.pool(), id)
            .await
            .map(Some)
            .map_err(from_storage)
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        self.claims.depth_queries.fetch_add(1, Ordering::Relaxed);
        let rows = pending_depth(self.pool()).await.map_err(from_storage)?;
        let mut depth = QueueDepth {
            ready: (PRIORITY_HIGHEST..=PRIORITY_LOWEST)
                .map(|priority| (priority, 0))
                .collect(),
            ..QueueDepth::default()
        };
        for (priority, ready, delayed) in rows {
            let (ready, delayed) = (
                u64::try_from(ready).unwrap_or(0),
                u64::try_from(delayed).unwrap_or(0),
            );
            if let Some(slot) = u8::try_from(priority)
                .ok()
                .and_then(|p| depth.ready.get_mut(&p))
            {
                *slot += ready;
            }
            depth.delayed += delayed;
            depth.total += ready + delayed;
        }
        Ok(depth)
    }

    async fn check(&self) -> Result<(), QueueError> {
        sqlx::query("SELECT 1")
            .execute(self.pool())
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    /// Claim queries (`tasks`) and depth queries (`status`): what an idle
    /// or a busy host asks of the database for its queue.
    fn requests(&self) -> Option<QueueRequests> {
        Some(QueueRequests {
            tasks: self.claims.claim_queries.load(Ordering::Relaxed),
            status: self.claims.depth_queries.load(Ordering::Relaxed),
        })
    }

    fn is_shared(&self) -> bool {
        true
    }
}
