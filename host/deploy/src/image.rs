//! `taskflow deploy --image`: pushes a locally built image to the stack's
//! ECR repository (or `--registry`) with the machine's `podman` or `docker`,
//! and returns the reference the hosts run it by: `<repository>@<digest>`,
//! so a deploy runs exactly the bytes that were pushed, whatever happens to
//! tags later.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use taskflow_fs::out;

/// The longest a push may take before it is given up.
const PUSH_TIMEOUT: Duration = Duration::from_secs(1800);

/// A container tool on this machine.
#[derive(Debug, Clone)]
pub struct Tool {
    program: PathBuf,
    podman: bool,
}

impl Tool {
    /// `TASKFLOW_CONTAINER_TOOL`, else `podman`, else `docker`, from PATH.
    pub fn find() -> anyhow::Result<Self> {
        let wanted = std::env::var("TASKFLOW_CONTAINER_TOOL").ok();
        let candidates: Vec<&str> = match wanted.as_deref() {
            Some(tool) if !tool.is_empty() => vec![tool],
            _ => vec!["podman", "docker"],
        };
        for name in candidates {
            if let Some(program) = on_path(name) {
                let podman = program
                    .file_name()
                    .is_some_and(|f| f.to_string_lossy().contains("podman"));
                return Ok(Self { program, podman });
            }
        }
        bail!(
            "--image needs podman or docker on PATH to push the image (or TASKFLOW_CONTAINER_TOOL naming one)"
        )
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.stdin(Stdio::null());
        command
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    let direct = PathBuf::from(name);
    if direct.components().count() > 1 {
        return direct.is_file().then_some(direct);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// Where to push and how.
#[derive(Debug, Clone)]
pub struct Target {
    /// Repository, e.g. `123456789012.dkr.ecr.eu-west-1.amazonaws.com/taskflow`.
    pub repository: String,
    /// Speak plain HTTP / skip certificate checks (a local test registry).
    pub insecure: bool,
}

/// Pushes `image` to `target` and returns `<repository>@<digest>`.
pub async fn push(
    sdk: &aws_config::SdkConfig,
    tool: &Tool,
    image: &str,
    target: &Target,
) -> anyhow::Result<String> {
    let id = run_output(
        tool.command()
            .args(["image", "inspect", "--format", "{{.Id}}", image]),
        Duration::from_secs(60),
    )
    .with_context(|| {
        format!("there is no local image {image:?}: build it first (see README, On AWS)")
    })?;
    let short: String = id
        .trim()
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect();
    // Tags are immutable in the stack's repository: each push gets its own.
    let tag = format!("{}-{short}", chrono::Utc::now().format("%Y%m%d%H%M%S"));
    let destination = format!("{}:{tag}", target.repository);
    if is_ecr(&target.repository) {
        login_to_ecr(sdk, tool, &target.repository).await?;
    }
    out!("Pushing {image} to {destination}");
    let digest_file = tempfile::NamedTempFile::new().context("cannot make a temporary file")?;
    let mut push = tool.command();
    push.arg("push");
    if tool.podman {
        push.arg("--digestfile").arg(digest_file.path());
        if target.insecure {
            push.arg("--tls-verify=false");
        }
    }
    push.args([image, &destination]);
    let output = run_output(&mut push, PUSH_TIMEOUT)
        .with_context(|| format!("cannot push {image} to {destination}"))?;
    let digest = if tool.podman {
        std::fs::read_to_string(digest_file.path())
            .context("podman wrote no digest")?
            .trim()
            .to_string()
    } else {
        digest_in(&output).context("docker printed no digest for the push")?
    };
    if !digest.starts_with("sha256:") {
        bail!("the push reported {digest:?}, not a sha256 digest");
    }
    Ok(format!("{}@{digest}", target.repository))
}

fn is_ecr(repository: &str) -> bool {
    let host = repository.split('/').next().unwrap_or_default();
    host.contains(".dkr.ecr.") && host.contains(".amazonaws.com")
}

/// Logs the tool in to the ECR registry of `repository` with a token from
/// the SDK's credentials (valid 12 hours).
async fn login_to_ecr(
    sdk: &aws_config::SdkConfig,
    tool: &Tool,
    repository: &str,
) -> anyhow::Result<()> {
    let answer = aws_sdk_ecr::Client::new(sdk)
        .get_authorization_token()
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "ECR GetAuthorizationToken: {}",
                taskflow_aws::error_text(&e)
            )
        })?;
    let token = answer
        .authorization_data()
        .first()
        .and_then(|data| data.authorization_token())
        .context("ECR gave no authorization token")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token)
        .context("ECR's authorization token is not base64")?;
    let decoded = String::from_utf8(decoded).context("ECR's authorization token is not text")?;
    let (user, password) = decoded
        .split_once(':')
        .context("ECR's authorization token is not user:password")?;
    let registry = repository.split('/').next().unwrap_or_default();
    let mut login = tool.command();
    login
        .args(["login", "--username", user, "--password-stdin", registry])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = login.spawn().context("cannot run the container tool")?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write as _;
        stdin
            .write_all(password.as_bytes())
            .context("cannot hand the ECR password to the container tool")?;
    }
    let output = child
        .wait_with_output()
        .context("the container tool's login did not finish")?;
    if !output.status.success() {
        bail!(
            "cannot log in to {registry}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `command` to its end (killed after `limit`); returns its stdout
/// and stderr, or fails with the last lines of its stderr.
fn run_output(command: &mut Command, limit: Duration) -> anyhow::Result<String> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run the container tool")?;
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .context("cannot wait for the container tool")?
        {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the container tool took longer than {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    if !status.success() {
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(5)..].join(" / ");
        bail!("{tail} ({status})");
    }
    Ok(stdout + &stderr)
}

/// The `sha256:…` digest in docker's push output (`… digest: sha256:… size: …`).
fn digest_in(output: &str) -> Option<String> {
    output
        .split_whitespace()
        .find(|word| word.starts_with("sha256:") && word.len() == 71)
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecr_repositories_are_told_from_others() {
        assert!(is_ecr(
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com/taskflow"
        ));
        assert!(!is_ecr("127.0.0.1:5000/taskflow"));
        assert!(!is_ecr("ghcr.io/acme/taskflow"));
    }

    #[test]
    fn dockers_digest_line_is_read() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let output = format!("latest: digest: {digest} size: 1234\n");
        assert_eq!(digest_in(&output), Some(digest));
        assert_eq!(digest_in("no digest here"), None);
    }
}
