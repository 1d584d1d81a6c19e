//! The plugins of a fleet: with shared backends, a plugin uploaded through
//! (or removed from) any host is recorded in PostgreSQL by name and digest,
//! its bytes in the blob store by digest (S3, or a PostgreSQL table when
//! there is no S3), and every host converges on it: told at once by a
//! notification, and by a poll every [`POLL_INTERVAL`] in case one is lost.
//! Each host compiles the new version in its child compiler and swaps it in,
//! as when a file changes in its plugin directory.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use crate::blobs::{BlobStore, plugin_key};
use crate::runtime::{PluginError, PluginRegistry};
use crate::storage::StorageError;

/// How often a host looks for changes it was not told about.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// The channel the `plugins_changed` trigger notifies.
const CHANNEL: &str = "taskflow_plugins";

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

/// One name's latest change.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Change {
    name: String,
    digest: Option<String>,
    version: i64,
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

    async fn changes_since(&self, version: i64) -> Result<Vec<Change>, StorageError> {
        sqlx::query_as(
            "SELECT name, digest, version FROM plugins WHERE version > $1 ORDER BY version",
        )
        .bind(version)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)
    }

    /// The bytes of version `digest` of `name`; `None` when `name` has
    /// changed since.
    async fn bytes(&self, name: &str, digest: &str) -> Result<Option<Vec<u8>>, StorageError> {
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

    /// Applies every change to `registry` once, then keeps applying them
    /// as they come until `stop`.
    pub async fn sync(self, registry: Arc<PluginRegistry>, stop: CancellationToken) {
        let mut listener = match PgListener::connect_with(&self.pool).await {
            Ok(mut listener) => match listener.listen(CHANNEL).await {
                Ok(()) => Some(listener),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for plugin changes; polling for them");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for plugin changes; polling for them");
                None
            }
        };
        let mut applied = 0;
        let mut failing = false;
        loop {
            match self.apply(&registry, applied).await {
                Ok(version) => {
                    applied = version;
                    failing = false;
                }
                Err(e) if !failing => {
                    tracing::warn!(error = %e, "cannot read the fleet's plugins; retrying");
                    failing = true;
                }
                Err(_) => {}
            }
            let notified = async {
                match listener.as_mut() {
                    Some(listener) => {
                        let _ = listener.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep(POLL_INTERVAL) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// Applies the changes after `applied`; the last version applied. A
    /// version this host cannot load is logged and skipped (the one serving
    /// stays), as a bad file in the plugin directory is.
    async fn apply(
        &self,
        registry: &PluginRegistry,
        mut applied: i64,
    ) -> Result<i64, StorageError> {
        for change in self.changes_since(applied).await? {
            let name = change.name.as_str();
            match change.digest.as_deref() {
                None => match registry.remove(name).await {
                    Ok(()) => tracing::info!(plugin = name, "plugin removed by the fleet"),
                    Err(PluginError::NotFound(_)) => {}
                    Err(e) => {
                        tracing::error!(plugin = name, error = %e, "cannot remove the plugin the fleet removed")
                    }
                },
                Some(digest)
                    if registry
                        .get(name)
                        .is_ok_and(|entry| entry.plugin.digest == digest) => {}
                Some(digest) => match self.bytes(name, digest).await? {
                    // Changed again since: a later change brings it.
                    None => {}
                    // The bytes must be the ones the catalog names: a copy
                    // altered in the blob store never runs here.
                    Some(bytes) if crate::runtime::plugin::digest_of(&bytes) != digest => {
                        tracing::error!(
                            plugin = name,
                            digest,
                            found = %crate::runtime::plugin::digest_of(&bytes),
                            "the fleet's copy of a plugin does not match its digest; not loaded (upload it again)"
                        );
                    }
                    Some(bytes) => match registry.install(name, bytes).await {
                        Ok(_) => {
                            tracing::info!(plugin = name, digest, "plugin loaded from the fleet")
                        }
                        Err(e) => {
                            tracing::error!(plugin = name, digest, error = %e, "cannot load the fleet's version of a plugin")
                        }
                    },
                },
            }
            applied = change.version;
        }
        Ok(applied)
    }
}
