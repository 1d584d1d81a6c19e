//! The plugin registry: loading a directory, rejecting broken versions while
//! the old one keeps serving, hot reload under load, and the compile cache.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use taskflow::runtime::{Limits, PluginError, PluginRegistry, Runtime, RuntimeConfig, TaskInput};
use taskflow_tests::{file_digest, install_plugins, plugin_wasm, wasm_bytes};

fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig::default()).expect("runtime")
}

fn task(plugin: &str, payload: &Value) -> TaskInput {
    TaskInput {
        id: "0b7e9d2a-1c3f-4e5d-8a6b-7c8d9e0f1a2b".into(),
        plugin: plugin.into(),
        priority: 5,
        attempt: 1,
        payload: serde_json::to_vec(payload).expect("json"),
    }
}

/// Waits (bounded) until `check` holds; the watcher applies changes asynchronously.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_a_directory_and_skips_broken_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    install_plugins(dir.path(), &["echo", "wordcount"]);
    std::fs::write(dir.path().join("broken.wasm"), b"not wasm at all").expect("write");
    std::fs::write(dir.path().join("Bad Name.wasm"), wasm_bytes(&plugin_wasm("echo"))).expect("write");
    std::fs::write(dir.path().join("notes.txt"), b"ignored").expect("write");

    let registry = PluginRegistry::open(runtime(), dir.path(), None).await.expect("open");
    let names: Vec<String> = registry.list().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["echo", "wordcount"]);
    assert_eq!(registry.stats().rejected, 1, "the garbage file was rejected");
    let echo = registry.get("echo").expect("echo");
    assert_eq!(echo.plugin.digest, file_digest(&plugin_wasm("echo")));
    assert!(matches!(registry.get("nope"), Err(PluginError::NotFound(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_uploads_are_rejected_and_the_old_version_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = PluginRegistry::open(runtime(), dir.path(), None).await.expect("open");
    let good = registry.install("p", wasm_bytes(&plugin_wasm("echo"))).await.expect("install echo");

    let core_module = wat_module();
    let empty_component = b"\0asm\x0d\0\x01\0".to_vec();
    type ExpectedError = fn(&PluginError) -> bool;
    let cases: Vec<(&str, Vec<u8>, ExpectedError)> = vec![
        ("garbage", b"\x00\x01garbage bytes".to_vec(), |e| matches!(e, PluginError::NotWasm)),
        ("core module", core_module, |e| matches!(e, PluginError::CoreModule)),
        ("component without the world", empty_component, |e| matches!(e, PluginError::WrongWorld(_))),
        ("truncated component", wasm_bytes(&plugin_wasm("echo"))[..4096].to_vec(), |e| {
            matches!(e, PluginError::Compile(_))
        }),
    ];
    for (what, bytes, expected) in cases {
        let err = registry.install("p", bytes).await.expect_err(what);
        assert!(expected(&err), "{what}: unexpected error {err}");
        assert_eq!(registry.get("p").expect("still loaded").plugin.digest, good.digest, "{what}");
        // The file on disk is still the good version: nothing was written.
        assert_eq!(file_digest(&dir.path().join("p.wasm")), good.digest, "{what}");
    }
    assert!(matches!(registry.install("../etc", vec![]).await, Err(PluginError::InvalidName(_))));

    let entry = registry.get("p").expect("p");
    let out = registry.runtime().run(&entry.plugin, task("p", &json!(1)), Limits::default(), None).await.expect("runs");
    assert_eq!(out.output, b"1");
}

/// A core module (`(module)`), built by hand: magic, version 1.
fn wat_module() -> Vec<u8> {
    b"\0asm\x01\0\0\0".to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_swaps_versions_without_failing_a_task() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hot.wasm");
    let v1 = wasm_bytes(&plugin_wasm("hash"));
    let v2 = wasm_bytes(&plugin_wasm("wordcount"));
    let (v1_digest, v2_digest) = (taskflow::runtime::plugin::digest_of(&v1), taskflow::runtime::plugin::digest_of(&v2));
    std::fs::write(&path, &v1).expect("write v1");

    let registry = PluginRegistry::open(runtime(), dir.path(), None).await.expect("open");
    let _watch = registry.watch().expect("watch");
    assert_eq!(registry.get("hot").expect("v1").plugin.digest, v1_digest);

    // A payload both versions accept; `rounds` makes v1 take a while.
    let payload = json!({"text": "one two two", "data": "x", "rounds": 1_000_000});

    // A long task that starts on v1 must finish on v1, even though the swap
    // happens while it runs.
    let long_running = {
        let entry = registry.get("hot").expect("v1");
        let runtime = registry.runtime().clone();
        let payload = payload.clone();
        tokio::spawn(async move { runtime.run(&entry.plugin, task("hot", &payload), Limits::default(), None).await })
    };

    // Tasks keep flowing while the file is replaced in place.
    let registry_for_load = registry.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_flag = stop.clone();
    let load = tokio::spawn(async move {
        let mut digests = Vec::new();
        while !stop_flag.load(std::sync::atomic::Ordering::Relaxed) {
            let entry = registry_for_load.get("hot").expect("always loaded");
            let out = registry_for_load
                .runtime()
                .run(&entry.plugin, task("hot", &json!({"text": "one two two", "data": "x"})), Limits::default(), None)
                .await;
            digests.push(out.map(|s| s.plugin_digest));
        }
        digests
    });

    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::write(&path, &v2).expect("write v2 over v1");
    eventually("v2 serves", || registry.get("hot").is_ok_and(|e| e.plugin.digest == v2_digest)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let digests = load.await.expect("join");
    assert!(digests.iter().all(Result::is_ok), "no task failed: {digests:?}");
    let digests: Vec<String> = digests.into_iter().flatten().collect();
    let first_v2 = digests.iter().position(|d| *d == v2_digest).expect("tasks ran on v2");
    assert!(digests[..first_v2].iter().all(|d| *d == v1_digest), "v1 served before the swap");
    assert!(digests[first_v2..].iter().all(|d| *d == v2_digest), "only v2 after the swap");
    let long = long_running.await.expect("join").expect("the long task succeeded");
    assert_eq!(long.plugin_digest, v1_digest, "a running task finishes on the version it started with");

    // Garbage written over v2 is rejected; v2 keeps serving.
    let rejected_before = registry.stats().rejected;
    std::fs::write(&path, b"garbage, not a component").expect("write garbage");
    eventually("the garbage is rejected", || registry.stats().rejected > rejected_before).await;
    let entry = registry.get("hot").expect("still loaded");
    assert_eq!(entry.plugin.digest, v2_digest);
    let out = registry.runtime().run(&entry.plugin, task("hot", &json!({"text": "a"})), Limits::default(), None).await;
    assert!(out.is_ok(), "v2 still serves: {out:?}");

    // A new file appears as a new plugin; a deleted file unloads its plugin.
    std::fs::copy(plugin_wasm("echo"), dir.path().join("fresh.wasm")).expect("copy");
    eventually("the new plugin loads", || registry.contains("fresh")).await;
    std::fs::remove_file(dir.path().join("fresh.wasm")).expect("delete");
    eventually("the deleted plugin unloads", || !registry.contains("fresh")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_limits_apply_to_a_plugin() {
    let dir = tempfile::tempdir().expect("tempdir");
    install_plugins(dir.path(), &["echo"]);
    std::fs::write(dir.path().join("echo.limits.json"), br#"{"timeout_ms": 1500, "memory_mb": 32}"#).expect("write");
    let registry = PluginRegistry::open(runtime(), dir.path(), None).await.expect("open");
    let limits = registry.get("echo").expect("echo").limits;
    assert_eq!((limits.timeout_ms, limits.memory_mb), (Some(1500), Some(32)));

    std::fs::write(dir.path().join("echo.limits.json"), br#"{"timeout": 5}"#).expect("write");
    let err = registry.sync_path(&dir.path().join("echo.limits.json")).await.expect_err("unknown field");
    assert!(err.to_string().contains("timeout_ms"), "{err}");
    assert_eq!(registry.get("echo").expect("still loaded").limits.timeout_ms, Some(1500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_an_unchanged_directory_compiles_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = tempfile::tempdir().expect("tempdir");
    let names = ["echo", "wordcount", "hash", "flaky"];
    install_plugins(dir.path(), &names);

    let first = PluginRegistry::open(runtime(), dir.path(), Some(cache.path().to_path_buf())).await.expect("open");
    assert_eq!(first.stats().compiled, names.len() as u64);
    assert_eq!(first.stats().cache_hits, 0);
    drop(first);

    let second = PluginRegistry::open(runtime(), dir.path(), Some(cache.path().to_path_buf())).await.expect("reopen");
    let stats = second.stats();
    assert_eq!(stats.compiled, 0, "nothing recompiled after a restart");
    assert_eq!(stats.cache_hits, names.len() as u64);
    assert_eq!(stats.loaded, names.len());
}
