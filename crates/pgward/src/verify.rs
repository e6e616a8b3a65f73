//! `pgward verify`: offline proof that an artifact is what its manifest
//! says, without a database.
//!
//! First the stored file's size and sha256 against the manifest (any
//! flipped bit fails here; no key needed, so this always runs). Then the
//! content: decryption if the artifact is encrypted and a key or command
//! was given (the MDC proves the ciphertext), full zstd decompression
//! (frame checksums), and the same archive inspection a backup runs, whose
//! results (archive sha256 and size, table list, per-table bytes and rows)
//! must equal the manifest's.

use crate::encryption::secret::Decryptor;
use crate::encryption::{SCHEME, short};
use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::ObserveWrite;
use crate::pipeline::archive::{ArchiveFormat, ArchiveInspector};
use crate::pipeline::compress;
use crate::pipeline::decrypt::{DecryptError, decrypt, is_decrypt_failure};
use crate::pipeline::hash::StreamHasher;
use crate::pipeline::hash::digest_reader;
use crate::pipeline::offload::Offloaded;
use crate::repository::Repository;
use crate::repository::manifest::EncryptionRecord;
use crate::repository::manifest::Manifest;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Check {
    pub name: String,
    pub ok: bool,
    /// Not run (ok stays true): nothing was proven either way.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct VerifyReport {
    pub id: String,
    pub artifact: String,
    pub ok: bool,
    /// False when the artifact is encrypted and no key was given: only
    /// the stored bytes were checked.
    pub content_checked: bool,
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

impl Check {
    fn new(name: &str, ok: bool, detail: impl Into<String>) -> Check {
        Check {
            name: name.to_string(),
            ok,
            skipped: false,
            detail: detail.into(),
        }
    }
}

impl Checks {
    fn add(&mut self, name: &str, ok: bool, detail: impl Into<String>) -> bool {
        self.0.push(Check::new(name, ok, detail));
        ok
    }

    fn skip(&mut self, name: &str, detail: impl Into<String>) {
        self.0.push(Check {
            name: name.to_string(),
            ok: true,
            skipped: true,
            detail: detail.into(),
        });
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
    selector: &crate::repository::select::Selector,
    decryptor: &mut dyn FnMut() -> Result<Option<Decryptor>>,
    progress: &mut dyn FnMut(u64),
) -> Result<VerifyReport> {
    run_checking(repo, selector, decryptor, progress, false)
}

/// [`run`] of a backup this process has just written (`pgward run`'s
/// verify step): its journal record is appended when the run ends, so
/// its absence now is no finding.
pub fn run_written(
    repo: &Repository,
    selector: &crate::repository::select::Selector,
    decryptor: &mut dyn FnMut() -> Result<Option<Decryptor>>,
    progress: &mut dyn FnMut(u64),
) -> Result<VerifyReport> {
    run_checking(repo, selector, decryptor, progress, true)
}

fn run_checking(
    repo: &Repository,
    selector: &crate::repository::select::Selector,
    decryptor: &mut dyn FnMut() -> Result<Option<Decryptor>>,
    progress: &mut dyn FnMut(u64),
    written_now: bool,
) -> Result<VerifyReport> {
    let manifest = repo.find(selector)?;
    // Held against a prune until this command is done with it.
    let _held = repo.hold(&manifest)?;
    let path = repo.artifact_path(&manifest);
    let mut checks = Checks(Vec::new());
    let mut content_checked = false;
    // The catalog only lets a manifest through whose signature verified.
    if let Some(pin) = repo.signature_pin() {
        checks.add(
            "manifest signature",
            true,
            format!(
                "signed by the pinned key {}",
                crate::encryption::short(pin.fingerprint())
            ),
        );
    }
    // A read the storage failed is no finding about the backup: it ends
    // the verification as an error instead (see the end).
    let storage_failure = crate::storage::FailureSlot::default();
    let remote = repo.is_remote();
    let missing = |checks: &mut Checks, e: std::io::Error| {
        // In a bucket only "no such object" says the artifact is missing;
        // any other failed request is the storage's.
        if remote && e.kind() != std::io::ErrorKind::NotFound {
            storage_failure
                .lock()
                .expect("not poisoned")
                .get_or_insert_with(|| e.to_string());
            return;
        }
        checks.add(
            "artifact present",
            false,
            format!("{}: {e}", path.display()),
        );
    };
    type Stream = Box<dyn std::io::Read + Send>;
    type Reopen<'r> = Box<dyn FnMut(&mut Checks) -> Option<Stream> + 'r>;
    // On disk, one open for both passes: what was hashed is what is
    // inspected (the hash reads through a duplicate of the descriptor). In
    // object storage each pass reads the object anew, the second only if
    // it is still the version the first hashed (and the content pass
    // proves the archive's own sha256 as well).
    let watched = |inner: Stream| -> Stream {
        Box::new(crate::storage::Watched {
            inner,
            slot: storage_failure.clone(),
        })
    };
    let (stored, mut rewound): (Option<(Stream, u64)>, Reopen<'_>) = if repo.is_remote() {
        let first = repo
            .open_artifact_versioned(&manifest)
            .map_err(|e| missing(&mut checks, e))
            .ok();
        let version = first.as_ref().and_then(|opened| opened.version.clone());
        let first = first.map(|opened| (watched(opened.stream), opened.bytes));
        let again = manifest.clone();
        (
            first,
            // The second read is of the version the first one saw.
            Box::new(move |checks: &mut Checks| {
                repo.reopen_artifact(&again, version.as_deref())
                    .map(watched)
                    .map_err(|e| missing(checks, e))
                    .ok()
            }),
        )
    } else {
        let mut opened = repo
            .open_artifact(&manifest)
            .map_err(|e| missing(&mut checks, e))
            .ok();
        let stored = opened.as_ref().and_then(|f| {
            let size = f.metadata().map(|m| m.len()).unwrap_or(0);
            f.try_clone().ok().map(|f| (Box::new(f) as Stream, size))
        });
        (
            stored,
            Box::new(move |checks: &mut Checks| {
                let mut file = opened.take()?;
                std::io::Seek::rewind(&mut file)
                    .map(|()| Box::new(file) as Stream)
                    .map_err(|e| missing(checks, e))
                    .ok()
            }),
        )
    };
    if verify_stored(&manifest, stored, &mut checks) {
        match &manifest.artifact.encryption {
            None => {
                content_checked = true;
                if let Some(file) = rewound(&mut checks) {
                    // Reading on a thread of its own: both cores are then
                    // busy with the checks (see verify_content).
                    let file = crate::pipeline::offload::ReadAhead::new(file);
                    verify_content(&manifest, file, &mut checks, progress);
                }
            }
            Some(encryption) => match decryptor()? {
                None => checks.skip(
                    "decryption",
                    "no secret key or decryption command given: only the stored bytes were checked",
                ),
                Some(decryptor) => {
                    require_recipient(&manifest, encryption, &decryptor)?;
                    content_checked = true;
                    if let Some(file) = rewound(&mut checks) {
                        let file: Stream = Box::new(crate::pipeline::offload::ReadAhead::new(file));
                        verify_encrypted(&manifest, file, &decryptor, &mut checks, progress)?;
                    }
                }
            },
        }
    }
    drop(rewound);
    if let Some(failure) = storage_failure.lock().expect("not poisoned").clone() {
        let hint = if failure.contains("was replaced") {
            "the artifact was replaced in the bucket between verify's two reads: someone who can write the bucket changed it; run verify again to judge the object there now, and find out who wrote it"
        } else {
            "the storage did not deliver the artifact, which says nothing about the backup: run verify again"
        };
        return Err(Error::repository(format!(
            "reading backup {} from {} failed: {failure}",
            manifest.id,
            repo.root().display()
        ))
        .with_hint(hint));
    }
    // Last: the artifact's own checks name the first failure, if any.
    journal_check(repo, &manifest, &mut checks, written_now);
    Ok(VerifyReport {
        id: manifest.id.clone(),
        artifact: path.display().to_string(),
        ok: checks.0.iter().all(|c| c.ok),
        content_checked,
        checks: checks.0,
    })
}

/// The journal vouches for the backup: a record names its manifest with
/// the sha256 it has now. A backup older than the journal (made before
/// this pgward kept one) is skipped, not failed.
fn journal_check(repo: &Repository, manifest: &Manifest, checks: &mut Checks, written_now: bool) {
    const NAME: &str = "journal record";
    // A damaged record elsewhere is `log --verify`'s finding, not every
    // backup's.
    let records = match crate::journal::read_tolerant(repo) {
        Ok((records, _damaged)) => records,
        Err(e) => {
            checks.add(NAME, false, e.message().to_string());
            return;
        }
    };
    if records.is_empty() {
        return checks.skip(NAME, "the repository keeps no journal yet");
    }
    let just_written =
        || "written by this run: the journal records it when the run ends".to_string();
    let path = repo.manifest_path(&manifest.id);
    let now = crate::journal::touched(repo, &path);
    let relative = now.as_ref().map(|t| t.path.clone()).unwrap_or_default();
    // The record of the run that wrote it: later runs that read it
    // (verify, drill) record what they found, which vouches for nothing.
    // A backup older than the journal is in the inventory its first
    // record took (whatever date the manifest claims).
    let named = records.iter().filter(|r| r.vouches()).find_map(|r| {
        r.artifacts
            .iter()
            .find(|a| a.path == relative)
            .map(|a| (r, a.clone()))
    });
    // The canonical digest: a manifest rewritten with other whitespace is
    // the same manifest.
    let digest =
        |t: &crate::journal::Touched| t.manifest_digest.clone().unwrap_or(t.sha256.clone());
    let _ = match (named, now) {
        (_, None) => checks.add(NAME, false, "the manifest cannot be read".to_string()),
        (None, Some(_)) if written_now => {
            checks.skip(NAME, just_written());
            true
        }
        (None, Some(now)) => checks.add(
            NAME,
            false,
            format!(
                "no journal record names {}: the journal does not vouch for this backup",
                now.path
            ),
        ),
        (Some((record, then)), Some(now)) if digest(&then) == digest(&now) => checks.add(
            NAME,
            true,
            format!(
                "record {} ({} {}) holds the manifest's digest",
                record.sequence, record.command, record.run_id
            ),
        ),
        (Some((record, then)), Some(now)) => checks.add(
            NAME,
            false,
            format!(
                "record {} recorded manifest digest {}; the manifest now has {}",
                record.sequence,
                digest(&then),
                digest(&now)
            ),
        ),
    };
}

/// The stored bytes against the manifest: size and sha256. Needs no key,
/// so it runs first and always. False when there is nothing to go on.
fn verify_stored(
    manifest: &Manifest,
    file: Option<(Box<dyn std::io::Read + Send>, u64)>,
    checks: &mut Checks,
) -> bool {
    let Some((file, size)) = file else {
        return false;
    };
    checks.compare("artifact size", manifest.artifact.bytes, size);
    match digest_reader(file) {
        Ok(stored) => {
            checks.compare(
                "artifact sha256",
                manifest.artifact.sha256.as_str(),
                stored.sha256.as_str(),
            );
            true
        }
        Err(e) => {
            checks.add("artifact sha256", false, format!("cannot read: {e}"));
            false
        }
    }
}

/// A secret key that is none of the recipients' is an operator mistake,
/// not damage: say so instead of reporting a failed decryption.
pub(crate) fn require_recipient(
    manifest: &Manifest,
    encryption: &EncryptionRecord,
    decryptor: &Decryptor,
) -> Result<()> {
    let Decryptor::SecretKey(key) = decryptor else {
        return Ok(());
    };
    let ours = key.fingerprints();
    let matches = encryption
        .recipients
        .iter()
        .any(|r| ours.contains(&r.fingerprint) || ours.contains(&r.encryption_key));
    if matches {
        return Ok(());
    }
    Err(not_a_recipient(manifest, encryption, &decryptor.describe()))
}

fn not_a_recipient(manifest: &Manifest, encryption: &EncryptionRecord, what: &str) -> Error {
    let recipients: Vec<String> = encryption
        .recipients
        .iter()
        .map(|r| short(&r.fingerprint))
        .collect();
    Error::config(format!(
        "{what} cannot decrypt backup {}: it is encrypted to {}",
        manifest.id,
        recipients.join(", ")
    ))
    .with_hint("give the secret key of one of those recipients (the manifest names the key each backup was encrypted to)")
}

fn verify_encrypted(
    manifest: &Manifest,
    file: Box<dyn std::io::Read + Send>,
    decryptor: &Decryptor,
    checks: &mut Checks,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let decrypting = match decrypt(file, decryptor) {
        Ok(d) => d,
        Err(DecryptError::NotARecipient) => {
            // The manifest says this key is a recipient (checked before),
            // so a session key that does not decrypt is damage.
            checks.add(
                "decryption",
                false,
                format!(
                    "no session key in the artifact decrypts with {}, one of its recipients: the key packets are damaged",
                    decryptor.describe()
                ),
            );
            return Ok(());
        }
        Err(DecryptError::Command(e)) => {
            return Err(Error::config(format!(
                "cannot run the decryption {}: {e}",
                decryptor.describe()
            ))
            .with_hint("check decryption.command (or that gpg is installed, for --gpg)"));
        }
        Err(e @ DecryptError::Malformed(_)) => {
            checks.add("decryption", false, e.to_string());
            return Ok(());
        }
    };
    let mut decrypting = decrypting;
    // The decryption row goes before the rows of what it feeds, so that a
    // decryption failure is the first failure named.
    let position = checks.0.len();
    let finished = verify_content(manifest, &mut decrypting, checks, progress);
    // Read to the very end, so the MDC after the last plaintext byte is
    // checked even if decompression stopped at its frame's end.
    let rest = std::io::copy(&mut decrypting, &mut std::io::sink());
    let outcome = match (decrypting.finish(), rest) {
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) => Err(e.to_string()),
        (Ok(()), Ok(extra)) if extra > 0 => Err(format!(
            "{extra} bytes of plaintext follow the compressed archive"
        )),
        (Ok(()), Ok(_)) => Ok(()),
    };
    // gpg's way of saying "not a recipient": an operator mistake, not damage.
    if let Err(said) = &outcome
        && said.contains("No secret key")
    {
        let encryption = manifest.artifact.encryption.as_ref().expect("encrypted");
        return Err(not_a_recipient(manifest, encryption, &decryptor.describe()));
    }
    let row = match outcome {
        Ok(()) if finished => Some(Check::new(
            "decryption",
            true,
            format!(
                "{SCHEME} with {}, integrity (MDC) verified",
                decryptor.describe()
            ),
        )),
        // A failure downstream already says what went wrong.
        Ok(()) => None,
        Err(e) => Some(Check::new("decryption", false, e)),
    };
    if let Some(row) = row {
        // If the content check already blamed decryption, keep its row.
        if !checks.0[position..].iter().any(|c| c.name == "decryption") {
            checks.0.insert(position, row);
        }
    }
    Ok(())
}

/// Decompresses and inspects the plaintext, comparing everything with the
/// manifest. Returns whether the stream was read to its end.
fn verify_content(
    manifest: &Manifest,
    compressed: impl std::io::Read,
    checks: &mut Checks,
    progress: &mut dyn FnMut(u64),
) -> bool {
    let Some(format) = ArchiveFormat::from_name(&manifest.archive.format) else {
        checks.add(
            "archive structure",
            false,
            format!(
                "unknown archive format {:?} in the manifest",
                manifest.archive.format
            ),
        );
        return false;
    };
    // The manifest's own algorithm: a backup is checked against what it
    // recorded, however an older pgward fingerprinted it.
    let algorithm = match manifest.fingerprint_algorithm() {
        Ok(algorithm) => algorithm,
        Err(cause) => {
            checks.add("archive structure", false, cause);
            return false;
        }
    };
    // Hashing the plaintext costs about what decompressing and inspecting
    // it do together: on a thread of its own, verify runs at the speed of
    // the slower half instead of the sum.
    let mut plain_sink = ObserveWrite::new(
        std::io::sink(),
        (
            Offloaded::new(StreamHasher::default()),
            ArchiveInspector::fingerprinting(format, algorithm),
        ),
    );
    let mut decoder = match compress::decoder(compressed) {
        Ok(d) => d,
        Err(e) => {
            checks.add("decompression", false, e.to_string());
            return false;
        }
    };
    let copied = crate::pipeline::copy_stream(&mut decoder, &mut plain_sink, |n| {
        progress(n);
        true
    });
    if let Err(e) = copied {
        let (stage, detail) = match e {
            crate::pipeline::CopyError::Read(e) if is_decrypt_failure(&e) => {
                ("decryption", e.to_string())
            }
            crate::pipeline::CopyError::Read(e) => ("decompression", e.to_string()),
            other => ("decompression", format!("{other:?}")),
        };
        checks.add(stage, false, detail);
        return false;
    }
    checks.add(
        "decompression",
        true,
        "zstd frames complete, checksums match",
    );

    let (_, (plain_hasher, inspector)) = plain_sink.into_parts();
    let plain_hasher = plain_hasher.into_inner();
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
            return true;
        }
    };
    checks.add(
        "archive structure",
        true,
        format!(
            "pg_dump {} archive {}, {} TOC entries, {}",
            format.name(),
            summary.archive_version,
            summary.toc_entries,
            match format {
                ArchiveFormat::Custom => "every data block complete",
                ArchiveFormat::Tar => "end-of-archive marker present",
            }
        ),
    );
    checks.compare(
        "toc entries",
        manifest.archive.toc_entries,
        summary.toc_entries,
    );
    // What the archive says of itself must be what the manifest says.
    let identity = |database: &str, server: &str, archive: &str, encoding: Option<&str>| {
        format!(
            "database {database:?}, server {server:?}, archive {archive}{}",
            encoding.map_or(String::new(), |e| format!(", encoding {e}"))
        )
    };
    let recorded_encoding = manifest
        .content
        .as_ref()
        .and_then(|c| c.encoding.as_deref());
    checks.compare(
        "archive identity",
        identity(
            &manifest.database,
            &manifest.server.version,
            &manifest.archive.version,
            recorded_encoding,
        ),
        identity(
            &summary.database_name,
            summary.server_version.as_deref().unwrap_or_default(),
            &summary.archive_version,
            summary
                .encoding
                .as_deref()
                .filter(|_| manifest.content.is_some()),
        ),
    );
    // Fingerprints are compared where the manifest has them (v3 and later).
    let fingerprinted = manifest.tables.iter().any(|t| t.fingerprint.is_some());
    let describe = |schema: &str, table: &str, bytes: u64, rows: u64, fingerprint: Option<&str>| {
        let mut text = format!("{schema}.{table} {bytes}B {rows}rows");
        if let Some(fingerprint) = fingerprint.filter(|_| fingerprinted) {
            text.push(' ');
            text.push_str(fingerprint);
        }
        text
    };
    let from_archive: Vec<String> = summary
        .table_data
        .iter()
        .map(|t| describe(&t.schema, &t.table, t.bytes, t.rows, Some(&t.fingerprint)))
        .collect();
    let from_manifest: Vec<String> = manifest
        .tables
        .iter()
        .map(|t| {
            describe(
                &t.schema,
                &t.table,
                t.bytes,
                t.rows,
                t.fingerprint.as_deref(),
            )
        })
        .collect();
    let same = from_archive == from_manifest;
    let detail = if same {
        format!(
            "{} tables with data, bytes, rows{} as recorded",
            from_archive.len(),
            if fingerprinted {
                " and fingerprints"
            } else {
                ""
            }
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
    if let Some(content) = &manifest.content {
        let same_sequences = content.sequences == summary.sequences;
        checks.add(
            "sequences",
            same_sequences,
            if same_sequences {
                format!("{} sequence values as recorded", content.sequences.len())
            } else {
                "the sequence values differ from the manifest's".to_string()
            },
        );
        if let Some(found) = &summary.large_objects
            && (found.count > 0 || content.large_objects.count > 0)
        {
            checks.compare(
                "large objects",
                &content.large_objects.to_string(),
                &found.to_string(),
            );
        }
    }
    true
}
