//! Reading every restored table back and holding it against the
//! manifest's row counts and fingerprints.

use super::{RestoredAs, Session, chosen, db_message, session, short};
use crate::error::{Error, Result};
use crate::fingerprint::{ContentFingerprint, CopyTextDigest, MultisetDigest};
use crate::pipeline::archive::{Toc, TocEntry};
use crate::repository::manifest::{DrillCheck, Manifest};
use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

/// Every restored table's rows against the manifest, `jobs` tables at a
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
    let units = read_backs(manifest, toc, restored);
    compare_units(&units, &session(manifest, restored), jobs, finished)
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

fn read_backs(manifest: &Manifest, toc: &Toc, restored: &RestoredAs) -> Vec<ReadBack> {
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
            let group = by_root
                .entry(relation.clone())
                .or_insert_with(|| (Vec::new(), Vec::new(), MultisetDigest::default(), 0, true));
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

fn compare_units(
    units: &[ReadBack],
    session: &Session,
    jobs: usize,
    finished: Option<FinishedItems>,
) -> Result<Vec<DrillCheck>> {
    let results: Mutex<Vec<Option<DrillCheck>>> = Mutex::new(vec![None; units.len()]);
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    let (work, to_do) = std::sync::mpsc::channel::<usize>();
    let to_do = Mutex::new(to_do);
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, units.len().max(1)) {
            scope.spawn(|| {
                let mut client = match session.open() {
                    Ok(client) => Some(client),
                    Err(e) => {
                        failure.lock().expect("not poisoned").get_or_insert(e);
                        None
                    }
                };
                loop {
                    // Holding the lock while waiting is fine: whoever gets
                    // the next unit lets the others wait for the one after.
                    let next = to_do.lock().expect("not poisoned").recv();
                    let Ok(i) = next else { break };
                    // Without a session, keep taking units so that the
                    // dispatcher never blocks; the failure is reported.
                    if let Some(client) = &mut client {
                        let check = compare_unit(&units[i], client);
                        results.lock().expect("not poisoned")[i] = Some(check);
                    }
                }
            });
        }
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
                                let _ = work.send(i);
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
            let _ = work.send(i);
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

/// The statement that reads back what pg_dump wrote: the archive's column
/// list; for an extension's configuration table only the rows pg_dump
/// dumps (its `extcondition`), as pg_dump selects them.
fn read_back_statement(unit: &ReadBack, client: &mut postgres::Client) -> Result<String, String> {
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

fn compare_unit(unit: &ReadBack, client: &mut postgres::Client) -> DrillCheck {
    let fail = |detail: String| DrillCheck {
        name: unit.name.clone(),
        ok: false,
        detail,
        finding: None,
    };
    if let Some(signal) = crate::interrupt::pending() {
        return fail(format!(
            "not read back: stopped by {}",
            crate::pipeline::child::signal_name(signal)
        ));
    }
    let expected = match &unit.expected {
        Ok(expected) => expected,
        Err(why) => return fail(why.clone()),
    };
    let mut digest = CopyTextDigest::default();
    let read = (|| -> std::result::Result<(), String> {
        let statement = read_back_statement(unit, client)?;
        let mut reader = client
            .copy_out(statement.as_str())
            .map_err(|e| db_message(&e))?;
        let mut buffer = vec![0u8; 256 * 1024];
        loop {
            if let Some(signal) = crate::interrupt::pending() {
                return Err(format!(
                    "stopped by {}",
                    crate::pipeline::child::signal_name(signal)
                ));
            }
            let n = reader.read(&mut buffer).map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok(());
            }
            digest.update(&buffer[..n]);
        }
    })();
    if let Err(e) = read {
        return fail(format!("cannot read it back: {e}"));
    }
    let found = digest.finish();
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
            detail: format!("{} rows, fingerprint {}", found.count, short(fingerprint)),
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
