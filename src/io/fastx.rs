//! Streaming FASTA/FASTQ input.
//!
//! Compression is detected from the first bytes of the stream, never from the file name:
//! gzip and bgzip (any number of members), bzip2, xz and zstd (flate2, bzip2, liblzma, zstd).
//! FASTA is read line by line and tokenised as it goes; a record is handed on in [`Piece`]s
//! of a chosen length, so a chromosome is never held whole ([`for_each_piece`]). Record
//! parsers that buffer whole records (needletail's among them) cannot do that, which is why
//! this module reads lines itself. FASTQ records may span several lines (htslib/kseq rules:
//! sequence lines up to the `+` line, then quality lines until they are as long as the
//! sequence).
//!
//! Every failure becomes one [`Error`] line naming the file, the record (id, or `#N` for the
//! 1-based record number) and the line or 1-based base position. A compressed stream that ends
//! early or is damaged is an error ("truncated or corrupt ... data"), never a silent early end.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Cursor, Read};
use std::sync::{Arc, Mutex};

use crate::alphabet::{self, BadByte};
use crate::{Error, Result};

/// One sequence ready for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// First word of the header (FASTA/FASTQ); for a region: `chr:start-end` (1-based, as the
    /// user typed it).
    pub id: String,
    /// Sequence name for coordinates in BED output (= `id` for whole records; the chromosome
    /// name for regions).
    pub chrom: String,
    /// 0-based start of `tokens[0]` in `chrom` (0 for whole records).
    pub offset: u64,
    /// The path as given (`-` for stdin).
    pub source: String,
    /// 1-based record number in its file.
    pub number: usize,
    /// Token ids from [`crate::alphabet`] (validated).
    pub tokens: Vec<u8>,
}

/// Where a record comes from, without its bases (shared by all pieces of a record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMeta {
    /// As [`Record::id`].
    pub id: String,
    /// As [`Record::chrom`].
    pub chrom: String,
    /// As [`Record::offset`].
    pub offset: u64,
    /// As [`Record::source`].
    pub source: String,
    /// As [`Record::number`].
    pub number: usize,
    /// The record is a region's reverse complement (its minus strand): its position `i` is
    /// the chromosome's base `offset + length - 1 - i`. False for whole records.
    pub minus_strand: bool,
}

impl RecordMeta {
    /// How errors name the record: its id, or `#N` when its header is empty.
    pub fn label(&self) -> String {
        label(&self.id, self.number)
    }
}

/// A consecutive run of one record's tokens. A record arrives as one or more pieces in
/// order; the first has `start == 0`, the last has `last == true` (a record that fits in one
/// piece has both). Only a record of length 0 has an empty piece.
#[derive(Debug, Clone)]
pub struct Piece {
    /// The record.
    pub meta: std::sync::Arc<RecordMeta>,
    /// Position of `tokens[0]` within the record (0-based).
    pub start: usize,
    /// The tokens.
    pub tokens: Vec<u8>,
    /// Whether this piece ends the record.
    pub last: bool,
}

impl Piece {
    /// Whether the piece holds a whole record.
    pub fn is_whole(&self) -> bool {
        self.start == 0 && self.last
    }
}

impl Record {
    /// The record's metadata.
    pub fn meta(&self) -> RecordMeta {
        RecordMeta {
            id: self.id.clone(),
            chrom: self.chrom.clone(),
            offset: self.offset,
            source: self.source.clone(),
            number: self.number,
            minus_strand: false,
        }
    }

    /// Splits the record into pieces of at most `size` tokens (at least one piece).
    pub fn into_pieces(self, size: usize, f: &mut dyn FnMut(Piece) -> Result<()>) -> Result<()> {
        let meta = std::sync::Arc::new(self.meta());
        let size = size.max(1);
        let n = self.tokens.len();
        if n <= size {
            return f(Piece {
                meta,
                start: 0,
                tokens: self.tokens,
                last: true,
            });
        }
        let mut start = 0;
        while start < n {
            let end = (start + size).min(n);
            f(Piece {
                meta: meta.clone(),
                start,
                tokens: self.tokens[start..end].to_vec(),
                last: end == n,
            })?;
            start = end;
        }
        Ok(())
    }
}

/// Fix for a byte that is not a nucleotide code.
pub(crate) const BAD_BASE_FIX: &str =
    "remove or replace it; allowed: ACGTUN, IUPAC codes, lowercase";
/// Fix for a damaged compressed stream.
const CORRUPT_FIX: &str = "re-download or re-compress the file";
/// Fix for a file that is neither FASTA nor FASTQ.
const FORMAT_FIX: &str = "pass a FASTA ('>') or FASTQ ('@') file, plain or compressed with gzip, bgzip, bzip2, xz or zstd";
/// Fix for a malformed FASTQ record.
const FASTQ_FIX: &str = "fix or remove the record; a FASTQ record is '@id', sequence line(s), '+', quality line(s) as long as the sequence";

