//! An observing stage: counts and hashes the bytes that pass through.

use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};

/// The identity of a byte stream: its length and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamDigest {
    pub bytes: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// Running length and SHA-256 of a stream.
#[derive(Default, Clone)]
pub struct StreamHasher {
    hasher: Sha256,
    bytes: u64,
}

impl StreamHasher {
    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn finish(self) -> StreamDigest {
        StreamDigest {
            bytes: self.bytes,
            sha256: to_hex(&self.hasher.finalize()),
        }
    }
}

pub fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A `Write` stage that hashes what it forwards to `inner`.
pub struct HashingWriter<W> {
    inner: W,
    hasher: StreamHasher,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: StreamHasher::default(),
        }
    }

    pub fn bytes(&self) -> u64 {
        self.hasher.bytes()
    }

    pub fn into_parts(self) -> (W, StreamDigest) {
        (self.inner, self.hasher.finish())
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A `Read` stage that hashes what it reads from `inner`.
pub struct HashingReader<R> {
    inner: R,
    hasher: StreamHasher,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: StreamHasher::default(),
        }
    }

    pub fn bytes(&self) -> u64 {
        self.hasher.bytes()
    }

    pub fn finish(self) -> StreamDigest {
        self.hasher.finish()
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_and_reader_agree_with_known_digest() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"abc").unwrap();
        let (inner, digest) = w.into_parts();
        assert_eq!(inner, b"abc");
        assert_eq!(digest.bytes, 3);
        assert_eq!(
            digest.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut r = HashingReader::new(&b"abc"[..]);
        io::copy(&mut r, &mut io::sink()).unwrap();
        assert_eq!(r.finish(), digest);
    }
}
