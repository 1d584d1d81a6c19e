//! TaskFlow's files, shared by storage, backups, the plugin directory and
//! the command line: atomic replace ([`write_atomic`]), file-system sync,
//! the [`envfile`] (`.env`) that settings come from, and the commands'
//! output to stdout ([`out!`]).

pub mod envfile;

/// Prints a line to stdout. A closed pipe (`taskflow list | head`) ends the
/// output quietly instead of panicking like `println!`; the enclosing
/// function returns any other write error (converted with `into()`).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        match writeln!(std::io::stdout().lock(), $($arg)*) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
            _ => {}
        }
    }};
}

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically: a temporary file in the same
/// directory, optionally fsynced, then renamed over the target. Readers see
/// the old content or the new, never a torn write.
pub fn write_atomic(path: &Path, bytes: &[u8], fsync: bool) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{file_name}."))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    temp.write_all(bytes)?;
    if fsync {
        temp.as_file().sync_all()?;
    }
    temp.persist(path).map_err(|e| e.error)?;
    if fsync {
        // Make the rename itself durable.
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Flushes every written file of the file system holding `path` to disk:
/// one call instead of an fsync per file.
#[allow(unsafe_code)]
pub fn sync_filesystem(path: &Path) -> std::io::Result<()> {
    let dir = std::fs::File::open(path)?;
    // SAFETY: syncfs on a descriptor owned by `dir` for the whole call.
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
