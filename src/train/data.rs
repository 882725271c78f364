//! Labeled training data: sequence-level sets (one FASTA per class, or a TSV of `sequence` and
//! `label`) and per-position sets (a reference FASTA plus a BED of labeled intervals), the
//! validation split, and the windows drawn from per-position data.
//!
//! Everything is checked while loading, so that a bad input stops training before anything
//! is written: unknown class names, empty classes, BED rows naming chromosomes that the FASTA
//! lacks or running past their ends, malformed rows, and the reader's own errors (truncated
//! compression, stray characters) all become [`Error`]s naming the file and line.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Read};
use std::path::Path;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::alphabet::{self, N};
use crate::io::bed::{BedRow, LabelFormat, open_text, read_labels};
use crate::io::fastx::for_each_record;
use crate::{Error, Result};

/// Label value of positions that do not count in the loss or the metrics (N bases).
pub const IGNORE: u8 = u8::MAX;

/// Name of the class of unlabeled positions in per-position data (always class 0).
pub const BACKGROUND: &str = "background";

/// A data file and its SHA-256, recorded in the trained model's provenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// The path as given.
    pub path: String,
    /// Hex SHA-256 of the file's bytes (compressed bytes for compressed files).
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// SHA-256 of a file; of stdin (`-`) or a pipe as it was read (to its end), as they cannot be
/// read twice.
pub fn digest(path: &str) -> Result<FileDigest> {
    if crate::io::once::read_once(path) {
        // Stdin or a pipe, read once as it was loaded: its digest was taken on the way.
        let (sha256, bytes) = crate::io::once::read_digest(path).ok_or_else(|| {
            Error::Runtime(format!(
                "{} was not read to its end before its digest was asked",
                crate::error::shown(path)
            ))
        })?;
        return Ok(FileDigest {
            path: path.to_string(),
            sha256,
            bytes,
        });
    }
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        h.update(&buf[..n]);
    }
    let sha256 = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(FileDigest {
        path: path.to_string(),
        sha256,
        bytes,
    })
}

/// One labeled sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqExample {
    /// Token ids ([`crate::alphabet`]).
    pub tokens: Vec<u8>,
    /// Class index.
    pub label: usize,
    /// Where it came from (`file:record` or `file:line`), for messages.
    pub origin: String,
}

/// A sequence-level data set.
#[derive(Debug, Clone, Default)]
pub struct SeqDataset {
    /// Class names, in head order.
    pub labels: Vec<String>,
    /// The examples.
    pub examples: Vec<SeqExample>,
    /// The files read, with checksums.
    pub files: Vec<FileDigest>,
    /// Files whose records of length 0 were left out, with how many (for a warning).
    pub skipped_empty: Vec<(String, usize)>,
}

impl SeqDataset {
    /// Number of examples of each class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.labels.len()];
        for e in &self.examples {
            c[e.label] += 1;
        }
        c
    }
}

/// Parses a `NAME=PATH` class specification.
pub fn parse_class_spec(spec: &str) -> Result<(String, String)> {
    match spec.split_once('=') {
        Some((name, path)) if valid_class_name(name) && !path.is_empty() => {
            Ok((name.to_string(), path.to_string()))
        }
        _ => Err(Error::usage(
            format!("bad class specification '{spec}'"),
            "write --class NAME=PATH, e.g. --class oct4=oct4_peaks.fa (names without spaces or '=')",
        )),
    }
}

pub use crate::model::config::{check_labels, valid_class_name};

/// Reads one FASTA/FASTQ file per class. Class order is the order given.
pub fn load_class_files(specs: &[(String, String)]) -> Result<SeqDataset> {
    if specs.len() < 2 {
        return Err(Error::usage(
            "sequence training needs at least two classes",
            "give --class NAME=PATH at least twice",
        ));
    }
    load_some_class_files(specs)
}

