//! Many hosts, one system: tasks per second end to end with two hosts
//! sharing PostgreSQL as store and queue, against one embedded host
//! (in-process queue, task files) measured in the same run on the same
//! machine, with the same load generator (one thread, 64 requests in flight,
//! batches of 100 `echo` tasks spread over the hosts).
//!
//! Run with `cargo bench -p taskflow-host --bench fleet` (after
//! `plugins/build.sh`), PostgreSQL at `TASKFLOW_BENCH_DATABASE_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`; the benchmark works
//! in a schema of its own and drops it). `TASKFLOW_FLEET_TASKS` changes the
//! task count (default 20,000). The database, the hosts and the load
//! generator share the machine's cores.

mod common;

use common::{BATCH, CONCURRENCY, free_port, measure, start_host};

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
        let _host = start_host(&client, data.path(), port, &[]).await;
        measure(&client, &[format!("http://127.0.0.1:{port}")], tasks, BATCH).await
    };
    println!("one embedded host (local queue, files):  {embedded:>7.0} tasks/s (baseline)");

    let base = std::env::var("TASKFLOW_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let admin = sqlx::PgPool::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must be running at {base}: {e}"));
    let schema = format!("taskflow_bench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .expect("create schema");
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}options=-c%20search_path%3D{schema}");
    let shared = {
        let dirs: Vec<tempfile::TempDir> = (0..2)
            .map(|_| tempfile::tempdir().expect("tempdir"))
            .collect();
        let mut hosts = Vec::new();
        let mut urls = Vec::new();
        for dir in &dirs {
            let port = free_port();
            let args = [
                "--storage",
                "postgres",
                "--queue",
                "postgres",
                "--database-url",
                url.as_str(),
            ];
            hosts.push(start_host(&client, dir.path(), port, &args).await);
            urls.push(format!("http://127.0.0.1:{port}"));
        }
        measure(&client, &urls, tasks, BATCH).await
    };
    println!(
        "two hosts on the PostgreSQL queue:       {shared:>7.0} tasks/s = {:.2}x the embedded host (target: 3,000 tasks/s)",
        shared / embedded
    );
    println!(
        "two hosts on SQS:                        not measured: the SQS queue is not built yet"
    );
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .expect("drop schema");
}
