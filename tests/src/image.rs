//! The host's container image, built here as users build it for AWS: the
//! runtime stage of `host/Dockerfile`, by `host/image/build-local.sh` (a
//! Debian base made with mmdebstrap, since no registry can be pulled from),
//! with the debug `taskflow` binary the tests already built; then pushed to
//! the test registry (`TASKFLOW_TEST_REGISTRY`, which `tests/run.sh`
//! starts). Every `podman` and script run has a time limit.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{taskflow_binary, workspace_root};

/// The image's local name (one tag, rebuilt by every run: the build script
/// drops the image it named before).
pub const LOCAL_TAG: &str = "localhost/taskflow:test";

/// How long the image build may take: a cold Debian base takes a minute or
/// two (downloads), a warm build seconds.
pub const BUILD_LIMIT: Duration = Duration::from_secs(900);

/// How long a `podman` command (other than a build or a push) may take.
pub const PODMAN_LIMIT: Duration = Duration::from_secs(60);

/// The built image.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// Its local name, for `podman run`.
    pub local: String,
    /// The test registry, `127.0.0.1:PORT`.
    pub registry: String,
    /// Its repository there, `taskflow`.
    pub repository: String,
    /// Where it was pushed, `127.0.0.1:PORT/taskflow:test`.
    pub pushed: String,
    /// The digest of its manifest in the registry, `sha256:…`.
    pub digest: String,
}

impl BuiltImage {
    /// The pushed image by digest, `127.0.0.1:PORT/taskflow@sha256:…`.
    pub fn by_digest(&self) -> String {
        format!("{}/{}@{}", self.registry, self.repository, self.digest)
    }
}

/// Builds the image and pushes it to the test registry, once per test
/// process; returns the pushed reference (`127.0.0.1:PORT/taskflow:test`)
/// and its manifest digest (`sha256:…`).
pub fn build_local_image() -> (String, String) {
    let image = built_image();
    (image.pushed.clone(), image.digest.clone())
}

/// Like [`build_local_image`], with every name.
pub fn built_image() -> &'static BuiltImage {
    static IMAGE: OnceLock<BuiltImage> = OnceLock::new();
    IMAGE.get_or_init(build_and_push)
}

/// The test registry's address; a run without it fails (it never skips).
pub fn test_registry() -> String {
    std::env::var("TASKFLOW_TEST_REGISTRY").unwrap_or_else(|_| {
        panic!(
            "TASKFLOW_TEST_REGISTRY is not set: run the tests with tests/run.sh, which starts a registry (Debian's docker-registry) and sets it"
        )
    })
}

fn build_and_push() -> BuiltImage {
    let registry = test_registry();
    let script = workspace_root().join("host/image/build-local.sh");
    let mut build = Command::new(&script);
    build.arg("--tag").arg(LOCAL_TAG).arg(taskflow_binary());
    let started = Instant::now();
    let built = run_ok(build, BUILD_LIMIT);
    assert_eq!(
        built.stdout.trim(),
        LOCAL_TAG,
        "build-local.sh prints the image's name"
    );
    eprintln!("image {LOCAL_TAG} built in {:.1?}", started.elapsed());

    let repository = "taskflow".to_owned();
    let pushed = format!("{registry}/{repository}:test");
    let digest_file = tempfile::NamedTempFile::new().expect("temp file");
    let mut push = podman();
    push.args(["push", "--quiet", "--tls-verify=false", "--digestfile"])
        .arg(digest_file.path())
        .arg(LOCAL_TAG)
        .arg(format!("docker://{pushed}"));
    let started = Instant::now();
    run_ok(push, BUILD_LIMIT);
    let digest = std::fs::read_to_string(digest_file.path())
        .expect("podman push writes the digest file")
        .trim()
        .to_owned();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "digest file holds {digest:?}"
    );
    eprintln!("pushed {pushed} ({digest}) in {:.1?}", started.elapsed());
    BuiltImage {
        local: LOCAL_TAG.to_owned(),
        registry,
        repository,
        pushed,
        digest,
    }
}

