//! Helpers shared by TaskFlow's end-to-end tests: where the built plugins and
//! fixtures are, a host on a scratch directory ([`TestHost`]), and the API
//! through the project's typed client: [`submit`], [`wait_for`],
//! [`eventually`], and one metrics parser ([`parse_metrics`]).

use std::path::{Path, PathBuf};

pub use taskflow_client::Client;
use taskflow_model::api::TaskView;
use taskflow_model::task::{NewTask, Task, TaskId};

pub mod aws;
pub mod image;
pub mod pg;
pub mod process;
pub mod proxy;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A built example plugin, `plugins/dist/<name>.wasm`.
pub fn plugin_wasm(name: &str) -> PathBuf {
    built(
        workspace_root()
            .join("plugins/dist")
            .join(format!("{name}.wasm")),
    )
}

/// A built hostile fixture, `tests/fixtures/dist/<name>.wasm`.
pub fn fixture_wasm(name: &str) -> PathBuf {
    built(
        workspace_root()
            .join("tests/fixtures/dist")
            .join(format!("{name}.wasm")),
    )
}

/// The bytes of a built plugin or fixture.
pub fn wasm_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn built(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: build the plugins first with `plugins/build.sh` (the README's test command does)",
        path.display()
    );
    path
}

/// Copies the named example plugins into `dir`, the way an operator drops
/// them into a plugin directory.
pub fn install_plugins(dir: &Path, names: &[&str]) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    for name in names {
        let target = dir.join(format!("{name}.wasm"));
        std::fs::copy(plugin_wasm(name), &target)
            .unwrap_or_else(|e| panic!("cannot copy {name}: {e}"));
    }
}

/// Hex SHA-256 of a file, as the registry reports digests.
pub fn file_digest(path: &Path) -> String {
    taskflow_runtime::plugin::digest_of(&wasm_bytes(path))
}

/// A host running in this test process on a scratch data directory, with
/// the example plugins installed, serving HTTP on a free port.
pub struct TestHost {
    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    /// The data directory (deleted on drop).
    pub data: tempfile::TempDir,
    /// The running service, for white-box checks.
    pub service: std::sync::Arc<taskflow_server::service::TaskService>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
    schema: Option<String>,
    /// The S3 bucket of large bodies, on [`Backend::Sqs`].
    pub bucket: Option<String>,
}

/// The backend combinations a host can run on; the behaviour tests run on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded default: in-process queue, task files.
    Files,
    /// PostgreSQL as the store and the queue, in a fresh schema.
    Postgres,
    /// SQS (moto, fresh queues) as the queue, PostgreSQL as the store,
    /// S3 (moto, a fresh bucket) for large bodies.
    Sqs,
}

impl TestHost {
    /// Starts a host with `workers` workers and the example plugins (plus
    /// the hostile fixture when `hostile` is set).
    pub async fn start(workers: usize, hostile: bool) -> Self {
        Self::start_with(workers, hostile, |_| {}).await
    }

    /// Like [`start`](Self::start), on `backend`.
    pub async fn start_on(backend: Backend, workers: usize, hostile: bool) -> Self {
        Self::start_on_with(backend, workers, hostile, |_| {}).await
    }

    /// Like [`start_with`](Self::start_with), on `backend`.
    pub async fn start_on_with(
        backend: Backend,
        workers: usize,
        hostile: bool,
        adjust: impl FnOnce(&mut taskflow_server::config::ServeConfig),
    ) -> Self {
        match backend {
            Backend::Files => Self::start_with(workers, hostile, adjust).await,
            Backend::Postgres | Backend::Sqs => {
                // Dropped by `stop`; a failed test's is left to look at.
                let (schema, _) = pg::fresh_schema().await;
                let prefix = aws::fresh_prefix();
                let mut bucket = None;
                if backend == Backend::Sqs {
                    aws::create_queues(&prefix, 3, 10).await;
                    bucket = Some(aws::fresh_bucket().await);
                }
                let s3_bucket = bucket.clone();
                let mut host = Self::start_with(workers, hostile, |config| {
                    if let Some(bucket) = s3_bucket {
                        config.blobs = taskflow_server::config::BlobBackend::S3;
                        config.s3.s3_bucket = Some(bucket);
                    }
                    config.storage = taskflow_server::config::StorageBackend::Postgres;
                    config.queue = match backend {
                        Backend::Sqs => taskflow_server::config::QueueBackend::Sqs,
                        _ => taskflow_server::config::QueueBackend::Postgres,
                    };
                    config.sqs.sqs_queue_prefix = prefix;
                    config.postgres.database_url = Some(pg::schema_url(&schema));
                    adjust(config);
                })
                .await;
                host.schema = Some(schema);
                host.bucket = bucket;
                host
            }
        }
    }

