//! The `taskflow` command: `serve` runs a host; every other command is a
//! client of a running host's HTTP API.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use indicatif::ProgressBar;

mod backup;
mod health;
mod plugins;
#[cfg(feature = "server")]
mod serve;
mod tasks;

use taskflow_client::{Client, ClientError};
use taskflow_fs::out;
#[cfg(feature = "server")]
use taskflow_server::config::ServeConfig;

pub use health::HealthArgs;
pub use plugins::PluginsCommand;
pub use tasks::{ListArgs, LogsArgs, SubmitArgs};

use crate::logging::LogFormat;

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
    Lb(taskflow_lb::LbConfig),
    /// Create or update the AWS stack (CloudFormation) and write its settings into .env.
    #[cfg(feature = "server")]
    Deploy(taskflow_deploy::DeployArgs),
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
    /// Queue a failed or cancelled task again for one more attempt.
    Retry {
        /// Task id.
        id: String,
    },
    /// Print what a task's plugin logged and printed, attempt by attempt.
    Logs(LogsArgs),
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
    #[command(name = taskflow_runtime::compiler::SUBCOMMAND, hide = true)]
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
    pub(crate) async fn client(&self) -> anyhow::Result<Client> {
        self.client_with(self.token_secret.as_deref()).await
    }

    /// A client with the admin token (plugin, backup and restore commands).
    pub(crate) async fn admin_client(&self) -> anyhow::Result<Client> {
        self.client_with(self.admin_token_secret.as_deref()).await
    }

    /// A client with --token, or else the token in `secret`, or none.
    async fn client_with(&self, secret: Option<&str>) -> anyhow::Result<Client> {
        let token = match (&self.token, secret) {
            (Some(token), _) => Some(token.clone()),
            #[cfg(feature = "server")]
            (None, Some(id)) => {
                use anyhow::Context as _;
                let token = taskflow_aws::secrets::read_secret(id)
                    .await
                    .context("cannot read the API token (pass --token, or fix TASKFLOW_TOKEN_SECRET / TASKFLOW_ADMIN_TOKEN_SECRET)")?;
                Some(token)
            }
            #[cfg(not(feature = "server"))]
            (None, Some(_)) => anyhow::bail!(
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

/// Runs a parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let has_token = cli.server.has_token();
    let env_file = cli
        .env_file
        .unwrap_or_else(|| taskflow_fs::envfile::DEFAULT.into());
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
        Command::Serve(config) => serve::serve(*config).await,
        #[cfg(feature = "server")]
        Command::Lb(config) => serve::lb(config).await,
        #[cfg(feature = "server")]
        Command::Deploy(args) => taskflow_deploy::run(args, env_file, from_env_file).await,
        Command::Health(args) => health::health(args).await,
        Command::Submit(args) => tasks::submit(args, &server).await,
        Command::Get { id } => print_json(&server.client().await?.get(&task_id(&id)?).await?),
        Command::List(args) => tasks::list(args, &server).await,
        Command::Cancel { id } => print_json(&server.client().await?.cancel(&task_id(&id)?).await?),
        Command::Retry { id } => print_json(&server.client().await?.retry(&task_id(&id)?).await?),
        Command::Logs(args) => tasks::logs(args, &server).await,
        Command::Stats => print_json(&server.client().await?.stats().await?),
        Command::Plugins(command) => plugins::run(command, &server).await,
        Command::Backup { output } => backup::backup(output, &server).await,
        Command::Restore { file } => backup::restore(file, &server).await,
        #[cfg(feature = "server")]
        Command::CompilePlugin { engine, output } => serve::compile_plugin(&engine, &output),
    }
}

/// Checks an id locally, so a typo gets a clear message rather than a 404.
pub(crate) fn task_id(id: &str) -> anyhow::Result<String> {
    Ok(id.parse::<taskflow_model::task::TaskId>()?.to_string())
}

pub(crate) fn spinner(message: String) -> ProgressBar {
    let spinner = ProgressBar::new_spinner().with_message(message);
    spinner.enable_steady_tick(Duration::from_millis(100));
    spinner
}

pub(crate) fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    out!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
