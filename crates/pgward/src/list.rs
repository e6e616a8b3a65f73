//! `pgward list`: the repository's catalog. Only what has a manifest is a
//! backup; quarantined runs and manifest-less artifacts are shown apart so
//! that nobody mistakes them for backups.

use crate::error::Result;
use crate::repository::Repository;
use crate::repository::manifest::{DrillRecord, Manifest, QuarantineRecord};
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
}

pub fn run(repo: &Repository) -> Result<Listing> {
    let backups = repo.backups()?;
    let mut drills = BTreeMap::new();
    for manifest in &backups {
        if let Some(record) = repo.drill_record(&manifest.id)? {
            drills.insert(manifest.id.clone(), record);
        }
    }
    Ok(Listing {
        backups,
        quarantine: repo.quarantined()?,
        orphans: repo.orphans()?,
        drills,
    })
}
