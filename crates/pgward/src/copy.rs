//! `pgward copy` and `[[mirror]]`: complete backups from one repository to
//! another (a directory or a bucket, either way), for the 3-2-1 rule.
//!
//! A copy keeps the commit protocol of a backup: the artifact is streamed
//! into place first (hashed on the way and aborted if it is not the bytes
//! the manifest names), the manifest last, byte for byte the source's (so
//! that its signature still holds), neither replacing anything. Then the
//! copy is read back from the destination and hashed again: only a copy
//! that verifies is reported as copied. The manifest is written only
//! after the artifact has read back right, so a copy that fails (or is
//! killed) at any point is never listed at the destination.
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
/// oldest first, stopping at the first failure. A signal stops the copy
/// (its upload aborted) with exit code 128+n. The report holds the copies
/// made before a failure too (the caller journals them).
pub fn run(
    from: &Repository,
    to: &Repository,
    manifests: &[Manifest],
    progress: &mut dyn FnMut(u64),
) -> Result<(CopyReport, Option<Error>)> {
    let (report, mut failures) = each(from, to, manifests, true, progress)?;
    Ok((report, failures.pop().map(|(_, error)| error)))
}

/// Copies every backup in `manifests` in the given order, going on past
/// failures (each returned with its backup's id): one damaged old backup
/// must not keep the others from their copy. Stops at a signal (the
/// interruption is the last failure).
pub fn each(
    from: &Repository,
    to: &Repository,
    manifests: &[Manifest],
    stop_at_first_failure: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<(CopyReport, Vec<(String, Error)>)> {
    if identity(from) == identity(to) {
        return Err(Error::config(format!(
            "{} is both the source and the destination",
            to.storage().location()
        ))
        .with_hint("name another repository with --to"));
    }
    // Without a watch a signal would end the process with an upload open;
    // with one, the copy stops at its next chunk and aborts the upload.
    // (Inside `run`, after the backup's own watch is gone.)
    let mut watch = crate::interrupt::InterruptWatch::install().ok();
    // A removal a prune left half done in the bucket is finished first:
    // its marker must not outlive it and take a new copy's artifact.
    if to.is_remote() {
        to.finish_interrupted_removals()?;
    }
    let mut report = CopyReport {
        from: from.storage().location(),
        to: to.storage().location(),
        backups: Vec::new(),
    };
    let mut failures = Vec::new();
    // The destination's journal, read once for all the backups copied.
    let mut journal = None;
    for manifest in manifests {
        match copy_one(from, to, manifest, &mut journal, progress) {
            Ok(copied) => report.backups.push(copied),
            Err(error) => {
                let interrupted = matches!(error.kind(), ErrorKind::Interrupted { .. });
                if interrupted && let Some(watch) = watch.as_mut() {
                    watch.acknowledge();
                }
                failures.push((manifest.id.clone(), error));
                if stop_at_first_failure || interrupted {
                    break;
                }
            }
        }
    }
    Ok((report, failures))
}

/// Oldest first, the order copies are made in.
pub fn oldest_first(mut manifests: Vec<Manifest>) -> Vec<Manifest> {
    manifests.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
    manifests
}

/// The destination journal's records, read on first need and kept up to
/// date by the copies' own appends.
type JournalMemo = Option<Vec<crate::journal::Record>>;

/// Copies one backup; see the module documentation.
fn copy_one(
    from: &Repository,
    to: &Repository,
    manifest: &Manifest,
    journal: &mut JournalMemo,
    progress: &mut dyn FnMut(u64),
) -> Result<CopiedBackup> {
    let started = Instant::now();
    let started_at = crate::clock::now_rfc3339();
    let (source, target) = (from.storage(), to.storage());
    let id = &manifest.id;
    let key = manifest_key(id);
    // Held against a prune at the source while it is read.
    let _held = from.hold(manifest)?;
    // The destination is a repository others may run in: its lock for this
    // database (a flock on disk, a lease in a bucket, which spans hosts)
    // keeps a backup's cleanup from taking the artifact in flight for a
    // leftover, and two copies of one backup from taking turns badly.
    let lock = to.lock(&manifest.database)?;
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
    let artifact_key = Repository::backup_key(&manifest.artifact.file);
    if manifest_present(target.as_ref(), &key, &manifest_bytes, id)? {
        // A manifest is only ever written after its artifact read back
        // right; its size is checked here, the bytes by `verify`.
        return match target.size(&artifact_key) {
            Ok(Some(size)) if size == manifest.artifact.bytes => {
                journal_at_destination(
                    to,
                    journal,
                    manifest,
                    &source.location(),
                    &started_at,
                    started,
                )?;
                Ok(done(CopyOutcome::AlreadyThere, 0))
            }
            Ok(found) => Err(Error::new(
                ErrorKind::Integrity,
                format!(
                    "{} lists backup {id}, but its artifact has {} (the manifest says {} bytes)",
                    target.location(),
                    found.map_or("gone".to_string(), |n| format!("{n} bytes")),
                    manifest.artifact.bytes
                ),
            )
            .with_hint(format!(
                "run `pgward verify --repo {} {id}`",
                target.location()
            ))),
            Err(e) => Err(io_error(target.as_ref(), "cannot read", &artifact_key, e)),
        };
    }
    let sent = send_artifact(
        from,
        target.as_ref(),
        manifest,
        &key,
        &artifact_key,
        progress,
    )?;
    // Read back before the manifest makes it a backup: the copy is
    // proved, not assumed. A proven mismatch is removed (nothing lists
    // it); a read that fails leaves it for the next copy to check again.
    match read_back(target.as_ref(), &artifact_key) {
        Ok(d) if d.bytes == manifest.artifact.bytes && d.sha256 == manifest.artifact.sha256 => {}
        Err(e)
            if e.kind() == io::ErrorKind::Interrupted
                && let Some(signal) = crate::interrupt::pending() =>
        {
            return Err(Error::new(
                ErrorKind::Interrupted { signal },
                format!("copy of backup {id} {e}; nothing was listed at the destination"),
            ));
        }
        Ok(d) => {
            // Removed only while no manifest claims it.
            let removed =
                matches!(target.size(&key), Ok(None)) && target.delete(&artifact_key).is_ok();
            return Err(Error::new(
                ErrorKind::Integrity,
                format!(
                    "the copy of backup {id} at {} reads back as {} bytes with sha256 {}, not as written",
                    target.location(),
                    d.bytes,
                    d.sha256
                ),
            )
            .with_hint(if removed {
                "the destination damaged it; it was removed and nothing lists it: run the copy again"
            } else {
                "the destination damaged it and it could not be removed; nothing lists it: run the copy again"
            }));
        }
        Err(e) => {
            return Err(
                io_error(target.as_ref(), "cannot read back", &artifact_key, e).with_hint(
                    "nothing lists the copy yet; run the copy again (an intact artifact is reused)",
                ),
            );
        }
    }
    // A copy that lost its lease commits nothing: another run may have
    // taken its artifact for a leftover.
    lock.still_held()?;
    match target.put_new(&key, &manifest_bytes) {
        Ok(()) => {}
        // Written by a concurrent copy of the same backup, or by this one
        // before its answer was lost: the same bytes are the same backup.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if !manifest_present(target.as_ref(), &key, &manifest_bytes, id)? {
                return Err(io_error(target.as_ref(), "cannot write", &key, e));
            }
        }
        Err(e) => {
            return Err(io_error(target.as_ref(), "cannot write", &key, e).with_hint(
                "the manifest may or may not have been stored: run the copy again (it says `already there` if it was)",
            ));
        }
    }
    match target.read_whole(&key, MAX_RECORD_BYTES) {
        Ok(stored) if stored == manifest_bytes => {}
        Ok(_) => {
            return Err(Error::new(
                ErrorKind::Integrity,
                format!(
                    "the manifest of backup {id} at {} does not read back as written",
                    target.location()
                ),
            )
            .with_hint(format!(
                "run `pgward verify --repo {} {id}`",
                target.location()
            )));
        }
        Err(e) => return Err(io_error(target.as_ref(), "cannot read back", &key, e)),
    }
    // The last drill's verdict holds for the same bytes.
    if let Ok(record) = source.read_whole(&drill_key(id), MAX_RECORD_BYTES) {
        let _ = target.put_replacing(&drill_key(id), &record);
    }
    journal_at_destination(
        to,
        journal,
        manifest,
        &source.location(),
        &started_at,
        started,
    )?;
    Ok(done(CopyOutcome::Copied, sent))
}

