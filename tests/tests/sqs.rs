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
        "2",
    ];
    HostProcess::start_shared(data, url, "sqs", &extra).await
}

/// Submits a `hostile` task that sleeps `seconds`; its id.
async fn submit_sleep(
    client: &reqwest::Client,
    url: &str,
    seconds: u64,
    max_attempts: u32,
) -> String {
    let response = client
        .post(format!("{url}/tasks"))
        .json(&json!({"plugin": "hostile", "payload": {"mode": "sleep", "seconds": seconds}, "max_attempts": max_attempts}))
        .send()
        .await
        .expect("submit");
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    response.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string()
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
    let id = submit_sleep(&client, &first.url, 60, 10).await;
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
    // The message comes back once its visibility (the 2 s lease) runs out.
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

/// A task's message goes to the dead-letter queue while its task runs on a
/// live host (SQS moves a message received once too often, for instance
/// after a host could not extend its visibility): the hosts leave the task
/// to its runner, and it keeps a message, so when that runner then dies the
/// task runs again elsewhere instead of waiting forever, pending with no
/// message. The move is played by the test: the band queues are purged and
/// the task's id sent to the dead-letter queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_message_went_to_the_dead_letters_while_it_ran_still_finishes() {
    let (schema, _) = fresh_schema().await;
    let url = schema_url(&schema);
    let prefix = aws::fresh_prefix();
    aws::create_queues(&prefix, 3, 10).await;
    let client = reqwest::Client::new();
    let dirs: Vec<tempfile::TempDir> = (0..2)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut hosts = Vec::new();
    for dir in &dirs {
        hosts.push(Some(host(dir.path(), &url, &prefix).await));
    }
    let first = hosts[0].as_ref().expect("host").url.clone();
    let id = submit_sleep(&client, &first, 6, 3).await;
    let task_url = format!("{first}/tasks/{id}");
    let running = poll_json(&client, &task_url, Duration::from_secs(60), |t| {
        t["status"] == "running"
    })
    .await;

    let sqs = aws::sqs().await;
    let url_of = |name: String| {
        let sqs = sqs.clone();
        async move {
            sqs.get_queue_url()
                .queue_name(name)
                .send()
                .await
                .expect("queue URL")
                .queue_url()
                .expect("URL")
                .to_string()
        }
    };
    for band in 1..=3 {
        sqs.purge_queue()
            .queue_url(url_of(format!("{prefix}-band-{band}")).await)
            .send()
            .await
            .expect("purge");
    }
    let dead = url_of(format!("{prefix}-dead-letters")).await;
    sqs.send_message()
        .queue_url(&dead)
        .message_body(&id)
        .send()
        .await
        .expect("send the dead letter");
    // A host's reaper finds it and leaves the running task be.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = sqs
            .get_queue_attributes()
            .queue_url(&dead)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(
                aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            )
            .send()
            .await
            .expect("dead-letter queue attributes");
        let count: u64 = left
            .attributes()
            .map(|a| a.values().filter_map(|v| v.parse::<u64>().ok()).sum())
            .unwrap_or(0);
        if count == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no host took the dead letter within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let still = taskflow_tests::get_json(&client, &task_url).await;
    assert_eq!(
        (still["status"].as_str(), still["attempts"].as_u64()),
        (Some("running"), Some(1)),
        "a task running on a live host is not failed by its dead letter: {still}"
    );

    // Its runner dies: the other host runs it again.
    let mut survivor = None;
    for slot in &mut hosts {
        let host = slot.take().expect("host");
        if host.stats(&client).await["host"]["name"] == running["host"] {
            host.kill();
        } else {
            survivor = Some(host);
        }
    }
    let survivor = survivor.expect("the other host");
    let done = poll_json(
        &client,
        &format!("{}/tasks/{id}", survivor.url),
        Duration::from_secs(60),
        |t| {
            matches!(
                t["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            )
        },
    )
    .await;
    assert_eq!(
        (done["status"].as_str(), done["attempts"].as_u64()),
        (Some("completed"), Some(2)),
        "{done}"
    );
    survivor.terminate();
    drop_schema(&schema).await;
}

/// The emulator frozen (SIGSTOP) for 10 s while two hosts work and accept
/// tasks: every accepted task completes, and the hosts carry on by
/// themselves once it answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_ride_out_an_emulator_pause() {
    let emulator = aws::OwnEmulator::start().await;
    let (schema, _) = fresh_schema().await;
    let url = schema_url(&schema);
    let prefix = aws::fresh_prefix();
    aws::create_queues_at(&emulator.endpoint, &prefix, 3, 10).await;
    let env = aws::host_env_at(&emulator.endpoint);
    let dirs: Vec<tempfile::TempDir> = (0..2)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut hosts = Vec::new();
    for dir in &dirs {
        let plugins = dir.path().join("plugins");
        taskflow_tests::install_plugins(&plugins, &["echo"]);
        let extra = [
            "--sqs-queue-prefix",
            prefix.as_str(),
            "--workers",
            "2",
            "--lease-secs",
            "5",
        ];
        hosts.push(HostProcess::start_shared_with(dir.path(), &url, "sqs", &extra, &env).await);
    }
    let client = reqwest::Client::new();
    let urls: Vec<String> = hosts.iter().map(|h| h.url.clone()).collect();
    let mut accepted = Vec::new();
    for round in 0..4 {
        accepted.extend(submit_twenty(client.clone(), urls[round % 2].clone(), round).await);
    }
    emulator.signal("STOP");
    // Accepted while SQS does not answer: in the database, sent once it does.
    let during: Vec<_> = (4..8)
        .map(|round| {
            tokio::spawn(submit_twenty(
                client.clone(),
                urls[round % 2].clone(),
                round,
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(10)).await;
    emulator.signal("CONT");
    for submission in during {
        accepted.extend(submission.await.expect("join"));
    }
    for round in 8..12 {
        accepted.extend(submit_twenty(client.clone(), urls[round % 2].clone(), round).await);
    }
    assert_eq!(accepted.len(), 240);
    for id in &accepted {
        let done = poll_json(
            &client,
            &format!("{}/tasks/{id}", hosts[0].url),
            Duration::from_secs(120),
            |t| {
                matches!(
                    t["status"].as_str(),
                    Some("completed" | "failed" | "cancelled")
                )
            },
        )
        .await;
        assert_eq!(done["status"], "completed", "{done}");
    }
    for host in &hosts {
        let ready = poll_json(
            &client,
            &format!("{}/ready", host.url),
            Duration::from_secs(30),
            |r| r["status"] == "ok",
        )
        .await;
        assert_eq!(
            ready["backends"],
            json!({"queue": "ok", "storage": "ok", "blobs": "ok"})
        );
    }
    drop(hosts);
    drop_schema(&schema).await;
}

/// Submits twenty echo tasks to the host at `url` (few: moto slows with the
/// messages a queue holds); their ids.
async fn submit_twenty(client: reqwest::Client, url: String, round: usize) -> Vec<String> {
    let tasks: Vec<Value> = (0..20)
        .map(|i| json!({"plugin": "echo", "payload": {"round": round, "i": i}}))
        .collect();
    let accepted = taskflow_tests::submit_batch(&client, &url, tasks).await;
    accepted
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_string())
        .collect()
}
