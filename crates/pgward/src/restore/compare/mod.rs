//! Proof that a restored database holds what the backup recorded.
//!
//! Per table: `COPY ... TO STDOUT` with the archive's own column list, under
//! the session settings pg_dump wrote the backup with (recorded in the
//! manifest), fingerprinted the way the backup fingerprinted the archive
//! ([`crate::fingerprint`]); rows and fingerprint must be equal. Sequences:
//! `last_value` and `is_called`. Large objects: count and a fingerprint of
//! oids and bytes. Column order: each table's columns in the order the
//! backup recorded from the catalog (the archive cannot carry it). Schema:
//! the restored database's schema-only dump must equal the schema the
//! archive itself restores to (`pg_restore --schema-only` of its TOC),
//! object by object, apart from the lines that name the tools' versions.
//! A difference with a known cause is a named finding
//! ([`crate::findings`]), which the configuration may accept.

mod schema;
mod tables;

pub(crate) use schema::{ObjectKey, objects_missing_from, run_capturing};
pub use tables::{FinishedItems, compare_tables};

use crate::connection::ConnectionTarget;
use crate::dump::Tool;
use crate::error::Result;
use crate::fingerprint::{Algorithm, LargeObjectDigest, TextSettings};
use crate::pipeline::archive::{Toc, TocEntry};
use crate::repository::manifest::{DrillCheck, Manifest};
use std::collections::BTreeSet;

/// Bytes of a large object read per query.
const LARGE_OBJECT_CHUNK: i32 = 1 << 20;

/// What the restore did, which the schema comparison must mirror.
pub struct RestoredAs<'a> {
    pub database: &'a ConnectionTarget,
    /// Schemas pgward created before pg_restore, as the manifest records
    /// (the archive does not create them).
    pub created_schemas: &'a [String],
    /// What was in the database before pg_restore and is not the
    /// archive's: what a preparation created (`[scope] standalone = false`,
    /// see [`crate::restore::preparation`]), extensions the target held.
    pub prepared_objects: &'a BTreeSet<ObjectKey>,
    pub no_owner: bool,
    pub no_acl: bool,
    /// The entries restored; `None` for the whole archive.
    pub entries: Option<&'a BTreeSet<i64>>,
    /// Where pgward may write the pg_restore list for the schema.
    pub list_file: &'a std::path::Path,
}

pub struct Tools<'a> {
    pub pg_dump: &'a Tool,
    pub pg_restore: &'a Tool,
}

/// What a PASS cannot vouch for in the restored part of `toc` (`entries`,
/// or all of it), because the archive does not hold it:
///
/// - a stored generated column's values are not dumped; the restore
///   computes them anew, so a value the source computed with an older
///   expression or function comes back different, and equal to the archive;
/// - an extension's configuration table is dumped only as far as the
///   extension marks its rows as the user's (PostGIS: the rows of
///   `spatial_ref_sys` outside its own ranges), so edits to the extension's
///   own rows are not in the backup.
pub fn limits(toc: &Toc, entries: Option<&BTreeSet<i64>>) -> Vec<String> {
    let restored = |e: &&TocEntry| entries.is_none_or(|set| set.contains(&e.dump_id));
    let name = |e: &TocEntry| {
        crate::scope::TableName {
            schema: e.namespace.clone(),
            table: e.tag.clone(),
        }
        .to_string()
    };
    let generated: Vec<String> = toc
        .entries
        .iter()
        .filter(restored)
        .filter(|e| {
            e.desc == "TABLE"
                && e.definition.contains(" GENERATED ALWAYS AS (")
                && e.definition.contains(") STORED")
        })
        .map(name)
        .collect();
    // A configuration table's TABLE entry is the extension's, not dumped.
    let of_extensions: Vec<String> = toc
        .entries
        .iter()
        .filter(restored)
        .filter(|e| e.desc == "TABLE DATA")
        .filter(|data| {
            !toc.entries
                .iter()
                .any(|t| t.desc == "TABLE" && t.namespace == data.namespace && t.tag == data.tag)
        })
        .map(name)
        .collect();
    let mut notes = Vec::new();
    if !generated.is_empty() {
        notes.push(format!(
            "stored generated columns in {} are not in the archive: the restore computed them anew, so a value that the source computed differently (an older expression or function) is not proved",
            generated.join(", ")
        ));
    }
    if !of_extensions.is_empty() {
        notes.push(format!(
            "extension configuration tables ({}): the archive holds only the rows each extension marks as the user's, so changes to an extension's own rows are not in the backup",
            of_extensions.join(", ")
        ));
    }
    notes
}

/// Whether `entry` was restored.
fn chosen(restored: &RestoredAs, entry: &TocEntry) -> bool {
    restored
        .entries
        .is_none_or(|set| set.contains(&entry.dump_id))
}

