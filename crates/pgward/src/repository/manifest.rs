//! The manifest: the record that makes an artifact a backup.
//!
//! It is written last, after the artifact is validated and renamed into
//! place; an artifact without its manifest does not exist for pgward. Its
//! format is versioned (`format`, `format-version`) and documented in
//! README.md; fields are only ever added within a version.

use crate::catalog::ServerInfo;
use crate::catalog::dependencies::ScopeDependencies;
use crate::catalog::restorability::{ColumnOrder, RestoreHazard};
use crate::encryption::Fingerprint;
use crate::error::ErrorKind;
use crate::fingerprint::{Algorithm, ContentFingerprint, TextSettings};
use crate::pipeline::archive::SequenceValue;
use crate::scope::Scope;
use serde::{Deserialize, Serialize};

pub const MANIFEST_FORMAT: &str = "pgward-backup-manifest";
/// 2 added `artifact.encryption`; 3 added `content` and per-table
/// `fingerprint`; 4 added `content.column-order` and
/// `content.restore-hazards`; 5 added `manifest-digest`; 6 fingerprints
/// with XXH3-128 (`content.fingerprint-algorithm`; an older pgward would
/// take them for damage, so it must refuse the manifest); 7 added
/// `dependencies` (a narrowed scope's extensions, and the schemas a restore
/// must create first, which an older pgward would not). Older manifests are
/// still read.
pub const MANIFEST_VERSION: u32 = 7;
/// The manifest version from which `manifest-digest` is required.
pub const DIGEST_SINCE: u32 = 5;
const DIGEST_FIELD: &str = "manifest-digest";
const SIGNATURE_FIELD: &str = "manifest-signature";
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
    /// What drills compare a restored database with (absent before v3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<ContentRecord>,
    /// What a narrowed scope needs from outside itself: the extensions the
    /// archive includes, the schemas a restore creates before pg_restore,
    /// and (`scope.standalone = false`) the objects a prepared database
    /// must hold (absent before v7, and for whole-database backups).
    #[serde(default, skip_serializing_if = "ScopeDependencies::is_empty")]
    pub dependencies: ScopeDependencies,
    /// An armored OpenPGP signature over [`signed_text`] by the key
    /// `[signing]` pins (see `crate::signing`); absent when unsigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_signature: Option<String>,
    /// sha256 of the manifest's canonical form without this field (see
    /// [`canonical_digest`]): any later edit of any field shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
}

/// The sha256 of a manifest's canonical JSON form: object keys sorted,
/// no whitespace, the `manifest-digest` field itself left out.
pub fn canonical_digest(manifest: &serde_json::Value) -> String {
    let text = canonical_text(manifest, &[DIGEST_FIELD]);
    let mut hasher = crate::pipeline::hash::StreamHasher::default();
    crate::pipeline::Observer::observe(&mut hasher, text.as_bytes());
    hasher.finish().sha256
}

/// What a manifest's signature signs: its canonical form without the
/// digest and the signature (`jq -cjS 'del(."manifest-digest",
/// ."manifest-signature")'` gives the same bytes for an ASCII manifest).
pub fn signed_text(manifest: &serde_json::Value) -> String {
    canonical_text(manifest, &[DIGEST_FIELD, SIGNATURE_FIELD])
}

/// Whether the manifest as read (any JSON, before anything else is
/// believed of it) is signed by the pinned key; the cause when not.
pub fn check_signature(
    raw: &serde_json::Value,
    pin: &crate::signing::SignaturePin,
) -> std::result::Result<(), String> {
    let signature = match raw.get(SIGNATURE_FIELD) {
        None => None,
        Some(serde_json::Value::String(text)) => Some(text.as_str()),
        Some(_) => return Err("signed with an unreadable signature (not a string)".to_string()),
    };
    pin.check(signature, signed_text(raw).as_bytes())
}

/// A manifest's canonical JSON form: object keys sorted, no whitespace,
/// the `excluded` top-level fields left out.
fn canonical_text(manifest: &serde_json::Value, excluded: &[&str]) -> String {
    fn write(value: &serde_json::Value, out: &mut String, excluded: &[&str]) {
        match value {
            serde_json::Value::Object(map) => {
                let mut keys: Vec<&String> = map
                    .keys()
                    .filter(|k| !excluded.contains(&k.as_str()))
                    .collect();
                keys.sort();
                out.push('{');
                for (i, key) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::from(key.as_str()).to_string());
                    out.push(':');
                    write(&map[key], out, &[]);
                }
                out.push('}');
            }
            serde_json::Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(item, out, &[]);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut text = String::new();
    write(manifest, &mut text, excluded);
    text
}

impl Manifest {
    /// The manifest signed by `signer` (before it is sealed: the digest
    /// covers the signature).
    pub fn signed(mut self, signer: &crate::signing::ManifestSigner) -> crate::Result<Manifest> {
        self.manifest_signature = None;
        self.manifest_digest = None;
        let value = serde_json::to_value(&self).expect("manifests serialise");
        self.manifest_signature = Some(signer.sign(signed_text(&value).as_bytes())?);
        Ok(self)
    }

