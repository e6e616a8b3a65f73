//! Rendering results: aligned text for people, one JSON document for
//! machines (kebab-case fields, a `message-type` on every document, an
//! `error` document on failure, as restic's scripting contract does).

use pgward::Error;
use pgward::backup::{BackupOutcome, DryRun};
use pgward::check::{CheckReport, Status};
use pgward::grants::{Execution, GrantPlan};
use pgward::list::Listing;
use pgward::notify::Delivery;
use pgward::repository::manifest::ErrorRecord;
use pgward::verify::VerifyReport;
use serde_json::{Value, json};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// `--quiet`: text output on success is not printed (cron mails only
/// failures); JSON documents and errors are.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The notifications a command sent, attached to the document it prints
/// (`notifications`) or, in text, printed after it by [`notifications`].
static NOTIFICATIONS: std::sync::Mutex<Vec<Delivery>> = std::sync::Mutex::new(Vec::new());

pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, std::sync::atomic::Ordering::Relaxed);
}

/// Records what was sent, for the document about to be printed.
pub fn attach_notifications(deliveries: Vec<Delivery>) {
    if let Ok(mut pending) = NOTIFICATIONS.lock() {
        pending.extend(deliveries);
    }
}

/// The notifications in text: delivered ones on stdout (unless quiet),
/// failed ones on stderr always (an alert channel that is down must be
/// heard of). Nothing in JSON mode: they are in the document.
pub fn notifications(json: bool) {
    if json {
        return;
    }
    let pending = NOTIFICATIONS
        .lock()
        .map(|mut p| std::mem::take(&mut *p))
        .unwrap_or_default();
    for delivery in pending {
        if delivery.delivered {
            out(&format!("{}\n", delivery.describe()));
        } else {
            err(&format!("pgward: warning: {}\n", delivery.describe()));
        }
    }
}

/// Writes to stdout; a closed pipe (`pgward list | head`) is not an error.
fn out(text: &str) {
    if QUIET.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    write_stdout(text);
}

fn write_stdout(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush());
}

fn out_json(value: &Value) {
    let mut value = value.clone();
    // Printed once, in the document.
    let pending = NOTIFICATIONS
        .lock()
        .map(|mut p| std::mem::take(&mut *p))
        .unwrap_or_default();
    if !pending.is_empty()
        && let Some(object) = value.as_object_mut()
    {
        object.insert("notifications".into(), json!(pending));
    }
    write_stdout(&format!(
        "{}\n",
        serde_json::to_string_pretty(&value).expect("JSON values serialise")
    ));
}

/// The JSON document of an error.
pub fn error_document(error: &Error) -> Value {
    json!({"message-type": "error", "error": ErrorRecord::from_error(error)})
}

use pgward::config::format_size as bytes;

/// Writes to stderr; a vanished terminal (EIO, EPIPE) is not a reason to
/// panic half-way through a backup.
fn err(text: &str) -> bool {
    let mut stderr = std::io::stderr().lock();
    stderr
        .write_all(text.as_bytes())
        .and_then(|_| stderr.flush())
        .is_ok()
}

pub fn error(error: &Error, json: bool) {
    err(&format!("pgward: error: {error}\n"));
    if json {
        out_json(&error_document(error));
    }
    notifications(json);
}

fn backup_warnings(outcome: &BackupOutcome) -> Vec<String> {
    let mut warnings: Vec<String> = outcome
        .manifest
        .content
        .iter()
        .flat_map(|c| &c.restore_hazards)
        .map(|h| format!("restore-order hazard: {}", h.describe()))
        .collect();
    warnings.extend(outcome.warnings.iter().cloned());
    warnings
}

/// The JSON document of a backup (also what a webhook receives).
pub fn backup_document(outcome: &BackupOutcome) -> Value {
    let m = &outcome.manifest;
    json!({
        "message-type": "backup",
        "status": "complete",
        "warnings": backup_warnings(outcome),
        "id": m.id,
        "artifact-path": outcome.artifact_path,
        "manifest-path": outcome.manifest_path,
        "envelope": m.envelope(),
        "manifest": m,
    })
}

