//! The plugin author's workflow, with no server: `taskflow plugin new`
//! writes a project for the current WIT contract, `build` runs the right
//! toolchain, and `run` runs one task through the same runtime, sandbox and
//! limits as a host (again on every change with `--watch`, in `watch.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use taskflow_fs::out;
use taskflow_model::task::TaskOutput;
use taskflow_runtime::contract;
use taskflow_runtime::plugin::{self, CompileCounters};
use taskflow_runtime::{Limits, Live, Runtime, RuntimeConfig, TaskInput};

mod watch;

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
    /// Keep going: run the task again whenever the plugin changes. When the
    /// `.wasm` is the one `taskflow plugin build` writes into a project, a
    /// change to the project's sources rebuilds it first.
    #[arg(long)]
    pub watch: bool,
}

/// Compiles the plugin, runs one task on it and prints its result on
/// stdout; the plugin's log lines, output and progress go to stderr. Fails
/// (exit status 1) when the task fails, with its error kind and message.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.watch {
        watch::run(&args).await
    } else {
        run_once(&args, &args.file).await
    }
}

/// Runs one task on the plugin in `file`.
async fn run_once(args: &RunArgs, file: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let payload = payload_of(args)?;
    let name = name_of(file);
    let mb = |v: u64| {
        usize::try_from(v)
            .unwrap_or(usize::MAX)
            .saturating_mul(1024 * 1024)
    };
    let limits = Limits {
        timeout: Duration::from_millis(args.timeout_ms),
        memory_bytes: mb(args.memory_mb),
        ..Limits::default()
    };
    let config = RuntimeConfig {
        max_concurrent_instances: 4,
        max_memory_bytes: limits.memory_bytes,
        ..RuntimeConfig::default()
    };
    let runtime = Runtime::new(config).context("cannot set up the WebAssembly runtime")?;

    let compiling = (runtime.clone(), name.clone());
    let loaded = tokio::task::spawn_blocking(move || {
        plugin::compile(
            &compiling.0,
            None,
            &CompileCounters::default(),
            &compiling.1,
            &bytes,
        )
    })
    .await
    .context("the compiler stopped")?
    .with_context(|| format!("{} is not a TaskFlow plugin", file.display()))?;

    let live = Arc::new(Live::default());
    let reporter = tokio::spawn(report_progress(live.clone()));
    let task = TaskInput {
        id: uuid::Uuid::new_v4().to_string(),
        plugin: name,
        priority: 5,
        attempt: args.attempt,
        payload,
    };
    let outcome = runtime.run(&loaded, task, limits, Some(live.clone())).await;
    reporter.abort();
    match outcome {
        Ok(success) => {
            eprintln!(
                "completed in {} ms (progress {}%, plugin {}, built for taskflow:plugin@{})",
                success.duration.as_millis(),
                live.progress(),
                &success.plugin_digest[..12.min(success.plugin_digest.len())],
                loaded.contract
            );
            let shown = match TaskOutput::from_bytes(&success.output) {
                TaskOutput::Json(value) => serde_json::to_string_pretty(&value)?,
                other => serde_json::to_string_pretty(&other)?,
            };
            out!("{shown}");
            Ok(())
        }
        Err(failure) => bail!("the task failed: {}: {}", failure.kind, failure.message),
    }
}

/// The payload bytes: valid JSON, as a host would hand them over.
fn payload_of(args: &RunArgs) -> anyhow::Result<Vec<u8>> {
    let (text, source) = match &args.payload_file {
        Some(path) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (args.payload.clone(), "--payload".to_owned()),
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{source} is not valid JSON"))?;
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
async fn report_progress(live: Arc<Live>) {
    let mut shown = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = live.progress();
        if now != shown {
            eprintln!("progress: {now}%");
            shown = now;
        }
    }
}

/// The guest SDK, copied into a new Rust plugin so it builds anywhere.
const SDK_LIB: &str = include_str!("../../../sdk/src/lib.rs");

/// Languages a plugin can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Language {
    /// Rust, with the `taskflow-sdk` crate.
    Rust,
    /// Python, built with componentize-py.
    Python,
    /// JavaScript, built with componentize-js.
    Js,
}

