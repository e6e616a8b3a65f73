//! Getting a backup's archive into a database with pg_restore.
//!
//! Everything that can refuse a restore happens in [`prepare`], before the
//! target database is touched: reading the TOC, choosing the entries of a
//! partial restore, and, when spooled, reading and checking the whole
//! archive. A spooled archive is then restored by one parallel pg_restore
//! run that reports each item it finishes ([`Prepared::start_whole`]), so
//! that each table can be read back as soon as its data is in. A streamed
//! one is restored in two phases: schema and data
//! ([`Prepared::load_data`]), then the post-data section (indexes,
//! constraints, triggers, grants: [`Prepared::start_post_data`]), which the
//! caller overlaps with reading the tables back.

use super::selection::Selection;
use super::source::{ArchiveSource, damaged};
use super::{RestoreOptions, Scratch};
use crate::connection::ConnectionTarget;
use crate::dump::Tool;
use crate::error::{Error, ErrorKind, Result};
use crate::interrupt::InterruptWatch;
use crate::pipeline::archive::Toc;
use crate::pipeline::child::ChildSource;
use crate::pipeline::{CopyError, copy_stream};
use crate::repository::Repository;
use crate::repository::manifest::Manifest;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The schemas in every database created from template0.
const TEMPLATE_SCHEMAS: [&str; 1] = ["public"];

/// An archive ready for pg_restore, checked as far as it can be before
/// the database is touched.
pub(crate) struct Prepared {
    pub toc: Toc,
    /// The header and TOC: the schema, for the schema comparison.
    pub toc_bytes: Vec<u8>,
    /// The entries to restore, for a partial restore.
    pub entries: Option<BTreeSet<i64>>,
    /// Schemas the archive creates that the new database already has:
    /// (name, the archive's owner for it). pg_restore skips their CREATE.
    pub adopted: Vec<(String, String)>,
    input: Input,
    /// pg_restore's arguments common to both phases.
    args: Vec<String>,
    jobs: usize,
}

enum Input {
    /// The whole archive, checked, in a private file with its data offsets.
    Spool(PathBuf),
    /// The archive still streaming: what was read to find the TOC, and the
    /// rest. The post-data phase reads `toc_file` (or the TOC on stdin
    /// behind a command prefix).
    Stream {
        head: Vec<u8>,
        source: Option<Box<ArchiveSource>>,
        toc_file: Option<PathBuf>,
    },
}

