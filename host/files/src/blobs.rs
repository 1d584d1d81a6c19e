//! Blobs as files under one directory (the data directory's `blobs/`): the
//! blob store of the embedded default, where the whole log of an attempt
//! longer than its record keeps goes. A key's `/`-separated parts are
//! directories; a blob is written atomically (a temporary file renamed over
//! it), so a reader sees it whole or not at all.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use chrono::{DateTime, Utc};

use taskflow_backend::blobs::{BlobError, BlobStore, Listed};
use taskflow_fs::write_atomic;

/// The blobs under one directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct FsBlobs {
    root: PathBuf,
    fsync: bool,
}

impl FsBlobs {
    /// The blobs under `root` (created when first written), fsynced as
    /// they are written when `fsync` is set.
    pub fn new(root: impl Into<PathBuf>, fsync: bool) -> Self {
        Self {
            root: root.into(),
            fsync,
        }
    }

    /// The file of `key`; an error for a key that is not a relative path of
    /// plain names (no `.`/`..` parts, none empty or hidden).
    fn path_of(&self, key: &str) -> Result<PathBuf, BlobError> {
        let plain = !key.is_empty()
            && key
                .split('/')
                .all(|part| !part.is_empty() && !part.starts_with('.') && !part.contains('\\'));
        if !plain {
            return Err(BlobError::Unavailable(format!(
                "{key:?} is not a blob key (relative names separated by '/')"
            )));
        }
        Ok(self.root.join(key))
    }
}

fn unavailable(action: &str, path: &Path, error: &std::io::Error) -> BlobError {
    BlobError::Unavailable(format!("cannot {action} {}: {error}", path.display()))
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BlobError> + Send + 'static,
) -> Result<T, BlobError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| BlobError::Unavailable(format!("the blob file work stopped: {e}")))?
}

#[async_trait::async_trait]
impl BlobStore for FsBlobs {
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), BlobError> {
        let path = self.path_of(key)?;
        let fsync = self.fsync;
        blocking(move || {
            let dir = path.parent().unwrap_or(&path);
            // Twice: a delete may take away a directory it left empty
            // between its creation and the write.
            let mut tries = 0;
            loop {
                tries += 1;
                std::fs::create_dir_all(dir).map_err(|e| unavailable("create", dir, &e))?;
                match write_atomic(&path, &bytes, fsync) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 2 => {}
                    written => return written.map_err(|e| unavailable("write", &path, &e)),
                }
            }
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, BlobError> {
        let path = self.path_of(key)?;
        blocking(move || match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(Bytes::from(bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable("read", &path, &e)),
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        let path = self.path_of(key)?;
        let root = self.root.clone();
        blocking(move || {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(unavailable("delete", &path, &e)),
            }
            // Directories left empty go too (one that is not empty, or
            // just filled again by a put, stays).
            let mut dir = path.parent();
            while let Some(d) = dir.filter(|d| *d != root && d.starts_with(&root)) {
                if std::fs::remove_dir(d).is_err() {
                    break;
                }
                dir = d.parent();
            }
            Ok(())
        })
        .await
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Listed>, BlobError> {
        // Only the directory the prefix names is walked.
        let start = match prefix.rsplit_once('/') {
            Some((dir, _)) => self.path_of(dir)?,
            None => self.root.clone(),
        };
        let root = self.root.clone();
        let (prefix, after) = (prefix.to_owned(), after.map(str::to_owned));
        blocking(move || {
            let mut found = Vec::new();
            walk(&root, &start, &mut found)?;
            found.retain(|blob: &Listed| {
                blob.key.starts_with(&prefix) && after.as_ref().is_none_or(|a| blob.key > *a)
            });
            found.sort_by(|a, b| a.key.cmp(&b.key));
            found.truncate(limit);
            Ok(found)
        })
        .await
    }

    async fn check(&self) -> Result<(), BlobError> {
        let root = self.root.clone();
        blocking(move || {
            std::fs::create_dir_all(&root).map_err(|e| unavailable("create", &root, &e))
        })
        .await
    }
}

/// Adds every blob under `dir` (none when it does not exist) to `found`,
/// keyed by its path relative to `root`; temporary files are skipped.
fn walk(root: &Path, dir: &Path, found: &mut Vec<Listed>) -> Result<(), BlobError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(unavailable("list", dir, &e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| unavailable("list", dir, &e))?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let kind = entry
            .file_type()
            .map_err(|e| unavailable("list", &path, &e))?;
        if kind.is_dir() {
            walk(root, &path, found)?;
            continue;
        }
        let Some(key) = path
            .strip_prefix(root)
            .ok()
            .and_then(Path::to_str)
            .map(str::to_owned)
        else {
            continue;
        };
        let written_at: DateTime<Utc> = entry
            .metadata()
            .and_then(|m| m.modified())
            .map_err(|e| unavailable("read the time of", &path, &e))?
            .into();
        found.push(Listed { key, written_at });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_outside_the_directory_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = FsBlobs::new(dir.path(), false);
        for key in ["", "/abs", "a/../b", "a//b", ".hidden", "a/./b"] {
            assert!(
                blobs.put(key, Bytes::from_static(b"x")).await.is_err(),
                "{key:?}"
            );
        }
    }
}
