//! Several `taskflow serve` processes sharing PostgreSQL (as store and
//! queue), or PostgreSQL, SQS and S3 (moto), behave as one system: every
//! task runs to completion exactly once, every host works, priority order
//! holds across hosts, a host that dies or stalls past its lease loses its
//! tasks to the others without being able to overwrite what they did, and
//! large bodies and plugins reach every host. Real processes, a real
//! PostgreSQL, moto.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use taskflow_model::task::TaskId;
use taskflow_tests::pg::{drop_schema, fresh_schema, schema_url};
use taskflow_tests::process::{HostProcess, runner_of};
use taskflow_tests::{
    api, as_task, fixture_wasm, get_json, install_plugins, list_all, metric_sum, poll_json, submit,
    submit_batch,
};

/// Hosts on one fresh schema, each with its own data directory.
struct Fleet {
    hosts: Vec<Option<HostProcess>>,
    schema: Option<String>,
    _data: Vec<tempfile::TempDir>,
}

/// Which shared queue a fleet uses.
#[derive(Debug, Clone)]
enum SharedQueue {
    /// The PostgreSQL tasks table.
    Postgres,
    /// SQS (moto), queues named with `prefix`, large bodies and plugin
    /// bytes in S3 (moto) `bucket`; `env` points the hosts at the emulator.
    Sqs {
        prefix: String,
        bucket: String,
        env: Vec<(String, String)>,
    },
}

impl SharedQueue {
    /// SQS with fresh queues (a task goes to the dead-letter queue after 5
    /// receives) and a fresh bucket.
    async fn sqs() -> Self {
        Self::sqs_at(&taskflow_tests::aws::endpoint()).await
    }

    /// Like [`sqs`](Self::sqs), in the emulator at `endpoint`.
    async fn sqs_at(endpoint: &str) -> Self {
        let prefix = taskflow_tests::aws::fresh_prefix();
        taskflow_tests::aws::create_queues_at(endpoint, &prefix, 3, 5).await;
        let bucket = taskflow_tests::aws::fresh_bucket_at(endpoint).await;
        let env = taskflow_tests::aws::host_env_at(endpoint);
        Self::Sqs {
            prefix,
            bucket,
            env,
        }
    }
}

impl Fleet {
    /// `count` hosts with `workers` workers each and leases of `lease_secs`,
    /// on the PostgreSQL store and queue.
    async fn start(count: usize, workers: usize, lease_secs: u64) -> Self {
        Self::start_on(SharedQueue::Postgres, count, workers, lease_secs).await
    }

    /// Like [`start`](Self::start), on `queue` (a fresh schema either way).
    async fn start_on(queue: SharedQueue, count: usize, workers: usize, lease_secs: u64) -> Self {
        let (schema, _) = fresh_schema().await;
        Self::start_at(
            &schema_url(&schema),
            Some(schema),
            &queue,
            count,
            workers,
            lease_secs,
        )
        .await
    }

    /// Like [`start_on`](Self::start_on), on the database at `url`; the
    /// fleet drops `schema`, if given, when it stops.
    async fn start_at(
        url: &str,
        schema: Option<String>,
        queue: &SharedQueue,
        count: usize,
        workers: usize,
        lease_secs: u64,
    ) -> Self {
        let mut hosts = Vec::new();
        let mut data = Vec::new();
        for _ in 0..count {
            let dir = tempfile::tempdir().expect("tempdir");
            prepare(dir.path());
            let (workers, lease) = (workers.to_string(), lease_secs.to_string());
            let mut extra = vec!["--workers", &workers, "--lease-secs", &lease];
            let mut env: &[(String, String)] = &[];
            let queue = match queue {
                SharedQueue::Postgres => "postgres",
                SharedQueue::Sqs {
                    prefix,
                    bucket,
                    env: emulator,
                } => {
                    env = emulator;
                    extra.extend(["--sqs-queue-prefix", prefix.as_str()]);
                    extra.extend(["--blobs", "s3", "--s3-bucket", bucket.as_str()]);
                    extra.extend(["--max-body-bytes", "8388608"]);
                    "sqs"
                }
            };
            hosts.push(Some(
                HostProcess::start_shared_with(dir.path(), url, queue, &extra, env).await,
            ));
            data.push(dir);
        }
        Self {
            hosts,
            schema,
            _data: data,
        }
    }

    fn host(&self, index: usize) -> &HostProcess {
        self.hosts[index].as_ref().expect("host is running")
    }

    fn url(&self, index: usize) -> &str {
        &self.host(index).url
    }

    /// The index of the host a running `task` names.
    /// The index of the host a running `task` names.
    async fn runner(&self, client: &reqwest::Client, task: &Value) -> usize {
        let hosts: Vec<Option<&HostProcess>> = self.hosts.iter().map(Option::as_ref).collect();
        runner_of(client, &hosts, task).await
    }

