//! Observing stages that understand pg_dump's archives as they stream
//! past, so that a backup is validated without being read twice and
//! `verify` can prove an artifact without a database.
//!
//! Backups are written in pg_dump's custom format without compression
//! (`-Fc -Z0`, see [`custom`]); artifacts of manifest v1 are tar archives
//! ([`tar`]). Both formats share the header and table of contents parsed
//! here, and the per-table statistics: bytes and rows of COPY text and
//! the end-of-data marker that proves a table's data is complete.
//!
//! The parsers are push-based (`update` takes chunks of any size) because
//! the pipeline hands them whatever the pipe delivered; their memory is the
//! TOC plus a few bytes of state, never a table's data.

pub mod custom;
pub mod tar;

use crate::fingerprint::{Algorithm, ContentFingerprint, CopyTextDigest};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Oldest archive version accepted: 1.12 (pg_dump 9.0). Versions up to the
/// newest known (1.16, pg_dump 17) are parsed field by field.
const MIN_VERSION: (u8, u8) = (1, 12);
const MAX_VERSION: (u8, u8) = (1, 16);
/// pg_dump's ArchiveFormat codes.
const FORMAT_CUSTOM: u8 = 1;
const FORMAT_TAR: u8 = 3;
/// The custom format's data offset flags (K_OFFSET_* in pg_dump).
const OFFSET_POS_NOT_SET: u8 = 1;
const OFFSET_POS_SET: u8 = 2;
const OFFSET_NO_DATA: u8 = 3;
/// Bytes kept from the end of each table's data to check its COPY trailer.
const TAIL: usize = 16;
/// How a TOC that needs more bytes says so.
const TRUNCATED: &str = "the archive header or TOC is truncated";

/// The archive formats pgward reads, as recorded in manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// `pg_dump -Fc -Z0`: what backups write.
    Custom,
    /// `pg_dump -Ft`: what manifest v1 backups wrote.
    Tar,
}

impl ArchiveFormat {
    /// The name in the manifest's `archive.format`.
    pub fn name(self) -> &'static str {
        match self {
            ArchiveFormat::Custom => "custom",
            ArchiveFormat::Tar => "tar",
        }
    }

    pub fn from_name(name: &str) -> Option<ArchiveFormat> {
        match name {
            "custom" => Some(ArchiveFormat::Custom),
            "tar" => Some(ArchiveFormat::Tar),
            _ => None,
        }
    }
}

/// Either format's inspector, chosen by the format being read.
// One per stream, never in a collection: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum ArchiveInspector {
    Custom(custom::CustomInspector),
    Tar(tar::TarInspector),
}

impl ArchiveInspector {
    pub fn new(format: ArchiveFormat) -> ArchiveInspector {
        ArchiveInspector::fingerprinting(format, Algorithm::CURRENT)
    }

    /// An inspector that fingerprints with `algorithm` (a manifest's).
    pub fn fingerprinting(format: ArchiveFormat, algorithm: Algorithm) -> ArchiveInspector {
        match format {
            ArchiveFormat::Custom => {
                ArchiveInspector::Custom(custom::CustomInspector::fingerprinting(algorithm))
            }
            ArchiveFormat::Tar => ArchiveInspector::Tar(tar::TarInspector::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            ArchiveInspector::Custom(i) => i.update(data),
            ArchiveInspector::Tar(i) => i.update(data),
        }
    }

    pub fn finish(self) -> Result<ArchiveSummary, ArchiveError> {
        match self {
            ArchiveInspector::Custom(i) => i.finish(),
            ArchiveInspector::Tar(i) => i.finish(),
        }
    }
}

/// Why an archive is not a complete, readable pg_dump archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveError(pub String);

impl fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn fail<T>(message: impl Into<String>) -> Result<T, ArchiveError> {
    Err(ArchiveError(message.into()))
}

/// What the archive says about itself, plus what was counted while reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveSummary {
    /// pg_dump archive format version, e.g. "1.14".
    pub archive_version: String,
    /// Database name recorded by pg_dump.
    pub database_name: String,
    pub server_version: Option<String>,
    pub pg_dump_version: Option<String>,
    /// Number of TOC entries (schema objects, data, ACLs, ...).
    pub toc_entries: usize,
    /// One entry per table whose data is in the archive, in archive order.
    pub table_data: Vec<TableData>,
    /// Tar members, or custom-format data blocks, read.
    pub members: usize,
    /// The archive's client encoding (its ENCODING entry), e.g. "UTF8".
    pub encoding: Option<String>,
    /// Values of the sequences whose `SEQUENCE SET` is in the archive.
    pub sequences: Vec<SequenceValue>,
    /// The large objects' data (custom format; not fingerprinted in the
    /// tar archives of manifest v1).
    pub large_objects: Option<ContentFingerprint>,
}

