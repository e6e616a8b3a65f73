//! pg_dump's tar format, as written by backups before manifest v2 (kept so
//! that `verify` still proves those artifacts).
//!
//! pg_dump's tar archive is `toc.dat` (the binary header and table of
//! contents shared with the custom format), one `NNNN.dat` member of COPY
//! text per table, `restore.sql`, and the two zero blocks that end every tar
//! archive. The inspector checks each tar header's checksum, parses the TOC,
//! counts each data member's bytes and rows, and at the end proves that the
//! stream reached the end-of-archive marker and that every TOC entry that
//! promised data has its member. A pg_dump that stopped half-way, a truncated
//! or bit-flipped file, or anything that is not a pg_dump archive fails here.
//!
//! Large objects are the exception to "one member per data entry": their
//! TOC entry (`BLOBS`) points to a list member (`blobs.toc`, or
//! `blobs_ID.toc` from pg_dump 17 on) that names one `blob_OID.dat` member
//! per large object; each of those must be present.
//!
//! The parser is push-based (`update` takes chunks of any size) because the
//! pipeline hands it whatever the pipe delivered; its memory is one tar header
//! plus the TOC, never a table's data.

use super::{
    ArchiveError, ArchiveSummary, FORMAT_TAR, MemberStats, TableData, Toc, TocEntry, fail,
};
use std::collections::BTreeMap;

const BLOCK: usize = 512;
/// Refuse a TOC larger than this rather than grow without bound on garbage.
const MAX_TOC_BYTES: usize = 512 * 1024 * 1024;
/// Same for the lists of large objects (one short line per object).
const MAX_BLOB_LIST_BYTES: usize = 256 * 1024 * 1024;

enum State {
    /// Collecting the next 512-byte header (or end-of-archive block).
    Header,
    /// Inside a member's data.
    Body { remaining: u64, padding: u64 },
    /// Skipping the padding that rounds a member up to a block.
    Padding { remaining: u64 },
    /// After the two zero blocks: only zero padding may follow.
    End,
}

/// Push-based inspector of a pg_dump tar archive.
pub struct TarInspector {
    state: State,
    header: Vec<u8>,
    zero_blocks: u8,
    current: Option<String>,
    toc_bytes: Vec<u8>,
    toc: Option<Toc>,
    /// Contents of large-object list members, by member name.
    blob_lists: BTreeMap<String, Vec<u8>>,
    members: BTreeMap<String, MemberStats>,
    member_count: usize,
    offset: u64,
    error: Option<ArchiveError>,
}

impl Default for TarInspector {
    fn default() -> Self {
        Self::new()
    }
}

impl TarInspector {
    pub fn new() -> Self {
        TarInspector {
            state: State::Header,
            header: Vec::with_capacity(BLOCK),
            zero_blocks: 0,
            current: None,
            toc_bytes: Vec::new(),
            toc: None,
            blob_lists: BTreeMap::new(),
            members: BTreeMap::new(),
            member_count: 0,
            offset: 0,
            error: None,
        }
    }

    /// Feeds the next chunk. After the first error the inspector only
    /// remembers it: the stream keeps flowing so that the producer's own
    /// failure (pg_dump's message) can be reported in preference.
    pub fn update(&mut self, data: &[u8]) {
        if self.error.is_none()
            && let Err(e) = self.consume(data)
        {
            self.error = Some(e);
        }
    }

    /// The first structural error seen so far, if any.
    pub fn error(&self) -> Option<&ArchiveError> {
        self.error.as_ref()
    }

