//! The embedded store: one JSON file per task, sharded by the id's first two
//! characters (`<root>/ab/abcd….json`), each written atomically, behind a
//! write-ahead [journal](super::journal).
//!
//! A save is appended to the journal by one writer thread, which takes every
//! save waiting at that moment in one write (group commit), and returns once
//! written: the change is persisted. Its JSON stays in memory, *dirty*,
//! until a checkpoint (every [`CHECKPOINT_INTERVAL`], or sooner when much is
//! dirty) writes the latest state of each dirty task that has finished or
//! has not changed for a while to its file, and drops the journal segments
//! no longer needed. A task accepted, run and finished within a second is
//! written to its file once. At open, the files are read and the journal
//! replayed over them.
//!
//! An in-memory index of task summaries answers list, count and idempotency
//! queries without touching the disk; full tasks come from the dirty set or
//! from their file. One process at a time may open a store (a lock file).

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use crate::journal::{self, Journal, Record};
use taskflow_backend::storage::lease::{
    self, ChangeFn, Held, LeaseTable, Published, Renewed, Saved, Updated,
};
use taskflow_backend::storage::{
    Cursor, Expired, HostBeat, ListFacts, ListQuery, StatusCounts, StorageError, Submitted,
    TaskPage, TaskStore, blocking, io_error,
};
use taskflow_fs::{sync_filesystem, write_atomic};
use taskflow_model::FailureKind;
use taskflow_model::task::{Task, TaskId, TaskStatus};

/// Directory under the root where unreadable task files are moved at open.
pub const CORRUPT_DIR: &str = "corrupt";

/// How often dirty tasks are written to their files.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(200);

/// How long a pending or running task stays out of its file, in the hope
/// that it finishes first.
const SETTLE_TIME: Duration = Duration::from_secs(1);

/// Dirty tasks, or bytes of their JSON, that bring the next checkpoint
/// forward and make it write every dirty task.
const CHECKPOINT_SOON: usize = 8_192;
const CHECKPOINT_SOON_BYTES: usize = 16 << 20;

/// Dirty tasks, and bytes of their JSON, past which saves wait for the
/// checkpoint: memory stays bounded when the disk falls behind.
const MAX_DIRTY_TASKS: usize = 65_536;
const MAX_DIRTY_BYTES: usize = 64 << 20;

/// Dirty tasks written between two updates of the dirty set.
const CHECKPOINT_CHUNK: usize = 1024;

/// Longest a save waits for a full dirty set to drain before it is refused.
const MAX_WAIT_FOR_ROOM: Duration = Duration::from_secs(5);

/// Most changes (a save, a delete, or a batch of saves) appended in one write.
const MAX_BATCH: usize = 1024;

/// Sharded JSON-file task store. Cheap to clone; clones share one index,
/// journal and pair of background threads, which stop, after a last
/// checkpoint, when the last clone is dropped (the drop waits for it).
#[derive(Clone)]
pub struct FileStore {
    handle: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
    /// Changes on their way to the journal writer; `None` once closing.
    changes: Option<mpsc::Sender<Change>>,
    threads: Vec<JoinHandle<()>>,
    /// Held open until the threads are stopped: the lock that keeps a
    /// second process out.
    _lock_file: File,
    /// One insert with idempotency keys at a time: its look-ups and its
    /// append are one step.
    keyed_inserts: tokio::sync::Mutex<()>,
    /// Stripes serialising the read-change-write of one task ([`TaskStore::update`]).
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// Leases of running tasks: in memory, since one process opens the store.
    leases: LeaseTable,
    /// Heartbeats of the hosts: this process's only, since one opens the store.
    hosts: Mutex<HashMap<String, HostBeat>>,
}

/// Lock stripes of [`Handle::stripes`].
const STRIPES: usize = 256;

/// The stripe of [`Handle::stripes`] that serialises changes of `id`.
fn stripe_of(id: TaskId) -> usize {
    usize::from(id.as_uuid().as_bytes()[15]) % STRIPES
}

struct Shared {
    root: PathBuf,
    fsync: bool,
    state: Mutex<State>,
    /// Wakes the checkpointer early: much is dirty, or the store closes.
    checkpoint_due: Condvar,
    /// Wakes the writer held back by a full dirty set.
    room: Condvar,
    /// Locked across an append and the state update that follows it, so a
    /// checkpoint that rotates the journal knows every sealed record is in
    /// the dirty set. Lock order: journal, then state.
    journal: Mutex<Journal>,
    /// One checkpoint at a time.
    checkpointing: Mutex<Flushes>,
    /// A flush of the task files failed (fsync only). Linux reports a lost
    /// write once, so no later flush can vouch for the files: the journal is
    /// kept whole until the next start replays it.
    flush_failed: AtomicBool,
    /// The submission sequence number of the next inserted task: above
    /// every stored one.
    next_sequence: AtomicU64,
}

/// Task-file writes not yet flushed to disk (fsync only).
#[derive(Default)]
struct Flushes {
    pending: bool,
}

struct State {
    index: Index,
    dirty: HashMap<TaskId, Dirty>,
    dirty_bytes: usize,
    /// Orders the changes, so a checkpoint can tell whether a dirty entry
    /// changed again while it was written.
    next_version: u64,
    closed: bool,
}

/// The latest change of a task not yet in its file.
struct Dirty {
    version: u64,
    record: Record,
    /// The journal segment holding the record.
    segment: u64,
    /// When the change was made (or replayed).
    since: Instant,
    /// Finished or deleted: no further change is expected soon.
    settled: bool,
}

impl Dirty {
    fn size(&self) -> usize {
        match &self.record {
            Record::Put(json) => json.len(),
            Record::Delete(_) => 0,
        }
    }
}

/// A save or delete on its way to the journal.
struct Change {
    /// The records, appended in one write: all or none.
    records: Vec<ChangedTask>,
    /// Answered once the change is in the journal: whether the (last) task existed.
    done: oneshot::Sender<Result<bool, StorageError>>,
}

/// One task's part of a [`Change`].
struct ChangedTask {
    id: TaskId,
    record: Record,
    /// The task's new summary; `None` for a delete.
    summary: Option<Summary>,
}

/// Where a task's current state is.
enum Lookup {
    Absent,
    Dirty(Arc<[u8]>),
    InFile,
}

/// What list, count and idempotency queries need to know about a task.
struct Summary {
    status: TaskStatus,
    plugin: String,
    priority: u8,
    sequence: u64,
    idempotency_key: Option<String>,
    /// The host of its latest attempt.
    host: Option<Box<str>>,
    /// How its latest attempt failed.
    error_kind: Option<FailureKind>,
    submitted_at: DateTime<Utc>,
    /// When a finished task finished (its submission, should it lack one).
    finished_at: Option<DateTime<Utc>>,
    /// Whether it keeps a body or a whole log in a blob store.
    has_blobs: bool,
}

