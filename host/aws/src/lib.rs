//! TaskFlow on AWS:
//!
//! - [`SqsQueue`] ([`sqs`]): the queue on SQS, a standard queue per priority
//!   band (settings read: [`sqs::SqsArgs`], `TASKFLOW_SQS_QUEUE_PREFIX` and
//!   `TASKFLOW_SQS_BANDS`);
//! - [`S3Blobs`] ([`s3`]): the blob store on S3 (settings read:
//!   [`s3::S3Args`], `TASKFLOW_S3_BUCKET`);
//! - [`secrets`]: secrets read from Secrets Manager (tokens, the database's
//!   credentials).
//!
//! What they share is here: the SDK's settings, read from the usual places
//! (`AWS_REGION`, the credential chain, `AWS_ENDPOINT_URL` for an emulator),
//! and error messages that say what the service answered.

pub mod s3;
pub mod secrets;
pub mod sqs;

pub use s3::S3Blobs;
pub use sqs::SqsQueue;

use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_sqs::error::ProvideErrorMetadata;

/// The SDK settings, with timeouts: a service that stops answering fails
/// the call rather than holding it forever.
pub async fn sdk_config() -> SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                // Above the longest SQS long poll (20 s).
                .operation_attempt_timeout(Duration::from_secs(30))
                .build(),
        )
        .load()
        .await
}

/// What an SDK call failed with: the service's own message where there is
/// one, else the chain of causes.
pub fn error_text<E, R>(error: &aws_sdk_sqs::error::SdkError<E, R>) -> String
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    match error {
        aws_sdk_sqs::error::SdkError::ServiceError(service) => {
            let err = service.err();
            match (err.code(), err.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                (None, Some(message)) => message.to_string(),
                (Some(code), None) => code.to_string(),
                (None, None) => format!("{err} ({:?})", service.raw()),
            }
        }
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                text = format!("{text}: {cause}");
                source = cause.source();
            }
            text
        }
    }
}
