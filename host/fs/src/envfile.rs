//! `.env` files: `taskflow` reads one at start (settings of the environment
//! win over the file's), and `taskflow deploy` writes a stack's settings into
//! one, leaving every line it does not own as it was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The file read when `--env-file` names none, if it exists.
pub const DEFAULT: &str = ".env";

/// A `.env` file that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum EnvFileError {
    /// The file named with `--env-file` is not there.
    #[error("the env file {0} does not exist")]
    Missing(PathBuf),
    /// A line the parser refused.
    #[error("cannot read the env file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its line.
        message: String,
    },
    /// Reading, writing or backing up failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// Sets the variables of `path` (or of `.env`, when it exists and no path
/// was named) that the environment does not already have; returns their
/// names. Call it before any thread starts: it changes the process's
/// environment.
pub fn load(path: Option<&Path>) -> Result<Vec<String>, EnvFileError> {
    let path = match path {
        Some(path) if !path.exists() => return Err(EnvFileError::Missing(path.to_path_buf())),
        Some(path) => path,
        None if Path::new(DEFAULT).is_file() => Path::new(DEFAULT),
        None => return Ok(Vec::new()),
    };
    let parse_error = |error: dotenvy::Error| EnvFileError::Parse {
        path: path.to_path_buf(),
        message: error.to_string(),
    };
    let mut loaded = Vec::new();
    for item in dotenvy::from_path_iter(path).map_err(parse_error)? {
        let (key, _) = item.map_err(parse_error)?;
        if std::env::var_os(&key).is_none() {
            loaded.push(key);
        }
    }
    // dotenvy never overrides a variable that is already set.
    dotenvy::from_path(path).map_err(parse_error)?;
    Ok(loaded)
}

/// What [`merge`] did.
#[derive(Debug, PartialEq, Eq)]
pub struct Merged {
    /// Where the previous content was copied, if there was a file.
    pub backup: Option<PathBuf>,
    /// Keys whose lines were replaced.
    pub replaced: Vec<String>,
    /// Keys appended.
    pub added: Vec<String>,
}

/// Writes `settings` into the env file at `path`: a line setting one of the
/// keys gets the new value in place, keys the file lacks are appended under
/// `header` (a comment), every other line stays as it was. The previous
/// file is kept as `<path>.bak`.
pub fn merge(
    path: &Path,
    settings: &BTreeMap<String, String>,
    header: &str,
) -> Result<Merged, EnvFileError> {
    let old = read(path)?;
    let mut replaced = Vec::new();
    let mut lines: Vec<String> = old
        .as_deref()
        .unwrap_or_default()
        .lines()
        .map(
            |line| match key_of(line).and_then(|key| settings.get_key_value(key)) {
                Some((key, value)) => {
                    if !replaced.contains(key) {
                        replaced.push(key.clone());
                    }
                    let export = if line.trim_start().starts_with("export ") {
                        "export "
                    } else {
                        ""
                    };
                    format!("{export}{key}={}", quote(value))
                }
                None => line.to_string(),
            },
        )
        .collect();
    let added: Vec<String> = settings
        .keys()
        .filter(|key| !replaced.contains(key))
        .cloned()
        .collect();
    if !added.is_empty() {
        if lines.last().is_some_and(|line| !line.trim().is_empty()) {
            lines.push(String::new());
        }
        lines.push(format!("# {header}"));
        lines.extend(
            added
                .iter()
                .map(|key| format!("{key}={}", quote(&settings[key]))),
        );
    }
    let backup = write(path, old.as_deref(), &lines)?;
    Ok(Merged {
        backup,
        replaced,
        added,
    })
}

/// Removes the lines that set one of `settings`' keys to exactly its value
/// (a value someone changed since stays), and the comments [`merge`] wrote
/// that start with `header`; returns the keys removed. The previous file
/// is kept as `<path>.bak`.
pub fn remove(
    path: &Path,
    settings: &BTreeMap<String, String>,
    header: &str,
) -> Result<(Vec<String>, Option<PathBuf>), EnvFileError> {
    let Some(old) = read(path)? else {
        return Ok((Vec::new(), None));
    };
    let values = parsed_values(path, &old)?;
    let mut removed = Vec::new();
    let lines: Vec<String> = old
        .lines()
        .filter(|line| {
            let owned = key_of(line).is_some_and(|key| {
                settings
                    .get(key)
                    .is_some_and(|value| values.get(key) == Some(value))
            });
            if owned && let Some(key) = key_of(line) {
                removed.push(key.to_string());
            }
            !owned
                && !line
                    .strip_prefix("# ")
                    .is_some_and(|c| c.starts_with(header))
        })
        .map(str::to_string)
        .collect();
    if removed.is_empty() {
        return Ok((removed, None));
    }
    let backup = write(path, Some(&old), &lines)?;
    Ok((removed, backup))
}

