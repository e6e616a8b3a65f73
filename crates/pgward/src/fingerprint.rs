//! Content fingerprints: what a table's data, or the set of large objects,
//! looked like when pg_dump wrote it, in a form that a restored database can
//! be held against.
//!
//! A table's fingerprint is the sum of a hash of each of its rows as COPY
//! text (the line without its newline), together with the row count. A sum
//! does not depend on row order, which PostgreSQL does not keep across a
//! restore, and counts a duplicated row twice, which an XOR would cancel
//! out. Backups fingerprint the COPY text in the archive as it streams
//! past; drills fingerprint `COPY ... TO STDOUT` of the restored table under
//! pg_dump's session settings, so both sides see the same text.
//!
//! Two row hashes exist ([`Algorithm`]); the manifest names the one its
//! backup used, and verify and drill recompute with that one. Backups are
//! fingerprinted with XXH3-128 since manifest v6: the fingerprints guard
//! against accidental damage (a flipped bit, a lost or doubled row, a
//! value that came back different), where a 128-bit hash misses one change
//! in 2^128 just as SHA-256 would miss one in 2^256 (both far beyond any
//! real chance), at a tenth of the cost per row. Deliberate tampering is
//! what the artifact's and archive's SHA-256, the manifest digest and the
//! signature are for; the fingerprints never were.
//!
//! Not to be confused with OpenPGP key fingerprints ([`crate::encryption`]).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use xxhash_rust::xxh3::{Xxh3, xxh3_128};

/// How fingerprints are computed; recorded in manifests
/// (`content.fingerprint-algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// The sum modulo 2^256 of each item's SHA-256 (manifests v3 to v5).
    Sha256,
    /// The sum modulo 2^128 of each item's XXH3-128 (seed 0), from v6.
    #[default]
    Xxh3_128,
}

impl Algorithm {
    /// What new backups use.
    pub const CURRENT: Algorithm = Algorithm::Xxh3_128;

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256-sum-of-rows",
            Algorithm::Xxh3_128 => "xxh3-128-sum-of-rows",
        }
    }

    pub fn from_name(name: &str) -> Option<Algorithm> {
        [Algorithm::Sha256, Algorithm::Xxh3_128]
            .into_iter()
            .find(|a| a.name() == name)
    }

    /// Bytes of one item's hash, and of the sum.
    pub fn width(self) -> usize {
        match self {
            Algorithm::Sha256 => 32,
            Algorithm::Xxh3_128 => 16,
        }
    }

    /// Whether `sum` has this algorithm's form (lowercase hex, 2 digits
    /// per byte).
    pub fn is_sum(self, sum: &str) -> bool {
        sum.len() == 2 * self.width()
            && sum
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    }
}

/// One item's hash, fed in pieces.
#[derive(Clone)]
enum ItemHasher {
    Sha256(Sha256),
    Xxh3(Box<Xxh3>),
}

impl ItemHasher {
    fn new(algorithm: Algorithm) -> ItemHasher {
        match algorithm {
            Algorithm::Sha256 => ItemHasher::Sha256(Sha256::new()),
            Algorithm::Xxh3_128 => ItemHasher::Xxh3(Box::new(Xxh3::new())),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            ItemHasher::Sha256(h) => h.update(data),
            ItemHasher::Xxh3(h) => h.update(data),
        }
    }

    /// The hash so far, as a big-endian number; starts over.
    fn finish_reset(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        match self {
            ItemHasher::Sha256(h) => out.copy_from_slice(&h.finalize_reset()),
            ItemHasher::Xxh3(h) => {
                out[16..].copy_from_slice(&h.digest128().to_be_bytes());
                h.reset();
            }
        }
        out
    }
}

impl fmt::Debug for ItemHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ItemHasher::Sha256(_) => "ItemHasher::Sha256",
            ItemHasher::Xxh3(_) => "ItemHasher::Xxh3",
        })
    }
}

/// One whole item's hash as a big-endian number.
fn hash_whole(algorithm: Algorithm, item: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    match algorithm {
        Algorithm::Sha256 => out.copy_from_slice(&Sha256::digest(item)),
        Algorithm::Xxh3_128 => out[16..].copy_from_slice(&xxh3_128(item).to_be_bytes()),
    }
    out
}

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
/// the sum of their hashes modulo 2^(8 x the algorithm's width).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MultisetDigest {
    algorithm: Algorithm,
    count: u64,
    /// Little-endian 64-bit limbs of the sum (the low `width / 8` used).
    sum: [u64; 4],
}

impl MultisetDigest {
    pub fn new(algorithm: Algorithm) -> MultisetDigest {
        MultisetDigest {
            algorithm,
            count: 0,
            sum: [0; 4],
        }
    }

