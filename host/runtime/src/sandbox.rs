//! The per-task store state: a WASI context that grants nothing, resource
//! limits, captured stdio and the host imports of the `processor` world.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use taskflow_model::attempt::{self, LogLine, LogStream};

use crate::live::Live;

use super::bindings::{Host, LogLevel, TypesHost};

/// How many `log` calls of one task go to the host's own log, so a chatty
/// plugin cannot flood it; the attempt's log keeps them within its own
/// bounds.
const MAX_HOST_LOG_CALLS: u32 = 1_000;
/// Longest log message kept from a plugin, in bytes.
const MAX_LOG_MESSAGE: usize = 4 * 1024;
/// Most table elements a plugin may grow a table to.
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Most linear memories, tables and core instances one task may create.
/// Rust components use one memory and a handful of instances.
pub const MAX_MEMORIES: usize = 16;
const MAX_TABLES: usize = 64;
const MAX_INSTANCES: usize = 64;
/// Most host-side resources (streams, pollables …) a task may hold at once.
const MAX_RESOURCES: usize = 10_000;

/// State of one instance's store: built fresh for every task, or, for a
/// plugin that opts into instance reuse, carried from task to task with its
/// per-task part ([`Sandbox::begin_task`]) reset.
pub struct Sandbox {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limiter: MemoryLimiter,
    task_id: String,
    plugin: String,
    log_calls: u32,
    /// The task's progress and log lines (bounded), for whoever watches
    /// and for its attempt's history.
    live: Arc<Live>,
    pub(super) stdout: CapturedOutput,
    pub(super) stderr: CapturedOutput,
    /// When the current task's time is up: the epoch callback interrupts
    /// the guest from then on.
    pub(super) deadline: Instant,
}

impl Sandbox {
    /// A sandbox with no files, no environment, no arguments and no network;
    /// stdout and stderr go to bounded in-memory buffers.
    pub fn new(
        task_id: String,
        plugin: String,
        memory_limit: usize,
        stdout: CapturedOutput,
        stderr: CapturedOutput,
        live: Arc<Live>,
    ) -> Self {
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        Self {
            wasi,
            table,
            limiter: MemoryLimiter {
                limit: memory_limit,
                total: 0,
                hit: false,
            },
            task_id,
            plugin,
            log_calls: 0,
            live,
            stdout,
            stderr,
            // Until a task sets its own: no deadline worth the name.
            deadline: Instant::now() + Duration::from_secs(365 * 24 * 3600),
        }
    }

    /// Readies a reused instance's state for the next task: its id, memory
    /// cap, live state and deadline, a fresh log budget and empty stdio.
    /// `false` when the instance already holds more memory than the new cap
    /// allows (it must not run the task).
    pub(super) fn begin_task(
        &mut self,
        task_id: String,
        memory_limit: usize,
        live: Arc<Live>,
        deadline: Instant,
    ) -> bool {
        self.task_id = task_id;
        self.live = live;
        self.deadline = deadline;
        self.log_calls = 0;
        self.stdout.take();
        self.stderr.take();
        self.limiter.limit = memory_limit;
        self.limiter.hit = false;
        self.limiter.total <= memory_limit
    }
}

impl Sandbox {
    /// The current task's live state.
    pub(super) fn live(&self) -> &Live {
        &self.live
    }
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl TypesHost for Sandbox {}

impl Host for Sandbox {
    fn log(&mut self, level: LogLevel, mut message: String) {
        self.log_calls = self.log_calls.saturating_add(1);
        truncate_at_char_boundary(&mut message, MAX_LOG_MESSAGE);
        let (task_id, plugin) = (&self.task_id, &self.plugin);
        if self.log_calls > MAX_HOST_LOG_CALLS {
            if self.log_calls == MAX_HOST_LOG_CALLS + 1 {
                tracing::warn!(
                    task_id,
                    plugin,
                    "plugin log limit of the host's log reached; further lines go to the attempt's log only"
                );
            }
        } else {
            match level {
                LogLevel::Trace => tracing::trace!(task_id, plugin, source = "plugin", "{message}"),
                LogLevel::Debug => tracing::debug!(task_id, plugin, source = "plugin", "{message}"),
                LogLevel::Info => tracing::info!(task_id, plugin, source = "plugin", "{message}"),
                LogLevel::Warn => tracing::warn!(task_id, plugin, source = "plugin", "{message}"),
                LogLevel::Error => tracing::error!(task_id, plugin, source = "plugin", "{message}"),
            }
        }
        self.live.push(LogLine {
            at: chrono::Utc::now(),
            stream: LogStream::Log,
            level: Some(match level {
                LogLevel::Trace => attempt::LogLevel::Trace,
                LogLevel::Debug => attempt::LogLevel::Debug,
                LogLevel::Info => attempt::LogLevel::Info,
                LogLevel::Warn => attempt::LogLevel::Warn,
                LogLevel::Error => attempt::LogLevel::Error,
            }),
            message,
        });
    }

