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
mod failure;
mod load;
pub(crate) mod preparation;
pub mod selection;
pub mod source;
pub mod target;

use crate::catalog::restorability::RestoreHazard;
use crate::config::Config;
use crate::connection::Env;
use crate::dump::Tool;
use crate::encryption::secret::Decryptor;
use crate::error::{Error, ErrorKind, Result};
use crate::interrupt::InterruptWatch;
use crate::pipeline::copy_stream;
use crate::repository::Repository;
use crate::repository::manifest::{DrillCheck, Manifest};
use load::{Prepared, stopped};
use selection::Selection;
use serde::Serialize;
use source::ArchiveSource;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;
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
    /// Allow `postgres`, `template0`, `template1` or the restore
    /// connection's own database as the target.
    pub allow_system_database: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            jobs: DEFAULT_JOBS,
            no_owner: false,
            no_acl: false,
            selection: Selection::default(),
            drop_existing: false,
            allow_system_database: false,
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
    /// Reading and checking the archive before the database is touched
    /// (the whole archive when spooled, its TOC when streamed).
    pub prepare_ms: u64,
    /// pg_restore: the whole parallel run when spooled; streamed, the
    /// schema and data phase (with the reading).
    pub data_ms: u64,
    /// Streamed only: pg_restore's post-data phase (indexes, constraints,
    /// grants); 0 when spooled.
    pub post_data_ms: u64,
    /// From the first byte read to the end of pg_restore.
    pub restore_ms: u64,
    /// Reading back and comparing, which overlaps the restore: from the
    /// start of the pg_restore run (spooled) or of its post-data phase
    /// (streamed) to the end.
    pub verify_ms: u64,
    pub ok: bool,
    /// Findings the configuration accepts (`[drill] accept`) that were
    /// found: `CLASS OBJECT` each.
    pub accepted_findings: Vec<String>,
    pub checks: Vec<DrillCheck>,
    /// What this PASS cannot vouch for, because the archive cannot hold it
    /// (see [`compare::limits`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl RestoreReport {
    pub fn first_failure(&self) -> Option<&DrillCheck> {
        self.checks.iter().find(|c| c.fails())
    }
}

/// Restores backup `selector` into database `to` and verifies it.
pub fn run(
    config: &Config,
    env: Env,
    selector: &crate::repository::select::Selector,
    to: &str,
    options: &RestoreOptions,
    decryptor: &mut dyn FnMut() -> Result<Option<Decryptor>>,
    progress: &mut dyn FnMut(u64),
) -> Result<RestoreReport> {
    let repo = Repository::open_configured(config)?;
    let manifest = repo.find(selector)?;
    // Held against a prune until this command is done with it.
    let _held = repo.hold(&manifest)?;
    // The artifact is checked (size, sha256, a key that is one of its
    // recipients) before anything on the server changes.
    let source = open_source(&repo, &manifest, decryptor)?;
    let mut server = RestoreServer::connect(config, env)?;
    let refuse = |why: String| {
        Error::config(why).with_hint(format!(
            "restore to a new name (--to NEWDB), or pass --drop-existing-database to DROP {to} and everything in it first"
        ))
    };
    if !options.allow_system_database
        && (["postgres", "template0", "template1"].contains(&to)
            || to == server.maintenance_database())
    {
        return Err(Error::config(format!(
            "{to} is a database the server itself (or pgward's restore connection) relies on; pgward does not restore into it"
        ))
        .with_hint("restore to a new name (--to NEWDB); --allow-system-database overrides this"));
    }
    if server.is_source_of(&manifest, to) && !options.drop_existing {
        return Err(refuse(format!(
            "{to} on {} is the database backup {} was taken from; pgward does not restore over it",
            server.describe(),
            manifest.id
        )));
    }
    let state = server.state(to)?;
    if let TargetState::NotEmpty(objects) = state
        && !options.drop_existing
    {
        return Err(refuse(format!(
            "database {to} on {} exists and is not empty ({objects} objects)",
            server.describe()
        )));
    }
    // Schemas the target already has for the extensions created in it:
    // the archive's CREATE SCHEMA of them is skipped, as for public.
    let present = match &state {
        TargetState::Empty(present) if !options.drop_existing => present.clone(),
        _ => target::Present::default(),
    };
    let present_schemas = present.schemas.clone();
    let mut restoring = Restoring::begin(config, &repo, &manifest)?;
    restoring.present = present;
    let prepared = restoring.prepare(source, options, &present_schemas, progress)?;
    if let Some(error) = restoring.interrupted() {
        return Err(error);
    }

    // Only now, with the archive read as far as it can be and the
    // selection resolved, does anything on the server change.
    if state != TargetState::Absent && options.drop_existing {
        server.drop_database(to)?;
    }
    let created = state == TargetState::Absent || options.drop_existing;
    if created {
        server.create(to, encoding(&manifest))?;
    }
    let outcome = restoring.restore_and_compare(prepared, &server, to, options, progress);
    let outcome = restoring.interrupted().map_or(outcome, Err);
    match outcome {
        Ok(report) => Ok(report),
        // A database pgward created for a restore that failed holds a part
        // of the backup: it goes, so nobody takes it for a restore.
        Err(e) if created => match server.drop_database(to) {
            Ok(()) => Err(e),
            Err(dropping) => Err(Error::new(
                e.kind(),
                format!(
                    "{}; and the partial database {to} is still there: {}",
                    e.message(),
                    dropping.message()
                ),
            )
            .with_hint(format!(
                "drop it by hand: DROP DATABASE {}",
                crate::scope::quote_ident(to)
            ))),
        },
        Err(e) => Err(e),
    }
}

