//! The store contract (`taskflow_backend::contract`) run against every
//! [`TaskStore`]: the embedded file store (a fresh directory) and PostgreSQL
//! (a fresh schema), each test on both; then what only the file store
//! promises (PostgreSQL's own promises are in `postgres.rs`).

use std::sync::Arc;

use taskflow_backend::contract;
use taskflow_backend::storage::TaskStore;
use taskflow_files::FileStore;
use taskflow_postgres::PgStore;
use taskflow_tests::pg;

/// Runs `check` against a fresh store of each backend, naming the backend
/// first (a failure's output says which one broke the contract).
async fn each(check: impl AsyncFn(Arc<dyn TaskStore>)) {
    on_files(&check).await;
    on_postgres(&check).await;
}

async fn on_files(check: &impl AsyncFn(Arc<dyn TaskStore>)) {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = FileStore::open(dir.path(), false)
        .await
        .expect("open the file store");
    eprintln!("store contract on files");
    check(Arc::new(files)).await;
}

async fn on_postgres(check: &impl AsyncFn(Arc<dyn TaskStore>)) {
    let (schema, options) = pg::fresh_schema().await;
    let postgres = PgStore::connect(options, 8)
        .await
        .expect("connect and migrate");
    eprintln!("store contract on postgres");
    check(Arc::new(postgres)).await;
    pg::drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_filter_and_page_in_submission_order() {
    each(async |store| contract::lists_filter_and_page_in_submission_order(store.as_ref()).await)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_filter_by_every_field() {
    each(async |store| contract::lists_filter_by_every_field(store.as_ref()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_and_their_logs_are_kept() {
    each(async |store| contract::attempts_and_their_logs_are_kept(store.as_ref()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_report_their_heartbeats() {
    each(async |store| contract::hosts_report_their_heartbeats(store.as_ref()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_are_numbered_and_honour_idempotency_keys() {
    each(async |store| {
        contract::insert_numbers_tasks_and_honours_idempotency_keys(store.as_ref()).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_inserts_with_one_key_create_one_task() {
    each(async |store| contract::racing_inserts_with_one_key_create_one_task(store).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_say_what_they_found() {
    each(async |store| contract::claims_say_what_they_found(store.as_ref()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_fence_their_holders() {
    each(async |store| contract::leases_fence_their_holders(store.as_ref()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_saved_after_a_cancel_request_is_a_cancel() {
    each(async |store| {
        contract::a_retry_saved_after_a_cancel_request_is_a_cancel(store.as_ref()).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_claims_have_one_winner() {
    each(async |store| contract::racing_claims_have_one_winner(store).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsent_tasks_go_to_one_sweeper_at_a_time() {
    // Only a store that keeps an outbox (for a queue outside it, SQS) is
    // bound by this; the file store keeps none: its queue is filled again
    // from it at startup.
    on_postgres(&async |store| contract::unsent_tasks_go_to_one_sweeper_at_a_time(store).await)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expire_deletes_only_finished_tasks_past_their_age() {
    each(async |store| {
        contract::expire_deletes_only_finished_tasks_past_their_age(store.as_ref()).await
    })
    .await;
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
