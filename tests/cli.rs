//! The command line as a user runs it: outputs, chunk invariance, regions, external
//! validators (bedtools, samtools), bad input (exit 2, one line, nothing left behind) and
//! interruptions (unfinished outputs removed, finished ones kept).

use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::cargo::CommandCargoExt;

mod common;
use common::set_tensor;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn shared() -> PathBuf {
    root().join("../shared/data")
}

fn gm() -> Command {
    let mut c = Command::cargo_bin("genomamba").unwrap();
    c.env_remove("RUST_LOG");
    c
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl From<std::process::Output> for Out {
    fn from(o: std::process::Output) -> Out {
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

fn run(args: &[&str]) -> Out {
    gm().args(args).output().unwrap().into()
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert_eq!(o.code, 0, "genomamba {args:?} failed: {}", o.stderr);
    o.stdout
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn init(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let m = dir.join(name);
    let mut args = vec![
        "init",
        "-o",
        s(&m),
        "--d-model",
        "16",
        "--n-layer",
        "2",
        "--seed",
        "5",
    ];
    args.extend_from_slice(extra);
    ok(&args);
    m
}

/// `embed --pool none` of `fa` with the model `m` into the directory `out`.
fn embed_npy(m: &Path, fa: &Path, out: &Path, extra: &[&str]) -> Out {
    let mut args = vec!["embed", "-m", s(m), s(fa), "--pool", "none", "-o", s(out)];
    args.extend_from_slice(extra);
    run(&args)
}

fn tsv_values(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| l.split('\t').map(String::from).collect())
        .collect()
}

/// Asserts a failed run: exit 2, one line on stderr mentioning `needle`.
/// Runs `script` with bash.
fn shell(script: &str) -> Out {
    std::process::Command::new("bash")
        .args(["-c", script])
        .output()
        .unwrap()
        .into()
}

/// Rewrites the final norm's weight in the model directory `m` as `edit` makes it from the
/// stored f32 bytes, stored as `dtype` (same shape).
fn replace_final_norm(m: &Path, dtype: safetensors::Dtype, edit: impl FnOnce(&[u8]) -> Vec<u8>) {
    let path = m.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let norm = st.tensor("norm_f.weight").unwrap();
    let data = edit(norm.data());
    let edited = safetensors::tensor::TensorView::new(dtype, norm.shape().to_vec(), &data).unwrap();
    let mut tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != "norm_f.weight")
        .collect();
    tensors.push(("norm_f.weight".into(), edited));
    std::fs::write(&path, safetensors::serialize(tensors, None).unwrap()).unwrap();
}

fn assert_bad(o: &Out, needle: &str) {
    assert_eq!(o.code, 2, "expected exit 2, got {}: {}", o.code, o.stderr);
    let lines: Vec<&str> = o.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one line on stderr, got: {}",
        o.stderr
    );
    assert!(
        lines[0].contains(needle),
        "error line should mention '{needle}': {}",
        lines[0]
    );
}

fn need(tool: &str) {
    let found = Command::new(tool).arg("--version").output().is_ok();
    assert!(
        found,
        "{tool} is not installed: apt-get install -y bedtools samtools (CI installs them)"
    );
}

/// Runs an external tool (bedtools, samtools) that must succeed, and writes its stdout to
/// `path`.
fn cut_to(path: &Path, tool: &str, args: &[&str]) {
    let cut = Command::new(tool).args(args).output().unwrap();
    assert!(
        cut.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&cut.stderr)
    );
    std::fs::write(path, &cut.stdout).unwrap();
}

#[test]
fn embed_tsv_is_one_row_per_record_and_chunk_size_does_not_matter() {
    let t = tempfile::tempdir().unwrap();
    let m = init(t.path(), "m", &[]);
    let input = root().join("data/peaks.fa");
    // In f16 too: chunks of one position once took a product that rounded every term's
    // sum to f16 (1.1e-3 off the others here).
    for (precision, chunks) in [
        ("f32", &["1", "7", "64", "1000", "100000"][..]),
        ("f16", &["1", "100000"][..]),
    ] {
        let mut tables = Vec::new();
        for chunk in chunks {
            let out = t.path().join(format!("e{precision}_{chunk}.tsv"));
            ok(&[
                "embed",
                "-m",
                s(&m),
                s(&input),
                "-o",
                s(&out),
                "--chunk-size",
                chunk,
                "--batch-size",
                "3",
                "--precision",
                precision,
            ]);
            tables.push(tsv_values(&out));
        }
        let base = &tables[0];
        assert_eq!(base.len(), 41, "header + 40 records");
        assert_eq!(base[0][..3], ["id", "length", "dim_0"]);
        assert_eq!(base[0].len(), 2 + 16);
        assert_eq!(base[1][1], "200");
        for tab in &tables[1..] {
            for (r1, r2) in base.iter().zip(tab).skip(1) {
                assert_eq!(r1[0], r2[0]);
                for (a, b) in r1[2..].iter().zip(&r2[2..]) {
                    let (a, b): (f64, f64) = (a.parse().unwrap(), b.parse().unwrap());
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + a.abs()),
                        "{precision}: {a} vs {b}"
                    );
                }
            }
        }
    }
}

#[test]
fn records_of_mixed_lengths_give_the_same_rows_however_they_are_batched() {
    // Lengths from 1 to 3,000 in no order: the padding limit cuts batches where the
    // count and position limits alone would not; no grouping may change a result.
    let t = tempfile::tempdir().unwrap();
    let m = init(t.path(), "m", &[]);
    let fa = t.path().join("mixed.fa");
    let mut text = String::new();
    let mut x: u64 = 7;
    for i in 0..60 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let len = 1 + (x >> 33) as usize % 3000;
        let seq: String = (0..len)
            .map(|j| b"ACGT"[(j * 7 + i * 3 + j / 5) % 4] as char)
            .collect();
        text.push_str(&format!(">r{i}\n{seq}\n"));
    }
    std::fs::write(&fa, text).unwrap();
    let mut tables = Vec::new();
    for (padding, batch) in [("150", "32"), ("100000", "32"), ("100", "32"), ("150", "1")] {
        let out = t.path().join(format!("e{padding}_{batch}.tsv"));
        let o = gm()
            .env("GENOMAMBA_BATCH_PADDING", padding)
            .args([
                "embed",
                "-m",
                s(&m),
                s(&fa),
                "-o",
                s(&out),
                "--batch-size",
                batch,
                "-q",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        tables.push(tsv_values(&out));
    }
    assert_eq!(tables[0].len(), 61, "header + 60 records");
    for tab in &tables[1..] {
        assert_eq!(tab, &tables[0]);
    }
}

#[test]
fn per_position_npy_matches_pooled_mean_and_stdin_works() {
    let t = tempfile::tempdir().unwrap();
    let m = init(t.path(), "m", &[]);
    let fa = t.path().join("x.fa");
    std::fs::write(
        &fa,
        ">r1 desc\nACGTNNNNacgtRYAC\nGGTT\n>r2\nTTTTGGGGCCCCAAAAN\n",
    )
    .unwrap();
    let npy = t.path().join("npy");
    ok(&[
        "embed",
        "-m",
        s(&m),
        s(&fa),
        "-o",
        s(&npy),
        "--pool",
        "none",
        "--format",
        "npy",
        "--chunk-size",
        "3",
    ]);
    let bytes = std::fs::read(npy.join("r1.npy")).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = String::from_utf8_lossy(&bytes[10..10 + hlen]).into_owned();
    assert!(header.contains("'shape': (20, 16)"), "{header}");
    let vals: Vec<f32> = bytes[10 + hlen..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(vals.len(), 20 * 16);
    // The mean of the per-position rows is the pooled embedding, read here from stdin.
    let o = gm()
        .args(["embed", "-m", s(&m), "-", "-o", "-"])
        .stdin(std::fs::File::open(&fa).unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let row: Vec<&str> = text.lines().nth(1).unwrap().split('\t').collect();
    assert_eq!(row[..2], ["r1", "20"]);
    for dim in 0..16 {
        let mean: f32 = (0..20).map(|t| vals[t * 16 + dim]).sum::<f32>() / 20.0;
        let pooled: f32 = row[2 + dim].parse().unwrap();
        assert!(
            (mean - pooled).abs() < 1e-5,
            "dim {dim}: {mean} vs {pooled}"
        );
    }
    assert_eq!(text.lines().count(), 3);
}

#[test]
fn classify_writes_labels_and_probabilities() {
    let t = tempfile::tempdir().unwrap();
    let m = init(
        t.path(),
        "m",
        &["--head", "sequence", "--labels", "oct4,mafk"],
    );
    let out = t.path().join("c.tsv");
    ok(&[
        "classify",
        "-m",
        s(&m),
        s(&root().join("data/peaks.fa")),
        "-o",
        s(&out),
    ]);
    let rows = tsv_values(&out);
    assert_eq!(rows[0], ["id", "length", "label", "p_oct4", "p_mafk"]);
    assert_eq!(rows.len(), 41);
    for r in &rows[1..] {
        let p: Vec<f64> = r[3..].iter().map(|v| v.parse().unwrap()).collect();
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-4);
        let best = if p[0] >= p[1] { "oct4" } else { "mafk" };
        assert_eq!(r[2], best);
    }
    // A model without the right head is refused.
    let plain = init(t.path(), "plain", &[]);
    let o = run(&[
        "classify",
        "-m",
        s(&plain),
        s(&root().join("data/peaks.fa")),
        "-o",
        s(&t.path().join("x.tsv")),
    ]);
    assert_bad(&o, "no classification head");
    assert!(!t.path().join("x.tsv").exists());
}

#[test]
fn annotate_bed_is_accepted_by_bedtools_and_region_coordinates_are_chromosomal() {
    need("bedtools");
    let t = tempfile::tempdir().unwrap();
    let m = init(
        t.path(),
        "m",
        &["--head", "position", "--labels", "background,coding"],
    );
    let fa = t.path().join("yeast.fa");
    std::fs::copy(shared().join("genomes/yeast_chrI_II.fa"), &fa).unwrap();
    std::fs::copy(
        shared().join("genomes/yeast_chrI_II.fa.fai"),
        t.path().join("yeast.fa.fai"),
    )
    .unwrap();
    let (bed, bg, tsv) = (
        t.path().join("a.bed"),
        t.path().join("a.bg"),
        t.path().join("a.tsv"),
    );
    ok(&[
        "annotate",
        "-m",
        s(&m),
        s(&fa),
        "--region",
        "chrII:100001-130000",
        "--region",
        "chrI:229001-230208",
        "--bed",
        s(&bed),
        "--bedgraph",
        s(&bg),
        "--tsv",
        s(&tsv),
        "--threshold",
        "0.5",
        "--chunk-size",
        "4096",
    ]);
    let bed_text = std::fs::read_to_string(&bed).unwrap();
    assert!(
        bed_text.lines().count() > 10,
        "expected segments, got {bed_text}"
    );
    for line in bed_text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 6, "BED6: {line}");
        let (a, b): (u64, u64) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        assert!(a < b, "{line}");
        match f[0] {
            "chrII" => assert!(a >= 100_000 && b <= 130_000, "{line}"),
            "chrI" => assert!(a >= 229_000 && b <= 230_208, "{line}"),
            other => panic!("unexpected chromosome {other}"),
        }
        assert_eq!(f[3], "coding");
        let score: u32 = f[4].parse().unwrap();
        assert!((500..=1000).contains(&score), "{line}");
        assert_eq!(f[5], ".");
    }
    // bedtools accepts the file unchanged: sorting per chromosome changes nothing within a
    // chromosome, and merge runs without complaint.
    let sorted = Command::new("bedtools")
        .args(["sort", "-i", s(&bed)])
        .output()
        .unwrap();
    assert!(
        sorted.status.success(),
        "{}",
        String::from_utf8_lossy(&sorted.stderr)
    );
    let by_chrom = |text: &str, c: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{c}\t")))
            .map(String::from)
            .collect()
    };
    let sorted_text = String::from_utf8_lossy(&sorted.stdout).into_owned();
    for c in ["chrI", "chrII"] {
        assert_eq!(by_chrom(&bed_text, c), by_chrom(&sorted_text, c));
    }
    let merged = Command::new("bedtools")
        .args(["merge", "-i", s(&bed)])
        .output()
        .unwrap();
    assert!(
        merged.status.success(),
        "{}",
        String::from_utf8_lossy(&merged.stderr)
    );
    // bedGraph: covers each region exactly, run-length merged, equals the TSV.
    let bg_text = std::fs::read_to_string(&bg).unwrap();
    let mut covered = 0u64;
    let mut prev: Option<(String, u64, String)> = None;
    for line in bg_text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let (a, b): (u64, u64) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        covered += b - a;
        if let Some((c, end, v)) = &prev
            && c == f[0]
            && *end == a
        {
            assert_ne!(v, f[3], "adjacent equal values not merged: {line}");
        }
        prev = Some((f[0].to_string(), b, f[3].to_string()));
    }
    assert_eq!(covered, 30_000 + 1_208);
    let tsv_rows = tsv_values(&tsv);
    assert_eq!(tsv_rows.len(), 1 + 30_000 + 1_208);
    assert_eq!(tsv_rows[1][..2], ["chrII", "100001"]);
    assert_eq!(tsv_rows.last().unwrap()[..2], ["chrI", "230208"]);
    // Probabilities have 4 decimals, or `--digits` (which the bedGraph takes too) when given.
    let decimals = |v: &str| v.split_once('.').map_or(0, |(_, d)| d.len());
    assert!(tsv_rows[1][3..].iter().all(|v| decimals(v) == 4));
    let fine = t.path().join("fine.tsv");
    ok(&[
        "annotate",
        "-m",
        s(&m),
        s(&fa),
        "--region",
        "chrI:229001-230208",
        "--tsv",
        s(&fine),
        "--digits",
        "6",
    ]);
    let fine_rows = tsv_values(&fine);
    assert_eq!(fine_rows.len(), 1 + 1_208);
    for (row, coarse) in fine_rows[1..].iter().zip(&tsv_rows[1 + 30_000..]) {
        assert_eq!(row[..3], coarse[..3]);
        for (v, c) in row[3..].iter().zip(&coarse[3..]) {
            assert_eq!(decimals(v), 6, "{v}");
            let (v, c): (f64, f64) = (v.parse().unwrap(), c.parse().unwrap());
            assert!((v - c).abs() <= 5e-5 + 1e-6, "{v} vs {c}");
        }
    }
    let bedtools_check = Command::new("bedtools")
        .args(["merge", "-i", s(&bg)])
        .output()
        .unwrap();
    assert!(bedtools_check.status.success());
    // --bed-strand: a `-` interval is read as its reverse complement and its rows keep
    // chromosome coordinates and order, so the row of chromosome base q is the row annotate
    // gives base end - q + 1 of the bases `bedtools getfasta -s` cuts; BED and TSV name the
    // strand. Checked for a forward-only head and for a bidirectional one with ORF features
    // (which holds both strands and reads the record whole).
    let regions = t.path().join("regions.bed");
    let intervals = [
        ("chrI", 100u64, 900u64, '-'),
        ("chrI", 1000, 1500, '+'),
        ("chrII", 2000, 2613, '-'),
    ];
    let text: String = intervals
        .iter()
        .map(|(c, a, b, st)| format!("{c}\t{a}\t{b}\tg\t0\t{st}\n"))
        .collect();
    std::fs::write(&regions, text).unwrap();
    let cut = t.path().join("cut.fa");
    cut_to(
        &cut,
        "bedtools",
        &["getfasta", "-s", "-fi", s(&fa), "-bed", s(&regions)],
    );
    let bidirectional = root().join("models/coding-bacteria");
    // Chunks of 300 stream each interval in pieces; in chunks of 1,024 all three run as one
    // batch.
    let runs = [&m, &bidirectional]
        .into_iter()
        .flat_map(|model| ["300", "1024"].map(|chunk| (model, chunk)));
    for (i, (model, chunk)) in runs.enumerate() {
        let (sbed, stsv, ctsv) = (
            t.path().join(format!("s{i}.bed")),
            t.path().join(format!("s{i}.tsv")),
            t.path().join(format!("c{i}.tsv")),
        );
        // In chunks of 300 the minus strand's held rows go to a temporary file every 1,000
        // bytes (as they do every 16 MiB by default) and are read back in blocks.
        let spool = if chunk == "300" { "1000" } else { "16777216" };
        let stranded = gm()
            .env("GENOMAMBA_ANNOTATE_SPOOL", spool)
            .args([
                "annotate",
                "-m",
                s(model),
                s(&fa),
                "--regions-bed",
                s(&regions),
                "--bed-strand",
                "--bed",
                s(&sbed),
                "--tsv",
                s(&stsv),
                "--threshold",
                "0.3",
                "--chunk-size",
                chunk,
            ])
            .output()
            .unwrap();
        assert!(
            stranded.status.success(),
            "{}",
            String::from_utf8_lossy(&stranded.stderr)
        );
        ok(&[
            "annotate",
            "-m",
            s(model),
            s(&cut),
            "--tsv",
            s(&ctsv),
            "--chunk-size",
            chunk,
        ]);
        let (ours, theirs) = (tsv_values(&stsv), tsv_values(&ctsv));
        assert_eq!(ours[0][..4], ["chrom", "position", "strand", "label"]);
        assert_eq!(ours[0][3..], theirs[0][2..]);
        let (mut at, mut cut_at) = (1, 1);
        for &(chrom, a, b, strand) in &intervals {
            let len = (b - a) as usize;
            let mine = &ours[at..at + len];
            let mut cut_rows: Vec<&Vec<String>> = theirs[cut_at..cut_at + len].iter().collect();
            let id = format!("{chrom}:{a}-{b}({strand})");
            assert!(cut_rows.iter().all(|r| r[0] == id), "{id}");
            if strand == '-' {
                cut_rows.reverse();
            }
            for (k, (row, cut_row)) in mine.iter().zip(cut_rows).enumerate() {
                assert_eq!(row[0], chrom);
                assert_eq!(row[1], (a + 1 + k as u64).to_string());
                assert_eq!(row[2], strand.to_string());
                assert_eq!(
                    row[3..],
                    cut_row[2..],
                    "{model:?} {chunk} {chrom}:{}",
                    row[1]
                );
            }
            at += len;
            cut_at += len;
        }
        assert_eq!((at, cut_at), (ours.len(), theirs.len()));
        // BED rows lie in their interval, carry its strand, and keep chromosome order.
        let bed_rows = tsv_values(&sbed);
        assert!(
            bed_rows.iter().any(|r| r[5] == "-"),
            "{model:?}: no minus rows"
        );
        let mut prev: Option<(String, u64)> = None;
        for r in &bed_rows {
            let (start, end): (u64, u64) = (r[1].parse().unwrap(), r[2].parse().unwrap());
            let &(_, _, _, strand) = intervals
                .iter()
                .find(|(c, a, b, _)| r[0] == *c && *a <= start && end <= *b)
                .unwrap_or_else(|| panic!("{r:?} outside every interval"));
            assert_eq!(r[5], strand.to_string(), "{r:?}");
            if let Some((c, p)) = &prev
                && *c == r[0]
            {
                assert!(*p <= start, "{r:?} out of order");
            }
            prev = Some((r[0].clone(), start));
        }
    }
    // A minus-strand interval that will spill needs a writable TMPDIR: one that is not is
    // refused before any work, not when the interval is reached after a forward one whose
    // rows (more than the 64 KiB output buffer) already went to stdout.
    let late = t.path().join("late.bed");
    std::fs::write(
        &late,
        "chrI\t1000\t9000\tf\t0\t+\nchrII\t2000\t2613\tr\t0\t-\n",
    )
    .unwrap();
    let refused = gm()
        .env("GENOMAMBA_ANNOTATE_SPOOL", "1000")
        .env("TMPDIR", t.path().join("missing"))
        .args(["annotate", "-m", s(&m), s(&fa), "--regions-bed", s(&late)])
        .args(["--bed-strand", "--tsv", "-"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("set TMPDIR to a directory"), "{stderr}");
    let stdout = String::from_utf8_lossy(&refused.stdout);
    assert!(
        !stdout.contains("chrI\t"),
        "rows were written first: {stdout:.200}"
    );
}

