//! `pgward verify`: offline proof that an artifact is what its manifest
//! says, without a database.
//!
//! One pass over the stored file: its sha256 and size against the manifest
//! (any flipped bit fails here), full zstd decompression (frame checksums),
//! and the same archive inspection a backup runs, whose results (archive
//! sha256 and size, table list, per-table bytes and rows) must equal the
//! manifest's.

use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::archive::ArchiveInspector;
use crate::pipeline::compress;
use crate::pipeline::hash::StreamHasher;
use crate::pipeline::{ObserveRead, ObserveWrite};
use crate::repository::Repository;
use crate::repository::manifest::Manifest;
use serde::Serialize;
use std::fs::File;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct VerifyReport {
    pub id: String,
    pub artifact: String,
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl VerifyReport {
    pub fn first_failure(&self) -> Option<&Check> {
        self.checks.iter().find(|c| !c.ok)
    }

    /// The report as an error, when it failed.
    pub fn into_result(self) -> Result<VerifyReport> {
        match self.first_failure() {
            None => Ok(self),
            Some(check) => Err(Error::new(
                ErrorKind::Integrity,
                format!(
                    "backup {} failed verification: {}: {}",
                    self.id, check.name, check.detail
                ),
            )
            .with_hint(
                "do not rely on this backup; take a new one and inspect the repository's storage",
            )),
        }
    }
}

struct Checks(Vec<Check>);

impl Checks {
    fn add(&mut self, name: &str, ok: bool, detail: impl Into<String>) -> bool {
        self.0.push(Check {
            name: name.to_string(),
            ok,
            detail: detail.into(),
        });
        ok
    }

    fn compare<T: PartialEq + std::fmt::Display>(
        &mut self,
        name: &str,
        expected: T,
        actual: T,
    ) -> bool {
        let detail = if expected == actual {
            format!("{actual}")
        } else {
            format!("manifest says {expected}, artifact has {actual}")
        };
        self.add(name, expected == actual, detail)
    }
}

pub fn run(
    repo: &Repository,
    selector: &str,
    progress: &mut dyn FnMut(u64),
) -> Result<VerifyReport> {
    let manifest = repo.find(selector)?;
    let path = repo.artifact_path(&manifest);
    let mut checks = Checks(Vec::new());
    verify_artifact(&manifest, &path, &mut checks, progress);
    Ok(VerifyReport {
        id: manifest.id.clone(),
        artifact: path.display().to_string(),
        ok: checks.0.iter().all(|c| c.ok),
        checks: checks.0,
    })
}

fn verify_artifact(
    manifest: &Manifest,
    path: &std::path::Path,
    checks: &mut Checks,
    progress: &mut dyn FnMut(u64),
) {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => {
            checks.add(
                "artifact present",
                false,
                format!("{}: {e}", path.display()),
            );
            return;
        }
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    if !checks.compare("artifact size", manifest.artifact.bytes, size) {
        // Keep going: the hash and decompression say more about the damage.
    }

    let stored = ObserveRead::new(file, StreamHasher::default());
    let mut plain_sink = ObserveWrite::new(
        std::io::sink(),
        (StreamHasher::default(), ArchiveInspector::new()),
    );
    let mut decoder = match compress::decoder(stored) {
        Ok(d) => d,
        Err(e) => {
            checks.add("decompression", false, e.to_string());
            return;
        }
    };
    let copied = crate::pipeline::copy_stream(&mut decoder, &mut plain_sink, |n| {
        progress(n);
        true
    });
    // The decoder owns the stored-bytes observer; drain whatever is left of
    // the file through it so the hash covers every byte even when
    // decompression stopped early.
    let stored_digest = {
        let mut rest = decoder_into_inner(decoder);
        let _ = std::io::copy(&mut rest, &mut std::io::sink());
        rest.into_parts().1.finish()
    };
    checks.compare(
        "artifact sha256",
        manifest.artifact.sha256.as_str(),
        stored_digest.sha256.as_str(),
    );
    if let Err(e) = copied {
        let detail = match e {
            crate::pipeline::CopyError::Read(e) => e.to_string(),
            other => format!("{other:?}"),
        };
        checks.add("decompression", false, detail);
        return;
    }
    checks.add(
        "decompression",
        true,
        "zstd frames complete, checksums match",
    );

    let (_, (plain_hasher, inspector)) = plain_sink.into_parts();
    let plain = plain_hasher.finish();
    checks.compare("archive size", manifest.archive.bytes, plain.bytes);
    checks.compare(
        "archive sha256",
        manifest.archive.sha256.as_str(),
        plain.sha256.as_str(),
    );
    let summary = match inspector.finish() {
        Ok(s) => s,
        Err(e) => {
            checks.add("archive structure", false, e.to_string());
            return;
        }
    };
    checks.add(
        "archive structure",
        true,
        format!(
            "pg_dump archive {}, {} TOC entries, end marker present",
            summary.archive_version, summary.toc_entries
        ),
    );
    checks.compare(
        "toc entries",
        manifest.archive.toc_entries,
        summary.toc_entries,
    );
    let from_archive: Vec<String> = summary
        .table_data
        .iter()
        .map(|t| format!("{}.{} {}B {}rows", t.schema, t.table, t.bytes, t.rows))
        .collect();
    let from_manifest: Vec<String> = manifest
        .tables
        .iter()
        .map(|t| format!("{}.{} {}B {}rows", t.schema, t.table, t.bytes, t.rows))
        .collect();
    let same = from_archive == from_manifest;
    let detail = if same {
        format!(
            "{} tables with data, bytes and rows as recorded",
            from_archive.len()
        )
    } else {
        let missing: Vec<_> = from_manifest
            .iter()
            .filter(|t| !from_archive.contains(t))
            .collect();
        let extra: Vec<_> = from_archive
            .iter()
            .filter(|t| !from_manifest.contains(t))
            .collect();
        format!(
            "differs from the manifest: recorded but not found {missing:?}, found but not recorded {extra:?}"
        )
    };
    checks.add("table data", same, detail);
}

/// zstd's reader hides its inner reader behind a buffered wrapper; this gets
/// the observing reader back so the rest of the file can be hashed.
fn decoder_into_inner<R: std::io::Read>(
    decoder: zstd::stream::read::Decoder<'static, std::io::BufReader<R>>,
) -> R {
    decoder.finish().into_inner()
}
