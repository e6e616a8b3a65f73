//! The repository's own history: one record per run that wrote, proved or
//! changed something (backups that failed or were refused included),
//! each carrying the sha256 of the record before it, so that an edited,
//! deleted or reordered record shows.
//!
//! Records are files `journal/NNNNNNNNNN.json` (the sequence number,
//! from 1). An append takes an exclusive `flock` on `journal/.lock`, reads
//! the head, writes the next record to a staging file, syncs it and links
//! it into place without replacing anything, then syncs the directory:
//! two runs appending at once queue, and neither forks nor loses the chain.
//! The newest record has nothing after it to vouch for it: `log --head`
//! prints a hash to keep elsewhere, and `log --verify --anchor` proves
//! later that history up to it was not rewritten.
//!
//! A repository in a bucket keeps the same records as objects under
//! `journal/`. There is no `flock` there: each record is written with
//! `If-None-Match: *`, so of two runs appending at once one gets the
//! sequence number and the other, refused, reads the new head and tries
//! the next number. The chain never forks and nothing is lost.

use crate::error::{Error, Result};
use crate::repository::{Repository, create_private, rename_no_replace, sync_dir};
use crate::storage::Storage;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{DirBuilder, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const FORMAT: &str = "pgward-journal-record";
pub const VERSION: u32 = 1;

/// One run, as the journal keeps it. Never a secret: options are the
/// ones pgward chose to record, causes are pgward's one-line messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Record {
    pub format: String,
    pub format_version: u32,
    pub sequence: u64,
    /// sha256 of the previous record's bytes; empty for the first.
    pub previous_sha256: String,
    pub run_id: String,
    /// `backup`, `verify`, `drill`, `restore`, `grants`, `prune`, `run`, `apply`.
    pub command: String,
    /// The database the run was about, when it was about one.
    pub database: Option<String>,
    /// What else identifies the run: the backup id verified, the restore
    /// target, `dry-run`, … (no secrets).
    #[serde(default)]
    pub options: Vec<String>,
    pub host: String,
    pub pgward_version: String,
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: u64,
    /// `ok` or `failed`.
    pub outcome: String,
    pub exit_code: i32,
    /// Why it failed, in one line.
    pub cause: Option<String>,
    /// Files the run wrote or proved, relative to the repository.
    #[serde(default)]
    pub artifacts: Vec<Touched>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Touched {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
    /// For a manifest: its canonical digest (`manifest-digest`'s rule),
    /// which a reformatting of the file does not change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
}

impl Record {
    /// Whether this record vouches for the manifests it names: a run that
    /// wrote them (backup, run, apply, copy), or the first record's
    /// inventory of what predates the journal. Records of runs that only
    /// read (verify, drill) vouch for nothing.
    pub fn vouches(&self) -> bool {
        matches!(self.command.as_str(), "backup" | "run" | "apply" | "copy")
            || (self.sequence == 1 && self.command == "journal-start")
    }
}

/// A run's record before it has its place in the chain.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub run_id: String,
    pub command: String,
    pub database: Option<String>,
    pub options: Vec<String>,
    pub started_at: String,
    pub duration_ms: u64,
    pub ok: bool,
    pub exit_code: i32,
    pub cause: Option<String>,
    pub artifacts: Vec<Touched>,
}

/// What `log --verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Verification {
    pub records: u64,
    /// `sequence:sha256` of the newest record.
    pub head: Option<String>,
    /// The first problem, naming the record; None when the chain holds.
    pub broken: Option<String>,
}

impl Verification {
    pub fn intact(&self) -> bool {
        self.broken.is_none()
    }
}

fn dir(root: &Path) -> PathBuf {
    root.join("journal")
}

/// The largest journal record read back, as for every record file.
const RECORD_LIMIT: u64 = crate::repository::MAX_RECORD_BYTES;

/// Where a repository's journal is: its directory, or its bucket.
enum Store {
    Dir(PathBuf),
    Bucket(std::sync::Arc<dyn Storage>),
}

impl Store {
    fn of(repo: &Repository) -> Store {
        if repo.is_remote() {
            Store::Bucket(repo.storage())
        } else {
            Store::Dir(repo.root().to_path_buf())
        }
    }

