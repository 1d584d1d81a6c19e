//! `taskflow plugin run --watch`: the author's inner loop. It runs the task,
//! waits for the plugin to change, and runs it again, until interrupted.
//!
//! When the `.wasm` is the one `taskflow plugin build` writes into a project
//! (`<dir>/<name>.wasm` beside a `Cargo.toml`, `package.json` or `app.py`),
//! a change to the project's sources (code, manifests, WIT, JSON) rebuilds
//! it first, and a failed build waits for the next change. Any other `.wasm`
//! is run again whenever the file is replaced, e.g. by a build tool of the
//! author's own.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use notify::event::{EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};

use super::{RunArgs, build_dir, build_output, payload_of, project_language, run_once};

/// How long a burst of file events (an editor's save, a copy) may last
/// before the plugin is rebuilt or run again.
const SETTLE: Duration = Duration::from_millis(300);

/// Kinds of file a change to which rebuilds a project: its code, manifests,
/// WIT and JSON (the sample payload too). Builds write other kinds (cargo's
/// temporary `target…` directory, lock files, the `.wasm` itself).
const SOURCES: [&str; 8] = ["rs", "toml", "py", "js", "mjs", "cjs", "json", "wit"];

/// Directories and files in a project that tools write, whatever their kind.
const NOT_SOURCES: [&str; 5] = [
    "target",
    "node_modules",
    "__pycache__",
    ".git",
    "package-lock.json",
];

/// What is being watched.
enum Watched {
    /// The project in this directory, rebuilt on change.
    Project(PathBuf),
    /// This file, run again when it changes.
    File(PathBuf),
}

impl Watched {
    fn of(file: &Path) -> Self {
        match file.parent() {
            Some(dir) if project_language(dir).is_some() && build_output(dir) == file => {
                Watched::Project(dir.to_path_buf())
            }
            _ => Watched::File(file.to_path_buf()),
        }
    }

    /// Whether an event on `path` is a change to what is watched.
    fn changed_by(&self, path: &Path) -> bool {
        match self {
            Watched::Project(dir) => {
                let inside = path.strip_prefix(dir).unwrap_or(path);
                let tools = inside.components().any(|part| match part {
                    Component::Normal(name) => name
                        .to_str()
                        .is_some_and(|name| NOT_SOURCES.contains(&name)),
                    _ => false,
                });
                let source = path
                    .extension()
                    .and_then(|ext| ext.to_str())
                    .is_some_and(|ext| SOURCES.contains(&ext));
                source && !tools
            }
            Watched::File(file) => path.file_name() == file.file_name(),
        }
    }
}

/// Runs the task on `args.file` now and after every change, until Ctrl-C.
pub async fn run(args: &RunArgs) -> anyhow::Result<()> {
    // A payload that is not there or not JSON is the author's to fix before
    // anything is watched (each run reads it again, so edits to it count).
    payload_of(args)?;
    let file = std::path::absolute(&args.file)
        .with_context(|| format!("cannot resolve {}", args.file.display()))?;
    let watched = Watched::of(&file);
    let (changes, mut changed) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Reads (and the access times they touch) are no change; a build
        // reading the sources must not start another.
        let edits = matches!(
            event.kind,
            EventKind::Create(_)
                | EventKind::Remove(_)
                | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Name(_) | ModifyKind::Any)
        );
        if edits {
            for path in event.paths {
                let _ = changes.send(path);
            }
        }
    })
    .context("cannot watch files on this system")?;
    let (root, mode) = match &watched {
        Watched::Project(dir) => (dir.clone(), RecursiveMode::Recursive),
        // The directory, not the file: a build tool often replaces the file.
        Watched::File(file) => (
            file.parent().map(Path::to_path_buf).unwrap_or_default(),
            RecursiveMode::NonRecursive,
        ),
    };
    watcher
        .watch(&root, mode)
        .with_context(|| format!("cannot watch {}", root.display()))?;

    // A project's component is built first if it is not there yet.
    let mut ready = match &watched {
        Watched::Project(dir) if !file.exists() => rebuild(dir),
        _ => true,
    };
    loop {
        if ready && let Err(e) = run_once(args, &file).await {
            eprintln!("error: {e:#}");
        }
        eprintln!(
            "watching {} for changes (Ctrl-C to stop)",
            match &watched {
                Watched::Project(dir) => dir.display(),
                Watched::File(file) => file.display(),
            }
        );
        let path = loop {
            let Some(path) = changed.recv().await else {
                return Ok(()); // the watcher is gone
            };
            if watched.changed_by(&path) {
                break path;
            }
        };
        tokio::time::sleep(SETTLE).await;
        while changed.try_recv().is_ok() {}
        eprintln!("{} changed: running again", path.display());
        ready = match &watched {
            Watched::Project(dir) => rebuild(dir),
            Watched::File(_) => true,
        };
    }
}

/// Builds the project; says why not when it fails.
fn rebuild(dir: &Path) -> bool {
    match tokio::task::block_in_place(|| build_dir(dir)) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("error: the build failed: {e:#}");
            false
        }
    }
}
