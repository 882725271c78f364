//! samtools-style regions (`name`, `name:start-end`, `name:start`) and reading one region of
//! an indexed FASTA file.
//!
//! Coordinates: users write regions the way `samtools faidx` and htslib's `hts_parse_region`
//! take them: 1-based, both ends inclusive (`20:1-10` is the first ten bases of `20`).
//! [`Region`] stores them 0-based and half-open, like BED (`start = 0`, `end = Some(10)`). The
//! conversion in both directions happens in this module only: in [`Region::from_str`] and in
//! [`Region::display_1based`].
//!
//! Regions are read through the `.fai` index (noodles reads it) by seeking to the region's
//! bytes (through noodles' indexed bgzip reader and the `.gzi` index for bgzip files): the
//! rest of the file is never read, and a long region is read a window at a time
//! ([`for_each_region_piece`]). The index is checked against the file where it is used: each
//! window's line ends, and the gaps around each sequence read (its header line before it, a
//! line end or the next header after it), so a file edited after it was indexed is refused
//! instead of read at the wrong place.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use noodles::bgzf;
use noodles::fasta;

use super::fastx::{BAD_BASE_FIX, Piece, Record, RecordMeta, open_file};
use crate::alphabet;
use crate::{Error, Result};

/// A samtools-style region: `name`, or `name:start-end` (1-based inclusive, commas allowed in
/// numbers), or `name:start` (to the end).
/// Two regions are equal when they cover the same bases of the same name, however the
/// name was written.
#[derive(Debug, Clone)]
pub struct Region {
    /// Sequence (chromosome) name as in the `.fai` index.
    pub name: String,
    /// 0-based, inclusive.
    pub start: u64,
    /// 0-based, exclusive; `None` = to the end of the sequence.
    pub end: Option<u64>,
    /// The name was marked as a name (`{NAME}` in braces, or a BED row's column 1), so the
    /// region cannot mean a whole sequence whose name reads like a region (`20:1-10`).
    pub explicit_name: bool,
}

impl PartialEq for Region {
    fn eq(&self, other: &Self) -> bool {
        (&self.name, self.start, self.end) == (&other.name, other.start, other.end)
    }
}

impl Eq for Region {}

impl std::hash::Hash for Region {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (&self.name, self.start, self.end).hash(state);
    }
}

/// How a region is written, for usage errors.
const REGION_FORM: &str = "write it as NAME, NAME:START-END or NAME:START (1-based, inclusive; commas allowed; {NAME} in braces for a name with ':'), e.g. 20:1,000,001-1,010,000";

impl FromStr for Region {
    type Err = Error;

    /// Parses `name`, `name:start-end`, `name:start`, `name:start-` or `name:-end`, where
    /// `name` may be written in braces (`{name}`, `{name}:start-end`), as samtools takes it, for
    /// names that contain `:`.
    ///
    /// Without braces, the text after the last `:` is read as coordinates when it starts with a
    /// digit, `,` or `-`; otherwise the whole string is a sequence name (names may contain
    /// `:`).
    fn from_str(s: &str) -> Result<Region> {
        let bad = |why: String| Error::usage(format!("bad region '{s}': {why}"), REGION_FORM);
        if s.is_empty() {
            return Err(bad("it is empty".into()));
        }
        if s.chars().any(char::is_whitespace) {
            return Err(bad("it contains whitespace".into()));
        }
        let explicit_name = s.starts_with('{');
        let (name, coords) = if let Some(braced) = s.strip_prefix('{') {
            let Some((name, rest)) = braced.split_once('}') else {
                return Err(bad("'{' without its closing '}'".into()));
            };
            match rest.strip_prefix(':') {
                None if rest.is_empty() => (name, None),
                Some(c) => (name, Some(c)),
                None => {
                    return Err(bad(format!(
                        "'{rest}' after '{{{name}}}': only ':START-END' may follow the name"
                    )));
                }
            }
        } else {
            match s.rsplit_once(':') {
                Some((name, c))
                    if c.is_empty()
                        || c.starts_with(|ch: char| {
                            ch.is_ascii_digit() || ch == ',' || ch == '-'
                        }) =>
                {
                    (name, Some(c))
                }
                _ => (s, None),
            }
        };
        if name.is_empty() {
            return Err(bad("the sequence name is missing".into()));
        }
        let Some(coords) = coords else {
            return Ok(Region {
                name: name.to_string(),
                start: 0,
                end: None,
                explicit_name,
            });
        };
        let (first, last) = match coords.split_once('-') {
            Some((a, b)) => (a, Some(b)),
            None => (coords, None),
        };
        if first.is_empty() && last.is_none_or(str::is_empty) {
            return Err(bad("no coordinates after ':'".into()));
        }
        let number = |text: &str| -> Result<u64> {
            let digits: String = text.chars().filter(|&c| c != ',').collect();
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(format!("'{text}' is not a position")));
            }
            digits
                .parse::<u64>()
                .map_err(|_| bad(format!("position '{text}' is too large")))
        };
        // samtools: an omitted start is the first base, an omitted end is the last one.
        let start_1based = if first.is_empty() { 1 } else { number(first)? };
        let end_1based = match last {
            None | Some("") => None,
            Some(text) => Some(number(text)?),
        };
        if start_1based == 0 {
            return Err(bad(
                "positions are 1-based: the first base is 1, not 0".into()
            ));
        }
        if let Some(end) = end_1based
            && end < start_1based
        {
            return Err(bad(format!(
                "the end ({end}) is before the start ({start_1based})"
            )));
        }
        // 1-based inclusive [s, e] -> 0-based half-open [s - 1, e).
        Ok(Region {
            name: name.to_string(),
            start: start_1based - 1,
            end: end_1based,
            explicit_name,
        })
    }
}

impl Region {
    /// The region the way samtools writes it (1-based, inclusive): `20`, `20:1000001` (to the
    /// end) or `20:1000001-1010000`; a part of a sequence whose name has a `:` in braces
    /// (`{HLA-A*01:01}:1-100`), so that it reads back as the same region. A whole sequence is
    /// its name.
    pub fn display_1based(&self) -> String {
        let coords = self.coords_1based();
        if !coords.is_empty() && self.name.contains(':') {
            format!("{{{}}}{coords}", self.name)
        } else {
            format!("{}{coords}", self.name)
        }
    }

    /// The region as it is given on the command line, so that it reads back as the same
    /// region: [`Region::display_1based`], with a whole sequence whose name has a `:` in
    /// braces too (`{20:1-10}`, told apart from `20:1-10`, a part of `20`).
    pub fn spec(&self) -> String {
        if self.name.contains(':') {
            format!("{{{}}}{}", self.name, self.coords_1based())
        } else {
            self.display_1based()
        }
    }

