//! Taking backups out of the repository (prune), and keeping them in while
//! they are used (restore, drill).
//!
//! Removal is crash-safe: the manifest, which is what makes a backup
//! exist, is renamed into `tmp/ID.manifest.json.pruning` first (one atomic
//! rename, then both directories synced), and only then are the artifact
//! and the drill record removed, and the marker last. A crash at any point
//! leaves either a complete listed backup or a marker that the next prune
//! or backup finishes; never a listed backup without its artifact, and
//! never an artifact that looks like a leftover to keep as evidence.
//!
//! A restore or drill holds a shared `flock` on the manifest for as long
//! as it reads the backup; prune takes it exclusively, without waiting,
//! and leaves a backup that is in use alone.

use super::manifest::{Manifest, QuarantineRecord};
use super::{DRILL_SUFFIX, LEGACY_ARTIFACT_SUFFIX, Repository, is_backup_id, sync_dir};
use crate::error::{Error, ErrorKind, Result};
use crate::storage::Storage;
use std::fs::{self, File, TryLockError};
use std::path::PathBuf;

fn remote_error(storage: &dyn Storage, what: &str, key: &str, e: std::io::Error) -> Error {
    Error::repository(format!("{what} {}: {e}", storage.describe(key)))
}

/// The name a manifest has while its backup is being removed.
const PRUNING_SUFFIX: &str = ".manifest.json.pruning";

/// A backup held for reading (shared) or for removal (exclusive): the
/// lock lives as long as this value.
#[derive(Debug)]
pub struct Held {
    /// `None` in a remote repository, which nothing prunes yet.
    _manifest: Option<File>,
}

