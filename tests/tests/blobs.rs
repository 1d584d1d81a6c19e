//! One behavioural contract for every blob store (`taskflow_backend::contract::blobs`),
//! run against each: S3 (moto, a fresh bucket), the PostgreSQL table and
//! files in a directory.

use std::sync::Arc;

use taskflow_aws::S3Blobs;
use taskflow_backend::blobs::BlobStore;
use taskflow_backend::contract::blobs as contract;
use taskflow_files::FsBlobs;
use taskflow_postgres::{PgBlobs, PgStore};
use taskflow_tests::{aws, pg};

/// The stores under test, with the schema to drop afterwards and the
/// directory of the files.
async fn stores() -> (
    Vec<(&'static str, Arc<dyn BlobStore>)>,
    String,
    tempfile::TempDir,
) {
    let bucket = aws::fresh_bucket().await;
    let sdk = aws::sdk().await;
    let s3 = S3Blobs::open(&sdk, &bucket).await.expect("S3 blob store");
    let (schema, options) = pg::fresh_schema().await;
    let store = PgStore::connect(options, 4)
        .await
        .expect("PostgreSQL store");
    let table = PgBlobs::new(store.pool().clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let files = FsBlobs::new(dir.path().join("blobs"), true);
    (
        vec![
            ("s3", Arc::new(s3)),
            ("postgres", Arc::new(table)),
            ("files", Arc::new(files)),
        ],
        schema,
        dir,
    )
}

async fn each(check: impl AsyncFn(Arc<dyn BlobStore>)) {
    let (stores, schema, _dir) = stores().await;
    for (name, blobs) in stores {
        eprintln!("blob contract on {name}");
        check(blobs).await;
    }
    pg::drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_come_back_byte_for_byte() {
    each(async |blobs| contract::puts_come_back_byte_for_byte(blobs.as_ref()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_replaced_and_deleted_one_by_one() {
    each(async |blobs| contract::keys_are_replaced_and_deleted_one_by_one(blobs.as_ref()).await)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_listed_in_order_and_deleted_in_batches() {
    each(async |blobs| {
        contract::keys_are_listed_in_order_and_deleted_in_batches(blobs.as_ref()).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claim_check_keeps_large_bodies_and_checks_them() {
    each(async |blobs| contract::the_claim_check_keeps_large_bodies_and_checks_them(blobs).await)
        .await;
}

/// A bucket that does not exist stops the store from opening, named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_is_named() {
    let sdk = aws::sdk().await;
    let error = S3Blobs::open(&sdk, "tf-no-such-bucket")
        .await
        .expect_err("no such bucket");
    assert!(
        error
            .to_string()
            .contains("\"tf-no-such-bucket\" does not exist"),
        "{error}"
    );
}
