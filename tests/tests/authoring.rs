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
