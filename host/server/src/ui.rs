//! The dashboard (`taskflow-ui`) over this host's service: each of its
//! questions answered by the service, each refusal worded as the API words
//! it.

use std::sync::Arc;

use taskflow_backend::storage::ListQuery;
use taskflow_model::api::{HostBeat, Stats, TaskLogs, TaskPage, TaskView};
use taskflow_model::plugin::PluginInfo;
use taskflow_model::task::{NewTask, Task, TaskId};
use taskflow_ui::{UiError, UiService};

use crate::api::error::ApiError;
use crate::service::{ServiceError, TaskService};

/// The service as the dashboard sees it.
pub struct Dashboard(pub Arc<TaskService>);

fn refusal(error: ServiceError) -> UiError {
    let answer = ApiError::from(error);
    UiError {
        status: answer.status().as_u16(),
        message: answer.message().to_owned(),
    }
}

#[async_trait::async_trait]
impl UiService for Dashboard {
    async fn stats(&self) -> Result<Stats, UiError> {
        self.0.stats().await.map_err(refusal)
    }

    async fn hosts(&self) -> Result<Vec<HostBeat>, UiError> {
        self.0.hosts().await.map_err(refusal)
    }

    async fn list(&self, query: &ListQuery) -> Result<TaskPage, UiError> {
        self.0.list(query).await.map_err(refusal)
    }

    async fn task(&self, id: TaskId) -> Result<TaskView, UiError> {
        self.0.get(id).await.map_err(refusal)
    }

    async fn logs(&self, id: TaskId) -> Result<TaskLogs, UiError> {
        self.0.logs(id).await.map_err(refusal)
    }

    async fn cancel(&self, id: TaskId) -> Result<TaskView, UiError> {
        self.0.cancel(id).await.map_err(refusal)
    }

    async fn retry(&self, id: TaskId) -> Result<TaskView, UiError> {
        self.0.retry(id).await.map_err(refusal)
    }

    async fn submit(&self, task: NewTask) -> Result<Task, UiError> {
        self.0.submit(task).await.map(|s| s.task).map_err(refusal)
    }

    fn plugins(&self) -> Vec<PluginInfo> {
        self.0.plugins()
    }

    async fn upload_plugin(&self, name: &str, wasm: Vec<u8>) -> Result<PluginInfo, UiError> {
        taskflow_runtime::plugin::validate_name(name).map_err(|e| UiError {
            status: 422,
            message: e.to_string(),
        })?;
        self.0
            .install_plugin(name, wasm)
            .await
            .map(|loaded| loaded.info())
            .map_err(refusal)
    }
}
