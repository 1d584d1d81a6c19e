//! The crates' arrows, read from cargo's own dependency graph: the model and
//! the client link no engine, database driver, AWS SDK or HTTP server, and
//! neither does the `taskflow` binary built as a client only
//! (`--no-default-features`, as the README documents); the runtime links no
//! backend.

use std::process::Command;
use std::time::Duration;

use taskflow_tests::image::run_ok;
use taskflow_tests::workspace_root;

/// What a client must not link.
const SERVER_ONLY: [&str; 7] = [
    "wasmtime",
    "cranelift-codegen",
    "sqlx",
    "aws-sdk-s3",
    "aws-sdk-sqs",
    "aws-config",
    "axum",
];

/// The packages `cargo tree` lists for `args` (normal dependencies only).
fn linked(args: &[&str]) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut tree = Command::new(cargo);
    tree.current_dir(workspace_root())
        .args([
            "tree", "--locked", "-e", "normal", "--prefix", "none", "--format", "{p}",
        ])
        .args(args);
    let ran = run_ok(tree, Duration::from_secs(120));
    ran.stdout
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn assert_client_only(args: &[&str]) {
    let packages = linked(args);
    assert!(
        packages.iter().any(|p| p == "serde"),
        "cargo tree {args:?} lists the dependencies: {packages:?}"
    );
    let server: Vec<&String> = packages
        .iter()
        .filter(|p| SERVER_ONLY.contains(&p.as_str()))
        .collect();
    assert!(server.is_empty(), "cargo tree {args:?} links {server:?}");
}

#[test]
fn the_model_links_nothing_of_the_server() {
    assert_client_only(&["-p", "taskflow-model"]);
}

#[test]
fn the_client_links_nothing_of_the_server() {
    assert_client_only(&["-p", "taskflow-client"]);
}

#[test]
fn a_client_only_build_of_the_binary_links_nothing_of_the_server() {
    assert_client_only(&["-p", "taskflow-host", "--no-default-features"]);
}

/// The runtime knows tasks as the model states them, and nothing of the
/// backends or the API.
#[test]
fn the_runtime_links_no_backend_and_no_http_server() {
    let packages = linked(&["-p", "taskflow-runtime"]);
    assert!(packages.iter().any(|p| p == "wasmtime"), "{packages:?}");
    let backends: Vec<&String> = packages
        .iter()
        .filter(|p| p.starts_with("aws-") || ["sqlx", "axum", "hyper-util"].contains(&p.as_str()))
        .collect();
    assert!(backends.is_empty(), "taskflow-runtime links {backends:?}");
}

/// The check sees what it looks for: the server build links all of it.
#[test]
fn the_server_build_links_the_engine_the_drivers_and_the_sdks() {
    let packages = linked(&["-p", "taskflow-host"]);
    for crate_name in SERVER_ONLY {
        assert!(
            packages.iter().any(|p| p == crate_name),
            "the server build links {crate_name}"
        );
    }
}
