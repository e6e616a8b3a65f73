//! A backup written straight into a bucket.
//!
//! The commit protocol of the disk, in object-storage terms. The artifact
//! streams into a multipart upload under its final key
//! (`backups/ID.dump.zst[.gpg]`), which stays invisible until the upload
//! is completed, and that happens only after the archive has been
//! validated. The object is then read back and hashed from the bucket,
//! and only then is the manifest written (`If-None-Match: *`): the
//! manifest is what makes a backup exist.
//!
//! A failed run aborts its upload (no parts left billing), removes an
//! artifact it had completed, and records why in `quarantine/ID.reason.json`.
//! A bucket keeps no partial artifacts: the record is the evidence.
//! A run that dies cannot clean up, so each run first writes
//! `tmp/ID.running.json`; the next run of the database (holding its
//! lock, [`super::lease`]) finds that record, removes what the dead run
//! left and quarantines its story. A multipart upload that could not be
//! aborted (the service was unreachable, the process was killed) stays
//! open with the service; the next run of the database lists the open
//! uploads of its backups and aborts them. Where the service cannot list
//! them (or the credentials may not), a lifecycle rule
//! (`AbortIncompleteMultipartUpload`, in the README) is the only sweep.

use super::manifest::{Manifest, QuarantineRecord};
use super::{
    DamagedFile, MANIFEST_SUFFIX, REASON_SUFFIX, Repository, database_key, id_database_key,
    is_backup_id,
};
use crate::error::{Error, ErrorKind, Result};
use crate::storage::{Storage, Upload};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The open uploads a run aborted before it began: the backups they were
/// for, and the last failure to list or abort one.
#[derive(Debug, Default)]
struct Sweep {
    aborted: std::collections::BTreeSet<String>,
    failed: Option<std::io::Error>,
}

/// `tmp/ID.running.json`: a run writing backup ID into the bucket.
const RUNNING_SUFFIX: &str = ".running.json";
const RUNNING_FORMAT: &str = "pgward-running";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RunningRecord {
    format: String,
    id: String,
    database: String,
    artifact: String,
    host: String,
    pid: u32,
    started_at: String,
}

/// A backup being written into a bucket: where its artifact goes, and
/// whether the artifact may exist yet (its upload's completion was sent).
#[derive(Debug)]
pub struct BucketStaging {
    pub id: String,
    /// `backups/<artifact file>`.
    pub key: String,
    marker: String,
    storage: Arc<dyn Storage>,
    maybe_published: bool,
}

/// A commit into a bucket that failed, and whether its manifest may be
/// there all the same (a write whose answer was lost, a read-back that
/// failed): then nothing of the run may be removed.
#[derive(Debug)]
pub struct CommitFailure {
    pub error: Error,
    pub manifest_may_exist: bool,
}

impl BucketStaging {
    /// The upload's completion is about to be sent: from here on the
    /// artifact may be visible under its key (a completion can succeed
    /// with its answer lost), and is this run's to remove if the run
    /// fails without a manifest.
    pub fn mark_maybe_published(&mut self) {
        self.maybe_published = true;
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }
}

fn remote_error(storage: &dyn Storage, what: &str, key: &str, e: std::io::Error) -> Error {
    Error::repository(format!("{what} {}: {e}", storage.describe(key)))
}

impl Repository {
    /// Starts backup `id`: its running record, then the artifact's upload.
    pub fn start_upload(
        &self,
        id: &str,
        artifact_file: &str,
        database: &str,
        started_at: &str,
    ) -> Result<(BucketStaging, Box<dyn Upload>)> {
        let storage = self.storage();
        let marker = format!("tmp/{id}{RUNNING_SUFFIX}");
        let record = RunningRecord {
            format: RUNNING_FORMAT.to_string(),
            id: id.to_string(),
            database: database.to_string(),
            artifact: artifact_file.to_string(),
            host: crate::journal::host_name(),
            pid: std::process::id(),
            started_at: started_at.to_string(),
        };
        let text = serde_json::to_vec_pretty(&record).expect("records serialise");
        storage
            .put_new(&marker, &text)
            .map_err(|e| remote_error(storage.as_ref(), "cannot write", &marker, e))?;
        let key = Repository::backup_key(artifact_file);
        let upload = match storage.upload(&key, None) {
            Ok(upload) => upload,
            Err(e) => {
                let _ = storage.delete(&marker);
                return Err(remote_error(
                    storage.as_ref(),
                    "cannot start the upload of",
                    &key,
                    e,
                ));
            }
        };
        Ok((
            BucketStaging {
                id: id.to_string(),
                key,
                marker,
                storage,
                maybe_published: false,
            },
            upload,
        ))
    }