pub fn backup(outcome: &BackupOutcome, json: bool) {
    let m = &outcome.manifest;
    let warnings = backup_warnings(outcome);
    if json {
        out_json(&backup_document(outcome));
        return;
    }
    let ratio = if m.archive.bytes > 0 {
        100.0 * m.artifact.bytes as f64 / m.archive.bytes as f64
    } else {
        0.0
    };
    let secs = m.duration_ms as f64 / 1000.0;
    let rate = if secs > 0.0 {
        m.archive.bytes as f64 / secs
    } else {
        0.0
    };
    let rows: u64 = m.tables.iter().map(|t| t.rows).sum();
    out(&format!(
        "backup {id} complete\n  \
         database  {db} on PostgreSQL {server} (system identifier {sysid})\n  \
         archive   {abytes}, {tables} tables with data, {rows} rows, sha256 {asha}\n  \
         stored    {sbytes} zstd-{level} ({ratio:.1}% of the archive), sha256 {ssha}\n  \
         encrypted {encrypted}\n  \
         artifact  {artifact}\n  \
         manifest  {manifest}\n  \
         took      {secs:.1} s ({rate}/s)\n",
        id = m.id,
        db = m.database,
        server = m.server.version,
        sysid = m.server.system_identifier,
        abytes = bytes(m.archive.bytes),
        tables = m.tables.len(),
        asha = m.archive.sha256,
        sbytes = bytes(m.artifact.bytes),
        level = m.artifact.compression.level,
        ssha = m.artifact.sha256,
        encrypted = match &m.artifact.encryption {
            Some(e) => format!("{} to {}", e.scheme, recipients(e)),
            None => "no (no recipient configured)".to_string(),
        },
        artifact = outcome.artifact_path.display(),
        manifest = outcome.manifest_path.display(),
        rate = bytes(rate as u64),
    ));
    for warning in &warnings {
        err(&format!("pgward: warning: {warning}\n"));
    }
}

pub fn list(listing: &Listing, json: bool) {
    if json {
        let backups: Vec<Value> = listing
            .backups
            .iter()
            .map(|m| {
                json!({
                    "id": m.id, "status": m.status, "database": m.database,
                    "started-at": m.started_at, "finished-at": m.finished_at,
                    "archive-bytes": m.archive.bytes, "artifact-bytes": m.artifact.bytes,
                    "artifact-sha256": m.artifact.sha256, "tables": m.tables.len(), "scope": m.scope,
                    "encryption": m.artifact.encryption,
                    "last-drill": if listing.unreadable_drills.contains(&m.id) {
                        json!({"verdict": "damaged"})
                    } else {
                        json!(listing.drills.get(&m.id).map(|d| json!({
                            "finished-at": d.finished_at, "verdict": d.verdict,
                            "first-failure": d.first_failure,
                        })))
                    },
                })
            })
            .collect();
        out_json(&json!({
            "message-type": "list",
            "backups": backups,
            "quarantine": listing.quarantine,
            "orphans": listing.orphans,
            "damaged": listing.damaged,
        }));
        return;
    }
    let mut text = String::new();
    if listing.backups.is_empty() {
        text.push_str("no backups\n");
    } else {
        text.push_str(&format!(
            "{:<40} {:<24} {:<16} {:>10} {:>10} {:>6}  {:<10} {:<8} {}\n",
            "ID",
            "STARTED (UTC)",
            "DATABASE",
            "ARCHIVE",
            "STORED",
            "TABLES",
            "KEY",
            "STATUS",
            "LAST DRILL"
        ));
        for m in &listing.backups {
            let key = match &m.artifact.encryption {
                Some(e) => recipients(e),
                None => "none".to_string(),
            };
            let drill = match listing.drills.get(&m.id) {
                _ if listing.unreadable_drills.contains(&m.id) => "DAMAGED record".to_string(),
                Some(d) if d.passed() => format!("PASS {}", d.finished_at),
                Some(d) => format!("FAIL {}", d.finished_at),
                None => "never".to_string(),
            };
            text.push_str(&format!(
                "{:<40} {:<24} {:<16} {:>10} {:>10} {:>6}  {:<10} {:<8} {}\n",
                m.id,
                m.started_at,
                m.database,
                bytes(m.archive.bytes),
                bytes(m.artifact.bytes),
                m.tables.len(),
                key,
                "complete",
                drill
            ));
        }
    }
    if !listing.quarantine.is_empty() {
        text.push_str(&format!(
            "\nquarantine (failed runs, never counted as backups): {}\n",
            listing.quarantine.len()
        ));
        for q in &listing.quarantine {
            text.push_str(&format!(
                "  {:<40} {:<24} {:<16} {}\n",
                q.id, q.quarantined_at, q.database, q.error.message
            ));
        }
    }
    if !listing.orphans.is_empty() {
        text.push_str("\nartifacts without a manifest (not backups):\n");
        for name in &listing.orphans {
            text.push_str(&format!("  {name}\n"));
        }
    }
    if !listing.damaged.is_empty() {
        text.push_str("\nDAMAGED files (not trusted, never counted as backups; inspect them):\n");
        for d in &listing.damaged {
            text.push_str(&format!("  DAMAGED {}: {}\n", d.file, d.cause));
        }
    }
    out(&text);
}