    /// Adds one item's hash, a big-endian number of the algorithm's width
    /// in the low bytes of `digest`.
    pub fn add(&mut self, digest: &[u8; 32]) {
        self.add_number(digest);
        self.count += 1;
    }

    fn add_number(&mut self, big_endian: &[u8; 32]) {
        let limbs = self.algorithm.width() / 8;
        let mut carry = false;
        for (limb, bytes) in self.sum[..limbs]
            .iter_mut()
            .zip(big_endian.rchunks_exact(8))
        {
            let value = u64::from_be_bytes(bytes.try_into().expect("8 bytes"));
            let (partial, overflow_a) = limb.overflowing_add(value);
            let (total, overflow_b) = partial.overflowing_add(carry as u64);
            *limb = total;
            carry = overflow_a || overflow_b;
        }
    }

    /// Adds a finished fingerprint's items (the union of two multisets);
    /// false when its sum is not of this digest's algorithm.
    pub fn merge(&mut self, other: &ContentFingerprint) -> bool {
        if !self.algorithm.is_sum(&other.sum) {
            return false;
        }
        let hex = other.sum.as_bytes();
        let mut number = [0u8; 32];
        let low = &mut number[32 - self.algorithm.width()..];
        for (byte, pair) in low.iter_mut().zip(hex.chunks_exact(2)) {
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
        let limbs = self.algorithm.width() / 8;
        let mut hex = String::with_capacity(2 * self.algorithm.width());
        for limb in self.sum[..limbs].iter().rev() {
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
    /// Lowercase hex, 2 digits per byte of the algorithm's width.
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
#[derive(Debug, Clone)]
pub struct CopyTextDigest {
    rows: MultisetDigest,
    /// A row that arrived in pieces (one that ends in the chunk it began
    /// in is hashed whole, which is most of them, and faster).
    row: ItemHasher,
    /// Bytes of the current line so far, and its first two bytes, to
    /// recognise the end-of-data marker.
    row_len: u64,
    row_head: [u8; 2],
    ended: bool,
}

impl Default for CopyTextDigest {
    fn default() -> Self {
        CopyTextDigest::new(Algorithm::CURRENT)
    }
}

impl CopyTextDigest {
    pub fn new(algorithm: Algorithm) -> CopyTextDigest {
        CopyTextDigest {
            rows: MultisetDigest::new(algorithm),
            row: ItemHasher::new(algorithm),
            row_len: 0,
            row_head: [0; 2],
            ended: false,
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.ended {
            match memchr::memchr(b'\n', data) {
                Some(end) if self.row_len == 0 => {
                    let row = &data[..end];
                    if row == b"\\." {
                        self.ended = true;
                        return;
                    }
                    let digest = hash_whole(self.rows.algorithm, row);
                    self.rows.add(&digest);
                    data = &data[end + 1..];
                }
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
        let digest = self.row.finish_reset();
        self.rows.add(&digest);
        self.row_len = 0;
    }

    /// The fingerprint of the complete lines seen (an unfinished last line
    /// is not a row: COPY ends every row with a newline).
    pub fn finish(&self) -> ContentFingerprint {
        self.rows.finish()
    }
}

/// Fingerprints large objects: one item per object, the hash of its oid
/// (decimal, then a NUL) followed by its bytes, so that the same data
/// under another oid counts as different.
#[derive(Debug, Clone)]
pub struct LargeObjectDigest {
    objects: MultisetDigest,
    current: Option<ItemHasher>,
}

impl Default for LargeObjectDigest {
    fn default() -> Self {
        LargeObjectDigest::new(Algorithm::CURRENT)
    }
}

impl LargeObjectDigest {
    pub fn new(algorithm: Algorithm) -> LargeObjectDigest {
        LargeObjectDigest {
            objects: MultisetDigest::new(algorithm),
            current: None,
        }
    }

    pub fn begin(&mut self, oid: u32) {
        self.end();
        let mut hasher = ItemHasher::new(self.objects.algorithm);
        hasher.update(oid.to_string().as_bytes());
        hasher.update(&[0u8]);
        self.current = Some(hasher);
    }

    pub fn update(&mut self, data: &[u8]) {
        if let Some(hasher) = &mut self.current {
            hasher.update(data);
        }
    }

    pub fn end(&mut self) {
        if let Some(mut hasher) = self.current.take() {
            self.objects.add(&hasher.finish_reset());
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

    const BOTH: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Xxh3_128];

    fn with(algorithm: Algorithm, text: &[u8], chunk: usize) -> ContentFingerprint {
        let mut digest = CopyTextDigest::new(algorithm);
        for piece in text.chunks(chunk.max(1)) {
            digest.update(piece);
        }
        digest.finish()
    }

    fn of(text: &[u8], chunk: usize) -> ContentFingerprint {
        with(Algorithm::CURRENT, text, chunk)
    }

    /// Known answers computed outside pgward (Python's hashlib and the
    /// reference xxhash): the sums of the rows' hashes as big-endian
    /// numbers. The SHA-256 one is what every backup before manifest v6
    /// recorded, so it must never change.
    #[test]
    fn both_algorithms_give_the_reference_sums() {
        let rows = b"1\tx\n2\ty\n3\t\\N\n";
        for chunk in [1, 2, 5, 100] {
            let sha = with(Algorithm::Sha256, rows, chunk);
            assert_eq!(
                sha.sum,
                "532c91d3e334fb5e72f54ca3ca844cb2bb1ea26da88fe93f6aaf798f54848450"
            );
            let xxh = with(Algorithm::Xxh3_128, rows, chunk);
            assert_eq!(xxh.sum, "eede3958b7d67163635ef3944927b408");
            assert_eq!((sha.count, xxh.count), (3, 3));
        }
        let large_objects = |algorithm| {
            let mut digest = LargeObjectDigest::new(algorithm);
            digest.begin(1);
            digest.update(b"hel");
            digest.update(b"lo");
            digest.begin(2);
            digest.finish().sum
        };
        assert_eq!(
            large_objects(Algorithm::Sha256),
            "af25c72473acb95c68fabd1130eaf2613f7d4bb7c898cab2f7050c5187e89666"
        );
        assert_eq!(
            large_objects(Algorithm::Xxh3_128),
            "5a40e8062c53656175e55b6789e2d668"
        );
        for algorithm in BOTH {
            assert_eq!(Algorithm::from_name(algorithm.name()), Some(algorithm));
        }
        assert_eq!(Algorithm::from_name("blake3-sum-of-rows"), None);
    }

    #[test]
    fn row_order_and_chunking_do_not_matter() {
        for algorithm in BOTH {
            let of = |text: &[u8], chunk| with(algorithm, text, chunk);
            let a = of(b"1\tx\n2\ty\n3\t\\N\n", 100);
            assert_eq!(a.count, 3);
            assert_eq!(a, of(b"3\t\\N\n1\tx\n2\ty\n", 100));
            for chunk in [1, 2, 3, 5] {
                assert_eq!(a, of(b"2\ty\n3\t\\N\n1\tx\n", chunk), "chunk {chunk}");
            }
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
        assert_ne!(
            twice.sum,
            MultisetDigest::new(Algorithm::CURRENT).finish().sum
        );
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
        let mut digest = MultisetDigest::new(Algorithm::Sha256);
        let mut max = [0xffu8; 32];
        digest.add(&max);
        max = [0u8; 32];
        max[31] = 1;
        digest.add(&max);
        // (2^256 - 1) + 1 wraps to 0.
        assert_eq!(digest.finish().sum, "0".repeat(64));
        let mut one_limb = MultisetDigest::new(Algorithm::Sha256);
        let mut low = [0u8; 32];
        low[24..].copy_from_slice(&[0xff; 8]);
        one_limb.add(&low);
        one_limb.add(&low);
        assert_eq!(
            one_limb.finish().sum,
            format!("{}1{}", "0".repeat(47), "fffffffffffffffe")
        );
        // XXH3-128 sums wrap at 2^128: the upper half of a number is not
        // theirs, and carries out of the low 128 bits are dropped.
        let mut short = MultisetDigest::new(Algorithm::Xxh3_128);
        let mut top = [0u8; 32];
        top[16..].copy_from_slice(&[0xff; 16]);
        short.add(&top);
        let mut one = [0u8; 32];
        one[31] = 1;
        short.add(&one);
        assert_eq!(short.finish().sum, "0".repeat(32));
        short.add(&one);
        short.add(&[0xee; 32]);
        assert_eq!(short.finish().sum, format!("{}ef", "e".repeat(30)));
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
        for algorithm in BOTH {
            let of = |text: &[u8]| with(algorithm, text, 100);
            let mut merged = MultisetDigest::new(algorithm);
            assert!(merged.merge(&of(b"1\tx\n2\ty\n")));
            assert!(merged.merge(&of(b"3\tz\n")));
            assert_eq!(merged.finish(), of(b"3\tz\n1\tx\n2\ty\n"));
            assert!(!merged.merge(&ContentFingerprint::default()));
        }
        // A sum of the other algorithm is not merged.
        let mut merged = MultisetDigest::new(Algorithm::Xxh3_128);
        assert!(!merged.merge(&with(Algorithm::Sha256, b"1\n", 100)));
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
