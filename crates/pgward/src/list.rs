//! `pgward list`: the repository's catalog. Only what has an intact
//! manifest is a backup; quarantined runs, manifest-less artifacts and
//! damaged files are shown apart so that nobody mistakes them for backups,
//! and one damaged file never hides the rest.

use crate::error::Result;
use crate::repository::manifest::{DrillRecord, Manifest, QuarantineRecord};
use crate::repository::{DamagedFile, Repository};
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct Listing {
    /// Newest first.
    pub backups: Vec<Manifest>,
    /// Newest first.
    pub quarantine: Vec<QuarantineRecord>,
    /// Artifact files in `backups/` without a manifest.
    pub orphans: Vec<String>,
    /// The last drill of each backup that was drilled, by backup id.
    pub drills: BTreeMap<String, DrillRecord>,
    /// Files that cannot be trusted (manifests, drill records, quarantine
    /// records), with their cause.
    pub damaged: Vec<DamagedFile>,
    /// Backups whose drill record cannot be read: their last drill is
    /// unknown, never "never drilled".
    pub unreadable_drills: std::collections::BTreeSet<String>,
}

pub fn run(repo: &Repository) -> Result<Listing> {
    let catalog = repo.catalog()?;
    let mut damaged = catalog.damaged;
    let mut drills = BTreeMap::new();
    let mut unreadable_drills = std::collections::BTreeSet::new();
    for manifest in &catalog.backups {
        match repo.drill_record(&manifest.id) {
            Ok(Some(record)) => {
                drills.insert(manifest.id.clone(), record);
            }
            Ok(None) => {}
            Err(e) => {
                unreadable_drills.insert(manifest.id.clone());
                damaged.push(DamagedFile {
                    file: format!("backups/{}.drill.json", manifest.id),
                    cause: e.message().to_string(),
                    id: Some(manifest.id.clone()),
                });
            }
        }
    }
    let (quarantine, damaged_records) = repo.quarantined()?;
    damaged.extend(damaged_records);
    Ok(Listing {
        backups: catalog.backups,
        quarantine,
        orphans: repo.orphans()?,
        drills,
        damaged,
        unreadable_drills,
    })
}