    /// The id of the record read from this region: [`Region::display_1based`], with `(-)`
    /// after it for the minus strand (`reverse`), as `bedtools getfasta -s` names it.
    pub fn record_id(&self, reverse: bool) -> String {
        let id = self.display_1based();
        if reverse { format!("{id}(-)") } else { id }
    }

    /// The coordinates part of [`Region::display_1based`]: `""` (the whole sequence),
    /// `":1000001"` or `":1000001-1010000"`.
    fn coords_1based(&self) -> String {
        // 0-based half-open [start, end) -> 1-based inclusive [start + 1, end].
        match self.end {
            None if self.start == 0 => String::new(),
            None => format!(":{}", self.start + 1),
            Some(end) => format!(":{}-{}", self.start + 1, end),
        }
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display_1based())
    }
}

/// `1234567` -> `"1,234,567"`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// How the bytes of a file to be read by region are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Plain,
    Bgzf,
}

/// Looks at the first bytes: plain text and BGZF can be read by region; plain gzip and the
/// other compressions cannot.
fn layout(path: &str, file: &mut File) -> Result<Layout> {
    let mut head = [0u8; 18];
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    let head = &head[..n];
    let recompress = format!(
        "recompress it with bgzip and index it: `zcat {path} | bgzip > FILE.fa.gz && samtools faidx FILE.fa.gz` (or decompress it and run `samtools faidx`)"
    );
    if head.starts_with(&[0x1f, 0x8b]) {
        // BGZF (SAM/BAM spec 4.1): a gzip member with FEXTRA whose first subfield is "BC".
        let is_bgzf = head.len() == 18
            && head[3] & 4 != 0
            && head[12] == b'B'
            && head[13] == b'C'
            && u16::from_le_bytes([head[14], head[15]]) == 2;
        if is_bgzf {
            return Ok(Layout::Bgzf);
        }
        return Err(Error::input(
            path,
            "regions cannot be read from plain gzip (not bgzip) files",
            recompress,
        ));
    }
    let other = if head.starts_with(b"BZh") {
        Some("bzip2")
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Some("xz")
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some("zstd")
    } else {
        None
    };
    match other {
        Some(name) => Err(Error::input(
            path,
            format!("regions cannot be read from {name}-compressed files"),
            recompress.replace("zcat", &format!("{name} -dc")),
        )),
        None => Ok(Layout::Plain),
    }
}

/// The sequences (name, length) that the `.fai` index next to `path` lists, when there is one
/// that reads and is not older than `path` (an older one may describe another file; compared
/// in whole seconds, as htslib does, so that copying a file and its index in either order
/// keeps them); `None` otherwise, and for stdin. For a progress bar's total: reading never
/// depends on it.
pub fn indexed_lengths(path: &str) -> Option<Vec<(String, u64)>> {
    if path == "-" {
        return None;
    }
    let fai_path = format!("{path}.fai");
    let modified = |p: &str| {
        let time = std::fs::metadata(p).and_then(|m| m.modified()).ok()?;
        time.duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs())
    };
    if modified(&fai_path)? < modified(path)? {
        return None;
    }
    let index = read_fai(&fai_path).ok()?;
    Some(
        index
            .as_ref()
            .iter()
            .map(|r| (String::from_utf8_lossy(r.name()).into_owned(), r.length()))
            .collect(),
    )
}

/// Bases read through the index per query when a region is streamed (rounded up to a whole
/// number of pieces): memory for a region of any length stays about this many bytes twice
/// (the text read and its tokens) plus one piece.
const READ_WINDOW: usize = 1 << 20;

/// Reads one region of an indexed FASTA (plain with `.fai`, or bgzip with `.fai` + `.gzi`)
/// whole, reading through the index only the bytes of the region. For long
/// regions prefer [`for_each_region_piece`], which holds a bounded part at a time.
///
/// The record's `id` is [`Region::display_1based`], `chrom` the sequence name, `offset` the
/// 0-based start, `number` the 1-based number of the sequence in the index.
pub fn read_region(path: &str, region: &Region) -> Result<Record> {
    let mut tokens = Vec::new();
    let mut meta = None;
    for_each_region_piece(path, region, usize::MAX, &mut |p: Piece| {
        if tokens.is_empty() {
            tokens = p.tokens;
        } else {
            tokens.extend_from_slice(&p.tokens);
        }
        meta.get_or_insert(p.meta);
        Ok(())
    })?;
    let meta = meta.ok_or_else(|| Error::Runtime(format!("region {region} gave no bases")))?;
    Ok(Record {
        id: meta.id.clone(),
        chrom: meta.chrom.clone(),
        offset: meta.offset,
        source: meta.source.clone(),
        number: meta.number,
        tokens,
    })
}

/// Streams one region of an indexed FASTA (plain with `.fai`, or bgzip with `.fai` + `.gzi`)
/// as [`Piece`]s of at most `piece_len` tokens: [`IndexedFasta::for_each_piece`] on the file
/// opened for this region alone. To read many regions of one file, open it once with
/// [`IndexedFasta::open`].
pub fn for_each_region_piece(
    path: &str,
    region: &Region,
    piece_len: usize,
    f: &mut dyn FnMut(Piece) -> Result<()>,
) -> Result<()> {
    IndexedFasta::open(path, region)?.for_each_piece(region, piece_len, f)
}

/// Checks, without reading any bases, what [`for_each_region_piece`] checks before its first
/// piece: the file can be read by region, its indexes, the name and the range. For refusing
/// a bad `--region` before any work.
pub fn check_region(path: &str, region: &Region) -> Result<()> {
    IndexedFasta::open(path, region)?.check(region).map(drop)
}

/// What can be both read and sought: a plain file or a bgzip file through its `.gzi`.
trait SeekBufRead: BufRead + Seek {}
impl<T: BufRead + Seek> SeekBufRead for T {}

/// How far ahead of the read position a seek is made by reading on instead: a bgzip block
/// holds at most 64 KiB, so this reaches into the next block at most.
const READ_ON: u64 = 1 << 16;

/// How many of the last bytes read are kept for seeks back (at least; up to twice as many).
const KEEP_BACK: usize = 1 << 17;

/// A file read as if it ended at `end`.
struct Bounded {
    file: File,
    end: u64,
    /// The position in the file.
    at: u64,
}

