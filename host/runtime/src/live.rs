//! What a task shows while it runs: its progress and the lines it has
//! logged so far. The sandbox writes them as the plugin calls `progress` and
//! `log`; the host reads them to answer for a task running here, and its
//! heartbeat publishes them to the fleet.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};

use taskflow_model::attempt::{self, LogLine, MAX_FULL_LOG_BYTES, MAX_FULL_LOG_LINES, RunLogs};

/// One run's live state. Shared as `Arc<Live>`.
#[derive(Debug, Default)]
pub struct Live {
    progress: AtomicU8,
    log: Mutex<LiveLog>,
}

#[derive(Debug, Default)]
struct LiveLog {
    /// The lines kept, within the whole log's bounds.
    lines: Vec<LogLine>,
    bytes: usize,
    /// Lines left out beyond the bounds.
    dropped: u32,
    /// Lines and bytes of the preview (the lines within the record's
    /// bounds).
    preview_lines: usize,
    preview_bytes: usize,
    /// Whether the preview changed since [`Live::unpublished`] last handed
    /// it out.
    changed: bool,
}

impl Live {
    /// Progress reported so far, percent.
    pub fn progress(&self) -> u8 {
        self.progress.load(Ordering::Relaxed)
    }

    pub(crate) fn set_progress(&self, percent: u8) {
        self.progress.store(percent.min(100), Ordering::Relaxed);
    }

    /// Adds a line within the bounds of a whole log, counting it dropped
    /// beyond them.
    pub(crate) fn push(&self, line: LogLine) {
        let mut log = self.lock();
        if log.lines.len() >= MAX_FULL_LOG_LINES
            || log.bytes + line.message.len() > MAX_FULL_LOG_BYTES
        {
            log.dropped = log.dropped.saturating_add(1);
            return;
        }
        log.bytes += line.message.len();
        if log.preview_lines < attempt::MAX_LOG_LINES
            && log.preview_bytes + line.message.len() <= attempt::MAX_LOG_BYTES
        {
            log.preview_lines += 1;
            log.preview_bytes += line.message.len();
            log.changed = true;
        }
        log.lines.push(line);
    }

    /// Counts `n` lines dropped at the source.
    pub(crate) fn count_dropped(&self, n: u32) {
        let mut log = self.lock();
        log.dropped = log.dropped.saturating_add(n);
    }

    /// The lines so far, within the record's bounds (the first ones), and
    /// how many are left out.
    pub fn preview(&self) -> RunLogs {
        let log = self.lock();
        attempt::first_lines(&log.lines, log.dropped)
    }

    /// The [`preview`](Self::preview), if it changed since the last call:
    /// what a heartbeat publishes.
    pub fn unpublished(&self) -> Option<RunLogs> {
        let changed = std::mem::take(&mut self.lock().changed);
        changed.then(|| self.preview())
    }

    /// The last publication did not reach the store: the next heartbeat
    /// sends the lines again.
    pub fn unpublish(&self) {
        self.lock().changed = true;
    }

    /// Every line kept, leaving none behind: the run's whole log once it
    /// ended, or was stopped.
    pub fn take(&self) -> RunLogs {
        let log = std::mem::take(&mut *self.lock());
        RunLogs {
            lines: log.lines,
            dropped: log.dropped,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LiveLog> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
