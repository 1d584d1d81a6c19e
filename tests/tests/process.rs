//! The real `taskflow` binary as an operator and a user run it: crash
//! safety under SIGKILL, graceful SIGTERM, and the CLI.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use taskflow_tests::{install_plugins, poll_json, taskflow_binary, workspace_root};

const LONG: Duration = Duration::from_secs(120);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A `taskflow serve` child process.
struct HostProcess {
    child: Child,
    url: String,
}

impl HostProcess {
    async fn start(data: &Path, port: u16) -> Self {
        let mut serve = Command::new(taskflow_binary());
        serve.args(["serve", "--workers", "2", "--log-format", "json"]).arg("--data-dir").arg(data);
        Self::launch(serve, port).await
    }

    /// Runs `serve` (its settings but the address) on `port`; returns once it answers.
    async fn launch(mut serve: Command, port: u16) -> Self {
        let child = serve
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn taskflow serve");
        let url = format!("http://127.0.0.1:{port}");
        poll_json(&reqwest::Client::new(), &format!("{url}/health"), LONG, |body| body["status"] == "ok").await;
        Self { child, url }
    }

    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill -TERM");
        assert!(status.success());
        let deadline = Instant::now() + LONG;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "host did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn stats(client: &reqwest::Client, url: &str) -> Value {
    client.get(format!("{url}/stats")).send().await.expect("stats").json().await.expect("json")
}