    /// Writes the manifest of a published, read-back artifact: the
    /// backup exists from here on. Its key.
    ///
    /// The manifest is read back, and then `still_ours` (the run's lock)
    /// and the artifact are checked once more: a run that lost its lock
    /// while the manifest was on its way may have had its artifact taken
    /// for a dead run's leftover by the lock's new holder. A manifest this
    /// run wrote and cannot stand by is removed again; one whose state
    /// cannot be told is left, with the running record, for the next run
    /// of the database to judge.
    pub fn commit_upload(
        &self,
        staging: &BucketStaging,
        manifest: &Manifest,
        still_ours: &dyn Fn() -> Result<()>,
    ) -> std::result::Result<String, Box<CommitFailure>> {
        let storage = staging.storage.as_ref();
        let key = Repository::backup_key(&format!("{}{MANIFEST_SUFFIX}", manifest.id));
        let mut text = serde_json::to_vec_pretty(manifest).expect("manifests serialise");
        text.push(b'\n');
        let failed = |error: Error, manifest_may_exist: bool| {
            Box::new(CommitFailure {
                error,
                manifest_may_exist,
            })
        };
        // A write that failed may still have landed (a retry of a request
        // whose answer was lost is refused as "exists"): what is there
        // decides.
        if let Err(e) = storage.put_new(&key, &text) {
            let error = remote_error(storage, "cannot write", &key, e);
            return match storage.size(&key) {
                Ok(None) => Err(failed(error, false)),
                _ => match storage.read_whole(&key, text.len() as u64) {
                    Ok(back) if back == text => self.fence(staging, manifest, &key, still_ours),
                    _ => Err(failed(error, true)),
                },
            };
        }
        match storage.read_whole(&key, text.len() as u64) {
            Ok(back) if back == text => self.fence(staging, manifest, &key, still_ours),
            Ok(_) => {
                let error = Error::new(
                    ErrorKind::Validation,
                    format!("{} reads back different", storage.describe(&key)),
                );
                let removed = storage.delete(&key).is_ok();
                Err(failed(error, !removed))
            }
            Err(e) => Err(failed(
                remote_error(storage, "cannot read back", &key, e),
                true,
            )),
        }
    }

    /// The last check of a commit: the lock still this run's, the
    /// artifact still there at its size. Else the manifest is withdrawn.
    fn fence(
        &self,
        staging: &BucketStaging,
        manifest: &Manifest,
        key: &str,
        still_ours: &dyn Fn() -> Result<()>,
    ) -> std::result::Result<String, Box<CommitFailure>> {
        let storage = staging.storage.as_ref();
        let problem = match (still_ours(), storage.size(&staging.key)) {
            (Err(e), _) => Some(e),
            (Ok(()), Ok(Some(bytes))) if bytes == manifest.artifact.bytes => None,
            (Ok(()), Ok(found)) => Some(Error::new(
                ErrorKind::Validation,
                format!(
                    "{} is {} after the manifest was written",
                    storage.describe(&staging.key),
                    found.map_or("gone".to_string(), |b| format!("{b} bytes")),
                ),
            )),
            (Ok(()), Err(e)) => Some(remote_error(storage, "cannot stat", &staging.key, e)),
        };
        match problem {
            None => {
                let _ = storage.delete(&staging.marker);
                Ok(key.to_string())
            }
            Some(error) => {
                let withdrawn = storage.delete(key).is_ok();
                Err(Box::new(CommitFailure {
                    error,
                    manifest_may_exist: !withdrawn,
                }))
            }
        }
    }

