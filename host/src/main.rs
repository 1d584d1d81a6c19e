//! The `taskflow` binary: parse arguments, set up logging, run the library.

use clap::Parser;
use taskflow::cli::{Cli, Command, PluginsCommand};
use taskflow::telemetry::{LogTarget, init_logging};

fn main() -> std::process::ExitCode {
    taskflow::heap::limit_arenas();
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(run()),
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Servers log; `plugin run` shows the plugin's log on stderr, beside its
    // result on stdout; client commands print their results and log only
    // when asked (RUST_LOG).
    match cli.command {
        Command::Serve(_) | Command::Lb(_) => init_logging(cli.log_format, LogTarget::Stdout),
        Command::Plugins(PluginsCommand::Run(_)) => init_logging(cli.log_format, LogTarget::Stderr),
        _ if std::env::var_os("RUST_LOG").is_some() => {
            init_logging(cli.log_format, LogTarget::Stdout)
        }
        _ => {}
    }
    match taskflow::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