/// How far past a parse error compressed input is decoded to look for damage.
const CORRUPTION_LOOKAHEAD: usize = 64 << 20;

/// Size of the buffer between the decoder and the parsers.
const BUF_SIZE: usize = 256 * 1024;

/// Streams the records of one FASTA/FASTQ file (path `-` = stdin), compression detected from
/// content (gzip, bgzip, bzip2, xz, zstd). Calls `f` for each record in order; stops at the
/// first error (its own or one returned by `f`).
///
/// An empty input (no bytes, or only blank lines) is an error; records with an empty sequence
/// are passed to `f` with empty `tokens`. Each record is held whole in memory; use
/// [`for_each_piece`] to stream long records.
pub fn for_each_record(path: &str, f: &mut dyn FnMut(Record) -> Result<()>) -> Result<()> {
    let mut tokens: Vec<u8> = Vec::new();
    for_each_piece(path, usize::MAX, &mut |piece| {
        if piece.start == 0 {
            tokens.clear();
        }
        tokens.extend_from_slice(&piece.tokens);
        if piece.last {
            let m = &*piece.meta;
            f(Record {
                id: m.id.clone(),
                chrom: m.chrom.clone(),
                offset: m.offset,
                source: m.source.clone(),
                number: m.number,
                tokens: std::mem::take(&mut tokens),
            })?;
        }
        Ok(())
    })
}

/// Streams one FASTA/FASTQ file as [`Piece`]s of at most `piece_len` tokens: a FASTA record is
/// read line by line and handed on piece by piece, so a chromosome never has to be in
/// memory whole. FASTQ records (reads) are parsed whole, then cut into pieces.
pub fn for_each_piece(
    path: &str,
    piece_len: usize,
    f: &mut dyn FnMut(Piece) -> Result<()>,
) -> Result<()> {
    let piece_len = piece_len.max(1);
    let mut input = Input::open(path)?;
    match input.first_byte()? {
        None => {
            let what = match input.ctx.compression {
                Compression::Plain => "empty input: no FASTA/FASTQ records".to_string(),
                c => format!(
                    "empty input: no FASTA/FASTQ records (the {} data decompresses to nothing)",
                    c.name()
                ),
            };
            Err(Error::input(
                path,
                what,
                "check the path, or the command that produced the file",
            ))
        }
        Some(first @ (b'>' | b'@')) => {
            let Input { mut reader, ctx } = input;
            let mut from_callback = false;
            let result = {
                let mut g = |p: Piece| {
                    let res = f(p);
                    from_callback = res.is_err();
                    res
                };
                if first == b'>' {
                    read_fasta(&mut reader, &ctx, piece_len, &mut g)
                } else {
                    read_fastq(&mut reader, &ctx, &mut |r: Record| {
                        r.into_pieces(piece_len, &mut g)
                    })
                }
            };
            match result {
                // Damaged compressed data can decode to garbage before the decoder notices
                // (gzip checks its CRC at the end of each member): when parsing fails inside
                // compressed input, read on a little to report the real cause.
                Err(err @ Error::Input { .. }) if !from_callback => {
                    Err(ctx.corruption_after(&mut reader).unwrap_or(err))
                }
                other => other,
            }
        }
        Some(other) => Err(not_fastx(
            path,
            other,
            input.reader.fill_buf().unwrap_or(&[]),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Opening and decompressing

/// How the bytes of a file are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    Plain,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

impl Compression {
    fn name(self) -> &'static str {
        match self {
            Compression::Plain => "plain",
            Compression::Gzip => "gzip",
            Compression::Bzip2 => "bzip2",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
        }
    }

    /// A decoder of `rest` (every member of a multi-member stream), or `rest` itself for plain
    /// input; `path` names the input in the error of a zstd stream that cannot start.
    pub(crate) fn decoder<R: BufRead + Send + 'static>(
        self,
        rest: R,
        path: &str,
    ) -> Result<Box<dyn Read + Send>> {
        Ok(match self {
            Compression::Plain => Box::new(rest),
            Compression::Gzip => Box::new(GzMembers::new(rest)),
            Compression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(rest)),
            Compression::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(rest)),
            Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::with_buffer(rest).map_err(|e| {
                    Error::input(
                        path,
                        format!("cannot start the zstd decoder: {e}"),
                        CORRUPT_FIX,
                    )
                })?)
            }
        })
    }

    /// Detects the compression from the first bytes (magic numbers).
    pub(crate) fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(b"BZh") {
            Compression::Bzip2
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Compression::Xz
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::Plain
        }
    }
}

/// Every member of a gzip stream, like `gzip -d`: zero bytes after the last member (padding
/// that tape and block-device tools add) are skipped, and anything else after it is an error,
/// so that a file with other data appended is not silently cut short.
struct GzMembers<R: BufRead> {
    /// The current member's decoder; `None` once the stream has ended.
    member: Option<flate2::bufread::GzDecoder<R>>,
}

