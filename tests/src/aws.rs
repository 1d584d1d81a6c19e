//! moto, the AWS emulator, for the SQS and S3 tests: the server at
//! `TASKFLOW_TEST_AWS_ENDPOINT` (tests/run.sh starts one). A missing server
//! fails the tests that need it; they never skip.

use aws_sdk_sqs::types::QueueAttributeName;

/// The emulator's URL.
pub fn endpoint() -> String {
    std::env::var("TASKFLOW_TEST_AWS_ENDPOINT")
        .expect("TASKFLOW_TEST_AWS_ENDPOINT must name a running moto_server: tests/run.sh starts one (pip install 'moto[server]')")
}

/// The environment a host needs to reach the emulator.
pub fn host_env() -> Vec<(String, String)> {
    host_env_at(&endpoint())
}

/// The environment a host needs to reach the emulator at `endpoint`.
pub fn host_env_at(endpoint: &str) -> Vec<(String, String)> {
    vec![
        ("AWS_ENDPOINT_URL".into(), endpoint.to_string()),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID".into(), "test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
    ]
}

/// An SQS client of the emulator.
pub async fn sqs() -> aws_sdk_sqs::Client {
    sqs_at(&endpoint()).await
}

/// An SQS client of the emulator at `endpoint`.
pub async fn sqs_at(endpoint: &str) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&sdk_at(endpoint).await)
}

/// The SDK settings of the emulator.
pub async fn sdk() -> aws_config::SdkConfig {
    sdk_at(&endpoint()).await
}

/// The SDK settings of the emulator at `endpoint`.
async fn sdk_at(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .load()
        .await
}

/// An S3 client of the emulator (path-style, as the host addresses it).
pub async fn s3() -> aws_sdk_s3::Client {
    s3_at(&endpoint()).await
}

/// An S3 client of the emulator at `endpoint`.
pub async fn s3_at(endpoint: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::from(&sdk_at(endpoint).await)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Creates a bucket with a fresh name in the emulator; its name.
pub async fn fresh_bucket() -> String {
    fresh_bucket_at(&endpoint()).await
}

/// Like [`fresh_bucket`], in the emulator at `endpoint`.
pub async fn fresh_bucket_at(endpoint: &str) -> String {
    let bucket = format!("tf-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    s3_at(endpoint)
        .await
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create bucket {bucket} at {endpoint}: {e:?}"));
    bucket
}

/// The keys in `bucket` under `prefix`.
pub async fn keys(bucket: &str, prefix: &str) -> Vec<String> {
    let listed = s3()
        .await
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .expect("list objects");
    listed
        .contents()
        .iter()
        .filter_map(|object| object.key().map(str::to_owned))
        .collect()
}

/// A fresh queue prefix.
pub fn fresh_prefix() -> String {
    format!("tf-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Creates the queues a host with `prefix` and `bands` bands expects: the
/// dead-letter queue, then each band queue with a redrive policy to it
/// after `max_receives` deliveries.
pub async fn create_queues(prefix: &str, bands: usize, max_receives: u32) {
    create_queues_at(&endpoint(), prefix, bands, max_receives).await;
}

/// Like [`create_queues`], in the emulator at `endpoint`.
pub async fn create_queues_at(endpoint: &str, prefix: &str, bands: usize, max_receives: u32) {
    let client = sqs_at(endpoint).await;
    let dead = client
        .create_queue()
        .queue_name(format!("{prefix}-dead-letters"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("create the dead-letter queue at {endpoint}: {e:?}"));
    let dead_url = dead.queue_url().expect("queue URL");
    let dead_arn = client
        .get_queue_attributes()
        .queue_url(dead_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("dead-letter queue ARN")
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .expect("QueueArn");
    let redrive = serde_json::json!({"deadLetterTargetArn": dead_arn, "maxReceiveCount": max_receives.to_string()}).to_string();
    for band in 1..=bands {
        client
            .create_queue()
            .queue_name(format!("{prefix}-band-{band}"))
            .attributes(QueueAttributeName::RedrivePolicy, &redrive)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create band queue {band}: {e:?}"));
    }
}

/// An emulator of a test's own (moto's server on a free port), for tests
/// that pause it. Killed when dropped.
pub struct OwnEmulator {
    child: std::process::Child,
    /// Its URL.
    pub endpoint: String,
}

impl OwnEmulator {
    /// Starts `moto_server` and waits until it answers.
    pub async fn start() -> Self {
        let port = crate::process::free_port();
        // moto's server with the fix the tests need (see the file).
        let child = std::process::Command::new("python3")
            .arg(crate::workspace_root().join("tests/support/moto_server.py"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server must be installed: tests/run.sh installs it (pip install 'moto[server]')");
        let endpoint = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while client
            .get(format!("{endpoint}/moto-api/"))
            .send()
            .await
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server did not start"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Self { child, endpoint }
    }

    /// Sends it a signal (`STOP`, `CONT`).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "kill -{name} moto_server"
        );
    }
}

impl Drop for OwnEmulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