/// As [`load_class_files`], for validation files, which may cover fewer classes than
/// training (as a validation TSV may).
pub fn load_some_class_files(specs: &[(String, String)]) -> Result<SeqDataset> {
    let labels: Vec<String> = specs.iter().map(|(n, _)| n.clone()).collect();
    check_labels(&labels)?;
    let mut ds = SeqDataset {
        labels,
        ..Default::default()
    };
    for (i, (name, path)) in specs.iter().enumerate() {
        let before = ds.examples.len();
        // Records of length 0 are left out, as inference skips them: nothing to learn from
        // or to score.
        let mut empty = 0;
        for_each_record(path, &mut |r| {
            if r.tokens.is_empty() {
                empty += 1;
                return Ok(());
            }
            ds.examples.push(SeqExample {
                origin: format!("{path}:{}", r.id),
                tokens: r.tokens,
                label: i,
            });
            Ok(())
        })?;
        if ds.examples.len() == before {
            return Err(Error::input(
                path.as_str(),
                format!("class '{name}' has no sequences ({empty} empty records)"),
                "give a FASTA/FASTQ file with at least one non-empty record for each class",
            ));
        }
        if empty > 0 {
            ds.skipped_empty.push((path.clone(), empty));
        }
        ds.files.push(digest(path)?);
    }
    Ok(ds)
}

/// Reads a TSV with a header naming `sequence` and `label` columns (other columns are
/// ignored). Class order is `labels` when given (every label must be one of them), else the
/// sorted distinct labels.
pub fn load_tsv(path: &str, labels: Option<&[String]>) -> Result<SeqDataset> {
    let mut lines = open_text(path, "a TSV file")?.lines();
    let fix = "the TSV needs a header line with columns named `sequence` and `label`";
    let mut lineno = 0u64;
    let read_err = |e: std::io::Error, ln: u64| {
        Error::input(
            path,
            format!("cannot read: {e}"),
            "give a complete plain or gzip-compressed TSV",
        )
        .at(ln)
    };
    let header = loop {
        let Some(l) = lines.next() else {
            return Err(Error::input(path, "empty TSV", fix));
        };
        lineno += 1;
        let s = l.map_err(|e| read_err(e, lineno))?;
        // Only the line end goes: a trailing tab still makes a (nameless) column.
        let s = s.trim_end_matches(['\r', '\n']).to_string();
        if !s.trim().is_empty() && !s.starts_with('#') {
            break s;
        }
    };
    let cols: Vec<&str> = header.split('\t').map(str::trim).collect();
    for name in ["sequence", "label"] {
        if cols.iter().filter(|c| **c == name).count() > 1 {
            return Err(Error::input(
                path,
                format!("the header names the `{name}` column twice"),
                fix,
            )
            .at(lineno));
        }
    }
    let seq_col = cols.iter().position(|c| *c == "sequence");
    let lab_col = cols.iter().position(|c| *c == "label");
    let (Some(seq_col), Some(lab_col)) = (seq_col, lab_col) else {
        return Err(Error::input(
            path,
            format!(
                "header '{}' lacks a `sequence` or `label` column",
                crate::error::shorten(&header, 80)
            ),
            fix,
        )
        .at(lineno));
    };
    let mut rows: Vec<(Vec<u8>, String, u64)> = Vec::new();
    for l in lines {
        lineno += 1;
        let s = l.map_err(|e| read_err(e, lineno))?;
        let s = s.trim_end_matches(['\r', '\n']);
        if s.trim().is_empty() || s.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = s.split('\t').collect();
        // More columns than the header names: a tab inside a field, or columns shifted.
        // (Empty fields after the last, from trailing tabs, are harmless.)
        if f[cols.len().min(f.len())..]
            .iter()
            .any(|x| !x.trim().is_empty())
        {
            return Err(Error::input(
                path,
                format!("{} columns where the header has {}", f.len(), cols.len()),
                "give every row the header's columns, separated by single tabs",
            )
            .at(lineno));
        }
        let (Some(seq), Some(lab)) = (f.get(seq_col), f.get(lab_col)) else {
            return Err(Error::input(
                path,
                format!("{} columns where the header has {}", f.len(), cols.len()),
                "give every row a sequence and a label, separated by tabs",
            )
            .at(lineno));
        };
        let lab = lab.trim();
        if lab.is_empty() {
            return Err(Error::input(
                path,
                "empty label",
                "give every row a class name in the `label` column",
            )
            .at(lineno));
        }
        if !valid_class_name(lab) {
            return Err(Error::input(
                path,
                format!("bad class name '{}'", crate::error::shorten(lab, 40)),
                "use class names without spaces, '=' or ','",
            )
            .at(lineno));
        }
        let tokens = alphabet::tokenize(seq.trim().as_bytes()).map_err(|b| {
            Error::input(
                path,
                format!("sequence: {}", b.describe()),
                "the `sequence` column holds DNA letters (ACGTN and IUPAC codes) only",
            )
            .at(lineno)
        })?;
        if tokens.is_empty() {
            return Err(Error::input(
                path,
                "empty sequence",
                "remove the row or give it a sequence",
            )
            .at(lineno));
        }
        rows.push((tokens, lab.to_string(), lineno));
    }
    let labels: Vec<String> = match labels {
        Some(l) => l.to_vec(),
        None => {
            let mut l: Vec<String> = rows.iter().map(|r| r.1.clone()).collect();
            l.sort();
            l.dedup();
            l
        }
    };
    check_labels(&labels)?;
    if rows.is_empty() {
        return Err(Error::input(
            path,
            "has a header but no rows",
            "add one row per sequence: its sequence and its label, tab-separated",
        ));
    }
    if labels.len() < 2 {
        return Err(Error::input(
            path,
            format!(
                "has only one distinct label ('{}')",
                labels.first().map(String::as_str).unwrap_or_default()
            ),
            "sequence training needs at least two classes in the `label` column",
        ));
    }
    let index: HashMap<&str, usize> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    let mut ds = SeqDataset {
        labels: labels.clone(),
        ..Default::default()
    };
    for (tokens, lab, ln) in rows {
        let Some(&i) = index.get(lab.as_str()) else {
            return Err(Error::input(
                path,
                format!(
                    "unknown class '{lab}' (the training data's classes: {})",
                    labels.join(", ")
                ),
                "give validation rows only classes the training data has",
            )
            .at(ln));
        };
        ds.examples.push(SeqExample {
            tokens,
            label: i,
            origin: format!("{path}:{ln}"),
        });
    }
    ds.files.push(digest(path)?);
    Ok(ds)
}

