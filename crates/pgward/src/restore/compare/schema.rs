//! The schema that came back: the restored database's schema-only dump
//! against the one the archive itself restores to.

use super::{RestoredAs, Tools};
use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::archive::Toc;
use crate::pipeline::child::ChildSource;
use crate::repository::manifest::DrillCheck;
use std::collections::BTreeSet;
use std::io::Write;

/// Lines that differ between two schema dumps of the same objects for
/// reasons that are not the schema: the tools' versions, and the random
/// keys of psql's `\restrict` guard (pg_dump 17.6, 16.10, 15.14 and later).
fn normalise(schema: &str) -> Vec<&str> {
    schema
        .lines()
        .filter(|line| {
            !line.starts_with("-- PostgreSQL database dump")
                && !line.starts_with("-- Dumped from database version")
                && !line.starts_with("-- Dumped by pg_dump version")
                && !line.starts_with("\\restrict ")
                && !line.starts_with("\\unrestrict ")
        })
        .collect()
}

/// One object whose definition differs, as a failed check.
pub(super) struct ObjectDifference {
    /// The object as a table name, when it is a table (for findings).
    table: Option<String>,
    /// The object's lines are all there, in another order.
    reordered: bool,
    check: DrillCheck,
}

/// The schema comparison: its differences, object by object.
pub(super) struct SchemaComparison {
    objects: usize,
    lines: usize,
    differences: Vec<ObjectDifference>,
    /// How to see the restored side for oneself.
    regenerate: String,
}

pub(super) fn compare_schema(
    toc: &Toc,
    toc_bytes: &[u8],
    restored: &RestoredAs,
    tools: &Tools,
) -> Result<SchemaComparison> {
    // Large objects, and the REFRESH of materialized views, are data to
    // `pg_dump --schema-only` but schema to `pg_restore --schema-only`
    // (large objects are compared above).
    let mut left_out: BTreeSet<i64> = toc
        .entries
        .iter()
        .filter(|e| {
            matches!(
                e.desc.as_str(),
                "BLOB" | "BLOB METADATA" | "MATERIALIZED VIEW DATA"
            )
        })
        .map(|e| e.dump_id)
        .collect();
    loop {
        let before = left_out.len();
        for entry in &toc.entries {
            if entry.dependencies.iter().any(|d| left_out.contains(d)) {
                left_out.insert(entry.dump_id);
            }
        }
        if left_out.len() == before {
            break;
        }
    }
    let entries: Vec<i64> = toc
        .entries
        .iter()
        .map(|e| e.dump_id)
        .filter(|id| !left_out.contains(id))
        .filter(|id| restored.entries.is_none_or(|set| set.contains(id)))
        .collect();
    // Private like every file pgward writes: it names the backup's objects.
    let _ = std::fs::remove_file(restored.list_file);
    crate::repository::create_private(restored.list_file)
        .and_then(|mut file| {
            file.write_all(crate::restore::selection::Selection::list_file(&entries).as_bytes())
        })
        .map_err(|e| Error::repository_io("cannot write", restored.list_file, e))?;

    let mut flags = vec!["--schema-only".to_string()];
    if restored.no_owner {
        flags.push("--no-owner".to_string());
    }
    if restored.no_acl {
        flags.push("--no-acl".to_string());
    }
    let mut restore_args = flags.clone();
    restore_args.push(format!("--use-list={}", restored.list_file.display()));
    restore_args.push("--file=-".to_string());
    let mut command = tools
        .pg_restore
        .client_command(restored.database, restore_args);
    command.env_remove("PGPASSWORD");
    let from_archive = run_capturing(command, Some(toc_bytes), "pg_restore --schema-only")?;

    let mut dump_args = flags;
    dump_args.extend(restored_side_switches(toc, &entries));
    let regenerate = format!(
        "pg_dump {} {}",
        dump_args
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" "),
        shell_quote(&restored.database.dbname)
    );
    dump_args.push("--no-password".to_string());
    dump_args.push(format!("--dbname={}", restored.database.conninfo()));
    let command = tools.pg_dump.client_command(restored.database, dump_args);
    let from_database = run_capturing(command, None, "pg_dump --schema-only")?;

    let archive = objects(&from_archive);
    let mut database = objects(&from_database);
    // What pgward created or found there before pg_restore is not the
    // archive's, unless the archive creates it too.
    let in_archive: BTreeSet<ObjectKey> = archive.iter().map(SchemaObject::key).collect();
    database.retain(|o| {
        let created =
            o.kind == "SCHEMA" && o.schema == "-" && restored.created_schemas.contains(&o.name);
        let not_restored = restored.prepared_objects.contains(&o.key());
        in_archive.contains(&o.key()) || !(created || not_restored)
    });
    Ok(SchemaComparison {
        objects: archive.len(),
        lines: archive.iter().map(|o| o.lines.len()).sum(),
        differences: differences(&archive, &database),
        regenerate,
    })
}

