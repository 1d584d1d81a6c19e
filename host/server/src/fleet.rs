//! The plugins of a fleet: every host converges on the fleet's plugin
//! catalog ([`PluginCatalog`], in PostgreSQL): told at once by a
//! notification, and by a poll every [`POLL_INTERVAL`] in case one is lost.
//! Each host compiles the new version in its child compiler and swaps it in,
//! as when a file changes in its plugin directory.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use taskflow_backend::storage::StorageError;
use taskflow_postgres::PluginCatalog;
use taskflow_runtime::{PluginError, PluginRegistry};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// How often a host looks for changes it was not told about.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// First wait before a version that failed to load here is tried again
/// (doubling up to [`MAX_RETRY`]): a compile timeout or a full disk passes.
const FIRST_RETRY: Duration = Duration::from_secs(2);
/// Longest wait between tries at loading a version that keeps failing.
const MAX_RETRY: Duration = Duration::from_secs(300);

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

/// Applies every change of `catalog` to `registry` once, then keeps applying
/// them as they come until `stop`; counts its reads in `metrics`.
pub async fn sync(
    catalog: PluginCatalog,
    registry: Arc<PluginRegistry>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut changes = match catalog.listen().await {
        Ok(changes) => Some(changes),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for plugin changes; polling for them");
            None
        }
    };
    let mut applied = Applied::default();
    let mut failing = false;
    loop {
        match apply(&catalog, &registry, &mut applied).await {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                tracing::warn!(error = %e, "cannot read the fleet's plugins; retrying");
                failing = true;
            }
            Err(_) => {}
        }
        let notified = async {
            match changes.as_mut() {
                // A lost connection is retried at the next poll, not at
                // once: an outage must not spin this loop.
                Some(changes) => match changes.next().await {
                    Ok(()) => true,
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

/// Brings this host to the catalog: every entry whose digest differs from
/// the one last applied here is applied. The whole catalog is read each time
/// (a row per name): a change committed after a later one is never skipped,
/// as it could be when reading changes by number. A version this host cannot
/// load is logged and tried again later (the one serving stays), as a bad
/// file in the plugin directory is.
async fn apply(
    catalog: &PluginCatalog,
    registry: &PluginRegistry,
    applied: &mut Applied,
) -> Result<(), StorageError> {
    for entry in catalog.entries().await? {
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
        match catalog.bytes(name, digest).await? {
            // Changed again since: the next round brings it.
            None => {}
            // The bytes must be the ones the catalog names: a copy altered
            // in the blob store never runs here.
            Some(bytes) if taskflow_runtime::plugin::digest_of(&bytes) != digest => {
                tracing::error!(
                    plugin = name,
                    digest,
                    found = %taskflow_runtime::plugin::digest_of(&bytes),
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
