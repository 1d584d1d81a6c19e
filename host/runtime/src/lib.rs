//! `taskflow-runtime`, the WebAssembly runtime: one engine for the process,
//! plugins compiled once and pre-linked once, a fresh sandboxed instance for
//! every task (or, for a plugin that opts in, one instance for several tasks
//! in sequence). It knows tasks only as the model states them
//! (`taskflow-model`) and nothing of queues, stores or HTTP. Start reading at
//! [`Runtime::run`], then [`registry::PluginRegistry`].
//!
//! - [`engine`]: engine, linker and the epoch ticker behind timeouts;
//! - [`sandbox`]: per-task store state (WASI granting nothing, limits, stdio);
//! - `reuse`: instances kept between tasks;
//! - [`plugin`]: compiling, validating and caching one plugin version;
//! - [`registry`]: the name → version map with hot reload;
//! - [`compiler`]: compiling in a child process; [`heap`]: the C allocator's arenas;
//! - this module: running one task under its limits.

#[doc(hidden)]
pub mod bindings;
pub mod compiler;
pub mod contract;
pub mod engine;
pub mod heap;
pub mod live;
pub mod plugin;
pub mod registry;
mod reuse;
pub mod sandbox;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wasmtime::component::Linker;
use wasmtime::{Engine, Store, Trap, UpdateDeadline};

pub use engine::AllocatorKind;
pub use live::Live;
pub use plugin::{LoadedPlugin, PluginError};
pub use registry::{PluginRegistry, RegistryStats};
pub use taskflow_model::FailureKind;
pub use taskflow_model::attempt::RunLogs;
use taskflow_model::attempt::{LogLine, LogStream};

use bindings::{WitTask, WitTaskError};
use sandbox::{CapturedOutput, Sandbox};

/// Errors building the runtime itself.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The engine or linker could not be created.
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
}

/// Settings of the engine and the default limits of every task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuntimeConfig {
    /// Use the pooling allocator (falls back to on-demand if it cannot).
    pub pooling: bool,
    /// Most instances alive at once under the pooling allocator.
    pub max_concurrent_instances: u32,
    /// Largest linear memory any plugin may be given (the pool's slot size).
    pub max_memory_bytes: usize,
    /// Deepest native stack guest code may use.
    pub max_wasm_stack: usize,
    /// Fuel per task, if fuel metering is on.
    pub fuel: Option<u64>,
    /// Limits applied to a task unless the task or plugin says otherwise.
    pub default_limits: Limits,
    /// Compile plugins in a child process running this executable
    /// (`taskflow compile-plugin`), so that the compiler's memory goes back
    /// to the system when it exits and a compiler crash cannot take the
    /// host down; `None` compiles in this process. Only used with a compile
    /// cache, through which the child hands over its work.
    #[serde(skip)]
    pub compiler: Option<std::path::PathBuf>,
    /// Longest a compiler process may take before it is stopped and its
    /// plugin version rejected.
    #[serde(skip, default = "default_compile_timeout")]
    pub compile_timeout: Duration,
}

fn default_compile_timeout() -> Duration {
    Duration::from_secs(300)
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            pooling: true,
            max_concurrent_instances: 256,
            max_memory_bytes: 512 * 1024 * 1024,
            max_wasm_stack: 512 * 1024,
            fuel: None,
            default_limits: Limits::default(),
            compiler: None,
            compile_timeout: default_compile_timeout(),
        }
    }
}

/// What one task may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Wall-clock time for the whole call, instantiation included.
    pub timeout: Duration,
    /// Cap on each linear memory of the instance, in bytes.
    pub memory_bytes: usize,
    /// Bytes of stdout and of stderr kept per task; the rest is dropped.
    pub output_bytes: usize,
    /// How many tasks, one after another, one instance may run: 1 (the
    /// default) is a fresh instance for every task. More lets state carry
    /// over from task to task, for plugins whose authors accept that.
    pub reuse_tasks: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            memory_bytes: 64 * 1024 * 1024,
            output_bytes: 64 * 1024,
            reuse_tasks: 1,
        }
    }
}

