//! Content fingerprints: what a table's data, or the set of large objects,
//! looked like when pg_dump wrote it, in a form that a restored database can
//! be held against.
//!
//! A table's fingerprint is the sum, modulo 2^256, of the SHA-256 of each of
//! its rows as COPY text (the line without its newline), together with the
//! row count. A sum does not depend on row order, which PostgreSQL does not
//! keep across a restore, and counts a duplicated row twice, which an XOR
//! would cancel out. Backups fingerprint the COPY text in the archive as it
//! streams past; drills fingerprint `COPY ... TO STDOUT` of the restored
//! table under pg_dump's session settings, so both sides see the same text.
//!
//! Not to be confused with OpenPGP key fingerprints ([`crate::encryption`]).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// How fingerprints are computed; recorded in manifests.
pub const ALGORITHM: &str = "sha256-sum-of-rows";

/// The session settings that decide how values are written as COPY text.
/// pg_dump sets DateStyle, IntervalStyle and extra_float_digits itself;
/// TimeZone (timestamptz) and bytea_output would come from the server's
/// defaults for the role and database, so a backup pins them for pg_dump
/// (through the connection's `options`): UTC, which every server knows the
/// same way whatever its time zone data, and hex. The instants dumped are
/// the same in any zone. Manifests record the settings, and a drill reads
/// the restored tables under them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TextSettings {
    pub timezone: String,
    pub bytea_output: String,
    pub datestyle: String,
    pub intervalstyle: String,
    pub extra_float_digits: String,
}

impl TextSettings {
    /// The settings backups are taken with.
    pub fn pg_dump() -> TextSettings {
        TextSettings {
            timezone: "UTC".to_string(),
            bytea_output: "hex".to_string(),
            datestyle: "ISO".to_string(),
            intervalstyle: "postgres".to_string(),
            extra_float_digits: "3".to_string(),
        }
    }

    /// The settings pg_dump does not make itself, as a libpq `options`
    /// value (`-c name=value`, spaces and backslashes escaped).
    pub fn libpq_options(&self) -> String {
        let escape = |value: &str| value.replace('\\', "\\\\").replace(' ', "\\ ");
        format!(
            "-c TimeZone={} -c bytea_output={}",
            escape(&self.timezone),
            escape(&self.bytea_output)
        )
    }

    /// `SET` statements giving a session all of these settings, plus the
    /// ones pg_dump makes that do not change the text but must not get in
    /// the way (an empty search_path, as pg_dump's, so that reg* values
    /// print schema-qualified; row security off).
    pub fn set_statements(&self) -> String {
        let literal = |value: &str| format!("'{}'", value.replace('\'', "''"));
        format!(
            "SET TimeZone = {}; SET bytea_output = {}; SET DateStyle = {}; \
             SET IntervalStyle = {}; SET extra_float_digits = {}; \
             SELECT pg_catalog.set_config('search_path', '', false); SET row_security = off; \
             SET statement_timeout = 0; SET lock_timeout = 0; \
             SET idle_in_transaction_session_timeout = 0;",
            literal(&self.timezone),
            literal(&self.bytea_output),
            literal(&self.datestyle),
            literal(&self.intervalstyle),
            literal(&self.extra_float_digits),
        )
    }
}

/// An order-independent digest of a multiset of items: their count and
/// the sum of their SHA-256 digests modulo 2^256.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MultisetDigest {
    count: u64,
    /// Little-endian 64-bit limbs of the sum.
    sum: [u64; 4],
}

impl MultisetDigest {
    /// Adds one item's SHA-256 digest (read as a big-endian number).
    pub fn add(&mut self, digest: &[u8; 32]) {
        self.add_number(digest);
        self.count += 1;
    }

    fn add_number(&mut self, big_endian: &[u8; 32]) {
        let mut carry = false;
        for (limb, bytes) in self.sum.iter_mut().zip(big_endian.rchunks_exact(8)) {
            let value = u64::from_be_bytes(bytes.try_into().expect("8 bytes"));
            let (partial, overflow_a) = limb.overflowing_add(value);
            let (total, overflow_b) = partial.overflowing_add(carry as u64);
            *limb = total;
            carry = overflow_a || overflow_b;
        }
    }

