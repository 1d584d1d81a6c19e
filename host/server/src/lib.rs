//! The TaskFlow host, `taskflow serve`, over the backend seams of
//! `taskflow-backend`. Start reading at [`Server::start`]: it opens the
//! backends the configuration names ([`backends::Backends::open`]), loads
//! the plugins, and starts the workers and the HTTP API.
//!
//! - [`service`]: every state change of a task (submission, execution,
//!   leases, recovery, retention, the outbox), over the three seams;
//! - [`worker`]: the pool that runs tasks; [`api`]: the HTTP API, which
//!   reaches the service only, and serves the dashboard ([`ui`]: the
//!   service as `taskflow-ui` asks for it) at `/ui`; [`metrics`]: `/metrics`;
//! - [`config`]: `serve`'s settings; [`backends`]: what they open;
//!   [`fleet`]: plugins kept in step across hosts; [`secrets`]: the
//!   database's rotating credentials; [`backup`]: export and restore of any
//!   store.

pub mod api;
pub mod backends;
pub mod backup;
pub mod config;
pub mod fleet;
pub mod metrics;
pub mod secrets;
mod serve;
pub mod service;
pub mod ui;
pub mod worker;

pub use serve::{Server, shutdown_signal};
