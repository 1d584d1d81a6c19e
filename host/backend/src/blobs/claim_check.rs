//! The claim check: a payload or result above a threshold is kept in the
//! blob store, and the task record holds its key, size and SHA-256 instead
//! ([`BlobRef`]). Clients never see the difference: a task read alone comes
//! back with its bodies; only list pages leave them out, so they stay small.
//! An attempt's log longer than the record keeps goes there whole too,
//! read back for the task's logs.

use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use taskflow_model::attempt::RunLogs;
use taskflow_model::task::{BlobRef, Task, TaskOutput};

use super::{BlobError, BlobStore, log_key, payload_key, result_key};

/// Bodies larger than this many bytes go to the blob store by default.
pub const DEFAULT_THRESHOLD: usize = 64 * 1024;

/// Where the bodies of tasks are kept. Cheap to clone.
#[derive(Clone)]
pub struct ClaimCheck {
    blobs: Option<Arc<dyn BlobStore>>,
    threshold: usize,
}

impl std::fmt::Debug for ClaimCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimCheck")
            .field("blobs", &self.blobs.is_some())
            .field("threshold", &self.threshold)
            .finish()
    }
}

impl ClaimCheck {
    /// Every body stays in its task record.
    pub fn inline() -> Self {
        Self {
            blobs: None,
            threshold: usize::MAX,
        }
    }

    /// Every body stays in its task record; whole logs of attempts longer
    /// than their records keep go to `blobs`.
    pub fn logs_only(blobs: Arc<dyn BlobStore>) -> Self {
        Self {
            blobs: Some(blobs),
            threshold: usize::MAX,
        }
    }

    /// Bodies above `threshold` bytes go to `blobs` (and whole logs).
    pub fn new(blobs: Arc<dyn BlobStore>, threshold: usize) -> Self {
        Self {
            blobs: Some(blobs),
            threshold,
        }
    }

    /// The blob store, if bodies go to one.
    pub fn blobs(&self) -> Option<&Arc<dyn BlobStore>> {
        self.blobs.as_ref()
    }

    /// At submission: moves a large payload of `task` to the blob store;
    /// the payload taken out of the record, when it was.
    pub async fn store_payload(
        &self,
        task: &mut Task,
    ) -> Result<Option<serde_json::Value>, BlobError> {
        let Some(blobs) = &self.blobs else {
            return Ok(None);
        };
        let bytes = task.payload_bytes();
        if bytes.len() <= self.threshold {
            return Ok(None);
        }
        task.payload_blob = Some(put(blobs.as_ref(), payload_key(task.id), bytes.into()).await?);
        Ok(Some(std::mem::take(&mut task.payload)))
    }

    /// Deletes a payload stored for a task that was not stored after all
    /// (best effort: an orphan only costs space).
    pub async fn discard(&self, blob: &BlobRef) {
        if let Some(blobs) = &self.blobs
            && let Err(e) = blobs.delete(&blob.key).await
        {
            tracing::warn!(key = %blob.key, error = %e, "cannot delete the payload of a task not stored");
        }
    }

    /// Before a run: the payload as the plugin receives it.
    pub async fn payload(&self, task: &Task) -> Result<Vec<u8>, BlobError> {
        match &task.payload_blob {
            None => Ok(task.payload_bytes()),
            Some(blob) => Ok(self.fetch(task, blob).await?.to_vec()),
        }
    }

    /// At completion, before the task is saved as completed: records
    /// `output` as the result of the claim `token`, in the blob store when
    /// it is large.
    pub async fn store_result(
        &self,
        task: &mut Task,
        output: &[u8],
        token: u64,
    ) -> Result<(), BlobError> {
        match &self.blobs {
            Some(blobs) if output.len() > self.threshold => {
                let key = result_key(task.id, token);
                task.result_blob =
                    Some(put(blobs.as_ref(), key, Bytes::copy_from_slice(output)).await?);
                task.result = None;
            }
            _ => {
                task.result = Some(TaskOutput::from_bytes(output));
                task.result_blob = None;
            }
        }
        Ok(())
    }

