//! The SQS queue against moto with real host processes: at-least-once
//! delivery meets leases, and the dead-letter queue catches a task that keeps
//! stopping its hosts. (Three hosts sharing SQS run in `fleet.rs`.)

use std::time::Duration;

use serde_json::{Value, json};
use taskflow_tests::pg::{drop_schema, fresh_schema, schema_url};
use taskflow_tests::process::HostProcess;
use taskflow_tests::{aws, fixture_wasm, poll_json};

async fn host(data: &std::path::Path, url: &str, prefix: &str) -> HostProcess {
    let plugins = data.join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugin dir");
    std::fs::copy(fixture_wasm("hostile"), plugins.join("hostile.wasm"))
        .expect("copy the hostile fixture");
    let extra = [
        "--sqs-queue-prefix",
        prefix,
        "--workers",
        "1",
        "--lease-secs",
        "1",
    ];
    HostProcess::start_shared(data, url, "sqs", &extra).await
}

/// Each host that takes the task dies with it; once the task's message has
/// been received as often as the redrive policy allows, the dead-letter
/// queue takes it and the next host records the task as failed, with why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_keeps_stopping_its_hosts_fails_through_the_dead_letter_queue() {
    let (schema, _) = fresh_schema().await;
    let url = schema_url(&schema);
    let prefix = aws::fresh_prefix();
    aws::create_queues(&prefix, 3, 2).await;
    let client = reqwest::Client::new();
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();

    let first = host(dirs[0].path(), &url, &prefix).await;
    let response = client
        .post(format!("{}/tasks", first.url))
        .json(&json!({"plugin": "hostile", "payload": {"mode": "sleep", "seconds": 60}, "max_attempts": 10}))
        .send()
        .await
        .expect("submit");
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    let id = response.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let running = |url: String, attempts: u64| {
        let client = client.clone();
        async move {
            poll_json(&client, &url, Duration::from_secs(60), |t| {
                t["status"] == "running" && t["attempts"] == attempts
            })
            .await;
        }
    };
    running(format!("{}/tasks/{id}", first.url), 1).await;
    first.kill();
    // The message comes back once its visibility (the 1 s lease) runs out.
    let second = host(dirs[1].path(), &url, &prefix).await;
    running(format!("{}/tasks/{id}", second.url), 2).await;
    second.kill();

    let last = host(dirs[2].path(), &url, &prefix).await;
    let failed = poll_json(
        &client,
        &format!("{}/tasks/{id}", last.url),
        Duration::from_secs(60),
        |t| t["status"] == "failed",
    )
    .await;
    assert_eq!(failed["last_error"]["kind"], "interrupted", "{failed}");
    let message = failed["last_error"]["message"].as_str().expect("message");
    assert!(message.contains("dead-letter queue"), "{message}");
    assert_eq!(failed["attempts"], 2, "never a third attempt: {failed}");
    last.terminate();
    drop_schema(&schema).await;
}