/// The constraints the backup recorded whose restore depends on the order
/// tables are loaded in (see [`crate::catalog::restorability`]).
pub(crate) fn restore_hazards(manifest: &Manifest) -> &[RestoreHazard] {
    manifest
        .content
        .as_ref()
        .map_or(&[], |c| c.restore_hazards.as_slice())
}

/// After a restore that went through: each hazard on a restored table,
/// and that the restore was serial because of it.
fn restore_order_checks(manifest: &Manifest, prepared: &Prepared) -> Vec<DrillCheck> {
    restore_hazards(manifest)
        .iter()
        .filter(|h| prepared.restores_data_of(&h.schema, &h.table))
        .map(|hazard| {
            DrillCheck::passed(
                format!("restore order {}", hazard.table_name()),
                format!(
                    "restored serially in archive order, as a plain pg_restore would: {}; a parallel pg_restore (-j) of this archive may fail or pass by chance",
                    hazard.describe()
                ),
            )
        })
        .collect()
}

/// pg_restore's failure `message` explained by the backup's restore-order
/// hazards on tables that were restored (`restored`): the hazard whose
/// constraint it names as violated is the cause; a failure while loading
/// data that names none may still be one of them.
pub(crate) fn hazard_cause(
    manifest: &Manifest,
    message: &str,
    restored: &dyn Fn(&RestoreHazard) -> bool,
) -> Option<String> {
    let hazards: Vec<&RestoreHazard> = restore_hazards(manifest)
        .iter()
        .filter(|h| restored(h))
        .collect();
    let named: Vec<&RestoreHazard> = hazards
        .iter()
        .copied()
        .filter(|h| message.contains(&format!("violates check constraint \"{}\"", h.constraint)))
        .collect();
    let (lead, which) = if !named.is_empty() {
        ("cause: restore-order hazard", named)
    } else if message.contains("COPY failed for table") && !hazards.is_empty() {
        ("possible cause: restore-order hazard", hazards)
    } else {
        return None;
    };
    Some(format!(
        "{lead}: {} (pgward restores such a backup serially in archive order, so the outcome is the same every time)",
        which
            .iter()
            .map(|h| h.describe())
            .collect::<Vec<_>>()
            .join("; ")
    ))
}

