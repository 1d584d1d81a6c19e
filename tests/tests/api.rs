//! The HTTP API of a real host (in this process, over real sockets): the
//! task lifecycle, priorities, retries, cancellation, bad input, plugins,
//! auth, metrics, backup and restore. Tasks are submitted and followed
//! through the typed client (`taskflow-client`); what a test asserts of the
//! HTTP surface itself (status codes, headers, error bodies, the JSON on the
//! wire) it asks with plain requests.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use taskflow_client::ClientError;
use taskflow_model::api::TaskView;
use taskflow_model::attempt::{AttemptOutcome, LogStream};
use taskflow_model::task::{TaskOutput, TaskStatus};
use taskflow_tests::{
    Backend, TestHost, as_task, fixture_wasm, get_json, plugin_wasm, poll_json, submit,
    wait_terminal, wasm_bytes,
};

const LONG: Duration = Duration::from_secs(60);

/// The JSON a finished task's plugin returned.
fn result(view: &TaskView) -> &Value {
    match &view.task.result {
        Some(TaskOutput::Json(value)) => value,
        other => panic!("task {} has no JSON result: {other:?}", view.task.id),
    }
}

/// The kind of a task's last error, as the API names it.
fn error_kind(view: &TaskView) -> String {
    let kind = view.task.last_error.as_ref().map(|e| e.kind);
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("no error on task {}", view.task.id))
}

/// The message of a task's last error.
fn error_message(view: &TaskView) -> &str {
    view.task
        .last_error
        .as_ref()
        .map_or("", |e| e.message.as_str())
}

fn id_of(task: &Value) -> String {
    task["id"].as_str().expect("id").to_owned()
}

async fn a_submitted_task_completes_with_its_result(backend: Backend) {
    let host = TestHost::start_on(backend, 2, false).await;
    let client = reqwest::Client::new();
    let response = client
        .post(host.at("/tasks"))
        .header("x-request-id", "req-abc-123")
        .json(&json!({"plugin": "wordcount", "payload": {"text": "to be or not to be"}, "priority": 2}))
        .send()
        .await
        .expect("submit");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(
        response.headers()["x-request-id"],
        "req-abc-123",
        "the request id comes back"
    );
    let location = response.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let task: Value = response.json().await.expect("json");
    assert_eq!(location, format!("/tasks/{}", id_of(&task)));
    assert_eq!(task["status"], "pending");
    assert_eq!(task["priority"], 2);

    let done = wait_terminal(&host.client(), id_of(&task).parse().expect("an id"), LONG).await;
    assert_eq!(done.task.status, TaskStatus::Completed, "{done:?}");
    assert_eq!(done.task.attempts, 1);
    assert_eq!(result(&done)["words"], 6, "a JSON result");
    assert_eq!(
        result(&done)["top_words"][0],
        json!({"word": "be", "count": 2})
    );
    assert_eq!(
        done.task.plugin_digest.as_deref(),
        Some(taskflow_tests::file_digest(&plugin_wasm("wordcount")).as_str())
    );
    assert!(done.task.started_at.is_some() && done.task.finished_at.is_some());

    // A generated request id when the client sends none.
    let response = client.get(host.at("/health")).send().await.expect("health");
    assert_eq!(response.headers()["x-request-id"].len(), 36);
    host.stop().await;
}

async fn higher_priorities_run_first_and_equal_ones_in_submission_order(backend: Backend) {
    let host = TestHost::start_on(backend, 1, true).await;
    let client = reqwest::Client::new();
    // Occupy the only worker so everything below waits in the queue.
    let blocker = submit(
        &host.client(),
        &as_task(json!({"plugin": "hostile", "payload": {"mode": "sleep", "seconds": 1}})),
    )
    .await;
    poll_json(
        &client,
        &host.at(&format!("/tasks/{}", blocker.id)),
        LONG,
        |t| t["status"] == "running",
    )
    .await;

    let mut submitted = Vec::new();
    for (priority, label) in [
        (9, "low-1"),
        (9, "low-2"),
        (5, "mid-1"),
        (1, "high-1"),
        (9, "low-3"),
        (1, "high-2"),
        (5, "mid-2"),
    ] {
        let task = submit(
            &host.client(),
            &as_task(json!({"plugin": "echo", "payload": label, "priority": priority})),
        )
        .await;
        submitted.push(task.id);
    }
    let mut finished = Vec::new();
    for id in &submitted {
        let done = wait_terminal(&host.client(), *id, LONG).await.task;
        assert_eq!(done.status, TaskStatus::Completed);
        finished.push((
            done.started_at.expect("started"),
            done.payload.as_str().expect("label").to_owned(),
        ));
    }
    finished.sort();
    let mut order: Vec<&str> = finished.iter().map(|(_, label)| label.as_str()).collect();
    if backend == Backend::Sqs {
        // SQS orders by band (1-3, 4-7, 8-10); a standard queue keeps no
        // order within one.
        for band in order.chunk_by_mut(|a, b| a[..a.len() - 2] == b[..b.len() - 2]) {
            band.sort_unstable();
        }
    }
    assert_eq!(
        order,
        [
            "high-1", "high-2", "mid-1", "mid-2", "low-1", "low-2", "low-3"
        ]
    );
    host.stop().await;
}