    fn progress(&mut self, percent: u8) {
        self.live.set_progress(percent);
    }

    fn remaining_millis(&mut self) -> u64 {
        let left = self.deadline.saturating_duration_since(Instant::now());
        u64::try_from(left.as_millis()).unwrap_or(u64::MAX)
    }
}

pub(super) fn truncate_at_char_boundary(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
}

/// Caps the linear memory of a task, summed over all its memories (a
/// component may have several), and remembers whether the cap was hit, so
/// the failure can be reported as a memory limit rather than a bare trap.
pub(super) struct MemoryLimiter {
    limit: usize,
    total: usize,
    pub(super) hit: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.total.saturating_sub(current).saturating_add(desired);
        if total > self.limit {
            self.hit = true;
            return Ok(false);
        }
        // Counted even if wasmtime then refuses the growth (past the memory's
        // declared maximum): over-counting only denies more, and undoing it
        // in `memory_grow_failed` cannot be done safely, since wasmtime also
        // calls that for growths it refuses before asking the limiter.
        self.total = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// A guest's stdout or stderr: kept in memory up to a bound, the rest counted
/// and dropped. Unlike wasmtime's `MemoryOutputPipe`, going over the bound
/// does not trap the guest: its output is truncated, the task goes on.
#[derive(Clone)]
pub struct CapturedOutput {
    inner: Arc<Mutex<Captured>>,
    capacity: usize,
}

#[derive(Default)]
struct Captured {
    kept: Vec<u8>,
    dropped: u64,
}

impl CapturedOutput {
    /// An empty buffer that keeps at most `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::default(),
            capacity,
        }
    }

    fn append(&self, bytes: &[u8]) {
        let mut captured = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let room = self.capacity.saturating_sub(captured.kept.len());
        let kept = bytes.len().min(room);
        captured.kept.extend_from_slice(&bytes[..kept]);
        captured.dropped += (bytes.len() - kept) as u64;
    }

    /// What was kept, and how many bytes beyond the bound were dropped;
    /// the buffer is empty again afterwards.
    pub fn take(&self) -> (Vec<u8>, u64) {
        let mut captured = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (
            std::mem::take(&mut captured.kept),
            std::mem::take(&mut captured.dropped),
        )
    }
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// Largest write the guest is invited to make at once.
const WRITE_BUDGET: usize = 64 * 1024;

impl OutputStream for CapturedOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(WRITE_BUDGET)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CapturedOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CapturedOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.append(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_output_truncates_and_counts() {
        let out = CapturedOutput::new(4);
        out.append(b"abc");
        out.append(b"defgh");
        let (kept, dropped) = out.take();
        assert_eq!(kept, b"abcd");
        assert_eq!(dropped, 4);
        out.append(b"ij");
        assert_eq!(out.take(), (b"ij".to_vec(), 0), "taken: empty again");
    }

    #[test]
    fn the_memory_cap_covers_all_memories_together() {
        let mut limiter = MemoryLimiter {
            limit: 100,
            total: 0,
            hit: false,
        };
        assert!(limiter.memory_growing(0, 60, None).expect("grow"));
        assert!(
            !limiter.memory_growing(0, 60, None).expect("second memory"),
            "60 + 60 is over 100"
        );
        assert!(limiter.hit);
        assert!(
            limiter
                .memory_growing(60, 100, None)
                .expect("grow the first to the cap")
        );
    }

    #[test]
    fn long_log_messages_are_cut_on_a_char_boundary() {
        let mut text = "é".repeat(10);
        truncate_at_char_boundary(&mut text, 5);
        assert_eq!(text, "éé…");
    }
}