    /// The sequence numbers present, sorted; names that are not records
    /// are left to `verify` to complain about.
    fn sequences(&self) -> Result<Vec<u64>> {
        let names: Vec<String> = match self {
            Store::Dir(root) => {
                let dir = dir(root);
                match std::fs::read_dir(&dir) {
                    Ok(entries) => entries
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                    Err(e) => return Err(Error::repository_io("cannot read", &dir, e)),
                }
            }
            Store::Bucket(storage) => storage
                .list("journal")
                .map_err(|e| {
                    Error::repository(format!("cannot list {}: {e}", storage.describe("journal")))
                })?
                .into_iter()
                .map(|o| o.name)
                .collect(),
        };
        let mut found: Vec<u64> = names
            .iter()
            .filter_map(|name| {
                let digits = name.strip_suffix(".json")?;
                (digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| digits.parse().ok())
                    .flatten()
            })
            .collect();
        found.sort_unstable();
        Ok(found)
    }

    /// The bytes of record `sequence`, read as everything in a repository
    /// is (no link followed, bounded).
    fn read(&self, sequence: u64) -> std::io::Result<Vec<u8>> {
        match self {
            Store::Dir(root) => {
                crate::repository::read_regular(&dir(root).join(file_name(sequence)))
                    .map(String::into_bytes)
            }
            Store::Bucket(storage) => {
                storage.read_whole(&format!("journal/{}", file_name(sequence)), RECORD_LIMIT)
            }
        }
    }

    /// Where record `sequence` is, for messages.
    fn describe(&self, sequence: u64) -> String {
        match self {
            Store::Dir(root) => dir(root).join(file_name(sequence)).display().to_string(),
            Store::Bucket(storage) => storage.describe(&format!("journal/{}", file_name(sequence))),
        }
    }
}