fn session<'a>(manifest: &'a Manifest, restored: &'a RestoredAs) -> Session<'a> {
    Session {
        target: restored.database,
        settings: manifest
            .content
            .as_ref()
            .map(|c| std::borrow::Cow::Borrowed(&c.text_settings))
            // Backups before manifest v3 did not record them; they only
            // have row counts to compare, which no setting changes.
            .unwrap_or_else(|| std::borrow::Cow::Owned(TextSettings::pg_dump())),
        encoding: manifest
            .content
            .as_ref()
            .and_then(|c| c.encoding.as_deref()),
    }
}

/// Sequences, large objects and the schema, once the restore is complete.
pub fn compare_objects_and_schema(
    manifest: &Manifest,
    toc: &Toc,
    toc_bytes: &[u8],
    restored: &RestoredAs,
    tools: &Tools,
) -> Result<Vec<DrillCheck>> {
    let mut checks = Vec::new();
    let mut client = session(manifest, restored).open()?;
    for entry in toc
        .entries
        .iter()
        .filter(|e| e.desc == "SEQUENCE SET" && chosen(restored, e))
    {
        checks.push(compare_sequence(manifest, toc, entry, &mut client));
    }
    if toc
        .entries
        .iter()
        .any(|e| e.desc == "BLOBS" && e.has_data && chosen(restored, e))
    {
        checks.push(compare_large_objects(
            manifest,
            fingerprint_algorithm(manifest)?,
            &mut client,
        ));
    }
    let column_findings = compare_column_order(manifest, toc, restored, &mut client);
    // A tool that cannot run (a pg_dump older than the server, say) makes
    // the schema unproven, not the restore failed.
    let schema_checks = match schema::compare_schema(toc, toc_bytes, restored, tools) {
        Ok(comparison) => schema::into_checks(comparison, &column_findings),
        Err(e) => vec![DrillCheck::failed(
            "schema",
            format!("cannot compare: {}", e.message()),
        )],
    };
    checks.extend(column_findings);
    checks.extend(schema_checks);
    Ok(checks)
}

/// Every restored table's column order against the one the backup
/// recorded from the catalog: one check for all that match, a finding for
/// each that does not.
fn compare_column_order(
    manifest: &Manifest,
    toc: &Toc,
    restored: &RestoredAs,
    client: &mut postgres::Client,
) -> Vec<DrillCheck> {
    let name = "column order";
    let recorded = match manifest.content.as_ref() {
        Some(content) if manifest.format_version >= 4 => &content.column_order,
        _ => {
            return vec![DrillCheck::passed(
                name,
                "not compared: the backup recorded no column order (taken before manifest v4)",
            )];
        }
    };
    let found = match crate::catalog::restorability::column_orders(client) {
        Ok(found) => found,
        Err(e) => {
            return vec![DrillCheck::failed(
                name,
                format!("cannot read it back: {}", db_message(&e)),
            )];
        }
    };
    let found: std::collections::HashMap<(&str, &str), &Vec<String>> = found
        .iter()
        .map(|f| ((f.schema.as_str(), f.table.as_str()), &f.columns))
        .collect();
    let restored_tables: BTreeSet<(&str, &str)> = toc
        .entries
        .iter()
        .filter(|e| matches!(e.desc.as_str(), "TABLE" | "FOREIGN TABLE") && chosen(restored, e))
        .map(|e| (e.namespace.as_str(), e.tag.as_str()))
        .collect();
    let mut checks = Vec::new();
    let mut same = 0;
    for table in recorded
        .iter()
        .filter(|t| restored_tables.contains(&(t.schema.as_str(), t.table.as_str())))
    {
        let check_name = format!("column order {}", table.name());
        match found.get(&(table.schema.as_str(), table.table.as_str())) {
            Some(back) if **back == table.columns => same += 1,
            // The same columns in another order: the known finding. Any
            // other difference is no finding and cannot be accepted.
            Some(back) if is_permutation(back, &table.columns) => {
                checks.push(crate::findings::column_order(table, back))
            }
            Some(back) => checks.push(DrillCheck::failed(
                check_name,
                format!(
                    "other columns: backup has ({}), restored table has ({})",
                    table.columns.join(", "),
                    back.join(", ")
                ),
            )),
            None => checks.push(DrillCheck::failed(
                check_name,
                "the table is not in the restored database",
            )),
        }
    }
    if checks.is_empty() {
        checks.push(DrillCheck::passed(
            name,
            format!("{same} tables have their columns in the recorded order"),
        ));
    }
    checks
}

fn is_permutation(a: &[String], b: &[String]) -> bool {
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    sorted(a) == sorted(b)
}

const SETUP_FAILED: &str = "cannot set up the verification session";

/// How the backup's fingerprints were taken: the restored data is hashed
/// the same way.
fn fingerprint_algorithm(manifest: &Manifest) -> Result<Algorithm> {
    manifest.fingerprint_algorithm().map_err(|cause| {
        crate::error::Error::config(format!("backup {} is {cause}", manifest.id))
            .with_hint("drill it with the pgward that took it, or a newer one")
    })
}

