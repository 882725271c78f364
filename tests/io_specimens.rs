//! Sequence input against the real files in `../shared/data`: record counts, awkward
//! specimens, every compression, truncated and corrupt streams, indexed region reads checked
//! against `samtools faidx`, and the one-line errors for bad input.
//!
//! The region tests need `samtools` on the PATH (`apt-get install samtools`); without it they
//! fail with a message saying so.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use genomamba::Error;
use genomamba::alphabet::{self, A, C, G, N, T};
use genomamba::io::bed::LabelFormat;
use genomamba::io::fastx::{self, Record};
use genomamba::io::region::{self, Region};

// ---------------------------------------------------------------------------------------------
// Helpers

/// A path under `../shared/data` (read-only).
fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(rel)
}

fn s(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// All records of a file.
fn read_all(path: &str) -> Result<Vec<Record>, Error> {
    let mut out = Vec::new();
    fastx::for_each_record(path, &mut |r| {
        out.push(r);
        Ok(())
    })?;
    Ok(out)
}

/// Count, total bases, longest and shortest record, without keeping the records.
#[derive(Debug, PartialEq, Eq)]
struct Summary {
    records: usize,
    bases: u64,
    longest: u64,
    shortest: u64,
}

fn summarize(path: &str) -> Result<Summary, Error> {
    let mut sum = Summary {
        records: 0,
        bases: 0,
        longest: 0,
        shortest: u64::MAX,
    };
    fastx::for_each_record(path, &mut |r| {
        sum.records += 1;
        assert_eq!(
            r.number, sum.records,
            "record numbers are 1-based and in order"
        );
        assert_eq!(r.source, path);
        assert_eq!(r.offset, 0);
        assert_eq!(r.chrom, r.id);
        assert!(
            r.tokens.iter().all(|&t| (A..=N).contains(&t)),
            "{}: record {} holds a token outside A..N",
            path,
            r.id
        );
        let n = r.tokens.len() as u64;
        sum.bases += n;
        sum.longest = sum.longest.max(n);
        sum.shortest = sum.shortest.min(n);
        Ok(())
    })?;
    Ok(sum)
}

fn expect_err(result: Result<impl std::fmt::Debug, Error>) -> (Error, String) {
    let err = result.expect_err("expected an error");
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "errors are one line: {msg}");
    (err, msg)
}

/// Asserts an input error: exit code 2, one line, naming the file and containing `parts`.
fn assert_input_error(
    result: Result<impl std::fmt::Debug, Error>,
    path: &str,
    parts: &[&str],
) -> Error {
    let (err, msg) = expect_err(result);
    assert_eq!(err.exit_code(), 2, "{msg}");
    assert!(
        msg.starts_with(path),
        "message should start with the file {path}: {msg}"
    );
    for part in parts {
        assert!(msg.contains(part), "message should contain {part:?}: {msg}");
    }
    err
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, bytes).expect("write temp file");
    path
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn bgzip(bytes: &[u8]) -> Vec<u8> {
    let mut w = noodles::bgzf::io::Writer::new(Vec::new());
    w.write_all(bytes).unwrap();
    w.finish().unwrap()
}

fn bzip2(bytes: &[u8]) -> Vec<u8> {
    let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn xz(bytes: &[u8]) -> Vec<u8> {
    let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 6);
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(bytes, 3).unwrap()
}

/// Runs `samtools faidx FILE REGION` and tokenises its output. Fails when samtools is missing.
fn samtools_tokens(path: &str, region: &str) -> Vec<u8> {
    samtools_strand_tokens(path, region, false)
}

/// As [`samtools_tokens`], with `minus` the region's reverse complement (`samtools faidx -i`).
fn samtools_strand_tokens(path: &str, region: &str, minus: bool) -> Vec<u8> {
    let mut args = vec!["faidx", path, region];
    if minus {
        args.push("-i");
    }
    let out = Command::new("samtools")
        .args(&args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "samtools is needed for the region tests but could not be run ({e}); install it, e.g. `apt-get install -y samtools`"
            )
        });
    assert!(
        out.status.success(),
        "samtools faidx {path} {region} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = out.stdout;
    let mut lines = text.split(|&b| b == b'\n');
    let header = lines.next().unwrap_or_default();
    assert!(
        header.starts_with(b">"),
        "samtools output starts with a header"
    );
    let mut tokens = Vec::new();
    for line in lines {
        alphabet::tokenize_into(line, &mut tokens).expect("samtools output is DNA");
    }
    tokens
}

/// Indexes `path` with `samtools faidx` (its warnings, e.g. for a repeated name, hidden).
fn faidx(path: &str) {
    let status = Command::new("samtools")
        .args(["faidx", path])
        .stderr(Stdio::null())
        .status()
        .expect("samtools is needed for the region tests (apt-get install -y samtools)");
    assert!(status.success(), "samtools faidx {path}");
}

fn require_samtools() {
    let ok = Command::new("samtools")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "samtools is not installed: the region tests compare against `samtools faidx`; install it (apt-get install -y samtools)"
    );
}

/// Reads `region` from `path` with our reader and with samtools, and compares.
fn check_region(path: &str, text: &str) -> Record {
    let reg: Region = text.parse().unwrap();
    let rec = region::read_region(path, &reg).unwrap_or_else(|e| panic!("{text}: {e}"));
    let expected = samtools_tokens(path, text);
    assert_eq!(rec.tokens.len(), expected.len(), "{path} {text}: length");
    assert!(
        rec.tokens == expected,
        "{path} {text}: tokens differ from samtools faidx"
    );
    assert_eq!(rec.chrom, reg.name);
    assert_eq!(rec.offset, reg.start);
    assert_eq!(rec.id, reg.display_1based());
    assert_eq!(rec.source, path);
    rec
}

// ---------------------------------------------------------------------------------------------
// Every file of ../shared/data

/// What each file of the data folder must give: record count and total bases, or a rejection.
enum Expect {
    Records {
        records: usize,
        bases: u64,
    },
    /// Too big to read whole in every test run: only the index is checked here (the whole
    /// chr2R read has its own test; chr20 is read by region).
    Indexed {
        records: usize,
        bases: u64,
    },
    Rejected(&'static str),
}

fn expectations() -> Vec<(&'static str, Expect)> {
    use Expect::*;
    const NOT_FASTX: Expect = Rejected("not FASTA or FASTQ");
    vec![
        ("README.md", NOT_FASTX),
        (
            "genomes/dm3_chr2R.fa.gz",
            Indexed {
                records: 1,
                bases: 21_146_708,
            },
        ),
        ("genomes/dm3_chr2R.fa.gz.fai", NOT_FASTX),
        ("genomes/dm3_chr2R.fa.gz.gzi", NOT_FASTX),
        ("genomes/dm3_chr2R.refseq_exon.bed", NOT_FASTX),
        ("genomes/dm3_chr2R.refseq_gene.bed", NOT_FASTX),
        ("genomes/dm3_chr2R.refseq_tss.bed", NOT_FASTX),
        (
            "genomes/ecoli_k12.fa.gz",
            Records {
                records: 1,
                bases: 4_639_675,
            },
        ),
        ("genomes/ecoli_k12.fa.gz.fai", NOT_FASTX),
        ("genomes/ecoli_k12.fa.gz.gzi", NOT_FASTX),
        ("genomes/ecoli_k12.features.bed", NOT_FASTX),
        ("genomes/hg19_chr20.cpg_islands.bed", NOT_FASTX),
        (
            "genomes/hg19_chr20.fa.gz",
            Indexed {
                records: 1,
                bases: 63_025_520,
            },
        ),
        ("genomes/hg19_chr20.fa.gz.fai", NOT_FASTX),
        ("genomes/hg19_chr20.fa.gz.gzi", NOT_FASTX),
        ("genomes/hg19_chr20.refseq_exon.bed", NOT_FASTX),
        (
            "genomes/yeast_chrI_II.fa",
            Records {
                records: 2,
                bases: 230_208 + 813_178,
            },
        ),
        ("genomes/yeast_chrI_II.fa.fai", NOT_FASTX),
        ("genomes/yeast_chrI_II.genes.bed", NOT_FASTX),
        ("genomes/yeast_chrI_II.sgd.gff3", NOT_FASTX),
        (
            "labeled/oct4_vs_mafk/mafk_peaks.fa",
            Records {
                records: 3_900,
                bases: 3_900 * 200,
            },
        ),
        (
            "labeled/oct4_vs_mafk/oct4_peaks.fa",
            Records {
                records: 3_897,
                bases: 3_897 * 200,
            },
        ),
        (
            "labeled/rrna16s_taxonomy/dada2_ten_16s.fa.gz",
            Records {
                records: 3_994,
                bases: 5_870_306,
            },
        ),
        (
            "reads/illumina_150bp.fq.gz",
            Records {
                records: 10_000,
                bases: 1_500_000,
            },
        ),
        (
            "reads/illumina_pairs_1.fq.gz",
            Records {
                records: 2_500,
                bases: 567_516,
            },
        ),
        (
            "reads/illumina_pairs_2.fq.gz",
            Records {
                records: 2_500,
                bases: 560_002,
            },
        ),
        (
            "reads/nanopore_reads.fq.gz",
            Records {
                records: 371,
                bases: 8_611_871,
            },
        ),
        (
            "specimens/crlf_line_endings.fasta",
            Records {
                records: 20,
                bases: 69_469,
            },
        ),
        (
            "specimens/htslib_faidx_edge_cases.fa",
            Records {
                records: 6,
                bases: 130,
            },
        ),
        (
            "specimens/htslib_longline.fq",
            Records {
                records: 1,
                bases: 4,
            },
        ),
        (
            "specimens/htslib_minimal.fq",
            Records {
                records: 1,
                bases: 1,
            },
        ),
        (
            "specimens/htslib_multiline.fq",
            Records {
                records: 2,
                bases: 78,
            },
        ),
        (
            "specimens/zero_length_records.fa",
            Records {
                records: 20,
                bases: 0,
            },
        ),
    ]
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn every_data_file_parses_with_its_record_count_or_is_rejected_clearly() {
    let root = data("");
    let table = expectations();
    let mut files = Vec::new();
    files_under(&root, &mut files);
    files.sort();
    for file in &files {
        let rel = file
            .strip_prefix(&root)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            table.iter().any(|(name, _)| *name == rel),
            "{rel} is new in shared/data: add it to expectations() in tests/io_specimens.rs"
        );
    }
    for (rel, expect) in table {
        let path = data(rel);
        let path = s(&path);
        match expect {
            Expect::Records { records, bases } => {
                let sum = summarize(path).unwrap_or_else(|e| panic!("{rel}: {e}"));
                assert_eq!((sum.records, sum.bases), (records, bases), "{rel}");
            }
            Expect::Indexed { records, bases } => {
                let fai = fs::read_to_string(format!("{path}.fai")).unwrap();
                let lengths: Vec<u64> = fai
                    .lines()
                    .map(|l| l.split('\t').nth(1).unwrap().parse().unwrap())
                    .collect();
                assert_eq!(
                    (lengths.len(), lengths.iter().sum::<u64>()),
                    (records, bases),
                    "{rel}"
                );
            }
            Expect::Rejected(why) => {
                assert_input_error(summarize(path), path, &[why, "expected '>' or '@'"]);
            }
        }
    }
}

#[test]
fn small_genomes_read_whole() {
    let recs = read_all(s(&data("genomes/yeast_chrI_II.fa"))).unwrap();
    let names: Vec<_> = recs
        .iter()
        .map(|r| (r.id.as_str(), r.tokens.len()))
        .collect();
    assert_eq!(names, [("chrI", 230_208), ("chrII", 813_178)]);

    let recs = read_all(s(&data("genomes/ecoli_k12.fa.gz"))).unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].id, "NC_000913");
    assert_eq!(recs[0].tokens.len(), 4_639_675);
    // The genome starts AGCTTTTCATTCTGACTGCAACGGGCAATATGTC (NC_000913.2).
    assert_eq!(&recs[0].tokens[..8], &[A, G, C, T, T, T, T, C]);
}

