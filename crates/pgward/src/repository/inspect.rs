//! Looking at a repository without changing it, for `pgward check` and
//! `backup --dry-run`: does it exist or can it be created, is it writable,
//! is the lock free, how much space is there. Nothing here creates a file.

use super::{Repository, database_key};
use crate::repository::manifest::Manifest;
use crate::scope::Scope;
use std::ffi::CString;
use std::fs::TryLockError;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct RepositoryState {
    pub root: PathBuf,
    /// The repository marker exists.
    pub exists: bool,
    /// Why the repository cannot be written (or created), if it cannot.
    pub not_writable: Option<String>,
    /// The pid holding the lock of this database, if it is held.
    pub lock_holder: Option<String>,
    /// Free bytes on the repository's filesystem (for unprivileged users).
    pub free_bytes: Option<u64>,
    /// The newest complete backup of this database and scope.
    pub previous: Option<Manifest>,
    /// Why the catalog could not be read, if it could not.
    pub catalog_error: Option<String>,
    /// Why the repository's directories are not safe to trust, and the
    /// remedy (see [`super::unsafe_permissions`]).
    pub unsafe_permissions: Option<(String, String)>,
    /// Manifests that cannot be trusted (see [`Repository::catalog`]).
    pub damaged: Vec<super::DamagedFile>,
}

/// The closest existing ancestor of `path` (itself included).
fn existing_ancestor(path: &Path) -> Option<&Path> {
    path.ancestors().find(|p| p.exists())
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap_or_default()
}

/// access(2) with the effective ids, as the kernel would check a write.
fn writable(path: &Path) -> Result<(), String> {
    let c = c_path(path);
    // SAFETY: a valid NUL-terminated path; faccessat only reads it.
    let rc = unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::W_OK | libc::X_OK,
            libc::AT_EACCESS,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ))
    }
}

fn free_bytes(path: &Path) -> Option<u64> {
    let c = c_path(path);
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and a zeroed out-parameter of the right type.
    if unsafe { libc::statvfs(c.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// The state of the repository at `root` for a backup of `database` with
/// `scope`; `pin` is the key manifests must be signed by, if any (a pin
/// that cannot be loaded leaves the catalog unread: nothing unsigned is
/// believed).
pub fn inspect(
    root: &Path,
    database: &str,
    scope: &Scope,
    pin: crate::Result<Option<std::sync::Arc<crate::signing::SignaturePin>>>,
) -> RepositoryState {
    let exists = root.join(super::MARKER).is_file();
    let not_writable = if exists {
        ["", "backups", "quarantine", "tmp", "locks"]
            .iter()
            .map(|sub| root.join(sub))
            .find_map(|dir| writable(&dir).err())
    } else {
        match existing_ancestor(root) {
            Some(ancestor) if ancestor.is_dir() => writable(ancestor).err(),
            Some(ancestor) => Some(format!(
                "{} exists and is not a directory",
                ancestor.display()
            )),
            None => Some(format!(
                "no existing parent directory for {}",
                root.display()
            )),
        }
    };

    let lock_path = root
        .join("locks")
        .join(format!("{}.lock", database_key(database)));
    let lock_holder =
        super::open_regular(&lock_path)
            .ok()
            .and_then(|mut file| match file.try_lock_shared() {
                Err(TryLockError::WouldBlock) => {
                    let mut pid = String::new();
                    let _ = file.read_to_string(&mut pid);
                    Some(pid.trim().to_string())
                }
                _ => None,
            });

    let unsafe_permissions = super::unsafe_permissions(root);
    // An unsafe repository is not read at all (`check` says why).
    let (previous, catalog_error, damaged) = if exists && unsafe_permissions.is_none() {
        match pin
            .and_then(|pin| Repository::open(root).and_then(|repo| repo.trusting(pin).catalog()))
        {
            Ok(catalog) => (
                catalog
                    .backups
                    .into_iter()
                    .find(|m| m.database == database && &m.scope == scope),
                None,
                catalog.damaged,
            ),
            Err(e) => (None, Some(e.to_string()), Vec::new()),
        }
    } else {
        (None, None, Vec::new())
    };
    RepositoryState {
        root: root.to_path_buf(),
        exists,
        not_writable,
        lock_holder,
        free_bytes: existing_ancestor(root).and_then(free_bytes),
        previous,
        catalog_error,
        unsafe_permissions,
        damaged,
    }
}