    /// Like [`start`](Self::start), with a chance to adjust the configuration.
    pub async fn start_with(
        workers: usize,
        hostile: bool,
        adjust: impl FnOnce(&mut taskflow_server::config::ServeConfig),
    ) -> Self {
        let data = tempfile::tempdir().expect("tempdir");
        let plugins = data.path().join("plugins");
        install_plugins(&plugins, &["echo", "wordcount", "hash", "flaky"]);
        if hostile {
            std::fs::copy(fixture_wasm("hostile"), plugins.join("hostile.wasm"))
                .expect("copy fixture");
        }
        let mut config = serve_config(data.path(), workers);
        adjust(&mut config);
        let server = taskflow_server::Server::start(config)
            .await
            .expect("host starts");
        let url = format!("http://{}", server.local_addr().expect("addr"));
        let service = server.service().clone();
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            server
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .expect("host runs");
        });
        Self {
            url,
            data,
            service,
            shutdown: Some(shutdown),
            handle: Some(handle),
            schema: None,
            bucket: None,
        }
    }

    /// Stops the host gracefully and waits for it.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.expect("host stops cleanly");
        }
        if let Some(schema) = self.schema.take() {
            pg::drop_schema(&schema).await;
        }
        std::mem::replace(&mut self.data, tempfile::tempdir().expect("tempdir"))
    }

    /// A full URL for `path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// The typed client of this host (no token).
    pub fn client(&self) -> Client {
        api(&self.url)
    }
}

/// The typed client (`taskflow-client`, the one the CLI uses) of the host
/// or load balancer at `url`, with no token.
pub fn api(url: &str) -> Client {
    Client::new(url, None)
}

/// The task a `POST /tasks` body describes (`{"plugin": …, "payload": …,
/// "priority": …}`), for tests that write tasks as JSON.
pub fn as_task(body: serde_json::Value) -> NewTask {
    serde_json::from_value(body.clone()).unwrap_or_else(|e| panic!("{body} is no task: {e}"))
}

/// Submits `task`, which the host must accept; the task as accepted.
pub async fn submit(client: &Client, task: &NewTask) -> Task {
    client
        .submit(task)
        .await
        .unwrap_or_else(|e| panic!("submit a {} task: {e}", task.plugin))
}