impl Summary {
    fn of(task: &Task) -> Self {
        Self {
            status: task.status,
            plugin: task.plugin.clone(),
            priority: task.priority,
            sequence: task.sequence,
            idempotency_key: task.idempotency_key.clone(),
            host: task.host.as_deref().map(Box::from),
            error_kind: task.last_error.as_ref().map(|e| e.kind),
            submitted_at: task.created_at,
            finished_at: task
                .status
                .is_terminal()
                .then(|| task.finished_at.unwrap_or(task.created_at)),
            has_blobs: task.blobs().next().is_some(),
        }
    }

    /// Its place among the finished tasks, oldest first within a status.
    fn finished(&self, id: TaskId) -> Option<Finished> {
        self.finished_at.map(|at| (self.status, at, id))
    }

    fn matches(&self, query: &ListQuery) -> bool {
        query.matches(&ListFacts {
            status: self.status,
            plugin: &self.plugin,
            priority: self.priority,
            host: self.host.as_deref(),
            error_kind: self.error_kind,
            submitted_at: self.submitted_at,
            idempotency_key: self.idempotency_key.as_deref(),
        })
    }
}

/// A finished task by status, then by when it finished (for retention).
type Finished = (TaskStatus, DateTime<Utc>, TaskId);

struct Index {
    summaries: HashMap<TaskId, Summary>,
    /// Submission order, for listing.
    order: BTreeSet<Cursor>,
    /// Finished tasks, oldest first within a status.
    finished: BTreeSet<Finished>,
    by_idempotency_key: HashMap<String, TaskId>,
    counts: StatusCounts,
}

impl Index {
    fn new() -> Self {
        Self {
            summaries: HashMap::new(),
            order: BTreeSet::new(),
            finished: BTreeSet::new(),
            by_idempotency_key: HashMap::new(),
            counts: TaskStatus::ALL
                .into_iter()
                .map(|status| (status, 0))
                .collect(),
        }
    }

    /// Adds or replaces a task's summary; whether it was there before.
    fn upsert(&mut self, id: TaskId, summary: Summary) -> bool {
        let existed = self.remove(id);
        *self.counts.entry(summary.status).or_default() += 1;
        self.order.insert(Cursor {
            sequence: summary.sequence,
            id,
        });
        if let Some(finished) = summary.finished(id) {
            self.finished.insert(finished);
        }
        if let Some(key) = &summary.idempotency_key {
            // Keys are unique in practice; should two tasks share one, the
            // earlier submission answers, whatever order they were read in.
            let earlier_holder = self
                .by_idempotency_key
                .get(key)
                .and_then(|holder| self.summaries.get(holder).map(|s| (s.sequence, *holder)))
                .is_some_and(|holder| holder < (summary.sequence, id));
            if !earlier_holder {
                self.by_idempotency_key.insert(key.clone(), id);
            }
        }
        self.summaries.insert(id, summary);
        existed
    }

    fn remove(&mut self, id: TaskId) -> bool {
        let Some(old) = self.summaries.remove(&id) else {
            return false;
        };
        if let Some(count) = self.counts.get_mut(&old.status) {
            *count = count.saturating_sub(1);
        }
        self.order.remove(&Cursor {
            sequence: old.sequence,
            id,
        });
        if let Some(finished) = old.finished(id) {
            self.finished.remove(&finished);
        }
        if let Some(key) = &old.idempotency_key
            && self.by_idempotency_key.get(key) == Some(&id)
        {
            self.by_idempotency_key.remove(key);
        }
        true
    }
}

impl State {
    /// Applies a change to the index and the dirty set; whether the task
    /// existed before.
    fn apply(
        &mut self,
        id: TaskId,
        record: Record,
        summary: Option<Summary>,
        segment: u64,
    ) -> bool {
        let settled = summary
            .as_ref()
            .is_none_or(|summary| summary.status.is_terminal());
        let existed = match summary {
            Some(summary) => self.index.upsert(id, summary),
            None => self.index.remove(id),
        };
        let dirty = Dirty {
            version: self.next_version,
            record,
            segment,
            since: Instant::now(),
            settled,
        };
        self.next_version += 1;
        self.dirty_bytes += dirty.size();
        if let Some(replaced) = self.dirty.insert(id, dirty) {
            self.dirty_bytes -= replaced.size();
        }
        existed
    }

    /// Applies one journal record found at open.
    fn replay(&mut self, record: Record, segment: u64, path: &Path) {
        match &record {
            Record::Put(json) => match serde_json::from_slice::<Task>(json) {
                Ok(task) => {
                    self.apply(task.id, record, Some(Summary::of(&task)), segment);
                }
                Err(e) => {
                    tracing::warn!(segment = %path.display(), error = %e, "journal record does not hold a valid task; skipped")
                }
            },
            Record::Delete(id) => {
                self.apply(*id, record, None, segment);
            }
        }
    }

    fn lookup(&self, id: TaskId) -> Lookup {
        match self.dirty.get(&id).map(|dirty| &dirty.record) {
            Some(Record::Put(json)) => Lookup::Dirty(json.clone()),
            Some(Record::Delete(_)) => Lookup::Absent,
            None if self.index.summaries.contains_key(&id) => Lookup::InFile,
            None => Lookup::Absent,
        }
    }

    fn is_full(&self) -> bool {
        self.dirty.len() >= MAX_DIRTY_TASKS || self.dirty_bytes >= MAX_DIRTY_BYTES
    }

    fn wants_checkpoint(&self) -> bool {
        self.dirty.len() >= CHECKPOINT_SOON || self.dirty_bytes >= CHECKPOINT_SOON_BYTES
    }
}

impl FileStore {
    /// Opens (creating if needed) the store at `root`: indexes every task
    /// file, replays the journal over them, and starts the journal writer and
    /// the checkpointer. Unreadable task files are logged and moved to
    /// `<root>/corrupt/`; leftover temporary files of interrupted writes are
    /// removed. With `fsync`, a save returns only once its journal record is
    /// on disk, and a checkpoint flushes the files before it drops the journal.
    pub async fn open(root: impl Into<PathBuf>, fsync: bool) -> Result<Self, StorageError> {
        let root = root.into();
        blocking(move || {
            std::fs::create_dir_all(&root).map_err(io_error("create", &root))?;
            let lock_file = lock_exclusively(&root)?;
            let mut state = State {
                index: scan(&root)?,
                dirty: HashMap::new(),
                dirty_bytes: 0,
                next_version: 0,
                closed: false,
            };
            for (number, path) in journal::sealed_segments(&root)? {
                journal::read_segment(&path, |record| state.replay(record, number, &path))?;
            }
            let journal = Journal::create(&root, fsync)?;
            let next_sequence = state
                .index
                .summaries
                .values()
                .map(|s| s.sequence.saturating_add(1))
                .max()
                .unwrap_or(1);
            let shared = Arc::new(Shared {
                root,
                fsync,
                state: Mutex::new(state),
                checkpoint_due: Condvar::new(),
                room: Condvar::new(),
                journal: Mutex::new(journal),
                checkpointing: Mutex::new(Flushes::default()),
                flush_failed: AtomicBool::new(false),
                next_sequence: AtomicU64::new(next_sequence),
            });
            let (changes, queued) = mpsc::channel(MAX_BATCH * 4);
            let threads = vec![
                spawn_thread("taskflow-journal", {
                    let shared = shared.clone();
                    move || write_changes(&shared, queued)
                })?,
                spawn_thread("taskflow-checkpoint", {
                    let shared = shared.clone();
                    move || checkpoint_periodically(&shared)
                })?,
            ];
            let handle = Handle {
                shared,
                changes: Some(changes),
                threads,
                _lock_file: lock_file,
                keyed_inserts: tokio::sync::Mutex::new(()),
                stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
                leases: LeaseTable::default(),
                hosts: Mutex::default(),
            };
            Ok(Self {
                handle: Arc::new(handle),
            })
        })
        .await
    }