async fn retryable_failures_are_retried_until_attempts_run_out(backend: Backend) {
    let host = TestHost::start_on(backend, 2, false).await;

    let eventually_ok = submit(
        &host.client(),
        &as_task(
            json!({"plugin": "flaky", "payload": {"succeed_on_attempt": 3}, "max_attempts": 3}),
        ),
    )
    .await;
    let done = wait_terminal(&host.client(), eventually_ok.id, LONG).await;
    assert_eq!(done.task.status, TaskStatus::Completed, "{done:?}");
    assert_eq!(done.task.attempts, 3);
    assert_eq!(*result(&done), json!({"succeeded_on_attempt": 3}));
    // Every attempt is in the history, with the plugin's own lines.
    let logs = host
        .client()
        .logs(&eventually_ok.id.to_string())
        .await
        .expect("logs");
    let outcomes: Vec<_> = logs.history.iter().map(|a| (a.number, a.outcome)).collect();
    assert_eq!(
        outcomes,
        [
            (1, AttemptOutcome::Retried),
            (2, AttemptOutcome::Retried),
            (3, AttemptOutcome::Completed)
        ]
    );
    for attempt in &logs.history {
        let lines: Vec<_> = attempt
            .logs
            .iter()
            .map(|l| (l.stream, l.message.as_str()))
            .collect();
        let said = format!("attempt {}, set to succeed on attempt 3", attempt.number);
        let printed = format!("flaky stdout of attempt {}", attempt.number);
        assert_eq!(
            lines,
            [
                (LogStream::Log, said.as_str()),
                (LogStream::Stdout, printed.as_str())
            ]
        );
        assert_eq!(attempt.plugin_digest, done.task.plugin_digest);
        assert!(attempt.finished_at.is_some(), "{attempt:?}");
        assert_eq!(
            attempt.error.is_some(),
            attempt.outcome == AttemptOutcome::Retried
        );
    }

    let gives_up = submit(
        &host.client(),
        &as_task(
            json!({"plugin": "flaky", "payload": {"succeed_on_attempt": 3}, "max_attempts": 2}),
        ),
    )
    .await;
    let done = wait_terminal(&host.client(), gives_up.id, LONG).await;
    assert_eq!(done.task.status, TaskStatus::Failed, "{done:?}");
    assert_eq!(done.task.attempts, 2);
    assert_eq!(error_kind(&done), "retryable");

    // A retry by request: one more attempt, which succeeds, with its own lines.
    let gives_up_id = gives_up.id.to_string();
    let retried = host.client().retry(&gives_up_id).await.expect("retry");
    assert!(
        !retried.task.status.is_terminal(),
        "queued again: {retried:?}"
    );
    let done = wait_terminal(&host.client(), gives_up.id, LONG).await;
    assert_eq!(done.task.status, TaskStatus::Completed, "{done:?}");
    assert_eq!(done.task.attempts, 3);
    let logs = host.client().logs(&gives_up_id).await.expect("logs");
    let outcomes: Vec<_> = logs.history.iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        [
            AttemptOutcome::Retried,
            AttemptOutcome::Failed,
            AttemptOutcome::Completed
        ]
    );
    assert_eq!(
        logs.history[2].logs[0].message,
        "attempt 3, set to succeed on attempt 3"
    );
    // Only failed or cancelled tasks are retried.
    match host.client().retry(&gives_up_id).await {
        Err(ClientError::Api {
            status, message, ..
        }) => {
            assert_eq!(status, StatusCode::CONFLICT);
            assert!(
                message.contains("only a failed or cancelled task"),
                "{message}"
            );
        }
        other => panic!("a completed task was retried: {other:?}"),
    }

    // Not retryable: fails on the first attempt.
    let invalid = submit(
        &host.client(),
        &as_task(json!({"plugin": "hash", "payload": {"data": "x", "rounds": 0}})),
    )
    .await;
    let done = wait_terminal(&host.client(), invalid.id, LONG).await;
    assert_eq!(done.task.status, TaskStatus::Failed);
    assert_eq!(done.task.attempts, 1);
    assert_eq!(error_kind(&done), "invalid_input");
    assert!(error_message(&done).contains("rounds"));
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tasks_fail_cleanly_and_the_host_keeps_serving() {
    let host = TestHost::start(2, true).await;
    let cases = [
        (json!({"mode": "loop"}), "timeout"),
        (json!({"mode": "memory"}), "memory_limit"),
        (json!({"mode": "panic"}), "trap"),
    ];
    for (payload, kind) in cases {
        let task = submit(&host.client(), &as_task(json!({"plugin": "hostile", "payload": payload, "timeout_ms": 500, "max_attempts": 1})))
        .await;
        let done = wait_terminal(&host.client(), task.id, LONG).await;
        assert_eq!(done.task.status, TaskStatus::Failed, "{done:?}");
        assert_eq!(error_kind(&done), kind, "{done:?}");
    }
    let ok = submit(
        &host.client(),
        &as_task(json!({"plugin": "echo", "payload": "still here"})),
    )
    .await;
    assert_eq!(
        wait_terminal(&host.client(), ok.id, LONG).await.task.status,
        TaskStatus::Completed
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_sidecar_sets_the_default_timeout_of_its_tasks() {
    let host = TestHost::start(2, true).await;
    let sidecar = host.data.path().join("plugins/hostile.limits.json");
    std::fs::write(&sidecar, br#"{"timeout_ms": 300}"#).expect("write sidecar");
    host.service
        .registry()
        .sync_path(&sidecar)
        .await
        .expect("sidecar loads");
    let task = submit(
        &host.client(),
        &as_task(json!({"plugin": "hostile", "payload": {"mode": "loop"}, "max_attempts": 1})),
    )
    .await;
    let done = wait_terminal(&host.client(), task.id, LONG).await;
    assert_eq!(error_kind(&done), "timeout", "{done:?}");
    assert!(error_message(&done).contains("300 ms"), "{done:?}");
    // The task's own timeout wins over the plugin's.
    let task = submit(&host.client(), &as_task(json!({"plugin": "hostile", "payload": {"mode": "loop"}, "max_attempts": 1, "timeout_ms": 150}))).await;
    let done = wait_terminal(&host.client(), task.id, LONG).await;
    assert!(error_message(&done).contains("150 ms"), "{done:?}");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_sidecar_can_opt_into_instance_reuse() {
    let host = TestHost::start(1, true).await;
    let instance_of = |done: &TaskView| {
        result(done)["instance"]
            .as_str()
            .expect("instance")
            .to_owned()
    };
    let run = || {
        let host = &host;
        async move {
            let task = submit(
                &host.client(),
                &as_task(json!({"plugin": "hostile", "payload": {"mode": "instance"}})),
            )
            .await;
            let done = wait_terminal(&host.client(), task.id, LONG).await;
            assert_eq!(done.task.status, TaskStatus::Completed, "{done:?}");
            done
        }
    };
    // By default every task has an instance of its own.
    let (a, b) = (run().await, run().await);
    assert_ne!(instance_of(&a), instance_of(&b));

    let sidecar = host.data.path().join("plugins/hostile.limits.json");
    std::fs::write(&sidecar, br#"{"reuse_tasks": 2}"#).expect("write sidecar");
    host.service
        .registry()
        .sync_path(&sidecar)
        .await
        .expect("sidecar loads");
    let runs = [run().await, run().await, run().await];
    assert_eq!(instance_of(&runs[0]), instance_of(&runs[1]), "reused once");
    assert_eq!(result(&runs[1])["calls"], 2);
    assert_ne!(
        instance_of(&runs[1]),
        instance_of(&runs[2]),
        "two tasks each"
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_for_the_previous_contract_version_still_runs() {
    let host = TestHost::start(1, true).await;
    let client = reqwest::Client::new();
    let uploaded = client
        .put(host.at("/plugins/legacy"))
        .body(wasm_bytes(&fixture_wasm("contract-0-1")))
        .send()
        .await
        .expect("upload");
    assert_eq!(uploaded.status(), StatusCode::CREATED);
    let list = get_json(&client, &host.at("/plugins")).await;
    let contract_of = |name: &str| {
        list["plugins"]
            .as_array()
            .expect("plugins")
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["contract"].clone())
    };
    assert_eq!(contract_of("legacy"), Some(json!("0.1.0")), "{list}");
    assert_eq!(contract_of("hostile"), Some(json!("0.2.0")), "{list}");

    let task = submit(
        &host.client(),
        &as_task(json!({"plugin": "legacy", "payload": {"n": 1}})),
    )
    .await;
    let done = wait_terminal(&host.client(), task.id, LONG).await;
    assert_eq!(done.task.status, TaskStatus::Completed, "{done:?}");
    assert_eq!(
        *result(&done),
        json!({"contract": "0.1.0", "task": task.id, "payload": {"n": 1}})
    );
    let task = submit(
        &host.client(),
        &as_task(json!({"plugin": "legacy", "payload": "fail"})),
    )
    .await;
    let done = wait_terminal(&host.client(), task.id, LONG).await;
    assert_eq!(error_kind(&done), "invalid_input", "{done:?}");
    assert_eq!(error_message(&done), "asked to fail", "{done:?}");

    // Beside it, a plugin on the current contract uses what 0.2.0 added.
    let task = submit(&host.client(), &as_task(json!({"plugin": "hostile", "payload": {"mode": "remaining", "millis": 300}, "timeout_ms": 5000})))
    .await;
    let done = wait_terminal(&host.client(), task.id, LONG).await;
    assert_eq!(done.task.status, TaskStatus::Completed, "{done:?}");
    let before = result(&done)[0].as_u64().expect("before");
    let after = result(&done)[1].as_u64().expect("after");
    assert!(before <= 5000 && before > 300, "{done:?}");
    assert!(after + 300 <= before, "{done:?}");
    host.stop().await;
}

async fn pending_and_running_tasks_can_be_cancelled(backend: Backend) {
    let host = TestHost::start_on(backend, 1, true).await;
    let client = reqwest::Client::new();
    let spinning = submit(
        &host.client(),
        &as_task(json!({"plugin": "hostile", "payload": {"mode": "loop"}, "timeout_ms": 60000})),
    )
    .await;
    poll_json(
        &client,
        &host.at(&format!("/tasks/{}", spinning.id)),
        LONG,
        |t| t["status"] == "running",
    )
    .await;
    let waiting = submit(
        &host.client(),
        &as_task(json!({"plugin": "echo", "payload": 1})),
    )
    .await;

    // Restoring a backup over live tasks leaves them alone: no task runs twice.
    let backup = client
        .get(host.at("/admin/backup"))
        .send()
        .await
        .expect("backup")
        .bytes()
        .await
        .expect("bytes");
    let summary: Value = client
        .post(host.at("/admin/restore"))
        .body(backup)
        .send()
        .await
        .expect("restore")
        .json()
        .await
        .expect("json");
    assert_eq!(summary, json!({"restored": 0, "queued": 0, "skipped": 2}));

    let response = client
        .post(host.at(&format!("/tasks/{}/cancel", waiting.id)))
        .send()
        .await
        .expect("cancel");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.expect("json")["status"],
        "cancelled"
    );
    let again = client
        .post(host.at(&format!("/tasks/{}/cancel", waiting.id)))
        .send()
        .await
        .expect("cancel");
    assert_eq!(again.status(), StatusCode::CONFLICT);

    let response = client
        .post(host.at(&format!("/tasks/{}/cancel", spinning.id)))
        .send()
        .await
        .expect("cancel");
    assert_eq!(response.status(), StatusCode::OK);
    let done = wait_terminal(&host.client(), spinning.id, LONG).await;
    assert_eq!(
        done.task.status,
        TaskStatus::Cancelled,
        "the running instance was interrupted: {done:?}"
    );
    let ended: Vec<_> = done.task.history.iter().map(|a| a.outcome).collect();
    assert_eq!(ended, [AttemptOutcome::Cancelled], "{done:?}");
    // A pending task cancelled before it ran has no attempt, and a
    // cancelled task can be retried.
    let retried = host
        .client()
        .retry(&waiting.id.to_string())
        .await
        .expect("retry the cancelled task");
    assert!(retried.task.history.is_empty(), "{retried:?}");

    // The worker is free again.
    let next = submit(
        &host.client(),
        &as_task(json!({"plugin": "echo", "payload": 2})),
    )
    .await;
    assert_eq!(
        wait_terminal(&host.client(), next.id, LONG)
            .await
            .task
            .status,
        TaskStatus::Completed
    );
    host.stop().await;
}

async fn bad_input_gets_a_clear_4xx_and_writes_nothing(backend: Backend) {
    let host = TestHost::start_on(backend, 1, false).await;
    let client = reqwest::Client::new();
    let post = |body: &'static str| {
        client
            .post(host.at("/tasks"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases: Vec<(reqwest::Response, StatusCode, &str)> = vec![
        (
            post("{not json").await.expect("send"),
            StatusCode::BAD_REQUEST,
            "not valid JSON",
        ),
        (
            post(r#"{"payload": 1}"#).await.expect("send"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing field `plugin`",
        ),
        (
            post(r#"{"plugin": "nope"}"#).await.expect("send"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "no plugin named",
        ),
        (
            post(r#"{"plugin": "echo", "priority": 0}"#)
                .await
                .expect("send"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "priority",
        ),
        (
            post(r#"{"plugin": "echo", "priority": 11}"#)
                .await
                .expect("send"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "priority",
        ),
        (
            post(r#"{"plugin": "../../etc/passwd"}"#)
                .await
                .expect("send"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "plugin name",
        ),
        (
            post(r#"{"plugin": "echo", "max_attempts": 0}"#)
                .await
                .expect("send"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "max_attempts",
        ),
        (
            client
                .post(host.at("/tasks"))
                .body(r#"{"plugin": "echo"}"#)
                .send()
                .await
                .expect("send"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type",
        ),
        (
            // Its own connection: the host answers 413 before reading the
            // whole body and closes the connection, which a pooled client
            // would otherwise try to reuse for the next case.
            reqwest::Client::new()
                .post(host.at("/tasks"))
                .json(&json!({"plugin": "echo", "payload": "x".repeat(2 * 1024 * 1024)}))
                .send()
                .await
                .expect("send"),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too large",
        ),
        (
            client
                .post(host.at("/tasks/batch"))
                .json(&json!({"tasks": [{"plugin": "echo"}, {"plugin": "echo", "priority": 42}]}))
                .send()
                .await
                .expect("send"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "task 1: priority",
        ),
        (
            client
                .get(host.at("/tasks/not-a-uuid"))
                .send()
                .await
                .expect("send"),
            StatusCode::BAD_REQUEST,
            "not a task id",
        ),
        (
            client
                .get(host.at("/tasks/..%2F..%2Fetc%2Fpasswd"))
                .send()
                .await
                .expect("send"),
            StatusCode::BAD_REQUEST,
            "not a task id",
        ),
        (
            client
                .get(host.at("/tasks/../../etc/passwd"))
                .send()
                .await
                .expect("send"),
            StatusCode::NOT_FOUND,
            "no such endpoint",
        ),
        (
            client
                .get(host.at("/tasks/3f2b8c1e-8d4a-4c7e-9f1a-2b3c4d5e6f70"))
                .send()
                .await
                .expect("send"),
            StatusCode::NOT_FOUND,
            "no task with id",
        ),
        (
            client
                .get(host.at("/tasks?limit=0"))
                .send()
                .await
                .expect("send"),
            StatusCode::BAD_REQUEST,
            "limit",
        ),
        (
            client
                .get(host.at("/tasks?status=weird"))
                .send()
                .await
                .expect("send"),
            StatusCode::BAD_REQUEST,
            "status",
        ),
        (
            client
                .get(host.at("/tasks?cursor=zzz"))
                .send()
                .await
                .expect("send"),
            StatusCode::BAD_REQUEST,
            "cursor",
        ),
        (
            client
                .get(host.at("/tasks?priority=0"))
                .send()
                .await
                .expect("send"),
            StatusCode::BAD_REQUEST,
            "priority",
        ),
        (
            client
                .get(host.at("/tasks?submitted_after=yesterday"))
                .send()
                .await
                .expect("send"),
            StatusCode::BAD_REQUEST,
            "RFC 3339",
        ),
        (
            client
                .get(host.at("/tasks?idempotency_key=%07"))
                .send()
                .await
                .expect("send"),
            StatusCode::BAD_REQUEST,
            "idempotency_key",
        ),
    ];
    for (response, status, needle) in cases {
        let url = response.url().to_string();
        assert_eq!(response.status(), status, "{url}");
        let body: Value = response.json().await.expect("error body is JSON");
        assert!(body["error"].is_string(), "{body}");
        let message = body["message"].as_str().expect("message");
        assert!(
            message.contains(needle),
            "{url}: {message:?} should mention {needle:?}"
        );
    }
    // Nothing was written for any of them.
    let stats: Value = client
        .get(host.at("/stats"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    for status in ["pending", "running", "completed", "failed", "cancelled"] {
        assert_eq!(stats["system"]["tasks"][status], 0, "{stats}");
    }
    if backend == Backend::Files {
        let tasks_dir = host.data.path().join("tasks");
        let shards = std::fs::read_dir(&tasks_dir)
            .expect("tasks dir")
            .filter_map(Result::ok);
        assert_eq!(
            shards
                .filter(|e| e.path().is_dir() && e.file_name().len() == 2)
                .count(),
            0,
            "no task files"
        );
        let segments = std::fs::read_dir(tasks_dir.join("journal"))
            .expect("journal dir")
            .filter_map(Result::ok);
        assert!(
            segments
                .into_iter()
                .all(|e| e.metadata().is_ok_and(|m| m.len() == 0)),
            "nothing in the journal"
        );
    }
    host.stop().await;
}

async fn idempotency_keys_and_batches(backend: Backend) {
    let host = TestHost::start_on(backend, 2, false).await;
    let client = reqwest::Client::new();
    let body = json!({"plugin": "echo", "payload": 7, "idempotency_key": "order-42"});
    let first = submit(&host.client(), &as_task(body.clone())).await;
    let second = client
        .post(host.at("/tasks"))
        .json(&body)
        .send()
        .await
        .expect("submit");
    assert_eq!(
        second.status(),
        StatusCode::OK,
        "a repeated key returns the existing task"
    );
    assert_eq!(
        id_of(&second.json().await.expect("json")),
        first.id.to_string()
    );

    // Racing submissions with one key create one task: exactly one 202, and
    // every other answer is 200 with that task.
    let racing: Vec<_> = (0..20)
        .map(|_| {
            let (client, url) = (client.clone(), host.at("/tasks"));
            tokio::spawn(async move {
                let response = client
                    .post(url)
                    .json(&json!({"plugin": "echo", "idempotency_key": "race"}))
                    .send()
                    .await
                    .expect("submit");
                (
                    response.status(),
                    id_of(&response.json::<Value>().await.expect("json")),
                )
            })
        })
        .collect();
    let mut answers = Vec::new();
    for handle in racing {
        answers.push(handle.await.expect("join"));
    }
    let created: Vec<&String> = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::ACCEPTED)
        .map(|(_, id)| id)
        .collect();
    assert_eq!(created.len(), 1, "one 202 for one key: {answers:?}");
    assert!(
        answers.iter().all(|(status, id)| id == created[0]
            && (*status == StatusCode::ACCEPTED || *status == StatusCode::OK)),
        "every other answer is 200 with the same task: {answers:?}"
    );

    let tasks: Vec<Value> = (0..25)
        .map(|i| json!({"plugin": "echo", "payload": i, "priority": 1 + i % 10}))
        .collect();
    let response = client
        .post(host.at("/tasks/batch"))
        .json(&json!({"tasks": tasks}))
        .send()
        .await
        .expect("batch");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let accepted: Value = response.json().await.expect("json");
    let accepted = accepted["tasks"].as_array().expect("tasks").clone();
    assert_eq!(accepted.len(), 25);
    for (i, task) in accepted.iter().enumerate() {
        assert_eq!(task["payload"], i);
        let id = id_of(task).parse().expect("an id");
        assert_eq!(result(&wait_terminal(&host.client(), id, LONG).await), i);
    }

    for id in [first.id.to_string(), created[0].clone()] {
        wait_terminal(&host.client(), id.parse().expect("an id"), LONG).await;
    }
    // Filters and cursor pagination: every completed echo task, each once,
    // in submission order, across pages of 7.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = host.at("/tasks?plugin=echo&status=completed&limit=7");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = client
            .get(url)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        let tasks = page["tasks"].as_array().expect("tasks");
        assert!(tasks.len() <= 7);
        seen.extend(tasks.iter().map(id_of));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let mut expected = vec![first.id.to_string(), created[0].clone()];
    expected.extend(accepted.iter().map(id_of));
    assert_eq!(seen, expected, "all 27 tasks, in submission order");
    // Every other filter reaches the store: no hash task, none of these
    // timed out, all were submitted before 2100.
    let list = |query: &'static str| {
        let client = client.clone();
        let url = host.at(query);
        async move {
            let page: Value = client
                .get(url)
                .send()
                .await
                .expect("list")
                .json()
                .await
                .expect("json");
            page["tasks"].as_array().expect("tasks").len()
        }
    };
    assert_eq!(
        list("/tasks?plugin=hash").await,
        0,
        "the plugin filter applies"
    );
    assert_eq!(list("/tasks?plugin=echo&error_kind=timeout").await, 0);
    assert_eq!(
        list("/tasks?plugin=echo&status=completed&submitted_before=2100-01-01T00:00:00Z&limit=200")
            .await,
        27
    );
    assert_eq!(
        list("/tasks?plugin=echo&submitted_after=2100-01-01T00:00:00Z").await,
        0
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_are_uploaded_listed_and_removed_over_http() {
    let host = TestHost::start(1, false).await;
    let client = reqwest::Client::new();
    let response = client
        .put(host.at("/plugins/uploaded"))
        .body(wasm_bytes(&plugin_wasm("echo")))
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), StatusCode::CREATED);
    let info: Value = response.json().await.expect("json");
    assert_eq!(
        info["digest"],
        taskflow_tests::file_digest(&plugin_wasm("echo"))
    );
    assert!(
        host.data.path().join("plugins/uploaded.wasm").exists(),
        "persisted into the plugin directory"
    );

    let task = submit(
        &host.client(),
        &as_task(json!({"plugin": "uploaded", "payload": "hi"})),
    )
    .await;
    assert_eq!(
        result(&wait_terminal(&host.client(), task.id, LONG).await),
        "hi"
    );

    let garbage = client
        .put(host.at("/plugins/uploaded"))
        .body("garbage")
        .send()
        .await
        .expect("upload");
    assert_eq!(garbage.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let message = garbage.json::<Value>().await.expect("json")["message"]
        .as_str()
        .expect("message")
        .to_owned();
    assert!(message.contains("not a WebAssembly file"), "{message}");
    let bad_name = client
        .put(host.at("/plugins/Bad.Name"))
        .body(wasm_bytes(&plugin_wasm("echo")))
        .send()
        .await
        .expect("upload");
    assert_eq!(bad_name.status(), StatusCode::BAD_REQUEST);

    let list: Value = client
        .get(host.at("/plugins"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let names: Vec<&str> = list["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["echo", "flaky", "hash", "uploaded", "wordcount"]);

    assert_eq!(
        client
            .delete(host.at("/plugins/uploaded"))
            .send()
            .await
            .expect("delete")
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        client
            .delete(host.at("/plugins/uploaded"))
            .send()
            .await
            .expect("delete")
            .status(),
        StatusCode::NOT_FOUND
    );
    let refused = client
        .post(host.at("/tasks"))
        .json(&json!({"plugin": "uploaded"}))
        .send()
        .await
        .expect("submit");
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_the_api_and_plugin_administration() {
    let host = TestHost::start_with(1, false, |config| {
        config.api_token = Some("api-token-0123456789".into());
        config.admin_token = Some("admin-token-0123456789".into());
    })
    .await;
    let client = reqwest::Client::new();
    let body = json!({"plugin": "echo"});
    let anonymous = client
        .post(host.at("/tasks"))
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert!(
        anonymous.json::<Value>().await.expect("json")["message"]
            .as_str()
            .expect("msg")
            .contains("Bearer")
    );
    let wrong = client
        .post(host.at("/tasks"))
        .bearer_auth("api-token-0123456780")
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let ok = client
        .post(host.at("/tasks"))
        .bearer_auth("api-token-0123456789")
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(ok.status(), StatusCode::ACCEPTED);

    for open in ["/health", "/ready", "/metrics", "/openapi.json"] {
        assert_eq!(
            client
                .get(host.at(open))
                .send()
                .await
                .expect("send")
                .status(),
            StatusCode::OK,
            "{open}"
        );
    }
    let wasm = wasm_bytes(&plugin_wasm("echo"));
    // A refused upload is answered before its body is read, and the host
    // then closes that connection: the admin's upload must not be written
    // into it (a pooled connection would, and break with EPIPE).
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let as_user = client
        .put(host.at("/plugins/p"))
        .bearer_auth("api-token-0123456789")
        .body(wasm.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(
        as_user.status(),
        StatusCode::UNAUTHORIZED,
        "uploads need the admin token"
    );
    let as_admin = client
        .put(host.at("/plugins/p"))
        .bearer_auth("admin-token-0123456789")
        .body(wasm)
        .send()
        .await
        .expect("send");
    assert_eq!(as_admin.status(), StatusCode::CREATED);
    host.stop().await;
}

async fn stats_and_metrics_describe_the_host(backend: Backend) {
    let host = TestHost::start_on(backend, 2, false).await;
    let client = reqwest::Client::new();
    let task = submit(
        &host.client(),
        &as_task(json!({"plugin": "echo", "payload": 1})),
    )
    .await;
    wait_terminal(&host.client(), task.id, LONG).await;

    let stats: Value = client
        .get(host.at("/stats"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(stats["system"]["tasks"]["completed"], 1);
    assert_eq!(stats["host"]["workers"], 2);
    assert_eq!(stats["system"]["queue"]["ready"]["1"], 0);
    assert_eq!(
        stats["host"]["plugins"].as_array().expect("plugins").len(),
        4
    );
    assert!(
        stats["host"]["plugins"][0]["digest"]
            .as_str()
            .is_some_and(|d| d.len() == 64)
    );

    let metrics = client
        .get(host.at("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    // Series of this host carry its name; the system's do not.
    let name = stats["host"]["name"].as_str().expect("host name");
    let samples = taskflow_tests::parse_metrics(&metrics);
    for (series, labels, value) in [
        (
            "taskflow_http_requests_total",
            vec![
                ("host", name),
                ("method", "POST"),
                ("route", "/tasks"),
                ("status", "202"),
            ],
            1.0,
        ),
        (
            "taskflow_task_attempts_total",
            vec![("host", name), ("plugin", "echo"), ("outcome", "completed")],
            1.0,
        ),
        (
            "taskflow_task_duration_seconds_count",
            vec![("host", name), ("plugin", "echo")],
            1.0,
        ),
        ("taskflow_tasks", vec![("status", "completed")], 1.0),
        ("taskflow_queue_depth", vec![("priority", "1")], 0.0),
        ("taskflow_plugins_loaded", vec![("host", name)], 4.0),
    ] {
        assert_eq!(
            taskflow_tests::sample_value(&samples, series, &labels),
            Some(value),
            "{series} {labels:?} in:\n{metrics}"
        );
    }
    let openapi: Value = client
        .get(host.at("/openapi.json"))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    for path in [
        "/tasks",
        "/tasks/batch",
        "/tasks/{id}",
        "/tasks/{id}/cancel",
        "/stats",
        "/plugins",
        "/plugins/{name}",
        "/health",
        "/ready",
        "/metrics",
    ] {
        assert!(openapi["paths"][path].is_object(), "openapi lacks {path}");
    }
    host.stop().await;
}

async fn backup_then_restore_into_an_empty_host_round_trips_every_task(backend: Backend) {
    let source = TestHost::start_on(backend, 2, false).await;
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..40 {
        let body = match i % 4 {
            0 => json!({"plugin": "echo", "payload": {"i": i}, "priority": 1 + i % 10}),
            1 => {
                json!({"plugin": "wordcount", "payload": {"text": "a b c"}, "idempotency_key": format!("k{i}")})
            }
            2 => {
                json!({"plugin": "hash", "payload": {"data": "x", "rounds": 0}, "max_attempts": 1})
            }
            _ => {
                json!({"plugin": "flaky", "payload": {"succeed_on_attempt": 2}, "timeout_ms": 5000})
            }
        };
        ids.push(submit(&source.client(), &as_task(body)).await.id);
    }
    for id in &ids {
        wait_terminal(&source.client(), *id, LONG).await;
    }
    let backup = client
        .get(source.at("/admin/backup"))
        .send()
        .await
        .expect("backup");
    assert_eq!(backup.status(), StatusCode::OK);
    let document = backup.bytes().await.expect("bytes");
    let original: Value = serde_json::from_slice(&document).expect("backup is JSON");
    assert_eq!(original["format"], "taskflow-backup");
    assert_eq!(original["tasks"].as_array().expect("tasks").len(), 40);
    source.stop().await;

    let target = TestHost::start_on(backend, 2, false).await;
    let response = client
        .post(target.at("/admin/restore"))
        .body(document.clone())
        .send()
        .await
        .expect("restore");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.expect("json"),
        json!({"restored": 40, "queued": 0, "skipped": 0})
    );
    for task in original["tasks"].as_array().expect("tasks") {
        let restored: Value = client
            .get(target.at(&format!("/tasks/{}", id_of(task))))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        assert_eq!(&restored, task, "task {} round-trips exactly", id_of(task));
    }
    let bad = client
        .post(target.at("/admin/restore"))
        .body("{\"format\": \"other\"}")
        .send()
        .await
        .expect("restore");
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // New submissions continue after the restored sequence numbers.
    let new = submit(&target.client(), &as_task(json!({"plugin": "echo"}))).await;
    let max_restored = original["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["sequence"].as_u64())
        .max();
    assert!(Some(new.sequence) > max_restored);
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_recovery_requeues_interrupted_tasks_but_not_past_their_last_attempt() {
    use taskflow_model::task::{NewTask, TaskStatus};
    let interrupted = |attempts: u32| {
        let mut task = NewTask {
            plugin: "echo".into(),
            payload: json!(attempts),
            ..NewTask::default()
        }
        .validate(u64::from(attempts))
        .expect("valid");
        task.status = TaskStatus::Running;
        task.attempts = attempts;
        task
    };
    let (retried, exhausted) = (interrupted(1), interrupted(3));
    let host = TestHost::start_with(1, false, |config| {
        // Task files as a killed host leaves them.
        for task in [&retried, &exhausted] {
            let dir = config.data_dir.join("tasks").join(task.id.shard());
            std::fs::create_dir_all(&dir).expect("shard dir");
            std::fs::write(
                dir.join(format!("{}.json", task.id)),
                serde_json::to_vec(task).expect("json"),
            )
            .expect("write");
        }
    })
    .await;
    let done = wait_terminal(&host.client(), retried.id, LONG).await;
    assert_eq!(done.task.status, TaskStatus::Completed, "{done:?}");
    assert_eq!(done.task.attempts, 2);
    let done = wait_terminal(&host.client(), exhausted.id, LONG).await;
    assert_eq!(done.task.status, TaskStatus::Failed, "{done:?}");
    assert_eq!(done.task.attempts, 3, "not run a fourth time");
    assert_eq!(error_kind(&done), "interrupted");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_past_the_grace_period_leaves_running_tasks_pending() {
    let host = TestHost::start_with(1, true, |config| config.shutdown_grace_secs = 1).await;
    let client = reqwest::Client::new();
    let task = submit(
        &host.client(),
        &as_task(json!({"plugin": "hostile", "payload": {"mode": "loop"}, "timeout_ms": 600000})),
    )
    .await;
    let id = task.id.to_string();
    poll_json(&client, &host.at(&format!("/tasks/{id}")), LONG, |t| {
        t["status"] == "running"
    })
    .await;
    let shard = id[..2].to_owned();
    let data = host.stop().await;
    let file = data
        .path()
        .join("tasks")
        .join(shard)
        .join(format!("{id}.json"));
    let stored: Value =
        serde_json::from_slice(&std::fs::read(&file).expect("task file")).expect("json");
    assert_eq!(stored["status"], "pending", "{stored}");
    assert_eq!(stored["last_error"]["kind"], "interrupted", "{stored}");
    assert_eq!(
        stored["attempts"], 0,
        "the attempt the shutdown interrupted does not count: {stored}"
    );
}

async fn a_restored_task_with_no_attempt_left_fails_instead_of_running_again(backend: Backend) {
    use taskflow_model::task::{NewTask, TaskStatus};
    let host = TestHost::start_on(backend, 1, false).await;
    let client = reqwest::Client::new();
    // Backed up while running its last attempt: it comes back pending, with no attempt left.
    let mut task = NewTask {
        plugin: "echo".into(),
        payload: json!(1),
        max_attempts: Some(1),
        ..NewTask::default()
    }
    .validate(1)
    .expect("valid");
    task.status = TaskStatus::Running;
    task.attempts = 1;
    let document = json!({"format": taskflow_server::backup::BACKUP_FORMAT, "version": taskflow_server::backup::BACKUP_VERSION, "tasks": [task]});
    let response = client
        .post(host.at("/admin/restore"))
        .json(&document)
        .send()
        .await
        .expect("restore");
    assert_eq!(response.status(), StatusCode::OK);
    let done = wait_terminal(&host.client(), task.id, LONG).await;
    assert_eq!(
        (
            done.task.status,
            done.task.attempts,
            error_kind(&done).as_str()
        ),
        (TaskStatus::Failed, 1, "interrupted"),
        "{done:?}"
    );
    // The host's own backup of it restores again.
    let backup = client
        .get(host.at("/admin/backup"))
        .send()
        .await
        .expect("backup")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(
        client
            .post(host.at("/admin/restore"))
            .body(backup)
            .send()
            .await
            .expect("restore")
            .status(),
        StatusCode::OK
    );
    host.stop().await;
}

async fn progress_is_visible_while_a_task_runs(backend: Backend) {
    let host = TestHost::start_on(backend, 1, false).await;
    let client = reqwest::Client::new();
    let task = submit(
        &host.client(),
        &as_task(json!({"plugin": "hash", "payload": {"data": "x", "rounds": 1_000_000}})),
    )
    .await;
    let url = host.at(&format!("/tasks/{}", task.id));
    let running = poll_json(&client, &url, LONG, |t| {
        t["status"] == "running" && t["progress"].as_u64().is_some_and(|p| p > 0)
    })
    .await;
    assert!(
        running["progress"].as_u64().is_some_and(|p| p < 100),
        "{running}"
    );
    let done = wait_terminal(&host.client(), task.id, LONG).await;
    assert_eq!(done.task.status, TaskStatus::Completed);
    assert!(
        done.progress.is_none(),
        "progress is shown only while running: {done:?}"
    );
    host.stop().await;
}

/// The messages of `attempt`'s log lines.
fn messages(attempt: &Value) -> Vec<String> {
    attempt["logs"]
        .as_array()
        .map(|lines| {
            lines
                .iter()
                .filter_map(|line| line["message"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A running attempt's log lines show as the plugin logs them, in the task
/// and in its logs; past the record's 200 lines, the newest ones show, after
/// a count of the earlier ones; a cancel keeps every line logged before it
/// was stopped.
async fn log_lines_show_while_a_task_runs_and_stay_when_it_is_cancelled(backend: Backend) {
    let host = TestHost::start_on(backend, 1, true).await;
    let client = reqwest::Client::new();
    let task = submit(
        &host.client(),
        &as_task(
            json!({"plugin": "hostile", "payload": {"mode": "chatty", "n": 3000, "millis": 20}}),
        ),
    )
    .await;
    let logs_url = host.at(&format!("/tasks/{}/logs", task.id));
    let running = poll_json(&client, &logs_url, LONG, |logs| {
        logs["status"] == "running" && messages(&logs["history"][0]).len() >= 3
    })
    .await;
    let attempt = &running["history"][0];
    assert_eq!(attempt["outcome"], "running", "{running}");
    assert_eq!(
        messages(attempt)[..3],
        ["line 1 of 3000", "line 2 of 3000", "line 3 of 3000"],
        "in order, as logged"
    );
    let view = get_json(&client, &host.at(&format!("/tasks/{}", task.id))).await;
    assert!(
        messages(&view["history"][0]).len() >= 3,
        "the task shows them too: {view}"
    );

    let later = poll_json(&client, &logs_url, LONG, |logs| {
        logs["status"] == "running" && logs["history"][0]["logs_skipped"].as_u64() > Some(0)
    })
    .await;
    let attempt = &later["history"][0];
    let skipped = attempt["logs_skipped"].as_u64().expect("logs_skipped") as usize;
    let newest = messages(attempt);
    assert_eq!(newest.len(), 200, "the record's bound: {later}");
    assert!(
        newest
            .iter()
            .enumerate()
            .all(|(i, m)| *m == format!("line {} of 3000", skipped + i + 1)),
        "the newest lines, after {skipped} earlier: {newest:?}"
    );

    host.client()
        .cancel(&task.id.to_string())
        .await
        .expect("cancel");
    let done = wait_terminal(&host.client(), task.id, LONG).await;
    assert_eq!(done.task.status, TaskStatus::Cancelled);
    assert_eq!(done.task.history[0].logs_skipped, 0, "a record holds none");
    let logs = get_json(&client, &logs_url).await;
    let cancelled = &logs["history"][0];
    assert_eq!(cancelled["outcome"], "cancelled", "{logs}");
    let kept = messages(cancelled);
    assert!(
        kept.len() >= skipped + 200 && kept.len() < 3000,
        "every line logged before the cancel stays: {} of them",
        kept.len()
    );
    assert!(
        kept.iter()
            .enumerate()
            .all(|(i, m)| *m == format!("line {} of 3000", i + 1)),
        "{kept:?}"
    );
    host.stop().await;
}

/// An attempt logging more than its record keeps: the record holds the
/// first 200 lines, the whole log is kept in the blob store (S3 where there
/// is S3, else the PostgreSQL table or the data directory's files), and
/// `GET /tasks/{id}/logs` gives it back whole.
async fn a_long_log_is_kept_whole_in_the_blob_store(backend: Backend) {
    let host = TestHost::start_on(backend, 1, true).await;
    let client = reqwest::Client::new();
    let task = submit(
        &host.client(),
        &as_task(json!({"plugin": "hostile", "payload": {"mode": "chatty", "n": 500}})),
    )
    .await;
    let done = wait_terminal(&host.client(), task.id, LONG).await;
    assert_eq!(done.task.status, TaskStatus::Completed);
    let record = &done.task.history[0];
    assert_eq!(record.logs.len(), 200, "the record keeps the first lines");
    assert_eq!(record.logs[199].message, "line 200 of 500");
    assert_eq!(record.logs_dropped, 300);
    let blob = record.logs_blob.as_ref().expect("the whole log is kept");
    assert!(
        blob.key
            .starts_with(&format!("logs/{}/{}/1-", task.id.shard(), task.id)),
        "the key names the task, the attempt and its claim: {}",
        blob.key
    );
    match (backend, &host.bucket) {
        (Backend::Sqs, Some(bucket)) => assert_eq!(
            taskflow_tests::aws::keys(bucket, "logs/").await,
            vec![blob.key.clone()],
            "in S3"
        ),
        (Backend::Files, _) => assert!(
            host.data.path().join("blobs").join(&blob.key).is_file(),
            "in the data directory"
        ),
        _ => {}
    }

    let logs = get_json(&client, &host.at(&format!("/tasks/{}/logs", task.id))).await;
    let attempt = &logs["history"][0];
    let lines = messages(attempt);
    assert_eq!(lines.len(), 500, "the whole log comes back");
    assert!(
        lines
            .iter()
            .enumerate()
            .all(|(i, m)| *m == format!("line {} of 500", i + 1))
    );
    assert!(attempt.get("logs_dropped").is_none(), "{attempt}");
    assert!(attempt.get("logs_blob").is_none(), "{attempt}");
    host.stop().await;
}

async fn a_retry_waits_for_its_backoff_recorded_as_retry_at(backend: Backend) {
    // Backoff of attempt n: base · 2^(n-1), jittered into its upper half.
    let base = chrono::Duration::milliseconds(1500);
    let host =
        TestHost::start_on_with(backend, 1, false, |config| config.retry_base_ms = 1500).await;
    let client = reqwest::Client::new();
    let task = submit(
        &host.client(),
        &as_task(
            json!({"plugin": "flaky", "payload": {"succeed_on_attempt": 2}, "max_attempts": 2}),
        ),
    )
    .await;
    let url = host.at(&format!("/tasks/{}", task.id));
    let waiting = poll_json(&client, &url, LONG, |t| {
        t["status"] == "pending" && t["attempts"] == 1
    })
    .await;
    assert_eq!(waiting["last_error"]["kind"], "retryable", "{waiting}");
    let time = |task: &Value, field: &str| {
        task[field]
            .as_str()
            .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
            .unwrap_or_else(|| panic!("{field}: {task}"))
    };
    let (first_start, retry_at) = (time(&waiting, "started_at"), time(&waiting, "retry_at"));
    assert!(
        retry_at - first_start >= base / 2,
        "retry_at {retry_at} is at least base/2 after the attempt began ({first_start})"
    );
    assert!(
        retry_at - chrono::Utc::now() <= base,
        "retry_at {retry_at} is at most base from now"
    );
    let done = wait_terminal(&host.client(), task.id, LONG).await;
    assert_eq!(
        (done.task.status, done.task.attempts),
        (TaskStatus::Completed, 2),
        "{done:?}"
    );
    assert!(
        done.task
            .started_at
            .is_some_and(|started| started >= retry_at),
        "the second attempt began at retry_at or later: {done:?}"
    );
    assert!(done.task.retry_at.is_none(), "{done:?}");
    host.stop().await;
}

async fn a_fatal_error_fails_at_once_whatever_attempts_are_left(backend: Backend) {
    let host = TestHost::start_on(backend, 1, true).await;
    let task = submit(
        &host.client(),
        &as_task(json!({"plugin": "hostile", "payload": {"mode": "fatal"}, "max_attempts": 5})),
    )
    .await;
    let done = wait_terminal(&host.client(), task.id, LONG).await;
    assert_eq!(
        (done.task.status, done.task.attempts),
        (TaskStatus::Failed, 1),
        "{done:?}"
    );
    assert_eq!(
        (error_kind(&done).as_str(), error_message(&done)),
        ("fatal", "deliberately fatal")
    );
    host.stop().await;
}

async fn batches_hold_at_most_1000_tasks_and_are_accepted_all_or_none(backend: Backend) {
    let host = TestHost::start_on(backend, 1, false).await;
    let client = reqwest::Client::new();
    let batch = |tasks: Vec<Value>| {
        client
            .post(host.at("/tasks/batch"))
            .json(&json!({"tasks": tasks}))
            .send()
    };
    let echo = |n: usize| {
        (0..n)
            .map(|i| json!({"plugin": "echo", "payload": i}))
            .collect::<Vec<Value>>()
    };

    let too_many = batch(echo(1001)).await.expect("send");
    assert_eq!(too_many.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        too_many.json::<Value>().await.expect("json")["message"]
            .as_str()
            .is_some_and(|m| m.contains("1 to 1000"))
    );
    let empty = batch(vec![]).await.expect("send");
    assert_eq!(empty.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // One bad task, the last of 999 good ones: none is accepted.
    let mut tasks = echo(999);
    tasks.push(json!({"plugin": "no-such-plugin"}));
    let refused = batch(tasks).await.expect("send");
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        refused.json::<Value>().await.expect("json")["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("task 999:"))
    );
    // A key used twice in one batch: none is accepted either.
    let twice = batch(vec![
        json!({"plugin": "echo", "idempotency_key": "k"}),
        json!({"plugin": "echo", "idempotency_key": "k"}),
    ])
    .await
    .expect("send");
    assert_eq!(twice.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let stats: Value = client
        .get(host.at("/stats"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    let total: u64 = stats["system"]["tasks"]
        .as_object()
        .expect("counts")
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(total, 0, "nothing of a refused batch was saved: {stats}");

    let full = batch(echo(1000)).await.expect("send");
    assert_eq!(full.status(), StatusCode::ACCEPTED);
    assert_eq!(
        full.json::<Value>().await.expect("json")["tasks"]
            .as_array()
            .map(Vec::len),
        Some(1000)
    );
    poll_json(&client, &host.at("/stats"), LONG, |s| {
        s["system"]["tasks"]["completed"] == 1000
    })
    .await;
    host.stop().await;
}

async fn restored_pending_tasks_run(backend: Backend) {
    let source = TestHost::start_on(backend, 1, true).await;
    let client = reqwest::Client::new();
    // The only worker is busy, so these wait in the queue when the backup is taken.
    let blocker = submit(
        &source.client(),
        &as_task(json!({"plugin": "hostile", "payload": {"mode": "loop"}, "timeout_ms": 60000})),
    )
    .await;
    poll_json(
        &client,
        &source.at(&format!("/tasks/{}", blocker.id)),
        LONG,
        |t| t["status"] == "running",
    )
    .await;
    let mut waiting = Vec::new();
    for i in 0..5 {
        waiting.push(submit(&source.client(), &as_task(json!({"plugin": "wordcount", "payload": {"text": "x ".repeat(i + 1)}, "priority": 1}))).await.id);
    }
    let backup = client
        .get(source.at("/admin/backup"))
        .send()
        .await
        .expect("backup")
        .bytes()
        .await
        .expect("bytes");
    source.stop().await;

    // Two workers: the blocker may be restored, and taken, first.
    let target = TestHost::start_on(backend, 2, true).await;
    let summary: Value = client
        .post(target.at("/admin/restore"))
        .body(backup)
        .send()
        .await
        .expect("restore")
        .json()
        .await
        .expect("json");
    // The blocker was running at the backup: it comes back pending, and runs again too.
    assert_eq!(summary, json!({"restored": 6, "queued": 6, "skipped": 0}));
    for (i, id) in waiting.iter().enumerate() {
        let done = wait_terminal(&target.client(), *id, LONG).await;
        assert_eq!(done.task.status, TaskStatus::Completed, "{done:?}");
        assert_eq!(result(&done)["words"], i + 1);
    }
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_keep_up_refuses_with_503_and_is_not_ready_until_it_catches_up() {
    let host = TestHost::start_with(1, false, |config| config.max_body_bytes = 16 << 20).await;
    let client = reqwest::Client::new();
    // No task file can be written: a file stands where each shard directory
    // would go. The journal takes the changes until its memory bound is hit.
    let tasks_dir = host.data.path().join("tasks");
    let blockers: Vec<std::path::PathBuf> = (0..=255u8)
        .map(|b| tasks_dir.join(format!("{b:02x}")))
        .collect();
    for path in &blockers {
        std::fs::write(path, b"").expect("block a shard directory");
    }
    let payload = "x".repeat(100_000);
    let mut accepted = 0;
    let refused = loop {
        assert!(accepted < 2_000, "the dirty set was never full");
        let tasks: Vec<Value> = (0..20)
            .map(|_| json!({"plugin": "echo", "payload": payload}))
            .collect();
        let response = client
            .post(host.at("/tasks/batch"))
            .json(&json!({"tasks": tasks}))
            .send()
            .await
            .expect("batch");
        match response.status() {
            StatusCode::ACCEPTED => accepted += 20,
            status => break (status, response.json::<Value>().await.expect("json")),
        }
    };
    assert_eq!(refused.0, StatusCode::SERVICE_UNAVAILABLE, "{refused:?}");
    let ready = client.get(host.at("/ready")).send().await.expect("ready");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);

    // Once files can be written again, checkpoints catch up and the host is ready.
    for path in &blockers {
        std::fs::remove_file(path).expect("unblock");
    }
    poll_json(&client, &host.at("/ready"), LONG, |r| r["status"] == "ok").await;
    submit(
        &host.client(),
        &as_task(json!({"plugin": "echo", "payload": "after"})),
    )
    .await;
    let done = poll_json(&client, &host.at("/stats"), LONG, |s| {
        s["system"]["tasks"]["completed"] == accepted + 1
    })
    .await;
    let total: u64 = done["system"]["tasks"]
        .as_object()
        .expect("counts")
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(
        total,
        accepted + 1,
        "every accepted task, and nothing of the refused batch: {done:?}"
    );
    host.stop().await;
}

/// A payload and a result above the blob threshold (64 KiB) come back
/// intact, whatever keeps them. Where that is S3 (the SQS combination),
/// the record holds their size and SHA-256, the bucket holds the bodies
/// under the task's keys, list pages carry neither body, and a backup
/// carries both (it stands on its own).
async fn large_payloads_and_results_come_back_intact(backend: Backend) {
    let host = TestHost::start_on_with(backend, 2, false, |config| {
        config.max_body_bytes = 8 * 1024 * 1024;
    })
    .await;
    let client = reqwest::Client::new();
    let words: Vec<String> = (0..40_000).map(|i| format!("w{i}")).collect();
    let payload = json!({"text": words.join(" "), "note": "ünïcødé"});
    let sent = serde_json::to_vec(&payload).expect("encode");
    assert!(sent.len() > 200 * 1024);
    // Asked of the wire: what the answers carry, and what they leave out.
    let response = client
        .post(host.at("/tasks"))
        .json(&json!({"plugin": "echo", "payload": payload}))
        .send()
        .await
        .expect("submit");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let accepted: Value = response.json().await.expect("json");
    assert_eq!(
        accepted["payload"], payload,
        "the answer shows the payload sent"
    );
    assert!(
        accepted.get("payload_blob").is_none(),
        "{}",
        accepted["payload_blob"]
    );
    let id = id_of(&accepted);

    let done = wait_terminal(&host.client(), id.parse().expect("an id"), LONG).await;
    assert_eq!(done.task.status, TaskStatus::Completed, "{done:?}");
    let done = get_json(&client, &host.at(&format!("/tasks/{id}"))).await;
    assert_eq!(done["payload"], payload);
    assert_eq!(
        done["result"],
        json!({"encoding": "json", "value": payload})
    );
    assert!(done.get("payload_blob").is_none() && done.get("result_blob").is_none());

    let page = get_json(&client, &host.at("/tasks?plugin=echo")).await;
    let listed = &page["tasks"][0];
    assert_eq!(id_of(listed), id);
    match &host.bucket {
        None => assert_eq!(listed["payload"], payload, "inline backends list bodies"),
        Some(bucket) => {
            let digest = taskflow_runtime::plugin::digest_of(&sent);
            assert_eq!(listed["payload"], Value::Null);
            assert_eq!(listed["payload_blob"]["size"], sent.len());
            assert_eq!(listed["payload_blob"]["sha256"], digest);
            assert_eq!(
                listed["result_blob"]["sha256"], digest,
                "echo returns its input"
            );
            assert!(listed.get("result").is_none());
            assert!(
                serde_json::to_vec(&page).expect("encode").len() < 4096,
                "the page stays small"
            );
            let shard = &id[..2];
            assert_eq!(
                taskflow_tests::aws::keys(bucket, &format!("payloads/{shard}/{id}")).await,
                vec![format!("payloads/{shard}/{id}")]
            );
            let results =
                taskflow_tests::aws::keys(bucket, &format!("results/{shard}/{id}/")).await;
            assert_eq!(results.len(), 1, "{results:?}");
            assert_eq!(listed["result_blob"]["key"], results[0]);
        }
    }

    let backup = get_json(&client, &host.at("/admin/backup")).await;
    let saved = backup["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|task| task["id"] == id.as_str())
        .expect("the task is in the backup");
    assert_eq!(saved["payload"], payload);
    assert_eq!(saved["result"]["value"], payload);
    host.stop().await;
}

/// Runs each behaviour test once per backend combination: the embedded
/// default (in-process queue, task files), PostgreSQL as store and queue,
/// and SQS (moto) as the queue with PostgreSQL as the store and S3 (moto)
/// for large bodies. The in-process hosts reach moto through
/// `AWS_ENDPOINT_URL` (tests/run.sh sets it).
macro_rules! on_every_backend {
    (everywhere: [$($test:ident),* $(,)?], not_on_sqs: [$($heavy:ident),* $(,)?]) => {
        mod on_files {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(taskflow_tests::Backend::Files).await
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $heavy() {
                    super::$heavy(taskflow_tests::Backend::Files).await
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(taskflow_tests::Backend::Postgres).await
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $heavy() {
                    super::$heavy(taskflow_tests::Backend::Postgres).await
                }
            )*
        }
        mod on_sqs {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(taskflow_tests::Backend::Sqs).await
                }
            )*
        }
    };
}

on_every_backend!(
    everywhere: [
        a_submitted_task_completes_with_its_result,
        higher_priorities_run_first_and_equal_ones_in_submission_order,
        retryable_failures_are_retried_until_attempts_run_out,
        pending_and_running_tasks_can_be_cancelled,
        idempotency_keys_and_batches,
        stats_and_metrics_describe_the_host,
        backup_then_restore_into_an_empty_host_round_trips_every_task,
        a_restored_task_with_no_attempt_left_fails_instead_of_running_again,
        progress_is_visible_while_a_task_runs,
        log_lines_show_while_a_task_runs_and_stay_when_it_is_cancelled,
        a_long_log_is_kept_whole_in_the_blob_store,
        a_retry_waits_for_its_backoff_recorded_as_retry_at,
        a_fatal_error_fails_at_once_whatever_attempts_are_left,
        restored_pending_tasks_run,
        bad_input_gets_a_clear_4xx_and_writes_nothing,
        large_payloads_and_results_come_back_intact,
    ],
    // 1,000 tasks in one band queue: moto's receive slows with the
    // messages a queue holds (about a millisecond each), and the batch
    // rules tested here are the store's, the same on every queue.
    not_on_sqs: [batches_hold_at_most_1000_tasks_and_are_accepted_all_or_none]
);
