//! The backup repository on local disk: its layout, the commit protocol
//! that makes a backup exist, the quarantine where failures go, and the
//! catalog of what is there.
//!
//! ```text
//! REPO/pgward-repository.json      marker and layout version
//! REPO/backups/ID.dump.zst         artifact (zstd-compressed pg_dump custom-format archive)
//! REPO/backups/ID.dump.zst.gpg     the same, encrypted (an OpenPGP message)
//! REPO/backups/ID.manifest.json    manifest, written last: the completion mark
//! REPO/backups/ID.drill.json       the verdict of the backup's last restore drill
//! REPO/quarantine/ID.dump.zst.partial + ID.reason.json   failed runs, kept for forensics
//! REPO/tmp/                        staging files of runs in progress, restore spools
//! REPO/locks/DBKEY.lock            one run per database at a time
//! ```
//!
//! Everything is created private (directories 0700, files 0600). Commit
//! protocol (after rustic's and restic's local backends): write the staging
//! file, fsync it, validate it, rename it into `backups/`, fsync the
//! directory, then write the manifest the same way. A crash at any point
//! leaves at worst a staging file, which the next run of that database moves
//! to quarantine, or an artifact without a manifest, which is not a backup.
//!
//! Everything read back is input, since others may write a repository: a
//! manifest counts only when its id has the exact form pgward writes and
//! names its artifact file (no path leaves `backups/`), files are opened
//! without following links and must be regular ([`open_regular`]), a
//! damaged file is listed apart and never stops the rest ([`Catalog`]),
//! and a repository others can write is refused ([`unsafe_permissions`]).
//!
//! The same layout in an S3-compatible bucket (`s3://bucket/prefix`) is a
//! *remote* repository ([`Repository::open_remote`]), reached through the
//! [`crate::storage`] interface. Its backups are written by `backup` and
//! `run` straight into the bucket ([`bucket`]: upload, validate, read
//! back, manifest last; failures recorded in `quarantine/`), under a
//! lease lock that works across hosts ([`lease`]), and by `pgward copy`
//! and `[[mirror]]` (artifact first, manifest last, neither ever
//! replacing an object); they are read by the catalog, `verify`,
//! `restore` and `drill` exactly as on disk, and pruned as on disk. Its
//! journal is kept in the bucket ([`crate::journal`]). `apply` and
//! `grants`, which keep reports and plans beside the backups, refuse it
//! ([`crate::Config::repository_path`]).

pub mod bucket;
pub mod inspect;
pub mod lease;
pub mod lock;
pub mod manifest;
pub mod removal;
pub mod select;

use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::Observer;
use crate::pipeline::hash::StreamHasher;
use crate::signing::SignaturePin;
use crate::storage::Storage;
use lock::{RepoLock, RunLock};
use manifest::{MANIFEST_FORMAT, MANIFEST_VERSION, Manifest, QuarantineRecord};
use serde::Serialize;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MARKER: &str = "pgward-repository.json";
const LAYOUT_VERSION: u32 = 1;
/// A zstd-compressed pg_dump custom-format archive.
pub const ARTIFACT_SUFFIX: &str = ".dump.zst";
/// The same, encrypted: one OpenPGP message.
pub const ENCRYPTED_ARTIFACT_SUFFIX: &str = ".dump.zst.gpg";
/// Artifacts of manifest v1 (pg_dump tar archives), still recognised.
const LEGACY_ARTIFACT_SUFFIX: &str = ".tar.zst";
const MANIFEST_SUFFIX: &str = ".manifest.json";
const DRILL_SUFFIX: &str = ".drill.json";
/// A restore's files in `tmp/`: `restore-PID-ID.archive` (the spool),
/// `.list`, `.schema.list`, `.toc`.
const RESTORE_PREFIX: &str = "restore-";
const STAGING_SUFFIX: &str = ".dump.zst.tmp";
const LEGACY_STAGING_SUFFIX: &str = ".tar.zst.tmp";
const PARTIAL_SUFFIX: &str = ".dump.zst.partial";
pub(crate) const REASON_SUFFIX: &str = ".reason.json";
const RESERVED_REASON_SUFFIX: &str = ".reason.json.reserved";
/// A manifest written in `tmp/` before the commit renames it into place.
const MANIFEST_STAGING_SUFFIX: &str = ".manifest.json.tmp";
/// Space set aside for a quarantine record when a run starts, so that the
/// record can still be written when the run failed because the disk is full.
const REASON_RESERVE: usize = 8192;

#[derive(Debug, Clone)]
pub struct Repository {
    /// The directory; for a remote repository, its URL (for messages only).
    root: PathBuf,
    /// The key manifests must be signed by (`[signing]`), if any.
    pin: Option<Arc<SignaturePin>>,
    /// Set for a repository in object storage.
    remote: Option<Arc<dyn Storage>>,
    /// How long a run's lock in a bucket lasts unrenewed.
    lease: std::time::Duration,
}

/// A staging file being written by a backup in progress, and the space
/// reserved for its quarantine record.
#[derive(Debug)]
pub struct Staging {
    pub id: String,
    pub path: PathBuf,
    reserved_reason: PathBuf,
}