    /// The directory holding the shards.
    pub fn root(&self) -> &Path {
        &self.handle.shared.root
    }

    /// Where the task `id` is stored once checkpointed.
    pub fn path_of(&self, id: TaskId) -> PathBuf {
        task_path(self.root(), id)
    }

    /// Writes every dirty task to its file now and drops the journal
    /// segments that are no longer needed.
    pub async fn checkpoint(&self) -> Result<(), StorageError> {
        let shared = self.handle.shared.clone();
        blocking(move || shared.checkpoint(true)).await
    }

    /// Saves every task in one journal write: all or none. Later inserts are
    /// numbered after them.
    async fn save_all(&self, tasks: &[Task]) -> Result<(), StorageError> {
        let records = tasks
            .iter()
            .map(|task| {
                let json = serde_json::to_vec(task).map_err(|source| StorageError::Encode {
                    what: format!("task {}", task.id),
                    source,
                })?;
                Ok(ChangedTask {
                    id: task.id,
                    record: Record::Put(json.into()),
                    summary: Some(Summary::of(task)),
                })
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        if let Some(max) = tasks.iter().map(|t| t.sequence).max() {
            self.handle
                .shared
                .next_sequence
                .fetch_max(max.saturating_add(1), Ordering::Relaxed);
        }
        self.persist(records).await.map(|_| ())
    }

    /// Hands a change to the journal writer and waits until it is persisted.
    async fn persist(&self, records: Vec<ChangedTask>) -> Result<bool, StorageError> {
        let stopped = || StorageError::Unavailable("the journal writer has stopped".into());
        let changes = self.handle.changes.as_ref().ok_or_else(stopped)?;
        let (done, persisted) = oneshot::channel();
        changes
            .send(Change { records, done })
            .await
            .map_err(|_| stopped())?;
        persisted.await.map_err(|_| stopped())?
    }

    /// Serialises the read-change-write of the task `id`.
    async fn lock(&self, id: TaskId) -> tokio::sync::MutexGuard<'_, ()> {
        self.handle.stripes[stripe_of(id)].lock().await
    }

    /// Reads the given tasks in order, skipping any deleted meanwhile and any
    /// that no longer match `keep`.
    async fn read_tasks(
        &self,
        ids: Vec<TaskId>,
        keep: impl Fn(&Task) -> bool + Send + 'static,
    ) -> Result<Vec<Task>, StorageError> {
        let shared = self.handle.shared.clone();
        blocking(move || {
            let mut tasks = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(task) = shared.read(id)?
                    && keep(&task)
                {
                    tasks.push(task);
                }
            }
            Ok(tasks)
        })
        .await
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Closing the channel lets the writer drain what is queued, make a
        // last checkpoint and stop.
        self.changes = None;
        self.shared.lock_state().closed = true;
        self.shared.checkpoint_due.notify_all();
        self.shared.room.notify_all();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!(
                    "a storage thread panicked; the journal is replayed at the next open"
                );
            }
        }
    }
}

impl Shared {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        // State updates never panic half-way, so a poisoned lock still guards
        // a consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_journal(&self) -> MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds the writer back while the dirty set is full; `false` when the
    /// checkpoints made no room within [`MAX_WAIT_FOR_ROOM`] (they are
    /// failing, or the disk is far too slow).
    fn wait_for_room(&self) -> bool {
        let state = self.lock_state();
        if state.is_full() {
            self.checkpoint_due.notify_one();
        }
        let (state, _) = self
            .room
            .wait_timeout_while(state, MAX_WAIT_FOR_ROOM, |state| {
                state.is_full() && !state.closed
            })
            .unwrap_or_else(PoisonError::into_inner);
        !state.is_full() || state.closed
    }

    /// The current state of one task.
    fn read(&self, id: TaskId) -> Result<Option<Task>, StorageError> {
        let lookup = self.lock_state().lookup(id);
        let path = task_path(&self.root, id);
        match lookup {
            Lookup::Absent => Ok(None),
            Lookup::Dirty(json) => parse_task(&json, &path).map(Some),
            // A checkpoint writes the file before it forgets the dirty entry,
            // so the file is at least as new as what the lookup saw.
            Lookup::InFile => read_task(&path),
        }
    }

    /// Writes dirty tasks to their files, then drops the journal segments no
    /// longer needed. With `everything` false, a task that changed less than
    /// [`SETTLE_TIME`] ago and is still pending or running is left for a later
    /// checkpoint (unless much is dirty): most tasks finish within it, and
    /// their file is then written once, in its final state, instead of once
    /// per state (each rewrite also frees an inode, which file systems take
    /// time to reuse).
    fn checkpoint(&self, everything: bool) -> Result<(), StorageError> {
        let mut flushes = self
            .checkpointing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // After the rotation every record in a sealed segment is in the
        // dirty set (the writer updates the state before it lets go of the
        // journal).
        let current = {
            let mut journal = self.lock_journal();
            journal.rotate()?;
            journal.current()
        };
        let mut snapshot: Vec<(TaskId, u64, Record)> = {
            let state = self.lock_state();
            let everything = everything || state.wants_checkpoint();
            state
                .dirty
                .iter()
                .filter(|(_, dirty)| {
                    everything || dirty.settled || dirty.since.elapsed() >= SETTLE_TIME
                })
                .map(|(id, dirty)| (*id, dirty.version, dirty.record.clone()))
                .collect()
        };
        // In id order, one shard directory after the other.
        snapshot.sort_unstable_by_key(|(id, ..)| *id);
        let (mut failed, mut first_failure) = (0_usize, None);
        let mut emptied = BTreeSet::new();
        for chunk in snapshot.chunks(CHECKPOINT_CHUNK) {
            flushes.pending = true;
            let mut written = Vec::with_capacity(chunk.len());
            for (id, version, record) in chunk {
                let result = match record {
                    Record::Put(json) => self.write_file(*id, json),
                    Record::Delete(_) => self.remove_file(*id).inspect(|()| {
                        emptied.insert(id.shard());
                    }),
                };
                match result {
                    Ok(()) => written.push((*id, *version)),
                    // It stays dirty, its journal segment stays, and the
                    // next checkpoint tries again; the others go on.
                    Err(e) => {
                        failed += 1;
                        first_failure.get_or_insert(e);
                    }
                }
            }
            // What is in its file leaves the dirty set now, making room for
            // a writer held back by a full set long before a big checkpoint
            // ends. The journal keeps it until the files are flushed.
            self.forget_written(&written);
        }
        // A shard directory whose last task was deleted goes too (only
        // checkpoints write task files: none is being created in it).
        for shard in emptied {
            let _ = std::fs::remove_dir(self.root.join(shard));
        }
        if self.fsync && flushes.pending {
            if self.flush_failed.load(Ordering::Relaxed) {
                return Ok(()); // reported when it happened; nothing is dropped
            }
            if let Err(e) = sync_filesystem(&self.root) {
                self.flush_failed.store(true, Ordering::Relaxed);
                tracing::error!(error = %e, "cannot flush the task files; the journal is kept until the host restarts");
                return Err(io_error("sync", &self.root)(e));
            }
            flushes.pending = false;
        }
        // A segment is needed while it holds the latest record of a task
        // still dirty.
        let oldest_needed = self
            .lock_state()
            .dirty
            .values()
            .map(|dirty| dirty.segment)
            .min()
            .unwrap_or(current);
        journal::drop_segments_before(&self.root, oldest_needed.min(current), self.fsync)?;
        match first_failure {
            None => Ok(()),
            Some(e) => {
                tracing::error!(failed, error = %e, "task files could not be written; their changes stay in the journal");
                Err(e)
            }
        }
    }