impl<R: BufRead> GzMembers<R> {
    fn new(rest: R) -> GzMembers<R> {
        GzMembers {
            member: Some(flate2::bufread::GzDecoder::new(rest)),
        }
    }
}

impl<R: BufRead> Read for GzMembers<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(member) = self.member.as_mut() else {
                return Ok(0);
            };
            let n = member.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            // The member ended: another one follows, or zero padding to the end, or the end.
            let Some(mut rest) = self.member.take().map(|m| m.into_inner()) else {
                return Ok(0);
            };
            if rest.fill_buf()?.first() == Some(&0x1f) {
                self.member = Some(flate2::bufread::GzDecoder::new(rest));
                continue;
            }
            skip_zeros_to_the_end(&mut rest)?;
            return Ok(0);
        }
    }
}

/// Reads `rest` to its end, which must hold only zero bytes.
fn skip_zeros_to_the_end(rest: &mut impl BufRead) -> io::Result<()> {
    loop {
        let head = rest.fill_buf()?;
        if head.is_empty() {
            return Ok(());
        }
        if head.iter().any(|&b| b != 0) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, TRAILING_GZIP));
        }
        let n = head.len();
        rest.consume(n);
    }
}

/// The first failure seen below the parsers, so that an `io::Error` that comes out of a
/// parser (which keeps only its message) can still be told apart: a failing read of the file
/// (a runtime error) or a decoder that met damaged or truncated data (bad input).
#[derive(Debug, Clone)]
enum Failure {
    Read(io::ErrorKind, String),
    Decode(Compression, String),
}

type FailureSlot = Arc<Mutex<Option<Failure>>>;

/// A reader that records its first error in the shared slot (unless a lower layer already
/// did) and passes it on unchanged.
struct Tap<R> {
    inner: R,
    slot: FailureSlot,
    /// `None` for the raw file, the compression for a decoder.
    decoder: Option<Compression>,
}

impl<R: Read> Read for Tap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let result = self.inner.read(buf);
        if let Err(e) = &result
            && e.kind() != io::ErrorKind::Interrupted
            && let Ok(mut slot) = self.slot.lock()
            && slot.is_none()
        {
            *slot = Some(match self.decoder {
                None => Failure::Read(e.kind(), e.to_string()),
                Some(c) => Failure::Decode(c, e.to_string()),
            });
        }
        result
    }
}

/// A decoded input stream positioned at its first byte.
struct Input {
    reader: Box<dyn BufRead + Send>,
    ctx: Ctx,
}

/// What error messages need to know about an input.
struct Ctx {
    path: String,
    compression: Compression,
    slot: FailureSlot,
    /// Blank lines skipped before the first record (added to line numbers).
    lines_skipped: u64,
}

/// What an input must be, for errors about directories.
const SEQUENCE_FILE: &str = "a FASTA or FASTQ file";

/// Opens a sequence file for reading, with the errors input files get (missing, unreadable,
/// a directory; `wanted` names what to pass instead of a directory, e.g. "a FASTA file").
pub(crate) fn open_file(path: &str, wanted: &str) -> Result<File> {
    let file = File::open(path)
        .map_err(|e| Error::input(path, format!("cannot open: {e}"), "check the path"))?;
    if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        return Err(Error::input(
            path,
            "cannot open: is a directory",
            format!("pass {wanted}"),
        ));
    }
    Ok(file)
}

/// Checks that every input (`-` is stdin, at most once) can be opened, so that a wrong path is
/// reported before a model is loaded onto a device.
pub fn check_inputs(paths: &[String]) -> Result<()> {
    if paths.iter().filter(|p| p.as_str() == "-").count() > 1 {
        return Err(Error::usage(
            "stdin (-) is given more than once, but it can be read only once",
            "give - once, or files by their paths",
        ));
    }
    check_streams_once(paths)?;
    for path in paths.iter().filter(|p| p.as_str() != "-") {
        // A pipe or FIFO is only looked at: opening it here would wait for its writer, and
        // closing it again could end the writer before the real read.
        if std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
            continue;
        }
        open_file(path, SEQUENCE_FILE)?;
    }
    Ok(())
}

/// The device and inode of a path (links followed), or of stdin for `-`, and whether it can be
/// read only once (stdin, or not a regular file: [`super::once::read_once`]).
#[cfg(unix)]
pub fn identity(path: &str) -> Option<((u64, u64), bool)> {
    use std::os::unix::fs::MetadataExt;
    let meta = if path == "-" {
        use std::os::fd::AsFd;
        let fd = std::io::stdin().as_fd().try_clone_to_owned().ok()?;
        std::fs::File::from(fd).metadata().ok()?
    } else {
        std::fs::metadata(path).ok()?
    };
    Some(((meta.dev(), meta.ino()), path == "-" || !meta.is_file()))
}