impl Repository {
    /// Opens the repository at `root`, creating it (and its layout) if needed.
    pub fn init(root: &Path) -> Result<Repository> {
        let repo = Repository {
            root: root.to_path_buf(),
            pin: None,
            remote: None,
            lease: lease::DEFAULT_LEASE,
        };
        // What exists already is checked before anything is created in it.
        refuse_unsafe_permissions(root)?;
        for dir in [
            root.to_path_buf(),
            repo.backups_dir(),
            repo.quarantine_dir(),
            repo.tmp_dir(),
            repo.locks_dir(),
        ] {
            if fs::symlink_metadata(&dir).is_err() {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)
                    .map_err(|e| Error::repository_io("cannot create directory", &dir, e))?;
            }
        }
        let marker = root.join(MARKER);
        if !marker.exists() {
            let body = serde_json::json!({"format": "pgward-repository", "layout-version": LAYOUT_VERSION});
            write_json_durably(&marker, &repo.tmp_dir(), &body)?;
        }
        refuse_unsafe_permissions(root)?;
        // Probe writability now rather than after pg_dump has run.
        let probe = repo
            .tmp_dir()
            .join(format!(".probe-{}", std::process::id()));
        create_private(&probe)
            .and_then(|_| fs::remove_file(&probe))
            .map_err(|e| Error::repository_io("cannot write to repository", &repo.tmp_dir(), e))?;
        Ok(repo)
    }

    /// Opens an existing repository for reading.
    pub fn open(root: &Path) -> Result<Repository> {
        if !root.join(MARKER).is_file() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("no pgward repository at {}", root.display()),
            )
            .with_hint("check --repo / PGWARD_REPO; a repository is created by the first backup"));
        }
        refuse_unsafe_permissions(root)?;
        Ok(Repository {
            root: root.to_path_buf(),
            pin: None,
            remote: None,
            lease: lease::DEFAULT_LEASE,
        })
    }

    /// Opens an existing repository in object storage for reading.
    pub fn open_remote(storage: Arc<dyn Storage>) -> Result<Repository> {
        let url = storage.location();
        match storage.read_whole(MARKER, 4096) {
            Ok(text) => {
                let marker: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
                if marker["format"] != "pgward-repository" {
                    return Err(Error::repository(format!(
                        "{url}/{MARKER} is not a pgward repository marker"
                    )));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A HEAD has no body to say "no such bucket": a listing does.
                if let Err(e) = storage.list("backups") {
                    return Err(Error::repository(format!("cannot open {url}: {e}"))
                        .with_hint("check [s3] endpoint, region and credentials, and that the bucket exists"));
                }
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("no pgward repository at {url}"),
                )
                .with_hint("check --repo / PGWARD_REPO; `pgward copy --to URL` creates one"));
            }
            Err(e) => {
                return Err(Error::repository(format!("cannot open {url}: {e}"))
                    .with_hint("run `pgward check` for the bucket's readiness"));
            }
        }
        Ok(Repository {
            root: PathBuf::from(url),
            pin: None,
            remote: Some(storage),
            lease: lease::DEFAULT_LEASE,
        })
    }

    /// Opens the repository in `storage`, creating its marker first if it
    /// has none (a copy's destination).
    pub fn init_remote(storage: Arc<dyn Storage>) -> Result<Repository> {
        let body =
            serde_json::json!({"format": "pgward-repository", "layout-version": LAYOUT_VERSION});
        let text = serde_json::to_vec_pretty(&body).expect("markers serialise");
        // Listing first: a missing bucket or refused credentials are named
        // before anything is written (some services create a bucket on
        // the first write).
        storage.list("backups").map_err(|e| {
            Error::repository(format!("cannot use {}: {e}", storage.location()))
                .with_hint("check [s3] endpoint, region and credentials, and that the bucket exists (`pgward check` probes it)")
        })?;
        match storage.put_new(MARKER, &text) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(Error::repository(format!(
                    "cannot write to {}: {e}",
                    storage.describe(MARKER)
                )));
            }
            _ => {}
        }
        Repository::open_remote(storage)
    }

    /// Opens the repository at `location` for reading.
    pub fn open_at(
        location: &crate::config::Location,
        config: &crate::Config,
    ) -> Result<Repository> {
        match location {
            crate::config::Location::Local(path) => Repository::open(path),
            crate::config::Location::S3(s3) => Ok(Repository {
                lease: config.s3.lock_lease()?,
                ..Repository::open_remote(Arc::new(crate::storage::s3::S3Storage::new(
                    s3,
                    &config.s3,
                    &crate::process_env,
                )?))?
            }),
        }
    }

    /// Opens the repository at `location`, creating it if needed.
    pub fn init_at(
        location: &crate::config::Location,
        config: &crate::Config,
    ) -> Result<Repository> {
        match location {
            crate::config::Location::Local(path) => Repository::init(path),
            crate::config::Location::S3(s3) => Ok(Repository {
                lease: config.s3.lock_lease()?,
                ..Repository::init_remote(Arc::new(crate::storage::s3::S3Storage::new(
                    s3,
                    &config.s3,
                    &crate::process_env,
                )?))?
            }),
        }
    }

    /// Opens the configured repository for reading, trusting only the
    /// manifests the configuration trusts (signed, with `[signing]`).
    pub fn open_configured(config: &crate::Config) -> Result<Repository> {
        let pin = crate::signing::pin(&config.signing)?;
        Ok(Repository::open_at(&config.repository_location()?, config)?.trusting(pin))
    }

    /// Whether the repository is in object storage.
    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// The repository's files through the storage interface.
    pub fn storage(&self) -> Arc<dyn Storage> {
        match &self.remote {
            Some(storage) => storage.clone(),
            None => Arc::new(crate::storage::local::LocalStorage::new(&self.root)),
        }
    }

    /// The key of `file` in `backups/`.
    pub fn backup_key(file: &str) -> String {
        format!("backups/{file}")
    }

    /// [`Repository::init`] of the configured repository, with the
    /// configuration's trust as in [`Repository::open_configured`].
    pub fn init_configured(config: &crate::Config) -> Result<Repository> {
        let pin = crate::signing::pin(&config.signing)?;
        Ok(Repository::init(config.repository_path()?)?.trusting(pin))
    }

    /// The repository, accepting only manifests signed by `pin` if set.
    pub fn trusting(mut self, pin: Option<Arc<SignaturePin>>) -> Repository {
        self.pin = pin;
        self
    }

    /// The key manifests must be signed by, if signatures are required.
    pub fn signature_pin(&self) -> Option<&SignaturePin> {
        self.pin.as_deref()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn backups_dir(&self) -> PathBuf {
        self.root.join("backups")
    }

    fn quarantine_dir(&self) -> PathBuf {
        self.root.join("quarantine")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }

    /// The artifact of a manifest from [`Repository::catalog`], whose
    /// file name was checked to be its id's: it stays inside `backups/`.
    pub fn artifact_path(&self, manifest: &Manifest) -> PathBuf {
        self.backups_dir().join(&manifest.artifact.file)
    }

    /// Whether `backups/` holds a file named `file` (never followed). In
    /// a bucket a failed request counts as "yes": the answer guards
    /// against writing plaintext where an encrypted backup may be.
    pub fn has_artifact(&self, file: &str) -> bool {
        if let Some(storage) = &self.remote {
            return !matches!(storage.size(&Repository::backup_key(file)), Ok(None));
        }
        fs::symlink_metadata(self.backups_dir().join(file)).is_ok()
    }

    /// Opens the artifact of `manifest` for reading: a regular file in
    /// `backups/`, never a link, a FIFO or a device.
    pub fn open_artifact(&self, manifest: &Manifest) -> std::io::Result<File> {
        if self.remote.is_some() {
            return Err(std::io::Error::other(
                "a remote artifact is read as a stream (open_artifact_stream)",
            ));
        }
        open_trusted(&self.artifact_path(manifest))
    }

    /// The artifact of `manifest` as a stream, with its stored size: a
    /// file on disk, or an object read as one streamed GET.
    pub fn open_artifact_stream(
        &self,
        manifest: &Manifest,
    ) -> std::io::Result<(Box<dyn std::io::Read + Send>, u64)> {
        self.open_artifact_versioned(manifest)
            .map(|opened| (opened.stream, opened.bytes))
    }

    /// The artifact of `manifest` as [`open_artifact_stream`] opens it,
    /// with its version in a bucket: a reader that reads it twice passes
    /// that to [`Repository::reopen_artifact`].
    ///
    /// [`open_artifact_stream`]: Repository::open_artifact_stream
    pub fn open_artifact_versioned(
        &self,
        manifest: &Manifest,
    ) -> std::io::Result<crate::storage::Opened> {
        match &self.remote {
            Some(storage) => {
                storage.open_versioned(&Repository::backup_key(&manifest.artifact.file))
            }
            None => {
                let file = self.open_artifact(manifest)?;
                Ok(crate::storage::Opened {
                    bytes: file.metadata()?.len(),
                    stream: Box::new(file),
                    version: None,
                })
            }
        }
    }

    /// The artifact of `manifest` read again: in a bucket, only if it is
    /// still the `version` the first read saw (a replaced object is
    /// refused, rather than read as if it were the one checked).
    pub fn reopen_artifact(
        &self,
        manifest: &Manifest,
        version: Option<&str>,
    ) -> std::io::Result<Box<dyn std::io::Read + Send>> {
        match (&self.remote, version) {
            (Some(storage), Some(version)) => {
                storage.open_at_version(&Repository::backup_key(&manifest.artifact.file), version)
            }
            _ => self
                .open_artifact_stream(manifest)
                .map(|(stream, _)| stream),
        }
    }

    /// Where a backup's manifest is (for a remote repository, its URL).
    pub fn manifest_path(&self, id: &str) -> PathBuf {
        self.backups_dir().join(format!("{id}{MANIFEST_SUFFIX}"))
    }

    pub fn drill_record_path(&self, id: &str) -> PathBuf {
        self.backups_dir().join(format!("{id}{DRILL_SUFFIX}"))
    }

    /// Records a drill's verdict beside its backup (replacing the last one).
    pub fn save_drill_record(&self, record: &manifest::DrillRecord) -> Result<()> {
        if let Some(storage) = &self.remote {
            let key = Repository::backup_key(&format!("{}{DRILL_SUFFIX}", record.backup_id));
            let mut text = serde_json::to_vec_pretty(record).expect("records serialise");
            text.push(b'\n');
            return storage.put_replacing(&key, &text).map_err(|e| {
                Error::repository(format!("cannot write {}: {e}", storage.describe(&key)))
            });
        }
        write_json_durably(
            &self.drill_record_path(&record.backup_id),
            &self.tmp_dir(),
            record,
        )
    }

    /// The last drill of backup `id`, if it was ever drilled. An unreadable
    /// record is an error: a failed drill must not turn into "never drilled".
    pub fn drill_record(&self, id: &str) -> Result<Option<manifest::DrillRecord>> {
        let path = self.drill_record_path(id);
        let read = match &self.remote {
            Some(storage) => storage
                .read_whole(
                    &Repository::backup_key(&format!("{id}{DRILL_SUFFIX}")),
                    MAX_RECORD_BYTES,
                )
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
            None => read_regular(&path),
        };
        let text = match read {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::repository_io("cannot read drill record", &path, e)),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| {
                Error::new(
                    ErrorKind::Integrity,
                    format!("drill record {} is unreadable: {e}", path.display()),
                )
            })
            .and_then(|record: Option<manifest::DrillRecord>| match &record {
                Some(r) if r.backup_id != id => Err(Error::new(
                    ErrorKind::Integrity,
                    format!(
                        "drill record {} is of backup {:?}",
                        path.display(),
                        r.backup_id
                    ),
                )),
                _ => Ok(record),
            })
    }

    /// `tmp/restore-PID-ID.SUFFIX`: a file of this process's restore of `id`.
    pub fn restore_file(&self, id: &str, suffix: &str) -> PathBuf {
        self.spool_dir().join(format!(
            "{RESTORE_PREFIX}{}-{id}.{suffix}",
            std::process::id()
        ))
    }

    /// Removes the files of restores that died (their pid is gone): a
    /// spool holds plaintext and must not outlive its restore.
    pub fn remove_stale_restore_files(&self) {
        let Ok(entries) = fs::read_dir(self.spool_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix(RESTORE_PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<i32>().ok());
            if let Some(pid) = pid
                && !process_alive(pid)
            {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Where a restore's local files go: the repository's `tmp/`, or for
    /// a remote repository a private directory of this user's in the
    /// system's temporary directory (TMPDIR), created 0700 and refused if
    /// someone else owns it or can enter it.
    fn spool_dir(&self) -> PathBuf {
        if self.remote.is_none() {
            return self.tmp_dir();
        }
        user_temp_dir()
    }

    /// Makes sure the directory of a restore's files exists and is private
    /// (see [`Repository::spool_dir`]); called before any is written.
    pub(crate) fn prepare_spool_dir(&self) -> Result<()> {
        if self.remote.is_none() {
            return Ok(());
        }
        private_temp_dir().map(|_| ())
    }

    /// Creates the private file a restore decompresses backup `id` into.
    pub fn create_spool(&self, id: &str) -> Result<(PathBuf, File)> {
        self.prepare_spool_dir()?;
        let path = self.restore_file(id, "archive");
        let file = create_private(&path)
            .map_err(|e| Error::repository_io("cannot create the restore spool", &path, e))?;
        Ok((path, file))
    }

    /// Takes the per-database lock, then cleans up what earlier runs left
    /// behind when they died: this database's, and every other database's
    /// whose lock is free right now (no run of it is alive).
    pub fn lock(&self, database: &str) -> Result<RunLock> {
        let key = database_key(database);
        if let Some(storage) = &self.remote {
            let lease = lease::Lease::acquire(
                storage.clone(),
                &format!("locks/{key}.lock"),
                database,
                self.lease,
            )?;
            let _ = self.finish_interrupted_removals();
            self.clear_bucket_leftovers(storage.as_ref(), database);
            return Ok(RunLock::Bucket(lease));
        }
        let lock = RepoLock::acquire(&self.locks_dir().join(format!("{key}.lock")), database)?;
        // A prune killed half way: its artifacts are finished off, never
        // mistaken for leftovers to keep.
        let _ = self.finish_interrupted_removals();
        self.remove_dead_staging_files();
        self.clear_leftovers(&key, database)?;
        let others: std::collections::BTreeSet<String> = self
            .leftover_ids()?
            .iter()
            .filter_map(|id| id_database_key(id))
            .filter(|k| *k != key)
            .map(String::from)
            .collect();
        for other in others {
            let Some(_held) = RepoLock::try_now(&self.locks_dir().join(format!("{other}.lock")))
            else {
                continue;
            };
            // Its real name is in its manifests; the key stands in when
            // there is none.
            let name = self
                .backups()?
                .into_iter()
                .find(|m| database_key(&m.database) == other)
                .map_or(other.clone(), |m| m.database);
            self.clear_leftovers(&other, &name)?;
        }
        Ok(RunLock::Local(lock))
    }

    /// The backup ids that files left in `tmp/` and artifacts without a
    /// manifest carry.
    fn leftover_ids(&self) -> Result<Vec<String>> {
        let mut ids: Vec<String> = fs::read_dir(self.tmp_dir())
            .map_err(|e| Error::repository_io("cannot read", &self.tmp_dir(), e))?
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                [
                    STAGING_SUFFIX,
                    LEGACY_STAGING_SUFFIX,
                    RESERVED_REASON_SUFFIX,
                    MANIFEST_STAGING_SUFFIX,
                ]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix).map(String::from))
            })
            .filter(|id| is_backup_id(id))
            .collect();
        ids.extend(
            self.orphans()?
                .iter()
                .filter_map(|name| artifact_id(name).map(String::from)),
        );
        Ok(ids)
    }

    /// Removes the staging files of [`write_bytes_durably`]
    /// (`NAME.PID.tmp`) whose process is gone: whole records that never
    /// got their name, or parts of one.
    fn remove_dead_staging_files(&self) {
        let Ok(entries) = fs::read_dir(self.tmp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_suffix(".tmp")
                .and_then(|rest| rest.rsplit_once('.'))
                .and_then(|(_, pid)| pid.parse::<i32>().ok());
            if let Some(pid) = pid
                && pid > 0
                && !process_alive(pid)
            {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Moves what dead runs of database `key` left into quarantine:
    /// staging files and artifacts without a manifest (with a reason
    /// record each), manifests that were never renamed into place, and
    /// quarantine reservations with anything written in them; an empty or
    /// blank reservation is removed. Nothing here is a backup.
    fn clear_leftovers(&self, key: &str, database: &str) -> Result<()> {
        // Staging files of runs that died without cleaning up, and artifacts
        // without a manifest (a run died between the two renames of its
        // commit). Neither is a backup; both are kept for inspection.
        let staged = fs::read_dir(self.tmp_dir())
            .map_err(|e| Error::repository_io("cannot read", &self.tmp_dir(), e))?
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_str()?.to_string();
                let id = name
                    .strip_suffix(STAGING_SUFFIX)
                    .or_else(|| name.strip_suffix(LEGACY_STAGING_SUFFIX))?
                    .to_string();
                Some((id, entry.path(), "left behind by a run that died before it could clean up (killed, crashed or power loss)"))
            });
        let orphans = self.orphans()?.into_iter().filter_map(|name| {
            let id = artifact_id(&name)?.to_string();
            Some((
                id,
                self.backups_dir().join(&name),
                "artifact without a manifest: its run died while committing",
            ))
        });
        let leftovers: Vec<_> = staged.chain(orphans).collect();
        for (id, path, why) in leftovers {
            if !is_backup_id(&id) || id_database_key(&id) != Some(key) {
                continue;
            }
            let error = Error::new(
                ErrorKind::Interrupted {
                    signal: libc::SIGKILL,
                },
                why,
            );
            let mut staging = self.staging_paths(&id);
            staging.path = path;
            // One leftover that cannot be moved (a name already taken in
            // quarantine, say) must not stop this database's backups.
            let _ = self.quarantine(staging, database, "unknown", &error);
        }
        // What is left of this database in tmp/ now: manifests that never
        // got their name, and reservations of runs that left no staging
        // file (killed after the commit, or before the dump started).
        for entry in fs::read_dir(self.tmp_dir())
            .map_err(|e| Error::repository_io("cannot read", &self.tmp_dir(), e))?
            .flatten()
        {
            let Some(name) = entry.file_name().to_str().map(String::from) else {
                continue;
            };
            let path = entry.path();
            let ours = |id: &str| is_backup_id(id) && id_database_key(id) == Some(key);
            if let Some(id) = name.strip_suffix(MANIFEST_STAGING_SUFFIX)
                && ours(id)
            {
                let _ = self.keep_in_quarantine(&path, &format!("{id}{MANIFEST_SUFFIX}.partial"));
            } else if let Some(id) = name.strip_suffix(RESERVED_REASON_SUFFIX)
                && ours(id)
            {
                let blank = read_regular(&path)
                    .map(|text| text.bytes().all(|b| b == b' '))
                    .unwrap_or(false);
                if blank {
                    let _ = fs::remove_file(&path);
                } else {
                    let _ = self.keep_in_quarantine(&path, &format!("{id}{REASON_SUFFIX}.partial"));
                }
            }
        }
        Ok(())
    }

    /// Moves `path` into `quarantine/` as `name`, or `name.N` when that is
    /// taken: evidence is never overwritten, and never blocks a run.
    fn keep_in_quarantine(&self, path: &Path, name: &str) -> std::io::Result<PathBuf> {
        let mut target = self.quarantine_dir().join(name);
        for n in 1..100 {
            match rename_no_replace(path, &target) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    target = self.quarantine_dir().join(format!("{name}.{n}"));
                }
                other => return other.map(|()| target),
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{name} and 99 more names are taken in quarantine"),
        ))
    }

    fn staging_paths(&self, id: &str) -> Staging {
        Staging {
            id: id.to_string(),
            path: self.tmp_dir().join(format!("{id}{STAGING_SUFFIX}")),
            reserved_reason: self.tmp_dir().join(format!("{id}{RESERVED_REASON_SUFFIX}")),
        }
    }

    /// A new, private, empty staging file for backup `id`, with space for
    /// its quarantine record reserved beside it.
    pub fn create_staging(&self, id: &str) -> Result<(Staging, File)> {
        let staging = self.staging_paths(id);
        create_private(&staging.reserved_reason)
            .and_then(|mut f| {
                f.write_all(&[b' '; REASON_RESERVE])?;
                f.sync_all()
            })
            .map_err(|e| Error::repository_io("cannot create", &staging.reserved_reason, e))?;
        let file = create_private(&staging.path)
            .map_err(|e| Error::repository_io("cannot create", &staging.path, e))?;
        Ok((staging, file))
    }

    /// Makes a validated staging file a backup. The manifest is written and
    /// synced in `tmp/` first, so that the commit itself is two renames
    /// that need no free space: artifact into `backups/`, then the manifest
    /// (the completion mark), then a directory sync. Renames never replace
    /// an existing file. On failure the staging value says where the
    /// artifact is now, for the caller to quarantine it.
    pub fn commit(
        &self,
        mut staging: Staging,
        manifest: &Manifest,
    ) -> Result<(PathBuf, PathBuf), Box<(Staging, Error)>> {
        let artifact = self.backups_dir().join(&manifest.artifact.file);
        let manifest_path = self.manifest_path(&manifest.id);
        let manifest_staging = self
            .tmp_dir()
            .join(format!("{}{MANIFEST_STAGING_SUFFIX}", manifest.id));
        let mut text = serde_json::to_vec_pretty(manifest).expect("manifests serialise");
        text.push(b'\n');
        let written = create_private(&manifest_staging).and_then(|mut file| {
            file.write_all(&text)?;
            file.sync_all()
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&manifest_staging);
            let error = Error::repository_io("cannot write", &manifest_staging, e);
            return Err(Box::new((staging, error)));
        }
        if let Err(e) = rename_no_replace(&staging.path, &artifact) {
            let _ = fs::remove_file(&manifest_staging);
            let error = Error::repository_io("cannot move artifact into", &artifact, e);
            return Err(Box::new((staging, error)));
        }
        staging.path = artifact.clone();
        let committed = rename_no_replace(&manifest_staging, &manifest_path)
            .map_err(|e| Error::repository_io("cannot move manifest into", &manifest_path, e))
            .and_then(|()| sync_dir(&self.backups_dir()));
        if let Err(e) = committed {
            let _ = fs::remove_file(&manifest_staging);
            return Err(Box::new((staging, e)));
        }
        let _ = fs::remove_file(&staging.reserved_reason);
        Ok((artifact, manifest_path))
    }

    /// Moves a failed run's staging file to `quarantine/` with a record of
    /// why; returns the partial file's new path.
    pub fn quarantine(
        &self,
        staging: Staging,
        database: &str,
        started_at: &str,
        error: &Error,
    ) -> Result<PathBuf> {
        let partial_bytes = fs::symlink_metadata(&staging.path)
            .map(|m| m.len())
            .unwrap_or(0);
        let partial = self
            .keep_in_quarantine(&staging.path, &format!("{}{PARTIAL_SUFFIX}", staging.id))
            .map_err(|e| Error::repository_io("cannot quarantine", &staging.path, e))?;
        let record = QuarantineRecord::now(
            &staging.id,
            database,
            started_at,
            partial.file_name().unwrap().to_string_lossy().into_owned(),
            partial_bytes,
            error,
        );
        // The record is named like the partial file it explains.
        let partial_name = partial.file_name().unwrap().to_string_lossy().into_owned();
        let reason = self.quarantine_dir().join(format!(
            "{}{REASON_SUFFIX}{}",
            staging.id,
            partial_name
                .strip_prefix(&format!("{}{PARTIAL_SUFFIX}", staging.id))
                .unwrap_or_default()
        ));
        write_reason(&staging.reserved_reason, &reason, &record)?;
        Ok(partial)
    }

    /// All complete backups, newest first. Damaged manifests are left
    /// out here; [`Repository::catalog`] names them.
    pub fn backups(&self) -> Result<Vec<Manifest>> {
        Ok(self.catalog()?.backups)
    }

    /// Every manifest in `backups/`: the intact ones, newest first, and
    /// the damaged ones with their cause. A manifest is intact when it is a
    /// regular file that parses, of a format this pgward reads, whose id is
    /// one pgward writes and matches its file name, and whose artifact file
    /// is the one its id names (so that no path leads out of `backups/`).
    /// A damaged one is never a backup, and never stops the others.
    pub fn catalog(&self) -> Result<Catalog> {
        if let Some(storage) = &self.remote {
            return self.remote_catalog(storage.as_ref());
        }
        let mut catalog = Catalog::default();
        for path in list_with_suffix(&self.backups_dir(), MANIFEST_SUFFIX)? {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let id = name.strip_suffix(MANIFEST_SUFFIX).unwrap_or_default();
            match read_manifest(&path, id, self.pin.as_deref()) {
                Ok(manifest) => catalog.backups.push(manifest),
                Err(cause) => catalog.damaged.push(DamagedFile {
                    file: format!("backups/{name}"),
                    cause,
                    id: is_backup_id(id).then(|| id.to_string()),
                }),
            }
        }
        Ok(catalog.sorted())
    }

    /// [`Repository::catalog`] of a remote repository: the same checks on
    /// the same names, read through the storage interface.
    fn remote_catalog(&self, storage: &dyn Storage) -> Result<Catalog> {
        let mut catalog = Catalog::default();
        let objects = storage.list("backups").map_err(|e| {
            Error::repository(format!("cannot list {}: {e}", storage.describe("backups")))
        })?;
        for object in objects {
            let Some(id) = object.name.strip_suffix(MANIFEST_SUFFIX) else {
                continue;
            };
            let key = Repository::backup_key(&object.name);
            // A request that fails is the storage's failure, not a damaged
            // manifest: the catalog fails rather than leave a backup out
            // (`latest` would quietly mean an older one).
            let bytes = match storage.read_whole(&key, MAX_RECORD_BYTES) {
                Ok(bytes) => Ok(bytes),
                // Removed since the listing.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(e.to_string()),
                Err(e) => {
                    return Err(Error::repository(format!(
                        "cannot read {}: {e}",
                        storage.describe(&key)
                    )));
                }
            };
            let checked = bytes
                .and_then(|bytes| String::from_utf8(bytes).map_err(|e| e.to_string()))
                .and_then(|text| parse_manifest(&text, id, self.pin.as_deref()));
            match checked {
                Ok(manifest) => catalog.backups.push(manifest),
                Err(cause) => catalog.damaged.push(DamagedFile {
                    file: key,
                    cause,
                    id: is_backup_id(id).then(|| id.to_string()),
                }),
            }
        }
        Ok(catalog.sorted())
    }

    /// Quarantined runs, newest first; reason records that cannot be read
    /// are listed apart.
    pub fn quarantined(&self) -> Result<(Vec<QuarantineRecord>, Vec<DamagedFile>)> {
        let (mut records, damaged) = match &self.remote {
            Some(storage) => self.bucket_quarantined(storage.as_ref())?,
            None => self.local_quarantined()?,
        };
        records.sort_by(|a, b| {
            b.quarantined_at
                .cmp(&a.quarantined_at)
                .then(b.id.cmp(&a.id))
        });
        Ok((records, damaged))
    }

    fn local_quarantined(&self) -> Result<(Vec<QuarantineRecord>, Vec<DamagedFile>)> {
        let mut records = Vec::new();
        let mut damaged = Vec::new();
        for path in list_with_suffix(&self.quarantine_dir(), REASON_SUFFIX)? {
            let record = read_regular(&path)
                .map_err(|e| e.to_string())
                .and_then(|text| {
                    serde_json::from_str::<QuarantineRecord>(&text).map_err(|e| e.to_string())
                });
            match record {
                Ok(record) => records.push(record),
                Err(cause) => damaged.push(DamagedFile {
                    file: format!(
                        "quarantine/{}",
                        path.file_name().unwrap_or_default().to_string_lossy()
                    ),
                    cause,
                    id: None,
                }),
            }
        }
        Ok((records, damaged))
    }

    /// Artifacts in `backups/` that have no manifest (a crash between the
    /// two renames): not backups, but worth showing.
    /// An artifact whose manifest exists but is damaged is no orphan: it
    /// may be a good backup whose record needs repair, and must stay.
    pub fn orphans(&self) -> Result<Vec<String>> {
        if let Some(storage) = &self.remote {
            let objects = storage.list("backups").map_err(|e| {
                Error::repository(format!("cannot list {}: {e}", storage.describe("backups")))
            })?;
            let manifests: Vec<&str> = objects
                .iter()
                .filter_map(|o| o.name.strip_suffix(MANIFEST_SUFFIX))
                .collect();
            let mut names: Vec<String> = objects
                .iter()
                .filter(|o| {
                    artifact_id(&o.name).is_some_and(|id| {
                        is_backup_id(id) && !manifests.contains(&id) && !self.is_being_removed(id)
                    })
                })
                .map(|o| o.name.clone())
                .collect();
            names.sort();
            return Ok(names);
        }
        let manifests: Vec<String> = list_with_suffix(&self.backups_dir(), MANIFEST_SUFFIX)?
            .iter()
            .filter_map(|p| p.file_name())
            .filter_map(|n| {
                n.to_string_lossy()
                    .strip_suffix(MANIFEST_SUFFIX)
                    .map(String::from)
            })
            .collect();
        let mut found = Vec::new();
        for suffix in [
            ARTIFACT_SUFFIX,
            ENCRYPTED_ARTIFACT_SUFFIX,
            LEGACY_ARTIFACT_SUFFIX,
        ] {
            found.extend(list_with_suffix(&self.backups_dir(), suffix)?);
        }
        let mut names: Vec<String> = found
            .into_iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .filter(|name| {
                artifact_id(name).is_some_and(|id| {
                    is_backup_id(id)
                        && !manifests.iter().any(|m| m == id)
                        && !self.is_being_removed(id)
                })
            })
            .collect();
        names.sort();
        Ok(names)
    }

    fn apply_dir(&self) -> PathBuf {
        self.root.join("apply")
    }

    /// Saves an apply run's report as JSON and as Markdown (for a change
    /// ticket) under `apply/`; returns both paths.
    pub fn save_apply_report(
        &self,
        id: &str,
        report: &crate::apply::ApplyReport,
        markdown: &dyn Fn(&crate::apply::ApplyReport) -> String,
    ) -> Result<Vec<PathBuf>> {
        let dir = self.apply_dir();
        if !dir.is_dir() {
            DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|e| Error::repository_io("cannot create directory", &dir, e))?;
        }
        let json = dir.join(format!("{id}.json"));
        let md = dir.join(format!("{id}.md"));
        let mut with_paths = report.clone();
        with_paths.report_files = vec![json.clone(), md.clone()];
        write_bytes_durably(&md, &self.tmp_dir(), markdown(&with_paths).as_bytes())?;
        write_json_durably(&json, &self.tmp_dir(), &with_paths)?;
        Ok(vec![json, md])
    }

    fn grants_dir(&self) -> PathBuf {
        self.root.join("grants")
    }

    pub fn grant_plan_path(&self, id: &str) -> PathBuf {
        self.grants_dir().join(format!("{id}.json"))
    }

    /// Saves a grant plan as JSON with its two SQL scripts beside it.
    pub fn save_grant_plan(
        &self,
        plan: &crate::grants::GrantPlan,
        grant_sql: &str,
        revoke_sql: &str,
    ) -> Result<PathBuf> {
        let dir = self.grants_dir();
        if !dir.is_dir() {
            DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|e| Error::repository_io("cannot create directory", &dir, e))?;
        }
        for (suffix, text) in [("grant.sql", grant_sql), ("revoke.sql", revoke_sql)] {
            let path = dir.join(format!("{}.{suffix}", plan.id));
            write_bytes_durably(&path, &self.tmp_dir(), text.as_bytes())?;
        }
        let path = self.grant_plan_path(&plan.id);
        write_json_durably(&path, &self.tmp_dir(), plan)?;
        Ok(path)
    }

    /// Saved grant plans, newest first.
    pub fn grant_plans(&self) -> Result<GrantPlans> {
        let dir = self.grants_dir();
        let mut found = GrantPlans::default();
        if !dir.is_dir() {
            return Ok(found);
        }
        for path in list_with_suffix(&dir, ".json")? {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let stem = name.strip_suffix(".json").unwrap_or_default().to_string();
            let plan = open_trusted(&path)
                .and_then(read_whole)
                .map_err(|e| e.to_string())
                .and_then(|text| {
                    serde_json::from_str::<crate::grants::GrantPlan>(&text)
                        .map_err(|e| format!("not a readable grant plan ({e})"))
                })
                .and_then(|plan| {
                    if plan.id == stem {
                        Ok(plan)
                    } else {
                        Err(format!(
                            "not the plan its name says: it says id {:?}",
                            plan.id
                        ))
                    }
                });
            match plan {
                Ok(plan) => found.plans.push(plan),
                Err(cause) => found.damaged.push(DamagedFile {
                    file: format!("grants/{name}"),
                    cause,
                    id: Some(stem),
                }),
            }
        }
        found
            .plans
            .sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        Ok(found)
    }
}