impl Repository {
    /// Holds `manifest`'s backup against removal while it is restored or
    /// drilled. Waits (a few seconds at most) for a prune that is removing
    /// it, and fails if it was removed.
    pub fn hold(&self, manifest: &Manifest) -> Result<Held> {
        if self.is_remote() {
            return Ok(Held { _manifest: None });
        }
        let path = self.manifest_path(&manifest.id);
        let gone = || {
            Error::new(
                ErrorKind::NotFound,
                format!(
                    "backup {} was removed (pruned) while it was being opened",
                    manifest.id
                ),
            )
            .with_hint("run `pgward list` and choose another backup")
        };
        let file = super::open_regular(&path).map_err(|_| gone())?;
        let mut attempt = file.try_lock_shared();
        for _ in 0..50 {
            if !matches!(attempt, Err(TryLockError::WouldBlock)) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            attempt = file.try_lock_shared();
        }
        match attempt {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(Error::new(
                    ErrorKind::Busy,
                    format!("backup {} is being removed by a prune", manifest.id),
                ));
            }
            Err(TryLockError::Error(e)) => {
                return Err(Error::repository_io("cannot lock", &path, e));
            }
        }
        // Removed between the open and the lock: the name is gone.
        if fs::symlink_metadata(&path).is_err() {
            return Err(gone());
        }
        Ok(Held {
            _manifest: Some(file),
        })
    }

    /// The backup held exclusively if nothing uses it right now; `None`
    /// when a restore or drill holds it (or it is already gone).
    pub fn try_hold_for_removal(&self, manifest: &Manifest) -> Option<Held> {
        // No hold spans hosts in object storage (see README).
        if self.is_remote() {
            return Some(Held { _manifest: None });
        }
        let file = super::open_regular(&self.manifest_path(&manifest.id)).ok()?;
        file.try_lock().ok()?;
        Some(Held {
            _manifest: Some(file),
        })
    }

    /// Removes a backup, crash-safe (see the module documentation). The
    /// caller holds it ([`Repository::try_hold_for_removal`]).
    pub fn remove_backup(&self, manifest: &Manifest, _held: &Held) -> Result<()> {
        let id = &manifest.id;
        if let Some(storage) = self.remote.as_deref() {
            // The same order in a bucket: a marker, then the manifest
            // (the backup no longer exists), then the rest, the marker last.
            let marker = format!("tmp/{id}{PRUNING_SUFFIX}");
            let key = Repository::backup_key(&format!("{id}.manifest.json"));
            storage
                .put_replacing(&marker, id.as_bytes())
                .and_then(|()| storage.delete(&key))
                .map_err(|e| remote_error(storage, "cannot remove", &key, e))?;
            return self.finish_remote_removal(storage, id);
        }
        let marker = self.tmp_dir().join(format!("{id}{PRUNING_SUFFIX}"));
        let manifest_path = self.manifest_path(id);
        fs::rename(&manifest_path, &marker)
            .map_err(|e| Error::repository_io("cannot remove", &manifest_path, e))?;
        sync_dir(&self.backups_dir())?;
        sync_dir(&self.tmp_dir())?;
        self.finish_removal(id)
    }

    fn finish_remote_removal(&self, storage: &dyn Storage, id: &str) -> Result<()> {
        for name in [
            super::artifact_file(id, false),
            super::artifact_file(id, true),
            format!("{id}{LEGACY_ARTIFACT_SUFFIX}"),
            format!("{id}{DRILL_SUFFIX}"),
        ] {
            let key = Repository::backup_key(&name);
            storage
                .delete(&key)
                .map_err(|e| remote_error(storage, "cannot remove", &key, e))?;
        }
        let marker = format!("tmp/{id}{PRUNING_SUFFIX}");
        storage
            .delete(&marker)
            .map_err(|e| remote_error(storage, "cannot remove", &marker, e))
    }

    /// The artifact, drill record and marker of a backup whose manifest is
    /// already out of `backups/`.
    fn finish_removal(&self, id: &str) -> Result<()> {
        for name in [
            super::artifact_file(id, false),
            super::artifact_file(id, true),
            format!("{id}{LEGACY_ARTIFACT_SUFFIX}"),
            format!("{id}{DRILL_SUFFIX}"),
        ] {
            let path = self.backups_dir().join(&name);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::repository_io("cannot remove", &path, e)),
            }
        }
        sync_dir(&self.backups_dir())?;
        let marker = self.tmp_dir().join(format!("{id}{PRUNING_SUFFIX}"));
        match fs::remove_file(&marker) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::repository_io("cannot remove", &marker, e)),
        }
        sync_dir(&self.tmp_dir())
    }

    /// Finishes the removals a killed prune left half done; returns their
    /// ids. Run by every prune and, before leftovers are judged, by every
    /// backup.
    pub fn finish_interrupted_removals(&self) -> Result<Vec<String>> {
        let mut finished = Vec::new();
        if let Some(storage) = self.remote.as_deref() {
            let markers = storage
                .list("tmp")
                .map_err(|e| remote_error(storage, "cannot list", "tmp", e))?;
            for marker in markers {
                if let Some(id) = marker.name.strip_suffix(PRUNING_SUFFIX)
                    && is_backup_id(id)
                {
                    let key = Repository::backup_key(&format!("{id}.manifest.json"));
                    // Only a manifest known to be gone lets the rest go.
                    match storage.size(&key) {
                        Ok(None) => {}
                        Ok(Some(_)) => continue,
                        Err(e) => return Err(remote_error(storage, "cannot read", &key, e)),
                    }
                    self.finish_remote_removal(storage, id)?;
                    finished.push(id.to_string());
                }
            }
            finished.sort();
            return Ok(finished);
        }
        let entries = fs::read_dir(self.tmp_dir())
            .map_err(|e| Error::repository_io("cannot read", &self.tmp_dir(), e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(PRUNING_SUFFIX)
                && is_backup_id(id)
            {
                // A manifest put back by hand wins: the backup stays.
                if fs::symlink_metadata(self.manifest_path(id)).is_ok() {
                    continue;
                }
                self.finish_removal(id)?;
                finished.push(id.to_string());
            }
        }
        finished.sort();
        Ok(finished)
    }

    /// Whether a prune is removing backup `id` (its marker is there).
    pub(crate) fn is_being_removed(&self, id: &str) -> bool {
        if let Some(storage) = self.remote.as_deref() {
            return matches!(
                storage.size(&format!("tmp/{id}{PRUNING_SUFFIX}")),
                Ok(Some(_))
            );
        }
        fs::symlink_metadata(self.tmp_dir().join(format!("{id}{PRUNING_SUFFIX}"))).is_ok()
    }

    /// Removes a quarantined run: its partial file, then its reason record.
    pub fn remove_quarantined(&self, record: &QuarantineRecord) -> Result<Vec<PathBuf>> {
        if !is_backup_id(&record.id) {
            return Err(Error::new(
                ErrorKind::Integrity,
                format!(
                    "quarantine record for {:?} does not name a backup id",
                    record.id
                ),
            ));
        }
        if let Some(storage) = self.remote.as_deref() {
            return Ok(self
                .remove_bucket_quarantined(storage, record)?
                .into_iter()
                .map(PathBuf::from)
                .collect());
        }
        let mut removed = Vec::new();
        let partial = &record.file;
        // Only a plain name of this run inside quarantine/.
        if !partial.contains('/') && partial.starts_with(&format!("{}.", record.id)) {
            let path = self.quarantine_dir().join(partial);
            if fs::remove_file(&path).is_ok() {
                removed.push(path);
            }
        }
        let reason = self
            .quarantine_dir()
            .join(format!("{}{}", record.id, super::REASON_SUFFIX));
        match fs::remove_file(&reason) {
            Ok(()) => removed.push(reason),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::repository_io("cannot remove", &reason, e)),
        }
        sync_dir(&self.quarantine_dir())?;
        Ok(removed)
    }
}