/// The README's quick start: `serve --plugin-dir plugins/dist` on the
/// embedded default, then its curl example.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_quick_start_completes_its_example_task() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let mut serve = Command::new(taskflow_binary());
    serve.args(["serve", "--plugin-dir"]).arg(workspace_root().join("plugins/dist")).current_dir(cwd.path());
    let host = HostProcess::launch(serve, free_port()).await;
    let client = reqwest::Client::new();

    let response = client
        .post(format!("{}/tasks", host.url))
        .header("content-type", "application/json")
        .body(r#"{"plugin": "wordcount", "payload": {"text": "the cat and the hat"}, "priority": 1}"#)
        .send()
        .await
        .expect("submit");
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().expect("location").to_owned();
    let task = poll_json(&client, &format!("{}{location}", host.url), LONG, |t| t["status"] == "completed").await;
    let result = &task["result"]["value"];
    assert_eq!((result["lines"].as_u64(), result["words"].as_u64(), result["chars"].as_u64()), (Some(1), Some(5), Some(19)), "{task}");
    assert_eq!(result["top_words"][0], json!({"word": "the", "count": 2}));
    assert_eq!(task["plugin_digest"].as_str().map(str::len), Some(64));
    assert!(cwd.path().join("taskflow-data/tasks").is_dir(), "the embedded default keeps its data in ./taskflow-data");
    host.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_accepted_task_is_lost_when_the_host_is_killed() {
    let data = tempfile::tempdir().expect("tempdir");
    install_plugins(&data.path().join("plugins"), &["hash", "echo"]);
    let port = free_port();
    let host = HostProcess::start(data.path(), port).await;
    let client = reqwest::Client::new();

    // 1,000 tasks that each take a moment, so the kill lands mid-run.
    let mut accepted = Vec::new();
    for batch in 0..10 {
        let tasks: Vec<Value> = (0..100)
            .map(|i| json!({"plugin": "hash", "payload": {"data": format!("{batch}-{i}"), "rounds": 20_000}, "priority": 1 + (i % 10)}))
            .collect();
        let response = client.post(format!("{}/tasks/batch", host.url)).json(&json!({"tasks": tasks})).send().await.expect("batch");
        assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
        let body: Value = response.json().await.expect("json");
        accepted.extend(body["tasks"].as_array().expect("tasks").iter().map(|t| t["id"].as_str().expect("id").to_owned()));
    }
    assert_eq!(accepted.len(), 1000);
    poll_json(&client, &format!("{}/stats", host.url), LONG, |s| s["tasks"]["completed"].as_u64() >= Some(50)).await;
    let before_kill = stats(&client, &host.url).await;
    host.kill();
    assert!(
        before_kill["tasks"]["completed"].as_u64() < Some(1000),
        "the kill must land mid-run to mean anything: {before_kill}"
    );

    let host = HostProcess::start(data.path(), port).await;
    let done = poll_json(&client, &format!("{}/stats", host.url), LONG, |s| s["tasks"]["completed"] == 1000).await;
    assert_eq!(done["tasks"]["failed"], 0, "{done}");
    for id in &accepted {
        let task: Value = client.get(format!("{}/tasks/{id}", host.url)).send().await.expect("get").json().await.expect("json");
        assert_eq!(task["status"], "completed", "{task}");
        assert_eq!(task["result"]["value"]["rounds"], 20_000);
    }
    host.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_running_tasks_finish_and_exits_cleanly() {
    let data = tempfile::tempdir().expect("tempdir");
    install_plugins(&data.path().join("plugins"), &["hash"]);
    let host = HostProcess::start(data.path(), free_port()).await;
    let client = reqwest::Client::new();
    let task: Value = client
        .post(format!("{}/tasks", host.url))
        .json(&json!({"plugin": "hash", "payload": {"data": "x", "rounds": 1_000_000}}))
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("json");
    let id = task["id"].as_str().expect("id").to_owned();
    poll_json(&client, &format!("{}/tasks/{id}", host.url), LONG, |t| t["status"] != "pending").await;
    let status = host.terminate();
    assert!(status.success(), "exit status {status}");

    // The task finished before the host exited, and is on disk as completed.
    let host = HostProcess::start(data.path(), free_port()).await;
    let task: Value = client.get(format!("{}/tasks/{id}", host.url)).send().await.expect("get").json().await.expect("json");
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["attempts"], 1, "it was not interrupted and rerun");
}

fn cli(url: &str, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(taskflow_binary())
        .args(args)
        .env("TASKFLOW_SERVER", url)
        .stdin(Stdio::null())
        .output()
        .expect("run taskflow");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_submits_reads_backs_up_and_restores() {
    let data = tempfile::tempdir().expect("tempdir");
    install_plugins(&data.path().join("plugins"), &["echo", "wordcount"]);
    let host = HostProcess::start(data.path(), free_port()).await;
    let url = host.url.clone();

    let (ok, out, err) = cli(&url, &["submit", "wordcount", "--payload", r#"{"text": "a b a"}"#, "--priority", "1", "--wait"]);
    assert!(ok, "{err}");
    let task: Value = serde_json::from_str(&out).expect("submit prints the task as JSON");
    assert_eq!(task["status"], "completed");
    assert_eq!(task["result"]["value"]["words"], 3);
    let id = task["id"].as_str().expect("id");

    let (ok, out, _) = cli(&url, &["get", id]);
    assert!(ok && out.contains("\"completed\""), "{out}");
    let (ok, out, _) = cli(&url, &["list", "--status", "completed"]);
    assert!(ok && out.contains(id), "{out}");
    let (ok, out, _) = cli(&url, &["plugins", "list"]);
    assert!(ok && out.contains("wordcount") && out.contains("echo"), "{out}");
    let (ok, out, _) = cli(&url, &["stats"]);
    assert!(ok && out.contains("\"completed\": 1"), "{out}");

    let jsonl = data.path().join("tasks.jsonl");
    let lines: Vec<String> = (0..1200).map(|i| json!({"plugin": "echo", "payload": i}).to_string()).collect();
    std::fs::write(&jsonl, lines.join("\n")).expect("write jsonl");
    let (ok, out, err) = cli(&url, &["submit", "--file", jsonl.to_str().expect("utf-8")]);
    assert!(ok && out.contains("submitted 1200 tasks"), "{out}{err}");
    let client = reqwest::Client::new();
    poll_json(&client, &format!("{url}/stats"), LONG, |s| s["tasks"]["completed"] == 1201).await;

    let backup = data.path().join("backup.json");
    let (ok, out, err) = cli(&url, &["backup", "--output", backup.to_str().expect("utf-8")]);
    assert!(ok && out.contains("backed up 1201 tasks"), "{out}{err}");

    // Restore into a fresh host with an empty data directory.
    let empty = tempfile::tempdir().expect("tempdir");
    install_plugins(&empty.path().join("plugins"), &["echo", "wordcount"]);
    let fresh = HostProcess::start(empty.path(), free_port()).await;
    let (ok, out, err) = cli(&fresh.url, &["restore", backup.to_str().expect("utf-8")]);
    assert!(ok && out.contains("restored 1201 tasks"), "{out}{err}");
    let (ok, out, _) = cli(&fresh.url, &["get", id]);
    assert!(ok && out.contains("\"completed\""), "{out}");

    // Clear errors: bad arguments, bad ids, a server that is not there.
    let (ok, _, err) = cli(&url, &["submit", "echo", "--payload", "{oops"]);
    assert!(!ok && err.contains("--payload is not valid JSON"), "{err}");
    let (ok, _, err) = cli(&url, &["get", "../etc/passwd"]);
    assert!(!ok && err.contains("not a task id"), "{err}");
    let (ok, _, err) = cli(&format!("http://127.0.0.1:{}", free_port()), &["stats"]);
    assert!(!ok && err.contains("cannot reach the TaskFlow server"), "{err}");
    drop(fresh);
    drop(host);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let data = tempfile::tempdir().expect("tempdir");
    install_plugins(&data.path().join("plugins"), &["echo", "wordcount", "hash", "flaky"]);
    let host = HostProcess::start(data.path(), free_port()).await;
    // Every check but `positive_data_acceptance`: a schema cannot say which
    // plugins are loaded, so a schema-valid task naming an unknown plugin is
    // rightly refused with 422.
    let output = Command::new("schemathesis")
        .args(["run", &format!("{}/openapi.json", host.url), "--checks", "all"])
        .args(["--exclude-checks", "positive_data_acceptance", "--max-examples", "40", "--no-color", "--seed", "20261128"])
        .stdin(Stdio::null())
        .output()
        .expect("schemathesis must be installed (tests/run.sh installs it from PyPI)");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "schemathesis found problems:\n{report}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(report.contains("passed"), "{report}");
    drop(host);
}