#[test]
fn an_output_file_the_user_may_not_write_is_kept() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let m = init(t.path(), "m", &[]);
    let fa = t.path().join("in.fa");
    std::fs::write(&fa, ">c\nACGTACGTTTGACCAGTACG\n").unwrap();
    let theirs = t.path().join("theirs.tsv");
    std::fs::write(&theirs, "kept").unwrap();
    // As root, the runs are another user's: `nobody`, through runuser, running a copy of the
    // binary beside the files (the build directory may be private to root).
    let bin = t.path().join("genomamba");
    std::fs::copy(assert_cmd::cargo::cargo_bin("genomamba"), &bin).unwrap();
    let as_nobody = |out: &Path| -> Option<Out> {
        let o: Out = std::process::Command::new("runuser")
            .args(["-u", "nobody", "--"])
            .arg(&bin)
            .args(["embed", "-m", s(&m), s(&fa), "-o", s(out)])
            .output()
            .expect("runuser (util-linux) runs the binary as another user")
            .into();
        // 126/127: `nobody` cannot reach the temporary directory (a private TMPDIR).
        if matches!(o.code, 126 | 127) {
            eprintln!("skipped the checks as another user: {}", o.stderr);
            return None;
        }
        Some(o)
    };
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let o: Option<Out> = if root {
        // Root's file, writable by its owner only, for another user: the shell's `>` is
        // refused, and so is the output (renaming over it would replace root's file).
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o644)).unwrap();
        as_nobody(&theirs)
    } else {
        // One's own file whose owner has no write bit (others do).
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o466)).unwrap();
        Some(run(&["embed", "-m", s(&m), s(&fa), "-o", s(&theirs)]))
    };
    let Some(o) = o else {
        return;
    };
    assert_bad(&o, "it exists and you have no permission to write it");
    assert_eq!(std::fs::read_to_string(&theirs).unwrap(), "kept");
    if root {
        // A file anyone may write, in a sticky directory (as /tmp is): only its owner may
        // replace it, so another user is refused before any work, not after it at the rename.
        let sticky = t.path().join("sticky");
        std::fs::create_dir(&sticky).unwrap();
        std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let shared = sticky.join("shared.tsv");
        std::fs::write(&shared, "kept").unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o666)).unwrap();
        let o = as_nobody(&shared).unwrap();
        assert_bad(&o, "where only a file's owner may replace it (sticky bit)");
        assert_eq!(std::fs::read_to_string(&shared).unwrap(), "kept");
    }
}

#[test]
fn annotate_rows_keep_their_record_when_records_run_in_batches() {
    // Records that fit in a chunk run several to a batch: every record of the batch begins
    // before the first one's rows arrive. Every output must still give each record's rows
    // under its own chromosome, in order, as one record at a time would (--batch-size 1).
    let t = tempfile::tempdir().unwrap();
    let m = init(
        t.path(),
        "m",
        &["--head", "position", "--labels", "background,coding"],
    );
    let fa = shared().join("genomes/yeast_chrI_II.fa");
    let regions = [
        ("chrI", 1000u64, 1400u64),
        ("chrII", 2000, 2500),
        ("chrI", 5000, 5300),
        ("chrII", 7000, 7700),
    ];
    let mut outputs = Vec::new();
    for batch in ["32", "1"] {
        let out = |ext: &str| t.path().join(format!("b{batch}.{ext}"));
        let mut args = vec!["annotate", "-m", s(&m), s(&fa)];
        let given: Vec<String> = regions
            .iter()
            .map(|(c, a, b)| format!("{c}:{}-{b}", a + 1))
            .collect();
        for r in &given {
            args.extend_from_slice(&["--region", r]);
        }
        let (bed, bg, tsv) = (out("bed"), out("bg"), out("tsv"));
        args.extend_from_slice(&[
            "--bed",
            s(&bed),
            "--bedgraph",
            s(&bg),
            "--tsv",
            s(&tsv),
            "--threshold",
            "0.3",
            "--chunk-size",
            "1024",
            "--batch-size",
            batch,
        ]);
        ok(&args);
        outputs.push((tsv_values(&bed), tsv_values(&bg), tsv_values(&tsv)));
    }
    let in_region = |row: &[String], k: usize| {
        let (c, a, b) = regions[k];
        let (start, end): (u64, u64) = (row[1].parse().unwrap(), row[2].parse().unwrap());
        row[0] == c && a <= start && start < end && end <= b
    };
    for (bed, bg, tsv) in &outputs {
        // TSV: every position of every region, in order, under its chromosome.
        let want: Vec<(String, String)> = regions
            .iter()
            .flat_map(|&(c, a, b)| (a + 1..=b).map(move |p| (c.to_string(), p.to_string())))
            .collect();
        let got: Vec<(String, String)> = tsv[1..]
            .iter()
            .map(|r| (r[0].clone(), r[1].clone()))
            .collect();
        assert_eq!(got, want);
        // bedGraph: the regions covered exactly, one after the other.
        let mut k = 0;
        let mut covered = vec![0u64; regions.len()];
        for row in bg {
            while !in_region(row, k) {
                k += 1;
                assert!(k < regions.len(), "bedGraph row {row:?} outside its region");
            }
            covered[k] += row[2].parse::<u64>().unwrap() - row[1].parse::<u64>().unwrap();
        }
        let sizes: Vec<u64> = regions.iter().map(|(_, a, b)| b - a).collect();
        assert_eq!(covered, sizes);
        // BED: rows in their regions, in region order.
        let mut k = 0;
        for row in bed {
            while !in_region(row, k) {
                k += 1;
                assert!(k < regions.len(), "BED row {row:?} outside its region");
            }
        }
        assert!(!bed.is_empty());
    }
    // The same values either way (batches pad records, within float tolerance).
    let (batched, single) = (&outputs[0].2, &outputs[1].2);
    for (x, y) in batched[1..].iter().zip(&single[1..]) {
        for (a, b) in x[3..].iter().zip(&y[3..]) {
            let (a, b): (f32, f32) = (a.parse().unwrap(), b.parse().unwrap());
            assert!((a - b).abs() <= 2e-4, "{x:?} vs {y:?}");
        }
    }
}