/// The saved grant plans: the readable ones, newest first, and those that
/// cannot be trusted (never used, never stopping the others).
#[derive(Debug, Default)]
pub struct GrantPlans {
    pub plans: Vec<crate::grants::GrantPlan>,
    pub damaged: Vec<DamagedFile>,
}

/// Set to `1` to use a repository that other users may write (a shared
/// backup host where that is intended).
pub const SHARED_REPOSITORY_ENV: &str = "PGWARD_SHARED_REPOSITORY";

/// The repository's directories, relative to its root.
const DIRECTORIES: [&str; 6] = ["", "backups", "quarantine", "tmp", "locks", "grants"];

/// Why the repository at `root` is not safe to trust, with the remedy: a
/// directory writable by group or others, owned by someone other than the
/// user running pgward or root (both allowed with `PGWARD_SHARED_REPOSITORY=1`),
/// or (below the root, always) a symbolic link. Any of these would let
/// another local user plant files that pgward then reads as its own, as
/// ssh refuses key files others can write.
pub fn unsafe_permissions(root: &Path) -> Option<(String, String)> {
    use std::os::unix::fs::MetadataExt;
    let shared = std::env::var(SHARED_REPOSITORY_ENV).as_deref() == Ok("1");
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    for sub in DIRECTORIES {
        let dir = root.join(sub);
        let meta = if sub.is_empty() {
            fs::metadata(&dir)
        } else {
            fs::symlink_metadata(&dir)
        };
        let Ok(meta) = meta else { continue };
        if meta.file_type().is_symlink() {
            return Some((
                format!("repository directory {} is a symbolic link", dir.display()),
                format!(
                    "make it a real directory inside the repository (or point --repo at the real location); {SHARED_REPOSITORY_ENV}=1 does not change this"
                ),
            ));
        }
        let mode = meta.mode() & 0o7777;
        if shared {
            // Shared on purpose: others may write, but like /tmp only with
            // the sticky bit, so that nobody can rename, replace or remove
            // a file another user's run wrote and is about to read back
            // (a staged artifact, a restore's list file).
            if mode & 0o022 != 0 && mode & 0o1000 == 0 {
                return Some((
                    format!(
                        "shared repository directory {} is writable by others without the sticky bit (mode {mode:04o}): another user could replace files a run is about to read back",
                        dir.display()
                    ),
                    format!("chmod +t {}", dir.display()),
                ));
            }
            continue;
        }
        if mode & 0o022 != 0 {
            return Some((
                format!(
                    "repository directory {} is writable by {} (mode {mode:04o}): another local user could plant files that pgward would read as backups",
                    dir.display(),
                    if mode & 0o002 != 0 {
                        "everyone"
                    } else {
                        "its group"
                    }
                ),
                format!(
                    "chmod go-w {} (pgward creates its directories 0700), or set {SHARED_REPOSITORY_ENV}=1 if sharing it is intended",
                    dir.display()
                ),
            ));
        }
        if meta.uid() != me && meta.uid() != 0 {
            return Some((
                format!(
                    "repository directory {} is owned by uid {}, not by the user running pgward (uid {me}) or root",
                    dir.display(),
                    meta.uid()
                ),
                format!(
                    "run pgward as its owner, or chown it to the user that runs pgward; set {SHARED_REPOSITORY_ENV}=1 if sharing it is intended"
                ),
            ));
        }
    }
    None
}