/// Refuses stdin given again under another name (`- /dev/stdin`) and a pipe, FIFO or device
/// given twice under two names: the second read would find it empty (or, for stdin redirected
/// from a file, read the file twice).
/// Two regular files given by their paths are left to the callers (reading a file twice
/// works, and may be what was meant).
#[cfg(unix)]
pub fn check_streams_once(paths: &[String]) -> Result<()> {
    let mut seen: Vec<(&str, (u64, u64), bool)> = Vec::new();
    for path in paths {
        let Some((id, stream)) = identity(path) else {
            continue;
        };
        let same = seen
            .iter()
            .find(|(_, other, was_stream)| *other == id && (stream || *was_stream));
        if let Some(&(first, _, first_stream)) = same {
            let (a, b) = (crate::error::shown(first), crate::error::shown(path));
            // Stdin redirected from a file that is also given by its path (not by a name of
            // stdin, such as /dev/stdin).
            let file = |p: &str, p_stream: bool| {
                (!p_stream && !p.starts_with("/dev/") && !p.starts_with("/proc/")).then(|| {
                    format!(
                        "{p} is also stdin (-), which is redirected from it: it would be read twice"
                    )
                })
            };
            let redirected = match (first == "-", path == "-") {
                (true, false) => file(path, stream),
                (false, true) => file(first, first_stream),
                _ => None,
            };
            let what = redirected.unwrap_or_else(|| {
                format!("{a} and {b} are the same input, which can be read only once")
            });
            return Err(Error::usage(what, "give it once"));
        }
        seen.push((path, id, stream));
    }
    Ok(())
}

#[cfg(not(unix))]
pub fn check_streams_once(_: &[String]) -> Result<()> {
    Ok(())
}

impl Input {
    fn open(path: &str) -> Result<Input> {
        let raw = super::once::open_once(path, || open_file(path, SEQUENCE_FILE))?;
        let slot = FailureSlot::default();
        let mut raw = Tap {
            inner: raw,
            slot: slot.clone(),
            decoder: None,
        };
        let mut head = [0u8; 6];
        let n = read_up_to(&mut raw, &mut head).map_err(|e| Error::io(path, e))?;
        let compression = Compression::detect(&head[..n]);
        if compression == Compression::Gzip && path != "-" {
            check_bgzf_end(path)?;
        }
        // The peeked bytes go back in front of the rest of the stream.
        let rest = BufReader::with_capacity(BUF_SIZE, Cursor::new(head[..n].to_vec()).chain(raw));
        let decoder: Box<dyn Read + Send> = match compression {
            // Plain input is already buffered.
            Compression::Plain => {
                return Ok(Input {
                    reader: Box::new(rest),
                    ctx: Ctx::new(path, compression, slot),
                });
            }
            c => c.decoder(rest, path)?,
        };
        let decoded = Tap {
            inner: decoder,
            slot: slot.clone(),
            decoder: Some(compression),
        };
        Ok(Input {
            reader: Box::new(BufReader::with_capacity(BUF_SIZE, decoded)),
            ctx: Ctx::new(path, compression, slot),
        })
    }

    /// Skips a UTF-8 byte-order mark and leading blank lines; returns the first byte of the
    /// content (not consumed), or `None` at the end of the input.
    fn first_byte(&mut self) -> Result<Option<u8>> {
        const BOM: &[u8] = &[0xef, 0xbb, 0xbf];
        let buf = self
            .reader
            .fill_buf()
            .map_err(|e| self.ctx.io_error(e, None))?;
        if buf.starts_with(BOM) {
            self.reader.consume(BOM.len());
        }
        loop {
            let buf = self
                .reader
                .fill_buf()
                .map_err(|e| self.ctx.io_error(e, None))?;
            let Some(&byte) = buf.first() else {
                return Ok(None);
            };
            match byte {
                b'\n' => self.ctx.lines_skipped += 1,
                b'\r' | b' ' | b'\t' => {}
                _ => return Ok(Some(byte)),
            }
            self.reader.consume(1);
        }
    }
}

impl Ctx {
    /// After a parse error in compressed input: decodes up to [`CORRUPTION_LOOKAHEAD`] more
    /// bytes and returns the decoder's error, if it reports one.
    fn corruption_after(&self, reader: &mut Box<dyn BufRead + Send>) -> Option<Error> {
        let already = self.slot.lock().map(|s| s.is_some()).unwrap_or(true);
        if self.compression == Compression::Plain || already {
            return None;
        }
        let mut left = CORRUPTION_LOOKAHEAD;
        while left > 0 {
            match reader.fill_buf() {
                Ok([]) => return None,
                Ok(buf) => {
                    let n = buf.len().min(left);
                    reader.consume(n);
                    left -= n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return match self.io_error(e, None) {
                        err @ Error::Input { .. } => Some(err),
                        _ => None,
                    };
                }
            }
        }
        None
    }

