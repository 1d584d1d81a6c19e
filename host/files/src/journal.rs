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
//! record. A crash can tear the last line of a segment, which was never
//! acknowledged; replay drops it.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use taskflow_backend::storage::{StorageError, io_error};
use taskflow_model::task::TaskId;

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
    /// A failed append could not be cut back out: the segment ends in a
    /// fragment, and the next append goes to a new segment.
    broken: bool,
}

impl Journal {
    /// Opens a fresh segment numbered after every existing one, which the
    /// caller replays (see [`sealed_segments`]) before trusting the files.
    pub fn create(root: &Path, fsync: bool) -> Result<Self, StorageError> {
        let dir = root.join(JOURNAL_DIR);
        std::fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
        let next = sealed_segments(root)?
            .last()
            .map_or(1, |(number, _)| number + 1);
        let file = open_segment(&dir, next, fsync)?;
        Ok(Self {
            dir,
            fsync,
            file,
            number: next,
            len: 0,
            broken: false,
        })
    }

    /// Appends encoded records and, with fsync, waits until they are on disk.
    /// On failure the segment is cut back to where it was, so that a refused
    /// batch does not come back at the next open (unless the host dies
    /// before the cut).
    pub fn append(&mut self, records: &[u8]) -> Result<(), StorageError> {
        if self.broken {
            self.start_next()?;
        }
        let written = self.file.write_all(records).and_then(|()| {
            if self.fsync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            if let Err(cut) = self.file.set_len(self.len) {
                // Appending after the fragment would glue the next record to
                // it; its replay stops at the fragment, the segment's end.
                tracing::error!(error = %cut, segment = %self.path().display(), "cannot cut a failed append out of the journal; starting a new segment");
                self.broken = true;
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
        if self.len == 0 && !self.broken {
            return Ok(());
        }
        self.start_next()
    }

    fn start_next(&mut self) -> Result<(), StorageError> {
        let next = self.number + 1;
        self.file = open_segment(&self.dir, next, self.fsync)?;
        self.number = next;
        self.len = 0;
        self.broken = false;
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
    let file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&path)
        .map_err(io_error("create", &path))?;
    if fsync && let Err(e) = sync_dir(dir) {
        // Gone again, so that the next attempt can create it.
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(file)
}

/// Makes the creation or removal of files in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("sync", dir))
}

/// Every segment under `root`, oldest first, the open one included.
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
        let number = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse().ok());
        if let Some(number) = number {
            segments.push((number, path));
        }
    }
    segments.sort();
    Ok(segments)
}

/// Deletes every segment numbered below `first_kept`. The caller makes sure
/// that no record in them is needed any more. With `fsync`, the deletions
/// are made durable, so that an old segment never outlives a newer one.
pub fn drop_segments_before(root: &Path, first_kept: u64, fsync: bool) -> Result<(), StorageError> {
    let mut dropped = false;
    for (number, path) in sealed_segments(root)? {
        if number < first_kept {
            match std::fs::remove_file(&path) {
                Ok(()) => dropped = true,
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("delete", &path)(e)),
            }
        }
    }
    if fsync && dropped {
        sync_dir(&root.join(JOURNAL_DIR))?;
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
        if reader
            .read_until(b'\n', &mut line)
            .map_err(io_error("read", path))?
            == 0
        {
            break;
        }
        let Some(complete) = line.strip_suffix(b"\n") else {
            tracing::warn!(segment = %path.display(), line = number, "journal ends in a record cut short by a crash; it was never acknowledged and is dropped");
            break;
        };
        match Record::decode(complete) {
            Some(record) => apply(record),
            None => {
                tracing::warn!(segment = %path.display(), line = number, "journal line is not a record; skipped")
            }
        }
    }
    Ok(())
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
        assert_eq!(
            records_of(&segments[0].1),
            vec![r#"{"a":1}"#.to_owned(), format!("delete {id}")]
        );
    }

    #[test]
    fn rotation_seals_segments_and_a_new_journal_numbers_after_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut journal = Journal::create(dir.path(), true).expect("create");
        journal.rotate().expect("rotating an empty segment");
        assert_eq!(journal.current(), 1, "an empty segment is not sealed");
        journal
            .append(b"D 3f2b8c1e-8d4a-4c7e-9f1a-2b3c4d5e6f70\n")
            .expect("append");
        journal.rotate().expect("rotate");
        assert_eq!(journal.current(), 2);
        drop(journal);

        let reopened = Journal::create(dir.path(), false).expect("reopen");
        assert_eq!(reopened.current(), 3);
        drop_segments_before(dir.path(), 3, true).expect("drop");
        let left: Vec<u64> = sealed_segments(dir.path())
            .expect("segments")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(left, vec![3]);
    }
}
