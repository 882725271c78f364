//! BED intervals (0-based, half-open): the labeled intervals `train` learns from (also read
//! from GFF3 or GTF) and the regions `--regions-bed` reads.
//!
//! Rows are tab-separated `chrom`, `start`, `end`, then any further columns (column 4 is the
//! name); blank lines and `#`, `track` and `browser` lines are skipped; the file may be
//! plain or compressed (gzip, bgzip, bzip2, xz, zstd). Errors name the file and the line.

use std::io::BufRead;

use super::fastx::{Compression, open_file};
use super::region::Region;
use crate::error::{one_line, shorten};
use crate::{Error, Result};

/// One BED row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BedRow {
    /// Column 1.
    pub chrom: String,
    /// Column 2: 0-based start.
    pub start: u64,
    /// Column 3: exclusive end.
    pub end: u64,
    /// Column 4, or `""` when the row has three columns.
    pub name: String,
    /// Column 6 (the strand: `+`, `-` or `.`), or `""` when the row has fewer columns.
    pub strand: String,
    /// 1-based line number in the file.
    pub line: u64,
}

/// Opens a text file, plain or compressed as sequence files may be (gzip and bgzip, bzip2,
/// xz, zstd), told apart by its first bytes. `wanted` ("a BED file") is what the error for a
/// directory asks for.
pub fn open_text(path: &str, wanted: &str) -> Result<Box<dyn BufRead>> {
    let file = super::once::open_once(path, || open_file(path, wanted))?;
    let mut r = std::io::BufReader::new(file);
    let head = r
        .fill_buf()
        .map_err(|e| Error::input(path, format!("cannot read: {e}"), format!("pass {wanted}")))?;
    let mut text: Box<dyn BufRead> = match Compression::detect(head) {
        Compression::Plain => Box::new(r),
        c => Box::new(std::io::BufReader::new(c.decoder(r, path)?)),
    };
    // A UTF-8 byte-order mark (some editors write one) is not part of the first line.
    let head = text
        .fill_buf()
        .map_err(|e| Error::input(path, format!("cannot read: {e}"), format!("pass {wanted}")))?;
    if head.starts_with(b"\xEF\xBB\xBF") {
        text.consume(3);
    }
    Ok(text)
}

/// What a BED file is read for: the columns it needs and the words of its errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BedUse {
    /// Labeled intervals for training: column 4 (the class name) is needed.
    Labels,
    /// Regions to read: three columns are enough.
    Regions,
}

impl BedUse {
    fn columns(self) -> usize {
        match self {
            BedUse::Labels => 4,
            BedUse::Regions => 3,
        }
    }

    fn fix(self) -> &'static str {
        match self {
            BedUse::Labels => {
                "BED rows need chrom, start, end and a name in column 4, tab-separated, 0-based half-open"
            }
            BedUse::Regions => {
                "BED rows need chrom, start and end, tab-separated, 0-based half-open"
            }
        }
    }
}

/// Reads every row of a BED file; at least one is needed.
pub fn read_bed(path: &str, usage: BedUse) -> Result<Vec<BedRow>> {
    read_rows(path, usage, None).map(|(rows, _)| rows)
}

/// How a labels file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelFormat {
    /// BED, or GFF where the content says so (`--bed`).
    Detect,
    /// GFF3 or GTF, whatever the first rows look like (`--gff`).
    Gff,
}

/// Reads labeled intervals for training: a BED file (column 4 names the class), or a GFF3 or
/// GTF file (column 3, the feature type, names it; 1-based inclusive coordinates become BED's
/// 0-based half-open ones). Under [`LabelFormat::Detect`], GFF is told by its `##gff-version`
/// line, or by a first row that reads as GFF (see [`gff_row`]); rows end at a `##FASTA` line.
/// Returns the rows and whether the file was GFF.
pub fn read_labels(path: &str, format: LabelFormat) -> Result<(Vec<BedRow>, bool)> {
    read_rows(path, BedUse::Labels, Some(format))
}

/// What GFF errors say to do.
const GFF_FIX: &str = "GFF rows need nine tab-separated columns: seqid, source, type, start, end, score, strand, phase, attributes (1-based, inclusive)";

