//! Retention, end to end: a host deletes the finished tasks past their
//! status's age and everything that was theirs (task files and emptied
//! shard directories; rows; bodies in S3), sweeps bodies no task points
//! to, and keeps everything else; `/stats` and the metrics follow.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use taskflow_server::config::Age;
use taskflow_tests::{
    Backend, TestHost, aws, eventually, get_json, metric_sum, poll_json, submit_batch,
};

/// Retention settings for a test: completed tasks kept 2 s, failed ones
/// forever, the job every second.
fn short_retention(config: &mut taskflow_server::config::ServeConfig) {
    config.retain_completed = Age(Some(Duration::from_secs(2)));
    config.retain_failed = Age(None);
    config.retain_cancelled = Age(None);
    config.retain_orphaned_bodies = Age(Some(Duration::from_secs(3)));
    config.retention_interval_secs = 1;
}

/// The payload of a task that fails (large enough for S3 in the S3 test).
fn failing_payload() -> Value {
    json!({"succeed_on_attempt": 9, "pad": "y".repeat(200)})
}

/// Submits `count` echo tasks and one that fails, and waits for them all.
async fn run_tasks(
    client: &reqwest::Client,
    host: &TestHost,
    count: usize,
) -> (Vec<String>, String) {
    let tasks = (0..count)
        .map(|n| json!({"plugin": "echo", "payload": {"n": n, "text": "x".repeat(200)}}))
        .chain([json!({"plugin": "flaky", "payload": failing_payload(), "max_attempts": 1})])
        .collect();
    let mut ids: Vec<String> = submit_batch(client, &host.url, tasks)
        .await
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_string())
        .collect();
    let failed = ids.pop().expect("the failing task");
    for id in ids.iter().chain([&failed]) {
        poll_json(
            client,
            &host.at(&format!("/tasks/{id}")),
            Duration::from_secs(60),
            |t| matches!(t["status"].as_str(), Some("completed" | "failed")),
        )
        .await;
    }
    (ids, failed)
}

/// As [`run_tasks`], after a task of the hostile fixture logging more lines
/// than its record keeps, which completes too; the key of its whole log.
async fn run_tasks_and_a_long_log(
    client: &reqwest::Client,
    host: &TestHost,
    count: usize,
) -> (Vec<String>, String, String) {
    let chatty = taskflow_tests::submit(
        &host.client(),
        &taskflow_tests::as_task(
            json!({"plugin": "hostile", "payload": {"mode": "chatty", "n": 300}}),
        ),
    )
    .await
    .id;
    let (completed, failed) = run_tasks(client, host, count).await;
    let done = taskflow_tests::wait_terminal(&host.client(), chatty, Duration::from_secs(60)).await;
    let key = done.task.history[0]
        .logs_blob
        .as_ref()
        .expect("the whole log is kept")
        .key
        .clone();
    (completed, failed, key)
}

/// Waits (bounded) until `/stats` counts no completed task.
async fn until_no_completed(client: &reqwest::Client, host: &TestHost) -> Value {
    poll_json(
        client,
        &host.at("/stats"),
        Duration::from_secs(60),
        |stats| stats["system"]["tasks"]["completed"] == 0,
    )
    .await
}

/// This host's `taskflow_retention_deleted_total` for `what`.
async fn deleted_metric(client: &reqwest::Client, host: &TestHost, what: &str) -> u64 {
    let label = format!("what=\"{what}\"");
    metric_sum(
        client,
        &host.url,
        "taskflow_retention_deleted_total",
        &[&label],
    )
    .await
}

