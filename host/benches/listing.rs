//! The dashboard's task list at a million tasks: how long `/ui/tasks`
//! takes to render its first page and the next (following the page's own
//! "Next page" link), unfiltered and filtered (by status, by error kind, by
//! priority and host together), on a host whose
//! store holds 1,000,000 finished tasks (each with an attempt in its
//! history and a plugin log line), against the same host holding 1,000
//! (the baseline, measured in the same run). Files: one embedded host on
//! task files; PostgreSQL: one host with PostgreSQL as store and queue.
//! Each figure is the median of 9 requests, HTML rendered and read whole;
//! the target is under 200 ms each.
//!
//! Run with `cargo bench -p taskflow-host --bench listing` (after
//! `plugins/build.sh`), PostgreSQL at `TASKFLOW_BENCH_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`; a schema of its own, dropped
//! after). `TASKFLOW_LISTING_TASKS` sets the large store (default 1,000,000),
//! `TASKFLOW_LISTING_STORES` the stores (default `files,postgres`).

mod common;

use std::time::Instant;

use common::{Database, free_port, start_host};
use taskflow_backend::storage::TaskStore;
use taskflow_model::FailureKind;
use taskflow_model::attempt::{AttemptOutcome, LogLine, LogStream, RunLogs};
use taskflow_model::task::{NewTask, Task, TaskError, TaskStatus};

/// The baseline store's size.
const SMALL: usize = 1_000;
/// Requests per figure (the median is reported).
const SAMPLES: usize = 9;

fn main() {
    common::bench("listing", run, "TASKFLOW_LISTING_TASKS");
}

async fn run(tasks: usize) {
    // The shared default (20,000) is for loads; this one is about size.
    let big = if std::env::var_os("TASKFLOW_LISTING_TASKS").is_some() {
        tasks
    } else {
        1_000_000
    };
    let client = reqwest::Client::new();
    println!(
        "the dashboard's task list, first page and next, at {SMALL} tasks (baseline) and at {big}"
    );
    let stores =
        std::env::var("TASKFLOW_LISTING_STORES").unwrap_or_else(|_| "files,postgres".into());
    for store in stores.split(',') {
        let mut figures = Vec::new();
        for size in [SMALL, big] {
            let started = Instant::now();
            figures.push(measure_store(&client, store, size).await);
            eprintln!(
                "  {store} at {size} tasks: stored, started and measured in {:.0?}",
                started.elapsed()
            );
        }
        report(store, big, &figures);
    }
}

/// The lists measured: a label and the query string.
const LISTS: [(&str, &str); 4] = [
    ("all", ""),
    ("failed", "status=failed"),
    ("error kind fatal", "error_kind=fatal"),
    ("priority 5, host", "priority=5&host=bench-host"),
];

/// Median milliseconds of the first page and the next of each of [`LISTS`].
type Figures = Vec<[f64; 2]>;

async fn measure_store(client: &reqwest::Client, store: &str, size: usize) -> Figures {
    let data = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    match store {
        "files" => {
            common::restore_into_files(&data.path().join("tasks"), size, finished_task).await;
            let _host = start_host(client, data.path(), port, &[], &[]).await;
            measure(client, port).await
        }
        _ => {
            let database = Database::fresh().await;
            fill_postgres(&database, size).await;
            let args = [
                "--storage",
                "postgres",
                "--queue",
                "postgres",
                "--database-url",
                database.url.as_str(),
            ];
            let host = start_host(client, data.path(), port, &args, &[]).await;
            let figures = measure(client, port).await;
            drop(host);
            database.drop().await;
            figures
        }
    }
}

async fn measure(client: &reqwest::Client, port: u16) -> Figures {
    let base = format!("http://127.0.0.1:{port}");
    let mut figures = Vec::new();
    for (_, query) in LISTS {
        let (first, next_url) = timed_page(client, &format!("{base}/ui/tasks?{query}")).await;
        let next_url = next_url.unwrap_or_else(|| panic!("no second page of {query:?}"));
        let (next, _) = timed_page(client, &format!("{base}{next_url}")).await;
        figures.push([first, next]);
    }
    figures
}

/// The median time to fetch and read `url`, and the page's next link.
async fn timed_page(client: &reqwest::Client, url: &str) -> (f64, Option<String>) {
    let mut times = Vec::with_capacity(SAMPLES);
    let mut next = None;
    for _ in 0..SAMPLES {
        let started = Instant::now();
        let response = client.get(url).send().await.expect("page");
        assert!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
        let html = response.text().await.expect("html");
        times.push(started.elapsed());
        next = next_link(&html);
    }
    times.sort();
    (times[SAMPLES / 2].as_secs_f64() * 1000.0, next)
}