/// Whether a first data row reads as GFF or GTF rather than BED: eight or nine columns (empty
/// ones after them allowed), numbers in the fourth and fifth, a strand in the seventh and a
/// phase in the eighth (where BED9 has a number), and a type in the third.
fn gff_row(f: &[&str]) -> bool {
    let number = |s: &str| s.trim().parse::<u64>().is_ok();
    let used = used_columns(f);
    (8..=9).contains(&used)
        && number(f[3])
        && number(f[4])
        && !number(f[2])
        && matches!(f[6].trim(), "+" | "-" | "." | "?")
        && matches!(f[7].trim(), "0" | "1" | "2" | ".")
}

/// How many columns a row has before its trailing empty (or blank) ones.
fn used_columns(columns: &[&str]) -> usize {
    columns.len()
        - columns
            .iter()
            .rev()
            .take_while(|c| c.trim().is_empty())
            .count()
}

/// One GFF feature line as a row, parsed by noodles.
fn gff_feature(path: &str, line: &str, ln: u64) -> Result<BedRow> {
    let bad = |what: String| Error::input(path, what, GFF_FIX).at(ln);
    let columns: Vec<&str> = line.split('\t').collect();
    let used = used_columns(&columns);
    if used < 8 {
        let plural = if used == 1 { "" } else { "s" };
        return Err(bad(format!(
            "{used} tab-separated column{plural}, where a GFF feature line has nine"
        )));
    }
    // Positions are 1-based: said as such, not as a failed conversion.
    for (i, name) in [(3, "start"), (4, "end")] {
        if columns.get(i).and_then(|c| c.trim().parse::<u64>().ok()) == Some(0) {
            return Err(bad(format!(
                "{name} (column {}) is 0, and GFF positions start at 1",
                i + 1
            )));
        }
    }
    // A GFF2 row of eight columns has no attributes, and some writers end rows with a tab.
    // Blanks around the used columns' values are not part of them (column 9 is kept whole).
    let mut fields: Vec<&str> = columns[..used]
        .iter()
        .enumerate()
        .map(|(i, c)| if i < 8 { c.trim() } else { c })
        .collect();
    if used == 8 {
        fields.push(".");
    }
    let line = fields.join("\t");
    let mut reader = noodles::gff::io::Reader::new(line.as_bytes());
    let mut parsed = noodles::gff::Line::default();
    reader
        .read_line(&mut parsed)
        .map_err(|e| bad(format!("cannot read the GFF line: {e}")))?;
    let record = match parsed.as_record() {
        Some(Ok(record)) => record,
        Some(Err(e)) => return Err(bad(format!("not a GFF feature line: {e}"))),
        None => return Err(bad("not a GFF feature line".into())),
    };
    let start = record
        .start()
        .map_err(|e| bad(format!("start (column 4) is not a position: {e}")))?;
    let end = record
        .end()
        .map_err(|e| bad(format!("end (column 5) is not a position: {e}")))?;
    let (start, end) = (start.get() as u64, end.get() as u64);
    if end < start {
        return Err(bad(format!("end {end} before start {start}")));
    }
    // Not used, but a value GFF does not allow is a sign of a damaged or misaligned row.
    let (strand, phase) = (fields[6], fields[7]);
    if record.strand().is_err() {
        return Err(bad(format!(
            "strand (column 7) '{}' is not +, -, . or ?",
            one_line(&shorten(strand, 20))
        )));
    }
    if let Some(Err(_)) = record.phase() {
        return Err(bad(format!(
            "phase (column 8) '{}' is not 0, 1, 2 or .",
            one_line(&shorten(phase, 20))
        )));
    }
    Ok(BedRow {
        chrom: record.reference_sequence_name().to_string(),
        start: start - 1,
        end,
        name: record.ty().to_string(),
        strand: strand.to_string(),
        line: ln,
    })
}

