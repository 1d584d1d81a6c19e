//! The embedded file store against the storage contract every backend
//! meets (PostgreSQL's suite runs the same contract).

use taskflow::storage::{FileStore, TaskStore};
use taskflow_tests::contract;

#[tokio::test]
async fn the_file_store_lists_filters_and_pages_in_submission_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open(dir.path(), false)
        .await
        .expect("open store");
    contract::lists_filter_and_page_in_submission_order(&store).await;
}

#[tokio::test]
async fn the_file_store_numbers_inserts_and_honours_idempotency_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open(dir.path(), false)
        .await
        .expect("open store");
    contract::insert_numbers_tasks_and_honours_idempotency_keys(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_inserts_into_the_file_store_with_one_key_create_one_task() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open(dir.path(), false)
        .await
        .expect("open store");
    contract::racing_inserts_with_one_key_create_one_task(std::sync::Arc::new(store)).await;
}

#[tokio::test]
async fn file_store_leases_fence_their_holders() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open(dir.path(), false)
        .await
        .expect("open store");
    contract::leases_fence_their_holders(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_claims_say_what_they_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open(dir.path(), false)
        .await
        .expect("open store");
    contract::claims_say_what_they_found(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_saved_after_a_cancel_request_in_the_file_store_is_a_cancel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open(dir.path(), false)
        .await
        .expect("open store");
    contract::a_retry_saved_after_a_cancel_request_is_a_cancel(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_claims_in_the_file_store_have_one_winner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open(dir.path(), false)
        .await
        .expect("open store");
    contract::racing_claims_have_one_winner(std::sync::Arc::new(store)).await;
}

/// The file store's leases live in memory: a task it holds as running when
/// it opens has no lease, its host having stopped.
#[tokio::test]
async fn a_reopened_file_store_reports_running_tasks_as_expired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = {
        let store = FileStore::open(dir.path(), false)
            .await
            .expect("open store");
        let id = store
            .insert(vec![contract::task("echo", 0)])
            .await
            .expect("insert")[0]
            .task
            .id;
        contract::claim(&store, id, "host-a", std::time::Duration::from_secs(60))
            .await
            .expect("claim");
        assert!(store.expired(10).await.expect("expired").is_empty());
        id
    };
    let store = FileStore::open(dir.path(), false)
        .await
        .expect("reopen store");
    assert_eq!(store.expired(10).await.expect("expired"), vec![id]);
}

#[tokio::test]
async fn the_file_store_numbers_inserts_after_what_it_holds_when_reopened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open(dir.path(), false)
        .await
        .expect("open store");
    let last = store
        .insert((0..5).map(|_| contract::task("echo", 0)).collect())
        .await
        .expect("insert")
        .remove(4);
    drop(store);
    let store = FileStore::open(dir.path(), false)
        .await
        .expect("reopen store");
    let next = store
        .insert(vec![contract::task("echo", 0)])
        .await
        .expect("insert")
        .remove(0);
    assert!(
        next.task.sequence > last.task.sequence,
        "{} after {}",
        next.task.sequence,
        last.task.sequence
    );
}

#[tokio::test]
async fn the_file_store_expires_only_finished_tasks_past_their_age() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open(dir.path(), false)
        .await
        .expect("open store");
    contract::expire_deletes_only_finished_tasks_past_their_age(&store).await;
}
