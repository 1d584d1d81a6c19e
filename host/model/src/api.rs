//! The HTTP API's request and response bodies besides the task itself.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::attempt::Attempt;
use crate::plugin::{PluginInfo, RegistryStats};
use crate::task::{NewTask, Task, TaskId, TaskStatus};

/// Number of tasks in each status; every status is present.
pub type StatusCounts = BTreeMap<TaskStatus, u64>;

/// `POST /tasks/batch`: many tasks in one request.
#[derive(Debug, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// The tasks, 1 to 1000.
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 1000))]
    pub tasks: Vec<NewTask>,
}

/// The accepted tasks of a batch, in request order.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BatchResponse {
    /// The tasks.
    pub tasks: Vec<Task>,
}

/// A task as shown to clients: the record plus live progress while it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskView {
    /// The task record.
    #[serde(flatten)]
    pub task: Task,
    /// Percent done, as last reported by the plugin, while running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<u8>,
}

/// `GET /tasks/{id}/logs`: what the plugin logged and printed in each
/// attempt the task keeps in its history.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskLogs {
    /// The task.
    pub id: TaskId,
    /// Its status now (the logs are complete once it is terminal).
    pub status: TaskStatus,
    /// Attempts started in all (the history keeps the latest ones).
    pub attempts: u32,
    /// The attempts kept, oldest first, each with its log lines.
    pub history: Vec<Attempt>,
}

