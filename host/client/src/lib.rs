//! A typed client of TaskFlow's HTTP API, used by the `taskflow` CLI and
//! the tests: [`Client`] has a method per endpoint and answers with the
//! model's types; [`ClientError`] says what to do about a failure.
//!
//! It needs only the model (`taskflow-model`) and reqwest: no engine, no
//! database, no cloud SDK.

use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use taskflow_model::api::{
    BatchRequest, BatchResponse, RestoreSummary, Stats, TaskLogs, TaskPage, TaskView,
};
use taskflow_model::plugin::{PluginInfo, PluginList};
use taskflow_model::task::{NewTask, Task};

/// Why a call failed, in words a CLI user can act on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection.
    #[error(
        "cannot reach the TaskFlow server at {url}: {reason}. Is `taskflow serve` running? (set --server or TASKFLOW_SERVER)"
    )]
    Unreachable {
        /// Server URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The server answered with an error.
    #[error("the server refused ({status}): {message}")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The server's `error` code.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The answer was not what the API describes.
    #[error("unexpected answer from the server: {0}")]
    Decode(String),
}

/// API client.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client of the server at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: reqwest::Client::new(),
        }
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn send(&self, request: RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let response = request.send().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: root_cause(&e),
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        Err(ClientError::Api {
            status,
            code: body["error"].as_str().unwrap_or("unknown").to_owned(),
            message: body["message"].as_str().unwrap_or("no message").to_owned(),
        })
    }

    async fn json<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, ClientError> {
        self.send(request)
            .await?
            .json()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// `POST /tasks`.
    pub async fn submit(&self, task: &NewTask) -> Result<Task, ClientError> {
        self.json(self.request(Method::POST, "/tasks").json(task))
            .await
    }

    /// `POST /tasks/batch`.
    pub async fn submit_batch(&self, tasks: Vec<NewTask>) -> Result<Vec<Task>, ClientError> {
        let response: BatchResponse = self
            .json(
                self.request(Method::POST, "/tasks/batch")
                    .json(&BatchRequest { tasks }),
            )
            .await?;
        Ok(response.tasks)
    }

    /// `GET /tasks/{id}`.
    pub async fn get(&self, id: &str) -> Result<TaskView, ClientError> {
        self.json(self.request(Method::GET, &format!("/tasks/{id}")))
            .await
    }

    /// `GET /tasks`.
    pub async fn list(&self, query: &[(&str, String)]) -> Result<TaskPage, ClientError> {
        self.json(self.request(Method::GET, "/tasks").query(query))
            .await
    }

    /// `POST /tasks/{id}/cancel`.
    pub async fn cancel(&self, id: &str) -> Result<TaskView, ClientError> {
        self.json(self.request(Method::POST, &format!("/tasks/{id}/cancel")))
            .await
    }

    /// `POST /tasks/{id}/retry`.
    pub async fn retry(&self, id: &str) -> Result<TaskView, ClientError> {
        self.json(self.request(Method::POST, &format!("/tasks/{id}/retry")))
            .await
    }

    /// `GET /tasks/{id}/logs`.
    pub async fn logs(&self, id: &str) -> Result<TaskLogs, ClientError> {
        self.json(self.request(Method::GET, &format!("/tasks/{id}/logs")))
            .await
    }

    /// `GET /stats`.
    pub async fn stats(&self) -> Result<Stats, ClientError> {
        self.json(self.request(Method::GET, "/stats")).await
    }

    /// `GET /plugins`.
    pub async fn plugins(&self) -> Result<Vec<PluginInfo>, ClientError> {
        let list: PluginList = self.json(self.request(Method::GET, "/plugins")).await?;
        Ok(list.plugins)
    }

    /// `PUT /plugins/{name}`.
    pub async fn upload_plugin(
        &self,
        name: &str,
        wasm: Vec<u8>,
    ) -> Result<PluginInfo, ClientError> {
        self.json(
            self.request(Method::PUT, &format!("/plugins/{name}"))
                .header("content-type", "application/wasm")
                .body(wasm),
        )
        .await
    }

    /// `DELETE /plugins/{name}`.
    pub async fn remove_plugin(&self, name: &str) -> Result<(), ClientError> {
        self.send(self.request(Method::DELETE, &format!("/plugins/{name}")))
            .await
            .map(|_| ())
    }

    /// `GET /admin/backup`: the backup document.
    pub async fn backup(&self) -> Result<Vec<u8>, ClientError> {
        let response = self
            .send(self.request(Method::GET, "/admin/backup"))
            .await?;
        response
            .bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// `POST /admin/restore`.
    pub async fn restore(&self, document: Vec<u8>) -> Result<RestoreSummary, ClientError> {
        self.json(
            self.request(Method::POST, "/admin/restore")
                .header("content-type", "application/json")
                .body(document),
        )
        .await
    }
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}
