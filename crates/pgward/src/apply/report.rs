//! The apply report as Markdown, for a change ticket: the same facts as
//! the JSON twin, in the order a reviewer reads them.

use super::{ApplyReport, Phase};
use std::fmt::Write;

pub fn markdown(report: &ApplyReport) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# pgward apply {}: {}\n",
        report.id,
        report.status.name()
    );
    if let Some(cause) = &report.cause {
        let _ = writeln!(md, "**Cause:** {cause}\n");
    }
    if !report.remediation.is_empty() {
        md.push_str("**What can be done** (pgward executed none of it):\n\n");
        for step in &report.remediation {
            let _ = writeln!(md, "- {step}");
        }
        md.push('\n');
    }
    let _ = writeln!(
        md,
        "**Production changed:** {} — {}\n",
        if report.production_changed {
            "yes"
        } else {
            "no"
        },
        report.production_evidence
    );
    md.push_str("| | |\n|---|---|\n");
    let target = &report.target;
    let rows = [
        ("package", report.package.display().to_string()),
        (
            "artifact",
            format!(
                "{} ({} bytes, {} statements)",
                report.artifact.path.display(),
                report.artifact.bytes,
                report.artifact.statements
            ),
        ),
        (
            "artifact sha256",
            report.artifact.sha256.clone().unwrap_or("unread".into()),
        ),
        ("approved sha256", report.artifact.approved_sha256.clone()),
        ("database", target.database.clone()),
        ("system identifier", target.system_identifier.clone()),
        ("role", target.role.clone()),
        ("session", target.session.clone().unwrap_or_default()),
        (
            "server",
            target
                .server_version
                .clone()
                .unwrap_or("not reached".into()),
        ),
        ("started", report.started_at.clone()),
        ("finished", report.finished_at.clone()),
        ("duration", format!("{} ms", report.duration_ms)),
    ];
    for (key, value) in rows {
        let _ = writeln!(md, "| {key} | {} |", cell(&value));
    }
    md.push_str("\n## Checks\n\n| check | result | evidence |\n|---|---|---|\n");
    for check in &report.checks {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            check.name,
            check.status,
            cell(&check.evidence)
        );
    }
    if !report.refused_statements.is_empty() {
        md.push_str(
            "\n## Refused statements\n\n| # | line | statement | why |\n|---|---|---|---|\n",
        );
        for r in &report.refused_statements {
            let _ = writeln!(
                md,
                "| {} | {} | `{}` | {} |",
                r.number,
                r.line,
                cell(&r.summary),
                cell(&r.reason)
            );
        }
    }
    if let Some(phase) = &report.rehearsal {
        phase_section(&mut md, "Rehearsal (rolled back)", phase);
    }
    if let Some(backup) = &report.backup {
        let _ = writeln!(
            md,
            "\n## Backup before the change\n\n| | |\n|---|---|\n| id | {} |\n| artifact | {} |\n| archive | {} format, {} bytes, sha256 {} |\n| stored | {} bytes, sha256 {}, {} |\n| tables | {} |",
            backup.id,
            backup.artifact,
            backup.archive_format,
            backup.archive_bytes,
            backup.archive_sha256,
            backup.stored_bytes,
            backup.stored_sha256,
            if backup.encrypted {
                "encrypted"
            } else {
                "not encrypted"
            },
            backup.tables
        );
    }
    if let Some(phase) = &report.apply {
        phase_section(&mut md, "Apply", phase);
    }
    for (title, baseline) in [
        ("Baseline before", &report.baseline_before),
        ("Baseline after", &report.baseline_after),
    ] {
        if let Some(baseline) = baseline {
            let _ = writeln!(
                md,
                "\n## {title}\n\n{} objects, digest `{}`\n\n| schema | counts |\n|---|---|",
                baseline.objects, baseline.digest
            );
            for (schema, kinds) in &baseline.counts {
                let counts: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
                let _ = writeln!(md, "| {} | {} |", cell(schema), counts.join(", "));
            }
        }
    }
    for warning in &report.warnings {
        let _ = writeln!(md, "\n> warning: {warning}");
    }
    md
}

fn phase_section(md: &mut String, title: &str, phase: &Phase) {
    let _ = writeln!(
        md,
        "\n## {title}\n\n{} statements ran in {} ms; ended with {}.\n",
        phase.statements_run, phase.duration_ms, phase.ended_with
    );
    if let Some(failure) = &phase.failure {
        let _ = writeln!(md, "**Failed:** {}\n", failure.describe());
    }
    if let Some(delta) = &phase.delta {
        md.push_str("| delta | objects |\n|---|---|\n");
        for (what, names) in [
            ("created", &delta.created),
            ("dropped", &delta.dropped),
            ("altered", &delta.altered),
        ] {
            let names: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
            let _ = writeln!(
                md,
                "| {what} ({}) | {} |",
                names.len(),
                if names.is_empty() {
                    "none".to_string()
                } else {
                    cell(&names.join(", "))
                }
            );
        }
        for (schema, kinds) in &delta.counts {
            let counts: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n:+}")).collect();
            let _ = writeln!(md, "| in {} | {} |", cell(schema), counts.join(", "));
        }
    }
    for mismatch in &phase.mismatches {
        let _ = writeln!(md, "\n- mismatch: {mismatch}");
    }
}

/// Text safe inside a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}