    /// Ends a failed run in a bucket: its artifact (if the upload may
    /// have been completed, and no manifest names it) is removed and the
    /// story is recorded in `quarantine/`. The record's key. When the
    /// artifact cannot be removed, the running record stays for the next
    /// run of the database.
    pub fn quarantine_upload(
        &self,
        staging: BucketStaging,
        database: &str,
        started_at: &str,
        partial_bytes: u64,
        error: &Error,
    ) -> Result<String> {
        let storage = staging.storage.clone();
        if staging.maybe_published {
            let manifest = Repository::backup_key(&format!("{}{MANIFEST_SUFFIX}", staging.id));
            match storage.size(&manifest) {
                Ok(None) => storage.delete(&staging.key).map_err(|e| {
                    remote_error(storage.as_ref(), "cannot remove", &staging.key, e)
                })?,
                Ok(Some(_)) => {
                    return Err(Error::repository(format!(
                        "{} exists: the backup is left for `pgward verify` to judge",
                        storage.describe(&manifest)
                    )));
                }
                Err(e) => return Err(remote_error(storage.as_ref(), "cannot stat", &manifest, e)),
            }
        }
        // A bucket keeps no partial artifact.
        let record = QuarantineRecord::now(
            &staging.id,
            database,
            started_at,
            String::new(),
            partial_bytes,
            error,
        );
        let key = self.put_reason(storage.as_ref(), &record)?;
        let _ = storage.delete(&staging.marker);
        Ok(key)
    }

