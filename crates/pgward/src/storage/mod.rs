//! Where a repository's files live: one interface, two places. A local
//! directory ([`local::LocalStorage`]) and an S3-compatible bucket
//! ([`s3::S3Storage`]) answer the same calls, so that what moves backups
//! between them (`pgward copy`, `[[mirror]]`) and what reads them back
//! (`list`, `verify`, `restore`, `drill`) is written once.
//!
//! Keys are relative, `/`-separated names (`backups/ID.manifest.json`).
//! Nothing is ever overwritten by accident: [`Storage::put_new`] and a
//! finished [`Upload`] fail with [`io::ErrorKind::AlreadyExists`] when the
//! key exists (a no-replace rename on disk, `If-None-Match: *` on S3).
//! Only records that are replaced by design (a backup's last drill) go
//! through [`Storage::put_replacing`].

pub mod local;
pub mod s3;
mod s3_uploads;

use std::fmt;
use std::io::{self, Read, Write};

/// One stored object: its key below the listed directory, and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub name: String,
    pub bytes: u64,
}

/// An object opened for reading.
pub struct Opened {
    pub stream: Box<dyn Read + Send>,
    /// Its size when it was opened.
    pub bytes: u64,
    /// Its version, where the storage keeps versions.
    pub version: Option<String>,
}

/// A multipart upload the service holds open: begun, and neither
/// completed nor aborted (its process was killed, or could not reach the
/// service to abort it). Its parts take space, and are billed, until it
/// is aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenUpload {
    /// The key the upload would have created.
    pub key: String,
    /// The service's id for the upload.
    pub id: String,
    /// When it began, as the service says (RFC 3339), if it says.
    pub initiated: Option<String>,
}

/// A place that holds a repository's files.
pub trait Storage: Send + Sync + fmt::Debug {
    /// The place itself, for messages: a directory or `s3://bucket/prefix`.
    fn location(&self) -> String;

    /// Where `key` is, for messages.
    fn describe(&self, key: &str) -> String {
        format!("{}/{key}", self.location().trim_end_matches('/'))
    }

    /// The size of `key`, or `None` when there is no such object.
    fn size(&self, key: &str) -> io::Result<Option<u64>>;

    /// The whole of a small object, refused when it is larger than `limit`.
    fn read_whole(&self, key: &str, limit: u64) -> io::Result<Vec<u8>>;

    /// The object as a stream, for artifacts of any size.
    fn open(&self, key: &str) -> io::Result<Box<dyn Read + Send>> {
        self.open_versioned(key).map(|opened| opened.stream)
    }

    /// The object as a stream, with its size and version (the service's
    /// ETag, as its HEAD says; a directory has none), for a reader that
    /// reads it a second time and must get the same object
    /// ([`Storage::open_at_version`]).
    fn open_versioned(&self, key: &str) -> io::Result<Opened>;

    /// The object as a stream, only if its HEAD still says `version`; one
    /// that was replaced since is refused ([`io::ErrorKind::InvalidData`],
    /// "was replaced").
    fn open_at_version(&self, key: &str, version: &str) -> io::Result<Box<dyn Read + Send>> {
        let _ = (key, version);
        Err(no_versions(&self.location()))
    }

    /// The objects directly under `dir` (no deeper), in no given order.
    /// A directory that does not exist is empty.
    fn list(&self, dir: &str) -> io::Result<Vec<Object>>;

    /// Stores a small object that must not exist yet.
    fn put_new(&self, key: &str, bytes: &[u8]) -> io::Result<()>;

    /// Stores a small object, replacing what is there (records that are
    /// replaced by design, never a backup's artifact or manifest).
    fn put_replacing(&self, key: &str, bytes: &[u8]) -> io::Result<()>;

    /// Starts writing a large object that must not exist yet, of about
    /// `expected` bytes when known (a multipart upload sizes its parts for
    /// it: S3 allows 10 000). Nothing is visible under `key` before
    /// [`Upload::finish`] succeeds.
    fn upload(&self, key: &str, expected: Option<u64>) -> io::Result<Box<dyn Upload>>;

    /// Removes `key`; an absent key is not an error.
    fn delete(&self, key: &str) -> io::Result<()>;

    /// A small object and its version (the service's ETag), or `None`
    /// when there is no such object: for a record that is replaced only
    /// if nobody else replaced it first (the lease of a run writing into
    /// a bucket). Only object storage has versions.
    fn read_versioned(&self, key: &str, limit: u64) -> io::Result<Option<(Vec<u8>, String)>> {
        let _ = (key, limit);
        Err(no_versions(&self.location()))
    }

    /// Replaces `key` only if its version is still `version`
    /// (`If-Match`); the new version. A changed or vanished object is
    /// refused with [`io::ErrorKind::AlreadyExists`].
    fn replace_if_version(&self, key: &str, bytes: &[u8], version: &str) -> io::Result<String> {
        let _ = (key, bytes, version);
        Err(no_versions(&self.location()))
    }

    /// The uploads open under keys that start with `prefix`. A directory
    /// has none: a run's staging file is its upload, and runs clean those.
    fn open_uploads(&self, prefix: &str) -> io::Result<Vec<OpenUpload>> {
        let _ = prefix;
        Ok(Vec::new())
    }

    /// Aborts an open upload (one that is gone already is not an error).
    fn abort_open_upload(&self, upload: &OpenUpload) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "{} has no uploads to abort ({})",
                self.location(),
                upload.key
            ),
        ))
    }

    /// Removes `key` if its version is still `version` (services that
    /// ignore the condition remove it anyway: callers read it first).
    fn delete_if_version(&self, key: &str, version: &str) -> io::Result<()> {
        let _ = (key, version);
        Err(no_versions(&self.location()))
    }
}