/// How the restored database must be dumped to be written by the same
/// rules as the compared archive entries. pg_dump writes `CREATE SCHEMA
/// public` only when public is selected explicitly (`--schema public`), and
/// a backup so scoped has that entry: then the restored side is dumped
/// with every compared schema selected by name. Otherwise the whole
/// restored database is dumped (it holds only what was restored).
fn restored_side_switches(toc: &Toc, compared: &[i64]) -> Vec<String> {
    let compared: BTreeSet<i64> = compared.iter().copied().collect();
    let schemas: Vec<&crate::pipeline::archive::TocEntry> = toc
        .entries
        .iter()
        .filter(|e| e.desc == "SCHEMA" && compared.contains(&e.dump_id))
        .collect();
    let public_created = schemas
        .iter()
        .any(|e| e.tag == "public" && e.definition.contains("CREATE SCHEMA"));
    if !public_created {
        return Vec::new();
    }
    // Naming schemas stops pg_dump from dumping extensions unless they are
    // named too.
    let extensions = toc
        .entries
        .iter()
        .filter(|e| e.desc == "EXTENSION" && compared.contains(&e.dump_id))
        .map(|e| format!("--extension={}", crate::scope::quote_ident(&e.tag)));
    schemas
        .iter()
        .map(|e| format!("--schema={}", crate::scope::quote_ident(&e.tag)))
        .chain(extensions)
        .collect()
}

/// An argument as a POSIX shell reads it back.
fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_=./:,@%+-".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

/// Attributes to a finding each schema difference that the finding
/// explains (a table whose definition only changed the order of its lines
/// when its columns came back in another order), then sums up.
pub(super) fn into_checks(
    comparison: SchemaComparison,
    findings: &[DrillCheck],
) -> Vec<DrillCheck> {
    let mut checks: Vec<DrillCheck> = Vec::new();
    let mut unexplained = Vec::new();
    for difference in comparison.differences {
        let mut check = difference.check;
        let finding = findings
            .iter()
            .filter_map(|f| f.finding.as_ref())
            .find(|f| {
                difference.reordered
                    && f.class == crate::findings::COLUMN_ORDER
                    && difference.table.as_deref() == Some(f.object.as_str())
            });
        match finding {
            Some(finding) => {
                check.detail = format!("{} (explained by finding {})", check.detail, finding.key());
                check.finding = Some(finding.clone());
            }
            None => unexplained.push(check.name.clone()),
        }
        checks.push(check);
    }
    let summary = if checks.is_empty() {
        DrillCheck::passed(
            "schema",
            format!(
                "schema-only dump of the restored database equals the archive's ({} objects, {} lines)",
                comparison.objects, comparison.lines
            ),
        )
    } else if unexplained.is_empty() {
        DrillCheck::passed(
            "schema",
            format!(
                "equal to the archive's ({} objects) but for {} explained by findings; the restored side: {}",
                comparison.objects,
                checks.len(),
                comparison.regenerate
            ),
        )
    } else {
        DrillCheck::failed(
            "schema",
            format!(
                "{} of {} objects differ ({}); the restored side: {}",
                unexplained.len(),
                comparison.objects,
                unexplained
                    .iter()
                    .map(|n| n.trim_start_matches("schema ").to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                comparison.regenerate
            ),
        )
    };
    checks.insert(0, summary);
    checks
}

/// One object's part of a schema-only dump: its header's type, schema and
/// name, and its lines (header included).
#[derive(Debug)]
struct SchemaObject<'a> {
    kind: String,
    schema: String,
    name: String,
    lines: Vec<&'a str>,
}

impl SchemaObject<'_> {
    fn key(&self) -> (String, String, String) {
        (self.kind.clone(), self.schema.clone(), self.name.clone())
    }

    fn describe(&self) -> String {
        match (self.kind.as_str(), self.schema.as_str()) {
            ("TABLE", _) => format!("TABLE {}", self.qualified()),
            (kind, "-") => format!("{kind} {}", self.name),
            (kind, schema) => format!("{kind} {schema}.{}", self.name),
        }
    }

    fn qualified(&self) -> String {
        crate::scope::TableName {
            schema: self.schema.clone(),
            table: self.name.clone(),
        }
        .to_string()
    }
}