/// `GET /tasks`: one page of tasks in submission order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskPage {
    /// The tasks, oldest submission first.
    pub tasks: Vec<Task>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /stats`: the system as this host sees it, and this host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Stats {
    /// Every host sharing this one's backends reports the same.
    pub system: SystemStats,
    /// This host alone.
    pub host: HostStats,
}

/// What every host of a system sees alike.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SystemStats {
    /// Queued tasks by priority.
    pub queue: QueueDepth,
    /// Tasks by status.
    #[cfg_attr(feature = "openapi", schema(value_type = std::collections::HashMap<String, u64>))]
    pub tasks: StatusCounts,
}

/// One host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostStats {
    /// This host's name, as tasks it runs record it in `host`.
    pub name: String,
    /// Worker count.
    pub workers: usize,
    /// Tasks running on this host now.
    pub running: usize,
    /// Plugins loaded here and their versions.
    pub plugins: Vec<PluginInfo>,
    /// Plugin registry counters.
    pub registry: RegistryStats,
    /// Seconds since the host started.
    pub uptime_seconds: u64,
}

/// A host of the fleet as it last reported itself (every few seconds, into
/// the store all hosts share): the dashboard's list of hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostBeat {
    /// Its name (`TASKFLOW_HOST_ID`), as the tasks it runs record it.
    pub name: String,
    /// The taskflow version it runs.
    pub version: String,
    /// Its workers.
    pub workers: usize,
    /// Tasks it ran at that moment.
    pub running: usize,
    /// The plugins it had loaded.
    pub plugins: Vec<PluginVersion>,
    /// When it started.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// When it reported this.
    pub seen_at: chrono::DateTime<chrono::Utc>,
}

/// A plugin version a host has loaded or run since it started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PluginVersion {
    /// Plugin name.
    pub name: String,
    /// Hex SHA-256 of its component.
    pub digest: String,
    /// Milliseconds the host took to make it runnable (compiled, or loaded
    /// from its compile cache); absent once another version replaced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_ms: Option<u64>,
    /// The attempts it ran on the host since the host started.
    #[serde(default)]
    pub runs: VersionRuns,
}

/// Upper bounds, in microseconds, of the duration buckets of
/// [`VersionRuns::durations`]; a last bucket holds the longer attempts.
pub const DURATION_BOUNDS_US: [u64; 18] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// Attempts of one plugin version: how they ended and how long they took,
/// as counts that add up across hosts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VersionRuns {
    /// Attempts that completed their task.
    pub completed: u64,
    /// Attempts that failed (whether the task was retried or failed).
    pub failed: u64,
    /// Attempts by duration: entry `i` counts those within
    /// [`DURATION_BOUNDS_US`]`[i]` and above the bound before; one entry
    /// more counts the longer ones. Empty before the first attempt.
    #[serde(default)]
    pub durations: Vec<u64>,
}

impl VersionRuns {
    /// Counts one attempt.
    pub fn record(&mut self, completed: bool, duration: std::time::Duration) {
        if completed {
            self.completed += 1;
        } else {
            self.failed += 1;
        }
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        let bucket = DURATION_BOUNDS_US.partition_point(|&bound| bound < micros);
        self.durations.resize(DURATION_BOUNDS_US.len() + 1, 0);
        self.durations[bucket] += 1;
    }

    /// Adds another host's counts.
    pub fn add(&mut self, other: &Self) {
        self.completed += other.completed;
        self.failed += other.failed;
        if self.durations.len() < other.durations.len() {
            self.durations.resize(other.durations.len(), 0);
        }
        for (mine, theirs) in self.durations.iter_mut().zip(&other.durations) {
            *mine += theirs;
        }
    }

    /// Attempts counted.
    pub fn attempts(&self) -> u64 {
        self.completed + self.failed
    }

    /// The share of attempts that failed, 0 to 1; `None` before any.
    pub fn failure_rate(&self) -> Option<f64> {
        let attempts = self.attempts();
        (attempts > 0).then(|| self.failed as f64 / attempts as f64)
    }

    /// The upper bound, in microseconds, of the bucket holding quantile `q`
    /// (0 to 1) of the durations: at least that share took at most this.
    /// `None` before any attempt; `Some(u64::MAX)` when it lies beyond the
    /// last bound.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let total: u64 = self.durations.iter().sum();
        if total == 0 {
            return None;
        }
        let wanted = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, count) in self.durations.iter().enumerate() {
            seen += count;
            if seen >= wanted {
                return Some(DURATION_BOUNDS_US.get(bucket).copied().unwrap_or(u64::MAX));
            }
        }
        Some(u64::MAX)
    }
}

/// How many entries a queue holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueDepth {
    /// Entries ready to run, by priority; every priority 1 to 10 is present.
    #[cfg_attr(feature = "openapi", schema(value_type = std::collections::HashMap<String, u64>))]
    pub ready: BTreeMap<u8, u64>,
    /// Entries waiting out a retry backoff.
    pub delayed: u64,
    /// Ready plus delayed.
    pub total: u64,
}

/// What a restore did, as `POST /admin/restore` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RestoreSummary {
    /// Tasks saved.
    pub restored: usize,
    /// Pending tasks queued again.
    pub queued: usize,
    /// Tasks left alone because they are pending or running on this host.
    pub skipped: usize,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn version_runs_add_up_across_hosts_and_give_quantiles() {
        let mut a = VersionRuns::default();
        assert_eq!(a.quantile_us(0.5), None);
        assert_eq!(a.failure_rate(), None);
        for _ in 0..8 {
            a.record(true, Duration::from_micros(80));
        }
        let mut b = VersionRuns::default();
        b.record(false, Duration::from_millis(3));
        b.record(true, Duration::from_secs(120));
        a.add(&b);
        assert_eq!((a.completed, a.failed, a.attempts()), (9, 1, 10));
        assert_eq!(a.failure_rate(), Some(0.1));
        assert_eq!(a.quantile_us(0.5), Some(100));
        assert_eq!(a.quantile_us(0.8), Some(100));
        assert_eq!(a.quantile_us(0.9), Some(5_000));
        assert_eq!(a.quantile_us(0.99), Some(u64::MAX));
        // Counts from a host that never ran it add nothing.
        let before = a.clone();
        a.add(&VersionRuns::default());
        assert_eq!(a, before);
    }
}
