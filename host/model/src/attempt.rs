//! A task's history: every attempt, on which host and plugin version, how
//! it ended, and what the plugin logged and wrote to stdout and stderr while
//! it ran. Stored with the task on every backend, bounded: the latest
//! [`MAX_ATTEMPTS_KEPT`] attempts, and per attempt at most
//! [`MAX_LOG_LINES`] lines and [`MAX_LOG_BYTES`] bytes of log text in the
//! record. A longer log is kept whole, up to [`MAX_FULL_LOG_LINES`] lines and
//! [`MAX_FULL_LOG_BYTES`] bytes, in the blob store
//! ([`Attempt::logs_blob`]); what is over is counted in
//! [`Attempt::logs_dropped`].

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::task::{BlobRef, TaskError};

/// Attempts a task keeps in its history (the latest ones; `Task::attempts`
/// counts them all).
pub const MAX_ATTEMPTS_KEPT: usize = 20;
/// Log lines one attempt keeps.
pub const MAX_LOG_LINES: usize = 200;
/// Bytes of log text one attempt keeps, over all its lines.
pub const MAX_LOG_BYTES: usize = 32 * 1024;
/// Lines of one attempt's whole log, kept in the blob store.
pub const MAX_FULL_LOG_LINES: usize = 10_000;
/// Bytes of log text of one attempt's whole log, kept in the blob store.
pub const MAX_FULL_LOG_BYTES: usize = 1024 * 1024;

/// One attempt of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Attempt {
    /// 1 for the first attempt, counting every attempt the task started.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    pub number: u32,
    /// The host that ran it (its `TASKFLOW_HOST_ID`).
    pub host: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended; absent while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::task::nullable_date_time))]
    pub finished_at: Option<DateTime<Utc>>,
    /// How it ended, or `running`.
    pub outcome: AttemptOutcome,
    /// Digest of the plugin version that ran it, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_digest: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
    /// What the plugin logged and printed, in order (stdout and stderr
    /// after its log calls): the first lines, within the record's bounds.
    /// While the attempt runs, the newest lines of the `log` import so far,
    /// within the same bounds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<LogLine>,
    /// Lines not in `logs`: once the attempt ended, those after them (in
    /// the whole log when `logs_blob` is set, else dropped); while it runs,
    /// those the whole log will not keep.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 2_147_483_647))]
    pub logs_dropped: u32,
    /// While the attempt runs: the lines logged before the first of `logs`
    /// (a running attempt shows its newest lines; its whole log keeps them).
    /// A record never holds one.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 2_147_483_647))]
    pub logs_skipped: u32,
    /// Where the whole log is, when it was longer than the record keeps:
    /// `GET /tasks/{id}/logs` reads it from there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs_blob: Option<BlobRef>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Whether `line` fits in a record's log after `kept` (`bytes` of text).
fn fits(kept: &[LogLine], bytes: usize, line: &LogLine) -> bool {
    kept.len() < MAX_LOG_LINES && bytes + line.message.len() <= MAX_LOG_BYTES
}

impl Attempt {
    /// How long it ran, once it ended.
    pub fn duration(&self) -> Option<chrono::Duration> {
        self.finished_at.map(|end| end - self.started_at)
    }

    /// Adds `lines` within the record's bounds, counting what does not fit.
    pub fn add_logs(&mut self, lines: impl IntoIterator<Item = LogLine>, dropped: u32) {
        let mut bytes: usize = self.logs.iter().map(|line| line.message.len()).sum();
        self.logs_dropped = self.logs_dropped.saturating_add(dropped);
        for line in lines {
            if fits(&self.logs, bytes, &line) {
                bytes += line.message.len();
                self.logs.push(line);
            } else {
                self.logs_dropped = self.logs_dropped.saturating_add(1);
            }
        }
    }

    /// Puts the whole log read back from `logs_blob` in place of the
    /// record's first lines.
    pub fn restore_logs(&mut self, whole: RunLogs) {
        self.logs = whole.lines;
        self.logs_dropped = whole.dropped;
        self.logs_blob = None;
    }

