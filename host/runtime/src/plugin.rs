//! One loaded plugin version: validated, compiled (or taken from the on-disk
//! cache) and pre-linked, ready to be instantiated for each task.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::bindings::ProcessorPre;
use super::{Runtime, compiler, contract};
use taskflow_fs as fsutil;
pub use taskflow_model::plugin::{InvalidName, PluginInfo};

/// Largest plugin file accepted, in bytes. Components built from Python or
/// JavaScript run to tens of megabytes.
pub const MAX_PLUGIN_BYTES: usize = 100 * 1024 * 1024;

/// Why a plugin version was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The name does not match `[a-z0-9][a-z0-9_-]{0,63}`.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// No plugin of that name is loaded.
    #[error("no plugin named {0:?} is loaded")]
    NotFound(String),
    /// The bytes are not WebAssembly at all.
    #[error("not a WebAssembly file (no \\0asm header)")]
    NotWasm,
    /// The bytes are a core module, not a component.
    #[error(
        "this is a core WebAssembly module, not a component: build the plugin for wasm32-wasip2 (or run `wasm-tools component new`)"
    )]
    CoreModule,
    /// Larger than [`MAX_PLUGIN_BYTES`].
    #[error("plugin is {0} bytes; the limit is {MAX_PLUGIN_BYTES}")]
    TooLarge(usize),
    /// The component did not compile.
    #[error("the component does not compile: {0}")]
    Compile(String),
    /// The component was built for a version of the contract this host does not serve.
    #[error(
        "the plugin was built for taskflow:plugin@{plugin}, but this host serves taskflow:plugin@{host}: rebuild it against this host's wit/processor.wit (`taskflow plugin new` writes it)"
    )]
    IncompatibleContract {
        /// The version the plugin was built for.
        plugin: String,
        /// The versions this host serves, e.g. `0.2.0 and 0.1.0`.
        host: String,
    },
    /// The component does not implement the `taskflow:plugin/processor` world.
    #[error("the component does not implement the taskflow:plugin/processor world: {0}")]
    WrongWorld(String),
    /// Reading or writing a file failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl PluginError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// Checks a plugin name: `[a-z0-9][a-z0-9_-]{0,63}`.
pub fn validate_name(name: &str) -> Result<(), PluginError> {
    Ok(taskflow_model::plugin::validate_name(name)?)
}

/// An immutable, ready-to-run plugin version. Tasks hold an `Arc` of the
/// version they started with, so a hot swap never disturbs them.
pub struct LoadedPlugin {
    /// Plugin name (the file stem).
    pub name: String,
    /// Hex SHA-256 of the component file.
    pub digest: String,
    /// Size of the component file in bytes.
    pub size: usize,
    /// When this version was loaded.
    pub loaded_at: DateTime<Utc>,
    /// Whether the compiled code came from the on-disk cache.
    pub from_cache: bool,
    /// Milliseconds from its bytes to a runnable version: checks, compile
    /// or cache load, and linking.
    pub load_ms: u64,
    /// The version of the contract it was built for, e.g. `0.2.0`.
    pub contract: String,
    pub(super) pre: ProcessorPre,
    /// Instances between tasks, when the plugin opts into reuse.
    pub(super) idle: super::reuse::IdleInstances,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl LoadedPlugin {
    /// The pre-linked component, for benchmarks that measure the bare
    /// instantiate-and-call floor beneath [`Runtime::run`].
    #[doc(hidden)]
    pub fn instance_pre(&self) -> &ProcessorPre {
        &self.pre
    }

    /// Instances of this version idle between tasks (always 0 for a plugin
    /// that does not opt into reuse).
    pub fn idle_instances(&self) -> usize {
        self.idle.len()
    }
}

/// Hex SHA-256 of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checks the header: catches text, garbage and core modules with a message
/// that says what to do, before the compiler's less friendly one.
pub fn check_header(bytes: &[u8]) -> Result<(), PluginError> {
    if bytes.len() > MAX_PLUGIN_BYTES {
        return Err(PluginError::TooLarge(bytes.len()));
    }
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(PluginError::NotWasm);
    }
    // Core modules are version 1 with layer 0; components carry layer 1.
    if bytes[4..8] == [1, 0, 0, 0] {
        return Err(PluginError::CoreModule);
    }
    Ok(())
}

/// Compiled components on disk, keyed by the file's digest and the engine's
/// compatibility hash, so a restart (or a reload of a known version) skips
/// compilation, and a new wasmtime or engine setting never reads stale code.
#[derive(Debug)]
pub struct ArtifactCache {
    dir: PathBuf,
    engine_key: String,
}

impl ArtifactCache {
    /// A cache in `dir` for artifacts of `runtime`'s engine.
    pub fn new(dir: impl Into<PathBuf>, runtime: &Runtime) -> Result<Self, PluginError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| {
            PluginError::io(
                format!("cannot create the compile cache {}", dir.display()),
                e,
            )
        })?;
        let mut hasher = DefaultHasher::new();
        runtime
            .engine()
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        Ok(Self {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
        })
    }

    fn path_for(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_key))
    }

    fn load(&self, runtime: &Runtime, digest: &str) -> Option<Component> {
        let path = self.path_for(digest);
        if !path.exists() {
            return None;
        }
        match deserialize(runtime, &path) {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "discarding unusable compiled artifact");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    fn discard(&self, digest: &str) {
        let _ = std::fs::remove_file(self.path_for(digest));
    }

    fn store(&self, digest: &str, component: &Component) {
        let result = component
            .serialize()
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|bytes| fsutil::write_atomic(&self.path_for(digest), &bytes, false));
        if let Err(e) = result {
            // The cache is an optimisation: a failed write costs a recompile later.
            tracing::warn!(digest, error = %e, "cannot write the compiled artifact to the cache");
        }
    }
}

