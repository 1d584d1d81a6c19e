//! TaskFlow on PostgreSQL, for any number of hosts sharing one database; all
//! of TaskFlow's SQL is here, its schema in `migrations/` (run at connect):
//!
//! - [`PgStore`] ([`store`]): the task store (a row per task, leases,
//!   batched completion, [`connect`] options with TLS, [`fleet_settings`]);
//! - [`PgQueue`] ([`queue`]): the tasks table as the queue, woken by
//!   LISTEN/NOTIFY, claiming through the store;
//! - [`PgBlobs`] ([`blobs`]): plugin bytes when there is no S3;
//! - [`PluginCatalog`] ([`catalog`]): the fleet's plugins by name and digest.
//!
//! Settings read: [`PostgresArgs`] (`TASKFLOW_DATABASE_URL`,
//! `TASKFLOW_DATABASE_CA`, `TASKFLOW_DATABASE_SECRET`,
//! `TASKFLOW_DATABASE_POOL_SIZE`), flattened into `taskflow serve`'s.

pub mod blobs;
pub mod catalog;
pub mod queue;
pub mod settings;
pub mod store;

pub use blobs::PgBlobs;
pub use catalog::PluginCatalog;
pub use queue::PgQueue;
pub use settings::PostgresArgs;
pub use store::{CREDENTIALS_REFUSED, DEFAULT_POOL_SIZE, PgStore, connect, fleet_settings};
