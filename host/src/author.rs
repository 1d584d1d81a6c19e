//! The plugin author's workflow, with no server: `taskflow plugin run` runs
//! one task through the same runtime, sandbox and limits as a host.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use crate::runtime::plugin::{self, CompileCounters};
use crate::runtime::{Limits, Runtime, RuntimeConfig, TaskInput};
use crate::task::TaskOutput;

/// `taskflow plugin run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The plugin: a `.wasm` component.
    pub file: PathBuf,
    /// The task's payload, as JSON.
    #[arg(long, short, default_value = "null", conflicts_with = "payload_file")]
    pub payload: String,
    /// Read the payload (JSON) from this file instead.
    #[arg(long)]
    pub payload_file: Option<PathBuf>,
    /// Timeout of the attempt, in milliseconds.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub timeout_ms: u64,
    /// Memory cap, in MiB.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub memory_mb: u64,
    /// Attempt number the plugin sees (a retry is attempt 2 and up).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub attempt: u32,
}

/// Compiles the plugin, runs one task on it and prints its result on
/// stdout; the plugin's log lines, output and progress go to stderr. Fails
/// (exit status 1) when the task fails, with its error kind and message.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let payload = payload_of(&args)?;
    let name = name_of(&args.file);
    let mb = |v: u64| usize::try_from(v).unwrap_or(usize::MAX).saturating_mul(1024 * 1024);
    let limits = Limits { timeout: Duration::from_millis(args.timeout_ms), memory_bytes: mb(args.memory_mb), ..Limits::default() };
    let config = RuntimeConfig { max_concurrent_instances: 4, max_memory_bytes: limits.memory_bytes, ..RuntimeConfig::default() };
    let runtime = Runtime::new(config).context("cannot set up the WebAssembly runtime")?;

    let compiling = (runtime.clone(), name.clone());
    let loaded = tokio::task::spawn_blocking(move || plugin::compile(&compiling.0, None, &CompileCounters::default(), &compiling.1, &bytes))
        .await
        .context("the compiler stopped")?
        .with_context(|| format!("{} is not a TaskFlow plugin", args.file.display()))?;

    let progress = Arc::new(AtomicU8::new(0));
    let reporter = tokio::spawn(report_progress(progress.clone()));
    let task = TaskInput { id: uuid::Uuid::new_v4().to_string(), plugin: name, priority: 5, attempt: args.attempt, payload };
    let outcome = runtime.run(&loaded, task, limits, Some(progress.clone())).await;
    reporter.abort();
    match outcome {
        Ok(success) => {
            eprintln!(
                "completed in {} ms (progress {}%, plugin {})",
                success.duration.as_millis(),
                progress.load(Ordering::Relaxed),
                &success.plugin_digest[..12.min(success.plugin_digest.len())]
            );
            let shown = match TaskOutput::from_bytes(&success.output) {
                TaskOutput::Json(value) => serde_json::to_string_pretty(&value)?,
                other => serde_json::to_string_pretty(&other)?,
            };
            println!("{shown}");
            Ok(())
        }
        Err(failure) => bail!("the task failed: {}: {}", failure.kind, failure.message),
    }
}

/// The payload bytes: valid JSON, as a host would hand them over.
fn payload_of(args: &RunArgs) -> anyhow::Result<Vec<u8>> {
    let (text, source) = match &args.payload_file {
        Some(path) => (std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?, path.display().to_string()),
        None => (args.payload.clone(), "--payload".to_owned()),
    };
    let value: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{source} is not valid JSON"))?;
    Ok(serde_json::to_vec(&value)?)
}

/// The plugin name a host would give the file (its stem), or `plugin` when
/// the stem is not a valid plugin name.
fn name_of(file: &Path) -> String {
    file.file_stem()
        .and_then(|stem| stem.to_str())
        .filter(|stem| plugin::validate_name(stem).is_ok())
        .unwrap_or("plugin")
        .to_owned()
}

/// Prints the plugin's progress to stderr whenever it changes.
async fn report_progress(progress: Arc<AtomicU8>) {
    let mut shown = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = progress.load(Ordering::Relaxed);
        if now != shown {
            eprintln!("progress: {now}%");
            shown = now;
        }
    }
}
