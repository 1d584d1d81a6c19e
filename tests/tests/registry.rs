//! The plugin registry: loading a directory, rejecting broken versions while
//! the old one keeps serving, hot reload under load, and the compile cache.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use taskflow_model::FailureKind;
use taskflow_model::task::{TaskOutput, TaskStatus};
use taskflow_runtime::{Limits, PluginError, PluginRegistry, Runtime, RuntimeConfig, TaskInput};
use taskflow_tests::{
    TestHost, as_task, eventually, file_digest, fixture_wasm, install_plugins, plugin_wasm,
    poll_json, submit, wait_for, wait_terminal, wasm_bytes,
};

/// How long a task of these tests may take.
const LONG: Duration = Duration::from_secs(60);

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_a_directory_and_skips_broken_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    install_plugins(dir.path(), &["echo", "wordcount"]);
    std::fs::write(dir.path().join("broken.wasm"), b"not wasm at all").expect("write");
    std::fs::write(
        dir.path().join("Bad Name.wasm"),
        wasm_bytes(&plugin_wasm("echo")),
    )
    .expect("write");
    std::fs::write(dir.path().join("notes.txt"), b"ignored").expect("write");

    let registry = PluginRegistry::open(runtime(), dir.path(), None)
        .await
        .expect("open");
    let names: Vec<String> = registry.list().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["echo", "wordcount"]);
    assert_eq!(
        registry.stats().rejected,
        1,
        "the garbage file was rejected"
    );
    let echo = registry.get("echo").expect("echo");
    assert_eq!(echo.plugin.digest, file_digest(&plugin_wasm("echo")));
    assert!(matches!(
        registry.get("nope"),
        Err(PluginError::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_uploads_are_rejected_and_the_old_version_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = PluginRegistry::open(runtime(), dir.path(), None)
        .await
        .expect("open");
    let good = registry
        .install("p", wasm_bytes(&plugin_wasm("echo")))
        .await
        .expect("install echo");

    let core_module = wat_module();
    let empty_component = b"\0asm\x0d\0\x01\0".to_vec();
    type ExpectedError = fn(&PluginError) -> bool;
    let cases: Vec<(&str, Vec<u8>, ExpectedError)> = vec![
        ("garbage", b"\x00\x01garbage bytes".to_vec(), |e| {
            matches!(e, PluginError::NotWasm)
        }),
        ("core module", core_module, |e| {
            matches!(e, PluginError::CoreModule)
        }),
        ("component without the world", empty_component, |e| {
            matches!(e, PluginError::WrongWorld(_))
        }),
        (
            "truncated component",
            wasm_bytes(&plugin_wasm("echo"))[..4096].to_vec(),
            |e| matches!(e, PluginError::Compile(_)),
        ),
    ];
    for (what, bytes, expected) in cases {
        let err = registry.install("p", bytes).await.expect_err(what);
        assert!(expected(&err), "{what}: unexpected error {err}");
        assert_eq!(
            registry.get("p").expect("still loaded").plugin.digest,
            good.plugin.digest,
            "{what}"
        );
        // The file on disk is still the good version: nothing was written.
        assert_eq!(
            file_digest(&dir.path().join("p.wasm")),
            good.plugin.digest,
            "{what}"
        );
    }
    assert!(matches!(
        registry.install("../etc", vec![]).await,
        Err(PluginError::InvalidName(_))
    ));

    let entry = registry.get("p").expect("p");
    let out = registry
        .runtime()
        .run(&entry.plugin, task("p", &json!(1)), Limits::default(), None)
        .await
        .expect("runs");
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
    let (v1_digest, v2_digest) = (
        taskflow_runtime::plugin::digest_of(&v1),
        taskflow_runtime::plugin::digest_of(&v2),
    );
    std::fs::write(&path, &v1).expect("write v1");

    let registry = PluginRegistry::open(runtime(), dir.path(), None)
        .await
        .expect("open");
    let _watch = registry.watch().expect("watch");
    assert_eq!(registry.get("hot").expect("v1").plugin.digest, v1_digest);

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
                .run(
                    &entry.plugin,
                    task("hot", &json!({"text": "one two two", "data": "x"})),
                    Limits::default(),
                    None,
                )
                .await;
            digests.push(out.map(|s| s.plugin_digest));
        }
        digests
    });

    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::write(&path, &v2).expect("write v2 over v1");
    eventually("v2 serves", || {
        registry
            .get("hot")
            .is_ok_and(|e| e.plugin.digest == v2_digest)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let digests = load.await.expect("join");
    assert!(
        digests.iter().all(Result::is_ok),
        "no task failed: {digests:?}"
    );
    let digests: Vec<String> = digests.into_iter().flatten().collect();
    let first_v2 = digests
        .iter()
        .position(|d| *d == v2_digest)
        .expect("tasks ran on v2");
    assert!(
        digests[..first_v2].iter().all(|d| *d == v1_digest),
        "v1 served before the swap"
    );
    assert!(
        digests[first_v2..].iter().all(|d| *d == v2_digest),
        "only v2 after the swap"
    );

    // Garbage written over v2 is rejected; v2 keeps serving.
    let rejected_before = registry.stats().rejected;
    std::fs::write(&path, b"garbage, not a component").expect("write garbage");
    eventually("the garbage is rejected", || {
        registry.stats().rejected > rejected_before
    })
    .await;
    let entry = registry.get("hot").expect("still loaded");
    assert_eq!(entry.plugin.digest, v2_digest);
    let out = registry
        .runtime()
        .run(
            &entry.plugin,
            task("hot", &json!({"text": "a"})),
            Limits::default(),
            None,
        )
        .await;
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
    std::fs::write(
        dir.path().join("echo.limits.json"),
        br#"{"timeout_ms": 1500, "memory_mb": 32}"#,
    )
    .expect("write");
    let registry = PluginRegistry::open(runtime(), dir.path(), None)
        .await
        .expect("open");
    let limits = registry.get("echo").expect("echo").limits;
    assert_eq!(
        (limits.timeout_ms, limits.memory_mb),
        (Some(1500), Some(32))
    );

    std::fs::write(dir.path().join("echo.limits.json"), br#"{"timeout": 5}"#).expect("write");
    let err = registry
        .sync_path(&dir.path().join("echo.limits.json"))
        .await
        .expect_err("unknown field");
    assert!(err.to_string().contains("timeout_ms"), "{err}");
    assert_eq!(
        registry
            .get("echo")
            .expect("still loaded")
            .limits
            .timeout_ms,
        Some(1500)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_an_unchanged_directory_compiles_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = tempfile::tempdir().expect("tempdir");
    let names = ["echo", "wordcount", "hash", "flaky"];
    install_plugins(dir.path(), &names);

    let first = PluginRegistry::open(runtime(), dir.path(), Some(cache.path().to_path_buf()))
        .await
        .expect("open");
    assert_eq!(first.stats().compiled, names.len() as u64);
    assert_eq!(first.stats().cache_hits, 0);
    drop(first);

    let second = PluginRegistry::open(runtime(), dir.path(), Some(cache.path().to_path_buf()))
        .await
        .expect("reopen");
    let stats = second.stats();
    assert_eq!(stats.compiled, 0, "nothing recompiled after a restart");
    assert_eq!(stats.cache_hits, names.len() as u64);
    assert_eq!(stats.loaded, names.len());
}

/// How a new version reaches a running host.
#[derive(Debug, Clone, Copy)]
enum Delivery {
    /// Written into the watched plugin directory.
    File,
    /// `PUT /plugins/{name}`.
    Upload,
}

async fn deliver(
    client: &reqwest::Client,
    host: &TestHost,
    how: Delivery,
    name: &str,
    bytes: Vec<u8>,
) {
    let digest = taskflow_runtime::plugin::digest_of(&bytes);
    match how {
        Delivery::File => std::fs::write(
            host.data
                .path()
                .join("plugins")
                .join(format!("{name}.wasm")),
            bytes,
        )
        .expect("write"),
        Delivery::Upload => {
            let response = client
                .put(host.at(&format!("/plugins/{name}")))
                .body(bytes)
                .send()
                .await
                .expect("upload");
            assert_eq!(response.status(), reqwest::StatusCode::CREATED);
        }
    }
    let serving = |plugins: &Value| {
        plugins["plugins"].as_array().is_some_and(|list| {
            list.iter()
                .any(|p| p["name"] == name && p["digest"] == digest.as_str())
        })
    };
    poll_json(
        client,
        &host.at("/plugins"),
        Duration::from_secs(30),
        serving,
    )
    .await;
}

/// On a running host: tasks running on v1 when v2 arrives finish on v1 and
/// record v1, a success and a failure alike; a task started after the swap
/// runs on v2 and records v2.
async fn tasks_keep_the_version_they_started_on(how: Delivery) {
    let host = TestHost::start(4, false).await;
    let client = reqwest::Client::new();
    let v1 = wasm_bytes(&fixture_wasm("hostile"));
    let v2 = wasm_bytes(&plugin_wasm("echo"));
    let (v1_digest, v2_digest) = (
        taskflow_runtime::plugin::digest_of(&v1),
        taskflow_runtime::plugin::digest_of(&v2),
    );
    deliver(&client, &host, how, "hot", v1).await;

    // On v1: one task that succeeds after two seconds, one that fails at its timeout.
    let api = host.client();
    let succeeds = submit(
        &api,
        &as_task(json!({"plugin": "hot", "payload": {"mode": "sleep", "seconds": 2}})),
    )
    .await
    .id;
    let fails = submit(
        &api,
        &as_task(json!({"plugin": "hot", "payload": {"mode": "loop"}, "timeout_ms": 2000, "max_attempts": 1})),
    )
    .await
    .id;
    for id in [succeeds, fails] {
        wait_for(&api, id, LONG, |t| t.task.status == TaskStatus::Running).await;
    }
    deliver(&client, &host, how, "hot", v2).await;
    let after_swap = submit(
        &api,
        &as_task(json!({"plugin": "hot", "payload": {"mode": "sleep", "seconds": 2}})),
    )
    .await
    .id;

    let done = wait_terminal(&api, succeeds, LONG).await.task;
    assert_eq!(
        (done.status, done.result.as_ref()),
        (
            TaskStatus::Completed,
            Some(&TaskOutput::Json(json!("woke up")))
        ),
        "{how:?}: {done:?}"
    );
    assert_eq!(
        done.plugin_digest.as_deref(),
        Some(v1_digest.as_str()),
        "{how:?}: a task finishes on the version it started on"
    );
    let done = wait_terminal(&api, fails, LONG).await.task;
    assert_eq!(
        (done.status, done.last_error.as_ref().map(|e| e.kind)),
        (TaskStatus::Failed, Some(FailureKind::Timeout)),
        "{how:?}: {done:?}"
    );
    assert_eq!(
        done.plugin_digest.as_deref(),
        Some(v1_digest.as_str()),
        "{how:?}: a failure is recorded against the version that failed"
    );
    let done = wait_terminal(&api, after_swap, LONG).await.task;
    assert_eq!(
        done.result,
        Some(TaskOutput::Json(json!({"mode": "sleep", "seconds": 2}))),
        "{how:?}: v2 (echo) ran it: {done:?}"
    );
    assert_eq!(
        done.plugin_digest.as_deref(),
        Some(v2_digest.as_str()),
        "{how:?}"
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_written_into_the_directory_takes_over_while_tasks_run() {
    tasks_keep_the_version_they_started_on(Delivery::File).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_version_takes_over_while_tasks_run() {
    tasks_keep_the_version_they_started_on(Delivery::Upload).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_picks_up_a_changed_sidecar() {
    let host = TestHost::start(2, true).await;
    let client = reqwest::Client::new();
    let sidecar = host.data.path().join("plugins/hostile.limits.json");
    std::fs::write(&sidecar, br#"{"timeout_ms": 300}"#).expect("write sidecar");
    poll_json(
        &client,
        &host.at("/plugins"),
        Duration::from_secs(30),
        |plugins| {
            plugins["plugins"].as_array().is_some_and(|list| {
                list.iter()
                    .any(|p| p["name"] == "hostile" && p["limits"]["timeout_ms"] == 300)
            })
        },
    )
    .await;
    let api = host.client();
    let task =
        as_task(json!({"plugin": "hostile", "payload": {"mode": "loop"}, "max_attempts": 1}));
    let id = submit(&api, &task).await.id;
    let done = wait_terminal(&api, id, LONG).await.task;
    assert_eq!(
        done.last_error.as_ref().map(|e| e.message.as_str()),
        Some("task exceeded its timeout of 300 ms"),
        "{done:?}"
    );
    host.stop().await;
}
