//! The crates' arrows, read from cargo's own dependency graph: the model and
//! the client link no engine, database driver, AWS SDK or HTTP server, and
//! neither does the `taskflow` binary built as a client only
//! (`--no-default-features`, as the README documents); the runtime links no
//! backend; the backend seams link no backend; each backend crate links the
//! seams and its own driver, never another backend's; the load balancer
//! links nothing of the engine, the backends or the API.

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

/// The `taskflow-*` crates and the packages among `watched` that `package`
/// links, each sorted, each package once.
fn links_of(package: &str, watched: &[&str]) -> (Vec<String>, Vec<String>) {
    let packages: std::collections::BTreeSet<String> =
        linked(&["-p", package]).into_iter().collect();
    let ours = packages
        .iter()
        .filter(|p| p.starts_with("taskflow-") && *p != package)
        .cloned()
        .collect();
    let found = packages
        .iter()
        .filter(|p| watched.contains(&p.as_str()))
        .cloned()
        .collect();
    (ours, found)
}

/// The engine, each backend's driver, and the HTTP server.
const WATCHED: [&str; 6] = [
    "wasmtime",
    "sqlx",
    "aws-sdk-sqs",
    "aws-sdk-s3",
    "axum",
    "taskflow-runtime",
];

/// The seams and the backends: a backend crate stands on the seams and the
/// model (and the file helpers), links its own driver and no other's, and
/// nothing of the engine or the HTTP server.
#[test]
fn backends_stand_side_by_side_on_the_seams() {
    let cases: [(&str, &[&str], &[&str]); 4] = [
        ("taskflow-backend", &["taskflow-model"], &[]),
        (
            "taskflow-files",
            &["taskflow-backend", "taskflow-fs", "taskflow-model"],
            &[],
        ),
        (
            "taskflow-postgres",
            &["taskflow-backend", "taskflow-model"],
            &["sqlx"],
        ),
        (
            "taskflow-aws",
            &["taskflow-backend", "taskflow-model"],
            &["aws-sdk-s3", "aws-sdk-sqs"],
        ),
    ];
    for (package, ours, drivers) in cases {
        let (linked_ours, found) = links_of(package, &WATCHED);
        assert_eq!(linked_ours, ours, "the TaskFlow crates {package} links");
        assert_eq!(found, drivers, "the drivers and engines {package} links");
    }
}

/// The load balancer shares the HTTP plumbing, and nothing else of the
/// host: no engine, no backend, no API.
#[test]
fn the_load_balancer_links_no_engine_backend_or_api() {
    let (ours, found) = links_of("taskflow-lb", &WATCHED);
    assert_eq!(ours, ["taskflow-http"]);
    assert_eq!(found, ["axum"], "its HTTP server, and nothing else watched");
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