/// A line's text: UTF-8, or where the line may be GFF, any bytes after its eighth tab (in the
/// attributes, which are not used) as long as the columns before it are UTF-8.
fn line_text(bytes: Vec<u8>, gff_possible: bool) -> Option<String> {
    let bytes = match String::from_utf8(bytes) {
        Ok(line) => return Some(line),
        Err(e) => e.into_bytes(),
    };
    let eighth_tab = bytes
        .iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'\t')
        .nth(7)
        .map(|(i, _)| i)?;
    (gff_possible && std::str::from_utf8(&bytes[..eighth_tab]).is_ok())
        .then(|| String::from_utf8_lossy(&bytes).into_owned())
}

/// Rows of a BED file, or with `labels` given, of a labels file (BED or GFF).
fn read_rows(
    path: &str,
    usage: BedUse,
    labels: Option<LabelFormat>,
) -> Result<(Vec<BedRow>, bool)> {
    let gff_allowed = labels.is_some();
    let reader = open_text(
        path,
        if labels == Some(LabelFormat::Gff) {
            "a GFF file"
        } else {
            "a BED file"
        },
    )?;
    let fix = usage.fix();
    let mut rows = Vec::new();
    // Told at the first line that tells (a `##gff-version` line or the first data row),
    // unless the file was given as GFF.
    let mut gff: Option<bool> = (labels == Some(LabelFormat::Gff)).then_some(true);
    for (i, bytes) in reader.split(b'\n').enumerate() {
        let ln = i as u64 + 1;
        let bytes = bytes.map_err(|e| {
            // Found once the last line has been read.
            if e.to_string() == super::fastx::TRAILING_GZIP {
                return Error::input(
                    path,
                    format!("{} (after its last line)", super::fastx::TRAILING_GZIP),
                    super::fastx::TRAILING_GZIP_FIX,
                );
            }
            let fix = if e.kind() == std::io::ErrorKind::InvalidData {
                "the compressed data is damaged: re-download or re-compress the file"
            } else {
                "check that the file can be read"
            };
            Error::input(path, format!("cannot read line: {e}"), fix).at(ln)
        })?;
        // Comment lines may hold any bytes.
        if bytes.first() == Some(&b'#') && std::str::from_utf8(&bytes).is_err() {
            continue;
        }
        let Some(line) = line_text(bytes, gff_allowed && gff != Some(false)) else {
            return Err(Error::input(
                path,
                "the line is not UTF-8 text",
                "give a text file (UTF-8 or ASCII)",
            )
            .at(ln));
        };
        let line = line.trim_end_matches('\r');
        if gff_allowed && gff.is_none() && line.starts_with("##gff-version") {
            gff = Some(true);
        }
        if gff == Some(true) {
            // Embedded sequences end the features.
            if line.starts_with("##FASTA") || line.starts_with('>') {
                break;
            }
            // UCSC writes `track` and `browser` lines before GTF too.
            if line.trim().is_empty() || header_line(line) {
                continue;
            }
            rows.push(gff_feature(path, line, ln)?);
            continue;
        }
        if line.trim().is_empty() || header_line(line) {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        if gff.is_none() {
            let is_gff = gff_allowed && gff_row(&f);
            gff = Some(is_gff);
            if is_gff {
                rows.push(gff_feature(path, line, ln)?);
                continue;
            }
        }
        if f.len() < usage.columns() {
            let plural = if f.len() == 1 { "" } else { "s" };
            let needed = match usage {
                BedUse::Labels => "column 4 (the class name) is needed",
                BedUse::Regions => "chrom, start and end are needed",
            };
            let what = format!("{} column{plural}; {needed}", f.len());
            return Err(Error::input(path, what, fix).at(ln));
        }
        let start: u64 = f[1].trim().parse().map_err(|_| {
            Error::input(path, format!("start '{}' is not a number", f[1]), fix).at(ln)
        })?;
        let end: u64 = f[2].trim().parse().map_err(|_| {
            Error::input(path, format!("end '{}' is not a number", f[2]), fix).at(ln)
        })?;
        if end < start {
            return Err(Error::input(path, format!("end {end} before start {start}"), fix).at(ln));
        }
        rows.push(BedRow {
            chrom: f[0].trim().to_string(),
            start,
            end,
            name: f.get(3).map_or("", |n| n.trim()).to_string(),
            strand: f.get(5).map_or("", |n| n.trim()).to_string(),
            line: ln,
        });
    }
    if rows.is_empty() {
        let fix = match usage {
            BedUse::Labels => "give a BED file with at least one labeled interval",
            BedUse::Regions => "give a BED file with at least one interval",
        };
        let fix = if gff == Some(true) {
            "give a GFF file with at least one feature line"
        } else {
            fix
        };
        return Err(Error::input(path, "no intervals", fix));
    }
    Ok((rows, gff == Some(true)))
}

/// Whether a BED (or GTF) line is a comment or a `track`/`browser` line (the word, then a
/// space or nothing, as UCSC writes them), not a row: sequences named `trackA`, or `track`
/// followed by a tab, are a row's chromosome.
fn header_line(line: &str) -> bool {
    let word = |w: &str| {
        line.strip_prefix(w)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
    };
    line.starts_with('#') || word("track") || word("browser")
}

/// Whether rows on a chromosome of this name may be taken for header lines by BED readers
/// that skip lines starting with `#`, `track` or `browser` (bedtools, tabix).
pub fn skipped_by_bed_readers(chrom: &str) -> bool {
    chrom.starts_with('#') || chrom.starts_with("track") || chrom.starts_with("browser")
}

/// An interval of a BED file read as a region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BedRegion {
    /// Row `chrom start end` as the region `chrom:start+1-end`.
    pub region: Region,
    /// Column 4 (BED's name), or `""` when the row has three columns.
    pub name: String,
    /// Column 6 (the strand), or `""`.
    pub strand: String,
    /// 1-based line number in the file.
    pub line: u64,
}

