//! Write TaskFlow task processors as WebAssembly components.
//!
//! A plugin is one type implementing [`Plugin`] plus one call to
//! [`export_plugin!`]. The crate hides the component-model bindings: tasks come
//! in as a plain [`Task`], typed JSON goes in and out through serde in one line
//! each, and [`log`], [`progress`] and [`remaining`] talk to the host.
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//! use taskflow_sdk::{Plugin, Result, Task};
//!
//! #[derive(Deserialize)]
//! struct Input {
//!     name: String,
//! }
//!
//! #[derive(Serialize)]
//! struct Output {
//!     greeting: String,
//! }
//!
//! struct Greeter;
//!
//! impl Plugin for Greeter {
//!     fn process(task: Task) -> Result<Vec<u8>> {
//!         let input: Input = task.json()?;
//!         taskflow_sdk::info(&format!("greeting {}", input.name));
//!         taskflow_sdk::json(&Output { greeting: format!("Hello, {}!", input.name) })
//!     }
//! }
//!
//! taskflow_sdk::export_plugin!(Greeter);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` from a crate
//! whose `[lib]` has `crate-type = ["cdylib"]`, and drop the `.wasm` file into
//! the host's plugin directory: the file stem becomes the plugin name.
//!
//! Errors decide what the host does next: [`Error::Retryable`] sends the task
//! back to the queue after a backoff while attempts remain, while
//! [`Error::InvalidInput`] and [`Error::Fatal`] fail it at once. A panic fails
//! the task like a fatal error; its message reaches the host log.
#![deny(missing_docs)]

// The generated bindings name this crate by its public path, so they work the
// same inside it and from the plugin crates that expand `export_plugin!`.
extern crate self as taskflow_sdk;

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

#[doc(hidden)]
#[allow(clippy::too_many_arguments)] // generated code
pub mod bindings {
    wit_bindgen::generate!({
        world: "processor",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_processor",
        default_bindings_module: "taskflow_sdk::bindings",
        runtime_path: "taskflow_sdk::__private::wit_bindgen::rt",
    });
}

use bindings::taskflow::plugin::host as wit_host;
use bindings::taskflow::plugin::types as wit_types;

/// Result type of plugin code: the error is a task [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A task handed to the plugin by the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// The task's id (a hyphenated UUID).
    pub id: String,
    /// The plugin name the task was submitted to.
    pub plugin: String,
    /// Priority from 1 (highest) to 10 (lowest).
    pub priority: u8,
    /// Which attempt this is, starting at 1.
    pub attempt: u32,
    /// The raw payload bytes, usually UTF-8 JSON.
    pub payload: Vec<u8>,
}

impl Task {
    /// Parses the payload as JSON into `T`; a payload that does not fit is an
    /// [`Error::InvalidInput`] naming what is wrong.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.payload)
            .map_err(|e| Error::InvalidInput(format!("payload is not the expected JSON: {e}")))
    }

    /// The payload as UTF-8 text, or an [`Error::InvalidInput`].
    pub fn text(&self) -> Result<&str> {
        std::str::from_utf8(&self.payload)
            .map_err(|e| Error::InvalidInput(format!("payload is not UTF-8 text: {e}")))
    }
}

/// Why a task failed; the variant tells the host whether to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A transient failure: the host retries after a backoff while attempts remain.
    Retryable(String),
    /// The payload cannot be processed as it is; retrying cannot help.
    InvalidInput(String),
    /// The plugin cannot process this task at all; retrying cannot help.
    Fatal(String),
}

impl Error {
    /// A transient failure worth retrying.
    pub fn retryable(message: impl fmt::Display) -> Self {
        Self::Retryable(message.to_string())
    }

    /// A payload the plugin cannot accept.
    pub fn invalid_input(message: impl fmt::Display) -> Self {
        Self::InvalidInput(message.to_string())
    }

