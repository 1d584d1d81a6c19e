//! The real `taskflow` binary as an operator runs it: the quick start, crash
//! safety under SIGKILL, graceful SIGTERM, the compile cache across restarts.

use std::collections::HashMap;
use std::process::Command;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use taskflow_tests::process::{HostProcess, LONG, free_port};
use taskflow_tests::{
    fixture_wasm, install_plugins, list_all, poll_json, taskflow_binary, workspace_root,
};

/// The README's quick start: `serve --plugin-dir plugins/dist` on the
/// embedded default, then its curl example.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_quick_start_completes_its_example_task() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let mut serve = Command::new(taskflow_binary());
    serve
        .args(["serve", "--plugin-dir"])
        .arg(workspace_root().join("plugins/dist"))
        .current_dir(cwd.path());
    let host = HostProcess::launch(serve, free_port()).await;
    let client = reqwest::Client::new();

    let response = client
        .post(format!("{}/tasks", host.url))
        .header("content-type", "application/json")
        .body(
            r#"{"plugin": "wordcount", "payload": {"text": "the cat and the hat"}, "priority": 1}"#,
        )
        .send()
        .await
        .expect("submit");
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    let location = response.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let task = poll_json(&client, &format!("{}{location}", host.url), LONG, |t| {
        t["status"] == "completed"
    })
    .await;
    let result = &task["result"]["value"];
    assert_eq!(
        (
            result["lines"].as_u64(),
            result["words"].as_u64(),
            result["chars"].as_u64()
        ),
        (Some(1), Some(5), Some(19)),
        "{task}"
    );
    assert_eq!(result["top_words"][0], json!({"word": "the", "count": 2}));
    assert_eq!(task["plugin_digest"].as_str().map(str::len), Some(64));
    assert!(
        cwd.path().join("taskflow-data/tasks").is_dir(),
        "the embedded default keeps its data in ./taskflow-data"
    );
    host.kill();
}

/// Workers of every host these tests start (`HostProcess::start`).
const WORKERS: u64 = 2;

