//! A plugin author's day, in each language: `taskflow plugin new`, then
//! `build`, then `run` on the sample payload, in a directory outside the
//! repository, without edits.

use serde_json::Value;
use taskflow_tests::process::{CliRun, cli};

fn new_build_run(lang: &str) {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path().join(format!("hello-{lang}"));
    let dir_arg = dir.to_str().expect("utf-8");
    let name = format!("hello-{lang}");
    let created = cli(
        None,
        &["plugin", "new", &name, "--lang", lang, "--dir", dir_arg],
    );
    assert!(
        created.ok && created.stdout.contains(&format!("created {name} ({lang})")),
        "{created:?}"
    );
    let readme = std::fs::read_to_string(dir.join("README.md")).expect("README");
    assert!(
        readme.contains("taskflow plugin build") && readme.contains("taskflow plugin run"),
        "{readme}"
    );

    let built = cli(None, &["plugin", "build", dir_arg]);
    let wasm = dir.join(format!("{name}.wasm"));
    assert!(
        built.ok && built.stdout.contains(&format!("built {}", wasm.display())),
        "{built:?}"
    );

    let payload = dir.join("payload.json");
    let ran: CliRun = cli(
        None,
        &[
            "plugin",
            "run",
            wasm.to_str().expect("utf-8"),
            "--payload-file",
            payload.to_str().expect("utf-8"),
        ],
    );
    assert!(ran.ok, "{ran:?}");
    let result: Value = serde_json::from_str(&ran.stdout).expect("JSON result");
    assert_eq!(result["greeting"], "Hello, Ada!", "{ran:?}");
    assert!(
        ran.stderr.contains("greeting Ada"),
        "the plugin's log line: {ran:?}"
    );
}

#[test]
fn a_rust_plugin_from_new_to_run() {
    new_build_run("rust");
}

#[test]
fn a_python_plugin_from_new_to_run() {
    new_build_run("python");
}

#[test]
fn a_javascript_plugin_from_new_to_run() {
    new_build_run("js");
}

#[test]
fn new_and_build_say_what_is_wrong() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let run = cli(
        None,
        &[
            "plugin",
            "new",
            "Bad Name",
            "--lang",
            "rust",
            "--dir",
            scratch.path().to_str().expect("utf-8"),
        ],
    );
    assert!(!run.ok && run.stderr.contains("plugin name"), "{run:?}");
    std::fs::write(scratch.path().join("keep.txt"), "mine").expect("write");
    let run = cli(
        None,
        &[
            "plugin",
            "new",
            "p",
            "--lang",
            "python",
            "--dir",
            scratch.path().to_str().expect("utf-8"),
        ],
    );
    assert!(!run.ok && run.stderr.contains("is not empty"), "{run:?}");
    assert_eq!(
        std::fs::read_to_string(scratch.path().join("keep.txt")).expect("kept"),
        "mine"
    );
    let run = cli(
        None,
        &["plugin", "build", scratch.path().to_str().expect("utf-8")],
    );
    assert!(
        !run.ok && run.stderr.contains("holds no plugin project"),
        "{run:?}"
    );
    let run = cli(None, &["plugin", "new", "p", "--lang", "cobol"]);
    assert!(
        !run.ok && run.stderr.contains("invalid value 'cobol'"),
        "{run:?}"
    );
}

/// `taskflow plugin run <wasm> --payload <payload>`.
fn run_with_payload(wasm: &std::path::Path, payload: &str) -> CliRun {
    let wasm = wasm.to_str().expect("utf-8");
    cli(None, &["plugin", "run", wasm, "--payload", payload])
}

#[test]
fn a_plugin_built_for_the_previous_contract_version_runs_as_it_did() {
    let wasm = taskflow_tests::fixture_wasm("contract-0-1");
    let ran = run_with_payload(&wasm, r#"{"n": 1}"#);
    assert!(ran.ok, "{ran:?}");
    let result: Value = serde_json::from_str(&ran.stdout).expect("JSON result");
    assert_eq!(result["contract"], "0.1.0", "{ran:?}");
    assert_eq!(result["payload"]["n"], 1, "{ran:?}");
    assert!(
        ran.stderr.contains("hello from a 0.1.0 plugin")
            && ran.stderr.contains("progress 50%")
            && ran.stderr.contains("built for taskflow:plugin@0.1.0"),
        "its log line, progress and contract: {ran:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_for_another_contract_version_is_rejected_naming_both() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path().join("future");
    let dir_arg = dir.to_str().expect("utf-8");
    assert!(
        cli(
            None,
            &[
                "plugin", "new", "future", "--lang", "python", "--dir", dir_arg
            ]
        )
        .ok
    );
    // The same plugin, built against a WIT package one minor version on.
    let wit = dir.join("wit/processor.wit");
    let source = std::fs::read_to_string(&wit).expect("wit");
    assert!(source.contains("package taskflow:plugin@0.2.0;"));
    std::fs::write(
        &wit,
        source.replace("taskflow:plugin@0.2.0", "taskflow:plugin@0.3.0"),
    )
    .expect("write wit");
    let built = cli(None, &["plugin", "build", dir_arg]);
    assert!(built.ok, "{built:?}");
    let wasm = dir.join("future.wasm");

    let expected =
        "built for taskflow:plugin@0.3.0, but this host serves taskflow:plugin@0.2.0 and 0.1.0";
    let ran = run_with_payload(&wasm, r#"{"name": "Ada"}"#);
    assert!(!ran.ok && ran.stderr.contains(expected), "{ran:?}");

    let host = taskflow_tests::TestHost::start(1, false).await;
    let response = reqwest::Client::new()
        .put(host.at("/plugins/future"))
        .body(std::fs::read(&wasm).expect("wasm"))
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), reqwest::StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = response.json().await.expect("json");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains(expected)),
        "{body}"
    );
    host.stop().await;
}

