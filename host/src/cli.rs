//! The `taskflow` command: `serve` runs a host; every other command is a
//! client of a running host's HTTP API.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::client::{Client, ClientError};
#[cfg(feature = "server")]
use crate::config::ServeConfig;
use crate::task::{NewTask, TaskStatus};
use crate::telemetry::LogFormat;

/// TaskFlow: priority task processing with sandboxed WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "taskflow", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "TASKFLOW_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,

    /// Settings file read at start (variables already set win); `deploy`
    /// writes its stack's settings into it [default: .env, when present].
    #[arg(long, global = true, env = "TASKFLOW_ENV_FILE")]
    pub env_file: Option<PathBuf>,

    /// The settings that came from the env file rather than the
    /// environment (filled in after parsing).
    #[arg(skip)]
    pub from_env_file: Vec<String>,

    /// Server the client commands talk to; accepted before or after the
    /// subcommand.
    #[command(flatten)]
    pub server: ServerArgs,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a host: API, queue, workers and plugin runtime.
    #[cfg(feature = "server")]
    Serve(Box<ServeConfig>),
    /// Run a round-robin load balancer in front of several hosts.
    #[cfg(feature = "server")]
    Lb(crate::lb::LbConfig),
    /// Create or update the AWS stack (CloudFormation) and write its settings into .env.
    #[cfg(feature = "server")]
    Deploy(crate::deploy::DeployArgs),
    /// Submit one task, or many from a JSON-lines file.
    Submit(SubmitArgs),
    /// Show a task.
    Get {
        /// Task id.
        id: String,
    },
    /// List tasks.
    List(ListArgs),
    /// Cancel a pending or running task.
    Cancel {
        /// Task id.
        id: String,
    },
    /// Show queue, task and plugin statistics.
    Stats,
    /// Check that the host on this machine answers `GET /health` (the
    /// container image's health check): exit status 0 if it does.
    Health(HealthArgs),
    /// Manage a server's plugins, or run one locally (`taskflow plugin run`).
    #[command(subcommand, visible_alias = "plugin")]
    Plugins(PluginsCommand),
    /// Save every task of the server into a timestamped backup file.
    Backup {
        /// Where to write it [default: taskflow-backup-TIME.json].
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Restore tasks from a backup file into the server.
    Restore {
        /// The backup file.
        file: PathBuf,
    },
    /// Compile a plugin for a host: run by `serve`, not by people.
    #[cfg(feature = "server")]
    #[command(name = crate::runtime::compiler::SUBCOMMAND, hide = true)]
    CompilePlugin {
        /// The host's engine settings, as JSON.
        #[arg(long)]
        engine: String,
        /// Where to write the compiled artifact.
        #[arg(long)]
        output: PathBuf,
    },
}

/// Which server a client command talks to. Both options are global: they
/// may come before the subcommand (`taskflow --server URL stats`) or after it
/// (`taskflow stats --server URL`). `serve` and `lb` ignore them.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Server URL (client commands).
    #[arg(
        long,
        global = true,
        env = "TASKFLOW_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,
    /// Bearer token (client commands; the admin token for plugin and backup commands).
    #[arg(long, global = true, env = "TASKFLOW_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Secrets Manager secret (name or ARN) holding the API token, read
    /// when no --token is given (`deploy` writes it into .env).
    #[arg(long, global = true, env = "TASKFLOW_TOKEN_SECRET")]
    pub token_secret: Option<String>,
    /// Secrets Manager secret holding the admin token, read for plugin,
    /// backup and restore commands when no --token is given.
    #[arg(long, global = true, env = "TASKFLOW_ADMIN_TOKEN_SECRET")]
    pub admin_token_secret: Option<String>,
}

impl ServerArgs {
    /// A client with the API token.
    async fn client(&self) -> anyhow::Result<Client> {
        self.client_with(self.token_secret.as_deref()).await
    }

    /// A client with the admin token (plugin, backup and restore commands).
    async fn admin_client(&self) -> anyhow::Result<Client> {
        self.client_with(self.admin_token_secret.as_deref()).await
    }