/// `taskflow plugin new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The plugin's name: 1 to 64 of a-z, 0-9, '-', '_' (also its directory).
    pub name: String,
    /// The language to write it in.
    #[arg(long, value_enum)]
    pub lang: Language,
    /// Where to create it [default: ./NAME].
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// `taskflow plugin build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The plugin's directory.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
}

/// Writes a ready-to-build plugin project for the current WIT contract.
pub fn new(args: &NewArgs) -> anyhow::Result<()> {
    plugin::validate_name(&args.name)?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "{} exists and is not empty: choose another name or --dir",
            dir.display()
        );
    }
    let fill = |template: &str| {
        template
            .replace("{{name}}", &args.name)
            .replace("{{Type}}", &type_name(&args.name))
            .replace("{{version}}", env!("CARGO_PKG_VERSION"))
            .replace("{{wit_version}}", contract::version())
    };
    let build = format!("taskflow plugin build {}", dir.display());
    let run = format!(
        "taskflow plugin run {}/{}.wasm --payload-file {}/payload.json",
        dir.display(),
        args.name,
        dir.display()
    );
    let mut files: Vec<(&str, String)> = vec![
        ("wit/processor.wit", contract::WIT_SOURCE.to_owned()),
        ("payload.json", "{\"name\": \"Ada\"}\n".to_owned()),
        (
            "README.md",
            format!(
                "# {}\n\nA TaskFlow plugin. Build it with `{build}`,\nthen run it on the sample payload with `{run}`.\n",
                args.name
            ),
        ),
    ];
    match args.lang {
        Language::Rust => files.extend([
            (
                "Cargo.toml",
                fill(include_str!("../templates/rust/Cargo.toml")),
            ),
            ("src/lib.rs", fill(include_str!("../templates/rust/lib.rs"))),
            (
                "taskflow-sdk/Cargo.toml",
                fill(include_str!("../templates/rust/sdk.toml")),
            ),
            ("taskflow-sdk/src/lib.rs", SDK_LIB.to_owned()),
            (".gitignore", "/target\n*.wasm\n".to_owned()),
        ]),
        Language::Python => files.extend([
            ("app.py", fill(include_str!("../templates/python/app.py"))),
            (".gitignore", "__pycache__/\n*.wasm\n".to_owned()),
        ]),
        Language::Js => files.extend([
            ("app.js", fill(include_str!("../templates/js/app.js"))),
            (
                "package.json",
                fill(include_str!("../templates/js/package.json")),
            ),
            ("build.mjs", fill(include_str!("../templates/js/build.mjs"))),
            (".gitignore", "node_modules/\n*.wasm\n".to_owned()),
        ]),
    }
    for (path, content) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, content)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let lang = clap::ValueEnum::to_possible_value(&args.lang)
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default();
    out!(
        "created {} ({lang}) in {}\nnext: {build}\nthen: {run}",
        args.name,
        dir.display()
    );
    Ok(())
}

/// The language of the plugin project in `dir`, if it holds one.
fn project_language(dir: &Path) -> Option<Language> {
    if dir.join("Cargo.toml").is_file() {
        Some(Language::Rust)
    } else if dir.join("package.json").is_file() {
        Some(Language::Js)
    } else if dir.join("app.py").is_file() {
        Some(Language::Python)
    } else {
        None
    }
}

/// Where `taskflow plugin build` puts the component of the project in
/// `dir`: `<dir>/<name>.wasm`, named after the directory.
fn build_output(dir: &Path) -> PathBuf {
    let name = std::fs::canonicalize(dir)
        .ok()
        .and_then(|d| d.file_name().and_then(|n| n.to_str()).map(str::to_owned))
        .filter(|n| plugin::validate_name(n).is_ok())
        .unwrap_or_else(|| "plugin".to_owned());
    dir.join(format!("{name}.wasm"))
}

/// Builds the plugin in `dir` with its language's toolchain, installing the
/// toolchain's parts that are missing, and prints where the `.wasm` is.
pub fn build(args: &BuildArgs) -> anyhow::Result<()> {
    build_dir(&args.dir).map(|_| ())
}

