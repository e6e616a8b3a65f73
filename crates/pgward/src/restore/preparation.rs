//! A drill's scratch database prepared the way a database meant for a
//! non-standalone scope is (`[scope] standalone = false`).
//!
//! Such a backup depends on objects outside its scope (a domain in a
//! shared schema, a lookup table a foreign key points at) that the
//! database it is restored into is expected to hold already; restored into
//! an empty database it fails. So before pg_restore the drill creates, from
//! the source database as it is now, the schemas the manifest names those
//! objects in (`pg_dump --schema-only`, without owners, grants or
//! tablespaces, with the extensions the backup recorded), and the rows of
//! the outside tables and sequences themselves (`--data-only --inserts`),
//! leaving out what the archive creates. Only a drill does this: its
//! database is a scratch one, dropped afterwards; a restore never runs SQL
//! read from the live source. The drill says what it did in a
//! `preparation` check, and the schema comparison does not count it.

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
    /// The schemas the outside objects live in, created first.
    pub schemas: Vec<String>,
    extensions: Vec<String>,
    /// The outside tables and sequences, whose rows come along: as
    /// pg_dump's `--table` takes them (quoted), and as named.
    relations: Vec<(String, String)>,
    /// Outside objects in no schema, which nothing here can prepare.
    unplaceable: Vec<String>,
}

/// What the preparation did: what it created, and the check that says so.
pub(crate) struct Prepared {
    pub objects: BTreeSet<ObjectKey>,
    pub check: DrillCheck,
}

impl Preparation {
    /// The preparation a drill of `manifest` needs: none for a standalone
    /// scope or one with nothing outside it. The source is `[connection]`
    /// with the backup's database.
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
            relations: outside
                .iter()
                .filter(|o| matches!(o.kind.as_str(), "table" | "sequence"))
                .filter_map(|o| {
                    let schema = o.schema.as_ref()?;
                    // The identity is `schema.name`, each part quoted
                    // where PostgreSQL would.
                    let pattern =
                        format!("{}.{}", quote_ident(schema), name_of(&o.identity, schema));
                    Some((pattern, o.identity.clone()))
                })
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
    ) -> Result<Prepared> {
        // Owners, grants and tablespaces of the source need not exist
        // here, and the comparison leaves these objects out anyway.
        let mut schema_args = vec![
            "--schema-only".to_string(),
            "--no-owner".to_string(),
            "--no-acl".to_string(),
            "--no-tablespaces".to_string(),
        ];
        schema_args.extend(
            self.schemas
                .iter()
                .map(|s| format!("--schema={}", quote_ident(s))),
        );
        schema_args.extend(
            self.extensions
                .iter()
                .map(|e| format!("--extension={}", quote_ident(e))),
        );
        let schema = self.dump(pg_dump, schema_args)?;
        let data = if self.relations.is_empty() {
            String::new()
        } else {
            let mut data_args = vec!["--data-only".to_string(), "--inserts".to_string()];
            data_args.extend(self.relations.iter().map(|(r, _)| format!("--table={r}")));
            self.dump(pg_dump, data_args)?
        };

        let mut client = database.connect()?;
        let create: String = self
            .schemas
            .iter()
            .map(|s| format!("CREATE SCHEMA IF NOT EXISTS {};", quote_ident(s)))
            .collect();
        client.batch_execute(&create).map_err(|e| {
            Error::new(
                ErrorKind::Restore,
                format!("cannot prepare the scratch database: {}", db_message(&e)),
            )
        })?;
        let existing: Vec<String> = existing.iter().chain(&self.schemas).cloned().collect();
        // Object by object: one the backup does not need may fail (a table
        // of the same schema using an extension the backup does not
        // record) without stopping the others. If a needed one failed, the
        // restore fails after this and says why.
        // The schemas it created are not the archive's either.
        let mut objects: BTreeSet<ObjectKey> = self
            .schemas
            .iter()
            .map(|s| ("SCHEMA".to_string(), "-".to_string(), s.clone()))
            .collect();
        let created_schemas = objects.len();
        let mut failed: Vec<String> = Vec::new();
        for dump in [&schema, &data] {
            for (key, sql) in objects_missing_from(dump, toc, &existing) {
                match client.batch_execute(&sql) {
                    Ok(()) => objects.extend(key),
                    Err(e) => match key {
                        Some((kind, schema, name)) => {
                            failed.push(format!("{kind} {schema}.{name} ({})", db_message(&e)))
                        }
                        None => {
                            return Err(Error::new(
                                ErrorKind::Restore,
                                format!("cannot prepare the scratch database: {}", db_message(&e)),
                            ));
                        }
                    },
                }
            }
        }
        let mut detail = format!(
            "[scope] standalone = false: before restoring, created from the source database as it is now (pg_dump --schema-only of schema {}",
            self.schemas.join(", ")
        );
        if !self.relations.is_empty() {
            let names: Vec<&str> = self.relations.iter().map(|(_, n)| n.as_str()).collect();
            detail.push_str(&format!(", and the rows of {}", names.join(", ")));
        }
        detail.push_str(&format!(
            ") {} objects the backup does not hold",
            objects.len() - created_schemas
        ));
        if !self.extensions.is_empty() {
            detail.push_str(&format!(", with extensions {}", self.extensions.join(", ")));
        }
        if !failed.is_empty() {
            detail.push_str(&format!(
                "; {} could not be created (if the backup needs one, the restore fails and says so): {}",
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

    /// A plain pg_dump of the source with `args`.
    fn dump(&self, pg_dump: &Tool, mut args: Vec<String>) -> Result<String> {
        args.push("--no-password".to_string());
        args.push(format!("--dbname={}", self.source.conninfo()));
        let command = pg_dump.client_command(&self.source, args);
        run_capturing(command, None, "pg_dump of the source for the drill's preparation").map_err(
            |e| {
                // Not a verdict on the backup: the source could not be read.
                Error::new(ErrorKind::Dump, e.message().to_string()).with_hint(
                    "a drill of a scope meant for a prepared database ([scope] standalone = false) reads the objects it depends on from the source database: make it reachable with the backup's [connection]",
                )
            },
        )
    }
}

/// `identity` (`schema.name`, as PostgreSQL quotes it) without its schema.
fn name_of<'a>(identity: &'a str, schema: &str) -> &'a str {
    let quoted = if identity.starts_with(&format!("{}.", quote_ident(schema))) {
        quote_ident(schema)
    } else {
        schema.to_string()
    };
    identity
        .strip_prefix(&format!("{quoted}."))
        .unwrap_or(identity)
}

fn db_message(e: &postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| e.to_string(), |db| db.message().to_string())
}