/// The task as a plugin sees it.
#[derive(Debug, Clone)]
pub struct TaskInput {
    /// Task id.
    pub id: String,
    /// Plugin name the task was submitted to.
    pub plugin: String,
    /// 1 (highest) to 10.
    pub priority: u8,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

/// A task's successful output.
#[derive(Debug, Clone)]
pub struct Success {
    /// Bytes the plugin returned.
    pub output: Vec<u8>,
    /// Digest of the plugin version that ran.
    pub plugin_digest: String,
    /// Time spent, instantiation included.
    pub duration: Duration,
    /// What the plugin wrote to stdout and stderr, up to the bound.
    pub stdio: Stdio,
}

/// A plugin's captured stdout and stderr.
#[derive(Debug, Clone, Default)]
pub struct Stdio {
    /// Stdout, up to [`Limits::output_bytes`].
    pub stdout: Vec<u8>,
    /// Stderr, up to [`Limits::output_bytes`].
    pub stderr: Vec<u8>,
    /// Bytes of both streams dropped beyond the bound.
    pub dropped_bytes: u64,
}

/// A run's outcome with what the plugin logged and printed meanwhile.
#[derive(Debug, Clone)]
pub struct Ran {
    /// The outcome.
    pub result: Result<Success, Failure>,
    /// The plugin's log lines, then its stdout and stderr by line.
    pub logs: RunLogs,
}

/// Why a task did not succeed. `kind` decides whether a retry may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Failure {
    /// What kind of failure it was.
    pub kind: FailureKind,
    /// What happened, for the task's submitter.
    pub message: String,
}

impl Failure {
    fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// Largest task result kept, in bytes: results are stored with the task and
/// returned by the API, so they are held to what a client can sensibly read.
pub const MAX_RESULT_BYTES: usize = 1024 * 1024;
/// Longest failure message kept from a plugin, in bytes.
const MAX_ERROR_MESSAGE: usize = 4 * 1024;

/// Extra time the outer timeout allows past the epoch deadline: the epoch
/// catches guest code, the outer timeout a guest blocked in a host call.
const OUTER_TIMEOUT_GRACE: Duration = Duration::from_millis(250);

/// The engine and linker every plugin runs on.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<Sandbox>,
    allocator: AllocatorKind,
    config: RuntimeConfig,
    /// Instances idle between tasks, over every plugin version.
    idle_held: Arc<std::sync::atomic::AtomicUsize>,
}

impl Runtime {
    /// Creates the engine, linker and epoch ticker.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let (engine, allocator) = engine::build_engine(&config)?;
        let linker = engine::build_linker(&engine)?;
        engine::spawn_epoch_ticker(&engine)?;
        tracing::info!(allocator = ?allocator, "WebAssembly engine ready");
        Ok(Self {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                allocator,
                config,
                idle_held: Arc::default(),
            }),
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub(crate) fn linker(&self) -> &Linker<Sandbox> {
        &self.inner.linker
    }

    /// Which allocator the engine uses.
    pub fn allocator(&self) -> AllocatorKind {
        self.inner.allocator
    }

    /// The configuration the runtime was built with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// The list of idle instances of a new plugin version.
    pub(crate) fn idle_instances(&self) -> reuse::IdleInstances {
        let most = self.inner.config.max_concurrent_instances as usize / 2;
        reuse::IdleInstances::new(self.inner.idle_held.clone(), most)
    }

    /// Runs `task` in a fresh instance of `plugin` under `limits` (or in an
    /// idle one of this version, when `limits.reuse_tasks` allows). Never
    /// panics and never lets the plugin take the host down: every way the
    /// guest can fail becomes a [`Failure`].
    pub async fn run(
        &self,
        plugin: &LoadedPlugin,
        task: TaskInput,
        limits: Limits,
        live: Option<Arc<Live>>,
    ) -> Result<Success, Failure> {
        self.run_logged(plugin, task, limits, live).await.result
    }

