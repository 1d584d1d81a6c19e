//! The sandboxed runtime against real components: the example plugins behave,
//! and every hostile fixture is contained without harming the host.

use std::time::Duration;

use serde_json::{Value, json};
use taskflow_runtime::plugin::{ArtifactCache, CompileCounters, PluginError, compile};
use taskflow_runtime::{
    Failure, FailureKind, Limits, LoadedPlugin, PluginRegistry, Runtime, RuntimeConfig, Success,
    TaskInput,
};
use taskflow_tests::{file_digest, fixture_wasm, plugin_wasm, taskflow_binary, wasm_bytes};

fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig::default()).expect("runtime")
}

fn load(runtime: &Runtime, name: &str, path: &std::path::Path) -> LoadedPlugin {
    compile(
        runtime,
        None,
        &CompileCounters::default(),
        name,
        &wasm_bytes(path),
    )
    .expect("plugin loads")
}

fn task(plugin: &str, attempt: u32, payload: &Value) -> TaskInput {
    TaskInput {
        id: "3f2b8c1e-8d4a-4c7e-9f1a-2b3c4d5e6f70".into(),
        plugin: plugin.into(),
        priority: 5,
        attempt,
        payload: serde_json::to_vec(payload).expect("json"),
    }
}

fn limits(timeout_ms: u64, memory_mb: usize) -> Limits {
    Limits {
        timeout: Duration::from_millis(timeout_ms),
        memory_bytes: memory_mb << 20,
        ..Limits::default()
    }
}

async fn run(
    runtime: &Runtime,
    plugin: &LoadedPlugin,
    payload: Value,
    limits: Limits,
) -> Result<Success, Failure> {
    runtime
        .run(plugin, task(&plugin.name, 1, &payload), limits, None)
        .await
}

fn json_output(success: &Success) -> Value {
    serde_json::from_slice(&success.output).expect("plugin output is JSON")
}