/// The href of the page's `rel="next"` link, unescaped.
fn next_link(html: &str) -> Option<String> {
    let at = html.find("rel=\"next\" href=\"")? + "rel=\"next\" href=\"".len();
    let end = at + html[at..].find('"')?;
    Some(html[at..end].replace("&amp;", "&"))
}

fn report(store: &str, big: usize, figures: &[Figures]) {
    let [small, large] = figures else {
        unreachable!("two sizes")
    };
    for (i, (list, _)) in LISTS.into_iter().enumerate() {
        for (page, what) in ["first page", "next page"].into_iter().enumerate() {
            println!(
                "{store:<9} {list:<17} {what:<10} {SMALL} tasks: {:>7.1} ms (baseline); {big} tasks: {:>7.1} ms = {:.2}x (target: under 200 ms)",
                small[i][page],
                large[i][page],
                large[i][page] / small[i][page]
            );
        }
    }
}

/// A finished echo task numbered `n`: every 10th failed, the rest
/// completed, each with one attempt in its history and a log line.
fn finished_task(n: usize) -> Task {
    let new = NewTask {
        plugin: "echo".into(),
        payload: serde_json::json!({ "n": n }),
        ..NewTask::default()
    };
    let mut task = new.validate(n as u64).expect("valid task");
    let now = chrono::Utc::now();
    task.begin_attempt("bench-host", now);
    let logs = RunLogs {
        lines: vec![LogLine {
            at: now,
            stream: LogStream::Log,
            level: None,
            message: format!("processing task {n}"),
        }],
        dropped: 0,
        skipped: 0,
    };
    if n.is_multiple_of(10) {
        task.last_error = Some(TaskError {
            kind: FailureKind::Fatal,
            message: "deliberately failed".into(),
        });
        task.status = TaskStatus::Failed;
        task.end_attempt(AttemptOutcome::Failed, Some("digest"), logs, now);
    } else {
        task.status = TaskStatus::Completed;
        task.end_attempt(AttemptOutcome::Completed, Some("digest"), logs, now);
    }
    task.finished_at = Some(now);
    task
}

/// Stores `size` finished tasks in PostgreSQL by SQL, in one statement per
/// 100,000 (the documents as the store writes them).
async fn fill_postgres(database: &Database, size: usize) {
    let options: sqlx::postgres::PgConnectOptions = database.url.parse().expect("database URL");
    let store = taskflow_postgres::PgStore::connect(options, 2)
        .await
        .expect("the PostgreSQL store");
    // One task's document as a template; the SQL fills in id, sequence, n.
    let template = serde_json::to_value(finished_task(1)).expect("task as JSON");
    let failed = serde_json::to_value(finished_task(10)).expect("task as JSON");
    for start in (0..size).step_by(100_000) {
        let count = (size - start).min(100_000);
        sqlx::query(
            "INSERT INTO tasks (id, sequence, plugin, priority, status, doc, updated_at)
             SELECT id, sequence, 'echo', 5, status,
                    (CASE WHEN status = 'failed' THEN $3::jsonb ELSE $2::jsonb END
                      || jsonb_build_object('id', id, 'sequence', sequence,
                                            'payload', jsonb_build_object('n', n)))::text,
                    now()
             FROM (SELECT gen_random_uuid() AS id, nextval('tasks_sequence') AS sequence, n,
                          CASE WHEN n % 10 = 0 THEN 'failed' ELSE 'completed' END AS status
                   FROM generate_series($1, $1 + $4 - 1) AS n) batch",
        )
        .bind(i64::try_from(start).expect("start"))
        .bind(&template)
        .bind(&failed)
        .bind(i64::try_from(count).expect("count"))
        .execute(store.pool())
        .await
        .expect("store the tasks");
    }
    // What autovacuum does within a minute of such a load: without the
    // table's statistics the planner guesses that a filter on priority and
    // host matches a few rows, and sorts the whole table instead of walking
    // the submission order index.
    sqlx::query("ANALYZE tasks")
        .execute(store.pool())
        .await
        .expect("analyze");
    let counts = store.counts().await.expect("counts");
    let stored: u64 = counts.values().sum();
    assert_eq!(stored, size as u64, "every task is counted");
}