/// Splits a schema-only dump at pg_dump's object headers
/// (`-- Name: t; Type: TABLE; Schema: public; Owner: alice`); what comes
/// before the first is the preamble (session settings). The blank and bare
/// `--` lines that separate objects are trimmed from each object's ends;
/// those inside a definition (a function body) count.
fn objects(schema: &str) -> Vec<SchemaObject<'_>> {
    let mut objects = vec![SchemaObject {
        kind: "PREAMBLE".to_string(),
        schema: "-".to_string(),
        name: String::new(),
        lines: Vec::new(),
    }];
    fn separator(line: &&str) -> bool {
        line.is_empty() || *line == "--"
    }
    // pg_dump sets the tablespace and access method for the next table
    // just before that table's header: they are that table's lines, not
    // the previous object's (which may be one the other side lacks).
    let mut for_next: Vec<&str> = Vec::new();
    for line in normalise(schema) {
        if let Some((name, kind, schema)) = header(line) {
            objects.push(SchemaObject {
                kind,
                schema,
                name,
                lines: std::mem::take(&mut for_next),
            });
        }
        if line.starts_with("SET default_tablespace = ")
            || line.starts_with("SET default_table_access_method = ")
        {
            for_next.push(line);
            continue;
        }
        objects.last_mut().expect("never empty").lines.push(line);
    }
    objects
        .last_mut()
        .expect("never empty")
        .lines
        .extend(for_next);
    for object in &mut objects {
        while object.lines.last().is_some_and(separator) {
            object.lines.pop();
        }
        let leading = object.lines.iter().take_while(|l| separator(l)).count();
        object.lines.drain(..leading);
    }
    objects
}

/// An object of a schema-only dump by its header: (type, schema, name),
/// as pg_dump writes them from the archive entry (`-` for no schema).
pub(crate) type ObjectKey = (String, String, String);

/// The objects in `dump` (a plain schema-only pg_dump) that the archive
/// `toc` does not create, each with its SQL, after `dump`'s preamble (its
/// session settings, keyed `PREAMBLE`). Extensions and their comments stay
/// even when the archive has them (pg_dump writes `CREATE EXTENSION IF NOT
/// EXISTS`), because the other objects may need them first, keyed as
/// `None`: they are not the dump's own. Schemas in `existing` are left out:
/// they are there.
pub(crate) fn objects_missing_from(
    dump: &str,
    toc: &Toc,
    existing: &[String],
) -> Vec<(Option<ObjectKey>, String)> {
    let in_archive: BTreeSet<ObjectKey> = toc
        .entries
        .iter()
        .map(|e| {
            let schema = if e.namespace.is_empty() {
                "-"
            } else {
                &e.namespace
            };
            (e.desc.clone(), schema.to_string(), e.tag.clone())
        })
        .collect();
    let mut missing = Vec::new();
    for object in objects(dump) {
        let key = object.key();
        let of_extension = object.kind == "EXTENSION"
            || (object.kind == "COMMENT" && object.name.starts_with("EXTENSION "));
        if object.kind == "SCHEMA" && existing.contains(&object.name) {
            continue;
        }
        let own = object.kind != "PREAMBLE" && !of_extension;
        if own && in_archive.contains(&key) {
            continue;
        }
        let sql: String = object.lines.iter().map(|l| format!("{l}\n")).collect();
        missing.push((own.then_some(key), sql));
    }
    missing
}

/// `-- Name: N; Type: T; Schema: S; Owner: O` -> (N, T, S).
fn header(line: &str) -> Option<(String, String, String)> {
    let rest = line.strip_prefix("-- Name: ")?;
    let (name, rest) = rest.rsplit_once("; Type: ")?;
    let (kind, rest) = rest.split_once("; Schema: ")?;
    let schema = rest.split_once("; Owner: ").map_or(rest, |(s, _)| s);
    Some((name.to_string(), kind.to_string(), schema.to_string()))
}

/// Every object that is missing, extra or different, in the archive's order.
fn differences(archive: &[SchemaObject], database: &[SchemaObject]) -> Vec<ObjectDifference> {
    use std::collections::BTreeMap;
    type Key = (String, String, String);
    let mut in_database: BTreeMap<Key, Vec<&SchemaObject>> = BTreeMap::new();
    for object in database {
        in_database.entry(object.key()).or_default().push(object);
    }
    let mut found = Vec::new();
    let table_of = |o: &SchemaObject| (o.kind == "TABLE").then(|| o.qualified());
    for object in archive {
        let candidates = in_database.get_mut(&object.key());
        let Some(candidates) = candidates.filter(|c| !c.is_empty()) else {
            found.push(ObjectDifference {
                table: table_of(object),
                reordered: false,
                check: DrillCheck::failed(
                    format!("schema {}", object.describe()),
                    "in the archive, missing from the restored database",
                ),
            });
            continue;
        };
        let back = candidates.remove(0);
        if back.lines == object.lines {
            continue;
        }
        let at = object
            .lines
            .iter()
            .zip(&back.lines)
            .position(|(a, b)| a != b)
            .unwrap_or(object.lines.len().min(back.lines.len()));
        let reordered = same_lines(&object.lines, &back.lines);
        found.push(ObjectDifference {
            table: table_of(object),
            reordered,
            check: DrillCheck::failed(
                format!("schema {}", object.describe()),
                format!(
                    "{}: at line {} from its `-- Name:` header the archive has {:?}, the restored database has {:?}",
                    if reordered {
                        "the same lines in another order"
                    } else {
                        "defined differently"
                    },
                    at + 1,
                    object.lines.get(at).copied().unwrap_or("(end)"),
                    back.lines.get(at).copied().unwrap_or("(end)")
                ),
            ),
        });
    }
    for extra in in_database.values().flatten() {
        found.push(ObjectDifference {
            table: None,
            reordered: false,
            check: DrillCheck::failed(
                format!("schema {}", extra.describe()),
                "in the restored database, not in the archive",
            ),
        });
    }
    found
}

