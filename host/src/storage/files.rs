//! The embedded store: one JSON file per task, sharded by the id's first two
//! characters (`<root>/ab/abcd….json`), each written atomically.
//!
//! An in-memory index of task summaries, built at open, answers list, count
//! and idempotency queries without touching the disk; full tasks are read
//! from disk on demand. All file I/O runs on tokio's blocking pool.

use std::collections::{BTreeSet, HashMap};
use std::io::ErrorKind;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::Utc;

use super::{Cursor, ListQuery, StatusCounts, StorageError, TaskPage, TaskStore, blocking};
use crate::fsutil::write_atomic;
use crate::task::{Task, TaskId, TaskStatus};

/// Directory under the root where unreadable task files are moved at open.
pub const CORRUPT_DIR: &str = "corrupt";

/// Two hex characters pick the shard.
const SHARDS: usize = 256;

/// Sharded JSON-file task store. Cheap to clone; clones share the index.
#[derive(Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    fsync: bool,
    /// Held across a file write or delete and the matching index update, so
    /// the index always agrees with the last completed write of a task.
    shard_locks: Vec<Mutex<()>>,
    index: Mutex<Index>,
}

/// What list, count and idempotency queries need to know about a task.
struct Summary {
    status: TaskStatus,
    plugin: String,
    sequence: u64,
    idempotency_key: Option<String>,
}

impl Summary {
    fn of(task: &Task) -> Self {
        Self { status: task.status, plugin: task.plugin.clone(), sequence: task.sequence, idempotency_key: task.idempotency_key.clone() }
    }

    fn matches(&self, query: &ListQuery) -> bool {
        query_matches(query, self.status, &self.plugin)
    }
}

fn query_matches(query: &ListQuery, status: TaskStatus, plugin: &str) -> bool {
    query.status.is_none_or(|wanted| wanted == status) && query.plugin.as_deref().is_none_or(|wanted| wanted == plugin)
}

struct Index {
    summaries: HashMap<TaskId, Summary>,
    /// Submission order, for listing.
    order: BTreeSet<Cursor>,
    by_idempotency_key: HashMap<String, TaskId>,
    counts: StatusCounts,
}

impl Index {
    fn new() -> Self {
        Self {
            summaries: HashMap::new(),
            order: BTreeSet::new(),
            by_idempotency_key: HashMap::new(),
            counts: TaskStatus::ALL.into_iter().map(|status| (status, 0)).collect(),
        }
    }

    fn upsert(&mut self, id: TaskId, summary: Summary) {
        self.remove(id);
        *self.counts.entry(summary.status).or_default() += 1;
        self.order.insert(Cursor { sequence: summary.sequence, id });
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
    }

    fn remove(&mut self, id: TaskId) -> bool {
        let Some(old) = self.summaries.remove(&id) else {
            return false;
        };
        if let Some(count) = self.counts.get_mut(&old.status) {
            *count = count.saturating_sub(1);
        }
        self.order.remove(&Cursor { sequence: old.sequence, id });
        if let Some(key) = &old.idempotency_key
            && self.by_idempotency_key.get(key) == Some(&id)
        {
            self.by_idempotency_key.remove(key);
        }
        true
    }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StorageError {
    let path = path.to_path_buf();
    move |source| StorageError::Io { action, path, source }
}

impl FileStore {
    /// Opens (creating if needed) the store at `root` and indexes every task
    /// file. Unreadable task files are logged and moved to `<root>/corrupt/`;
    /// leftover temporary files of interrupted writes are removed. With
    /// `fsync`, every write is flushed to disk before it returns.
    pub async fn open(root: impl Into<PathBuf>, fsync: bool) -> Result<Self, StorageError> {
        let root = root.into();
        blocking(move || {
            let index = scan(&root)?;
            let shard_locks = (0..SHARDS).map(|_| Mutex::new(())).collect();
            Ok(Self { inner: Arc::new(Inner { root, fsync, shard_locks, index: Mutex::new(index) }) })
        })
        .await
    }

