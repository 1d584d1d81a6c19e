//! The embedded file store against the storage contract every backend
//! meets (PostgreSQL's suite runs the same contract).

use taskflow::storage::FileStore;
use taskflow_tests::contract;

#[tokio::test]
async fn the_file_store_lists_filters_and_pages_in_submission_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open(dir.path(), false).await.expect("open store");
    contract::lists_filter_and_page_in_submission_order(&store).await;
}

#[tokio::test]
async fn the_file_store_saves_a_batch_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open(dir.path(), false).await.expect("open store");
    contract::saves_a_batch_together(&store).await;
}