fn refuse_unsafe_permissions(root: &Path) -> Result<()> {
    match unsafe_permissions(root) {
        None => Ok(()),
        Some((problem, hint)) => Err(Error::config(problem).with_hint(hint)),
    }
}

/// The catalog of `backups/`: what is a backup, and what is damaged.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Intact backups, newest first.
    pub backups: Vec<Manifest>,
    pub damaged: Vec<DamagedFile>,
}

impl Catalog {
    /// Newest backup first; damaged files by name, last first.
    fn sorted(mut self) -> Catalog {
        self.backups
            .sort_by(|a, b| b.started_at.cmp(&a.started_at).then(b.id.cmp(&a.id)));
        self.damaged.sort_by(|a, b| b.file.cmp(&a.file));
        self
    }
}

/// A file in the repository that pgward cannot trust: unreadable, not a
/// regular file, or inconsistent with its name. Never a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DamagedFile {
    /// Relative to the repository root, e.g. `backups/ID.manifest.json`.
    pub file: String,
    /// What is wrong with it, in a few words.
    pub cause: String,
    /// The backup id its name carries, when that is a valid id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// How a manifest this pgward cannot read is described.
const NEWER_FORMAT: &str = "of unsupported format";

impl DamagedFile {
    /// Whether it is a manifest written by a newer pgward: not damage,
    /// but nothing this version may pass over either.
    pub fn is_newer_format(&self) -> bool {
        self.cause.starts_with(NEWER_FORMAT)
    }

