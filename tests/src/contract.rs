//! What every [`TaskStore`] must do, run against each backend by its suite.

use serde_json::json;
use taskflow::storage::{ListQuery, StorageError, TaskStore};
use taskflow::task::{NewTask, Task, TaskStatus};

/// A valid pending task of `plugin` with submission number `sequence`.
pub fn task(plugin: &str, sequence: u64) -> Task {
    let new = NewTask {
        plugin: plugin.into(),
        payload: json!({ "n": sequence }),
        ..NewTask::default()
    };
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
    assert_eq!(
        page_through(
            store,
            ListQuery {
                limit: 4,
                ..ListQuery::default()
            }
        )
        .await,
        every
    );
    assert_eq!(
        page_through(
            store,
            ListQuery {
                limit: 25,
                ..ListQuery::default()
            }
        )
        .await,
        every
    );
    let completed_echo: Vec<u64> = (0..25).filter(|s| s % 2 == 0 && s % 3 == 0).collect();
    let query = ListQuery {
        status: Some(TaskStatus::Completed),
        plugin: Some("echo".into()),
        limit: 2,
        cursor: None,
    };
    assert_eq!(page_through(store, query).await, completed_echo);
    let first = store
        .list(&ListQuery {
            limit: 3,
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(first.tasks, tasks[..3]);
    assert_eq!(store.all().await.expect("all"), tasks);

    let bad = ListQuery {
        limit: 3,
        cursor: Some("nonsense".into()),
        ..ListQuery::default()
    };
    assert!(matches!(
        store.list(&bad).await,
        Err(StorageError::InvalidCursor(_))
    ));
    let zero = ListQuery {
        limit: 0,
        ..ListQuery::default()
    };
    assert!(matches!(
        store.list(&zero).await,
        Err(StorageError::InvalidLimit)
    ));
}

/// `insert` numbers new tasks in order, after every stored (or restored)
/// one, and returns the stored task for an idempotency key seen before.
pub async fn insert_numbers_tasks_and_honours_idempotency_keys(store: &dyn TaskStore) {
    let batch: Vec<Task> = (0..3).map(|_| task("echo", 0)).collect();
    let inserted = store.insert(batch.clone()).await.expect("insert");
    assert!(inserted.iter().all(|s| s.created));
    let sequences: Vec<u64> = inserted.iter().map(|s| s.task.sequence).collect();
    assert!(
        sequences.windows(2).all(|w| w[0] < w[1]),
        "increasing: {sequences:?}"
    );
    for (submitted, original) in inserted.iter().zip(&batch) {
        assert_eq!(submitted.task.id, original.id);
        assert_eq!(
            store.load(original.id).await.expect("load").as_ref(),
            Some(&submitted.task),
            "stored as returned"
        );
    }

    let keyed = |key: &str| Task {
        idempotency_key: Some(key.into()),
        ..task("echo", 0)
    };
    let first = store
        .insert(vec![keyed("order-1")])
        .await
        .expect("insert")
        .remove(0);
    assert!(first.created);
    let again = store
        .insert(vec![keyed("order-1"), task("echo", 0)])
        .await
        .expect("insert");
    assert!(!again[0].created, "the key was seen");
    assert_eq!(again[0].task, first.task, "the stored task comes back");
    assert!(again[1].created && again[1].task.sequence > first.task.sequence);
    assert_eq!(
        store
            .find_by_idempotency_key("order-1")
            .await
            .expect("find"),
        Some(first.task)
    );

    let mut restored = task("echo", 1_000);
    restored.status = TaskStatus::Completed;
    store.restore(&restored).await.expect("restore");
    let after = store
        .insert(vec![task("echo", 0)])
        .await
        .expect("insert")
        .remove(0);
    assert!(
        after.task.sequence > 1_000,
        "numbered after the restored task: {}",
        after.task.sequence
    );
    assert!(store.insert(vec![]).await.expect("empty insert").is_empty());
    let counts = store.counts().await.expect("counts");
    assert_eq!(
        (counts[&TaskStatus::Pending], counts[&TaskStatus::Completed]),
        (6, 1)
    );
}

/// Inserts racing with one idempotency key create one task.
pub async fn racing_inserts_with_one_key_create_one_task(store: std::sync::Arc<dyn TaskStore>) {
    let racers: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let task = Task {
                    idempotency_key: Some("race".into()),
                    ..task("echo", 0)
                };
                store.insert(vec![task]).await.expect("insert").remove(0)
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for racer in racers {
        outcomes.push(racer.await.expect("join"));
    }
    let created: Vec<_> = outcomes.iter().filter(|s| s.created).collect();
    assert_eq!(created.len(), 1, "one task for one key");
    assert!(outcomes.iter().all(|s| s.task.id == created[0].task.id));
    assert_eq!(
        store.counts().await.expect("counts")[&TaskStatus::Pending],
        1
    );
}
