//! Proof that a restored database holds what the backup recorded.
//!
//! Per table: `COPY ... TO STDOUT` with the archive's own column list, under
//! the session settings pg_dump wrote the backup with (recorded in the
//! manifest), fingerprinted the way the backup fingerprinted the archive
//! ([`crate::fingerprint`]); rows and fingerprint must be equal. Sequences:
//! `last_value` and `is_called`. Large objects: count and a fingerprint of
//! oids and bytes. Schema: the restored database's schema-only dump must
//! equal the schema the archive itself restores to (`pg_restore
//! --schema-only` of its TOC), line for line, apart from the lines that
//! name the tools' versions.

mod schema;
mod tables;

pub use tables::{FinishedItems, compare_tables};

use crate::catalog::connect::ConnectionTarget;
use crate::dump::Tool;
use crate::error::Result;
use crate::fingerprint::{LargeObjectDigest, TextSettings};
use crate::pipeline::archive::{Toc, TocEntry};
use crate::repository::manifest::{DrillCheck, Manifest};
use std::collections::BTreeSet;

/// Bytes of a large object read per query.
const LARGE_OBJECT_CHUNK: i32 = 1 << 20;

/// What the restore did, which the schema comparison must mirror.
pub struct RestoredAs<'a> {
    pub database: &'a ConnectionTarget,
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
        checks.push(compare_large_objects(manifest, &mut client));
    }
    // A tool that cannot run (a pg_dump older than the server, say) makes
    // the schema unproven, not the restore failed.
    checks.push(
        schema::compare_schema(toc, toc_bytes, restored, tools).unwrap_or_else(|e| DrillCheck {
            name: "schema".to_string(),
            ok: false,
            detail: format!("cannot compare: {}", e.message()),
        }),
    );
    Ok(checks)
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
        let mut setup = self.settings.set_statements();
        if let Some(encoding) = self.encoding.filter(|e| *e != "UTF8") {
            setup.push_str(&format!(
                " SET client_encoding = '{}';",
                encoding.replace('\'', "''")
            ));
        }
        client.batch_execute(&setup).map_err(|e| {
            crate::catalog::query_error("cannot set up the verification session", e)
        })?;
        Ok(client)
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
            }
        }
        Err(e) => DrillCheck {
            name,
            ok: false,
            detail: format!("cannot read it back: {}", db_message(&e)),
        },
    }
}

fn compare_large_objects(manifest: &Manifest, client: &mut postgres::Client) -> DrillCheck {
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
        let mut digest = LargeObjectDigest::default();
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
            };
        }
    };
    let Some(expected) = manifest.content.as_ref().map(|c| &c.large_objects) else {
        return DrillCheck {
            name,
            ok: true,
            detail: format!("{} restored (the manifest has no fingerprint)", found.count),
        };
    };
    if &found == expected {
        DrillCheck {
            name,
            ok: true,
            detail: format!("{} objects, fingerprint {}", found.count, short(&found.sum)),
        }
    } else {
        DrillCheck {
            name,
            ok: false,
            detail: format!(
                "backup has {} objects with fingerprint {}, restored database has {} with fingerprint {}",
                expected.count, expected.sum, found.count, found.sum
            ),
        }
    }
}