    /// Stores a quarantine record under `quarantine/ID.reason.json`, or
    /// `...json.N` when that is taken: records are never replaced.
    fn put_reason(&self, storage: &dyn Storage, record: &QuarantineRecord) -> Result<String> {
        let mut text = serde_json::to_vec_pretty(record).expect("records serialise");
        text.push(b'\n');
        let base = format!("quarantine/{}{REASON_SUFFIX}", record.id);
        let mut key = base.clone();
        for n in 1..100 {
            match storage.put_new(&key, &text) {
                Ok(()) => return Ok(key),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    key = format!("{base}.{n}");
                }
                Err(e) => return Err(remote_error(storage, "cannot write", &key, e)),
            }
        }
        Err(Error::repository(format!(
            "{} and 99 more names are taken",
            storage.describe(&base)
        )))
    }

    /// Aborts the multipart uploads left open for backups of `database`
    /// (their artifacts' keys name the database), every one it can; the
    /// last failure is kept, for the records of dead runs to mention. Called with the
    /// database's lock held: no run or copy of it that could still finish
    /// one is alive (a run that lost its lease has its completion
    /// refused, and quarantines).
    fn sweep_open_uploads(&self, storage: &dyn Storage, database: &str) -> Sweep {
        let key = database_key(database);
        let mut sweep = Sweep::default();
        let uploads = match storage.open_uploads("backups/") {
            Ok(uploads) => uploads,
            Err(e) => {
                sweep.failed = Some(e);
                return sweep;
            }
        };
        for upload in uploads {
            let Some(file) = upload
                .key
                .strip_prefix("backups/")
                .filter(|file| !file.contains('/'))
                .filter(|file| super::artifact_database_key(file) == Some(key.as_str()))
            else {
                continue;
            };
            let id = super::artifact_id(file).expect("an artifact's name");
            match storage.abort_open_upload(&upload) {
                Ok(()) => {
                    sweep.aborted.insert(id.to_string());
                }
                Err(e) => sweep.failed = Some(e),
            }
        }
        sweep
    }

    /// What runs of `database` that died left in the bucket: uploads they
    /// could not abort (aborted now), and their running records. Each
    /// record is quarantined (with the artifact its run may have completed
    /// removed). Called with the database's lock held, so none of these
    /// runs is alive.
    pub(super) fn clear_bucket_leftovers(&self, storage: &dyn Storage, database: &str) {
        let key = database_key(database);
        // Independent of the records below: every run sweeps, so an
        // upload this one could not abort is tried again by the next.
        let sweep = self.sweep_open_uploads(storage, database);
        let Ok(objects) = storage.list("tmp") else {
            return;
        };
        for object in objects {
            let Some(id) = object.name.strip_suffix(RUNNING_SUFFIX) else {
                continue;
            };
            if !is_backup_id(id) || id_database_key(id) != Some(key.as_str()) {
                continue;
            }
            let marker = format!("tmp/{}", object.name);
            // Only what can be read for certain is acted on; anything in
            // doubt is left for a later run.
            let Ok(text) = storage.read_whole(&marker, 64 * 1024) else {
                continue;
            };
            let running = serde_json::from_slice::<RunningRecord>(&text)
                .ok()
                .filter(|r| r.format == RUNNING_FORMAT && r.id == id);
            let manifest = Repository::backup_key(&format!("{id}{MANIFEST_SUFFIX}"));
            match storage.size(&manifest) {
                Ok(None) => {}
                // A run that died after its manifest was written: a
                // backup, with only its record left to remove, once its
                // artifact is seen there. A manifest without its artifact
                // keeps the record as evidence (`verify` names the loss).
                Ok(Some(_)) => {
                    let artifact = running
                        .as_ref()
                        .map(|r| Repository::backup_key(&r.artifact));
                    if let Some(artifact) = artifact
                        && matches!(storage.size(&artifact), Ok(Some(_)))
                    {
                        let _ = storage.delete(&marker);
                    }
                    continue;
                }
                Err(_) => continue,
            }
            let mut partial_bytes = 0;
            // The artifact a dead run may have completed, named by its
            // own record (never guessed from an unreadable one).
            if let Some(artifact) = running
                .as_ref()
                .map(|r| r.artifact.as_str())
                .filter(|a| super::artifact_id(a) == Some(id))
            {
                let artifact = Repository::backup_key(artifact);
                match storage.size(&artifact) {
                    Ok(None) => {}
                    Ok(Some(bytes)) => {
                        partial_bytes = bytes;
                        if storage.delete(&artifact).is_err() {
                            continue;
                        }
                    }
                    Err(_) => continue,
                }
            }
            let (host, pid, started_at) = running
                .map(|r| (r.host, r.pid.to_string(), r.started_at))
                .unwrap_or_else(|| ("?".into(), "?".into(), "unknown".into()));
            let aborted = if sweep.aborted.contains(id) {
                "; its open upload was aborted now"
            } else {
                ""
            };
            let mut error = Error::new(
                ErrorKind::Interrupted {
                    signal: libc::SIGKILL,
                },
                format!(
                    "left behind by a run that died before it could clean up (host {host}, pid {pid}: killed, crashed, or cut off from the bucket){aborted}"
                ),
            );
            if let Some(failed) = &sweep.failed {
                error = error.with_hint(format!(
                    "open uploads could not be swept ({failed}): the next run tries again, and the bucket's lifecycle rule (AbortIncompleteMultipartUpload) removes any left"
                ));
            }
            let record = QuarantineRecord::now(
                id,
                database,
                &started_at,
                String::new(),
                partial_bytes,
                &error,
            );
            if self.put_reason(storage, &record).is_ok() {
                let _ = storage.delete(&marker);
            }
        }
    }

    /// The quarantine records in a bucket, as [`Repository::quarantined`].
    pub(super) fn bucket_quarantined(
        &self,
        storage: &dyn Storage,
    ) -> Result<(Vec<QuarantineRecord>, Vec<DamagedFile>)> {
        let objects = storage
            .list("quarantine")
            .map_err(|e| remote_error(storage, "cannot list", "quarantine", e))?;
        let mut records = Vec::new();
        let mut damaged = Vec::new();
        for object in objects {
            if !object.name.contains(REASON_SUFFIX) {
                continue;
            }
            let key = format!("quarantine/{}", object.name);
            let record = storage
                .read_whole(&key, 1 << 20)
                .map_err(|e| e.to_string())
                .and_then(|text| {
                    serde_json::from_slice::<QuarantineRecord>(&text).map_err(|e| e.to_string())
                });
            match record {
                Ok(record) if is_backup_id(&record.id) => records.push(record),
                Ok(record) => damaged.push(DamagedFile {
                    file: key,
                    cause: format!("{:?} is not a backup id", record.id),
                    id: None,
                }),
                Err(cause) => damaged.push(DamagedFile {
                    file: key,
                    cause,
                    id: None,
                }),
            }
        }
        Ok((records, damaged))
    }

    /// Removes a quarantine record from a bucket: the object of this id
    /// that holds exactly `record` (an id can have several, `.N`).
    pub(super) fn remove_bucket_quarantined(
        &self,
        storage: &dyn Storage,
        record: &QuarantineRecord,
    ) -> Result<Vec<String>> {
        let objects = storage
            .list("quarantine")
            .map_err(|e| remote_error(storage, "cannot list", "quarantine", e))?;
        let base = format!("{}{REASON_SUFFIX}", record.id);
        let mut removed = Vec::new();
        for object in objects {
            let ours = object.name == base
                || object
                    .name
                    .strip_prefix(&format!("{base}."))
                    .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
            let key = format!("quarantine/{}", object.name);
            let same = ours
                && storage
                    .read_whole(&key, 1 << 20)
                    .ok()
                    .and_then(|text| serde_json::from_slice::<QuarantineRecord>(&text).ok())
                    .is_some_and(|found| found == *record);
            if same {
                storage
                    .delete(&key)
                    .map_err(|e| remote_error(storage, "cannot remove", &key, e))?;
                removed.push(storage.describe(&key));
            }
        }
        Ok(removed)
    }
}