/// The destination's journal (a directory's or a bucket's): the copy's
/// record there vouches for the backup the way a backup's own record does. Written when no
/// record of the destination names the manifest yet (also for a copy
/// found already there, whose record a killed run may not have written).
fn journal_at_destination(
    to: &Repository,
    journal: &mut JournalMemo,
    manifest: &Manifest,
    from: &str,
    started_at: &str,
    started: Instant,
) -> Result<()> {
    let id = &manifest.id;
    let Some(named) = crate::journal::touched(to, &to.manifest_path(id)) else {
        return Ok(());
    };
    if journal.is_none() {
        *journal = Some(crate::journal::read_tolerant(to)?.0);
    }
    let records = journal.as_mut().expect("just read");
    let digest =
        |t: &crate::journal::Touched| t.manifest_digest.clone().unwrap_or(t.sha256.clone());
    let vouched = records
        .iter()
        .filter(|r| r.vouches())
        .flat_map(|r| r.artifacts.iter())
        .any(|a| a.path == named.path && digest(a) == digest(&named));
    if vouched {
        return Ok(());
    }
    let artifact = crate::journal::touched_known(
        to,
        &to.artifact_path(manifest),
        manifest.artifact.bytes,
        &manifest.artifact.sha256,
    );
    let record = crate::journal::append(
        to,
        &crate::journal::Entry {
            run_id: id.clone(),
            command: "copy".to_string(),
            database: Some(manifest.database.clone()),
            options: vec![format!("from {from}")],
            started_at: started_at.to_string(),
            duration_ms: started.elapsed().as_millis() as u64,
            ok: true,
            exit_code: 0,
            cause: None,
            artifacts: vec![artifact, named],
        },
    )?;
    // A journal this append started has a first record too: read again.
    match journal.as_mut() {
        Some(records) if !records.is_empty() => records.push(record),
        _ => *journal = None,
    }
    Ok(())
}

