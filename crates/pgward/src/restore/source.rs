//! Reading a backup back: the stored artifact, decrypted when it is
//! encrypted, decompressed, and checked on the way exactly as `verify`
//! checks it (archive sha256 and size against the manifest, the archive's
//! structure, the MDC of an encrypted artifact), so that a restore knows at
//! the end whether what it fed pg_restore was the backup, bit for bit.

use crate::encryption::secret::Decryptor;
use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::CopyError;
use crate::pipeline::Observer;
use crate::pipeline::archive::custom::{CustomInspector, OffsetPatch};
use crate::pipeline::archive::{ArchiveFormat, ArchiveSummary, Toc};
use crate::pipeline::compress;
use crate::pipeline::decrypt::{DecryptError, Decrypting, decrypt};
use crate::pipeline::hash::{StreamHasher, digest_reader};
use crate::repository::Repository;
use crate::repository::manifest::Manifest;
use crate::storage::{FailureSlot, Watched};
use std::io::{self, BufReader, Read, Write};

/// The stored bytes, before decompression.
enum Stored {
    Plain(Box<dyn Read + Send>),
    Encrypted(Decrypting),
    /// Nothing: stands in while the decoder works on another thread.
    Empty,
}

impl Read for Stored {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stored::Plain(file) => file.read(buf),
            Stored::Encrypted(decrypting) => decrypting.read(buf),
            Stored::Empty => Ok(0),
        }
    }
}

/// The plaintext archive of one backup as a `Read`, observed as it passes.
pub struct ArchiveSource {
    decoder: zstd::stream::read::Decoder<'static, BufReader<Stored>>,
    hasher: StreamHasher,
    inspector: CustomInspector,
    manifest: Manifest,
    /// The first read the storage failed, seen below decryption (whose
    /// errors keep only text) and below a decryption command (which only
    /// sees its input end early).
    storage_failure: FailureSlot,
}

/// A read that failed: the backup is damaged, unless the storage failed
/// to deliver it (an S3 request that failed for good is no proof of
/// damage, and must not become a drill's FAIL verdict).
fn read_failed_with(manifest: &Manifest, slot: &FailureSlot, e: impl std::fmt::Display) -> Error {
    match slot.lock().expect("not poisoned").clone() {
        Some(failure) => Error::repository(format!(
            "reading backup {} failed: {failure}",
            manifest.id
        ))
        .with_hint(
            "the storage did not deliver the artifact, which says nothing about the backup: run it again",
        ),
        None => damaged(manifest, e),
    }
}

/// A failure of the backup itself (as opposed to the restore's): its
/// artifact does not match its manifest.
pub(crate) fn damaged(manifest: &Manifest, detail: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Integrity,
        format!("backup {} is damaged: {detail}", manifest.id),
    )
    .with_hint("run `pgward verify` on it; restore another backup")
}