    /// The directory holding the shards.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Where the task `id` is stored.
    pub fn path_of(&self, id: TaskId) -> PathBuf {
        task_path(&self.inner.root, id)
    }

    /// Reads the given tasks from disk in order, skipping any deleted
    /// meanwhile and any that no longer match `keep`.
    async fn read_tasks(&self, ids: Vec<TaskId>, keep: impl Fn(&Task) -> bool + Send + 'static) -> Result<Vec<Task>, StorageError> {
        let root = self.inner.root.clone();
        blocking(move || {
            let mut tasks = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(task) = read_task(&task_path(&root, id))?
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

impl Inner {
    fn lock_index(&self) -> MutexGuard<'_, Index> {
        // Index updates never panic half-way, so a poisoned lock still guards
        // a consistent index.
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_shard(&self, id: TaskId) -> MutexGuard<'_, ()> {
        let shard = usize::from_str_radix(&id.shard(), 16).unwrap_or(0) % SHARDS;
        self.shard_locks[shard].lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self, id: TaskId, summary: Summary, bytes: &[u8]) -> Result<(), StorageError> {
        let _shard = self.lock_shard(id);
        let path = task_path(&self.root, id);
        match write_atomic(&path, bytes, self.fsync) {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // First task in this shard: create its directory and try again.
                let shard_dir = self.root.join(id.shard());
                std::fs::create_dir_all(&shard_dir).map_err(io_error("create", &shard_dir))?;
                if self.fsync {
                    // The new directory entry must survive a crash too.
                    sync_dir(&self.root)?;
                }
                write_atomic(&path, bytes, self.fsync).map_err(io_error("write", &path))?;
            }
            result => result.map_err(io_error("write", &path))?,
        }
        self.lock_index().upsert(id, summary);
        Ok(())
    }

    fn delete(&self, id: TaskId) -> Result<bool, StorageError> {
        let _shard = self.lock_shard(id);
        let path = task_path(&self.root, id);
        let existed = match std::fs::remove_file(&path) {
            Ok(()) => true,
            Err(e) if e.kind() == ErrorKind::NotFound => false,
            Err(e) => return Err(io_error("delete", &path)(e)),
        };
        if existed && self.fsync {
            sync_dir(&self.root.join(id.shard()))?;
        }
        let indexed = self.lock_index().remove(id);
        Ok(existed || indexed)
    }
}

fn task_path(root: &Path, id: TaskId) -> PathBuf {
    root.join(id.shard()).join(format!("{id}.json"))
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_error("sync", dir))
}

/// Reads one task file; `None` when it does not exist.
fn read_task(path: &Path) -> Result<Option<Task>, StorageError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("read", path)(e)),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|source| StorageError::Corrupt { path: path.to_path_buf(), source })
}

fn is_shard_name(name: &str) -> bool {
    name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
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
                Ok(task) => index.upsert(task.id, Summary::of(&task)),
                Err(reason) => move_aside(root, &path, &file_name, &reason),
            }
        }
    }
    Ok(index)
}

/// Reads a task file found at open and checks that it belongs where it lies.
fn check_task_file(path: &Path, stem: &str) -> Result<Task, String> {
    let task = read_task(path).map_err(|e| e.to_string())?.ok_or("it vanished while being read")?;
    if task.id.to_string() != stem || !path.parent().is_some_and(|dir| dir.ends_with(task.id.shard())) {
        return Err(format!("it holds task {}, which belongs elsewhere", task.id));
    }
    Ok(task)
}

