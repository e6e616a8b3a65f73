//! `pgward restore`: a backup into a database pgward creates, proven
//! afterwards table by table exactly as a drill proves it.
//!
//! The archive reaches pg_restore one of two ways:
//! - **spooled** (`--jobs` above 1, the default): decompressed into a
//!   private file in the repository's `tmp/`, its data offsets filled in
//!   (pg_dump wrote to a pipe and could not), checked against the manifest,
//!   and only then restored by `pg_restore --jobs N`. Nothing damaged ever
//!   reaches the database. The spool is removed whatever happens, and a
//!   spool left by a killed restore is removed by the next one.
//! - **streamed** (`--jobs 1`, or pg_restore behind a command prefix, which
//!   cannot see this host's files): straight into pg_restore's stdin; no
//!   plaintext touches the disk, and damage is found at the end of the
//!   stream, after pg_restore has seen the data, which then fails the run.

pub mod compare;
pub mod selection;
pub mod source;
pub mod target;

use crate::catalog::connect::{ConnectionTarget, Env};
use crate::config::Config;
use crate::dump::Tool;
use crate::encryption::secret::Decryptor;
use crate::error::{Error, ErrorKind, Result};
use crate::interrupt::InterruptWatch;
use crate::pipeline::archive::Toc;
use crate::pipeline::child::ChildSource;
use crate::pipeline::{CopyError, copy_stream};
use crate::repository::Repository;
use crate::repository::manifest::{DrillCheck, Manifest};
use selection::Selection;
use serde::Serialize;
use source::ArchiveSource;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use target::{RestoreServer, TargetState};

/// pg_restore's parallel jobs unless told otherwise.
pub const DEFAULT_JOBS: usize = 2;

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// pg_restore jobs, and sessions verifying tables; 1 streams.
    pub jobs: usize,
    /// Restore without owners (`--no-owner`): objects belong to the
    /// restoring role.
    pub no_owner: bool,
    /// Restore without grants (`--no-acl`).
    pub no_acl: bool,
    pub selection: Selection,
    /// Drop the target database (and everything in it) if it exists.
    pub drop_existing: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            jobs: DEFAULT_JOBS,
            no_owner: false,
            no_acl: false,
            selection: Selection::default(),
            drop_existing: false,
        }
    }
}

/// What a restore (or a drill) did and proved.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RestoreReport {
    pub backup_id: String,
    /// `user@host:port`.
    pub server: String,
    pub database: String,
    /// "spooled, pg_restore --jobs 2" or "streamed".
    pub feed: String,
    pub restore_ms: u64,
    pub verify_ms: u64,
    pub ok: bool,
    pub checks: Vec<DrillCheck>,
}

impl RestoreReport {
    pub fn first_failure(&self) -> Option<&DrillCheck> {
        self.checks.iter().find(|c| !c.ok)
    }
}

/// Restores backup `selector` into database `to` and verifies it.
pub fn run(
    config: &Config,
    env: Env,
    selector: &str,
    to: &str,
    options: &RestoreOptions,
    decryptor: &mut dyn FnMut() -> Result<Option<Decryptor>>,
    progress: &mut dyn FnMut(u64),
) -> Result<RestoreReport> {
    let repo = open_repository(config)?;
    let manifest = repo.find(selector)?;
    // The artifact is checked (size, sha256, a key that is one of its
    // recipients) before anything on the server changes.
    let source = open_source(&repo, &manifest, decryptor)?;
    let mut server = RestoreServer::connect(config, env)?;
    let refuse = |why: String| {
        Error::config(why).with_hint(format!(
            "restore to a new name (--to NEWDB), or pass --drop-existing-database to DROP {to} and everything in it first"
        ))
    };
    if server.is_source_of(&manifest, to) && !options.drop_existing {
        return Err(refuse(format!(
            "{to} on {} is the database backup {} was taken from; pgward does not restore over it",
            server.describe(),
            manifest.id
        )));
    }
    let state = server.state(to)?;
    match state {
        TargetState::NotEmpty(objects) if !options.drop_existing => {
            return Err(refuse(format!(
                "database {to} on {} exists and is not empty ({objects} objects)",
                server.describe()
            )));
        }
        TargetState::NotEmpty(_) => server.drop_database(to)?,
        TargetState::Empty if options.drop_existing => server.drop_database(to)?,
        TargetState::Empty | TargetState::Absent => {}
    }
    let created = state != TargetState::Empty || options.drop_existing;
    if created {
        let encoding = manifest
            .content
            .as_ref()
            .and_then(|c| c.encoding.as_deref());
        server.create(to, encoding)?;
    }
    let outcome = restore_and_compare(
        config, &repo, &manifest, source, &server, to, options, progress,
    );
    match outcome {
        Ok(report) => Ok(report),
        Err(e) => {
            // A database pgward created for a restore that failed holds a
            // part of the backup: it goes, so nobody takes it for a restore.
            if created {
                let _ = server.drop_database(to);
            }
            Err(e)
        }
    }
}