/// Waits (bounded) until this host's retention job has deleted `count` of
/// `what`, and no more.
async fn deleted_reaches(client: &reqwest::Client, host: &TestHost, what: &str, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let deleted = deleted_metric(client, host, what).await;
        assert!(
            deleted <= count,
            "{deleted} {what} deleted, more than the {count} expected"
        );
        if deleted == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {deleted} of {count} {what} deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Shard directories under the task store and the task files in each.
fn shards(root: &Path) -> Vec<(String, Vec<String>)> {
    let mut shards = Vec::new();
    for entry in std::fs::read_dir(root).expect("task dir").flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.len() == 2 && entry.path().is_dir() {
            let files = std::fs::read_dir(entry.path())
                .expect("shard")
                .flatten()
                .map(|f| f.file_name().to_string_lossy().to_string())
                .collect();
            shards.push((name, files));
        }
    }
    shards
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_files_store_expired_tasks_go_with_their_files_and_emptied_directories() {
    let host = TestHost::start_with(2, true, short_retention).await;
    let client = reqwest::Client::new();
    // A task whose log is longer than its record keeps: the whole log is a
    // file under the data directory's blobs/.
    let (completed, failed, log_key) = run_tasks_and_a_long_log(&client, &host, 60).await;
    let log_file = host.data.path().join("blobs").join(log_key);
    assert!(log_file.is_file(), "{}", log_file.display());
    let root = host.data.path().join("tasks");
    let file_of = |id: &str| root.join(&id[..2]).join(format!("{id}.json"));
    // In their files once checkpointed (or already deleted, should the job be quick).
    let failed_file = file_of(&failed);
    eventually("the failed task is in its file", || failed_file.exists()).await;

    let stats = until_no_completed(&client, &host).await;
    assert_eq!(stats["system"]["tasks"]["failed"], 1, "{stats}");
    for id in &completed {
        let response = client
            .get(host.at(&format!("/tasks/{id}")))
            .send()
            .await
            .expect("get");
        assert_eq!(
            response.status(),
            reqwest::StatusCode::NOT_FOUND,
            "{id} is gone"
        );
    }
    eventually("every completed task's file is deleted", || {
        completed.iter().all(|id| !file_of(id).exists())
    })
    .await;
    assert!(
        failed_file.exists(),
        "a failed task is kept (TASKFLOW_RETAIN_FAILED=forever)"
    );
    assert_eq!(
        get_json(&client, &host.at(&format!("/tasks/{failed}"))).await["status"],
        "failed"
    );
    eventually("no shard directory is left empty", || {
        shards(&root).iter().all(|(_, files)| !files.is_empty())
    })
    .await;
    let left: BTreeSet<String> = shards(&root).into_iter().map(|(name, _)| name).collect();
    assert_eq!(
        left,
        [failed[..2].to_string()].into(),
        "only the failed task's shard is left"
    );
    deleted_reaches(&client, &host, "completed", completed.len() as u64 + 1).await;
    deleted_reaches(&client, &host, "bodies", 1).await;
    assert!(!log_file.exists(), "the whole log goes with its task");
    assert!(
        !host.data.path().join("blobs").join("logs").exists(),
        "with the directories it emptied"
    );

    // What runs after keeps running, and goes the same way (its failed task stays).
    let (later, _) = run_tasks(&client, &host, 5).await;
    until_no_completed(&client, &host).await;
    eventually("later tasks' files are deleted", || {
        later.iter().all(|id| !file_of(id).exists())
    })
    .await;
    let dir = host.stop().await;
    // A restart finds only what was kept.
    let host = TestHost::start_with(1, false, |config| {
        config.data_dir = dir.path().to_path_buf();
        short_retention(config);
    })
    .await;
    let stats = get_json(&client, &host.at("/stats")).await;
    assert_eq!(
        (
            &stats["system"]["tasks"]["completed"],
            &stats["system"]["tasks"]["failed"]
        ),
        (&json!(0), &json!(2)),
        "{stats}: the two failed tasks only"
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_and_s3_expired_tasks_go_with_their_bodies_and_orphans_are_swept() {
    let host = TestHost::start_on_with(Backend::Sqs, 2, true, |config| {
        short_retention(config);
        // Every payload and result in S3.
        config.blob_threshold_bytes = 64;
    })
    .await;
    let bucket = host.bucket.clone().expect("bucket");
    let client = reqwest::Client::new();
    // A task whose log is longer than its record keeps: the whole log is in
    // S3 (its payload and result are small enough to stay in the record).
    let (completed, failed, log_key) = run_tasks_and_a_long_log(&client, &host, 20).await;
    assert_eq!(aws::keys(&bucket, "logs/").await, vec![log_key]);
    let s3 = aws::s3().await;
    // Blobs no task points to: a payload whose task was never stored, and
    // a result and a log written under a claim that lost its lease.
    let never_stored = format!("payloads/ab/{}", taskflow_model::task::TaskId::new());
    let stale_result = format!("results/{}/{failed}/999", &failed[..2]);
    let stale_log = format!("logs/{}/{failed}/1-999", &failed[..2]);
    for key in [&never_stored, &stale_result, &stale_log] {
        s3.put_object()
            .bucket(&bucket)
            .key(key)
            .body(b"orphan".to_vec().into())
            .send()
            .await
            .expect("put orphan");
    }
    let mine = |keys: &[String], id: &str| keys.iter().filter(|k| k.contains(id)).count();
    let payloads = aws::keys(&bucket, "payloads/").await;
    let results = aws::keys(&bucket, "results/").await;
    for id in &completed {
        assert_eq!(
            (mine(&payloads, id), mine(&results, id)),
            (1, 1),
            "{id} keeps its bodies in S3"
        );
    }
    assert_eq!(
        mine(&payloads, &failed),
        1,
        "the failed task's payload is in S3"
    );

    until_no_completed(&client, &host).await;
    // The rows go first, their bodies and logs right after: counted then.
    deleted_reaches(&client, &host, "bodies", 2 * completed.len() as u64 + 1).await;
    assert_eq!(
        deleted_metric(&client, &host, "completed").await,
        completed.len() as u64 + 1
    );
    // Orphans go once older than TASKFLOW_RETAIN_ORPHANED_BODIES.
    deleted_reaches(&client, &host, "orphaned_bodies", 3).await;
    assert!(
        aws::keys(&bucket, "logs/").await.is_empty(),
        "the expired task's log and the orphaned one are deleted"
    );
    let payloads = aws::keys(&bucket, "payloads/").await;
    let results = aws::keys(&bucket, "results/").await;
    for id in &completed {
        assert_eq!(
            (mine(&payloads, id), mine(&results, id)),
            (0, 0),
            "{id}'s bodies are deleted"
        );
    }
    assert!(
        !payloads.contains(&never_stored) && !results.contains(&stale_result),
        "orphans swept"
    );
    assert_eq!(
        payloads,
        vec![format!("payloads/{}/{failed}", &failed[..2])],
        "only the kept task's payload is left"
    );
    let kept = get_json(&client, &host.at(&format!("/tasks/{failed}"))).await;
    assert_eq!(kept["status"], "failed");
    assert_eq!(
        kept["payload"],
        failing_payload(),
        "a kept task still reads its body"
    );
    let stats = get_json(&client, &host.at("/stats")).await;
    assert_eq!(stats["system"]["tasks"]["failed"], 1, "{stats}");
    host.stop().await;
}