/// Quarantines an unreadable task file so the host can start without it.
fn move_aside(root: &Path, path: &Path, file_name: &str, reason: &str) {
    let corrupt_dir = root.join(CORRUPT_DIR);
    // The timestamp keeps a file that goes bad twice from overwriting its first copy.
    let target = corrupt_dir.join(format!("{}-{file_name}", Utc::now().format("%Y%m%dT%H%M%S%.6fZ")));
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
        let bytes = serde_json::to_vec(task).map_err(|source| StorageError::Encode { what: format!("task {}", task.id), source })?;
        let (inner, id, summary) = (self.inner.clone(), task.id, Summary::of(task));
        blocking(move || inner.write(id, summary, &bytes)).await
    }

    async fn load(&self, id: TaskId) -> Result<Option<Task>, StorageError> {
        // Unknown ids, common in client lookups, cost no disk access.
        if !self.inner.lock_index().summaries.contains_key(&id) {
            return Ok(None);
        }
        let path = self.path_of(id);
        blocking(move || read_task(&path)).await
    }

    async fn delete(&self, id: TaskId) -> Result<bool, StorageError> {
        let inner = self.inner.clone();
        blocking(move || inner.delete(id)).await
    }

    async fn list(&self, query: &ListQuery) -> Result<TaskPage, StorageError> {
        if query.limit == 0 {
            return Err(StorageError::InvalidLimit);
        }
        let after = query.cursor.as_deref().map(Cursor::decode).transpose()?;
        let (ids, next_cursor) = {
            let index = self.inner.lock_index();
            let start = after.map_or(Bound::Unbounded, Bound::Excluded);
            let mut matching = index
                .order
                .range((start, Bound::Unbounded))
                .filter(|cursor| index.summaries.get(&cursor.id).is_some_and(|s| s.matches(query)));
            let page: Vec<Cursor> = matching.by_ref().take(query.limit).copied().collect();
            let next_cursor = matching.next().and(page.last()).map(Cursor::encode);
            (page.into_iter().map(|cursor| cursor.id).collect(), next_cursor)
        };
        // A task may change between the index snapshot and the read; the
        // filter applies to what is returned.
        let query = query.clone();
        let tasks = self.read_tasks(ids, move |task| query_matches(&query, task.status, &task.plugin)).await?;
        Ok(TaskPage { tasks, next_cursor })
    }

    async fn all(&self) -> Result<Vec<Task>, StorageError> {
        let ids = self.inner.lock_index().order.iter().map(|cursor| cursor.id).collect();
        self.read_tasks(ids, |_| true).await
    }

    async fn find_by_idempotency_key(&self, key: &str) -> Result<Option<Task>, StorageError> {
        let id = self.inner.lock_index().by_idempotency_key.get(key).copied();
        match id {
            Some(id) => self.load(id).await,
            None => Ok(None),
        }
    }

    async fn counts(&self) -> Result<StatusCounts, StorageError> {
        Ok(self.inner.lock_index().counts.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::task::{NewTask, TaskOutput};

    fn task(plugin: &str, sequence: u64) -> Task {
        let new = NewTask { plugin: plugin.into(), payload: serde_json::json!({ "n": sequence }), ..NewTask::default() };
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
        assert_eq!(files_under(dir.path()), vec![expected], "one file, no temporary leftovers");
    }

    #[tokio::test]
    async fn delete_removes_file_and_index_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path()).await;
        let saved = task("echo", 1);
        store.save(&saved).await.expect("save");
        assert!(store.delete(saved.id).await.expect("delete"));
        assert!(!store.delete(saved.id).await.expect("delete again"));
        assert_eq!(store.load(saved.id).await.expect("load"), None);
        assert!(!store.path_of(saved.id).exists());
        assert_eq!(store.counts().await.expect("counts")[&TaskStatus::Pending], 0);
    }

    #[tokio::test]
    async fn list_filters_and_pages_in_submission_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path()).await;
        let mut tasks = Vec::new();
        // Saved out of submission order: listing must sort by sequence.
        for sequence in (0..25).rev() {
            let mut t = task(if sequence % 2 == 0 { "echo" } else { "resize" }, sequence);
            if sequence % 3 == 0 {
                t.status = TaskStatus::Completed;
            }
            store.save(&t).await.expect("save");
            tasks.push(t);
        }
        tasks.sort_by_key(|t| t.sequence);

        let page_through = |query: ListQuery| {
            let store = store.clone();
            async move {
                let mut seen = Vec::new();
                let mut query = query;
                loop {
                    let page = store.list(&query).await.expect("list");
                    assert!(page.tasks.len() <= query.limit);
                    seen.extend(page.tasks.into_iter().map(|t| t.sequence));
                    match page.next_cursor {
                        Some(cursor) => query.cursor = Some(cursor),
                        None => return seen,
                    }
                }
            }
        };

        let every: Vec<u64> = (0..25).collect();
        assert_eq!(page_through(ListQuery { limit: 4, ..ListQuery::default() }).await, every);
        assert_eq!(page_through(ListQuery { limit: 25, ..ListQuery::default() }).await, every);

        let completed_echo: Vec<u64> = (0..25).filter(|s| s % 2 == 0 && s % 3 == 0).collect();
        let query = ListQuery { status: Some(TaskStatus::Completed), plugin: Some("echo".into()), limit: 2, cursor: None };
        assert_eq!(page_through(query).await, completed_echo);

        let first = store.list(&ListQuery { limit: 3, ..ListQuery::default() }).await.expect("list");
        assert_eq!(first.tasks, tasks[..3]);

        let bad = ListQuery { limit: 3, cursor: Some("nonsense".into()), ..ListQuery::default() };
        assert!(matches!(store.list(&bad).await, Err(StorageError::InvalidCursor(_))));
        let zero = ListQuery { limit: 0, ..ListQuery::default() };
        assert!(matches!(store.list(&zero).await, Err(StorageError::InvalidLimit)));
    }

    #[tokio::test]
    async fn idempotency_key_finds_its_task() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path()).await;
        let mut keyed = task("echo", 1);
        keyed.idempotency_key = Some("order-42".into());
        store.save(&keyed).await.expect("save");
        store.save(&task("echo", 2)).await.expect("save");
        assert_eq!(store.find_by_idempotency_key("order-42").await.expect("find"), Some(keyed.clone()));
        assert_eq!(store.find_by_idempotency_key("order-43").await.expect("find"), None);
        store.delete(keyed.id).await.expect("delete");
        assert_eq!(store.find_by_idempotency_key("order-42").await.expect("find"), None);
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
        assert_eq!(store.find_by_idempotency_key("key-7").await.expect("find"), Some(saved[7].clone()));
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
        std::fs::write(&misplaced_path, serde_json::to_vec(&task("echo", 2)).expect("json")).expect("write");
        let temp = store_temp_file(dir.path(), good.id);

        let store = open(dir.path()).await;
        assert_eq!(store.all().await.expect("all"), vec![good.clone()]);
        assert_eq!(store.load(corrupt_id).await.expect("load"), None);
        assert!(!corrupt_path.exists() && !misplaced_path.exists() && !temp.exists());
        let quarantined = files_under(&dir.path().join(CORRUPT_DIR));
        assert_eq!(quarantined.len(), 2);
        assert!(quarantined.iter().any(|p| p.to_string_lossy().ends_with(&format!("{corrupt_id}.json"))));
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
        let final_shared = store.load(shared.id).await.expect("load shared").expect("shared exists");
        let all = store.all().await.expect("all");
        assert_eq!(all.len(), saved.len() + 1);
        let ids: HashSet<_> = all.iter().map(|t| t.id).collect();
        assert_eq!(ids.len(), all.len());

        // The index agrees with what is on disk, before and after a reopen.
        let counts = store.counts().await.expect("counts");
        let reopened = open(dir.path()).await;
        assert_eq!(reopened.counts().await.expect("counts"), counts);
        let from_disk = reopened.load(shared.id).await.expect("load").expect("shared");
        assert_eq!(from_disk, final_shared);
        let listed = store.list(&ListQuery { status: Some(final_shared.status), limit: 1, ..ListQuery::default() }).await.expect("list");
        assert_eq!(listed.tasks.first().map(|t| t.id), Some(shared.id), "shared has the lowest sequence");
    }
}
