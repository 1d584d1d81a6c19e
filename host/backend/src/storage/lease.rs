//! Ownership of running tasks by lease: the vocabulary of the store seam,
//! and the in-memory lease table of single-host stores.
//!
//! A host owns a task only while it holds its lease: a claim sets the owner,
//! an expiry and a fencing token that grows with every claim; the holder
//! renews the lease while the task runs, and every later write of the holder
//! is conditional on the token, so a host that lost its lease (killed,
//! paused, cut off) cannot overwrite what another host did since.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;

use taskflow_model::attempt::RunLogs;
use taskflow_model::task::{Begin, Task, TaskId, TaskStatus};

use super::{StorageError, TaskStore};

/// A task claimed for a host: its state after the claim, and the claim's
/// fencing token.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    /// The task, running its new attempt.
    pub task: Task,
    /// The claim's fencing token.
    pub token: u64,
}

/// What [`claim`](super::TaskStore::claim) found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Claimed for the asking host: run it.
    Run(Box<Claimed>),
    /// Waiting out a retry backoff for this much longer.
    NotDue(Duration),
    /// Not to be run: cancelled, finished, gone, or failed now for want of
    /// attempts.
    Skip,
    /// Running on another host, which holds its lease.
    Busy,
}

/// The change that claims a pending task for `owner`; a task still marked
/// running whose lease expired (its host stopped, and its queue entry came
/// back before the reaper) is taken over.
fn claim_change(
    task: &mut Task,
    lease: &LeaseState,
    owner: &str,
    ttl: Duration,
) -> (Begin, Change) {
    if task.status == TaskStatus::Running && lease.expired {
        if lease.cancel_requested {
            task.cancel(Utc::now());
            return (Begin::NotPending, Change::Save);
        }
        if !task.interrupt(Utc::now()) {
            return (Begin::Exhausted, Change::Save);
        }
    }
    match task.begin_attempt(owner, Utc::now()) {
        Begin::Started => (
            Begin::Started,
            Change::Claim {
                owner: owner.to_string(),
                ttl,
            },
        ),
        Begin::Exhausted => (Begin::Exhausted, Change::Save),
        other => (other, Change::Keep),
    }
}

/// [`TaskStore::claim`] made of [`TaskStore::update`]: the claim of every
/// store, the one place that sets owner, lease and token.
pub async fn claim_by_update<S: TaskStore + ?Sized>(
    store: &S,
    id: TaskId,
    owner: &str,
    ttl: Duration,
) -> Result<Claim, StorageError> {
    let owner = owner.to_string();
    let begun = std::sync::Arc::new(Mutex::new(Some(Begin::NotPending)));
    let seen = begun.clone();
    let change = Box::new(move |task: &mut Task, lease: &LeaseState| {
        let running = task.status == TaskStatus::Running;
        let (begin, change) = claim_change(task, lease, &owner, ttl);
        let begin = match begin {
            Begin::NotPending if running && change == Change::Keep => None,
            begin => Some(begin),
        };
        *seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = begin;
        change
    });
    let Some(updated) = store.update(id, change).await? else {
        return Ok(Claim::Skip);
    };
    let begin = *begun
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Ok(match begin {
        Some(Begin::Started) => Claim::Run(Box::new(Claimed {
            task: updated.task,
            token: updated.token,
        })),
        Some(Begin::NotDue(wait)) => Claim::NotDue(wait),
        Some(Begin::Exhausted | Begin::NotPending) => Claim::Skip,
        None => Claim::Busy,
    })
}

/// A task's lease as stored, as [`update`](super::TaskStore::update) shows it
/// to the change function.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseState {
    /// The host holding (or that last held) the task.
    pub owner: Option<String>,
    /// Fencing token of the latest claim.
    pub token: u64,
    /// A running task whose lease has run out, or that no live host holds.
    pub expired: bool,
    /// A cancel was requested for the running task.
    pub cancel_requested: bool,
}

/// What [`update`](super::TaskStore::update) writes after its change function ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Nothing.
    Keep,
    /// The task as changed; the lease stays while it runs and goes otherwise.
    Save,
    /// The task as changed, claimed by `owner` for `ttl` under a new token.
    Claim {
        /// The claiming host.
        owner: String,
        /// Lease length.
        ttl: Duration,
    },
    /// Only a cancel request, for the lease holder to act on.
    RequestCancel,
}

/// A change function: sees the stored task and its lease, edits the task,
/// and says what to write.
pub type ChangeFn = Box<dyn FnOnce(&mut Task, &LeaseState) -> Change + Send>;

/// The task after an [`update`](super::TaskStore::update).
#[derive(Debug, Clone)]
pub struct Updated {
    /// The task as stored now.
    pub task: Task,
    /// Its fencing token now.
    pub token: u64,
    /// What was written.
    pub change: Change,
}

/// What the lease holder's [`save_leased`](super::TaskStore::save_leased) wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    /// The task as given.
    Written,
    /// The task was to go back to pending (a retry), but a cancel had been
    /// requested meanwhile: it was written cancelled instead, so a cancel
    /// answered never meets another attempt.
    Cancelled,
    /// Nothing: the lease was lost (another claim, or the task no longer
    /// runs).
    Lost,
}

