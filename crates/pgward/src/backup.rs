//! `pgward backup`: one database, dumped, compressed, validated, committed,
//! or quarantined and reported. Never silently.
//!
//! The order of work is chosen so that cheap failures come first and
//! nothing is written before it has to be: repository and lock (a second run
//! exits at once), then the database session (scope resolution, server
//! facts), then pg_dump's version, and only then the dump. From the moment
//! the staging file exists, every failure path ends in `quarantine/`.

use crate::catalog::dependencies::ScopeDependencies;
use crate::catalog::{CatalogSession, ServerInfo};
use crate::clock;
use crate::config::Config;
use crate::connection::{ConnectionTarget, Env};
use crate::dump::{PgDump, ToolVersion};
use crate::encryption::EncryptionPlan;
use crate::error::{Error, ErrorKind, Result};
use crate::fingerprint::TextSettings;
use crate::interrupt::InterruptWatch;
use crate::pipeline::archive::{ArchiveFormat, ArchiveInspector, ArchiveSummary};
use crate::pipeline::child::{ChildSource, signal_name};
use crate::pipeline::compress::{self, Compression};
use crate::pipeline::encrypt::{EncryptStage, EncryptWriter};
use crate::pipeline::hash::{StreamDigest, StreamHasher, digest_file, digest_reader};
use crate::pipeline::offload::Offloaded;
use crate::pipeline::{CopyError, ObserveWrite, copy_stream};
use crate::repository::bucket::BucketStaging;
use crate::repository::manifest::{
    ArchiveRecord, ArtifactRecord, BackupStatus, CompressionRecord, ContentRecord, MANIFEST_FORMAT,
    MANIFEST_VERSION, Manifest, PgDumpRecord, TableRecord,
};
use crate::repository::{Repository, Staging, artifact_file, new_backup_id};
use crate::scope::TableName;
use crate::storage::Upload;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Per-run choices that are not configuration.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// Accept an archive that shrank beyond `validation.max-shrink-percent`.
    pub allow_shrink: bool,
}

/// What a successful backup produced.
#[derive(Debug, Clone)]
pub struct BackupOutcome {
    pub manifest: Manifest,
    pub artifact_path: PathBuf,
    pub manifest_path: PathBuf,
    /// What the run noticed and went on despite (damaged manifests).
    pub warnings: Vec<String>,
}

/// Running totals reported while the dump streams.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Archive bytes received from pg_dump so far.
    pub archive_bytes: u64,
}

