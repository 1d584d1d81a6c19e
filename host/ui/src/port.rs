//! What the dashboard asks of the host: the task service's reads and
//! actions, in the model's types. The host implements it over its service;
//! a test implements it over whatever it likes.

use taskflow_model::api::{HostBeat, Stats, TaskLogs, TaskPage, TaskView};
use taskflow_model::plugin::PluginInfo;
use taskflow_model::query::ListQuery;
use taskflow_model::task::{NewTask, Task, TaskId};

/// A refusal or failure of the service, as the API would answer it: the
/// HTTP status and a message fit for the operator (it never carries
/// internals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UiError {
    /// HTTP status code.
    pub status: u16,
    /// What happened and what to do.
    pub message: String,
}

impl UiError {
    /// A 404 naming what is missing.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: 404,
            message: message.into(),
        }
    }

    /// A 400 saying what to fix.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
        }
    }
}

/// The host as the dashboard sees it.
#[async_trait::async_trait]
pub trait UiService: Send + Sync {
    /// Queue, task and host statistics (as `GET /stats`).
    async fn stats(&self) -> Result<Stats, UiError>;
    /// The hosts of the fleet that reported lately, this one included.
    async fn hosts(&self) -> Result<Vec<HostBeat>, UiError>;
    /// A page of tasks.
    async fn list(&self, query: &ListQuery) -> Result<TaskPage, UiError>;
    /// One task with its bodies and its history, log lines included (the
    /// first lines of each attempt; a running one's newest).
    async fn task(&self, id: TaskId) -> Result<TaskView, UiError>;
    /// Every attempt's whole log (as `GET /tasks/{id}/logs`).
    async fn logs(&self, id: TaskId) -> Result<TaskLogs, UiError>;
    /// Cancels a pending or running task.
    async fn cancel(&self, id: TaskId) -> Result<TaskView, UiError>;
    /// Queues a failed or cancelled task again.
    async fn retry(&self, id: TaskId) -> Result<TaskView, UiError>;
    /// Submits a task.
    async fn submit(&self, task: NewTask) -> Result<Task, UiError>;
    /// The plugins loaded on this host.
    fn plugins(&self) -> Vec<PluginInfo>;
    /// Checks, loads and (on shared backends) publishes a plugin version to
    /// every host.
    async fn upload_plugin(&self, name: &str, wasm: Vec<u8>) -> Result<PluginInfo, UiError>;
}