    /// Shows a running attempt's live view (its newest lines) in place of
    /// what its record holds.
    pub fn show_live(&mut self, live: RunLogs) {
        self.logs = live.lines;
        self.logs_dropped = live.dropped;
        self.logs_skipped = live.skipped;
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// It is running.
    Running,
    /// The plugin returned a result.
    Completed,
    /// It failed and the task was queued for another attempt.
    Retried,
    /// It failed and the task failed with it.
    Failed,
    /// The task was cancelled while it ran.
    Cancelled,
    /// Its host stopped or lost the task's lease while it ran.
    Interrupted,
}

impl AttemptOutcome {
    /// The outcome as written in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Retried => "retried",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Interrupted => "interrupted",
        }
    }
}

impl fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line a plugin logged or printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogLine {
    /// When it was logged (for stdout and stderr: when the attempt ended).
    pub at: DateTime<Utc>,
    /// Where it came from.
    pub stream: LogStream,
    /// Its level, for lines of the `log` import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    /// The text, as the plugin wrote it (untrusted: escape it to show it).
    pub message: String,
}

/// Where a plugin's line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    /// The host's `log` import.
    Log,
    /// WASI stdout.
    Stdout,
    /// WASI stderr.
    Stderr,
}

impl LogStream {
    /// The stream as written in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Log => "log",
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// Severity of a plugin's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    /// Finest detail.
    Trace,
    /// Detail for debugging.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected, handled.
    Warn,
    /// Something failed.
    Error,
}

impl LogLevel {
    /// The level as written in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

/// What the plugin logged and printed during one run, as the runtime hands
/// it over (and as a whole log is kept in the blob store).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunLogs {
    /// The lines, in order.
    pub lines: Vec<LogLine>,
    /// Lines (or, for stdout and stderr, chunks) dropped at the source.
    #[serde(default)]
    pub dropped: u32,
    /// Lines logged before the first of `lines` and not in them: a running
    /// attempt's live view holds its newest lines. 0 in a whole log.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped: u32,
}

impl RunLogs {
    /// Whether the record's bounds ([`MAX_LOG_LINES`], [`MAX_LOG_BYTES`])
    /// hold every line.
    pub fn fits_the_record(&self) -> bool {
        self.lines.len() <= MAX_LOG_LINES
            && self.lines.iter().map(|l| l.message.len()).sum::<usize>() <= MAX_LOG_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(message: &str) -> LogLine {
        LogLine {
            at: Utc::now(),
            stream: LogStream::Log,
            level: Some(LogLevel::Info),
            message: message.into(),
        }
    }

    fn attempt() -> Attempt {
        Attempt {
            number: 1,
            host: "h".into(),
            started_at: Utc::now(),
            finished_at: None,
            outcome: AttemptOutcome::Running,
            plugin_digest: None,
            error: None,
            logs: Vec::new(),
            logs_dropped: 0,
            logs_skipped: 0,
            logs_blob: None,
        }
    }

    #[test]
    fn logs_are_bounded_in_lines_and_bytes() {
        let mut a = attempt();
        a.add_logs((0..MAX_LOG_LINES + 5).map(|i| line(&i.to_string())), 2);
        assert_eq!(a.logs.len(), MAX_LOG_LINES);
        assert_eq!(a.logs_dropped, 7);

        let mut b = attempt();
        let big = "x".repeat(MAX_LOG_BYTES / 2);
        b.add_logs([line(&big), line(&big), line("one more byte")], 0);
        assert_eq!(b.logs.len(), 2);
        assert_eq!(b.logs_dropped, 1);
    }

    #[test]
    fn a_log_fits_the_record_within_its_bounds() {
        let lines: Vec<LogLine> = (0..MAX_LOG_LINES + 5)
            .map(|i| line(&i.to_string()))
            .collect();
        let whole = RunLogs {
            lines,
            dropped: 1,
            skipped: 0,
        };
        assert!(!whole.fits_the_record());
        assert!(
            RunLogs {
                lines: vec![line("short")],
                dropped: 9,
                skipped: 0,
            }
            .fits_the_record()
        );
    }

    #[test]
    fn an_attempt_round_trips_through_json() {
        let mut a = attempt();
        a.add_logs([line("<script>alert(1)</script>")], 0);
        let json = serde_json::to_string(&a).expect("encodes");
        assert_eq!(serde_json::from_str::<Attempt>(&json).expect("decodes"), a);
    }
}