pub fn verify(report: &VerifyReport, json: bool) {
    if json {
        let mut value = serde_json::to_value(report).expect("reports serialise");
        value["message-type"] = json!("verify");
        out_json(&value);
        return;
    }
    let mut text = format!("verify {}\n", report.id);
    for check in &report.checks {
        text.push_str(&format!(
            "  {:<4} {:<18} {}\n",
            match (check.ok, check.skipped) {
                (_, true) => "skip",
                (true, false) => "ok",
                (false, false) => "FAIL",
            },
            check.name,
            check.detail
        ));
    }
    text.push_str(if report.ok && !report.content_checked {
        "stored bytes intact; content NOT checked (give --secret-key or --gpg to decrypt)\n"
    } else if report.ok {
        "intact\n"
    } else {
        "NOT INTACT\n"
    });
    out(&text);
}

pub fn copy(report: &pgward::copy::CopyReport, json: bool) {
    if json {
        let mut value = serde_json::to_value(report).expect("reports serialise");
        value["message-type"] = json!("copy");
        out_json(&value);
        return;
    }
    let mut text = format!("copy {} -> {}\n", report.from, report.to);
    for backup in &report.backups {
        text.push_str(&format!(
            "  {:<13} {} ({})\n",
            match backup.outcome {
                pgward::copy::CopyOutcome::Copied => "copied",
                pgward::copy::CopyOutcome::AlreadyThere => "already there",
            },
            backup.id,
            match backup.outcome {
                pgward::copy::CopyOutcome::Copied => format!(
                    "{} sent, verified at the destination, {:.1}s",
                    pgward::config::format_size(backup.bytes_sent),
                    backup.seconds
                ),
                pgward::copy::CopyOutcome::AlreadyThere => "same manifest".to_string(),
            }
        ));
    }
    if report.backups.is_empty() {
        text.push_str("  nothing to copy: the destination has every backup\n");
    }
    out(&text);
}

fn drill_checks_text(checks: &[pgward::repository::manifest::DrillCheck]) -> String {
    let mut text = String::new();
    for check in checks {
        text.push_str(&format!(
            "  {:<8} {:<32} {}\n",
            if check.ok {
                "ok"
            } else if check.fails() {
                "FAIL"
            } else {
                "ACCEPTED"
            },
            check.name,
            check.detail
        ));
    }
    text
}

pub fn restore(report: &pgward::restore::RestoreReport, json: bool) {
    if json {
        let mut value = serde_json::to_value(report).expect("reports serialise");
        value["message-type"] = json!("restore");
        out_json(&value);
        return;
    }
    let mut text = format!(
        "restored backup {} into {} on {} ({}, {:.1} s); verified like a drill ({:.1} s):\n",
        report.backup_id,
        report.database,
        report.server,
        report.feed,
        report.restore_ms as f64 / 1000.0,
        report.verify_ms as f64 / 1000.0
    );
    text.push_str(&drill_checks_text(&report.checks));
    text.push_str(&notes_text(&report.notes));
    text.push_str(if report.ok {
        "every restored table, sequence and large object equals the backup; the schema came back\n"
    } else {
        "the restored database does NOT match the backup; it was kept for inspection\n"
    });
    out(&text);
}

/// What a verdict cannot vouch for, one `note:` line each.
fn notes_text(notes: &[String]) -> String {
    notes.iter().map(|n| format!("  note     {n}\n")).collect()
}