/// Reads task `id` until `done` accepts it, every 25 ms; panics after
/// `limit`, showing the task as last read.
pub async fn wait_for(
    client: &Client,
    id: TaskId,
    limit: std::time::Duration,
    mut done: impl FnMut(&TaskView) -> bool,
) -> TaskView {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let last = match client.get(&id.to_string()).await {
            Ok(view) if done(&view) => return view,
            Ok(view) => format!("{:?}", view.task),
            Err(e) => e.to_string(),
        };
        assert!(
            std::time::Instant::now() < deadline,
            "task {id} not there within {limit:?}; last read: {last}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// Waits (at most `limit`) until task `id` is completed, failed or cancelled.
pub async fn wait_terminal(client: &Client, id: TaskId, limit: std::time::Duration) -> TaskView {
    wait_for(client, id, limit, |view| view.task.status.is_terminal()).await
}

/// Settings of a test host on `data_dir`: loopback, a free port, no fsync.
pub fn serve_config(data_dir: &Path, workers: usize) -> taskflow_server::config::ServeConfig {
    use clap::Parser;
    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        config: taskflow_server::config::ServeConfig,
    }
    let mut config = Wrapper::parse_from(["taskflow"]).config;
    config.listen = "127.0.0.1:0".parse().expect("addr");
    config.data_dir = data_dir.to_path_buf();
    config.workers = Some(workers);
    config.retry_base_ms = 20;
    config.shutdown_grace_secs = 5;
    config
}

/// The `taskflow` binary built next to the test executables.
pub fn taskflow_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> → target/<profile>/taskflow
    let binary = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("taskflow"))
        .unwrap_or_default();
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build --bins` (tests/run.sh does)",
        binary.display()
    );
    binary
}

/// `GET url` as JSON; a failure names the URL.
pub async fn get_json(client: &reqwest::Client, url: &str) -> serde_json::Value {
    let response = client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    response
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// Waits until `check` holds, looking every 20 ms; panics naming `what`
/// after 30 s (what a watcher or a background job applies asynchronously).
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Polls `GET url` until `done` accepts the JSON body (bounded: panics after `limit`).
pub async fn poll_json(
    client: &reqwest::Client,
    url: &str,
    limit: std::time::Duration,
    mut done: impl FnMut(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Ok(response) = client.get(url).send().await
            && let Ok(body) = response.json::<serde_json::Value>().await
            && done(&body)
        {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out polling {url}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// Every task `GET {base}/tasks?{query}` lists, page after page (200 a page),
/// in the order the pages give them.
pub async fn list_all(client: &reqwest::Client, base: &str, query: &str) -> Vec<serde_json::Value> {
    let mut tasks = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/tasks?limit=200&{query}");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let response = client
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert!(
            response.status().is_success(),
            "GET {url}: {}",
            response.status()
        );
        let page: serde_json::Value = response.json().await.expect("page is JSON");
        tasks.extend(page["tasks"].as_array().expect("tasks").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return tasks,
        }
    }
}

/// `POST {url}/tasks/batch` of `tasks`, which must be accepted; the tasks.
pub async fn submit_batch(
    client: &reqwest::Client,
    url: &str,
    tasks: Vec<serde_json::Value>,
) -> Vec<serde_json::Value> {
    let response = client
        .post(format!("{url}/tasks/batch"))
        .json(&serde_json::json!({ "tasks": tasks }))
        .send()
        .await
        .expect("batch");
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    response.json::<serde_json::Value>().await.expect("json")["tasks"]
        .as_array()
        .expect("tasks")
        .clone()
}

/// The sum of the `/metrics` series of the host at `url` named `name` whose
/// labels include each of `labels` (e.g. `what="completed"`), whatever
/// their order.
pub async fn metric_sum(client: &reqwest::Client, url: &str, name: &str, labels: &[&str]) -> u64 {
    let text = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}/metrics: {e}"))
        .text()
        .await
        .expect("metrics text");
    let wanted: Vec<(&str, &str)> = labels
        .iter()
        .map(|label| {
            let (key, value) = label
                .split_once('=')
                .unwrap_or_else(|| panic!("a label is key=\"value\": {label}"));
            (key, value.trim_matches('"'))
        })
        .collect();
    // Counters: whole numbers.
    sample_sum(&parse_metrics(&text), name, &wanted) as u64
}

/// One sample of a metrics text (Prometheus or OpenMetrics).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series name, e.g. `taskflow_tasks`.
    pub name: String,
    /// Its labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// The samples of a metrics text, in order; comments left out. Label values
/// may hold any character (`route="/tasks/{id}"`), escapes included.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| parse_sample(line).unwrap_or_else(|| panic!("not a metrics sample: {line}")))
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut labels = std::collections::BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = rest.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next()? {
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    (at, '"') => break at,
                    (_, c) => value.push(c),
                }
            };
            labels.insert(key.to_owned(), value);
            rest = &after[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        value => value.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The sum of the samples named `name` that carry each of `labels`.
pub fn sample_sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|sample| sample.name == name)
        .filter(|sample| {
            labels
                .iter()
                .all(|(key, value)| sample.labels.get(*key).is_some_and(|v| v == value))
        })
        .map(|sample| sample.value)
        .sum()
}

/// The one sample named `name` with exactly `labels`, if there is one.
pub fn sample_value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|sample| {
            sample.name == name
                && sample.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(*key).is_some_and(|v| v == value))
        })
        .map(|sample| sample.value)
}
