//! TaskFlow's embedded backends, one process and no service to run:
//!
//! - [`FileStore`] ([`store`]): the task store on sharded JSON files, with
//!   its write-ahead [`journal`] (group commit, checkpoints);
//! - [`LocalQueue`] ([`queue`]): the in-memory priority heap;
//! - [`FsBlobs`] ([`blobs`]): blobs as files (the whole logs of attempts).
//!
//! Settings read: the data directory's `tasks/` and `blobs/` folders and `TASKFLOW_FSYNC`
//! (passed in by the server as [`FileStore::open`]'s arguments).

pub mod blobs;
pub mod journal;
pub mod queue;
pub mod store;

pub use blobs::FsBlobs;
pub use queue::LocalQueue;
pub use store::FileStore;
