//! Plugins in Rust, Python and JavaScript, side by side, in one run:
//!
//! - the same work in each language (`wordcount` of the same text: the Rust
//!   example plugin, `tests/fixtures/wordcount-py` and `-js`), and a trivial
//!   task (the greeter `taskflow plugin new` writes: `tests/fixtures/greeter-rs`,
//!   Python `plugins/greeter-py`, `tests/fixtures/greeter-js`);
//! - for each: the component's size; its cold load (compiled, then from the
//!   compile cache); the time of one task in this process through
//!   [`Runtime::run`], with a fresh instance and with instance reuse; then
//!   tasks/s end to end on a live `taskflow serve` (submitted over HTTP in
//!   batches, until completed), fresh and with `reuse_tasks` in the
//!   plugin's limits file, and that host's peak memory (VmHWM) in each
//!   phase.
//!
//! Ratios are to the Rust plugin of the same work in the same run. Run with
//! `cargo bench -p taskflow-host --bench languages` (after
//! `plugins/build.sh`). `TASKFLOW_LANG_TASKS` sets the tasks per end-to-end
//! phase (default 4,000); `TASKFLOW_LANG_ONLY=<plugin>` measures that one
//! plugin alone (e.g. under `perf`).

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{Host, completed, free_port, wait_until};
use serde_json::{Value, json};
use taskflow_runtime::plugin::{ArtifactCache, CompileCounters, LoadedPlugin, compile};
use taskflow_runtime::{Limits, Runtime, RuntimeConfig, TaskInput};

/// Tasks timed one after another in this process, per plugin and mode.
const IN_PROCESS_TASKS: u32 = 300;

struct Subject {
    language: &'static str,
    work: &'static str,
    name: &'static str,
    path: PathBuf,
    payload: Value,
}

#[derive(Default, Clone, Copy)]
struct Row {
    size_mb: f64,
    compile_ms: f64,
    cached_ms: f64,
    fresh_us: f64,
    reused_us: f64,
    fresh_per_s: f64,
    reused_per_s: f64,
    fresh_peak_mib: f64,
    reused_peak_mib: f64,
}

fn main() {
    common::bench("languages", run, "TASKFLOW_LANG_TASKS");
}

fn built(relative: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    assert!(
        path.exists(),
        "{} is missing: run plugins/build.sh first",
        path.display()
    );
    path
}

fn subjects() -> Vec<Subject> {
    // About 2 KB of English, the same for every language.
    let text = "The quick brown fox jumps over the lazy dog. It's a dog's life, \
                and the fox knows it.\n"
        .repeat(24);
    let count = json!({"text": text, "top": 5});
    let greet = json!({"name": "Ada"});
    vec![
        Subject {
            language: "Rust",
            work: "wordcount",
            name: "wordcount",
            path: built("plugins/dist/wordcount.wasm"),
            payload: count.clone(),
        },
        Subject {
            language: "Python",
            work: "wordcount",
            name: "wordcount-py",
            path: built("tests/fixtures/dist/wordcount-py.wasm"),
            payload: count.clone(),
        },
        Subject {
            language: "JavaScript",
            work: "wordcount",
            name: "wordcount-js",
            path: built("tests/fixtures/dist/wordcount-js.wasm"),
            payload: count,
        },
        Subject {
            language: "Rust",
            work: "trivial",
            name: "greeter-rs",
            path: built("tests/fixtures/dist/greeter-rs.wasm"),
            payload: greet.clone(),
        },
        Subject {
            language: "Python",
            work: "trivial",
            name: "greeter",
            path: built("plugins/dist/greeter.wasm"),
            payload: greet.clone(),
        },
        Subject {
            language: "JavaScript",
            work: "trivial",
            name: "greeter-js",
            path: built("tests/fixtures/dist/greeter-js.wasm"),
            payload: greet,
        },
    ]
}

