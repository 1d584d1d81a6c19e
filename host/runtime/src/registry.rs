//! The plugin registry: plugin name → the loaded version serving it, fed from
//! a directory that is watched for changes (hot reload) and from uploads.
//!
//! Every swap is atomic: a new version is fully compiled and checked before
//! it replaces the old one, a broken version is rejected and the old one keeps
//! serving, and tasks keep the version they started with.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{Mutex, mpsc};

use super::Runtime;
use super::plugin::{self, ArtifactCache, CompileCounters, LoadedPlugin, PluginError, PluginInfo};
use taskflow_fs as fsutil;
pub use taskflow_model::plugin::{PluginLimits, RegistryStats};

/// Quiet time after the last file event before a changed file is loaded, so
/// a file still being copied is read once, complete.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// A loaded version together with the limits it was loaded with.
#[derive(Debug, Clone)]
pub struct PluginEntry {
    /// The compiled version.
    pub plugin: Arc<LoadedPlugin>,
    /// Its sidecar limits.
    pub limits: PluginLimits,
}

impl PluginEntry {
    /// The public description of this version and its limits.
    pub fn info(&self) -> PluginInfo {
        let plugin = &self.plugin;
        PluginInfo {
            name: plugin.name.clone(),
            digest: plugin.digest.clone(),
            size: plugin.size,
            loaded_at: plugin.loaded_at,
            load_ms: plugin.load_ms,
            contract: plugin.contract.clone(),
            limits: self.limits,
        }
    }
}

/// Name → loaded version, with hot reload from a directory.
pub struct PluginRegistry {
    compiler: Arc<Compiler>,
    dir: PathBuf,
    rejected: AtomicU64,
    plugins: RwLock<HashMap<String, PluginEntry>>,
    /// Serialises loads so two changes to one plugin cannot swap out of order.
    loading: Mutex<()>,
}

impl std::fmt::Debug for PluginRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRegistry")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// A version compiled and checked, not serving yet (see
/// [`PluginRegistry::prepare`]).
pub struct Prepared {
    loaded: LoadedPlugin,
    limits: PluginLimits,
    bytes: Vec<u8>,
}

impl Prepared {
    /// The version's digest (hex SHA-256 of its bytes).
    pub fn digest(&self) -> &str {
        &self.loaded.digest
    }

