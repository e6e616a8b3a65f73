//! The streaming pipeline: pg_dump's output flows through composable
//! `Read`/`Write` stages into a file, and is observed on the way.
//!
//! Following pgBackRest's split between filters that only observe (size,
//! hash, archive structure) and filters that transform (compression), a
//! backup is
//!
//! ```text
//! pg_dump stdout ─▶ observe plaintext (sha256, bytes, archive inspection)
//!                ─▶ zstd (multi-threaded) ─▶ observe stored bytes (sha256, bytes) ─▶ file
//! ```
//!
//! Every stage holds a bounded buffer, so memory stays flat whatever the
//! database size. `verify` reuses the same observers over the stored file.

pub mod archive;
pub mod child;
pub mod compress;
pub mod decrypt;
pub mod encrypt;
pub mod hash;
pub mod offload;

use std::io::{self, Read, Write};

/// An "in" stage in pgBackRest's terms: sees every byte, changes none.
pub trait Observer {
    fn observe(&mut self, data: &[u8]);
}

impl<A: Observer, B: Observer> Observer for (A, B) {
    fn observe(&mut self, data: &[u8]) {
        self.0.observe(data);
        self.1.observe(data);
    }
}

impl Observer for archive::ArchiveInspector {
    fn observe(&mut self, data: &[u8]) {
        self.update(data);
    }
}

/// A `Write` stage that shows what it forwards to an [`Observer`].
pub struct ObserveWrite<W, O> {
    inner: W,
    observer: O,
}

impl<W: Write, O: Observer> ObserveWrite<W, O> {
    pub fn new(inner: W, observer: O) -> Self {
        ObserveWrite { inner, observer }
    }

    pub fn observer(&self) -> &O {
        &self.observer
    }

    pub fn into_parts(self) -> (W, O) {
        (self.inner, self.observer)
    }
}

impl<W: Write, O: Observer> Write for ObserveWrite<W, O> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.observer.observe(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A `Read` stage that shows what it reads to an [`Observer`].
pub struct ObserveRead<R, O> {
    inner: R,
    observer: O,
}

impl<R: Read, O: Observer> ObserveRead<R, O> {
    pub fn new(inner: R, observer: O) -> Self {
        ObserveRead { inner, observer }
    }

    pub fn into_parts(self) -> (R, O) {
        (self.inner, self.observer)
    }
}

impl<R: Read, O: Observer> Read for ObserveRead<R, O> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.observer.observe(&buf[..n]);
        Ok(n)
    }
}

/// Size of the chunks moved between stages: large enough to amortise
/// syscalls, small enough to keep memory flat.
pub const CHUNK_SIZE: usize = 256 * 1024;

/// Where a copy between a source and a sink failed: the distinction matters
/// because a read failure is the producer's fault (pg_dump, a corrupt file)
/// while a write failure is the repository's (disk full, permissions).
#[derive(Debug)]
pub enum CopyError {
    Read(io::Error),
    Write(io::Error),
    /// The caller's `keep_going` check asked to stop (a signal arrived).
    Stopped,
}

/// Copies `source` to `sink` until EOF, calling `on_chunk` with the running
/// total after every chunk; stops early when `keep_going` returns false.
pub fn copy_stream(
    source: &mut dyn Read,
    sink: &mut dyn Write,
    mut keep_going: impl FnMut(u64) -> bool,
) -> Result<u64, CopyError> {
    let mut buffer = vec![0u8; CHUNK_SIZE];
    let mut total = 0u64;
    loop {
        if !keep_going(total) {
            return Err(CopyError::Stopped);
        }
        let n = match source.read(&mut buffer) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        sink.write_all(&buffer[..n]).map_err(CopyError::Write)?;
        total += n as u64;
    }
}