    /// A client with --token, or else the token in `secret`, or none.
    async fn client_with(&self, secret: Option<&str>) -> anyhow::Result<Client> {
        let token = match (&self.token, secret) {
            (Some(token), _) => Some(token.clone()),
            #[cfg(feature = "server")]
            (None, Some(id)) => {
                let sdk = crate::aws::sdk_config().await;
                let client = aws_sdk_secretsmanager::Client::new(&sdk);
                let token = crate::secrets::read(&client, id)
                    .await
                    .context("cannot read the API token (pass --token, or fix TASKFLOW_TOKEN_SECRET / TASKFLOW_ADMIN_TOKEN_SECRET)")?;
                Some(token)
            }
            #[cfg(not(feature = "server"))]
            (None, Some(_)) => bail!(
                "this taskflow is a client-only build, which cannot read AWS Secrets Manager: pass --token (or set TASKFLOW_TOKEN)"
            ),
            (None, None) => None,
        };
        Ok(Client::new(&self.server, token))
    }

    fn has_token(&self) -> bool {
        self.token.is_some() || self.token_secret.is_some() || self.admin_token_secret.is_some()
    }
}

/// `taskflow submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Plugin to run (not used with --file).
    #[arg(required_unless_present = "file")]
    pub plugin: Option<String>,
    /// JSON payload.
    #[arg(long, short, default_value = "null")]
    pub payload: String,
    /// Priority, 1 (highest) to 10.
    #[arg(long)]
    pub priority: Option<u8>,
    /// Attempts before the task fails.
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Timeout of one attempt in milliseconds.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Idempotency key.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Wait until the task finishes and print it.
    #[arg(long)]
    pub wait: bool,
    /// Submit every task of a JSON-lines file (one `{"plugin": …}` per line), in batches.
    #[arg(long, conflicts_with_all = ["plugin", "wait"])]
    pub file: Option<PathBuf>,
}

/// `taskflow list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this status.
    #[arg(long)]
    pub status: Option<TaskStatus>,
    /// Only this plugin.
    #[arg(long)]
    pub plugin: Option<String>,
    /// Tasks to show.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
}

/// `taskflow health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// URL to check [default: /health on TASKFLOW_LISTEN's port, on this machine].
    #[arg(long)]
    pub url: Option<String>,
    /// The address the host listens on.
    #[arg(long, env = "TASKFLOW_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
}

/// `taskflow plugins …`.
#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// List loaded plugins.
    List,
    /// Upload a component; it replaces the running version once it passes checks.
    Upload {
        /// The `.wasm` component.
        file: PathBuf,
        /// Plugin name [default: the file stem].
        #[arg(long)]
        name: Option<String>,
    },
    /// Unload a plugin and delete its file.
    Remove {
        /// Plugin name.
        name: String,
    },
    /// Run one task on a `.wasm` plugin here, with no server: the same
    /// runtime, sandbox and limits as a host.
    #[cfg(feature = "server")]
    Run(crate::author::RunArgs),
    /// Create a plugin project, ready to build, in Rust, Python or JavaScript.
    #[cfg(feature = "server")]
    New(crate::author::NewArgs),
    /// Build the plugin project in a directory into `<dir>/<name>.wasm`.
    #[cfg(feature = "server")]
    Build(crate::author::BuildArgs),
}

/// Tasks per request when submitting a file.
const SUBMIT_BATCH: usize = 500;

/// Runs a parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let has_token = cli.server.has_token();
    let env_file = cli
        .env_file
        .unwrap_or_else(|| crate::envfile::DEFAULT.into());
    run_command(cli.command, cli.server, &env_file, &cli.from_env_file)
        .await
        .map_err(|error| explain_unauthorized(error, has_token))
}

/// A `401` from the server, with what the user can do about it.
fn explain_unauthorized(error: anyhow::Error, has_token: bool) -> anyhow::Error {
    let unauthorized = matches!(
        error.downcast_ref::<ClientError>(),
        Some(ClientError::Api { status, .. }) if *status == reqwest::StatusCode::UNAUTHORIZED
    );
    match (unauthorized, has_token) {
        (false, _) => error,
        (true, false) => error.context("the server needs a token: pass --token, or set TASKFLOW_TOKEN (or TASKFLOW_TOKEN_SECRET, the secret holding it)"),
        (true, true) => error.context(
            "the server refused the token (plugin, backup and restore commands need the admin token when the server has one)",
        ),
    }
}