/// A sequence's value as the archive sets it (`setval(name, value, is_called)`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SequenceValue {
    pub schema: String,
    pub name: String,
    pub last_value: i64,
    pub is_called: bool,
}

/// A table's data in the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableData {
    pub schema: String,
    pub table: String,
    /// Where the data is: the tar member ("3350.dat") or the custom
    /// format's data block ("block 3350").
    pub member: String,
    /// Bytes of COPY text, including the end-of-data marker.
    pub bytes: u64,
    /// Data rows (lines before the end-of-data marker).
    pub rows: u64,
    /// The rows' content fingerprint (see [`crate::fingerprint`]).
    pub fingerprint: String,
    /// pg_dump's `COPY ... FROM stdin;` for the data, naming its columns.
    pub copy_statement: String,
}

impl TableData {
    /// A table's data as read: complete only when its COPY text ends with
    /// the end-of-data marker (`located` says where, for the message).
    pub(crate) fn read(
        entry: &TocEntry,
        member: String,
        located: &str,
        stats: &MemberStats,
    ) -> Result<TableData, ArchiveError> {
        let Some(rows) = stats.copy_rows() else {
            return fail(format!(
                "data of table {}.{} ({located}) does not end with the COPY end-of-data marker",
                entry.namespace, entry.tag
            ));
        };
        Ok(TableData {
            schema: entry.namespace.clone(),
            table: entry.tag.clone(),
            member,
            bytes: stats.bytes,
            rows,
            fingerprint: stats.fingerprint().sum,
            copy_statement: entry.copy_statement.clone(),
        })
    }
}

/// One entry of the archive's table of contents (the fields pgward uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TocEntry {
    pub dump_id: i64,
    pub had_dumper: bool,
    pub tag: String,
    pub desc: String,
    pub namespace: String,
    /// The role that owns the object (empty where the entry has none).
    pub owner: String,
    /// A table's access method, when pg_dump recorded one (archive 1.14+).
    pub table_access_method: Option<String>,
    /// The tar member holding this entry's data, when it has any.
    pub member: Option<String>,
    /// Whether the entry has a data block (custom format).
    pub has_data: bool,
    /// The SQL that creates the object (for `SEQUENCE SET`: the setval).
    pub definition: String,
    pub copy_statement: String,
    /// Dump ids of the entries this one depends on.
    pub dependencies: Vec<i64>,
    /// Custom format: where the entry's data offset field (flag byte, then
    /// the offset) sits in the archive, so a seekable copy can fill it in.
    pub offset_field_at: Option<usize>,
}

/// The parsed archive header and TOC (`toc.dat` in a tar archive, the
/// start of a custom-format archive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toc {
    pub version: (u8, u8, u8),
    /// Whether pg_dump compressed the data itself (level or algorithm not 0).
    pub compressed: bool,
    /// Bytes of an integer's magnitude in this archive (after its sign byte).
    pub int_size: usize,
    /// Bytes of a data offset (after its flag byte).
    pub offset_size: usize,
    pub database_name: String,
    pub server_version: Option<String>,
    pub pg_dump_version: Option<String>,
    pub entries: Vec<TocEntry>,
}

#[derive(Debug, Clone)]
pub(crate) struct MemberStats {
    bytes: u64,
    newlines: u64,
    /// The last bytes seen, to check the COPY trailer.
    tail: [u8; TAIL],
    /// None when the caller does not want fingerprints (a restore: the
    /// archive's sha256 already ties it to the manifest).
    content: Option<CopyTextDigest>,
}

