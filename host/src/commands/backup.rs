//! `backup` and `restore`: every task of a server in one file, and back.

use std::path::PathBuf;

use anyhow::Context;
use taskflow_fs::out;

use super::{ServerArgs, spinner};

/// `taskflow backup`: downloads the server's backup into a file.
pub async fn backup(output: Option<PathBuf>, server: &ServerArgs) -> anyhow::Result<()> {
    let spinner = spinner("downloading backup".into());
    let document = server.admin_client().await?.backup().await?;
    let tasks = taskflow_model::backup::parse_backup(&document)
        .map_err(|reason| anyhow::anyhow!("the server sent an invalid backup: {reason}"))?;
    let path = output.unwrap_or_else(|| {
        PathBuf::from(format!(
            "taskflow-backup-{}.json",
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
        ))
    });
    taskflow_fs::write_atomic(&path, &document, true)
        .with_context(|| format!("cannot write {}", path.display()))?;
    spinner.finish_and_clear();
    out!("backed up {} tasks to {}", tasks.len(), path.display());
    Ok(())
}

/// `taskflow restore`: sends a backup file to the server.
pub async fn restore(file: PathBuf, server: &ServerArgs) -> anyhow::Result<()> {
    let document =
        std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let tasks = taskflow_model::backup::parse_backup(&document)
        .map_err(|reason| anyhow::anyhow!("{} is not a valid backup: {reason}", file.display()))?;
    let spinner = spinner(format!("restoring {} tasks", tasks.len()));
    let summary = server.admin_client().await?.restore(document).await?;
    spinner.finish_and_clear();
    out!(
        "restored {} tasks ({} queued, {} left alone because they are live here)",
        summary.restored,
        summary.queued,
        summary.skipped
    );
    Ok(())
}