// `deploy` alone reads the env file's path and what came from it.
#[cfg_attr(not(feature = "server"), allow(unused_variables))]
async fn run_command(
    command: Command,
    server: ServerArgs,
    env_file: &std::path::Path,
    from_env_file: &[String],
) -> anyhow::Result<()> {
    match command {
        #[cfg(feature = "server")]
        Command::Serve(mut config) => {
            config.compiler = std::env::current_exe().ok();
            let server = crate::server::Server::start(*config).await?;
            server.run(crate::server::shutdown_signal()).await
        }
        #[cfg(feature = "server")]
        Command::Lb(config) => crate::lb::run(config, crate::server::shutdown_signal()).await,
        #[cfg(feature = "server")]
        Command::Deploy(args) => crate::deploy::run(args, env_file, from_env_file).await,
        Command::Health(args) => health(args).await,
        Command::Submit(args) => submit(args, &server).await,
        Command::Get { id } => print_json(&server.client().await?.get(&task_id(&id)?).await?),
        Command::List(args) => {
            let mut query = vec![("limit", args.limit.to_string())];
            if let Some(status) = args.status {
                query.push(("status", status.to_string()));
            }
            if let Some(plugin) = args.plugin {
                query.push(("plugin", plugin));
            }
            let page = server.client().await?.list(&query).await?;
            for task in &page.tasks {
                out!(
                    "{}  {:<9}  p{:<2}  {}",
                    task.id,
                    task.status,
                    task.priority,
                    task.plugin
                );
            }
            if page.next_cursor.is_some() {
                out!("… more: raise --limit");
            }
            Ok(())
        }
        Command::Cancel { id } => print_json(&server.client().await?.cancel(&task_id(&id)?).await?),
        Command::Stats => print_json(&server.client().await?.stats().await?),
        Command::Plugins(PluginsCommand::List) => {
            for plugin in server.client().await?.plugins().await? {
                out!(
                    "{:<24} {}  {:>9} bytes  contract {:<6}  loaded {}",
                    plugin.name,
                    plugin.digest.get(..12).unwrap_or(&plugin.digest),
                    plugin.size,
                    plugin.contract,
                    plugin.loaded_at
                );
            }
            Ok(())
        }
        Command::Plugins(PluginsCommand::Upload { file, name }) => {
            let name = match name {
                Some(name) => name,
                None => file
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .map(str::to_owned)
                    .context("cannot take a plugin name from the file name; pass --name")?,
            };
            let wasm =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let info = server
                .admin_client()
                .await?
                .upload_plugin(&name, wasm)
                .await?;
            out!("loaded {} ({})", info.name, info.digest);
            Ok(())
        }
        Command::Plugins(PluginsCommand::Remove { name }) => {
            server.admin_client().await?.remove_plugin(&name).await?;
            out!("removed {name}");
            Ok(())
        }
        #[cfg(feature = "server")]
        Command::Plugins(PluginsCommand::Run(args)) => crate::author::run(args).await,
        #[cfg(feature = "server")]
        Command::Plugins(PluginsCommand::New(args)) => crate::author::new(&args),
        #[cfg(feature = "server")]
        Command::Plugins(PluginsCommand::Build(args)) => {
            tokio::task::block_in_place(|| crate::author::build(&args))
        }
        Command::Backup { output } => backup(output, &server).await,
        Command::Restore { file } => restore(file, &server).await,
        #[cfg(feature = "server")]
        Command::CompilePlugin { engine, output } => {
            // Compiling is CPU-bound; nothing else runs in this process.
            tokio::task::block_in_place(|| crate::runtime::compiler::run_child(&engine, &output))
                .map_err(anyhow::Error::msg)
        }
    }
}

