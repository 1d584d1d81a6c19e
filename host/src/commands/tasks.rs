//! The task commands: `submit` (one, or a JSON-lines file in batches),
//! `list` and `logs`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use taskflow_client::Client;
use taskflow_fs::out;
use taskflow_model::attempt::{Attempt, AttemptOutcome};
use taskflow_model::task::{NewTask, TaskStatus};

use super::{ServerArgs, print_json, spinner};

/// `taskflow submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Plugin to run (not used with --file).
    #[arg(required_unless_present = "file")]
    pub plugin: Option<String>,
    /// JSON payload.
    #[arg(long, short, default_value = "null")]
    pub payload: String,
    /// Priority, 1 (highest) to 10.
    #[arg(long)]
    pub priority: Option<u8>,
    /// Attempts before the task fails.
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Timeout of one attempt in milliseconds.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Idempotency key.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Wait until the task finishes and print it.
    #[arg(long)]
    pub wait: bool,
    /// Submit every task of a JSON-lines file (one `{"plugin": …}` per line), in batches.
    #[arg(long, conflicts_with_all = ["plugin", "wait"])]
    pub file: Option<PathBuf>,
}

/// `taskflow list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this status.
    #[arg(long)]
    pub status: Option<TaskStatus>,
    /// Only this plugin.
    #[arg(long)]
    pub plugin: Option<String>,
    /// Only this priority (1 highest to 10).
    #[arg(long)]
    pub priority: Option<u8>,
    /// Only tasks whose latest attempt ran on this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Only tasks whose latest attempt failed this way (e.g. timeout, trap).
    #[arg(long)]
    pub error_kind: Option<String>,
    /// Only tasks submitted at or after this time (RFC 3339).
    #[arg(long)]
    pub submitted_after: Option<String>,
    /// Only tasks submitted before this time (RFC 3339).
    #[arg(long)]
    pub submitted_before: Option<String>,
    /// Only the task submitted with this idempotency key.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Tasks to show.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
}

/// `taskflow logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Task id.
    pub id: String,
    /// Keep printing the plugin's lines as it logs them (stdout and stderr
    /// as each attempt ends), until the task is finished.
    #[arg(long, short)]
    pub follow: bool,
    /// Print the logs as JSON (`GET /tasks/{id}/logs`) instead.
    #[arg(long, conflicts_with = "follow")]
    pub json: bool,
}

/// How often `logs --follow` asks.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// Tasks per request when submitting a file.
const SUBMIT_BATCH: usize = 500;

