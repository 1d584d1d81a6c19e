//! The seams between TaskFlow's service and its backends, one trait each:
//!
//! - [`storage::TaskStore`]: where tasks are recorded, and the one place that
//!   claims them ([`storage::lease`] holds the claim and lease rules);
//! - [`queue::Queue`]: the order tasks wait in; a queue only delivers ids;
//! - [`blobs::BlobStore`]: bytes kept by key (large payloads and results
//!   behind a [`blobs::ClaimCheck`], the fleet's plugins).
//!
//! A backend is a sibling crate that implements one of these traits and runs
//! its [`contract`] suite (feature `contract`) against itself:
//! `taskflow-files` (the embedded default), `taskflow-postgres`,
//! `taskflow-aws`. This crate links no engine, database driver or AWS SDK.

pub mod blobs;
#[cfg(feature = "contract")]
pub mod contract;
pub mod queue;
pub mod storage;
