//! Per-task overhead of the runtime, against the floor beneath it.
//!
//! - `floor`: instantiate `echo` straight from its `InstancePre` into a bare
//!   store and call `process`: what wasmtime itself costs;
//! - `runtime`: [`Runtime::run`], the full per-task path a worker takes
//!   (fresh sandbox, limits, epoch deadline, timeout, stdio capture,
//!   outcome classification).
//!
//! Both run in the same process on the same engine; the closing line prints
//! runtime / floor. Target: within 1.5x. Run with
//! `cargo bench -p taskflow-host --bench runtime`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::Criterion;
use taskflow_runtime::bindings::WitTask;
use taskflow_runtime::plugin::{CompileCounters, LoadedPlugin, compile};
use taskflow_runtime::sandbox::{CapturedOutput, Sandbox};
use taskflow_runtime::{Limits, Runtime, RuntimeConfig, TaskInput};
use wasmtime::Store;

const GROUP: &str = "per_task";
const PAYLOAD: &[u8] = br#"{"message":"hello from the benchmark","n":[1,2,3,4,5,6,7,8]}"#;

fn echo_wasm() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist/echo.wasm");
    assert!(
        path.exists(),
        "{} is missing: run plugins/build.sh first",
        path.display()
    );
    path
}

async fn floor(runtime: &Runtime, plugin: &LoadedPlugin) -> Vec<u8> {
    let sandbox = Sandbox::new(
        String::new(),
        String::new(),
        usize::MAX,
        CapturedOutput::new(0),
        CapturedOutput::new(0),
        Default::default(),
    );
    let mut store = Store::new(runtime.engine(), sandbox);
    store.set_epoch_deadline(1 << 40);
    let processor = plugin
        .instance_pre()
        .instantiate_async(&mut store)
        .await
        .expect("instantiate");
    let task = WitTask {
        id: "bench".into(),
        plugin: "echo".into(),
        priority: 5,
        attempt: 1,
        payload: PAYLOAD.to_vec(),
    };
    processor
        .call_process(&mut store, &task)
        .await
        .expect("call")
        .expect("echo succeeds")
}

async fn full_path(runtime: &Runtime, plugin: &LoadedPlugin) -> Vec<u8> {
    let task = TaskInput {
        id: "bench".into(),
        plugin: "echo".into(),
        priority: 5,
        attempt: 1,
        payload: PAYLOAD.to_vec(),
    };
    runtime
        .run(plugin, task, Limits::default(), None)
        .await
        .expect("echo succeeds")
        .output
}

fn mean_ns(output: &Path, bench: &str) -> Option<f64> {
    let text =
        std::fs::read_to_string(output.join(GROUP).join(bench).join("new/estimates.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["mean"]["point_estimate"].as_f64()
}

fn main() {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    let runtime = tokio
        .block_on(async { Runtime::new(RuntimeConfig::default()) })
        .expect("runtime");
    let bytes = std::fs::read(echo_wasm()).expect("read echo.wasm");
    let plugin =
        compile(&runtime, None, &CompileCounters::default(), "echo", &bytes).expect("compile echo");
    assert_eq!(tokio.block_on(floor(&runtime, &plugin)), PAYLOAD);
    assert_eq!(tokio.block_on(full_path(&runtime, &plugin)), PAYLOAD);

    let output = Path::new(env!("CARGO_TARGET_TMPDIR")).join("criterion");
    let mut criterion = Criterion::default()
        .output_directory(&output)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    {
        let mut group = criterion.benchmark_group(GROUP);
        group.bench_function("floor", |b| {
            b.to_async(&tokio).iter(|| floor(&runtime, &plugin))
        });
        group.bench_function("runtime", |b| {
            b.to_async(&tokio).iter(|| full_path(&runtime, &plugin))
        });
        group.finish();
    }
    criterion.final_summary();

    match (mean_ns(&output, "floor"), mean_ns(&output, "runtime")) {
        (Some(floor), Some(full)) => println!(
            "per-task path: runtime {:.1} µs / floor {:.1} µs = {:.2}x (target: at most 1.5x)",
            full / 1000.0,
            floor / 1000.0,
            full / floor
        ),
        _ => println!(
            "per-task ratio unavailable: run without a filter so both benchmarks are measured"
        ),
    }
}