    /// The manifest with its `manifest-digest` set.
    pub fn sealed(mut self) -> Manifest {
        self.manifest_digest = None;
        let value = serde_json::to_value(&self).expect("manifests serialise");
        self.manifest_digest = Some(canonical_digest(&value));
        self
    }

    /// Checks what a manifest read back claims that can be checked without
    /// its artifact: the digest over all its fields (from version 5), and
    /// that its values have their forms (times, digests, identifiers).
    /// `raw` is the manifest as read. The cause when it fails.
    pub fn check_read_back(&self, raw: &serde_json::Value) -> std::result::Result<(), String> {
        match (&self.manifest_digest, self.format_version >= DIGEST_SINCE) {
            (Some(recorded), _) => {
                let actual = canonical_digest(raw);
                if *recorded != actual {
                    return Err(format!(
                        "edited after it was written: its manifest-digest is {recorded}, its content hashes to {actual}"
                    ));
                }
            }
            (None, true) => return Err("without its manifest-digest".to_string()),
            (None, false) => {}
        }
        let hex64 = |what: &str, value: &str| {
            if value.len() == 64
                && value
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            {
                Ok(())
            } else {
                Err(format!("of an invalid {what} {value:?}"))
            }
        };
        hex64("archive sha256", &self.archive.sha256)?;
        hex64("artifact sha256", &self.artifact.sha256)?;
        let algorithm = self.fingerprint_algorithm()?;
        for table in &self.tables {
            if let Some(fingerprint) = &table.fingerprint
                && !algorithm.is_sum(fingerprint)
            {
                return Err(format!(
                    "of an invalid table fingerprint {fingerprint:?} (not {})",
                    algorithm.name()
                ));
            }
        }
        for (what, time) in [
            ("started-at", &self.started_at),
            ("finished-at", &self.finished_at),
        ] {
            time.parse::<jiff::Timestamp>()
                .map_err(|_| format!("of an invalid {what} {time:?}"))?;
        }
        if self.server.system_identifier.is_empty()
            || !self
                .server
                .system_identifier
                .bytes()
                .all(|b| b.is_ascii_digit())
        {
            return Err(format!(
                "of an invalid system identifier {:?}",
                self.server.system_identifier
            ));
        }
        if self.format_version == 0 || self.database.is_empty() {
            return Err("without a format version or database".to_string());
        }
        Ok(())
    }
}

impl Manifest {
    /// How this backup's fingerprints were taken (SHA-256 for manifests
    /// before v6 and for those without a content record, which have none);
    /// the cause when the manifest names an algorithm this pgward does not
    /// know.
    pub fn fingerprint_algorithm(&self) -> std::result::Result<Algorithm, String> {
        match &self.content {
            None => Ok(Algorithm::Sha256),
            Some(content) => Algorithm::from_name(&content.fingerprint_algorithm).ok_or_else(|| {
                format!(
                    "fingerprinted with {:?}, which this pgward does not know (a newer pgward wrote it?)",
                    content.fingerprint_algorithm
                )
            }),
        }
    }
}

/// The content of the archive beyond its tables' rows, and how the
/// fingerprints were taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ContentRecord {
    /// [`crate::fingerprint::Algorithm::name`].
    pub fingerprint_algorithm: String,
    /// The session settings pg_dump wrote the COPY text under.
    pub text_settings: TextSettings,
    /// The archive's client encoding.
    pub encoding: Option<String>,
    pub sequences: Vec<SequenceValue>,
    pub large_objects: ContentFingerprint,
    /// Every table's column order as the catalog had it in the backup's
    /// snapshot (the archive cannot express it; absent before v4).
    #[serde(default)]
    pub column_order: Vec<ColumnOrder>,
    /// Constraints whose restore depends on the order tables are loaded
    /// in; a restore of this backup runs serially, in archive order.
    #[serde(default)]
    pub restore_hazards: Vec<RestoreHazard>,
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
    /// "custom" (`pg_dump -Fc -Z0`); "tar" in backups of pgward before
    /// manifest v2.
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
    /// Absent when the artifact is not encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionRecord>,
}

/// How the stored file is encrypted, and to whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EncryptionRecord {
    /// Always [`crate::encryption::SCHEME`] in this version.
    pub scheme: String,
    pub recipients: Vec<RecipientRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RecipientRecord {
    /// The certificate's (primary key's) fingerprint.
    pub fingerprint: Fingerprint,
    /// The subkey the session key was encrypted to.
    pub encryption_key: Fingerprint,
    /// The certificate file as configured when the backup was taken.
    pub certificate: String,
}

