//! TaskFlow: a priority task-processing platform whose processors are
//! sandboxed WebAssembly components.
//!
//! - [`task`]: the task model and its validation (the `taskflow-model` crate,
//!   which also holds the API's bodies, the failure kinds and the plugin name rule);
//! - [`queue`]: where tasks wait ([`queue::Queue`]; local heap);
//! - [`storage`]: where tasks are recorded ([`storage::TaskStore`]; sharded files), backups;
//! - [`blobs`]: large payloads and results, plugin bytes ([`blobs::BlobStore`]; S3);
//! - [`runtime`]: the wasmtime engine, plugin registry, hot reload, limits;
//! - [`service`]: every state change of a task; [`worker`]: the pool that runs them;
//! - [`api`]: the HTTP API; [`client`]: its Rust client, used by the CLI (the
//!   `taskflow-client` crate: the model and reqwest, nothing of the server);
//! - [`config`], [`telemetry`], [`cli`]: settings, logs and metrics, the `taskflow` command.
//!
//! Everything but the client commands, logging and the env file is the
//! `server` feature (on by default); without it the library is the
//! `taskflow` command as a client of a running host.

/// Prints a line to stdout. A closed pipe (`taskflow list | head`) ends the
/// output quietly instead of panicking like `println!`; the enclosing
/// function returns any other write error.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        match writeln!(std::io::stdout().lock(), $($arg)*) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
            _ => {}
        }
    }};
}

#[cfg(feature = "server")]
pub mod api;
#[cfg(feature = "server")]
pub mod author;
#[cfg(feature = "server")]
pub mod aws;
#[cfg(feature = "server")]
pub mod blobs;
pub mod cli;
pub use taskflow_client as client;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod deploy;
pub mod envfile;
#[cfg(feature = "server")]
pub mod fleet;
pub use taskflow_fs as fsutil;
#[cfg(feature = "server")]
pub use taskflow_runtime::heap;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "server")]
pub mod lb;
#[cfg(feature = "server")]
pub mod queue;
#[cfg(feature = "server")]
pub use taskflow_runtime as runtime;
#[cfg(feature = "server")]
pub mod secrets;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod service;
#[cfg(feature = "server")]
pub mod storage;
pub use taskflow_model::task;
pub mod telemetry;
#[cfg(feature = "server")]
pub mod worker;