impl Default for MemberStats {
    fn default() -> Self {
        MemberStats::new(Some(Algorithm::CURRENT))
    }
}

impl MemberStats {
    pub(crate) fn new(fingerprint: Option<Algorithm>) -> MemberStats {
        MemberStats {
            bytes: 0,
            newlines: 0,
            tail: [0; TAIL],
            content: fingerprint.map(CopyTextDigest::new),
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        self.newlines += count_newlines(data);
        if let Some(content) = &mut self.content {
            content.update(data);
        }
        if data.len() >= TAIL {
            self.tail.copy_from_slice(&data[data.len() - TAIL..]);
        } else {
            self.tail.copy_within(data.len().., 0);
            self.tail[TAIL - data.len()..].copy_from_slice(data);
        }
    }

    /// COPY text ends with the end-of-data line `\.` followed by one or
    /// more empty lines (their number differs between archive formats).
    /// Returns the number of data rows when that trailer is present.
    pub(crate) fn copy_rows(&self) -> Option<u64> {
        let kept = (self.bytes as usize).min(TAIL);
        let tail = &self.tail[TAIL - kept..];
        let newlines = tail.iter().rev().take_while(|&&b| b == b'\n').count();
        let body = &tail[..kept - newlines];
        if newlines == 0 || newlines == kept || !body.ends_with(b"\\.") {
            return None;
        }
        let marker_at_line_start = body.len() == 2 && self.bytes as usize == kept
            || body.len() > 2 && body[body.len() - 3] == b'\n';
        marker_at_line_start.then(|| self.newlines - newlines as u64)
    }

    pub(crate) fn fingerprint(&self) -> ContentFingerprint {
        self.content
            .as_ref()
            .map(CopyTextDigest::finish)
            .unwrap_or_default()
    }
}

impl Toc {
    /// The archive's client encoding, from its ENCODING entry
    /// (`SET client_encoding = 'UTF8';`).
    pub fn encoding(&self) -> Option<String> {
        let entry = self.entries.iter().find(|e| e.desc == "ENCODING")?;
        let quoted = entry.definition.split('\'').nth(1)?;
        Some(quoted.to_string())
    }

    /// The sequence values the archive sets.
    pub fn sequences(&self) -> Vec<SequenceValue> {
        self.entries
            .iter()
            .filter(|e| e.desc == "SEQUENCE SET")
            .filter_map(|e| {
                let (last_value, is_called) = parse_setval(&e.definition)?;
                Some(SequenceValue {
                    schema: e.namespace.clone(),
                    name: e.tag.clone(),
                    last_value,
                    is_called,
                })
            })
            .collect()
    }
}

/// `SELECT pg_catalog.setval('public.seq1', 3, true);` -> (3, true). The
/// name is quoted SQL and may contain commas; the two last arguments never do.
fn parse_setval(definition: &str) -> Option<(i64, bool)> {
    let arguments = definition.trim().strip_suffix(");")?;
    let mut parts = arguments.rsplitn(3, ',');
    let is_called = match parts.next()?.trim() {
        "true" => true,
        "false" => false,
        _ => return None,
    };
    let last_value = parts.next()?.trim().parse().ok()?;
    Some((last_value, is_called))
}

/// Counts `\n` bytes. Summing fixed blocks into a `u8` lets the compiler
/// vectorise the comparison (the plain filter-count was the inspector's
/// whole cost in profiles); a block of 32 cannot overflow a `u8`.
pub(crate) fn count_newlines(data: &[u8]) -> u64 {
    let blocks = data.chunks_exact(32);
    let rest = blocks.remainder();
    let mut count: u64 = blocks
        .map(|block| block.iter().map(|&b| (b == b'\n') as u8).sum::<u8>() as u64)
        .sum();
    count += rest.iter().filter(|&&b| b == b'\n').count() as u64;
    count
}

/// Reads the integers and strings of pg_dump's archive header and TOC.
struct TocReader<'a> {
    data: &'a [u8],
    pos: usize,
    int_size: usize,
}

