//! `pgward drill`: restore a backup into a scratch database, prove that
//! every table, sequence, large object and the schema came back as the
//! backup recorded them, drop the scratch database, and record the verdict
//! beside the backup (`backups/ID.drill.json`, shown by `list`).
//!
//! A restore that fails (pg_restore's error, a damaged artifact) is a
//! failed drill and is recorded as one. What stops the drill before it
//! restores anything (no key, no server) is an error, not a verdict.

use crate::clock;
use crate::config::Config;
use crate::connection::Env;
use crate::encryption::secret::Decryptor;
use crate::error::{Error, ErrorKind, Result};
use crate::repository::manifest::{DRILL_FORMAT, DRILL_VERSION, DrillCheck, DrillRecord};
use crate::restore::target::RestoreServer;
use crate::restore::{RestoreOptions, RestoreReport, Restoring, encoding, open_source};
use serde::Serialize;

#[derive(Debug, Clone, Default)]
pub struct DrillOptions {
    pub restore: RestoreOptions,
    /// Keep the scratch database for inspection.
    pub keep: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DrillReport {
    pub record: DrillRecord,
    /// Absent when the restore itself failed.
    pub restore: Option<RestoreReport>,
    /// Why the restore failed, in full (printed, never recorded).
    pub restore_error: Option<String>,
}

/// PostgreSQL's limit on a database name (NAMEDATALEN - 1).
const MAX_NAME: usize = 63;

/// `error`, saying also that the scratch database could not be dropped
/// when that failed too (it is left behind and must be dropped by hand).
fn with_drop_failure(error: Error, dropped: Result<()>) -> Error {
    match dropped {
        Ok(()) => error,
        Err(drop) => error.append(format!(
            "and the scratch database was left behind: {}",
            drop.message()
        )),
    }
}

/// `pgward_drill_<backup id>_<random>`, within PostgreSQL's name limit.
pub fn scratch_name(backup_id: &str) -> String {
    let suffix = format!("_{:08x}", rand::random::<u32>());
    let prefix = "pgward_drill_";
    let id: String = backup_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(MAX_NAME - prefix.len() - suffix.len())
        .collect();
    format!("{prefix}{id}{suffix}")
}

pub fn run(
    config: &Config,
    env: Env,
    selector: &crate::repository::select::Selector,
    options: &DrillOptions,
    decryptor: &mut dyn FnMut() -> Result<Option<Decryptor>>,
    progress: &mut dyn FnMut(u64),
) -> Result<DrillReport> {
    let repo = crate::Repository::open_configured(config)?;
    let manifest = repo.find(selector)?;
    // Held against a prune until this command is done with it.
    let _held = repo.hold(&manifest)?;
    let started = clock::now();
    // A damaged artifact at rest, or a missing key, is found before any
    // database is created; damage found while the spool is read drops the
    // database created meanwhile. Either is a verdict all the same.
    let mut server = RestoreServer::connect(config, env)?;
    let mut restoring = Restoring::begin(config, &repo, &manifest)?;
    // A scope meant for a prepared database is drilled into one prepared
    // from the source (see `restore::preparation`).
    // The schemas it creates are taken over where the archive creates
    // them too (an excluded table's schema), as public is.
    let mut prepared_schemas = Vec::new();
    if let Some(preparation) =
        crate::restore::preparation::Preparation::needed_for(&manifest, config, env)?
    {
        prepared_schemas = preparation.schemas.clone();
        restoring.prepare_target_with(preparation);
    }
    let scratch = scratch_name(&manifest.id);
    let (prepared, created) = match open_source(&repo, &manifest, decryptor) {
        Err(e) => (Err(e), None),
        // CREATE DATABASE waits for a checkpoint and fsyncs, and needs
        // nothing from the archive: it runs while the archive is spooled.
        Ok(source) => std::thread::scope(|scope| {
            let server = &mut server;
            let scratch = &scratch;
            let manifest = &manifest;
            let creating = scope.spawn(move || server.create(scratch, encoding(manifest)));
            let prepared = restoring.prepare(source, &options.restore, &prepared_schemas, progress);
            let created = creating.join().expect("creating a database does not panic");
            (prepared, Some(created))
        }),
    };
    let was_created = matches!(created, Some(Ok(())));
    if let Some(interrupted) = restoring.interrupted() {
        return Err(match was_created {
            true => with_drop_failure(interrupted, server.drop_database(&scratch)),
            false => interrupted,
        });
    }
    let (outcome, restored_to, dropped) = match (prepared, created) {
        (Err(e), _) => {
            let dropped = if was_created {
                server.drop_database(&scratch)
            } else {
                Ok(())
            };
            (Err(e), "(nothing restored)".to_string(), dropped)
        }
        (Ok(_), Some(Err(e))) => return Err(e),
        (Ok(prepared), _) => {
            let outcome = restoring.restore_and_compare(
                prepared,
                &server,
                &scratch,
                &options.restore,
                progress,
            );
            let dropped = if options.keep {
                Ok(())
            } else {
                server.drop_database(&scratch)
            };
            (outcome, format!("{}/{scratch}", server.describe()), dropped)
        }
    };
    let outcome = restoring.interrupted().map_or(outcome, Err);
    // Only a restore that failed, or an archive found damaged, is a
    // verdict on the backup; a signal, a missing key or tool, or a lost
    // connection proved nothing either way.
    if let Err(e) = &outcome
        && !matches!(e.kind(), ErrorKind::Restore | ErrorKind::Integrity)
    {
        return Err(with_drop_failure(outcome.expect_err("checked"), dropped));
    }
    let (checks, restore, restore_error) = match outcome {
        Ok(report) => (report.checks.clone(), Some(report), None),
        Err(e) => {
            // pg_restore's words can quote a row; the record of an encrypted
            // backup sits unencrypted beside it, so they stay out of it
            // (what pgward itself knows of the cause does not quote data).
            let detail = if manifest.artifact.encryption.is_some() && e.kind() == ErrorKind::Restore
            {
                let mut detail = "pg_restore failed (its message may quote data of this encrypted backup, so it is not recorded: see the drill's output)".to_string();
                if let Some(cause) = crate::restore::hazard_cause(&manifest, e.message(), &|_| true)
                {
                    detail = format!("{detail}; {cause}");
                }
                detail
            } else {
                e.message().to_string()
            };
            let check = DrillCheck::failed("restore", detail);
            (vec![check], None, Some(e.message().to_string()))
        }
    };
    let finished = clock::now();
    let first_failure = checks
        .iter()
        .find(|c| c.fails())
        .map(|c| format!("{}: {}", c.name, c.detail));
    let accepted_findings = restore
        .as_ref()
        .map(|r| r.accepted_findings.clone())
        .unwrap_or_default();
    let notes = restore
        .as_ref()
        .map(|r| r.notes.clone())
        .unwrap_or_default();
    let record = DrillRecord {
        format: DRILL_FORMAT.to_string(),
        format_version: DRILL_VERSION,
        backup_id: manifest.id.clone(),
        started_at: clock::rfc3339(started),
        finished_at: clock::rfc3339(finished),
        duration_ms: finished.duration_since(started).as_millis().max(0) as u64,
        verdict: if first_failure.is_none() {
            "pass"
        } else {
            "fail"
        }
        .to_string(),
        restored_to,
        kept: options.keep,
        first_failure,
        accepted_findings,
        checks,
        notes,
    };
    repo.save_drill_record(&record)?;
    dropped?;
    Ok(DrillReport {
        record,
        restore,
        restore_error,
    })
}

impl DrillReport {
    /// The report as an error when the drill failed.
    pub fn into_result(self) -> Result<DrillReport> {
        match &self.record.first_failure {
            None => Ok(self),
            Some(failure) => Err(Error::new(
                ErrorKind::Integrity,
                format!(
                    "drill of backup {} FAILED: {}",
                    self.record.backup_id,
                    match &self.restore_error {
                        Some(error) => format!("restore: {error}"),
                        None => failure.clone(),
                    }
                ),
            )
            .with_hint(
                "do not rely on this backup until the difference is explained; the verdict is recorded beside it",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_names_fit_postgres_limits() {
        let name = scratch_name("appdb-20261123T101500Z");
        assert!(
            name.starts_with("pgward_drill_appdb_20261123t101500z_"),
            "{name}"
        );
        let long = scratch_name(&format!("{}-20261123T101500Z", "x".repeat(80)));
        assert_eq!(long.len(), MAX_NAME);
        assert_ne!(scratch_name("a"), scratch_name("a"));
    }
}
