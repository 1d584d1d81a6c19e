//! Retention under a load: what deleting a backlog of old finished tasks
//! costs the tasks running meanwhile. For each store (one embedded host on
//! task files; two hosts sharing PostgreSQL as store and queue) it stores a
//! backlog of completed tasks that finished 30 days ago, then runs the same
//! load of `echo` tasks twice, each time on a freshly stored backlog: once
//! with retention off (`forever`, the baseline) and once with the default
//! 7 days, which deletes the backlog while the load runs (the load starts
//! once the job has begun deleting). It prints both
//! rates, their ratio (target: at least 0.90) and how much of the backlog
//! the job deleted during the load. Completions are counted from the hosts'
//! attempt metrics, since `/stats` counts fall as the backlog goes.
//!
//! Run with `cargo bench -p taskflow-host --bench retention` (after
//! `plugins/build.sh`), PostgreSQL at `TASKFLOW_BENCH_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`; a schema of its own, dropped
//! after). `TASKFLOW_RETENTION_TASKS` sets the load (default 20,000) and
//! `TASKFLOW_RETENTION_BACKLOG` the backlog (default 200,000: more than
//! the job deletes while the load runs, so that it deletes throughout).

mod common;

use common::{BATCH, CONCURRENCY, Database, Fleet, free_port, measure_by, metric_sum, start_host};
use taskflow_backend::storage::TaskStore;
use taskflow_model::task::{NewTask, TaskStatus};

fn main() {
    common::bench("retention", run, "TASKFLOW_RETENTION_TASKS");
}

/// Retention settings of a run: off, or the defaults; the job every second.
fn retention_args(on: bool) -> Vec<&'static str> {
    let age = if on { "7d" } else { "forever" };
    vec![
        "--retain-completed",
        age,
        "--retain-failed",
        age,
        "--retain-cancelled",
        age,
        "--retention-interval-secs",
        "1",
    ]
}

async fn run(tasks: usize) {
    let backlog: usize = std::env::var("TASKFLOW_RETENTION_BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .expect("client");
    println!(
        "{tasks} echo tasks while a backlog of {backlog} completed tasks, finished 30 days ago, is kept or deleted"
    );

    let mut files = Vec::new();
    for on in [false, true] {
        let data = tempfile::tempdir().expect("tempdir");
        common::restore_into_files(&data.path().join("tasks"), backlog, old_task).await;
        let port = free_port();
        let _host = start_host(&client, data.path(), port, &retention_args(on), &[]).await;
        files.push(load(&client, &[format!("http://127.0.0.1:{port}")], tasks, on).await);
    }
    report("one embedded host (files)", &files);

    let mut postgres = Vec::new();
    for on in [false, true] {
        let database = Database::fresh().await;
        store_backlog_in_postgres(&database, backlog).await;
        let mut args = vec!["--queue", "postgres"];
        args.extend(retention_args(on));
        let fleet = Fleet::start_in(database, &client, 2, &args, &[]).await;
        postgres.push(load(&client, &fleet.urls, tasks, on).await);
        fleet.stop().await;
    }
    report("two hosts on PostgreSQL", &postgres);
}

/// What one run measured: tasks/s, and backlog tasks deleted meanwhile.
struct Run {
    rate: f64,
    deleted: u64,
}

/// Runs the load on the hosts at `urls`; with `retention` on, once the job
/// has begun deleting the backlog.
async fn load(client: &reqwest::Client, urls: &[String], tasks: usize, retention: bool) -> Run {
    let deleted = || {
        metric_sum(
            client,
            urls,
            "taskflow_retention_deleted_total",
            &["what=\"completed\""],
        )
    };
    if retention {
        common::wait_until(|| async { deleted().await > 0 }).await;
    }
    let before = deleted().await;
    let rate = measure_by(client, urls, tasks, BATCH, || {
        metric_sum(
            client,
            urls,
            "taskflow_task_attempts_total",
            &["outcome=\"completed\""],
        )
    })
    .await;
    Run {
        rate,
        deleted: deleted().await - before,
    }
}

fn report(what: &str, runs: &[Run]) {
    let [off, on] = runs else {
        unreachable!("two runs")
    };
    println!(
        "{what:<27} retention off: {:>6.0} tasks/s (baseline); on: {:>6.0} tasks/s = {:.2}x the baseline (target: at least 0.90), {} backlog tasks deleted during the load",
        off.rate,
        on.rate,
        on.rate / off.rate,
        on.deleted
    );
}

/// A completed echo task, numbered `n`, that finished 30 days ago.
fn old_task(n: usize) -> taskflow_model::task::Task {
    let new = NewTask {
        plugin: "echo".into(),
        payload: serde_json::json!({ "n": n }),
        ..NewTask::default()
    };
    let mut task = new.validate(n as u64).expect("valid task");
    task.status = TaskStatus::Completed;
    task.attempts = 1;
    let finished = chrono::Utc::now() - chrono::Duration::days(30);
    task.created_at = finished;
    task.finished_at = Some(finished);
    task
}

/// Stores the backlog in PostgreSQL: the store's own schema (its
/// migrations), then rows written by SQL in one statement, as a restore of
/// that many tasks would leave them.
async fn store_backlog_in_postgres(database: &Database, backlog: usize) {
    let options: sqlx::postgres::PgConnectOptions = database.url.parse().expect("database URL");
    let store = taskflow_postgres::PgStore::connect(options, 2)
        .await
        .expect("the PostgreSQL store");
    sqlx::query(
        "INSERT INTO tasks (id, sequence, plugin, priority, status, doc, updated_at)
         SELECT id, sequence, 'echo', 5, 'completed',
                json_build_object('id', id, 'plugin', 'echo', 'priority', 5,
                    'payload', json_build_object('n', sequence), 'status', 'completed',
                    'attempts', 1, 'max_attempts', 3, 'sequence', sequence,
                    'created_at', finished, 'finished_at', finished)::text,
                finished
         FROM (SELECT gen_random_uuid() AS id, nextval('tasks_sequence') AS sequence,
                      now() - interval '30 days' AS finished
               FROM generate_series(1, $1)) backlog",
    )
    .bind(i64::try_from(backlog).expect("backlog"))
    .execute(store.pool())
    .await
    .expect("store the backlog");
    let counts = store.counts().await.expect("counts");
    assert_eq!(
        counts[&TaskStatus::Completed],
        backlog as u64,
        "the backlog is counted"
    );
    let sample = store
        .list(&taskflow_backend::storage::ListQuery {
            limit: 1,
            ..Default::default()
        })
        .await
        .expect("the backlog's rows read as tasks");
    assert_eq!(sample.tasks.len(), 1);
}
