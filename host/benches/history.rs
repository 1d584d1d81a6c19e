//! What keeping every attempt and the plugin's log lines costs end to end:
//! the same load on this build's host and on a host built from the commit
//! before attempts and logs were stored (its plugin log lines went to the
//! host's log, and a task kept only its latest error), in one run.
//!
//! The baseline is built once, in release, from `git archive` of
//! `TASKFLOW_HISTORY_BASELINE` (a revision of this repository; default the
//! last commit before attempts and logs) into a target directory of its
//! own under the benchmark's temp directory: the first run compiles it
//! (minutes), later runs reuse it. Each round starts a fresh host of each
//! build on an empty data directory and submits the same tasks, in batches
//! of 100: `echo` (no log line: what attempts cost) and `flaky` set to
//! succeed at once (a log line and a line of stdout per task: what logs
//! cost). The builds alternate, base-current then current-base, so that a
//! drift of the disk or the machine falls on both; the means are compared.
//!
//! `cargo bench -p taskflow-host --bench history` (after `plugins/build.sh`);
//! `TASKFLOW_HISTORY_TASKS` (default 20,000) tasks a round,
//! `TASKFLOW_HISTORY_ROUNDS` (default 4) rounds, `TASKFLOW_LOAD_DIR` the
//! disk (default the system temp directory).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{BATCH, completed, free_port, measure_tasks, start_host_of};
use serde_json::{Value, json};

/// The last commit before tasks kept their attempts and log lines.
const BEFORE_HISTORY: &str = "3d78edc271cb0fd0545b82dc67e83b98d672fc63";

fn main() {
    common::bench("history", run, "TASKFLOW_HISTORY_TASKS");
}

/// The `n`th task of a load.
type TaskOf = fn(usize) -> Value;

/// The two loads: a name, and their tasks.
const LOADS: [(&str, TaskOf); 2] = [
    ("echo", |n| json!({"plugin": "echo", "payload": {"n": n}})),
    (
        "flaky, 1 log line + 1 stdout line",
        |_| json!({"plugin": "flaky", "payload": {"succeed_on_attempt": 1}}),
    ),
];

async fn run(tasks: usize) {
    let rounds: usize = std::env::var("TASKFLOW_HISTORY_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let revision =
        std::env::var("TASKFLOW_HISTORY_BASELINE").unwrap_or_else(|_| BEFORE_HISTORY.into());
    let baseline = baseline_binary(&revision);
    let current = PathBuf::from(env!("CARGO_BIN_EXE_taskflow"));
    let builds = [("before", baseline.as_path()), ("now", current.as_path())];
    let client = reqwest::Client::new();
    println!("{tasks} tasks a round in batches of {BATCH}; baseline {revision}");

    for (load, task) in LOADS {
        let mut rates = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for build in order {
                let rate = one_round(&client, builds[build].1, tasks, task).await;
                println!(
                    "  {load:<34} round {round}: {:<6} {rate:>7.0} tasks/s",
                    builds[build].0
                );
                rates[build].push(rate);
            }
        }
        let mean = |r: &[f64]| r.iter().sum::<f64>() / r.len() as f64;
        let (before, now) = (mean(&rates[0]), mean(&rates[1]));
        println!(
            "{load:<34} before {before:>7.0} tasks/s, now {now:>7.0} tasks/s = {:.3}x: attempts and logs cost {:.1}% (target < 10%)",
            now / before,
            (1.0 - now / before) * 100.0
        );
    }
}

/// Tasks/s of `tasks` tasks made by `task` on a fresh host run by `binary`.
async fn one_round(client: &reqwest::Client, binary: &Path, tasks: usize, task: TaskOf) -> f64 {
    let scratch = match std::env::var_os("TASKFLOW_LOAD_DIR") {
        Some(dir) => tempfile::tempdir_in(dir).expect("tempdir in TASKFLOW_LOAD_DIR"),
        None => tempfile::tempdir().expect("tempdir"),
    };
    let plugins = scratch.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugin dir");
    let flaky = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist/flaky.wasm");
    std::fs::copy(&flaky, plugins.join("flaky.wasm"))
        .unwrap_or_else(|e| panic!("{}: {e} (run plugins/build.sh first)", flaky.display()));
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let host = start_host_of(binary, client, scratch.path(), port, &[], &[]).await;
    let rate = measure_tasks(
        client,
        std::slice::from_ref(&url),
        tasks,
        BATCH,
        task,
        || completed(client, &url),
    )
    .await;
    drop(host);
    rate
}

/// The host executable built from `revision`, compiled on first use.
fn baseline_binary(revision: &str) -> PathBuf {
    let repository = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let commit = git(
        &repository,
        &["rev-parse", "--verify", &format!("{revision}^{{commit}}")],
    );
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("history-baseline");
    let binary = root.join(format!("taskflow-{commit}"));
    if binary.exists() {
        return binary;
    }
    let source = root.join(format!("src-{commit}"));
    if source.exists() {
        std::fs::remove_dir_all(&source).expect("remove a partial source tree");
    }
    std::fs::create_dir_all(&source).expect("source dir");
    let mut archive = Command::new("git")
        .arg("-C")
        .arg(&repository)
        .args(["archive", "--format=tar", &commit])
        .stdout(Stdio::piped())
        .spawn()
        .expect("git archive");
    let unpacked = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&source)
        .stdin(archive.stdout.take().expect("archive output"))
        .status()
        .expect("tar");
    let archived = archive.wait().expect("git archive");
    assert!(
        archived.success() && unpacked.success(),
        "cannot unpack {commit}"
    );
    eprintln!("building the baseline host of {commit} (once; minutes)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .current_dir(&source)
        .env("CARGO_TARGET_DIR", root.join("target"))
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "taskflow-host",
            "--bin",
            "taskflow",
        ])
        .status()
        .expect("cargo build");
    assert!(
        built.success(),
        "cannot build the baseline host of {commit}"
    );
    std::fs::copy(root.join("target/release/taskflow"), &binary).expect("keep the baseline");
    std::fs::remove_dir_all(&source).expect("remove the source tree");
    binary
}

/// What `git args` prints in `repository`, trimmed.
fn git(repository: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(repository)
        .args(args)
        .output()
        .expect("git");
    assert!(
        output.status.success(),
        "git {args:?}: {} (the baseline needs this repository's history: a full clone)",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}