/// Compiles a component that is not in the cache: in a child process when
/// the runtime is set up for it, else here.
fn compile_component(
    runtime: &Runtime,
    cache: Option<&ArtifactCache>,
    counters: &CompileCounters,
    digest: &str,
    bytes: &[u8],
) -> Result<Component, PluginError> {
    if let (Some(exe), Some(cache)) = (&runtime.config().compiler, cache) {
        let mut config = runtime.config().clone();
        // The child's engine must match this one, fallback included, for
        // its artifact to load here.
        config.pooling = runtime.allocator() == super::AllocatorKind::Pooling;
        match compiler::compile_in_child(exe, &config, bytes, &cache.path_for(digest)) {
            Ok(()) => match cache.load(runtime, digest) {
                Some(component) => {
                    counters.compiled_in_child.fetch_add(1, Ordering::Relaxed);
                    return Ok(component);
                }
                None => tracing::warn!(
                    digest,
                    "the compiler process's artifact does not load; compiling here"
                ),
            },
            Err(compiler::ChildError::Unavailable(e)) => {
                tracing::warn!(exe = %exe.display(), error = %e, "cannot start a compiler process; compiling here");
            }
            Err(compiler::ChildError::Failed(message)) => {
                return Err(PluginError::Compile(message));
            }
        }
    }
    Component::new(runtime.engine(), bytes).map_err(|e| PluginError::Compile(format!("{e:#}")))
}

#[allow(unsafe_code)]
fn deserialize(runtime: &Runtime, path: &Path) -> wasmtime::Result<Component> {
    // Read into memory rather than `deserialize_file`, which maps the file:
    // a mapped artifact truncated or rewritten in place under a running host
    // would take the process down with SIGBUS.
    let bytes = std::fs::read(path)?;
    // SAFETY: the bytes are native code this host compiled and wrote into its
    // own cache directory (operators must keep that directory private, as
    // documented). Its name carries the engine's compatibility hash, and
    // wasmtime checks the artifact's header against the engine again here.
    unsafe { Component::deserialize(runtime.engine(), &bytes) }
}

/// Counters of the work [`compile`] did, for `/stats` and tests.
#[derive(Debug, Default)]
pub struct CompileCounters {
    /// Components compiled by cranelift.
    pub compiled: AtomicU64,
    /// Of those, components compiled in a child process.
    pub compiled_in_child: AtomicU64,
    /// Components loaded from the on-disk cache.
    pub cache_hits: AtomicU64,
}

/// Validates, compiles (or loads from `cache`) and pre-links one plugin
/// version. CPU-heavy: call it off the async executor.
pub fn compile(
    runtime: &Runtime,
    cache: Option<&ArtifactCache>,
    counters: &CompileCounters,
    name: &str,
    bytes: &[u8],
) -> Result<LoadedPlugin, PluginError> {
    let started = std::time::Instant::now();
    validate_name(name)?;
    check_header(bytes)?;
    let digest = digest_of(bytes);

    let cached = cache.and_then(|cache| cache.load(runtime, &digest));
    let from_cache = cached.is_some();
    let component = match cached {
        Some(component) => {
            counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            component
        }
        None => {
            let component = compile_component(runtime, cache, counters, &digest, bytes)?;
            counters.compiled.fetch_add(1, Ordering::Relaxed);
            component
        }
    };

    // A component built for a version of the contract this host does not
    // serve is named as such, before the linker's less helpful "import not
    // found". One that imports nothing of the contract is tried as current.
    let built_for = contract::built_for(&component, runtime.engine())
        .unwrap_or_else(|| contract::version().to_owned());
    let linked = match contract::serving(&built_for) {
        None => Err(PluginError::IncompatibleContract {
            plugin: built_for.clone(),
            host: contract::served(),
        }),
        Some(served) => runtime
            .linker()
            .instantiate_pre(&component)
            .and_then(|pre| ProcessorPre::new(pre, served))
            .map_err(|e| PluginError::WrongWorld(format!("{e:#}"))),
    };
    let pre = match (linked, cache) {
        (Ok(pre), _) => pre,
        (Err(e), Some(cache)) => {
            // Only a version that passed every check is worth keeping.
            cache.discard(&digest);
            return Err(e);
        }
        (Err(e), None) => return Err(e),
    };
    if let (Some(cache), false) = (cache, from_cache) {
        cache.store(&digest, &component);
    }
    Ok(LoadedPlugin {
        name: name.to_owned(),
        digest,
        size: bytes.len(),
        loaded_at: Utc::now(),
        from_cache,
        load_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        contract: built_for,
        pre,
        idle: runtime.idle_instances(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_check_names_the_problem() {
        assert!(matches!(
            check_header(b"hello world"),
            Err(PluginError::NotWasm)
        ));
        assert!(matches!(
            check_header(b"\0asm\x01\0\0\0"),
            Err(PluginError::CoreModule)
        ));
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }
}