    /// Whether the file's name says it belongs to a backup of `database`.
    pub fn is_of_database(&self, database: &str) -> bool {
        self.id
            .as_deref()
            .and_then(id_database_key)
            .is_some_and(|key| key == database_key(database))
    }
}

/// `$TMPDIR/pgward-UID`: this user's directory for what pgward keeps
/// outside a repository (the files of a restore from a bucket, copy locks).
fn user_temp_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    std::env::temp_dir().join(format!("pgward-{uid}"))
}

/// [`user_temp_dir`], created 0700 if needed and refused if it is a link,
/// someone else's, or open to others (a restore spool holds plaintext).
pub(crate) fn private_temp_dir() -> Result<PathBuf> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = user_temp_dir();
    if fs::symlink_metadata(&dir).is_err() {
        DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::repository_io("cannot create directory", &dir, e))?;
    }
    let meta =
        fs::symlink_metadata(&dir).map_err(|e| Error::repository_io("cannot read", &dir, e))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != me || meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::repository(format!(
            "{} is not a private directory of this user's; a restore spool holds plaintext",
            dir.display()
        ))
        .with_hint("remove it, or set TMPDIR to a private directory"));
    }
    Ok(dir)
}

/// Reads and checks the manifest at `path`, named for backup `id`; the
/// cause when it cannot be trusted.
fn read_manifest(
    path: &Path,
    id: &str,
    pin: Option<&SignaturePin>,
) -> std::result::Result<Manifest, String> {
    let text = open_trusted(path)
        .and_then(read_whole)
        .map_err(|e| e.to_string())?;
    parse_manifest(&text, id, pin)
}