    fn consume(&mut self, mut data: &[u8]) -> Result<(), ArchiveError> {
        while !data.is_empty() {
            match &mut self.state {
                State::Header => {
                    let take = (BLOCK - self.header.len()).min(data.len());
                    self.header.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    self.offset += take as u64;
                    if self.header.len() == BLOCK {
                        let block = std::mem::take(&mut self.header);
                        self.start_member(&block)?;
                        self.header = block;
                        self.header.clear();
                    }
                }
                State::Body { remaining, padding } => {
                    let take = (*remaining).min(data.len() as u64) as usize;
                    let (chunk, rest) = data.split_at(take);
                    *remaining -= take as u64;
                    let done = *remaining == 0;
                    let padding = *padding;
                    data = rest;
                    self.offset += take as u64;
                    self.member_data(chunk)?;
                    if done {
                        self.end_member()?;
                        self.state = if padding > 0 {
                            State::Padding { remaining: padding }
                        } else {
                            State::Header
                        };
                    }
                }
                State::Padding { remaining } => {
                    let take = (*remaining).min(data.len() as u64) as usize;
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        self.state = State::Header;
                    }
                    data = &data[take..];
                    self.offset += take as u64;
                }
                State::End => {
                    if let Some(pos) = data.iter().position(|&b| b != 0) {
                        return fail(format!(
                            "unexpected data after the end-of-archive marker at byte {}",
                            self.offset + pos as u64
                        ));
                    }
                    self.offset += data.len() as u64;
                    data = &[];
                }
            }
        }
        Ok(())
    }

    fn start_member(&mut self, block: &[u8]) -> Result<(), ArchiveError> {
        let at = self.offset - BLOCK as u64;
        if block.iter().all(|&b| b == 0) {
            self.zero_blocks += 1;
            if self.zero_blocks == 2 {
                self.state = State::End;
            }
            return Ok(());
        }
        if self.zero_blocks > 0 {
            return fail(format!("tar header after a zero block at byte {at}"));
        }
        let header =
            TarHeader::parse(block).map_err(|e| ArchiveError(format!("{e} at byte {at}")))?;
        if self.member_count == 0 && header.name != "toc.dat" {
            return fail(format!(
                "not a pg_dump tar archive: first member is {:?}, expected \"toc.dat\"",
                header.name
            ));
        }
        if self.members.contains_key(&header.name)
            || header.name == "toc.dat" && self.member_count > 0
        {
            return fail(format!("duplicate archive member {:?}", header.name));
        }
        self.member_count += 1;
        if header.name != "toc.dat" {
            self.members
                .insert(header.name.clone(), MemberStats::default());
        }
        let padding = (BLOCK as u64 - header.size % BLOCK as u64) % BLOCK as u64;
        self.current = Some(header.name);
        if header.size == 0 {
            self.end_member()?;
            self.state = State::Header;
        } else {
            self.state = State::Body {
                remaining: header.size,
                padding,
            };
        }
        Ok(())
    }

    fn member_data(&mut self, chunk: &[u8]) -> Result<(), ArchiveError> {
        match self.current.as_deref() {
            Some("toc.dat") => {
                if self.toc_bytes.len() + chunk.len() > MAX_TOC_BYTES {
                    return fail("toc.dat is larger than 512 MiB");
                }
                self.toc_bytes.extend_from_slice(chunk);
            }
            Some(name) => {
                if let Some(stats) = self.members.get_mut(name) {
                    stats.update(chunk);
                }
                if is_blob_list(name) {
                    let list = self.blob_lists.entry(name.to_string()).or_default();
                    if list.len() + chunk.len() > MAX_BLOB_LIST_BYTES {
                        return fail(format!("{name} is larger than 256 MiB"));
                    }
                    list.extend_from_slice(chunk);
                }
            }
            None => {}
        }
        Ok(())
    }

    fn end_member(&mut self) -> Result<(), ArchiveError> {
        if self.current.take().as_deref() == Some("toc.dat") {
            let (toc, _) = Toc::parse(&self.toc_bytes, FORMAT_TAR)?;
            self.toc_bytes = Vec::new();
            self.toc = Some(toc);
        }
        Ok(())
    }

    /// Ends the inspection: the archive must be complete and consistent.
    pub fn finish(mut self) -> Result<ArchiveSummary, ArchiveError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        match self.state {
            State::End => {}
            _ => {
                let inside = match &self.current {
                    Some(name) => format!(" inside member {name:?}"),
                    None => String::new(),
                };
                return fail(format!(
                    "archive is truncated: the stream ended at byte {}{inside} before the end-of-archive marker",
                    self.offset
                ));
            }
        }
        let Some(toc) = self.toc.take() else {
            return fail("archive has no table of contents (toc.dat)");
        };
        let mut table_data = Vec::new();
        for entry in &toc.entries {
            if entry.desc == "BLOBS" {
                self.check_blobs(entry)?;
                continue;
            }
            let Some(member) = &entry.member else {
                continue;
            };
            let Some(stats) = self.members.get(member) else {
                return fail(format!(
                    "archive is missing the data of {} {}.{} (member {member})",
                    entry.desc.to_lowercase(),
                    entry.namespace,
                    entry.tag
                ));
            };
            if entry.desc == "TABLE DATA" {
                table_data.push(TableData::read(
                    entry,
                    member.clone(),
                    &format!("member {member}"),
                    stats,
                )?);
            }
        }
        Ok(ArchiveSummary {
            encoding: toc.encoding(),
            sequences: toc.sequences(),
            large_objects: None,
            archive_version: format!("{}.{}", toc.version.0, toc.version.1),
            database_name: toc.database_name,
            server_version: toc.server_version,
            pg_dump_version: toc.pg_dump_version,
            toc_entries: toc.entries.len(),
            table_data,
            members: self.member_count,
        })
    }
}

fn is_blob_list(name: &str) -> bool {
    name == "blobs.toc" || name.starts_with("blobs_") && name.ends_with(".toc")
}