impl ArchiveSource {
    /// Checks the stored file's size and sha256 (cheap: it is compressed),
    /// then opens it for reading. `decryptor` is needed when the artifact
    /// is encrypted.
    pub fn open(
        repo: &Repository,
        manifest: &Manifest,
        decryptor: Option<&Decryptor>,
    ) -> Result<ArchiveSource> {
        if ArchiveFormat::from_name(&manifest.archive.format) != Some(ArchiveFormat::Custom) {
            return Err(Error::config(format!(
                "backup {} is a {} archive (pgward before manifest v2); restore and drill read custom archives",
                manifest.id, manifest.archive.format
            ))
            .with_hint("restore it by hand: zstd -d < ARTIFACT | pg_restore ..., or take a new backup"));
        }
        let path = repo.artifact_path(manifest);
        // One open for the check and the read on disk: what was checked is
        // what is read. An object is read twice, the second time only if
        // it is still the version the first read saw (and the archive's
        // sha256, proved at the end, covers what the second read brought).
        let mut version = None;
        let (mut file, size): (Box<dyn ReadSeek>, u64) = if repo.is_remote() {
            let opened = repo
                .open_artifact_versioned(manifest)
                .map_err(|e| Error::repository_io("cannot open the artifact", &path, e))?;
            version = opened.version;
            (Box::new(Unseekable(Some(opened.stream))), opened.bytes)
        } else {
            let file = repo
                .open_artifact(manifest)
                .map_err(|e| Error::repository_io("cannot open the artifact", &path, e))?;
            let size = file
                .metadata()
                .map_err(|e| Error::repository_io("cannot read the artifact", &path, e))?
                .len();
            (Box::new(file), size)
        };
        if size != manifest.artifact.bytes {
            return Err(damaged(
                manifest,
                format!(
                    "{} has {size} bytes, the manifest says {}",
                    path.display(),
                    manifest.artifact.bytes
                ),
            ));
        }
        let stored =
            digest_reader(StopOnSignal(&mut file)).map_err(
                |e| match crate::interrupt::pending() {
                    Some(signal) => Error::new(
                        ErrorKind::Interrupted { signal },
                        format!(
                            "reading backup {} stopped by {}",
                            manifest.id,
                            crate::pipeline::child::signal_name(signal)
                        ),
                    ),
                    None => Error::repository_io("cannot read the artifact", &path, e),
                },
            )?;
        if stored.bytes != manifest.artifact.bytes || stored.sha256 != manifest.artifact.sha256 {
            return Err(damaged(
                manifest,
                format!(
                    "{} has {} bytes with sha256 {}, the manifest says {} bytes with {}",
                    path.display(),
                    stored.bytes,
                    stored.sha256,
                    manifest.artifact.bytes,
                    manifest.artifact.sha256
                ),
            ));
        }
        let file: Box<dyn Read + Send> = if repo.is_remote() {
            drop(file);
            repo.reopen_artifact(manifest, version.as_deref())
                .map_err(|e| Error::repository_io("cannot open the artifact", &path, e))?
        } else {
            std::io::Seek::rewind(&mut file)
                .map_err(|e| Error::repository_io("cannot read the artifact", &path, e))?;
            Box::new(file)
        };
        let storage_failure = FailureSlot::default();
        let file: Box<dyn Read + Send> = Box::new(Watched {
            inner: file,
            slot: storage_failure.clone(),
        });
        let stored = match (&manifest.artifact.encryption, decryptor) {
            (None, _) => Stored::Plain(file),
            (Some(encryption), None) => {
                let recipients: Vec<String> = encryption
                    .recipients
                    .iter()
                    .map(|r| crate::encryption::short(&r.fingerprint))
                    .collect();
                return Err(Error::config(format!(
                    "backup {} is encrypted (to {}) and no secret key or decryption command was given",
                    manifest.id,
                    recipients.join(", ")
                ))
                .with_hint("pass --secret-key FILE (or PGWARD_SECRET_KEY, decryption.secret-key), or --gpg"));
            }
            (Some(encryption), Some(decryptor)) => {
                crate::verify::require_recipient(manifest, encryption, decryptor)?;
                match decrypt(file, decryptor) {
                    Ok(decrypting) => Stored::Encrypted(decrypting),
                    Err(DecryptError::Command(e)) => {
                        return Err(Error::config(format!(
                            "cannot run the decryption {}: {e}",
                            decryptor.describe()
                        )));
                    }
                    Err(e) => return Err(read_failed_with(manifest, &storage_failure, e)),
                }
            }
        };
        let decoder = compress::decoder(stored)
            .map_err(|e| read_failed_with(manifest, &storage_failure, e))?;
        Ok(ArchiveSource {
            decoder,
            hasher: StreamHasher::default(),
            inspector: CustomInspector::without_fingerprints(),
            manifest: manifest.clone(),
            storage_failure,
        })
    }

    /// What a failed read of this archive means: damage, or the storage's
    /// failure to deliver it (see [`Watched`]).
    pub(crate) fn read_failed(&self, e: impl std::fmt::Display) -> Error {
        read_failed_with(&self.manifest, &self.storage_failure, e)
    }

    /// The archive's TOC, once enough has been read.
    pub fn toc(&self) -> Option<&Toc> {
        self.inspector.toc()
    }

    /// The header and TOC bytes, once enough has been read: an archive
    /// without data, which pg_restore reads for the schema.
    pub fn toc_bytes(&self) -> &[u8] {
        self.inspector.toc_bytes()
    }

    /// Reads to the end and proves that everything read was the backup:
    /// decryption's MDC, the archive's size and sha256, and a complete
    /// archive. Returns the summary with the fingerprints of what was read,
    /// and the data offsets for a seekable copy (see
    /// [`CustomInspector::offset_patches`]).
    pub fn finish(mut self) -> Result<(ArchiveSummary, Vec<OffsetPatch>)> {
        let manifest = self.manifest.clone();
        // What the consumer did not read (pg_restore stops once it has what
        // it was asked for) still goes through the checks; the inspector
        // rejects anything after the archive's last block.
        let slot = self.storage_failure.clone();
        io::copy(&mut self, &mut io::sink()).map_err(|e| read_failed_with(&manifest, &slot, e))?;
        let mut buffered = self.decoder.finish();
        let extra = buffered.buffer().len() as u64
            + io::copy(&mut buffered, &mut io::sink())
                .map_err(|e| read_failed_with(&manifest, &slot, e))?;
        if let Stored::Encrypted(decrypting) = buffered.into_inner() {
            decrypting
                .finish()
                .map_err(|e| read_failed_with(&manifest, &slot, e))?;
        }
        if extra > 0 {
            return Err(damaged(
                &manifest,
                format!("{extra} bytes follow the compressed archive"),
            ));
        }
        let digest = self.hasher.finish();
        if digest.bytes != manifest.archive.bytes || digest.sha256 != manifest.archive.sha256 {
            return Err(damaged(
                &manifest,
                format!(
                    "the archive has {} bytes with sha256 {}, the manifest says {} bytes with {}",
                    digest.bytes, digest.sha256, manifest.archive.bytes, manifest.archive.sha256
                ),
            ));
        }
        let patches = self.inspector.offset_patches();
        let summary = self.inspector.finish().map_err(|e| damaged(&manifest, e))?;
        Ok((summary, patches))
    }
}