/// What `backup --json` promises a calling program: every field always
/// present, so a missing one is a reason to stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Envelope {
    pub id: String,
    /// The artifact's path relative to the repository root.
    pub artifact_ref: String,
    pub stored_bytes: u64,
    pub stored_sha256: String,
    pub archive_bytes: u64,
    pub archive_sha256: String,
    /// [`crate::encryption::SCHEME`], or "none" for an unencrypted artifact.
    pub encryption_scheme: String,
    /// Full fingerprints of the recipient certificates; empty when unencrypted.
    pub recipient_fingerprints: Vec<Fingerprint>,
}

impl Manifest {
    pub fn envelope(&self) -> Envelope {
        let encryption = self.artifact.encryption.as_ref();
        Envelope {
            id: self.id.clone(),
            artifact_ref: format!("backups/{}", self.artifact.file),
            stored_bytes: self.artifact.bytes,
            stored_sha256: self.artifact.sha256.clone(),
            archive_bytes: self.archive.bytes,
            archive_sha256: self.archive.sha256.clone(),
            encryption_scheme: encryption
                .map(|e| e.scheme.clone())
                .unwrap_or_else(|| "none".to_string()),
            recipient_fingerprints: encryption
                .map(|e| e.recipients.iter().map(|r| r.fingerprint.clone()).collect())
                .unwrap_or_default(),
        }
    }
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
    /// The rows' content fingerprint (absent before manifest v3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

pub const DRILL_FORMAT: &str = "pgward-drill-record";
/// 2 added `finding` on checks and `accepted-findings`.
pub const DRILL_VERSION: u32 = 2;

/// The verdict of a backup's last restore drill, kept beside its manifest
/// (`backups/ID.drill.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DrillRecord {
    pub format: String,
    pub format_version: u32,
    pub backup_id: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: u64,
    /// "pass" or "fail".
    pub verdict: String,
    /// Where the drill restored to: `user@host:port/scratch-database`.
    pub restored_to: String,
    /// Whether the scratch database was kept (`--keep`).
    pub kept: bool,
    /// The first check that failed, in one line (absent on a pass).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_failure: Option<String>,
    /// Findings the configuration accepts (`[drill] accept`) that this
    /// drill found: `CLASS OBJECT` each. They did not fail it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accepted_findings: Vec<String>,
    pub checks: Vec<DrillCheck>,
    /// What the verdict cannot vouch for, because the archive cannot hold
    /// it (stored generated columns, extensions' configuration tables).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// One thing a drill proved or disproved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DrillCheck {
    /// e.g. "table public.t1", "sequence public.seq1", "schema".
    pub name: String,
    pub ok: bool,
    pub detail: String,
    /// A difference of a known, explained class (see [`crate::findings`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finding: Option<Finding>,
}

impl DrillCheck {
    pub fn passed(name: impl Into<String>, detail: impl Into<String>) -> DrillCheck {
        DrillCheck {
            name: name.into(),
            ok: true,
            detail: detail.into(),
            finding: None,
        }
    }

    pub fn failed(name: impl Into<String>, detail: impl Into<String>) -> DrillCheck {
        DrillCheck {
            name: name.into(),
            ok: false,
            detail: detail.into(),
            finding: None,
        }
    }

    /// Whether this check fails the drill: a difference not accepted by
    /// the configuration.
    pub fn fails(&self) -> bool {
        !self.ok && !self.finding.as_ref().is_some_and(|f| f.accepted)
    }
}

/// A difference between a backup and its restore of a known class: what
/// differs, why, what it means, and whether the operator accepted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Finding {
    /// e.g. "column-order".
    pub class: String,
    /// The object it concerns, e.g. "public.child".
    pub object: String,
    /// Why it happens (the pg_dump or PostgreSQL behaviour behind it).
    pub why: String,
    /// What it means for whoever uses the restored database.
    pub means: String,
    /// Accepted in the configuration (`[drill] accept`): recorded, and no
    /// longer failing the drill.
    pub accepted: bool,
}

impl Finding {
    /// `CLASS OBJECT`, as `[drill] accept` names it.
    pub fn key(&self) -> String {
        format!("{} {}", self.class, self.object)
    }
}

impl DrillRecord {
    pub fn passed(&self) -> bool {
        self.verdict == "pass"
    }
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
    /// The partial file's name inside `quarantine/`; empty in a bucket,
    /// which keeps no partial files.
    pub file: String,
    pub partial_bytes: u64,
    pub error: ErrorRecord,
}

impl QuarantineRecord {
    /// The record of run `id`'s failure, quarantined now.
    pub fn now(
        id: &str,
        database: &str,
        started_at: &str,
        file: String,
        partial_bytes: u64,
        error: &crate::error::Error,
    ) -> QuarantineRecord {
        QuarantineRecord {
            format: QUARANTINE_FORMAT.to_string(),
            format_version: MANIFEST_VERSION,
            id: id.to_string(),
            database: database.to_string(),
            started_at: started_at.to_string(),
            quarantined_at: crate::clock::now_rfc3339(),
            file,
            partial_bytes,
            error: ErrorRecord::from_error(error),
        }
    }
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
