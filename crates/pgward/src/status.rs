//! "Are my backups fresh and proven?" as one answer per database, for
//! people (`pgward status`) and for monitoring (its exit code, and the
//! same facts as Prometheus metrics).
//!
//! The facts come from the repository: the catalog (complete backups),
//! drill records, quarantine records and the journal (failures since the
//! last success, and whether the chain holds). The verdict is a pure
//! function of those facts, the objectives and the clock.

use crate::config::{Config, parse_duration};
use crate::error::Result;
use crate::journal::{Record, Verification};
use crate::repository::Repository;
use crate::repository::manifest::{DrillRecord, Manifest};
use serde::Serialize;
use std::collections::BTreeMap;

/// OK, LATE or FAILED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    Ok,
    Late,
    Failed,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Ok => "OK",
            Verdict::Late => "LATE",
            Verdict::Failed => "FAILED",
        }
    }
}

/// One objective of one database, with why it has its verdict.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Objective {
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct LastBackup {
    pub id: String,
    pub finished_at: String,
    pub age_seconds: i64,
    pub duration_ms: u64,
    pub archive_bytes: u64,
    pub stored_bytes: u64,
    pub rows: u64,
    pub tables: usize,
    /// Recipient fingerprints; empty when not encrypted.
    pub encrypted_to: Vec<String>,
    /// Other repositories the journal records a verified copy of it in
    /// (`pgward copy`, `[[mirror]]`).
    pub copies: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct LastDrill {
    pub backup_id: String,
    pub finished_at: String,
    pub age_seconds: i64,
    pub verdict: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DatabaseStatus {
    pub database: String,
    /// What the backups cover: `whole`, or `schemas=app,audit` and the like.
    pub scope: String,
    pub verdict: Verdict,
    pub objectives: Vec<Objective>,
    pub last_backup: Option<LastBackup>,
    pub last_drill: Option<LastDrill>,
    /// Backups (and nightly runs) that failed since the last one that did not.
    pub failures_since_success: usize,
    /// The journal's last backup or run of this database: its outcome.
    pub last_attempt_ok: Option<bool>,
    pub quarantined: usize,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct StatusReport {
    pub verdict: Verdict,
    pub databases: Vec<DatabaseStatus>,
    pub repository_bytes: u64,
    pub journal: Verification,
    pub evaluated_at: String,
}

impl StatusReport {
    pub fn ok(&self) -> bool {
        self.verdict == Verdict::Ok
    }
}

/// What the verdict is made of, read from a repository.
pub struct Facts {
    pub backups: Vec<Manifest>,
    pub drills: BTreeMap<String, DrillRecord>,
    pub quarantined: BTreeMap<String, usize>,
    pub journal: Vec<Record>,
    pub journal_check: Verification,
    pub repository_bytes: u64,
}

/// The objectives from `[policy]`, as durations.
#[derive(Debug, Clone, Copy, Default)]
pub struct Objectives {
    pub max_backup_age: Option<jiff::SignedDuration>,
    pub max_drill_age: Option<jiff::SignedDuration>,
}

impl Objectives {
    pub fn from_config(config: &Config) -> Result<Objectives> {
        let parse = |value: &Option<String>| -> Result<Option<jiff::SignedDuration>> {
            value
                .as_deref()
                .map(|v| parse_duration(v).map_err(crate::error::Error::config))
                .transpose()
        };
        Ok(Objectives {
            max_backup_age: parse(&config.policy.max_backup_age)?,
            max_drill_age: parse(&config.policy.max_drill_age)?,
        })
    }
}

/// Reads the facts of `repo`.
pub fn facts(repo: &Repository) -> Result<Facts> {
    let backups = repo.backups()?;
    let mut drills = BTreeMap::new();
    for manifest in &backups {
        if let Ok(Some(record)) = repo.drill_record(&manifest.id) {
            drills.insert(manifest.id.clone(), record);
        }
    }
    let mut quarantined = BTreeMap::new();
    for record in repo.quarantined()?.0 {
        *quarantined.entry(record.database).or_insert(0) += 1;
    }
    // One reading of the journal (in a bucket, a request per record). A
    // damaged record is the chain's finding (journal_check); the rest
    // still count.
    let (journal_check, journal) = crate::journal::read_and_verify(repo)?;
    Ok(Facts {
        backups,
        drills,
        quarantined,
        journal,
        journal_check,
        repository_bytes: repository_bytes(repo),
    })
}

/// What the repository takes up: its files on disk, or its objects.
fn repository_bytes(repo: &Repository) -> u64 {
    if !repo.is_remote() {
        return tree_bytes(repo.root());
    }
    let storage = repo.storage();
    ["backups", "quarantine", "journal", "tmp", "locks"]
        .iter()
        .filter_map(|dir| storage.list(dir).ok())
        .flatten()
        .map(|object| object.bytes)
        .sum()
}

fn tree_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&entry.path()),
            Ok(t) if t.is_file() => entry.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

fn age_seconds(at: &str, now: jiff::Timestamp) -> i64 {
    at.parse::<jiff::Timestamp>()
        .map(|t| now.duration_since(t).as_secs())
        .unwrap_or(i64::MAX)
}

fn human(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// The verdict per database (every database with a backup, a quarantined
/// run or a journaled backup), against the objectives, at `now`.
pub fn evaluate(facts: &Facts, objectives: &Objectives, now: jiff::Timestamp) -> StatusReport {
    // Each database and scope apart, as retention plans them; a database
    // known only from failed attempts or quarantine has no scope to tell.
    let mut groups: Vec<(String, String)> = facts
        .backups
        .iter()
        .map(|m| (m.database.clone(), scope_label(&m.scope)))
        .collect();
    // A database pgward only ever failed to back up counts while its
    // failures are recent (within max-backup-age, else a week): a typo
    // on the command line, or a database since dropped, does not fail the
    // status for ever.
    let window = objectives
        .max_backup_age
        .map(|d| d.as_secs())
        .unwrap_or(7 * 86400);
    let recent = facts.journal.iter().filter(|r| {
        (r.command == "backup" || r.command == "run") && age_seconds(&r.started_at, now) <= window
    });
    for database in recent
        .filter_map(|r| r.database.clone())
        .collect::<Vec<_>>()
    {
        if !groups.iter().any(|(d, _)| *d == database) {
            groups.push((database, "whole".into()));
        }
    }
    groups.sort();
    groups.dedup();
    let mut statuses = Vec::new();
    for (database, scope) in groups {
        statuses.push(evaluate_database(facts, objectives, now, database, scope));
    }
    let journal_ok = facts.journal_check.intact();
    let worst = statuses
        .iter()
        .map(|s| s.verdict)
        .chain((!journal_ok).then_some(Verdict::Failed))
        .fold(Verdict::Ok, worse);
    StatusReport {
        verdict: worst,
        databases: statuses,
        repository_bytes: facts.repository_bytes,
        journal: facts.journal_check.clone(),
        evaluated_at: crate::clock::rfc3339(now),
    }
}

fn worse(a: Verdict, b: Verdict) -> Verdict {
    match (a, b) {
        (Verdict::Failed, _) | (_, Verdict::Failed) => Verdict::Failed,
        (Verdict::Late, _) | (_, Verdict::Late) => Verdict::Late,
        _ => Verdict::Ok,
    }
}

/// `whole`, or the scope's lists: `schemas=app,audit exclude-tables=app.log`.
pub fn scope_label(scope: &crate::scope::Scope) -> String {
    let parts: Vec<String> = [
        ("schemas", &scope.schemas),
        ("exclude-schemas", &scope.exclude_schemas),
        ("tables", &scope.tables),
        ("exclude-tables", &scope.exclude_tables),
    ]
    .into_iter()
    .filter(|(_, names)| !names.is_empty())
    .map(|(key, names)| format!("{key}={}", names.join(",")))
    .collect();
    if parts.is_empty() {
        "whole".into()
    } else {
        parts.join(" ")
    }
}

/// Where the journal says backup `id` was copied, each place once.
fn copies_of(facts: &Facts, id: &str) -> Vec<String> {
    let mut places: Vec<String> = facts
        .journal
        .iter()
        .flat_map(|r| r.options.iter())
        .filter_map(|o| crate::copy::parse_journal_option(o))
        .filter(|(copied, _)| *copied == id)
        .map(|(_, to)| to.to_string())
        .collect();
    places.sort();
    places.dedup();
    places
}

fn evaluate_database(
    facts: &Facts,
    objectives: &Objectives,
    now: jiff::Timestamp,
    database: String,
    scope: String,
) -> DatabaseStatus {
    let of_group = |m: &&Manifest| m.database == database && scope_label(&m.scope) == scope;
    // Newest first in the catalog.
    let newest = facts.backups.iter().find(of_group);
    let last_backup = newest.map(|m| LastBackup {
        id: m.id.clone(),
        finished_at: m.finished_at.clone(),
        age_seconds: age_seconds(&m.finished_at, now),
        duration_ms: m.duration_ms,
        archive_bytes: m.archive.bytes,
        stored_bytes: m.artifact.bytes,
        rows: m.tables.iter().map(|t| t.rows).sum(),
        tables: m.tables.len(),
        encrypted_to: m
            .artifact
            .encryption
            .as_ref()
            .map(|e| {
                e.recipients
                    .iter()
                    .map(|r| r.fingerprint.to_string())
                    .collect()
            })
            .unwrap_or_default(),
        copies: copies_of(facts, &m.id),
    });
    let last_drill = facts
        .backups
        .iter()
        .filter(of_group)
        .filter_map(|m| facts.drills.get(&m.id))
        .max_by(|a, b| a.finished_at.cmp(&b.finished_at))
        .map(|d| LastDrill {
            backup_id: d.backup_id.clone(),
            finished_at: d.finished_at.clone(),
            age_seconds: age_seconds(&d.finished_at, now),
            verdict: d.verdict.clone(),
        });
    let attempts: Vec<&Record> = facts
        .journal
        .iter()
        .filter(|r| {
            (r.command == "backup" || r.command == "run")
                && r.database.as_deref() == Some(&database)
        })
        .collect();
    // A run whose backup was written failed in a later step (verify,
    // drill, prune): that is no failed backup.
    let backed_up = |r: &Record| {
        r.outcome == "ok"
            || r.artifacts
                .iter()
                .any(|a| a.path.ends_with(".manifest.json"))
    };
    let failures_since_success = attempts.iter().rev().take_while(|r| !backed_up(r)).count();
    let last_attempt_ok = attempts.last().map(|r| backed_up(r));

    let mut objectives_out = Vec::new();
    let backup = match (&last_backup, objectives.max_backup_age) {
        _ if failures_since_success > 0 => Objective {
            name: "backup",
            verdict: Verdict::Failed,
            detail: format!(
                "{failures_since_success} failed attempt(s) since the last success; last: {}",
                attempts
                    .last()
                    .and_then(|r| r.cause.clone())
                    .unwrap_or_else(|| "no cause recorded".into())
            ),
        },
        (None, _) => Objective {
            name: "backup",
            verdict: Verdict::Failed,
            detail: "no complete backup".into(),
        },
        // A backup "from the future" would mask stopped backups until then.
        (Some(b), _) if b.age_seconds < -300 => Objective {
            name: "backup",
            verdict: Verdict::Failed,
            detail: format!(
                "newest complete backup {} finished {} in the future: the clock, or a forged manifest",
                b.id,
                human(-b.age_seconds)
            ),
        },
        (Some(b), Some(max)) if b.age_seconds > max.as_secs() => Objective {
            name: "backup",
            verdict: Verdict::Late,
            detail: format!(
                "newest complete backup {} is {} old, max-backup-age {}",
                b.id,
                human(b.age_seconds),
                human(max.as_secs())
            ),
        },
        (Some(b), _) => Objective {
            name: "backup",
            verdict: Verdict::Ok,
            detail: format!(
                "newest complete backup {} is {} old",
                b.id,
                human(b.age_seconds)
            ),
        },
    };
    objectives_out.push(backup);
    let drill = match (&last_drill, objectives.max_drill_age) {
        (Some(d), _) if d.verdict != "pass" => Some(Objective {
            name: "drill",
            verdict: Verdict::Failed,
            detail: format!("the newest drill (of {}) failed", d.backup_id),
        }),
        (None, Some(_)) => Some(Objective {
            name: "drill",
            verdict: Verdict::Late,
            detail: "never drilled".into(),
        }),
        (Some(d), Some(max)) if d.age_seconds > max.as_secs() => Some(Objective {
            name: "drill",
            verdict: Verdict::Late,
            detail: format!(
                "newest drill is {} old, max-drill-age {}",
                human(d.age_seconds),
                human(max.as_secs())
            ),
        }),
        (Some(d), _) => Some(Objective {
            name: "drill",
            verdict: Verdict::Ok,
            detail: format!(
                "newest drill passed {} ago (backup {})",
                human(d.age_seconds),
                d.backup_id
            ),
        }),
        (None, None) => None,
    };
    objectives_out.extend(drill);
    let verdict = objectives_out
        .iter()
        .map(|o| o.verdict)
        .fold(Verdict::Ok, worse);
    DatabaseStatus {
        quarantined: facts.quarantined.get(&database).copied().unwrap_or(0),
        database,
        scope,
        verdict,
        objectives: objectives_out,
        last_backup,
        last_drill,
        failures_since_success,
        last_attempt_ok,
    }
}

/// The report in Prometheus' text exposition format.
pub fn prometheus(report: &StatusReport) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, value) in samples {
            out.push_str(&format!("{name}{labels} {value}\n"));
        }
    };
    let label = |d: &DatabaseStatus| {
        format!(
            "{{database=\"{}\",scope=\"{}\"}}",
            escape(&d.database),
            escape(&d.scope)
        )
    };
    let per = |f: &dyn Fn(&DatabaseStatus) -> Option<f64>| -> Vec<(String, f64)> {
        report
            .databases
            .iter()
            .filter_map(|d| f(d).map(|v| (label(d), v)))
            .collect()
    };
    let timestamp = |at: &str| {
        at.parse::<jiff::Timestamp>()
            .map(|t| t.as_millisecond() as f64 / 1000.0)
            .ok()
    };
    family(
        "pgward_backup_last_success_timestamp_seconds",
        "gauge",
        "When the newest complete backup finished (Unix time).",
        per(&|d| {
            d.last_backup
                .as_ref()
                .and_then(|b| timestamp(&b.finished_at))
        }),
    );
    family(
        "pgward_backup_last_attempt_success",
        "gauge",
        "1 if the newest journaled backup or run of the database succeeded, else 0.",
        per(&|d| d.last_attempt_ok.map(|ok| if ok { 1.0 } else { 0.0 })),
    );
    family(
        "pgward_backup_failures_since_success",
        "gauge",
        "Backups or runs that failed since the last one that succeeded.",
        per(&|d| Some(d.failures_since_success as f64)),
    );
    family(
        "pgward_backup_duration_seconds",
        "gauge",
        "How long the newest complete backup took.",
        per(&|d| {
            d.last_backup
                .as_ref()
                .map(|b| b.duration_ms as f64 / 1000.0)
        }),
    );
    family(
        "pgward_backup_archive_bytes",
        "gauge",
        "Size of the newest complete backup's pg_dump archive.",
        per(&|d| d.last_backup.as_ref().map(|b| b.archive_bytes as f64)),
    );
    family(
        "pgward_backup_stored_bytes",
        "gauge",
        "Size of the newest complete backup's artifact as stored.",
        per(&|d| d.last_backup.as_ref().map(|b| b.stored_bytes as f64)),
    );
    family(
        "pgward_backup_rows",
        "gauge",
        "Rows in the newest complete backup.",
        per(&|d| d.last_backup.as_ref().map(|b| b.rows as f64)),
    );
    family(
        "pgward_drill_last_timestamp_seconds",
        "gauge",
        "When the newest drill finished (Unix time).",
        per(&|d| {
            d.last_drill
                .as_ref()
                .and_then(|r| timestamp(&r.finished_at))
        }),
    );
    family(
        "pgward_drill_last_success",
        "gauge",
        "1 if the newest drill passed, else 0.",
        per(&|d| {
            d.last_drill
                .as_ref()
                .map(|r| if r.verdict == "pass" { 1.0 } else { 0.0 })
        }),
    );
    family(
        "pgward_quarantined_runs",
        "gauge",
        "Failed runs kept in quarantine.",
        per(&|d| Some(d.quarantined as f64)),
    );
    family(
        "pgward_objective_ok",
        "gauge",
        "1 if the database meets all its objectives (status OK), else 0.",
        per(&|d| Some(if d.verdict == Verdict::Ok { 1.0 } else { 0.0 })),
    );
    family(
        "pgward_repository_bytes",
        "gauge",
        "Bytes in the repository.",
        vec![(String::new(), report.repository_bytes as f64)],
    );
    family(
        "pgward_journal_intact",
        "gauge",
        "1 if the journal's hash chain verifies, else 0.",
        vec![(
            String::new(),
            if report.journal.intact() { 1.0 } else { 0.0 },
        )],
    );
    family(
        "pgward_journal_records",
        "gauge",
        "Records in the journal.",
        vec![(String::new(), report.journal.records as f64)],
    );
    out
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes the metrics to `path` atomically (a sibling temp file renamed
/// over it), readable by the collector (0644: metrics hold no secret).
pub fn write_textfile(path: &std::path::Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let staging = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&staging)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&staging, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&staging);
        crate::error::Error::repository_io("cannot write the metrics textfile", path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u64, database: &str, ok: bool, at: &str) -> Record {
        Record {
            format: crate::journal::FORMAT.into(),
            format_version: 1,
            sequence: n,
            previous_sha256: String::new(),
            run_id: format!("r{n}"),
            command: "backup".into(),
            database: Some(database.into()),
            options: Vec::new(),
            host: "h".into(),
            pgward_version: "0".into(),
            started_at: at.into(),
            finished_at: at.into(),
            duration_ms: 1,
            outcome: if ok { "ok" } else { "failed" }.into(),
            exit_code: if ok { 0 } else { 1 },
            cause: (!ok).then(|| "permission denied for table secrets".into()),
            artifacts: Vec::new(),
        }
    }

    fn facts(journal: Vec<Record>) -> Facts {
        Facts {
            backups: Vec::new(),
            drills: BTreeMap::new(),
            quarantined: BTreeMap::new(),
            journal,
            journal_check: Verification {
                records: 0,
                head: None,
                broken: None,
            },
            repository_bytes: 0,
        }
    }

    #[test]
    fn failures_since_the_last_success_fail_the_database_and_show_in_metrics() {
        let now: jiff::Timestamp = "2026-11-30T12:00:00Z".parse().unwrap();
        let facts = facts(vec![
            record(1, "app", true, "2026-11-28T01:00:00Z"),
            record(2, "app", false, "2026-11-29T01:00:00Z"),
            record(3, "app", false, "2026-11-30T01:00:00Z"),
        ]);
        let report = evaluate(&facts, &Objectives::default(), now);
        assert_eq!(report.verdict, Verdict::Failed);
        let app = &report.databases[0];
        assert_eq!(app.failures_since_success, 2);
        assert!(app.objectives[0].detail.contains("permission denied"));
        let text = prometheus(&report);
        assert!(text.contains(
            "pgward_backup_failures_since_success{database=\"app\",scope=\"whole\"} 2\n"
        ));
        assert!(
            text.contains(
                "pgward_backup_last_attempt_success{database=\"app\",scope=\"whole\"} 0\n"
            )
        );
        assert!(text.contains("# TYPE pgward_journal_intact gauge\npgward_journal_intact 1\n"));
    }

    #[test]
    fn a_journal_that_does_not_verify_fails_the_status() {
        let mut facts = facts(Vec::new());
        facts.journal_check.broken = Some("record 2 was edited".into());
        let report = evaluate(&facts, &Objectives::default(), jiff::Timestamp::now());
        assert_eq!(report.verdict, Verdict::Failed);
    }

    #[test]
    fn ages_are_late_against_the_clock_given() {
        assert_eq!(human(59), "59s");
        assert_eq!(human(3 * 86400), "3d");
        assert_eq!(
            age_seconds(
                "2026-11-30T11:00:00.000Z",
                "2026-11-30T12:00:00Z".parse().unwrap()
            ),
            3600
        );
        let objectives = Objectives {
            max_backup_age: Some(parse_duration("26h").unwrap()),
            max_drill_age: None,
        };
        let facts = facts(vec![record(1, "app", true, "2026-11-30T01:00:00Z")]);
        // No manifest: a journaled success without a backup in the catalog
        // (pruned, moved) is no backup.
        let report = evaluate(&facts, &objectives, "2026-11-30T12:00:00Z".parse().unwrap());
        assert_eq!(
            report.databases[0].objectives[0].detail,
            "no complete backup"
        );
    }
}