    /// At the end of an attempt (the latest in `task`'s history) of the
    /// claim `token`: keeps its whole log in the blob store when the record
    /// cannot hold it all and there is a blob store. Call after the
    /// attempt's first lines are in the record.
    pub async fn store_logs(
        &self,
        task: &mut Task,
        logs: &RunLogs,
        token: u64,
    ) -> Result<(), BlobError> {
        let (Some(blobs), Some(attempt)) = (&self.blobs, task.history.last_mut()) else {
            return Ok(());
        };
        if logs.fits_the_record() {
            return Ok(());
        }
        let bytes = match serde_json::to_vec(logs) {
            Ok(bytes) => bytes,
            Err(e) => {
                // Lines of text always encode; should they not, the first
                // lines in the record are what is kept.
                tracing::warn!(task_id = %task.id, error = %e, "cannot encode an attempt's log");
                return Ok(());
            }
        };
        let key = log_key(task.id, attempt.number, token);
        attempt.logs_blob = Some(put(blobs.as_ref(), key, bytes.into()).await?);
        Ok(())
    }

    /// For a client reading a task's logs: the whole log of each attempt
    /// that keeps it in the blob store, in place of its first lines.
    pub async fn resolve_logs(&self, task: &mut Task) -> Result<(), BlobError> {
        for index in 0..task.history.len() {
            let Some(blob) = task.history[index].logs_blob.clone() else {
                continue;
            };
            let bytes = self.fetch(task, &blob).await?;
            let whole: RunLogs =
                serde_json::from_slice(&bytes).map_err(|e| BlobError::Corrupt {
                    key: blob.key.clone(),
                    reason: format!("the log is not what a host writes: {e}"),
                })?;
            task.history[index].restore_logs(whole);
        }
        Ok(())
    }

    /// For a client reading one task: its bodies back in the record.
    pub async fn resolve(&self, task: &mut Task) -> Result<(), BlobError> {
        if let Some(blob) = task.payload_blob.clone() {
            let bytes = self.fetch(task, &blob).await?;
            task.payload = serde_json::from_slice(&bytes).map_err(|e| BlobError::Corrupt {
                key: blob.key.clone(),
                reason: format!("the payload is not JSON: {e}"),
            })?;
            task.payload_blob = None;
        }
        if let Some(blob) = task.result_blob.clone() {
            let bytes = self.fetch(task, &blob).await?;
            task.result = Some(TaskOutput::from_bytes(&bytes));
            task.result_blob = None;
        }
        Ok(())
    }

    /// The bytes of `blob`, checked against its size and SHA-256.
    async fn fetch(&self, task: &Task, blob: &BlobRef) -> Result<Bytes, BlobError> {
        let blobs = self.blobs.as_ref().ok_or(BlobError::NoStore(task.id))?;
        let bytes = blobs
            .get(&blob.key)
            .await?
            .ok_or_else(|| BlobError::Missing(blob.key.clone()))?;
        let corrupt = |reason: String| BlobError::Corrupt {
            key: blob.key.clone(),
            reason,
        };
        if bytes.len() as u64 != blob.size {
            return Err(corrupt(format!(
                "{} bytes, the record says {}",
                bytes.len(),
                blob.size
            )));
        }
        let sha256 = hex::encode(Sha256::digest(&bytes));
        if sha256 != blob.sha256 {
            return Err(corrupt(format!(
                "SHA-256 {sha256}, the record says {}",
                blob.sha256
            )));
        }
        Ok(bytes)
    }
}

/// Puts `bytes` under `key`; the reference a record keeps.
async fn put(blobs: &dyn BlobStore, key: String, bytes: Bytes) -> Result<BlobRef, BlobError> {
    let blob = BlobRef {
        size: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(&bytes)),
        key,
    };
    blobs.put(&blob.key, bytes).await?;
    Ok(blob)
}