impl Read for Bounded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end.saturating_sub(self.at);
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..want])?;
        self.at += n as u64;
        Ok(n)
    }
}

impl Seek for Bounded {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        let pos = match pos {
            io::SeekFrom::End(k) => io::SeekFrom::Start(
                self.end
                    .checked_add_signed(k)
                    .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?,
            ),
            other => other,
        };
        self.at = self.file.seek(pos)?;
        Ok(self.at)
    }
}

/// A reader that turns a seek a little ahead of its position into reading on, and a seek back
/// into the bytes it last read into reading those again. Sorted regions close together (a
/// BED file of peaks, say), and the index checks that look just past a sequence before its
/// next region, then reuse the bgzip block already decompressed instead of decompressing it
/// again for every seek (a seek in noodles' indexed bgzip reader always reads its block
/// anew), and a plain file's buffer is kept. Other seeks are passed on.
struct ReadOn<R> {
    inner: R,
    /// The position of `inner` in the uncompressed stream; `None` before the first seek.
    at: Option<u64>,
    /// The last bytes read from `inner`, ending at `at`.
    kept: Vec<u8>,
    /// While bytes of `kept` are read again: the position read (before `at`).
    replay: Option<u64>,
}

impl<R: BufRead + Seek> ReadOn<R> {
    fn new(inner: R) -> Self {
        ReadOn {
            inner,
            at: None,
            kept: Vec::new(),
            replay: None,
        }
    }
}

impl<R: BufRead> Read for ReadOn<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for ReadOn<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if let (Some(p), Some(at)) = (self.replay, self.at) {
            let from = at - self.kept.len() as u64;
            return Ok(&self.kept[(p - from) as usize..]);
        }
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        if let (Some(p), Some(at)) = (self.replay, self.at) {
            let next = p + amt as u64;
            self.replay = (next < at).then_some(next);
            return;
        }
        if let Some(at) = self.at.as_mut() {
            // What passes is kept for seeks back (the buffer still holds it).
            if let Ok(buf) = self.inner.fill_buf() {
                let n = amt.min(buf.len());
                self.kept.extend_from_slice(&buf[..n]);
            }
            if self.kept.len() > 2 * KEEP_BACK {
                self.kept.drain(..self.kept.len() - KEEP_BACK);
            }
            *at += amt as u64;
        }
        self.inner.consume(amt);
    }
}

impl<R: BufRead + Seek> Seek for ReadOn<R> {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        if let (io::SeekFrom::Start(target), Some(at)) = (pos, self.at) {
            let kept_from = at - self.kept.len() as u64;
            if target >= kept_from && target < at {
                self.replay = Some(target);
                return Ok(target);
            }
            if target >= at && target - at <= READ_ON {
                self.replay = None;
                let mut left = target - at;
                while left > 0 {
                    let available = self.inner.fill_buf()?.len() as u64;
                    if available == 0 {
                        break;
                    }
                    let step = available.min(left);
                    self.consume(step as usize);
                    left -= step;
                }
                if left == 0 {
                    return Ok(target);
                }
            }
        }
        // Unknown until the seek succeeds.
        self.at = None;
        self.replay = None;
        self.kept.clear();
        let position = self.inner.seek(pos)?;
        self.at = Some(position);
        Ok(position)
    }
}

/// An indexed FASTA file (plain with `.fai`, or bgzip with `.fai` + `.gzi`) opened once for
/// reading any number of regions: the file is opened and its indexes read and looked up by
/// name once, so that a long list of regions (a BED file of them) costs one lookup per
/// region, not one read of the indexes.
pub struct IndexedFasta {
    path: String,
    /// How to fix a damaged or out-of-date index.
    reindex: String,
    index: fasta::fai::Index,
    /// The position in `index` of each sequence name.
    by_name: HashMap<Vec<u8>, usize>,
    /// Sequences whose whole name reads as a region of another name (`20:1-10`, as
    /// `samtools faidx` names what it writes), by that region.
    region_like: HashMap<Region, String>,
    /// Byte just past each sequence's last base (its bases' start for an empty one).
    ends: Vec<u64>,
    /// The index's sequences in the order they lie in the file.
    order: Vec<usize>,
    /// Each sequence's place in `order`.
    rank: Vec<usize>,
    /// The gaps between sequences (numbered by the `order` rank of the sequence after them;
    /// `order.len()` for the file's tail) checked against the index so far.
    gaps_checked: std::collections::HashSet<usize>,
    reader: Box<dyn SeekBufRead>,
    /// The bytes of the last window read, line ends included.
    raw: Vec<u8>,
    /// Its bases.
    bases: Vec<u8>,
}

/// A region checked against the index.
struct Checked {
    /// 1-based number of the sequence in the index.
    number: usize,
    /// 0-based, exclusive end.
    end: u64,
    /// Its entry's position in the index.
    entry: usize,
}

impl IndexedFasta {
    /// Opens `path` and reads its indexes. `region` (the first to be read) is named in the
    /// error when the file cannot be read by region (stdin, plain gzip and other
    /// compressions) or an index is missing.
    pub fn open(path: &str, region: &Region) -> Result<IndexedFasta> {
        if path == "-" {
            return Err(Error::usage(
                format!("--region {region} needs an indexed file, not stdin (-)"),
                "pass the FASTA path (indexed with `samtools faidx FILE`)",
            ));
        }
        // A pipe (`<(...)`, a FIFO) or a device cannot be read at an offset.
        if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
            return Err(Error::input(
                path,
                format!(
                    "is not a regular file (a pipe or a device?); --region {region} reads at offsets, which needs one"
                ),
                "write the sequence to a file and index it with `samtools faidx FILE`",
            ));
        }
        // A FASTQ (or SAM) file, plain or compressed, is named as one before any hint about
        // indexes or compression, whose fixes would not make it readable by region.
        let first = super::bed::open_text(path, "a FASTA file").and_then(|mut text| {
            loop {
                let buf = text.fill_buf().map_err(|e| Error::io(path, e))?;
                match buf.iter().position(|b| !b.is_ascii_whitespace()) {
                    Some(k) => return Ok(Some(buf[k])),
                    None if buf.is_empty() => return Ok(None),
                    None => {
                        let n = buf.len();
                        text.consume(n);
                    }
                }
            }
        });
        if let Ok(Some(b'@')) = first {
            return Err(Error::input(
                path,
                format!(
                    "starts with '@' as FASTQ (or SAM) does; regions (here {region}) are read from FASTA only"
                ),
                format!(
                    "convert it with `samtools fasta {path} > reads.fa` and index that with `samtools faidx reads.fa`"
                ),
            ));
        }
        let mut file = open_file(path, "a FASTA file")?;
        let layout = layout(path, &mut file)?;
        file.rewind().map_err(|e| Error::io(path, e))?;