    /// [`run`](Self::run), also handing over what the plugin logged and
    /// wrote to stdout and stderr, whatever the outcome (for the attempt's
    /// history).
    pub async fn run_logged(
        &self,
        plugin: &LoadedPlugin,
        task: TaskInput,
        mut limits: Limits,
        live: Option<Arc<Live>>,
    ) -> Ran {
        let live = live.unwrap_or_default();
        // The engine's pool bounds every memory; a failure must name the cap that applied.
        limits.memory_bytes = limits.memory_bytes.min(self.inner.config.max_memory_bytes);
        let started = Instant::now();
        let deadline = started + limits.timeout;
        let task_id = task.id.clone();
        let reuse = limits.reuse_tasks > 1;

        let mut warm = reuse.then(|| plugin.idle.take()).flatten();
        if let Some(instance) = &mut warm
            && !instance.store.data_mut().begin_task(
                task.id.clone(),
                limits.memory_bytes,
                live.clone(),
                deadline,
            )
        {
            warm = None; // it holds more memory than this task may use
        }
        let (mut store, ready, tasks_before) = match warm {
            Some(warm) => (warm.store, Some(warm.processor), warm.tasks),
            None => (
                self.new_store(plugin, &task.id, &limits, live, deadline),
                None,
                0,
            ),
        };
        if let Some(fuel) = self.inner.config.fuel {
            // Fuel metering is on for the whole engine; a set_fuel error
            // means it is off, which the config rules out.
            let _ = store.set_fuel(fuel);
        }
        store.set_epoch_deadline(1);

        let wit_task = WitTask {
            id: task.id,
            plugin: task.plugin,
            priority: task.priority,
            attempt: task.attempt,
            payload: task.payload,
        };
        let call = async {
            let processor = match ready {
                Some(processor) => processor,
                None => plugin
                    .pre
                    .instantiate_async(&mut store)
                    .await
                    .map_err(Outcome::Instantiate)?,
            };
            let output = processor
                .call_process(&mut store, &wit_task)
                .await
                .map_err(Outcome::Trapped)?;
            Ok((processor, output))
        };
        let outcome = tokio::time::timeout(limits.timeout + OUTER_TIMEOUT_GRACE, call).await;
        let memory_hit = store.data().limiter.hit;
        let stdio = collect_stdio(&task_id, &plugin.name, store.data());
        let logs = collect_logs(store.data_mut(), &stdio);
        // Only an instance whose call returned (with a result or the
        // plugin's own error) may serve again: after a trap, a timeout or
        // the memory cap, its state is not to be trusted.
        let outcome = outcome.map(|called| {
            called.map(|(processor, output)| {
                let tasks = tasks_before + 1;
                if reuse && !memory_hit && tasks < limits.reuse_tasks {
                    plugin.idle.put(reuse::Warm {
                        store,
                        processor,
                        tasks,
                    });
                }
                output
            })
        });

        let result = match outcome {
            Err(_elapsed) => Err(Failure::new(
                FailureKind::Timeout,
                format!(
                    "task exceeded its timeout of {} ms (blocked in a host call)",
                    limits.timeout.as_millis()
                ),
            )),
            Ok(Err(Outcome::Instantiate(e))) => Err(classify_trap(
                &e,
                memory_hit,
                &limits,
                FailureKind::Instantiation,
            )),
            Ok(Err(Outcome::Trapped(e))) => {
                Err(classify_trap(&e, memory_hit, &limits, FailureKind::Trap))
            }
            Ok(Ok(Err(plugin_error))) => {
                let (kind, mut message) = match plugin_error {
                    WitTaskError::Retryable(m) => (FailureKind::Retryable, m),
                    WitTaskError::InvalidInput(m) => (FailureKind::InvalidInput, m),
                    WitTaskError::Fatal(m) => (FailureKind::Fatal, m),
                };
                sandbox::truncate_at_char_boundary(&mut message, MAX_ERROR_MESSAGE);
                Err(Failure::new(kind, message))
            }
            Ok(Ok(Ok(output))) if output.len() > MAX_RESULT_BYTES => Err(Failure::new(
                FailureKind::OutputTooLarge,
                format!(
                    "the plugin returned {} bytes; results are limited to {MAX_RESULT_BYTES}",
                    output.len()
                ),
            )),
            Ok(Ok(Ok(output))) => Ok(Success {
                output,
                plugin_digest: plugin.digest.clone(),
                duration: started.elapsed(),
                stdio,
            }),
        };
        if let Err(failure) = &result {
            tracing::debug!(task_id, plugin = %plugin.name, kind = %failure.kind, message = %failure.message, "task failed in plugin");
        }
        Ran { result, logs }
    }
}

