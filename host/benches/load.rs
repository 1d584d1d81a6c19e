//! End-to-end load benchmark: the real `taskflow` binary, real HTTP, real
//! files.
//!
//! In one run it measures, on the same disk:
//! 1. the raw rate of atomic file writes (temp file + rename) of task-sized
//!    JSON into sharded directories: the storage floor;
//! 2. host memory (RSS) at idle with every example plugin loaded, on the
//!    first start (which compiles them) and on a restart (compile cache);
//! 3. tasks per second end to end (submit over HTTP → completed) for 20,000
//!    `echo` tasks, sent one per request, then in batches of 100;
//!
//! and prints each rate and its ratio to the write rate. The load generator
//! runs on one thread, to take as little as it can of the cores it shares
//! with the host. Run with
//! `cargo bench -p taskflow-host --bench load` (after `plugins/build.sh`).
//! `TASKFLOW_LOAD_TASKS` changes the task count; `TASKFLOW_LOAD_DIR` the disk
//! measured (default: the system temp directory), e.g. `/dev/shm` to see the
//! host's own ceiling without a disk.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BATCH, CONCURRENCY, Host, measure, rss_mib, wait_until};
use serde_json::json;

fn main() {
    common::bench("load", run, "TASKFLOW_LOAD_TASKS");
}

async fn run(tasks: usize) {
    let scratch = match std::env::var_os("TASKFLOW_LOAD_DIR") {
        Some(dir) => tempfile::tempdir_in(dir).expect("tempdir in TASKFLOW_LOAD_DIR"),
        None => tempfile::tempdir().expect("tempdir"),
    };
    let write_rate = atomic_write_rate(&scratch.path().join("write-test"), tasks);
    println!(
        "raw atomic writes:        {write_rate:>9.0} writes/s (temp file + rename, {tasks} task-sized files in {})",
        scratch.path().display()
    );

    let data = scratch.path().join("data");
    let plugins = data.join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugin dir");
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist");
    assert!(
        dist.join("echo.wasm").exists(),
        "{} is missing: run plugins/build.sh first",
        dist.display()
    );
    let mut loaded = 0;
    for entry in std::fs::read_dir(&dist).expect("plugins/dist") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "wasm") {
            std::fs::copy(&path, plugins.join(path.file_name().expect("file name")))
                .expect("copy plugin");
            loaded += 1;
        }
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .expect("client");
    let mut rss = Vec::new();
    let mut host = None;
    for _start in ["first", "restart"] {
        drop(host.take());
        let started = Host(
            Command::new(env!("CARGO_BIN_EXE_taskflow"))
                .args([
                    "serve",
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--log-format",
                    "json",
                ])
                .arg("--data-dir")
                .arg(&data)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .expect("start taskflow"),
        );
        wait_until(|| async { client.get(format!("{url}/health")).send().await.is_ok() }).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss.push(rss_mib(started.0.id()));
        host = Some(started);
    }
    println!(
        "host memory at idle:      {:>9.1} MiB RSS on a restart, {:.1} MiB on the first start (which compiles), {loaded} example plugins loaded (target: under 150)",
        rss[1], rss[0]
    );

    let single = measure(&client, std::slice::from_ref(&url), tasks, 1).await;
    println!(
        "end to end, 1 per request: {single:>8.0} tasks/s = {:.2}x the write rate (target: 0.4x and 5,000 tasks/s)",
        single / write_rate
    );
    let batched = measure(&client, std::slice::from_ref(&url), tasks, BATCH).await;
    println!(
        "end to end, {BATCH} per request: {batched:>6.0} tasks/s = {:.2}x the write rate",
        batched / write_rate
    );
    drop(host);
}

/// Writes `count` task-sized JSON files the way the file store does.
fn atomic_write_rate(dir: &Path, count: usize) -> f64 {
    let body = serde_json::to_vec(&json!({
        "id": "3f2b8c1e-8d4a-4c7e-9f1a-2b3c4d5e6f70", "plugin": "echo", "priority": 5, "payload": {"n": 1},
        "status": "completed", "attempts": 1, "max_attempts": 3, "sequence": 1,
        "created_at": "2026-11-28T12:00:00Z", "started_at": "2026-11-28T12:00:00Z", "finished_at": "2026-11-28T12:00:00Z",
        "plugin_digest": "e31457154e037195291eb3cfbe1ed806e727666e0ff4538c98a27f29b55c3bfa",
        "result": {"encoding": "json", "value": {"n": 1}}
    }))
    .expect("json");
    for shard in 0..256 {
        std::fs::create_dir_all(dir.join(format!("{shard:02x}"))).expect("shard");
    }
    let started = Instant::now();
    for i in 0..count {
        let path = dir
            .join(format!("{:02x}", i % 256))
            .join(format!("{i:08}.json"));
        taskflow_fs::write_atomic(&path, &body, false).expect("write");
    }
    count as f64 / started.elapsed().as_secs_f64()
}