/// Checks the text of the manifest named for backup `id` (see
/// [`Repository::catalog`]); the cause when it cannot be trusted.
pub(crate) fn parse_manifest(
    text: &str,
    id: &str,
    pin: Option<&SignaturePin>,
) -> std::result::Result<Manifest, String> {
    let raw: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not a readable manifest ({e})"))?;
    // With [signing], nothing a manifest says is believed (not even that
    // it is of a newer format) before its signature is.
    if let Some(pin) = pin {
        manifest::check_signature(&raw, pin)?;
    }
    // Read from the parsed value in place (no copy: 10 000 manifests are
    // read on every list and prune).
    let manifest = <Manifest as serde::Deserialize>::deserialize(&raw)
        .map_err(|e| format!("not a readable manifest ({e})"))?;
    if manifest.format != MANIFEST_FORMAT || manifest.format_version > MANIFEST_VERSION {
        return Err(format!(
            "{NEWER_FORMAT} {} v{} (a newer pgward may read it)",
            manifest.format, manifest.format_version
        ));
    }
    // Fingerprints of a hash this pgward does not know are a newer
    // format too, not damage.
    if let Err(cause) = manifest.fingerprint_algorithm() {
        return Err(format!(
            "{NEWER_FORMAT} {} v{}: {cause}",
            manifest.format, manifest.format_version
        ));
    }
    if !is_backup_id(id) || manifest.id != id {
        return Err(format!(
            "not the manifest of a backup named so: it says id {:?}",
            manifest.id
        ));
    }
    if database_key(&manifest.database) != id_database_key(id).unwrap_or_default() {
        return Err(format!(
            "inconsistent: database {:?} is not the one its id names",
            manifest.database
        ));
    }
    let started = manifest
        .started_at
        .parse::<jiff::Timestamp>()
        .map(|t| t.strftime("%Y%m%dT%H%M%SZ").to_string())
        .unwrap_or_default();
    if started != id[..16] {
        return Err(format!(
            "inconsistent: started-at {:?} is not the time its id names",
            manifest.started_at
        ));
    }
    let expected = match (
        &manifest.artifact.encryption,
        manifest.archive.format.as_str(),
    ) {
        (Some(_), _) => vec![artifact_file(id, true)],
        (None, "tar") => vec![format!("{id}{LEGACY_ARTIFACT_SUFFIX}")],
        (None, _) => vec![artifact_file(id, false)],
    };
    if !expected.contains(&manifest.artifact.file) {
        return Err(format!(
            "inconsistent: its artifact file {:?} is not {:?}",
            manifest.artifact.file, expected[0]
        ));
    }
    manifest.check_read_back(&raw)?;
    Ok(manifest)
}

