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

/// A plugin version a host has loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PluginVersion {
    /// Plugin name.
    pub name: String,
    /// Hex SHA-256 of its component.
    pub digest: String,
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