    /// Adds a finished fingerprint's items (the union of two multisets);
    /// false when its sum is not 64 hex digits.
    pub fn merge(&mut self, other: &ContentFingerprint) -> bool {
        let hex = other.sum.as_bytes();
        if hex.len() != 64 {
            return false;
        }
        let mut number = [0u8; 32];
        for (byte, pair) in number.iter_mut().zip(hex.chunks_exact(2)) {
            let Some(value) = std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
            else {
                return false;
            };
            *byte = value;
        }
        self.add_number(&number);
        self.count += other.count;
        true
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn finish(&self) -> ContentFingerprint {
        let mut hex = String::with_capacity(64);
        for limb in self.sum.iter().rev() {
            hex.push_str(&format!("{limb:016x}"));
        }
        ContentFingerprint {
            count: self.count,
            sum: hex,
        }
    }
}

/// A finished fingerprint: item count and the hex sum (empty when none was
/// taken).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentFingerprint {
    pub count: u64,
    /// 64 lowercase hex digits.
    pub sum: String,
}

impl fmt::Display for ContentFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} items, {}", self.count, self.sum)
    }
}

/// Fingerprints COPY text fed in chunks of any size: one item per line.
/// A line `\.` (the end-of-data marker pg_dump writes into archives) ends
/// the data; what follows it is not data. In COPY text a newline inside a
/// value is always escaped, so every raw newline ends a row.
#[derive(Debug, Clone, Default)]
pub struct CopyTextDigest {
    rows: MultisetDigest,
    row: Sha256,
    /// Bytes of the current line so far, and its first two bytes, to
    /// recognise the end-of-data marker.
    row_len: u64,
    row_head: [u8; 2],
    ended: bool,
}

impl CopyTextDigest {
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.ended {
            match memchr::memchr(b'\n', data) {
                Some(end) => {
                    self.extend_row(&data[..end]);
                    self.end_row();
                    data = &data[end + 1..];
                }
                None => {
                    self.extend_row(data);
                    data = &[];
                }
            }
        }
    }

    fn extend_row(&mut self, part: &[u8]) {
        for (i, &b) in part.iter().take(2).enumerate() {
            let at = self.row_len as usize + i;
            if at < 2 {
                self.row_head[at] = b;
            }
        }
        self.row_len += part.len() as u64;
        self.row.update(part);
    }

    fn end_row(&mut self) {
        if self.row_len == 2 && &self.row_head == b"\\." {
            self.ended = true;
            return;
        }
        let digest: [u8; 32] = self.row.finalize_reset().into();
        self.rows.add(&digest);
        self.row_len = 0;
    }

    /// The fingerprint of the complete lines seen (an unfinished last line
    /// is not a row: COPY ends every row with a newline).
    pub fn finish(&self) -> ContentFingerprint {
        self.rows.finish()
    }
}

/// Fingerprints large objects: one item per object, the SHA-256 of its
/// oid (decimal, then a NUL) followed by its bytes, so that the same data
/// under another oid counts as different.
#[derive(Debug, Clone, Default)]
pub struct LargeObjectDigest {
    objects: MultisetDigest,
    current: Option<Sha256>,
}

impl LargeObjectDigest {
    pub fn begin(&mut self, oid: u32) {
        self.end();
        let mut hasher = Sha256::new();
        hasher.update(oid.to_string().as_bytes());
        hasher.update([0u8]);
        self.current = Some(hasher);
    }

    pub fn update(&mut self, data: &[u8]) {
        if let Some(hasher) = &mut self.current {
            hasher.update(data);
        }
    }

    pub fn end(&mut self) {
        if let Some(hasher) = self.current.take() {
            self.objects.add(&hasher.finalize().into());
        }
    }