    /// Drops written entries from the dirty set, unless they changed again
    /// since the snapshot.
    fn forget_written(&self, written: &[(TaskId, u64)]) {
        let mut state = self.lock_state();
        for (id, version) in written {
            if state
                .dirty
                .get(id)
                .is_some_and(|dirty| dirty.version == *version)
                && let Some(forgotten) = state.dirty.remove(id)
            {
                state.dirty_bytes -= forgotten.size();
            }
        }
        drop(state);
        self.room.notify_all();
    }

    fn write_file(&self, id: TaskId, json: &[u8]) -> Result<(), StorageError> {
        let path = task_path(&self.root, id);
        match write_atomic(&path, json, false) {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // First task in this shard: create its directory and try again.
                let shard_dir = self.root.join(id.shard());
                std::fs::create_dir_all(&shard_dir).map_err(io_error("create", &shard_dir))?;
                write_atomic(&path, json, false).map_err(io_error("write", &path))
            }
            result => result.map_err(io_error("write", &path)),
        }
    }

    fn remove_file(&self, id: TaskId) -> Result<(), StorageError> {
        let path = task_path(&self.root, id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io_error("delete", &path)(e)),
            _ => Ok(()),
        }
    }
}

/// The journal writer: appends every change waiting at that moment in one
/// write, applies them to the state, and answers their savers.
fn write_changes(shared: &Shared, mut queued: mpsc::Receiver<Change>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut encoded = Vec::new();
    while let Some(first) = queued.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH
            && let Ok(change) = queued.try_recv()
        {
            batch.push(change);
        }
        if !shared.wait_for_room() {
            tracing::error!(
                "the task files have fallen far behind the journal; changes are refused until checkpoints catch up"
            );
            for change in batch.drain(..) {
                let _ = change.done.send(Err(StorageError::Unavailable(
                    "the task files are not keeping up; try again shortly".into(),
                )));
            }
            continue;
        }
        encoded.clear();
        for change in &batch {
            for changed in &change.records {
                changed.record.encode_into(&mut encoded);
            }
        }

        let mut journal = shared.lock_journal();
        match journal.append(&encoded) {
            Ok(()) => {
                let mut state = shared.lock_state();
                let answers: Vec<_> = batch
                    .drain(..)
                    .map(|change| {
                        let mut existed = false;
                        for changed in change.records {
                            existed = state.apply(
                                changed.id,
                                changed.record,
                                changed.summary,
                                journal.current(),
                            );
                        }
                        (change.done, Ok(existed))
                    })
                    .collect();
                if state.wants_checkpoint() {
                    shared.checkpoint_due.notify_one();
                }
                drop(state);
                drop(journal);
                for (done, answer) in answers {
                    // A saver that stopped waiting still had its change made.
                    let _ = done.send(answer);
                }
            }
            Err(e) => {
                drop(journal);
                tracing::error!(error = %e, "cannot append to the journal; the changes are refused");
                for change in batch.drain(..) {
                    let _ = change.done.send(Err(StorageError::Unavailable(format!(
                        "cannot persist the change: {e}"
                    ))));
                }
            }
        }
    }
    // Every clone of the store is gone: leave the task files complete.
    if let Err(e) = shared.checkpoint(true) {
        tracing::error!(error = %e, "last checkpoint failed; the journal is replayed at the next open");
    }
}

/// The checkpointer: writes dirty tasks to their files every
/// [`CHECKPOINT_INTERVAL`], or as soon as many are dirty.
fn checkpoint_periodically(shared: &Shared) {
    lower_this_threads_priority();
    loop {
        {
            let state = shared.lock_state();
            let (state, _) = shared
                .checkpoint_due
                .wait_timeout_while(state, CHECKPOINT_INTERVAL, |state| {
                    !state.closed && !state.wants_checkpoint()
                })
                .unwrap_or_else(PoisonError::into_inner);
            if state.closed {
                return; // the writer makes the last checkpoint
            }
        }
        if let Err(e) = shared.checkpoint(false) {
            tracing::warn!(error = %e, "checkpoint incomplete; the journal keeps every change, and it is tried again");
            std::thread::sleep(CHECKPOINT_INTERVAL);
        }
    }
}

/// Lets the workers and the API go first when the CPUs are busy: the
/// checkpointer catches up when they are not, and a full dirty set holds
/// new changes back if it never could.
#[allow(unsafe_code)]
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority with `who` 0 changes the nice value of the
        // calling thread only (a per-thread attribute on Linux); no memory
        // is involved.
        let failed = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) } != 0;
        if failed {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the checkpointer's priority");
        }
    }
}

fn spawn_thread(
    name: &str,
    work: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, StorageError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(work)
        .map_err(|e| StorageError::Unavailable(format!("cannot start the {name} thread: {e}")))
}

/// Takes the store's lock file, so that two hosts never share one store.
fn lock_exclusively(root: &Path) -> Result<File, StorageError> {
    let path = root.join(".lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error("open", &path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(StorageError::InUse(root.display().to_string()));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io_error("lock", &path)(e)),
    }
    Ok(file)
}

fn task_path(root: &Path, id: TaskId) -> PathBuf {
    root.join(id.shard()).join(format!("{id}.json"))
}

/// Reads one task file; `None` when it does not exist.
fn read_task(path: &Path) -> Result<Option<Task>, StorageError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("read", path)(e)),
    };
    parse_task(&bytes, path).map(Some)
}

