//! Backups: every task of a store in one timestamped JSON file, and restore
//! from such a file into any store.
//!
//! ```json
//! { "format": "taskflow-backup", "version": 1, "created_at": "…", "tasks": [ … ] }
//! ```

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;

use taskflow_backend::storage::{StorageError, TaskStore, blocking};
use taskflow_fs::write_atomic;
pub use taskflow_model::api::RestoreSummary;
use taskflow_model::attempt::{AttemptOutcome, RunLogs};
use taskflow_model::task::{Task, TaskStatus};

pub use taskflow_model::backup::{BACKUP_FORMAT, BACKUP_VERSION, parse_backup};

#[derive(Serialize)]
struct BackupFile<'a> {
    format: &'a str,
    version: u64,
    created_at: DateTime<Utc>,
    tasks: &'a [Task],
}

/// Writes every task of `store` into a new file
/// `<dir>/taskflow-backup-<UTC timestamp>.json` (creating `dir`), atomically
/// and durably, and returns its path.
///
/// Each task is copied as it was when read; tasks changing during the backup
/// may be copied before or after the change.
pub async fn backup(store: &dyn TaskStore, dir: &Path) -> Result<PathBuf, StorageError> {
    let tasks = store.all().await?;
    let created_at = Utc::now();
    let dir = dir.to_path_buf();
    blocking(move || {
        let bytes = encode_backup(&tasks, created_at)?;
        std::fs::create_dir_all(&dir).map_err(|source| StorageError::Io {
            action: "create",
            path: dir.clone(),
            source,
        })?;
        let stamp = created_at.format("%Y%m%dT%H%M%SZ");
        let mut path = dir.join(format!("{BACKUP_FORMAT}-{stamp}.json"));
        // Never overwrite an earlier backup taken within the same second.
        let mut n = 2;
        while path.exists() {
            path = dir.join(format!("{BACKUP_FORMAT}-{stamp}-{n}.json"));
            n += 1;
        }
        write_atomic(&path, &bytes, true).map_err(|source| StorageError::Io {
            action: "write",
            path: path.clone(),
            source,
        })?;
        Ok(path)
    })
    .await
}

/// Reads the tasks of a backup file, checking its format and version.
pub async fn read_backup(path: &Path) -> Result<Vec<Task>, StorageError> {
    let path = path.to_path_buf();
    blocking(move || {
        let bytes = std::fs::read(&path).map_err(|source| StorageError::Io {
            action: "read",
            path: path.clone(),
            source,
        })?;
        parse_backup(&bytes).map_err(|reason| StorageError::InvalidBackup { path, reason })
    })
    .await
}

/// Serialises `tasks` as a backup document (what a backup file holds, and
/// what `GET /admin/backup` returns).
pub fn encode_backup(tasks: &[Task], created_at: DateTime<Utc>) -> Result<Vec<u8>, StorageError> {
    let file = BackupFile {
        format: BACKUP_FORMAT,
        version: BACKUP_VERSION,
        created_at,
        tasks,
    };
    serde_json::to_vec(&file).map_err(|source| StorageError::Encode {
        what: "the backup".into(),
        source,
    })
}