/// The JSON document of a drill.
pub fn drill_document(report: &pgward::drill::DrillReport) -> Value {
    let mut value = serde_json::to_value(report).expect("reports serialise");
    value["message-type"] = json!("drill");
    value
}

pub fn drill(report: &pgward::drill::DrillReport, json: bool) {
    let record = &report.record;
    if json {
        out_json(&drill_document(report));
        return;
    }
    let mut text = format!(
        "drill of backup {} in {}{}\n",
        record.backup_id,
        record.restored_to,
        match &report.restore {
            Some(r) => format!(
                " ({}; restore {:.1} s, verification {:.1} s)",
                r.feed,
                r.restore_ms as f64 / 1000.0,
                r.verify_ms as f64 / 1000.0
            ),
            None => String::new(),
        }
    );
    text.push_str(&drill_checks_text(&record.checks));
    text.push_str(&notes_text(&record.notes));
    if !record.accepted_findings.is_empty() {
        text.push_str(&format!(
            "accepted findings ([drill] accept): {}\n",
            record.accepted_findings.join(", ")
        ));
    }
    text.push_str(&format!(
        "{}; scratch database {}; verdict recorded beside the backup\n",
        if record.passed() { "PASS" } else { "FAIL" },
        if record.kept { "kept" } else { "dropped" }
    ));
    out(&text);
}