    /// Its bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl PluginRegistry {
    /// Opens the plugin directory (creating it if needed) and loads every
    /// `*.wasm` in it. A file that fails to load is logged and skipped: one
    /// broken plugin does not keep the others from serving.
    pub async fn open(
        runtime: Runtime,
        dir: impl Into<PathBuf>,
        cache_dir: Option<PathBuf>,
    ) -> Result<Arc<Self>, PluginError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| {
            PluginError::io(
                format!("cannot create the plugin directory {}", dir.display()),
                e,
            )
        })?;
        let cache = cache_dir
            .map(|d| ArtifactCache::new(d, &runtime))
            .transpose()?;
        let registry = Arc::new(Self {
            compiler: Arc::new(Compiler {
                runtime,
                cache,
                counters: CompileCounters::default(),
            }),
            dir,
            rejected: AtomicU64::new(0),
            plugins: RwLock::new(HashMap::new()),
            loading: Mutex::new(()),
        });
        let entries = std::fs::read_dir(&registry.dir).map_err(|e| {
            PluginError::io(
                format!(
                    "cannot read the plugin directory {}",
                    registry.dir.display()
                ),
                e,
            )
        })?;
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            if plugin_name_of(&path).is_some() {
                // Errors are logged and counted inside.
                let _ = registry.sync_path(&path).await;
            }
        }
        // The compiler threads are idle now; what they freed can go back.
        tokio::task::spawn_blocking(crate::heap::release_freed)
            .await
            .ok();
        Ok(registry)
    }

    /// The plugin directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The runtime the plugins run on.
    pub fn runtime(&self) -> &Runtime {
        &self.compiler.runtime
    }

    /// The version currently serving `name`.
    pub fn get(&self, name: &str) -> Result<PluginEntry, PluginError> {
        self.read()
            .get(name)
            .cloned()
            .ok_or_else(|| PluginError::NotFound(name.to_owned()))
    }

    /// Whether a plugin called `name` is loaded.
    pub fn contains(&self, name: &str) -> bool {
        self.read().contains_key(name)
    }

    /// Every loaded plugin, by name.
    pub fn list(&self) -> Vec<PluginInfo> {
        let mut list: Vec<PluginInfo> = self.read().values().map(PluginEntry::info).collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// Counters since start.
    pub fn stats(&self) -> RegistryStats {
        RegistryStats {
            loaded: self.read().len(),
            compiled: self.compiler.counters.compiled.load(Ordering::Relaxed),
            compiled_in_child: self
                .compiler
                .counters
                .compiled_in_child
                .load(Ordering::Relaxed),
            cache_hits: self.compiler.counters.cache_hits.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }

    /// Validates and loads `bytes` as plugin `name`, then writes it into the
    /// plugin directory so it survives a restart. Nothing is written and the
    /// old version keeps serving if the new one is rejected.
    pub async fn install(&self, name: &str, bytes: Vec<u8>) -> Result<PluginEntry, PluginError> {
        let prepared = self.prepare(name, bytes).await?;
        self.commit(prepared).await
    }

    /// Validates and compiles `bytes` as plugin `name` without serving it
    /// yet: [`commit`](Self::commit) swaps it in. A rejected version changes
    /// nothing.
    pub async fn prepare(&self, name: &str, bytes: Vec<u8>) -> Result<Prepared, PluginError> {
        plugin::validate_name(name)?;
        let _guard = self.loading.lock().await;
        let limits = self.read_limits(name)?;
        let loaded = self
            .compile(name.to_owned(), bytes.clone())
            .await
            .inspect_err(|_| self.reject())?;
        Ok(Prepared {
            loaded,
            limits,
            bytes,
        })
    }

    /// Writes a prepared version into the plugin directory and serves it.
    pub async fn commit(&self, prepared: Prepared) -> Result<PluginEntry, PluginError> {
        let Prepared {
            loaded,
            limits,
            bytes,
        } = prepared;
        let _guard = self.loading.lock().await;
        let name = loaded.name.clone();
        let path = self.dir.join(format!("{name}.wasm"));
        let write =
            tokio::task::spawn_blocking(move || fsutil::write_atomic(&path, &bytes, true)).await;
        match write {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(PluginError::io(format!("cannot write plugin {name}"), e)),
            Err(e) => {
                return Err(PluginError::io(
                    format!("cannot write plugin {name}"),
                    std::io::Error::other(e),
                ));
            }
        }
        Ok(self.swap(loaded, limits))
    }

    /// Unloads `name` and deletes its file.
    pub async fn remove(&self, name: &str) -> Result<(), PluginError> {
        plugin::validate_name(name)?;
        let _guard = self.loading.lock().await;
        let path = self.dir.join(format!("{name}.wasm"));
        let file_removed = match std::fs::remove_file(&path) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(PluginError::io(format!("cannot delete plugin {name}"), e)),
        };
        let unloaded = self.write().remove(name).is_some();
        match unloaded || file_removed {
            true => {
                tracing::info!(plugin = name, "plugin removed");
                Ok(())
            }
            false => Err(PluginError::NotFound(name.to_owned())),
        }
    }

    /// Brings the registry in line with one file of the plugin directory:
    /// loads it if new or changed, unloads it if gone. Returns the version
    /// now serving, if any.
    pub async fn sync_path(&self, path: &Path) -> Result<Option<PluginEntry>, PluginError> {
        let Some(name) = plugin_name_of(path) else {
            return Ok(None);
        };
        let _guard = self.loading.lock().await;
        let wasm = self.dir.join(format!("{name}.wasm"));
        let bytes = match std::fs::read(&wasm) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.write().remove(&name).is_some() {
                    tracing::info!(plugin = %name, "plugin file deleted; plugin unloaded");
                }
                return Ok(None);
            }
            Err(e) => {
                return Err(self.rejected_with(
                    &name,
                    PluginError::io(format!("cannot read {}", wasm.display()), e),
                ));
            }
        };
        let limits = self
            .read_limits(&name)
            .map_err(|e| self.rejected_with(&name, e))?;
        // Bound first: a guard in the `if let` would live through the body,
        // and the body takes the write lock.
        let current = self.read().get(&name).cloned();
        if let Some(current) = current
            && current.plugin.digest == plugin::digest_of(&bytes)
        {
            if current.limits == limits {
                return Ok(Some(current));
            }
            let updated = PluginEntry {
                plugin: current.plugin,
                limits,
            };
            self.write().insert(name.clone(), updated.clone());
            tracing::info!(plugin = %name, ?limits, "plugin limits updated");
            return Ok(Some(updated));
        }
        let loaded = self
            .compile(name.clone(), bytes)
            .await
            .map_err(|e| self.rejected_with(&name, e))?;
        Ok(Some(self.swap(loaded, limits)))
    }

    /// Watches the plugin directory and applies every change until the
    /// returned guard is dropped.
    pub fn watch(self: &Arc<Self>) -> Result<WatchGuard, PluginError> {
        let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
                Ok(event) => {
                    for path in event.paths {
                        let _ = tx.send(path);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "plugin directory watch error"),
            })
            .map_err(|e| {
                PluginError::io(
                    "cannot watch the plugin directory",
                    std::io::Error::other(e),
                )
            })?;
        watcher
            .watch(&self.dir, RecursiveMode::NonRecursive)
            .map_err(|e| {
                PluginError::io(
                    format!("cannot watch {}", self.dir.display()),
                    std::io::Error::other(e),
                )
            })?;

        let registry = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut changed = HashSet::from([first]);
                while let Ok(Some(path)) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    changed.insert(path);
                }
                let Some(registry) = registry.upgrade() else {
                    break;
                };
                for path in changed {
                    // Errors are logged and counted inside.
                    let _ = registry.sync_path(&path).await;
                }
            }
        });
        tracing::info!(dir = %self.dir.display(), "watching the plugin directory for changes");
        Ok(WatchGuard { _watcher: watcher })
    }

    async fn compile(&self, name: String, bytes: Vec<u8>) -> Result<LoadedPlugin, PluginError> {
        let compiler = self.compiler.clone();
        // Compilation is CPU-bound and can take a second: keep it off the
        // executor threads that serve requests and run tasks.
        tokio::task::spawn_blocking(move || {
            let compiled = plugin::compile(
                &compiler.runtime,
                compiler.cache.as_ref(),
                &compiler.counters,
                &name,
                &bytes,
            );
            crate::heap::release_freed();
            compiled
        })
        .await
        .map_err(|e| PluginError::Compile(format!("compilation was aborted: {e}")))?
    }

    fn swap(&self, loaded: LoadedPlugin, limits: PluginLimits) -> PluginEntry {
        let entry = PluginEntry {
            plugin: Arc::new(loaded),
            limits,
        };
        let loaded = &entry.plugin;
        let previous = self
            .write()
            .insert(loaded.name.clone(), entry.clone())
            .map(|previous| previous.plugin.digest.clone());
        tracing::info!(
            plugin = %loaded.name,
            digest = %loaded.digest,
            previous = previous.as_deref().unwrap_or("none"),
            from_cache = loaded.from_cache,
            "plugin loaded"
        );
        entry
    }

    fn read_limits(&self, name: &str) -> Result<PluginLimits, PluginError> {
        let path = self.dir.join(format!("{name}.limits.json"));
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                PluginError::io(
                    format!(
                        "invalid {}: expected {{\"timeout_ms\": N, \"memory_mb\": N, \"reuse_tasks\": N}}",
                        path.display()
                    ),
                    std::io::Error::other(e),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PluginLimits::default()),
            Err(e) => Err(PluginError::io(
                format!("cannot read {}", path.display()),
                e,
            )),
        }
    }

    fn reject(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    fn rejected_with(&self, name: &str, error: PluginError) -> PluginError {
        self.reject();
        let serving = self
            .read()
            .get(name)
            .map(|entry| entry.plugin.digest.clone());
        tracing::error!(plugin = name, error = %error, still_serving = serving.as_deref().unwrap_or("none"), "plugin version rejected");
        error
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, PluginEntry>> {
        self.plugins
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, PluginEntry>> {
        self.plugins
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What compiling needs, shared with the blocking threads that do it.
struct Compiler {
    runtime: Runtime,
    cache: Option<ArtifactCache>,
    counters: CompileCounters,
}

/// Keeps the directory watch alive; dropping it stops hot reload.
pub struct WatchGuard {
    _watcher: notify::RecommendedWatcher,
}

impl std::fmt::Debug for WatchGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WatchGuard")
    }
}

/// The plugin a file of the plugin directory belongs to: `name.wasm` and
/// `name.limits.json` both belong to `name`. Hidden and temporary files
/// (our own atomic writes among them) belong to none.
fn plugin_name_of(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    if file.starts_with('.') {
        return None;
    }
    let stem = file
        .strip_suffix(".wasm")
        .or_else(|| file.strip_suffix(".limits.json"))?;
    plugin::validate_name(stem).ok()?;
    Some(stem.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_map_to_plugin_names() {
        assert_eq!(
            plugin_name_of(Path::new("/p/echo.wasm")).as_deref(),
            Some("echo")
        );
        assert_eq!(
            plugin_name_of(Path::new("/p/echo.limits.json")).as_deref(),
            Some("echo")
        );
        assert_eq!(plugin_name_of(Path::new("/p/.echo.wasm.tmp123")), None);
        assert_eq!(plugin_name_of(Path::new("/p/Echo.wasm")), None);
        assert_eq!(plugin_name_of(Path::new("/p/readme.txt")), None);
    }
}
