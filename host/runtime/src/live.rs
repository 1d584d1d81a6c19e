//! What a task shows while it runs: its progress and the lines it has
//! logged so far. The sandbox writes them as the plugin calls `progress` and
//! `log`; the host reads them to answer for a task running here, and its
//! heartbeat publishes them to the fleet.

use std::collections::VecDeque;
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
    /// The newest lines within the record's bounds, beyond the whole log's
    /// too: what a live view shows.
    newest: VecDeque<LogLine>,
    newest_bytes: usize,
    /// Lines logged before the first of `newest`.
    skipped: u32,
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

    /// Adds a line to the live view (dropping its oldest line beyond the
    /// record's bounds) and to the whole log within its bounds, counting it
    /// dropped beyond them.
    pub(crate) fn push(&self, line: LogLine) {
        let mut log = self.lock();
        let log = &mut *log;
        log.newest_bytes += line.message.len();
        log.newest.push_back(line.clone());
        while log.newest.len() > attempt::MAX_LOG_LINES || log.newest_bytes > attempt::MAX_LOG_BYTES
        {
            let Some(oldest) = log.newest.pop_front() else {
                break;
            };
            log.newest_bytes -= oldest.message.len();
            log.skipped = log.skipped.saturating_add(1);
        }
        log.changed = true;
        if log.lines.len() >= MAX_FULL_LOG_LINES
            || log.bytes + line.message.len() > MAX_FULL_LOG_BYTES
        {
            log.dropped = log.dropped.saturating_add(1);
            return;
        }
        log.bytes += line.message.len();
        log.lines.push(line);
    }

    /// Counts `n` lines dropped at the source.
    pub(crate) fn count_dropped(&self, n: u32) {
        let mut log = self.lock();
        log.dropped = log.dropped.saturating_add(n);
    }

    /// The newest lines so far, within the record's bounds; how many came
    /// before them, and how many the whole log left out.
    pub fn preview(&self) -> RunLogs {
        let log = self.lock();
        RunLogs {
            lines: log.newest.iter().cloned().collect(),
            dropped: log.dropped,
            skipped: log.skipped,
        }
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
            skipped: 0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LiveLog> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskflow_model::attempt::{LogLevel, LogStream, MAX_LOG_LINES};

    fn line(n: usize) -> LogLine {
        LogLine {
            at: chrono::Utc::now(),
            stream: LogStream::Log,
            level: Some(LogLevel::Info),
            message: format!("line {n}"),
        }
    }

    #[test]
    fn the_live_view_holds_the_newest_lines_and_the_whole_log_the_first() {
        let live = Live::default();
        let total = MAX_FULL_LOG_LINES + 50;
        for n in 1..=total {
            live.push(line(n));
        }
        let view = live.unpublished().expect("changed");
        assert_eq!(view.lines.len(), MAX_LOG_LINES);
        assert_eq!(view.skipped as usize, total - MAX_LOG_LINES);
        assert_eq!(
            view.lines[0].message,
            format!("line {}", total - MAX_LOG_LINES + 1)
        );
        assert_eq!(
            view.lines[MAX_LOG_LINES - 1].message,
            format!("line {total}")
        );
        assert_eq!(view.dropped, 50, "what the whole log cannot keep");
        assert!(live.unpublished().is_none(), "nothing new to publish");
        live.push(line(total + 1));
        assert_eq!(
            live.unpublished().expect("a new line").skipped as usize,
            total - MAX_LOG_LINES + 1
        );

        let whole = live.take();
        assert_eq!(whole.lines.len(), MAX_FULL_LOG_LINES);
        assert_eq!(whole.lines[0].message, "line 1");
        assert_eq!((whole.dropped, whole.skipped), (51, 0));
        assert!(
            live.preview().lines.is_empty(),
            "taken: nothing left behind"
        );
    }

    #[test]
    fn the_live_view_is_bounded_in_bytes() {
        let live = Live::default();
        let big = "x".repeat(attempt::MAX_LOG_BYTES / 2);
        for _ in 0..3 {
            live.push(LogLine {
                message: big.clone(),
                ..line(0)
            });
        }
        let view = live.preview();
        assert_eq!((view.lines.len(), view.skipped), (2, 1));
    }
}
