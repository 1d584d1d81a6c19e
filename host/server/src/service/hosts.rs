//! The fleet's list of hosts: each host reports itself into the shared
//! store every few seconds, and reads who else did (the dashboard's hosts).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use taskflow_model::api::{HostBeat, PluginVersion, VersionRuns};
use taskflow_model::plugin::PluginInfo;

use super::{ServiceError, TaskService};

/// How often a host reports itself.
pub const BEAT_EVERY: Duration = Duration::from_secs(5);
/// Hosts silent this long are listed no more.
const LISTED_FOR: chrono::TimeDelta = chrono::TimeDelta::hours(1);
/// Hosts silent this long are deleted from the store.
const FORGOTTEN_AFTER: chrono::TimeDelta = chrono::TimeDelta::days(1);

/// Most plugin versions a host keeps counts of (past it, the first by name
/// and digest is forgotten).
const MAX_VERSIONS: usize = 200;

/// The attempts a host ran since it started, by plugin name and digest.
#[derive(Debug, Default)]
pub(super) struct RunCounts(Mutex<BTreeMap<(String, String), VersionRuns>>);

impl RunCounts {
    /// Counts one attempt of `plugin` at `digest`.
    pub(super) fn record(&self, plugin: &str, digest: &str, completed: bool, took: Duration) {
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (plugin.to_owned(), digest.to_owned());
        if !counts.contains_key(&key) && counts.len() >= MAX_VERSIONS {
            counts.pop_first();
        }
        counts.entry(key).or_default().record(completed, took);
    }

    /// Every version loaded now (with its load time) or run since start.
    fn versions(&self, loaded: Vec<PluginInfo>) -> Vec<PluginVersion> {
        let mut versions: BTreeMap<(String, String), PluginVersion> = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|((name, digest), runs)| {
                let version = PluginVersion {
                    name: name.clone(),
                    digest: digest.clone(),
                    load_ms: None,
                    runs: runs.clone(),
                };
                ((name.clone(), digest.clone()), version)
            })
            .collect();
        for plugin in loaded {
            versions
                .entry((plugin.name.clone(), plugin.digest.clone()))
                .or_insert_with(|| PluginVersion {
                    name: plugin.name,
                    digest: plugin.digest,
                    load_ms: None,
                    runs: VersionRuns::default(),
                })
                .load_ms = Some(plugin.load_ms);
        }
        versions.into_values().collect()
    }
}

impl TaskService {
    /// This host as it reports itself now.
    fn beat_now(&self) -> HostBeat {
        let now = Utc::now();
        HostBeat {
            name: self.config.owner.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            workers: self.config.workers,
            running: self.running_count(),
            plugins: self.runs.versions(self.registry.list()),
            started_at: now
                - chrono::TimeDelta::from_std(self.started_at.elapsed()).unwrap_or_default(),
            seen_at: now,
        }
    }

    /// Reports this host into the store every [`BEAT_EVERY`] until `stop`.
    pub async fn announce(self: Arc<Self>, stop: CancellationToken) {
        let mut failures = 0u32;
        loop {
            match self
                .store
                .beat(&self.beat_now(), Utc::now() - FORGOTTEN_AFTER)
                .await
            {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    if failures.is_power_of_two() {
                        tracing::warn!(error = %e, failures, "cannot report this host to the fleet's list of hosts");
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(BEAT_EVERY) => {}
            }
        }
    }

    /// The hosts that reported within the last hour, this one as it is now.
    pub async fn hosts(&self) -> Result<Vec<HostBeat>, ServiceError> {
        let mut hosts = self.store.hosts(Utc::now() - LISTED_FOR).await?;
        let here = self.beat_now();
        hosts.retain(|host| host.name != here.name);
        hosts.push(here);
        hosts.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(hosts)
    }
}
