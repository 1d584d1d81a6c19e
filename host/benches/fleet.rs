//! Many hosts, one system: tasks per second end to end with two hosts
//! sharing PostgreSQL as store and queue, then eight (with what they ask of
//! the database while idle: transactions per second, of which claims, and
//! claims per second under load), then PostgreSQL and SQS (moto:
//! `TASKFLOW_BENCH_AWS_ENDPOINT`, or a `moto_server` started here, with the
//! SQS requests per task the hosts count), against one embedded host
//! (in-process queue, task files) measured in the same run on the same
//! machine, with the same load generator (one thread, 64 requests in flight,
//! batches of 100 `echo` tasks spread over the hosts).
//!
//! Run with `cargo bench -p taskflow-host --bench fleet` (after
//! `plugins/build.sh`), PostgreSQL at `TASKFLOW_BENCH_DATABASE_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`; the benchmark works
//! in a schema of its own and drops it). `TASKFLOW_FLEET_TASKS` changes the
//! task count (default 20,000); `TASKFLOW_FLEET_SQS_TASKS` that of the SQS
//! run (default 500: moto's `ReceiveMessage` slows with every message a
//! queue holds, so the SQS figure is moto's; the requests per task are the
//! host's own). The database, the hosts and
//! the load generator share the machine's cores.

mod common;

use common::{BATCH, CONCURRENCY, Fleet, Host, free_port, measure, metric_sum, start_host};

fn main() {
    common::bench("fleet", run, "TASKFLOW_FLEET_TASKS");
}

async fn run(tasks: usize) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .expect("client");

    let embedded = {
        let data = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let _host = start_host(&client, data.path(), port, &[], &[]).await;
        measure(&client, &[format!("http://127.0.0.1:{port}")], tasks, BATCH).await
    };
    println!("one embedded host (local queue, files):  {embedded:>7.0} tasks/s (baseline)");

    let (shared, _) = two_hosts(&client, tasks, &["--queue", "postgres"], &[]).await;
    println!(
        "two hosts on the PostgreSQL queue:       {shared:>7.0} tasks/s = {:.2}x the embedded host (target: 3,000 tasks/s)",
        shared / embedded
    );
    eight_hosts(&client, tasks, shared).await;

    // SQS: the emulator at TASKFLOW_BENCH_AWS_ENDPOINT, or one started here.
    let _moto;
    let endpoint = match std::env::var("TASKFLOW_BENCH_AWS_ENDPOINT") {
        Ok(endpoint) => endpoint,
        Err(_) => {
            let port = free_port();
            _moto = Host(
                std::process::Command::new("moto_server")
                    .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect(
                        "moto_server (pip install 'moto[server]') or TASKFLOW_BENCH_AWS_ENDPOINT",
                    ),
            );
            let endpoint = format!("http://127.0.0.1:{port}");
            common::wait_until(|| async {
                client
                    .get(format!("{endpoint}/moto-api/"))
                    .send()
                    .await
                    .is_ok()
            })
            .await;
            endpoint
        }
    };
    let prefix = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    create_queues(&endpoint, &prefix).await;
    let env: Vec<(String, String)> = [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "bench"),
        ("AWS_SECRET_ACCESS_KEY", "bench"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let sqs_tasks = std::env::var("TASKFLOW_FLEET_SQS_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let (sqs, requests) = two_hosts(
        &client,
        sqs_tasks,
        &["--queue", "sqs", "--sqs-queue-prefix", &prefix],
        &env,
    )
    .await;
    println!(
        "two hosts on SQS (moto), {sqs_tasks} tasks:  {sqs:>7.0} tasks/s = {:.2}x the embedded host; {:.3} SQS requests per task (target: at most 0.35)",
        sqs / embedded,
        requests as f64 / sqs_tasks as f64
    );
}

/// Two hosts on a fresh PostgreSQL schema with `queue_args`: tasks/s, and
/// the queue requests they made (as their metrics count them).
async fn two_hosts(
    client: &reqwest::Client,
    tasks: usize,
    queue_args: &[&str],
    env: &[(String, String)],
) -> (f64, u64) {
    let fleet = Fleet::start(client, 2, queue_args, env).await;
    let before = queue_requests(client, &fleet.urls).await;
    let rate = measure(client, &fleet.urls, tasks, BATCH).await;
    let requests = queue_requests(client, &fleet.urls).await - before;
    fleet.stop().await;
    (rate, requests)
}

/// Eight hosts on the PostgreSQL queue, pools of 8 connections: what they ask of the database idle
/// (transactions/s, of which claims), then tasks/s and claims/s under load.
async fn eight_hosts(client: &reqwest::Client, tasks: usize, two: f64) {
    const IDLE: std::time::Duration = std::time::Duration::from_secs(10);
    // Eight pools of 8 and two listeners each: 80 of the server's default
    // 100 connections (pools of 16 would need 144).
    let args = ["--queue", "postgres", "--database-pool-size", "8"];
    let fleet = Fleet::start(client, 8, &args, &[]).await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await; // started, settled
    let transactions = fleet.database.transactions().await;
    let claims = queue_requests(client, &fleet.urls).await;
    tokio::time::sleep(IDLE).await;
    let idle_transactions =
        (fleet.database.transactions().await - transactions) as f64 / IDLE.as_secs_f64();
    let idle_claims =
        (queue_requests(client, &fleet.urls).await - claims) as f64 / IDLE.as_secs_f64();
    let before = queue_requests(client, &fleet.urls).await;
    let transactions = fleet.database.transactions().await;
    let rate = measure(client, &fleet.urls, tasks, BATCH).await;
    let claims = queue_requests(client, &fleet.urls).await - before;
    // Flushed about every second: wait for the last of the load's.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let transactions = fleet.database.transactions().await - transactions;
    let seconds = tasks as f64 / rate;
    println!(
        "eight hosts on the PostgreSQL queue:     {rate:>7.0} tasks/s = {:.2}x two hosts; {:.0} claims/s ({:.3} per task), {:.2} transactions per task in all; idle: {idle_transactions:.1} transactions/s in the database ({:.2} per host), of which {idle_claims:.1} claims/s",
        rate / two,
        claims as f64 / seconds,
        claims as f64 / tasks as f64,
        transactions as f64 / tasks as f64,
        idle_transactions / 8.0
    );
    fleet.stop().await;
}

/// `taskflow_queue_requests_total` of moving tasks (not the benchmark's
/// own polling of /stats), summed over the hosts at `urls`.
async fn queue_requests(client: &reqwest::Client, urls: &[String]) -> u64 {
    metric_sum(
        client,
        urls,
        "taskflow_queue_requests_total",
        &["purpose=\"tasks\""],
    )
    .await
}

/// The band queues and the dead-letter queue of `prefix` in the emulator.
async fn create_queues(endpoint: &str, prefix: &str) {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "bench", "bench", None, None, "bench",
        ))
        .load()
        .await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    for name in ["dead-letters", "band-1", "band-2", "band-3"] {
        sqs.create_queue()
            .queue_name(format!("{prefix}-{name}"))
            .send()
            .await
            .expect("create queue");
    }
}