/// After a hostile task, the same runtime must still run a normal one.
async fn assert_still_serves(runtime: &Runtime) {
    let echo = load(runtime, "echo", &plugin_wasm("echo"));
    let ok = run(runtime, &echo, json!({"still": "alive"}), Limits::default())
        .await
        .expect("echo after hostile task");
    assert_eq!(json_output(&ok), json!({"still": "alive"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_plugins_process_tasks() {
    let runtime = runtime();

    let echo = load(&runtime, "echo", &plugin_wasm("echo"));
    let payload = json!({"hello": "world", "n": [1, 2, 3]});
    let out = run(&runtime, &echo, payload.clone(), Limits::default())
        .await
        .expect("echo");
    assert_eq!(json_output(&out), payload);
    assert_eq!(out.plugin_digest, file_digest(&plugin_wasm("echo")));

    let wordcount = load(&runtime, "wordcount", &plugin_wasm("wordcount"));
    let out = run(
        &runtime,
        &wordcount,
        json!({"text": "the cat\nthe dog the end", "top": 2}),
        Limits::default(),
    )
    .await
    .expect("wordcount");
    assert_eq!(
        json_output(&out),
        json!({"lines": 2, "words": 6, "chars": 23, "top_words": [{"word": "the", "count": 3}, {"word": "cat", "count": 1}]})
    );

    let hash = load(&runtime, "hash", &plugin_wasm("hash"));
    let out = run(&runtime, &hash, json!({"data": "abc"}), Limits::default())
        .await
        .expect("hash");
    assert_eq!(
        json_output(&out)["sha256"],
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let err = run(
        &runtime,
        &hash,
        json!({"data": "abc", "rounds": 0}),
        Limits::default(),
    )
    .await
    .expect_err("0 rounds");
    assert_eq!(err.kind, FailureKind::InvalidInput);

    let flaky = load(&runtime, "flaky", &plugin_wasm("flaky"));
    let payload = json!({"succeed_on_attempt": 3});
    for attempt in 1..=2 {
        let err = runtime
            .run(
                &flaky,
                task("flaky", attempt, &payload),
                Limits::default(),
                None,
            )
            .await
            .expect_err("flaky");
        assert_eq!(err.kind, FailureKind::Retryable);
        assert!(err.kind.is_retryable());
    }
    let ok = runtime
        .run(&flaky, task("flaky", 3, &payload), Limits::default(), None)
        .await
        .expect("third attempt");
    assert_eq!(json_output(&ok), json!({"succeeded_on_attempt": 3}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_results_are_refused() {
    let runtime = runtime();
    let echo = load(&runtime, "echo", &plugin_wasm("echo"));
    let big = "x".repeat(taskflow_runtime::MAX_RESULT_BYTES);
    let err = run(&runtime, &echo, json!(big), Limits::default())
        .await
        .expect_err("too large");
    assert_eq!(err.kind, FailureKind::OutputTooLarge, "{err}");
    assert!(!err.kind.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_reports_reach_the_host() {
    let runtime = runtime();
    let hash = load(&runtime, "hash", &plugin_wasm("hash"));
    let live = std::sync::Arc::new(taskflow_runtime::Live::default());
    runtime
        .run(
            &hash,
            task("hash", 1, &json!({"data": "x", "rounds": 100_000})),
            Limits::default(),
            Some(live.clone()),
        )
        .await
        .expect("hash");
    assert!(live.progress() >= 90, "the plugin reported progress");
}

/// A plugin's log lines are seen while it runs; its whole log is bounded
/// (10,000 lines), the rest counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_are_live_and_a_whole_log_is_bounded() {
    let runtime = runtime();
    let hostile = load(&runtime, "hostile", &fixture_wasm("hostile"));
    let live = std::sync::Arc::new(taskflow_runtime::Live::default());
    let watching = {
        let live = live.clone();
        tokio::spawn(async move {
            // The first line before the plugin ends (it logs one every 20 ms).
            for _ in 0..500 {
                if let Some(first) = live.preview().lines.first() {
                    return first.message.clone();
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            String::new()
        })
    };
    let ran = runtime
        .run_logged(
            &hostile,
            task(
                "hostile",
                1,
                &json!({"mode": "chatty", "n": 50, "millis": 20}),
            ),
            Limits::default(),
            Some(live.clone()),
        )
        .await;
    ran.result.expect("chatty");
    assert_eq!(watching.await.expect("watcher"), "line 1 of 50");
    assert_eq!(ran.logs.lines.len(), 50);

    let ran = runtime
        .run_logged(
            &hostile,
            task("hostile", 1, &json!({"mode": "chatty", "n": 10_050})),
            Limits::default(),
            None,
        )
        .await;
    ran.result.expect("chatty");
    assert_eq!(ran.logs.lines.len(), 10_000);
    assert_eq!(ran.logs.dropped, 50);
    assert_eq!(ran.logs.lines[9_999].message, "line 10000 of 10050");
}

/// Runs `payload` on the hostile fixture with a 400 ms timeout; returns the
/// failure and how long it took.
async fn timed_out(payload: Value) -> (Failure, Duration) {
    let runtime = runtime();
    let hostile = load(&runtime, "hostile", &fixture_wasm("hostile"));
    let started = std::time::Instant::now();
    let err = run(&runtime, &hostile, payload, limits(400, 64))
        .await
        .expect_err("must time out");
    let elapsed = started.elapsed();
    assert_still_serves(&runtime).await;
    (err, elapsed)
}

/// An attempt ends at its limit, not before, and not much after: within a
/// small multiple of it (generous, as the machine may be busy).
fn assert_ended_near(elapsed: Duration, limit: Duration) {
    assert!(
        elapsed >= limit,
        "ended after {elapsed:?}, before its limit {limit:?}"
    );
    assert!(
        elapsed <= limit * 5,
        "ended after {elapsed:?}, long past its limit {limit:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_ends_at_its_timeout() {
    let (err, elapsed) = timed_out(json!({"mode": "loop"})).await;
    assert_eq!(err.kind, FailureKind::Timeout, "{err}");
    assert_eq!(err.message, "task exceeded its timeout of 400 ms");
    assert_ended_near(elapsed, Duration::from_millis(400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_blocked_in_a_host_call_ends_at_its_timeout() {
    let (err, elapsed) = timed_out(json!({"mode": "sleep", "seconds": 600})).await;
    assert_eq!(err.kind, FailureKind::Timeout, "{err}");
    assert_eq!(
        err.message,
        "task exceeded its timeout of 400 ms (blocked in a host call)"
    );
    assert_ended_near(elapsed, Duration::from_millis(400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_fails_at_its_cap() {
    let runtime = runtime();
    let hostile = load(&runtime, "hostile", &fixture_wasm("hostile"));
    let err = run(
        &runtime,
        &hostile,
        json!({"mode": "memory"}),
        limits(10_000, 16),
    )
    .await
    .expect_err("hog must fail");
    assert_eq!(err.kind, FailureKind::MemoryLimit, "{err}");
    assert!(err.message.contains(&(16usize << 20).to_string()), "{err}");
    assert_still_serves(&runtime).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_environment_and_network_are_out_of_reach() {
    let runtime = runtime();
    let hostile = load(&runtime, "hostile", &fixture_wasm("hostile"));
    // The host process has an environment and a port the guest could reach if
    // it had a network: this test listens on it and counts what arrives.
    assert!(std::env::vars().next().is_some());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let payload = json!({"mode": "escape", "port": port});
    let report = json_output(
        &run(&runtime, &hostile, payload, Limits::default())
            .await
            .expect("escape"),
    );
    for denied in ["file", "directory", "tcp", "dns"] {
        assert!(
            report[denied].get("Err").is_some(),
            "{denied} must fail inside the guest: {report}"
        );
    }
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the guest reached the host's port {port}: {other:?} ({report})"),
    }
    assert_eq!(report["env_vars"], json!([]), "no environment: {report}");
    assert!(
        report["args"].as_array().is_some_and(|a| a.len() <= 1),
        "no host arguments: {report}"
    );
    assert_still_serves(&runtime).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_and_stack_overflows_become_failed_results() {
    let runtime = runtime();
    let hostile = load(&runtime, "hostile", &fixture_wasm("hostile"));
    let err = run(
        &runtime,
        &hostile,
        json!({"mode": "panic"}),
        Limits::default(),
    )
    .await
    .expect_err("panic");
    assert_eq!(err.kind, FailureKind::Trap, "{err}");
    let err = run(
        &runtime,
        &hostile,
        json!({"mode": "stack"}),
        Limits::default(),
    )
    .await
    .expect_err("stack");
    // Rust keeps large frames on a shadow stack in linear memory, so the
    // overflow surfaces as an out-of-bounds access rather than a native one.
    assert_eq!(err.kind, FailureKind::Trap, "{err}");
    assert!(
        err.message.contains("stack") || err.message.contains("out of bounds"),
        "{err}"
    );
    let err = run(
        &runtime,
        &hostile,
        json!({"mode": "nonsense"}),
        Limits::default(),
    )
    .await
    .expect_err("bad mode");
    assert_eq!(err.kind, FailureKind::InvalidInput, "{err}");
    assert_still_serves(&runtime).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_is_truncated_at_its_bound() {
    let runtime = runtime();
    let hostile = load(&runtime, "hostile", &fixture_wasm("hostile"));
    // The documented default: 64 KiB of each stream.
    let out = run(
        &runtime,
        &hostile,
        json!({"mode": "stdout", "megabytes": 4}),
        Limits::default(),
    )
    .await
    .expect("chatter succeeds");
    assert_eq!(
        (out.stdio.stdout.len(), out.stdio.stderr.len()),
        (65_536, 65_536)
    );
    assert_eq!(out.stdio.dropped_bytes, 2 * ((4 << 20) - 65_536));
    // A bound of its own.
    let limits = Limits {
        output_bytes: 1000,
        ..Limits::default()
    };
    let out = run(
        &runtime,
        &hostile,
        json!({"mode": "stdout", "megabytes": 1}),
        limits,
    )
    .await
    .expect("chatter succeeds");
    assert_eq!(
        (out.stdio.stdout.len(), out.stdio.stderr.len()),
        (1000, 1000)
    );
    assert_still_serves(&runtime).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_task_gets_a_fresh_instance() {
    // The fixture's `counter` adds one to a static and returns it: any state
    // carried from one task to the next shows as a count above 1.
    let runtime = runtime();
    let hostile = std::sync::Arc::new(load(&runtime, "hostile", &fixture_wasm("hostile")));
    for _ in 0..16 {
        let out = run(
            &runtime,
            &hostile,
            json!({"mode": "counter"}),
            Limits::default(),
        )
        .await
        .expect("counter");
        assert_eq!(json_output(&out), json!(1), "one task after another");
    }
    let mut handles = Vec::new();
    for _ in 0..64 {
        let (runtime, hostile) = (runtime.clone(), hostile.clone());
        handles.push(tokio::spawn(async move {
            run(
                &runtime,
                &hostile,
                json!({"mode": "counter"}),
                Limits::default(),
            )
            .await
        }));
    }
    for handle in handles {
        let out = handle.await.expect("join").expect("counter");
        assert_eq!(json_output(&out), json!(1), "concurrent tasks");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_falls_back_to_on_demand_allocation() {
    // Far more pool slots than any address space holds: the pooling allocator
    // cannot be built, so the runtime must fall back rather than fail.
    let config = RuntimeConfig {
        max_concurrent_instances: 50_000_000,
        ..RuntimeConfig::default()
    };
    let runtime = Runtime::new(config).expect("runtime with fallback");
    assert_eq!(
        runtime.allocator(),
        taskflow_runtime::AllocatorKind::OnDemand
    );
    assert_still_serves(&runtime).await;
    assert_eq!(
        self::runtime().allocator(),
        taskflow_runtime::AllocatorKind::Pooling,
        "pooling works on this machine"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_compile_in_a_child_process_whose_failures_stay_its_own() {
    let bytes = wasm_bytes(&plugin_wasm("wordcount"));
    let with_compiler = |exe: &str| {
        Runtime::new(RuntimeConfig {
            compiler: Some(exe.into()),
            ..RuntimeConfig::default()
        })
        .expect("runtime")
    };
    let compile_with = |runtime: &Runtime, bytes: &[u8]| {
        let cache_dir = tempfile::tempdir().expect("tempdir");
        let cache = ArtifactCache::new(cache_dir.path(), runtime).expect("cache");
        let counters = CompileCounters::default();
        let compiled = compile(runtime, Some(&cache), &counters, "wordcount", bytes);
        let artifacts = std::fs::read_dir(cache_dir.path())
            .expect("cache dir")
            .count();
        let in_child = counters
            .compiled_in_child
            .load(std::sync::atomic::Ordering::Relaxed);
        (
            compiled,
            (
                counters.compiled.load(std::sync::atomic::Ordering::Relaxed),
                in_child,
            ),
            artifacts,
        )
    };

    // The real compiler process: its artifact is loaded, checked and runs.
    let binary = taskflow_binary();
    let runtime = with_compiler(binary.to_str().expect("utf-8 path"));
    let (compiled, count, artifacts) = compile_with(&runtime, &bytes);
    let plugin = compiled.expect("compiled in a child process");
    assert_eq!(
        (plugin.from_cache, count, artifacts),
        (false, (1, 1), 1),
        "compiled by the child, not here"
    );
    let out = run(
        &runtime,
        &plugin,
        json!({"text": "a b a"}),
        Limits::default(),
    )
    .await
    .expect("runs");
    assert_eq!(json_output(&out)["words"], 3);

    // What the compiler says about a broken component reaches the caller.
    let mut broken = b"\0asm\x0d\x00\x01\x00".to_vec();
    broken.extend_from_slice(b"not really a component");
    let (compiled, _, artifacts) = compile_with(&runtime, &broken);
    match compiled {
        Err(PluginError::Compile(message)) => assert!(
            !message.is_empty() && !message.contains("ended with"),
            "{message}"
        ),
        Err(other) => panic!("expected a compile error, got {other}"),
        Ok(_) => panic!("a broken component compiled"),
    }
    assert_eq!(artifacts, 0);

    // A compiler process that fails fails the load: it is not retried here,
    // where a crash would take the host down.
    let (compiled, _, _) = compile_with(&with_compiler("/bin/false"), &bytes);
    assert!(
        matches!(&compiled, Err(PluginError::Compile(m)) if m.contains("compiler process ended")),
        "{:?}",
        compiled.err()
    );

    // No compiler process to be had: compiled here instead.
    let (compiled, count, _) = compile_with(&with_compiler("/nonexistent/taskflow"), &bytes);
    assert!(compiled.is_ok() && count == (1, 0), "{count:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_compiler_is_stopped_at_its_timeout_and_frees_the_registry() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = tempfile::tempdir().expect("tempdir");
    // A "compiler" that never reads its input and never exits.
    let hung = scratch.path().join("hung-compiler");
    std::fs::write(&hung, "#!/bin/sh\nexec sleep 600\n").expect("write script");
    std::fs::set_permissions(&hung, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let config = RuntimeConfig {
        compiler: Some(hung),
        compile_timeout: Duration::from_secs(1),
        ..RuntimeConfig::default()
    };
    let runtime = Runtime::new(config).expect("runtime");
    let plugins = scratch.path().join("plugins");
    let registry = PluginRegistry::open(runtime, &plugins, Some(scratch.path().join("cache")))
        .await
        .expect("open");

    // Two uploads, one after the other on the registry's loading lock: each
    // is refused at its own timeout, so the second is not held up for good.
    let started = std::time::Instant::now();
    let (first, second) = tokio::join!(
        registry.install("first", wasm_bytes(&plugin_wasm("echo"))),
        registry.install("second", wasm_bytes(&plugin_wasm("wordcount"))),
    );
    let elapsed = started.elapsed();
    for result in [first, second] {
        match result {
            Err(PluginError::Compile(message)) => {
                assert!(message.contains("did not finish within 1 s"), "{message}")
            }
            other => panic!(
                "expected a compile timeout, got {:?}",
                other.map(|p| p.plugin.digest.clone())
            ),
        }
    }
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(20),
        "two timeouts of 1 s took {elapsed:?}"
    );
    assert!(registry.list().is_empty());
    assert!(
        !plugins.join("first.wasm").exists(),
        "a rejected version is not written to the plugin directory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_loads_compiled_plugins_from_the_cache() {
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let bytes = wasm_bytes(&plugin_wasm("wordcount"));

    let first = runtime();
    let cache = ArtifactCache::new(cache_dir.path(), &first).expect("cache");
    let counters = CompileCounters::default();
    let plugin = compile(&first, Some(&cache), &counters, "wordcount", &bytes).expect("compile");
    assert!(!plugin.from_cache);
    assert_eq!(
        counters.compiled.load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // A new engine, as after a restart.
    let second = runtime();
    let cache = ArtifactCache::new(cache_dir.path(), &second).expect("cache");
    let counters = CompileCounters::default();
    let plugin =
        compile(&second, Some(&cache), &counters, "wordcount", &bytes).expect("load from cache");
    assert!(plugin.from_cache);
    assert_eq!(
        counters.compiled.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "no recompilation"
    );
    assert_eq!(
        counters
            .cache_hits
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let out = run(
        &second,
        &plugin,
        json!({"text": "a b a"}),
        Limits::default(),
    )
    .await
    .expect("cached plugin runs");
    assert_eq!(json_output(&out)["words"], 3);

    // A corrupt artifact is discarded and recompiled, never trusted.
    for entry in std::fs::read_dir(cache_dir.path()).expect("cache dir") {
        std::fs::write(entry.expect("entry").path(), b"garbage").expect("corrupt");
    }
    let counters = CompileCounters::default();
    let plugin = compile(&second, Some(&cache), &counters, "wordcount", &bytes).expect("recompile");
    assert!(!plugin.from_cache);
    assert_eq!(
        counters.compiled.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuel_metering_stops_a_task_that_runs_out() {
    let runtime = Runtime::new(RuntimeConfig {
        fuel: Some(5_000_000),
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let hostile = load(&runtime, "hostile", &fixture_wasm("hostile"));
    let err = run(
        &runtime,
        &hostile,
        json!({"mode": "loop"}),
        limits(30_000, 64),
    )
    .await
    .expect_err("loop must fail");
    assert_eq!(err.kind, FailureKind::FuelExhausted, "{err}");
    // A small task fits in the same budget.
    let echo = load(&runtime, "echo", &plugin_wasm("echo"));
    assert!(
        run(&runtime, &echo, json!("fits"), Limits::default())
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_plugin_runs_through_the_same_contract() {
    // plugins/greeter-py is Python, built by componentize-py against wit/.
    let runtime = runtime();
    let greeter = load(&runtime, "greeter", &plugin_wasm("greeter"));
    let out = run(
        &runtime,
        &greeter,
        json!({"name": "Ada"}),
        Limits::default(),
    )
    .await
    .expect("greeter");
    assert_eq!(
        json_output(&out),
        json!({"greeting": "Hello, Ada!", "language": "python"})
    );
    let err = run(&runtime, &greeter, json!({"nom": "Ada"}), Limits::default())
        .await
        .expect_err("bad input");
    assert_eq!(err.kind, FailureKind::InvalidInput, "{err}");
    assert!(err.message.contains("name"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_plugin_runs_through_the_same_contract() {
    // plugins/render-js is JavaScript, built by componentize-js against wit/.
    let runtime = runtime();
    let render = load(&runtime, "render", &plugin_wasm("render"));
    let live = std::sync::Arc::new(taskflow_runtime::Live::default());
    let payload = json!({
        "template": "Dear {{user.name}}, your order {{order.id}} holds:{{#order.items}} {{qty}}x {{name}};{{/order.items}}{{#vip}} Thank you!{{/vip}}",
        "data": {"user": {"name": "Ada"}, "order": {"id": 42, "items": [{"name": "tea", "qty": 2}, {"name": "cake", "qty": 1}]}, "vip": true}
    });
    let out = runtime
        .run(
            &render,
            task("render", 1, &payload),
            Limits::default(),
            Some(live.clone()),
        )
        .await
        .expect("render");
    assert_eq!(
        json_output(&out),
        json!({"text": "Dear Ada, your order 42 holds: 2x tea; 1x cake; Thank you!", "language": "javascript"})
    );
    assert_eq!(
        live.progress(),
        100,
        "the plugin reported progress through the host"
    );

    for (payload, needle) in [
        (
            json!({"template": "Hi {{nobody}}"}),
            "no value for {{nobody}}",
        ),
        (json!({"data": {}}), "expected {\"template\""),
        (
            json!({"template": "{{#open}} never closed"}),
            "has no {{/open}}",
        ),
    ] {
        let err = run(&runtime, &render, payload, Limits::default())
            .await
            .expect_err("bad input");
        assert_eq!(err.kind, FailureKind::InvalidInput, "{err}");
        assert!(err.message.contains(needle), "{err}");
    }
    let lenient = run(
        &runtime,
        &render,
        json!({"template": "Hi {{nobody}}!", "strict": false}),
        Limits::default(),
    )
    .await
    .expect("lenient");
    assert_eq!(json_output(&lenient)["text"], "Hi !");
}

/// What the hostile fixture's `instance` mode reports.
#[derive(Debug)]
struct InstanceReport {
    instance: String,
    calls: u32,
    overlapped: bool,
}

fn reuse(tasks: u32) -> Limits {
    Limits {
        timeout: Duration::from_millis(500),
        reuse_tasks: tasks,
        ..Limits::default()
    }
}

/// Runs one `instance` task with its own id.
async fn instance_task(
    runtime: &Runtime,
    plugin: &LoadedPlugin,
    limits: Limits,
    millis: u64,
) -> InstanceReport {
    let mut input = task(
        &plugin.name,
        1,
        &json!({"mode": "instance", "millis": millis}),
    );
    input.id = uuid::Uuid::new_v4().to_string();
    let out = runtime
        .run(plugin, input, limits, None)
        .await
        .expect("instance task");
    let report = json_output(&out);
    InstanceReport {
        instance: report["instance"].as_str().expect("instance").to_owned(),
        calls: report["calls"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .expect("calls"),
        overlapped: report["overlapped"].as_bool().expect("overlapped"),
    }
}

/// The same component with a custom section added: another version (another
/// digest), the same code.
fn another_version(bytes: &[u8]) -> Vec<u8> {
    let name = b"taskflow-test-version";
    let mut section = vec![u8::try_from(name.len()).expect("short name")];
    section.extend_from_slice(name);
    section.push(2);
    let mut bytes = bytes.to_vec();
    bytes.push(0); // a custom section
    bytes.push(u8::try_from(section.len()).expect("short section"));
    bytes.extend_from_slice(&section);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_instance_is_given_up_after_its_tasks_a_trap_a_timeout_or_a_new_version() {
    let runtime = runtime();
    let hostile = load(&runtime, "hostile", &fixture_wasm("hostile"));

    // Three tasks per instance: the fourth gets a fresh one.
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(instance_task(&runtime, &hostile, reuse(3), 0).await);
    }
    assert_eq!(
        seen.iter().map(|r| r.calls).collect::<Vec<_>>(),
        [1, 2, 3, 1],
        "{seen:?}"
    );
    assert!(seen[..3].iter().all(|r| r.instance == seen[0].instance));
    assert_ne!(seen[3].instance, seen[0].instance);
    assert_eq!(hostile.idle_instances(), 1);

    // The plugin's own error is a normal return: the instance stays.
    let before = instance_task(&runtime, &hostile, reuse(100), 0).await;
    let err = run(&runtime, &hostile, json!({"mode": "fatal"}), reuse(100))
        .await
        .expect_err("fatal");
    assert_eq!(err.kind, FailureKind::Fatal);
    let after = instance_task(&runtime, &hostile, reuse(100), 0).await;
    assert_eq!(
        (after.instance.as_str(), after.calls),
        (before.instance.as_str(), before.calls + 1)
    );

    // A trap, a timeout, the memory cap: the instance is not used again.
    for (payload, kind) in [
        (json!({"mode": "panic"}), FailureKind::Trap),
        (json!({"mode": "loop"}), FailureKind::Timeout),
        (json!({"mode": "memory"}), FailureKind::MemoryLimit),
    ] {
        let warm = instance_task(&runtime, &hostile, reuse(100), 0).await;
        assert_eq!(hostile.idle_instances(), 1);
        let limits = Limits {
            memory_bytes: 16 << 20,
            ..reuse(100)
        };
        let err = run(&runtime, &hostile, payload, limits)
            .await
            .expect_err("misbehaves");
        assert_eq!(err.kind, kind, "{err}");
        assert_eq!(hostile.idle_instances(), 0, "after {kind}");
        let next = instance_task(&runtime, &hostile, reuse(100), 0).await;
        assert_eq!(next.calls, 1, "after {kind}: {next:?}");
        assert_ne!(next.instance, warm.instance, "after {kind}");
    }

    // A new version of the plugin starts with instances of its own.
    let warm = instance_task(&runtime, &hostile, reuse(100), 0).await;
    let bytes = another_version(&wasm_bytes(&fixture_wasm("hostile")));
    let next_version = compile(
        &runtime,
        None,
        &CompileCounters::default(),
        "hostile",
        &bytes,
    )
    .expect("the new version loads");
    assert_ne!(next_version.digest, hostile.digest);
    let first = instance_task(&runtime, &next_version, reuse(100), 0).await;
    assert_eq!(first.calls, 1);
    assert_ne!(first.instance, warm.instance);
    // Without reuse, every task has a fresh instance.
    for _ in 0..2 {
        let fresh = instance_task(&runtime, &hostile, Limits::default(), 0).await;
        assert_eq!(fresh.calls, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_instance_never_runs_two_tasks_at_once() {
    let runtime = runtime();
    let hostile = std::sync::Arc::new(load(&runtime, "hostile", &fixture_wasm("hostile")));
    // Three waves of eight tasks that each sleep inside the instance.
    let mut reports = Vec::new();
    for _ in 0..3 {
        let wave: Vec<_> = (0..8)
            .map(|_| {
                let (runtime, hostile) = (runtime.clone(), hostile.clone());
                tokio::spawn(
                    async move { instance_task(&runtime, &hostile, reuse(1000), 30).await },
                )
            })
            .collect();
        for task in wave {
            reports.push(task.await.expect("join"));
        }
    }
    assert!(reports.iter().all(|r| !r.overlapped), "{reports:?}");
    let mut by_instance: std::collections::HashMap<&str, Vec<u32>> = Default::default();
    for report in &reports {
        by_instance
            .entry(&report.instance)
            .or_default()
            .push(report.calls);
    }
    for calls in by_instance.values_mut() {
        calls.sort_unstable();
        let expected: Vec<u32> = (1..=u32::try_from(calls.len()).expect("few")).collect();
        assert_eq!(
            *calls, expected,
            "each instance counts its own tasks, one at a time"
        );
    }
    assert!(
        by_instance.len() <= 8,
        "at most one instance per concurrent task"
    );
    assert!(
        by_instance.values().any(|calls| calls.len() > 1),
        "instances were reused: {by_instance:?}"
    );
}