fn matrix_text(report: &CheckReport) -> String {
    let mut text = format!("pgward check: {}\n", report.target);
    for item in &report.matrix.items {
        let status = match item.status {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        text.push_str(&format!(
            "  {status:<4}  {:<30} {}\n",
            item.id, item.evidence
        ));
        if let Some(hint) = &item.hint
            && item.status != Status::Pass
        {
            text.push_str(&format!("        {:<30} hint: {hint}\n", ""));
        }
    }
    let warnings = report
        .matrix
        .items
        .iter()
        .filter(|i| i.status == Status::Warn)
        .count();
    text.push_str(&format!(
        "verdict: {} ({} items, {} failed, {warnings} warnings)\n",
        match report.verdict {
            Status::Pass => "PASS",
            Status::Warn => "PASS with warnings",
            Status::Fail => "FAIL",
        },
        report.matrix.items.len(),
        report.matrix.failures()
    ));
    text
}

/// The JSON document of a check.
pub fn check_document(report: &CheckReport) -> Value {
    let mut value = serde_json::to_value(report).expect("reports serialise");
    value["message-type"] = json!("check");
    value
}

pub fn check(report: &CheckReport, json: bool) {
    if json {
        out_json(&check_document(report));
    } else {
        out(&matrix_text(report));
    }
}

/// The JSON document of a prune.
pub fn prune_document(report: &pgward::prune::PruneReport) -> Value {
    let mut value = serde_json::to_value(report).expect("reports serialise");
    value["message-type"] = json!("prune");
    value
}

pub fn prune(report: &pgward::prune::PruneReport, json: bool) {
    if json {
        out_json(&prune_document(report));
        return;
    }
    let mut text = String::new();
    if report.dry_run {
        text.push_str("dry run: nothing was removed\n");
    }
    for id in &report.finished_removals {
        text.push_str(&format!("finished the interrupted removal of {id}\n"));
    }
    text.push_str(&format!(
        "{:<7} {:<34} {:<20} {:<24} WHY\n",
        "ACTION", "ID", "DATABASE", "STARTED"
    ));
    for backup in &report.backups {
        let in_use = report.skipped_in_use.contains(&backup.id);
        let action = match (backup.action, in_use) {
            (_, true) => "KEEP*",
            ("keep", _) => "KEEP",
            _ => "DELETE",
        };
        let why = if in_use {
            "in use by a restore or drill (kept)".to_string()
        } else {
            backup.reasons.join(", ")
        };
        text.push_str(&format!(
            "{action:<7} {:<34} {:<20} {:<24} {why}\n",
            backup.id, backup.database, backup.started_at
        ));
    }
    for id in &report.quarantine_removed {
        text.push_str(&format!(
            "{} quarantined run {id} (older than quarantine-keep)\n",
            if report.dry_run {
                "would remove"
            } else {
                "removed"
            }
        ));
    }
    text.push_str(&format!(
        "{} kept, {} {}\n",
        report.kept,
        report.deleted,
        if report.dry_run {
            "to delete"
        } else {
            "deleted"
        }
    ));
    out(&text);
}

/// The JSON document of a run.
pub fn run_document(report: &pgward::run::RunReport) -> Value {
    let mut value = serde_json::to_value(report).expect("reports serialise");
    value["message-type"] = json!("run");
    value["exit-code"] = json!(report.exit_code());
    value
}

pub fn run(report: &pgward::run::RunReport, json: bool) {
    if json {
        out_json(&run_document(report));
        return;
    }
    let mut text = String::new();
    for step in &report.steps {
        text.push_str(&format!(
            "{:<7} {:<8} {}\n",
            step.name,
            step.status.to_uppercase(),
            step.detail
        ));
    }
    text.push_str(&format!(
        "run {} in {:.1} s\n",
        if report.ok { "OK" } else { "FAILED" },
        report.duration_ms as f64 / 1000.0
    ));
    if report.ok {
        out(&text);
    } else {
        // A failed run is said even with --quiet.
        write_stdout(&text);
    }
}

pub fn apply_document(report: &pgward::apply::ApplyReport) -> Value {
    let mut value = serde_json::to_value(report).expect("reports serialise");
    value["message-type"] = json!("apply");
    value
}

pub fn apply(report: &pgward::apply::ApplyReport, json: bool) {
    if json {
        out_json(&apply_document(report));
        return;
    }
    let mut text = format!("apply {}: {}\n", report.id, report.status.name());
    for check in &report.checks {
        text.push_str(&format!(
            "  {:<4} {:<22} {}\n",
            check.status, check.name, check.evidence
        ));
    }
    // The delta that counts: the apply's, else the rehearsal's.
    if let Some(delta) = report
        .apply
        .as_ref()
        .or(report.rehearsal.as_ref())
        .and_then(|phase| phase.delta.as_ref())
    {
        for (what, names) in [
            ("created", &delta.created),
            ("dropped", &delta.dropped),
            ("altered", &delta.altered),
        ] {
            if !names.is_empty() {
                let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
                text.push_str(&format!("  {what}: {}\n", names.join(", ")));
            }
        }
        for (schema, kinds) in &delta.counts {
            let counts: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n:+}")).collect();
            text.push_str(&format!("  delta in {schema}: {}\n", counts.join(", ")));
        }
    }
    if let Some(cause) = &report.cause {
        text.push_str(&format!("cause: {cause}\n"));
    }
    for step in &report.remediation {
        text.push_str(&format!("remedy (not executed): {step}\n"));
    }
    text.push_str(&format!(
        "production changed: {} ({})\n",
        if report.production_changed {
            "yes"
        } else {
            "no"
        },
        report.production_evidence
    ));
    for path in &report.report_files {
        text.push_str(&format!("report: {}\n", path.display()));
    }
    for warning in &report.warnings {
        text.push_str(&format!("warning: {warning}\n"));
    }
    if report.succeeded() {
        out(&text);
    } else {
        write_stdout(&text);
    }
}

pub fn dry_run(plan: &DryRun, json: bool) {
    if json {
        let mut value = serde_json::to_value(plan).expect("plans serialise");
        value["message-type"] = json!("backup-plan");
        out_json(&value);
        return;
    }
    let mut text = matrix_text(&plan.check);
    text.push_str(&format!(
        "\ndry run: nothing was dumped or written. A backup would dump {} tables:\n",
        plan.check.tables.len()
    ));
    for table in &plan.check.tables {
        text.push_str(&format!("  {table}\n"));
    }
    if let Some(size) = plan.check.expected_backup_bytes {
        text.push_str(&format!("estimated stored size: ~{}\n", bytes(size)));
    }
    text.push_str(&format!("artifact: {}\n", plan.artifact_path.display()));
    text.push_str(&format!(
        "command:  {} {}\n",
        plan.pg_dump_program,
        plan.pg_dump_arguments.join(" ")
    ));
    out(&text);
}

