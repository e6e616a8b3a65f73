//! Reading every restored table back and holding it against the
//! manifest's row counts and fingerprints.

use super::{RestoredAs, Session, chosen, db_message, session, short};
use crate::connection::StreamingSession;
use crate::error::{Error, Result};
use crate::fingerprint::{Algorithm, ContentFingerprint, CopyTextDigest, MultisetDigest};
use crate::pipeline::archive::{Toc, TocEntry};
use crate::repository::manifest::{DrillCheck, Manifest};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

/// Every restored table's rows against the manifest, `jobs` sessions
/// reading tables (or parts of large ones, see [`SPLIT_FROM_BYTES`]) at a
/// time. Runs while pg_restore builds indexes and constraints: reading a
/// table only waits for the moment a constraint locks it.
///
/// With `finished`, pg_restore is still running and reports on those lines
/// (`--verbose`) each item it finished: a table is read back once its data
/// is in, while the rest is restored; what was never reported is read
/// back when the lines end (pg_restore exited).
pub fn compare_tables(
    manifest: &Manifest,
    toc: &Toc,
    restored: &RestoredAs,
    jobs: usize,
    finished: Option<FinishedItems>,
) -> Result<Vec<DrillCheck>> {
    let algorithm = super::fingerprint_algorithm(manifest)?;
    let units = read_backs(manifest, algorithm, toc, restored);
    compare_units(
        &units,
        algorithm,
        &session(manifest, restored),
        jobs,
        finished,
    )
}