/// Reorders a data set's classes to `labels` (e.g. those of an existing head); every class
/// of the data must be among them.
pub fn remap_labels(ds: &mut SeqDataset, labels: &[String], what: &str) -> Result<()> {
    let index: HashMap<&str, usize> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    let mut map = Vec::with_capacity(ds.labels.len());
    for l in &ds.labels {
        match index.get(l.as_str()) {
            Some(&i) => map.push(i),
            None => {
                return Err(Error::usage(
                    format!(
                        "unknown class '{l}' in {what}: the model's classes are {}",
                        labels.join(", ")
                    ),
                    "use the model's class names, or train a new head with --replace-head",
                ));
            }
        }
    }
    for e in &mut ds.examples {
        e.label = map[e.label];
    }
    ds.labels = labels.to_vec();
    Ok(())
}

/// A stratified random split: within each class, `fraction` of the examples (rounded, at
/// least one when the class has two or more, and never all: one stays for training) go to
/// validation. Returns `(train, val)` indices, each sorted.
pub fn stratified_split(
    labels: &[usize],
    n_classes: usize,
    fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let mut rng = StdRng::seed_from_u64(seed ^ SPLIT_SALT);
    let mut train = Vec::new();
    let mut val = Vec::new();
    for c in 0..n_classes {
        let mut idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == c).collect();
        idx.shuffle(&mut rng);
        let mut k = (idx.len() as f64 * fraction).round() as usize;
        if fraction > 0.0 && k == 0 && idx.len() >= 2 {
            k = 1;
        }
        let k = k.min(idx.len().saturating_sub(1));
        val.extend_from_slice(&idx[..k]);
        train.extend_from_slice(&idx[k..]);
    }
    train.sort_unstable();
    val.sort_unstable();
    (train, val)
}