pub fn run(
    config: &Config,
    options: &BackupOptions,
    env: Env,
    progress: &mut dyn FnMut(Progress),
) -> Result<BackupOutcome> {
    // Nothing starts without a repository to write to.
    let location = config.repository_location()?;
    let target = ConnectionTarget::resolve(&config.connection, env)?;
    // Recipients are checked before anything is written: a backup that
    // cannot be encrypted as configured does not start.
    let encryption = crate::encryption::plan(&config.encryption, jiff::Timestamp::now())?;
    // So is the signing key: a manifest this repository would refuse is
    // never written.
    let signer = crate::signing::signer(&config.signing)?;
    let repo =
        Repository::init_at(&location, config)?.trusting(crate::signing::pin(&config.signing)?);
    if let (Some(signer), Some(pin)) = (&signer, repo.signature_pin()) {
        crate::signing::round_trip(signer, pin)?;
    }
    // Signals are watched from before the lock is taken: a lock in a
    // bucket is not freed by the kernel when the process dies, so an
    // interrupted run must live to release it.
    let mut watch = InterruptWatch::install().map_err(|e| {
        Error::new(
            ErrorKind::Dump,
            format!("cannot install signal handlers: {e}"),
        )
    })?;
    let lock = repo.lock(&target.dbname)?;
    if let (Some(signer), Some(pin)) = (&signer, repo.signature_pin()) {
        crate::signing::round_trip(signer, pin)?;
    }

    // The session stays open, holding the exported snapshot, until pg_dump
    // has finished: the table list below and the dump see the same state.
    let mut session = CatalogSession::open(&target)?;
    let snapshot = session.export_snapshot()?;
    let server = session.server_info()?;
    check_pin(config, &server)?;
    let dump_scope = session.resolve_scope(&config.scope)?;
    let expected_tables = session.tables_with_data(&dump_scope)?;
    let dependencies = session.dependencies(&dump_scope)?;
    require_standalone(&config.scope, &dependencies)?;
    // What the archive cannot carry, read in the same snapshot.
    let column_order = session.column_orders(&dump_scope)?;
    let restore_hazards = session.restore_hazards(&dump_scope, &server)?;
    let text_settings = TextSettings::pg_dump();

    let pg_dump = PgDump::pg_dump(&config.pg_dump);
    let pg_dump_version = pg_dump.version()?;
    crate::dump::require_can_dump(&pg_dump_version, &server)?;
    crate::dump::require_can_include_extensions(&pg_dump_version, &dump_scope, &dependencies)?;
    let catalog = repo.catalog()?;
    let previous = catalog
        .backups
        .iter()
        .find(|m| m.database == server.database && m.scope == config.scope)
        .cloned();
    // A damaged manifest of this database is skipped, loudly: the checks
    // below compare with the newest intact backup instead.
    let warnings: Vec<String> = catalog
        .damaged
        .iter()
        .filter(|d| d.is_of_database(&server.database))
        .map(|d| {
            format!(
                "{} is damaged ({}); this backup is compared with {}",
                d.file,
                d.cause,
                previous
                    .as_ref()
                    .map_or("no earlier backup".to_string(), |p| format!(
                        "the newest intact backup {}",
                        p.id
                    ))
            )
        })
        .collect();
    crate::encryption::require_continuity(
        &config.encryption,
        encryption.as_ref(),
        previous.as_ref(),
    )?;
    // A newer pgward's manifest of this database: its rules (encryption,
    // size) are unknown here, so this version does not go on.
    if let Some(newer) = catalog
        .damaged
        .iter()
        .find(|d| d.is_of_database(&server.database) && d.is_newer_format())
    {
        return Err(Error::config(format!("{} is {}", newer.file, newer.cause))
            .with_hint("back up with the pgward version that wrote it (or newer)"));
    }
    // A damaged manifest beside an encrypted artifact counts as an
    // encrypted backup: damage must not open the way to plaintext.
    if encryption.is_none()
        && config.encryption.required.is_none()
        && let Some(damaged) = catalog.damaged.iter().find(|d| {
            d.is_of_database(&server.database)
                && d.id
                    .as_deref()
                    .is_some_and(|id| repo.has_artifact(&artifact_file(id, true)))
        })
    {
        return Err(Error::config(format!(
            "{} is damaged and its backup was encrypted, but no recipient certificate is configured now",
            damaged.file
        ))
        .with_hint("restore the [[encryption.recipient]] settings, or set encryption.required = false to write unencrypted backups on purpose"));
    }

    let started = clock::now();
    let id = new_backup_id(&server.database, started);
    let run = Run {
        config,
        options,
        target: &target,
        server: &server,
        pg_dump: &pg_dump,
        pg_dump_version: &pg_dump_version,
        expected_tables: &expected_tables,
        column_order: &column_order,
        restore_hazards: &restore_hazards,
        dump_scope: &dump_scope,
        dependencies: &dependencies,
        snapshot: snapshot.as_deref(),
        text_settings: &text_settings,
        previous: previous.as_ref(),
        encryption: encryption.as_ref(),
        id: &id,
        started,
    };
    if let Some(signal) = watch.received() {
        watch.acknowledge();
        return Err(interrupted(signal));
    }
    let (mut staged, sink) = if repo.is_remote() {
        let (staging, upload) = repo.start_upload(
            &id,
            &artifact_file(&id, encryption.is_some()),
            &server.database,
            &clock::rfc3339(started),
        )?;
        let uploaded = Arc::new(AtomicU64::new(0));
        let sink = Sink::Bucket {
            upload,
            bytes: uploaded.clone(),
        };
        (Staged::Bucket { staging, uploaded }, sink)
    } else {
        let (staging, file) = repo.create_staging(&id)?;
        let path = staging.path.clone();
        (Staged::Disk(staging), Sink::Disk { file, path })
    };
    let result = run.dump_and_validate(sink, &mut staged, &watch, &lock, progress);
    // A signal that arrived after pg_dump finished (during validation or
    // read-back) still stops the run: nothing is committed after a signal.
    let result = match (result, watch.received()) {
        (Ok(_), Some(signal)) => Err(interrupted(signal)),
        (result, _) => result,
    };
    if watch.received().is_some() {
        watch.acknowledge();
    }
    let result = match &signer {
        Some(signer) => result.and_then(|manifest| manifest.signed(signer)),
        None => result,
    };
    // A run that lost its lock (a lease in a bucket) commits nothing.
    let result = result
        .map(Manifest::sealed)
        .and_then(|manifest| lock.still_held().map(|()| manifest));
    match staged {
        Staged::Disk(staging) => match result {
            Ok(manifest) => match repo.commit(staging, &manifest) {
                Ok((artifact_path, manifest_path)) => Ok(BackupOutcome {
                    manifest,
                    artifact_path,
                    manifest_path,
                    warnings,
                }),
                Err(failed) => {
                    let (staging, error) = *failed;
                    Err(quarantine(&repo, staging, &server.database, started, error))
                }
            },
            Err(error) => Err(quarantine(&repo, staging, &server.database, started, error)),
        },
        Staged::Bucket { staging, uploaded } => {
            let quarantined = |staging: BucketStaging, error: Error| {
                quarantine_upload(
                    &repo,
                    staging,
                    uploaded.load(Ordering::Relaxed),
                    &server.database,
                    started,
                    error,
                )
            };
            let manifest = match result {
                Ok(manifest) => manifest,
                Err(error) => return Err(quarantined(staging, error)),
            };
            match repo.commit_upload(&staging, &manifest, &|| lock.still_held()) {
                Ok(manifest_key) => Ok(BackupOutcome {
                    artifact_path: PathBuf::from(staging.storage().describe(&staging.key)),
                    manifest_path: PathBuf::from(staging.storage().describe(&manifest_key)),
                    manifest,
                    warnings,
                }),
                Err(failure) if failure.manifest_may_exist => Err(failure.error.context(format!(
                    "whether backup {id} was committed cannot be told: it is left as it is for the next run of this database (and `pgward verify`) to judge"
                ))),
                Err(failure) => Err(quarantined(staging, failure.error)),
            }
        }
    }
}

