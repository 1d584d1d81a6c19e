//! The task model: what a client submits, what the host records, and the
//! rules of its lifecycle.
//!
//! `pending → running → completed`, or `running → failed` when attempts run
//! out or the failure is not retryable; a retryable failure goes back to
//! `pending` after a backoff. `cancelled` from `pending`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
#[cfg(feature = "openapi")]
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
#[cfg(feature = "openapi")]
use utoipa::openapi::{KnownFormat, RefOr, SchemaFormat};
use uuid::Uuid;

use crate::attempt::{Attempt, AttemptOutcome, MAX_ATTEMPTS_KEPT, RunLogs};
use crate::failure::FailureKind;

/// Highest priority.
pub const PRIORITY_HIGHEST: u8 = 1;
/// Lowest priority.
pub const PRIORITY_LOWEST: u8 = 10;
/// Priority of a task that does not name one.
pub const PRIORITY_DEFAULT: u8 = 5;
/// Attempts of a task that does not name a number.
pub const MAX_ATTEMPTS_DEFAULT: u32 = 3;
/// Most attempts a task may ask for.
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;
/// Longest timeout a task may ask for.
pub const TIMEOUT_LIMIT: Duration = Duration::from_secs(3600);
/// Longest idempotency key accepted, in bytes. Keys are printable ASCII, one
/// byte per character, so this is also their length in characters.
pub const IDEMPOTENCY_KEY_LIMIT: usize = 256;
/// Longest host name a task records.
pub const MAX_HOST_CHARS: usize = 200;
/// The idempotency key rule as the OpenAPI description states it: 1 to 256
/// printable ASCII characters (space to `~`). That is the character set of a
/// string in an HTTP structured field (RFC 8941 §3.3.3), which the IETF
/// `Idempotency-Key` header carries, and it has neither control characters
/// nor characters of more than one byte, so a pattern states the byte limit
/// exactly. The `#[schema]` attributes repeat it (they take literals only).
pub const IDEMPOTENCY_KEY_PATTERN: &str = r"^[\x20-\x7E]{1,256}$";

/// Whether `key` follows the idempotency key rule ([`IDEMPOTENCY_KEY_PATTERN`]).
pub fn is_idempotency_key(key: &str) -> bool {
    (1..=IDEMPOTENCY_KEY_LIMIT).contains(&key.len())
        && key.bytes().all(|b| matches!(b, b' '..=b'~'))
}

/// A task id: a random (v4) UUID, so its leading hex digits, which pick the
/// storage shard, are spread evenly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
pub struct TaskId(Uuid);

impl TaskId {
    /// A fresh random id.
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }

    /// The two-character shard this id is stored under.
    pub fn shard(&self) -> String {
        self.to_string()[..2].to_owned()
    }

    /// The UUID itself.
    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl From<Uuid> for TaskId {
    fn from(uuid: Uuid) -> Self {
        Self(uuid)
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.as_hyphenated().fmt(f)
    }
}

/// A string that is not a task id.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a task id: expected a UUID such as 3f2b8c1e-8d4a-4c7e-9f1a-2b3c4d5e6f70")]
pub struct InvalidTaskId(String);

impl FromStr for TaskId {
    type Err = InvalidTaskId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Only the canonical hyphenated form: it is what file names and URLs use.
        if s.len() != 36 {
            return Err(InvalidTaskId(s.chars().take(64).collect()));
        }
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| InvalidTaskId(s.to_owned()))
    }
}

/// Where a task is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Queued, waiting for a worker (possibly for its retry backoff).
    Pending,
    /// A worker is running it.
    Running,
    /// Finished successfully; `result` holds the output.
    Completed,
    /// Finished unsuccessfully; `last_error` says why.
    Failed,
    /// Cancelled before it ran.
    Cancelled,
}

impl TaskStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [TaskStatus; 5] = [
        Self::Pending,
        Self::Running,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    /// Whether the task will not change any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// The status as written in JSON and URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown status {s:?}: use pending, running, completed, failed or cancelled"
                )
            })
    }
}

/// Why the last attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskError {
    /// What kind of failure it was.
    pub kind: FailureKind,
    /// What happened.
    pub message: String,
}

/// A task's output: JSON when the plugin returned JSON, base64 otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "encoding", content = "value", rename_all = "snake_case")]
pub enum TaskOutput {
    /// The plugin returned valid JSON.
    Json(serde_json::Value),
    /// The plugin returned other bytes, base64-encoded.
    Base64(String),
}

