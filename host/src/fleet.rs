//! The plugins of a fleet: with shared backends, a plugin uploaded through
//! (or removed from) any host is recorded in PostgreSQL by name and digest,
//! its bytes in the blob store by digest (S3, or a PostgreSQL table when
//! there is no S3), and every host converges on it: told at once by a
//! notification, and by a poll every [`POLL_INTERVAL`] in case one is lost.
//! Each host compiles the new version in its child compiler and swaps it in,
//! as when a file changes in its plugin directory.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use crate::blobs::{BlobStore, plugin_key};
use crate::runtime::{PluginError, PluginRegistry};
use crate::storage::StorageError;
use crate::telemetry::Metrics;

/// How often a host looks for changes it was not told about.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// First wait before a version that failed to load here is tried again
/// (doubling up to [`MAX_RETRY`]): a compile timeout or a full disk passes.
const FIRST_RETRY: Duration = Duration::from_secs(2);
/// Longest wait between tries at loading a version that keeps failing.
const MAX_RETRY: Duration = Duration::from_secs(300);
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

/// One name's entry in the catalog: the version every host should run, or
/// none (removed).
#[derive(Debug, Clone, sqlx::FromRow)]
struct Entry {
    name: String,
    digest: Option<String>,
}

/// What this host made of the catalog: the digest it last applied for each
/// name (none: the removal), and the versions that failed to load here,
/// with when to try each again and the wait after that.
#[derive(Debug, Default)]
struct Applied {
    digests: HashMap<String, Option<String>>,
    failed: HashMap<(String, String), (Instant, Duration)>,
}

impl Applied {
    /// Records that `digest` of `name` failed to load: tried again later.
    fn failed(&mut self, name: &str, digest: &str) {
        let key = (name.to_owned(), digest.to_owned());
        let wait = self.failed.get(&key).map_or(FIRST_RETRY, |(_, wait)| {
            wait.saturating_mul(2).min(MAX_RETRY)
        });
        self.failed.insert(key, (Instant::now() + wait, wait));
    }

    /// Whether `digest` of `name` failed here and is not due for a retry.
    fn waiting(&self, name: &str, digest: &str) -> bool {
        self.failed
            .get(&(name.to_owned(), digest.to_owned()))
            .is_some_and(|(due, _)| Instant::now() < *due)
    }

    fn done(&mut self, name: &str, digest: Option<&str>) {
        if let Some(digest) = digest {
            self.failed.remove(&(name.to_owned(), digest.to_owned()));
        }
        self.digests
            .insert(name.to_owned(), digest.map(str::to_owned));
    }
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
    async fn entries(&self) -> Result<Vec<Entry>, StorageError> {
        sqlx::query_as("SELECT name, digest FROM plugins ORDER BY name")
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
    /// as they come until `stop`; counts its reads in `metrics`.
    pub async fn sync(
        self,
        registry: Arc<PluginRegistry>,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) {
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
        let mut applied = Applied::default();
        let mut failing = false;
        loop {
            match self.apply(&registry, &mut applied).await {
                Ok(()) => failing = false,
                Err(e) if !failing => {
                    tracing::warn!(error = %e, "cannot read the fleet's plugins; retrying");
                    failing = true;
                }
                Err(_) => {}
            }
            let notified = async {
                match listener.as_mut() {
                    // A lost connection is retried at the next poll, not
                    // at once: an outage must not spin this loop.
                    Some(listener) => match listener.recv().await {
                        Ok(_) => true,
                        Err(_) => {
                            tokio::time::sleep(POLL_INTERVAL).await;
                            false
                        }
                    },
                    None => std::future::pending().await,
                }
            };
            let cause = tokio::select! {
                heard = notified => if heard { "notified" } else { "polled" },
                () = tokio::time::sleep(POLL_INTERVAL) => "polled",
                () = stop.cancelled() => return,
            };
            metrics.record_catalog_read(cause);
        }
    }

    /// Brings this host to the catalog: every entry whose digest differs
    /// from the one last applied here is applied. The whole catalog is read
    /// each time (a row per name): a change committed after a later one is
    /// never skipped, as it could be when reading changes by number. A
    /// version this host cannot load is logged and tried again later (the
    /// one serving stays), as a bad file in the plugin directory is.
    async fn apply(
        &self,
        registry: &PluginRegistry,
        applied: &mut Applied,
    ) -> Result<(), StorageError> {
        for entry in self.entries().await? {
            let name = entry.name.as_str();
            if applied.digests.get(name) == Some(&entry.digest) {
                continue;
            }
            let Some(digest) = entry.digest.as_deref() else {
                match registry.remove(name).await {
                    Ok(()) => tracing::info!(plugin = name, "plugin removed by the fleet"),
                    Err(PluginError::NotFound(_)) => {}
                    Err(e) => {
                        tracing::error!(plugin = name, error = %e, "cannot remove the plugin the fleet removed")
                    }
                }
                applied.done(name, None);
                continue;
            };
            if registry
                .get(name)
                .is_ok_and(|loaded| loaded.plugin.digest == digest)
            {
                applied.done(name, Some(digest));
                continue;
            }
            if applied.waiting(name, digest) {
                continue;
            }
            match self.bytes(name, digest).await? {
                // Changed again since: the next round brings it.
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
                    applied.failed(name, digest);
                }
                Some(bytes) => match registry.install(name, bytes).await {
                    Ok(_) => {
                        tracing::info!(plugin = name, digest, "plugin loaded from the fleet");
                        applied.done(name, Some(digest));
                    }
                    Err(e) => {
                        tracing::error!(plugin = name, digest, error = %e, "cannot load the fleet's version of a plugin; trying again later");
                        applied.failed(name, digest);
                    }
                },
            }
        }
        Ok(())
    }
}