/// `podman`, with the OCI runtime this machine class needs (crun refuses its
/// cgroup setup; the settings in `CONTAINERS_CONF` come from `tests/run.sh`).
pub fn podman() -> Command {
    let mut command = Command::new("podman");
    command.args(["--runtime", "runc"]);
    command
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Ran {
    /// It exited 0.
    pub ok: bool,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// Runs `command` with no input; kills it and panics if it takes longer
/// than `limit`.
pub fn run(command: Command, limit: Duration) -> Ran {
    run_within(command, limit).unwrap_or_else(|failure| panic!("{failure}"))
}

/// Like [`run`], with the failure to start or finish as an error.
fn run_within(mut command: Command, limit: Duration) -> Result<Ran, String> {
    let line = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {line}: {e}"))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            outcome => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = stderr.join().unwrap_or_default();
                return Err(match outcome {
                    Err(e) => format!("cannot wait for {line}: {e}"),
                    _ => format!("{line} did not finish within {limit:?}; stderr:\n{stderr}"),
                });
            }
        }
    };
    Ok(Ran {
        ok: status.success(),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Like [`run`]; the command must succeed.
pub fn run_ok(command: Command, limit: Duration) -> Ran {
    let line = format!("{command:?}");
    let ran = run(command, limit);
    assert!(
        ran.ok,
        "{line} failed:\n{}\n{}",
        ran.stdout.trim(),
        ran.stderr.trim()
    );
    ran
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    })
}

/// A container started with `podman run --detach`, removed (with its
/// logs shown when a test failed) when dropped.
#[derive(Debug)]
pub struct Container {
    /// Its name.
    pub name: String,
}

impl Container {
    /// `podman run --detach --name NAME ARGS…`; `args` are what follows
    /// the name: options, the image and its arguments.
    pub fn run(name: &str, args: &[&str]) -> Self {
        let mut command = podman();
        command.args(["run", "--detach", "--name", name]).args(args);
        // The guard exists before the container may: a run that times out
        // or fails half-way leaves nothing behind either.
        let container = Self {
            name: name.to_owned(),
        };
        run_ok(command, PODMAN_LIMIT);
        container
    }

    /// `podman inspect --format FORMAT` of this container.
    pub fn inspect(&self, format: &str) -> String {
        let mut command = podman();
        command.args(["inspect", "--format", format, &self.name]);
        run_ok(command, PODMAN_LIMIT).stdout.trim().to_owned()
    }

    /// `podman exec [ENV…] NAME ARGS…`.
    pub fn exec(&self, env: &[(&str, &str)], args: &[&str]) -> Ran {
        let mut command = podman();
        command.arg("exec");
        for (name, value) in env {
            command.args(["--env", &format!("{name}={value}")]);
        }
        command.arg(&self.name).args(args);
        run(command, PODMAN_LIMIT)
    }

    /// Its logs so far.
    pub fn logs(&self) -> String {
        let mut command = podman();
        command.args(["logs", &self.name]);
        let ran = run(command, PODMAN_LIMIT);
        format!("{}{}", ran.stdout, ran.stderr)
    }
}

impl Drop for Container {
    // Never panics: it may run while a failed test unwinds.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut logs = podman();
            logs.args(["logs", &self.name]);
            if let Ok(ran) = run_within(logs, PODMAN_LIMIT) {
                eprintln!(
                    "logs of container {}:\n{}{}",
                    self.name, ran.stdout, ran.stderr
                );
            }
        }
        let mut remove = podman();
        remove.args(["rm", "--force", "--ignore", "--time", "5", &self.name]);
        match run_within(remove, PODMAN_LIMIT) {
            Ok(ran) if ran.ok => {}
            Ok(ran) => eprintln!("podman rm {} failed: {}", self.name, ran.stderr.trim()),
            Err(failure) => eprintln!("{failure}"),
        }
    }
}