    /// A failure no retry can fix.
    pub fn fatal(message: impl fmt::Display) -> Self {
        Self::Fatal(message.to_string())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Retryable(m) => write!(f, "retryable: {m}"),
            Self::InvalidInput(m) => write!(f, "invalid input: {m}"),
            Self::Fatal(m) => write!(f, "fatal: {m}"),
        }
    }
}

impl std::error::Error for Error {}

/// A task processor. Implement it on a unit struct and pass that struct to
/// [`export_plugin!`].
pub trait Plugin {
    /// Processes one task and returns its output bytes (usually JSON, see
    /// [`json`]). Each call runs in a fresh instance: nothing carries over
    /// from one task to the next.
    fn process(task: Task) -> Result<Vec<u8>>;
}

/// Serialises `value` as the task's JSON output.
pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Fatal(format!("output is not serialisable: {e}")))
}

/// Severity of a message sent to the host log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Very detailed tracing output.
    Trace,
    /// Information useful when debugging.
    Debug,
    /// Normal progress information.
    Info,
    /// Something unexpected that was recovered from.
    Warn,
    /// A failure worth an operator's attention.
    Error,
}

/// Writes `message` to the host log at `level`, tagged with the task id.
pub fn log(level: Level, message: &str) {
    let level = match level {
        Level::Trace => wit_host::LogLevel::Trace,
        Level::Debug => wit_host::LogLevel::Debug,
        Level::Info => wit_host::LogLevel::Info,
        Level::Warn => wit_host::LogLevel::Warn,
        Level::Error => wit_host::LogLevel::Error,
    };
    wit_host::log(level, message);
}

/// Writes `message` to the host log at info level.
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Writes `message` to the host log at warn level.
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Reports progress of the current task, 0 to 100 percent.
pub fn progress(percent: u8) {
    wit_host::progress(percent.min(100));
}

/// How long the current task has left before the host stops it for
/// exceeding its timeout (zero once it is up). Long work can check it and
/// return [`Error::Retryable`] in good time rather than be cut off.
pub fn remaining() -> std::time::Duration {
    std::time::Duration::from_millis(wit_host::remaining_millis())
}

/// Makes the component export `process` through the given [`Plugin`] type.
/// Call it once per plugin crate, at the crate root.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[doc(hidden)]
        pub struct __TaskflowExport;

        impl $crate::__private::Guest for __TaskflowExport {
            fn process(
                task: $crate::__private::WitTask,
            ) -> ::core::result::Result<::std::vec::Vec<u8>, $crate::__private::WitTaskError> {
                $crate::__private::dispatch::<$plugin>(task)
            }
        }

        $crate::bindings::__export_processor!(__TaskflowExport with_types_in $crate::bindings);
    };
}

#[doc(hidden)]
pub mod __private {
    pub use crate::bindings::Guest;
    pub use crate::wit_types::{Task as WitTask, TaskError as WitTaskError};
    pub use wit_bindgen;

    use crate::{Error, Plugin, Task};

    /// Adapts the generated bindings to the [`Plugin`] trait.
    pub fn dispatch<P: Plugin>(task: WitTask) -> Result<Vec<u8>, WitTaskError> {
        install_panic_hook();
        let task = Task {
            id: task.id,
            plugin: task.plugin,
            priority: task.priority,
            attempt: task.attempt,
            payload: task.payload,
        };
        P::process(task).map_err(|e| match e {
            Error::Retryable(m) => WitTaskError::Retryable(m),
            Error::InvalidInput(m) => WitTaskError::InvalidInput(m),
            Error::Fatal(m) => WitTaskError::Fatal(m),
        })
    }

    /// Sends a panic's message to the host log before the instance traps, so
    /// the operator sees why the task failed. Every task gets a fresh
    /// instance, so this runs once per task.
    fn install_panic_hook() {
        std::panic::set_hook(Box::new(|info| {
            crate::log(crate::Level::Error, &format!("plugin panicked: {info}"));
        }));
    }
}