/// `taskflow submit`: one task (and, with `--wait`, its outcome), or every
/// task of a file.
pub async fn submit(args: SubmitArgs, server: &ServerArgs) -> anyhow::Result<()> {
    let client = server.client().await?;
    if let Some(file) = args.file {
        return submit_file(&client, &file).await;
    }
    let payload = serde_json::from_str(&args.payload).context("--payload is not valid JSON")?;
    let new = NewTask {
        plugin: args.plugin.unwrap_or_default(),
        payload,
        priority: args.priority,
        max_attempts: args.max_attempts,
        timeout_ms: args.timeout_ms,
        idempotency_key: args.idempotency_key,
    };
    let task = client.submit(&new).await?;
    if !args.wait {
        return print_json(&task);
    }
    let spinner = spinner(format!("waiting for task {}", task.id));
    loop {
        let view = client.get(&task.id.to_string()).await?;
        if view.task.status.is_terminal() {
            spinner.finish_and_clear();
            return print_json(&view);
        }
        if let Some(progress) = view.progress {
            spinner.set_message(format!("task {} running: {progress}%", task.id));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn submit_file(client: &Client, file: &std::path::Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut tasks = Vec::new();
    for (number, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let task: NewTask = serde_json::from_str(line).with_context(|| {
            format!(
                "{}:{}: not a task (expected {{\"plugin\": …, \"payload\": …}})",
                file.display(),
                number + 1
            )
        })?;
        tasks.push(task);
    }
    if tasks.is_empty() {
        bail!("{} holds no tasks", file.display());
    }
    let bar = ProgressBar::new(tasks.len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} tasks submitted ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let total = tasks.len();
    for chunk in tasks.chunks(SUBMIT_BATCH) {
        let accepted = client.submit_batch(chunk.to_vec()).await?;
        bar.inc(accepted.len() as u64);
    }
    bar.finish();
    out!("submitted {total} tasks");
    Ok(())
}

/// `taskflow list`: a line per task.
pub async fn list(args: ListArgs, server: &ServerArgs) -> anyhow::Result<()> {
    let mut query = vec![("limit", args.limit.to_string())];
    if let Some(status) = args.status {
        query.push(("status", status.to_string()));
    }
    let filters = [
        ("plugin", args.plugin),
        ("priority", args.priority.map(|p| p.to_string())),
        ("host", args.host),
        ("error_kind", args.error_kind),
        ("submitted_after", args.submitted_after),
        ("submitted_before", args.submitted_before),
        ("idempotency_key", args.idempotency_key),
    ];
    query.extend(
        filters
            .into_iter()
            .filter_map(|(name, value)| value.map(|v| (name, v))),
    );
    let page = server.client().await?.list(&query).await?;
    for task in &page.tasks {
        out!(
            "{}  {:<9}  p{:<2}  {}",
            task.id,
            task.status,
            task.priority,
            task.plugin
        );
    }
    if page.next_cursor.is_some() {
        out!("… more: raise --limit");
    }
    Ok(())
}

/// `taskflow logs`: each attempt's header, then its lines; with `--follow`,
/// what each later poll adds, until the task is finished.
pub async fn logs(args: LogsArgs, server: &ServerArgs) -> anyhow::Result<()> {
    let id = super::task_id(&args.id)?;
    let client = server.client().await?;
    if args.json {
        return print_json(&client.logs(&id).await?);
    }
    // Per attempt number: the outcome its header showed and how many of its
    // lines were printed or passed over.
    let mut printed: std::collections::BTreeMap<u32, (Option<AttemptOutcome>, usize)> =
        Default::default();
    loop {
        let logs = client.logs(&id).await?;
        for attempt in &logs.history {
            let (shown, lines) = printed.entry(attempt.number).or_default();
            if shown.is_none() {
                out!("{}", attempt_header(attempt));
                *shown = Some(attempt.outcome);
            }
            // While it runs, the newest lines come, after `logs_skipped`
            // earlier ones: a follower that fell behind says what it missed.
            let first = attempt.logs_skipped as usize;
            if first > *lines {
                out!(
                    "… {} lines not shown here: `taskflow logs {id}` has them once the attempt ends",
                    first - *lines
                );
                *lines = first;
            }
            for line in attempt.logs.iter().skip(*lines - first) {
                let level = line.level.map_or(line.stream.as_str(), |l| l.as_str());
                out!(
                    "{}  {:<6} {}",
                    line.at.format("%H:%M:%S%.3f"),
                    level,
                    printable(&line.message)
                );
            }
            *lines = (*lines).max(first + attempt.logs.len());
            if *shown == Some(AttemptOutcome::Running) && attempt.outcome != AttemptOutcome::Running
            {
                // Followed while it ran: now how it ended.
                out!("{}", attempt_header(attempt));
                *shown = Some(attempt.outcome);
            }
        }
        let running = logs
            .history
            .last()
            .is_some_and(|a| a.outcome == AttemptOutcome::Running);
        if !args.follow || (logs.status.is_terminal() && !running) {
            if logs.history.is_empty() {
                out!("task {id} is {} and has no attempt yet", logs.status);
            }
            return Ok(());
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}

/// `attempt 2 · failed · host-a · 12 ms · plugin 3f2a… · retryable: message`.
fn attempt_header(attempt: &Attempt) -> String {
    let mut header = format!(
        "── attempt {} · {} · {} · started {}",
        attempt.number,
        attempt.outcome,
        printable(&attempt.host),
        attempt.started_at.format("%Y-%m-%d %H:%M:%S%.3f UTC")
    );
    if let Some(duration) = attempt.duration() {
        header.push_str(&format!(" · {} ms", duration.num_milliseconds()));
    }
    if let Some(digest) = &attempt.plugin_digest {
        header.push_str(&format!(
            " · plugin {}",
            digest.chars().take(12).collect::<String>()
        ));
    }
    if let Some(error) = &attempt.error {
        header.push_str(&format!(" · {}: {}", error.kind, printable(&error.message)));
    }
    if attempt.logs_dropped > 0 {
        header.push_str(&format!(" · {} lines dropped", attempt.logs_dropped));
    }
    header
}

/// A plugin's text with control characters escaped, so it cannot drive the
/// terminal (colours, cursor moves, a cleared screen).
fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escape = c.is_control() && c != '\t';
            let shown: Vec<char> = if escape {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            shown
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn plugin_text_cannot_drive_the_terminal() {
        assert_eq!(printable("ok\x1b[2Jgone\r"), "ok\\u{1b}[2Jgone\\r");
        assert_eq!(printable("tab\tand ünïcode"), "tab\tand ünïcode");
    }
}