#[test]
fn region_embeddings_equal_those_of_samtools_extracted_bases() {
    need("samtools");
    let t = tempfile::tempdir().unwrap();
    let m = init(t.path(), "m", &[]);
    let genome = shared().join("genomes/hg19_chr20.fa.gz");
    let region = "20:31000001-31002000";
    let extracted = Command::new("samtools")
        .args(["faidx", s(&genome), region])
        .output()
        .unwrap();
    assert!(
        extracted.status.success(),
        "{}",
        String::from_utf8_lossy(&extracted.stderr)
    );
    let fa = t.path().join("samtools.fa");
    std::fs::write(&fa, &extracted.stdout).unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    ok(&[
        "embed",
        "-m",
        s(&m),
        s(&genome),
        "--region",
        region,
        "-o",
        s(&a),
        "--pool",
        "none",
    ]);
    ok(&["embed", "-m", s(&m), s(&fa), "-o", s(&b), "--pool", "none"]);
    let name = "20_31000001-31002000.npy";
    let (x, y) = (
        std::fs::read(a.join(name)).unwrap(),
        std::fs::read(b.join(name)).unwrap(),
    );
    assert!(x.len() > 2000 * 16 * 4);
    assert_eq!(x, y, "region read differs from samtools faidx");
}

/// The rows of an embed TSV after the header: (id, the values after it).
fn embed_rows(path: &Path) -> Vec<(String, Vec<String>)> {
    tsv_values(path)
        .into_iter()
        .skip(1)
        .map(|mut row| {
            let rest = row.split_off(1);
            (row.remove(0), rest)
        })
        .collect()
}