/// Mixed into the seed of the validation split, so it differs from the training shuffles.
const SPLIT_SALT: u64 = 0x5eed_5b11;

/// One chromosome of per-position data: tokens and one label per base.
#[derive(Debug, Clone)]
pub struct LabeledRecord {
    /// Record name (first word of the header).
    pub name: String,
    /// Token ids.
    pub tokens: Vec<u8>,
    /// Class index per base; [`IGNORE`] at N bases.
    pub labels: Vec<u8>,
}

/// A per-position data set: class 0 is [`BACKGROUND`].
#[derive(Debug, Clone, Default)]
pub struct PositionDataset {
    /// Class names; `labels[0] == "background"`.
    pub labels: Vec<String>,
    /// The records.
    pub records: Vec<LabeledRecord>,
    /// The files read, with checksums.
    pub files: Vec<FileDigest>,
}

/// Which BED names (column 4) make up each class: `CLASS=NAME[,NAME...]`. Without any, every
/// distinct name is its own class.
pub fn parse_bed_class(spec: &str) -> Result<(String, Vec<String>)> {
    let bad = || {
        Error::usage(
            format!("bad --bed-class '{spec}'"),
            "write --bed-class CLASS=NAME[,NAME...], e.g. --bed-class coding=CDS",
        )
    };
    let (class, names) = spec.split_once('=').ok_or_else(bad)?;
    let names: Vec<String> = names
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if !valid_class_name(class) || names.is_empty() {
        return Err(bad());
    }
    Ok((class.to_string(), names))
}

/// The rows' distinct names, in the order they first appear.
fn distinct_names(rows: &[BedRow]) -> Vec<&str> {
    let mut seen = HashSet::new();
    rows.iter()
        .map(|r| r.name.as_str())
        .filter(|n| seen.insert(*n))
        .collect()
}