/// pg_restore's reports while it runs: its stderr lines, and whether it
/// has exited (set by whoever waits for it).
pub struct FinishedItems {
    pub lines: std::sync::mpsc::Receiver<String>,
    pub child_exited: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// One comparison: a table, or the partitions pg_dump loads through their
/// root (whose rows may land in another partition on restore, so only
/// their union can be compared).
struct ReadBack {
    name: String,
    /// The entries pg_restore must have finished before this is read back
    /// (see [`waits_for`]).
    members: Vec<i64>,
    /// The table as named in the archive's COPY statement, and its columns.
    relation: String,
    columns: Option<String>,
    /// The table to look up as an extension's configuration table.
    schema_table: Option<(String, String)>,
    expected: Result<Expected, String>,
}

struct Expected {
    rows: u64,
    /// COPY text in the archive (0 for a union of partitions, which is
    /// never read in parts).
    bytes: u64,
    /// None for a manifest before v3: rows are all there is to compare.
    fingerprint: Option<String>,
}

/// Post-data entries that lock their table against readers (ACCESS
/// EXCLUSIVE: a primary key or unique constraint, row security, a
/// policy, a rule). A table is read back after they are done: a read
/// begun before them would make pg_restore wait for it.
const LOCKS_OUT_READERS: [&str; 4] = ["CONSTRAINT", "ROW SECURITY", "POLICY", "RULE"];

/// The entries a table's read-back waits for, in a parallel restore: its
/// data, and the restored entries that lock it against readers.
fn waits_for(toc: &Toc, restored: &RestoredAs, data: &TocEntry) -> Vec<i64> {
    let mut ids = vec![data.dump_id];
    ids.extend(
        toc.entries
            .iter()
            .filter(|e| LOCKS_OUT_READERS.contains(&e.desc.as_str()) && chosen(restored, e))
            .filter(|e| e.dependencies.iter().any(|d| data.dependencies.contains(d)))
            .map(|e| e.dump_id),
    );
    ids
}

fn read_backs(
    manifest: &Manifest,
    algorithm: Algorithm,
    toc: &Toc,
    restored: &RestoredAs,
) -> Vec<ReadBack> {
    let mut units: Vec<ReadBack> = Vec::new();
    type Group = (Vec<String>, Vec<i64>, MultisetDigest, u64, bool);
    let mut by_root: BTreeMap<String, Group> = BTreeMap::new();
    for entry in toc
        .entries
        .iter()
        .filter(|e| e.desc == "TABLE DATA" && chosen(restored, e))
    {
        let name = format!("{}.{}", entry.namespace, entry.tag);
        let members = waits_for(toc, restored, entry);
        let recorded = manifest
            .tables
            .iter()
            .find(|t| t.schema == entry.namespace && t.table == entry.tag);
        let Some((relation, columns)) = parse_copy_statement(&entry.copy_statement) else {
            units.push(ReadBack {
                name: format!("table {name}"),
                members,
                relation: String::new(),
                columns: None,
                schema_table: None,
                expected: Err(format!(
                    "unexpected COPY statement in the archive: {:?}",
                    entry.copy_statement
                )),
            });
            continue;
        };
        if entry.definition.starts_with("-- load via partition root") {
            let group = by_root.entry(relation.clone()).or_insert_with(|| {
                (
                    Vec::new(),
                    Vec::new(),
                    MultisetDigest::new(algorithm),
                    0,
                    true,
                )
            });
            group.0.push(name);
            group.1.extend(members);
            match recorded {
                Some(r) => {
                    group.3 += r.rows;
                    let merged = r.fingerprint.as_ref().is_some_and(|f| {
                        group.2.merge(&ContentFingerprint {
                            count: r.rows,
                            sum: f.clone(),
                        })
                    });
                    group.4 &= merged;
                }
                None => group.4 = false,
            }
            continue;
        }
        units.push(ReadBack {
            name: format!("table {name}"),
            members,
            relation,
            columns,
            schema_table: Some((entry.namespace.clone(), entry.tag.clone())),
            expected: match recorded {
                None => Err("in the archive but not in the manifest".to_string()),
                Some(r) => Ok(Expected {
                    rows: r.rows,
                    bytes: r.bytes,
                    fingerprint: r.fingerprint.clone(),
                }),
            },
        });
    }
    for (root, (members, ids, digest, rows, fingerprinted)) in by_root {
        let columns = toc
            .entries
            .iter()
            .find(|e| {
                e.desc == "TABLE DATA"
                    && parse_copy_statement(&e.copy_statement).is_some_and(|(r, _)| r == root)
            })
            .and_then(|e| parse_copy_statement(&e.copy_statement))
            .and_then(|(_, columns)| columns);
        units.push(ReadBack {
            name: format!("partitions {} (loaded via {root})", members.join(", ")),
            members: ids,
            relation: root,
            columns,
            schema_table: None,
            expected: Ok(Expected {
                rows,
                bytes: 0,
                fingerprint: fingerprinted.then(|| digest.finish().sum),
            }),
        });
    }
    units
}

/// `COPY public.t (a, b) FROM stdin;` -> ("public.t", Some("a, b")). The
/// column list is the last parenthesis outside double quotes.
fn parse_copy_statement(copy_in: &str) -> Option<(String, Option<String>)> {
    let target = copy_in
        .trim()
        .strip_prefix("COPY ")?
        .strip_suffix("FROM stdin;")?
        .trim_end();
    let mut quoted = false;
    let mut open = None;
    for (i, c) in target.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '(' if !quoted => open = Some(i),
            _ => {}
        }
    }
    match open {
        Some(i) if target.ends_with(')') => Some((
            target[..i].trim_end().to_string(),
            Some(target[i + 1..target.len() - 1].to_string()),
        )),
        _ => Some((target.to_string(), None)),
    }
}

/// Tables with at least this much COPY text in the archive are read back
/// in `jobs` parts (ranges of their blocks), one session each: a large
/// table is often the last one restored, and read whole it would be read
/// by one session while the others idle.
const SPLIT_FROM_BYTES: u64 = 64 << 20;

/// One piece of work: a part of a unit.
type Piece = (usize, usize);