impl ArchiveSource {
    /// Copies the rest of the archive into `sink`, observing it as `read`
    /// does, with decryption and decompression on their own thread: a
    /// restore has the machine to itself while it reads, and the checks
    /// (sha256, inspection) then cost no wall time of their own. When the
    /// sink fails, the rest is still read and observed before the write
    /// error is returned.
    pub fn copy_to(
        &mut self,
        sink: &mut dyn Write,
        mut keep_going: impl FnMut(u64) -> bool,
    ) -> Result<u64, CopyError> {
        type Decoder = zstd::stream::read::Decoder<'static, BufReader<Stored>>;
        // The decoder moves to the thread and comes back when it ends; a
        // placeholder holds its place meanwhile.
        let (chunks, receive) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(4);
        let mut decoder: Decoder = std::mem::replace(
            &mut self.decoder,
            compress::decoder(Stored::Empty).expect("an empty decoder"),
        );
        let thread = std::thread::Builder::new()
            .name("restore-decode".into())
            .spawn(move || {
                loop {
                    let mut buffer = vec![0u8; crate::pipeline::CHUNK_SIZE];
                    let sent = match decoder.read(&mut buffer) {
                        Ok(0) => break,
                        Ok(n) => {
                            buffer.truncate(n);
                            chunks.send(Ok(buffer))
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            let _ = chunks.send(Err(e));
                            break;
                        }
                    };
                    if sent.is_err() {
                        break; // the consumer stopped
                    }
                }
                decoder
            })
            .map_err(CopyError::Read)?;
        // The archive's sha256 costs as much as decoding it: a third thread
        // (the spool is written before pg_restore starts, so both cores are
        // there to use).
        let mut hasher = crate::pipeline::offload::Offloaded::new(std::mem::take(&mut self.hasher));
        let mut total = 0u64;
        // Once the sink stops taking data (pg_restore has what it was asked
        // for), what is already decoded is still observed, and the rest
        // too: the checks in `finish` need every byte.
        let mut sink_failed = None;
        let outcome = loop {
            if !keep_going(total) {
                break Err(CopyError::Stopped);
            }
            match receive.recv() {
                Err(_) => break sink_failed.map_or(Ok(total), |e| Err(CopyError::Write(e))),
                Ok(Err(e)) => break Err(CopyError::Read(e)),
                Ok(Ok(chunk)) => {
                    hasher.observe(&chunk);
                    self.inspector.update(&chunk);
                    if sink_failed.is_none() {
                        match sink.write_all(&chunk) {
                            Ok(()) => total += chunk.len() as u64,
                            Err(e) => sink_failed = Some(e),
                        }
                    }
                }
            }
        };
        drop(receive);
        self.decoder = thread.join().expect("the decoding thread does not panic");
        self.hasher = hasher.into_inner();
        outcome
    }
}

impl Read for ArchiveSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.decoder.read(buf)?;
        self.hasher.observe(&buf[..n]);
        self.inspector.update(&buf[..n]);
        Ok(n)
    }
}

/// A reader that fails once a signal was received (see
/// [`crate::interrupt`]), so that reading a large artifact stops on Ctrl-C.
trait ReadSeek: Read + std::io::Seek + Send {}
impl<T: Read + std::io::Seek + Send> ReadSeek for T {}

/// A stream in the place of a file; it is never rewound (a remote
/// artifact is opened again instead).
struct Unseekable(Option<Box<dyn Read + Send>>);

impl Read for Unseekable {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.0 {
            Some(stream) => stream.read(buf),
            None => Ok(0),
        }
    }
}

impl std::io::Seek for Unseekable {
    fn seek(&mut self, _: std::io::SeekFrom) -> io::Result<u64> {
        Err(io::Error::other("a stream is not rewound"))
    }
}

struct StopOnSignal<R>(R);

impl<R: std::io::Read> std::io::Read for StopOnSignal<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if crate::interrupt::pending().is_some() {
            // Not ErrorKind::Interrupted: io::copy would retry that.
            return Err(std::io::Error::other("stopped by a signal"));
        }
        self.0.read(buf)
    }
}