fn no_versions(location: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("{location} keeps no object versions"),
    )
}

/// A large object being written. Dropping it unfinished aborts it.
pub trait Upload: Write + Send {
    /// Makes the object visible, unless one exists under its key already
    /// (then it is aborted and the error is `AlreadyExists`).
    fn finish(self: Box<Self>) -> io::Result<()>;

    /// Throws away what was written; nothing stays behind (no staging
    /// file, no open multipart upload).
    fn abort(self: Box<Self>) -> io::Result<()>;
}

/// A storage that failed to deliver (a request that failed for good), as
/// opposed to bytes that arrived wrong. Carried inside `io::Error`.
#[derive(Debug)]
pub struct StorageFailure(pub String);

impl fmt::Display for StorageFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StorageFailure {}

/// Whether `e` (or what it wraps) is a [`StorageFailure`].
pub fn is_storage_failure(e: &io::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = e
        .get_ref()
        .map(|inner| inner as &(dyn std::error::Error + 'static));
    while let Some(error) = source {
        if error.is::<StorageFailure>() {
            return true;
        }
        source = match error.downcast_ref::<io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => error.source(),
        };
    }
    false
}

/// The first storage failure a stream met, kept where layers above it
/// (decryption, a decryption command, a decoder thread) keep only text.
pub type FailureSlot = std::sync::Arc<std::sync::Mutex<Option<String>>>;

/// A stream of stored bytes that notes a [`StorageFailure`] in its slot.
pub struct Watched {
    pub inner: Box<dyn Read + Send>,
    pub slot: FailureSlot,
}

impl Read for Watched {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            if is_storage_failure(e) {
                self.slot
                    .lock()
                    .expect("not poisoned")
                    .get_or_insert_with(|| e.to_string());
            }
        })
    }
}

/// Whether `key` is a relative name of plain components: never absolute,
/// never `..`, never empty parts. Keys come from pgward's own layout and
/// from ids checked by [`crate::repository::is_backup_id`]; this is the
/// last guard before a key becomes a path.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('/')
        && key
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

fn invalid_key(key: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{key:?} is not a repository key"),
    )
}

/// Copies `from` into `to` and returns the byte count, stopping on a
/// pending signal so that an interrupted copy aborts its upload.
pub fn copy_stream(from: &mut dyn Read, to: &mut dyn Write) -> io::Result<u64> {
    let mut buffer = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        if let Some(signal) = crate::interrupt::pending() {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                format!("stopped by {}", crate::pipeline::child::signal_name(signal)),
            ));
        }
        let n = match from.read(&mut buffer) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buffer[..n])?;
        total += n as u64;
    }
}

/// What [`probe`] found.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    /// A second write of the same new key was refused.
    pub refuses_replace: bool,
    /// A replacement naming a stale version (`If-Match`) was refused and
    /// one naming the current version went through; `None` where objects
    /// have no versions (a directory).
    pub honours_if_match: Option<bool>,
}

/// Proves `storage` usable: the repository's `backups/` can be listed, a
/// probe object under `tmp/` is written, read back, written again (which
/// must be refused) and deleted. The cause when a step fails.
pub fn probe(storage: &dyn Storage) -> std::result::Result<Probe, String> {
    storage
        .list("backups")
        .map_err(|e| format!("cannot list: {e}"))?;
    let key = format!(
        "tmp/probe-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    );
    let body = b"pgward probe\n";
    storage
        .put_new(&key, body)
        .map_err(|e| format!("cannot write a probe object: {e}"))?;
    let checked = storage
        .read_whole(&key, 1024)
        .map_err(|e| format!("cannot read the probe object back: {e}"))
        .and_then(|read| {
            if read == body {
                Ok(())
            } else {
                Err("the probe object read back differs from what was written".to_string())
            }
        });
    let refuses_replace = checked.as_ref().is_ok()
        && matches!(storage.put_new(&key, body), Err(e) if e.kind() == io::ErrorKind::AlreadyExists);
    let honours_if_match = checked
        .as_ref()
        .ok()
        .and_then(|()| if_match_probe(storage, &key));
    let deleted = storage
        .delete(&key)
        .map_err(|e| format!("cannot delete the probe object: {e}"));
    checked?;
    deleted?;
    Ok(Probe {
        refuses_replace,
        honours_if_match,
    })
}

/// Whether `key` is replaced only at its current version: a stale one
/// must be refused, the current one accepted, and the conditional delete
/// of the result accepted (the leases of runs in a bucket need all three).
fn if_match_probe(storage: &dyn Storage, key: &str) -> Option<bool> {
    let (_, version) = match storage.read_versioned(key, 1024) {
        Err(e) if e.kind() == io::ErrorKind::Unsupported => return None,
        Ok(Some(found)) => found,
        _ => return Some(false),
    };
    let stale = "\"00000000000000000000000000000000\"";
    let refused = matches!(
        storage.replace_if_version(key, b"pgward probe, stale\n", stale),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists
    );
    let accepted = storage.replace_if_version(key, b"pgward probe, current\n", &version);
    let deleted = match &accepted {
        Ok(version) => storage.delete_if_version(key, version).is_ok(),
        Err(_) => false,
    };
    Some(refused && accepted.is_ok() && deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_plain_relative_names() {
        assert!(valid_key("backups/x.manifest.json"));
        assert!(valid_key("pgward-repository.json"));
        for bad in ["", "/etc/passwd", "backups/../x", "a//b", "./a", "a/"] {
            assert!(!valid_key(bad), "{bad:?}");
        }
    }
}
