//! The commands of the `server` feature that run something here: `serve`
//! (a host), `lb` (the load balancer), and the compiler child a host starts.

use std::path::Path;

use taskflow_server::config::ServeConfig;

/// `taskflow serve`: runs a host until Ctrl-C or SIGTERM.
pub async fn serve(mut config: ServeConfig) -> anyhow::Result<()> {
    // The host compiles plugins in a child: this very binary.
    config.compiler = std::env::current_exe().ok();
    let server = taskflow_server::Server::start(config).await?;
    server.run(taskflow_server::shutdown_signal()).await
}

/// `taskflow lb`: runs the load balancer until Ctrl-C or SIGTERM.
pub async fn lb(config: taskflow_lb::LbConfig) -> anyhow::Result<()> {
    taskflow_lb::run(config, taskflow_server::shutdown_signal()).await
}

/// The hidden compile command a host runs its plugin compiler as.
pub fn compile_plugin(engine: &str, output: &Path) -> anyhow::Result<()> {
    // Compiling is CPU-bound; nothing else runs in this process.
    tokio::task::block_in_place(|| taskflow_runtime::compiler::run_child(engine, output))
        .map_err(anyhow::Error::msg)
}
