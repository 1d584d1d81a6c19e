//! The words TaskFlow's hosts and clients share: the task, its lifecycle
//! and validation ([`task`]), the kinds of failure ([`failure`]), the rules
//! for plugin names and what is shown of a plugin ([`plugin`]), and the
//! HTTP API's other request and response bodies ([`api`]), the filters of a
//! task list ([`query`]) and the backup document ([`backup`]).
//!
//! It links no WebAssembly engine, database or cloud SDK, so that a client
//! needs nothing more; the `openapi` feature adds the OpenAPI schemas the
//! server publishes. Start reading at [`task::Task`].

pub mod api;
pub mod attempt;
pub mod backup;
pub mod failure;
pub mod plugin;
pub mod query;
pub mod task;

pub use attempt::{Attempt, AttemptOutcome, LogLine};
pub use failure::FailureKind;
pub use task::{NewTask, Task, TaskId, TaskStatus};