    async fn stop(mut self) {
        for host in self.hosts.iter_mut().filter_map(Option::take) {
            host.terminate();
        }
        if let Some(schema) = &self.schema {
            drop_schema(schema).await;
        }
    }
}

fn prepare(data: &Path) {
    let plugins = data.join("plugins");
    install_plugins(&plugins, &["echo", "hash"]);
    std::fs::copy(fixture_wasm("hostile"), plugins.join("hostile.wasm"))
        .expect("copy the hostile fixture");
}

/// `taskflow_task_attempts_total` of one host for `plugin` and `outcome`
/// (whatever the order of the labels).
async fn attempts(client: &reqwest::Client, url: &str, plugin: &str, outcome: &str) -> u64 {
    metric_sum(
        client,
        url,
        "taskflow_task_attempts_total",
        &[
            &format!("plugin=\"{plugin}\""),
            &format!("outcome=\"{outcome}\""),
        ],
    )
    .await
}

/// Whether the host at `url` lists `plugin` as loaded.
async fn loads(client: &reqwest::Client, url: &str, plugin: &str) -> bool {
    let plugins = get_json(client, &format!("{url}/plugins")).await;
    plugins["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .any(|p| p["name"] == plugin)
}

/// Waits until the host at `url` lists `plugin` as loaded, at most `limit`.
async fn wait_until_loaded(client: &reqwest::Client, url: &str, plugin: &str, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    while !loads(client, url, plugin).await {
        assert!(
            std::time::Instant::now() < deadline,
            "the host at {url} has not loaded {plugin} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn completed(client: &reqwest::Client, url: &str) -> u64 {
    get_json(client, &format!("{url}/stats")).await["system"]["tasks"]["completed"]
        .as_u64()
        .unwrap_or(0)
}

async fn wait_for_completed(client: &reqwest::Client, url: &str, count: u64, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    while completed(client, url).await < count {
        assert!(
            std::time::Instant::now() < deadline,
            "fewer than {count} tasks completed within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_on_the_postgres_queue_run_3000_tasks_exactly_once() {
    three_hosts_run_3000_tasks_exactly_once(SharedQueue::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_on_sqs_run_3000_tasks_exactly_once() {
    // An emulator of its own: moto slows down with the queues and objects
    // every earlier test leaves in the shared one (once past 300 s in CI).
    let emulator = taskflow_tests::aws::OwnEmulator::start().await;
    three_hosts_run_3000_tasks_exactly_once(SharedQueue::sqs_at(&emulator.endpoint).await).await;
}

/// 3,000 tasks submitted through three hosts: each completes once, every
/// host does its share.
async fn three_hosts_run_3000_tasks_exactly_once(queue: SharedQueue) {
    let fleet = Fleet::start_on(queue, 3, 4, 5).await;
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for batch in 0..30 {
        let tasks = (0..100).map(|i| json!({"plugin": "echo", "payload": {"n": batch * 100 + i}, "priority": 1 + i % 10})).collect();
        let accepted = submit_batch(&client, fleet.url(batch % 3), tasks).await;
        ids.extend(
            accepted
                .iter()
                .map(|t| t["id"].as_str().expect("id").to_string()),
        );
    }
    wait_for_completed(&client, fleet.url(0), 3000, Duration::from_secs(300)).await;

    let tasks = list_all(&client, fleet.url(1), "").await;
    assert_eq!(tasks.len(), 3000);
    for task in &tasks {
        assert_eq!(task["status"], "completed", "{task}");
        assert_eq!(task["attempts"], 1, "run once: {task}");
        assert_eq!(task["result"]["value"], task["payload"], "{task}");
    }
    let listed: std::collections::HashSet<&str> =
        tasks.iter().filter_map(|t| t["id"].as_str()).collect();
    assert!(
        ids.iter().all(|id| listed.contains(id.as_str())),
        "every accepted task is stored"
    );

    // Each host counts the attempts it finished: together exactly one per
    // task, none lost to a lease, and every host did its share.
    let mut total = 0;
    for index in 0..3 {
        let done = attempts(&client, fleet.url(index), "echo", "completed").await;
        assert!(done > 0, "host {index} completed no task");
        let lost = attempts(&client, fleet.url(index), "echo", "lease_lost").await;
        assert_eq!(lost, 0, "host {index} lost leases");
        total += done;
    }
    assert_eq!(total, 3000, "completions counted by the hosts");
    fleet.stop().await;
}

/// Tasks queued before any worker is free start in priority order, then
/// submission order, whichever host claims them (both checked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_order_holds_across_hosts_on_the_postgres_queue() {
    let fleet = Fleet::start(3, 1, 30).await;
    let client = reqwest::Client::new();
    // Occupy the three workers, so that the batch below is all queued first.
    let blockers: Vec<TaskId> = {
        let mut ids = Vec::new();
        for index in 0..3 {
            ids.push(submit(&api(fleet.url(index)), &as_task(json!({"plugin": "hostile", "payload": {"mode": "sleep", "seconds": 2}, "priority": 1}))).await.id);
        }
        ids
    };
    for id in &blockers {
        poll_json(
            &client,
            &format!("{}/tasks/{id}", fleet.url(0)),
            Duration::from_secs(30),
            |t| t["status"] == "running",
        )
        .await;
    }
    // Each works 100 ms, longer than the slack below: an order reversed
    // within a priority shows.
    let tasks: Vec<Value> = (0..90)
        .map(|i| json!({"plugin": "hostile", "payload": {"mode": "execution", "millis": 100, "n": i}, "priority": 10 - i % 10}))
        .collect();
    submit_batch(&client, fleet.url(1), tasks).await;
    wait_for_completed(&client, fleet.url(2), 93, Duration::from_secs(120)).await;

    let mut runs: Vec<(i64, u64, chrono::DateTime<chrono::Utc>)> =
        list_all(&client, fleet.url(0), "plugin=hostile")
            .await
            .iter()
            .filter(|t| t["payload"]["mode"] == "execution")
            .map(|t| {
                let started = t["started_at"]
                    .as_str()
                    .expect("started_at")
                    .parse()
                    .expect("timestamp");
                (
                    t["priority"].as_i64().expect("priority"),
                    t["sequence"].as_u64().expect("sequence"),
                    started,
                )
            })
            .collect();
    assert_eq!(runs.len(), 90);
    runs.sort_by_key(|(priority, sequence, _)| (*priority, *sequence));
    // Three hosts claim at once, so neighbours may start in either order
    // within a moment; a task never starts well after one ranked below it,
    // by priority, then by submission within a priority.
    let slack = chrono::Duration::milliseconds(50);
    for (rank, earlier) in runs.iter().enumerate() {
        for later in &runs[rank + 1..] {
            assert!(
                earlier.2 <= later.2 + slack,
                "priority {} #{} started at {} after priority {} #{} at {}",
                earlier.0,
                earlier.1,
                earlier.2,
                later.0,
                later.1,
                later.2
            );
        }
    }
    fleet.stop().await;
}

/// A host killed while it runs tasks: once their leases expire the other
/// hosts take them back and complete them; none is lost, and none but those
/// runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_host_leaves_its_tasks_to_the_others_on_postgres() {
    a_killed_host_leaves_its_tasks_to_the_others(SharedQueue::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_host_leaves_its_tasks_to_the_others_on_sqs() {
    a_killed_host_leaves_its_tasks_to_the_others(SharedQueue::sqs().await).await;
}

async fn a_killed_host_leaves_its_tasks_to_the_others(queue: SharedQueue) {
    let mut fleet = Fleet::start_on(queue, 3, 2, 2).await;
    let client = reqwest::Client::new();
    let victim = fleet.host(0).stats(&client).await["host"]["name"]
        .as_str()
        .expect("host name")
        .to_string();
    let tasks: Vec<Value> = (0..30)
        .map(|_| json!({"plugin": "hostile", "payload": {"mode": "sleep", "seconds": 1}}))
        .collect();
    submit_batch(&client, fleet.url(0), tasks).await;
    poll_json(
        &client,
        &format!("{}/stats", fleet.url(0)),
        Duration::from_secs(30),
        |s| s["host"]["running"].as_u64().unwrap_or(0) >= 1,
    )
    .await;

    // Frozen first, so that what it runs can be read before it dies.
    fleet.host(0).signal("STOP");
    let at_kill = list_all(&client, fleet.url(1), "status=running").await;
    let orphans: std::collections::HashSet<String> = at_kill
        .iter()
        .filter(|t| t["host"] == victim.as_str())
        .map(|t| t["id"].as_str().expect("id").to_string())
        .collect();
    assert!(!orphans.is_empty(), "the host ran tasks when it died");
    fleet.hosts[0].take().expect("host 0").kill();

    wait_for_completed(&client, fleet.url(1), 30, Duration::from_secs(120)).await;
    let tasks = list_all(&client, fleet.url(2), "").await;
    assert_eq!(tasks.len(), 30);
    for task in &tasks {
        assert_eq!(task["status"], "completed", "{task}");
        let orphan = orphans.contains(task["id"].as_str().expect("id"));
        assert_eq!(
            task["attempts"],
            if orphan { 2 } else { 1 },
            "only the dead host's tasks ran again: {task}"
        );
        if orphan {
            assert_ne!(task["host"], victim.as_str(), "{task}");
        }
    }
    for index in 1..3 {
        // Positive control: the survivors finished attempts, counted.
        let finished = attempts(&client, fleet.url(index), "hostile", "completed").await;
        assert!(finished > 0, "host {index} counted no attempt");
        let lost = attempts(&client, fleet.url(index), "hostile", "lease_lost").await;
        assert_eq!(lost, 0, "host {index} lost leases");
    }
    fleet.stop().await;
}

/// A host paused past its lease: another host runs its task; resumed, the
/// paused host finishes its stale run but cannot overwrite the outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_paused_past_its_lease_cannot_overwrite_the_others_on_postgres() {
    a_host_paused_past_its_lease_cannot_overwrite_the_others(SharedQueue::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_paused_past_its_lease_cannot_overwrite_the_others_on_sqs() {
    a_host_paused_past_its_lease_cannot_overwrite_the_others(SharedQueue::sqs().await).await;
}

async fn a_host_paused_past_its_lease_cannot_overwrite_the_others(queue: SharedQueue) {
    let fleet = Fleet::start_on(queue, 2, 1, 1).await;
    let client = reqwest::Client::new();
    // Host 1 is busy for a while, so host 0 takes the task below.
    let blocker = submit(
        &api(fleet.url(1)),
        &as_task(
            json!({"plugin": "hostile", "payload": {"mode": "sleep", "seconds": 3}, "priority": 1}),
        ),
    )
    .await
    .id;
    poll_json(
        &client,
        &format!("{}/tasks/{blocker}", fleet.url(1)),
        Duration::from_secs(30),
        |t| t["status"] == "running",
    )
    .await;
    let blocker_host = if fleet.host(0).stats(&client).await["host"]["running"] == 1 {
        0
    } else {
        1
    };
    let other = 1 - blocker_host;
    let id = submit(
        &api(fleet.url(other)),
        &as_task(
            json!({"plugin": "hostile", "payload": {"mode": "sleep", "seconds": 2}, "priority": 2}),
        ),
    )
    .await
    .id;
    poll_json(
        &client,
        &format!("{}/tasks/{id}", fleet.url(other)),
        Duration::from_secs(30),
        |t| t["status"] == "running",
    )
    .await;
    assert_eq!(
        fleet.host(other).stats(&client).await["host"]["running"],
        1,
        "the free host runs the task"
    );

    fleet.host(other).signal("STOP");
    // Its lease (1 s) runs out; the other host, free after its blocker,
    // takes the task back and runs it to completion.
    let done = poll_json(
        &client,
        &format!("{}/tasks/{id}", fleet.url(blocker_host)),
        Duration::from_secs(60),
        |t| t["status"] == "completed",
    )
    .await;
    assert_eq!(done["attempts"], 2);
    fleet.host(other).signal("CONT");
    // The resumed host's run ends within its 2 s; its outcome is refused.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if attempts(&client, fleet.url(other), "hostile", "lease_lost").await == 1 {
            let completed = attempts(&client, fleet.url(other), "hostile", "completed").await;
            assert_eq!(completed, 0, "the paused host completed its task");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the paused host never noticed its lost lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = get_json(&client, &format!("{}/tasks/{id}", fleet.url(other))).await;
    assert_eq!(after, done, "what the other host recorded stands");
    fleet.stop().await;
}

/// Progress and log lines published by the host running a task are
/// readable from any host, and a cancel sent to any host stops the run
/// where it runs, keeping the lines it logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_progress_and_log_lines_reach_the_host_running_the_task() {
    let fleet = Fleet::start(2, 1, 3).await;
    let client = reqwest::Client::new();
    let id = submit(
        &api(fleet.url(0)),
        &as_task(
            json!({"plugin": "hostile", "payload": {"mode": "chatty", "n": 600, "millis": 100}}),
        ),
    )
    .await
    .id;
    let running = poll_json(
        &client,
        &format!("{}/tasks/{id}", fleet.url(0)),
        Duration::from_secs(30),
        |t| t["status"] == "running",
    )
    .await;
    let runner = fleet.runner(&client, &running).await;
    let other = 1 - runner;

    // Progress, read where the task does not run.
    let seen = poll_json(
        &client,
        &format!("{}/tasks/{id}", fleet.url(other)),
        Duration::from_secs(30),
        |t| t["progress"].as_u64().is_some_and(|p| p > 0),
    )
    .await;
    assert_eq!(seen["status"], "running");
    // The lines logged so far, read where the task does not run.
    let lines = |logs: &Value| logs["history"][0]["logs"].as_array().map_or(0, Vec::len);
    let logs_url = format!("{}/tasks/{id}/logs", fleet.url(other));
    let seen = poll_json(&client, &logs_url, Duration::from_secs(30), |logs| {
        lines(logs) >= 2
    })
    .await;
    assert_eq!(seen["history"][0]["outcome"], "running");
    assert_eq!(seen["history"][0]["logs"][0]["message"], "line 1 of 600");

    // A cancel sent to the other host interrupts the run on its host.
    let response = client
        .post(format!("{}/tasks/{id}/cancel", fleet.url(other)))
        .send()
        .await
        .expect("cancel");
    assert!(response.status().is_success(), "{}", response.status());
    let cancelled = poll_json(
        &client,
        &format!("{}/tasks/{id}", fleet.url(other)),
        Duration::from_secs(15),
        |t| t["status"] == "cancelled",
    )
    .await;
    assert_eq!(cancelled["attempts"], 1);
    let kept = lines(&get_json(&client, &logs_url).await);
    assert!(
        (2..600).contains(&kept),
        "the cancelled attempt keeps what it logged: {kept} lines"
    );
    assert_eq!(
        attempts(&client, fleet.url(runner), "hostile", "cancelled").await,
        1,
        "the running host stopped it"
    );
    assert_eq!(
        fleet.host(runner).stats(&client).await["host"]["running"],
        0
    );
    fleet.stop().await;
}

/// A cancel answered while a task runs on another host, whose attempt then
/// fails with a retryable error before that host's heartbeat brings it the
/// cancel: the task ends `cancelled` after its one attempt, never runs
/// again. The cancel is sent just after a heartbeat (seen as a new progress
/// value on the other host) and less than a heartbeat before the attempt
/// fails, so the failure is what reaches the store first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_that_meets_a_retryable_failure_ends_cancelled_on_postgres() {
    a_cancel_that_meets_a_retryable_failure_ends_cancelled(SharedQueue::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_that_meets_a_retryable_failure_ends_cancelled_on_sqs() {
    a_cancel_that_meets_a_retryable_failure_ends_cancelled(SharedQueue::sqs().await).await;
}

async fn a_cancel_that_meets_a_retryable_failure_ends_cancelled(queue: SharedQueue) {
    // Leases of 30 s: a heartbeat every 2 s.
    let fleet = Fleet::start_on(queue, 2, 1, 30).await;
    let client = reqwest::Client::new();
    let id = submit(&api(fleet.url(0)), &as_task(json!({"plugin": "hostile", "payload": {"mode": "slow-then-retryable", "seconds": 5}, "max_attempts": 3})))
    .await
    .id;
    let running = poll_json(
        &client,
        &format!("{}/tasks/{id}", fleet.url(0)),
        Duration::from_secs(30),
        |t| t["status"] == "running",
    )
    .await;
    let other = 1 - fleet.runner(&client, &running).await;
    // Progress as the other host reads it changes at the runner's
    // heartbeats. The attempt fails 5 s after it started; a heartbeat that
    // publishes 60 % or more (3 s in) is the last before the failure.
    let url = format!("{}/tasks/{id}", fleet.url(other));
    let mut last = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no heartbeat published the run's progress within 60 s"
        );
        let task = get_json(&client, &url).await;
        let progress = task["progress"].as_u64();
        if task["status"] != "running" {
            break;
        }
        if progress.is_some_and(|p| p >= 60) && last.is_some() && progress != last {
            break;
        }
        last = progress;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = client
        .post(format!("{url}/cancel"))
        .send()
        .await
        .expect("cancel");
    assert!(response.status().is_success(), "{}", response.status());
    let ended = poll_json(&client, &url, Duration::from_secs(60), |t| {
        ["completed", "failed", "cancelled"].contains(&t["status"].as_str().unwrap_or(""))
    })
    .await;
    assert_eq!(
        (ended["status"].as_str(), ended["attempts"].as_u64()),
        (Some("cancelled"), Some(1)),
        "a cancel answered is never followed by another attempt: {ended}"
    );
    // Nothing runs it later either.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = get_json(&client, &url).await;
    assert_eq!(
        (later["status"].as_str(), later["attempts"].as_u64()),
        (Some("cancelled"), Some(1))
    );
    fleet.stop().await;
}

/// A plugin uploaded through one host runs on every host within seconds,
/// and a task submitted right after the upload, to any host, completes;
/// removed through another host, it is gone from all of them. Its bytes
/// are in PostgreSQL, or in S3 where there is S3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_uploaded_through_one_host_reaches_every_host_on_postgres() {
    a_plugin_uploaded_through_one_host_reaches_every_host(SharedQueue::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_uploaded_through_one_host_reaches_every_host_on_sqs_and_s3() {
    a_plugin_uploaded_through_one_host_reaches_every_host(SharedQueue::sqs().await).await;
}

async fn a_plugin_uploaded_through_one_host_reaches_every_host(queue: SharedQueue) {
    let bucket = match &queue {
        SharedQueue::Sqs { bucket, .. } => Some(bucket.clone()),
        SharedQueue::Postgres => None,
    };
    let fleet = Fleet::start_on(queue, 3, 2, 5).await;
    let client = reqwest::Client::new();
    let wasm = taskflow_tests::wasm_bytes(&taskflow_tests::plugin_wasm("wordcount"));
    let response = client
        .put(format!("{}/plugins/wordcount", fleet.url(0)))
        .body(wasm.clone())
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    let uploaded = std::time::Instant::now();
    if let Some(bucket) = &bucket {
        let key = format!(
            "plugins/{}.wasm",
            taskflow_runtime::plugin::digest_of(&wasm)
        );
        assert_eq!(
            taskflow_tests::aws::keys(bucket, "plugins/").await,
            vec![key],
            "the plugin's bytes are in S3"
        );
    }
    // Right away, to every host, loaded there yet or not.
    let mut ids = Vec::new();
    for index in 0..3 {
        let text = format!("host {index} says hello hello");
        ids.push(
            submit(
                &api(fleet.url(index)),
                &as_task(
                    json!({"plugin": "wordcount", "payload": {"text": text}, "max_attempts": 1}),
                ),
            )
            .await
            .id,
        );
    }
    for index in 0..3 {
        let deadline = uploaded + Duration::from_secs(5);
        loop {
            if loads(&client, fleet.url(index), "wordcount").await {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "host {index} has not loaded the plugin 5 s after the upload"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for id in &ids {
        let done = poll_json(
            &client,
            &format!("{}/tasks/{id}", fleet.url(1)),
            Duration::from_secs(30),
            |t| matches!(t["status"].as_str(), Some("completed" | "failed")),
        )
        .await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["result"]["value"]["words"], 5, "{done}");
        assert_eq!(
            done["attempts"], 1,
            "waiting for the plugin costs no attempt: {done}"
        );
    }

    let response = client
        .delete(format!("{}/plugins/wordcount", fleet.url(1)))
        .send()
        .await
        .expect("remove");
    assert_eq!(response.status(), reqwest::StatusCode::NO_CONTENT);
    for index in 0..3 {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let response = client
                .post(format!("{}/tasks", fleet.url(index)))
                .json(&json!({"plugin": "wordcount", "payload": {"text": "gone"}}))
                .send()
                .await
                .expect("submit");
            let listed = loads(&client, fleet.url(index), "wordcount").await;
            if response.status() == reqwest::StatusCode::UNPROCESSABLE_ENTITY && !listed {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "host {index} still runs the removed plugin"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The changes were heard (LISTEN/NOTIFY), not only polled for: the
    // two-second poll alone would also meet the deadlines above.
    for index in 0..3 {
        let heard = metric_sum(
            &client,
            fleet.url(index),
            "taskflow_catalog_reads_total",
            &["cause=\"notified\""],
        )
        .await;
        assert!(
            heard >= 2,
            "host {index} heard {heard} catalog notifications"
        );
    }
    fleet.stop().await;
}

/// A rolling deploy on SQS with interpreter plugins: the fleet's `greeter`
/// (Python) and `render` (JavaScript) are uploaded through host A; A stops;
/// a fresh host B (an empty data directory: it compiles both) starts, and
/// 20 `greeter` tasks arrive at once. B hands each back while it compiles,
/// many times; with `maxReceiveCount` just above `max_attempts` (4 and 3)
/// every task still completes on its first attempt, since only deliveries
/// no host answered for count toward the dead-letter queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_host_compiling_the_fleets_interpreter_plugins_runs_every_task_on_sqs() {
    let endpoint = taskflow_tests::aws::endpoint();
    let prefix = taskflow_tests::aws::fresh_prefix();
    taskflow_tests::aws::create_queues_at(&endpoint, &prefix, 3, 4).await;
    let queue = SharedQueue::Sqs {
        prefix,
        bucket: taskflow_tests::aws::fresh_bucket_at(&endpoint).await,
        env: taskflow_tests::aws::host_env_at(&endpoint),
    };
    let (schema, _) = fresh_schema().await;
    let url = schema_url(&schema);
    let client = reqwest::Client::new();

    let first = Fleet::start_at(&url, None, &queue, 1, 2, 5).await;
    for plugin in ["greeter", "render"] {
        let response = client
            .put(format!("{}/plugins/{plugin}", first.url(0)))
            .body(taskflow_tests::wasm_bytes(&taskflow_tests::plugin_wasm(
                plugin,
            )))
            .send()
            .await
            .expect("upload");
        assert_eq!(response.status(), reqwest::StatusCode::CREATED, "{plugin}");
    }
    first.stop().await;

    let second = Fleet::start_at(&url, Some(schema), &queue, 1, 2, 5).await;
    let started = std::time::Instant::now();
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(
            submit(&api(second.url(0)), &as_task(json!({"plugin": "greeter", "payload": {"name": format!("user {n}")}, "max_attempts": 3})))
            .await
            .id,
        );
    }
    for (n, id) in ids.iter().enumerate() {
        let done = poll_json(
            &client,
            &format!("{}/tasks/{id}", second.url(0)),
            Duration::from_secs(240),
            |t| {
                matches!(
                    t["status"].as_str(),
                    Some("completed" | "failed" | "cancelled")
                )
            },
        )
        .await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(
            done["result"]["value"]["greeting"],
            format!("Hello, user {n}!"),
            "{done}"
        );
        assert_eq!(
            done["attempts"], 1,
            "waiting for a compile costs no attempt: {done}"
        );
    }
    eprintln!(
        "20 greeter tasks completed {:?} after a fresh host started",
        started.elapsed()
    );
    wait_until_loaded(&client, second.url(0), "render", Duration::from_secs(120)).await;
    second.stop().await;
}

/// The fleet's copy of a plugin altered in the blob store (here another
/// valid plugin's bytes under `wordcount`'s digest) is not loaded by a host
/// that fetches it; the plugin published after it is (so the altered one's
/// change was reached and refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_loads_no_plugin_whose_bytes_do_not_match_the_catalog() {
    let (schema, _) = fresh_schema().await;
    let url = schema_url(&schema);
    let client = reqwest::Client::new();
    let first = Fleet::start_at(&url, None, &SharedQueue::Postgres, 1, 1, 5).await;
    let wordcount = taskflow_tests::wasm_bytes(&taskflow_tests::plugin_wasm("wordcount"));
    for (plugin, bytes) in [
        ("wordcount", wordcount.clone()),
        (
            "flaky",
            taskflow_tests::wasm_bytes(&taskflow_tests::plugin_wasm("flaky")),
        ),
    ] {
        let response = client
            .put(format!("{}/plugins/{plugin}", first.url(0)))
            .body(bytes)
            .send()
            .await
            .expect("upload");
        assert_eq!(response.status(), reqwest::StatusCode::CREATED, "{plugin}");
    }
    first.stop().await;
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    let altered = sqlx::query("UPDATE blobs SET bytes = $1 WHERE key = $2")
        .bind(taskflow_tests::wasm_bytes(&taskflow_tests::plugin_wasm(
            "echo",
        )))
        .bind(format!(
            "plugins/{}.wasm",
            taskflow_runtime::plugin::digest_of(&wordcount)
        ))
        .execute(&pool)
        .await
        .expect("alter the stored bytes");
    assert_eq!(altered.rows_affected(), 1);
    pool.close().await;

    let second = Fleet::start_at(&url, Some(schema), &SharedQueue::Postgres, 1, 1, 5).await;
    wait_until_loaded(&client, second.url(0), "flaky", Duration::from_secs(60)).await;
    assert!(
        !loads(&client, second.url(0), "wordcount").await,
        "a plugin whose bytes do not match the catalog's digest was loaded"
    );
    second.stop().await;
}

/// Uploads `plugin` (the built example of that name, or `bytes_of`'s) through
/// the host at `url`; it must be accepted.
async fn upload(client: &reqwest::Client, url: &str, plugin: &str, bytes_of: &str) {
    let bytes = taskflow_tests::wasm_bytes(&taskflow_tests::plugin_wasm(bytes_of));
    let response = client
        .put(format!("{url}/plugins/{plugin}"))
        .body(bytes)
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), reqwest::StatusCode::CREATED, "{plugin}");
}

/// Item 7: a catalog change that drew its number before another but
/// committed after it (two uploads racing) still reaches the hosts: here a
/// removal held open in a transaction while another plugin is uploaded and
/// applied, then committed. Read as "changes numbered above the last
/// applied", the removal was skipped for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_change_committed_after_a_later_one_still_reaches_the_hosts() {
    let (schema, _) = fresh_schema().await;
    let url = schema_url(&schema);
    let client = reqwest::Client::new();
    let fleet = Fleet::start_at(&url, Some(schema), &SharedQueue::Postgres, 2, 1, 5).await;
    upload(&client, fleet.url(0), "late", "wordcount").await;
    wait_until_loaded(&client, fleet.url(1), "late", Duration::from_secs(60)).await;

    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    let mut removal = pool.begin().await.expect("begin");
    sqlx::query("UPDATE plugins SET digest = NULL, version = nextval('plugin_changes'), updated_at = now() WHERE name = 'late'")
        .execute(&mut *removal)
        .await
        .expect("remove late, uncommitted");
    upload(&client, fleet.url(0), "later", "flaky").await;
    wait_until_loaded(&client, fleet.url(1), "later", Duration::from_secs(60)).await;
    // Both hosts read the catalog past "later" (a poll is 2 s).
    tokio::time::sleep(taskflow_server::fleet::POLL_INTERVAL * 2).await;
    removal.commit().await.expect("commit the removal");
    pool.close().await;

    for index in 0..2 {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while loads(&client, fleet.url(index), "late").await {
            assert!(
                std::time::Instant::now() < deadline,
                "host {index} never applied the removal committed late"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    fleet.stop().await;
}

/// Item 7: a version a host failed to load (here its plugin file could not
/// be written: a directory stands in its place, as a full disk would fail
/// it) is tried again later, and loads once the cause is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_failed_to_load_on_a_host_is_tried_again() {
    let fleet = Fleet::start(2, 1, 5).await;
    let client = reqwest::Client::new();
    let blocked = fleet._data[1].path().join("plugins/retried.wasm");
    std::fs::create_dir(&blocked).expect("a directory in the plugin file's place");
    upload(&client, fleet.url(0), "retried", "wordcount").await;
    // The first try fails on host 1 (and is logged); the plugin is not loaded.
    tokio::time::sleep(taskflow_server::fleet::POLL_INTERVAL * 2).await;
    assert!(
        !loads(&client, fleet.url(1), "retried").await,
        "loaded though its file could not be written"
    );
    std::fs::remove_dir(&blocked).expect("remove the directory");
    wait_until_loaded(&client, fleet.url(1), "retried", Duration::from_secs(30)).await;
    fleet.stop().await;
}

/// A 5 MiB payload submitted to one host of an SQS + S3 fleet goes to S3,
/// reaches the plugin intact on whichever host runs it, and comes back
/// intact through the API of another host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5_mib_payload_goes_through_s3_and_back_through_another_host() {
    let queue = SharedQueue::sqs().await;
    let SharedQueue::Sqs { bucket, .. } = &queue else {
        unreachable!("an SQS fleet")
    };
    let bucket = bucket.clone();
    let fleet = Fleet::start_on(queue, 3, 2, 5).await;
    let client = reqwest::Client::new();
    let data: String = (0..5 * 1024 * 1024)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    let payload = json!({"data": data, "rounds": 1});
    let id = submit(
        &api(fleet.url(0)),
        &as_task(json!({"plugin": "hash", "payload": payload, "max_attempts": 1})),
    )
    .await
    .id;
    let done = poll_json(
        &client,
        &format!("{}/tasks/{id}", fleet.url(2)),
        Duration::from_secs(60),
        |t| matches!(t["status"].as_str(), Some("completed" | "failed")),
    )
    .await;
    assert_eq!(done["status"], "completed", "{}", done["last_error"]);
    assert!(done["payload"] == payload, "the payload comes back intact");
    assert_eq!(done["result"]["value"]["bytes"], data.len());
    assert_eq!(
        done["result"]["value"]["sha256"],
        taskflow_runtime::plugin::digest_of(data.as_bytes()),
        "the plugin saw every byte"
    );
    let shard = id.shard();
    assert_eq!(
        taskflow_tests::aws::keys(&bucket, &format!("payloads/{shard}/{id}")).await,
        vec![format!("payloads/{shard}/{id}")],
        "the payload went through S3"
    );
    fleet.stop().await;
}

/// PostgreSQL restarted while the hosts work: every accepted task completes
/// (at most once more than needed), and the hosts recover by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_ride_out_a_postgresql_restart() {
    let server = taskflow_tests::pg::OwnServer::start();
    let fleet = Fleet::start_at(&server.url(), None, &SharedQueue::Postgres, 2, 2, 3).await;
    let client = reqwest::Client::new();
    let mut accepted = Vec::new();
    for round in 0..20 {
        if round == 5 {
            server.restart();
        }
        // A submission refused while the database is down is not accepted:
        // the client tries again, as a client would.
        let tasks: Vec<Value> = (0..50)
            .map(|i| json!({"plugin": "echo", "payload": {"round": round, "i": i}}))
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let response = client
                .post(format!("{}/tasks/batch", fleet.url(round % 2)))
                .json(&json!({ "tasks": tasks }))
                .send()
                .await
                .expect("batch");
            if response.status() == reqwest::StatusCode::ACCEPTED {
                let body: Value = response.json().await.expect("json");
                accepted.extend(
                    body["tasks"]
                        .as_array()
                        .expect("tasks")
                        .iter()
                        .map(|t| t["id"].as_str().expect("id").to_string()),
                );
                break;
            }
            assert!(
                response.status().is_server_error(),
                "refused with {}",
                response.status()
            );
            assert!(
                std::time::Instant::now() < deadline,
                "the hosts did not take tasks again after the restart"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(accepted.len(), 1000);
    wait_for_completed(&client, fleet.url(0), 1000, Duration::from_secs(120)).await;
    let tasks = list_all(&client, fleet.url(1), "").await;
    let listed: std::collections::HashMap<&str, &Value> = tasks
        .iter()
        .map(|t| (t["id"].as_str().expect("id"), t))
        .collect();
    for id in &accepted {
        let task = listed
            .get(id.as_str())
            .unwrap_or_else(|| panic!("accepted task {id} was lost"));
        assert_eq!(task["status"], "completed", "{task}");
        assert!(
            task["attempts"]
                .as_u64()
                .is_some_and(|a| (1..=2).contains(&a)),
            "{task}"
        );
    }
    for index in 0..2 {
        let ready = poll_json(
            &client,
            &format!("{}/ready", fleet.url(index)),
            Duration::from_secs(30),
            |r| r["status"] == "ok",
        )
        .await;
        assert_eq!(
            ready["backends"],
            json!({"queue": "ok", "storage": "ok", "blobs": "ok"})
        );
    }
    fleet.stop().await;
}