impl TarInspector {
    /// A `BLOBS` entry's list member exists and every large object it names
    /// has its member.
    fn check_blobs(&self, entry: &TocEntry) -> Result<(), ArchiveError> {
        let per_entry = format!("blobs_{}.toc", entry.dump_id);
        let list = self
            .blob_lists
            .get(&per_entry)
            .or_else(|| self.blob_lists.get("blobs.toc"))
            .ok_or_else(|| {
                ArchiveError(format!(
                    "archive is missing the large object list of entry {}",
                    entry.dump_id
                ))
            })?;
        for line in String::from_utf8_lossy(list)
            .lines()
            .filter(|l| !l.trim().is_empty())
        {
            let file = line.split_whitespace().nth(1).unwrap_or_default();
            if !self.members.contains_key(file) {
                return fail(format!(
                    "archive is missing large object member {file:?} listed as {line:?}"
                ));
            }
        }
        Ok(())
    }
}

/// The fields of a ustar header that matter here.
struct TarHeader {
    name: String,
    size: u64,
}

impl TarHeader {
    fn parse(block: &[u8]) -> Result<Self, String> {
        let stored = parse_octal(&block[148..156]).ok_or("unreadable tar header checksum")?;
        let computed: u64 = block
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    b' ' as u64
                } else {
                    b as u64
                }
            })
            .sum();
        if stored != computed {
            return Err(format!(
                "tar header checksum mismatch (stored {stored}, computed {computed})"
            ));
        }
        let typeflag = block[156];
        if typeflag != b'0' && typeflag != 0 {
            return Err(format!("unexpected tar member type {:?}", typeflag as char));
        }
        let name_end = block[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let name = String::from_utf8_lossy(&block[..name_end]).into_owned();
        let size = if block[124] & 0x80 != 0 {
            // GNU base-256 encoding for members of 8 GiB and more.
            block[125..136]
                .iter()
                .fold(0u64, |acc, &b| (acc << 8) | b as u64)
        } else {
            parse_octal(&block[124..136]).ok_or("unreadable tar member size")?
        };
        Ok(TarHeader { name, size })
    }
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(field).ok()?;
    let digits = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if digits.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(digits, 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real archive: `pg_dump -Ft` (pg_dump 15) of a database with
    /// public.t1 (5 rows with tabs and newlines in text), public.empty_t,
    /// s2."Mixed Case" and a sequence.
    const SAMPLE: &[u8] = include_bytes!("../../../tests/fixtures/sample-pg15.tar");

    fn inspect(data: &[u8], chunk: usize) -> Result<ArchiveSummary, ArchiveError> {
        let mut inspector = TarInspector::new();
        for piece in data.chunks(chunk.max(1)) {
            inspector.update(piece);
        }
        inspector.finish()
    }

    #[test]
    fn reads_a_real_archive() {
        let summary = inspect(SAMPLE, 1 << 20).unwrap();
        assert_eq!(summary.archive_version, "1.14");
        assert_eq!(summary.database_name, "demo");
        let tables: Vec<_> = summary
            .table_data
            .iter()
            .map(|t| (t.schema.as_str(), t.table.as_str(), t.rows))
            .collect();
        assert_eq!(
            tables,
            vec![
                ("public", "empty_t", 0),
                ("public", "t1", 5),
                ("s2", "Mixed Case", 0)
            ]
        );
        let t1 = summary.table_data.iter().find(|t| t.table == "t1").unwrap();
        assert_eq!(t1.bytes, 75);
    }

    #[test]
    fn chunk_boundaries_do_not_matter() {
        let whole = inspect(SAMPLE, SAMPLE.len()).unwrap();
        for chunk in [1, 3, 7, 511, 512, 513, 4096] {
            assert_eq!(inspect(SAMPLE, chunk).unwrap(), whole, "chunk size {chunk}");
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        // Everything before the end-of-archive marker is required.
        let end_marker = SAMPLE.len() - SAMPLE.iter().rev().take_while(|&&b| b == 0).count();
        for len in (0..end_marker).step_by(37).chain([end_marker - 1]) {
            assert!(
                inspect(&SAMPLE[..len], 4096).is_err(),
                "truncated to {len} bytes passed"
            );
        }
    }

    #[test]
    fn flipped_bits_in_headers_and_toc_are_detected() {
        // Bits in tar headers (checksummed) and in the TOC's structure; a flip
        // inside a string's text is only caught by the artifact's sha256.
        for (pos, bit) in [
            (0usize, 0u8),
            (130, 1),
            (200, 3),
            (512 + 3, 2),
            (512 + 6, 4),
            (512 + 8, 1),
        ] {
            let mut copy = SAMPLE.to_vec();
            copy[pos] ^= 1 << bit;
            assert!(inspect(&copy, 4096).is_err(), "flip at {pos} passed");
        }
    }

    #[test]
    fn garbage_is_not_an_archive() {
        let err = inspect(&[7u8; 4096], 512).unwrap_err();
        assert!(err.0.contains("checksum"), "{err}");
        let err = inspect(b"", 512).unwrap_err();
        assert!(err.0.contains("truncated"), "{err}");
    }

    #[test]
    fn data_after_the_end_marker_is_rejected() {
        let mut copy = SAMPLE.to_vec();
        copy.extend_from_slice(b"trailing");
        assert!(
            inspect(&copy, 4096)
                .unwrap_err()
                .0
                .contains("after the end-of-archive")
        );
    }
}