/// Where this run's artifact is being written.
enum Staged {
    /// A staging file in the repository's `tmp/`.
    Disk(Staging),
    /// A multipart upload into a bucket, and the bytes that went into it.
    Bucket {
        staging: BucketStaging,
        uploaded: Arc<AtomicU64>,
    },
}

/// The end of the pipeline: the staging file, or the upload.
enum Sink {
    Disk {
        file: std::fs::File,
        path: PathBuf,
    },
    Bucket {
        upload: Box<dyn Upload>,
        bytes: Arc<AtomicU64>,
    },
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Disk { file, .. } => file.write(buf),
            Sink::Bucket { upload, bytes } => {
                let n = upload.write(buf)?;
                bytes.fetch_add(n as u64, Ordering::Relaxed);
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Disk { file, .. } => file.flush(),
            Sink::Bucket { upload, .. } => upload.flush(),
        }
    }
}

/// Ends a failed run in a bucket (its upload aborted, its completed
/// artifact removed, its story in `quarantine/`) and says so in the error.
fn quarantine_upload(
    repo: &Repository,
    staging: BucketStaging,
    uploaded: u64,
    database: &str,
    started: jiff::Timestamp,
    error: Error,
) -> Error {
    let storage = staging.storage().clone();
    match repo.quarantine_upload(
        staging,
        database,
        &clock::rfc3339(started),
        uploaded,
        &error,
    ) {
        Ok(record) => {
            let kind = error.kind();
            let hint = error.hint().map(String::from);
            let moved = Error::new(
                kind,
                format!(
                    "{}; nothing was kept in the bucket, the failure is recorded at {}",
                    error.message(),
                    storage.describe(&record)
                ),
            );
            match hint {
                Some(h) => moved.with_hint(h),
                None => moved,
            }
        }
        Err(q) => error.context(format!("quarantine also failed ({q})")),
    }
}