/// The largest record pgward reads whole (manifests of databases with
/// very many tables stay far below it).
pub(crate) const MAX_RECORD_BYTES: u64 = 256 << 20;

/// Opens `path` for reading if it is a regular file: a symbolic link is
/// not followed, and a FIFO or device is refused before anything blocks on
/// it. Everything pgward reads from its repository goes through here.
pub(crate) fn open_regular(path: &Path) -> std::io::Result<File> {
    // A device is not even opened (opening some has effects); the type is
    // checked again on the open file below.
    if let Ok(meta) = fs::symlink_metadata(path)
        && !meta.file_type().is_file()
        && !meta.file_type().is_symlink()
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "a symbolic link, which pgward does not follow in its repository",
                )
            } else {
                e
            }
        })?;
    if !file.metadata()?.file_type().is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// A small record file's text, read through [`open_regular`].
pub(crate) fn read_regular(path: &Path) -> std::io::Result<String> {
    open_regular(path).and_then(read_whole)
}

/// The whole text of a small record file, refusing a huge one.
fn read_whole(file: File) -> std::io::Result<String> {
    use std::io::Read;
    if file.metadata()?.len() > MAX_RECORD_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_RECORD_BYTES} bytes"),
        ));
    }
    let mut text = String::new();
    file.take(MAX_RECORD_BYTES).read_to_string(&mut text)?;
    Ok(text)
}

/// [`open_regular`] for the files that decide what a backup is and what
/// runs (manifests, artifacts, grant plans): also refused when others
/// could have written them, as the repository's directories are
/// (allowed with `PGWARD_SHARED_REPOSITORY=1`).
pub(crate) fn open_trusted(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::MetadataExt;
    let file = open_regular(path)?;
    if std::env::var(SHARED_REPOSITORY_ENV).as_deref() == Ok("1") {
        return Ok(file);
    }
    let meta = file.metadata()?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let mode = meta.mode() & 0o777;
    let why = if mode & 0o022 != 0 {
        format!("writable by group or others (mode {mode:04o}; pgward writes 0600: chmod go-w)")
    } else if meta.uid() != me && meta.uid() != 0 {
        format!(
            "owned by uid {}, not by the user running pgward (uid {me}) or root",
            meta.uid()
        )
    } else {
        return Ok(file);
    };
    Err(std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        why,
    ))
}