/// The archive's encoding, for CREATE DATABASE.
pub(crate) fn encoding(manifest: &Manifest) -> Option<&str> {
    manifest
        .content
        .as_ref()
        .and_then(|c| c.encoding.as_deref())
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

/// One restore in progress: its files in `tmp/` and its signal watch.
/// The fields drop in order: the files go before the watch could raise a
/// pending signal again.
pub(crate) struct Restoring<'a> {
    scratch: Scratch,
    watch: InterruptWatch,
    manifest: &'a Manifest,
    repo: &'a Repository,
    pg_restore: Tool,
    pg_dump: Tool,
    started: Instant,
    prepare_ms: u64,
    /// `[drill] accept`.
    accept: Vec<String>,
    /// What a drill creates in its scratch database before restoring
    /// (`[scope] standalone = false`).
    preparation: Option<preparation::Preparation>,
    /// What the (empty) target held before the restore: not the archive's.
    present: target::Present,
}

impl<'a> Restoring<'a> {
    pub(crate) fn begin(
        config: &Config,
        repo: &'a Repository,
        manifest: &'a Manifest,
    ) -> Result<Restoring<'a>> {
        let watch = InterruptWatch::install().map_err(|e| {
            Error::new(
                ErrorKind::Restore,
                format!("cannot install signal handlers: {e}"),
            )
        })?;
        // Every scratch file (spool, TOC, lists) goes into a directory
        // proved private first: pg_restore executes what they say.
        repo.prepare_spool_dir()?;
        Ok(Restoring {
            scratch: Scratch::new(repo, &manifest.id),
            watch,
            manifest,
            repo,
            pg_restore: Tool::pg_restore(&config.pg_restore),
            pg_dump: Tool::pg_dump(&config.pg_dump),
            started: Instant::now(),
            prepare_ms: 0,
            accept: config.drill.accept.clone(),
            preparation: None,
            present: target::Present::default(),
        })
    }

    /// Have the database restored into prepared first (a drill of a scope
    /// meant for a prepared database).
    pub(crate) fn prepare_target_with(&mut self, preparation: preparation::Preparation) {
        self.preparation = Some(preparation);
    }

    /// Everything that can refuse the restore before a database is touched.
    pub(crate) fn prepare(
        &mut self,
        source: ArchiveSource,
        options: &RestoreOptions,
        present_schemas: &[String],
        progress: &mut dyn FnMut(u64),
    ) -> Result<Prepared> {
        self.started = Instant::now();
        let prepared = load::prepare(
            self.repo,
            self.manifest,
            source,
            &self.pg_restore,
            options,
            present_schemas,
            &self.scratch,
            &mut self.watch,
            progress,
        );
        self.prepare_ms = self.started.elapsed().as_millis() as u64;
        prepared
    }

    /// A signal received and not yet reported, as the run's error.
    pub(crate) fn interrupted(&mut self) -> Option<Error> {
        stopped(&mut self.watch, self.manifest)
    }

    /// Restores into the existing, empty database `dbname` and compares.
    ///
    /// The tables are read back while pg_restore still works, so that the
    /// proof overlaps the restore instead of following it. Spooled, one
    /// parallel pg_restore run reports each item it finishes, and each
    /// table is read back as soon as its data is in. Streamed, pg_restore
    /// runs in two phases, schema and data, then the post-data section
    /// (indexes, constraints, triggers, grants), during which the tables
    /// are read back. Sequences, large objects and the schema are compared
    /// once pg_restore is done: spooled, while the last tables are still
    /// being read back; streamed, after them.
    pub(crate) fn restore_and_compare(
        &mut self,
        mut prepared: Prepared,
        server: &RestoreServer,
        dbname: &str,
        options: &RestoreOptions,
        progress: &mut dyn FnMut(u64),
    ) -> Result<RestoreReport> {
        let outcome = self.restore_then_compare(&mut prepared, server, dbname, options, progress);
        outcome.map_err(|e| {
            if e.kind() != ErrorKind::Restore {
                return e;
            }
            let restored = |h: &RestoreHazard| prepared.restores_data_of(&h.schema, &h.table);
            let e = match hazard_cause(self.manifest, e.message(), &restored) {
                Some(cause) => e.append(cause),
                None => e,
            };
            match selection::missing_object_hint(&prepared.toc, &options.selection, e.message()) {
                Some(hint) => e.with_hint(hint),
                None => e,
            }
        })
    }

    fn restore_then_compare(
        &mut self,
        prepared: &mut Prepared,
        server: &RestoreServer,
        dbname: &str,
        options: &RestoreOptions,
        progress: &mut dyn FnMut(u64),
    ) -> Result<RestoreReport> {
        let manifest = self.manifest;
        let database = server.target_for(dbname);
        // Schemas the scope's objects and extensions live in that the dump
        // does not create (recorded at backup time).
        server.create_schemas(dbname, &manifest.dependencies.schemas)?;
        let existing: Vec<String> = manifest
            .dependencies
            .schemas
            .iter()
            .cloned()
            .chain(["public".to_string()])
            .collect();
        let preparation = match &self.preparation {
            Some(p) => Some(p.run(&self.pg_dump, &database, &prepared.toc, &existing)?),
            None => None,
        };
        // Not the archive's: what the preparation created, and the
        // extensions (with their schemas) the target held before.
        let mut not_restored: std::collections::BTreeSet<compare::ObjectKey> = preparation
            .as_ref()
            .map(|p| p.objects.clone())
            .unwrap_or_default();
        let unqualified = |kind: &str, name: String| (kind.to_string(), "-".to_string(), name);
        for extension in &self.present.extensions {
            not_restored.insert(unqualified("EXTENSION", extension.clone()));
            not_restored.insert(unqualified("COMMENT", format!("EXTENSION {extension}")));
        }
        for schema in &self.present.schemas {
            not_restored.insert(unqualified("SCHEMA", schema.clone()));
        }
        server.adopt_schemas(dbname, &prepared.adopted, options.no_owner)?;
        let schema_list = self.scratch.schema_list.clone();
        let entries = prepared.entries.clone();
        let restored = compare::RestoredAs {
            database: &database,
            created_schemas: &manifest.dependencies.schemas,
            prepared_objects: &not_restored,
            no_owner: options.no_owner,
            no_acl: options.no_acl,
            entries: entries.as_ref(),
            list_file: &schema_list,
        };
        let tools = compare::Tools {
            pg_dump: &self.pg_dump,
            pg_restore: &self.pg_restore,
        };
        // Sequences, large objects and the schema, compared while the last
        // tables are still being read back (spooled) or afterwards.
        let mut objects = None;
        let data_started = Instant::now();
        let (table_checks, data_ms, post_data_ms, verify_started) = if prepared.is_spooled() {
            // One parallel run; each table is read back as soon as
            // pg_restore reports its data in.
            let (mut child, lines) = prepared.start_whole(&self.pg_restore, &database)?;
            self.watch.watch_child(child.pid());
            let watch = &self.watch;
            let toc = &prepared.toc;
            let restored = &restored;
            let child_exited = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let finished = compare::FinishedItems {
                lines,
                child_exited: child_exited.clone(),
            };
            let (tables, waited) = std::thread::scope(|scope| {
                let tables = scope.spawn(move || {
                    compare::compare_tables(manifest, toc, restored, options.jobs, Some(finished))
                });
                let waited = copy_stream(&mut child, &mut std::io::sink(), |_| {
                    watch.received().is_none()
                });
                if waited.is_err() {
                    child.terminate();
                }
                child_exited.store(true, std::sync::atomic::Ordering::SeqCst);
                // Everything is restored once pg_restore has ended well
                // (its exit status is judged below; a failed run throws
                // this comparison away).
                if waited.is_ok() && watch.received().is_none() {
                    objects = Some(compare::compare_objects_and_schema(
                        manifest,
                        toc,
                        &prepared.toc_bytes,
                        restored,
                        &tools,
                    ));
                }
                (
                    tables.join().expect("the verifying thread does not panic"),
                    waited,
                )
            });
            if let Some(error) = stopped(&mut self.watch, manifest) {
                child.terminate();
                return Err(error);
            }
            load::finish(child, waited.err(), manifest)?;
            let data_ms = data_started.elapsed().as_millis() as u64;
            (tables, data_ms, 0, data_started)
        } else {
            prepared.load_data(
                manifest,
                &self.pg_restore,
                &database,
                &mut self.watch,
                progress,
            )?;
            let data_ms = data_started.elapsed().as_millis() as u64;
            let post_started = Instant::now();
            let (mut post_data, stdin, stdin_bytes) =
                prepared.start_post_data(&self.pg_restore, &database)?;
            self.watch.watch_child(post_data.pid());
            let watch = &self.watch;
            let (tables, waited) = std::thread::scope(|scope| {
                let feeder = scope.spawn(move || {
                    let mut stdin = stdin;
                    if let Some(bytes) = stdin_bytes {
                        // pg_restore may stop reading once it has the TOC.
                        let _ = stdin.write_all(&bytes);
                    }
                });
                let tables =
                    compare::compare_tables(manifest, &prepared.toc, &restored, options.jobs, None);
                let waited = copy_stream(&mut post_data, &mut std::io::sink(), |_| {
                    watch.received().is_none()
                });
                let _ = feeder.join();
                (tables, waited)
            });
            if let Some(error) = stopped(&mut self.watch, manifest) {
                post_data.terminate();
                return Err(error);
            }
            load::finish(post_data, waited.err(), manifest)?;
            let post_data_ms = post_started.elapsed().as_millis() as u64;
            (tables, data_ms, post_data_ms, post_started)
        };
        let restore_ms = self.prepare_ms + data_ms + post_data_ms;
        let mut checks = table_checks?;
        if let Some(preparation) = &preparation {
            checks.insert(0, preparation.check.clone());
        }
        if let Some(chosen) = &entries {
            let left_out = options.selection.left_out(&prepared.toc, chosen);
            let extensions = Selection::extensions(&prepared.toc, chosen);
            let mut detail = format!("{} archive entries restored", chosen.len());
            if !extensions.is_empty() {
                detail.push_str(&format!(
                    ", with the extensions they use: {}",
                    extensions.join(", ")
                ));
            }
            if !left_out.is_empty() {
                detail.push_str(&format!(
                    "; left out because they also need something outside --schema/--table: {}",
                    left_out.join(", ")
                ));
            }
            checks.push(DrillCheck {
                name: "selection".to_string(),
                ok: true,
                detail,
                finding: None,
            });
        }
        let objects = match objects {
            Some(objects) => objects,
            None => compare::compare_objects_and_schema(
                manifest,
                &prepared.toc,
                &prepared.toc_bytes,
                &restored,
                &tools,
            ),
        };
        checks.extend(objects?);
        if let Some(error) = stopped(&mut self.watch, manifest) {
            return Err(error);
        }
        checks.extend(restore_order_checks(manifest, prepared));
        let accepted_findings = crate::findings::apply_acceptance(&mut checks, &self.accept);
        let notes = compare::limits(&prepared.toc, entries.as_ref());
        Ok(RestoreReport {
            backup_id: manifest.id.clone(),
            server: server.describe(),
            database: dbname.to_string(),
            feed: prepared.feed(),
            prepare_ms: self.prepare_ms,
            data_ms,
            post_data_ms,
            restore_ms,
            verify_ms: verify_started.elapsed().as_millis() as u64,
            ok: checks.iter().all(|c| !c.fails()),
            accepted_findings,
            checks,
            notes,
        })
    }
}

/// The files a restore may leave in `tmp/` while it runs, removed on drop;
/// those of restores that died are removed when the next one starts.
pub(crate) struct Scratch {
    /// The pg_restore list of a partial restore.
    list: PathBuf,
    /// The list for the schema comparison.
    schema_list: PathBuf,
    /// The TOC alone, for the post-data phase of a streamed restore.
    toc: PathBuf,
    spool: std::cell::RefCell<Option<PathBuf>>,
}

impl Scratch {
    fn new(repo: &Repository, id: &str) -> Scratch {
        repo.remove_stale_restore_files();
        let name = |suffix: &str| repo.restore_file(id, suffix);
        Scratch {
            list: name("list"),
            schema_list: name("schema.list"),
            toc: name("toc"),
            spool: std::cell::RefCell::new(None),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for file in [&self.list, &self.schema_list, &self.toc] {
            let _ = std::fs::remove_file(file);
        }
        if let Some(spool) = self.spool.borrow_mut().take() {
            let _ = std::fs::remove_file(spool);
        }
    }
}
