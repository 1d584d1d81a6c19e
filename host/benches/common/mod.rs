//! What the end-to-end benchmarks share: host processes, the load
//! generator, and waiting for completions.

#![allow(dead_code)]

use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Semaphore;

/// Requests in flight at once.
pub const CONCURRENCY: usize = 64;
/// Tasks per batch request.
pub const BATCH: usize = 100;

/// Runs benchmark `name` with the task count from the environment variable
/// `count_variable` (default 20,000) on a one-thread runtime, leaving the
/// other cores to the hosts; skipped when `cargo bench` was given a filter
/// that excludes it.
pub fn bench<F: Future<Output = ()>>(
    name: &str,
    run: impl FnOnce(usize) -> F,
    count_variable: &str,
) {
    // `cargo bench` passes --bench; a filter argument that excludes us means skip.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !name.contains(a.as_str()))
    {
        return;
    }
    let tasks = std::env::var(count_variable)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    runtime.block_on(run(tasks));
}

/// A host process, killed when dropped.
pub struct Host(pub Child);

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Submits `tasks` echo tasks, `per_request` per HTTP request, spread over
/// `urls` in turn, and returns tasks/s from the first submission to the last
/// completion (as the first URL's `/stats` counts them).
pub async fn measure(
    client: &reqwest::Client,
    urls: &[String],
    tasks: usize,
    per_request: usize,
) -> f64 {
    let first = urls[0].clone();
    measure_by(client, urls, tasks, per_request, || {
        completed(client, &first)
    })
    .await
}

/// As [`measure`], with completions counted by `count_completed`.
pub async fn measure_by<F: Future<Output = u64>>(
    client: &reqwest::Client,
    urls: &[String],
    tasks: usize,
    per_request: usize,
    count_completed: impl FnMut() -> F,
) -> f64 {
    let echo = |n: usize| json!({"plugin": "echo", "payload": {"n": n}});
    measure_tasks(client, urls, tasks, per_request, echo, count_completed).await
}

