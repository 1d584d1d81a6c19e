//! The file store's write-ahead journal.
//!
//! Every save and delete is appended here, many at a time (group commit),
//! before it is acknowledged; the task files are brought up to date later by
//! a checkpoint, which writes each changed task once however often it changed
//! and then drops the journal segments it covered. A task that goes
//! `pending → running → completed` in a fraction of a second costs three
//! appends to one open file and a single task-file write, instead of three
//! file creations and renames.
//!
//! A segment is a text file of records, one per line: `P <task JSON>` or
//! `D <task id>`. Compact JSON never contains a raw newline, so a line is a
//! record, and a crash can only tear the last line, which was never
//! acknowledged.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::StorageError;
use crate::task::TaskId;

/// Directory under the store root that holds the segments.
pub const JOURNAL_DIR: &str = "journal";

/// One change to the store.
#[derive(Debug, Clone)]
pub enum Record {
    /// The task's new state, as the JSON of its file.
    Put(Arc<[u8]>),
    /// The task was deleted.
    Delete(TaskId),
}

impl Record {
    /// Appends the record's line to `buf`.
    pub fn encode_into(&self, buf: &mut Vec<u8>) {
        match self {
            Self::Put(json) => {
                buf.extend_from_slice(b"P ");
                buf.extend_from_slice(json);
            }
            Self::Delete(id) => {
                buf.extend_from_slice(b"D ");
                buf.extend_from_slice(id.to_string().as_bytes());
            }
        }
        buf.push(b'\n');
    }

    fn decode(line: &[u8]) -> Option<Self> {
        match line.split_at_checked(2)? {
            (b"P ", json) => Some(Self::Put(json.into())),
            (b"D ", id) => std::str::from_utf8(id).ok()?.parse().ok().map(Self::Delete),
            _ => None,
        }
    }
}

/// The segment being appended to. Older segments are sealed: read at open,
/// deleted by the checkpoint that covers them.
pub struct Journal {
    dir: PathBuf,
    fsync: bool,
    file: File,
    number: u64,
    len: u64,
}

impl Journal {
    /// Opens a fresh segment numbered after every existing one, which the
    /// caller replays (see [`sealed_segments`]) before trusting the files.
    pub fn create(root: &Path, fsync: bool) -> Result<Self, StorageError> {
        let dir = root.join(JOURNAL_DIR);
        std::fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
        let next = sealed_segments(root)?.last().map_or(1, |(number, _)| number + 1);
        let file = open_segment(&dir, next, fsync)?;
        Ok(Self { dir, fsync, file, number: next, len: 0 })
    }

    /// Appends encoded records and, with fsync, waits until they are on disk.
    /// On failure the segment is cut back to where it was, so a failed batch
    /// never reappears at the next open.
    pub fn append(&mut self, records: &[u8]) -> Result<(), StorageError> {
        let written = self.file.write_all(records).and_then(|()| if self.fsync { self.file.sync_data() } else { Ok(()) });
        if let Err(e) = written {
            if let Err(cut) = self.file.set_len(self.len) {
                tracing::error!(error = %cut, segment = %self.path().display(), "cannot cut a failed append out of the journal");
            }
            return Err(io_error("append to", &self.path())(e));
        }
        self.len += records.len() as u64;
        Ok(())
    }

    /// Seals the current segment (when it holds anything) and starts the
    /// next. Every segment numbered below [`current`](Self::current) is then
    /// sealed.
    pub fn rotate(&mut self) -> Result<(), StorageError> {
        if self.len == 0 {
            return Ok(());
        }
        let next = self.number + 1;
        self.file = open_segment(&self.dir, next, self.fsync)?;
        self.number = next;
        self.len = 0;
        Ok(())
    }

    /// Number of the segment being appended to.
    pub fn current(&self) -> u64 {
        self.number
    }

    fn path(&self) -> PathBuf {
        segment_path(&self.dir, self.number)
    }
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}.log"))
}