impl BedRegion {
    /// Whether column 6 puts it on the minus strand: `-` does; `+`, `.` or no column 6 do
    /// not; any other value is an error naming `path` (its file) and the line.
    pub fn on_minus_strand(&self, path: &str) -> Result<bool> {
        match self.strand.as_str() {
            "-" => Ok(true),
            "+" | "." | "" => Ok(false),
            other => Err(Error::input(
                path,
                format!("column 6 (strand) is '{other}'"),
                "write +, - or . there (or leave out --bed-strand)",
            )
            .at(self.line)),
        }
    }
}

/// The regions a BED file lists, in its order, each with its name and line number: row
/// `chrom start end` is the region `chrom:start+1-end` (BED's 0-based, half-open interval in
/// samtools' 1-based, inclusive terms). An empty interval (`end == start`) is refused.
pub fn read_regions_bed(path: &str) -> Result<Vec<BedRegion>> {
    read_bed(path, BedUse::Regions)?
        .into_iter()
        .map(|r| {
            if r.end == r.start {
                return Err(Error::input(
                    path,
                    format!(
                        "the interval {} {} {} is empty (start = end)",
                        r.chrom, r.start, r.end
                    ),
                    "a region needs at least one base: its end must be after its start (BED is 0-based half-open)",
                )
                .at(r.line));
            }
            Ok(BedRegion {
                region: Region {
                    name: r.chrom,
                    start: r.start,
                    end: Some(r.end),
                    explicit_name: true,
                },
                name: r.name,
                strand: r.strand,
                line: r.line,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bed");
        std::fs::write(&path, text).unwrap();
        let path = path.to_str().unwrap().to_string();
        (dir, path)
    }

    #[test]
    fn compressed_bed_files_read_like_plain_ones() {
        use std::io::Write;
        let text = "# two rows\nchr1\t0\t10\tpromoter\nchr2\t5\t9\tenhancer\n";
        let (d, plain) = write(text);
        let want = read_bed(&plain, BedUse::Labels).unwrap();
        assert_eq!(want.len(), 2);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(text.as_bytes()).unwrap();
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
        bz.write_all(text.as_bytes()).unwrap();
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 6);
        xz.write_all(text.as_bytes()).unwrap();
        for (ext, bytes) in [
            ("gz", gz.finish().unwrap()),
            ("bz2", bz.finish().unwrap()),
            ("xz", xz.finish().unwrap()),
            ("zst", zstd::stream::encode_all(text.as_bytes(), 3).unwrap()),
        ] {
            let path = d.path().join(format!("x.bed.{ext}"));
            std::fs::write(&path, &bytes).unwrap();
            let got = read_bed(path.to_str().unwrap(), BedUse::Labels).unwrap();
            let key = |r: &Vec<BedRow>| -> Vec<(String, u64, u64, String, u64)> {
                r.iter()
                    .map(|b| (b.chrom.clone(), b.start, b.end, b.name.clone(), b.line))
                    .collect()
            };
            assert_eq!(key(&got), key(&want), "{ext}");
        }
    }

    #[test]
    fn regions_are_bed_intervals_in_samtools_terms_with_their_lines() {
        let (_d, path) = write(
            "track name=x\n# comment\nbrowser position chr1:1-10\ntrack\n\nchr1\t0\t10\tpromoter\t0\t+\nchrII\t99\t100\r\nodd:1\t5\t8\ntrackA\t2\t4\nbrowser2\t0\t1\ntrack\t0\t5\n",
        );
        let got = read_regions_bed(&path).unwrap();
        let shown: Vec<(String, &str, u64)> = got
            .iter()
            .map(|b| (b.region.to_string(), b.name.as_str(), b.line))
            .collect();
        let strands: Vec<&str> = got.iter().map(|b| b.strand.as_str()).collect();
        assert_eq!(strands, ["+", "", "", "", "", ""]);
        // `track` and `browser` lines are the words then a space; sequences named `trackA`,
        // `browser2` or `track` (then a tab) are rows.
        assert_eq!(
            shown,
            [
                ("chr1:1-10".to_string(), "promoter", 6),
                ("chrII:100-100".to_string(), "", 7),
                ("{odd:1}:6-8".to_string(), "", 8),
                ("trackA:3-4".to_string(), "", 9),
                ("browser2:1-1".to_string(), "", 10),
                ("track:1-5".to_string(), "", 11),
            ]
        );
        assert!(skipped_by_bed_readers("trackA") && skipped_by_bed_readers("#c"));
        assert!(!skipped_by_bed_readers("chr1") && !skipped_by_bed_readers("c#"));
        // Each reads back as the region it is.
        for b in &got {
            assert_eq!(b.region.to_string().parse::<Region>().unwrap(), b.region);
        }
    }

    #[test]
    fn bad_rows_are_refused_at_their_line() {
        for (text, line, words) in [
            (
                "chr1\t0\t10\nchr1\t5\n",
                2,
                "2 columns; chrom, start and end",
            ),
            ("chr1\t0\t10\nchr1\t5\t5\n", 2, "is empty"),
            ("chr1\t10\t5\n", 1, "end 5 before start 10"),
            ("chr1\tx\t5\n", 1, "start 'x' is not a number"),
            ("chr1\t1\t-5\n", 1, "end '-5' is not a number"),
            ("chr1 0 10\n", 1, "1 column;"),
        ] {
            let (_d, path) = write(text);
            let err = read_regions_bed(&path).unwrap_err();
            let msg = err.to_string();
            assert_eq!(err.exit_code(), 2, "{msg}");
            assert!(msg.contains(&format!("(line {line})")), "{text:?}: {msg}");
            assert!(msg.contains(words), "{text:?}: {msg}");
            assert!(msg.contains("0-based half-open"), "{msg}");
        }
        // A directory, and a missing file: input errors (exit 2) naming the path.
        let dir = tempfile::tempdir().unwrap();
        let dir_path = dir.path().to_str().unwrap();
        let err = read_regions_bed(dir_path).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
        assert!(
            err.to_string().contains("is a directory; pass a BED file"),
            "{err}"
        );
        let missing = format!("{dir_path}/none.bed");
        let err = read_regions_bed(&missing).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
        assert!(err.to_string().starts_with(&missing), "{err}");
        let (_d, path) = write("# nothing\n\n");
        let msg = read_regions_bed(&path).unwrap_err().to_string();
        assert!(msg.contains("no intervals"), "{msg}");
        // Labels need column 4.
        let (_d, path) = write("chr1\t0\t10\n");
        let msg = read_bed(&path, BedUse::Labels).unwrap_err().to_string();
        assert!(msg.contains("column 4 (the class name) is needed"), "{msg}");
    }
}