/// Builds the project in `dir`; returns the path of its `.wasm`.
fn build_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let Some(language) = project_language(dir) else {
        bail!(
            "{} holds no plugin project (Cargo.toml, package.json or app.py): create one with `taskflow plugin new`",
            dir.display()
        );
    };
    let output = build_output(dir);
    match language {
        Language::Rust => build_rust(dir, &output)?,
        Language::Python => {
            let componentize = python_tool("componentize-py", "componentize-py==0.25.1")?;
            let out = output.file_name().map(PathBuf::from).unwrap_or_default();
            run_tool(
                Command::new(componentize)
                    .current_dir(dir)
                    .args([
                        "-d",
                        "wit",
                        "-w",
                        "processor",
                        "componentize",
                        "-p",
                        ".",
                        "app",
                        "-o",
                    ])
                    .arg(&out),
            )?;
        }
        Language::Js => {
            need(
                "node",
                "Node.js is needed to build a JavaScript plugin (Debian: apt-get install nodejs npm)",
            )?;
            if !dir
                .join("node_modules/@bytecodealliance/componentize-js")
                .is_dir()
            {
                need(
                    "npm",
                    "npm is needed to install componentize-js (Debian: apt-get install npm)",
                )?;
                run_tool(Command::new("npm").current_dir(dir).args([
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                ]))?;
            }
            let out = output.file_name().map(PathBuf::from).unwrap_or_default();
            run_tool(
                Command::new("node")
                    .current_dir(dir)
                    .arg("build.mjs")
                    .arg(&out),
            )?;
        }
    }
    let size = std::fs::metadata(&output)
        .with_context(|| format!("the build left no {}", output.display()))?
        .len();
    out!("built {} ({} bytes)", output.display(), size);
    Ok(output)
}

fn build_rust(dir: &Path, output: &Path) -> anyhow::Result<()> {
    need(
        "cargo",
        "Rust (cargo, with rustup) is needed to build a Rust plugin",
    )?;
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    if installed.as_ref().is_ok_and(|o| {
        !String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| l == "wasm32-wasip2")
    }) {
        run_tool(Command::new("rustup").args(["target", "add", "wasm32-wasip2"]))?;
    }
    let built = Command::new("cargo")
        .current_dir(dir)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run cargo")?;
    if !built.status.success() {
        bail!("cargo build failed ({})", built.status);
    }
    // The artifact's path, wherever the target directory is.
    let artifact = String::from_utf8_lossy(&built.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .flat_map(|message| message["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|file| file.as_str().map(PathBuf::from))
        .rfind(|file| file.extension().is_some_and(|e| e == "wasm"))
        .context("cargo built no .wasm: is the crate a cdylib?")?;
    std::fs::copy(&artifact, output)
        .with_context(|| format!("cannot copy {} to {}", artifact.display(), output.display()))?;
    Ok(())
}

/// A console script of a Python package, installed with pip when missing.
fn python_tool(tool: &str, package: &str) -> anyhow::Result<PathBuf> {
    need(
        "python3",
        "Python 3 is needed to build a Python plugin (Debian: apt-get install python3 python3-pip)",
    )?;
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .unwrap_or_default();
    let find = || {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .chain([scripts.clone()])
            .map(|dir| dir.join(tool))
            .find(|path| path.is_file())
    };
    if let Some(found) = find() {
        return Ok(found);
    }
    run_tool(Command::new("python3").args(["-m", "pip", "install", "--quiet", package]))?;
    find().with_context(|| format!("{package} was installed but {tool} is not found"))
}

fn need(tool: &str, message: &str) -> anyhow::Result<()> {
    match Command::new(tool).arg("--version").output() {
        Ok(output) if output.status.success() => Ok(()),
        _ => bail!("{message}"),
    }
}

fn run_tool(command: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{command:?}");
    let status = command
        .status()
        .with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// `my-plugin_2` → `MyPlugin2`: the plugin's type name in Rust.
fn type_name(name: &str) -> String {
    let camel: String = name
        .split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect();
    if camel.starts_with(|c: char| c.is_ascii_digit()) {
        format!("Plugin{camel}")
    } else {
        camel
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_are_rust_identifiers() {
        assert_eq!(type_name("greeter"), "Greeter");
        assert_eq!(type_name("my-plugin_2"), "MyPlugin2");
        assert_eq!(type_name("2fast"), "Plugin2fast");
    }
}