impl TocReader<'_> {
    fn byte(&mut self) -> Result<u8, ArchiveError> {
        let b = *self.data.get(self.pos).ok_or_else(|| self.truncated())?;
        self.pos += 1;
        Ok(b)
    }

    fn truncated(&self) -> ArchiveError {
        ArchiveError(format!("{TRUNCATED} at byte {}", self.pos))
    }

    /// pg_dump's ReadInt: a sign byte, then `int_size` bytes little-endian.
    fn int(&mut self) -> Result<i64, ArchiveError> {
        let negative = self.byte()? != 0;
        let mut value: i64 = 0;
        for i in 0..self.int_size {
            value |= (self.byte()? as i64) << (8 * i);
        }
        Ok(if negative { -value } else { value })
    }

    /// pg_dump's ReadStr: a length (negative for NULL), then the bytes.
    fn string(&mut self) -> Result<Option<String>, ArchiveError> {
        let len = self.int()?;
        if len < 0 {
            return Ok(None);
        }
        let len = len as usize;
        let end = self.pos.checked_add(len).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| self.truncated())?;
        let text = String::from_utf8_lossy(&self.data[self.pos..end]).into_owned();
        self.pos = end;
        Ok(Some(text))
    }

    fn text(&mut self) -> Result<String, ArchiveError> {
        Ok(self.string()?.unwrap_or_default())
    }
}

impl Toc {
    /// Parses the header and TOC at the start of `data`, written for
    /// archive `format`; returns the TOC and the bytes it took. An error
    /// for which [`Toc::is_truncated`] holds means more data is needed.
    pub fn parse(data: &[u8], format: u8) -> Result<(Toc, usize), ArchiveError> {
        if data.len() >= 5 && !data.starts_with(b"PGDMP") {
            return fail("not a pg_dump archive: no PGDMP signature");
        }
        let mut r = TocReader {
            data,
            pos: 5,
            int_size: 4,
        };
        let version = (r.byte()?, r.byte()?, r.byte()?);
        let v = (version.0, version.1);
        if v < MIN_VERSION || v > MAX_VERSION {
            return fail(format!(
                "unsupported pg_dump archive version {}.{} (pgward reads {}.{} to {}.{})",
                v.0, v.1, MIN_VERSION.0, MIN_VERSION.1, MAX_VERSION.0, MAX_VERSION.1
            ));
        }
        r.int_size = r.byte()? as usize;
        if !(1..=8).contains(&r.int_size) {
            return fail(format!(
                "implausible integer size {} in toc.dat",
                r.int_size
            ));
        }
        let offset_size = r.byte()? as usize;
        if !(1..=8).contains(&offset_size) {
            return fail(format!(
                "implausible offset size {offset_size} in the archive header"
            ));
        }
        let declared = r.byte()?;
        if declared != format {
            return fail(format!(
                "the archive header declares format {declared}, expected {format} ({})",
                if format == FORMAT_TAR {
                    "tar"
                } else {
                    "custom"
                }
            ));
        }
        let compressed = if v >= (1, 15) {
            r.byte()? != 0
        } else {
            r.int()? != 0
        };
        for _ in 0..7 {
            let _creation_time_field = r.int()?;
        }
        let database_name = r.text()?;
        let server_version = r.string()?;
        let pg_dump_version = r.string()?;

        let count = r.int()?;
        if count < 0 {
            return fail(format!("implausible TOC entry count {count}"));
        }
        // Each entry takes dozens of bytes: a count beyond what has arrived
        // means the rest of the TOC is still on its way (or the count is
        // damaged, which the size limit of the caller ends).
        if count as usize > data.len() {
            return Err(r.truncated());
        }
        let mut entries = Vec::with_capacity((count as usize).min(data.len() / 16 + 1));
        for _ in 0..count {
            let dump_id = r.int()?;
            let had_dumper = r.int()? != 0;
            let _table_oid = r.string()?;
            let _oid = r.string()?;
            let tag = r.text()?;
            let desc = r.text()?;
            let _section = r.int()?;
            let definition = r.text()?;
            let _drop_statement = r.string()?;
            let copy_statement = r.text()?;
            let namespace = r.text()?;
            let _tablespace = r.string()?;
            let table_access_method = if v >= (1, 14) {
                r.string()?.filter(|am| !am.is_empty())
            } else {
                None
            };
            if v >= (1, 16) {
                let _relkind = r.int()?;
            }
            let owner = r.string()?.unwrap_or_default();
            let _with_oids = r.string()?;
            let mut dependencies = Vec::new();
            while let Some(dependency) = r.string()? {
                // Ids are written as decimal strings, the list ends with NULL.
                if let Ok(id) = dependency.parse() {
                    dependencies.push(id);
                }
            }
            // The format's own field: tar names the member holding the
            // data; custom writes a data offset whose flag says whether
            // there is data at all.
            let mut offset_field_at = None;
            let (member, has_data) = if format == FORMAT_TAR {
                let member = r.string()?.filter(|name| !name.is_empty());
                let has_data = member.is_some();
                (member, has_data)
            } else {
                offset_field_at = Some(r.pos);
                let flag = r.byte()?;
                for _ in 0..offset_size {
                    r.byte()?;
                }
                match flag {
                    OFFSET_POS_NOT_SET | OFFSET_POS_SET => (None, true),
                    OFFSET_NO_DATA => (None, false),
                    other => {
                        return fail(format!(
                            "unknown data offset flag {other} in TOC entry {dump_id}"
                        ));
                    }
                }
            };
            entries.push(TocEntry {
                dump_id,
                had_dumper,
                tag,
                desc,
                namespace,
                owner,
                table_access_method,
                member,
                has_data,
                definition,
                copy_statement,
                dependencies,
                offset_field_at,
            });
        }
        let toc = Toc {
            version,
            compressed,
            int_size: r.int_size,
            offset_size,
            database_name,
            server_version,
            pg_dump_version,
            entries,
        };
        Ok((toc, r.pos))
    }

