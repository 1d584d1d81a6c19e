//! The `taskflow` command, a thin binary over TaskFlow's crates: `serve`
//! (`taskflow-server`), `lb` (`taskflow-lb`), `deploy` (`taskflow-deploy`),
//! `plugins new|build|run` (`taskflow-author`), and the client commands
//! (`taskflow-client`). Start at [`commands::run`]; each command is a file
//! under `commands/`.
//!
//! Everything but the client commands is the `server` feature (on by
//! default); `cargo build -p taskflow-host --no-default-features` builds
//! `taskflow` as a client of a running host that links no engine, database
//! driver, AWS SDK or HTTP server.

mod commands;
mod logging;

use crate::commands::Cli;
use crate::logging::{LogTarget, init_logging};
use clap::Parser;

fn main() -> std::process::ExitCode {
    #[cfg(feature = "server")]
    taskflow_runtime::heap::limit_arenas();
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Parses the command line, then reads the env file it names (or `.env`)
/// into the environment, and parses again if that set anything: settings
/// come from flags, then the environment, then the file. Runs before any
/// other thread exists, as changing the environment requires.
fn parse() -> Result<(Cli, Vec<String>), std::process::ExitCode> {
    let cli = Cli::try_parse().map_err(|error| refuse(&error))?;
    let loaded = taskflow_fs::envfile::load(cli.env_file.as_deref()).map_err(|error| {
        eprintln!("error: {error}");
        std::process::ExitCode::FAILURE
    })?;
    if loaded.is_empty() {
        return Ok((cli, loaded));
    }
    let cli = Cli::try_parse().map_err(|error| refuse(&error))?;
    Ok((cli, loaded))
}

async fn run((mut cli, from_env_file): (Cli, Vec<String>)) -> std::process::ExitCode {
    // Servers log; `plugin run` shows the plugin's log on stderr, beside its
    // result on stdout; client commands print their results and log only
    // when asked (RUST_LOG).
    match cli.command {
        #[cfg(feature = "server")]
        crate::commands::Command::Serve(_) | crate::commands::Command::Lb(_) => {
            init_logging(cli.log_format, LogTarget::Stdout)
        }
        #[cfg(feature = "server")]
        crate::commands::Command::Plugins(crate::commands::PluginsCommand::Run(_)) => {
            init_logging(cli.log_format, LogTarget::Stderr)
        }
        _ if std::env::var_os("RUST_LOG").is_some() => {
            init_logging(cli.log_format, LogTarget::Stdout)
        }
        _ => {}
    }
    if !from_env_file.is_empty() {
        let file = cli
            .env_file
            .clone()
            .unwrap_or_else(|| taskflow_fs::envfile::DEFAULT.into());
        tracing::info!(file = %file.display(), settings = from_env_file.join(","), "settings from the env file");
    }
    cli.from_env_file = from_env_file;
    match crate::commands::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Exits on a command line clap refused. A bad value is one line naming the
/// flag and its environment variable (servers are mostly configured through
/// the environment); anything else is clap's own message, usage included.
fn refuse(error: &clap::Error) -> std::process::ExitCode {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let bad_value = matches!(
        error.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    );
    let flag = match error.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => arg
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    };
    if !bad_value || !flag.starts_with("--") {
        let _ = error.print();
        return std::process::ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2));
    }
    let rendered = error.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    let variable = serve_variable(&flag);
    match variable {
        Some(variable) => eprintln!("{first} (set by {flag} or {variable})"),
        None => eprintln!("{first}"),
    }
    std::process::ExitCode::from(2)
}

/// The environment variable of the `serve` flag `flag`, if it has one.
#[cfg(feature = "server")]
fn serve_variable(flag: &str) -> Option<String> {
    let serve = <taskflow_server::config::ServeConfig as clap::Args>::augment_args(
        clap::Command::new("serve"),
    );
    serve
        .get_arguments()
        .find(|arg| arg.get_long() == Some(flag.trim_start_matches("--")))
        .and_then(|arg| arg.get_env().map(|env| env.to_string_lossy().into_owned()))
}

/// A client-only build has no `serve` flags.
#[cfg(not(feature = "server"))]
fn serve_variable(_flag: &str) -> Option<String> {
    None
}