/// Makes a validated artifact durable and reads it back: the staging file
/// synced, or the upload completed (the object becomes visible, and this
/// run's to remove should the run still fail); then the digest of what
/// the disk or the bucket returns.
fn seal(sink: Sink, staged: &mut Staged) -> std::io::Result<StreamDigest> {
    match (sink, staged) {
        (Sink::Disk { file, path }, _) => {
            file.sync_all()?;
            drop(file);
            digest_file(&path)
        }
        (Sink::Bucket { upload, .. }, Staged::Bucket { staging, .. }) => {
            staging.mark_maybe_published();
            upload.finish()?;
            digest_reader(staging.storage().open(&staging.key)?)
        }
        (Sink::Bucket { .. }, Staged::Disk(_)) => unreachable!("an upload is staged in a bucket"),
    }
}

fn interrupted(signal: i32) -> Error {
    Error::new(
        ErrorKind::Interrupted { signal },
        format!("backup interrupted by {}", signal_name(signal)),
    )
}

/// Refuses a cluster other than the one the configuration pins.
/// A scope that depends on objects outside itself does not restore into
/// an empty database; unless the configuration says it is meant for a
/// prepared one, it is not backed up.
fn require_standalone(scope: &crate::scope::Scope, needs: &ScopeDependencies) -> Result<()> {
    if !scope.standalone || needs.outside.is_empty() {
        return Ok(());
    }
    let objects: Vec<String> = needs.outside.iter().map(|o| o.describe()).collect();
    let remedies: Vec<String> = needs
        .outside
        .iter()
        .map(|o| o.remedy(scope))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    Err(Error::config(format!(
        "the scope depends on {} outside it, so its backup would not restore on its own: {}",
        if objects.len() == 1 {
            "an object".to_string()
        } else {
            format!("{} objects", objects.len())
        },
        objects.join("; ")
    ))
    .with_hint(format!(
        "{} (`pgward check` lists them)",
        remedies.join("; ")
    )))
}

fn check_pin(config: &Config, server: &ServerInfo) -> Result<()> {
    match &config.connection.system_identifier {
        Some(pin) if *pin != server.system_identifier => Err(Error::config(format!(
            "connected to cluster {} but connection.system-identifier pins {pin}",
            server.system_identifier
        ))
        .with_hint("this is not the cluster the configuration is for: fix the connection, or the pin if the cluster was rebuilt on purpose")),
        _ => Ok(()),
    }
}

/// What `backup --dry-run` reports: the readiness matrix and what the
/// backup would do. Nothing is dumped or written.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DryRun {
    pub check: crate::check::CheckReport,
    /// Where the artifact would be stored (the id is an example: the real
    /// one carries the real start time).
    pub artifact_path: PathBuf,
    pub pg_dump_program: String,
    pub pg_dump_arguments: Vec<String>,
}

pub fn dry_run(config: &Config, env: Env) -> Result<DryRun> {
    let check = crate::check::run(config, env)?;
    let target = ConnectionTarget::resolve(&config.connection, env)?;
    let database = check
        .server
        .as_ref()
        .map(|s| s.database.clone())
        .unwrap_or(target.dbname.clone());
    let root = config.repository.clone().unwrap_or_default();
    let pg_dump = PgDump::pg_dump(&config.pg_dump);
    Ok(DryRun {
        artifact_path: root.join("backups").join(artifact_file(
            &new_backup_id(&database, clock::now()),
            !config.encryption.recipients.is_empty(),
        )),
        pg_dump_program: pg_dump.display_program(),
        pg_dump_arguments: pg_dump.dump_arguments(
            &target,
            check.resolved_scope.as_ref().unwrap_or(&config.scope),
            check.dependencies.as_ref().unwrap_or(&Default::default()),
            None,
            &TextSettings::pg_dump(),
        ),
        check,
    })
}

/// Moves the staging file to quarantine and says where in the error.
fn quarantine(
    repo: &Repository,
    staging: Staging,
    database: &str,
    started: jiff::Timestamp,
    error: Error,
) -> Error {
    match repo.quarantine(staging, database, &clock::rfc3339(started), &error) {
        Ok(partial) => {
            let kind = error.kind();
            let hint = error.hint().map(String::from);
            let moved = Error::new(
                kind,
                format!(
                    "{}; partial file quarantined at {}",
                    error.message(),
                    partial.display()
                ),
            );
            match hint {
                Some(h) => moved.with_hint(h),
                None => moved,
            }
        }
        Err(q) => error.context(format!("quarantine also failed ({q})")),
    }
}