#[test]
fn regions_of_a_bed_file_are_the_bases_bedtools_and_samtools_cut() {
    need("bedtools");
    need("samtools");
    let t = tempfile::tempdir().unwrap();
    let m = init(t.path(), "m", &[]);
    let embed = |inputs: &[&str], extra: &[&str], out: &Path| {
        let mut args = vec!["embed", "-m", s(&m), "-o", s(out)];
        args.extend_from_slice(inputs);
        args.extend_from_slice(extra);
        ok(&args);
        embed_rows(out)
    };

    // Plain FASTA: the first 40 yeast genes (a real six-column BED) behind a header, against
    // the bases `bedtools getfasta` cuts for the same rows.
    let genome = shared().join("genomes/yeast_chrI_II.fa");
    let genes = std::fs::read_to_string(shared().join("genomes/yeast_chrI_II.genes.bed")).unwrap();
    let rows: Vec<&str> = genes.lines().take(40).collect();
    let bed = t.path().join("genes.bed");
    std::fs::write(
        &bed,
        format!("track name=genes\n# a comment\n{}\n", rows.join("\n")),
    )
    .unwrap();
    let ours = embed(
        &[s(&genome)],
        &["--regions-bed", s(&bed)],
        &t.path().join("a.tsv"),
    );
    let cut_fa = t.path().join("cut.fa");
    cut_to(
        &cut_fa,
        "bedtools",
        &["getfasta", "-fi", s(&genome), "-bed", s(&bed)],
    );
    let theirs = embed(&[s(&cut_fa)], &[], &t.path().join("b.tsv"));
    assert_eq!(ours.len(), 40);
    assert_eq!(theirs.len(), 40);
    for ((row, (id, values)), (_, cut_values)) in rows.iter().zip(&ours).zip(&theirs) {
        // The id is the region in samtools' 1-based terms.
        let f: Vec<&str> = row.split('\t').collect();
        let start: u64 = f[1].parse().unwrap();
        assert_eq!(id, &format!("{}:{}-{}", f[0], start + 1, f[2]));
        assert_eq!(values, cut_values, "{row}");
    }
    // The same regions given one by one as --region: the same output.
    let mut one_by_one = Vec::new();
    for (id, _) in &ours {
        one_by_one.extend(["--region", id.as_str()]);
    }
    let given = embed(&[s(&genome)], &one_by_one, &t.path().join("c.tsv"));
    assert_eq!(given, ours);

    // bgzip: all 801 CpG islands of chr20 (gzip-compressed BED, three columns), read through
    // one opening of the file and its indexes, against `samtools faidx -r`.
    let chr20 = shared().join("genomes/hg19_chr20.fa.gz");
    let islands = std::fs::read(shared().join("genomes/hg19_chr20.cpg_islands.bed")).unwrap();
    let bed_gz = t.path().join("islands.bed.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &islands).unwrap();
    std::fs::write(&bed_gz, gz.finish().unwrap()).unwrap();
    let ours = embed(
        &[s(&chr20)],
        &["--regions-bed", s(&bed_gz)],
        &t.path().join("d.tsv"),
    );
    assert_eq!(ours.len(), 801);
    let list = t.path().join("islands.txt");
    let ids: Vec<&str> = ours.iter().map(|(id, _)| id.as_str()).collect();
    std::fs::write(&list, ids.join("\n") + "\n").unwrap();
    let cut_fa = t.path().join("islands.fa");
    cut_to(&cut_fa, "samtools", &["faidx", s(&chr20), "-r", s(&list)]);
    let theirs = embed(&[s(&cut_fa)], &[], &t.path().join("e.tsv"));
    assert_eq!(ours, theirs);
    // `--region`s come first, then each BED file's rows in order.
    let both = embed(
        &[s(&genome)],
        &["--regions-bed", s(&bed), "--region", "chrII:1-50"],
        &t.path().join("f.tsv"),
    );
    assert_eq!(both.len(), 41);
    assert_eq!(both[0].0, "chrII:1-50");
    assert_eq!(both[1].0, "chrI:335-649");

    // --bed-names: column 4 is the id; a row named `.`, or without a name, keeps the region.
    // The values are those of the same regions unnamed.
    let named = t.path().join("named.bed");
    let mut text = String::new();
    for (i, row) in rows.iter().enumerate() {
        let f: Vec<&str> = row.split('\t').collect();
        text.push_str(&match i % 3 {
            0 => format!("{}\t{}\t{}\tgene_{i}\t0\t{}\n", f[0], f[1], f[2], f[5]),
            1 => format!("{}\t{}\t{}\t.\n", f[0], f[1], f[2]),
            _ => format!("{}\t{}\t{}\n", f[0], f[1], f[2]),
        });
    }
    std::fs::write(&named, text).unwrap();
    let by_name = embed(
        &[s(&genome)],
        &["--regions-bed", s(&named), "--bed-names"],
        &t.path().join("g.tsv"),
    );
    assert_eq!(by_name.len(), given.len());
    for (i, ((id, values), (region, region_values))) in by_name.iter().zip(&given).enumerate() {
        let want = if i % 3 == 0 {
            format!("gene_{i}")
        } else {
            region.clone()
        };
        assert_eq!(id, &want);
        assert_eq!(values, region_values, "{id}");
    }

    // --bed-strand: a `-` gene is read as its reverse complement, the bases `bedtools getfasta
    // -s` cuts; its id gets `(-)`. Both strands occur among the 40 genes.
    let stranded = embed(
        &[s(&genome)],
        &["--regions-bed", s(&bed), "--bed-strand"],
        &t.path().join("h.tsv"),
    );
    let cut_fa = t.path().join("cut_s.fa");
    cut_to(
        &cut_fa,
        "bedtools",
        &["getfasta", "-s", "-fi", s(&genome), "-bed", s(&bed)],
    );
    let theirs = embed(&[s(&cut_fa)], &[], &t.path().join("i.tsv"));
    assert_eq!(stranded.len(), 40);
    let mut minus = 0;
    for (((row, (id, values)), (_, cut_values)), (region, _)) in
        rows.iter().zip(&stranded).zip(&theirs).zip(&given)
    {
        let want = if row.split('\t').nth(5) == Some("-") {
            minus += 1;
            format!("{region}(-)")
        } else {
            region.clone()
        };
        assert_eq!(id, &want);
        assert_eq!(values, cut_values, "{row}");
    }
    assert!(minus > 0 && minus < 40, "{minus} genes on the minus strand");
}

#[test]
fn warnings_show_with_quiet_and_stdin_is_named_in_errors() {
    let t = tempfile::tempdir().unwrap();
    let m = init(t.path(), "m", &[]);
    let fa = t.path().join("gap.fa");
    std::fs::write(&fa, ">a\nACGT\n>empty\n>b\nGGCC\n").unwrap();
    let o = run(&["embed", "-m", s(&m), s(&fa), "-o", "-", "--quiet"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout.lines().count(), 3, "{}", o.stdout);
    assert_eq!(
        o.stderr.trim_end(),
        format!(
            "genomamba: warning: skipped a record of length 0 ({}, record empty)",
            fa.display()
        )
    );
    // Several are counted and the first is named, also from stdin.
    std::fs::write(&fa, ">a\nACGT\n>\n>b\nGGCC\n>c\n").unwrap();
    let piped = gm()
        .args(["embed", "-m", s(&m), "-", "-o", "-", "--quiet"])
        .stdin(std::fs::File::open(&fa).unwrap())
        .output()
        .unwrap();
    assert_eq!(piped.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&piped.stderr).trim_end(),
        "genomamba: warning: skipped 2 records of length 0 (the first: stdin, record #2)"
    );
    // Bad input on stdin is named so (it was "-: ...").
    let bad = t.path().join("bad.fa");
    std::fs::write(&bad, ">a\nAC#GT\n").unwrap();
    let piped = gm()
        .args(["embed", "-m", s(&m), "-", "-o", "-"])
        .stdin(std::fs::File::open(&bad).unwrap())
        .output()
        .unwrap();
    assert_eq!(piped.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(
        stderr.starts_with("genomamba: error: stdin: invalid character '#' on line 2"),
        "{stderr}"
    );
}

#[test]
fn bad_input_exits_2_with_one_line_and_leaves_no_output() {
    let t = tempfile::tempdir().unwrap();
    let m = init(t.path(), "m", &[]);
    let out = t.path().join("out.tsv");
    let check = |args: &[&str], needle: &str| {
        let mut full = vec!["embed", "-m", s(&m), "-o", s(&out)];
        full.extend_from_slice(args);
        let o = run(&full);
        assert_bad(&o, needle);
        assert!(!out.exists(), "output left behind for {args:?}");
        let leftovers: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temp files left behind");
    };
    // A stray '#' in record 2.
    let hash = t.path().join("hash.fa");
    std::fs::write(&hash, ">one\nACGT\n>two\nACG#TT\n").unwrap();
    check(&[s(&hash)], "two");
    // A truncated gzip.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(
        &mut gz,
        &std::fs::read(root().join("data/peaks.fa")).unwrap(),
    )
    .unwrap();
    let data = gz.finish().unwrap();
    let trunc = t.path().join("trunc.fa.gz");
    std::fs::write(&trunc, &data[..data.len() / 2]).unwrap();
    check(&[s(&trunc)], "trunc.fa.gz");
    // FASTQ whose quality length is wrong.
    let fq = t.path().join("bad.fq");
    std::fs::write(&fq, "@r1\nACGT\n+\nIIII\n@r2\nACGTA\n+\nIII\n").unwrap();
    check(&[s(&fq)], "bad.fq");
    // A region past the chromosome end.
    let yeast = shared().join("genomes/yeast_chrI_II.fa");
    check(&[s(&yeast), "--region", "chrI:230000-240000"], "230208");
    // A bad region after a good one, or a good region in a file that cannot be read by
    // region after one that can: refused before any work, so nothing reaches stdout either.
    let unindexed = t.path().join("yeast.fa");
    std::fs::copy(&yeast, &unindexed).unwrap();
    let late: [(&[&str], &str); 2] = [
        (
            &[s(&yeast), "--region", "chrI:1-100", "--region", "chrX:1-5"],
            "chrX",
        ),
        (
            &[s(&yeast), s(&unindexed), "--region", "chrI:1-100"],
            ".fai",
        ),
    ];
    // A BED of regions whose second row names no sequence of the file, or is empty: the
    // error names the BED file and line.
    let bad_bed = t.path().join("bad.bed");
    std::fs::write(&bad_bed, "chrI\t0\t100\nchrX\t0\t5\n").unwrap();
    let empty_bed = t.path().join("empty.bed");
    std::fs::write(&empty_bed, "chrI\t0\t100\nchrI\t7\t7\n").unwrap();
    let bad_beds: [(&[&str], &str); 2] = [
        (&[s(&yeast), "--regions-bed", s(&bad_bed)], "bad.bed line 2"),
        (&[s(&yeast), "--regions-bed", s(&empty_bed)], "(line 2)"),
    ];
    for (args, needle) in late.into_iter().chain(bad_beds) {
        let mut full = vec!["embed", "-m", s(&m), "-o", "-"];
        full.extend_from_slice(args);
        let o = run(&full);
        assert_bad(&o, needle);
        assert_eq!(o.stdout, "", "{args:?}");
    }
    // A model directory without weights.
    let broken = t.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::copy(m.join("config.json"), broken.join("config.json")).unwrap();
    let o = run(&["embed", "-m", s(&broken), s(&hash), "-o", s(&out)]);
    assert_bad(&o, "model.safetensors");
    assert!(!out.exists());
    // Weights of two layers under a config.json of one: the second layer is not dropped
    // without a word.
    let shallow = t.path().join("shallow");
    std::fs::create_dir(&shallow).unwrap();
    let config = std::fs::read_to_string(m.join("config.json")).unwrap();
    assert!(config.contains("\"n_layer\": 2,"));
    std::fs::write(
        shallow.join("config.json"),
        config.replace("\"n_layer\": 2,", "\"n_layer\": 1,"),
    )
    .unwrap();
    std::fs::copy(
        m.join("model.safetensors"),
        shallow.join("model.safetensors"),
    )
    .unwrap();
    let o = run(&["embed", "-m", s(&shallow), s(&hash), "-o", s(&out)]);
    assert_bad(&o, "weights hold tensor 'layers.1.");
    assert!(!out.exists());
    // A config.json of another format: the one field that is wrong is named, and the fix
    // keeps the weights (regenerating with `init` would replace them).
    let other = t.path().join("other_format");
    std::fs::create_dir(&other).unwrap();
    assert!(config.contains("\"format\": \"genomamba\""));
    std::fs::write(
        other.join("config.json"),
        config.replace("\"format\": \"genomamba\"", "\"format\": \"other\""),
    )
    .unwrap();
    std::fs::copy(m.join("model.safetensors"), other.join("model.safetensors")).unwrap();
    let o = run(&["embed", "-m", s(&other), s(&hash), "-o", s(&out)]);
    assert_bad(&o, "config.json has unknown format 'other'");
    assert!(
        !o.stderr.contains("tokenizer") && !o.stderr.contains("init"),
        "{}",
        o.stderr
    );
    // Bad usage: one bad flag value each, named in the error.
    for (flag, value, needle) in [
        ("--chunk-size", "0", "chunk-size"),
        // A negative number is the option's bad value, not an unknown flag (clap's tip to
        // write `-- -5` led nowhere).
        ("--chunk-size", "-5", "invalid value '-5' for '--chunk-size"),
        ("--device", "tpu", "device"),
        ("--precision", "f8", "precision"),
        ("--region", "chrI:9-3", "chrI:9-3"),
        (
            "--regions-bed",
            "/no/such/regions.bed",
            "/no/such/regions.bed",
        ),
    ] {
        let o = run(&["embed", "-m", s(&m), s(&hash), "-o", s(&out), flag, value]);
        assert_bad(&o, needle);
    }
    // Every subcommand knows --version (clap offered '--region' for it).
    for sub in ["embed", "train", "info"] {
        let v = ok(&[sub, "--version"]);
        assert_eq!(
            v,
            format!("genomamba {}\n", env!("CARGO_PKG_VERSION")),
            "{sub}"
        );
    }
    // What clap cannot parse is one line too, pointing at the command's help; numbers that
    // parse but cannot be used are refused with a limit.
    let unparsed: [(&[&str], &str); 6] = [
        (&["embed", "-m", s(&m), s(&hash)], "--output"),
        (&["embed", "--bogus"], "'--bogus'"),
        (
            &[
                "embed",
                "-m",
                s(&m),
                s(&hash),
                "-o",
                s(&out),
                "--threads",
                "x",
            ],
            "'x'",
        ),
        (&["embedd"], "'embedd'"),
        (
            &[
                "embed",
                "-m",
                s(&m),
                s(&hash),
                "-o",
                s(&out),
                "--threads",
                "5000",
            ],
            "--threads 5000 is more than 1024",
        ),
        (
            &["embed", "-m", s(&m), s(&hash), "-o", ""],
            "an output path is empty",
        ),
    ];
    for (args, needle) in unparsed {
        let o = run(args);
        assert_bad(&o, needle);
        // clap's tip to give an unknown flag "as a value" after `--` would make it a path.
        assert!(!o.stderr.contains("as a value"), "{}", o.stderr);
        if args[0] == "embed" && !needle.starts_with("--threads") && !needle.starts_with("an ") {
            assert_bad(&o, "see `genomamba embed --help`");
        }
    }
    // No subcommand: one line naming them (clap printed its whole help, 17 lines).
    assert_bad(
        &run(&[]),
        "no subcommand given; give one of embed, classify, annotate, train",
    );
    // A negative number with a signed exponent reaches its option (clap took `-1e-3` for
    // short flags and said "unexpected argument '-1'"); an option given twice is said to be,
    // not to conflict with itself.
    for (extra, needle) in [
        (
            ["--chunk-size", "-1e-3"].as_slice(),
            "invalid value '-1e-3' for '--chunk-size",
        ),
        (
            ["--pool", "mean", "--pool", "max"].as_slice(),
            "'--pool <POOL>' cannot be used multiple times",
        ),
    ] {
        let mut args = vec!["embed", "-m", s(&m), s(&hash), "-o", s(&out)];
        args.extend_from_slice(extra);
        assert_bad(&run(&args), needle);
    }
    // ... but after an on/off flag a number stays an argument: here an input named `-7`.
    let numbered = t.path().join("-7");
    std::fs::write(&numbered, ">n\nACGT\n").unwrap();
    let o: Out = gm()
        .current_dir(t.path())
        .args(["embed", "-m", s(&m), "-o", "-", "--quiet", "-7"])
        .output()
        .unwrap()
        .into();
    assert_eq!(o.code, 0, "{}", o.stderr);
    // Outputs that cannot be: per-position arrays to stdout, a file where none can be made,
    // a record id too long for a file name (said with its record, not with the temporary
    // file's path).
    assert_bad(
        &run(&["embed", "-m", s(&m), s(&hash), "--pool", "none", "-o", "-"]),
        "stdout (-o -) cannot be",
    );
    assert_bad(
        &run(&["embed", "-m", s(&m), s(&hash), "-o", "/proc/x.tsv"]),
        "cannot write /proc/x.tsv",
    );
    let long_id = t.path().join("long_id.fa");
    std::fs::write(&long_id, format!(">{}\nACGT\n", "A".repeat(300))).unwrap();
    let o = run(&[
        "embed",
        "-m",
        s(&m),
        s(&long_id),
        "--pool",
        "none",
        "-o",
        s(&t.path().join("long_arrays")),
    ]);
    assert_bad(&o, "the record id is too long for a file name (300 bytes");
    assert!(!o.stderr.contains("at path"), "{}", o.stderr);
    assert!(!t.path().join("long_arrays").exists());
    // A FASTQ indexed by samtools has no bases by region: said so, not "invalid index".
    let indexed_fq = t.path().join("indexed.fq");
    std::fs::write(&indexed_fq, "@r1\nACGT\n+\nIIII\n").unwrap();
    std::fs::write(t.path().join("indexed.fq.fai"), "r1\t4\t4\t4\t5\t11\n").unwrap();
    assert_bad(
        &run(&[
            "embed",
            "-m",
            s(&m),
            s(&indexed_fq),
            "--region",
            "r1:1-2",
            "-o",
            s(&out),
        ]),
        "as FASTQ (or SAM) does",
    );
    // Without an index, or gzip-compressed, it is named a FASTQ at once: the hints to index
    // or recompress it would only lead to this message.
    let bare_fq = t.path().join("bare.fq");
    std::fs::write(&bare_fq, "@r1\nACGT\n+\nIIII\n").unwrap();
    let gz_fq = t.path().join("reads.fq.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, b"@r1\nACGT\n+\nIIII\n").unwrap();
    std::fs::write(&gz_fq, gz.finish().unwrap()).unwrap();
    for fq in [&bare_fq, &gz_fq] {
        let o = run(&[
            "embed",
            "-m",
            s(&m),
            s(fq),
            "--region",
            "r1:1-2",
            "-o",
            s(&out),
        ]);
        assert_bad(
            &o,
            "starts with '@' as FASTQ (or SAM) does; regions (here r1:1-2) are read from FASTA only",
        );
        assert!(o.stderr.contains("samtools fasta"), "{}", o.stderr);
    }
    let o = run(&[
        "embed",
        "-m",
        s(&m),
        "-",
        "-o",
        s(&out),
        "--regions-bed",
        s(&bad_bed),
    ]);
    assert_bad(&o, "stdin");
    assert_bad(
        &run(&["embed", "-m", s(&m), "/no/such/file.fa", "-o", s(&out)]),
        "/no/such/file.fa",
    );
    // Outputs of the wrong kind, refused before any work (a file path that is a directory
    // used to fail only when the finished output was renamed over it, with exit code 1).
    let a_dir = t.path().join("a_dir");
    std::fs::create_dir(&a_dir).unwrap();
    let a_file = t.path().join("a_file");
    std::fs::write(&a_file, "keep").unwrap();
    let o = run(&["embed", "-m", s(&m), s(&hash), "-o", s(&a_dir)]);
    assert_bad(&o, "it is a directory");
    let o = embed_npy(&m, &hash, &a_file, &[]);
    assert_bad(&o, "exists and is not a directory");
    // Per-position arrays of two intervals with one BED name would go to one file: refused
    // before any work, naming both lines; nothing is made. Without --regions-bed the flag
    // is a usage error.
    let genes = shared().join("genomes/yeast_chrI_II.genes.bed");
    let arrays = t.path().join("arrays");
    let o = run(&[
        "embed",
        "-m",
        s(&m),
        s(&yeast),
        "--pool",
        "none",
        "-o",
        s(&arrays),
        "--regions-bed",
        s(&genes),
        "--bed-names",
    ]);
    assert_bad(&o, "line 1 (gene) and ");
    assert_bad(&o, "line 2 (gene) would both be written to gene.npy");
    assert!(!arrays.exists());
    for flag in ["--bed-names", "--bed-strand"] {
        assert_bad(
            &run(&["embed", "-m", s(&m), s(&yeast), "-o", s(&out), flag]),
            "no --regions-bed was given",
        );
    }
    // --bed-strand: a column 6 that is not a strand is refused with its line.
    let odd_strand = t.path().join("odd_strand.bed");
    std::fs::write(
        &odd_strand,
        "chrI\t0\t100\tx\t0\t+\nchrI\t5\t90\ty\t0\tminus\n",
    )
    .unwrap();
    let o = run(&[
        "embed",
        "-m",
        s(&m),
        s(&yeast),
        "-o",
        s(&out),
        "--regions-bed",
        s(&odd_strand),
        "--bed-strand",
    ]);
    assert_bad(&o, "column 6 (strand) is 'minus'");
    assert_bad(&o, "line 2");
    assert!(!out.exists());
    assert_bad(
        &run(&["init", "-o", s(&a_file)]),
        "exists and is not a directory",
    );
    assert_eq!(std::fs::read_to_string(&a_file).unwrap(), "keep");
    // Sizes that cannot make a model: refused before anything is allocated or written.
    let huge = t.path().join("huge");
    for (flags, needle) in [
        (&["--d-model", "0"][..], "d_model must be at least 1"),
        (&["--d-model", "100000000"], "250000046100000000 parameters"),
        (&["--n-layer", "100000000"], "n_layer must be at most 1024"),
        (&["--n-layer", "1025"], "n_layer must be at most 1024"),
        // Sizes whose products overflow 64 (and 128) bits: once counted as a few dozen
        // parameters, a model with no channels that panicked when run.
        (
            &[
                "--d-model",
                "2",
                "--expand",
                "9223372036854775808",
                "--d-conv",
                "18446744073709551602",
                "--dt-rank",
                "1",
            ],
            "expand 9223372036854775808 is larger than the 17179869184 parameters supported",
        ),
        (
            &["--d-state", "9223372036854775808", "--dt-rank", "1"],
            "d_state 9223372036854775808 is larger than",
        ),
    ] {
        let mut args = vec!["init", "-o", s(&huge)];
        args.extend(flags);
        assert_bad(&run(&args), needle);
        assert!(!huge.exists());
    }
    // Sizes within the limit that no memory here holds (about 280 GiB to create) are refused
    // before allocating: the OOM killer ended such a run without a message.
    let available_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb >> 20);
    if available_gib.is_some_and(|g| g < 200) {
        let o = run(&[
            "init",
            "-o",
            s(&huge),
            "--d-model",
            "16384",
            "--n-layer",
            "10",
        ]);
        assert_bad(&o, "parameters) needs about 281.6 GiB of memory to create");
        assert!(!huge.exists());
    } else {
        eprintln!("skipped the memory check of init: {available_gib:?} GiB available");
    }
    assert_eq!(std::fs::read_dir(&a_dir).unwrap().count(), 0);
    // An output that is an input (by another spelling too) would replace it when renamed
    // into place; two outputs naming one file would overwrite each other.
    let input = t.path().join("in.fa");
    std::fs::write(&input, ">a\nACGT\n").unwrap();
    let other_spelling = t.path().join("a_dir/../in.fa");
    let o = run(&["embed", "-m", s(&m), s(&input), "-o", s(&other_spelling)]);
    assert_bad(&o, "is the input");
    assert_eq!(std::fs::read_to_string(&input).unwrap(), ">a\nACGT\n");
    let pos = init(
        t.path(),
        "pos",
        &["--head", "position", "--labels", "background,feature"],
    );
    let twice = t.path().join("twice.txt");
    let o = run(&[
        "annotate",
        "-m",
        s(&pos),
        s(&input),
        "--bed",
        s(&twice),
        "--tsv",
        s(&twice),
    ]);
    assert_bad(&o, "--bed and --tsv both write");
    assert!(!twice.exists());
    // annotate: decimals past what an f32 holds; a record with no name has no chromosome
    // for its rows (refused, naming its number; nothing written).
    let o = run(&[
        "annotate",
        "-m",
        s(&pos),
        s(&input),
        "--bedgraph",
        s(&twice),
        "--digits",
        "65536",
    ]);
    assert_bad(&o, "--digits 65536");
    let o = run(&[
        "annotate",
        "-m",
        s(&pos),
        s(&input),
        "--bed",
        s(&twice),
        "--track",
        "feature",
    ]);
    assert_bad(&o, "no --bedgraph was given");
    let nameless = t.path().join("nameless.fa");
    std::fs::write(&nameless, ">\nACGT\n").unwrap();
    let o = run(&["annotate", "-m", s(&pos), s(&nameless), "--bed", s(&twice)]);
    assert_bad(&o, "(record #1)");
    assert!(!twice.exists());
    // Records named like BED header lines are written, with one warning for the run.
    let hashed = t.path().join("hashed.fa");
    std::fs::write(&hashed, ">#c\nACGT\n>track\nACGT\n>c\nACGT\n").unwrap();
    let o = run(&[
        "annotate",
        "-m",
        s(&pos),
        s(&hashed),
        "--bedgraph",
        s(&twice),
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stderr.lines().count(), 1, "{}", o.stderr);
    assert!(
        o.stderr
            .contains("record '#c' starts like a BED header line"),
        "{}",
        o.stderr
    );
    let chroms: Vec<String> = std::fs::read_to_string(&twice)
        .unwrap()
        .lines()
        .map(|l| l.split('\t').next().unwrap().to_string())
        .collect();
    assert_eq!(chroms.first().map(String::as_str), Some("#c"));
    assert!(chroms.iter().any(|c| c == "track") && chroms.iter().any(|c| c == "c"));
    std::fs::remove_file(&twice).unwrap();
    let o = run(&["embed", "-m", s(&m), "-", "-", "-o", s(&out)]);
    assert_bad(&o, "stdin (-) is given more than once");
}

#[test]
fn outputs_follow_links_stream_into_pipes_and_spare_every_input() {
    use std::io::{BufRead, Read};
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    let t = tempfile::tempdir().unwrap();
    let m = init(t.path(), "m", &[]);
    let pos = init(t.path(), "pos", &["--head", "position", "--labels", "bg,x"]);
    let fa = t.path().join("in.fa");
    std::fs::write(&fa, ">c\nACGTACGTTTGACCAGTACG\n").unwrap();
    let faidx = std::process::Command::new("samtools")
        .arg("faidx")
        .arg(&fa)
        .status();
    assert!(faidx.unwrap().success(), "samtools faidx");
    let want = ok(&["embed", "-m", s(&m), s(&fa), "-o", "-"]);
    // A link to a file: the file gets the output and the link stays a link.
    let target = t.path().join("target.tsv");
    std::fs::write(&target, "old").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
    let link = t.path().join("link.tsv");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    ok(&["embed", "-m", s(&m), s(&fa), "-o", s(&link)]);
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), want);
    // ... keeping the replaced file's permissions.
    let mode = std::fs::metadata(&target).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o640);
    // A read-only file is refused before any work, through the link too (named with the
    // file it leads to), and stays as it was.
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o444)).unwrap();
    let through = format!(
        "cannot write {} (a link to {}): it exists and is read-only",
        s(&link),
        std::fs::canonicalize(&target).unwrap().display()
    );
    for (dest, said) in [(&target, "it exists and is read-only"), (&link, &through)] {
        let o = run(&["embed", "-m", s(&m), s(&fa), "-o", s(dest), "--pool", "max"]);
        assert_bad(&o, said);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), want);
    }
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
    // In a directory of per-record arrays, a read-only one is found before any file is
    // replaced (found when its record came, the files before it would already be new).
    let npy = t.path().join("arrays");
    let o = embed_npy(&m, &fa, &npy, &[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let c_npy = npy.join("c.npy");
    let before = std::fs::read(&c_npy).unwrap();
    let locked = npy.join("other.npy");
    std::fs::write(&locked, b"kept").unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o444)).unwrap();
    let other = init(t.path(), "other", &["--dt-rank", "2"]);
    let o = embed_npy(&other, &fa, &npy, &[]);
    assert_bad(&o, "it holds other.npy, which is read-only;");
    assert_eq!(std::fs::read(&c_npy).unwrap(), before);
    // With regions, the files their records write are known: only those are checked.
    let region = ["--region", "c:2-9"];
    let o = embed_npy(&other, &fa, &npy, &region);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let region_npy: Vec<_> = std::fs::read_dir(&npy)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p != &c_npy && p != &locked)
        .collect();
    assert_eq!(region_npy.len(), 1, "{region_npy:?}");
    std::fs::set_permissions(&region_npy[0], std::fs::Permissions::from_mode(0o444)).unwrap();
    let o = embed_npy(&m, &fa, &npy, &region);
    assert_bad(&o, "which is read-only; its record would stop the run");
    // A link to a file not made yet makes it; two outputs on one file through a link clash.
    let dangling = t.path().join("dangling.tsv");
    std::os::unix::fs::symlink(t.path().join("later.tsv"), &dangling).unwrap();
    ok(&["embed", "-m", s(&m), s(&fa), "-o", s(&dangling)]);
    assert_eq!(
        std::fs::read_to_string(t.path().join("later.tsv")).unwrap(),
        want
    );
    let bed = t.path().join("a.bed");
    let bed_link = t.path().join("a_link.bed");
    std::os::unix::fs::symlink(&bed, &bed_link).unwrap();
    let o = run(&[
        "annotate",
        "-m",
        s(&pos),
        s(&fa),
        "--bed",
        s(&bed),
        "--tsv",
        s(&bed_link),
    ]);
    assert_bad(&o, "--bed and --tsv both write");
    // A new file gets 0666 less the umask, as any program's output does.
    let private = t.path().join("private.tsv");
    let mut cmd = gm();
    cmd.args(["embed", "-m", s(&m), s(&fa), "-o", s(&private)]);
    // SAFETY: umask is async-signal-safe and touches only the child's own state.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o077);
            Ok(())
        });
    }
    assert!(cmd.status().unwrap().success());
    let mode = std::fs::metadata(&private).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // A named pipe is written into, not replaced by a file.
    let fifo = t.path().join("fifo");
    let c = std::ffi::CString::new(s(&fifo)).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
    };
    ok(&["embed", "-m", s(&m), s(&fa), "-o", s(&fifo)]);
    assert_eq!(reader.join().unwrap(), want);
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    // Files the command reads besides the sequences are inputs too.
    let regions = t.path().join("r.bed");
    std::fs::write(&regions, "c\t0\t8\n").unwrap();
    let weights = m.join("model.safetensors");
    let fai = format!("{}.fai", s(&fa));
    for (args, input) in [
        (
            vec![
                "annotate",
                "-m",
                s(&pos),
                s(&fa),
                "--regions-bed",
                s(&regions),
                "--bed",
                s(&regions),
            ],
            s(&regions).to_string(),
        ),
        (
            vec![
                "embed",
                "-m",
                s(&m),
                s(&fa),
                "--region",
                "c:1-5",
                "-o",
                &fai,
            ],
            fai.clone(),
        ),
        (
            vec!["embed", "-m", s(&m), s(&fa), "-o", s(&weights)],
            s(&weights).to_string(),
        ),
    ] {
        let before = std::fs::read(&input).unwrap();
        assert_bad(&run(&args), "the output would replace it");
        assert_eq!(std::fs::read(&input).unwrap(), before, "{input}");
    }
    // Outputs that cannot be made are refused before any work, with exit code 2.
    let file = t.path().join("a_file");
    std::fs::write(&file, "").unwrap();
    let sub = file.join("sub");
    let o = embed_npy(&m, &fa, &sub, &[]);
    assert_bad(&o, "is not a directory");
    let o = run(&["init", "-o", s(&sub)]);
    assert_bad(&o, "is not a directory");
    let slash = format!("{}/", s(&t.path().join("no_dir")));
    assert_bad(
        &run(&["embed", "-m", s(&m), s(&fa), "-o", &slash]),
        "ends with '/'",
    );
    // A closed stdout ends what goes there, not the outputs written to files.
    let long = t.path().join("long.fa");
    let bases: String = (0..200_000u64)
        .map(|i| b"ACGT"[((i * 2_654_435_761) >> 7) as usize % 4] as char)
        .collect();
    std::fs::write(&long, format!(">c\n{bases}\n")).unwrap();
    let tsv = t.path().join("per_base.tsv");
    let mut child = gm()
        .args([
            "annotate",
            "-m",
            s(&pos),
            s(&long),
            "--bedgraph",
            "-",
            "--digits",
            "9",
        ])
        .args(["--tsv", s(&tsv), "--quiet"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut first).unwrap();
    assert!(first.starts_with("c\t0\t"), "{first}");
    drop(out);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut text = String::new();
    std::fs::File::open(&tsv)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text.lines().count(), 200_001);
}