async fn run(tasks: usize) {
    let tasks = if std::env::var_os("TASKFLOW_LANG_TASKS").is_some() {
        tasks
    } else {
        4_000
    };
    let only = std::env::var("TASKFLOW_LANG_ONLY").ok();
    let subjects: Vec<Subject> = subjects()
        .into_iter()
        .filter(|s| only.as_deref().is_none_or(|only| only == s.name))
        .collect();
    // The same answer from every language, before anything is timed.
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let mut outputs = Vec::new();
    let mut rows = Vec::new();
    let scratch = tempfile::tempdir().expect("tempdir");
    for subject in &subjects {
        let (row, plugin) = in_process(&runtime, scratch.path(), subject).await;
        let output = runtime
            .run(&plugin, task(subject), Limits::default(), None)
            .await
            .unwrap_or_else(|f| panic!("{} failed: {f}", subject.name))
            .output;
        outputs.push(serde_json::from_slice::<Value>(&output).expect("json output"));
        rows.push(row);
    }
    let same_work = subjects.iter().zip(&outputs).skip(1).take(2);
    for (subject, output) in same_work.filter(|_| only.is_none()) {
        assert_eq!(
            *output, outputs[0],
            "{} counts differently from Rust",
            subject.name
        );
    }
    let greeters = subjects.iter().zip(&outputs).skip(4).take(2);
    for (subject, output) in greeters.filter(|_| only.is_none()) {
        assert_eq!(
            output["greeting"], outputs[3]["greeting"],
            "{} greets differently from Rust",
            subject.name
        );
    }
    drop(runtime);

    let client = reqwest::Client::new();
    for (subject, row) in subjects.iter().zip(&mut rows) {
        end_to_end(&client, scratch.path(), subject, tasks, row).await;
    }

    println!(
        "\nplugins by language, {tasks} tasks per end-to-end phase, {IN_PROCESS_TASKS} in process"
    );
    println!(
        "{:<10} {:<10} {:>6} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "work",
        "language",
        "MB",
        "compile",
        "cached",
        "fresh",
        "reused",
        "fresh",
        "reused",
        "peak MiB",
        "peak MiB"
    );
    println!(
        "{:<10} {:<10} {:>6} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "", "", "", "ms", "ms", "µs/task", "µs/task", "tasks/s", "tasks/s", "fresh", "reused"
    );
    for (subject, row) in subjects.iter().zip(&rows) {
        println!(
            "{:<10} {:<10} {:>6.1} {:>9.0} {:>8.1} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0}",
            subject.work,
            subject.language,
            row.size_mb,
            row.compile_ms,
            row.cached_ms,
            row.fresh_us,
            row.reused_us,
            row.fresh_per_s,
            row.reused_per_s,
            row.fresh_peak_mib,
            row.reused_peak_mib,
        );
    }
    println!("\nend-to-end tasks/s as a share of Rust's, same work, same run:");
    for (index, subject) in subjects.iter().enumerate().filter(|_| only.is_none()) {
        let rust = rows[index / 3 * 3];
        let row = rows[index];
        if subject.language != "Rust" {
            println!(
                "{:<10} {:<10} fresh {:.2}x of Rust fresh, reused {:.2}x of Rust fresh ({:.2}x of Rust reused)",
                subject.work,
                subject.language,
                row.fresh_per_s / rust.fresh_per_s,
                row.reused_per_s / rust.fresh_per_s,
                row.reused_per_s / rust.reused_per_s,
            );
        }
    }
    println!(
        "targets: trivial Python and JavaScript ≥ 2,000 tasks/s fresh; with reuse ≥ 0.5x of Rust"
    );
}

fn task(subject: &Subject) -> TaskInput {
    TaskInput {
        id: "bench".into(),
        plugin: subject.name.into(),
        priority: 5,
        attempt: 1,
        payload: serde_json::to_vec(&subject.payload).expect("json"),
    }
}

