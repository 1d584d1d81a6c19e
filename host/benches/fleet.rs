//! Many hosts, one system: tasks per second end to end with two hosts
//! sharing PostgreSQL as store and queue, then PostgreSQL and SQS (moto:
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

use common::{BATCH, CONCURRENCY, Database, Host, free_port, measure, metric_sum, start_host};

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
    let database = Database::fresh().await;
    let url = database.url.clone();
    let dirs: Vec<tempfile::TempDir> = (0..2)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut hosts = Vec::new();
    let mut urls = Vec::new();
    for dir in &dirs {
        let port = free_port();
        let mut args = vec!["--storage", "postgres", "--database-url", url.as_str()];
        args.extend_from_slice(queue_args);
        hosts.push(start_host(client, dir.path(), port, &args, env).await);
        urls.push(format!("http://127.0.0.1:{port}"));
    }
    let before = queue_requests(client, &urls).await;
    let rate = measure(client, &urls, tasks, BATCH).await;
    let requests = queue_requests(client, &urls).await - before;
    drop(hosts);
    database.drop().await;
    (rate, requests)
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