#[test]
fn pipes_are_read_once_and_npy_files_spare_inputs() {
    let t = tempfile::tempdir().unwrap();
    let m = init(t.path(), "m", &[]);
    let fa = t.path().join("in.fa");
    std::fs::write(&fa, ">a\nACGTACGTTTGACCAG\n>b\nGGGTACCAGT\n").unwrap();
    let want = ok(&["embed", "-m", s(&m), s(&fa), "-o", "-"]);
    // gzip and bgzip data through a named pipe: read once (a second open would wait for a
    // writer that is gone, or take bytes from the reader).
    let gz = t.path().join("in.fa.gz");
    let bgz = t.path().join("in.fa.bgz");
    use std::io::Write;
    let plain = std::fs::read(&fa).unwrap();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(&plain).unwrap();
    std::fs::write(&gz, gzip.finish().unwrap()).unwrap();
    let mut bgzip = noodles::bgzf::io::Writer::new(Vec::new());
    bgzip.write_all(&plain).unwrap();
    std::fs::write(&bgz, bgzip.finish().unwrap()).unwrap();
    for (i, source) in [&gz, &bgz].into_iter().enumerate() {
        let fifo = t.path().join(format!("fifo{i}"));
        let c = std::ffi::CString::new(s(&fifo)).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let writer = {
            let (fifo, bytes) = (fifo.clone(), std::fs::read(source).unwrap());
            std::thread::spawn(move || std::fs::write(fifo, bytes))
        };
        assert_eq!(ok(&["embed", "-m", s(&m), s(&fifo), "-o", "-"]), want);
        writer.join().unwrap().unwrap();
    }
    // A per-position array never replaces an input, by its name or through a link.
    let dir = t.path().join("arrays");
    std::fs::create_dir(&dir).unwrap();
    let named = dir.join("a.npy");
    std::fs::write(&named, ">a\nACGT\n").unwrap();
    let o = embed_npy(&m, &named, &dir, &[]);
    assert_bad(&o, "the output would replace it");
    assert_eq!(std::fs::read_to_string(&named).unwrap(), ">a\nACGT\n");
    let copy = t.path().join("copy.fa");
    std::fs::copy(&fa, &copy).unwrap();
    let linked = t.path().join("linked");
    std::fs::create_dir(&linked).unwrap();
    std::os::unix::fs::symlink(&copy, linked.join("b.npy")).unwrap();
    let o = embed_npy(&m, &copy, &linked, &[]);
    assert_bad(&o, "is the input");
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&fa).unwrap());
    // Two records for one file name: both are named, with their numbers (and files).
    let clash = t.path().join("clash.fa");
    std::fs::write(&clash, ">x/y\nACGT\n>x_y\nACGA\n").unwrap();
    let o = embed_npy(&m, &clash, &t.path().join("c"), &[]);
    assert_bad(
        &o,
        "records x/y (#1) and x_y (#2) both map to the output file x_y.npy",
    );
    // Indexed, they are found before any array is written.
    let faidx = Command::new("samtools").arg("faidx").arg(&clash).status();
    assert!(faidx.unwrap().success());
    let early = t.path().join("early");
    let o = embed_npy(&m, &clash, &early, &[]);
    assert_bad(
        &o,
        "records x/y and x_y both map to the output file x_y.npy",
    );
    assert!(!early.exists());
    // An index that no longer fits the file refuses nothing: the file is read as it is.
    std::fs::write(&clash, ">x/y\nACGT\n>z\nACGA\n").unwrap();
    // (Dated before its index, as a copy that keeps times can leave it.)
    let touched = Command::new("touch")
        .args(["-d", "2020-01-01"])
        .arg(&clash)
        .status();
    assert!(touched.unwrap().success());
    let o = embed_npy(&m, &clash, &early, &[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    std::fs::remove_dir_all(&early).unwrap();
    // An input given twice would write each of its files twice.
    let o = run(&[
        "embed",
        "-m",
        s(&m),
        s(&clash),
        s(&clash),
        "--pool",
        "none",
        "-o",
        s(&early),
    ]);
    assert_bad(&o, &format!("{} is given twice", s(&clash)));
    assert!(!early.exists());
    let o = embed_npy(&m, &clash, &early, &["--region", "z", s(&clash)]);
    assert_bad(&o, &format!("{} is given twice", s(&clash)));
    assert!(!early.exists());
    // Across files, the files are named.
    let one = t.path().join("one.fa");
    let two = t.path().join("two.fa");
    std::fs::write(&one, ">a\nACGT\n").unwrap();
    std::fs::write(&two, ">b\nACGT\n>a\nACGA\n").unwrap();
    for file in [&one, &two] {
        let faidx = Command::new("samtools").arg("faidx").arg(file).status();
        assert!(faidx.unwrap().success());
    }
    let both_a_refused = || {
        let o = run(&[
            "embed",
            "-m",
            s(&m),
            s(&one),
            s(&two),
            "--pool",
            "none",
            "-o",
            s(&early),
        ]);
        assert_bad(
            &o,
            &format!(
                "{}: records a of {} and a of {} both map to the output file a.npy",
                s(&two),
                s(&one),
                s(&two)
            ),
        );
        assert!(!early.exists());
    };
    both_a_refused();
    // A pair that a file no longer holds where its index says is left to the run; a later
    // pair that both hold is still refused up front.
    std::fs::write(&one, ">b\nACGT\n>a\nACGT\n").unwrap();
    let faidx = Command::new("samtools").arg("faidx").arg(&one).status();
    assert!(faidx.unwrap().success());
    std::fs::write(&one, ">B\nACGT\n>a\nACGT\n").unwrap();
    let touched = Command::new("touch")
        .args(["-d", "2020-01-01"])
        .arg(&one)
        .status();
    assert!(touched.unwrap().success());
    both_a_refused();
    // A directory name too long is refused before any work.
    let long = t.path().join("d".repeat(300));
    let o = embed_npy(&m, &fa, &long, &[]);
    assert_bad(&o, "cannot make");
    // A BED with a byte-order mark reads as without one.
    let bed = t.path().join("bom.bed");
    std::fs::write(&bed, "\u{feff}a\t2\t10\n").unwrap();
    let plain = t.path().join("plain.bed");
    std::fs::write(&plain, "a\t2\t10\n").unwrap();
    Command::new("samtools")
        .arg("faidx")
        .arg(&fa)
        .status()
        .unwrap();
    let region = |b: &Path| {
        ok(&[
            "embed",
            "-m",
            s(&m),
            s(&fa),
            "--regions-bed",
            s(b),
            "-o",
            "-",
        ])
    };
    assert_eq!(region(&bed), region(&plain));
    // Annotate's options of one output are refused without that output.
    let pos = init(t.path(), "pos", &["--head", "position", "--labels", "bg,x"]);
    let out = t.path().join("o.bg");
    let o = run(&[
        "annotate",
        "-m",
        s(&pos),
        s(&fa),
        "--bedgraph",
        s(&out),
        "--threshold",
        "0.7",
    ]);
    assert_bad(&o, "no --bed was given");
    let o = run(&[
        "annotate",
        "-m",
        s(&pos),
        s(&fa),
        "--bed",
        s(&out),
        "--digits",
        "2",
    ]);
    assert_bad(&o, "--digits sets the decimals of the bedGraph and the TSV");
}

#[test]
fn hand_edited_models_are_refused_on_load() {
    let t = tempfile::tempdir().unwrap();
    let fa = t.path().join("in.fa");
    std::fs::write(&fa, ">a\nACGTACGT\n").unwrap();
    let edit = |name: &str, change: &dyn Fn(&mut serde_json::Value)| -> PathBuf {
        let m = init(t.path(), name, &["--head", "sequence", "--labels", "a,b"]);
        let cfg = m.join("config.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
        change(&mut v);
        std::fs::write(&cfg, v.to_string()).unwrap();
        m
    };
    // Class names as init and train take them: two or more, distinct, no whitespace.
    for (name, labels, needle) in [
        (
            "tab",
            serde_json::json!(["a\tb", "c"]),
            "bad or repeated class name",
        ),
        (
            "same",
            serde_json::json!(["a", "a"]),
            "bad or repeated class name 'a'",
        ),
        (
            "none",
            serde_json::json!([]),
            "gives its head 0 class name(s)",
        ),
    ] {
        let m = edit(name, &|v| v["head"]["labels"] = labels.clone());
        for cmd in [
            vec!["classify", "-m", s(&m), s(&fa), "-o", "-"],
            vec!["info", "-m", s(&m)],
        ] {
            let o = run(&cmd);
            assert_bad(&o, needle);
            assert!(o.stdout.is_empty(), "{}", o.stdout);
        }
    }
    // A layer count past the limit is refused before anything is sized from it.
    let m = edit("deep", &|v| {
        v["architecture"]["n_layer"] = 1_000_000_000.into()
    });
    assert_bad(&run(&["info", "-m", s(&m)]), "n_layer must be at most 1024");
    let m = edit("wide", &|v| {
        v["architecture"]["expand"] = 9_223_372_036_854_775_808u64.into();
        v["architecture"]["d_conv"] = 18_446_744_073_709_551_602u64.into();
    });
    assert_bad(
        &run(&["info", "-m", s(&m)]),
        "expand 9223372036854775808 is larger",
    );
    // A normalisation epsilon past 1 makes every output the same.
    let m = edit("eps", &|v| v["architecture"]["norm_eps"] = 1e30.into());
    assert_bad(
        &run(&["info", "-m", s(&m)]),
        "norm_eps must be a positive number of at most 1",
    );
    // A tensor under two names (with and without `backbone.`) would make the result depend
    // on which one a run happened to take.
    let m = init(t.path(), "dup", &[]);
    let path = m.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> = st.tensors();
    let norm = st.tensor("norm_f.weight").unwrap();
    tensors.push(("backbone.norm_f.weight".into(), norm));
    let doubled = safetensors::serialize(tensors, None).unwrap();
    std::fs::write(&path, doubled).unwrap();
    let o = run(&["embed", "-m", s(&m), s(&fa), "-o", "-"]);
    assert_bad(&o, "tensor 'norm_f.weight' is in");
    assert_bad(&o, "twice");
    // A NaN or an infinity in the weights would give NaN for every output, with exit 0.
    for (bad, shown) in [(f32::NAN, "NaN"), (f32::INFINITY, "inf")] {
        let m = init(t.path(), &format!("nan_{shown}"), &[]);
        replace_final_norm(&m, safetensors::Dtype::F32, |data| {
            let mut values = data.to_vec();
            values[4 * 3..4 * 4].copy_from_slice(&bad.to_le_bytes());
            values
        });
        let o = run(&["embed", "-m", s(&m), s(&fa), "-o", "-"]);
        assert_bad(&o, "tensor 'norm_f.weight' of");
        assert_bad(&o, &format!("holds {shown} at element 3"));
    }
    // An f64 weight past f32's range is named as itself, not as the infinity it becomes.
    let m = init(t.path(), "f64_range", &[]);
    replace_final_norm(&m, safetensors::Dtype::F64, |data| {
        let mut wide: Vec<u8> = data
            .chunks_exact(4)
            .flat_map(|b| (f32::from_le_bytes(b.try_into().unwrap()) as f64).to_le_bytes())
            .collect();
        wide[8 * 3..8 * 4].copy_from_slice(&1e300f64.to_le_bytes());
        wide
    });
    let o = run(&["embed", "-m", s(&m), s(&fa), "-o", "-"]);
    assert_bad(
        &o,
        "holds 1e300 at element 3, outside the range of f32 in which the model computes",
    );
    // A tensor the architecture does not describe (a bias of the final norm, a head the
    // config lacks) is refused; a causal-LM checkpoint's `lm_head.*` is ignored.
    let plain = init(t.path(), "plain", &[]);
    let want = ok(&["embed", "-m", s(&plain), s(&fa), "-o", "-"]);
    for (name, extra, refused) in [
        ("bias", "norm_f.bias", true),
        ("headless", "head.weight", true),
        ("lm", "lm_head.weight", false),
    ] {
        let m = init(t.path(), name, &[]);
        let path = m.join("model.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> = st.tensors();
        tensors.push((extra.into(), st.tensor("norm_f.weight").unwrap()));
        std::fs::write(&path, safetensors::serialize(tensors, None).unwrap()).unwrap();
        let o = run(&["embed", "-m", s(&m), s(&fa), "-o", "-"]);
        if refused {
            assert_bad(
                &o,
                &format!("weights hold tensor '{extra}', which config.json does not describe"),
            );
        } else {
            assert_eq!(o.code, 0, "{}", o.stderr);
            assert_eq!(o.stdout, want);
        }
    }
    // `bidirectional` applies to per-position heads only; a byte-order mark is not JSON.
    let m = edit("bi", &|v| v["head"]["bidirectional"] = true.into());
    assert_bad(
        &run(&["info", "-m", s(&m)]),
        "head.bidirectional on a sequence head",
    );
    let m = init(t.path(), "bom", &[]);
    let cfg = m.join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("\u{feff}{text}")).unwrap();
    assert_eq!(ok(&["embed", "-m", s(&m), s(&fa), "-o", "-"]), want);
    // Class names with control characters are refused like those with whitespace.
    let o = run(&[
        "init",
        "-o",
        s(&t.path().join("ctl")),
        "--head",
        "sequence",
        "--labels",
        "a\u{1}b,c",
    ]);
    assert_bad(&o, "bad or repeated class name");
}

#[test]
fn quoted_text_stays_one_line_and_streams_are_refused_where_they_cannot_work() {
    let t = tempfile::tempdir().unwrap();
    let m = init(t.path(), "m", &["--head", "sequence", "--labels", "a,b"]);
    let fa = t.path().join("in.fa");
    std::fs::write(&fa, ">c\nACGTACGT\n").unwrap();
    // A line break or an escape in a quoted name is printed escaped.
    let o = run(&["classify", "-m", s(&m), "-o", "-", "no\nsuch\u{1b}.fa"]);
    assert_bad(&o, "no\\nsuch\\u{1b}.fa");
    // Lines ending in CR alone would read as one header and no sequence.
    let mac = t.path().join("mac.fa");
    std::fs::write(&mac, ">a\rACGTACGT\r>b\rGGCC\r").unwrap();
    let out = t.path().join("o.tsv");
    let o = run(&["classify", "-m", s(&m), "-o", s(&out), s(&mac)]);
    assert_bad(&o, "holds a carriage return (CR)");
    assert!(!out.exists());
    // An id that is not UTF-8 is refused (written with U+FFFD, it named no record of the
    // FASTA); a description that is not UTF-8 is no one's business.
    for (bytes, ext) in [
        (&b">ok\nACGT\n>ab\xffc d\nACGT\n"[..], "fa"),
        (&b"@ab\xffc\nACGT\n+\nIIII\n"[..], "fq"),
    ] {
        let p = t.path().join(format!("latin.{ext}"));
        std::fs::write(&p, bytes).unwrap();
        let o = run(&["classify", "-m", s(&m), "-o", s(&out), s(&p)]);
        assert_bad(&o, "the id of record ");
        assert_bad(&o, " is not UTF-8 text (byte 0xff after 'ab')");
        assert!(!out.exists());
    }
    // At its start, and after a long id (shortened to its last 40 characters).
    let mut bytes = b">".to_vec();
    bytes.extend("a".repeat(3000).as_bytes());
    bytes.extend(b"\xff\nACGT\n");
    let shortened = format!("(byte 0xff after '...{}')", "a".repeat(40));
    for (bytes, needle) in [
        (b">\xffab\nACGT\n".to_vec(), "(byte 0xff at its start)"),
        (bytes, shortened.as_str()),
    ] {
        let p = t.path().join("latin_more.fa");
        std::fs::write(&p, bytes).unwrap();
        let o = run(&["classify", "-m", s(&m), "-o", s(&out), s(&p)]);
        assert_bad(&o, needle);
        assert!(o.stderr.len() < 300, "{}", o.stderr);
    }
    // ... and where regions are read through an index that lists such a name, the index is
    // not said to be out of date (re-indexing would keep the name).
    let p = t.path().join("indexed.fa");
    std::fs::write(&p, b">ok1\nACGTACGTAC\n>b\xffd\nACGTACGT\n").unwrap();
    let mut fai = p.as_os_str().to_owned();
    fai.push(".fai");
    std::fs::write(&fai, b"ok1\t10\t5\t10\t11\nb\xffd\t8\t21\t8\t9\n").unwrap();
    let o = run(&[
        "classify",
        "-m",
        s(&m),
        "-o",
        s(&out),
        s(&p),
        "--region",
        "ok1:1-5",
    ]);
    assert_bad(
        &o,
        "indexed.fa.fai: the sequence name on line 2 is not UTF-8 text",
    );
    assert!(!out.exists());
    let p = t.path().join("desc.fa");
    std::fs::write(&p, b">c caf\xe9\nACGTACGT\n").unwrap();
    assert_eq!(
        ok(&["classify", "-m", s(&m), "-o", "-", s(&p)]),
        ok(&["classify", "-m", s(&m), "-o", "-", s(&fa)])
    );
    // CR before LF is fine.
    std::fs::write(&mac, ">c\r\nACGT\r\nACGT\r\n").unwrap();
    assert_eq!(
        ok(&["classify", "-m", s(&m), "-o", "-", s(&mac)]),
        ok(&["classify", "-m", s(&m), "-o", "-", s(&fa)])
    );
    // Stdin under a second name is refused before anything is written.
    let piped = |args: &[&str]| {
        let mut c = gm()
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        let mut stdin = c.stdin.take().unwrap();
        let _ = stdin.write_all(b">c\nACGTACGT\n");
        drop(stdin);
        Out::from(c.wait_with_output().unwrap())
    };
    let o = piped(&["classify", "-m", s(&m), "-o", "-", "-", "/dev/stdin"]);
    assert_bad(&o, "stdin and /dev/stdin are the same input");
    assert!(o.stdout.is_empty(), "{}", o.stdout);
    // Stdin redirected from a file: in either order, with the file's own path or another
    // name of stdin.
    let redirected = |args: &[&str]| {
        Out::from(
            gm().args(args)
                .stdin(std::fs::File::open(&fa).unwrap())
                .output()
                .unwrap(),
        )
    };
    for (inputs, said) in [
        (
            [s(&fa), "-"],
            format!("{} is also stdin (-), which is redirected from it", s(&fa)),
        ),
        (
            ["-", s(&fa)],
            format!("{} is also stdin (-), which is redirected from it", s(&fa)),
        ),
        (
            ["/dev/stdin", "-"],
            "/dev/stdin and stdin are the same input".to_string(),
        ),
    ] {
        let o = redirected(&[&["classify", "-m", s(&m), "-o", "-"], &inputs[..]].concat());
        assert_bad(&o, &said);
        assert!(o.stdout.is_empty(), "{}", o.stdout);
    }
    // A region cannot be read from a pipe, which has no offsets.
    Command::new("samtools")
        .arg("faidx")
        .arg(&fa)
        .status()
        .unwrap();
    let o = piped(&[
        "classify",
        "-m",
        s(&m),
        "-o",
        "-",
        "--region",
        "c:1-4",
        "/dev/stdin",
    ]);
    assert_bad(
        &o,
        "is not a regular file (a pipe or a device?); --region c:1-4",
    );
    assert_eq!(o.code, 2);
}

/// Runs `genomamba ARGS` in `dir` under an address-space limit of `kib` (`ulimit -v`).
fn run_limited(dir: &Path, kib: u64, args: &[&str]) -> Out {
    let bin = assert_cmd::cargo::cargo_bin("genomamba");
    Command::new("sh")
        .current_dir(dir)
        .arg("-c")
        .arg(format!("ulimit -v {kib} && exec \"$0\" \"$@\""))
        .arg(&bin)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
        .into()
}

#[test]
fn running_out_of_memory_is_one_line_and_leaves_nothing_behind() {
    // Under an 8 GiB address-space limit, the allocations of a chunk of 3 M bases at d_model
    // 1,024 (12 GiB for the embeddings alone) and of a d_model of 45,000 (32 GiB for one
    // projection) fail at once, without touching memory.
    const LIMIT: u64 = 8 << 20;
    let t = tempfile::tempdir().unwrap();
    let m = t.path().join("m");
    let o = run_limited(
        t.path(),
        LIMIT,
        &[
            "init",
            "-o",
            "m",
            "--d-model",
            "1024",
            "--n-layer",
            "1",
            "--head",
            "position",
            "--labels",
            "bg,x",
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let small = t.path().join("small.fa");
    std::fs::write(&small, ">a\nACGTACGTAC\n").unwrap();
    let big = t.path().join("big.fa");
    let mut seq = String::from(">big\n");
    seq.push_str(&"ACGTTGCA".repeat(3_000_000 / 8));
    seq.push('\n');
    std::fs::write(&big, seq).unwrap();
    // The same limit runs a small record.
    let annotate = |outputs: &[&str], more: &[&str]| {
        let mut args = vec!["annotate", "-m", "m", "--threads", "1", "-q"];
        args.extend_from_slice(outputs);
        args.extend_from_slice(more);
        run_limited(t.path(), LIMIT, &args)
    };
    let o = annotate(&["--bed", "ok.bed"], &["small.fa"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let before = names(t.path());
    let o = annotate(
        &["--bed", "o.bed", "--tsv", "o.tsv"],
        &["--chunk-size", "3000000", "big.fa"],
    );
    assert_bad(&o, "the machine ran out of memory (an allocation of");
    assert_bad(&o, "use a smaller --chunk-size");
    assert_eq!(names(t.path()), before, "temporary outputs left behind");
    // A model too large for memory is refused before anything is allocated (the limit is
    // what is available); no directory is left either.
    let o = run_limited(
        t.path(),
        LIMIT,
        &[
            "init",
            "-o",
            "a/b/huge",
            "--d-model",
            "45000",
            "--n-layer",
            "1",
        ],
    );
    assert_bad(
        &o,
        "a model of these sizes (12662100000 parameters) needs about 212.3 GiB of memory to create, and ",
    );
    assert!(!t.path().join("a").exists());
    assert!(m.join("config.json").is_file());
}

/// The error `--device cuda:99` must give on this build and machine: without the `cuda`
/// feature, that the build has no GPU support; with it, the first piece missing here (the
/// driver on a machine without one, the GPU's number on a machine with fewer GPUs).
fn missing_gpu_needle() -> String {
    #[cfg(feature = "cuda")]
    {
        match genomamba::device::probe_cuda().verdict(99) {
            Err(genomamba::Error::Usage { what, .. }) => what,
            other => panic!("cuda:99 should be missing here: {other:?}"),
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        "built without GPU support".to_string()
    }
}

#[test]
fn a_gpu_that_is_not_there_is_one_line_and_exit_2() {
    let t = tempfile::tempdir().unwrap();
    let m = init(t.path(), "m", &[]);
    let peaks = root().join("data/peaks.fa");
    let out = t.path().join("out.tsv");
    let needle = missing_gpu_needle();
    let o = run(&[
        "embed",
        "-m",
        s(&m),
        s(&peaks),
        "-o",
        s(&out),
        "--device",
        "cuda:99",
    ]);
    assert_bad(&o, &needle);
    assert!(!out.exists());
    let trained = t.path().join("trained");
    let a = format!("oct4={}", s(&root().join("data/peaks_oct4.fa")));
    let b = format!("mafk={}", s(&root().join("data/peaks_mafk.fa")));
    let o = run(&[
        "train",
        "-o",
        s(&trained),
        "--class",
        &a,
        "--class",
        &b,
        "--device",
        "cuda:99",
    ]);
    assert_bad(&o, &needle);
    assert!(!trained.exists());
}

#[test]
fn closed_stdout_pipe_exits_quietly() {
    let t = tempfile::tempdir().unwrap();
    let m = init(t.path(), "m", &[]);
    let bin = assert_cmd::cargo::cargo_bin("genomamba");
    let script = format!(
        "set -o pipefail; {} embed -m {} {} -o - --batch-size 1 | head -n 1 >/dev/null",
        s(&bin),
        s(&m),
        s(&root().join("data/peaks.fa"))
    );
    let o = Command::new("bash").args(["-c", &script]).output().unwrap();
    assert!(
        o.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.stderr.is_empty(),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn info_describes_the_model() {
    let t = tempfile::tempdir().unwrap();
    let m = init(t.path(), "m", &["--head", "sequence", "--labels", "a,b,c"]);
    let text = ok(&["info", "-m", s(&m)]);
    assert!(text.contains("d_model\t16"));
    assert!(text.contains("n_layer\t2"));
    assert!(text.contains("labels\ta,b,c"));
    assert!(text.contains("head\tsequence"));
    // HF checkpoints load too.
    let hf = root().join("tests/fixtures/hf/d24_l3_n8_e1_k3_bias");
    let text = ok(&["info", "-m", s(&hf)]);
    assert!(
        text.contains("d_model\t24") && text.contains("bias\ttrue"),
        "{text}"
    );
    // An error in a Hugging Face config names the field as that file spells it.
    let edited = t.path().join("hf");
    std::fs::create_dir(&edited).unwrap();
    for name in ["config.json", "model.safetensors"] {
        std::fs::copy(hf.join(name), edited.join(name)).unwrap();
    }
    let cfg = edited.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["layer_norm_epsilon"] = 0.into();
    std::fs::write(&cfg, v.to_string()).unwrap();
    assert_bad(
        &run(&["info", "-m", s(&edited)]),
        "layer_norm_epsilon must be a positive number",
    );
}

#[test]
fn progress_shows_on_a_terminal_and_not_with_quiet() {
    // `script` (util-linux) runs the command on a pseudo-terminal, as a user's shell would.
    assert!(
        Command::new("script").arg("--version").output().is_ok(),
        "util-linux `script` is needed for this test"
    );
    let t = tempfile::tempdir().unwrap();
    let m = init(t.path(), "m", &[]);
    let bin = assert_cmd::cargo::cargo_bin("genomamba");
    let input = root().join("data/yeast_chrI_20k.fa");
    let run_tty = |quiet: bool| -> String {
        let out = t.path().join("e.tsv");
        let cmd = format!(
            "{} embed -m {} {} -o {} --chunk-size 64 {}",
            s(&bin),
            s(&m),
            s(&input),
            s(&out),
            if quiet { "--quiet" } else { "" }
        );
        let o = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let shown = run_tty(false);
    assert!(
        shown.contains("bases"),
        "no progress on a terminal: {shown:?}"
    );
    let quiet = run_tty(true);
    assert!(
        !quiet.contains("bases"),
        "progress shown despite --quiet: {quiet:?}"
    );
    // With the bases known from the `.fai` index (here of a region), a bar with a total.
    let fa = shared().join("genomes/ecoli_k12.fa.gz");
    let cmd = format!(
        "{} embed -m {} {} --region NC_000913:1-20000 -o {}",
        s(&bin),
        s(&m),
        s(&fa),
        s(&t.path().join("r.tsv"))
    );
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{shown}");
    assert!(
        shown.contains("% of 20,000 bases") && shown.contains("eta"),
        "no bar with a total: {shown:?}"
    );
}

#[test]
fn thread_count_does_not_change_results() {
    let t = tempfile::tempdir().unwrap();
    let m = init(t.path(), "m", &[]);
    let input = root().join("data/yeast_chrI_20k.fa");
    let mut tables = Vec::new();
    for threads in ["1", "2"] {
        let out = t.path().join(format!("t{threads}.tsv"));
        ok(&[
            "embed",
            "-m",
            s(&m),
            s(&input),
            "-o",
            s(&out),
            "--threads",
            threads,
            "--pool",
            "max",
        ]);
        tables.push(tsv_values(&out));
    }
    assert_eq!(tables[0].len(), 2);
    for (a, b) in tables[0][1][2..].iter().zip(&tables[1][1][2..]) {
        let (a, b): (f64, f64) = (a.parse().unwrap(), b.parse().unwrap());
        assert!((a - b).abs() <= 1e-6 * (1.0 + a.abs()), "{a} vs {b}");
    }
    assert_bad(
        &run(&["embed", "-m", s(&m), s(&input), "-o", "-", "--threads", "0"]),
        "threads",
    );
}

/// Files in `dir` (names), sorted; none while it does not exist.
fn names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Starts `genomamba args` reading stdin from a pipe that stays open (so the run cannot end on
/// its own), writes `input` to it, waits until `ready` holds for the files of `dir`, then sends
/// `signal`; returns the exit code and stderr.
fn interrupt(
    args: &[&str],
    input: &str,
    dir: &Path,
    ready: impl Fn(&[String]) -> bool,
    signal: i32,
) -> (Option<i32>, String) {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = gm()
        .args(args)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    stdin.flush().unwrap();
    let start = std::time::Instant::now();
    while !ready(&names(dir)) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(120),
            "never got ready: {:?}",
            names(dir)
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("ended before the signal: {status}");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // SAFETY: `kill` only sends a signal to the child's process id.
    let sent = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    assert_eq!(sent, 0);
    let o = child.wait_with_output().unwrap();
    drop(stdin);
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn an_interruption_removes_unfinished_outputs_and_keeps_finished_ones() {
    let t = tempfile::tempdir().unwrap();
    let m = init(
        t.path(),
        "m",
        &["--head", "position", "--labels", "background,feature"],
    );
    let is_temp = |n: &String| n.starts_with('.') && n.ends_with(".tmp");

    // Ctrl-C while annotating from stdin: its three outputs are pending, and all go.
    let out = t.path().join("annotate");
    std::fs::create_dir(&out).unwrap();
    let (bed, bg, tsv) = (out.join("a.bed"), out.join("a.bedgraph"), out.join("a.tsv"));
    let args = [
        "annotate",
        "-m",
        s(&m),
        "-",
        "--chunk-size",
        "4",
        "--bed",
        s(&bed),
        "--bedgraph",
        s(&bg),
        "--tsv",
        s(&tsv),
    ];
    let ready = |n: &[String]| n.iter().filter(|n| is_temp(n)).count() == 3;
    let (code, stderr) = interrupt(&args, ">r\nACGTACGT", &out, ready, libc::SIGINT);
    assert_eq!(code, Some(130), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("interrupted by SIGINT; removed 3 unfinished output files"),
        "{stderr}"
    );
    assert!(names(&out).is_empty(), "left behind: {:?}", names(&out));

    // SIGTERM while writing per-position arrays: the finished record's file stays whole, the
    // record in progress leaves nothing.
    let npy = t.path().join("npy");
    let args = [
        "embed",
        "-m",
        s(&m),
        "-",
        "--chunk-size",
        "1000",
        "--pool",
        "none",
        "--format",
        "npy",
        "-o",
        s(&npy),
    ];
    let ready = |n: &[String]| n.contains(&"a.npy".to_string()) && n.iter().any(is_temp);
    // The second record is long enough for its first chunks to be read before its end.
    let input = format!(">a\nACGTACGTAC\n>b\n{}", "ACGTTGCA\n".repeat(50_000));
    let (code, stderr) = interrupt(&args, &input, &npy, ready, libc::SIGTERM);
    assert_eq!(code, Some(143), "{stderr}");
    assert!(
        stderr.contains("interrupted by SIGTERM; removed 1 unfinished output file"),
        "{stderr}"
    );
    assert_eq!(names(&npy), ["a.npy"]);
    let bytes = std::fs::read(npy.join("a.npy")).unwrap();
    let header = String::from_utf8_lossy(&bytes[..128]);
    assert!(header.contains("'shape': (10, 16)"), "{header}");
    assert_eq!(bytes.len(), 128 + 10 * 16 * 4);

    // Interrupted before any record is finished: the directories made for the arrays go too;
    // one that was there before stays.
    let input = format!(">b\n{}", "ACGTTGCA\n".repeat(50_000));
    for made_here in [true, false] {
        let npy = t.path().join(if made_here { "new/npy" } else { "old" });
        if !made_here {
            std::fs::create_dir(&npy).unwrap();
        }
        let mut args = args;
        args[11] = s(&npy);
        let ready = |n: &[String]| n.iter().any(is_temp);
        let (code, stderr) = interrupt(&args, &input, &npy, ready, libc::SIGINT);
        assert_eq!(code, Some(130), "{stderr}");
        assert!(
            stderr.contains("interrupted by SIGINT; removed 1 unfinished output file"),
            "{stderr}"
        );
        assert_eq!(npy.exists(), !made_here, "made here: {made_here}");
        assert!(!t.path().join("new").exists());
        assert!(names(&npy).is_empty());
    }
}

#[test]
fn outputs_that_are_not_numbers_are_refused_not_written() {
    // Finite weights far out of range make NaN at run time; every output format wrote it
    // (max pooling as -inf, classify with a made-up label) with exit 0.
    let t = tempfile::tempdir().unwrap();
    let fa = t.path().join("in.fa");
    std::fs::write(
        &fa,
        ">s1\nACGTACGTACGTAAACCCGGGTTT\n>s2\nGGGGCCCCAAAATTTT\n",
    )
    .unwrap();
    let seq = init(t.path(), "seq", &["--head", "sequence", "--labels", "a,b"]);
    let pos = init(t.path(), "pos", &["--head", "position", "--labels", "bg,f"]);
    for m in [&seq, &pos] {
        set_tensor(m, "layers.0.mixer.in_proj.weight", 1e30);
    }
    let out = t.path().join("out");
    let npy = t.path().join("npy");
    let (o, f) = (s(&out), s(&fa));
    for args in [
        vec!["classify", "-m", s(&seq), f, "-o", o],
        vec!["embed", "-m", s(&seq), f, "-o", o],
        vec!["embed", "-m", s(&seq), f, "-o", o, "--pool", "max"],
        vec!["embed", "-m", s(&seq), f, "-o", s(&npy), "--pool", "none"],
        vec!["annotate", "-m", s(&pos), f, "--bed", o],
        vec!["annotate", "-m", s(&pos), f, "--tsv", o],
    ] {
        let r = run(&args);
        assert_bad(&r, "the model gives NaN for record s1");
        assert_bad(&r, "are out of range for these inputs");
        assert!(!out.exists() && !npy.exists(), "{args:?} wrote its output");
    }
    // On stdout, not even the header goes out before the error.
    let r = run(&["classify", "-m", s(&seq), f, "-o", "-"]);
    assert_bad(&r, "the model gives NaN");
    assert_eq!(r.stdout, "");
    // Both strands' logits, each finite, can overflow when combined (or in the softmax):
    // checked as written.
    let both = init(
        t.path(),
        "both",
        &["--head", "position", "--labels", "bg,f"],
    );
    set_tensor(&both, "head.weight", 3e38);
    let cfg = both.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["head"]["bidirectional"] = true.into();
    std::fs::write(&cfg, v.to_string()).unwrap();
    assert_bad(
        &run(&["annotate", "-m", s(&both), f, "--bedgraph", o]),
        "the model gives NaN for record s1 at s1:1",
    );
    assert!(!out.exists());
    // Per position, the position is named.
    assert_bad(
        &run(&["annotate", "-m", s(&pos), f, "--tsv", o]),
        "for record s1 at s1:1",
    );
    // Half precision overflowing where f32 does not: the fix is the precision.
    let half = init(t.path(), "half", &["--head", "sequence", "--labels", "a,b"]);
    set_tensor(&half, "layers.0.mixer.in_proj.weight", 300.0);
    ok(&["classify", "-m", s(&half), f, "-o", "-"]);
    assert_bad(
        &run(&["classify", "-m", s(&half), f, "-o", o, "--precision", "f16"]),
        "run with --precision f32",
    );
    assert!(!out.exists());
    // Weights that fail in f32 too: the f16 fix also names them, so following it is not a
    // dead end.
    let broken = init(
        t.path(),
        "broken",
        &["--head", "sequence", "--labels", "a,b"],
    );
    set_tensor(&broken, "head.weight", 3e38);
    let res = run(&[
        "classify",
        "-m",
        s(&broken),
        f,
        "-o",
        o,
        "--precision",
        "f16",
    ]);
    assert_bad(&res, "if that fails too, the weights of");
    assert_bad(
        &run(&["classify", "-m", s(&broken), f, "-o", o]),
        "are out of range for these inputs",
    );
}

#[test]
fn inputs_of_only_empty_records_and_failing_outputs_are_errors() {
    let t = tempfile::tempdir().unwrap();
    let m = init(t.path(), "m", &["--head", "position", "--labels", "bg,f"]);
    let headers = t.path().join("headers.fa");
    std::fs::write(&headers, ">a\n>b\n").unwrap();
    let out = t.path().join("out");
    for args in [
        vec!["embed", "-m", s(&m), s(&headers), "-o", s(&out)],
        vec![
            "embed",
            "-m",
            s(&m),
            s(&headers),
            "-o",
            s(&out),
            "--pool",
            "none",
        ],
        vec!["annotate", "-m", s(&m), s(&headers), "--bed", s(&out)],
    ] {
        let r = run(&args);
        assert_bad(&r, "every record of the input is empty (2 of length 0");
        assert!(!out.exists(), "{args:?} wrote its output");
    }
    // One empty record among others is skipped with a warning.
    let some = t.path().join("some.fa");
    std::fs::write(&some, ">a\n>b\nACGT\n").unwrap();
    ok(&["embed", "-m", s(&m), s(&some), "-o", s(&out)]);
    // A full device is named as the output it is; stdout is not stdin.
    let input = root().join("data/yeast_chrI_20k.fa");
    let r = run(&[
        "embed",
        "-m",
        s(&m),
        s(&input),
        "-o",
        "/dev/full",
        "--chunk-size",
        "64",
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("/dev/full"), "{}", r.stderr);
    let bin = assert_cmd::cargo::cargo_bin("genomamba");
    let (g, m, input) = (s(&bin), s(&m), s(&input));
    let r = shell(&format!("{g} annotate -m {m} {input} --tsv - > /dev/full"));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("error: stdout: "), "{}", r.stderr);
    // A closed stdout (`| head`) does not hide another output's failure: the run goes on
    // for it and reports it.
    let r = shell(&format!(
        "set -o pipefail; {g} annotate -m {m} {input} --bed /dev/full --tsv - | head -c 1 > /dev/null"
    ));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("/dev/full"), "{}", r.stderr);
}

#[test]
fn outputs_named_gz_are_bgzip_compressed_and_tabix_indexes_them() {
    need("tabix");
    let t = tempfile::tempdir().unwrap();
    let seq = init(t.path(), "seq", &["--head", "sequence", "--labels", "a,b"]);
    let pos = init(t.path(), "pos", &["--head", "position", "--labels", "bg,f"]);
    let input = root().join("data/yeast_chrI_20k.fa");
    let gunzip = |p: &Path| -> String {
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::MultiGzDecoder::new(std::fs::File::open(p).unwrap()),
            &mut text,
        )
        .unwrap();
        text
    };
    // The same table as the plain file, compressed.
    let plain = t.path().join("c.tsv");
    let packed = t.path().join("c.tsv.gz");
    ok(&["classify", "-m", s(&seq), s(&input), "-o", s(&plain)]);
    ok(&["classify", "-m", s(&seq), s(&input), "-o", s(&packed)]);
    assert_eq!(gunzip(&packed), std::fs::read_to_string(&plain).unwrap());
    // annotate's BED and bedGraph, as BGZF: tabix indexes them and gives back what a
    // region of the plain files holds.
    let (bed, bg) = (t.path().join("a.bed"), t.path().join("a.bg"));
    let (bed_gz, bg_gz) = (t.path().join("a.bed.gz"), t.path().join("a.bg.bgz"));
    ok(&[
        "annotate",
        "-m",
        s(&pos),
        s(&input),
        "--bed",
        s(&bed),
        "--bedgraph",
        s(&bg),
    ]);
    ok(&[
        "annotate",
        "-m",
        s(&pos),
        s(&input),
        "--bed",
        s(&bed_gz),
        "--bedgraph",
        s(&bg_gz),
    ]);
    // Compressed or not by the name given, not by where a link leads.
    let (link, target) = (t.path().join("link.tsv.gz"), t.path().join("target.tsv"));
    std::os::unix::fs::symlink(&target, &link).unwrap();
    ok(&["classify", "-m", s(&seq), s(&input), "-o", s(&link)]);
    assert_eq!(gunzip(&target), std::fs::read_to_string(&plain).unwrap());
    // /dev/stdout is standard output, written in place: a file it was redirected to (here
    // appended to) keeps what it held, and gets no compression from its own name.
    let appended = t.path().join("appended.gz");
    std::fs::write(&appended, "kept\n").unwrap();
    let r = shell(&format!(
        "{} classify -m {} {} -o /dev/stdout >> {}",
        s(&assert_cmd::cargo::cargo_bin("genomamba")),
        s(&seq),
        s(&input),
        s(&appended)
    ));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(&appended).unwrap(),
        format!("kept\n{}", std::fs::read_to_string(&plain).unwrap())
    );
    for (plain, packed) in [(&bed, &bed_gz), (&bg, &bg_gz)] {
        let text = std::fs::read_to_string(plain).unwrap();
        assert_eq!(gunzip(packed), text);
        let index = Command::new("tabix")
            .args(["-f", "-p", "bed", s(packed)])
            .output()
            .unwrap();
        assert!(index.status.success(), "{index:?}");
        let chrom = text.split('\t').next().unwrap();
        let got = Command::new("tabix")
            .args([s(packed), &format!("{chrom}:1001-1200")])
            .output()
            .unwrap();
        assert!(got.status.success(), "{got:?}");
        let want: String = text
            .lines()
            .filter(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                let (a, b): (u64, u64) = (f[1].parse().unwrap(), f[2].parse().unwrap());
                a < 1200 && b > 1000
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(!want.is_empty());
        assert_eq!(String::from_utf8(got.stdout).unwrap(), want);
    }
}