struct Run<'a> {
    config: &'a Config,
    options: &'a BackupOptions,
    target: &'a ConnectionTarget,
    server: &'a ServerInfo,
    pg_dump: &'a PgDump,
    pg_dump_version: &'a ToolVersion,
    expected_tables: &'a [TableName],
    column_order: &'a [crate::catalog::restorability::ColumnOrder],
    restore_hazards: &'a [crate::catalog::restorability::RestoreHazard],
    /// The scope as given to pg_dump (partitions of named partitioned
    /// tables added); the manifest records the configured scope.
    dump_scope: &'a crate::scope::Scope,
    /// What the scope needs from outside itself: the extensions dumped with
    /// it, recorded with the schemas a restore creates first.
    dependencies: &'a ScopeDependencies,
    snapshot: Option<&'a str>,
    text_settings: &'a TextSettings,
    previous: Option<&'a Manifest>,
    encryption: Option<&'a EncryptionPlan>,
    id: &'a str,
    started: jiff::Timestamp,
}

impl Run<'_> {
    fn dump_and_validate(
        &self,
        sink: Sink,
        staged: &mut Staged,
        watch: &InterruptWatch,
        lock: &crate::repository::lock::RunLock,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Manifest> {
        let compression = Compression {
            level: self.config.compression.level,
            workers: self
                .config
                .compression
                .threads
                .unwrap_or_else(compress::default_workers),
        };
        let target = match &*staged {
            Staged::Disk(staging) => staging.path.clone(),
            Staged::Bucket { staging, .. } => {
                PathBuf::from(staging.storage().describe(&staging.key))
            }
        };
        let write_error = |e: std::io::Error| Error::repository_io("cannot write", &target, e);

        // dump -> hash, inspect -> compress -> encrypt -> hash -> file or upload
        let stored = ObserveWrite::new(sink, StreamHasher::default());
        let sealed = match self.encryption {
            None => EncryptStage::Plain(stored),
            Some(plan) => EncryptStage::Encrypted(
                EncryptWriter::new(stored, plan.encryption_keys())
                    .map_err(|e| Error::config(format!("cannot start encryption: {e}")))?,
            ),
        };
        let encoder = compress::encoder(sealed, compression).map_err(write_error)?;
        let mut plain = ObserveWrite::new(
            encoder,
            (
                StreamHasher::default(),
                Offloaded::new(ArchiveInspector::new(ArchiveFormat::Custom)),
            ),
        );

        let command = self.pg_dump.dump_command(
            self.target,
            self.dump_scope,
            self.dependencies,
            self.snapshot,
            self.text_settings,
        );
        let mut child = ChildSource::spawn(command).map_err(|e| {
            Error::new(
                ErrorKind::Dump,
                format!("cannot start {}: {e}", self.pg_dump.display_program()),
            )
            .with_hint("check pg-dump.path and pg-dump.command-prefix")
        })?;
        watch.watch_child(child.pid());

        let copied = copy_stream(&mut child, &mut plain, |archive_bytes| {
            progress(Progress { archive_bytes });
            watch.received().is_none() && lock.lost().is_none()
        });
        if matches!(
            copied,
            Err(CopyError::Write(_)) | Err(CopyError::Stopped) | Err(CopyError::Read(_))
        ) {
            // Stop pg_dump (SIGKILL if SIGTERM is not enough) before waiting for it.
            child.terminate();
        }
        if let Err(CopyError::Write(e)) = &copied {
            let e = std::io::Error::new(e.kind(), e.to_string());
            let _ = child.finish();
            return Err(write_error(e));
        }
        let child_result = child.finish();
        watch.watch_child(0);
        if let Some(signal) = watch.received() {
            return Err(interrupted(signal));
        }
        // pg_dump was stopped because the run lost its lock: that is the
        // failure, not pg_dump's death.
        if matches!(copied, Err(CopyError::Stopped)) {
            lock.still_held()?;
        }
        if let Err(failure) = child_result {
            let said = failure
                .key_line()
                .map(|line| format!(": {line}"))
                .unwrap_or_else(|| " without a message".to_string());
            return Err(Error::new(
                ErrorKind::Dump,
                format!("pg_dump {}{said}", failure.describe_status()),
            )
            .with_hint(dump_hint(&failure.stderr)));
        }
        match copied {
            Ok(_) => {}
            Err(CopyError::Read(e)) => {
                return Err(Error::new(
                    ErrorKind::Dump,
                    format!("cannot read pg_dump's output: {e}"),
                ));
            }
            Err(CopyError::Stopped) => {
                lock.still_held()?;
                return Err(interrupted(libc::SIGTERM));
            }
            Err(CopyError::Write(_)) => unreachable!("handled above"),
        }

        let (encoder, (plain_hasher, inspector)) = plain.into_parts();
        let inspector = inspector.into_inner();
        let sealed = encoder.finish().map_err(write_error)?;
        let stored = sealed.finish().map_err(write_error)?;
        let (sink, stored_hasher) = stored.into_parts();
        let archive_digest = plain_hasher.finish();
        let stored_digest = stored_hasher.finish();
        progress(Progress {
            archive_bytes: archive_digest.bytes,
        });

        let summary = inspector.finish().map_err(|e| {
            Error::new(
                ErrorKind::Validation,
                format!("pg_dump's output is not a complete archive: {e}"),
            )
        })?;
        self.check_identity(&summary)?;
        self.check_tables(&summary)?;
        self.check_size(archive_digest.bytes)?;

        // Read back what was stored: the bytes hashed on the way in must
        // be the bytes the filesystem, or the bucket, returns.
        let read_back = seal(sink, staged)
            .map_err(|e| Error::repository_io("cannot store or read back", &target, e))?;
        if read_back != stored_digest {
            let (what, hint) = match staged {
                Staged::Disk(_) => (
                    "the staging file changed on disk",
                    "check the repository's disk and filesystem for errors",
                ),
                Staged::Bucket { .. } => (
                    "the artifact reads back different from the bucket",
                    "check the object storage service (and any proxy in front of it)",
                ),
            };
            return Err(Error::new(
                ErrorKind::Validation,
                format!(
                    "{what} (sha256 {} written, {} read back)",
                    stored_digest.sha256, read_back.sha256
                ),
            )
            .with_hint(hint));
        }

        let finished = clock::now();
        Ok(Manifest {
            format: MANIFEST_FORMAT.to_string(),
            format_version: MANIFEST_VERSION,
            id: self.id.to_string(),
            status: BackupStatus::Complete,
            pgward_version: env!("CARGO_PKG_VERSION").to_string(),
            database: self.server.database.clone(),
            connection: self.target.describe(),
            scope: self.config.scope.clone(),
            dependencies: self.dependencies.clone(),
            started_at: clock::rfc3339(self.started),
            finished_at: clock::rfc3339(finished),
            duration_ms: finished.duration_since(self.started).as_millis().max(0) as u64,
            server: self.server.clone(),
            pg_dump: PgDumpRecord {
                program: self.pg_dump.display_program(),
                version: self.pg_dump_version.version.clone(),
                arguments: self.pg_dump.dump_arguments(
                    self.target,
                    self.dump_scope,
                    self.dependencies,
                    self.snapshot,
                    self.text_settings,
                ),
            },
            archive: ArchiveRecord {
                format: ArchiveFormat::Custom.name().to_string(),
                version: summary.archive_version.clone(),
                bytes: archive_digest.bytes,
                sha256: archive_digest.sha256,
                toc_entries: summary.toc_entries,
            },
            artifact: ArtifactRecord {
                file: artifact_file(self.id, self.encryption.is_some()),
                bytes: stored_digest.bytes,
                sha256: stored_digest.sha256,
                compression: CompressionRecord {
                    algorithm: "zstd".to_string(),
                    level: compression.level,
                },
                encryption: self.encryption.map(EncryptionPlan::record),
            },
            tables: summary
                .table_data
                .iter()
                .map(|t| TableRecord {
                    schema: t.schema.clone(),
                    table: t.table.clone(),
                    data: true,
                    bytes: t.bytes,
                    rows: t.rows,
                    fingerprint: Some(t.fingerprint.clone()),
                })
                .collect(),
            content: Some(ContentRecord {
                fingerprint_algorithm: crate::fingerprint::Algorithm::CURRENT.name().to_string(),
                text_settings: self.text_settings.clone(),
                encoding: summary.encoding.clone(),
                sequences: summary.sequences.clone(),
                large_objects: summary.large_objects.clone().unwrap_or_else(|| {
                    crate::fingerprint::MultisetDigest::new(crate::fingerprint::Algorithm::CURRENT)
                        .finish()
                }),
                column_order: self.column_order.to_vec(),
                restore_hazards: self.restore_hazards.to_vec(),
            }),
            manifest_signature: None,
            manifest_digest: None,
        })
    }

    /// The archive is of the database pgward checked: same name, same
    /// server version (the snapshot already proved the server, where one
    /// could be exported).
    fn check_identity(&self, summary: &ArchiveSummary) -> Result<()> {
        let server_version = summary.server_version.as_deref().unwrap_or_default();
        if summary.database_name != self.server.database || server_version != self.server.version {
            return Err(Error::new(
                ErrorKind::Validation,
                format!(
                    "pg_dump dumped database {:?} on server {server_version:?}, but pgward checked {:?} on {:?}",
                    summary.database_name, self.server.database, self.server.version
                ),
            )
            .with_hint("pg_dump reached another server or database: check pg-dump.command-prefix and the connection settings"));
        }
        Ok(())
    }

    /// Every table the catalog says is in scope has its data in the archive.
    fn check_tables(&self, summary: &ArchiveSummary) -> Result<()> {
        for table in self.expected_tables {
            let present = summary
                .table_data
                .iter()
                .any(|t| t.schema == table.schema && t.table == table.table);
            if !present {
                return Err(Error::new(
                    ErrorKind::Validation,
                    format!("table {table} is in scope but its data is not in the archive"),
                )
                .with_hint(
                    "check that the backup role can read the table and that nothing excludes it",
                ));
            }
        }
        Ok(())
    }

    /// The absolute floor, then the shrink limit against the previous backup.
    fn check_size(&self, archive_bytes: u64) -> Result<()> {
        let floor = self.config.validation.min_size;
        if archive_bytes < floor {
            return Err(Error::new(
                ErrorKind::Validation,
                format!("archive is {archive_bytes} bytes, below the minimum of {floor} bytes (validation.min-size)"),
            )
            .with_hint("if the database really is this small, lower validation.min-size"));
        }
        let Some(previous) = self.previous else {
            return Ok(());
        };
        let limit = self.config.validation.max_shrink_percent as u64;
        let before = previous.archive.bytes;
        if self.options.allow_shrink || archive_bytes >= before {
            return Ok(());
        }
        let shrink = (before - archive_bytes) * 100 / before.max(1);
        if shrink > limit {
            return Err(Error::new(
                ErrorKind::Validation,
                format!(
                    "archive is {archive_bytes} bytes, {shrink}% smaller than the previous backup {} ({before} bytes); the limit is {limit}%",
                    previous.id
                ),
            )
            .with_hint("if the data really shrank, run again with --allow-shrink (or raise validation.max-shrink-percent)"));
        }
        Ok(())
    }
}

/// The remedy for the usual pg_dump failures.
fn dump_hint(stderr: &str) -> String {
    if stderr.contains("permission denied") {
        "grant the backup role USAGE on the schema and SELECT on its tables and sequences, or exclude them from the scope".to_string()
    } else if stderr.contains("server version mismatch") {
        "use a pg_dump whose major version is at least the server's (pg-dump.path)".to_string()
    } else if stderr.contains("connection") || stderr.contains("password") {
        "check the connection settings and the password that pg_dump receives (PGPASSWORD, PGPASSFILE, connection.password-file)".to_string()
    } else if stderr.contains("row-level security") {
        "the backup role must be allowed to bypass row-level security (BYPASSRLS) or the table must be excluded".to_string()
    } else {
        "read pg_dump's message above; the run is recorded in quarantine/".to_string()
    }
}