impl TaskOutput {
    /// Interprets plugin output bytes.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        match serde_json::from_slice(bytes) {
            Ok(value) => Self::Json(value),
            Err(_) => Self::Base64(base64::engine::general_purpose::STANDARD.encode(bytes)),
        }
    }
}

/// A task and everything recorded about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Task {
    /// Unique id.
    pub id: TaskId,
    /// Name of the plugin that processes it.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[a-z0-9][a-z0-9_-]{0,63}$"))]
    pub plugin: String,
    /// 1 (highest) to 10 (lowest).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 10))]
    pub priority: u8,
    /// The payload handed to the plugin.
    pub payload: serde_json::Value,
    /// Lifecycle status.
    pub status: TaskStatus,
    /// Attempts started so far: at most `max_attempts`.
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 100))]
    pub attempts: u32,
    /// Most attempts before the task fails, 1 to 100.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    pub max_attempts: u32,
    /// Timeout of one attempt in milliseconds, if the task set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 3_600_000))]
    pub timeout_ms: Option<u64>,
    /// Client-chosen key: a second submission with the same key returns this task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 256, pattern = r"^[\x20-\x7E]{1,256}$")
    )]
    pub idempotency_key: Option<String>,
    /// Submission order, used to keep equal priorities first-in first-out.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 18_446_744_073_709_551_615_u64)
    )]
    pub sequence: u64,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
    /// When its latest attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = nullable_date_time))]
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a terminal status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = nullable_date_time))]
    pub finished_at: Option<DateTime<Utc>>,
    /// Earliest time of the next attempt (retry backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = nullable_date_time))]
    pub retry_at: Option<DateTime<Utc>>,
    /// Digest of the plugin version that ran the latest attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_digest: Option<String>,
    /// The host that runs or ran the latest attempt (its `TASKFLOW_HOST_ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200))]
    pub host: Option<String>,
    /// Why the latest attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<TaskError>,
    /// The output, once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<TaskOutput>,
    /// Where the payload is when it is too large to keep in the record
    /// (`payload` is then null). Only list pages show it: a task read alone
    /// carries its payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_blob: Option<BlobRef>,
    /// Where the result is when it is too large to keep in the record
    /// (`result` is then absent); as `payload_blob`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_blob: Option<BlobRef>,
    /// Its latest attempts, oldest first, each with the plugin's log lines
    /// (bounded: see [`crate::attempt`]). Written by the host; a backup
    /// carries it back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(read_only))]
    pub history: Vec<Attempt>,
}

/// A body kept in the blob store instead of the task record (a claim
/// check): its key there, its size and its SHA-256, checked when it is read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BlobRef {
    /// Key in the blob store.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the bytes, lowercase hex.
    pub sha256: String,
}

/// What a client submits.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    /// Plugin name, e.g. `"echo"`.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[a-z0-9][a-z0-9_-]{0,63}$", example = "echo")
    )]
    pub plugin: String,
    /// Any JSON value; handed to the plugin as UTF-8 JSON bytes.
    #[serde(default)]
    pub payload: serde_json::Value,
    /// 1 (highest) to 10 (lowest); default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 10))]
    pub priority: Option<u8>,
    /// 1 to 100; default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    pub max_attempts: Option<u32>,
    /// Timeout of one attempt in milliseconds (1 ms to 1 hour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 3_600_000))]
    pub timeout_ms: Option<u64>,
    /// Makes retried submissions safe: the same key returns the same task.
    /// 1 to 256 printable ASCII characters (space to `~`), as in the IETF
    /// `Idempotency-Key` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 256, pattern = r"^[\x20-\x7E]{1,256}$")
    )]
    pub idempotency_key: Option<String>,
}

/// A submission that breaks a rule; the message says which and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong and what is allowed.
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> ValidationError {
    ValidationError {
        field,
        message: message.into(),
    }
}