/// Opens backup `manifest`'s archive for reading, asking for a decryptor
/// only when the artifact is encrypted.
pub(crate) fn open_source(
    repo: &Repository,
    manifest: &Manifest,
    decryptor: &mut dyn FnMut() -> Result<Option<Decryptor>>,
) -> Result<ArchiveSource> {
    let decryptor = match manifest.artifact.encryption {
        Some(_) => decryptor()?,
        None => None,
    };
    ArchiveSource::open(repo, manifest, decryptor.as_ref())
}

pub(crate) fn open_repository(config: &Config) -> Result<Repository> {
    let root = config.repository.as_deref().ok_or_else(|| {
        Error::config("no repository configured")
            .with_hint("pass --repo DIR, set PGWARD_REPO or `repository` in the config file")
    })?;
    Repository::open(root)
}

/// Restores into the existing, empty database `dbname` and compares.
///
/// pg_restore runs in two phases: schema and data first, then the post-data
/// section (indexes, constraints, triggers, grants), during which the
/// tables are read back and compared: that work overlaps instead of adding
/// up. Sequences, large objects and the schema are compared at the end.
#[allow(clippy::too_many_arguments)]
pub(crate) fn restore_and_compare(
    config: &Config,
    repo: &Repository,
    manifest: &Manifest,
    source: ArchiveSource,
    server: &RestoreServer,
    dbname: &str,
    options: &RestoreOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<RestoreReport> {
    let pg_restore = Tool::pg_restore(&config.pg_restore);
    let pg_dump = Tool::pg_dump(&config.pg_dump);
    let database = server.target_for(dbname);
    let scratch = Scratch::new(repo, &manifest.id);
    let mut watch = InterruptWatch::install().map_err(|e| {
        Error::new(
            ErrorKind::Restore,
            format!("cannot install signal handlers: {e}"),
        )
    })?;
    let started = std::time::Instant::now();
    let loaded = load(
        repo,
        manifest,
        source,
        &pg_restore,
        &database,
        options,
        &scratch,
        &mut watch,
        progress,
    )?;
    let restored = compare::RestoredAs {
        database: &database,
        no_owner: options.no_owner,
        no_acl: options.no_acl,
        entries: loaded.entries.as_ref(),
        list_file: &scratch.list,
    };
    let (mut post_data, post_data_input) = loaded.post_data.start(&pg_restore, &database)?;
    watch.watch_child(post_data.pid());
    let verify_started = std::time::Instant::now();
    let (table_checks, post_data_result) = std::thread::scope(|scope| {
        let feeder = scope.spawn(move || {
            if let (Some(mut stdin), Some(bytes)) = post_data_input {
                // pg_restore may stop reading once it has the TOC.
                let _ = stdin.write_all(&bytes);
            }
        });
        let tables = compare::compare_tables(manifest, &loaded.toc, &restored, options.jobs);
        let waited = copy_stream(&mut post_data, &mut std::io::sink(), |_| {
            watch.received().is_none()
        });
        let _ = feeder.join();
        (tables, waited)
    });
    if let Some(error) = stopped(&mut watch, manifest) {
        post_data.terminate();
        return Err(error);
    }
    finish_pg_restore(post_data, post_data_result.err())?;
    let restore_ms = started.elapsed().as_millis() as u64;
    let mut checks = table_checks?;
    checks.extend(compare::compare_objects_and_schema(
        manifest,
        &loaded.toc,
        &loaded.toc_bytes,
        &restored,
        &compare::Tools {
            pg_dump: &pg_dump,
            pg_restore: &pg_restore,
        },
    )?);
    if let Some(error) = stopped(&mut watch, manifest) {
        return Err(error);
    }
    Ok(RestoreReport {
        backup_id: manifest.id.clone(),
        server: server.describe(),
        database: dbname.to_string(),
        feed: loaded.feed,
        restore_ms,
        verify_ms: verify_started.elapsed().as_millis() as u64,
        ok: checks.iter().all(|c| c.ok),
        checks,
    })
}

/// A signal turned into the restore's failure.
fn stopped(watch: &mut InterruptWatch, manifest: &Manifest) -> Option<Error> {
    let signal = watch.received()?;
    watch.acknowledge();
    Some(
        Error::new(
            ErrorKind::Interrupted { signal },
            format!(
                "restore of backup {} stopped by {}",
                manifest.id,
                crate::pipeline::child::signal_name(signal)
            ),
        )
        .with_hint("run it again; a database pgward created for it was dropped"),
    )
}

/// The files a restore may leave in `tmp/` while it runs, removed on drop.
struct Scratch {
    list: PathBuf,
    /// The TOC alone, for the post-data phase of a streamed restore.
    toc: PathBuf,
    spool: std::cell::RefCell<Option<PathBuf>>,
}

impl Scratch {
    fn new(repo: &Repository, id: &str) -> Scratch {
        let tmp = repo.root().join("tmp");
        let pid = std::process::id();
        Scratch {
            list: tmp.join(format!("restore-{pid}-{id}.list")),
            toc: tmp.join(format!("restore-{pid}-{id}.toc")),
            spool: std::cell::RefCell::new(None),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.list);
        let _ = std::fs::remove_file(&self.toc);
        if let Some(spool) = self.spool.borrow_mut().take() {
            let _ = std::fs::remove_file(spool);
        }
    }
}

/// The archive as pg_restore saw it, schema and data restored.
struct Loaded {
    toc: Toc,
    toc_bytes: Vec<u8>,
    /// The entries restored, for a partial restore.
    entries: Option<BTreeSet<i64>>,
    feed: String,
    post_data: PostData,
}

/// The second phase: pg_restore's post-data section, from a file (the
/// spool, or the TOC alone) or from stdin (the TOC, behind a prefix).
struct PostData {
    args: Vec<String>,
    stdin: Option<Vec<u8>>,
}

impl PostData {
    #[allow(clippy::type_complexity)]
    fn start(
        self,
        pg_restore: &Tool,
        database: &ConnectionTarget,
    ) -> Result<(
        ChildSource,
        (Option<std::process::ChildStdin>, Option<Vec<u8>>),
    )> {
        let command = pg_restore.client_command(database, self.args);
        let (child, stdin) = spawn_pg_restore(pg_restore, command)?;
        Ok((child, (Some(stdin), self.stdin)))
    }
}

#[allow(clippy::too_many_arguments)]
fn load(
    repo: &Repository,
    manifest: &Manifest,
    mut source: ArchiveSource,
    pg_restore: &Tool,
    database: &ConnectionTarget,
    options: &RestoreOptions,
    scratch: &Scratch,
    watch: &mut InterruptWatch,
    progress: &mut dyn FnMut(u64),
) -> Result<Loaded> {
    let spooled = options.jobs > 1 && !pg_restore.is_prefixed();
    if !options.selection.is_everything() && pg_restore.is_prefixed() {
        return Err(Error::config(
            "--schema and --table need pg_restore to read a list file on this host, and pg-restore.command-prefix runs it elsewhere",
        )
        .with_hint("restore the whole backup, or run pg_restore on this host (unset pg-restore.command-prefix)"));
    }

    let mut args = vec![
        "--exit-on-error".to_string(),
        "--no-password".to_string(),
        format!("--dbname={}", database.conninfo()),
    ];
    if options.no_owner {
        args.push("--no-owner".to_string());
    }
    if options.no_acl {
        args.push("--no-acl".to_string());
    }
    let select = |toc: &Toc, args: &mut Vec<String>| -> Result<Option<BTreeSet<i64>>> {
        if options.selection.is_everything() {
            return Ok(None);
        }
        let entries = options.selection.entries(toc);
        if !entries.iter().any(|id| {
            toc.entries
                .iter()
                .any(|e| e.dump_id == *id && e.desc != "SCHEMA")
        }) {
            return Err(Error::config(format!(
                "--schema/--table select nothing in backup {}",
                manifest.id
            ))
            .with_hint("names are exact and case-sensitive; `pgward list --json` shows each backup's tables"));
        }
        std::fs::write(&scratch.list, Selection::list_file(&entries))
            .map_err(|e| Error::repository_io("cannot write", &scratch.list, e))?;
        args.push(format!("--use-list={}", scratch.list.display()));
        Ok(Some(entries.into_iter().collect()))
    };
    let phases = |mut args: Vec<String>, jobs: usize| {
        if jobs > 1 {
            args.push(format!("--jobs={jobs}"));
        }
        let mut first = args.clone();
        first.push("--section=pre-data".to_string());
        first.push("--section=data".to_string());
        args.push("--section=post-data".to_string());
        (first, args)
    };

    if spooled {
        let (path, file) = repo.create_spool(&manifest.id)?;
        *scratch.spool.borrow_mut() = Some(path.clone());
        let mut writer = std::io::BufWriter::with_capacity(crate::pipeline::CHUNK_SIZE, file);
        let copied = copy_stream(&mut source, &mut writer, |n| {
            progress(n);
            watch.received().is_none()
        });
        match copied {
            Ok(_) => {}
            Err(CopyError::Stopped) => return Err(stopped(watch, manifest).expect("a signal")),
            Err(CopyError::Read(e)) => return Err(damaged(manifest, e)),
            Err(CopyError::Write(e)) => return Err(spool_error(&path, e)),
        }
        let file = writer
            .into_inner()
            .map_err(|e| spool_error(&path, e.into_error()))?;
        let toc = source.toc().cloned().expect("a complete archive has a TOC");
        let toc_bytes = source.toc_bytes().to_vec();
        let (_, patches) = source.finish()?;
        for (position, bytes) in patches {
            use std::os::unix::fs::FileExt;
            file.write_all_at(&bytes, position)
                .map_err(|e| spool_error(&path, e))?;
        }
        drop(file);
        let entries = select(&toc, &mut args)?;
        let (mut first, mut second) = phases(args, options.jobs);
        first.push(path.display().to_string());
        second.push(path.display().to_string());
        let command = pg_restore.client_command(database, first);
        let (mut child, stdin) = spawn_pg_restore(pg_restore, command)?;
        drop(stdin);
        watch.watch_child(child.pid());
        let waited = copy_stream(&mut child, &mut std::io::sink(), |_| {
            watch.received().is_none()
        });
        if let Some(error) = stopped(watch, manifest) {
            child.terminate();
            return Err(error);
        }
        finish_pg_restore(child, waited.err())?;
        return Ok(Loaded {
            toc,
            toc_bytes,
            entries,
            feed: format!("spooled, pg_restore --jobs {}", options.jobs),
            post_data: PostData {
                args: second,
                stdin: None,
            },
        });
    }

    // Streamed: read up to the end of the TOC, which the selection needs,
    // then hand pg_restore what was read and the rest as it comes.
    let mut head = Vec::new();
    let mut buffer = vec![0u8; crate::pipeline::CHUNK_SIZE];
    while source.toc().is_none() {
        let n = std::io::Read::read(&mut source, &mut buffer).map_err(|e| damaged(manifest, e))?;
        if n == 0 {
            // finish() names what is wrong with an archive without a TOC.
            source.finish()?;
            return Err(damaged(manifest, "the archive has no TOC"));
        }
        head.extend_from_slice(&buffer[..n]);
    }
    let toc = source.toc().cloned().expect("checked above");
    let toc_bytes = source.toc_bytes().to_vec();
    let entries = select(&toc, &mut args)?;
    // The post-data phase reads only the TOC: from a file of it (which
    // holds no table data) so that it can run in parallel, or from stdin
    // when pg_restore runs behind a prefix.
    let post_data = if pg_restore.is_prefixed() {
        PostData {
            args: phases(args.clone(), 1).1,
            stdin: Some(toc_bytes.clone()),
        }
    } else {
        write_private(&scratch.toc, &toc_bytes)?;
        let mut second = phases(args.clone(), options.jobs).1;
        second.push(scratch.toc.display().to_string());
        PostData {
            args: second,
            stdin: None,
        }
    };
    let first = phases(args, 1).0;
    let command = pg_restore.client_command(database, first);
    let (mut child, mut stdin) = spawn_pg_restore(pg_restore, command)?;
    watch.watch_child(child.pid());
    let fed = stdin
        .write_all(&head)
        .map_err(CopyError::Write)
        .and_then(|_| {
            copy_stream(&mut source, &mut stdin, |n| {
                progress(head.len() as u64 + n);
                watch.received().is_none()
            })
        });
    if let Some(error) = stopped(watch, manifest) {
        child.terminate();
        return Err(error);
    }
    drop(stdin);
    match fed {
        // pg_restore stops reading once it has every entry it was asked
        // for (a partial restore); if it failed, its own words say why.
        Err(CopyError::Write(_)) | Err(CopyError::Stopped) | Ok(_) => {}
        Err(CopyError::Read(e)) => {
            child.terminate();
            return Err(damaged(manifest, e));
        }
    }
    let waited = copy_stream(&mut child, &mut std::io::sink(), |_| true);
    finish_pg_restore(child, waited.err())?;
    // What pg_restore did not read is still read, to prove the whole
    // artifact is the backup.
    source.finish()?;
    Ok(Loaded {
        toc,
        toc_bytes,
        entries,
        feed: "streamed".to_string(),
        post_data,
    })
}

fn damaged(manifest: &Manifest, detail: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Integrity,
        format!("backup {} is damaged: {detail}", manifest.id),
    )
    .with_hint("run `pgward verify` on it; restore another backup")
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(bytes))
        .map_err(|e| Error::repository_io("cannot write", path, e))
}