pub fn grants(plan: &GrantPlan, revoke: bool, saved: Option<&std::path::Path>, json: bool) {
    if json {
        out_json(&json!({
            "message-type": if revoke { "revokes" } else { "grants" },
            "plan": plan,
            "sql": if revoke { plan.revoke_sql() } else { plan.grant_sql() },
            "saved-as": saved,
        }));
        return;
    }
    let mut text = if revoke {
        plan.revoke_sql()
    } else {
        plan.grant_sql()
    };
    if let Some(path) = saved {
        text.push_str(&format!(
            "-- plan and rollback saved as {}\n",
            path.display()
        ));
    }
    out(&text);
}

pub fn execution(
    plan: &GrantPlan,
    execution: &Execution,
    saved: Option<&std::path::Path>,
    json: bool,
) {
    if json {
        out_json(&json!({
            "message-type": "grants-executed",
            "plan": plan,
            "execution": execution,
            "saved-as": saved,
        }));
        return;
    }
    let mut text = format!(
        "executed plan {} as {} in one transaction:\n",
        plan.id, execution.executed_as
    );
    for statement in &execution.statements {
        text.push_str(&format!("  {statement}\n"));
    }
    text.push_str(&format!("before: {} gap(s)\n", execution.gaps_before.len()));
    for gap in &execution.gaps_before {
        text.push_str(&format!(
            "  role {} had no {} on {}\n",
            plan.role, gap.privilege, gap.object
        ));
    }
    text.push_str(&format!(
        "after (re-checked as {}): {} gap(s)\n",
        plan.role,
        execution.gaps_after.len()
    ));
    for gap in &execution.gaps_after {
        text.push_str(&format!(
            "  role {} has no {} on {}\n",
            plan.role, gap.privilege, gap.object
        ));
    }
    for acl in &execution.acl_after {
        text.push_str(&format!("  {}: {}\n", acl.object, acl.acl.join(" ")));
    }
    if let Some(path) = saved {
        text.push_str(&format!(
            "rollback: `pgward grants --revoke --plan {}` (saved as {})\n",
            plan.id,
            path.display()
        ));
    }
    out(&text);
}

/// Bytes and rate on a terminal's stderr, redrawn at most 4 times a
/// second; silent when stderr is not a terminal (cron, CI, pipes).
pub struct Progress {
    enabled: bool,
    started: Instant,
    last: Option<Instant>,
}

impl Progress {
    pub fn new(wanted: bool) -> Progress {
        Progress {
            enabled: wanted && std::io::stderr().is_terminal(),
            started: Instant::now(),
            last: None,
        }
    }

    pub fn update(&mut self, processed: u64) {
        if !self.enabled
            || self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_millis(250))
        {
            return;
        }
        self.last = Some(Instant::now());
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let line = format!(
            "\r\x1b[2K  {} read, {}/s",
            bytes(processed),
            bytes((processed as f64 / secs) as u64)
        );
        // After the first failed write (the terminal went away) stay silent.
        self.enabled = err(&line);
    }

    pub fn clear(&mut self) {
        if self.enabled && self.last.is_some() {
            err("\r\x1b[2K");
        }
    }
}

