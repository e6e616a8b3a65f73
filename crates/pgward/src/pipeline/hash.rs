//! An observer that counts and hashes the bytes that pass it.

use super::Observer;
use sha2::{Digest, Sha256};

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

impl Observer for StreamHasher {
    fn observe(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
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

/// SHA-256 and length of a whole file, read in chunks.
pub fn digest_file(path: &std::path::Path) -> std::io::Result<StreamDigest> {
    digest_reader(std::fs::File::open(path)?)
}

/// Size and sha256 of everything `reader` yields.
pub fn digest_reader(reader: impl std::io::Read) -> std::io::Result<StreamDigest> {
    let mut reader = super::ObserveRead::new(reader, StreamHasher::default());
    std::io::copy(&mut reader, &mut std::io::sink())?;
    Ok(reader.into_parts().1.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{ObserveRead, ObserveWrite};
    use std::io::{self, Write};

    #[test]
    fn writer_and_reader_agree_with_known_digest() {
        let mut w = ObserveWrite::new(Vec::new(), StreamHasher::default());
        w.write_all(b"abc").unwrap();
        let (inner, hasher) = w.into_parts();
        let digest = hasher.finish();
        assert_eq!(inner, b"abc");
        assert_eq!(digest.bytes, 3);
        assert_eq!(
            digest.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut r = ObserveRead::new(&b"abc"[..], StreamHasher::default());
        io::copy(&mut r, &mut io::sink()).unwrap();
        assert_eq!(r.into_parts().1.finish(), digest);
    }
}
