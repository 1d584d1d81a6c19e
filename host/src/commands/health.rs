//! `health`: the container image's health check.

use std::time::Duration;

use anyhow::bail;
use clap::Args;
use taskflow_fs::out;

/// `taskflow health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// URL to check [default: /health on TASKFLOW_LISTEN's port, on this machine].
    #[arg(long)]
    pub url: Option<String>,
    /// The address the host listens on.
    #[arg(long, env = "TASKFLOW_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
}

/// How long `taskflow health` waits for the answer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /health` of the host on this machine (a host listening on every
/// address is asked on loopback); a failure is one line.
pub async fn health(args: HealthArgs) -> anyhow::Result<()> {
    let url = args.url.unwrap_or_else(|| {
        let mut address = args.listen;
        if address.ip().is_unspecified() {
            address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{address}/health")
    });
    let response = reqwest::Client::builder()
        .timeout(HEALTH_TIMEOUT)
        .build()?
        .get(&url)
        .send()
        .await
        .map_err(|error| {
            anyhow::Error::new(error.without_url()).context(format!("{url}: no answer"))
        })?;
    if response.status() != reqwest::StatusCode::OK {
        bail!("{url} answered {}", response.status());
    }
    out!("ok: {url}");
    Ok(())
}