#[test]
fn dm3_chr2r_reads_whole_with_soft_masking_and_n_run() {
    let start = Instant::now();
    let recs = read_all(s(&data("genomes/dm3_chr2R.fa.gz"))).unwrap();
    let elapsed = start.elapsed();
    eprintln!("dm3 chr2R (21.1 Mb, bgzip) read in {elapsed:.2?}");
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].id, "chr2R");
    assert_eq!(recs[0].tokens.len(), 21_146_708);
    // Soft-masked (lowercase) bases are tokens like any other; the one N run is 100 long.
    assert_eq!(recs[0].tokens.iter().filter(|&&t| t == N).count(), 100);
}

#[test]
fn labeled_sets_keep_headers_as_ids() {
    let recs = read_all(s(&data("labeled/oct4_vs_mafk/oct4_peaks.fa"))).unwrap();
    assert_eq!(recs.len(), 3_897);
    assert_eq!(recs[0].id, "chr1:15710957-15711157");
    assert!(recs.iter().all(|r| r.tokens.len() == 200));

    let recs = read_all(s(&data("labeled/rrna16s_taxonomy/dada2_ten_16s.fa.gz"))).unwrap();
    assert_eq!(recs.len(), 3_994);
    // The header's first word is the id (the lineage follows without a space here).
    assert!(
        recs[0].id.starts_with("gi_961555154;tax=d:Bacteria"),
        "{}",
        recs[0].id
    );
}

#[test]
fn reads_keep_ids_and_lengths() {
    let one = read_all(s(&data("reads/illumina_pairs_1.fq.gz"))).unwrap();
    let two = read_all(s(&data("reads/illumina_pairs_2.fq.gz"))).unwrap();
    assert_eq!(one.len(), 2_500);
    assert_eq!(two.len(), 2_500);
    // First word of the header: mates share it (the " 1:N:0:..." comment is dropped).
    assert_eq!(one[0].id, "HWI-D00523:240:HF3WGBCXX:1:1101:2574:2226");
    assert!(one.iter().zip(&two).all(|(a, b)| a.id == b.id));

    let sum = summarize(s(&data("reads/nanopore_reads.fq.gz"))).unwrap();
    assert_eq!(
        sum,
        Summary {
            records: 371,
            bases: 8_611_871,
            longest: 393_431,
            shortest: 212
        }
    );
    let sum = summarize(s(&data("reads/illumina_150bp.fq.gz"))).unwrap();
    assert_eq!((sum.records, sum.longest, sum.shortest), (10_000, 150, 150));
}

// ---------------------------------------------------------------------------------------------
// Specimens

#[test]
fn crlf_fasta_parses_without_carriage_returns() {
    let recs = read_all(s(&data("specimens/crlf_line_endings.fasta"))).unwrap();
    assert_eq!(recs.len(), 20);
    assert_eq!(recs[0].id, "gi|563317589|dbj|AB821309.1|");
    // Lengths as `samtools faidx` indexes them.
    assert_eq!(recs[0].tokens.len(), 3_510);
    assert_eq!(recs[1].tokens.len(), 481);
    assert_eq!(recs[2].tokens.len(), 642);
    assert_eq!(&recs[0].tokens[..6], &[A, T, G, G, T, C]);
    for r in &recs {
        assert!(r.tokens.iter().all(|&t| (A..=N).contains(&t)), "{}", r.id);
    }
}

#[test]
fn htslib_faidx_edge_cases_match_samtools_names_and_lengths() {
    let recs = read_all(s(&data("specimens/htslib_faidx_edge_cases.fa"))).unwrap();
    let got: Vec<_> = recs
        .iter()
        .map(|r| (r.id.as_str(), r.tokens.len()))
        .collect();
    // `samtools faidx` on this file: "" 4, trailingblank1 33, trailingblank2 72,
    // trailingblank3 5, foo 8, bar 8 (">  foo": leading blanks are not part of the name).
    assert_eq!(
        got,
        [
            ("", 4),
            ("trailingblank1", 33),
            ("trailingblank2", 72),
            ("trailingblank3", 5),
            ("foo", 8),
            ("bar", 8)
        ]
    );
    assert_eq!(recs[0].tokens, [A, T, G, C]);
    assert_eq!(recs[3].tokens, [A, C, G, T, A]);
}

#[test]
fn zero_length_records_are_yielded_empty() {
    let recs = read_all(s(&data("specimens/zero_length_records.fa"))).unwrap();
    assert_eq!(recs.len(), 20);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.id, format!("seq{}", i + 1));
        assert_eq!(r.number, i + 1);
        assert!(r.tokens.is_empty());
    }
}

#[test]
fn multiline_fastq_and_quality_lines_starting_with_at() {
    let recs = read_all(s(&data("specimens/htslib_multiline.fq"))).unwrap();
    assert_eq!(recs.len(), 2);
    let expected = |first: u8, last: u8| {
        let mut v = vec![first];
        v.extend([A; 9]);
        v.extend([C; 10]);
        v.extend([G; 10]);
        v.extend([T; 8]);
        v.push(last);
        v
    };
    assert_eq!(recs[0].id, "seq1");
    assert_eq!(recs[0].tokens, expected(N, N));
    assert_eq!(recs[1].id, "seq2");
    assert_eq!(recs[1].tokens, expected(N, N)); // R and Y are IUPAC codes -> N
}

#[test]
fn long_and_minimal_fastq() {
    let recs = read_all(s(&data("specimens/htslib_longline.fq"))).unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].id, "readname"); // the tab-separated tag is not part of the id
    assert_eq!(recs[0].tokens, [A, T, G, C]);

    // "@x / A / + / +": the quality of the single base is '+'.
    let recs = read_all(s(&data("specimens/htslib_minimal.fq"))).unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].id, "x");
    assert_eq!(recs[0].tokens, [A]);
}