async fn submit(args: SubmitArgs, server: &ServerArgs) -> anyhow::Result<()> {
    let client = server.client().await?;
    if let Some(file) = args.file {
        return submit_file(&client, &file).await;
    }
    let payload = serde_json::from_str(&args.payload).context("--payload is not valid JSON")?;
    let new = NewTask {
        plugin: args.plugin.unwrap_or_default(),
        payload,
        priority: args.priority,
        max_attempts: args.max_attempts,
        timeout_ms: args.timeout_ms,
        idempotency_key: args.idempotency_key,
    };
    let task = client.submit(&new).await?;
    if !args.wait {
        return print_json(&task);
    }
    let spinner = spinner(format!("waiting for task {}", task.id));
    loop {
        let view = client.get(&task.id.to_string()).await?;
        if view.task.status.is_terminal() {
            spinner.finish_and_clear();
            return print_json(&view);
        }
        if let Some(progress) = view.progress {
            spinner.set_message(format!("task {} running: {progress}%", task.id));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn submit_file(client: &Client, file: &std::path::Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut tasks = Vec::new();
    for (number, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let task: NewTask = serde_json::from_str(line).with_context(|| {
            format!(
                "{}:{}: not a task (expected {{\"plugin\": …, \"payload\": …}})",
                file.display(),
                number + 1
            )
        })?;
        tasks.push(task);
    }
    if tasks.is_empty() {
        bail!("{} holds no tasks", file.display());
    }
    let bar = ProgressBar::new(tasks.len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} tasks submitted ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let total = tasks.len();
    for chunk in tasks.chunks(SUBMIT_BATCH) {
        let accepted = client.submit_batch(chunk.to_vec()).await?;
        bar.inc(accepted.len() as u64);
    }
    bar.finish();
    out!("submitted {total} tasks");
    Ok(())
}

async fn backup(output: Option<PathBuf>, server: &ServerArgs) -> anyhow::Result<()> {
    let spinner = spinner("downloading backup".into());
    let document = server.admin_client().await?.backup().await?;
    let tasks = taskflow_model::backup::parse_backup(&document)
        .map_err(|reason| anyhow::anyhow!("the server sent an invalid backup: {reason}"))?;
    let path = output.unwrap_or_else(|| {
        PathBuf::from(format!(
            "taskflow-backup-{}.json",
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
        ))
    });
    crate::fsutil::write_atomic(&path, &document, true)
        .with_context(|| format!("cannot write {}", path.display()))?;
    spinner.finish_and_clear();
    out!("backed up {} tasks to {}", tasks.len(), path.display());
    Ok(())
}

async fn restore(file: PathBuf, server: &ServerArgs) -> anyhow::Result<()> {
    let document =
        std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let tasks = taskflow_model::backup::parse_backup(&document)
        .map_err(|reason| anyhow::anyhow!("{} is not a valid backup: {reason}", file.display()))?;
    let spinner = spinner(format!("restoring {} tasks", tasks.len()));
    let summary = server.admin_client().await?.restore(document).await?;
    spinner.finish_and_clear();
    out!(
        "restored {} tasks ({} queued, {} left alone because they are live here)",
        summary.restored,
        summary.queued,
        summary.skipped
    );
    Ok(())
}

/// How long `taskflow health` waits for the answer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /health` of the host on this machine (a host listening on every
/// address is asked on loopback); a failure is one line.
async fn health(args: HealthArgs) -> anyhow::Result<()> {
    let url = args.url.unwrap_or_else(|| {
        let mut address = args.listen;
        if address.ip().is_unspecified() {
            address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{address}/health")
    });
    let response = reqwest::Client::builder()
        .timeout(HEALTH_TIMEOUT)
        .build()?
        .get(&url)
        .send()
        .await
        .map_err(|error| {
            anyhow::Error::new(error.without_url()).context(format!("{url}: no answer"))
        })?;
    if response.status() != reqwest::StatusCode::OK {
        bail!("{url} answered {}", response.status());
    }
    out!("ok: {url}");
    Ok(())
}

/// Checks an id locally, so a typo gets a clear message rather than a 404.
fn task_id(id: &str) -> anyhow::Result<String> {
    Ok(id.parse::<crate::task::TaskId>()?.to_string())
}

fn spinner(message: String) -> ProgressBar {
    let spinner = ProgressBar::new_spinner().with_message(message);
    spinner.enable_steady_tick(Duration::from_millis(100));
    spinner
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    out!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