fn parse_task(json: &[u8], path: &Path) -> Result<Task, StorageError> {
    serde_json::from_slice(json).map_err(|source| StorageError::Corrupt {
        path: path.to_path_buf(),
        source,
    })
}

fn is_shard_name(name: &str) -> bool {
    name.len() == 2
        && name
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Builds the index from every task file under `root`.
///
/// A directory that cannot be listed stops the open: carrying on would
/// silently hide its tasks. A single bad file only costs that file.
fn scan(root: &Path) -> Result<Index, StorageError> {
    std::fs::create_dir_all(root).map_err(io_error("create", root))?;
    let mut index = Index::new();
    for shard in std::fs::read_dir(root).map_err(io_error("list", root))? {
        let shard = shard.map_err(io_error("list", root))?;
        let shard_name = shard.file_name().to_string_lossy().into_owned();
        if !is_shard_name(&shard_name) || !shard.file_type().is_ok_and(|t| t.is_dir()) {
            continue; // `corrupt/` and anything an operator put there
        }
        let shard_dir = shard.path();
        for file in std::fs::read_dir(&shard_dir).map_err(io_error("list", &shard_dir))? {
            let file = file.map_err(io_error("list", &shard_dir))?;
            let path = file.path();
            let file_name = file.file_name().to_string_lossy().into_owned();
            if file_name.starts_with('.') {
                // A temporary file of a write interrupted before its rename.
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove leftover temporary file");
                }
                continue;
            }
            let Some(stem) = file_name.strip_suffix(".json") else {
                continue;
            };
            match check_task_file(&path, stem) {
                Ok(task) => {
                    index.upsert(task.id, Summary::of(&task));
                }
                Err(reason) => move_aside(root, &path, &file_name, &reason),
            }
        }
    }
    Ok(index)
}

/// Reads a task file found at open and checks that it belongs where it lies.
fn check_task_file(path: &Path, stem: &str) -> Result<Task, String> {
    let task = read_task(path)
        .map_err(|e| e.to_string())?
        .ok_or("it vanished while being read")?;
    if task.id.to_string() != stem
        || !path
            .parent()
            .is_some_and(|dir| dir.ends_with(task.id.shard()))
    {
        return Err(format!(
            "it holds task {}, which belongs elsewhere",
            task.id
        ));
    }
    Ok(task)
}

/// Quarantines an unreadable task file so the host can start without it.
fn move_aside(root: &Path, path: &Path, file_name: &str, reason: &str) {
    let corrupt_dir = root.join(CORRUPT_DIR);
    // The timestamp keeps a file that goes bad twice from overwriting its first copy.
    let target = corrupt_dir.join(format!(
        "{}-{file_name}",
        Utc::now().format("%Y%m%dT%H%M%S%.6fZ")
    ));
    match std::fs::create_dir_all(&corrupt_dir).and_then(|()| std::fs::rename(path, &target)) {
        Ok(()) => tracing::warn!(
            path = %path.display(), moved_to = %target.display(), reason,
            "unreadable task file moved aside; restore it from a backup if the task matters"
        ),
        Err(e) => tracing::warn!(
            path = %path.display(), reason, error = %e,
            "unreadable task file skipped; it could not be moved aside"
        ),
    }
}

#[async_trait::async_trait]
impl TaskStore for FileStore {
    async fn save(&self, task: &Task) -> Result<(), StorageError> {
        self.save_all(std::slice::from_ref(task)).await
    }

    async fn insert(&self, tasks: Vec<Task>) -> Result<Vec<Submitted>, StorageError> {
        let _keyed = match tasks.iter().any(|t| t.idempotency_key.is_some()) {
            true => Some(self.handle.keyed_inserts.lock().await),
            false => None,
        };
        let mut submitted = Vec::with_capacity(tasks.len());
        for mut task in tasks {
            let existing = match &task.idempotency_key {
                Some(key) => self.find_by_idempotency_key(key).await?,
                None => None,
            };
            submitted.push(match existing {
                Some(existing) => Submitted {
                    task: existing,
                    created: false,
                },
                None => {
                    task.sequence = self
                        .handle
                        .shared
                        .next_sequence
                        .fetch_add(1, Ordering::Relaxed);
                    Submitted {
                        task,
                        created: true,
                    }
                }
            });
        }
        let created: Vec<Task> = submitted
            .iter()
            .filter(|s| s.created)
            .map(|s| s.task.clone())
            .collect();
        if !created.is_empty() {
            self.save_all(&created).await?;
        }
        Ok(submitted)
    }

    async fn restore(&self, task: &Task) -> Result<(), StorageError> {
        self.save(task).await
    }

    async fn load(&self, id: TaskId) -> Result<Option<Task>, StorageError> {
        let shared = &self.handle.shared;
        let lookup = shared.lock_state().lookup(id);
        match lookup {
            // Unknown ids, common in client lookups, and tasks changed since
            // the last checkpoint, the ones workers load, cost no disk access.
            Lookup::Absent => Ok(None),
            Lookup::Dirty(json) => parse_task(&json, &self.path_of(id)).map(Some),
            Lookup::InFile => {
                let shared = shared.clone();
                blocking(move || shared.read(id)).await
            }
        }
    }

    async fn delete(&self, id: TaskId) -> Result<bool, StorageError> {
        self.persist(vec![ChangedTask {
            id,
            record: Record::Delete(id),
            summary: None,
        }])
        .await
    }

    async fn beat(
        &self,
        beat: &HostBeat,
        forget_before: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        let mut hosts = self
            .handle
            .hosts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        hosts.retain(|_, known| known.seen_at >= forget_before);
        hosts.insert(beat.name.clone(), beat.clone());
        Ok(())
    }

    async fn hosts(&self, since: DateTime<Utc>) -> Result<Vec<HostBeat>, StorageError> {
        let hosts = self
            .handle
            .hosts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut seen: Vec<HostBeat> = hosts
            .values()
            .filter(|beat| beat.seen_at >= since)
            .cloned()
            .collect();
        seen.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(seen)
    }

    async fn list(&self, query: &ListQuery) -> Result<TaskPage, StorageError> {
        if query.limit == 0 {
            return Err(StorageError::InvalidLimit);
        }
        let after = query.cursor.as_deref().map(Cursor::decode).transpose()?;
        let (ids, next_cursor) = {
            let state = self.handle.shared.lock_state();
            let index = &state.index;
            let start = after.map_or(Bound::Unbounded, Bound::Excluded);
            let matches = |cursor: &Cursor| {
                index
                    .summaries
                    .get(&cursor.id)
                    .is_some_and(|s| s.matches(query))
            };
            // A key names one task at most: it is looked up, not scanned for.
            let keyed: Option<Cursor> = query.idempotency_key.as_ref().and_then(|key| {
                let id = *index.by_idempotency_key.get(key)?;
                let cursor = Cursor {
                    sequence: index.summaries.get(&id)?.sequence,
                    id,
                };
                (after.is_none_or(|after| cursor > after) && matches(&cursor)).then_some(cursor)
            });
            let mut matching: Box<dyn Iterator<Item = Cursor>> = if query.idempotency_key.is_some()
            {
                Box::new(keyed.into_iter())
            } else {
                Box::new(
                    index
                        .order
                        .range((start, Bound::Unbounded))
                        .filter(|cursor| matches(cursor))
                        .copied(),
                )
            };
            let page: Vec<Cursor> = matching.by_ref().take(query.limit).collect();
            let next_cursor = matching.next().and(page.last()).map(Cursor::encode);
            (
                page.into_iter().map(|cursor| cursor.id).collect(),
                next_cursor,
            )
        };
        // A task may change between the index snapshot and the read; the
        // filter applies to what is returned.
        let query = query.clone();
        let tasks = self
            .read_tasks(ids, move |task| query.matches_task(task))
            .await?;
        Ok(TaskPage { tasks, next_cursor })
    }