impl NewTask {
    /// Checks every field and builds the pending task with `sequence`.
    /// Whether the plugin exists is checked by the caller, who knows the registry.
    pub fn validate(self, sequence: u64) -> Result<Task, ValidationError> {
        crate::plugin::validate_name(&self.plugin).map_err(|e| invalid("plugin", e.to_string()))?;
        let priority = self.priority.unwrap_or(PRIORITY_DEFAULT);
        if !(PRIORITY_HIGHEST..=PRIORITY_LOWEST).contains(&priority) {
            return Err(invalid(
                "priority",
                format!("must be 1 (highest) to 10 (lowest), got {priority}"),
            ));
        }
        let max_attempts = self.max_attempts.unwrap_or(MAX_ATTEMPTS_DEFAULT);
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&max_attempts) {
            return Err(invalid(
                "max_attempts",
                format!("must be 1 to {MAX_ATTEMPTS_LIMIT}, got {max_attempts}"),
            ));
        }
        if let Some(timeout) = self.timeout_ms
            && (timeout == 0 || u128::from(timeout) > TIMEOUT_LIMIT.as_millis())
        {
            return Err(invalid(
                "timeout_ms",
                format!(
                    "must be 1 to {} ms, got {timeout}",
                    TIMEOUT_LIMIT.as_millis()
                ),
            ));
        }
        if let Some(key) = &self.idempotency_key
            && !is_idempotency_key(key)
        {
            return Err(invalid(
                "idempotency_key",
                format!(
                    "must be 1 to {IDEMPOTENCY_KEY_LIMIT} printable ASCII characters (space to `~`)"
                ),
            ));
        }
        Ok(Task {
            id: TaskId::new(),
            plugin: self.plugin,
            priority,
            payload: self.payload,
            status: TaskStatus::Pending,
            attempts: 0,
            max_attempts,
            timeout_ms: self.timeout_ms,
            idempotency_key: self.idempotency_key,
            sequence,
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
            retry_at: None,
            plugin_digest: None,
            host: None,
            last_error: None,
            result: None,
            payload_blob: None,
            result_blob: None,
            history: Vec::new(),
        })
    }
}

impl Task {
    /// Checks a task read from a backup against the rules a submission
    /// obeys, so a hand-edited or foreign backup cannot smuggle in values the
    /// host never accepts (a priority the queue has no place for, a timeout
    /// of days, an attempt counter about to overflow).
    pub fn check_restorable(&self) -> Result<(), ValidationError> {
        let context = |e: ValidationError| ValidationError {
            field: e.field,
            message: format!("task {}: {}", self.id, e.message),
        };
        let as_submitted = NewTask {
            plugin: self.plugin.clone(),
            payload: serde_json::Value::Null,
            priority: Some(self.priority),
            max_attempts: Some(self.max_attempts),
            timeout_ms: self.timeout_ms,
            idempotency_key: self.idempotency_key.clone(),
        };
        as_submitted.validate(self.sequence).map_err(context)?;
        if self.attempts > self.max_attempts {
            return Err(context(invalid(
                "attempts",
                format!(
                    "{} is more than max_attempts {}",
                    self.attempts, self.max_attempts
                ),
            )));
        }
        for (field, blob) in [
            ("payload_blob", &self.payload_blob),
            ("result_blob", &self.result_blob),
        ] {
            if blob.is_some() {
                return Err(context(invalid(
                    field,
                    "a backup carries bodies inline (GET /admin/backup writes them so): remove it and put the body in the task",
                )));
            }
        }
        if self
            .history
            .iter()
            .any(|attempt| attempt.logs_blob.is_some())
        {
            return Err(context(invalid(
                "history",
                "a backup carries logs inline (GET /admin/backup writes them so): remove logs_blob from its attempts",
            )));
        }
        if self.history.iter().any(|attempt| attempt.logs_skipped > 0) {
            return Err(context(invalid(
                "history",
                "logs_skipped belongs to a running attempt's live view, not to a record: remove it from the attempts",
            )));
        }
        if let Some(attempt) = self.history.iter().find(|attempt| {
            !(1..=MAX_ATTEMPTS_LIMIT).contains(&attempt.number)
                || attempt.logs_dropped > i32::MAX as u32
        }) {
            return Err(context(invalid(
                "history",
                format!(
                    "attempt numbers are 1 to {MAX_ATTEMPTS_LIMIT} and logs_dropped at most {} (attempt {})",
                    i32::MAX,
                    attempt.number
                ),
            )));
        }
        if self
            .host
            .as_ref()
            .is_some_and(|host| host.is_empty() || host.chars().count() > MAX_HOST_CHARS)
        {
            return Err(context(invalid(
                "host",
                format!("must be 1 to {MAX_HOST_CHARS} characters"),
            )));
        }
        Ok(())
    }