/// Load times and per-task times in this process.
async fn in_process(runtime: &Runtime, scratch: &Path, subject: &Subject) -> (Row, LoadedPlugin) {
    let bytes = std::fs::read(&subject.path).expect("read plugin");
    let cache = ArtifactCache::new(scratch.join(format!("cache-{}", subject.name)), runtime)
        .expect("cache");
    let counters = CompileCounters::default();
    let started = Instant::now();
    compile(runtime, Some(&cache), &counters, subject.name, &bytes).expect("compiles");
    let compile_ms = started.elapsed().as_secs_f64() * 1e3;
    let started = Instant::now();
    let plugin =
        compile(runtime, Some(&cache), &counters, subject.name, &bytes).expect("loads from cache");
    let cached_ms = started.elapsed().as_secs_f64() * 1e3;
    assert!(plugin.from_cache);

    let per_task = |limits: Limits| {
        let plugin = &plugin;
        async move {
            for _ in 0..20 {
                runtime
                    .run(plugin, task(subject), limits, None)
                    .await
                    .expect("warm-up");
            }
            let started = Instant::now();
            for _ in 0..IN_PROCESS_TASKS {
                runtime
                    .run(plugin, task(subject), limits, None)
                    .await
                    .expect("task");
            }
            started.elapsed().as_secs_f64() * 1e6 / f64::from(IN_PROCESS_TASKS)
        }
    };
    let fresh_us = per_task(Limits::default()).await;
    let reused_us = per_task(Limits {
        reuse_tasks: u32::MAX,
        ..Limits::default()
    })
    .await;
    let row = Row {
        size_mb: bytes.len() as f64 / 1e6,
        compile_ms,
        cached_ms,
        fresh_us,
        reused_us,
        ..Row::default()
    };
    (row, plugin)
}

/// Tasks/s and peak memory on a live host, fresh then with reuse.
async fn end_to_end(
    client: &reqwest::Client,
    scratch: &Path,
    subject: &Subject,
    tasks: usize,
    row: &mut Row,
) {
    let data = scratch.join(format!("host-{}", subject.name));
    let plugins = data.join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugin dir");
    std::fs::copy(
        &subject.path,
        plugins.join(format!("{}.wasm", subject.name)),
    )
    .expect("copy plugin");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let host = Host(
        std::process::Command::new(env!("CARGO_BIN_EXE_taskflow"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(&data)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start taskflow"),
    );
    wait_until(|| async { loaded(client, &url, subject.name).await.is_some() }).await;
    let pid = host.0.id();

    row.fresh_per_s = submit_all(client, &url, subject, tasks).await;
    row.fresh_peak_mib = peak_mib(pid);

    std::fs::write(
        plugins.join(format!("{}.limits.json", subject.name)),
        br#"{"reuse_tasks": 100000}"#,
    )
    .expect("limits file");
    wait_until(|| async {
        loaded(client, &url, subject.name)
            .await
            .is_some_and(|info| info["limits"]["reuse_tasks"] == 100_000)
    })
    .await;
    row.reused_per_s = submit_all(client, &url, subject, tasks).await;
    row.reused_peak_mib = peak_mib(pid);
    drop(host);
}

/// The host's description of plugin `name`, once it is loaded.
async fn loaded(client: &reqwest::Client, url: &str, name: &str) -> Option<Value> {
    let list: Value = client
        .get(format!("{url}/plugins"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    list["plugins"]
        .as_array()?
        .iter()
        .find(|info| info["name"] == name)
        .cloned()
}

/// Submits `tasks` tasks in batches of 100, 8 requests at once; tasks/s from
/// the first submission to the last completion.
async fn submit_all(client: &reqwest::Client, url: &str, subject: &Subject, tasks: usize) -> f64 {
    let before = completed(client, url).await;
    let started = Instant::now();
    let batch =
        json!({"tasks": vec![json!({"plugin": subject.name, "payload": subject.payload}); 100]});
    let batch = serde_json::to_vec(&batch).expect("json");
    let requests = tasks.div_ceil(100);
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(8));
    let mut sent = Vec::new();
    for _ in 0..requests {
        let permit = permits.clone().acquire_owned().await.expect("permit");
        let (client, url, body) = (client.clone(), url.to_owned(), batch.clone());
        sent.push(tokio::spawn(async move {
            let response = client
                .post(format!("{url}/tasks/batch"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("submit");
            drop(permit);
            assert!(response.status().is_success(), "{}", response.status());
        }));
    }
    for request in sent {
        request.await.expect("join");
    }
    let target = before + (requests * 100) as u64;
    wait_until(|| async { completed(client, url).await >= target }).await;
    assert_eq!(
        common::tasks_with_status(client, url, "failed").await,
        0,
        "{} tasks failed",
        subject.name
    );
    (requests * 100) as f64 / started.elapsed().as_secs_f64().max(f64::EPSILON)
}

/// The process's peak resident memory so far, in MiB.
fn peak_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}
