//! The fleet's list of hosts: each host reports itself into the shared
//! store every few seconds, and reads who else did (the dashboard's hosts).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use taskflow_model::api::{HostBeat, PluginVersion};

use super::{ServiceError, TaskService};

/// How often a host reports itself.
pub const BEAT_EVERY: Duration = Duration::from_secs(5);
/// Hosts silent this long are listed no more.
const LISTED_FOR: chrono::TimeDelta = chrono::TimeDelta::hours(1);
/// Hosts silent this long are deleted from the store.
const FORGOTTEN_AFTER: chrono::TimeDelta = chrono::TimeDelta::days(1);

impl TaskService {
    /// This host as it reports itself now.
    fn beat_now(&self) -> HostBeat {
        let now = Utc::now();
        HostBeat {
            name: self.config.owner.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            workers: self.config.workers,
            running: self.running_count(),
            plugins: self
                .registry
                .list()
                .into_iter()
                .map(|plugin| PluginVersion {
                    name: plugin.name,
                    digest: plugin.digest,
                })
                .collect(),
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