    async fn all(&self) -> Result<Vec<Task>, StorageError> {
        let ids = self
            .handle
            .shared
            .lock_state()
            .index
            .order
            .iter()
            .map(|cursor| cursor.id)
            .collect();
        self.read_tasks(ids, |_| true).await
    }

    async fn find_by_idempotency_key(&self, key: &str) -> Result<Option<Task>, StorageError> {
        let id = self
            .handle
            .shared
            .lock_state()
            .index
            .by_idempotency_key
            .get(key)
            .copied();
        match id {
            Some(id) => self.load(id).await,
            None => Ok(None),
        }
    }

    async fn counts(&self) -> Result<StatusCounts, StorageError> {
        Ok(self.handle.shared.lock_state().index.counts.clone())
    }

    async fn check(&self) -> Result<(), StorageError> {
        if self
            .handle
            .changes
            .as_ref()
            .is_none_or(mpsc::Sender::is_closed)
        {
            return Err(StorageError::Unavailable(
                "the journal writer has stopped".into(),
            ));
        }
        if self.handle.shared.lock_state().is_full() {
            return Err(StorageError::Unavailable(
                "the task files are not keeping up with the journal".into(),
            ));
        }
        if self.handle.shared.flush_failed.load(Ordering::Relaxed) {
            return Err(StorageError::Unavailable(
                "a flush of the task files failed; restart the host".into(),
            ));
        }
        Ok(())
    }

    async fn update(&self, id: TaskId, change: ChangeFn) -> Result<Option<Updated>, StorageError> {
        let _locked = self.lock(id).await;
        let Some(mut task) = self.load(id).await? else {
            return Ok(None);
        };
        let leases = &self.handle.leases;
        let state = leases.state(&task);
        let change = change(&mut task, &state);
        if matches!(change, lease::Change::Save | lease::Change::Claim { .. }) {
            self.save(&task).await?;
        }
        let token = leases.apply(&task, &change);
        Ok(Some(Updated {
            task,
            token,
            change,
        }))
    }

    async fn save_leased(&self, task: &Task, token: u64) -> Result<Saved, StorageError> {
        let _locked = self.lock(task.id).await;
        let stored = self.load(task.id).await?;
        let running = stored
            .as_ref()
            .is_some_and(|stored| stored.status == TaskStatus::Running);
        let Some(cancel_requested) = self.handle.leases.holds(task.id, token).filter(|_| running)
        else {
            return Ok(match stored {
                Some(stored) if Saved::already(&stored, task) => Saved::Written,
                _ => Saved::Lost,
            });
        };
        let (written, saved) = match Saved::outcome(task, cancel_requested) {
            Some(cancelled) => (cancelled, Saved::Cancelled),
            None => (task.clone(), Saved::Written),
        };
        self.save(&written).await?;
        if written.status != TaskStatus::Running {
            self.handle.leases.release(task.id);
        }
        Ok(saved)
    }

    async fn renew(
        &self,
        owner: &str,
        held: &[Held],
        ttl: Duration,
    ) -> Result<Vec<Renewed>, StorageError> {
        Ok(self.handle.leases.renew(owner, held, ttl))
    }

    async fn expired(&self, limit: usize) -> Result<Vec<TaskId>, StorageError> {
        let running: Vec<TaskId> = {
            let state = self.handle.shared.lock_state();
            state
                .index
                .summaries
                .iter()
                .filter(|(_, s)| s.status == TaskStatus::Running)
                .map(|(id, _)| *id)
                .collect()
        };
        let mut expired = self.handle.leases.expired(running);
        expired.truncate(limit);
        Ok(expired)
    }

    async fn published(&self, id: TaskId) -> Result<Option<Published>, StorageError> {
        Ok(self.handle.leases.published(id))
    }

