//! Wrong backend settings stop `taskflow serve` at startup with one line on
//! standard error that names the setting to fix: no panic, no trace of
//! driver internals, nothing served. One case per setting.

use taskflow_tests::process::free_port;

/// Starts `taskflow serve` with `env` and expects it to refuse: the one
/// line it prints.
fn refused(env: &[(&str, &str)]) -> String {
    refused_without(env, &[])
}

/// Like [`refused`], with the variables `unset` removed from the environment.
fn refused_without(env: &[(&str, &str)], unset: &[&str]) -> String {
    let data = tempfile::tempdir().expect("tempdir");
    let listen = format!("127.0.0.1:{}", free_port());
    let data_dir = data.path().to_str().expect("utf-8 path").to_string();
    let mut env = env.to_vec();
    env.extend([
        ("TASKFLOW_DATA_DIR", data_dir.as_str()),
        ("TASKFLOW_LISTEN", listen.as_str()),
        ("RUST_LOG", "off"),
    ]);
    let mut serve = std::process::Command::new(taskflow_tests::taskflow_binary());
    for name in unset {
        serve.env_remove(name);
    }
    let output = serve
        .arg("serve")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run taskflow");
    let run = taskflow_tests::process::CliRun {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
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

#[test]
fn the_sqs_queue_without_postgres_storage_is_refused() {
    let line = refused(&[("TASKFLOW_QUEUE", "sqs")]);
    assert!(
        line.contains("TASKFLOW_QUEUE=sqs needs TASKFLOW_STORAGE=postgres"),
        "{line}"
    );
}

#[test]
fn sqs_bands_that_miss_a_priority_are_refused() {
    let line = refused(&[
        ("TASKFLOW_QUEUE", "sqs"),
        ("TASKFLOW_STORAGE", "postgres"),
        (
            "TASKFLOW_DATABASE_URL",
            "postgres://postgres@127.0.0.1/tasks",
        ),
        ("TASKFLOW_SQS_BANDS", "1-3,5-10"),
    ]);
    assert!(line.contains("TASKFLOW_SQS_BANDS"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_sqs_queue_is_refused() {
    let (schema, _) = taskflow_tests::pg::fresh_schema().await;
    let url = taskflow_tests::pg::schema_url(&schema);
    let prefix = taskflow_tests::aws::fresh_prefix();
    let aws = taskflow_tests::aws::host_env();
    let mut env: Vec<(&str, &str)> = aws.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.extend([
        ("TASKFLOW_QUEUE", "sqs"),
        ("TASKFLOW_STORAGE", "postgres"),
        ("TASKFLOW_DATABASE_URL", url.as_str()),
        ("TASKFLOW_SQS_QUEUE_PREFIX", prefix.as_str()),
    ]);
    let line = refused(&env);
    assert!(
        line.contains(&format!("{prefix}-band-1"))
            && line.contains("does not exist")
            && line.contains("TASKFLOW_SQS_QUEUE_PREFIX"),
        "{line}"
    );
    taskflow_tests::pg::drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_without_a_region_is_refused() {
    let (schema, _) = taskflow_tests::pg::fresh_schema().await;
    let url = taskflow_tests::pg::schema_url(&schema);
    let endpoint = taskflow_tests::aws::endpoint();
    let env = [
        ("TASKFLOW_QUEUE", "sqs"),
        ("TASKFLOW_STORAGE", "postgres"),
        ("TASKFLOW_DATABASE_URL", url.as_str()),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_CONFIG_FILE", "/nonexistent"),
    ];
    let line = refused_without(&env, &["AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"]);
    assert!(line.contains("AWS_REGION"), "{line}");
    taskflow_tests::pg::drop_schema(&schema).await;
}

#[test]
fn s3_blobs_without_a_bucket_are_refused() {
    let line = refused(&[("TASKFLOW_BLOBS", "s3")]);
    assert!(
        line.contains("TASKFLOW_BLOBS=s3 needs TASKFLOW_S3_BUCKET"),
        "{line}"
    );
}

#[test]
fn a_bucket_name_s3_would_refuse_is_refused() {
    let line = refused(&[
        ("TASKFLOW_BLOBS", "s3"),
        ("TASKFLOW_S3_BUCKET", "My_Bucket"),
    ]);
    assert!(
        line.contains("TASKFLOW_S3_BUCKET") && line.contains("\"My_Bucket\" is not a bucket name"),
        "{line}"
    );
}

#[test]
fn a_blob_threshold_of_zero_is_refused() {
    let line = refused(&[("TASKFLOW_BLOB_THRESHOLD_BYTES", "0")]);
    assert!(line.contains("TASKFLOW_BLOB_THRESHOLD_BYTES"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_is_refused() {
    let aws = taskflow_tests::aws::host_env();
    let mut env: Vec<(&str, &str)> = aws.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.extend([
        ("TASKFLOW_BLOBS", "s3"),
        ("TASKFLOW_S3_BUCKET", "tf-nobody-made-this"),
    ]);
    let line = refused(&env);
    assert!(
        line.contains("\"tf-nobody-made-this\" does not exist")
            && line.contains("TASKFLOW_S3_BUCKET"),
        "{line}"
    );
}

#[test]
fn a_retention_age_without_a_unit_is_refused() {
    let line = refused(&[("TASKFLOW_RETAIN_COMPLETED", "7")]);
    assert!(
        line.contains("TASKFLOW_RETAIN_COMPLETED")
            && line.contains("7d")
            && line.contains("forever"),
        "{line}"
    );
}

#[test]
fn orphaned_bodies_kept_forever_are_refused() {
    let line = refused(&[("TASKFLOW_RETAIN_ORPHANED_BODIES", "forever")]);
    assert!(line.contains("TASKFLOW_RETAIN_ORPHANED_BODIES"), "{line}");
}
