//! The backup document, as `GET /admin/backup` sends it, `taskflow backup`
//! saves it and `POST /admin/restore` takes it back:
//!
//! ```json
//! { "format": "taskflow-backup", "version": 1, "created_at": "…", "tasks": [ … ] }
//! ```

use serde_json::Value;

use crate::task::Task;

/// The `format` field of every backup file.
pub const BACKUP_FORMAT: &str = "taskflow-backup";
/// The backup format version this build writes and reads.
pub const BACKUP_VERSION: u64 = 1;

/// Parses a backup document, checking its format and version; the error
/// says what is wrong with it.
pub fn parse_backup(bytes: &[u8]) -> Result<Vec<Task>, String> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("it is not valid JSON ({e})"))?;
    let Value::Object(mut file) = value else {
        return Err("expected a JSON object with \"format\", \"version\" and \"tasks\"".into());
    };
    match file.get("format").and_then(Value::as_str) {
        Some(BACKUP_FORMAT) => {}
        Some(other) => {
            return Err(format!(
                "its format is {other:?}, expected {BACKUP_FORMAT:?}"
            ));
        }
        None => {
            return Err(format!(
                "it has no \"format\" field; a backup has \"format\": {BACKUP_FORMAT:?}"
            ));
        }
    }
    match file.get("version").and_then(Value::as_u64) {
        Some(BACKUP_VERSION) => {}
        Some(other) => {
            return Err(format!(
                "its version is {other}; this TaskFlow reads version {BACKUP_VERSION}, so use a matching TaskFlow"
            ));
        }
        None => return Err("it has no numeric \"version\" field".into()),
    }
    let Some(Value::Array(tasks)) = file.remove("tasks") else {
        return Err("it has no \"tasks\" array".into());
    };
    tasks
        .into_iter()
        .enumerate()
        .map(|(position, task)| {
            serde_json::from_value(task).map_err(|e| format!("task #{position} is invalid: {e}"))
        })
        .collect()
}