    async fn expire(
        &self,
        status: TaskStatus,
        finished_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Expired>, StorageError> {
        let due = |state: &State| -> Vec<TaskId> {
            let oldest = (
                status,
                DateTime::<Utc>::MIN_UTC,
                TaskId::from(uuid::Uuid::nil()),
            );
            let newest = (status, finished_before, TaskId::from(uuid::Uuid::nil()));
            state
                .index
                .finished
                .range(oldest..newest)
                .take(limit)
                .map(|(_, _, id)| *id)
                .collect()
        };
        let candidates = due(&self.handle.shared.lock_state());
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        // Holds the stripes of these tasks, in order (so never against
        // another holder of several), so that no update or lease holder
        // changes one between the check below and its deletion.
        let mut stripes: Vec<usize> = candidates.iter().map(|id| stripe_of(*id)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut held = Vec::with_capacity(stripes.len());
        for stripe in stripes {
            held.push(self.handle.stripes[stripe].lock().await);
        }
        let (ids, with_blobs): (Vec<TaskId>, Vec<TaskId>) = {
            let state = self.handle.shared.lock_state();
            let still_due: BTreeSet<TaskId> = due(&state).into_iter().collect();
            let ids: Vec<TaskId> = candidates
                .into_iter()
                .filter(|id| still_due.contains(id))
                .collect();
            let with_blobs = ids
                .iter()
                .filter(|id| state.index.summaries.get(id).is_some_and(|s| s.has_blobs))
                .copied()
                .collect();
            (ids, with_blobs)
        };
        let mut expired: HashMap<TaskId, Expired> = self
            .read_tasks(with_blobs, |_| true)
            .await?
            .iter()
            .map(|task| (task.id, Expired::of(task)))
            .collect();
        let records = ids
            .iter()
            .map(|id| ChangedTask {
                id: *id,
                record: Record::Delete(*id),
                summary: None,
            })
            .collect();
        self.persist(records).await?;
        drop(held);
        Ok(ids
            .into_iter()
            .map(|id| {
                expired.remove(&id).unwrap_or(Expired {
                    id,
                    blobs: Vec::new(),
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use taskflow_model::task::{NewTask, TaskOutput};

    use super::*;

    fn task(plugin: &str, sequence: u64) -> Task {
        let new = NewTask {
            plugin: plugin.into(),
            payload: serde_json::json!({ "n": sequence }),
            ..NewTask::default()
        };
        new.validate(sequence).expect("valid task")
    }

    async fn open(dir: &Path) -> FileStore {
        FileStore::open(dir, false).await.expect("open store")
    }

    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                files.extend(files_under(&path));
            } else {
                files.push(path);
            }
        }
        files
    }

    #[tokio::test]
    async fn saved_task_loads_back_identical() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::open(dir.path(), true).await.expect("open");
        let mut saved = task("echo", 1);
        saved.status = TaskStatus::Completed;
        saved.attempts = 1;
        saved.result = Some(TaskOutput::Json(serde_json::json!({ "ok": true })));
        saved.idempotency_key = Some("k".into());
        store.save(&saved).await.expect("save");
        assert_eq!(store.load(saved.id).await.expect("load"), Some(saved));
        assert_eq!(store.load(TaskId::new()).await.expect("load unknown"), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_task_read_back_is_already_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path()).await;
        for n in 0..200 {
            let mut saved = task("echo", n);
            store.save(&saved).await.expect("save pending");
            saved.status = TaskStatus::Completed;
            let writer = {
                let (store, saved) = (store.clone(), saved.clone());
                tokio::spawn(async move { store.save(&saved).await })
            };
            loop {
                let read = store.load(saved.id).await.expect("load").expect("present");
                if read.status == TaskStatus::Completed {
                    let counts = store.counts().await.expect("counts");
                    assert_eq!(
                        counts[&TaskStatus::Completed],
                        n + 1,
                        "a completed task was read before it was counted"
                    );
                    break;
                }
            }
            writer.await.expect("join").expect("save completed");
        }
    }

    #[tokio::test]
    async fn task_files_live_in_their_shard() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path()).await;
        let saved = task("echo", 1);
        store.save(&saved).await.expect("save");
        store.save(&saved).await.expect("save again");
        let id = saved.id.to_string();
        let expected = dir.path().join(&id[..2]).join(format!("{id}.json"));
        assert_eq!(store.path_of(saved.id), expected);
        assert!(!expected.exists(), "files are written by checkpoints");
        store.checkpoint().await.expect("checkpoint");
        assert_eq!(
            files_under(&dir.path().join(&id[..2])),
            vec![expected],
            "one file, no temporary leftovers"
        );
        assert!(
            files_under(&dir.path().join(journal::JOURNAL_DIR))
                .iter()
                .all(|segment| segment.metadata().expect("stat").len() == 0)
        );
    }

    #[tokio::test]
    async fn delete_removes_file_and_index_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path()).await;
        let saved = task("echo", 1);
        store.save(&saved).await.expect("save");
        store.checkpoint().await.expect("checkpoint");
        assert!(store.path_of(saved.id).exists());
        assert!(store.delete(saved.id).await.expect("delete"));
        assert!(!store.delete(saved.id).await.expect("delete again"));
        assert_eq!(store.load(saved.id).await.expect("load"), None);
        store.checkpoint().await.expect("checkpoint");
        assert!(!store.path_of(saved.id).exists());
        assert_eq!(
            store.counts().await.expect("counts")[&TaskStatus::Pending],
            0
        );
    }

