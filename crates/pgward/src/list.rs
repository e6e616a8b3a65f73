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

/// The listing, of one database's backups when `database` is given.
pub fn run(repo: &Repository, database: Option<&str>) -> Result<Listing> {
    let mut catalog = repo.catalog()?;
    if let Some(database) = database {
        catalog.backups.retain(|m| m.database == database);
        catalog
            .damaged
            .retain(|d| d.id.is_none() || d.is_of_database(database));
    }
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
    let (mut quarantine, damaged_records) = repo.quarantined()?;
    damaged.extend(damaged_records);
    if let Some(database) = database {
        quarantine.retain(|q| q.database == database);
    }
    Ok(Listing {
        backups: catalog.backups,
        quarantine,
        orphans: repo
            .orphans()?
            .into_iter()
            .filter(|name| {
                database.is_none_or(|database| {
                    crate::repository::id_database_key(name.split('.').next().unwrap_or_default())
                        == Some(crate::repository::database_key(database).as_str())
                })
            })
            .collect(),
        drills,
        damaged,
        unreadable_drills,
    })
}
