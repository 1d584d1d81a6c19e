//! `plugins`: list, upload and remove a server's plugins (admin token for
//! the last two); with the `server` feature also `run`, `new` and `build`,
//! the plugin author's commands (`taskflow-author`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use taskflow_fs::out;

use super::ServerArgs;

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
    Run(taskflow_author::RunArgs),
    /// Create a plugin project, ready to build, in Rust, Python or JavaScript.
    #[cfg(feature = "server")]
    New(taskflow_author::NewArgs),
    /// Build the plugin project in a directory into `<dir>/<name>.wasm`.
    #[cfg(feature = "server")]
    Build(taskflow_author::BuildArgs),
}

/// Runs a `plugins` command.
pub async fn run(command: PluginsCommand, server: &ServerArgs) -> anyhow::Result<()> {
    match command {
        PluginsCommand::List => {
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
        PluginsCommand::Upload { file, name } => {
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
        PluginsCommand::Remove { name } => {
            server.admin_client().await?.remove_plugin(&name).await?;
            out!("removed {name}");
            Ok(())
        }
        #[cfg(feature = "server")]
        PluginsCommand::Run(args) => taskflow_author::run(args).await,
        #[cfg(feature = "server")]
        PluginsCommand::New(args) => taskflow_author::new(&args),
        #[cfg(feature = "server")]
        PluginsCommand::Build(args) => {
            tokio::task::block_in_place(|| taskflow_author::build(&args))
        }
    }
}
