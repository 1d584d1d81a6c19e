//! The fleet's plugin catalog: with shared backends, a plugin uploaded
//! through (or removed from) any host is recorded here by name and digest,
//! its bytes in the blob store by digest (S3, or [`PgBlobs`](crate::PgBlobs)
//! when there is no S3). Every host reads the catalog and is told of changes
//! by a notification on [`CHANNEL`] ([`PluginCatalog::listen`]); the server's
//! fleet module brings the host's plugin registry to it.

use std::sync::Arc;

use sqlx::PgPool;
use sqlx::postgres::PgListener;

use taskflow_backend::blobs::{BlobStore, plugin_key};
use taskflow_backend::storage::StorageError;

/// The channel the `plugins_changed` trigger notifies.
pub const CHANNEL: &str = "taskflow_plugins";

/// The fleet's plugin catalog in PostgreSQL. Cheap to clone.
#[derive(Clone)]
pub struct PluginCatalog {
    pool: PgPool,
    blobs: Arc<dyn BlobStore>,
}

impl std::fmt::Debug for PluginCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginCatalog").finish_non_exhaustive()
    }
}

/// One name's entry in the catalog: the version every host should run, or
/// none (removed).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Entry {
    /// The plugin's name.
    pub name: String,
    /// The SHA-256 of the version to run; `None`: removed.
    pub digest: Option<String>,
}

fn unavailable(error: sqlx::Error) -> StorageError {
    StorageError::Unavailable(format!("PostgreSQL plugin catalog: {error}"))
}

impl PluginCatalog {
    /// The catalog in the database of `pool` (its tables come with the
    /// store's migrations), with the plugins' bytes in `blobs`.
    pub fn new(pool: PgPool, blobs: Arc<dyn BlobStore>) -> Self {
        Self { pool, blobs }
    }

    /// Records `bytes` (digest `digest`) as the version of `name` every host
    /// should run.
    pub async fn publish(
        &self,
        name: &str,
        digest: &str,
        bytes: &[u8],
    ) -> Result<(), StorageError> {
        // The bytes first: a host told of the digest finds them.
        self.blobs
            .put(&plugin_key(digest), bytes::Bytes::copy_from_slice(bytes))
            .await
            .map_err(|e| StorageError::Unavailable(e.to_string()))?;
        sqlx::query(
            "INSERT INTO plugins (name, digest, version) VALUES ($1, $2, nextval('plugin_changes'))
             ON CONFLICT (name) DO UPDATE SET digest = $2, version = nextval('plugin_changes'), updated_at = now()",
        )
        .bind(name)
        .bind(digest)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    /// Records that no host should run `name` any more.
    pub async fn retract(&self, name: &str) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO plugins (name, digest, version) VALUES ($1, NULL, nextval('plugin_changes'))
             ON CONFLICT (name) DO UPDATE SET digest = NULL, version = nextval('plugin_changes'), updated_at = now()",
        )
        .bind(name)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    /// Whether the fleet runs a plugin `name` (that this host may not have
    /// loaded yet).
    pub async fn has(&self, name: &str) -> Result<bool, StorageError> {
        let found: Option<bool> =
            sqlx::query_scalar("SELECT digest IS NOT NULL FROM plugins WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
        Ok(found.unwrap_or(false))
    }

    /// The whole catalog (a row per plugin name ever published).
    pub async fn entries(&self) -> Result<Vec<Entry>, StorageError> {
        sqlx::query_as("SELECT name, digest FROM plugins ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)
    }

    /// The bytes of version `digest` of `name`; `None` when `name` has
    /// changed since.
    pub async fn bytes(&self, name: &str, digest: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let current: Option<bool> =
            sqlx::query_scalar("SELECT true FROM plugins WHERE name = $1 AND digest = $2")
                .bind(name)
                .bind(digest)
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
        if current.is_none() {
            return Ok(None);
        }
        let key = plugin_key(digest);
        match self.blobs.get(&key).await {
            Ok(Some(bytes)) => Ok(Some(bytes.to_vec())),
            Ok(None) => Err(StorageError::Unavailable(format!(
                "the bytes of plugin {name:?} ({key}) are not in the blob store"
            ))),
            Err(e) => Err(StorageError::Unavailable(e.to_string())),
        }
    }

    /// Notifications of changes as they are made; an error where no
    /// connection can listen (the caller polls [`entries`](Self::entries)
    /// then).
    pub async fn listen(&self) -> Result<Changes, StorageError> {
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .map_err(unavailable)?;
        listener.listen(CHANNEL).await.map_err(unavailable)?;
        Ok(Changes(listener))
    }
}

/// Notifications of catalog changes ([`PluginCatalog::listen`]).
#[derive(Debug)]
pub struct Changes(PgListener);

impl Changes {
    /// Waits for the next change; an error means the connection was lost
    /// (the listener reconnects at the next call).
    pub async fn next(&mut self) -> Result<(), StorageError> {
        self.0.recv().await.map(drop).map_err(unavailable)
    }
}
