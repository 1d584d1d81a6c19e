//! What every [`TaskStore`] must do, run against each backend by its suite.

use serde_json::json;
use taskflow::storage::{ListQuery, StorageError, TaskStore};
use taskflow::task::{NewTask, Task, TaskStatus};

/// A valid pending task of `plugin` with submission number `sequence`.
pub fn task(plugin: &str, sequence: u64) -> Task {
    let new = NewTask { plugin: plugin.into(), payload: json!({ "n": sequence }), ..NewTask::default() };
    new.validate(sequence).expect("valid task")
}

/// Every sequence `query` lists, following `next_cursor` to the end.
async fn page_through(store: &dyn TaskStore, mut query: ListQuery) -> Vec<u64> {
    let mut seen = Vec::new();
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

/// Lists come in submission order, filtered by status and plugin, in pages
/// that neither skip nor repeat; bad cursors and limits are refused.
pub async fn lists_filter_and_page_in_submission_order(store: &dyn TaskStore) {
    // Saved out of submission order: listing sorts by sequence.
    let mut tasks = Vec::new();
    for sequence in (0..25).rev() {
        let mut t = task(if sequence % 2 == 0 { "echo" } else { "resize" }, sequence);
        if sequence % 3 == 0 {
            t.status = TaskStatus::Completed;
        }
        store.save(&t).await.expect("save");
        tasks.push(t);
    }
    tasks.sort_by_key(|t| t.sequence);

    let every: Vec<u64> = (0..25).collect();
    assert_eq!(page_through(store, ListQuery { limit: 4, ..ListQuery::default() }).await, every);
    assert_eq!(page_through(store, ListQuery { limit: 25, ..ListQuery::default() }).await, every);
    let completed_echo: Vec<u64> = (0..25).filter(|s| s % 2 == 0 && s % 3 == 0).collect();
    let query = ListQuery { status: Some(TaskStatus::Completed), plugin: Some("echo".into()), limit: 2, cursor: None };
    assert_eq!(page_through(store, query).await, completed_echo);
    let first = store.list(&ListQuery { limit: 3, ..ListQuery::default() }).await.expect("list");
    assert_eq!(first.tasks, tasks[..3]);
    assert_eq!(store.all().await.expect("all"), tasks);

    let bad = ListQuery { limit: 3, cursor: Some("nonsense".into()), ..ListQuery::default() };
    assert!(matches!(store.list(&bad).await, Err(StorageError::InvalidCursor(_))));
    let zero = ListQuery { limit: 0, ..ListQuery::default() };
    assert!(matches!(store.list(&zero).await, Err(StorageError::InvalidLimit)));
}

/// `save_all` saves every task of a batch, replacing those that exist, and
/// an empty batch is no error.
pub async fn saves_a_batch_together(store: &dyn TaskStore) {
    let mut batch: Vec<Task> = (1..=5).map(|n| task("echo", n)).collect();
    store.save(&batch[0]).await.expect("save one first");
    batch[0].status = TaskStatus::Completed;
    store.save_all(&batch).await.expect("save the batch");
    for saved in &batch {
        assert_eq!(store.load(saved.id).await.expect("load").as_ref(), Some(saved), "task {}", saved.sequence);
    }
    store.save_all(&[]).await.expect("an empty batch");
    let counts = store.counts().await.expect("counts");
    assert_eq!((counts[&TaskStatus::Pending], counts[&TaskStatus::Completed]), (4, 1));
}