/// As [`measure_by`], submitting `task(n)` as the `n`th task.
pub async fn measure_tasks<F: Future<Output = u64>>(
    client: &reqwest::Client,
    urls: &[String],
    tasks: usize,
    per_request: usize,
    task: impl Fn(usize) -> Value,
    mut count_completed: impl FnMut() -> F,
) -> f64 {
    let completed_before = count_completed().await;
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let mut requests = Vec::new();
    for (request, first) in (0..tasks).step_by(per_request).enumerate() {
        let count = per_request.min(tasks - first);
        let permit = permits.clone().acquire_owned().await.expect("semaphore");
        let (client, url) = (client.clone(), urls[request % urls.len()].clone());
        let batch: Vec<Value> = (first..first + count).map(&task).collect();
        requests.push(tokio::spawn(async move {
            let response = if let [task] = &batch[..] {
                client.post(format!("{url}/tasks")).json(task).send().await
            } else {
                client
                    .post(format!("{url}/tasks/batch"))
                    .json(&json!({"tasks": batch}))
                    .send()
                    .await
            };
            drop(permit);
            let status = response.expect("request").status();
            assert!(status.is_success(), "submit failed: {status}");
        }));
    }
    for request in requests {
        request.await.expect("request task");
    }
    let target = completed_before + tasks as u64;
    let deadline = Instant::now() + Duration::from_secs(600);
    while count_completed().await < target {
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tasks as f64 / started.elapsed().as_secs_f64()
}

/// The sum over the hosts at `urls` of the metric lines named `name` whose
/// labels include each of `labels` (e.g. `outcome="completed"`).
pub async fn metric_sum(
    client: &reqwest::Client,
    urls: &[String],
    name: &str,
    labels: &[&str],
) -> u64 {
    let mut total = 0;
    for url in urls {
        let text = client
            .get(format!("{url}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        total += text
            .lines()
            .filter(|line| line.starts_with(&format!("{name}{{")))
            .filter(|line| labels.iter().all(|label| line.contains(label)))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    total
}

/// Completed tasks, as `/stats` of `url` counts them.
pub async fn completed(client: &reqwest::Client, url: &str) -> u64 {
    tasks_with_status(client, url, "completed").await
}

/// Tasks in `status`, as `/stats` of `url` counts them.
pub async fn tasks_with_status(client: &reqwest::Client, url: &str, status: &str) -> u64 {
    let stats: Value = client
        .get(format!("{url}/stats"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    stats["system"]["tasks"][status].as_u64().unwrap_or(0)
}

/// Polls `check` every 10 ms until it holds (at most ten minutes).
pub async fn wait_until<F: Future<Output = bool>>(mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Resident memory of a process, in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

/// Starts `taskflow serve` on `data` and `port` with `extra` arguments and
/// `env` variables, its
/// plugin directory holding the echo plugin; returns once it answers.
pub async fn start_host(
    client: &reqwest::Client,
    data: &std::path::Path,
    port: u16,
    extra: &[&str],
    env: &[(String, String)],
) -> Host {
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_taskflow"));
    start_host_of(binary, client, data, port, extra, env).await
}

/// As [`start_host`], running the host executable `binary`.
pub async fn start_host_of(
    binary: &std::path::Path,
    client: &reqwest::Client,
    data: &std::path::Path,
    port: u16,
    extra: &[&str],
    env: &[(String, String)],
) -> Host {
    let plugins = data.join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugin dir");
    let echo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist/echo.wasm");
    assert!(
        echo.exists(),
        "{} is missing: run plugins/build.sh first",
        echo.display()
    );
    std::fs::copy(&echo, plugins.join("echo.wasm")).expect("copy echo");
    let mut host = Host(
        std::process::Command::new(binary)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--log-format",
                "json",
            ])
            .arg("--data-dir")
            .arg(data)
            .args(extra)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start taskflow"),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while client
        .get(format!("http://127.0.0.1:{port}/health"))
        .send()
        .await
        .is_err()
    {
        if let Ok(Some(status)) = host.0.try_wait() {
            panic!("the host stopped at start ({status}); its error is above");
        }
        assert!(
            Instant::now() < deadline,
            "the host did not answer within 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    host
}

/// A fresh schema of the benchmark's database.
pub struct Database {
    admin: sqlx::PgPool,
    schema: String,
    /// Its URL, the schema first on the search path.
    pub url: String,
}

impl Database {
    /// A new schema in the database at `TASKFLOW_BENCH_DATABASE_URL`
    /// (default `postgres://postgres@127.0.0.1:5432/test`).
    pub async fn fresh() -> Self {
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
        Self { admin, schema, url }
    }

    /// Transactions committed or rolled back in the database so far, by
    /// anyone (PostgreSQL's statistics, flushed about every second).
    pub async fn transactions(&self) -> u64 {
        let count: i64 = sqlx::query_scalar(
            "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&self.admin)
        .await
        .expect("pg_stat_database");
        u64::try_from(count).unwrap_or(0)
    }

    /// Drops the schema.
    pub async fn drop(self) {
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .execute(&self.admin)
            .await
            .expect("drop schema");
    }
}

/// Hosts sharing a fresh PostgreSQL schema.
pub struct Fleet {
    /// Their schema.
    pub database: Database,
    hosts: Vec<Host>,
    /// Their base URLs.
    pub urls: Vec<String>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Fleet {
    /// Starts `count` hosts on a fresh schema with `queue_args` and `env`.
    pub async fn start(
        client: &reqwest::Client,
        count: usize,
        queue_args: &[&str],
        env: &[(String, String)],
    ) -> Self {
        Self::start_in(Database::fresh().await, client, count, queue_args, env).await
    }

    /// Starts `count` hosts on `database` with `queue_args` and `env`.
    pub async fn start_in(
        database: Database,
        client: &reqwest::Client,
        count: usize,
        queue_args: &[&str],
        env: &[(String, String)],
    ) -> Self {
        let dirs: Vec<tempfile::TempDir> = (0..count)
            .map(|_| tempfile::tempdir().expect("tempdir"))
            .collect();
        let mut hosts = Vec::new();
        let mut urls = Vec::new();
        for dir in &dirs {
            let port = free_port();
            let mut args = vec![
                "--storage",
                "postgres",
                "--database-url",
                database.url.as_str(),
            ];
            args.extend_from_slice(queue_args);
            hosts.push(start_host(client, dir.path(), port, &args, env).await);
            urls.push(format!("http://127.0.0.1:{port}"));
        }
        Self {
            database,
            hosts,
            urls,
            _dirs: dirs,
        }
    }

    /// Stops the hosts and drops the schema.
    pub async fn stop(self) {
        drop(self.hosts);
        self.database.drop().await;
    }
}

/// Stores `count` tasks made by `task` (given 0, 1, …) in task files at
/// `root`, a thousand restores at a time, written out before returning.
pub async fn restore_into_files(
    root: &std::path::Path,
    count: usize,
    task: fn(usize) -> taskflow_model::task::Task,
) {
    use taskflow_backend::storage::TaskStore;
    let store = taskflow_files::FileStore::open(root, false)
        .await
        .expect("open the file store");
    for chunk in (0..count).collect::<Vec<_>>().chunks(1000) {
        let mut restores = tokio::task::JoinSet::new();
        for &n in chunk {
            let store = store.clone();
            restores.spawn(async move { store.restore(&task(n)).await });
        }
        while let Some(restored) = restores.join_next().await {
            restored.expect("join").expect("restore");
        }
    }
    store.checkpoint().await.expect("checkpoint");
}