/// Reads a reference FASTA and a BED of labeled intervals (column 4 = name), or a GFF3/GTF
/// file (the feature type is the name; `classes` must then be given), as `format` says. `classes` maps
/// class names to the BED names they cover (see [`parse_bed_class`]); bases covered by no
/// chosen interval are background; where intervals of different classes overlap, the class
/// given later wins. N bases are [`IGNORE`]d. When `records` is non-empty only those FASTA
/// records are kept (and BED rows on other records are skipped).
pub fn load_position(
    fasta: &str,
    bed: &str,
    format: LabelFormat,
    classes: &[(String, Vec<String>)],
    records: &[String],
) -> Result<PositionDataset> {
    let mut recs: Vec<LabeledRecord> = Vec::new();
    // Every record's name, kept or not: the FASTA is read once (it may be stdin).
    let mut all_names: Vec<String> = Vec::new();
    for_each_record(fasta, &mut |r| {
        all_names.push(r.id.clone());
        if records.is_empty() || records.contains(&r.id) {
            let n = r.tokens.len();
            let labels = r
                .tokens
                .iter()
                .map(|&t| if t == N { IGNORE } else { 0 })
                .collect::<Vec<u8>>();
            debug_assert_eq!(labels.len(), n);
            recs.push(LabeledRecord {
                name: r.id,
                tokens: r.tokens,
                labels,
            });
        }
        Ok(())
    })?;
    if let Some(twice) = records
        .iter()
        .enumerate()
        .find_map(|(i, r)| records[..i].contains(r).then_some(r))
    {
        return Err(Error::usage(
            format!("--records names '{twice}' twice"),
            "name each record once",
        ));
    }
    for want in records {
        if !recs.iter().any(|r| &r.name == want) {
            let count = all_names.len();
            let shown = &all_names[..count.min(5)];
            let more = if count > shown.len() { ", ..." } else { "" };
            return Err(Error::usage(
                format!("record '{want}' is not in {fasta}"),
                format!(
                    "name records that the FASTA holds ({count}: {}{more})",
                    shown.join(", ")
                ),
            ));
        }
    }
    if recs.is_empty() {
        return Err(Error::input(
            fasta,
            "no records",
            "give the reference FASTA the BED refers to",
        ));
    }
    let by_name: HashMap<String, usize> = recs
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.clone(), i))
        .collect();
    // All record names in the FASTA (even those not kept), to tell a wrong BED from a
    // filtered record.
    let known: std::collections::HashSet<String> = all_names.into_iter().collect();

    let (rows, gff) = read_labels(bed, format)?;
    // What names a class in the file, for messages.
    let (name_col, row_word) = if gff {
        ("column 3, the feature type", "GFF feature")
    } else {
        ("column 4", "BED row")
    };
    // Class names: explicit mapping, or every distinct BED name in order of first appearance.
    let classes_given = !classes.is_empty();
    // A GFF's types include the chromosome and the genes around the parts one would learn:
    // its classes are chosen, not every type.
    if gff && !classes_given {
        let types = distinct_names(&rows);
        let shown = types.len().min(8);
        let more = if types.len() > shown { ", ..." } else { "" };
        return Err(Error::usage(
            format!(
                "{bed} is GFF, whose {} feature types ({}{more}) would each be a class",
                types.len(),
                types[..shown].join(", ")
            ),
            "choose the classes with --bed-class CLASS=TYPE[,TYPE...], e.g. --bed-class coding=CDS",
        ));
    }
    let classes: Vec<(String, Vec<String>)> = if classes.is_empty() {
        // BED writes `.` for "no name": such an interval has no class to give.
        if let Some(r) = rows.iter().find(|r| r.name == ".") {
            return Err(Error::input(
                bed,
                "the interval has no name ('.' in column 4), and without --bed-class each name is a class",
                "name every interval's class in column 4, or choose the named ones with --bed-class CLASS=NAME",
            )
            .at(r.line));
        }
        // A name that cannot be a class name can still be grouped under one (unless it
        // holds the comma that separates --bed-class names).
        if let Some(r) = rows.iter().find(|r| !valid_class_name(&r.name)) {
            let name = crate::error::one_line(&crate::error::shorten(&r.name, 40));
            let fix = if r.name.contains(',') || r.name.chars().any(char::is_control) {
                "rename those intervals in column 4: a name with ',' or a control character cannot be chosen with --bed-class".to_string()
            } else {
                // Quoted for the shell: `'` closes, is escaped, and reopens.
                let quoted = format!("'{}'", r.name.replace('\'', "'\\''"));
                format!(
                    "choose the classes with --bed-class, one for each class to train (names it does not list become background): this one as --bed-class CLASS={quoted}"
                )
            };
            return Err(Error::input(
                bed,
                format!(
                    "the name '{name}' (column 4) cannot be a class name, which holds no blanks, '=' or ','"
                ),
                fix,
            )
            .at(r.line));
        }
        distinct_names(&rows)
            .into_iter()
            .map(|n| (n.to_string(), vec![n.to_string()]))
            .collect()
    } else {
        classes.to_vec()
    };
    // The class of unlabeled bases has its own name.
    if let Some((class, _)) = classes.iter().find(|(c, _)| c == BACKGROUND) {
        let row = rows
            .iter()
            .find(|r| &r.name == class)
            .filter(|_| !classes_given);
        let (whose, fix) = match row {
            Some(r) => (
                format!("line {} names", r.line),
                "rename those intervals in column 4, or give their class another name with --bed-class NAME=background",
            ),
            None => (
                "--bed-class names".to_string(),
                "give the class another name in --bed-class",
            ),
        };
        return Err(Error::input(
            bed,
            format!("{whose} the class '{BACKGROUND}', the name of the bases no interval labels"),
            fix,
        ));
    }
    let mut labels = vec![BACKGROUND.to_string()];
    labels.extend(classes.iter().map(|c| c.0.clone()));
    check_labels(&labels)?;
    if labels.len() > IGNORE as usize {
        return Err(Error::usage(
            format!("{} classes", labels.len()),
            "per-position training supports at most 254 classes; map BED names with --bed-class",
        ));
    }
    let mut name_class: HashMap<&str, u8> = HashMap::new();
    for (ci, (class, names)) in classes.iter().enumerate() {
        for n in names {
            if let Some(other) = name_class.insert(n.as_str(), (ci + 1) as u8)
                && other != (ci + 1) as u8
            {
                return Err(Error::usage(
                    format!(
                        "BED name '{n}' is given to two classes, '{}' and '{class}'",
                        classes[other as usize - 1].0
                    ),
                    "give each BED name to one --bed-class",
                ));
            }
        }
    }
    for (class, names) in &classes {
        for n in names {
            if !rows.iter().any(|r| &r.name == n) {
                return Err(Error::input(
                    bed,
                    format!("class '{class}': no {row_word} is named '{n}' ({name_col})"),
                    format!("use --bed-class CLASS=NAME with names that occur in {name_col}"),
                ));
            }
        }
    }
    for r in &rows {
        // Rows of no chosen class are not read (a whole genome's annotation may name
        // sequences that the FASTA leaves out).
        let Some(&cls) = name_class.get(r.name.as_str()) else {
            continue;
        };
        if !known.contains(&r.chrom) {
            return Err(Error::input(
                bed,
                format!("chromosome '{}' is not in {fasta}", r.chrom),
                format!(
                    "use {} whose column 1 names records of the FASTA (same spelling, e.g. `chr1` vs `1`)",
                    if gff { "a GFF" } else { "a BED" }
                ),
            )
            .at(r.line));
        }
        let Some(&ri) = by_name.get(&r.chrom) else {
            continue;
        };
        let rec = &mut recs[ri];
        if r.end as usize > rec.tokens.len() {
            let (what, fix) = if gff {
                (
                    format!(
                        "feature {} {} {} (GFF, 1-based)",
                        r.chrom,
                        r.start + 1,
                        r.end
                    ),
                    "use a GFF made for this FASTA (1-based, inclusive coordinates)",
                )
            } else {
                (
                    format!("interval {} {} {} (BED, 0-based)", r.chrom, r.start, r.end),
                    "use a BED made for this FASTA (0-based, half-open coordinates)",
                )
            };
            return Err(Error::input(
                bed,
                format!(
                    "{what} ends past the end of '{}' ({} bases)",
                    r.chrom,
                    rec.tokens.len()
                ),
                fix,
            )
            .at(r.line));
        }
        for p in r.start as usize..r.end as usize {
            if rec.labels[p] != IGNORE {
                rec.labels[p] = cls;
            }
        }
    }
    let mut files = vec![digest(fasta)?, digest(bed)?];
    files.dedup();
    Ok(PositionDataset {
        labels,
        records: recs,
        files,
    })
}

