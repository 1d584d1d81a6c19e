//! Schemathesis against the OpenAPI description a real host serves: no
//! server error, no response outside the schema, schema-valid requests
//! accepted and schema-invalid ones refused, and, on a host with tokens,
//! authentication declared where it is enforced and enforced where it is
//! declared.
//!
//! Both runs are seeded and bounded, so they are repeatable.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use taskflow_tests::install_plugins;
use taskflow_tests::process::{HostProcess, free_port};

const SEED: &str = "20261128";
const API_TOKEN: &str = "api-token-for-schemathesis";
const ADMIN_TOKEN: &str = "admin-token-for-schemathesis";

/// Every check, everywhere, but one check on three operations where a
/// schema cannot know the answer: whether a schema-valid request is
/// accepted. A task names a plugin, and no schema can say which plugins are
/// loaded (a task naming another is rightly refused with 422); an upload is
/// a WebAssembly component, and no schema can describe a valid one.
const CHECKS: &str = r#"
[checks]
enabled = true

[[operations]]
include-name = ["POST /tasks", "POST /tasks/batch", "PUT /plugins/{name}"]
checks.positive_data_acceptance.enabled = false
"#;

/// The runs share two cores: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_does_what_its_schema_says() {
    let _one = ONE_AT_A_TIME.lock().await;
    let data = host_data();
    let host = HostProcess::start(data.path(), free_port()).await;
    let report = schemathesis(&host.url, CHECKS, &["--max-examples", "40"]);
    // A backup was restored: the check that schema-valid data is accepted
    // ran on restore, not only refusals.
    let restored = &report["valid_rates"]["POST /admin/restore"];
    let accepted: u64 = ["coverage", "fuzzing"]
        .iter()
        .filter_map(|phase| restored[phase]["accepted"].as_u64())
        .sum();
    assert!(accepted > 0, "no generated backup was restored: {restored}");
    drop(host);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_enforces_the_authentication_its_schema_declares() {
    let _one = ONE_AT_A_TIME.lock().await;
    let data = host_data();
    let host = HostProcess::start_with(
        data.path(),
        free_port(),
        &["--api-token", API_TOKEN, "--admin-token", ADMIN_TOKEN],
    )
    .await;
    // The schema names the scheme of each token; schemathesis sends the
    // right one, and its `ignored_auth` check sends none and a wrong one to
    // every operation that declares a scheme, expecting 401. The boundary
    // cases ran in the test above; here a few requests per operation do.
    let config = format!(
        "{CHECKS}\n[auth.openapi.api_token]\nbearer = \"{API_TOKEN}\"\n\n[auth.openapi.admin_token]\nbearer = \"{ADMIN_TOKEN}\"\n"
    );
    let report = schemathesis(
        &host.url,
        &config,
        &[
            "--max-examples",
            "10",
            "--phases",
            "examples,fuzzing,stateful",
        ],
    );
    let warnings = &report["warnings"];
    for unused in ["missing_auth", "unused_openapi_auth"] {
        assert_eq!(
            warnings[unused],
            serde_json::json!([]),
            "the schema does not use the tokens as served: {warnings}"
        );
    }
    drop(host);
}

/// A data directory with the example plugins installed.
fn host_data() -> tempfile::TempDir {
    let data = tempfile::tempdir().expect("tempdir");
    install_plugins(
        &data.path().join("plugins"),
        &["echo", "wordcount", "hash", "flaky"],
    );
    data
}

/// Runs schemathesis with `config` against the description the host at
/// `url` serves; asserts it found nothing, and returns its JSON report.
fn schemathesis(url: &str, config: &str, extra: &[&str]) -> Value {
    let scratch = tempfile::tempdir().expect("tempdir");
    let config_file = scratch.path().join("schemathesis.toml");
    std::fs::write(&config_file, config).expect("write the schemathesis configuration");
    let report_file = scratch.path().join("report.json");
    let output = Command::new(schemathesis_binary())
        .arg("--config-file")
        .arg(&config_file)
        .args([
            "run",
            &format!("{url}/openapi.json"),
            "--seed",
            SEED,
            "--workers",
            "1",
            "--no-color",
        ])
        // No example database: a run must not depend on earlier ones.
        .args([
            "--generation-database",
            "none",
            "--output-sanitize",
            "false",
            "--report",
            "json",
            "--report-json-path",
        ])
        .arg(&report_file)
        .args(extra)
        .current_dir(scratch.path())
        .stdin(Stdio::null())
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}"
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(&report_file).expect("schemathesis report"))
            .expect("JSON report");
    assert_eq!(report["failures"], serde_json::json!([]), "{stdout}");
    assert_eq!(report["errors"], serde_json::json!([]), "{stdout}");
    assert!(
        report["operations"]["tested"]
            .as_u64()
            .is_some_and(|n| n >= 14),
        "{stdout}"
    );
    // The exclusions name operations that exist.
    assert_eq!(
        report["warnings"]["unmatched_filter"],
        serde_json::json!([]),
        "{stdout}"
    );
    report
}

/// `schemathesis` from PATH, else from this Python's scripts directory
/// (where `pip install` puts it, which need not be on PATH).
fn schemathesis_binary() -> PathBuf {
    let runs = |program: &Path| {
        Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let on_path = PathBuf::from("schemathesis");
    if runs(&on_path) {
        return on_path;
    }
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let installed = Path::new(&scripts).join("schemathesis");
    assert!(
        runs(&installed),
        "schemathesis must be installed: tests/run.sh installs schemathesis==4.32.5 from PyPI"
    );
    installed
}
