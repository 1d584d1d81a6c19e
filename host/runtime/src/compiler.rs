//! Compiling components in a child process.
//!
//! Cranelift's memory use while compiling a large component (an 18 MB Python
//! plugin takes hundreds of megabytes, spread over its worker threads) would
//! stay with the host for good: the allocator keeps what it once had. A
//! child process hands all of it back when it exits, and a compiler that
//! crashes on a hostile component takes down only itself. The child writes
//! the compiled artifact into the compile cache, from which the host loads
//! it as it would after a restart.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wasmtime::component::Component;

use super::RuntimeConfig;
use super::engine::build_engine;
use taskflow_fs as fsutil;

/// How often a running compiler is checked on.
const POLL: Duration = Duration::from_millis(10);

/// The hidden `taskflow` subcommand the child runs.
pub const SUBCOMMAND: &str = "compile-plugin";

/// Why the child did not produce an artifact.
#[derive(Debug)]
pub enum ChildError {
    /// The child could not be started: compile in this process instead.
    Unavailable(std::io::Error),
    /// The component does not compile, or the compiler died on it.
    Failed(String),
}

/// Host side: compiles `bytes` in `exe compile-plugin` for an engine built
/// from `config`, and waits until the artifact is at `output`, for at most
/// `config.compile_timeout`: a child still compiling then is killed, so a
/// hung compiler cannot hold up every later plugin change.
pub fn compile_in_child(
    exe: &Path,
    config: &RuntimeConfig,
    bytes: &[u8],
    output: &Path,
) -> Result<(), ChildError> {
    let engine = serde_json::to_string(config)
        .map_err(|e| ChildError::Unavailable(std::io::Error::other(e)))?;
    let mut child = Command::new(exe)
        .arg(SUBCOMMAND)
        .arg("--engine")
        .arg(engine)
        .arg("--output")
        .arg(output)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG")
        .spawn()
        .map_err(ChildError::Unavailable)?;
    // Both pipes are served by threads of their own, so that a child that
    // neither reads nor exits cannot block this one past the deadline. A
    // child that dies early closes the pipe; its exit status says why.
    if let Some(mut stdin) = child.stdin.take() {
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&bytes);
        });
    }
    let (said_tx, said_rx) = std::sync::mpsc::channel();
    if let Some(mut stderr) = child.stderr.take() {
        std::thread::spawn(move || {
            let mut said = String::new();
            let _ = stderr.read_to_string(&mut said);
            let _ = said_tx.send(said);
        });
    }
    let deadline = Instant::now() + config.compile_timeout;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(ChildError::Unavailable)? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ChildError::Failed(format!(
                "the compiler did not finish within {} s (TASKFLOW_COMPILE_TIMEOUT_SECS) and was stopped",
                config.compile_timeout.as_secs()
            )));
        }
        std::thread::sleep(POLL);
    };
    if status.success() {
        return Ok(());
    }
    let said = said_rx
        .recv_timeout(POLL.saturating_mul(50))
        .unwrap_or_default();
    let said = said.trim().trim_start_matches("error: ");
    Err(ChildError::Failed(if said.is_empty() {
        format!("the compiler process ended with {status}")
    } else {
        said.to_owned()
    }))
}

/// Child side: reads a component from stdin, compiles it for an engine built
/// from `engine` (the host's [`RuntimeConfig`] as JSON) and writes the
/// artifact to `output` atomically.
pub fn run_child(engine: &str, output: &Path) -> Result<(), String> {
    let config: RuntimeConfig =
        serde_json::from_str(engine).map_err(|e| format!("invalid engine settings: {e}"))?;
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the component from stdin: {e}"))?;
    let (engine, _) = build_engine(&config).map_err(|e| e.to_string())?;
    let component = Component::new(&engine, &bytes).map_err(|e| format!("{e:#}"))?;
    let artifact = component
        .serialize()
        .map_err(|e| format!("cannot serialize the compiled component: {e:#}"))?;
    fsutil::write_atomic(output, &artifact, false)
        .map_err(|e| format!("cannot write {}: {e}", output.display()))
}
