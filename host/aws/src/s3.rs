//! Amazon S3 as the blob store (`TASKFLOW_BLOBS=s3`): one bucket
//! (`TASKFLOW_S3_BUCKET`), an object per blob. Path-style addressing when
//! an endpoint is set (`AWS_ENDPOINT_URL`, e.g. an emulator), where
//! virtual-hosted bucket names would not resolve.

use aws_sdk_s3::Client;
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::operation::head_bucket::HeadBucketError;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use chrono::DateTime;

use taskflow_backend::blobs::{BlobError, BlobStore, Listed};

/// A bucket of blobs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct S3Blobs {
    client: Client,
    bucket: String,
}

fn unavailable(what: &str, text: String) -> BlobError {
    BlobError::Unavailable(format!("S3 {what}: {text}"))
}

impl S3Blobs {
    /// The bucket `bucket` with the SDK settings `sdk`; a bucket that does
    /// not exist or cannot be reached stops here, named.
    pub async fn open(sdk: &aws_config::SdkConfig, bucket: &str) -> Result<Self, BlobError> {
        let path_style =
            sdk.endpoint_url().is_some() || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
        let config = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(path_style)
            .build();
        let blobs = Self {
            client: Client::from_conf(config),
            bucket: bucket.to_string(),
        };
        blobs.check().await?;
        Ok(blobs)
    }
}

#[async_trait::async_trait]
impl BlobStore for S3Blobs {
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), BlobError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| unavailable("PutObject", crate::error_text(&e)))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, BlobError> {
        let object = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(object) => object,
            Err(e) if matches!(e.as_service_error(), Some(GetObjectError::NoSuchKey(_))) => {
                return Ok(None);
            }
            Err(e) => return Err(unavailable("GetObject", crate::error_text(&e))),
        };
        let body = object
            .body
            .collect()
            .await
            .map_err(|e| unavailable("GetObject body", e.to_string()))?;
        Ok(Some(body.into_bytes()))
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| unavailable("DeleteObject", crate::error_text(&e)))?;
        Ok(())
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), BlobError> {
        // DeleteObjects takes a thousand keys a request.
        for chunk in keys.chunks(1000) {
            let objects = chunk
                .iter()
                .map(|key| ObjectIdentifier::builder().key(key).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| unavailable("DeleteObjects", e.to_string()))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| unavailable("DeleteObjects", e.to_string()))?;
            let answer = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| unavailable("DeleteObjects", crate::error_text(&e)))?;
            if let Some(failed) = answer.errors().first() {
                return Err(unavailable(
                    "DeleteObjects",
                    format!(
                        "{} of {} keys not deleted, e.g. {:?}: {}",
                        answer.errors().len(),
                        chunk.len(),
                        failed.key().unwrap_or_default(),
                        failed.message().unwrap_or_default()
                    ),
                ));
            }
        }
        Ok(())
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Listed>, BlobError> {
        let answer = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_start_after(after.map(str::to_string))
            .max_keys(i32::try_from(limit.min(1000)).unwrap_or(1000))
            .send()
            .await
            .map_err(|e| unavailable("ListObjectsV2", crate::error_text(&e)))?;
        Ok(answer
            .contents()
            .iter()
            .filter_map(|object| {
                let written_at = object.last_modified()?;
                Some(Listed {
                    key: object.key()?.to_string(),
                    written_at: DateTime::from_timestamp(
                        written_at.secs(),
                        written_at.subsec_nanos(),
                    )?,
                })
            })
            .collect())
    }

    async fn check(&self) -> Result<(), BlobError> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.as_service_error(), Some(HeadBucketError::NotFound(_))) => {
                Err(BlobError::Unavailable(format!(
                    "S3 bucket {:?} does not exist: create it, or set TASKFLOW_S3_BUCKET to one that does",
                    self.bucket
                )))
            }
            Err(e) => Err(unavailable(
                &format!("bucket {:?}", self.bucket),
                crate::error_text(&e),
            )),
        }
    }
}

/// The bucket of `--blobs s3`: what `taskflow serve` reads for it.
#[derive(Debug, Clone, clap::Args)]
pub struct S3Args {
    /// The S3 bucket of `--blobs s3`. The region, the credentials and
    /// `AWS_ENDPOINT_URL` come from the usual AWS settings.
    #[arg(long, env = "TASKFLOW_S3_BUCKET")]
    pub s3_bucket: Option<String>,
}