fn compare_units(
    units: &[ReadBack],
    algorithm: Algorithm,
    session: &Session,
    jobs: usize,
    finished: Option<FinishedItems>,
) -> Result<Vec<DrillCheck>> {
    let parts: Vec<usize> = units
        .iter()
        .map(|u| if jobs > 1 && splittable(u) { jobs } else { 1 })
        .collect();
    // How each split unit is cut, decided by whichever session comes first.
    type Plan = std::result::Result<Vec<String>, String>;
    let plans: Vec<std::sync::OnceLock<Plan>> =
        units.iter().map(|_| std::sync::OnceLock::new()).collect();
    type Found = std::result::Result<ContentFingerprint, String>;
    let partials: Mutex<Vec<Vec<Option<Found>>>> =
        Mutex::new(parts.iter().map(|n| vec![None; *n]).collect());
    let results: Mutex<Vec<Option<DrillCheck>>> = Mutex::new(vec![None; units.len()]);
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    let (work, to_do) = std::sync::mpsc::channel::<Piece>();
    let to_do = Mutex::new(to_do);
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, parts.iter().sum::<usize>().max(1)) {
            scope.spawn(|| {
                let client = match session.open_streaming() {
                    Ok(client) => Some(client),
                    Err(e) => {
                        failure.lock().expect("not poisoned").get_or_insert(e);
                        None
                    }
                };
                loop {
                    // Holding the lock while waiting is fine: whoever gets
                    // the next piece lets the others wait for the one after.
                    let next = to_do.lock().expect("not poisoned").recv();
                    let Ok((i, part)) = next else { break };
                    // Without a session, keep taking pieces so that the
                    // dispatcher never blocks; the failure is reported.
                    let Some(client) = &client else { continue };
                    let unit = &units[i];
                    let found = if unit.expected.is_err() {
                        Err(String::new()) // judged on the manifest alone
                    } else if let Some(signal) = crate::interrupt::pending() {
                        Err(format!(
                            "not read back: stopped by {}",
                            crate::pipeline::child::signal_name(signal)
                        ))
                    } else {
                        let statement = if parts[i] == 1 {
                            read_back_statement(unit, client)
                        } else {
                            let plan =
                                plans[i].get_or_init(|| split_statements(unit, parts[i], client));
                            match plan {
                                Ok(statements) => Ok(statements
                                    .get(part)
                                    .cloned()
                                    // Read whole after all: the other parts read nothing.
                                    .unwrap_or_default()),
                                Err(e) => Err(e.clone()),
                            }
                        };
                        statement
                            .map_err(|e| format!("cannot read it back: {e}"))
                            .and_then(|statement| read_rows(&statement, algorithm, client))
                    };
                    let mut partials = partials.lock().expect("not poisoned");
                    partials[i][part] = Some(found);
                    if partials[i].iter().all(Option::is_some) {
                        let found = merged(algorithm, partials[i].drain(..).flatten());
                        drop(partials);
                        let read_in = plans[i]
                            .get()
                            .and_then(|plan| plan.as_ref().ok())
                            .map_or(1, Vec::len);
                        let check = judge(unit, found, read_in);
                        results.lock().expect("not poisoned")[i] = Some(check);
                    }
                }
            });
        }
        let send = |i: usize| {
            for part in 0..parts[i] {
                let _ = work.send((i, part));
            }
        };
        // Dispatch: at once, or as pg_restore reports the data in.
        let mut sent = vec![false; units.len()];
        if let Some(finished) = finished {
            let mut waiting_for: Vec<usize> = units.iter().map(|u| u.members.len()).collect();
            let mut units_of: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
            for (i, unit) in units.iter().enumerate() {
                for member in &unit.members {
                    units_of.entry(*member).or_default().push(i);
                }
            }
            let mut exited_at = None;
            while crate::interrupt::pending().is_none() {
                match finished
                    .lines
                    .recv_timeout(std::time::Duration::from_millis(250))
                {
                    Ok(line) => {
                        let Some(id) = crate::restore::load::finished_item(&line) else {
                            continue;
                        };
                        // Each id once: a repeated line must not count twice.
                        for i in units_of.remove(&id).unwrap_or_default() {
                            waiting_for[i] -= 1;
                            if waiting_for[i] == 0 && !sent[i] {
                                sent[i] = true;
                                send(i);
                            }
                        }
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    // pg_restore exited but something still holds its
                    // stderr: stop waiting for lines after a grace period.
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        if finished.child_exited.load(Ordering::SeqCst) {
                            let since = *exited_at.get_or_insert_with(std::time::Instant::now);
                            if since.elapsed() > std::time::Duration::from_secs(5) {
                                break;
                            }
                        }
                    }
                }
            }
        }
        for (i, _) in sent.iter().enumerate().filter(|(_, sent)| !**sent) {
            send(i);
        }
        drop(work);
    });
    if let Some(e) = failure.into_inner().expect("not poisoned") {
        return Err(e);
    }
    Ok(results
        .into_inner()
        .expect("not poisoned")
        .into_iter()
        .map(|c| c.expect("every table was compared"))
        .collect())
}

