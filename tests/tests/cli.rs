//! The `taskflow` command as a user runs it against a real host process.

use serde_json::{Value, json};
use taskflow_tests::process::{CliRun, HostProcess, LONG, cli, cli_env, free_port};
use taskflow_tests::{fixture_wasm, install_plugins, plugin_wasm, poll_json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_submits_reads_backs_up_and_restores() {
    let data = tempfile::tempdir().expect("tempdir");
    install_plugins(&data.path().join("plugins"), &["echo", "wordcount"]);
    let host = HostProcess::start(data.path(), free_port()).await;
    let url = Some(host.url.as_str());

    let run = cli(
        url,
        &[
            "submit",
            "wordcount",
            "--payload",
            r#"{"text": "a b a"}"#,
            "--priority",
            "1",
            "--wait",
        ],
    );
    assert!(run.ok, "{run:?}");
    let task: Value = serde_json::from_str(&run.stdout).expect("submit prints the task as JSON");
    assert_eq!(task["status"], "completed");
    assert_eq!(task["result"]["value"]["words"], 3);
    let id = task["id"].as_str().expect("id");

    let run = cli(url, &["get", id]);
    assert!(run.ok && run.stdout.contains("\"completed\""), "{run:?}");
    let run = cli(url, &["list", "--status", "completed"]);
    assert!(run.ok && run.stdout.contains(id), "{run:?}");
    let run = cli(url, &["plugins", "list"]);
    assert!(
        run.ok && run.stdout.contains("wordcount") && run.stdout.contains("echo"),
        "{run:?}"
    );
    let run = cli(url, &["stats"]);
    assert!(run.ok && run.stdout.contains("\"completed\": 1"), "{run:?}");

    let jsonl = data.path().join("tasks.jsonl");
    let lines: Vec<String> = (0..1200)
        .map(|i| json!({"plugin": "echo", "payload": i}).to_string())
        .collect();
    std::fs::write(&jsonl, lines.join("\n")).expect("write jsonl");
    let run = cli(url, &["submit", "--file", jsonl.to_str().expect("utf-8")]);
    assert!(
        run.ok && run.stdout.contains("submitted 1200 tasks"),
        "{run:?}"
    );
    let client = reqwest::Client::new();
    poll_json(&client, &format!("{}/stats", host.url), LONG, |s| {
        s["system"]["tasks"]["completed"] == 1201
    })
    .await;

    let backup = data.path().join("backup.json");
    let run = cli(
        url,
        &["backup", "--output", backup.to_str().expect("utf-8")],
    );
    assert!(
        run.ok && run.stdout.contains("backed up 1201 tasks"),
        "{run:?}"
    );

    // Restore into a fresh host with an empty data directory.
    let empty = tempfile::tempdir().expect("tempdir");
    install_plugins(&empty.path().join("plugins"), &["echo", "wordcount"]);
    let fresh = HostProcess::start(empty.path(), free_port()).await;
    let run = cli(
        Some(&fresh.url),
        &["restore", backup.to_str().expect("utf-8")],
    );
    assert!(
        run.ok && run.stdout.contains("restored 1201 tasks"),
        "{run:?}"
    );
    let run = cli(Some(&fresh.url), &["get", id]);
    assert!(run.ok && run.stdout.contains("\"completed\""), "{run:?}");

    // Clear errors: bad arguments, bad ids, a server that is not there.
    let run = cli(url, &["submit", "echo", "--payload", "{oops"]);
    assert!(
        !run.ok && run.stderr.contains("--payload is not valid JSON"),
        "{run:?}"
    );
    let run = cli(url, &["get", "../etc/passwd"]);
    assert!(!run.ok && run.stderr.contains("not a task id"), "{run:?}");
    let run = cli(
        Some(&format!("http://127.0.0.1:{}", free_port())),
        &["stats"],
    );
    assert!(
        !run.ok && run.stderr.contains("cannot reach the TaskFlow server"),
        "{run:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_shows_each_attempt_and_follows_a_retry_to_its_end() {
    let data = tempfile::tempdir().expect("tempdir");
    install_plugins(&data.path().join("plugins"), &["flaky"]);
    let host = HostProcess::start(data.path(), free_port()).await;
    let url = Some(host.url.as_str());

    let run = cli(
        url,
        &[
            "submit",
            "flaky",
            "--payload",
            r#"{"succeed_on_attempt": 2}"#,
            "--max-attempts",
            "1",
            "--wait",
        ],
    );
    let id = submitted(&run);
    let run = cli(url, &["logs", &id]);
    assert!(run.ok, "{run:?}");
    assert!(
        run.stdout.contains("── attempt 1 · failed · ")
            && run
                .stdout
                .contains("retryable: attempt 1 of a task set to succeed on attempt 2")
            && run
                .stdout
                .contains("info   attempt 1, set to succeed on attempt 2")
            && run.stdout.contains("stdout flaky stdout of attempt 1"),
        "{run:?}"
    );

    // A retry by request, followed to its end: the second attempt's lines.
    let retried = printed(&cli(url, &["retry", &id]));
    assert_eq!(retried["status"], "pending", "{retried}");
    let run = cli(url, &["logs", &id, "--follow"]);
    assert!(run.ok, "{run:?}");
    assert!(
        run.stdout.contains("── attempt 2 · completed · ")
            && run
                .stdout
                .contains("info   attempt 2, set to succeed on attempt 2"),
        "{run:?}"
    );
    let json = printed(&cli(url, &["logs", &id, "--json"]));
    assert_eq!(json["history"].as_array().map(Vec::len), Some(2), "{json}");
    let run = cli(url, &["retry", &id]);
    assert!(
        !run.ok
            && run
                .stderr
                .contains("only a failed or cancelled task can be retried"),
        "{run:?}"
    );
}

/// `logs --follow` on a task logging faster than it polls: the newest lines
/// show while it runs, what it passed over is said, and the whole log's
/// remaining lines come when it ends; no line twice, none unaccounted for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_keeps_up_with_a_long_log() {
    let data = tempfile::tempdir().expect("tempdir");
    let plugins = data.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugins dir");
    std::fs::copy(fixture_wasm("hostile"), plugins.join("hostile.wasm")).expect("copy hostile");
    let host = HostProcess::start(data.path(), free_port()).await;
    let url = Some(host.url.as_str());

    const N: usize = 3_000;
    let payload = format!(r#"{{"mode": "chatty", "n": {N}, "millis": 1}}"#);
    let id = submitted(&cli(url, &["submit", "hostile", "--payload", &payload]));
    let run = cli(url, &["logs", &id, "--follow"]);
    assert!(run.ok, "{run:?}");
    let (mut numbers, mut passed_over) = (Vec::new(), 0);
    for line in run.stdout.lines() {
        if let Some(rest) = line.strip_prefix("… ") {
            let count = rest.split(' ').next().and_then(|n| n.parse::<usize>().ok());
            passed_over += count.unwrap_or_else(|| panic!("a count: {line}"));
        } else if let Some(at) = line
            .ends_with(&format!(" of {N}"))
            .then(|| line.rfind("line "))
            .flatten()
        {
            let number = line[at + 5..]
                .split(' ')
                .next()
                .and_then(|n| n.parse::<usize>().ok());
            numbers.push(number.unwrap_or_else(|| panic!("a line number: {line}")));
        }
    }
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "in order, none twice: {numbers:?}"
    );
    assert_eq!(numbers.last(), Some(&N), "{run:?}");
    assert_eq!(
        numbers.len() + passed_over,
        N,
        "every line printed or said passed over"
    );
    assert!(
        run.stdout.contains("── attempt 1 · completed · "),
        "{run:?}"
    );
}

/// The task a `submit` printed; its id.
fn submitted(run: &CliRun) -> String {
    assert!(run.ok, "{run:?}");
    let task: Value = serde_json::from_str(&run.stdout).expect("submit prints the task as JSON");
    task["id"].as_str().expect("id").to_owned()
}

fn printed(run: &CliRun) -> Value {
    assert!(run.ok, "{run:?}");
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {run:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_takes_a_pending_task_off_the_queue_and_interrupts_a_running_one() {
    let data = tempfile::tempdir().expect("tempdir");
    let plugins = data.path().join("plugins");
    install_plugins(&plugins, &["echo"]);
    std::fs::copy(fixture_wasm("hostile"), plugins.join("hostile.wasm")).expect("copy fixture");
    let host = HostProcess::start_with(data.path(), free_port(), &["--workers", "1"]).await;
    let url = Some(host.url.as_str());
    let client = reqwest::Client::new();

    // The only worker spins on this one until its timeout, ten minutes away.
    let blocker = submitted(&cli(
        url,
        &[
            "submit",
            "hostile",
            "--payload",
            r#"{"mode": "loop"}"#,
            "--timeout-ms",
            "600000",
            "--max-attempts",
            "1",
        ],
    ));
    poll_json(
        &client,
        &format!("{}/tasks/{blocker}", host.url),
        LONG,
        |t| t["status"] == "running",
    )
    .await;
    let pending = submitted(&cli(url, &["submit", "echo", "--payload", r#"{"n": 1}"#]));
    assert_eq!(printed(&cli(url, &["get", &pending]))["status"], "pending");

    let cancelled = printed(&cli(url, &["cancel", &pending]));
    assert_eq!(
        (cancelled["id"].as_str(), cancelled["status"].as_str()),
        (Some(pending.as_str()), Some("cancelled")),
        "{cancelled}"
    );
    let stored: Value = client
        .get(format!("{}/tasks/{pending}", host.url))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(stored["status"], "cancelled", "{stored}");
    assert_eq!(stored["attempts"], 0, "it never ran: {stored}");
    assert_eq!(host.stats(&client).await["system"]["tasks"]["cancelled"], 1);

    // A finished task cannot be cancelled: a clear refusal.
    let run = cli(url, &["cancel", &pending]);
    assert!(
        !run.ok
            && run.stderr.contains("409")
            && run
                .stderr
                .contains("only pending or running tasks can be cancelled"),
        "{run:?}"
    );

    // The running one is interrupted, and the worker is free again.
    assert!(cli(url, &["cancel", &blocker]).ok);
    poll_json(
        &client,
        &format!("{}/tasks/{blocker}", host.url),
        LONG,
        |t| t["status"] == "cancelled",
    )
    .await;
    let after = printed(&cli(
        url,
        &["submit", "echo", "--payload", r#"{"n": 2}"#, "--wait"],
    ));
    assert_eq!(after["status"], "completed", "{after}");
    assert_eq!(
        printed(&cli(url, &["get", &pending]))["status"],
        "cancelled",
        "the cancelled task never ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_upload_and_remove_idempotency_keys_and_where_server_goes() {
    let data = tempfile::tempdir().expect("tempdir");
    install_plugins(&data.path().join("plugins"), &["echo"]);
    let host = HostProcess::start(data.path(), free_port()).await;
    let url = Some(host.url.as_str());
    let wordcount = plugin_wasm("wordcount");
    let wordcount = wordcount.to_str().expect("utf-8");

    // Upload under another name, run a task on it, remove it.
    let run = cli(url, &["plugins", "upload", wordcount, "--name", "counter"]);
    assert!(
        run.ok && run.stdout.starts_with("loaded counter ("),
        "{run:?}"
    );
    let run = cli(url, &["plugins", "list"]);
    assert!(
        run.ok
            && run
                .stdout
                .lines()
                .any(|l| l.starts_with("counter ") && l.contains("contract 0.2.0")),
        "{run:?}"
    );
    let task = printed(&cli(
        url,
        &[
            "submit",
            "counter",
            "--payload",
            r#"{"text": "a b a"}"#,
            "--wait",
        ],
    ));
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["result"]["value"]["words"], 3, "{task}");

    let run = cli(url, &["plugins", "remove", "counter"]);
    assert!(run.ok && run.stdout.trim() == "removed counter", "{run:?}");
    assert!(
        !data.path().join("plugins/counter.wasm").exists(),
        "its file is deleted"
    );
    let run = cli(url, &["plugins", "list"]);
    assert!(run.ok && !run.stdout.contains("counter"), "{run:?}");
    let run = cli(url, &["submit", "counter", "--payload", r#"{"text": "a"}"#]);
    assert!(
        !run.ok
            && run.stderr.contains("422")
            && run.stderr.contains(r#"no plugin named "counter""#),
        "{run:?}"
    );
    let run = cli(url, &["plugins", "remove", "counter"]);
    assert!(
        !run.ok && run.stderr.contains("the server refused"),
        "{run:?}"
    );

    // The same idempotency key twice: one task.
    let keyed = [
        "submit",
        "echo",
        "--payload",
        r#"{"n": 1}"#,
        "--idempotency-key",
        "order-17",
    ];
    let first = submitted(&cli(url, &keyed));
    let second = submitted(&cli(url, &keyed));
    assert_eq!(first, second, "the second submit returns the first task");
    let other = submitted(&cli(
        url,
        &[
            "submit",
            "echo",
            "--payload",
            r#"{"n": 1}"#,
            "--idempotency-key",
            "order-18",
        ],
    ));
    assert_ne!(first, other, "another key is another task");

    // --server before or after the subcommand, and over TASKFLOW_SERVER.
    let nobody = format!("http://127.0.0.1:{}", free_port());
    for args in [
        vec!["--server", host.url.as_str(), "stats"],
        vec!["stats", "--server", host.url.as_str()],
        vec!["--server", host.url.as_str(), "plugins", "list"],
        vec!["plugins", "list", "--server", host.url.as_str()],
        vec!["get", first.as_str(), "--server", host.url.as_str()],
    ] {
        let run = cli(Some(&nobody), &args);
        assert!(run.ok, "taskflow {}: {run:?}", args.join(" "));
    }
    let run = cli(Some(&nobody), &["stats"]);
    assert!(
        !run.ok
            && run.stderr.contains("cannot reach the TaskFlow server")
            && run.stderr.contains(&nobody),
        "{run:?}"
    );
    let run = cli(None, &["--server", &nobody, "stats"]);
    assert!(!run.ok && run.stderr.contains(&nobody), "{run:?}");
    let help = cli(None, &["stats", "--help"]);
    assert!(help.ok, "{help:?}");
    for expected in [
        "--server",
        "TASKFLOW_SERVER",
        "http://127.0.0.1:8080",
        "--token",
        "TASKFLOW_TOKEN",
    ] {
        assert!(
            help.stdout.contains(expected),
            "`stats --help` shows {expected}: {}",
            help.stdout
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_come_from_the_flag_or_the_environment_and_admin_commands_need_the_admin_one() {
    const API: &str = "api-token-0123456789";
    const ADMIN: &str = "admin-token-0123456789";
    let data = tempfile::tempdir().expect("tempdir");
    install_plugins(&data.path().join("plugins"), &["echo"]);
    let host = HostProcess::start_with(
        data.path(),
        free_port(),
        &["--api-token", API, "--admin-token", ADMIN],
    )
    .await;
    let url = Some(host.url.as_str());
    let echo = plugin_wasm("echo");
    let echo = echo.to_str().expect("utf-8");

    // No token: refused, and told how to give one.
    let run = cli(url, &["stats"]);
    assert!(
        !run.ok
            && run.stderr.contains("401")
            && run.stderr.contains("--token")
            && run.stderr.contains("TASKFLOW_TOKEN"),
        "{run:?}"
    );
    let run = cli(url, &["submit", "echo", "--payload", "1"]);
    assert!(!run.ok && run.stderr.contains("401"), "{run:?}");
    let run = cli(url, &["stats", "--token", "wrong-token-0123456789"]);
    assert!(
        !run.ok && run.stderr.contains("401") && run.stderr.contains("refused the token"),
        "{run:?}"
    );

    // The API token, by flag (either side of the subcommand) or variable.
    assert!(cli(url, &["stats", "--token", API]).ok);
    assert!(cli(url, &["--token", API, "stats"]).ok);
    assert!(cli_env(url, &[("TASKFLOW_TOKEN", API)], &["stats"]).ok);
    let id = submitted(&cli_env(
        url,
        &[("TASKFLOW_TOKEN", API)],
        &["submit", "echo", "--payload", "1"],
    ));
    let run = cli(url, &["get", &id, "--token", API]);
    assert!(run.ok && run.stdout.contains(&id), "{run:?}");
    // The flag wins over the variable.
    assert!(
        cli_env(
            url,
            &[("TASKFLOW_TOKEN", "wrong-token-0123456789")],
            &["stats", "--token", API]
        )
        .ok
    );

    // Plugin and backup commands need the admin token; the API token is refused.
    let backup = data.path().join("backup.json");
    let backup = backup.to_str().expect("utf-8");
    let admin_commands: [&[&str]; 3] = [
        &["plugins", "upload", echo, "--name", "echo-2"],
        &["backup", "--output", backup],
        &["plugins", "remove", "echo-2"],
    ];
    for args in admin_commands {
        let run = cli(url, &[args, &["--token", API]].concat());
        assert!(
            !run.ok && run.stderr.contains("401") && run.stderr.contains("admin token"),
            "{run:?}"
        );
    }
    assert!(!std::path::Path::new(backup).exists());
    let run = cli(
        url,
        &[
            "plugins", "upload", echo, "--name", "echo-2", "--token", ADMIN,
        ],
    );
    assert!(run.ok && run.stdout.starts_with("loaded echo-2"), "{run:?}");
    let run = cli_env(
        url,
        &[("TASKFLOW_TOKEN", ADMIN)],
        &["backup", "--output", backup],
    );
    assert!(
        run.ok && run.stdout.contains("backed up 1 tasks"),
        "{run:?}"
    );
    let run = cli_env(
        url,
        &[("TASKFLOW_TOKEN", ADMIN)],
        &["plugins", "remove", "echo-2"],
    );
    assert!(run.ok, "{run:?}");
    // The admin token also opens the ordinary endpoints.
    let run = cli(url, &["plugins", "list", "--token", ADMIN]);
    assert!(
        run.ok && run.stdout.contains("echo") && !run.stdout.contains("echo-2"),
        "{run:?}"
    );
}

#[test]
fn plugin_run_runs_one_task_locally_in_the_sandbox() {
    let wordcount = taskflow_tests::plugin_wasm("wordcount");
    let run = cli(
        None,
        &[
            "plugin",
            "run",
            wordcount.to_str().expect("utf-8"),
            "--payload",
            r#"{"text": "a b a"}"#,
        ],
    );
    assert!(run.ok, "{run:?}");
    let result: Value =
        serde_json::from_str(&run.stdout).expect("the result, as JSON, is all of stdout");
    assert_eq!(result["words"], 3);
    assert!(run.stderr.contains("completed in"), "{run:?}");

    // Progress and the plugin's own log lines reach the author, on stderr.
    let hash = taskflow_tests::plugin_wasm("hash");
    let scratch = tempfile::tempdir().expect("tempdir");
    let payload_file = scratch.path().join("payload.json");
    std::fs::write(&payload_file, r#"{"data": "x", "rounds": 1000000}"#).expect("write payload");
    let run = cli(
        None,
        &[
            "plugin",
            "run",
            hash.to_str().expect("utf-8"),
            "--payload-file",
            payload_file.to_str().expect("utf-8"),
        ],
    );
    assert!(
        run.ok
            && run
                .stderr
                .lines()
                .filter(|l| l.starts_with("progress: "))
                .count()
                >= 2,
        "progress is shown as it grows: {run:?}"
    );
    let hostile = taskflow_tests::fixture_wasm("hostile");
    let hostile = hostile.to_str().expect("utf-8");
    let run = cli(
        None,
        &[
            "--log-format",
            "pretty",
            "plugin",
            "run",
            hostile,
            "--payload",
            r#"{"mode": "panic"}"#,
        ],
    );
    assert!(!run.ok, "a failed task fails the command: {run:?}");
    assert!(
        run.stderr.contains("the hostile fixture is about to panic")
            && run.stderr.contains("deliberate panic"),
        "{run:?}"
    );
    assert!(run.stderr.contains("the task failed: trap"), "{run:?}");

    // The host's limits hold here too.
    let run = cli(
        None,
        &[
            "plugin",
            "run",
            hostile,
            "--payload",
            r#"{"mode": "loop"}"#,
            "--timeout-ms",
            "300",
        ],
    );
    assert!(
        !run.ok
            && run
                .stderr
                .contains("the task failed: timeout: task exceeded its timeout of 300 ms"),
        "{run:?}"
    );
    let run = cli(
        None,
        &[
            "plugin",
            "run",
            hostile,
            "--payload",
            r#"{"mode": "memory"}"#,
            "--memory-mb",
            "16",
        ],
    );
    assert!(!run.ok && run.stderr.contains("memory_limit"), "{run:?}");
    let run = cli(
        None,
        &[
            "plugin",
            "run",
            hostile,
            "--payload",
            r#"{"mode": "escape", "port": 9}"#,
        ],
    );
    assert!(run.ok, "{run:?}");
    let report: Value = serde_json::from_str(&run.stdout).expect("json");
    assert!(
        report["file"].get("Err").is_some() && report["env_vars"] == serde_json::json!([]),
        "{report}"
    );

    // Clear errors.
    let run = cli(None, &["plugin", "run", "no-such-file.wasm"]);
    assert!(
        !run.ok && run.stderr.contains("cannot read no-such-file.wasm"),
        "{run:?}"
    );
    let run = cli(
        None,
        &[
            "plugin",
            "run",
            wordcount.to_str().expect("utf-8"),
            "--payload",
            "{oops",
        ],
    );
    assert!(
        !run.ok && run.stderr.contains("--payload is not valid JSON"),
        "{run:?}"
    );
    let not_wasm = scratch.path().join("notes.wasm");
    std::fs::write(&not_wasm, "hello").expect("write");
    let run = cli(None, &["plugin", "run", not_wasm.to_str().expect("utf-8")]);
    assert!(
        !run.ok && run.stderr.contains("is not a TaskFlow plugin"),
        "{run:?}"
    );
}
