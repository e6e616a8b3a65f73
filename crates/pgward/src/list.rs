//! `pgward list`: the repository's catalog. Only what has a manifest is a
//! backup; quarantined runs and manifest-less artifacts are shown apart so
//! that nobody mistakes them for backups.

use crate::error::Result;
use crate::repository::Repository;
use crate::repository::manifest::{Manifest, QuarantineRecord};

#[derive(Debug, Clone)]
pub struct Listing {
    /// Newest first.
    pub backups: Vec<Manifest>,
    /// Newest first.
    pub quarantine: Vec<QuarantineRecord>,
    /// Artifact files in `backups/` without a manifest.
    pub orphans: Vec<String>,
}

pub fn run(repo: &Repository) -> Result<Listing> {
    Ok(Listing {
        backups: repo.backups()?,
        quarantine: repo.quarantined()?,
        orphans: repo.orphans()?,
    })
}