/// Whether a unit is worth reading in parts: a whole table (not the union
/// of partitions loaded through their root, nor an extension's table,
/// whose rows are chosen by a condition) with a column list and a lot of
/// data.
fn splittable(unit: &ReadBack) -> bool {
    unit.schema_table.is_some()
        && unit.columns.is_some()
        && unit
            .expected
            .as_ref()
            .is_ok_and(|e| e.bytes >= SPLIT_FROM_BYTES)
}

/// The statements that read a table in `parts` ranges of its blocks (TID
/// range scans, PostgreSQL 14 and later), the last one open-ended; one
/// statement reading it whole when it cannot be cut (an older server, not
/// an ordinary table, an extension's table, few blocks) or when asking
/// fails (the whole read then reports the cause).
fn split_statements(
    unit: &ReadBack,
    parts: usize,
    client: &StreamingSession,
) -> std::result::Result<Vec<String>, String> {
    let whole = || read_back_statement(unit, client).map(|statement| vec![statement]);
    let Some(columns) = &unit.columns else {
        return whole();
    };
    let facts = client.query_opt(
        "SELECT c.relkind::text, \
                (pg_catalog.pg_relation_size(c.oid) \
                 / pg_catalog.current_setting('block_size')::int)::bigint, \
                pg_catalog.current_setting('server_version_num')::int, \
                EXISTS (SELECT FROM pg_catalog.pg_extension e WHERE c.oid = ANY (e.extconfig)) \
           FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass($1)",
        &[&unit.relation],
    );
    let Ok(Some(row)) = facts else {
        return whole();
    };
    let (kind, blocks, version, extension): (String, i64, i32, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let parts = parts as i64;
    if kind != "r" || version < 140000 || extension || blocks < 16 * parts {
        return whole();
    }
    Ok((0..parts)
        .map(|k| {
            let from = blocks * k / parts;
            let to = blocks * (k + 1) / parts;
            let range = match (k, k + 1 == parts) {
                (0, _) => format!("ctid < '({to},0)'::pg_catalog.tid"),
                (_, true) => format!("ctid >= '({from},0)'::pg_catalog.tid"),
                _ => format!(
                    "ctid >= '({from},0)'::pg_catalog.tid AND ctid < '({to},0)'::pg_catalog.tid"
                ),
            };
            format!(
                "COPY (SELECT {columns} FROM ONLY {} WHERE {range}) TO STDOUT",
                unit.relation
            )
        })
        .collect())
}

/// The union of the parts' rows; the first part's failure when one failed.
fn merged(
    algorithm: Algorithm,
    parts: impl Iterator<Item = std::result::Result<ContentFingerprint, String>>,
) -> std::result::Result<ContentFingerprint, String> {
    let mut digest = MultisetDigest::new(algorithm);
    for part in parts {
        if !digest.merge(&part?) {
            return Err("a part's fingerprint cannot be added up".to_string());
        }
    }
    Ok(digest.finish())
}

/// The statement that reads back what pg_dump wrote: the archive's column
/// list; for an extension's configuration table only the rows pg_dump
/// dumps (its `extcondition`), as pg_dump selects them.
fn read_back_statement(unit: &ReadBack, client: &StreamingSession) -> Result<String, String> {
    let condition: Option<String> = match &unit.schema_table {
        Some((schema, table)) => client
            .query_opt(
                "SELECT e.extcondition[pg_catalog.array_position(e.extconfig, c.oid)] \
                   FROM pg_catalog.pg_extension e, pg_catalog.pg_class c \
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                  WHERE n.nspname = $1 AND c.relname = $2 AND c.oid = ANY (e.extconfig)",
                &[schema, table],
            )
            .map_err(|e| db_message(&e))?
            .and_then(|row| row.get::<_, Option<String>>(0)),
        None => None,
    };
    let columns = unit.columns.as_deref();
    Ok(
        match (
            condition.filter(|c| !c.trim().is_empty()),
            unit.schema_table.is_some(),
        ) {
            (None, true) => match columns {
                Some(columns) => format!("COPY {} ({columns}) TO STDOUT", unit.relation),
                None => format!("COPY {} TO STDOUT", unit.relation),
            },
            (condition, _) => format!(
                "COPY (SELECT {} FROM {} {}) TO STDOUT",
                columns.unwrap_or("*"),
                unit.relation,
                condition.unwrap_or_default()
            ),
        },
    )
}

/// The rows `statement` reads (an empty one reads nothing), fingerprinted.
fn read_rows(
    statement: &str,
    algorithm: Algorithm,
    client: &StreamingSession,
) -> std::result::Result<ContentFingerprint, String> {
    let mut digest = CopyTextDigest::new(algorithm);
    if !statement.is_empty() {
        client
            .copy_out(statement, |row| {
                if let Some(signal) = crate::interrupt::pending() {
                    return Err(format!(
                        "stopped by {}",
                        crate::pipeline::child::signal_name(signal)
                    ));
                }
                digest.update(row);
                Ok(())
            })
            .map_err(|e| format!("cannot read it back: {e}"))?;
    }
    Ok(digest.finish())
}

/// What was read back (in `read_in` parts), held against what the
/// manifest recorded.
fn judge(
    unit: &ReadBack,
    found: std::result::Result<ContentFingerprint, String>,
    read_in: usize,
) -> DrillCheck {
    let fail = |detail: String| DrillCheck {
        name: unit.name.clone(),
        ok: false,
        detail,
        finding: None,
    };
    let expected = match &unit.expected {
        Ok(expected) => expected,
        Err(why) => return fail(why.clone()),
    };
    let found = match found {
        Ok(found) => found,
        Err(e) => return fail(e),
    };
    let Some(fingerprint) = &expected.fingerprint else {
        return DrillCheck {
            name: unit.name.clone(),
            ok: found.count == expected.rows,
            detail: format!(
                "{} rows restored, {} recorded (the manifest has no fingerprint)",
                found.count, expected.rows
            ),
            finding: None,
        };
    };
    if found.count == expected.rows && &found.sum == fingerprint {
        DrillCheck {
            name: unit.name.clone(),
            ok: true,
            detail: match read_in {
                1 => format!("{} rows, fingerprint {}", found.count, short(fingerprint)),
                parts => format!(
                    "{} rows, fingerprint {} (read back in {parts} parts)",
                    found.count,
                    short(fingerprint)
                ),
            },
            finding: None,
        }
    } else {
        fail(format!(
            "backup has {} rows with fingerprint {}, restored table has {} rows with fingerprint {}",
            expected.rows, fingerprint, found.count, found.sum
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_statements_split_into_table_and_columns() {
        assert_eq!(
            parse_copy_statement("COPY public.t1 (id, note) FROM stdin;\n"),
            Some(("public.t1".to_string(), Some("id, note".to_string())))
        );
        assert_eq!(
            parse_copy_statement(
                "COPY \"Mixed Schema\".\"Odd \"\"Name\"\", (really)\" (k, \"Value\") FROM stdin;"
            ),
            Some((
                "\"Mixed Schema\".\"Odd \"\"Name\"\", (really)\"".to_string(),
                Some("k, \"Value\"".to_string())
            ))
        );
        assert_eq!(
            parse_copy_statement("COPY public.no_columns  FROM stdin;"),
            Some(("public.no_columns".to_string(), None))
        );
        assert_eq!(parse_copy_statement("SELECT 1;"), None);
    }
}
