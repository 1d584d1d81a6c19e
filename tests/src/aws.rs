//! moto, the AWS emulator, for the SQS tests: the server at
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
    vec![
        ("AWS_ENDPOINT_URL".into(), endpoint()),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID".into(), "test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
    ]
}

/// An SQS client of the emulator.
pub async fn sqs() -> aws_sdk_sqs::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .load()
        .await;
    aws_sdk_sqs::Client::new(&config)
}

/// A fresh queue prefix.
pub fn fresh_prefix() -> String {
    format!("tf-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Creates the queues a host with `prefix` and `bands` bands expects: the
/// dead-letter queue, then each band queue with a redrive policy to it
/// after `max_receives` deliveries.
pub async fn create_queues(prefix: &str, bands: usize, max_receives: u32) {
    let client = sqs().await;
    let dead = client
        .create_queue()
        .queue_name(format!("{prefix}-dead-letters"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("create the dead-letter queue at {}: {e:?}", endpoint()));
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