    fn new(path: &str, compression: Compression, slot: FailureSlot) -> Ctx {
        Ctx {
            path: path.to_string(),
            compression,
            slot,
            lines_skipped: 0,
        }
    }

    /// Turns an I/O error from the decoded stream into the right [`Error`]: damaged or
    /// truncated compressed data is bad input (exit 2), a failing read is a runtime error.
    fn io_error(&self, e: io::Error, record: Option<&str>) -> Error {
        self.io_error_after(e, record, None)
    }

    /// As [`Ctx::io_error`], between records: `previous` is the record read last.
    fn io_error_after(&self, e: io::Error, record: Option<&str>, previous: Option<&str>) -> Error {
        let failure = self.slot.lock().ok().and_then(|slot| slot.clone());
        let err = match failure {
            // Found once the last record's data has all been read: said as after it, not in.
            Some(Failure::Decode(_, msg)) if msg == TRAILING_GZIP => {
                let after = record
                    .or(previous)
                    .map_or(String::new(), |r| format!(", after its last record {r}"));
                return Error::input(
                    &self.path,
                    format!("{TRAILING_GZIP}{after}"),
                    TRAILING_GZIP_FIX,
                );
            }
            Some(Failure::Decode(c, msg)) => Error::input(
                &self.path,
                format!("truncated or corrupt {} data ({msg})", c.name()),
                CORRUPT_FIX,
            ),
            Some(Failure::Read(kind, msg)) => Error::io(&self.path, io::Error::new(kind, msg)),
            None => Error::io(&self.path, e),
        };
        match record {
            Some(r) => err.in_record(r),
            None => err,
        }
    }
}

/// What bytes other than zeros after a gzip file's last member are said to be.
pub(crate) const TRAILING_GZIP: &str = "data after the end of the last gzip member";

/// What to do about it.
pub(crate) const TRAILING_GZIP_FIX: &str = "remove what was appended after the gzip data, or re-compress the file: zcat FILE | gzip > NEW.gz";

/// The empty block that ends every BGZF (bgzip) file.
const BGZF_EOF: [u8; 28] = [
    0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff, 0x06, 0, b'B', b'C', 0x02, 0, 0x1b, 0, 0x03, 0, 0,
    0, 0, 0, 0, 0, 0, 0,
];

/// What a bgzip file without its end-of-file block is said to be.
pub(crate) const TRUNCATED_BGZF: &str =
    "truncated bgzip file: its end-of-file block is missing (it was cut short or not finished)";

/// Bytes read at a time while looking back through a file's trailing zeros.
const ZEROS_STEP: u64 = 64 * 1024;