impl Runtime {
    /// A store for a new instance of `plugin`: WASI granting nothing,
    /// the memory cap, the deadline checked at every epoch tick.
    fn new_store(
        &self,
        plugin: &LoadedPlugin,
        task_id: &str,
        limits: &Limits,
        live: Arc<Live>,
        deadline: Instant,
    ) -> Store<Sandbox> {
        let mut sandbox = Sandbox::new(
            task_id.to_owned(),
            plugin.name.clone(),
            limits.memory_bytes,
            CapturedOutput::new(limits.output_bytes),
            CapturedOutput::new(limits.output_bytes),
            live,
        );
        sandbox.deadline = deadline;
        let mut store = Store::new(&self.inner.engine, sandbox);
        store.limiter(|sandbox| &mut sandbox.limiter);
        store.epoch_deadline_callback(|store| {
            if Instant::now() >= store.data().deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                // Hand the thread back to the executor at every tick so one
                // long task cannot starve the others.
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }
}

enum Outcome {
    Instantiate(wasmtime::Error),
    Trapped(wasmtime::Error),
}

/// Turns a wasmtime error into a failure a submitter can act on.
fn classify_trap(
    error: &wasmtime::Error,
    memory_hit: bool,
    limits: &Limits,
    otherwise: FailureKind,
) -> Failure {
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Failure::new(
            FailureKind::Timeout,
            format!(
                "task exceeded its timeout of {} ms",
                limits.timeout.as_millis()
            ),
        ),
        Some(Trap::OutOfFuel) => Failure::new(FailureKind::FuelExhausted, "task used up its fuel"),
        _ if memory_hit => Failure::new(
            FailureKind::MemoryLimit,
            format!(
                "task tried to use more than its memory limit of {} bytes",
                limits.memory_bytes
            ),
        ),
        Some(Trap::StackOverflow) => Failure::new(FailureKind::Trap, "plugin overflowed its stack"),
        Some(trap) => Failure::new(otherwise, format!("plugin trapped: {trap}")),
        None => Failure::new(otherwise, format!("plugin failed: {}", root_message(error))),
    }
}

/// The innermost message of an error chain: what went wrong, without the
/// host's internal context.
fn root_message(error: &wasmtime::Error) -> String {
    error.root_cause().to_string()
}

/// Takes what the guest wrote and logs it with the task id.
fn collect_stdio(task_id: &str, plugin: &str, sandbox: &Sandbox) -> Stdio {
    let (stdout, stdout_dropped) = sandbox.stdout.take();
    let (stderr, stderr_dropped) = sandbox.stderr.take();
    for (stream, kept, dropped) in [
        ("stdout", &stdout, stdout_dropped),
        ("stderr", &stderr, stderr_dropped),
    ] {
        if !kept.is_empty() {
            let text = String::from_utf8_lossy(kept);
            let shown: String = text.chars().take(LOGGED_OUTPUT_CHARS).collect();
            tracing::info!(
                task_id,
                plugin,
                stream,
                bytes = kept.len(),
                dropped_bytes = dropped,
                "plugin output: {shown}"
            );
        }
    }
    Stdio {
        stdout,
        stderr,
        dropped_bytes: stdout_dropped + stderr_dropped,
    }
}

/// Takes the task's log lines from the sandbox and adds its stdout and
/// stderr, line by line, stamped now; what the sandbox dropped is counted.
fn collect_logs(sandbox: &mut Sandbox, stdio: &Stdio) -> RunLogs {
    let live = sandbox.live();
    let now = chrono::Utc::now();
    for (stream, bytes) in [
        (LogStream::Stdout, &stdio.stdout),
        (LogStream::Stderr, &stdio.stderr),
    ] {
        for line in String::from_utf8_lossy(bytes)
            .lines()
            .filter(|line| !line.is_empty())
        {
            live.push(LogLine {
                at: now,
                stream,
                level: None,
                message: line.to_owned(),
            });
        }
    }
    if stdio.dropped_bytes > 0 {
        live.count_dropped(1);
    }
    live.take()
}

/// How much of a plugin's stdout or stderr goes into one log line.
const LOGGED_OUTPUT_CHARS: usize = 2048;
