//! The per-task store state: a WASI context that grants nothing, resource
//! limits, captured stdio and the host imports of the `processor` world.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{LogLevel, taskflow::plugin};

/// How many `log` calls one task may make before further ones are dropped,
/// so a chatty plugin cannot flood the host log.
const MAX_LOG_CALLS: u32 = 1_000;
/// Longest log message kept from a plugin, in bytes.
const MAX_LOG_MESSAGE: usize = 4 * 1024;
/// Most table elements a plugin may grow a table to.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// State of one task's store. Built fresh for every task.
pub struct Sandbox {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limiter: MemoryLimiter,
    task_id: String,
    plugin: String,
    log_calls: u32,
    progress: Option<Arc<AtomicU8>>,
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
        progress: Option<Arc<AtomicU8>>,
    ) -> Self {
        let wasi = WasiCtx::builder()
            .stdout(stdout)
            .stderr(stderr)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter { limit: memory_limit, hit: false },
            task_id,
            plugin,
            log_calls: 0,
            progress,
        }
    }
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl plugin::types::Host for Sandbox {}

impl plugin::host::Host for Sandbox {
    fn log(&mut self, level: LogLevel, mut message: String) {
        self.log_calls += 1;
        if self.log_calls > MAX_LOG_CALLS {
            if self.log_calls == MAX_LOG_CALLS + 1 {
                tracing::warn!(task_id = %self.task_id, plugin = %self.plugin, "plugin log limit reached; dropping further messages");
            }
            return;
        }
        truncate_at_char_boundary(&mut message, MAX_LOG_MESSAGE);
        let (task_id, plugin) = (&self.task_id, &self.plugin);
        match level {
            LogLevel::Trace => tracing::trace!(task_id, plugin, source = "plugin", "{message}"),
            LogLevel::Debug => tracing::debug!(task_id, plugin, source = "plugin", "{message}"),
            LogLevel::Info => tracing::info!(task_id, plugin, source = "plugin", "{message}"),
            LogLevel::Warn => tracing::warn!(task_id, plugin, source = "plugin", "{message}"),
            LogLevel::Error => tracing::error!(task_id, plugin, source = "plugin", "{message}"),
        }
    }

    fn progress(&mut self, percent: u8) {
        if let Some(progress) = &self.progress {
            progress.store(percent.min(100), Ordering::Relaxed);
        }
    }
}

fn truncate_at_char_boundary(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
}

/// Caps every linear memory of a task and remembers whether the cap was hit,
/// so the failure can be reported as a memory limit rather than a bare trap.
pub(super) struct MemoryLimiter {
    limit: usize,
    pub(super) hit: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
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
        Self { inner: Arc::default(), capacity }
    }

    fn append(&self, bytes: &[u8]) {
        let mut captured = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let room = self.capacity.saturating_sub(captured.kept.len());
        let kept = bytes.len().min(room);
        captured.kept.extend_from_slice(&bytes[..kept]);
        captured.dropped += (bytes.len() - kept) as u64;
    }

    /// What was kept, and how many bytes beyond the bound were dropped.
    pub fn take(&self) -> (Vec<u8>, u64) {
        let mut captured = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        (std::mem::take(&mut captured.kept), captured.dropped)
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

    fn poll_flush(self: std::pin::Pin<&mut Self>, _cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
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
    }

    #[test]
    fn long_log_messages_are_cut_on_a_char_boundary() {
        let mut text = "é".repeat(10);
        truncate_at_char_boundary(&mut text, 5);
        assert_eq!(text, "éé…");
    }
}