/// Where the run of zero bytes that ends `file` (of `len` bytes) begins: `len` when its last
/// byte is not zero.
fn trailing_zeros_start(file: &File, len: u64) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut end = len;
    let mut buf = Vec::new();
    while end > 0 {
        let start = end.saturating_sub(ZEROS_STEP);
        buf.resize((end - start) as usize, 0);
        file.read_exact_at(&mut buf, start)?;
        if let Some(i) = buf.iter().rposition(|&b| b != 0) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Where a bgzip file's data ends: just after its end-of-file block, which zero padding of
/// any length may follow. `None` when the file does not end with that block (cut short, not
/// finished, or not bgzip).
pub(crate) fn bgzf_data_end(file: &File, len: u64) -> io::Result<Option<u64>> {
    use std::os::unix::fs::FileExt;
    // The end block itself ends in zeros: its last non-zero byte must be the end block's.
    let eof_zeros = BGZF_EOF.iter().rev().take_while(|&&b| b == 0).count() as u64;
    let eof_core = &BGZF_EOF[..BGZF_EOF.len() - eof_zeros as usize];
    let nonzero_end = trailing_zeros_start(file, len)?;
    if len - nonzero_end < eof_zeros || nonzero_end < eof_core.len() as u64 {
        return Ok(None);
    }
    let mut core = vec![0u8; eof_core.len()];
    let at = nonzero_end - core.len() as u64;
    file.read_exact_at(&mut core, at)?;
    Ok((core == eof_core).then_some(nonzero_end + eof_zeros))
}

/// Where the last end-of-file block within the last [`ZEROS_STEP`] bytes of a bgzip file ends,
/// when data other than zero padding follows it.
fn end_block_before_the_end(file: &File, len: u64) -> io::Result<Option<u64>> {
    use std::os::unix::fs::FileExt;
    let start = len.saturating_sub(ZEROS_STEP);
    let mut tail = vec![0u8; (len - start) as usize];
    file.read_exact_at(&mut tail, start)?;
    Ok(tail
        .windows(BGZF_EOF.len())
        .rposition(|w| w == BGZF_EOF)
        .map(|i| start + (i + BGZF_EOF.len()) as u64))
}

/// A bgzip file cut at a block border decodes cleanly to a shorter sequence; its missing
/// end-of-file block tells. Plain gzip (no BGZF header) has no such mark and is not checked.
fn check_bgzf_end(path: &str) -> Result<()> {
    // A pipe has no end to look at, and opening it again would take bytes from the reader.
    if super::once::read_once(path) {
        return Ok(());
    }
    let mut file = open_file(path, SEQUENCE_FILE)?;
    let mut head = [0u8; 16];
    let n = read_up_to(&mut file, &mut head).map_err(|e| Error::io(path, e))?;
    // gzip with FEXTRA, then the `BC` subfield of BGZF.
    let bgzf = n == 16 && head[3] & 0x04 != 0 && head[12] == b'B' && head[13] == b'C';
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if !bgzf || len < BGZF_EOF.len() as u64 {
        return Ok(());
    }
    if bgzf_data_end(&file, len)
        .map_err(|e| Error::io(path, e))?
        .is_some()
    {
        return Ok(());
    }
    if let Some(at) = end_block_before_the_end(&file, len).map_err(|e| Error::io(path, e))? {
        return Err(Error::input(
            path,
            format!("data after the bgzip end-of-file block (which ends at byte {at} of {len})"),
            "remove what was appended (e.g. `head -c BYTES`), or pass it decompressed on stdin: zcat FILE | genomamba ... -",
        ));
    }
    Err(Error::input(
        path,
        TRUNCATED_BGZF,
        "re-download it or re-run bgzip; if it is whole (plain gzip data appended to bgzip data), pass it decompressed on stdin: zcat FILE | genomamba ... -",
    ))
}

/// Reads until `buf` is full or the input ends; returns the number of bytes read.
fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The error for content that is neither FASTA nor FASTQ, with a hint for common formats.
fn not_fastx(path: &str, first: u8, head: &[u8]) -> Error {
    let (what, fix): (String, &str) = if head.starts_with(b"BAM\x01") {
        (
            "this is a BAM file, not FASTA or FASTQ".into(),
            "convert it first, e.g. `samtools fasta FILE > FILE.fa`",
        )
    } else if head.starts_with(b"CRAM") {
        (
            "this is a CRAM file, not FASTA or FASTQ".into(),
            "convert it first, e.g. `samtools fasta FILE > FILE.fa`",
        )
    } else if head.starts_with(b"PK\x03\x04") {
        ("zip archives are not supported".into(), "unzip it first")
    } else if head.starts_with(&[0x04, 0x22, 0x4d, 0x18]) {
        (
            "lz4 compression is not supported".into(),
            "decompress it (lz4 -d) or recompress with gzip, bgzip, bzip2, xz or zstd",
        )
    } else {
        (
            format!(
                "not FASTA or FASTQ: the first character is {}, expected '>' or '@'",
                BadByte {
                    offset: 0,
                    byte: first
                }
                .describe()
            ),
            FORMAT_FIX,
        )
    };
    Error::input(path, what, fix)
}

// ---------------------------------------------------------------------------------------------
// Records

/// The first whitespace-separated word of a header (empty for an empty header). An id that
/// is not UTF-8 text is refused, naming record `number` of `path`: outputs name records by
/// it, and with U+FFFD in place of its bytes a BED's chromosome would no longer match the
/// FASTA's record.
fn first_word(header: &[u8], number: usize, path: &str) -> Result<String> {
    let word = header
        .split(|b| b.is_ascii_whitespace())
        .find(|w| !w.is_empty())
        .unwrap_or(&[]);
    std::str::from_utf8(word).map(str::to_string).map_err(|e| {
        let at = e.valid_up_to();
        let place = if at == 0 {
            "at its start".to_string()
        } else {
            // The text before it, at most its last 40 characters.
            let before = String::from_utf8_lossy(&word[..at]);
            let skip = before.chars().count().saturating_sub(40);
            let tail: String = before.chars().skip(skip).collect();
            format!("after '{}{tail}'", if skip > 0 { "..." } else { "" })
        };
        Error::input(
            path,
            format!(
                "the id of record {number} is not UTF-8 text (byte 0x{:02x} {place})",
                word[at]
            ),
            "record ids must be UTF-8 (or ASCII) text: rename the record",
        )
    })
}

/// How a record is named in errors: its id, or `#N` when the header is empty.
fn label(id: &str, number: usize) -> String {
    if id.is_empty() {
        format!("#{number}")
    } else {
        id.to_string()
    }
}

/// The error for a byte that is not a nucleotide.
fn bad_base(path: &str, record: &str, line: u64, base: u64, bad: BadByte) -> Error {
    Error::input(
        path,
        format!("invalid character {} on line {line}", bad.describe()),
        BAD_BASE_FIX,
    )
    .in_record(record)
    .at(base)
}

fn read_fasta(
    reader: &mut Box<dyn BufRead + Send>,
    ctx: &Ctx,
    piece_len: usize,
    f: &mut dyn FnMut(Piece) -> Result<()>,
) -> Result<()> {
    let path = ctx.path.clone();
    let mut lines = Lines::new(reader, ctx);
    // The first line is a header ('>' was checked by the caller).
    let Some(first) = lines.next(None)? else {
        return Ok(());
    };
    let mut header: Option<Vec<u8>> = Some(first[1..].to_vec());
    let mut number = 0usize;
    while let Some(h) = header.take() {
        number += 1;
        // Line ends of CR alone (classic Mac OS) would make the whole file one header line
        // (a CR before a line's LF is already gone).
        if h.contains(&b'\r') {
            return Err(Error::input(
                &path,
                format!(
                    "the header on line {} holds a carriage return (CR): the file's lines seem to end in CR alone",
                    lines.line
                ),
                format!(
                    "convert its line endings, e.g. `tr '\\r' '\\n' < {} > fixed.fa`",
                    crate::error::shown(&path)
                ),
            ));
        }
        let id = first_word(&h, number, &path)?;
        let meta = std::sync::Arc::new(RecordMeta {
            chrom: id.clone(),
            id: id.clone(),
            offset: 0,
            source: path.clone(),
            number,
            minus_strand: false,
        });
        let name = label(&id, number);
        let cap = piece_len.min(1 << 20);
        let mut tokens: Vec<u8> = Vec::with_capacity(cap);
        let mut start = 0usize;
        // A sequence line is read a part at a time, so that a chromosome on one line costs
        // no more memory than one wrapped (and a piece's worth is tokenised at a time, so that
        // handing on pieces copies each base once).
        while let Some((part, line_start)) = lines.next_part(Some(&name), LINE_PART)? {
            if line_start && part.first() == Some(&b'>') {
                let mut h = part[1..].to_vec();
                while lines.mid_line {
                    match lines.next_part(None, LINE_PART)? {
                        Some((more, _)) => h.extend_from_slice(more),
                        None => break,
                    }
                }
                header = Some(h);
                break;
            }
            for seg in part.chunks(piece_len.max(1)) {
                if let Err(bad) = alphabet::tokenize_into(seg, &mut tokens) {
                    let base = (start + tokens.len()) as u64 + 1;
                    return Err(bad_base(&path, &name, lines.line, base, bad));
                }
                // Hand on full pieces, keeping at least one token back so that the record's
                // last piece is never empty (unless the record is).
                while tokens.len() > piece_len {
                    let rest = tokens.split_off(piece_len);
                    let piece = std::mem::replace(&mut tokens, rest);
                    let n = piece.len();
                    f(Piece {
                        meta: meta.clone(),
                        start,
                        tokens: piece,
                        last: false,
                    })?;
                    start += n;
                }
            }
        }
        f(Piece {
            meta,
            start,
            tokens,
            last: true,
        })?;
    }
    Ok(())
}

/// The most bytes of one FASTA sequence line read at a time.
const LINE_PART: usize = 1 << 20;

/// Reads lines from the decoded stream, counting them and stripping `\n` / `\r\n`.
struct Lines<'a> {
    reader: &'a mut Box<dyn BufRead + Send>,
    ctx: &'a Ctx,
    buf: Vec<u8>,
    /// 1-based number of the line in `buf`.
    line: u64,
    /// The last part read ([`Lines::next_part`]) did not end its line.
    mid_line: bool,
    /// The id of the last whole record read, for errors found after it (empty before the
    /// first; its buffer is reused, so records cost no allocation for it).
    previous: String,
}