/// Whether `id` has the exact form [`new_backup_id`] gives ids.
pub fn is_backup_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    let digits = |range: std::ops::Range<usize>| bytes[range].iter().all(u8::is_ascii_digit);
    let Some(key) = id_database_key(id) else {
        return false;
    };
    bytes.len() >= 23
        && digits(0..8)
        && bytes[8] == b'T'
        && digits(9..15)
        && bytes[15] == b'Z'
        && bytes[16] == b'-'
        && bytes[bytes.len() - 5] == b'-'
        && bytes[bytes.len() - 4..]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        && !key.is_empty()
        && key.len() <= 49
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A file-name-safe key for a database name, unique per name.
pub fn database_key(database: &str) -> String {
    let safe: String = database
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    if safe == database {
        safe
    } else {
        let mut hasher = StreamHasher::default();
        hasher.observe(database.as_bytes());
        format!("{safe}_{}", &hasher.finish().sha256[..8])
    }
}

/// Backup ids are `YYYYMMDDTHHMMSSZ-DBKEY-XXXX`: sortable by time, readable,
/// and unique even for two runs in the same second.
pub fn new_backup_id(database: &str, now: jiff::Timestamp) -> String {
    let mut hasher = StreamHasher::default();
    hasher.observe(&now.as_nanosecond().to_le_bytes());
    hasher.observe(&std::process::id().to_le_bytes());
    let suffix = &hasher.finish().sha256[..4];
    format!(
        "{}-{}-{suffix}",
        now.strftime("%Y%m%dT%H%M%SZ"),
        database_key(database)
    )
}

/// The database key of the backup an artifact file (`ID.dump.zst[.gpg]`)
/// belongs to: its lock is `locks/KEY.lock`.
pub(crate) fn artifact_database_key(file: &str) -> Option<&str> {
    artifact_id(file)
        .filter(|id| is_backup_id(id))
        .and_then(id_database_key)
}

pub(crate) fn id_database_key(id: &str) -> Option<&str> {
    let rest = id.get(17..)?; // after "YYYYMMDDTHHMMSSZ-"
    rest.get(..rest.len().checked_sub(5)?) // before "-XXXX"
}

/// rename(2) that fails instead of replacing an existing target (Linux
/// renameat2 RENAME_NOREPLACE; link and unlink where a filesystem lacks it).
pub(crate) fn rename_no_replace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c =
        |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (cfrom, cto) = (c(from)?, c(to)?);
    // SAFETY: valid NUL-terminated paths relative to the current directory.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cfrom.as_ptr(),
            libc::AT_FDCWD,
            cto.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            fs::hard_link(from, to)?;
            fs::remove_file(from)
        }
        _ => Err(error),
    }
}

pub(crate) fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let result = unsafe { libc::kill(pid, 0) };
    result == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Creates a new file, private to its owner (0600); never replaces one.
pub(crate) fn create_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::repository_io("cannot sync directory", dir, e))
}

/// Writes JSON durably (see `write_bytes_durably`).
fn write_json_durably<T: Serialize + ?Sized>(path: &Path, tmp: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_vec_pretty(value).expect("records serialise");
    text.push(b'\n');
    write_bytes_durably(path, tmp, &text)
}

/// Writes bytes to a staging file in `tmp`, fsyncs, renames it to `path`
/// and fsyncs the directory: the file is either absent or whole.
fn write_bytes_durably(path: &Path, tmp: &Path, text: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .expect("repository files have a name")
        .to_string_lossy();
    let staging = tmp.join(format!("{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = create_private(&staging)?;
        file.write_all(text)?;
        file.sync_all()?;
        fs::rename(&staging, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&staging);
        return Err(Error::repository_io("cannot write", path, e));
    }
    sync_dir(path.parent().expect("repository files have a parent"))
}

/// Writes the record over the space reserved for it (JSON allows the
/// trailing padding), then renames it into quarantine. Overwriting
/// already-allocated blocks needs no free space; a record larger than the
/// reservation simply extends the file.
fn write_reason(reserved: &Path, reason: &Path, record: &QuarantineRecord) -> Result<()> {
    let text = serde_json::to_vec_pretty(record).expect("records serialise");
    let result = (|| {
        // The reservation is used only if it is a regular file of ours;
        // anything else (a link, a FIFO) is removed and a new file made.
        let reserved_file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(reserved)
            .ok()
            .filter(|f| f.metadata().is_ok_and(|m| m.file_type().is_file()));
        let mut file = match reserved_file {
            Some(file) => file,
            None => {
                let _ = fs::remove_file(reserved);
                create_private(reserved)?
            }
        };
        file.write_all(&text)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        fs::rename(reserved, reason)
    })();
    result.map_err(|e| Error::repository_io("cannot write quarantine record", reason, e))?;
    sync_dir(reason.parent().expect("quarantine files have a parent"))
}

/// The artifact file name for backup `id`.
pub fn artifact_file(id: &str, encrypted: bool) -> String {
    let suffix = if encrypted {
        ENCRYPTED_ARTIFACT_SUFFIX
    } else {
        ARTIFACT_SUFFIX
    };
    format!("{id}{suffix}")
}

/// The backup id of an artifact file name.
fn artifact_id(name: &str) -> Option<&str> {
    name.strip_suffix(ARTIFACT_SUFFIX)
        .or_else(|| name.strip_suffix(ENCRYPTED_ARTIFACT_SUFFIX))
        .or_else(|| name.strip_suffix(LEGACY_ARTIFACT_SUFFIX))
}

fn list_with_suffix(dir: &Path, suffix: &str) -> Result<Vec<PathBuf>> {
    let entries = fs::read_dir(dir).map_err(|e| Error::repository_io("cannot read", dir, e))?;
    Ok(entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(suffix))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_a_recoverable_database_key() {
        let now: jiff::Timestamp = "2026-11-23T12:00:00Z".parse().unwrap();
        for db in ["app", "a-b", "My DB", "x_1"] {
            let id = new_backup_id(db, now);
            assert!(id.starts_with("20261123T120000Z-"), "{id}");
            assert_eq!(
                id_database_key(&id),
                Some(database_key(db).as_str()),
                "{id}"
            );
        }
        assert_ne!(database_key("a-b"), database_key("a_b"));
    }

    #[test]
    fn layout_is_private_and_probed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let repo = Repository::init(&root).unwrap();
        for sub in ["", "backups", "quarantine", "tmp", "locks"] {
            let mode = fs::metadata(root.join(sub)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{sub}");
        }
        assert!(repo.backups().unwrap().is_empty());
        assert!(
            Repository::open(dir.path()).is_err(),
            "a plain directory is not a repository"
        );
    }

    #[test]
    fn renames_never_replace_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::write(&a, "new").unwrap();
        fs::write(&b, "earlier backup").unwrap();
        let err = rename_no_replace(&a, &b).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_to_string(&b).unwrap(), "earlier backup");
        assert_eq!(fs::read_to_string(&a).unwrap(), "new");
        fs::remove_file(&b).unwrap();
        rename_no_replace(&a, &b).unwrap();
        assert_eq!(fs::read_to_string(&b).unwrap(), "new");
        assert!(!a.exists());
    }

    #[test]
    fn a_second_lock_on_the_same_database_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        let held = repo.lock("app").unwrap();
        let err = repo.lock("app").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Busy);
        assert!(
            err.message()
                .contains(&format!("pid {}", std::process::id()))
        );
        assert!(
            repo.lock("other").is_ok(),
            "other databases are independent"
        );
        drop(held);
        assert!(repo.lock("app").is_ok());
    }
}
