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
            !line.starts_with("-- Dumped from database version")
                && !line.starts_with("-- Dumped by pg_dump version")
                && !line.starts_with("\\restrict ")
                && !line.starts_with("\\unrestrict ")
        })
        .collect()
}

pub(super) fn compare_schema(
    toc: &Toc,
    toc_bytes: &[u8],
    restored: &RestoredAs,
    tools: &Tools,
) -> Result<DrillCheck> {
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
    std::fs::write(
        restored.list_file,
        crate::restore::selection::Selection::list_file(&entries),
    )
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
    dump_args.push("--no-password".to_string());
    dump_args.push(format!("--dbname={}", restored.database.conninfo()));
    let command = tools.pg_dump.client_command(restored.database, dump_args);
    let from_database = run_capturing(command, None, "pg_dump --schema-only")?;

    let (archive_lines, database_lines) = (normalise(&from_archive), normalise(&from_database));
    let name = "schema".to_string();
    let first_difference = archive_lines
        .iter()
        .zip(database_lines.iter())
        .position(|(a, b)| a != b)
        .or_else(|| {
            (archive_lines.len() != database_lines.len())
                .then(|| archive_lines.len().min(database_lines.len()))
        });
    Ok(match first_difference {
        None => DrillCheck {
            name,
            ok: true,
            detail: format!(
                "schema-only dump of the restored database equals the archive's ({} lines)",
                archive_lines.len()
            ),
        },
        Some(i) => DrillCheck {
            name,
            ok: false,
            detail: format!(
                "differs at line {}: the archive has {:?}, the restored database has {:?}",
                i + 1,
                archive_lines.get(i).copied().unwrap_or("(end)"),
                database_lines.get(i).copied().unwrap_or("(end)")
            ),
        },
    })
}

/// Runs a tool to completion, feeding it `input` on stdin when given, and
/// returns its stdout.
fn run_capturing(
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
}