impl<'a> Lines<'a> {
    fn new(reader: &'a mut Box<dyn BufRead + Send>, ctx: &'a Ctx) -> Self {
        Lines {
            reader,
            ctx,
            buf: Vec::with_capacity(1024),
            line: ctx.lines_skipped,
            mid_line: false,
            previous: String::new(),
        }
    }

    /// The next part of a line, at most `max` bytes, without its line break, and whether it
    /// begins its line; `None` at the end of the input.
    fn next_part(&mut self, record: Option<&str>, max: usize) -> Result<Option<(&[u8], bool)>> {
        self.buf.clear();
        let mut line_end = false;
        loop {
            let avail = self
                .reader
                .fill_buf()
                .map_err(|e| self.ctx.io_error(e, record))?;
            if avail.is_empty() {
                break;
            }
            let take = avail.len().min(max - self.buf.len());
            if let Some(i) = memchr::memchr(b'\n', &avail[..take]) {
                self.buf.extend_from_slice(&avail[..i]);
                self.reader.consume(i + 1);
                line_end = true;
                break;
            }
            self.buf.extend_from_slice(&avail[..take]);
            self.reader.consume(take);
            if self.buf.len() >= max {
                break;
            }
        }
        if self.buf.is_empty() && !line_end {
            self.mid_line = false;
            return Ok(None);
        }
        // A `\r` that ends a part may be the first half of a `\r\n` line break.
        if !line_end && self.buf.last() == Some(&b'\r') {
            let next = self
                .reader
                .fill_buf()
                .map_err(|e| self.ctx.io_error(e, record))?;
            match next.first() {
                Some(b'\n') => {
                    self.reader.consume(1);
                    line_end = true;
                }
                None => line_end = true,
                Some(_) => {}
            }
        }
        let starts = !self.mid_line;
        if starts {
            self.line += 1;
        }
        self.mid_line = !line_end;
        let mut part = &self.buf[..];
        if line_end {
            part = part.strip_suffix(b"\r").unwrap_or(part);
        }
        Ok(Some((part, starts)))
    }