/// Whether two definitions hold the same lines in some order (a column
/// list's last line has no comma, so commas at line ends do not count).
fn same_lines(a: &[&str], b: &[&str]) -> bool {
    let sorted = |lines: &[&str]| {
        let mut lines: Vec<String> = lines
            .iter()
            .map(|l| l.trim_end_matches(',').to_string())
            .collect();
        lines.sort();
        lines
    };
    sorted(a) == sorted(b)
}

/// Runs a tool to completion, feeding it `input` on stdin when given, and
/// returns its stdout.
pub(crate) fn run_capturing(
    command: std::process::Command,
    input: Option<&[u8]>,
    what: &str,
) -> Result<String> {
    let failed =
        |detail: String| Error::new(ErrorKind::Restore, format!("{what} failed: {detail}"));
    let (mut child, stdin) = ChildSource::spawn_fed(command).map_err(|e| failed(e.to_string()))?;
    let mut output = Vec::new();
    std::thread::scope(|scope| {
        let feeder = scope.spawn(move || {
            let mut stdin = stdin;
            if let Some(input) = input {
                // pg_restore may stop reading once it has the TOC.
                let _ = stdin.write_all(input);
            }
        });
        let read = crate::pipeline::copy_stream(&mut child, &mut output, |_| true);
        let _ = feeder.join();
        read.map(|_| ()).map_err(|e| {
            failed(match e {
                crate::pipeline::CopyError::Read(e) | crate::pipeline::CopyError::Write(e) => {
                    e.to_string()
                }
                crate::pipeline::CopyError::Stopped => "stopped".to_string(),
            })
        })
    })?;
    child.finish().map_err(|failure| {
        failed(format!(
            "{}: {}",
            failure.describe_status(),
            failure.key_line().unwrap_or("no message")
        ))
    })?;
    // Names in another encoding compare as well byte-replaced.
    Ok(String::from_utf8_lossy(&output).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_dumps_ignore_versions_and_restrict_keys() {
        let a = "-- Dumped from database version 15.1\n\\restrict abc\nCREATE TABLE t ();\n\\unrestrict abc\n";
        let b = "-- Dumped from database version 15.2\n\\restrict xyz\nCREATE TABLE t ();\n\\unrestrict xyz\n";
        assert_eq!(normalise(a), normalise(b));
        assert_ne!(normalise(a), normalise("CREATE TABLE u ();\n"));
    }

    const ARCHIVE: &str = "SET x = 0;\n\n--\n-- Name: child; Type: TABLE; Schema: public; Owner: alice\n--\n\nCREATE TABLE public.child (\n    b integer,\n    a integer\n)\nINHERITS (public.parent);\n\n--\n-- Name: f(); Type: FUNCTION; Schema: public; Owner: alice\n--\n\nCREATE FUNCTION public.f() RETURNS int;\n\n--\n-- Name: gone; Type: VIEW; Schema: public; Owner: alice\n--\n\nCREATE VIEW public.gone AS SELECT 1;\n";

    #[test]
    fn differences_name_every_object() {
        let database = ARCHIVE
            .replace(
                "    b integer,\n    a integer\n",
                "    a integer,\n    b integer\n",
            )
            .replace("RETURNS int;", "RETURNS bigint;")
            .replace("Name: gone; Type: VIEW", "Name: extra; Type: VIEW");
        let found = differences(&objects(ARCHIVE), &objects(&database));
        let names: Vec<&str> = found.iter().map(|d| d.check.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "schema TABLE public.child",
                "schema FUNCTION public.f()",
                "schema VIEW public.gone",
                "schema VIEW public.extra"
            ]
        );
        assert!(found[0].reordered && !found[1].reordered);
        assert_eq!(found[0].table.as_deref(), Some("public.child"));
        assert!(
            found[1]
                .check
                .detail
                .contains("at line 4 from its `-- Name:` header"),
            "{}",
            found[1].check.detail
        );
        assert!(differences(&objects(ARCHIVE), &objects(ARCHIVE)).is_empty());
    }
}