fn open_segment(dir: &Path, number: u64, fsync: bool) -> Result<File, StorageError> {
    let path = segment_path(dir, number);
    let file = OpenOptions::new().append(true).create_new(true).open(&path).map_err(io_error("create", &path))?;
    if fsync {
        // The new directory entry must survive a crash too.
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_error("sync", dir))?;
    }
    Ok(file)
}

/// Every segment under `root`, oldest first.
pub fn sealed_segments(root: &Path) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let dir = root.join(JOURNAL_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("list", &dir)(e)),
    };
    let mut segments = Vec::new();
    for entry in entries {
        let path = entry.map_err(io_error("list", &dir))?.path();
        let number = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".log")).and_then(|n| n.parse().ok());
        if let Some(number) = number {
            segments.push((number, path));
        }
    }
    segments.sort();
    Ok(segments)
}

/// Deletes every segment numbered below `current`: their records are all in
/// the task files now.
pub fn drop_segments_before(root: &Path, current: u64) -> Result<(), StorageError> {
    for (number, path) in sealed_segments(root)? {
        if number < current {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("delete", &path)(e)),
            }
        }
    }
    Ok(())
}

/// Reads one segment's records in order. A line that is not a record is
/// logged and skipped; an unfinished last line is a write cut short by a
/// crash, never acknowledged, and is dropped.
pub fn read_segment(path: &Path, mut apply: impl FnMut(Record)) -> Result<(), StorageError> {
    let mut reader = BufReader::new(File::open(path).map_err(io_error("open", path))?);
    let mut line = Vec::new();
    for number in 1.. {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(io_error("read", path))? == 0 {
            break;
        }
        let Some(complete) = line.strip_suffix(b"\n") else {
            tracing::warn!(segment = %path.display(), line = number, "journal ends in a record cut short by a crash; it was never acknowledged and is dropped");
            break;
        };
        match Record::decode(complete) {
            Some(record) => apply(record),
            None => tracing::warn!(segment = %path.display(), line = number, "journal line is not a record; skipped"),
        }
    }
    Ok(())
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StorageError {
    let path = path.to_path_buf();
    move |source| StorageError::Io { action, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records_of(path: &Path) -> Vec<String> {
        let mut lines = Vec::new();
        read_segment(path, |record| {
            lines.push(match record {
                Record::Put(json) => String::from_utf8_lossy(&json).into_owned(),
                Record::Delete(id) => format!("delete {id}"),
            })
        })
        .expect("read segment");
        lines
    }

    #[test]
    fn records_round_trip_and_torn_or_foreign_lines_are_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut journal = Journal::create(dir.path(), false).expect("create");
        let id = TaskId::new();
        let mut buf = Vec::new();
        Record::Put(Arc::from(&br#"{"a":1}"#[..])).encode_into(&mut buf);
        Record::Delete(id).encode_into(&mut buf);
        buf.extend_from_slice(b"garbage\n");
        buf.extend_from_slice(b"P {\"torn\":");
        journal.append(&buf).expect("append");
        let segments = sealed_segments(dir.path()).expect("segments");
        assert_eq!(segments.len(), 1);
        assert_eq!(records_of(&segments[0].1), vec![r#"{"a":1}"#.to_owned(), format!("delete {id}")]);
    }

    #[test]
    fn rotation_seals_segments_and_a_new_journal_numbers_after_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut journal = Journal::create(dir.path(), true).expect("create");
        journal.rotate().expect("rotating an empty segment");
        assert_eq!(journal.current(), 1, "an empty segment is not sealed");
        journal.append(b"D 3f2b8c1e-8d4a-4c7e-9f1a-2b3c4d5e6f70\n").expect("append");
        journal.rotate().expect("rotate");
        assert_eq!(journal.current(), 2);
        drop(journal);

        let reopened = Journal::create(dir.path(), false).expect("reopen");
        assert_eq!(reopened.current(), 3);
        drop_segments_before(dir.path(), 3).expect("drop");
        let left: Vec<u64> = sealed_segments(dir.path()).expect("segments").into_iter().map(|(n, _)| n).collect();
        assert_eq!(left, vec![3]);
    }
}