    #[tokio::test]
    async fn idempotency_key_finds_its_task() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path()).await;
        let mut keyed = task("echo", 1);
        keyed.idempotency_key = Some("order-42".into());
        store.save(&keyed).await.expect("save");
        store.save(&task("echo", 2)).await.expect("save");
        assert_eq!(
            store
                .find_by_idempotency_key("order-42")
                .await
                .expect("find"),
            Some(keyed.clone())
        );
        assert_eq!(
            store
                .find_by_idempotency_key("order-43")
                .await
                .expect("find"),
            None
        );
        store.delete(keyed.id).await.expect("delete");
        assert_eq!(
            store
                .find_by_idempotency_key("order-42")
                .await
                .expect("find"),
            None
        );
    }

    #[tokio::test]
    async fn reopening_rebuilds_the_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut saved = Vec::new();
        {
            let store = open(dir.path()).await;
            for sequence in 0..20 {
                let mut t = task("echo", sequence);
                t.status = TaskStatus::ALL[sequence as usize % TaskStatus::ALL.len()];
                t.idempotency_key = Some(format!("key-{sequence}"));
                store.save(&t).await.expect("save");
                saved.push(t);
            }
        }
        let store = open(dir.path()).await;
        assert_eq!(store.all().await.expect("all"), saved);
        let counts = store.counts().await.expect("counts");
        for status in TaskStatus::ALL {
            assert_eq!(counts[&status], 4, "{status}");
        }
        assert_eq!(
            store.find_by_idempotency_key("key-7").await.expect("find"),
            Some(saved[7].clone())
        );
    }

    #[tokio::test]
    async fn corrupt_files_are_moved_aside_and_the_rest_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = task("echo", 1);
        {
            let store = open(dir.path()).await;
            store.save(&good).await.expect("save");
        }
        let corrupt_id = TaskId::new();
        let corrupt_path = task_path(dir.path(), corrupt_id);
        std::fs::create_dir_all(corrupt_path.parent().expect("shard dir")).expect("mkdir");
        std::fs::write(&corrupt_path, b"{\"id\": truncated").expect("write corrupt");
        // A valid task under another task's name would answer the wrong id.
        let misplaced_path = task_path(dir.path(), TaskId::new());
        std::fs::create_dir_all(misplaced_path.parent().expect("shard dir")).expect("mkdir");
        std::fs::write(
            &misplaced_path,
            serde_json::to_vec(&task("echo", 2)).expect("json"),
        )
        .expect("write");
        let temp = store_temp_file(dir.path(), good.id);

        let store = open(dir.path()).await;
        assert_eq!(store.all().await.expect("all"), vec![good.clone()]);
        assert_eq!(store.load(corrupt_id).await.expect("load"), None);
        assert!(!corrupt_path.exists() && !misplaced_path.exists() && !temp.exists());
        let quarantined = files_under(&dir.path().join(CORRUPT_DIR));
        assert_eq!(quarantined.len(), 2);
        assert!(
            quarantined
                .iter()
                .any(|p| p.to_string_lossy().ends_with(&format!("{corrupt_id}.json")))
        );
    }

    fn store_temp_file(root: &Path, id: TaskId) -> PathBuf {
        let path = root.join(id.shard()).join(format!(".{id}.json.abc123.tmp"));
        std::fs::write(&path, b"{\"half").expect("write temp");
        path
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 8)]
    async fn concurrent_saves_all_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path()).await;
        let shared = task("echo", 0);
        let writers: Vec<_> = (0..8u64)
            .map(|writer| {
                let store = store.clone();
                let shared = shared.clone();
                tokio::spawn(async move {
                    let mut saved = Vec::new();
                    for n in 0..63u64 {
                        let t = task("echo", 1 + writer * 100 + n);
                        store.save(&t).await.expect("save");
                        saved.push(t);
                        // Every writer also races on one shared task.
                        let version = Task {
                            status: TaskStatus::ALL[(writer as usize + n as usize) % 5],
                            attempts: (writer * 100 + n) as u32,
                            ..shared.clone()
                        };
                        store.save(&version).await.expect("save shared");
                    }
                    saved
                })
            })
            .collect();
        let mut saved = Vec::new();
        for writer in writers {
            saved.extend(writer.await.expect("writer"));
        }

        for t in &saved {
            assert_eq!(store.load(t.id).await.expect("load").as_ref(), Some(t));
        }
        let final_shared = store
            .load(shared.id)
            .await
            .expect("load shared")
            .expect("shared exists");
        let all = store.all().await.expect("all");
        assert_eq!(all.len(), saved.len() + 1);
        let ids: HashSet<_> = all.iter().map(|t| t.id).collect();
        assert_eq!(ids.len(), all.len());

        let listed = store
            .list(&ListQuery {
                status: Some(final_shared.status),
                limit: 1,
                ..ListQuery::default()
            })
            .await
            .expect("list");
        assert_eq!(
            listed.tasks.first().map(|t| t.id),
            Some(shared.id),
            "shared has the lowest sequence"
        );

        // The index agrees with what is on disk, before and after a reopen.
        let counts = store.counts().await.expect("counts");
        drop(store);
        let reopened = open(dir.path()).await;
        assert_eq!(reopened.counts().await.expect("counts"), counts);
        let from_disk = reopened
            .load(shared.id)
            .await
            .expect("load")
            .expect("shared");
        assert_eq!(from_disk, final_shared);
    }

    #[tokio::test]
    async fn the_journal_is_replayed_over_the_files_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut changed, deleted, untouched) = (task("echo", 1), task("echo", 2), task("hash", 3));
        {
            let store = open(dir.path()).await;
            for t in [&changed, &deleted, &untouched] {
                store.save(t).await.expect("save");
            }
        }
        // What a host killed between two checkpoints leaves: the files hold
        // older states, the journal the changes since, its last line torn.
        changed.status = TaskStatus::Completed;
        changed.attempts = 1;
        let mut records = Vec::new();
        Record::Put(
            serde_json::to_vec(&Task {
                status: TaskStatus::Running,
                ..changed.clone()
            })
            .expect("json")
            .into(),
        )
        .encode_into(&mut records);
        Record::Put(serde_json::to_vec(&changed).expect("json").into()).encode_into(&mut records);
        Record::Delete(deleted.id).encode_into(&mut records);
        records.extend_from_slice(b"P {\"id\":");
        let journal_dir = dir.path().join(journal::JOURNAL_DIR);
        std::fs::write(journal_dir.join("00000000000000000007.log"), &records)
            .expect("write journal");

        let store = open(dir.path()).await;
        assert_eq!(
            store.all().await.expect("all"),
            vec![changed.clone(), untouched.clone()]
        );
        let counts = store.counts().await.expect("counts");
        assert_eq!(
            (counts[&TaskStatus::Completed], counts[&TaskStatus::Pending]),
            (1, 1)
        );
        assert!(
            store.path_of(deleted.id).exists(),
            "the files are untouched until a checkpoint"
        );

        store.checkpoint().await.expect("checkpoint");
        assert!(!store.path_of(deleted.id).exists());
        let on_disk: Task =
            serde_json::from_slice(&std::fs::read(store.path_of(changed.id)).expect("read"))
                .expect("task");
        assert_eq!(on_disk, changed);
        let segments = files_under(&journal_dir);
        assert_eq!(
            segments.len(),
            1,
            "replayed segments are dropped once checkpointed: {segments:?}"
        );
        assert!(segments[0].ends_with("00000000000000000008.log"));
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read dir") {
            let path = entry.expect("entry").path();
            let target = to.join(path.file_name().expect("name"));
            if path.is_dir() {
                copy_dir(&path, &target);
            } else {
                std::fs::copy(&path, &target).expect("copy");
            }
        }
    }

    #[tokio::test]
    async fn unfinished_tasks_wait_in_the_journal_until_they_settle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path()).await;
        let young = task("echo", 1);
        let finished = Task {
            status: TaskStatus::Completed,
            ..task("echo", 2)
        };
        store.save(&young).await.expect("save");
        store.save(&finished).await.expect("save");
        let shared = store.handle.shared.clone();
        blocking(move || shared.checkpoint(false))
            .await
            .expect("periodic checkpoint");
        assert!(
            store.path_of(finished.id).exists(),
            "finished tasks are written at once"
        );
        assert!(
            !store.path_of(young.id).exists(),
            "a task that may finish soon is not written yet"
        );

        // What a crash would leave now: the young task's segment is kept.
        let crashed = tempfile::tempdir().expect("tempdir");
        copy_dir(dir.path(), crashed.path());
        let recovered = open(crashed.path()).await;
        assert_eq!(
            recovered.load(young.id).await.expect("load"),
            Some(young.clone())
        );
        assert_eq!(
            recovered.load(finished.id).await.expect("load"),
            Some(finished)
        );

        store.checkpoint().await.expect("full checkpoint");
        assert!(store.path_of(young.id).exists());
        let segments = files_under(&dir.path().join(journal::JOURNAL_DIR));
        assert_eq!(
            segments.len(),
            1,
            "only the open segment is left: {segments:?}"
        );
    }

    #[tokio::test]
    async fn a_task_file_that_cannot_be_written_holds_back_only_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path()).await;
        let blocked = Task {
            status: TaskStatus::Completed,
            ..task("echo", 1)
        };
        let mut other = Task {
            status: TaskStatus::Completed,
            ..task("echo", 2)
        };
        while other.id.shard() == blocked.id.shard() {
            other.id = TaskId::new();
        }
        // A plain file where the blocked task's shard directory belongs.
        let blocker = dir.path().join(blocked.id.shard());
        std::fs::write(&blocker, b"not a directory").expect("write blocker");
        store.save(&blocked).await.expect("save");
        store.save(&other).await.expect("save");

        assert!(store.checkpoint().await.is_err(), "the failure is reported");
        assert!(
            store.path_of(other.id).exists(),
            "the other task is written all the same"
        );
        assert_eq!(
            store.load(blocked.id).await.expect("load"),
            Some(blocked.clone()),
            "still served from memory"
        );
        let kept = files_under(&dir.path().join(journal::JOURNAL_DIR));
        assert!(
            kept.iter()
                .any(|segment| segment.metadata().expect("stat").len() > 0),
            "its journal segment is kept"
        );

        std::fs::remove_file(&blocker).expect("remove blocker");
        store.checkpoint().await.expect("checkpoint");
        assert!(store.path_of(blocked.id).exists());
    }

    #[tokio::test]
    async fn a_second_process_cannot_open_the_same_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path()).await;
        let second = FileStore::open(dir.path(), false)
            .await
            .map(|_| ())
            .expect_err("second open");
        assert!(
            matches!(&second, StorageError::InUse(store) if *store == dir.path().display().to_string()),
            "{second}"
        );
        assert!(
            second
                .to_string()
                .contains("in use by another TaskFlow host")
        );
        drop(store);
        open(dir.path()).await;
    }
}
