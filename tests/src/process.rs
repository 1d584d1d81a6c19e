//! The real `taskflow` binary as child processes: hosts, and CLI runs.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{poll_json, taskflow_binary};

/// How long a host process gets to start or stop.
pub const LONG: Duration = Duration::from_secs(120);

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A `taskflow serve` child process, killed when dropped.
pub struct HostProcess {
    /// The child.
    pub child: Child,
    /// Its base URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
}

impl HostProcess {
    /// `taskflow serve` with two workers on `data`, listening on `port`.
    pub async fn start(data: &Path, port: u16) -> Self {
        Self::start_with(data, port, &[]).await
    }

    /// Like [`start`](Self::start), with extra `serve` arguments; a
    /// `--workers` among them replaces the default two (clap refuses a
    /// repeated flag).
    pub async fn start_with(data: &Path, port: u16, extra: &[&str]) -> Self {
        let mut serve = Command::new(taskflow_binary());
        serve.args(["serve", "--log-format", "json"]);
        if !extra
            .iter()
            .any(|arg| *arg == "--workers" || arg.starts_with("--workers="))
        {
            serve.args(["--workers", "2"]);
        }
        serve.arg("--data-dir").arg(data).args(extra);
        Self::launch(serve, port).await
    }

    /// `taskflow serve` on shared backends: PostgreSQL at `database_url` as
    /// the store, `queue` (`postgres`, or `sqs` with the emulator's
    /// environment) as the queue, plus `extra` arguments.
    pub async fn start_shared(
        data: &Path,
        database_url: &str,
        queue: &str,
        extra: &[&str],
    ) -> Self {
        let env = if queue == "sqs" {
            crate::aws::host_env()
        } else {
            Vec::new()
        };
        Self::start_shared_with(data, database_url, queue, extra, &env).await
    }

    /// Like [`start_shared`](Self::start_shared), with `env` (e.g. another
    /// emulator's) instead of the test emulator's.
    pub async fn start_shared_with(
        data: &Path,
        database_url: &str,
        queue: &str,
        extra: &[&str],
        env: &[(String, String)],
    ) -> Self {
        let serve = Self::shared(data, database_url, queue, extra, env);
        Self::launch(serve, free_port()).await
    }

    /// Like [`start_shared_with`](Self::start_shared_with), its JSON log
    /// (warnings and errors, which include what plugins log at warn) written
    /// into `log`.
    pub async fn start_shared_logging(
        data: &Path,
        database_url: &str,
        queue: &str,
        extra: &[&str],
        env: &[(String, String)],
        log: &Path,
    ) -> Self {
        let serve = Self::shared(data, database_url, queue, extra, env);
        let file = std::fs::File::create(log).expect("create log file");
        Self::spawn(serve, free_port(), "warn", Stdio::from(file)).await
    }

    fn shared(
        data: &Path,
        database_url: &str,
        queue: &str,
        extra: &[&str],
        env: &[(String, String)],
    ) -> Command {
        let mut serve = Command::new(taskflow_binary());
        serve
            .args([
                "serve",
                "--log-format",
                "json",
                "--storage",
                "postgres",
                "--database-url",
                database_url,
            ])
            .args(["--queue", queue])
            .args(extra)
            .arg("--data-dir")
            .arg(data)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        serve
    }

    /// Runs `serve` (its settings but the address) on `port`; returns once it answers.
    pub async fn launch(serve: Command, port: u16) -> Self {
        Self::spawn(serve, port, "warn", Stdio::null()).await
    }

    /// Like [`start`](Self::start), logging at `info` as JSON into `log`.
    pub async fn start_logging(data: &Path, port: u16, log: &Path) -> Self {
        let mut serve = Command::new(taskflow_binary());
        serve
            .args(["serve", "--workers", "2", "--log-format", "json"])
            .arg("--data-dir")
            .arg(data);
        let file = std::fs::File::create(log).expect("create log file");
        Self::spawn(serve, port, "info", Stdio::from(file)).await
    }

    async fn spawn(mut serve: Command, port: u16, level: &str, logs: Stdio) -> Self {
        let child = serve
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", level)
            .stdout(logs)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn taskflow serve");
        let url = format!("http://127.0.0.1:{port}");
        poll_json(
            &reqwest::Client::new(),
            &format!("{url}/health"),
            LONG,
            |body| body["status"] == "ok",
        )
        .await;
        Self { child, url }
    }

    /// SIGKILL, and wait until it is gone.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    /// Sends a signal (`"TERM"`, `"STOP"`, `"CONT"`, …) without waiting.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name}");
    }

    /// SIGTERM, then waits (bounded) for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + LONG;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "host did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET /stats`.
    pub async fn stats(&self, client: &reqwest::Client) -> Value {
        client
            .get(format!("{}/stats", self.url))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("json")
    }
}

/// Which of `hosts` (`None`: one stopped) ran `task`, a task's JSON whose
/// `host` names its runner; panics if none of them did.
pub async fn runner_of(
    client: &reqwest::Client,
    hosts: &[Option<&HostProcess>],
    task: &Value,
) -> usize {
    for (index, host) in hosts.iter().enumerate() {
        if let Some(host) = host
            && host.stats(client).await["host"]["name"] == task["host"]
        {
            return index;
        }
    }
    panic!("the task names no host of the fleet: {task}");
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one CLI run did.
#[derive(Debug)]
pub struct CliRun {
    /// It exited 0.
    pub ok: bool,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// Runs `taskflow <args>` with `TASKFLOW_SERVER=url` (when given) and no input.
pub fn cli(url: Option<&str>, args: &[&str]) -> CliRun {
    cli_env(url, &[], args)
}

/// Like [`cli`], with extra environment variables (e.g. `TASKFLOW_TOKEN`).
/// A run is stopped after two minutes (`timeout`), as every child of the
/// tests is bounded.
pub fn cli_env(url: Option<&str>, env: &[(&str, &str)], args: &[&str]) -> CliRun {
    let mut command = Command::new("timeout");
    command
        .args(["--kill-after=10", "120"])
        .arg(taskflow_binary())
        .args(args)
        .stdin(Stdio::null())
        .env_remove("TASKFLOW_SERVER")
        .env_remove("TASKFLOW_TOKEN");
    if let Some(url) = url {
        command.env("TASKFLOW_SERVER", url);
    }
    command.envs(env.iter().copied());
    let output = command.output().expect("run taskflow");
    CliRun {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
