//! One behavioural contract for every queue (`tests/src/contract.rs`),
//! run against each: the in-process heap, the PostgreSQL tasks table, and
//! SQS (moto) with PostgreSQL beside it.

use std::sync::Arc;
use std::time::Duration;

use taskflow::queue::sqs::{SqsSettings, parse_bands};
use taskflow::queue::{LocalQueue, PgQueue, Queue, SqsQueue};
use taskflow::storage::{FileStore, PgStore, TaskStore};
use taskflow_tests::contract::queue as contract;
use taskflow_tests::{aws, pg};

/// The queues under test, each with the store its tasks live in.
async fn queues() -> Vec<(
    &'static str,
    Arc<dyn Queue>,
    Arc<dyn TaskStore>,
    Option<String>,
    tempfile::TempDir,
)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let files: Arc<dyn TaskStore> = Arc::new(
        FileStore::open(dir.path(), false)
            .await
            .expect("file store"),
    );
    let local: Arc<dyn Queue> = Arc::new(LocalQueue::new());

    let (schema, options) = pg::fresh_schema().await;
    let store = PgStore::connect(options, 8)
        .await
        .expect("PostgreSQL store");
    let tasks_table: Arc<dyn Queue> = Arc::new(
        PgQueue::start(
            store.pool().clone(),
            "contract".into(),
            Duration::from_secs(30),
        )
        .await
        .expect("PostgreSQL queue"),
    );

    let (sqs_schema, sqs_options) = pg::fresh_schema().await;
    let sqs_store = PgStore::connect(sqs_options, 8)
        .await
        .expect("PostgreSQL store");
    let prefix = aws::fresh_prefix();
    aws::create_queues(&prefix, 3, 5).await;
    let settings = SqsSettings {
        prefix,
        bands: parse_bands("1-3,4-7,8-10").expect("bands"),
        lease: Duration::from_secs(30),
    };
    let sqs: Arc<dyn Queue> = Arc::new(
        SqsQueue::start(aws::sqs().await, sqs_store.pool().clone(), settings)
            .await
            .expect("SQS queue"),
    );

    let scratch = tempfile::tempdir().expect("tempdir");
    vec![
        ("local", local, files, None, dir),
        (
            "postgres",
            tasks_table,
            Arc::new(store),
            Some(schema),
            tempfile::tempdir().expect("tempdir"),
        ),
        ("sqs", sqs, Arc::new(sqs_store), Some(sqs_schema), scratch),
    ]
}

async fn each(check: impl AsyncFn(&dyn Queue, &dyn TaskStore)) {
    for (name, queue, store, schema, _dir) in queues().await {
        eprintln!("queue contract on {name}");
        check(queue.as_ref(), store.as_ref()).await;
        if let Some(schema) = schema {
            pg::drop_schema(&schema).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_queue_delivers_each_entry_highest_priority_first() {
    each(contract::delivers_each_entry_highest_priority_first).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_queue_keeps_a_delayed_entry_until_it_is_due() {
    each(contract::keeps_a_delayed_entry_until_it_is_due).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_queue_delivers_a_batch_push() {
    each(contract::delivers_a_batch_push).await;
}