/// Submits `count` hash tasks in one batch; returns their ids once the host
/// has answered 202.
async fn submit_hash_batch(
    client: &reqwest::Client,
    url: &str,
    tag: &str,
    count: usize,
) -> Vec<String> {
    let tasks: Vec<Value> = (0..count)
        .map(|i| json!({"plugin": "hash", "payload": {"data": format!("{tag}-{i}"), "rounds": 20_000}, "priority": 1 + (i % 10)}))
        .collect();
    let response = client
        .post(format!("{url}/tasks/batch"))
        .json(&json!({"tasks": tasks}))
        .send()
        .await
        .expect("batch");
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    let body: Value = response.json().await.expect("json");
    body["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_owned())
        .collect()
}

/// The completed tasks of a host, by id.
async fn completed(client: &reqwest::Client, url: &str) -> HashMap<String, Value> {
    list_all(client, url, "status=completed")
        .await
        .into_iter()
        .map(|t| (t["id"].as_str().expect("id").to_owned(), t))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_accepted_task_is_lost_and_none_runs_again_when_the_host_is_killed() {
    let data = tempfile::tempdir().expect("tempdir");
    install_plugins(&data.path().join("plugins"), &["hash"]);
    let port = free_port();
    let client = reqwest::Client::new();
    let mut accepted = Vec::new();
    let mut kills_while_running = 0;

    // Killed the instant a batch's 202 arrived: the batch must be on disk.
    let host = HostProcess::start(data.path(), port).await;
    accepted.extend(submit_hash_batch(&client, &host.url, "a", 500).await);
    host.kill();
    kills_while_running += 1;

    // Killed mid-run, with completions recorded just before the kill.
    let host = HostProcess::start(data.path(), port).await;
    accepted.extend(submit_hash_batch(&client, &host.url, "b", 500).await);
    poll_json(&client, &format!("{}/stats", host.url), LONG, |s| {
        s["system"]["tasks"]["completed"].as_u64() >= Some(100)
    })
    .await;
    let done_before_kill = completed(&client, &host.url).await;
    host.kill();
    kills_while_running += 1;
    assert!(
        done_before_kill.len() < accepted.len(),
        "the kill must land mid-run to mean anything"
    );

    // Killed the instant a single submission's 202 arrived.
    let host = HostProcess::start(data.path(), port).await;
    let response = client
        .post(format!("{}/tasks", host.url))
        .json(&json!({"plugin": "hash", "payload": {"data": "last", "rounds": 20_000}}))
        .send()
        .await
        .expect("submit");
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    let last: Value = response.json().await.expect("json");
    host.kill();
    kills_while_running += 1;
    accepted.push(last["id"].as_str().expect("id").to_owned());

    let host = HostProcess::start(data.path(), port).await;
    let total = accepted.len() as u64;
    let done = poll_json(&client, &format!("{}/stats", host.url), LONG, |s| {
        s["system"]["tasks"]["completed"] == total
    })
    .await;
    assert_eq!(done["system"]["tasks"]["failed"], 0, "{done}");
    let after = completed(&client, &host.url).await;
    let mut attempts = 0;
    for id in &accepted {
        let task = after
            .get(id)
            .unwrap_or_else(|| panic!("accepted task {id} is not completed"));
        assert_eq!(task["result"]["value"]["rounds"], 20_000, "{task}");
        attempts += task["attempts"].as_u64().expect("attempts");
    }
    // What had completed before the kill did not run again.
    for (id, before) in &done_before_kill {
        let now = &after[id];
        assert_eq!(
            (&now["finished_at"], &now["attempts"]),
            (&before["finished_at"], &before["attempts"]),
            "task {id} ran again"
        );
    }
    assert!(done_before_kill.values().any(|t| t["attempts"] == 1));
    // Only a task running at a kill may have run twice.
    assert!(
        attempts <= total + WORKERS * kills_while_running,
        "{attempts} attempts for {total} tasks and {kills_while_running} kills of {WORKERS} workers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_running_task_finish_and_exits_cleanly() {
    let data = tempfile::tempdir().expect("tempdir");
    let plugins = data.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugin dir");
    std::fs::copy(fixture_wasm("hostile"), plugins.join("hostile.wasm")).expect("copy fixture");
    let host = HostProcess::start(data.path(), free_port()).await;
    let client = reqwest::Client::new();
    // A task of a known length: two seconds blocked in a host call.
    let task: Value = client
        .post(format!("{}/tasks", host.url))
        .json(&json!({"plugin": "hostile", "payload": {"mode": "sleep", "seconds": 2}}))
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("json");
    let id = task["id"].as_str().expect("id").to_owned();
    poll_json(&client, &format!("{}/tasks/{id}", host.url), LONG, |t| {
        t["status"] == "running"
    })
    .await;
    let signalled_at = Utc::now();
    let status = host.terminate();
    assert!(status.success(), "exit status {status}");

    // It was running when the signal came, finished after it, before the
    // host exited, and is on disk as completed after its one attempt.
    let host = HostProcess::start(data.path(), free_port()).await;
    let task: Value = client
        .get(format!("{}/tasks/{id}", host.url))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["result"]["value"], "woke up", "{task}");
    assert_eq!(
        task["attempts"], 1,
        "it was not interrupted and rerun: {task}"
    );
    let at = |field: &str| {
        task[field]
            .as_str()
            .and_then(|t| t.parse::<DateTime<Utc>>().ok())
            .expect("timestamp")
    };
    assert!(
        at("started_at") < signalled_at && at("finished_at") > signalled_at,
        "{task} (signal at {signalled_at})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_compile_in_a_child_process_once_and_load_from_the_cache_after_a_restart() {
    let data = tempfile::tempdir().expect("tempdir");
    let names = ["echo", "wordcount", "hash", "flaky"];
    install_plugins(&data.path().join("plugins"), &names);
    let client = reqwest::Client::new();
    let n = names.len() as u64;

    let host = HostProcess::start(data.path(), free_port()).await;
    let registry = host.stats(&client).await["host"]["registry"].clone();
    assert_eq!(
        (
            &registry["compiled"],
            &registry["compiled_in_child"],
            &registry["cache_hits"]
        ),
        (&json!(n), &json!(n), &json!(0)),
        "{registry}"
    );
    host.kill();

    let host = HostProcess::start(data.path(), free_port()).await;
    let stats = host.stats(&client).await;
    let registry = &stats["host"]["registry"];
    assert_eq!(
        (
            &registry["compiled"],
            &registry["cache_hits"],
            &registry["loaded"]
        ),
        (&json!(0), &json!(n), &json!(n)),
        "{registry}"
    );
    let task = run_to_completion(
        &client,
        &host.url,
        json!({"plugin": "wordcount", "payload": {"text": "a b"}}),
    )
    .await;
    assert_eq!(
        task["result"]["value"]["words"], 2,
        "a plugin loaded from the cache runs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_log_lines_and_panic_messages_reach_the_host_log_with_the_task_id() {
    let data = tempfile::tempdir().expect("tempdir");
    let plugins = data.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugin dir");
    std::fs::copy(fixture_wasm("hostile"), plugins.join("hostile.wasm")).expect("copy fixture");
    let log = data.path().join("host.log");
    let host = HostProcess::start_logging(data.path(), free_port(), &log).await;
    let client = reqwest::Client::new();
    let task = run_until(
        &client,
        &host.url,
        json!({"plugin": "hostile", "payload": {"mode": "panic"}, "max_attempts": 1}),
        "failed",
    )
    .await;
    assert_eq!(task["last_error"]["kind"], "trap", "{task}");
    let id = task["id"].as_str().expect("id").to_owned();
    host.kill();

    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .expect("log")
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let of_task = |needle: &str| {
        lines.iter().any(|line| {
            line["task_id"] == id.as_str()
                && line["message"].as_str().is_some_and(|m| m.contains(needle))
        })
    };
    assert!(
        of_task("the hostile fixture is about to panic"),
        "the plugin's log line, with its task id, is in the host log"
    );
    assert!(
        of_task("deliberate panic in the hostile fixture"),
        "the panic message, with its task id, is in the host log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_plugin_serves_over_http_reloads_and_logs_with_the_task_id() {
    let data = tempfile::tempdir().expect("tempdir");
    let plugins = data.path().join("plugins");
    install_plugins(&plugins, &["echo"]);
    // `tmpl` is the Rust echo at first; the JavaScript renderer takes its place below.
    std::fs::copy(plugins.join("echo.wasm"), plugins.join("tmpl.wasm")).expect("copy");
    let log = data.path().join("host.log");
    let host = HostProcess::start_logging(data.path(), free_port(), &log).await;
    let client = reqwest::Client::new();
    let submit = |body: Value| {
        let (client, url) = (client.clone(), format!("{}/tasks", host.url));
        async move {
            let response = client.post(url).json(&body).send().await.expect("submit");
            assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
            response.json::<Value>().await.expect("json")["id"]
                .as_str()
                .expect("id")
                .to_owned()
        }
    };
    let finished = |id: String| {
        let (client, url) = (client.clone(), format!("{}/tasks/{id}", host.url));
        async move {
            poll_json(&client, &url, LONG, |t| {
                matches!(t["status"].as_str(), Some("completed" | "failed"))
            })
            .await
        }
    };
    let payload = json!({"template": "Hi {{name}}!", "data": {"name": "Ada"}});
    let before = finished(submit(json!({"plugin": "tmpl", "payload": payload})).await).await;
    assert_eq!(
        before["result"]["value"], payload,
        "echo served first: {before}"
    );

    // Hot reload: the JavaScript component written over the file.
    let render = taskflow_tests::plugin_wasm("render");
    std::fs::copy(&render, plugins.join("tmpl.wasm")).expect("write the new version");
    let digest = taskflow_tests::file_digest(&render);
    poll_json(&client, &format!("{}/plugins", host.url), LONG, |list| {
        list["plugins"].as_array().is_some_and(|l| {
            l.iter()
                .any(|p| p["name"] == "tmpl" && p["digest"] == digest.as_str())
        })
    })
    .await;
    let id = submit(json!({"plugin": "tmpl", "payload": payload})).await;
    let done = finished(id.clone()).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["result"]["value"],
        json!({"text": "Hi Ada!", "language": "javascript"})
    );
    assert_eq!(done["plugin_digest"], digest.as_str());

    let bad = finished(
        submit(
            json!({"plugin": "tmpl", "payload": {"template": "Hi {{nobody}}"}, "max_attempts": 3}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (&bad["status"], &bad["attempts"], &bad["last_error"]["kind"]),
        (&json!("failed"), &json!(1), &json!("invalid_input")),
        "{bad}"
    );
    assert!(
        bad["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no value for {{nobody}}")),
        "{bad}"
    );
    host.kill();

    let logged = std::fs::read_to_string(&log)
        .expect("log")
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .any(|line| {
            line["task_id"] == id.as_str()
                && line["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("rendering a template of 12 characters"))
        });
    assert!(
        logged,
        "the plugin's log line, with its task id, is in the host log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiling_an_interpreter_plugin_does_not_stall_tasks_on_other_plugins() {
    let data = tempfile::tempdir().expect("tempdir");
    let plugins = data.path().join("plugins");
    install_plugins(&plugins, &["echo"]);
    let client = reqwest::Client::new();
    let host = HostProcess::start(data.path(), free_port()).await;
    let loaded = |client: reqwest::Client, url: String| async move {
        let list: Value = client
            .get(format!("{url}/plugins"))
            .send()
            .await
            .expect("plugins")
            .json()
            .await
            .expect("json");
        list["plugins"]
            .as_array()
            .is_some_and(|all| all.iter().any(|p| p["name"] == "python"))
    };

    // The 18 MB Python component, new to this host: seconds of compiling.
    std::fs::copy(
        taskflow_tests::plugin_wasm("greeter"),
        plugins.join("python.wasm"),
    )
    .expect("copy");
    let (mut during, mut slowest) = (0, std::time::Duration::ZERO);
    while !loaded(client.clone(), host.url.clone()).await {
        let started = std::time::Instant::now();
        run_to_completion(
            &client,
            &host.url,
            json!({"plugin": "echo", "payload": {"n": during}}),
        )
        .await;
        slowest = slowest.max(started.elapsed());
        during += 1;
    }
    assert!(
        during >= 3,
        "the compile ended after {during} echo tasks: too quick to show anything"
    );
    assert!(
        slowest < std::time::Duration::from_secs(2),
        "an echo task took {slowest:?} while the Python plugin compiled"
    );
    host.kill();
}

/// Submits `task` to the host at `url` and waits until it has completed.
async fn run_to_completion(client: &reqwest::Client, url: &str, task: Value) -> Value {
    run_until(client, url, task, "completed").await
}

/// Submits `task` to the host at `url` and waits until it is in `status`.
async fn run_until(client: &reqwest::Client, url: &str, task: Value, status: &str) -> Value {
    let response = client
        .post(format!("{url}/tasks"))
        .json(&task)
        .send()
        .await
        .expect("submit");
    let id = response.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    poll_json(client, &format!("{url}/tasks/{id}"), LONG, |t| {
        t["status"] == status
    })
    .await
}