    /// The next line without its line break, or `None` at the end of the input.
    fn next(&mut self, record: Option<&str>) -> Result<Option<&[u8]>> {
        self.buf.clear();
        let n = self.reader.read_until(b'\n', &mut self.buf).map_err(|e| {
            let previous = (!self.previous.is_empty()).then_some(self.previous.as_str());
            self.ctx.io_error_after(e, record, previous)
        })?;
        if n == 0 {
            return Ok(None);
        }
        self.line += 1;
        let mut line = &self.buf[..];
        line = line.strip_suffix(b"\n").unwrap_or(line);
        line = line.strip_suffix(b"\r").unwrap_or(line);
        Ok(Some(line))
    }
}

fn read_fastq(
    reader: &mut Box<dyn BufRead + Send>,
    ctx: &Ctx,
    f: &mut dyn FnMut(Record) -> Result<()>,
) -> Result<()> {
    let path = ctx.path.clone();
    let mut lines = Lines::new(reader, ctx);
    let fastq_err =
        |what: String, record: &str| Error::input(&path, what, FASTQ_FIX).in_record(record);
    let mut number = 0usize;
    loop {
        // Header (blank lines between records are skipped).
        let header = loop {
            match lines.next(None)? {
                None => return Ok(()),
                Some(l) if l.iter().all(|b| b.is_ascii_whitespace()) => continue,
                Some(l) => break l,
            }
        };
        number += 1;
        if header[0] != b'@' {
            let found = BadByte {
                offset: 0,
                byte: header[0],
            }
            .describe();
            return Err(fastq_err(
                format!(
                    "expected '@' at the start of FASTQ record {number}, found {found} on line {}",
                    lines.line
                ),
                &format!("#{number}"),
            ));
        }
        let id = first_word(&header[1..], number, &path)?;
        let name = label(&id, number);

        // Sequence lines up to the '+' line.
        let mut tokens = Vec::new();
        loop {
            let at = lines.line + 1;
            let Some(l) = lines.next(Some(&name))? else {
                return Err(fastq_err(
                    format!("unexpected end of input on line {at}, before the '+' line"),
                    &name,
                ));
            };
            match l.first() {
                Some(b'+') => break,
                Some(b'@') if !tokens.is_empty() => {
                    return Err(fastq_err(
                        format!(
                            "expected the '+' line, found a new header on line {at} (quality missing?)"
                        ),
                        &name,
                    ));
                }
                _ => {}
            }
            let before = tokens.len();
            if let Err(bad) = alphabet::tokenize_into(l, &mut tokens) {
                // A line of one sign that is no base, or of such a sign and the record's
                // id: a separator line written with something other than '+'.
                let separator_like = l.len() == 1 || &l[1..] == id.as_bytes();
                if bad.offset == 0 && !bad.byte.is_ascii_alphabetic() && separator_like {
                    return Err(fastq_err(
                        format!(
                            "expected the '+' line after the sequence, found a line starting with {} on line {at}",
                            bad.describe()
                        ),
                        &name,
                    ));
                }
                let base = before as u64 + bad.offset as u64 + 1;
                return Err(bad_base(&path, &name, at, base, bad));
            }
        }

        // Quality lines until they cover the sequence.
        let mut qual_len = 0usize;
        while qual_len < tokens.len() {
            let at = lines.line + 1;
            let Some(l) = lines.next(Some(&name))? else {
                return Err(fastq_err(
                    format!(
                        "unexpected end of input on line {at}, in the quality: {qual_len} quality characters for {} bases",
                        tokens.len()
                    ),
                    &name,
                ));
            };
            qual_len += l.len();
        }
        if qual_len != tokens.len() {
            return Err(fastq_err(
                format!(
                    "quality length {qual_len} differs from sequence length {}, quality ending on line {}",
                    tokens.len(),
                    lines.line
                ),
                &name,
            ));
        }

        lines.previous.clear();
        lines.previous.push_str(&id);
        f(Record {
            chrom: id.clone(),
            id,
            offset: 0,
            source: path.clone(),
            number,
            tokens,
        })?;
    }
}