/// A signal turned into the restore's failure (acknowledged, so it is not
/// raised again while the caller cleans up).
pub(crate) fn stopped(watch: &mut InterruptWatch, manifest: &Manifest) -> Option<Error> {
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

#[allow(clippy::too_many_arguments)]
pub(crate) fn prepare(
    repo: &Repository,
    manifest: &Manifest,
    mut source: ArchiveSource,
    pg_restore: &Tool,
    options: &RestoreOptions,
    present_schemas: &[String],
    scratch: &Scratch,
    watch: &mut InterruptWatch,
    progress: &mut dyn FnMut(u64),
) -> Result<Prepared> {
    if !options.selection.is_everything() && pg_restore.is_prefixed() {
        return Err(Error::config(
            "--schema and --table need pg_restore to read a list file on this host, and pg-restore.command-prefix runs it elsewhere",
        )
        .with_hint("restore the whole backup, or run pg_restore on this host (unset pg-restore.command-prefix)"));
    }
    // A missing pg_restore is found now, not after a database was created.
    pg_restore.version().map_err(|e| {
        Error::config(e.message()).with_hint(e.hint().unwrap_or_default().to_string())
    })?;
    // No --exit-on-error: a restore that fails goes on, so that every
    // error is reported, not just a harmless first one hiding the rest.
    let mut args = vec!["--no-password".to_string()];
    if options.no_owner {
        args.push("--no-owner".to_string());
    }
    if options.no_acl {
        args.push("--no-acl".to_string());
    }
    let spooled = options.jobs > 1 && !pg_restore.is_prefixed();
    // A backup with restore-order hazards is restored serially, in
    // archive order, as a plain pg_restore would: the same outcome every
    // time, where a parallel schedule would decide it by chance.
    let serial = !super::restore_hazards(manifest).is_empty();
    let (toc, toc_bytes, input) = if spooled {
        let (path, file) = repo.create_spool(&manifest.id)?;
        *scratch.spool.borrow_mut() = Some(path.clone());
        let mut writer = std::io::BufWriter::with_capacity(crate::pipeline::CHUNK_SIZE, file);
        let copied = source.copy_to(&mut writer, |n| {
            progress(n);
            watch.received().is_none()
        });
        match copied {
            Ok(_) => {}
            Err(CopyError::Stopped) => return Err(stopped(watch, manifest).expect("a signal")),
            Err(CopyError::Read(e)) => {
                return Err(stopped(watch, manifest).unwrap_or_else(|| source.read_failed(e)));
            }
            Err(CopyError::Write(e)) => return Err(spool_error(&path, e)),
        }
        let file = writer
            .into_inner()
            .map_err(|e| spool_error(&path, e.into_error()))?;
        let toc = source.toc().cloned();
        let toc_bytes = source.toc_bytes().to_vec();
        // The whole archive against the manifest, before pg_restore sees it.
        let (_, patches) = source.finish()?;
        let toc = toc.ok_or_else(|| damaged(manifest, "the archive has no TOC"))?;
        for (position, bytes) in patches {
            use std::os::unix::fs::FileExt;
            file.write_all_at(&bytes, position)
                .map_err(|e| spool_error(&path, e))?;
        }
        (toc, toc_bytes, Input::Spool(path))
    } else {
        // Read up to the end of the TOC, which the selection needs; the
        // rest goes to pg_restore as it comes.
        let mut head = Vec::new();
        let mut buffer = vec![0u8; crate::pipeline::CHUNK_SIZE];
        while source.toc().is_none() {
            if let Some(error) = stopped(watch, manifest) {
                return Err(error);
            }
            let n = std::io::Read::read(&mut source, &mut buffer).map_err(|e| {
                // A decryption command killed by the same Ctrl-C is no damage.
                stopped(watch, manifest).unwrap_or_else(|| source.read_failed(e))
            })?;
            if n == 0 {
                // finish() names what is wrong with an archive without a TOC.
                source.finish()?;
                return Err(damaged(manifest, "the archive has no TOC"));
            }
            head.extend_from_slice(&buffer[..n]);
        }
        let toc = source.toc().cloned().expect("checked above");
        let toc_bytes = source.toc_bytes().to_vec();
        // The TOC alone (no table data) as a file lets the post-data
        // phase run in parallel; behind a prefix it goes to stdin.
        let toc_file = if pg_restore.is_prefixed() {
            None
        } else {
            write_private(&scratch.toc, &toc_bytes)?;
            Some(scratch.toc.clone())
        };
        let input = Input::Stream {
            head,
            source: Some(Box::new(source)),
            toc_file,
        };
        (toc, toc_bytes, input)
    };
    let entries = if options.selection.is_everything() {
        None
    } else {
        let entries = options.selection.entries(&toc);
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
        Some(entries)
    };
    // Schemas the archive creates that the target already has (public,
    // which every new database has from template0; a schema where the
    // operator created extensions before restoring) are not created again:
    // pg_restore would fail at CREATE SCHEMA. pgward gives the existing one the archive's
    // owner and drops template0's comment ([`super::target::RestoreServer::
    // adopt_schemas`]); the archive's comment and grants are entries of
    // their own and restore.
    let adopted: Vec<&crate::pipeline::archive::TocEntry> = toc
        .entries
        .iter()
        .filter(|e| {
            e.desc == "SCHEMA"
                && (TEMPLATE_SCHEMAS.contains(&e.tag.as_str()) || present_schemas.contains(&e.tag))
        })
        .filter(|e| e.definition.contains("CREATE SCHEMA"))
        .filter(|e| entries.as_ref().is_none_or(|ids| ids.contains(&e.dump_id)))
        .collect();
    if !adopted.is_empty() && pg_restore.is_prefixed() {
        return Err(Error::config(format!(
            "backup {} creates schema public, which every new database already has; leaving that out needs pg_restore to read a list file on this host, and pg-restore.command-prefix runs it elsewhere",
            manifest.id
        ))
        .with_hint("run pg_restore on this host for this restore (unset pg-restore.command-prefix)"));
    }
    if entries.is_some() || !adopted.is_empty() {
        let restore: Vec<i64> = match &entries {
            Some(ids) => ids.clone(),
            None => toc.entries.iter().map(|e| e.dump_id).collect(),
        }
        .into_iter()
        .filter(|id| !adopted.iter().any(|e| e.dump_id == *id))
        .collect();
        write_private(&scratch.list, Selection::list_file(&restore).as_bytes())?;
        args.push(format!("--use-list={}", scratch.list.display()));
    }
    let adopted = adopted
        .iter()
        .map(|e| (e.tag.clone(), e.owner.clone()))
        .collect();
    let entries = entries.map(|ids| ids.into_iter().collect());
    Ok(Prepared {
        toc,
        toc_bytes,
        entries,
        adopted,
        input,
        args,
        jobs: if spooled && !serial { options.jobs } else { 1 },
    })
}

/// The dump id in pg_restore's `--verbose` report of a finished item in a
/// parallel restore: `pg_restore: finished item 3363 TABLE DATA accounts`
/// (pgward runs pg_restore with `LC_ALL=C`, uncoloured). Only a line that
/// starts so counts: a name in another line cannot fake one.
pub(crate) fn finished_item(line: &str) -> Option<i64> {
    let rest = line.strip_prefix("pg_restore: finished item ")?;
    rest.split_once(' ')?.0.parse().ok()
}

impl Prepared {
    /// Whether the whole archive is in a spool file, which one parallel
    /// pg_restore run reads ([`Prepared::start_whole`]).
    pub fn is_spooled(&self) -> bool {
        matches!(self.input, Input::Spool(_))
    }

    /// The whole restore as one parallel pg_restore run from the spool:
    /// returns the child and its stderr lines, among which each finished
    /// item is reported (`--verbose`, see [`finished_item`]).
    pub fn start_whole(
        &self,
        pg_restore: &Tool,
        database: &ConnectionTarget,
    ) -> Result<(ChildSource, std::sync::mpsc::Receiver<String>)> {
        let Input::Spool(path) = &self.input else {
            unreachable!("only a spooled archive is restored in one run");
        };
        let mut args = self.phase_args(database, &[], self.jobs);
        args.push("--verbose".to_string());
        args.push(path.display().to_string());
        let command = pg_restore.client_command(database, args);
        ChildSource::spawn_reporting(command).map_err(|e| {
            Error::new(
                ErrorKind::Restore,
                format!("cannot start {}: {e}", pg_restore.display_program()),
            )
        })
    }

    /// Whether this restore loads the data of table `schema.table`.
    pub fn restores_data_of(&self, schema: &str, table: &str) -> bool {
        self.toc.entries.iter().any(|e| {
            e.desc == "TABLE DATA"
                && e.namespace == schema
                && e.tag == table
                && self
                    .entries
                    .as_ref()
                    .is_none_or(|ids| ids.contains(&e.dump_id))
        })
    }

    /// How the archive reaches pg_restore, for reports.
    pub fn feed(&self) -> String {
        match &self.input {
            Input::Spool(_) if self.jobs == 1 => {
                "spooled, serial pg_restore (restore-order hazards)".to_string()
            }
            Input::Spool(_) => format!("spooled, pg_restore --jobs {}", self.jobs),
            Input::Stream { .. } => "streamed".to_string(),
        }
    }

    fn phase_args(
        &self,
        database: &ConnectionTarget,
        sections: &[&str],
        jobs: usize,
    ) -> Vec<String> {
        let mut args = self.args.clone();
        args.push(format!("--dbname={}", database.conninfo()));
        if jobs > 1 {
            args.push(format!("--jobs={jobs}"));
        }
        args.extend(sections.iter().map(|s| format!("--section={s}")));
        args
    }

    /// Phase one of a streamed restore: pg_restore's pre-data and data
    /// sections; then the archive is checked to its end (also what
    /// pg_restore did not need to read).
    pub fn load_data(
        &mut self,
        manifest: &Manifest,
        pg_restore: &Tool,
        database: &ConnectionTarget,
        watch: &mut InterruptWatch,
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        let args = self.phase_args(database, &["pre-data", "data"], self.jobs);
        match &mut self.input {
            Input::Spool(_) => unreachable!("a spooled archive is restored in one run"),
            Input::Stream { head, source, .. } => {
                let mut source = source.take().expect("the data phase runs once");
                let (mut child, mut stdin) = spawn(pg_restore, database, args)?;
                watch.watch_child(child.pid());
                let head_len = head.len() as u64;
                let fed = stdin
                    .write_all(head)
                    .map_err(CopyError::Write)
                    .and_then(|_| {
                        source.copy_to(&mut stdin, |n| {
                            progress(head_len + n);
                            watch.received().is_none()
                        })
                    });
                if let Some(error) = stopped(watch, manifest) {
                    child.terminate();
                    return Err(error);
                }
                drop(stdin);
                if let Err(CopyError::Read(e)) = fed {
                    child.terminate();
                    return Err(source.read_failed(e));
                }
                // A write error means pg_restore stopped reading: it has
                // what it was asked for (a partial restore), or it failed
                // and says why below.
                let waited = copy_stream(&mut child, &mut std::io::sink(), |_| true);
                finish(child, waited.err(), manifest)?;
                source.finish().map(|_| ())
            }
        }
    }

    /// Phase two of a streamed restore, started: pg_restore's post-data
    /// section. Returns the
    /// child, and its stdin with what to write there (the TOC behind a
    /// command prefix).
    #[allow(clippy::type_complexity)]
    pub fn start_post_data(
        &self,
        pg_restore: &Tool,
        database: &ConnectionTarget,
    ) -> Result<(ChildSource, std::process::ChildStdin, Option<Vec<u8>>)> {
        let (input, jobs, stdin_bytes) = match &self.input {
            Input::Spool(_) => unreachable!("a spooled archive is restored in one run"),
            Input::Stream {
                toc_file: Some(file),
                ..
            } => (Some(file.clone()), super::DEFAULT_JOBS.max(self.jobs), None),
            Input::Stream { toc_file: None, .. } => (None, 1, Some(self.toc_bytes.clone())),
        };
        let mut args = self.phase_args(database, &["post-data"], jobs);
        if let Some(input) = input {
            args.push(input.display().to_string());
        }
        let (child, stdin) = spawn(pg_restore, database, args)?;
        Ok((child, stdin, stdin_bytes))
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::repository::create_private(path)
        .and_then(|mut file| file.write_all(bytes))
        .map_err(|e| Error::repository_io("cannot write", path, e))
}

fn spool_error(path: &Path, e: std::io::Error) -> Error {
    Error::repository_io("cannot write the restore spool", path, e).with_hint(
        "the spool needs the archive's size (see `pgward list --json`) free in the repository's tmp/; --jobs 1 streams without one",
    )
}

fn spawn(
    pg_restore: &Tool,
    database: &ConnectionTarget,
    args: Vec<String>,
) -> Result<(ChildSource, std::process::ChildStdin)> {
    let command = pg_restore.client_command(database, args);
    ChildSource::spawn_fed(command).map_err(|e| {
        Error::new(
            ErrorKind::Restore,
            format!("cannot start {}: {e}", pg_restore.display_program()),
        )
        .with_hint("install pg_restore (Debian: postgresql-client) or set pg-restore.path")
    })
}

/// Waits for a pg_restore phase; its failure in its own words.
/// Judges a finished pg_restore run. A failure is told whole (see
/// [`super::failure`]); `manifest` says whether the backup is encrypted, in
/// which case row values are left out of the message.
pub(crate) fn finish(
    child: ChildSource,
    read_error: Option<CopyError>,
    manifest: &Manifest,
) -> Result<()> {
    if let Err(failure) = child.finish() {
        let redact = manifest.artifact.encryption.is_some();
        let told = super::failure::describe(&failure.diagnostics, redact)
            .or_else(|| failure.key_line().map(str::to_string))
            .unwrap_or_else(|| "no message".to_string());
        return Err(Error::new(
            ErrorKind::Restore,
            format!("pg_restore {}: {told}", failure.describe_status()),
        )
        .with_hint("fix what pg_restore names: a missing role (create it, or restore with --no-owner --no-acl), an object outside --schema/--table (select it too)"));
    }
    match read_error {
        None => Ok(()),
        Some(e) => Err(Error::new(
            ErrorKind::Restore,
            format!(
                "cannot read pg_restore's output: {}",
                describe_copy_error(&e)
            ),
        )),
    }
}

fn describe_copy_error(e: &CopyError) -> String {
    match e {
        CopyError::Read(e) | CopyError::Write(e) => e.to_string(),
        CopyError::Stopped => "stopped".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_items_are_read_from_verbose_lines() {
        assert_eq!(
            finished_item("pg_restore: finished item 3363 TABLE DATA pgbench_accounts"),
            Some(3363)
        );
        assert_eq!(
            finished_item("pg_restore: launching item 3363 TABLE DATA x"),
            None
        );
        assert_eq!(
            finished_item("pg_restore: processing data for table \"public.t\""),
            None
        );
    }
}