/// A session on the restored database, set up as pg_dump's was.
struct Session<'a> {
    target: &'a ConnectionTarget,
    settings: std::borrow::Cow<'a, TextSettings>,
    encoding: Option<&'a str>,
}

impl Session<'_> {
    fn open(&self) -> Result<postgres::Client> {
        let mut client = self.target.connect()?;
        client
            .batch_execute(&self.setup())
            .map_err(|e| crate::catalog::query_error(SETUP_FAILED, e))?;
        Ok(client)
    }

    /// The same session on the async driver, for reading tables back.
    fn open_streaming(&self) -> Result<crate::connection::StreamingSession> {
        let session = self.target.connect_streaming()?;
        session
            .batch_execute(&self.setup())
            .map_err(|e| crate::catalog::query_error(SETUP_FAILED, e))?;
        Ok(session)
    }

    fn setup(&self) -> String {
        let mut setup = self.settings.set_statements();
        if let Some(encoding) = self.encoding.filter(|e| *e != "UTF8") {
            setup.push_str(&format!(
                " SET client_encoding = '{}';",
                encoding.replace('\'', "''")
            ));
        }
        setup
    }
}

fn short(fingerprint: &str) -> &str {
    &fingerprint[..fingerprint.len().min(16)]
}

fn db_message(e: &postgres::Error) -> String {
    e.as_db_error()
        .map(|db| db.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

fn compare_sequence(
    manifest: &Manifest,
    toc: &Toc,
    entry: &TocEntry,
    client: &mut postgres::Client,
) -> DrillCheck {
    let name = format!("sequence {}.{}", entry.namespace, entry.tag);
    let recorded = manifest
        .content
        .as_ref()
        .map(|c| c.sequences.clone())
        .unwrap_or_else(|| toc.sequences());
    let Some(expected) = recorded
        .iter()
        .find(|s| s.schema == entry.namespace && s.name == entry.tag)
    else {
        return DrillCheck {
            name,
            ok: false,
            detail: "in the archive but not in the manifest".to_string(),
            finding: None,
        };
    };
    let query = format!(
        "SELECT last_value, is_called FROM {}.{}",
        crate::scope::quote_ident(&entry.namespace),
        crate::scope::quote_ident(&entry.tag)
    );
    match client.query_one(query.as_str(), &[]) {
        Ok(row) => {
            let (last_value, is_called): (i64, bool) = (row.get(0), row.get(1));
            let ok = last_value == expected.last_value && is_called == expected.is_called;
            DrillCheck {
                name,
                ok,
                detail: if ok {
                    format!("last_value {last_value}, is_called {is_called}")
                } else {
                    format!(
                        "backup has last_value {} is_called {}, restored sequence has last_value {last_value} is_called {is_called}",
                        expected.last_value, expected.is_called
                    )
                },
                finding: None,
            }
        }
        Err(e) => DrillCheck {
            name,
            ok: false,
            detail: format!("cannot read it back: {}", db_message(&e)),
            finding: None,
        },
    }
}

fn compare_large_objects(
    manifest: &Manifest,
    algorithm: Algorithm,
    client: &mut postgres::Client,
) -> DrillCheck {
    let name = "large objects".to_string();
    let read = (|| -> std::result::Result<_, postgres::Error> {
        let oids: Vec<u32> = client
            .query(
                "SELECT oid FROM pg_catalog.pg_largeobject_metadata ORDER BY oid",
                &[],
            )?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let mut digest = LargeObjectDigest::new(algorithm);
        let statement = client.prepare("SELECT pg_catalog.lo_get($1, $2, $3)")?;
        for oid in oids {
            digest.begin(oid);
            let mut offset: i64 = 0;
            loop {
                let chunk: Vec<u8> = client
                    .query_one(&statement, &[&oid, &offset, &LARGE_OBJECT_CHUNK])?
                    .get(0);
                digest.update(&chunk);
                offset += chunk.len() as i64;
                if chunk.len() < LARGE_OBJECT_CHUNK as usize {
                    break;
                }
            }
        }
        Ok(digest.finish())
    })();
    let found = match read {
        Ok(found) => found,
        Err(e) => {
            return DrillCheck {
                name,
                ok: false,
                detail: format!("cannot read them back: {}", db_message(&e)),
                finding: None,
            };
        }
    };
    let Some(expected) = manifest.content.as_ref().map(|c| &c.large_objects) else {
        return DrillCheck {
            name,
            ok: true,
            detail: format!("{} restored (the manifest has no fingerprint)", found.count),
            finding: None,
        };
    };
    if &found == expected {
        DrillCheck {
            name,
            ok: true,
            detail: format!("{} objects, fingerprint {}", found.count, short(&found.sum)),
            finding: None,
        }
    } else {
        DrillCheck {
            name,
            ok: false,
            detail: format!(
                "backup has {} objects with fingerprint {}, restored database has {} with fingerprint {}",
                expected.count, expected.sum, found.count, found.sum
            ),
            finding: None,
        }
    }
}