    pub fn finish(mut self) -> ContentFingerprint {
        self.end();
        self.objects.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(text: &[u8], chunk: usize) -> ContentFingerprint {
        let mut digest = CopyTextDigest::default();
        for piece in text.chunks(chunk.max(1)) {
            digest.update(piece);
        }
        digest.finish()
    }

    #[test]
    fn row_order_and_chunking_do_not_matter() {
        let a = of(b"1\tx\n2\ty\n3\t\\N\n", 100);
        assert_eq!(a.count, 3);
        assert_eq!(a, of(b"3\t\\N\n1\tx\n2\ty\n", 100));
        for chunk in [1, 2, 3, 5] {
            assert_eq!(a, of(b"2\ty\n3\t\\N\n1\tx\n", chunk), "chunk {chunk}");
        }
    }

    #[test]
    fn content_and_multiplicity_matter() {
        let base = of(b"1\tx\n2\ty\n", 100);
        assert_ne!(base, of(b"1\tx\n2\tz\n", 100));
        // A swapped pair of rows with the same sum of bytes still differs.
        assert_ne!(of(b"ab\n", 100).sum, of(b"ba\n", 100).sum);
        // A duplicated row is not cancelled out.
        let twice = of(b"1\tx\n1\tx\n", 100);
        assert_eq!(twice.count, 2);
        assert_ne!(twice.sum, MultisetDigest::default().finish().sum);
        assert_ne!(twice, of(b"1\tx\n", 100));
    }

    #[test]
    fn the_end_of_data_marker_ends_the_rows() {
        let archived = of(b"1\tx\n2\ty\n\\.\n\n\n", 3);
        assert_eq!(archived, of(b"1\tx\n2\ty\n", 100));
        // An escaped backslash-dot is data, not the marker.
        assert_eq!(of(b"\\\\.\n", 100).count, 1);
        assert_eq!(of(b"\\.x\n", 100).count, 1);
        assert_eq!(of(b"\\.\n", 1).count, 0);
    }

    #[test]
    fn the_sum_carries_across_limbs() {
        let mut digest = MultisetDigest::default();
        let mut max = [0xffu8; 32];
        digest.add(&max);
        max = [0u8; 32];
        max[31] = 1;
        digest.add(&max);
        // (2^256 - 1) + 1 wraps to 0.
        assert_eq!(digest.finish().sum, "0".repeat(64));
        let mut one_limb = MultisetDigest::default();
        let mut low = [0u8; 32];
        low[24..].copy_from_slice(&[0xff; 8]);
        one_limb.add(&low);
        one_limb.add(&low);
        assert_eq!(
            one_limb.finish().sum,
            format!("{}1{}", "0".repeat(47), "fffffffffffffffe")
        );
    }

    #[test]
    fn settings_escape_for_libpq_and_sql() {
        let mut settings = TextSettings::pg_dump();
        assert_eq!(
            settings.libpq_options(),
            "-c TimeZone=UTC -c bytea_output=hex"
        );
        settings.timezone = "America/Port of Spain".into();
        assert_eq!(
            settings.libpq_options(),
            "-c TimeZone=America/Port\\ of\\ Spain -c bytea_output=hex"
        );
        settings.timezone = "it's".into();
        assert!(
            settings
                .set_statements()
                .starts_with("SET TimeZone = 'it''s';")
        );
    }

    #[test]
    fn merged_fingerprints_equal_the_fingerprint_of_the_union() {
        let mut merged = MultisetDigest::default();
        assert!(merged.merge(&of(b"1\tx\n2\ty\n", 100)));
        assert!(merged.merge(&of(b"3\tz\n", 100)));
        assert_eq!(merged.finish(), of(b"3\tz\n1\tx\n2\ty\n", 100));
        assert!(!merged.merge(&ContentFingerprint::default()));
    }

    #[test]
    fn large_objects_bind_oid_and_data() {
        let fingerprint = |objects: &[(u32, &[u8])]| {
            let mut digest = LargeObjectDigest::default();
            for (oid, data) in objects {
                digest.begin(*oid);
                for piece in data.chunks(2) {
                    digest.update(piece);
                }
            }
            digest.finish()
        };
        let a = fingerprint(&[(1, b"hello"), (2, b"")]);
        assert_eq!(a.count, 2);
        assert_eq!(a, fingerprint(&[(2, b""), (1, b"hello")]));
        assert_ne!(a, fingerprint(&[(1, b""), (2, b"hello")]));
        assert_ne!(a, fingerprint(&[(1, b"hellp"), (2, b"")]));
    }
}