/// Recipients as people read them: last 8 digits of each fingerprint.
fn recipients(encryption: &pgward::repository::manifest::EncryptionRecord) -> String {
    encryption
        .recipients
        .iter()
        .map(|r| pgward::encryption::short(&r.fingerprint))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn key_generated(key: &pgward::encryption::keygen::WrittenKey, json: bool) {
    if json {
        let mut value = serde_json::to_value(key).expect("keys serialise");
        value["message-type"] = json!("key-generated");
        out_json(&value);
        return;
    }
    out(&format!(
        "key generated\n  \
         fingerprint     {fpr}\n  \
         encryption key  {enc}\n  \
         secret key      {secret} (passphrase-protected; move it to your vault, keep it off the backup host)\n  \
         certificate     {public}\n\
         add to the configuration:\n  \
         [[encryption.recipient]]\n  \
         certificate = {public:?}\n  \
         fingerprint = \"{fpr}\"\n",
        fpr = key.fingerprint,
        enc = key.encryption_key,
        secret = key.secret_key.display(),
        public = key.certificate.display().to_string(),
    ));
}

pub fn key_info(info: &pgward::encryption::certificate::CertificateInfo, json: bool) {
    if json {
        let mut value = serde_json::to_value(info).expect("certificates serialise");
        value["message-type"] = json!("key");
        out_json(&value);
        return;
    }
    let expires = |e: &Option<String>| e.clone().unwrap_or_else(|| "never".to_string());
    let mut text = format!(
        "certificate {}\n  fingerprint  {}\n  primary      {}, created {}, expires {}{}\n",
        info.file,
        info.fingerprint,
        info.algorithm,
        info.created,
        expires(&info.expires),
        if info.revoked { ", REVOKED" } else { "" },
    );
    for uid in &info.user_ids {
        text.push_str(&format!("  user id      {uid}\n"));
    }
    for sub in &info.subkeys {
        text.push_str(&format!(
            "  subkey       {} {}, created {}, expires {}{}{}\n",
            sub.fingerprint,
            sub.algorithm,
            sub.created,
            expires(&sub.expires),
            if sub.encryption_capable {
                ", encrypt"
            } else {
                ", no encryption"
            },
            if sub.revoked { ", REVOKED" } else { "" },
        ));
    }
    text.push_str(&match &info.encryption_key {
        Some(key) => format!("  encrypts to  {key}\n"),
        None => {
            "  encrypts to  nothing: no usable encryption key (signing-only, expired or revoked)\n"
                .to_string()
        }
    });
    out(&text);
}

pub fn journal(records: &[pgward::journal::Record], json: bool) {
    if json {
        out_json(&json!({"message-type": "log", "records": records}));
        return;
    }
    let mut text = format!(
        "{:>5} {:<24} {:<8} {:<20} {:<7} {:<34} CAUSE\n",
        "SEQ", "STARTED", "COMMAND", "DATABASE", "OUTCOME", "RUN"
    );
    for r in records {
        text.push_str(&format!(
            "{:>5} {:<24} {:<8} {:<20} {:<7} {:<34} {}\n",
            r.sequence,
            r.started_at,
            r.command,
            r.database.as_deref().unwrap_or("-"),
            r.outcome.to_uppercase(),
            r.run_id,
            r.cause.as_deref().unwrap_or("")
        ));
    }
    out(&text);
}

pub fn journal_verification(
    verification: &pgward::journal::Verification,
    head_only: bool,
    json: bool,
) {
    if json {
        let mut value = serde_json::to_value(verification).expect("serialises");
        value["message-type"] = json!("log-verify");
        value["intact"] = json!(verification.intact());
        out_json(&value);
        return;
    }
    if head_only {
        if let Some(head) = &verification.head {
            write_stdout(&format!("{head}\n"));
        }
        return;
    }
    match &verification.broken {
        None => out(&format!(
            "journal intact: {} records, head {}\n",
            verification.records,
            verification.head.as_deref().unwrap_or("(empty)")
        )),
        Some(broken) => write_stdout(&format!("journal BROKEN: {broken}\n")),
    }
}

pub fn status(report: &pgward::status::StatusReport, format: &str) {
    match format {
        "json" => {
            let mut value = serde_json::to_value(report).expect("serialises");
            value["message-type"] = json!("status");
            out_json(&value);
            return;
        }
        "prometheus" => {
            write_stdout(&pgward::status::prometheus(report));
            return;
        }
        _ => {}
    }
    let mut text = String::new();
    for database in &report.databases {
        let name = if database.scope == "whole" {
            database.database.clone()
        } else {
            format!("{} [{}]", database.database, database.scope)
        };
        for objective in &database.objectives {
            text.push_str(&format!(
                "{:<6} {:<20} {:<6} {}\n",
                objective.verdict.name(),
                name,
                objective.name,
                objective.detail
            ));
        }
        if let Some(backup) = &database.last_backup {
            text.push_str(&format!(
                "{:<6} {:<20} {:<6} {} archive, {} stored{}; {} quarantined run(s)\n",
                "",
                "",
                "",
                pgward::config::format_size(backup.archive_bytes),
                pgward::config::format_size(backup.stored_bytes),
                if backup.encrypted_to.is_empty() {
                    ", not encrypted".to_string()
                } else {
                    format!(", encrypted to {}", backup.encrypted_to.join(", "))
                },
                database.quarantined
            ));
            text.push_str(&format!(
                "{:<6} {:<20} {:<6} copies: {}\n",
                "",
                "",
                "",
                if backup.copies.is_empty() {
                    "none recorded (this repository only)".to_string()
                } else {
                    backup.copies.join(", ")
                }
            ));
        }
    }
    text.push_str(&format!(
        "{:<6} {:<20} {:<6} {}\n",
        if report.journal.intact() {
            "OK"
        } else {
            "FAILED"
        },
        "(repository)",
        "journal",
        match &report.journal.broken {
            None => format!(
                "{} records, chain intact; repository {}",
                report.journal.records,
                pgward::config::format_size(report.repository_bytes)
            ),
            Some(broken) => broken.clone(),
        }
    ));
    text.push_str(&format!("status {}\n", report.verdict.name()));
    if report.ok() {
        out(&text);
    } else {
        write_stdout(&text);
    }
}

/// One journaled run for a reviewer: Markdown, or its JSON twin.
pub fn run_report(
    record: &pgward::journal::Record,
    chain: &pgward::journal::Verification,
    repo: &pgward::Repository,
    json: bool,
) {
    // What the repository still holds about the run, as evidence.
    let manifest = repo
        .backups()
        .ok()
        .and_then(|backups| backups.into_iter().find(|m| m.id == record.run_id));
    let drill = repo.drill_record(&record.run_id).ok().flatten();
    if json {
        out_json(&json!({
            "message-type": "report",
            "record": record,
            "journal": chain,
            "backup": manifest.as_ref().map(|m| json!({
                "id": m.id, "database": m.database, "archive-bytes": m.archive.bytes,
                "archive-sha256": m.archive.sha256, "stored-bytes": m.artifact.bytes,
                "stored-sha256": m.artifact.sha256, "tables": m.tables.len(),
                "encrypted": m.artifact.encryption.is_some(),
            })),
            "drill": drill,
        }));
        return;
    }
    let mut md = format!(
        "# pgward {} {}: {}\n\n",
        record.command,
        record.run_id,
        if record.outcome == "ok" {
            "OK"
        } else {
            "FAILED"
        }
    );
    if let Some(cause) = &record.cause {
        md.push_str(&format!("**Cause:** {cause}\n\n"));
    }
    md.push_str("| | |\n|---|---|\n");
    let rows = [
        ("command", record.command.clone()),
        ("database", record.database.clone().unwrap_or("-".into())),
        ("options", record.options.join("; ")),
        ("host", record.host.clone()),
        ("pgward", record.pgward_version.clone()),
        ("started", record.started_at.clone()),
        ("finished", record.finished_at.clone()),
        ("duration", format!("{} ms", record.duration_ms)),
        ("exit code", record.exit_code.to_string()),
        (
            "journal",
            format!(
                "record {} of {}; chain {}",
                record.sequence,
                chain.records,
                match &chain.broken {
                    None => "intact".to_string(),
                    Some(broken) => format!("BROKEN: {broken}"),
                }
            ),
        ),
    ];
    for (key, value) in rows {
        md.push_str(&format!("| {key} | {} |\n", value.replace('|', "\\|")));
    }
    if !record.artifacts.is_empty() {
        md.push_str("\n## Files\n\n| file | bytes | sha256 |\n|---|---|---|\n");
        for a in &record.artifacts {
            md.push_str(&format!("| {} | {} | {} |\n", a.path, a.bytes, a.sha256));
        }
    }
    if let Some(m) = &manifest {
        md.push_str(&format!(
            "\n## Backup\n\n{} of {}: {} tables, archive {} bytes (sha256 {}), stored {} bytes (sha256 {}), {}\n",
            m.id,
            m.database,
            m.tables.len(),
            m.archive.bytes,
            m.archive.sha256,
            m.artifact.bytes,
            m.artifact.sha256,
            if m.artifact.encryption.is_some() { "encrypted" } else { "not encrypted" }
        ));
    }
    if let Some(d) = &drill {
        md.push_str(&format!(
            "\n## Last drill of this backup\n\n{} at {}{}\n",
            d.verdict.to_uppercase(),
            d.finished_at,
            d.first_failure
                .as_ref()
                .map(|f| format!(": {f}"))
                .unwrap_or_default()
        ));
    }
    out(&md);
}
