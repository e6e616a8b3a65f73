//! One backup per repository and database at a time.
//!
//! The lock is an advisory `flock` on `locks/<database>.lock`, held by an
//! open file descriptor: the kernel releases it when the process dies, so a
//! crash never leaves a stale lock to remove by hand. The file keeps the
//! holder's pid only to make the "busy" message useful.

use crate::error::{Error, ErrorKind, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Held for as long as this value lives.
#[derive(Debug)]
pub struct RepoLock {
    _file: File,
}

impl RepoLock {
    pub fn acquire(path: &Path, database: &str) -> Result<RepoLock> {
        let mut file = open_lock_file(path)?;
        // A `pgward check` probing the lock holds it for an instant: retry
        // briefly before calling the repository busy.
        let mut attempt = file.try_lock();
        for _ in 0..10 {
            if !matches!(attempt, Err(TryLockError::WouldBlock)) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            attempt = file.try_lock();
        }
        match attempt {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {holder})")
                };
                return Err(Error::new(
                    ErrorKind::Busy,
                    format!("another pgward run is backing up database {database:?} to this repository{who}"),
                )
                .with_hint("wait for it to finish; the lock is released automatically when that process exits"));
            }
            Err(TryLockError::Error(e)) => {
                return Err(Error::repository_io("cannot lock", path, e));
            }
        }
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "{}", std::process::id());
        Ok(RepoLock { _file: file })
    }

    /// The lock at `path` if it is free right now (no waiting): for
    /// looking after another database's leftovers without ever making
    /// that database's own run wait.
    pub fn try_now(path: &Path) -> Option<RepoLock> {
        let file = open_lock_file(path).ok()?;
        file.try_lock().ok()?;
        Some(RepoLock { _file: file })
    }
}

/// Opens (creating) a lock file: never through a symbolic link, and only
/// a regular file, since the holder's pid is written into it.
fn open_lock_file(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::repository_io("cannot open lock file", path, e))?;
    match file.metadata() {
        Ok(meta) if meta.file_type().is_file() => Ok(file),
        _ => Err(Error::repository(format!(
            "lock file {} is not a regular file",
            path.display()
        ))
        .with_hint("remove it; pgward creates its lock files itself")),
    }
}

/// The lock a run holds on its database: a `flock` on disk, a lease
/// object in a bucket ([`super::lease`]).
#[derive(Debug)]
pub enum RunLock {
    Local(RepoLock),
    Bucket(super::lease::Lease),
}

impl RunLock {
    /// Whether the lock is still this run's: a lease can be lost, a
    /// `flock` cannot.
    pub fn still_held(&self) -> Result<()> {
        match self {
            RunLock::Local(_) => Ok(()),
            RunLock::Bucket(lease) => lease.still_held(),
        }
    }

    /// Why the lock was lost, if it was (see [`super::lease::Lease::lost`]).
    pub fn lost(&self) -> Option<String> {
        match self {
            RunLock::Local(_) => None,
            RunLock::Bucket(lease) => lease.lost(),
        }
    }
}
