//! TaskFlow: a priority task-processing platform whose processors are
//! sandboxed WebAssembly components.
//!
//! - [`task`]: the task model and its validation;
//! - [`queue`]: where tasks wait ([`queue::Queue`]; local heap);
//! - [`storage`]: where tasks are recorded ([`storage::TaskStore`]; sharded files), backups;
//! - [`blobs`]: large payloads and results, plugin bytes ([`blobs::BlobStore`]; S3);
//! - [`runtime`]: the wasmtime engine, plugin registry, hot reload, limits;
//! - [`service`]: every state change of a task; [`worker`]: the pool that runs them;
//! - [`api`]: the HTTP API; [`client`]: its Rust client, used by the CLI;
//! - [`config`], [`telemetry`], [`cli`]: settings, logs and metrics, the `taskflow` command.

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

pub mod api;
pub mod author;
pub mod aws;
pub mod blobs;
pub mod cli;
pub mod client;
pub mod config;
pub mod deploy;
pub mod envfile;
pub mod fleet;
pub mod fsutil;
pub mod heap;
pub mod lb;
pub mod queue;
pub mod runtime;
pub mod secrets;
pub mod server;
pub mod service;
pub mod storage;
pub mod task;
pub mod telemetry;
pub mod worker;