impl Saved {
    /// The task as it must be stored when its holder saves `task` and a
    /// cancel was (`cancel_requested`) or was not requested: a retry
    /// becomes a cancel; a result or a final failure stands, as its attempt
    /// finished before the interruption reached it.
    pub fn outcome(task: &Task, cancel_requested: bool) -> Option<Task> {
        (cancel_requested && task.status == taskflow_model::task::TaskStatus::Pending).then(|| {
            let mut cancelled = task.clone();
            cancelled.cancel(chrono::Utc::now());
            cancelled
        })
    }

    /// Whether `stored` already holds the outcome `saving` records, but for
    /// the times a holder stamps anew each time it tries to save (when it
    /// finished, when to retry): a save tried again after its answer was
    /// lost finds its own write, and is answered [`Saved::Written`].
    pub fn already(stored: &Task, saving: &Task) -> bool {
        let unstamped = |task: &Task| Task {
            finished_at: None,
            retry_at: None,
            ..task.clone()
        };
        stored.status != taskflow_model::task::TaskStatus::Running
            && unstamped(stored) == unstamped(saving)
    }
}

/// A lease a host holds, as it renews it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The task.
    pub id: TaskId,
    /// The token of the claim.
    pub token: u64,
    /// Progress to publish, percent.
    pub progress: u8,
    /// The running attempt's log lines so far (within the record's
    /// bounds) to publish; `None` when unchanged since the last renewal.
    pub logs: Option<RunLogs>,
}

/// What the holder of a running task's lease last published of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    /// Progress, percent.
    pub progress: u8,
    /// The running attempt's log lines so far.
    pub logs: RunLogs,
}

/// A lease still held after a renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewed {
    /// The task.
    pub id: TaskId,
    /// Someone asked to cancel it.
    pub cancel_requested: bool,
}

/// The leases of a store that only one process opens: held in memory, so a
/// task stored as running when the process starts has no lease (its host is
/// gone) and counts as expired.
#[derive(Debug, Default)]
pub struct LeaseTable {
    leases: Mutex<HashMap<TaskId, Entry>>,
    tokens: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Clone)]
struct Entry {
    owner: String,
    token: u64,
    expires: Instant,
    cancel_requested: bool,
    published: Published,
}

impl LeaseTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, Entry>> {
        self.leases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The lease state of `task` (running or not).
    pub fn state(&self, task: &Task) -> LeaseState {
        let running = task.status == taskflow_model::task::TaskStatus::Running;
        match self.lock().get(&task.id) {
            Some(entry) => LeaseState {
                owner: Some(entry.owner.clone()),
                token: entry.token,
                expired: running && entry.expires <= Instant::now(),
                cancel_requested: entry.cancel_requested,
            },
            None => LeaseState {
                expired: running,
                ..LeaseState::default()
            },
        }
    }

    /// Records what `change` did to the lease of `task`; the token now.
    pub fn apply(&self, task: &Task, change: &Change) -> u64 {
        let mut leases = self.lock();
        match change {
            Change::Claim { owner, ttl } => {
                let token = self
                    .tokens
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    + 1;
                let expires = Instant::now() + *ttl;
                leases.insert(
                    task.id,
                    Entry {
                        owner: owner.clone(),
                        token,
                        expires,
                        cancel_requested: false,
                        published: Published::default(),
                    },
                );
                token
            }
            Change::RequestCancel => match leases.get_mut(&task.id) {
                Some(entry) => {
                    entry.cancel_requested = true;
                    entry.token
                }
                None => 0,
            },
            Change::Save | Change::Keep => {
                let token = leases.get(&task.id).map_or(0, |entry| entry.token);
                if *change == Change::Save
                    && task.status != taskflow_model::task::TaskStatus::Running
                {
                    leases.remove(&task.id);
                }
                token
            }
        }
    }

    /// Whether `token` is the current claim of `id`, and whether a cancel
    /// was requested under it; `None` when it is not.
    pub fn holds(&self, id: TaskId, token: u64) -> Option<bool> {
        self.lock()
            .get(&id)
            .filter(|entry| entry.token == token)
            .map(|entry| entry.cancel_requested)
    }

    /// Drops the lease of `id` (its task is no longer running).
    pub fn release(&self, id: TaskId) {
        self.lock().remove(&id);
    }

    /// Extends the leases still held as `held` says; those that are.
    pub fn renew(&self, owner: &str, held: &[Held], ttl: Duration) -> Vec<Renewed> {
        let mut leases = self.lock();
        let expires = Instant::now() + ttl;
        held.iter()
            .filter_map(|h| {
                let entry = leases
                    .get_mut(&h.id)
                    .filter(|e| e.token == h.token && e.owner == owner)?;
                entry.expires = expires;
                entry.published.progress = h.progress;
                if let Some(logs) = &h.logs {
                    entry.published.logs = logs.clone();
                }
                Some(Renewed {
                    id: h.id,
                    cancel_requested: entry.cancel_requested,
                })
            })
            .collect()
    }

    /// What the holder of a leased task published of it.
    pub fn published(&self, id: TaskId) -> Option<Published> {
        self.lock().get(&id).map(|entry| entry.published.clone())
    }

    /// Which of `running` (the ids stored as running) have no live lease.
    pub fn expired(&self, running: impl IntoIterator<Item = TaskId>) -> Vec<TaskId> {
        let leases = self.lock();
        let now = Instant::now();
        running
            .into_iter()
            .filter(|id| leases.get(id).is_none_or(|entry| entry.expires <= now))
            .collect()
    }
}