fn file_name(sequence: u64) -> String {
    format!("{sequence:010}.json")
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `path` (as the repository names its files: a path on disk, or the
/// object's URL) relative to the repository.
fn relative(repo: &Repository, path: &Path) -> String {
    if repo.is_remote() {
        let text = path.display().to_string();
        let prefix = format!("{}/", repo.storage().location().trim_end_matches('/'));
        return text.strip_prefix(&prefix).unwrap_or(&text).to_string();
    }
    path.strip_prefix(repo.root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// A small file the run wrote or proved (a manifest, a record, a report),
/// by its path relative to the repository, hashed now. Read as everything
/// in the repository is: no link followed, nothing but a regular file,
/// bounded.
pub fn touched(repo: &Repository, path: &Path) -> Option<Touched> {
    let key = relative(repo, path);
    let text = if repo.is_remote() {
        String::from_utf8(repo.storage().read_whole(&key, RECORD_LIMIT).ok()?).ok()?
    } else {
        crate::repository::read_regular(path).ok()?
    };
    let manifest_digest = path
        .to_string_lossy()
        .ends_with(".manifest.json")
        .then(|| serde_json::from_str::<serde_json::Value>(&text).ok())
        .flatten()
        .map(|value| crate::repository::manifest::canonical_digest(&value));
    Some(Touched {
        path: key,
        bytes: text.len() as u64,
        sha256: sha256_hex(text.as_bytes()),
        manifest_digest,
    })
}

/// A large file whose size and sha256 the run already knows (an artifact,
/// hashed as it streamed): not read again.
pub fn touched_known(repo: &Repository, path: &Path, bytes: u64, sha256: &str) -> Touched {
    Touched {
        path: relative(repo, path),
        bytes,
        sha256: sha256.to_string(),
        manifest_digest: None,
    }
}

/// Appends `entry` as the next record; returns it. The first append of a
/// repository first writes a `journal-start` record that inventories the
/// manifests already there (with their canonical digests): whether a
/// backup predates the journal is decided by the journal, never by the
/// dates a manifest claims.
pub fn append(repo: &Repository, entry: &Entry) -> Result<Record> {
    match Store::of(repo) {
        Store::Dir(root) => append_to_dir(repo, &root, entry),
        Store::Bucket(storage) => append_to_bucket(repo, storage.as_ref(), entry),
    }
}

/// [`append`] in a bucket: every record created only if its sequence
/// number is free; a refusal means another run appended first, and the
/// next round reads the new head.
fn append_to_bucket(repo: &Repository, storage: &dyn Storage, entry: &Entry) -> Result<Record> {
    let store = Store::Bucket(repo.storage());
    for _ in 0..20 {
        let head = match store.sequences()?.last() {
            None => None,
            Some(&last) => {
                let bytes = store.read(last).map_err(|e| {
                    Error::repository(format!("cannot read {}: {e}", store.describe(last)))
                })?;
                Some((last, sha256_hex(&bytes)))
            }
        };
        let head = match head {
            Some(head) => head,
            None => {
                // The first record vouches for what it lists: a manifest
                // that cannot be read now is not left out for ever; the
                // journal waits for a run that can read them all.
                let inventory = bucket_inventory(repo, storage)?;
                let (record, text) = record_after(&journal_start(inventory), None);
                match put_record(storage, &store, &record, &text) {
                    Ok(true) => (record.sequence, sha256_hex(&text)),
                    Ok(false) => continue,
                    Err(e) => return Err(bucket_append_error(storage, &record, e)),
                }
            }
        };
        let (record, text) = record_after(entry, Some(head));
        match put_record(storage, &store, &record, &text) {
            Ok(true) => return Ok(record),
            Ok(false) => continue,
            Err(e) => return Err(bucket_append_error(storage, &record, e)),
        }
    }
    Err(Error::repository(format!(
        "cannot append to the journal at {}: twenty other runs appended first",
        storage.describe("journal")
    )))
}

/// Creates `record`; `false` when its sequence number is taken by
/// another run's record. A refusal of this very record (a write that
/// landed, retried after its answer was lost) is a success: the record
/// is not appended twice.
fn put_record(
    storage: &dyn Storage,
    store: &Store,
    record: &Record,
    text: &[u8],
) -> std::io::Result<bool> {
    match storage.put_new(&format!("journal/{}", file_name(record.sequence)), text) {
        // Read back: on a service whose conditional create is not atomic
        // another run's record may have replaced this one; then this one
        // takes the next number.
        Ok(()) => Ok(store
            .read(record.sequence)
            .map_or(true, |found| found == text)),
        Err(e) => {
            let ours = store.read(record.sequence).is_ok_and(|found| found == text);
            match e.kind() {
                _ if ours => Ok(true),
                std::io::ErrorKind::AlreadyExists => Ok(false),
                _ => Err(e),
            }
        }
    }
}

fn bucket_append_error(storage: &dyn Storage, record: &Record, e: std::io::Error) -> Error {
    Error::repository(format!(
        "cannot append to the journal at {}: {e}",
        storage.describe(&format!("journal/{}", file_name(record.sequence)))
    ))
}

/// The first record of a journal, listing the manifests already there.
fn journal_start(inventory: Vec<Touched>) -> Entry {
    Entry {
        run_id: crate::repository::new_backup_id("journal", crate::clock::now()),
        command: "journal-start".into(),
        started_at: crate::clock::now_rfc3339(),
        ok: true,
        artifacts: inventory,
        ..Entry::default()
    }
}

/// The manifests in a bucket's `backups/` now; any that cannot be listed
/// or read fails the inventory.
fn bucket_inventory(repo: &Repository, storage: &dyn Storage) -> Result<Vec<Touched>> {
    let mut names: Vec<String> = storage
        .list("backups")
        .map_err(|e| {
            Error::repository(format!(
                "cannot list {} for the journal's first record: {e}",
                storage.describe("backups")
            ))
        })?
        .into_iter()
        .map(|o| o.name)
        .filter(|n| n.ends_with(".manifest.json"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|name| {
            touched(repo, &repo.root().join("backups").join(name)).ok_or_else(|| {
                Error::repository(format!(
                    "cannot read {} for the journal's first record",
                    storage.describe(&format!("backups/{name}"))
                ))
            })
        })
        .collect()
}

fn append_to_dir(repo: &Repository, root: &Path, entry: &Entry) -> Result<Record> {
    let dir = dir(root);
    match std::fs::symlink_metadata(&dir) {
        Ok(meta) if !meta.file_type().is_dir() => {
            return Err(Error::repository(format!(
                "{} is not a directory (a link?): pgward keeps its journal only in a real one",
                dir.display()
            )));
        }
        Ok(_) => {}
        Err(_) => {
            DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .or_else(|e| match e.kind() {
                    std::io::ErrorKind::AlreadyExists => Ok(()),
                    _ => Err(e),
                })
                .map_err(|e| Error::repository_io("cannot create directory", &dir, e))?;
            sync_dir(root)?;
        }
    }
    let lock_path = dir.join(".lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&lock_path)
        .map_err(|e| Error::repository_io("cannot open", &lock_path, e))?;
    lock.lock()
        .map_err(|e| Error::repository_io("cannot lock", &lock_path, e))?;
    let store = Store::Dir(root.to_path_buf());
    let mut head = match store.sequences()?.last() {
        None => None,
        Some(&last) => {
            let path = dir.join(file_name(last));
            let bytes = store
                .read(last)
                .map_err(|e| Error::repository_io("cannot read", &path, e))?;
            Some((last, sha256_hex(&bytes)))
        }
    };
    if head.is_none() {
        let (record, hash) = write_record(&dir, &journal_start(inventory(repo)), None)?;
        head = Some((record.sequence, hash));
    }
    let (record, _) = write_record(&dir, entry, head)?;
    drop(lock);
    Ok(record)
}

/// The manifests in `backups/` now, for the journal's first record.
fn inventory(repo: &Repository) -> Vec<Touched> {
    let root = repo.root();
    let backups = root.join("backups");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&backups)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(".manifest.json"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.iter().filter_map(|p| touched(repo, p)).collect()
}

/// Writes `entry` as the record after `head` (sequence, sha256); returns
/// it and the sha256 of its bytes.
fn write_record(
    dir: &Path,
    entry: &Entry,
    head: Option<(u64, String)>,
) -> Result<(Record, String)> {
    let (record, text) = record_after(entry, head);
    let sequence = record.sequence;
    let target = dir.join(file_name(sequence));
    let staging = dir.join(format!(".{sequence}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = create_private(&staging)?;
        file.write_all(&text)?;
        file.sync_all()?;
        rename_no_replace(&staging, &target)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&staging);
        return Err(Error::repository_io(
            "cannot append to the journal at",
            &target,
            e,
        ));
    }
    sync_dir(dir)?;
    Ok((record, sha256_hex(&text)))
}

/// `entry` as the record after `head` (sequence, sha256), and its bytes.
fn record_after(entry: &Entry, head: Option<(u64, String)>) -> (Record, Vec<u8>) {
    let (sequence, previous_sha256) = match head {
        None => (1, String::new()),
        Some((last, hash)) => (last + 1, hash),
    };
    let record = Record {
        format: FORMAT.into(),
        format_version: VERSION,
        sequence,
        previous_sha256,
        run_id: entry.run_id.clone(),
        command: entry.command.clone(),
        database: entry.database.clone(),
        options: entry.options.clone(),
        host: host_name(),
        pgward_version: env!("CARGO_PKG_VERSION").into(),
        started_at: entry.started_at.clone(),
        finished_at: crate::clock::now_rfc3339(),
        duration_ms: entry.duration_ms,
        outcome: if entry.ok { "ok" } else { "failed" }.into(),
        exit_code: entry.exit_code,
        cause: entry.cause.clone(),
        artifacts: entry.artifacts.clone(),
    };
    let mut text = serde_json::to_vec_pretty(&record).expect("records serialise");
    text.push(b'\n');
    (record, text)
}

/// The records that parse, oldest first, and a line for each that does
/// not: one damaged record must not hide the rest (`log --verify` says
/// what is wrong with the chain).
pub fn read_tolerant(repo: &Repository) -> Result<(Vec<Record>, Vec<String>)> {
    Ok(parse_all(&read_all(repo)?))
}

/// Both of the above from one reading of the journal (in a bucket every
/// record is a request): the chain's verdict, and the records that parse.
pub fn read_and_verify(repo: &Repository) -> Result<(Verification, Vec<Record>)> {
    let read = read_all(repo)?;
    Ok((walk(&read, None), parse_all(&read).0))
}

/// Every record's bytes (or why they cannot be read), oldest first.
type RecordBytes = Vec<(u64, std::io::Result<Vec<u8>>)>;

fn read_all(repo: &Repository) -> Result<RecordBytes> {
    let store = Store::of(repo);
    Ok(store
        .sequences()?
        .into_iter()
        .map(|sequence| (sequence, store.read(sequence)))
        .collect())
}

fn parse_all(read: &RecordBytes) -> (Vec<Record>, Vec<String>) {
    let mut records = Vec::new();
    let mut damaged = Vec::new();
    for (sequence, bytes) in read {
        let parsed = bytes
            .as_ref()
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_slice::<Record>(text).map_err(|e| e.to_string()));
        match parsed {
            Ok(record) => records.push(record),
            Err(e) => damaged.push(format!("journal record {sequence} cannot be read: {e}")),
        }
    }
    (records, damaged)
}

/// Walks the chain: every sequence from 1 present, each record named for
/// its own sequence, each carrying the sha256 of the one before. With
/// `anchor` (`SEQUENCE:SHA256`, as `log --head` printed it), that record
/// must still have that hash.
pub fn verify(repo: &Repository, anchor: Option<&str>) -> Result<Verification> {
    let anchor = anchor.map(parse_anchor).transpose()?;
    Ok(walk(&read_all(repo)?, anchor))
}

/// [`verify`] on records already read.
fn walk(read: &RecordBytes, anchor: Option<(u64, String)>) -> Verification {
    let mut verification = Verification {
        records: read.len() as u64,
        head: None,
        broken: None,
    };
    let mut previous: Option<(u64, String)> = None;
    let mut expected = 1;
    for (sequence, bytes) in read {
        let sequence = *sequence;
        let name = file_name(sequence);
        let bytes = match bytes {
            Ok(bytes) => bytes,
            Err(e) => {
                verification.broken =
                    Some(format!("record {sequence} ({name}) cannot be read: {e}"));
                return verification;
            }
        };
        if sequence != expected {
            verification.broken = Some(format!(
                "record {expected} is missing (deleted): the journal goes from {} to {sequence}",
                expected - 1
            ));
            return verification;
        }
        let record: Record = match serde_json::from_slice(bytes) {
            Ok(record) => record,
            Err(e) => {
                verification.broken = Some(format!(
                    "record {sequence} ({name}) was edited: it no longer parses ({e})"
                ));
                return verification;
            }
        };
        if record.sequence != sequence {
            verification.broken = Some(format!(
                "record {sequence} ({name}) holds record {}: records were reordered or replaced",
                record.sequence
            ));
            return verification;
        }
        let want = previous.as_ref().map(|(_, h)| h.as_str()).unwrap_or("");
        if record.previous_sha256 != want {
            verification.broken = Some(format!(
                "record {} was edited, or record {sequence} replaced: record {sequence}'s previous-sha256 does not match",
                sequence - 1
            ));
            return verification;
        }
        let hash = sha256_hex(bytes);
        if let Some((seq, sha)) = &anchor
            && *seq == sequence
            && *sha != hash
        {
            verification.broken = Some(format!(
                "record {sequence} is not the one anchored ({seq}:{sha}): history up to it was rewritten"
            ));
            return verification;
        }
        previous = Some((sequence, hash));
        expected += 1;
    }
    if let Some((seq, _)) = anchor
        && seq >= expected
    {
        verification.broken = Some(format!(
            "record {seq} (anchored) is missing: the journal ends at {}",
            expected - 1
        ));
        return verification;
    }
    verification.head = previous.map(|(seq, hash)| format!("{seq}:{hash}"));
    verification
}

/// `SEQUENCE:SHA256` as `log --head` prints it (case and surrounding
/// blanks forgiven): a typo is a usage error, never a tamper alarm.
fn parse_anchor(anchor: &str) -> Result<(u64, String)> {
    let bad = || {
        Error::config(format!("anchor {anchor:?} is not SEQUENCE:SHA256"))
            .with_hint("give what `pgward log --head` printed")
    };
    let (seq, sha) = anchor.trim().split_once(':').ok_or_else(bad)?;
    let seq: u64 = seq.trim().parse().map_err(|_| bad())?;
    let sha = sha.trim().to_ascii_lowercase();
    if seq == 0 || sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    Ok((seq, sha))
}

pub(crate) fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: usize) -> Entry {
        Entry {
            run_id: format!("run-{n}"),
            command: "backup".into(),
            database: Some("app".into()),
            ok: !n.is_multiple_of(3),
            exit_code: if n.is_multiple_of(3) { 1 } else { 0 },
            cause: n.is_multiple_of(3).then(|| "pg_dump failed".into()),
            ..Entry::default()
        }
    }

    fn journal(n: usize) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for i in 1..=n {
            append(&repo(root.path()), &entry(i)).unwrap();
        }
        root
    }

    fn repo(root: &Path) -> Repository {
        Repository::init(root).unwrap()
    }

    fn path(root: &Path, sequence: u64) -> PathBuf {
        dir(root).join(file_name(sequence))
    }

    #[test]
    fn an_untouched_chain_verifies_and_its_head_anchors_it() {
        let root = journal(5);
        let verification = verify(&repo(root.path()), None).unwrap();
        assert!(verification.intact(), "{verification:?}");
        // The journal's own first record, then the five.
        assert_eq!(verification.records, 6);
        let head = verification.head.unwrap();
        assert!(head.starts_with("6:"));
        assert!(verify(&repo(root.path()), Some(&head)).unwrap().intact());
        assert!(
            verify(&repo(root.path()), Some(&head.to_uppercase()))
                .unwrap()
                .intact()
        );
        assert!(
            verify(&repo(root.path()), Some("0:00")).is_err(),
            "a typo is no tamper alarm"
        );
        let (records, damaged) = read_tolerant(&repo(root.path())).unwrap();
        assert!(damaged.is_empty());
        assert_eq!(records[0].command, "journal-start");
        assert_eq!(records[0].previous_sha256, "");
        assert_eq!(records[3].outcome, "failed");
    }

    #[test]
    fn an_edited_byte_a_deleted_record_and_a_swap_are_named() {
        // One byte of record 2's content (it still parses).
        let root = journal(4);
        let text = std::fs::read_to_string(path(root.path(), 2)).unwrap();
        std::fs::write(path(root.path(), 2), text.replace("run-1", "run-9")).unwrap();
        let broken = verify(&repo(root.path()), None).unwrap().broken.unwrap();
        assert!(
            broken.starts_with("record 2 was edited, or record 3 replaced"),
            "{broken}"
        );
        // Garbage in a record: named, and the other records still read.
        std::fs::write(path(root.path(), 3), "garbage").unwrap();
        let (records, damaged) = read_tolerant(&repo(root.path())).unwrap();
        assert_eq!(records.len(), 4);
        assert!(
            damaged[0].starts_with("journal record 3 cannot be read"),
            "{damaged:?}"
        );

        // Record 3 deleted.
        let root = journal(4);
        std::fs::remove_file(path(root.path(), 3)).unwrap();
        let broken = verify(&repo(root.path()), None).unwrap().broken.unwrap();
        assert_eq!(
            broken,
            "record 3 is missing (deleted): the journal goes from 2 to 4"
        );

        // Records 2 and 3 swapped.
        let root = journal(4);
        let (two, three) = (path(root.path(), 2), path(root.path(), 3));
        let swap = root.path().join("swap");
        std::fs::rename(&two, &swap).unwrap();
        std::fs::rename(&three, &two).unwrap();
        std::fs::rename(&swap, &three).unwrap();
        let broken = verify(&repo(root.path()), None).unwrap().broken.unwrap();
        assert!(
            broken.starts_with("record 2 (0000000002.json) holds record 3"),
            "{broken}"
        );

        // The newest record rewritten whole: only the anchor tells.
        let root = journal(3);
        let head = verify(&repo(root.path()), None).unwrap().head.unwrap();
        let text = std::fs::read_to_string(path(root.path(), 4)).unwrap();
        std::fs::write(path(root.path(), 4), text.replace("\"failed\"", "\"ok\"")).unwrap();
        assert!(verify(&repo(root.path()), None).unwrap().intact());
        let broken = verify(&repo(root.path()), Some(&head))
            .unwrap()
            .broken
            .unwrap();
        assert!(broken.contains("not the one anchored"), "{broken}");
    }

    #[test]
    fn concurrent_appends_make_one_chain() {
        let root = tempfile::tempdir().unwrap();
        repo(root.path());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let root = root.path().to_path_buf();
                std::thread::spawn(move || {
                    let repo = Repository::open(&root).unwrap();
                    for i in 0..10 {
                        append(&repo, &entry(t * 100 + i)).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let verification = verify(&repo(root.path()), None).unwrap();
        assert!(verification.intact(), "{verification:?}");
        assert_eq!(verification.records, 81);
    }
}