/// Validation examples whose bases are exactly those of a training example (a sequence in
/// both sets, under any label): how many, and the first such pair of origins (validation,
/// training). Such copies make validation metrics overstate how a model does on new
/// sequences.
pub fn copies_of_training(
    train: &SeqDataset,
    val: &SeqDataset,
) -> (usize, Option<(String, String)>) {
    let mut seen: HashMap<&[u8], &str> = HashMap::with_capacity(train.examples.len());
    for e in &train.examples {
        seen.entry(e.tokens.as_slice()).or_insert(e.origin.as_str());
    }
    let mut count = 0;
    let mut first = None;
    for e in &val.examples {
        if let Some(origin) = seen.get(e.tokens.as_slice()) {
            count += 1;
            first.get_or_insert_with(|| (e.origin.clone(), origin.to_string()));
        }
    }
    (count, first)
}

/// A stretch of a record: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// Index into [`PositionDataset::records`].
    pub record: usize,
    /// 0-based start.
    pub start: usize,
    /// Exclusive end.
    pub end: usize,
}

impl Span {
    /// Number of bases.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether the span is empty.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// Splits each record into a training part and a contiguous validation stretch: the last
/// `fraction` of every record is held out. Returns `(train, val)` spans.
pub fn contiguous_split(ds: &PositionDataset, fraction: f64) -> (Vec<Span>, Vec<Span>) {
    let mut train = Vec::new();
    let mut val = Vec::new();
    for (i, r) in ds.records.iter().enumerate() {
        let n = r.tokens.len();
        let cut = n - ((n as f64 * fraction).round() as usize).min(n);
        if cut > 0 {
            train.push(Span {
                record: i,
                start: 0,
                end: cut,
            });
        }
        if cut < n {
            val.push(Span {
                record: i,
                start: cut,
                end: n,
            });
        }
    }
    (train, val)
}

/// Labeled bases of each class of `ds` within `spans` (bases left out of the loss, such as
/// N, are not counted), indexed like `ds.labels`.
pub fn class_bases(ds: &PositionDataset, spans: &[Span]) -> Vec<u64> {
    let mut counts = vec![0u64; ds.labels.len()];
    for s in spans {
        for &l in &ds.records[s.record].labels[s.start..s.end] {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
    }
    counts
}

/// Refuses a per-position split in which a class labels no training base (the model could
/// not learn it; an empty BED interval, say, or intervals only in the held-out stretches),
/// or in which no validation base is scored at all.
/// Returns the classes that label no validation base, for a warning.
pub fn check_class_bases(
    ds: &PositionDataset,
    train: &[Span],
    val: &[Span],
    bed: &str,
) -> Result<Vec<String>> {
    let (tr, va) = (class_bases(ds, train), class_bases(ds, val));
    if let Some(i) = tr.iter().position(|&n| n == 0) {
        let what = if va[i] > 0 {
            format!(
                "class '{}' labels no base of the training part of the records, only {} held out for validation",
                ds.labels[i], va[i]
            )
        } else {
            format!("class '{}' labels no base", ds.labels[i])
        };
        return Err(Error::input(
            bed,
            what,
            "check its intervals (empty ones label nothing; N bases are left out), --records and --val-fraction",
        ));
    }
    // Validation would score nothing, and its loss of 0 would pick the first epoch.
    if va.iter().all(|&n| n == 0) {
        return Err(Error::input(
            bed,
            "the held-out (validation) part of the records has no base to score (it is all N)",
            "give a larger --val-fraction, or records with sequence (not N) at their ends",
        ));
    }
    Ok(ds
        .labels
        .iter()
        .zip(&va)
        .filter(|(_, n)| **n == 0)
        .map(|(l, _)| l.clone())
        .collect())
}

/// Start positions of windows of `window` bases drawn uniformly from `spans` (weighted by
/// length), `count` of them, seeded.
pub fn draw_windows(spans: &[Span], window: usize, count: usize, rng: &mut StdRng) -> Vec<Span> {
    use rand::Rng;
    let usable: Vec<&Span> = spans.iter().filter(|s| s.len() >= window).collect();
    let total: usize = usable.iter().map(|s| s.len() - window + 1).sum();
    if total == 0 {
        return Vec::new();
    }
    (0..count)
        .map(|_| {
            let mut k = rng.random_range(0..total);
            for s in &usable {
                let n = s.len() - window + 1;
                if k < n {
                    return Span {
                        record: s.record,
                        start: s.start + k,
                        end: s.start + k + window,
                    };
                }
                k -= n;
            }
            // Unreachable: k < total.
            Span {
                record: usable[0].record,
                start: usable[0].start,
                end: usable[0].start + window,
            }
        })
        .collect()
}

/// Checks that a path exists before reading; `given` is the option that named it as the user
/// wrote it (`--bed x.bed`, `--class y=x.fa`).
pub fn check_exists(path: &str, given: &str) -> Result<()> {
    if path != "-" && !Path::new(path).exists() {
        return Err(Error::usage(
            format!("{given}: no such file"),
            "check the path",
        ));
    }
    Ok(())
}

/// Refuses two data files that are one file (by any path or link): `files` are (option as
/// the user wrote it, path, whether it is validation data). Two classes read from one file
/// could not be told apart; a validation file that is also a training file measures
/// memorisation, not generalisation.
pub fn check_distinct_files(files: &[(String, String, bool)]) -> Result<()> {
    // Stdin is left to the check of streams given twice.
    let identity = |p: &str| {
        (p != "-")
            .then(|| crate::io::fastx::identity(p))
            .flatten()
            .map(|(id, _)| id)
    };
    for (i, (opt_a, path_a, val_a)) in files.iter().enumerate() {
        let Some(id) = identity(path_a) else {
            continue;
        };
        for (opt_b, path_b, val_b) in &files[..i] {
            if identity(path_b) != Some(id) {
                continue;
            }
            let (what, fix) = match (val_a, val_b) {
                (false, false) => (
                    "two classes would hold the same sequences",
                    "give each class a file of its own",
                ),
                (true, true) => (
                    "the validation sets would hold the same sequences",
                    "give each validation class a file of its own",
                ),
                _ => (
                    "validation would measure memorised training sequences",
                    "validate on held-out sequences, or leave out the validation files to hold out --val-fraction of the training data",
                ),
            };
            let same = if path_a == path_b {
                String::new()
            } else {
                format!(" ({path_b} and {path_a} are one file)")
            };
            return Err(Error::usage(
                format!("{opt_b} and {opt_a} read the same file{same}: {what}"),
                fix,
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_of_training_are_exact_sequences_under_any_label() {
        let set = |seqs: &[(&[u8], usize)]| SeqDataset {
            labels: vec!["a".into(), "b".into()],
            examples: seqs
                .iter()
                .enumerate()
                .map(|(i, (t, l))| SeqExample {
                    tokens: t.to_vec(),
                    label: *l,
                    origin: format!("f:{}", i + 1),
                })
                .collect(),
            ..Default::default()
        };
        let train = set(&[(&[7, 8, 9], 0), (&[7, 8], 1), (&[7, 8], 0)]);
        // A copy under the other label counts; a prefix, a longer sequence, a reversal do not.
        let val = set(&[
            (&[7, 8], 0),
            (&[7], 0),
            (&[7, 8, 9, 10], 1),
            (&[9, 8, 7], 1),
            (&[7, 8, 9], 1),
        ]);
        let (n, first) = copies_of_training(&train, &val);
        assert_eq!(n, 2);
        assert_eq!(first, Some(("f:1".to_string(), "f:2".to_string())));
        assert_eq!(copies_of_training(&train, &set(&[(&[10], 0)])), (0, None));
    }

    #[test]
    fn stratified_split_holds_out_per_class_and_keeps_one_for_training() {
        // Classes of 1, 2, 10 and 3 examples, interleaved.
        let sizes = [1usize, 2, 10, 3];
        let mut labels = Vec::new();
        for round in 0..10 {
            for (c, &n) in sizes.iter().enumerate() {
                if round < n {
                    labels.push(c);
                }
            }
        }
        let per_class = |idx: &[usize]| {
            let mut n = [0usize; 4];
            for &i in idx {
                n[labels[i]] += 1;
            }
            n
        };
        for (fraction, want_val) in [
            (0.1, [0, 1, 1, 1]),
            (0.5, [0, 1, 5, 2]),
            (0.9, [0, 1, 9, 2]),
        ] {
            let (train, val) = stratified_split(&labels, 4, fraction, 7);
            assert_eq!(per_class(&val), want_val, "fraction {fraction}");
            let mut all: Vec<usize> = train.iter().chain(&val).copied().collect();
            all.sort_unstable();
            assert_eq!(all, (0..labels.len()).collect::<Vec<_>>());
            assert!(train.windows(2).all(|w| w[0] < w[1]));
            assert!(val.windows(2).all(|w| w[0] < w[1]));
            // The same seed gives the same split.
            assert_eq!(stratified_split(&labels, 4, fraction, 7), (train, val));
        }
    }
}