/// A task as it is restored: one backed up while `running` comes back
/// `pending`, since its run was cut off; its history held to its bounds.
pub fn as_restored(mut task: Task) -> Task {
    task.bound_history();
    if task.status == TaskStatus::Running {
        task.status = TaskStatus::Pending;
        task.end_attempt(
            AttemptOutcome::Interrupted,
            None,
            RunLogs::default(),
            Utc::now(),
        );
    }
    task
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use taskflow_files::FileStore;
    use taskflow_model::task::{NewTask, TaskError, TaskOutput};
    use taskflow_runtime::FailureKind;

    use super::*;

    /// Tasks in every status with every optional field in use.
    fn varied_tasks() -> Vec<Task> {
        (0..12u64)
            .map(|sequence| {
                let new = NewTask {
                    plugin: format!("plugin-{}", sequence % 3),
                    payload: serde_json::json!({ "n": sequence, "nested": [1, "two", null] }),
                    priority: Some((sequence % 10) as u8 + 1),
                    max_attempts: Some(5),
                    timeout_ms: Some(1_000 + sequence),
                    idempotency_key: Some(format!("key-{sequence}")),
                };
                let mut task = new.validate(sequence).expect("valid");
                task.status = TaskStatus::ALL[sequence as usize % TaskStatus::ALL.len()];
                task.attempts = 2;
                task.started_at = Some(task.created_at + TimeDelta::milliseconds(3));
                task.finished_at = Some(task.created_at + TimeDelta::nanoseconds(123_456_789));
                task.retry_at = Some(task.created_at + TimeDelta::seconds(30));
                task.plugin_digest = Some(format!("sha256:{sequence:064x}"));
                task.last_error = Some(TaskError {
                    kind: FailureKind::Retryable,
                    message: "busy".into(),
                });
                task.result = Some(if sequence % 2 == 0 {
                    TaskOutput::Json(serde_json::json!({ "ok": sequence }))
                } else {
                    TaskOutput::Base64("/wA=".into())
                });
                task
            })
            .collect()
    }

    #[tokio::test]
    async fn backup_then_restore_round_trips_every_task() {
        let source_dir = tempfile::tempdir().expect("tempdir");
        let backup_dir = tempfile::tempdir().expect("tempdir");
        let target_dir = tempfile::tempdir().expect("tempdir");
        let source = FileStore::open(source_dir.path(), false)
            .await
            .expect("open source");
        let tasks = varied_tasks();
        for task in &tasks {
            source.save(task).await.expect("save");
        }

        let path = backup(&source, backup_dir.path()).await.expect("backup");
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("file name");
        assert!(
            name.starts_with("taskflow-backup-") && name.ends_with("Z.json"),
            "{name}"
        );
        let second = backup(&source, backup_dir.path())
            .await
            .expect("second backup");
        assert_ne!(second, path, "a second backup never overwrites the first");

        let read = read_backup(&path).await.expect("read backup");
        assert_eq!(read, tasks, "the file holds every task, every field");

        let target = FileStore::open(target_dir.path(), false)
            .await
            .expect("open target");
        for task in read {
            target.save(&as_restored(task)).await.expect("restore");
        }
        let expected: Vec<Task> = tasks.iter().cloned().map(as_restored).collect();
        assert!(expected.iter().all(|t| t.status != TaskStatus::Running));
        assert_eq!(target.all().await.expect("all"), expected);
    }

    #[tokio::test]
    async fn files_that_are_not_backups_are_rejected_clearly() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (content, says) in [
            (
                r#"{"format":"other-tool","version":1,"tasks":[]}"#,
                "format is \"other-tool\"",
            ),
            (r#"{"version":1,"tasks":[]}"#, "no \"format\" field"),
            (
                r#"{"format":"taskflow-backup","version":2,"tasks":[]}"#,
                "version is 2",
            ),
            (
                r#"{"format":"taskflow-backup","version":1}"#,
                "no \"tasks\" array",
            ),
            (
                r#"{"format":"taskflow-backup","version":1,"tasks":[{"id":"x"}]}"#,
                "task #0 is invalid",
            ),
            (r#"[1, 2]"#, "expected a JSON object"),
            ("not json", "not valid JSON"),
        ] {
            let path = dir.path().join("input.json");
            std::fs::write(&path, content).expect("write");
            let err = read_backup(&path).await.expect_err("not a backup");
            assert!(matches!(err, StorageError::InvalidBackup { .. }), "{err:?}");
            let message = err.to_string();
            assert!(
                message.contains(says) && message.contains("input.json"),
                "{message}"
            );
        }
        let missing = read_backup(&dir.path().join("missing.json"))
            .await
            .expect_err("missing file");
        assert!(matches!(missing, StorageError::Io { action: "read", .. }));
    }
}