        let reindex = format!("re-create the index with `samtools faidx {path}`");
        let fai_path = format!("{path}.fai");
        if !Path::new(&fai_path).exists() {
            return Err(Error::input(
                path,
                format!("no index {fai_path}, needed to read region {region}"),
                format!("run `samtools faidx {path}`"),
            ));
        }
        let index = read_fai(&fai_path).map_err(|e| {
            let text = std::fs::read(&fai_path).unwrap_or_default();
            let lines = || text.split(|&b| b == b'\n');
            // `samtools faidx` indexes FASTQ too, with two more columns (quality offsets).
            let fastq = lines()
                .next()
                .is_some_and(|l| l.split(|&b| b == b'\t').count() == 6);
            // A name that is not UTF-8 (which every record id must be) is said as such:
            // re-indexing would not help.
            let not_utf8 = lines().position(|l| {
                std::str::from_utf8(l.split(|&b| b == b'\t').next().unwrap_or(&[])).is_err()
            });
            if fastq {
                Error::input(
                    path,
                    format!("is a FASTQ file (its index {fai_path} has FASTQ's 6 columns); --region {region} reads FASTA only"),
                    format!("convert it with `samtools fasta {path} > reads.fa` and index that with `samtools faidx reads.fa`"),
                )
            } else if let Some(line) = not_utf8 {
                Error::input(
                    &fai_path,
                    format!("the sequence name on line {} is not UTF-8 text", line + 1),
                    format!("record ids must be UTF-8 (or ASCII) text: rename the record in {path}, then re-create the index with `samtools faidx {path}`"),
                )
            } else {
                Error::input(&fai_path, format!("invalid FASTA index: {e}"), &reindex)
            }
        })?;
        let size = match layout {
            Layout::Plain => Some(file.metadata().map_err(|e| Error::io(path, e))?.len()),
            Layout::Bgzf => None,
        };
        let ends = bases_ends(path, &index, size, &reindex)?;
        let inner: Box<dyn SeekBufRead> = match layout {
            Layout::Plain => Box::new(ReadOn::new(BufReader::new(file))),
            Layout::Bgzf => {
                let gzi_path = format!("{path}.gzi");
                if !Path::new(&gzi_path).exists() {
                    return Err(Error::input(
                        path,
                        format!(
                            "bgzip file without its {gzi_path} index, needed to read region {region}"
                        ),
                        format!("index it with `samtools faidx {path}` (writes .fai and .gzi)"),
                    ));
                }
                let gzi = bgzf::gzi::fs::read(&gzi_path).map_err(|e| {
                    Error::input(&gzi_path, format!("invalid bgzip index: {e}"), &reindex)
                })?;
                // Zero padding after the end block is not read as a block.
                let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
                // Without its end block the file was cut short (or not finished): regions
                // past the cut would fail at a block that is not there, or one of zeros.
                let end = super::fastx::bgzf_data_end(&file, len)
                    .map_err(|e| Error::io(path, e))?
                    .ok_or_else(|| {
                        Error::input(
                            path,
                            super::fastx::TRUNCATED_BGZF,
                            format!("re-download it or re-run bgzip, then re-create the index with `samtools faidx {path}`"),
                        )
                    })?;
                let data = Bounded { file, end, at: 0 };
                Box::new(ReadOn::new(bgzf::io::IndexedReader::new(data, gzi)))
            }
        };
        let mut by_name = HashMap::with_capacity(index.as_ref().len());
        let mut region_like = HashMap::new();
        for (i, r) in index.as_ref().iter().enumerate() {
            let name: &[u8] = r.name().as_ref();
            // The first of repeated names, as a linear search would find it.
            by_name.entry(name.to_vec()).or_insert(i);
            // Only names with ':' or braces can read as a region of another name.
            if name.contains(&b':') || name.starts_with(b"{") {
                let name = String::from_utf8_lossy(name).into_owned();
                if let Ok(as_region) = name.parse::<Region>()
                    && as_region.name != name
                {
                    region_like.entry(as_region).or_insert(name);
                }
            }
        }
        // The first entry of each name (the one read, as a lookup finds it), in file order.
        let mut order: Vec<usize> = by_name.values().copied().collect();
        order.sort_by_key(|&i| (index.as_ref()[i].position(), i));
        let mut rank = vec![0; index.as_ref().len()];
        for (k, &i) in order.iter().enumerate() {
            rank[i] = k;
        }
        Ok(IndexedFasta {
            path: path.to_string(),
            reindex,
            index,
            by_name,
            region_like,
            ends,
            order,
            rank,
            gaps_checked: std::collections::HashSet::new(),
            reader: inner,
            raw: Vec::new(),
            bases: Vec::new(),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Checks `region` against the index (the name and the range) without reading any
    /// bases.
    fn check(&self, region: &Region) -> Result<Checked> {
        let path = self.path.as_str();
        let found = self.by_name.get(region.name.as_bytes()).copied();
        // A sequence whose whole name reads as this region (`20:1-10`, say, from a file
        // written by `samtools faidx`): without braces, which one is meant cannot be told.
        let whole_name = if region.explicit_name {
            None
        } else {
            self.region_like.get(region)
        };
        if let (Some(_), Some(whole)) = (found, whole_name) {
            return Err(Error::usage(
                format!(
                    "region {region} is ambiguous in {path}: it has a sequence {name} and a sequence named '{whole}'",
                    name = region.name
                ),
                format!(
                    "write {{{name}}}{coords} for the part of {name}, or {{{whole}}} for the other",
                    name = region.name,
                    coords = region.coords_1based()
                ),
            ));
        }
        let Some(i) = found else {
            if let Some(whole) = whole_name {
                return Err(Error::input(
                    path,
                    format!("no sequence named '{}' in the index", region.name),
                    format!(
                        "this file has a sequence named '{whole}': write --region '{{{whole}}}' to read it"
                    ),
                ));
            }
            return Err(unknown_sequence(path, region, &self.index));
        };
        let entry = &self.index.as_ref()[i];
        let length = entry.length();

        // Checks against the sequence length, in the user's 1-based terms.
        let fix_range = format!(
            "use positions 1..{length} for {name}: as a region e.g. {name}:1-{end}, or {name}:START to read to the end; in a BED row an end of at most {length}",
            name = region.name,
            end = length.min(1000),
        );
        let too_far = |what: String| {
            Error::input(
                path,
                format!(
                    "{what}: sequence {} is {} bp long",
                    region.name,
                    thousands(length)
                ),
                &fix_range,
            )
            .in_record(&region.name)
        };
        if region.start >= length {
            return Err(too_far(format!(
                "region {region} starts after the end of the sequence"
            )));
        }
        let end = region.end.unwrap_or(length);
        if end > length {
            return Err(too_far(format!(
                "region {region} ends past the end of the sequence"
            )));
        }
        if end <= region.start {
            return Err(too_far(format!(
                "region {region} is empty (its end is not after its start)"
            )));
        }
        Ok(Checked {
            number: i + 1,
            end,
            entry: i,
        })
    }

    /// Streams `region` as [`Piece`]s of at most `piece_len` tokens, like
    /// [`super::fastx::for_each_piece`] streams a whole record: the region is read through
    /// the index a window of about a megabase at a time (a whole number of pieces), so a
    /// region as long as a chromosome is never in memory whole. The pieces are those
    /// [`Record::into_pieces`] would cut from [`read_region`]'s record. Everything that can
    /// be checked before reading (the name and the range) is checked before the first piece
    /// is handed on.
    pub fn for_each_piece(
        &mut self,
        region: &Region,
        piece_len: usize,
        f: &mut dyn FnMut(Piece) -> Result<()>,
    ) -> Result<()> {
        self.for_each_piece_as(region, None, false, piece_len, f)
    }

    /// As [`Self::for_each_piece`], with the record id `id` instead of the region's own
    /// (`chr:start-end`) when it is given, and with `reverse` the region's reverse complement
    /// (the minus strand, read from its end a window at a time; its own id is then
    /// [`Region::record_id`]'s, `chr:start-end(-)`). The record's chromosome and
    /// offset stay the region's; on the minus strand position `i` of the record is the
    /// region's base `end - 1 - i`.
    pub fn for_each_piece_as(
        &mut self,
        region: &Region,
        id: Option<&str>,
        reverse: bool,
        piece_len: usize,
        f: &mut dyn FnMut(Piece) -> Result<()>,
    ) -> Result<()> {
        let Checked { number, end, entry } = self.check(region)?;
        let meta = Arc::new(RecordMeta {
            id: id.map_or_else(|| region.record_id(reverse), str::to_string),
            chrom: region.name.clone(),
            offset: region.start,
            source: self.path.clone(),
            number,
            minus_strand: reverse,
        });
        // The index must still describe the file where this sequence starts and ends: the
        // gap before it now, the one after it once its bases are read (so that a bgzip
        // file's blocks are read in order).
        let rank = self.rank[entry];
        self.check_gap(rank)?;
        let piece_len = piece_len.max(1);
        let window = if piece_len >= READ_WINDOW {
            piece_len
        } else {
            piece_len * READ_WINDOW.div_ceil(piece_len)
        };
        let total = end - region.start;
        let mut done = 0u64;
        let mut tokens = Vec::new();
        while done < total {
            let want = (total - done).min(window as u64);
            // 0-based half-open [from, from + want). The minus
            // strand takes the windows from the region's end.
            let from = if reverse {
                end - done - want
            } else {
                region.start + done
            };
            self.read_bases(entry, from, want)
                .map_err(|e| e.in_record(&region.name))?;
            let path = self.path.as_str();
            let reindex = self.reindex.as_str();
            tokens.clear();
            if let Err(bad) = alphabet::tokenize_into(&self.bases, &mut tokens) {
                // 1-based position in the sequence, as samtools would print it.
                let position = from + bad.offset as u64 + 1;
                return Err(Error::input(
                    path,
                    format!("invalid character {} in region {region}", bad.describe()),
                    format!("{BAD_BASE_FIX}; if the file changed since it was indexed, {reindex}"),
                )
                .in_record(&region.name)
                .at(position));
            }
            if tokens.len() as u64 != want {
                return Err(Error::input(
                    path,
                    format!(
                        "region {region}: read {} bases, expected {want} (positions {}-{}); the index does not match the file",
                        tokens.len(),
                        from + 1,
                        from + want
                    ),
                    reindex,
                )
                .in_record(&region.name));
            }
            if reverse {
                tokens = alphabet::reverse_complement_tokens(&tokens);
            }
            // Pieces start at multiples of `piece_len` from the record's start (`window` is
            // a multiple of it).
            let mut at = 0;
            while at < tokens.len() {
                let len = piece_len.min(tokens.len() - at);
                let piece = if at == 0 && len == tokens.len() {
                    std::mem::take(&mut tokens)
                } else {
                    tokens[at..at + len].to_vec()
                };
                let start = done + at as u64;
                f(Piece {
                    meta: meta.clone(),
                    start: usize::try_from(start).map_err(|_| {
                        Error::usage(
                            format!("region {region}: position {start} is out of range"),
                            REGION_FORM,
                        )
                    })?,
                    tokens: piece,
                    last: start + len as u64 == total,
                })?;
                at += len;
            }
            done += want;
        }
        self.check_gap(rank + 1)
    }

    /// Whether the file still holds the sequence `name` where its index places it: its
    /// header line just before its bases (an index may be out of date). `false` for a name
    /// the index lacks.
    pub fn holds(&mut self, name: &str) -> bool {
        match self.by_name.get(name.as_bytes()) {
            Some(&i) => self.check_gap(self.rank[i]).is_ok(),
            None => false,
        }
    }

    /// `Self::check` for callers outside this module: whether `region` can be read.
    pub fn check_region(&self, region: &Region) -> Result<()> {
        self.check(region).map(drop)
    }
}

/// Byte just past the last base of each sequence of `index` (where its bases start, for an
/// empty one). Refuses an index whose arithmetic overflows, or, given the plain file's `size`,
/// one that places a sequence past the file's end: an index of another or an older file, or
/// a damaged one (offsets near 2^64 wrapped around and read other bytes).
fn bases_ends(
    path: &str,
    index: &fasta::fai::Index,
    size: Option<u64>,
    reindex: &str,
) -> Result<Vec<u64>> {
    index
        .as_ref()
        .iter()
        .map(|r| {
            let end = match r.length().checked_sub(1) {
                None => Some(r.position()),
                Some(last) => byte_offset(r, last).and_then(|b| b.checked_add(1)),
            };
            match end {
                Some(end) if size.is_none_or(|size| end <= size) => Ok(end),
                _ => Err(Error::input(
                    path,
                    format!(
                        "its index {path}.fai places sequence {} past the end of the file{}: the index is out of date or damaged",
                        String::from_utf8_lossy(r.name()),
                        size.map(|s| format!(" ({} bytes)", thousands(s)))
                            .unwrap_or_default()
                    ),
                    reindex,
                )),
            }
        })
        .collect()
}

/// Where 0-based base `p` of sequence `r` lies in the (uncompressed) file, as the index says.
fn byte_offset(r: &fasta::fai::Record, p: u64) -> Option<u64> {
    let (bases, width) = (r.line_base_count().get(), r.line_width().get());
    (p / bases)
        .checked_mul(width)?
        .checked_add(p % bases)?
        .checked_add(r.position())
}

/// Reads a `.fai` index, leaving out its entries of sequences without bases: `samtools faidx`
/// writes some (`e 0 14 0 2` for a header followed by a blank CRLF line), and noodles refuses a
/// whole index for one line of 0 bases per line. No region can be read from them anyway.
fn read_fai(path: &str) -> io::Result<fasta::fai::Index> {
    let text = std::fs::read(path)?;
    let kept: Vec<u8> = text
        .split_inclusive(|&b| b == b'\n')
        .filter(|line| line.split(|&b| b == b'\t').nth(1) != Some(b"0"))
        .flatten()
        .copied()
        .collect();
    fasta::fai::io::Reader::new(&kept[..]).read_index()
}

/// Most bytes of a gap between sequences (the line end, blank lines and the next header
/// line) read to check it.
const GAP_READ: u64 = 1 << 16;

/// Whitespace as htslib's `isspace` takes it (which ends a sequence name, and which
/// `samtools faidx` skips): what may stand between a sequence's last base and the next header,
/// and before a line's end.
fn is_gap_space(b: u8) -> bool {
    matches!(b, b'\n' | b'\r' | b' ' | b'\t' | 0x0b | 0x0c)
}

/// Blanks within a line: whitespace other than its end.
fn is_blank(b: u8) -> bool {
    is_gap_space(b) && b != b'\n'
}

impl IndexedFasta {
    /// The error for a file that no longer matches its index.
    fn out_of_date(&self, what: String) -> Error {
        Error::input(
            &self.path,
            format!(
                "its index {}.fai does not match the file: {what}; the file changed after it was indexed",
                self.path
            ),
            &self.reindex,
        )
    }

    /// Reads `len` bytes (fewer at the end of the file) from `offset` into `self.raw`.
    fn read_raw(&mut self, offset: u64, len: u64) -> Result<()> {
        self.raw.clear();
        let read = self
            .reader
            .seek(io::SeekFrom::Start(offset))
            .and_then(|_| (&mut self.reader).take(len).read_to_end(&mut self.raw));
        read.map(drop).map_err(|e| {
            Error::input(
                &self.path,
                format!("cannot read at byte {offset}: {e}"),
                format!(
                    "the file may be damaged or its index out of date; {}",
                    self.reindex
                ),
            )
        })
    }

    /// Checks, once per file, the gap before the sequence of `order` rank `rank` (or the tail
    /// after the last one, `rank == order.len()`). From the previous sequence's last base:
    /// the end of its line, blank lines, then header lines, the last one the sequence's own
    /// `>NAME...`, ending exactly where the index says its bases start. Lines of other records
    /// may stand among the headers (`samtools faidx` leaves sequences without bases, and
    /// repeated names, out of its index; an index may list only some sequences), but not
    /// before the first header: bases there would mean the previous sequence goes on. The
    /// tail: blank lines, then the end of the file or another header. With every read
    /// window's lines checked too ([`Self::read_bases`]), bases are never taken from a place
    /// an out-of-date index points to: an edit that moves a sequence's start or end shows in
    /// these gaps.
    fn check_gap(&mut self, rank: usize) -> Result<()> {
        if self.gaps_checked.contains(&rank) {
            return Ok(());
        }
        let from = match rank.checked_sub(1) {
            None => 0,
            Some(prev) => self.ends[self.order[prev]],
        };
        let next = self.order.get(rank).copied();
        let to = next.map(|i| self.index.as_ref()[i].position());
        let gap = match to {
            Some(to) if to < from => {
                let name =
                    String::from_utf8_lossy(self.index.as_ref()[self.order[rank - 1]].name())
                        .into_owned();
                return Err(self.out_of_date(format!("sequence {name} runs into the next one")));
            }
            Some(to) => to - from,
            None => GAP_READ,
        };
        let fine = match next {
            None => {
                self.read_raw(from, GAP_READ)?;
                let rest = self.raw.as_slice();
                match rest.iter().position(|&b| !is_gap_space(b)) {
                    None => true,
                    // Sequences after the indexed ones keep the index right for these.
                    Some(k) => rest[k] == b'>' && rest[..k].contains(&b'\n'),
                }
            }
            Some(i) => {
                let whole = gap <= GAP_READ;
                self.read_raw(from, gap.min(GAP_READ))?;
                // A UTF-8 byte-order mark may open the file.
                let text = match (rank, self.raw.strip_prefix(b"\xEF\xBB\xBF")) {
                    (0, Some(rest)) => rest,
                    _ => &self.raw[..],
                };
                let mut lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
                // Past the last newline: nothing when the whole gap ends a line.
                let partial = lines.pop().unwrap_or_default();
                let blank = |l: &[u8]| l.iter().all(|&b| is_blank(b));
                // After a sequence's last base its line ends (blanks allowed), and only blank
                // lines stand before the first header.
                let start_fine = (rank == 0 || lines.first().is_some_and(|l| blank(l)))
                    && lines
                        .iter()
                        .skip(usize::from(rank > 0))
                        .take_while(|l| !l.starts_with(b">"))
                        .all(|l| blank(l));
                let name: Vec<u8> = self.index.as_ref()[i].name().to_vec();
                let end_fine = if whole {
                    partial.is_empty() && lines.last().is_some_and(|h| names(h, &name))
                } else {
                    // The gap's end, read on its own: a line end just before the bases, after
                    // this sequence's header (unless that one line is longer than was read).
                    let end = from + gap;
                    self.read_raw(end - GAP_READ, GAP_READ)?;
                    let tail = self.raw.as_slice();
                    match tail.split_last() {
                        Some((b'\n', before)) => match memchr::memrchr(b'\n', before) {
                            Some(k) => names(&before[k + 1..], &name),
                            None => true,
                        },
                        _ => false,
                    }
                };
                start_fine && end_fine
            }
        };
        if !fine {
            let name = |i: usize| String::from_utf8_lossy(self.index.as_ref()[i].name());
            let prev = rank.checked_sub(1).map(|r| self.order[r]);
            let what = match (prev, next) {
                (None, Some(i)) => format!(
                    "sequence {} does not start where the index says (byte {})",
                    name(i),
                    thousands(self.index.as_ref()[i].position())
                ),
                (Some(p), Some(i)) => format!(
                    "sequence {} does not end or {} does not start where the index says (bytes {}-{})",
                    name(p),
                    name(i),
                    thousands(from),
                    thousands(self.index.as_ref()[i].position())
                ),
                (Some(p), None) => format!(
                    "sequence {} does not end where the index says (byte {})",
                    name(p),
                    thousands(from)
                ),
                (None, None) => "the index lists no sequences".to_string(),
            };
            return Err(self.out_of_date(what));
        }
        self.gaps_checked.insert(rank);
        Ok(())
    }

    /// Reads bases `from .. from + want` (0-based) of index entry `entry` into `self.bases`,
    /// checking that the file's lines lie where the index places them: the whole lines the
    /// bases are on are read, with the line end before the first (unless it is the
    /// sequence's first line) and after each but the sequence's last line, so that lines
    /// joined, split or rewrapped since indexing show even in a read within one line.
    fn read_bases(&mut self, entry: usize, from: u64, want: u64) -> Result<()> {
        let record = &self.index.as_ref()[entry];
        let (bases, width) = (record.line_base_count().get(), record.line_width().get());
        let length = record.length();
        let overflow = || Error::Runtime(format!("position {from} + {want} overflows"));
        let last = from.checked_add(want - 1).ok_or_else(overflow)?;
        let (first_line, last_line) = (from / bases, last / bases);
        let final_line = (length - 1) / bases;
        // Where line `l` starts: its first base's place.
        let line_start = |l: u64| l.checked_mul(bases).and_then(|p| byte_offset(record, p));
        let start = line_start(first_line)
            .and_then(|b| b.checked_sub(u64::from(first_line > 0)))
            .ok_or_else(overflow)?;
        let last_bases = (length - last_line * bases).min(bases);
        let line_end = if last_line == final_line {
            0
        } else {
            width - bases
        };
        let stop = line_start(last_line)
            .and_then(|b| b.checked_add(last_bases + line_end))
            .ok_or_else(overflow)?;
        self.read_raw(start, stop - start)?;
        let raw = self.raw.as_slice();
        let mut bad = None;
        let mut at = 0usize;
        if first_line > 0 {
            if raw.first() != Some(&b'\n') {
                bad = Some(0);
            }
            at = 1;
        }
        self.bases.clear();
        let mut line = first_line;
        while bad.is_none() && line <= last_line {
            let n = ((length - line * bases).min(bases)) as usize;
            let Some(text) = raw.get(at..at + n) else {
                bad = Some(at);
                break;
            };
            if let Some(k) = memchr::memchr3(b'\n', b'\r', b'>', text) {
                bad = Some(at + k);
                break;
            }
            // The wanted part of this line.
            let lo = if line == first_line {
                (from % bases) as usize
            } else {
                0
            };
            let hi = if line == last_line {
                (last % bases) as usize + 1
            } else {
                n
            };
            self.bases.extend_from_slice(&text[lo..hi]);
            at += n;
            if line != final_line {
                // The line end: `width - bases` bytes, the last a newline ("\n" or "\r\n",
                // after any blanks `samtools faidx` counted into the line's width).
                let end = (width - bases) as usize;
                let ok = raw.get(at..at + end).is_some_and(|e| {
                    e.split_last().is_some_and(|(&nl, blanks)| {
                        nl == b'\n' && blanks.iter().all(|&b| is_blank(b))
                    })
                });
                if !ok {
                    bad = Some(at);
                    break;
                }
                at += end;
            }
            line += 1;
        }
        match bad {
            None => Ok(()),
            Some(k) => {
                let name = String::from_utf8_lossy(self.index.as_ref()[entry].name()).into_owned();
                Err(self.out_of_date(format!(
                    "the lines of sequence {name} do not break where the index says (near byte {})",
                    thousands(start + k as u64)
                )))
            }
        }
    }
}

/// Whether header line `header` (without its newline) names `name` as `samtools faidx` reads
/// it: `>`, any blanks, the name, then whitespace or the line's end.
fn names(header: &[u8], name: &[u8]) -> bool {
    header
        .strip_prefix(b">")
        .map(|r| &r[r.iter().take_while(|&&b| is_blank(b)).count()..])
        .and_then(|r| r.strip_prefix(name))
        .is_some_and(|rest| rest.first().is_none_or(|&b| is_gap_space(b)))
}

/// The error for a name that is not in the index, listing a few names it has.
fn unknown_sequence(path: &str, region: &Region, index: &fasta::fai::Index) -> Error {
    const SHOWN: usize = 5;
    let names: Vec<String> = index
        .as_ref()
        .iter()
        .map(|r| String::from_utf8_lossy(r.name().as_ref()).into_owned())
        .collect();
    let mut listed = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        listed.push_str(&format!(", ... ({} sequences)", names.len()));
    }
    // A common mix-up: "chr20" vs "20".
    let alias = region
        .name
        .strip_prefix("chr")
        .map(str::to_string)
        .unwrap_or_else(|| format!("chr{}", region.name));
    let fix = if names.contains(&alias) {
        let coords = region.coords_1based();
        format!("this file calls it '{alias}': use --region {alias}{coords}")
    } else {
        format!("use a sequence name from {path}.fai")
    };
    Error::input(
        path,
        format!(
            "no sequence named '{}' in the index (it has: {listed})",
            region.name
        ),
        fix,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that counts its seeks.
    struct CountSeeks<R> {
        inner: R,
        seeks: usize,
    }

    impl<R: Read> Read for CountSeeks<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.inner.read(buf)
        }
    }

