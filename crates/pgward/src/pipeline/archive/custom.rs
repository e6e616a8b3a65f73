//! pg_dump's custom format, uncompressed (`pg_dump -Fc -Z0`): what backups
//! write.
//!
//! Why this format: it streams straight to stdout. The tar format spools
//! every table's data through a temporary file in /tmp first (pg_dump needs
//! each member's size for its tar header), which would put plaintext on
//! disk behind the back of an encrypted backup, and costs a write and a
//! read of the whole dump. pgward compresses the stream itself, so pg_dump
//! does not (`-Z0`), which also leaves the COPY text readable in-stream.
//!
//! Layout: the header and TOC (parsed by [`Toc::parse`]), then one block per
//! TOC entry that has data, in TOC order. A block is a type byte (1: data,
//! 3: large objects), the entry's dump id, then length-prefixed chunks
//! ended by a zero length; a large-object block holds, per object, its oid
//! and its chunks, and ends with oid 0. There is no trailer: the archive is
//! complete when every entry the TOC says has data has its complete block.

use super::{ArchiveError, ArchiveSummary, FORMAT_CUSTOM, MemberStats, TableData, Toc, fail};
use crate::fingerprint::{Algorithm, LargeObjectDigest};
use std::collections::{BTreeMap, BTreeSet};

/// Refuse a TOC larger than this rather than grow without bound on garbage.
const MAX_TOC_BYTES: usize = 512 * 1024 * 1024;
const BLOCK_DATA: u8 = 1;
const BLOCK_BLOBS: u8 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IntFor {
    BlockId { blobs: bool },
    ChunkLength,
    BlobOid,
}

enum State {
    /// Collecting the header and TOC.
    Toc,
    /// Between blocks: the next byte is a block type.
    BlockType,
    /// Collecting one of pg_dump's integers (sign byte + int_size bytes).
    Int(IntFor),
    /// Inside a chunk of data.
    Chunk { remaining: u64 },
}

/// The block being read.
struct Block {
    dump_id: i64,
    blobs: bool,
}

/// Bytes to write at a position of the archive: (position, bytes).
pub type OffsetPatch = (u64, Vec<u8>);

/// Push-based inspector of an uncompressed pg_dump custom-format archive.
pub struct CustomInspector {
    state: State,
    buffer: Vec<u8>,
    next_attempt: usize,
    toc: Option<Toc>,
    /// The header and TOC as they arrived: a data-less archive that
    /// pg_restore can read for the schema.
    toc_bytes: Vec<u8>,
    int_size: usize,
    int_bytes: Vec<u8>,
    block: Option<Block>,
    /// Entries with data, by dump id, and whether their block was read.
    expected: BTreeMap<i64, bool>,
    /// Announced blocks not read yet.
    blocks_left: usize,
    /// Dump ids of the large-object entries (their blocks have type 3).
    blobs_entries: BTreeSet<i64>,
    stats: BTreeMap<i64, MemberStats>,
    large_objects: LargeObjectDigest,
    /// How to fingerprint the data; None: not at all (see
    /// [`CustomInspector::without_fingerprints`]).
    fingerprints: Option<Algorithm>,
    /// Where each entry's data block starts (its type byte).
    block_offsets: BTreeMap<i64, u64>,
    blocks: usize,
    offset: u64,
    error: Option<ArchiveError>,
}

impl Default for CustomInspector {
    fn default() -> Self {
        Self::new()
    }
}

impl CustomInspector {
    /// An inspector that fingerprints as new backups do.
    pub fn new() -> Self {
        Self::fingerprinting(Algorithm::CURRENT)
    }

    /// An inspector that fingerprints with `algorithm` (a manifest's).
    pub fn fingerprinting(algorithm: Algorithm) -> Self {
        CustomInspector {
            state: State::Toc,
            buffer: Vec::new(),
            next_attempt: 0,
            toc: None,
            toc_bytes: Vec::new(),
            int_size: 4,
            int_bytes: Vec::with_capacity(9),
            block: None,
            expected: BTreeMap::new(),
            blocks_left: 0,
            blobs_entries: BTreeSet::new(),
            stats: BTreeMap::new(),
            large_objects: LargeObjectDigest::new(algorithm),
            fingerprints: Some(algorithm),
            block_offsets: BTreeMap::new(),
            blocks: 0,
            offset: 0,
            error: None,
        }
    }

