//! A drill's scratch database prepared the way a database meant for a
//! non-standalone scope is (`[scope] standalone = false`).
//!
//! Such a backup depends on objects outside its scope (a domain in a
//! shared schema, say) that the target database is expected to hold
//! already; restored into an empty database it fails. So before pg_restore
//! the drill creates, from the source database as it is now, the schemas
//! the manifest names those objects in: their pre-data definitions
//! (`pg_dump --section=pre-data`: types, domains, functions, tables without
//! rows or indexes), with the extensions the backup recorded, leaving out
//! what the archive creates itself. The drill says so in a `preparation`
//! check, and the schema comparison does not count what it created.

use super::compare::{ObjectKey, objects_missing_from, run_capturing};
use crate::connection::ConnectionTarget;
use crate::dump::Tool;
use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::archive::Toc;
use crate::repository::manifest::{DrillCheck, Manifest};
use crate::scope::quote_ident;
use std::collections::BTreeSet;

/// What a drill prepares its scratch database with.
#[derive(Debug, Clone)]
pub(crate) struct Preparation {
    /// The backed-up database, read now.
    source: ConnectionTarget,
    schemas: Vec<String>,
    extensions: Vec<String>,
    /// Outside objects in no schema, which nothing here can prepare.
    unplaceable: Vec<String>,
}

/// What the preparation did: what it created, and the check that says so.
pub(crate) struct Prepared {
    pub objects: BTreeSet<ObjectKey>,
    pub check: DrillCheck,
}

impl Preparation {
    /// The preparation a restore or drill of `manifest` needs: none for a
    /// standalone scope or one with nothing outside it. The source is
    /// `[connection]` with the backup's database.
    pub(crate) fn needed_for(
        manifest: &Manifest,
        config: &crate::config::Config,
        env: crate::connection::Env,
    ) -> Result<Option<Preparation>> {
        let outside = &manifest.dependencies.outside;
        if manifest.scope.standalone || outside.is_empty() {
            return Ok(None);
        }
        let source =
            ConnectionTarget::resolve(&config.connection, env)?.with_dbname(&manifest.database);
        let schemas: BTreeSet<String> = outside.iter().filter_map(|o| o.schema.clone()).collect();
        Ok(Some(Preparation {
            source,
            schemas: schemas.into_iter().collect(),
            extensions: manifest
                .dependencies
                .extensions
                .iter()
                .map(|e| e.name.clone())
                .collect(),
            unplaceable: outside
                .iter()
                .filter(|o| o.schema.is_none())
                .map(|o| format!("{} {}", o.kind, o.identity))
                .collect(),
        }))
    }

    /// Prepares `database` (which has `existing` schemas already) before
    /// the archive `toc` is restored into it.
    pub(crate) fn run(
        &self,
        pg_dump: &Tool,
        database: &ConnectionTarget,
        toc: &Toc,
        existing: &[String],
        no_owner: bool,
        no_acl: bool,
    ) -> Result<Prepared> {
        let mut args = vec![
            "--section=pre-data".to_string(),
            "--no-password".to_string(),
            format!("--dbname={}", self.source.conninfo()),
        ];
        args.extend(
            self.schemas
                .iter()
                .map(|s| format!("--schema={}", quote_ident(s))),
        );
        args.extend(
            self.extensions
                .iter()
                .map(|e| format!("--extension={}", quote_ident(e))),
        );
        if no_owner {
            args.push("--no-owner".to_string());
        }
        if no_acl {
            args.push("--no-acl".to_string());
        }
        let command = pg_dump.client_command(&self.source, args);
        let dump = run_capturing(command, None, "pg_dump of the source for the drill's preparation")
            .map_err(|e| {
                // Not a verdict on the backup: the source could not be read.
                Error::new(ErrorKind::Dump, e.message().to_string()).with_hint(
                    "a drill of a scope meant for a prepared database ([scope] standalone = false) reads the objects it depends on from the source database: make it reachable with the backup's [connection]",
                )
            })?;
        // Object by object: one the backup does not need may fail (a table
        // of the same schema using an extension the backup does not
        // record) without stopping the others. If a needed one failed, the
        // restore fails and says so.
        let mut client = database.connect()?;
        let mut objects = BTreeSet::new();
        let mut failed: Vec<String> = Vec::new();
        for (key, sql) in objects_missing_from(&dump, toc, existing) {
            match client.batch_execute(&sql) {
                Ok(()) => objects.extend(key),
                Err(e) => {
                    let why = e
                        .as_db_error()
                        .map_or_else(|| e.to_string(), |db| db.message().to_string());
                    match key {
                        Some((kind, schema, name)) => {
                            failed.push(format!("{kind} {schema}.{name} ({why})"))
                        }
                        None => {
                            return Err(Error::new(
                                ErrorKind::Restore,
                                format!("cannot prepare the scratch database: {why}"),
                            ));
                        }
                    }
                }
            }
        }
        let mut detail = format!(
            "[scope] standalone = false: before restoring, created from the source database as it is now (pg_dump --section=pre-data of schema {}) {} objects the backup does not hold",
            self.schemas.join(", "),
            objects.len()
        );
        if !self.extensions.is_empty() {
            detail.push_str(&format!(", with extensions {}", self.extensions.join(", ")));
        }
        if !failed.is_empty() {
            detail.push_str(&format!(
                "; {} could not be created: {}",
                failed.len(),
                failed.join(", ")
            ));
        }
        if !self.unplaceable.is_empty() {
            detail.push_str(&format!(
                "; not prepared, being in no schema: {}",
                self.unplaceable.join(", ")
            ));
        }
        Ok(Prepared {
            objects,
            check: DrillCheck::passed("preparation", detail),
        })
    }
}