/// The file's text, or `None` when there is no file.
fn read(path: &Path) -> Result<Option<String>, EnvFileError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(EnvFileError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The values the file sets, as a loader would read them.
fn parsed_values(path: &Path, text: &str) -> Result<BTreeMap<String, String>, EnvFileError> {
    dotenvy::from_read_iter(text.as_bytes())
        .map(|item| {
            item.map_err(|error| EnvFileError::Parse {
                path: path.to_path_buf(),
                message: error.to_string(),
            })
        })
        .collect()
}

/// Backs up the previous content, if any, then writes `lines` atomically.
fn write(
    path: &Path,
    old: Option<&str>,
    lines: &[String],
) -> Result<Option<PathBuf>, EnvFileError> {
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| EnvFileError::Io {
            action,
            path,
            source,
        }
    };
    let backup = match old {
        Some(old) => {
            let mut name = path.as_os_str().to_os_string();
            name.push(".bak");
            let backup = PathBuf::from(name);
            crate::write_atomic(&backup, old.as_bytes(), false)
                .map_err(io("back up the env file to", &backup))?;
            Some(backup)
        }
        None => None,
    };
    let mut text = lines.join("\n");
    text.push('\n');
    crate::write_atomic(path, text.as_bytes(), false).map_err(io("write", path))?;
    Ok(backup)
}

/// The key a line sets (`KEY=…` or `export KEY=…`), if it sets one.
fn key_of(line: &str) -> Option<&str> {
    let line = line.trim_start();
    let line = line.strip_prefix("export ").map_or(line, str::trim_start);
    let (key, _) = line.split_once('=')?;
    let key = key.trim_end();
    let valid = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    valid.then_some(key)
}

/// A value as a line of the file: bare when it is plain, else single-quoted
/// (read back literally).
fn quote(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:@,+%?&=".contains(c));
    if plain {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn merge_replaces_owned_keys_in_place_keeps_the_rest_and_backs_up() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(".env");
        let before = "# mine\nTASKFLOW_DATABASE_URL=postgres://me@db/x\nexport TASKFLOW_S3_BUCKET=old\nOTHER='a b'\n";
        std::fs::write(&path, before)?;
        let merged = merge(
            &path,
            &settings(&[
                ("TASKFLOW_S3_BUCKET", "new-bucket"),
                ("TASKFLOW_QUEUE", "sqs"),
            ]),
            "from stack s",
        )?;
        assert_eq!(merged.replaced, ["TASKFLOW_S3_BUCKET"]);
        assert_eq!(merged.added, ["TASKFLOW_QUEUE"]);
        assert_eq!(
            std::fs::read_to_string(dir.path().join(".env.bak"))?,
            before
        );
        assert_eq!(
            std::fs::read_to_string(&path)?,
            "# mine\nTASKFLOW_DATABASE_URL=postgres://me@db/x\nexport TASKFLOW_S3_BUCKET=new-bucket\nOTHER='a b'\n\n# from stack s\nTASKFLOW_QUEUE=sqs\n"
        );
        // What dotenvy reads back is what was written.
        let values = parsed_values(&path, &std::fs::read_to_string(&path)?)?;
        assert_eq!(values["OTHER"], "a b");
        assert_eq!(values["TASKFLOW_S3_BUCKET"], "new-bucket");
        Ok(())
    }

    #[test]
    fn merge_into_no_file_writes_one_without_a_backup() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(".env");
        let merged = merge(&path, &settings(&[("A", "it's here")]), "h")?;
        assert_eq!(merged.backup, None);
        let values = parsed_values(&path, &std::fs::read_to_string(&path)?)?;
        assert_eq!(values["A"], "it's here");
        assert!(!dir.path().join(".env.bak").exists());
        Ok(())
    }

    #[test]
    fn remove_takes_only_lines_still_holding_the_value_written() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(".env");
        std::fs::write(&path, "# From stack x\nA=1\nB=changed\nC=3\n")?;
        let (removed, backup) = remove(&path, &settings(&[("A", "1"), ("B", "2")]), "From stack")?;
        assert_eq!(removed, ["A"]);
        assert!(backup.is_some());
        assert_eq!(std::fs::read_to_string(&path)?, "B=changed\nC=3\n");
        Ok(())
    }

    #[test]
    fn key_of_reads_plain_and_exported_lines_only() {
        assert_eq!(key_of("A_1=x"), Some("A_1"));
        assert_eq!(key_of("  export  B = y"), Some("B"));
        assert_eq!(key_of("# C=z"), None);
        assert_eq!(key_of("1X=z"), None);
        assert_eq!(key_of(""), None);
    }
}