    /// An inspector that checks structure, bytes and rows but takes no
    /// content fingerprints (they cost a hash per row): for reading an
    /// archive whose sha256 is checked against its manifest anyway.
    pub fn without_fingerprints() -> Self {
        CustomInspector {
            fingerprints: None,
            ..Self::new()
        }
    }

    /// Feeds the next chunk; after the first error only remembers it (see
    /// the tar inspector for why the stream keeps flowing).
    pub fn update(&mut self, data: &[u8]) {
        if self.error.is_none()
            && let Err(e) = self.consume(data)
        {
            self.error = Some(e);
        }
    }

    fn consume(&mut self, mut data: &[u8]) -> Result<(), ArchiveError> {
        if let State::Toc = self.state {
            self.buffer.extend_from_slice(data);
            self.offset += data.len() as u64;
            // Re-parsing from the start is cheap for the usual TOC; doubling
            // the threshold keeps a huge one from being parsed per chunk.
            if self.buffer.len() < self.next_attempt.min(MAX_TOC_BYTES) {
                return Ok(());
            }
            match Toc::parse(&self.buffer, FORMAT_CUSTOM) {
                Ok((toc, used)) => {
                    self.start_data(toc)?;
                    let mut rest = std::mem::take(&mut self.buffer);
                    self.toc_bytes = rest[..used].to_vec();
                    rest.drain(..used);
                    self.offset -= rest.len() as u64;
                    return self.consume(&rest);
                }
                Err(e) if Toc::is_truncated(&e) => {
                    if self.buffer.len() >= MAX_TOC_BYTES {
                        return fail("the archive's TOC is larger than 512 MiB");
                    }
                    self.next_attempt = self.buffer.len() * 2;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        while !data.is_empty() {
            match self.state {
                State::Toc => unreachable!("handled above"),
                State::BlockType => {
                    let kind = data[0];
                    data = &data[1..];
                    self.offset += 1;
                    self.start_block(kind)?;
                }
                State::Int(purpose) => {
                    let want = 1 + self.int_size - self.int_bytes.len();
                    let take = want.min(data.len());
                    self.int_bytes.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    self.offset += take as u64;
                    if self.int_bytes.len() == 1 + self.int_size {
                        let value = decode_int(&self.int_bytes);
                        self.int_bytes.clear();
                        self.got_int(purpose, value)?;
                    }
                }
                State::Chunk { remaining } => {
                    let take = remaining.min(data.len() as u64) as usize;
                    let block = self.block.as_ref().expect("a chunk is inside a block");
                    if block.blobs {
                        if self.fingerprints.is_some() {
                            self.large_objects.update(&data[..take]);
                        }
                    } else {
                        let fingerprints = self.fingerprints;
                        self.stats
                            .entry(block.dump_id)
                            .or_insert_with(|| MemberStats::new(fingerprints))
                            .update(&data[..take]);
                    }
                    data = &data[take..];
                    self.offset += take as u64;
                    let remaining = remaining - take as u64;
                    self.state = if remaining == 0 {
                        State::Int(IntFor::ChunkLength)
                    } else {
                        State::Chunk { remaining }
                    };
                }
            }
        }
        Ok(())
    }

    fn start_data(&mut self, toc: Toc) -> Result<(), ArchiveError> {
        if toc.compressed {
            return fail(
                "the archive is compressed by pg_dump; pgward reads uncompressed custom archives (pg_dump -Fc -Z0)",
            );
        }
        self.int_size = toc.int_size;
        self.expected = toc
            .entries
            .iter()
            .filter(|e| e.has_data)
            .map(|e| (e.dump_id, false))
            .collect();
        self.blocks_left = self.expected.len();
        self.blobs_entries = toc
            .entries
            .iter()
            .filter(|e| e.has_data && e.desc == "BLOBS")
            .map(|e| e.dump_id)
            .collect();
        self.toc = Some(toc);
        self.state = State::BlockType;
        Ok(())
    }

    fn start_block(&mut self, kind: u8) -> Result<(), ArchiveError> {
        let at = self.offset - 1;
        if self.blocks_left == 0 {
            return fail(format!(
                "unexpected data at byte {at}, after the last data block the TOC announces"
            ));
        }
        let blobs = match kind {
            BLOCK_DATA => false,
            BLOCK_BLOBS => true,
            other => return fail(format!("unknown data block type {other} at byte {at}")),
        };
        self.state = State::Int(IntFor::BlockId { blobs });
        Ok(())
    }

    fn got_int(&mut self, purpose: IntFor, value: i64) -> Result<(), ArchiveError> {
        // Where the integer started, for messages.
        let at = self.offset - (1 + self.int_size) as u64;
        match purpose {
            IntFor::BlockId { blobs } => {
                match self.expected.get_mut(&value) {
                    Some(seen @ false) => {
                        *seen = true;
                        self.blocks_left -= 1;
                    }
                    Some(true) => {
                        return fail(format!("data block of entry {value} appears twice"));
                    }
                    None => {
                        return fail(format!(
                            "data block for entry {value} at byte {at}, which the TOC says has no data"
                        ));
                    }
                }
                let is_blobs_entry = self.blobs_entries.contains(&value);
                if blobs != is_blobs_entry {
                    return fail(format!(
                        "data block of entry {value} has the wrong type for its TOC entry"
                    ));
                }
                self.blocks += 1;
                self.block_offsets.insert(value, at - 1);
                self.block = Some(Block {
                    dump_id: value,
                    blobs,
                });
                self.state = State::Int(if blobs {
                    IntFor::BlobOid
                } else {
                    IntFor::ChunkLength
                });
            }
            IntFor::BlobOid => {
                // pg_dump writes the oid as a signed int: oids of 2^31 and
                // more arrive negative, which is fine; 0 ends the block.
                if value == 0 {
                    self.large_objects.end();
                    self.block = None;
                    self.state = State::BlockType;
                } else if !(i64::from(i32::MIN)..=i64::from(u32::MAX)).contains(&value) {
                    return fail(format!("implausible large object oid {value} at byte {at}"));
                } else {
                    let oid = if value < 0 {
                        value as i32 as u32
                    } else {
                        value as u32
                    };
                    if self.fingerprints.is_some() {
                        self.large_objects.begin(oid);
                    }
                    self.state = State::Int(IntFor::ChunkLength);
                }
            }
            IntFor::ChunkLength => {
                if value < 0 {
                    return fail(format!("negative chunk length {value} at byte {at}"));
                }
                if value > 0 {
                    self.state = State::Chunk {
                        remaining: value as u64,
                    };
                    return Ok(());
                }
                let in_blobs = self.block.as_ref().expect("inside a block").blobs;
                if in_blobs {
                    self.state = State::Int(IntFor::BlobOid);
                } else {
                    self.block = None;
                    self.state = State::BlockType;
                }
            }
        }
        Ok(())
    }

    /// The TOC, once it has arrived.
    pub fn toc(&self) -> Option<&Toc> {
        self.toc.as_ref()
    }

    /// The header and TOC bytes, once they have arrived (see `toc_bytes`).
    pub fn toc_bytes(&self) -> &[u8] {
        &self.toc_bytes
    }

    /// The data offsets pg_dump could not write into the TOC (it wrote to a
    /// pipe), as patches for a complete copy of the archive: (position,
    /// bytes). With them pg_restore can seek to each block, which parallel
    /// restore (`--jobs`) needs to be fast. Call after the whole archive
    /// went through [`CustomInspector::update`].
    pub fn offset_patches(&self) -> Vec<OffsetPatch> {
        let Some(toc) = &self.toc else {
            return Vec::new();
        };
        toc.entries
            .iter()
            .filter_map(|entry| {
                let field = entry.offset_field_at?;
                let offset = *self.block_offsets.get(&entry.dump_id)?;
                let mut bytes = vec![super::OFFSET_POS_SET];
                bytes.extend(
                    (0..toc.offset_size).map(|i| if i < 8 { (offset >> (8 * i)) as u8 } else { 0 }),
                );
                Some((field as u64, bytes))
            })
            .collect()
    }

    /// Ends the inspection: every announced data block must be complete.
    pub fn finish(mut self) -> Result<ArchiveSummary, ArchiveError> {
        if matches!(self.state, State::Toc) && !self.buffer.is_empty() {
            // A last attempt at the TOC with everything that arrived.
            let buffered = std::mem::take(&mut self.buffer);
            self.offset -= buffered.len() as u64;
            self.next_attempt = 0;
            self.update(&buffered);
        }
        if let Some(e) = self.error {
            return Err(e);
        }
        let Some(toc) = self.toc else {
            return fail(if self.offset == 0 {
                "the stream is empty: not a pg_dump archive".to_string()
            } else {
                format!(
                    "archive is truncated: the stream ended at byte {} inside the header or TOC",
                    self.offset
                )
            });
        };
        let describe = |dump_id: i64| match toc.entries.iter().find(|e| e.dump_id == dump_id) {
            Some(e) => format!("{} {}.{}", e.desc.to_lowercase(), e.namespace, e.tag),
            None => format!("entry {dump_id}"),
        };
        if let Some(block) = &self.block {
            return fail(format!(
                "archive is truncated: the stream ended at byte {} inside the data of {}",
                self.offset,
                describe(block.dump_id)
            ));
        }
        if let Some((&missing, _)) = self.expected.iter().find(|(_, seen)| !**seen) {
            return fail(format!(
                "archive is truncated: the stream ended at byte {} before the data of {}",
                self.offset,
                describe(missing)
            ));
        }
        let mut table_data = Vec::new();
        for entry in toc.entries.iter().filter(|e| e.has_data) {
            if entry.desc != "TABLE DATA" {
                continue;
            }
            let stats = self.stats.get(&entry.dump_id).cloned().unwrap_or_default();
            let block = format!("block {}", entry.dump_id);
            table_data.push(TableData::read(entry, block.clone(), &block, &stats)?);
        }
        Ok(ArchiveSummary {
            encoding: toc.encoding(),
            sequences: toc.sequences(),
            large_objects: self
                .fingerprints
                .is_some()
                .then(|| self.large_objects.finish()),
            archive_version: format!("{}.{}", toc.version.0, toc.version.1),
            database_name: toc.database_name,
            server_version: toc.server_version,
            pg_dump_version: toc.pg_dump_version,
            toc_entries: toc.entries.len(),
            table_data,
            members: self.blocks,
        })
    }
}

/// pg_dump's ReadInt: a sign byte, then little-endian magnitude.
fn decode_int(bytes: &[u8]) -> i64 {
    let magnitude = bytes[1..]
        .iter()
        .enumerate()
        .fold(0i64, |acc, (i, &b)| acc | (i64::from(b) << (8 * i)));
    if bytes[0] != 0 { -magnitude } else { magnitude }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real archive: `pg_dump -Fc -Z0` (pg_dump 15) of a database with
    /// public.t1 (5 rows with tabs and newlines in text), public.empty_t,
    /// s2."Mixed Case", a sequence and two large objects.
    const SAMPLE: &[u8] = include_bytes!("../../../tests/fixtures/sample-pg15.dump");

    fn inspect(data: &[u8], chunk: usize) -> Result<ArchiveSummary, ArchiveError> {
        let mut inspector = CustomInspector::new();
        for piece in data.chunks(chunk) {
            inspector.update(piece);
        }
        inspector.finish()
    }

    #[test]
    fn reads_a_real_archive() {
        let summary = inspect(SAMPLE, SAMPLE.len()).unwrap();
        assert_eq!(summary.archive_version, "1.14");
        assert_eq!(summary.database_name, "fixture");
        let tables: Vec<_> = summary
            .table_data
            .iter()
            .map(|t| (t.schema.as_str(), t.table.as_str(), t.rows))
            .collect();
        assert_eq!(
            tables,
            [
                ("public", "empty_t", 0),
                ("public", "t1", 5),
                ("s2", "Mixed Case", 2)
            ]
        );
    }

    #[test]
    fn chunk_boundaries_do_not_matter() {
        let whole = inspect(SAMPLE, SAMPLE.len()).unwrap();
        for chunk in [1, 2, 3, 7, 64, 1000] {
            assert_eq!(inspect(SAMPLE, chunk).unwrap(), whole, "chunk size {chunk}");
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        for len in 0..SAMPLE.len() {
            assert!(
                inspect(&SAMPLE[..len], 4096).is_err(),
                "a prefix of {len} of {} bytes passed",
                SAMPLE.len()
            );
        }
    }

    #[test]
    fn fingerprints_sequences_and_large_objects_are_collected() {
        let summary = inspect(SAMPLE, 7).unwrap();
        let t1 = summary.table_data.iter().find(|t| t.table == "t1").unwrap();
        assert_eq!(t1.rows, 5);
        assert!(
            Algorithm::CURRENT.is_sum(&t1.fingerprint),
            "{}",
            t1.fingerprint
        );
        assert!(
            t1.copy_statement.starts_with("COPY public.t1 ("),
            "{}",
            t1.copy_statement
        );
        assert_eq!(summary.encoding.as_deref(), Some("UTF8"));
        let sequences: Vec<_> = summary.sequences.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(sequences, ["seq1"]);
        assert_eq!(summary.large_objects.as_ref().unwrap().count, 2);
    }

    #[test]
    fn offset_patches_point_at_each_data_block() {
        let mut inspector = CustomInspector::new();
        inspector.update(SAMPLE);
        let patches = inspector.offset_patches();
        let mut patched = SAMPLE.to_vec();
        for (position, bytes) in &patches {
            let at = *position as usize;
            // The fixture was written to a file, so pg_dump set offsets
            // itself; ours must agree with them.
            assert!(matches!(
                patched[at],
                super::super::OFFSET_POS_NOT_SET | super::super::OFFSET_POS_SET
            ));
            if patched[at] == super::super::OFFSET_POS_SET {
                assert_eq!(&patched[at..at + bytes.len()], &bytes[..]);
            }
            patched[at..at + bytes.len()].copy_from_slice(bytes);
        }
        let (toc, _) = Toc::parse(&patched, FORMAT_CUSTOM).unwrap();
        let with_data: Vec<_> = toc.entries.iter().filter(|e| e.has_data).collect();
        assert_eq!(patches.len(), with_data.len());
        for entry in with_data {
            let field = entry.offset_field_at.unwrap();
            assert_eq!(patched[field], super::super::OFFSET_POS_SET);
            let mut offset = 0usize;
            for i in 0..toc.offset_size {
                offset |= (patched[field + 1 + i] as usize) << (8 * i);
            }
            // A block starts with its type and the entry's dump id.
            assert!(matches!(patched[offset], BLOCK_DATA | BLOCK_BLOBS));
            let id_bytes = &patched[offset + 1..offset + 2 + toc.int_size];
            assert_eq!(decode_int(id_bytes), entry.dump_id);
        }
        // The patched archive still parses as a whole.
        assert!(inspect(&patched, 4096).is_ok());
    }

    #[test]
    fn an_archive_compressed_by_pg_dump_is_refused() {
        // Archive 1.14 keeps the compression level as an int after the
        // 11-byte preamble: sign byte, then the value.
        let mut data = SAMPLE.to_vec();
        data[12] = 9;
        let err = inspect(&data, 4096).unwrap_err();
        assert!(err.0.contains("compressed by pg_dump"), "{err}");
    }

    #[test]
    fn data_after_the_last_block_is_rejected() {
        let mut data = SAMPLE.to_vec();
        data.push(BLOCK_DATA);
        let err = inspect(&data, 4096).unwrap_err();
        assert!(err.0.contains("after the last data block"), "{err}");
    }

    #[test]
    fn a_tar_archive_or_garbage_is_not_a_custom_archive() {
        let tar = include_bytes!("../../../tests/fixtures/sample-pg15.tar");
        assert!(inspect(tar, 4096).is_err());
        assert!(inspect(b"PGDMP but then nonsense that goes on", 4096).is_err());
        assert!(inspect(&[0u8; 4096], 4096).is_err());
    }
}
