//! The manifest: the record that makes an artifact a backup.
//!
//! It is written last, after the artifact is validated and renamed into
//! place; an artifact without its manifest does not exist for pgward. Its
//! format is versioned (`format`, `format-version`) and documented in
//! README.md; fields are only ever added within a version.

use crate::catalog::ServerInfo;
use crate::error::ErrorKind;
use crate::scope::Scope;
use serde::{Deserialize, Serialize};

pub const MANIFEST_FORMAT: &str = "pgward-backup-manifest";
pub const MANIFEST_VERSION: u32 = 1;
pub const QUARANTINE_FORMAT: &str = "pgward-quarantine-record";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackupStatus {
    /// Dumped, validated, stored and recorded.
    Complete,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub id: String,
    pub status: BackupStatus,
    pub pgward_version: String,
    pub database: String,
    /// `user@host:port/dbname` as resolved (never a password).
    pub connection: String,
    pub scope: Scope,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: u64,
    pub server: ServerInfo,
    pub pg_dump: PgDumpRecord,
    pub archive: ArchiveRecord,
    pub artifact: ArtifactRecord,
    pub tables: Vec<TableRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PgDumpRecord {
    /// The program as run, including any command prefix.
    pub program: String,
    pub version: String,
    pub arguments: Vec<String>,
}

/// The plaintext archive pg_dump produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ArchiveRecord {
    /// Always "tar" in this version.
    pub format: String,
    /// pg_dump's archive format version, e.g. "1.14".
    pub version: String,
    pub bytes: u64,
    pub sha256: String,
    pub toc_entries: usize,
}

/// The stored file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ArtifactRecord {
    /// File name inside the repository's `backups/` directory.
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
    pub compression: CompressionRecord,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CompressionRecord {
    pub algorithm: String,
    pub level: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TableRecord {
    pub schema: String,
    pub table: String,
    /// Whether the table's data is in the archive.
    pub data: bool,
    /// Bytes of COPY text in the archive.
    pub bytes: u64,
    pub rows: u64,
}

/// What went wrong, written beside a quarantined partial file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct QuarantineRecord {
    pub format: String,
    pub format_version: u32,
    pub id: String,
    pub database: String,
    pub started_at: String,
    pub quarantined_at: String,
    /// The partial file's name inside `quarantine/`.
    pub file: String,
    pub partial_bytes: u64,
    pub error: ErrorRecord,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ErrorRecord {
    pub kind: String,
    pub message: String,
    pub hint: Option<String>,
    pub exit_code: i32,
}

impl ErrorRecord {
    pub fn from_error(error: &crate::error::Error) -> ErrorRecord {
        let kind: ErrorKind = error.kind();
        ErrorRecord {
            kind: kind.code().to_string(),
            message: error.message().to_string(),
            hint: error.hint().map(String::from),
            exit_code: kind.exit_code(),
        }
    }
}
