//! Instances kept from one task to the next, for plugins that opt in
//! (`reuse_tasks` in their limits file).
//!
//! An instance is only ever in one place: running one task, or idle here.
//! It belongs to one plugin version (the list lives in that version's
//! [`LoadedPlugin`](super::LoadedPlugin), so a new version starts with none
//! and the old one's go when its last task ends). Only an instance whose
//! call returned normally comes back; one that trapped, ran out of time or
//! fuel, or hit its memory cap is dropped, as is one that has run its
//! `reuse_tasks` tasks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use wasmtime::Store;

use super::bindings::Processor;
use super::sandbox::Sandbox;

/// An instance between two tasks.
pub(super) struct Warm {
    pub store: Store<Sandbox>,
    pub processor: Processor,
    /// Tasks it has run.
    pub tasks: u32,
}

/// The idle instances of one plugin version.
///
/// Idle instances hold slots of the engine's instance pool, so the host
/// keeps at most half of the pool idle, over all plugins together: the
/// other half stays free for fresh instances.
pub(super) struct IdleInstances {
    idle: Mutex<Vec<Warm>>,
    /// Idle instances of every plugin version on this runtime.
    held: Arc<AtomicUsize>,
    most: usize,
}

impl IdleInstances {
    /// An empty list, counting into the runtime's `held`, which may reach
    /// `most`.
    pub fn new(held: Arc<AtomicUsize>, most: usize) -> Self {
        Self {
            idle: Mutex::default(),
            held,
            most,
        }
    }

    /// The instance that ran most recently (its pages are the likeliest to
    /// be in cache), if any is idle.
    pub fn take(&self) -> Option<Warm> {
        let warm = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()?;
        self.held.fetch_sub(1, Ordering::Relaxed);
        Some(warm)
    }

    /// Keeps `warm` for the next task, unless the runtime holds as many idle
    /// instances as it may (then it is dropped).
    pub fn put(&self, warm: Warm) {
        if self.held.fetch_add(1, Ordering::Relaxed) >= self.most {
            self.held.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(warm);
    }

    /// How many are idle.
    pub fn len(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for IdleInstances {
    fn drop(&mut self) {
        let idle = self.idle.get_mut().unwrap_or_else(PoisonError::into_inner);
        self.held.fetch_sub(idle.len(), Ordering::Relaxed);
    }
}