/// The place of a repository, for telling two apart: a directory's
/// canonical path (so that `/srv/pg/`, `./pg` and a link to it are one).
fn identity(repo: &Repository) -> String {
    if repo.is_remote() {
        return repo.storage().location();
    }
    std::fs::canonicalize(repo.root())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| repo.root().display().to_string())
}

/// Size and sha256 of an object as the storage returns it; a signal
/// stops the read.
fn read_back(storage: &dyn Storage, key: &str) -> io::Result<crate::pipeline::hash::StreamDigest> {
    let mut reader = storage.open(key)?;
    let mut hashed = crate::pipeline::ObserveWrite::new(io::sink(), StreamHasher::default());
    copy_stream(&mut reader, &mut hashed)?;
    Ok(hashed.into_parts().1.finish())
}

/// Whether the destination holds this backup's manifest: `false` when it
/// has none, an error when it has another one.
fn manifest_present(target: &dyn Storage, key: &str, bytes: &[u8], id: &str) -> Result<bool> {
    match target.read_whole(key, MAX_RECORD_BYTES) {
        Ok(existing) if existing == bytes => Ok(true),
        Ok(_) => Err(Error::new(
            ErrorKind::Integrity,
            format!(
                "{} holds another manifest for backup {id}",
                target.describe(key)
            ),
        )
        .with_hint("compare both with `pgward verify`; pgward never replaces a manifest")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error(target, "cannot read", key, e)),
    }
}

/// Puts the artifact at the destination (or keeps one that is already
/// there with the right bytes); returns the bytes sent.
fn send_artifact(
    from: &Repository,
    target: &dyn Storage,
    manifest: &Manifest,
    manifest_key: &str,
    key: &str,
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    let id = &manifest.id;
    if let Some(size) = target
        .size(key)
        .map_err(|e| io_error(target, "cannot read", key, e))?
    {
        // A leftover of a copy that was cut off. Replaced only when it is
        // proved wrong, and only while no manifest claims it.
        let digest = if size == manifest.artifact.bytes {
            Some(
                target
                    .open(key)
                    .and_then(digest_reader)
                    .map_err(|e| io_error(target, "cannot read", key, e))?,
            )
        } else {
            None
        };
        if digest.is_some_and(|d| d.sha256 == manifest.artifact.sha256) {
            return Ok(0);
        }
        let claimed = target
            .size(manifest_key)
            .map_err(|e| io_error(target, "cannot read", manifest_key, e))?;
        if claimed.is_some() {
            return Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "another copy of backup {id} to {} just finished",
                    target.location()
                ),
            )
            .with_hint("run the copy again: it will say `already there`"));
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
        .upload(key, Some(size))
        .map_err(|e| io_error(target, "cannot start writing", key, e))?;
    let mut hashed = ObserveRead::new(SourceRead(reader), StreamHasher::default());
    let mut counted = Progressing {
        inner: &mut upload,
        done: 0,
        progress,
    };
    let copied = copy_stream(&mut hashed, &mut counted);
    let digest = hashed.into_parts().1.finish();
    if let Err(e) = copied {
        let aborted = upload.abort();
        if e.kind() == io::ErrorKind::Interrupted
            && let Some(signal) = crate::interrupt::pending()
        {
            return Err(Error::new(
                ErrorKind::Interrupted { signal },
                format!("copy of backup {id} {e}; nothing was listed at the destination"),
            ));
        }
        let (what, place) = match e.get_ref().is_some_and(|inner| inner.is::<SourceError>()) {
            true => (
                "cannot read the backup's artifact",
                path.display().to_string(),
            ),
            false => ("cannot write the copy", target.describe(key)),
        };
        return Err(Error::repository(format!("{what} {place}: {e}")).with_hint(
            match aborted {
                Ok(()) => "nothing was listed at the destination, and the upload was aborted; run the copy again",
                Err(_) => "nothing was listed at the destination; the upload could not be aborted (a bucket lifecycle rule AbortIncompleteMultipartUpload removes it); run the copy again",
            },
        ));
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

/// Marks errors of the source's reads, to name the right side of a copy.
#[derive(Debug)]
struct SourceError(io::Error);

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SourceError {}

struct SourceRead(Box<dyn io::Read + Send>);

impl io::Read for SourceRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0
            .read(buf)
            .map_err(|e| io::Error::new(e.kind(), SourceError(e)))
    }
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
