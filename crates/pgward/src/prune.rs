//! `pgward prune`: the retention policy applied. The plan is
//! [`crate::retention::plan`], the same for `--dry-run` and for real; a
//! backup is then removed only if nothing holds it at that moment, the
//! manifest first (see [`crate::repository::removal`]). Quarantined runs
//! are never backups: they go when older than `quarantine-keep`.

use crate::clock;
use crate::config::{Config, parse_duration};
use crate::error::{Error, Result};
use crate::repository::Repository;
use crate::retention::{Candidate, Decision, Reason, RetentionPolicy, plan};
use serde::Serialize;

#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// Plan and report; remove nothing.
    pub dry_run: bool,
    /// Only the backups of this database.
    pub database: Option<String>,
}

/// Every backup's decision and what was done.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PruneReport {
    pub dry_run: bool,
    /// Newest first within each database and scope.
    pub backups: Vec<PrunedBackup>,
    /// Quarantined runs older than `quarantine-keep` (removed unless a
    /// dry run).
    pub quarantine_removed: Vec<String>,
    /// Removals a killed prune had left half done, finished now.
    pub finished_removals: Vec<String>,
    pub kept: usize,
    pub deleted: usize,
    /// Backups the plan deleted but a restore or drill held: kept.
    pub skipped_in_use: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PrunedBackup {
    pub id: String,
    pub database: String,
    pub started_at: String,
    /// `keep` or `delete` (what was decided; see `skipped-in-use`).
    pub action: &'static str,
    /// The rules that keep it, in words.
    pub reasons: Vec<&'static str>,
}

/// The default of `policy.quarantine-keep`.
pub const DEFAULT_QUARANTINE_KEEP: &str = "30d";

pub fn run(repo: &Repository, config: &Config, options: &PruneOptions) -> Result<PruneReport> {
    let policy = RetentionPolicy::from_config(&config.policy)?.ok_or_else(|| {
        Error::config("no retention policy: [policy] sets no keep rule")
            .with_hint("set keep-last, keep-daily, keep-weekly, keep-monthly, keep-yearly or keep-within in [policy]; pgward never prunes without one")
    })?;
    let quarantine_keep = parse_duration(
        config
            .policy
            .quarantine_keep
            .as_deref()
            .unwrap_or(DEFAULT_QUARANTINE_KEEP),
    )
    .map_err(|e| Error::config(format!("policy.quarantine-keep: {e}")))?;
    let now = clock::now();
    let finished_removals = if options.dry_run {
        Vec::new()
    } else {
        repo.finish_interrupted_removals()?
    };

    let catalog = repo.catalog()?;
    let backups: Vec<_> = catalog
        .backups
        .into_iter()
        .filter(|m| options.database.as_deref().is_none_or(|d| m.database == d))
        .collect();
    let mut candidates: Vec<Candidate> = backups
        .iter()
        .map(|m| Candidate {
            id: m.id.clone(),
            database: m.database.clone(),
            scope: m.scope.clone(),
            started_at: m.started_at.parse().unwrap_or(jiff::Timestamp::MIN),
            drill_passed: matches!(repo.drill_record(&m.id), Ok(Some(r)) if r.verdict == "pass" && r.backup_id == m.id),
            in_use: false,
        })
        .collect();
    // Whether a backup is in use only matters for those the policy would
    // delete: only they are probed, and the plan is made again with what
    // the probe found (the removal below probes once more, holding it).
    let mut decisions = plan(&candidates, &policy);
    let index_of: std::collections::HashMap<String, usize> = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| (c.id.clone(), i))
        .collect();
    let mut found_in_use = false;
    for decision in decisions.iter().filter(|d| !d.keep) {
        let index = index_of[&decision.id];
        if repo.try_hold_for_removal(&backups[index]).is_none() {
            candidates[index].in_use = true;
            found_in_use = true;
        }
    }
    if found_in_use {
        decisions = plan(&candidates, &policy);
    }

    let mut skipped_in_use = Vec::new();
    let mut deleted = 0;
    if !options.dry_run {
        for decision in decisions.iter().filter(|d| !d.keep) {
            let manifest = &backups[index_of[&decision.id]];
            // Held now, or a restore or drill started since the plan.
            match repo.try_hold_for_removal(manifest) {
                Some(held) => {
                    repo.remove_backup(manifest, &held)?;
                    deleted += 1;
                }
                None => skipped_in_use.push(decision.id.clone()),
            }
        }
    } else {
        deleted = decisions.iter().filter(|d| !d.keep).count();
    }

    let (quarantined, _) = repo.quarantined()?;
    let mut quarantine_removed = Vec::new();
    for record in quarantined {
        if options
            .database
            .as_deref()
            .is_some_and(|d| record.database != d)
        {
            continue;
        }
        let old = record
            .quarantined_at
            .parse::<jiff::Timestamp>()
            .is_ok_and(|at| now.duration_since(at) > quarantine_keep);
        if !old {
            continue;
        }
        if !options.dry_run {
            repo.remove_quarantined(&record)?;
        }
        quarantine_removed.push(record.id.clone());
    }

    let started = |id: &str| {
        index_of
            .get(id)
            .map(|i| backups[*i].started_at.clone())
            .unwrap_or_default()
    };
    let rows: Vec<PrunedBackup> = decisions
        .iter()
        .map(|d: &Decision| PrunedBackup {
            id: d.id.clone(),
            database: d.database.clone(),
            started_at: started(&d.id),
            action: if d.keep { "keep" } else { "delete" },
            reasons: d.reasons.iter().map(|r: &Reason| r.describe()).collect(),
        })
        .collect();
    Ok(PruneReport {
        dry_run: options.dry_run,
        kept: rows.iter().filter(|r| r.action == "keep").count() + skipped_in_use.len(),
        deleted: deleted.min(rows.len()),
        backups: rows,
        quarantine_removed,
        finished_removals,
        skipped_in_use,
    })
}