fn spool_error(path: &Path, e: std::io::Error) -> Error {
    Error::repository_io("cannot write the restore spool", path, e).with_hint(
        "the spool needs the archive's size (see `pgward list --json`) free in the repository's tmp/; --jobs 1 streams without one",
    )
}

fn spawn_pg_restore(
    pg_restore: &Tool,
    command: std::process::Command,
) -> Result<(ChildSource, std::process::ChildStdin)> {
    ChildSource::spawn_fed(command).map_err(|e| {
        Error::new(
            ErrorKind::Restore,
            format!("cannot start {}: {e}", pg_restore.display_program()),
        )
        .with_hint("install pg_restore (Debian: postgresql-client) or set pg-restore.path")
    })
}

fn finish_pg_restore(child: ChildSource, read_error: Option<CopyError>) -> Result<()> {
    let finished = child.finish();
    if let Err(failure) = finished {
        return Err(Error::new(
            ErrorKind::Restore,
            format!(
                "pg_restore {}: {}",
                failure.describe_status(),
                failure.key_line().unwrap_or("no message")
            ),
        )
        .with_hint("fix what pg_restore names: a missing role (create it, or restore with --no-owner --no-acl), an object outside --schema/--table (select it too)"));
    }
    if let Some(e) = read_error {
        return Err(Error::new(
            ErrorKind::Restore,
            format!("cannot read pg_restore's output: {e:?}"),
        ));
    }
    Ok(())
}