    impl<R: BufRead> BufRead for CountSeeks<R> {
        fn fill_buf(&mut self) -> io::Result<&[u8]> {
            self.inner.fill_buf()
        }
        fn consume(&mut self, amt: usize) {
            self.inner.consume(amt)
        }
    }

    impl<R: Seek> Seek for CountSeeks<R> {
        fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
            self.seeks += 1;
            self.inner.seek(pos)
        }
    }

    #[test]
    fn reading_on_and_again_gives_what_seeking_gives_and_seeks_only_far() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut plain = io::Cursor::new(data.clone());
        let counted = CountSeeks {
            inner: BufReader::with_capacity(1000, io::Cursor::new(data.clone())),
            seeks: 0,
        };
        let mut on = ReadOn::new(counted);
        // (target, bytes to read): ahead within the buffer, ahead past it but within
        // READ_ON, back into what was read (and on past it), right at READ_ON, past it, back
        // past what is kept, repeated, to and past the end.
        let steps = [
            (10u64, 5usize),
            (20, 3),
            (23, 0),
            (900, 200),
            (5_000, 10),
            (4_990, 40),
            (1_000, 10),
            (5_030 + READ_ON, 4),
            (5_035 + READ_ON, 1),
            (200_000, 100),
            (100, 50),
            (100, 50),
            (299_990, 20),
            (299_995, 3),
            (300_010, 3),
        ];
        let mut expected_seeks = 0;
        // The model: how far the inner reader has read, and from where bytes are kept.
        let mut live: Option<u64> = None;
        let mut kept_from = 0u64;
        for (target, len) in steps {
            // Past the end there is nothing to read on through: the seek is passed on.
            let far = live.is_none_or(|l| target < kept_from || target > l + READ_ON)
                || target > data.len() as u64;
            expected_seeks += usize::from(far);
            assert_eq!(plain.seek(io::SeekFrom::Start(target)).unwrap(), target);
            assert_eq!(on.seek(io::SeekFrom::Start(target)).unwrap(), target);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            (&mut plain).take(len as u64).read_to_end(&mut a).unwrap();
            (&mut on).take(len as u64).read_to_end(&mut b).unwrap();
            assert_eq!(a, b, "after a seek to {target}");
            let end = target + a.len() as u64;
            if far {
                kept_from = target;
                live = Some(end);
            } else {
                live = live.map(|l| l.max(end));
            }
            assert_eq!(on.inner.seeks, expected_seeks, "after a seek to {target}");
        }
        // Ten of the fifteen seeks were served by reading on or again.
        assert_eq!(expected_seeks, 5);
    }

    fn parse(s: &str) -> Region {
        s.parse().unwrap()
    }

    /// `r` with its name marked as a name (written in braces).
    fn named(r: Region) -> Region {
        Region {
            explicit_name: true,
            ..r
        }
    }

    fn region(name: &str, start: u64, end: Option<u64>) -> Region {
        Region {
            name: name.to_string(),
            start,
            end,
            explicit_name: false,
        }
    }

    #[test]
    fn parses_samtools_forms() {
        assert_eq!(parse("20"), region("20", 0, None));
        assert_eq!(parse("chr1:1-10"), region("chr1", 0, Some(10)));
        assert_eq!(
            parse("20:1,000,001-1,010,000"),
            region("20", 1_000_000, Some(1_010_000))
        );
        assert_eq!(parse("chrII:5"), region("chrII", 4, None));
        assert_eq!(parse("chrII:5-"), region("chrII", 4, None));
        assert_eq!(parse("chrII:-5"), region("chrII", 0, Some(5)));
        assert_eq!(parse("chrM:7-7"), region("chrM", 6, Some(7)));
        // Names may contain ':' and '-' when the text after the last ':' is not coordinates.
        assert_eq!(parse("HLA-A:x"), region("HLA-A:x", 0, None));
        assert_eq!(
            parse("gi|1|ref|NC_1.1|"),
            region("gi|1|ref|NC_1.1|", 0, None)
        );
        assert_eq!(parse("seq:v2:1-3"), region("seq:v2", 0, Some(3)));
        // Braces, as samtools takes them, for names that read as coordinates.
        assert_eq!(parse("{20:1-10}"), named(region("20:1-10", 0, None)));
        assert_eq!(parse("{20:1-10}:3-4"), named(region("20:1-10", 2, Some(4))));
        assert_eq!(parse("{chr1}:5"), named(region("chr1", 4, None)));
        // Braces mark the name as a name (which a region-like whole name cannot then take).
        assert!(parse("{chr1}:5").explicit_name && !parse("chr1:5").explicit_name);
    }

    #[test]
    fn displays_1based_and_round_trips() {
        for text in [
            "20",
            "20:1000001-1010000",
            "chrII:5",
            "chrM:7-7",
            "chr1:1-1",
            "{20:1-10}:3-4",
            "{seq:v2}:5",
        ] {
            let r = parse(text);
            assert_eq!(r.display_1based(), text);
            assert_eq!(r.to_string(), text);
            assert_eq!(parse(&r.display_1based()), r);
        }
        assert_eq!(
            parse("20:1,000,001-1,010,000").display_1based(),
            "20:1000001-1010000"
        );
        // A whole sequence is its name, as the id of a record read whole; as given on the
        // command line it keeps its braces, to be told from a part of `20`.
        assert_eq!(parse("{20:1-10}").display_1based(), "20:1-10");
        assert_eq!(parse("{20:1-10}").spec(), "{20:1-10}");
        assert_eq!(parse("{20}:1-10").spec(), "20:1-10");
        for text in ["{20:1-10}", "{20}:1-10", "{seq:v2}:5", "chrII:5", "20"] {
            assert_eq!(parse(&parse(text).spec()), parse(text), "{text}");
        }
        assert_eq!(parse("seq:v2:1-3").display_1based(), "{seq:v2}:1-3");
    }

    #[test]
    fn rejects_bad_syntax_as_usage_errors_with_the_right_form() {
        for text in [
            "",
            "chr1:",
            ":1-10",
            "chr1:0-10",
            "chr1:0",
            "chr1:10-5",
            "chr1:1-2-3",
            "chr1:1-x",
            "chr1:1x-5",
            "chr1:-",
            "chr1 :1-5",
            "chr1:99999999999999999999999",
            "{chr1",
            "{chr1}x",
            "{chr1}:",
            "{}",
            "{}:1-5",
        ] {
            let err = text.parse::<Region>().unwrap_err();
            assert!(matches!(err, Error::Usage { .. }), "{text}: {err:?}");
            assert_eq!(err.exit_code(), 2);
            let msg = err.to_string();
            assert!(msg.contains(&format!("'{text}'")), "{msg}");
            assert!(
                msg.contains("NAME:START-END") && msg.contains("e.g."),
                "{msg}"
            );
            assert!(!msg.contains('\n'), "{msg}");
        }
        let msg = "chr1:0-10".parse::<Region>().unwrap_err().to_string();
        assert!(msg.contains("1-based"), "{msg}");
        let msg = "chr1:10-5".parse::<Region>().unwrap_err().to_string();
        assert!(msg.contains("before the start"), "{msg}");
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(63_025_520), "63,025,520");
    }
}