    pub fn is_truncated(error: &ArchiveError) -> bool {
        error.0.starts_with(TRUNCATED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newline_counting_matches_the_plain_count() {
        let data: Vec<u8> = (0..10_000u32)
            .map(|i| {
                if i % 7 == 0 || i % 31 == 0 {
                    b'\n'
                } else {
                    b'x'
                }
            })
            .collect();
        for len in [0, 1, 31, 32, 33, 64, 1000, data.len()] {
            let plain = data[..len].iter().filter(|&&b| b == b'\n').count() as u64;
            assert_eq!(count_newlines(&data[..len]), plain, "length {len}");
        }
        assert_eq!(count_newlines(&[b'\n'; 4096]), 4096);
    }

    #[test]
    fn member_stats_track_the_trailer_across_chunks() {
        let mut stats = MemberStats::default();
        for piece in [&b"1\tx\n\\"[..], b".", b"\n", b"\n"] {
            stats.update(piece);
        }
        assert_eq!(stats.copy_rows(), Some(1));
        let rows = |data: &[u8]| {
            let mut stats = MemberStats::default();
            stats.update(data);
            stats.copy_rows()
        };
        assert_eq!(rows(b"\\.\n\n\n"), Some(0));
        assert_eq!(rows(b"a\n\\.\n"), Some(1));
        assert_eq!(rows(b"a\\.\n\n"), None, "marker must start a line");
        assert_eq!(rows(b"a\nb\n"), None, "no marker");
        assert_eq!(rows(b"a\n\\."), None, "marker line not ended");
    }

    #[test]
    fn setval_definitions_are_parsed() {
        assert_eq!(
            parse_setval("SELECT pg_catalog.setval('public.seq1', 3, true);\n"),
            Some((3, true))
        );
        assert_eq!(
            parse_setval("SELECT pg_catalog.setval('s.\"a, b\"', -9223372036854775808, false);"),
            Some((i64::MIN, false))
        );
        assert_eq!(parse_setval("SELECT 1;"), None);
    }
}