    /// The payload as the bytes a plugin receives.
    pub fn payload_bytes(&self) -> Vec<u8> {
        // Serialising a `Value` cannot fail.
        serde_json::to_vec(&self.payload).unwrap_or_default()
    }

    /// The timeout this task asked for, if any.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout_ms.map(Duration::from_millis)
    }

    /// Starts the next attempt of a pending task on `host` at `now`. A task with no
    /// attempt left (restored, or released at shutdown, during its last
    /// attempt) fails as interrupted instead; one waiting out a retry backoff
    /// is not touched.
    pub fn begin_attempt(&mut self, host: &str, now: DateTime<Utc>) -> Begin {
        if self.status != TaskStatus::Pending {
            return Begin::NotPending;
        }
        if let Some(wait) = self
            .retry_at
            .and_then(|at| (at - now).to_std().ok())
            .filter(|wait| !wait.is_zero())
        {
            return Begin::NotDue(wait);
        }
        if self.attempts >= self.max_attempts {
            self.fail_interrupted(
                "its last attempt was interrupted and no attempt is left",
                now,
            );
            return Begin::Exhausted;
        }
        self.status = TaskStatus::Running;
        self.attempts = self.attempts.saturating_add(1);
        self.started_at = Some(now);
        self.retry_at = None;
        self.host = Some(host.to_string());
        self.history.push(Attempt {
            number: self.attempts,
            host: host.to_string(),
            started_at: now,
            finished_at: None,
            outcome: AttemptOutcome::Running,
            plugin_digest: None,
            error: None,
            logs: Vec::new(),
            logs_dropped: 0,
            logs_skipped: 0,
            logs_blob: None,
        });
        if self.history.len() > MAX_ATTEMPTS_KEPT {
            self.history.drain(..self.history.len() - MAX_ATTEMPTS_KEPT);
        }
        Begin::Started
    }

    /// Holds the history to its bounds (a restored task's may exceed
    /// them): the latest [`MAX_ATTEMPTS_KEPT`] attempts, each with its logs
    /// within [`crate::attempt::MAX_LOG_LINES`] and [`crate::attempt::MAX_LOG_BYTES`].
    pub fn bound_history(&mut self) {
        if self.history.len() > MAX_ATTEMPTS_KEPT {
            self.history.drain(..self.history.len() - MAX_ATTEMPTS_KEPT);
        }
        for attempt in &mut self.history {
            let lines = std::mem::take(&mut attempt.logs);
            attempt.add_logs(lines, 0);
        }
    }

    /// Every blob the task points to: its payload and result, and the whole
    /// logs of its attempts.
    pub fn blobs(&self) -> impl Iterator<Item = &BlobRef> {
        [&self.payload_blob, &self.result_blob]
            .into_iter()
            .flatten()
            .chain(self.history.iter().filter_map(|a| a.logs_blob.as_ref()))
    }

    /// The attempt running now, if any.
    pub fn running_attempt(&mut self) -> Option<&mut Attempt> {
        self.history
            .last_mut()
            .filter(|attempt| attempt.outcome == AttemptOutcome::Running)
    }

    /// Records how the running attempt ended (with the last error, the
    /// plugin version and what the plugin logged); nothing when none runs.
    pub fn end_attempt(
        &mut self,
        outcome: AttemptOutcome,
        digest: Option<&str>,
        logs: RunLogs,
        now: DateTime<Utc>,
    ) {
        let failed = matches!(
            outcome,
            AttemptOutcome::Retried | AttemptOutcome::Failed | AttemptOutcome::Interrupted
        );
        let error = failed.then(|| self.last_error.clone()).flatten();
        if let Some(attempt) = self.running_attempt() {
            attempt.outcome = outcome;
            attempt.finished_at = Some(now);
            attempt.error = error;
            if let Some(digest) = digest {
                attempt.plugin_digest = Some(digest.to_owned());
            }
            attempt.add_logs(logs.lines, logs.dropped);
        }
    }

    /// Takes back the attempt just begun, as if it had not started (its
    /// host gives the task back unrun): pending again, not counted.
    pub fn uncount_attempt(&mut self) {
        if self.running_attempt().is_some() {
            self.history.pop();
        }
        self.status = TaskStatus::Pending;
        self.attempts = self.attempts.saturating_sub(1);
    }

    /// Queues a failed or cancelled task again for one more attempt (with
    /// the same payload, `max_attempts` raised to allow it); its earlier
    /// attempts stay in its history. An error says why it cannot be.
    pub fn retry(&mut self) -> Result<(), ValidationError> {
        if !matches!(self.status, TaskStatus::Failed | TaskStatus::Cancelled) {
            return Err(invalid(
                "status",
                format!(
                    "only a failed or cancelled task can be retried; this one is {}",
                    self.status
                ),
            ));
        }
        if self.attempts >= MAX_ATTEMPTS_LIMIT {
            return Err(invalid(
                "attempts",
                format!(
                    "the task has had {} attempts, the most a task may have; submit it anew",
                    self.attempts
                ),
            ));
        }
        self.max_attempts = self.max_attempts.max(self.attempts + 1);
        self.status = TaskStatus::Pending;
        self.finished_at = None;
        self.retry_at = None;
        self.result = None;
        self.result_blob = None;
        Ok(())
    }

    /// Ends a running task whose host stopped or lost its lease: pending
    /// again while attempts are left, failed as interrupted otherwise; `true`
    /// when it is pending again.
    pub fn interrupt(&mut self, now: DateTime<Utc>) -> bool {
        if self.attempts < self.max_attempts {
            self.status = TaskStatus::Pending;
            self.retry_at = None;
            self.last_error = Some(TaskError {
                kind: FailureKind::Interrupted,
                message: "its host stopped or lost contact while it ran; it was queued again"
                    .into(),
            });
            self.end_attempt(AttemptOutcome::Interrupted, None, RunLogs::default(), now);
            true
        } else {
            self.fail_interrupted(
                "its host stopped or lost contact while it ran its last attempt",
                now,
            );
            false
        }
    }

    /// Cancels the task at `now`.
    pub fn cancel(&mut self, now: DateTime<Utc>) {
        self.status = TaskStatus::Cancelled;
        self.finished_at = Some(now);
        self.retry_at = None;
        self.end_attempt(AttemptOutcome::Cancelled, None, RunLogs::default(), now);
    }

    fn fail_interrupted(&mut self, message: &str, now: DateTime<Utc>) {
        self.status = TaskStatus::Failed;
        self.finished_at = Some(now);
        self.retry_at = None;
        self.last_error = Some(TaskError {
            kind: FailureKind::Interrupted,
            message: message.into(),
        });
        self.end_attempt(AttemptOutcome::Interrupted, None, RunLogs::default(), now);
    }
}