#[test]
fn small_fasta_oddities() {
    let dir = tempdir();
    // Final header without a line break, a BOM and leading blank lines, blank lines inside,
    // lowercase, U and IUPAC codes.
    let path = write_file(
        dir.path(),
        "odd.fa",
        b"\xef\xbb\xbf\n\n>a desc\nacgU\n\nRYN\n>b\r\nAC\r\n>c",
    );
    let recs = read_all(s(&path)).unwrap();
    let got: Vec<_> = recs
        .iter()
        .map(|r| (r.id.as_str(), r.tokens.clone()))
        .collect();
    assert_eq!(
        got,
        [
            ("a", vec![A, C, G, T, N, N, N]),
            ("b", vec![A, C]),
            ("c", vec![])
        ]
    );
    // Line numbers in errors count the skipped blank lines.
    let path = write_file(dir.path(), "odd2.fa", b"\n\n>a\nAC\nA*\n");
    assert_input_error(
        read_all(s(&path)),
        s(&path),
        &["'*'", "line 5", "record a", "position 4"],
    );

    // Multi-line FASTQ with CRLF and a zero-length record.
    let path = write_file(
        dir.path(),
        "odd.fq",
        b"@r1 x\r\nAC\r\nGT\r\n+r1\r\nII\r\nII\r\n@r2\r\n\r\n+\r\n\r\n@r3\nN\n+\n@\n",
    );
    let recs = read_all(s(&path)).unwrap();
    let got: Vec<_> = recs
        .iter()
        .map(|r| (r.id.as_str(), r.tokens.clone(), r.number))
        .collect();
    assert_eq!(
        got,
        [
            ("r1", vec![A, C, G, T], 1),
            ("r2", vec![], 2),
            ("r3", vec![N], 3)
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Compression

#[test]
fn every_compression_gives_the_same_records() {
    let dir = tempdir();
    for specimen in [
        "specimens/crlf_line_endings.fasta",
        "specimens/htslib_multiline.fq",
    ] {
        let plain_path = data(specimen);
        let plain = fs::read(&plain_path).unwrap();
        let expected = read_all(s(&plain_path)).unwrap();
        let name = Path::new(specimen).file_name().unwrap().to_str().unwrap();
        let mut two_members = gzip(&plain[..plain.len() / 2]);
        two_members.extend(gzip(&plain[plain.len() / 2..]));
        // Zero padding after the last member (as tape and block tools leave it) is skipped,
        // as `gzip -d` skips it.
        let padded = |mut bytes: Vec<u8>| {
            // More than the 64 KiB read back at a time to find a bgzip file's end block.
            bytes.extend(vec![0u8; 70_000]);
            bytes
        };
        let variants: [(&str, Vec<u8>); 8] = [
            ("gz", gzip(&plain)),
            ("bgz", bgzip(&plain)),
            ("two_members.gz", two_members),
            ("padded.gz", padded(gzip(&plain))),
            ("padded.bgz", padded(bgzip(&plain))),
            ("bz2", bzip2(&plain)),
            ("xz", xz(&plain)),
            ("zst", zstd(&plain)),
        ];
        for (ext, bytes) in variants {
            // Names say nothing: detection is by content.
            let path = write_file(dir.path(), &format!("{name}.{ext}.bin"), &bytes);
            let got = read_all(s(&path)).unwrap_or_else(|e| panic!("{ext}: {e}"));
            assert_eq!(got.len(), expected.len(), "{specimen} {ext}");
            for (g, e) in got.iter().zip(&expected) {
                assert_eq!(
                    (&g.id, &g.tokens, g.number),
                    (&e.id, &e.tokens, e.number),
                    "{ext}"
                );
                assert_eq!(g.source, s(&path));
            }
        }
    }
}

const STDIN_CHILD: &str = "GENOMAMBA_IO_SPECIMENS_STDIN_CHILD";

#[test]
fn stdin_dash_reads_compressed_input() {
    if std::env::var_os(STDIN_CHILD).is_some() {
        // Child process: stdin is the file.
        let sum = summarize("-").unwrap();
        println!("SUMMARY {} {}", sum.records, sum.bases);
        return;
    }
    let file = fs::File::open(data("reads/illumina_pairs_1.fq.gz")).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "stdin_dash_reads_compressed_input",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(STDIN_CHILD, "1")
        .stdin(file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("SUMMARY 2500 567516"), "{stdout}");
}

// ---------------------------------------------------------------------------------------------
// Truncated and corrupt compressed data

#[test]
fn truncated_gzip_of_a_real_file_is_an_error_not_an_early_end() {
    let dir = tempdir();
    // Reads `path` record by record: the result, and how many records came before it.
    let count = |path: &Path| {
        let mut seen = 0;
        let result = fastx::for_each_record(s(path), &mut |_| {
            seen += 1;
            Ok(())
        });
        (result, seen)
    };
    for rel in [
        "reads/illumina_150bp.fq.gz",
        "labeled/rrna16s_taxonomy/dada2_ten_16s.fa.gz",
    ] {
        let bytes = fs::read(data(rel)).unwrap();
        for cut in [bytes.len() / 2, bytes.len() - 4] {
            let path = write_file(dir.path(), "cut.gz", &bytes[..cut]);
            let (result, seen) = count(&path);
            assert_input_error(
                result,
                s(&path),
                &[
                    "truncated or corrupt gzip data",
                    "re-download or re-compress",
                ],
            );
            assert!(seen > 0, "records before the cut are delivered first");
        }
    }
    // A bgzip chromosome cut inside a block, or at a block border (where the blocks before
    // it decode cleanly to a shorter sequence): its missing end-of-file block tells, before
    // any record is read.
    let bytes = fs::read(data("genomes/ecoli_k12.fa.gz")).unwrap();
    let gzi = fs::read(data("genomes/ecoli_k12.fa.gz.gzi")).unwrap();
    let entry = |i: usize| -> usize {
        let at = 8 + 16 * i;
        u64::from_le_bytes(gzi[at..at + 8].try_into().unwrap()) as usize
    };
    let border = entry(35);
    assert!(border > 100_000 && border < bytes.len() - 28, "{border}");
    for cut in [100_000, border, bytes.len() - 28] {
        let path = write_file(dir.path(), "ecoli_cut.fa.gz", &bytes[..cut]);
        let (result, seen) = count(&path);
        assert_input_error(
            result,
            s(&path),
            &["truncated bgzip file", "end-of-file block is missing"],
        );
        assert_eq!(seen, 0, "cut at {cut}");
    }
    // Whole, it reads.
    assert_eq!(
        read_all(s(&data("genomes/ecoli_k12.fa.gz"))).unwrap().len(),
        1
    );
}

#[test]
fn data_after_the_last_gzip_member_is_an_error() {
    let dir = tempdir();
    let plain = fs::read(data("labeled/oct4_vs_mafk/mafk_peaks.fa")).unwrap();
    let text = String::from_utf8_lossy(&plain);
    let last = text.lines().rfind(|l| l.starts_with('>')).unwrap()[1..]
        .split_whitespace()
        .next()
        .unwrap();
    // Plain gzip is decoded up to the appended data, found once the last record is read:
    // said as after it (not as truncation in it).
    let after_last =
        format!("data after the end of the last gzip member, after its last record {last};");
    for tail in [b"more text\n".to_vec(), [&[0u8; 100][..], b"x"].concat()] {
        // A bgzip file's end block is found before the end.
        for (bytes, expected) in [
            (gzip(&plain), after_last.as_str()),
            (bgzip(&plain), "data after the bgzip end-of-file block"),
        ] {
            let path = write_file(dir.path(), "appended.gz", &[bytes, tail.clone()].concat());
            let msg = assert_input_error(read_all(s(&path)), s(&path), &[expected]).to_string();
            assert!(
                !msg.contains("truncated") && !msg.contains("(record"),
                "{msg}"
            );
        }
    }
    // FASTQ names its last record too; a BED file, what it read.
    let fastq = b"@r1\nACGT\n+\nIIII\n@r2\nGGCC\n+\nIIII\n";
    let path = write_file(
        dir.path(),
        "reads.fq.gz",
        &[gzip(fastq), b"junk".to_vec()].concat(),
    );
    assert_input_error(
        read_all(s(&path)),
        s(&path),
        &["data after the end of the last gzip member, after its last record r2;"],
    );
    let bed = [gzip(b"chr1\t10\t20\nchr1\t30\t40"), b"junk".to_vec()].concat();
    let path = write_file(dir.path(), "regions.bed.gz", &bed);
    assert_input_error(
        genomamba::io::bed::read_bed(s(&path), genomamba::io::bed::BedUse::Regions),
        s(&path),
        &["data after the end of the last gzip member (after its last line);"],
    );
}

#[test]
fn truncated_and_corrupt_streams_of_every_compression_are_errors() {
    let dir = tempdir();
    let plain = fs::read(data("labeled/oct4_vs_mafk/mafk_peaks.fa")).unwrap();
    let cases: [(&str, Vec<u8>); 4] = [
        ("gzip", gzip(&plain)),
        ("bzip2", bzip2(&plain)),
        ("xz", xz(&plain)),
        ("zstd", zstd(&plain)),
    ];
    for (name, bytes) in cases {
        for cut in [bytes.len() / 2, bytes.len() - 4] {
            let path = write_file(dir.path(), &format!("cut.{name}"), &bytes[..cut]);
            assert_input_error(
                read_all(s(&path)),
                s(&path),
                &[
                    &format!("truncated or corrupt {name} data"),
                    "re-download or re-compress",
                ],
            );
        }
        // Damage in the middle of the stream.
        let mut bad = bytes.clone();
        let mid = bad.len() / 2;
        for b in &mut bad[mid..mid + 16] {
            *b ^= 0x5a;
        }
        let path = write_file(dir.path(), &format!("corrupt.{name}"), &bad);
        assert_input_error(
            read_all(s(&path)),
            s(&path),
            &[&format!("truncated or corrupt {name} data")],
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Bad input

#[test]
fn stray_character_names_file_record_position_and_fix() {
    let dir = tempdir();
    let path = write_file(
        dir.path(),
        "stray.fa",
        b">r1\nACGT\n>r2 second\nACGTAC\nGG#T\n>r3\nAC\n",
    );
    let mut ids = Vec::new();
    let err = assert_input_error(
        fastx::for_each_record(s(&path), &mut |r| {
            ids.push(r.id);
            Ok(())
        }),
        s(&path),
        &[
            "invalid character '#'",
            "line 5",
            "record r2",
            "position 9",
            "remove or replace it; allowed: ACGTUN, IUPAC codes, lowercase",
        ],
    );
    assert_eq!(ids, ["r1"], "stops at the first error");
    assert!(
        matches!(
            err,
            Error::Input {
                position: Some(9),
                ..
            }
        ),
        "{err:?}"
    );

    // Same in FASTQ, and a control byte is shown in hex.
    let path = write_file(
        dir.path(),
        "stray.fq",
        b"@q1\nACGT\n+\nIIII\n@q2\nAC\x07T\n+\nIIII\n",
    );
    assert_input_error(
        read_all(s(&path)),
        s(&path),
        &["byte 0x07", "line 6", "record q2", "position 3"],
    );

    // A record without a name is named by its number.
    let path = write_file(dir.path(), "noname.fa", b">\nAC GT\n");
    assert_input_error(
        read_all(s(&path)),
        s(&path),
        &["byte 0x20", "record #1", "position 3"],
    );
}

#[test]
fn fastq_structure_errors() {
    let dir = tempdir();
    let cases: [(&str, &[u8], &[&str]); 9] = [
        // A separator other than '+' is said to be one, not an invalid base; a gap sign
        // inside a sequence line is still an invalid base.
        (
            "dash_separator.fq",
            b"@r1\nACGT\n-\nIIII\n",
            &[
                "expected the '+' line after the sequence, found a line starting with '-' on line 3",
                "record r1",
            ],
        ),
        (
            "gap_in_sequence.fq",
            b"@r1\nAC-GT\n+\nIIIII\n",
            &["invalid character '-' on line 2", "position 3"],
        ),
        // The separator with the id after it; a continuation line opening with a gap sign
        // is a sequence line.
        (
            "dash_id_separator.fq",
            b"@r1\nACGT\n-r1\nIIII\n",
            &["expected the '+' line after the sequence, found a line starting with '-' on line 3"],
        ),
        (
            "gap_line_start.fq",
            b"@r1\nACGT\n-CGTA\n+\nIIIIIIIII\n",
            &["invalid character '-' on line 3", "position 5"],
        ),
        (
            "longer_quality.fq",
            b"@r1\nACGT\n+\nIIIII\n",
            &[
                "quality length 5 differs from sequence length 4",
                "record r1",
            ],
        ),
        (
            "short_quality_at_end.fq",
            b"@r1\nACGT\n+\nIIII\n@r2\nACGT\n+\nIII\n",
            &[
                "unexpected end of input",
                "3 quality characters for 4 bases",
                "record r2",
            ],
        ),
        (
            "no_plus.fq",
            b"@r1\nACGT\n",
            &["before the '+' line", "record r1"],
        ),
        (
            "missing_quality.fq",
            b"@r1\nACGT\n@r2\nACGT\n+\nIIII\n",
            &["found a new header", "line 3"],
        ),
        (
            "bad_start.fq",
            b"@r1\nACGT\n+\nIIII\nr2\nACGT\n+\nIIII\n",
            &[
                "expected '@' at the start of FASTQ record 2",
                "found 'r'",
                "line 5",
            ],
        ),
    ];
    for (name, bytes, parts) in cases {
        let path = write_file(dir.path(), name, bytes);
        assert_input_error(read_all(s(&path)), s(&path), parts);
    }
}

#[test]
fn empty_missing_and_unknown_inputs() {
    let dir = tempdir();
    let empty = write_file(dir.path(), "empty.fa", b"");
    assert_input_error(
        read_all(s(&empty)),
        s(&empty),
        &["empty input", "no FASTA/FASTQ records"],
    );
    let blank = write_file(dir.path(), "blank.fa", b"\n\r\n \n");
    assert_input_error(read_all(s(&blank)), s(&blank), &["empty input"]);
    let empty_gz = write_file(dir.path(), "empty.fa.gz", &gzip(b""));
    assert_input_error(
        read_all(s(&empty_gz)),
        s(&empty_gz),
        &["empty input", "gzip"],
    );

    let missing = dir.path().join("missing.fa");
    assert_input_error(
        read_all(s(&missing)),
        s(&missing),
        &["cannot open", "check the path"],
    );
    assert_input_error(read_all(s(dir.path())), s(dir.path()), &["is a directory"]);

    let bed = data("genomes/yeast_chrI_II.genes.bed");
    assert_input_error(
        read_all(s(&bed)),
        s(&bed),
        &[
            "not FASTA or FASTQ",
            "first character is 'c'",
            "pass a FASTA",
        ],
    );
    // The same, compressed: the check is on the decompressed content.
    let bed_gz = write_file(dir.path(), "genes.bed.gz", &gzip(&fs::read(&bed).unwrap()));
    assert_input_error(read_all(s(&bed_gz)), s(&bed_gz), &["not FASTA or FASTQ"]);
    let zip = write_file(dir.path(), "x.zip", b"PK\x03\x04rest");
    assert_input_error(read_all(s(&zip)), s(&zip), &["zip"]);
}

#[test]
fn callback_errors_stop_the_stream() {
    let path = data("labeled/oct4_vs_mafk/oct4_peaks.fa");
    let mut seen = 0;
    let err = fastx::for_each_record(s(&path), &mut |r| {
        seen += 1;
        if r.number == 3 {
            return Err(Error::usage("stop here", "nothing"));
        }
        Ok(())
    })
    .unwrap_err();
    assert_eq!(seen, 3);
    assert!(matches!(err, Error::Usage { .. }), "{err:?}");
}

#[test]
#[ignore = "writes and reads a 250 Mb record (about 1 GB of memory); run with --ignored"]
fn a_250_mb_record_streams() {
    let dir = tempdir();
    let path = dir.path().join("big.fa");
    let mut w = std::io::BufWriter::new(fs::File::create(&path).unwrap());
    w.write_all(b">big\n").unwrap();
    let line = [b"ACGTACGTAC".as_slice(); 6].concat();
    let lines = 250_000_000 / 60;
    for _ in 0..lines {
        w.write_all(&line).unwrap();
        w.write_all(b"\n").unwrap();
    }
    drop(w);
    let start = Instant::now();
    let recs = read_all(s(&path)).unwrap();
    eprintln!("250 Mb record read in {:.2?}", start.elapsed());
    assert_eq!(recs[0].tokens.len(), lines * 60);
}

// ---------------------------------------------------------------------------------------------
// Regions

#[test]
fn regions_on_a_bgzip_file_with_zero_padding_read_as_without_it() {
    // Padding after the end block (short of a block header, or longer than the 64 KiB read
    // back at a time) is not read as a block, with the index of the file without it.
    let dir = tempdir();
    let bytes = fs::read(data("genomes/ecoli_k12.fa.gz")).unwrap();
    let whole = data("genomes/ecoli_k12.fa.gz");
    let regions = [
        "NC_000913:1-100",
        "NC_000913:4639600-4639675",
        "NC_000913:4639000",
    ];
    for pad in [17usize, 18, 1_000, 70_000] {
        let path = write_file(
            dir.path(),
            "padded.fa.gz",
            &[bytes.clone(), vec![0; pad]].concat(),
        );
        for ext in ["fai", "gzi"] {
            fs::copy(
                data(&format!("genomes/ecoli_k12.fa.gz.{ext}")),
                format!("{}.{ext}", s(&path)),
            )
            .unwrap();
        }
        for text in regions {
            let region: Region = text.parse().unwrap();
            let want = region::read_region(s(&whole), &region).unwrap();
            let got = region::read_region(s(&path), &region)
                .unwrap_or_else(|e| panic!("{pad} zeros, {text}: {e}"));
            assert_eq!(got.tokens, want.tokens, "{pad} zeros, {text}");
        }
    }
}

#[test]
fn regions_on_a_bgzip_file_without_its_end_block_are_refused() {
    // Cut at a block border (then padded or not), the file still reads up to the cut; its
    // regions are refused as they are streaming, not failed at a block that is not there.
    let dir = tempdir();
    let bytes = fs::read(data("genomes/ecoli_k12.fa.gz")).unwrap();
    let cut = bytes.len() - 28;
    for pad in [0usize, 1_000] {
        let path = write_file(
            dir.path(),
            "cut.fa.gz",
            &[&bytes[..cut], &vec![0; pad][..]].concat(),
        );
        for ext in ["fai", "gzi"] {
            fs::copy(
                data(&format!("genomes/ecoli_k12.fa.gz.{ext}")),
                format!("{}.{ext}", s(&path)),
            )
            .unwrap();
        }
        for text in ["NC_000913:1-100", "NC_000913:4639600-4639675"] {
            let region: Region = text.parse().unwrap();
            assert_input_error(
                region::read_region(s(&path), &region),
                s(&path),
                &["truncated bgzip file", "end-of-file block is missing"],
            );
        }
    }
}

#[test]
fn regions_on_bgzip_chr20_match_samtools() {
    require_samtools();
    let path = data("genomes/hg19_chr20.fa.gz");
    let path = s(&path);
    for text in [
        "20:1-60",
        "20:59-62", // spans a line break (60 bases a line)
        "20:60-61", // the last base of a line and the first of the next
        "20:1,000,001-1,010,000",
        "20:30000000-30000100",
        "20:63025461-63025520", // the last line
        "20:63025520-63025520", // the last base
        "20:63,000,000",        // to the end
    ] {
        let rec = check_region(path, text);
        assert_eq!(rec.number, 1);
    }
    let rec = check_region(path, "20:1,000,001-1,010,000");
    assert_eq!(rec.id, "20:1000001-1010000");
    assert_eq!(rec.offset, 1_000_000);
    assert_eq!(rec.tokens.len(), 10_000);
    let rec = check_region(path, "20:63,000,000");
    assert_eq!(rec.tokens.len(), 63_025_520 - 63_000_000 + 1);
}

#[test]
fn regions_on_plain_yeast_and_other_genomes_match_samtools() {
    require_samtools();
    let yeast = data("genomes/yeast_chrI_II.fa");
    let yeast = s(&yeast);
    for text in [
        "chrI:1-1",
        "chrI:100-200",
        "chrI:59-62",
        "chrI:230208-230208",
        "chrII:1-1",
        "chrII:813,000",
    ] {
        check_region(yeast, text);
    }
    let whole = check_region(yeast, "chrII");
    assert_eq!(whole.tokens.len(), 813_178);
    assert_eq!(whole.number, 2);
    assert_eq!(whole.id, "chrII");

    let ecoli = data("genomes/ecoli_k12.fa.gz");
    check_region(s(&ecoli), "NC_000913:4639600-4639675");
    check_region(s(&ecoli), "NC_000913:79-82");
    // Soft-masked bases and the N run of chr2R.
    let dm3 = data("genomes/dm3_chr2R.fa.gz");
    check_region(s(&dm3), "chr2R:1-5000");
    check_region(s(&dm3), "chr2R:21,146,650");
}

/// Every named sequence of htslib's own faidx test file reads by region as samtools reads it
/// (names after blanks, `> bar description`, CRLF, blank lines at sequence ends), and so
/// does a file opened by a UTF-8 byte-order mark, through an index that counts it.
#[test]
fn htslib_faidx_edge_cases_read_by_region_as_samtools_reads_them() {
    require_samtools();
    let dir = tempdir();
    let path = dir.path().join("edge.fa");
    fs::copy(data("specimens/htslib_faidx_edge_cases.fa"), &path).unwrap();
    let p = s(&path);
    faidx(p);
    let index = fs::read_to_string(format!("{p}.fai")).unwrap();
    let names: Vec<&str> = index.lines().filter_map(|l| l.split('\t').next()).collect();
    assert!(
        names.contains(&"foo") && names.contains(&"bar"),
        "{names:?}"
    );
    for name in names.iter().filter(|n| !n.is_empty()) {
        check_region(p, name);
        check_region(p, &format!("{name}:2-3"));
    }
    // With a byte-order mark: the same index, each offset 3 bytes later.
    let bom = dir.path().join("bom.fa");
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    bytes.extend(fs::read(&path).unwrap());
    fs::write(&bom, bytes).unwrap();
    let shifted: String = index
        .lines()
        .map(|l| {
            let mut f: Vec<String> = l.split('\t').map(str::to_string).collect();
            f[2] = (f[2].parse::<u64>().unwrap() + 3).to_string();
            f.join("\t") + "\n"
        })
        .collect();
    fs::write(dir.path().join("bom.fa.fai"), shifted).unwrap();
    for name in ["trailingblank1", "foo", "bar"] {
        let from_bom = read_region_tokens(s(&bom), name);
        assert_eq!(from_bom, read_region_tokens(p, name), "{name}");
    }
}

fn read_region_tokens(path: &str, text: &str) -> Vec<u8> {
    let reg: Region = text.parse().unwrap();
    region::read_region(path, &reg)
        .unwrap_or_else(|e| panic!("{path} {text}: {e}"))
        .tokens
}

/// A file edited after `samtools faidx` indexed it, read through the old index: every edit
/// that moves bases is refused as an out-of-date index (samtools would read the wrong bases);
/// a same-length substitution, which leaves the index right, reads the new bases, as samtools
/// does; and sequences appended after the indexed ones leave it right too.
#[test]
fn a_file_edited_after_indexing_is_refused_where_its_bases_moved() {
    require_samtools();
    let dir = tempdir();
    let path = dir.path().join("edited.fa");
    let p = s(&path);
    // a: 35 bases (lines of 10), b: 25 bases, c: 12 bases.
    let original = ">a first\nACGTACGTAC\nGGGGGCCCCC\nTTTTTAAAAA\nACGTA\n>b\nCCCCCGGGGG\nAAAAATTTTT\nACGTA\n>c desc\nGATTACAGATTA\n";
    fs::write(&path, original).unwrap();
    faidx(p);
    let index = fs::read(format!("{p}.fai")).unwrap();
    let read = |text: &str| region::read_region(p, &text.parse::<Region>().unwrap());
    // The untouched file reads as samtools reads it, every sequence and a middle part.
    for text in ["a", "b", "c", "a:8-23", "b:10-11", "c:12"] {
        check_region(p, text);
    }
    // Layouts samtools indexes that the checks must take: blanks at line ends (counted into
    // the line's width), headers of sequences without bases (left out of the index) and blank
    // lines between sequences, CRLF with a description.
    // Names ended by \v or \f, and \v before a line end (htslib's `isspace`); a repeated
    // name (samtools indexes the first); a blank CRLF line after a header (an index entry of
    // 0 bases per line, which noodles alone refuses).
    for (name, text) in [
        ("blanks.fa", ">a\nACGT  \nAC  \n>c\nGGGG\n"),
        ("empty.fa", ">a\nACGTAC\nGG\n>b\n>e desc\n\n>c\nGG\n"),
        (
            "crlf.fa",
            "\n>a desc\tmore\r\nACGT\r\nAC\r\n\r\n>c\r\nGG\r\n",
        ),
        (
            "vt.fa",
            ">a\x0bdesc\nACGT\x0b\nACGT\n>c\x0cdesc\nTTTTGGGG\n",
        ),
        ("dup.fa", ">a\nACGTAC\n>a\nGGGG\n>c\nTTTT\n"),
        ("zero.fa", ">a\r\nACGTAC\r\n>e\r\n\r\n>c\r\nTTTT\r\n"),
    ] {
        let path = dir.path().join(name);
        fs::write(&path, text).unwrap();
        faidx(s(&path));
        for region in ["a", "a:3-6", "c:1-2"] {
            check_region(s(&path), region);
        }
    }
    // An index listing only some sequences, or one twice: the others read as samtools reads
    // them.
    let few = dir.path().join("few.fa");
    fs::write(&few, ">a\nACGT\n>b\nGGGG\n>c\nTTTT\n").unwrap();
    faidx(s(&few));
    let full = fs::read_to_string(format!("{}.fai", s(&few))).unwrap();
    let lines: Vec<&str> = full.lines().collect();
    for kept in [
        vec![lines[0], lines[2]],
        vec![lines[0], lines[1], lines[2], lines[0]],
    ] {
        fs::write(format!("{}.fai", s(&few)), kept.join("\n") + "\n").unwrap();
        check_region(s(&few), "a:1-2");
        check_region(s(&few), "c:2-3");
    }

    let edit = |from: &str, to: &str| {
        assert!(original.contains(from));
        fs::write(&path, original.replacen(from, to, 1)).unwrap();
        // The index stays the original file's.
        fs::write(format!("{p}.fai"), &index).unwrap();
    };
    let refused = |result: Result<Record, Error>, parts: &[&str]| {
        let mut all = vec![
            "does not match the file",
            "changed after it was indexed",
            "samtools faidx",
        ];
        all.extend_from_slice(parts);
        assert_input_error(result, p, &all);
    };
    // A whole line added to a: its end moves, and b's and c's starts. A part in the middle
    // of a, whose own lines still break where the index says, is refused too.
    edit("GGGGGCCCCC\n", "GGGGGCCCCC\nAAAAAAAAAA\n");
    refused(read("a:11-20"), &["sequence a does not end"]);
    refused(read("c:1-5"), &["c does not start where the index says"]);
    // A line of b removed: b ends early (a sequence appended, so that the file does not
    // shrink below the index's end, which is refused before any reading).
    edit("AAAAATTTTT\n", "");
    assert_input_error(
        read("c:1-3"),
        p,
        &["places sequence c past the end", "out of date"],
    );
    let shorter = original.replacen("AAAAATTTTT\n", "", 1);
    fs::write(&path, format!("{shorter}>pad\nACGTACGTACGTACGT\n")).unwrap();
    refused(read("b:1-3"), &["sequence b does not end"]);
    // One base added inside a line of b: b's end and c's start move.
    edit("AAAAATTTTT\n", "AAAAATTTTTT\n");
    refused(read("c"), &["b does not end or c does not start"]);
    // A base moved from b's second line to its first: the gaps stay, the lines break
    // elsewhere. A read across the break is refused, and so is one within the first line
    // (its end is checked).
    edit("CCCCCGGGGG\nAAAAATTTTT\n", "CCCCCGGGGGA\nAAAATTTTT\n");
    refused(
        read("b:5-25"),
        &["the lines of sequence b do not break where the index says"],
    );
    refused(
        read("b:1-3"),
        &["the lines of sequence b do not break where the index says"],
    );
    // A longer header: c's bases start later.
    edit(">c desc", ">c a longer description");
    refused(read("c:2-3"), &["c does not start"]);
    // b renamed: its header no longer names it.
    edit(">b\n", ">x\n");
    refused(read("b:1-2"), &["b does not start"]);
    // The same length, other bases: the index is still right; the new bases are read.
    edit("GATTACAGATTA", "GATTACCGATTA");
    let record = check_region(p, "c");
    assert_eq!(record.tokens[6], C);
    // Lines joined, rewrapped or shifted within a sequence whose start and end stay: a read
    // within one line is refused too (its line's ends are checked).
    let stays = ">a\nAAAAACCCCC\nGATTACAGAT\nCCGGAATTCC\n>b\nACGTACGTAC\nGATTACAGAT\nCCGGA\n";
    for (edited, region) in [
        // The last record's last two lines joined.
        (
            ">a\nAAAAACCCCC\nGATTACAGAT\nCCGGAATTCC\n>b\nACGTACGTAC\nGATTACAGATCCGGA\n",
            "b:21-22",
        ),
        // Lines 1 and 2 joined, a base added to line 3: the record keeps its bytes.
        (
            ">a\nAAAAACCCCCGATTACAGAT\nCCGGAGATTCC\n>b\nACGTACGTAC\nGATTACAGAT\nCCGGA\n",
            "a:13-16",
        ),
    ] {
        fs::write(&path, stays).unwrap();
        faidx(p);
        fs::write(&path, edited).unwrap();
        refused(read(region), &["do not break where the index says"]);
    }
    // A header longer than is read at once, shortened by a byte: the gap's end is checked.
    let long_header = |n: usize| format!(">a {}\nACGTACGTAC\nGATTACAGAT\n", "x".repeat(n));
    fs::write(&path, long_header(70_000)).unwrap();
    faidx(p);
    check_region(p, "a:1-5");
    fs::write(&path, long_header(69_999)).unwrap();
    refused(
        read("a:1-5"),
        &["sequence a does not start where the index says"],
    );
    fs::write(&path, original).unwrap();
    fs::write(format!("{p}.fai"), &index).unwrap();
    // Sequences appended after the indexed ones leave the index right for those.
    fs::write(&path, format!("{original}>d\nACGT\n")).unwrap();
    fs::write(format!("{p}.fai"), &index).unwrap();
    check_region(p, "c:3-12");
    // Anything else after the last indexed sequence means it grew or the file changed.
    fs::write(&path, format!("{original}ACGT\n")).unwrap();
    fs::write(format!("{p}.fai"), &index).unwrap();
    refused(read("c"), &["sequence c does not end where the index says"]);
}

#[test]
fn regions_on_a_crlf_fasta_match_samtools() {
    require_samtools();
    let dir = tempdir();
    let path = dir.path().join("crlf.fasta");
    fs::copy(data("specimens/crlf_line_endings.fasta"), &path).unwrap();
    faidx(s(&path));
    for text in [
        "gi|557361099|gb|KF435150.1|:65-80",
        "gi|557361099|gb|KF435150.1|:481-481",
        "gi|563317589|dbj|AB821309.1|:3400",
    ] {
        let rec = check_region(s(&path), text);
        assert!(rec.tokens.iter().all(|&t| (A..=N).contains(&t)));
    }
}

/// Streams `text` from `path` in pieces of `piece_len` and checks them: the pieces
/// [`Record::into_pieces`] cuts from the whole region, in order, one record's metadata, the
/// bases of `samtools faidx`.
fn check_region_pieces(path: &str, text: &str, piece_len: usize) {
    let reg: Region = text.parse().unwrap();
    let mut pieces = Vec::new();
    region::for_each_region_piece(path, &reg, piece_len, &mut |p| {
        pieces.push(p);
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{text}: {e}"));
    let whole = region::read_region(path, &reg).unwrap();
    let expected = samtools_tokens(path, text);
    assert!(whole.tokens == expected, "{path} {text}: whole region");
    let mut cut = Vec::new();
    whole
        .clone()
        .into_pieces(piece_len, &mut |p| {
            cut.push(p);
            Ok(())
        })
        .unwrap();
    assert_eq!(
        pieces.len(),
        cut.len(),
        "{path} {text} / {piece_len}: pieces"
    );
    assert_eq!(pieces.len(), expected.len().div_ceil(piece_len));
    for (i, (p, q)) in pieces.iter().zip(&cut).enumerate() {
        assert_eq!(p.start, i * piece_len, "{text}: piece {i} start");
        assert_eq!(p.last, i + 1 == pieces.len(), "{text}: piece {i} last");
        assert!(p.tokens == q.tokens, "{text}: piece {i} bases");
        assert_eq!(*p.meta, whole.meta(), "{text}: piece {i} record");
    }
    // The minus strand: the windows read from the region's end, each reverse-complemented,
    // cut into pieces from the record's start; the bases `samtools faidx -i` gives.
    let mut fasta = region::IndexedFasta::open(path, &reg).unwrap();
    let mut minus = Vec::new();
    let mut tokens = Vec::new();
    fasta
        .for_each_piece_as(&reg, None, true, piece_len, &mut |p| {
            tokens.extend_from_slice(&p.tokens);
            minus.push(p);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{text} (-): {e}"));
    assert!(
        tokens == samtools_strand_tokens(path, text, true),
        "{path} {text} / {piece_len}: minus strand"
    );
    assert_eq!(minus.len(), pieces.len());
    for (i, p) in minus.iter().enumerate() {
        assert_eq!(p.start, i * piece_len, "{text} (-): piece {i} start");
        assert_eq!(p.last, i + 1 == minus.len(), "{text} (-): piece {i} last");
        assert_eq!(p.meta.id, format!("{}(-)", whole.id), "{text} (-)");
    }
}

#[test]
fn one_opening_reads_many_regions_in_any_order_as_separate_openings_do() {
    // Backwards, overlapping, repeated, close ahead, across sequences and across bgzip blocks: each region
    // read through one `IndexedFasta` equals the same region read on its own, and samtools.
    for (path, texts) in [
        (
            data("genomes/hg19_chr20.fa.gz"),
            &[
                "20:40,000,001-40,000,500",
                "20:30,000,001-30,200,000",
                "20:30,100,001-30,100,010",
                "20:62,999,001",
                "20:30,000,001-30,000,100",
                "20:40,000,001-40,000,500",
                // Close ahead (the same bgzip block, then into the next ones): read on.
                "20:40,000,551-40,000,560",
                "20:40,000,561-40,000,561",
                "20:40,050,001-40,050,010",
                "20:40,110,001-40,110,020",
                "20:40,110,001-40,110,020",
            ][..],
        ),
        (
            data("genomes/yeast_chrI_II.fa"),
            &[
                "chrII:500,000-500,100",
                "chrI:1-60",
                "chrI:61-62",
                "chrII",
                "chrI:230,200",
                "chrI:100-110",
                "chrI:112-130",
                "chrI:5,000-5,010",
                "chrI:60,000-60,010",
            ][..],
        ),
    ] {
        let path = s(&path);
        let first: Region = texts[0].parse().unwrap();
        let mut fasta = region::IndexedFasta::open(path, &first).unwrap();
        assert_eq!(fasta.path(), path);
        for text in texts {
            let reg: Region = text.parse().unwrap();
            fasta.check_region(&reg).unwrap();
            let mut tokens = Vec::new();
            let mut ids = Vec::new();
            fasta
                .for_each_piece(&reg, 65_536, &mut |p| {
                    ids.push(p.meta.id.clone());
                    tokens.extend_from_slice(&p.tokens);
                    Ok(())
                })
                .unwrap_or_else(|e| panic!("{text}: {e}"));
            let alone = region::read_region(path, &reg).unwrap();
            assert!(
                tokens == alone.tokens,
                "{path} {text}: differs from its own opening"
            );
            assert!(ids.iter().all(|id| *id == alone.id), "{text}");
            assert!(
                tokens == samtools_tokens(path, text),
                "{path} {text}: samtools"
            );
        }
        // A bad region is refused without spoiling the next one.
        let bad: Region = "chrZ:1-5".parse().unwrap();
        assert!(fasta.check_region(&bad).is_err());
        assert!(fasta.for_each_piece(&bad, 10, &mut |_| Ok(())).is_err());
        let again: Region = texts[1].parse().unwrap();
        let mut n = 0;
        fasta
            .for_each_piece(&again, 1 << 20, &mut |p| {
                n += p.tokens.len();
                Ok(())
            })
            .unwrap();
        assert_eq!(n, region::read_region(path, &again).unwrap().tokens.len());
    }
}

#[test]
fn long_regions_stream_window_by_window_as_the_pieces_of_the_whole() {
    require_samtools();
    let chr20 = data("genomes/hg19_chr20.fa.gz");
    let chr20 = s(&chr20);
    // bgzip, 2.5 Mb: windows of 1.2 Mb (4 pieces of 300,000), of one piece of 1.5 Mb, and of
    // 1,048,576 (256 pieces of 4,096).
    check_region_pieces(chr20, "20:30,000,001-32,500,000", 300_000);
    check_region_pieces(chr20, "20:30,000,001-32,500,000", 1_500_000);
    check_region_pieces(chr20, "20:30,000,001-32,500,000", 4_096);
    // Pieces that do not divide the window or the region.
    check_region_pieces(chr20, "20:30,000,001-30,003,000", 7);
    check_region_pieces(chr20, "20:30,000,001-31,234,567", 333_333);

    // Plain text, 60 bases a line (samtools' output): a 3 Mb sequence of its own, whole and in
    // part.
    let dir = tempdir();
    let out = Command::new("samtools")
        .args([
            "faidx",
            s(&data("genomes/dm3_chr2R.fa.gz")),
            "chr2R:5,000,001-8,000,000",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let body = out.stdout.splitn(2, |&b| b == b'\n').nth(1).unwrap();
    let plain = write_file(dir.path(), "part.fa", &[b">part\n", body].concat());
    faidx(s(&plain));
    check_region_pieces(s(&plain), "part", 65_536);
    check_region_pieces(s(&plain), "part:1,000,000-2,100,000", 1 << 20);
}

#[test]
fn a_bad_base_in_a_later_window_is_reported_at_its_position_after_the_earlier_pieces() {
    let dir = tempdir();
    // 2.5 Mb of A in lines of 50, with one '#' at base 2,400,001.
    let mut text = b">s\n".to_vec();
    for i in 0..50_000u64 {
        let mut line = vec![b'A'; 50];
        if i == 48_000 {
            line[0] = b'#';
        }
        text.extend_from_slice(&line);
        text.push(b'\n');
    }
    let path = write_file(dir.path(), "bad.fa", &text);
    fs::write(dir.path().join("bad.fa.fai"), "s\t2500000\t3\t50\t51\n").unwrap();
    let mut seen = 0u64;
    let result =
        region::for_each_region_piece(s(&path), &"s".parse().unwrap(), 100_000, &mut |p| {
            seen += p.tokens.len() as u64;
            Ok(())
        });
    let err = assert_input_error(
        result,
        s(&path),
        &[
            "invalid character '#'",
            "region s",
            "record s, position 2400001",
        ],
    );
    assert_eq!(err.exit_code(), 2);
    // The first two windows (1.1 Mb each: 11 pieces) were handed on before the third failed.
    assert_eq!(seen, 2_200_000);
}

#[test]
fn names_that_read_as_regions_are_taken_in_braces_like_samtools() {
    require_samtools();
    let dir = tempdir();
    let path = write_file(
        dir.path(),
        "names.fa",
        b">20:1-10 a part written by samtools faidx\nACGTACGTACGTAC\n>20\nGGGGCCCCAAAATTTT\n>x:5\nTTTTTTTTAC\n",
    );
    let path = s(&path);
    faidx(path);
    // In braces: the sequence of that name, whole or in part; equal to samtools'.
    let rec = check_region(path, "{20:1-10}");
    assert_eq!(rec.tokens.len(), 14);
    check_region(path, "{20:1-10}:3-6");
    check_region(path, "{20}:2-3");
    // The braced form the ambiguity error asks for reads the part of `20` (samtools' too).
    let part = check_region(path, "{20}:1-10");
    // A BED row names its chromosome in a column of its own: never ambiguous.
    let bed = write_file(dir.path(), "r.bed", b"20\t0\t10\n");
    let rows = genomamba::io::bed::read_regions_bed(s(&bed)).unwrap();
    let from_bed = region::read_region(path, &rows[0].region).unwrap();
    assert_eq!(from_bed.tokens, part.tokens);
    // Without braces where both readings exist: refused, saying how to write each.
    let (err, msg) = expect_err(region::read_region(path, &"20:1-10".parse().unwrap()));
    assert_eq!(err.exit_code(), 2);
    for part in ["ambiguous", "{20}:1-10", "{20:1-10}"] {
        assert!(msg.contains(part), "{part}: {msg}");
    }
    // Where only the whole name exists: the error says to use braces.
    assert_input_error(
        region::read_region(path, &"x:5".parse().unwrap()),
        path,
        &["no sequence named 'x'", "'{x:5}'"],
    );
    // In braces, it reads whole.
    assert_eq!(check_region(path, "{x:5}").tokens.len(), 10);
}

#[test]
fn region_errors_say_what_and_how_to_fix() {
    let chr20 = data("genomes/hg19_chr20.fa.gz");
    let chr20 = s(&chr20);
    let yeast = data("genomes/yeast_chrI_II.fa");
    let yeast = s(&yeast);
    let read = |path: &str, text: &str| region::read_region(path, &text.parse::<Region>().unwrap());

    assert_input_error(
        read(chr20, "chr20:1-10"),
        chr20,
        &[
            "no sequence named 'chr20'",
            "it has: 20",
            "use --region 20:1-10",
        ],
    );
    assert_input_error(
        read(yeast, "chrX:1-10"),
        yeast,
        &["no sequence named 'chrX'", "chrI, chrII", ".fai"],
    );
    assert_input_error(
        read(chr20, "20:63025500-63025530"),
        chr20,
        &["ends past the end", "63,025,520 bp", "1..63025520"],
    );
    assert_input_error(
        read(yeast, "chrI:230209"),
        yeast,
        &["starts after the end", "230,208 bp", "record chrI"],
    );
    // An index whose sequences do not fit in the file (of another or an older file, or
    // with an offset near 2^64 that wrapped around to other bytes) is refused when opened;
    // a last line without its newline fits.
    let dir = tempdir();
    for (fai, fits) in [
        ("a\t8\t3\t4\t5\n", true),
        ("a\t9\t3\t4\t5\n", false),
        ("a\t8\t18446744073709551615\t4\t5\n", false),
        ("a\t4\t3\t4\t5\nb\t1\t100\t1\t2\n", false),
    ] {
        let fa = write_file(dir.path(), "short.fa", b">a\nACGT\nACGT");
        std::fs::write(dir.path().join("short.fa.fai"), fai).unwrap();
        let got = read(s(&fa), "a:1-2");
        if fits {
            assert_eq!(got.unwrap().tokens.len(), 2, "{fai}");
        } else {
            assert_input_error(
                got,
                s(&fa),
                &["past the end of the file (12 bytes)", "samtools faidx"],
            );
        }
    }
    // Start 0 and reversed ranges are caught when the region is parsed.
    for text in ["20:0-10", "20:20-10"] {
        let (err, msg) = expect_err(text.parse::<Region>());
        assert_eq!(err.exit_code(), 2);
        assert!(
            msg.contains(text) && msg.contains("e.g. 20:1,000,001-1,010,000"),
            "{msg}"
        );
    }
    let reversed = Region {
        name: "chrI".into(),
        start: 10,
        end: Some(10),
        explicit_name: false,
    };
    assert_input_error(
        region::read_region(yeast, &reversed),
        yeast,
        &["is empty", "230,208 bp"],
    );

    let dir = tempdir();
    // No .fai.
    let bare = dir.path().join("yeast.fa");
    fs::copy(yeast, &bare).unwrap();
    assert_input_error(
        read(s(&bare), "chrI:1-10"),
        s(&bare),
        &["no index", ".fai", "samtools faidx"],
    );
    // bgzip with .fai but no .gzi.
    let no_gzi = dir.path().join("ecoli.fa.gz");
    fs::copy(data("genomes/ecoli_k12.fa.gz"), &no_gzi).unwrap();
    fs::copy(
        data("genomes/ecoli_k12.fa.gz.fai"),
        dir.path().join("ecoli.fa.gz.fai"),
    )
    .unwrap();
    assert_input_error(
        read(s(&no_gzi), "NC_000913:1-10"),
        s(&no_gzi),
        &[".gzi", "samtools faidx", "writes .fai and .gzi"],
    );
    // Plain gzip (not bgzip), even with an index next to it.
    let gz = write_file(
        dir.path(),
        "yeast_plain.fa.gz",
        &gzip(&fs::read(yeast).unwrap()),
    );
    fs::copy(
        format!("{yeast}.fai"),
        dir.path().join("yeast_plain.fa.gz.fai"),
    )
    .unwrap();
    assert_input_error(
        read(s(&gz), "chrI:1-10"),
        s(&gz),
        &["plain gzip (not bgzip)", "bgzip"],
    );
    // Other compressions.
    let xz_path = write_file(dir.path(), "yeast.fa.xz", &xz(b">chrI\nACGT\n"));
    assert_input_error(
        read(s(&xz_path), "chrI:1-2"),
        s(&xz_path),
        &["xz-compressed", "bgzip"],
    );
    // An index that does not belong to the file.
    let stale = dir.path().join("stale.fa");
    fs::copy(yeast, &stale).unwrap();
    fs::write(dir.path().join("stale.fa.fai"), "chrI\t230208\t0\t60\t61\n").unwrap();
    assert_input_error(
        read(s(&stale), "chrI:1-10"),
        s(&stale),
        &[
            "does not match the file",
            "sequence chrI does not start where the index says",
            "samtools faidx",
        ],
    );
    // Missing file, stdin.
    let missing = dir.path().join("missing.fa");
    assert_input_error(
        read(s(&missing), "chrI"),
        s(&missing),
        &["cannot open", "check the path"],
    );
    let (err, msg) = expect_err(read("-", "chrI:1-10"));
    assert_eq!(err.exit_code(), 2);
    assert!(msg.contains("stdin"), "{msg}");
}

#[test]
fn pieces_stream_a_record_in_order_and_concatenate_to_it() {
    let path = data("genomes/yeast_chrI_II.fa");
    let mut whole: Vec<(String, Vec<u8>)> = Vec::new();
    fastx::for_each_record(s(&path), &mut |r| {
        whole.push((r.id.clone(), r.tokens));
        Ok(())
    })
    .unwrap();
    for piece_len in [1000usize, 4096, 230_208, 230_207] {
        let mut rebuilt: Vec<(String, Vec<u8>)> = Vec::new();
        let mut lasts = 0;
        fastx::for_each_piece(s(&path), piece_len, &mut |p| {
            assert!(p.tokens.len() <= piece_len, "piece longer than asked");
            assert!(!p.tokens.is_empty(), "empty piece of a non-empty record");
            if p.start == 0 {
                rebuilt.push((p.meta.id.clone(), Vec::new()));
            }
            let cur = &mut rebuilt
                .last_mut()
                .expect("a first piece starts each record")
                .1;
            assert_eq!(p.start, cur.len(), "pieces must be contiguous");
            cur.extend_from_slice(&p.tokens);
            if p.last {
                lasts += 1;
            } else {
                assert_eq!(
                    p.tokens.len(),
                    piece_len,
                    "only the last piece may be short"
                );
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(lasts, 2);
        assert_eq!(rebuilt, whole, "piece length {piece_len}");
    }
}

#[test]
fn records_on_one_long_line_stream_like_wrapped_ones() {
    // Sequence lines are read 1 MiB at a time (`LINE_PART`): lines just under, at and well
    // past it, CRLF with the `\r` on each side of a part's end, and a last line with no
    // line break, must give the records the same lines wrapped at 60 give.
    const PART: usize = 1 << 20;
    let bases = |n: usize, seed: u64| -> Vec<u8> {
        (0..n as u64)
            .map(|i| b"ACGTacgtN"[((i + seed).wrapping_mul(2_654_435_761) >> 9) as usize % 9])
            .collect()
    };
    let records = [
        ("under", bases(PART - 1, 1), "\r\n"),
        ("at", bases(PART, 2), "\r\n"),
        ("past", bases(2 * PART + 12_345, 3), "\n"),
        ("end", bases(777, 4), ""),
    ];
    let (mut one_line, mut wrapped) = (Vec::new(), Vec::new());
    for (id, seq, eol) in &records {
        one_line.extend_from_slice(format!(">{id} one line\n").as_bytes());
        one_line.extend_from_slice(seq);
        one_line.extend_from_slice(eol.as_bytes());
        wrapped.extend_from_slice(format!(">{id}\n").as_bytes());
        for line in seq.chunks(60) {
            wrapped.extend_from_slice(line);
            wrapped.push(b'\n');
        }
    }
    let dir = tempdir();
    let one = write_file(dir.path(), "one.fa", &one_line);
    let many = write_file(dir.path(), "many.fa", &wrapped);
    let want = read_all(s(&many)).unwrap();
    assert_eq!(want.len(), 4);
    let got = read_all(s(&one)).unwrap();
    let key = |r: &[Record]| -> Vec<(String, Vec<u8>)> {
        r.iter().map(|r| (r.id.clone(), r.tokens.clone())).collect()
    };
    assert_eq!(key(&got), key(&want));
    for piece_len in [1000usize, 4096, PART, 3 * PART] {
        let mut rebuilt: Vec<(String, Vec<u8>)> = Vec::new();
        fastx::for_each_piece(s(&one), piece_len, &mut |p| {
            assert!(p.tokens.len() <= piece_len && (p.last || p.tokens.len() == piece_len));
            if p.start == 0 {
                rebuilt.push((p.meta.id.clone(), Vec::new()));
            }
            let cur = &mut rebuilt.last_mut().unwrap().1;
            assert_eq!(p.start, cur.len());
            cur.extend_from_slice(&p.tokens);
            Ok(())
        })
        .unwrap();
        assert_eq!(rebuilt, key(&want), "piece length {piece_len}");
    }
    // A bad byte past the first part of a line is named at its line and position.
    let mut bad = b">x\n".to_vec();
    bad.extend_from_slice(&bases(PART + 10, 5));
    bad[3 + PART + 4] = b'#';
    bad.extend_from_slice(b"\n");
    let bad = write_file(dir.path(), "bad.fa", &bad);
    let (err, msg) = expect_err(fastx::for_each_piece(s(&bad), 4096, &mut |_| Ok(())));
    assert_eq!(err.exit_code(), 2);
    let at = format!("line 2 (record x, position {})", PART + 5);
    assert!(msg.contains(&at), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// GFF labels for per-position training

/// The rows of `gff` whose feature type is `ty`, as bedtools reads GFF: sorted, merged and
/// written as BED (0-based, half-open), named `ty` in column 4.
fn bedtools_intervals(dir: &Path, gff: &Path, ty: &str) -> String {
    let rows: String = fs::read_to_string(gff)
        .unwrap()
        .lines()
        .filter(|l| l.split('\t').nth(2) == Some(ty))
        .map(|l| format!("{l}\n"))
        .collect();
    let only = write_file(dir, &format!("{ty}.gff"), rows.as_bytes());
    let run = |args: &[&str]| {
        let out = Command::new("bedtools")
            .args(args)
            .output()
            .expect("bedtools is needed for the GFF test (apt-get install -y bedtools)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let sorted = write_file(
        dir,
        &format!("{ty}.sorted.gff"),
        &run(&["sort", "-i", s(&only)]),
    );
    String::from_utf8(run(&["merge", "-i", s(&sorted)]))
        .unwrap()
        .lines()
        .map(|l| format!("{l}\t{ty}\n"))
        .collect()
}

#[test]
fn gff_labels_are_the_intervals_bedtools_reads_from_the_gff() {
    use genomamba::train::data::load_position;
    let dir = tempdir();
    let fa = data("genomes/yeast_chrI_II.fa");
    let gff = data("genomes/yeast_chrI_II.sgd.gff3");
    let classes = [
        ("coding".to_string(), vec!["CDS".to_string()]),
        ("trna".to_string(), vec!["tRNA".to_string()]),
    ];
    let labels_as = |path: &Path, format: LabelFormat| {
        let set = load_position(s(&fa), s(path), format, &classes, &[]).unwrap();
        assert_eq!(set.labels, ["background", "coding", "trna"]);
        set.records
            .into_iter()
            .map(|r| (r.name, r.labels))
            .collect::<Vec<_>>()
    };
    let labels_of = |path: &Path| labels_as(path, LabelFormat::Detect);
    let bed_text =
        bedtools_intervals(dir.path(), &gff, "CDS") + &bedtools_intervals(dir.path(), &gff, "tRNA");
    let bed = write_file(dir.path(), "labels.bed", bed_text.as_bytes());
    let want = labels_of(&bed);
    for class in [1u8, 2] {
        assert!(
            want.iter().any(|(_, l)| l.contains(&class)),
            "class {class}"
        );
    }
    assert_eq!(labels_of(&gff), want);
    // GTF-like text with no `##gff-version` line is told by its columns; rows end at an
    // embedded `##FASTA` section.
    let text = fs::read_to_string(&gff).unwrap();
    let bare: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let bare = write_file(dir.path(), "bare.gtf", bare.as_bytes());
    assert_eq!(labels_of(&bare), want);
    let with_fasta = write_file(
        dir.path(),
        "with_fasta.gff3",
        format!("{text}##FASTA\n>chrI\nACGT\n").as_bytes(),
    );
    assert_eq!(labels_of(&with_fasta), want);

    // Without --bed-class a GFF's types are not all classes: the message lists them.
    let err = load_position(s(&fa), s(&gff), LabelFormat::Detect, &[], &[]).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.exit_code(), 2, "{msg}");
    for part in [
        "feature types (chromosome, repeat_region",
        "--bed-class coding=CDS",
    ] {
        assert!(msg.contains(part), "{part:?}: {msg}");
    }
    // A type the file lacks is named with the column it was looked for in.
    let none = [("x".to_string(), vec!["exon".to_string()])];
    let msg = load_position(s(&fa), s(&gff), LabelFormat::Detect, &none, &[])
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("no GFF feature is named 'exon' (column 3"),
        "{msg}"
    );
    // GFF2-style rows of eight columns, rows ending in a tab, and attributes that are not
    // UTF-8 (column 9 is not used) read the same.
    let loose: String = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .enumerate()
        .map(|(i, l)| {
            let cols: Vec<&str> = l.split('\t').collect();
            match i % 3 {
                0 => format!("{}\n", cols[..8].join("\t")),
                1 => format!("{l}\t\n"),
                _ => format!("{l};Note=caf\u{e9}\n"),
            }
        })
        .collect();
    let mut loose = loose.into_bytes();
    // One Latin-1 byte in an attribute.
    let utf8 = "caf\u{e9}".as_bytes();
    let at = loose.windows(utf8.len()).position(|w| w == utf8).unwrap();
    loose.splice(at + 3..at + utf8.len(), [0xe9]);
    let loose = write_file(dir.path(), "loose.gff", &loose);
    assert_eq!(labels_of(&loose), want);
    // Rows of types no class takes are not read, even on sequences the FASTA lacks; a
    // comment may hold any bytes; blanks around a used column's value are not part of it.
    let mut extra = fs::read(&gff).unwrap();
    extra.extend(b"# caf\xe9\nchrM\tx\tgene\t1\t100\t.\t+\t.\tID=m\n");
    extra.extend(b"chrI\tx\ttRNA\t 5 \t9 \t.\t+\t.\tID=t\n");
    let extra = write_file(dir.path(), "extra.gff3", &extra);
    let got = labels_of(&extra);
    assert_eq!(got[1], want[1]);
    assert_eq!(&got[0].1[..4], &want[0].1[..4]);
    assert_eq!(&got[0].1[9..], &want[0].1[9..]);
    assert!(
        got[0].1[4..9].iter().all(|&l| l == 2),
        "{:?}",
        &got[0].1[..10]
    );
    let mito = [("m".to_string(), vec!["gene".to_string()])];
    let msg = load_position(s(&fa), s(&extra), LabelFormat::Detect, &mito, &[])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("chromosome 'chrM' is not in"), "{msg}");
    // GFF messages speak GFF: a feature past the end in 1-based coordinates, start 0.
    let past = write_file(
        dir.path(),
        "past.gff3",
        b"##gff-version 3\nchrI\tx\tCDS\t230200\t230300\t.\t+\t0\tID=a\n",
    );
    let msg = load_position(s(&fa), s(&past), LabelFormat::Detect, &classes[..1], &[])
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("feature chrI 230200 230300 (GFF, 1-based) ends past the end"),
        "{msg}"
    );
    let zero = write_file(
        dir.path(),
        "zero.gff3",
        b"##gff-version 3\nchrI\tx\tCDS\t00\t300\t.\t+\t0\tID=a\n",
    );
    assert_input_error(
        load_position(s(&fa), s(&zero), LabelFormat::Detect, &classes[..1], &[]),
        s(&zero),
        &[
            "line 2",
            "start (column 4) is 0, and GFF positions start at 1",
        ],
    );
    // A nine-column BED (BED9: a number where GFF has its phase) is BED, even with a name
    // that is a number; a BED row with a word for its start is said to be one.
    let bed9 = write_file(
        dir.path(),
        "nine.bed",
        b"chrI\t334\t792\t5\t0\t+\t334\t792\t0\n",
    );
    let nine = [("x".to_string(), vec!["5".to_string()])];
    let set = load_position(s(&fa), s(&bed9), LabelFormat::Detect, &nine, &[]).unwrap();
    let chr_i = &set.records[0].labels;
    assert_eq!(chr_i.iter().filter(|&&l| l == 1).count(), 792 - 334);
    let word = write_file(
        dir.path(),
        "word.bed",
        b"chrI\tx\t100\t5\t6\t+\t0\t100\t0\n",
    );
    assert_input_error(
        load_position(s(&fa), s(&word), LabelFormat::Detect, &nine, &[]),
        s(&word),
        &["start 'x' is not a number"],
    );
    // A damaged row is named by its line.
    let damaged = text.replacen("\t335\t649\t", "\tx\t649\t", 1);
    let line = 1 + text[..text.find("\t335\t649\t").unwrap()]
        .matches('\n')
        .count();
    let damaged = write_file(dir.path(), "damaged.gff3", damaged.as_bytes());
    assert_input_error(
        load_position(s(&fa), s(&damaged), LabelFormat::Detect, &classes, &[]),
        s(&damaged),
        &[&format!("line {line}"), "seqid, source, type"],
    );
    // Given as GFF (`--gff`), a file whose first row does not look like GFF is still read
    // as GFF, and its errors speak GFF: a strand of `x`, a phase of 3 or spaces for tabs on
    // the first row, or a BED given by mistake. Strand and phase are checked though not
    // used: other values are a sign of damage.
    for (name, first, gff_says, as_bed) in [
        (
            "strand",
            "chrI\tx\tCDS\t335\t649\t.\tx\t0\tID=a\n",
            "strand (column 7) 'x' is not +, -, . or ?",
            "start 'x' is not a number",
        ),
        (
            "phase",
            "chrI\tx\tCDS\t335\t649\t.\t+\t3\tID=a\n",
            "phase (column 8) '3' is not 0, 1, 2 or .",
            "start 'x' is not a number",
        ),
        (
            "spaces",
            "chrI x CDS 335 649 . + 0 ID=a\n",
            "1 tab-separated column, where a GFF feature line has nine",
            "1 column; column 4 (the class name) is needed",
        ),
        (
            "bed",
            "chrI\t334\t649\tCDS\n",
            "4 tab-separated columns, where a GFF feature line has nine",
            "",
        ),
    ] {
        let path = write_file(dir.path(), &format!("{name}.gff"), first.as_bytes());
        let msg = assert_input_error(
            load_position(s(&fa), s(&path), LabelFormat::Gff, &classes[..1], &[]),
            s(&path),
            &["line 1", gff_says, "seqid, source, type"],
        )
        .to_string();
        assert!(!msg.contains("BED"), "{msg}");
        if !as_bed.is_empty() {
            // Told by content, the same row reads as a BED row that is not one.
            let msg = load_position(s(&fa), s(&path), LabelFormat::Detect, &classes[..1], &[])
                .unwrap_err()
                .to_string();
            assert!(msg.contains(as_bed), "{msg}");
        }
    }
    // With its header, a bad phase is found at its line too.
    let phase = write_file(
        dir.path(),
        "phase.gff3",
        b"##gff-version 3\nchrI\tx\tCDS\t335\t649\t.\t+\t0\tID=a\nchrI\tx\tCDS\t700\t900\t.\t-\t5\tID=b\n",
    );
    assert_input_error(
        load_position(s(&fa), s(&phase), LabelFormat::Detect, &classes[..1], &[]),
        s(&phase),
        &["line 3", "phase (column 8) '5'"],
    );
    // Given as GFF, a BED6 with a zero score is said to have too few columns; UCSC's
    // `track` and `browser` lines before a GTF are skipped.
    let bed6 = write_file(dir.path(), "six.gff", b"chrI\t334\t649\tCDS\t0\t+\n");
    assert_input_error(
        load_position(s(&fa), s(&bed6), LabelFormat::Gff, &classes[..1], &[]),
        s(&bed6),
        &["6 tab-separated columns, where a GFF feature line has nine"],
    );
    let ucsc = fs::read(&bare).unwrap();
    let ucsc = [
        &b"track name=g description=\"x\"\nbrowser position chrI:1-1000\n"[..],
        &ucsc,
    ]
    .concat();
    let ucsc = write_file(dir.path(), "ucsc.gtf", &ucsc);
    assert_eq!(labels_as(&ucsc, LabelFormat::Gff), want);
    // A GFF given as such reads as it does when told by content.
    assert_eq!(labels_as(&bare, LabelFormat::Gff), want);
}
