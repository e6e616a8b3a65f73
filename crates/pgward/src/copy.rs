//! `pgward copy` and `[[mirror]]`: complete backups from one repository to
//! another (a directory or a bucket, either way), for the 3-2-1 rule.
//!
//! A copy keeps the commit protocol of a backup: the artifact is streamed
//! into place first (hashed on the way and aborted if it is not the bytes
//! the manifest names), the manifest last, byte for byte the source's (so
//! that its signature still holds), neither replacing anything. Then the
//! copy is read back from the destination and hashed again: only a copy
//! that verifies is reported as copied. A copy that fails leaves no
//! manifest behind, so the destination never lists it.
//!
//! An artifact already at the destination without its manifest (a copy
//! that was interrupted between the two) is reused when its bytes are the
//! manifest's, and replaced otherwise: without a manifest it is no backup.

use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::ObserveRead;
use crate::pipeline::hash::{StreamHasher, digest_reader};
use crate::repository::manifest::Manifest;
use crate::repository::{MAX_RECORD_BYTES, Repository, parse_manifest};
use crate::storage::{Storage, copy_stream};
use serde::Serialize;
use std::io;
use std::time::Instant;

/// What happened to one backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CopyOutcome {
    /// Copied and verified at the destination.
    Copied,
    /// The destination already holds this backup (the same manifest).
    AlreadyThere,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CopiedBackup {
    pub id: String,
    pub database: String,
    pub outcome: CopyOutcome,
    /// Artifact bytes sent (0 when already there, or reused).
    pub bytes_sent: u64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CopyReport {
    pub from: String,
    pub to: String,
    pub backups: Vec<CopiedBackup>,
}

/// The journal option that records a copy (`copied ID to URL`): what
/// `status` reads to say where a backup's copies are.
pub fn journal_option(id: &str, destination: &str) -> String {
    format!("copied {id} to {destination}")
}

/// The copies a journal option records, if it is one.
pub fn parse_journal_option(option: &str) -> Option<(&str, &str)> {
    option.strip_prefix("copied ")?.split_once(" to ")
}

fn manifest_key(id: &str) -> String {
    Repository::backup_key(&format!("{id}.manifest.json"))
}

fn drill_key(id: &str) -> String {
    Repository::backup_key(&format!("{id}.drill.json"))
}

fn io_error(storage: &dyn Storage, what: &str, key: &str, e: io::Error) -> Error {
    Error::repository(format!("{what} {}: {e}", storage.describe(key)))
}

/// Copies the backups in `manifests` (from `from`'s catalog) to `to`,
/// oldest first, stopping at the first failure.
pub fn run(
    from: &Repository,
    to: &Repository,
    manifests: &[Manifest],
    progress: &mut dyn FnMut(u64),
) -> Result<CopyReport> {
    if from.storage().location() == to.storage().location() {
        return Err(Error::config(format!(
            "{} is both the source and the destination",
            to.storage().location()
        ))
        .with_hint("name another repository with --to"));
    }
    let mut report = CopyReport {
        from: from.storage().location(),
        to: to.storage().location(),
        backups: Vec::new(),
    };
    let mut ordered: Vec<&Manifest> = manifests.iter().collect();
    ordered.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
    for manifest in ordered {
        report.backups.push(copy_one(from, to, manifest, progress)?);
    }
    Ok(report)
}

/// Copies one backup; see the module documentation.
pub fn copy_one(
    from: &Repository,
    to: &Repository,
    manifest: &Manifest,
    progress: &mut dyn FnMut(u64),
) -> Result<CopiedBackup> {
    let started = Instant::now();
    let (source, target) = (from.storage(), to.storage());
    let id = &manifest.id;
    let key = manifest_key(id);
    // Held against a prune at the source while it is read.
    let _held = from.hold(manifest)?;
    // The exact bytes, checked again: what is copied is what the catalog
    // (and its signature pin) accepted.
    let manifest_bytes = source
        .read_whole(&key, MAX_RECORD_BYTES)
        .map_err(|e| io_error(source.as_ref(), "cannot read", &key, e))?;
    let reread = String::from_utf8(manifest_bytes.clone())
        .map_err(|e| e.to_string())
        .and_then(|text| parse_manifest(&text, id, from.signature_pin()))
        .map_err(|cause| {
            Error::new(
                ErrorKind::Integrity,
                format!("manifest of backup {id} changed while it was copied: {cause}"),
            )
        })?;
    if reread.artifact.sha256 != manifest.artifact.sha256 {
        return Err(Error::new(
            ErrorKind::Integrity,
            format!("manifest of backup {id} changed while it was copied"),
        ));
    }
    let done = |outcome, bytes_sent| CopiedBackup {
        id: id.clone(),
        database: manifest.database.clone(),
        outcome,
        bytes_sent,
        seconds: started.elapsed().as_secs_f64(),
    };
    match target.read_whole(&key, MAX_RECORD_BYTES) {
        Ok(existing) if existing == manifest_bytes => {
            return Ok(done(CopyOutcome::AlreadyThere, 0));
        }
        Ok(_) => {
            return Err(Error::new(
                ErrorKind::Integrity,
                format!(
                    "{} holds another manifest for backup {id}",
                    target.describe(&key)
                ),
            )
            .with_hint("compare both with `pgward verify`; pgward never replaces a manifest"));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(target.as_ref(), "cannot read", &key, e)),
    }
    let artifact_key = Repository::backup_key(&manifest.artifact.file);
    let sent = send_artifact(from, target.as_ref(), manifest, &artifact_key, progress)?;
    if let Err(e) = target.put_new(&key, &manifest_bytes) {
        return Err(io_error(target.as_ref(), "cannot write", &key, e)
            .with_hint("nothing was listed at the destination; run the copy again"));
    }
    // Read back from the destination: the copy is proved, not assumed.
    if let Err(e) = check_copy(target.as_ref(), manifest, &manifest_bytes) {
        let _ = target.delete(&key);
        let _ = target.delete(&artifact_key);
        return Err(e);
    }
    // The last drill's verdict holds for the same bytes.
    if let Ok(record) = source.read_whole(&drill_key(id), MAX_RECORD_BYTES) {
        let _ = target.put_replacing(&drill_key(id), &record);
    }
    Ok(done(CopyOutcome::Copied, sent))
}

/// Puts the artifact at the destination (or keeps one that is already
/// there with the right bytes); returns the bytes sent.
fn send_artifact(
    from: &Repository,
    target: &dyn Storage,
    manifest: &Manifest,
    key: &str,
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    let id = &manifest.id;
    if let Some(size) = target
        .size(key)
        .map_err(|e| io_error(target, "cannot read", key, e))?
    {
        let intact = size == manifest.artifact.bytes
            && target
                .open(key)
                .and_then(digest_reader)
                .is_ok_and(|d| d.sha256 == manifest.artifact.sha256);
        if intact {
            return Ok(0);
        }
        target
            .delete(key)
            .map_err(|e| io_error(target, "cannot replace the leftover", key, e))?;
    }
    let path = from.artifact_path(manifest);
    let (reader, size) = from
        .open_artifact_stream(manifest)
        .map_err(|e| Error::repository_io("cannot open the artifact", &path, e))?;
    if size != manifest.artifact.bytes {
        return Err(crate::restore::source::damaged(
            manifest,
            format!(
                "{} has {size} bytes, the manifest says {}",
                path.display(),
                manifest.artifact.bytes
            ),
        ));
    }
    let mut upload = target
        .upload(key)
        .map_err(|e| io_error(target, "cannot start writing", key, e))?;
    let mut hashed = ObserveRead::new(reader, StreamHasher::default());
    let mut counted = Progressing {
        inner: &mut upload,
        done: 0,
        progress,
    };
    let copied = copy_stream(&mut hashed, &mut counted);
    let digest = hashed.into_parts().1.finish();
    if let Err(e) = copied {
        let _ = upload.abort();
        if e.kind() == io::ErrorKind::Interrupted
            && let Some(signal) = crate::interrupt::pending()
        {
            return Err(Error::new(
                ErrorKind::Interrupted { signal },
                format!("copy of backup {id} {e}; nothing was listed at the destination"),
            ));
        }
        return Err(Error::repository(format!(
            "copy of backup {id} to {} failed: {e}",
            target.describe(key)
        ))
        .with_hint("nothing was listed at the destination; run the copy again"));
    }
    if digest.bytes != manifest.artifact.bytes || digest.sha256 != manifest.artifact.sha256 {
        let _ = upload.abort();
        return Err(crate::restore::source::damaged(
            manifest,
            format!(
                "{} has {} bytes with sha256 {}, the manifest says {} bytes with {}",
                path.display(),
                digest.bytes,
                digest.sha256,
                manifest.artifact.bytes,
                manifest.artifact.sha256
            ),
        ));
    }
    upload.finish().map_err(|e| {
        io_error(target, "cannot complete", key, e)
            .with_hint("nothing was listed at the destination; run the copy again")
    })?;
    Ok(digest.bytes)
}

/// The copy as the destination has it: the manifest's bytes and the
/// artifact's size and sha256.
fn check_copy(target: &dyn Storage, manifest: &Manifest, manifest_bytes: &[u8]) -> Result<()> {
    let id = &manifest.id;
    let key = manifest_key(id);
    let stored = target
        .read_whole(&key, MAX_RECORD_BYTES)
        .map_err(|e| io_error(target, "cannot read back", &key, e))?;
    let artifact_key = Repository::backup_key(&manifest.artifact.file);
    let digest = target
        .open(&artifact_key)
        .and_then(digest_reader)
        .map_err(|e| io_error(target, "cannot read back", &artifact_key, e))?;
    if stored != manifest_bytes
        || digest.bytes != manifest.artifact.bytes
        || digest.sha256 != manifest.artifact.sha256
    {
        return Err(Error::new(
            ErrorKind::Integrity,
            format!(
                "the copy of backup {id} at {} does not read back as written ({} bytes with sha256 {})",
                target.location(),
                digest.bytes,
                digest.sha256
            ),
        )
        .with_hint("the destination changed or damaged it; the copy was removed, run it again"));
    }
    Ok(())
}

/// Counts what passes for the progress line.
struct Progressing<'a, W: io::Write + ?Sized> {
    inner: &'a mut W,
    done: u64,
    progress: &'a mut dyn FnMut(u64),
}

impl<W: io::Write + ?Sized> io::Write for Progressing<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.done += n as u64;
        (self.progress)(self.done);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