/// What [`Task::begin_attempt`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    /// The task is running its next attempt.
    Started,
    /// No attempt was left: the task failed.
    Exhausted,
    /// The task waits out a retry backoff for this much longer.
    NotDue(Duration),
    /// The task is not pending (running elsewhere, finished or cancelled).
    NotPending,
}

/// An optional timestamp: `null` or an RFC 3339 date-time.
///
/// Stated as `oneOf` rather than `type: [string, null]`, with which
/// generators lose the format (and produce `""`, which is no date-time).
#[cfg(feature = "openapi")]
pub(crate) fn nullable_date_time() -> RefOr<Schema> {
    let date_time = SchemaFormat::KnownFormat(KnownFormat::DateTime);
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(date_time)),
        )
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_task(plugin: &str) -> NewTask {
        NewTask {
            plugin: plugin.into(),
            payload: serde_json::json!({"a": 1}),
            ..NewTask::default()
        }
    }

    fn blob(key: &str) -> BlobRef {
        BlobRef {
            key: key.into(),
            size: 1,
            sha256: "00".into(),
        }
    }

    /// `task` after an attempt that failed and was retried.
    fn retried(task: &mut Task) {
        assert_eq!(task.begin_attempt("h", Utc::now()), Begin::Started);
        task.end_attempt(
            AttemptOutcome::Retried,
            None,
            RunLogs::default(),
            Utc::now(),
        );
        task.status = TaskStatus::Pending;
    }

    #[test]
    fn a_task_names_every_blob_it_points_to() {
        let mut task = new_task("echo").validate(1).expect("valid");
        task.payload_blob = Some(blob("payloads/ab/p"));
        for n in 0..2 {
            retried(&mut task);
            task.history[n].logs_blob = (n == 1).then(|| blob("logs/ab/l"));
        }
        let keys: Vec<&str> = task.blobs().map(|b| b.key.as_str()).collect();
        assert_eq!(keys, ["payloads/ab/p", "logs/ab/l"]);
    }

    #[test]
    fn a_restored_attempt_is_a_record_with_its_logs_inline() {
        let mut task = new_task("echo").validate(1).expect("valid");
        retried(&mut task);
        assert!(task.check_restorable().is_ok());
        let mut live = task.clone();
        live.history[0].logs_skipped = 3;
        let refused = live.check_restorable().expect_err("a live view's count");
        assert!(refused.to_string().contains("logs_skipped"), "{refused}");
        let mut elsewhere = task;
        elsewhere.history[0].logs_blob = Some(blob("logs/ab/l"));
        let refused = elsewhere.check_restorable().expect_err("a log left behind");
        assert!(refused.to_string().contains("logs_blob"), "{refused}");
    }

    #[test]
    fn defaults_apply() {
        let task = new_task("echo").validate(7).expect("valid");
        assert_eq!(task.priority, PRIORITY_DEFAULT);
        assert_eq!(task.max_attempts, MAX_ATTEMPTS_DEFAULT);
        assert_eq!(task.status, TaskStatus::Pending);
        assert_eq!(task.sequence, 7);
    }

    #[test]
    fn out_of_range_fields_are_rejected_with_the_field_name() {
        for (task, field) in [
            (
                NewTask {
                    priority: Some(0),
                    ..new_task("echo")
                },
                "priority",
            ),
            (
                NewTask {
                    priority: Some(11),
                    ..new_task("echo")
                },
                "priority",
            ),
            (
                NewTask {
                    max_attempts: Some(0),
                    ..new_task("echo")
                },
                "max_attempts",
            ),
            (
                NewTask {
                    timeout_ms: Some(0),
                    ..new_task("echo")
                },
                "timeout_ms",
            ),
            (
                NewTask {
                    idempotency_key: Some(String::new()),
                    ..new_task("echo")
                },
                "idempotency_key",
            ),
            (
                NewTask {
                    idempotency_key: Some("a\0b".into()),
                    ..new_task("echo")
                },
                "idempotency_key",
            ),
            (new_task("../etc/passwd"), "plugin"),
            (new_task(""), "plugin"),
        ] {
            assert_eq!(task.validate(0).expect_err("invalid").field, field);
        }
    }

    #[test]
    fn idempotency_keys_are_1_to_256_printable_ascii_characters() {
        let with_key = |key: &str| {
            NewTask {
                idempotency_key: Some(key.into()),
                ..new_task("echo")
            }
            .validate(0)
        };
        for good in ["k", "order 42 ~!", &"x".repeat(IDEMPOTENCY_KEY_LIMIT)] {
            assert!(with_key(good).is_ok(), "{good:?} should be accepted");
        }
        // Over the limit, control characters, and any non-ASCII character
        // (even where 256 bytes would hold it).
        for bad in [
            "",
            &"x".repeat(IDEMPOTENCY_KEY_LIMIT + 1),
            "a\tb",
            "a\u{7f}",
            "a\u{85}",
            "clé",
            "\u{1F600}",
        ] {
            assert_eq!(
                with_key(bad).expect_err("invalid").field,
                "idempotency_key",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn task_ids_parse_only_in_canonical_form() {
        let id = TaskId::new();
        assert_eq!(id.to_string().parse::<TaskId>().expect("round trip"), id);
        for bad in [
            "",
            "../../etc/passwd",
            "not-a-uuid",
            "3f2b8c1e8d4a4c7e9f1a2b3c4d5e6f70",
            "ZZ2b8c1e-8d4a-4c7e-9f1a-2b3c4d5e6f70",
        ] {
            assert!(bad.parse::<TaskId>().is_err(), "{bad} should not parse");
        }
        assert_eq!(id.shard(), id.to_string()[..2]);
    }

    #[test]
    fn output_is_json_when_it_can_be() {
        assert_eq!(
            TaskOutput::from_bytes(b"{\"a\":1}"),
            TaskOutput::Json(serde_json::json!({"a": 1}))
        );
        assert_eq!(
            TaskOutput::from_bytes(&[0xff, 0x00]),
            TaskOutput::Base64("/wA=".into())
        );
    }
}