/// A `taskflow plugin run --watch` running in the background, its stdout and
/// stderr collected as they come; killed when dropped.
struct Watching {
    child: std::process::Child,
    output: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Watching {
    fn start(args: &[&str]) -> Self {
        use std::io::Read;
        let mut child = std::process::Command::new(taskflow_tests::taskflow_binary())
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn taskflow");
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let streams: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        for mut stream in streams {
            let output = output.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(read @ 1..) = stream.read(&mut chunk) {
                    let text = String::from_utf8_lossy(&chunk[..read]).into_owned();
                    output.lock().expect("output").push_str(&text);
                }
            });
        }
        Self { child, output }
    }

    /// Waits until `text` appears `times` times in what it printed.
    fn wait_for(&self, text: &str, times: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
        loop {
            let output = self.output.lock().expect("output").clone();
            if output.matches(text).count() >= times {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{text:?} ×{times} never came: {output}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn plugin_run_watch_runs_the_task_again_when_the_component_is_replaced() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let wasm = scratch.path().join("mine.wasm");
    std::fs::copy(taskflow_tests::plugin_wasm("echo"), &wasm).expect("copy");
    // A payload that is not JSON ends it at once, watching nothing.
    let bad = cli(
        None,
        &[
            "plugin",
            "run",
            wasm.to_str().expect("utf-8"),
            "--watch",
            "--payload",
            "{bad",
        ],
    );
    assert!(
        !bad.ok && bad.stderr.contains("--payload is not valid JSON"),
        "{bad:?}"
    );
    let watching = Watching::start(&[
        "plugin",
        "run",
        wasm.to_str().expect("utf-8"),
        "--watch",
        "--payload",
        r#"{"name": "Ada"}"#,
    ]);
    watching.wait_for(r#""name": "Ada""#, 1);
    watching.wait_for("watching", 1);
    // Written aside and renamed into place, as build tools do: the file
    // beside it is no change, the rename is.
    let aside = scratch.path().join("mine.wasm.part");
    std::fs::copy(taskflow_tests::fixture_wasm("greeter-rs"), &aside).expect("copy");
    std::fs::rename(&aside, &wasm).expect("rename");
    watching.wait_for("Hello, Ada!", 1);
    watching.wait_for("watching", 2);
}

#[test]
fn plugin_run_watch_rebuilds_a_project_when_its_source_changes() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path().join("looped");
    let dir_arg = dir.to_str().expect("utf-8");
    let created = cli(
        None,
        &[
            "plugin", "new", "looped", "--lang", "python", "--dir", dir_arg,
        ],
    );
    assert!(created.ok, "{created:?}");
    let wasm = dir.join("looped.wasm");
    let payload = dir.join("payload.json");
    // Not built yet: the watch builds it first.
    let watching = Watching::start(&[
        "plugin",
        "run",
        wasm.to_str().expect("utf-8"),
        "--watch",
        "--payload-file",
        payload.to_str().expect("utf-8"),
    ]);
    watching.wait_for("Hello, Ada!", 1);
    watching.wait_for("watching", 1);

    let app = dir.join("app.py");
    let source = std::fs::read_to_string(&app).expect("app.py");
    assert!(source.contains(r#"f"Hello, {name}!""#), "{source}");
    // A syntax error: the build fails, the watch goes on.
    std::fs::write(&app, format!("{source}\n)")).expect("write");
    watching.wait_for("the build failed", 1);
    watching.wait_for("watching", 2);
    std::fs::write(
        &app,
        source.replace(r#"f"Hello, {name}!""#, r#"f"Hi, {name}!""#),
    )
    .expect("write");
    watching.wait_for("Hi, Ada!", 1);
}

#[test]
fn plugin_run_ends_quietly_when_its_reader_goes_away() {
    use std::io::Read;
    let scratch = tempfile::tempdir().expect("tempdir");
    // About 1 MB of pretty-printed result, far more than a pipe holds.
    let numbers: Vec<u32> = (1..100_000).collect();
    let payload = scratch.path().join("big.json");
    std::fs::write(&payload, serde_json::to_vec(&numbers).expect("json")).expect("write");
    let mut child = std::process::Command::new(taskflow_tests::taskflow_binary())
        .args(["plugin", "run"])
        .arg(taskflow_tests::plugin_wasm("echo"))
        .arg("--payload-file")
        .arg(&payload)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn taskflow");
    // Like `| head -c 2`: read a little, then close the pipe.
    let mut start = [0u8; 2];
    child
        .stdout
        .take()
        .expect("stdout")
        .read_exact(&mut start)
        .expect("read");
    let output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && !stderr.contains("panicked"),
        "{:?} {stderr}",
        output.status
    );
}
