//! Wrong backend settings stop `taskflow serve` at startup with one line on
//! standard error that names the setting to fix: no panic, no trace of
//! driver internals, nothing served. One case per setting.

use taskflow_tests::process::{cli_env, free_port};

/// Starts `taskflow serve` with `env` and expects it to refuse: the one
/// line it prints.
fn refused(env: &[(&str, &str)]) -> String {
    let data = tempfile::tempdir().expect("tempdir");
    let listen = format!("127.0.0.1:{}", free_port());
    let data_dir = data.path().to_str().expect("utf-8 path").to_string();
    let mut env = env.to_vec();
    env.extend([
        ("TASKFLOW_DATA_DIR", data_dir.as_str()),
        ("TASKFLOW_LISTEN", listen.as_str()),
        ("RUST_LOG", "off"),
    ]);
    let run = cli_env(None, &env, &["serve"]);
    assert!(!run.ok, "the host started with {env:?}");
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one line, not {:?}", run.stderr);
    assert!(lines[0].starts_with("error: "), "{}", lines[0]);
    assert!(
        !run.stderr.contains("panicked") && !run.stderr.contains("backtrace"),
        "{}",
        run.stderr
    );
    lines[0].to_string()
}

#[test]
fn the_postgres_queue_without_postgres_storage_is_refused() {
    let line = refused(&[("TASKFLOW_QUEUE", "postgres")]);
    assert!(
        line.contains("TASKFLOW_QUEUE=postgres needs TASKFLOW_STORAGE=postgres"),
        "{line}"
    );
}

#[test]
fn postgres_storage_without_a_database_url_is_refused() {
    let line = refused(&[("TASKFLOW_STORAGE", "postgres")]);
    assert!(line.contains("TASKFLOW_DATABASE_URL"), "{line}");
}

#[test]
fn a_database_url_that_is_not_postgres_is_refused() {
    let line = refused(&[
        ("TASKFLOW_STORAGE", "postgres"),
        ("TASKFLOW_DATABASE_URL", "mysql://root@127.0.0.1/tasks"),
    ]);
    assert!(
        line.contains("TASKFLOW_DATABASE_URL") && line.contains("postgres://"),
        "{line}"
    );
}

#[test]
fn an_unreachable_database_is_refused() {
    let url = format!("postgres://postgres@127.0.0.1:{}/tasks", free_port());
    let line = refused(&[
        ("TASKFLOW_STORAGE", "postgres"),
        ("TASKFLOW_QUEUE", "postgres"),
        ("TASKFLOW_DATABASE_URL", url.as_str()),
    ]);
    assert!(line.contains("TASKFLOW_DATABASE_URL"), "{line}");
}

#[test]
fn a_lease_of_zero_is_refused() {
    let line = refused(&[("TASKFLOW_LEASE_SECS", "0")]);
    assert!(
        line.contains("TASKFLOW_LEASE_SECS") && line.contains("1..=3600"),
        "{line}"
    );
}
