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
    let created = cli(None, &["plugin", "new", &name, "--lang", lang, "--dir", dir_arg]);
    assert!(created.ok && created.stdout.contains(&format!("created {name} ({lang})")), "{created:?}");
    let readme = std::fs::read_to_string(dir.join("README.md")).expect("README");
    assert!(readme.contains("taskflow plugin build") && readme.contains("taskflow plugin run"), "{readme}");

    let built = cli(None, &["plugin", "build", dir_arg]);
    let wasm = dir.join(format!("{name}.wasm"));
    assert!(built.ok && built.stdout.contains(&format!("built {}", wasm.display())), "{built:?}");

    let payload = dir.join("payload.json");
    let ran: CliRun = cli(None, &["plugin", "run", wasm.to_str().expect("utf-8"), "--payload-file", payload.to_str().expect("utf-8")]);
    assert!(ran.ok, "{ran:?}");
    let result: Value = serde_json::from_str(&ran.stdout).expect("JSON result");
    assert_eq!(result["greeting"], "Hello, Ada!", "{ran:?}");
    assert!(ran.stderr.contains("greeting Ada"), "the plugin's log line: {ran:?}");
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
    let run = cli(None, &["plugin", "new", "Bad Name", "--lang", "rust", "--dir", scratch.path().to_str().expect("utf-8")]);
    assert!(!run.ok && run.stderr.contains("plugin name"), "{run:?}");
    std::fs::write(scratch.path().join("keep.txt"), "mine").expect("write");
    let run = cli(None, &["plugin", "new", "p", "--lang", "python", "--dir", scratch.path().to_str().expect("utf-8")]);
    assert!(!run.ok && run.stderr.contains("is not empty"), "{run:?}");
    assert_eq!(std::fs::read_to_string(scratch.path().join("keep.txt")).expect("kept"), "mine");
    let run = cli(None, &["plugin", "build", scratch.path().to_str().expect("utf-8")]);
    assert!(!run.ok && run.stderr.contains("holds no plugin project"), "{run:?}");
    let run = cli(None, &["plugin", "new", "p", "--lang", "cobol"]);
    assert!(!run.ok && run.stderr.contains("invalid value 'cobol'"), "{run:?}");
}
