//! `genomamba embed`: final hidden states, pooled per record (TSV) or per position (.npy).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use clap::Args;

use genomamba::infer::pool::{Pool, Pooler};
use genomamba::io::fastx::RecordMeta;
use genomamba::io::output::{Output, PendingPath, npy_header_fixed, safe_file_name, unwritable};
use genomamba::io::region::{IndexedFasta, Region, indexed_lengths};
use genomamba::{Error, Result};

use super::common::{
    InputArgs, RecordSink, check_finite, check_output_dir, check_outputs, check_some_records,
    fmt_f32, report_skipped,
};

/// Arguments of `embed`.
#[derive(Debug, Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Output: a TSV file (`-` for stdout) for pooled embeddings; a directory for `--pool none`.
    #[arg(short = 'o', long = "output")]
    pub output: String,
    /// Pooling over positions: mean, max, last, or none (per-position arrays, written as npy).
    #[arg(long, default_value = "mean")]
    pub pool: String,
    /// Output format: tsv (pooled) or npy (per-position, one OUT/<id>.npy per record).
    #[arg(long)]
    pub format: Option<String>,
}

/// Pooled rows into one TSV.
struct PooledSink {
    out: Output,
    pool: Pool,
    d: usize,
}

impl RecordSink for PooledSink {
    type Acc = Pooler;

    fn begin(&mut self, _meta: &RecordMeta) -> Result<Pooler> {
        Ok(Pooler::new(self.pool, self.d))
    }

    fn rows(
        &mut self,
        acc: &mut Pooler,
        _: &RecordMeta,
        _: usize,
        rows: &[f32],
        d: usize,
    ) -> Result<()> {
        acc.push_rows(rows, d);
        Ok(())
    }

    fn rows_tensor(
        &mut self,
        acc: &mut Pooler,
        _: &RecordMeta,
        _: usize,
        hidden: Tensor<2>,
    ) -> Result<()> {
        acc.push_tensor(hidden);
        Ok(())
    }

    fn end(&mut self, mut acc: Pooler, meta: &RecordMeta, len: usize) -> Result<()> {
        let mut line = format!("{}\t{len}", meta.id);
        if let Some(v) = acc.finish() {
            check_finite(&v, meta, |_| None)?;
            for x in v {
                line.push('\t');
                fmt_f32(x, &mut line);
            }
        }
        line.push('\n');
        self.out.write_all(line.as_bytes())
    }
}

/// The longest `.npy` file name written (`.<name>.XXXXXX.tmp` is made first, within 255).
const MAX_NPY_NAME: usize = 240;

/// The file a record's per-position array is written to, in the output directory.
fn npy_name(id: &str) -> String {
    format!("{}.npy", safe_file_name(id))
}

/// The record that a `.npy` file is written for, for the error when two records would
/// write one file.
struct NpyOwner {
    /// The record's id (or `#N` without one).
    label: String,
    /// Its number in its file (1-based), where known: an index skips empty records.
    number: Option<usize>,
    /// Its file.
    source: String,
}

impl NpyOwner {
    /// The error for `later`, which would write `file` after `self` did. Numbered records
    /// name only another file than the error's; unnumbered ones name both files when they
    /// differ.
    fn clash(&self, later: &NpyOwner, file: &str) -> Error {
        let two_files = self.source != later.source;
        let named = |o: &NpyOwner| {
            let label = genomamba::error::shorten(&o.label, 60);
            match o.number {
                Some(n) if o.source == later.source => format!("{label} (#{n})"),
                Some(n) => format!("{label} (#{n} of {})", o.source),
                None if two_files => format!("{label} of {}", o.source),
                None => label,
            }
        };
        Error::input(
            &later.source,
            format!(
                "records {} and {} both map to the output file {file}",
                named(self),
                named(later)
            ),
            "give records unique ids",
        )
    }
}

/// Refuses, before any work, an input given twice (by its path or another name of the
/// file): each of its records would write its `.npy` file twice.
fn check_inputs_once(input: &InputArgs) -> Result<()> {
    let mut files: Vec<(&str, (u64, u64))> = Vec::new();
    for path in input.inputs.iter().filter(|p| p.as_str() != "-") {
        let Some((id, _)) = genomamba::io::fastx::identity(path) else {
            continue;
        };
        if let Some((first, _)) = files.iter().find(|(_, other)| *other == id) {
            let what = if first == path {
                format!("{path} is given twice")
            } else {
                format!("{first} and {path} are one file, given twice")
            };
            return Err(Error::usage(
                format!("{what}: each of its records would be written to the same .npy file twice"),
                "give each input once",
            ));
        }
        files.push((path, id));
    }
    Ok(())
}

/// Whether `file` still holds the record `id` where its index places it, each file opened
/// once (`None` where it cannot be read by its index).
fn held(opened: &mut HashMap<String, Option<IndexedFasta>>, file: &str, id: &str) -> bool {
    let indexed = opened.entry(file.to_string()).or_insert_with(|| {
        let region = Region {
            name: id.to_string(),
            start: 0,
            end: None,
            explicit_name: true,
        };
        IndexedFasta::open(file, &region).ok()
    });
    indexed.as_mut().is_some_and(|f| f.holds(id))
}

/// Refuses, before any work, two records that the inputs' indexes name (a current `.fai`)
/// and that would write one `.npy` file, each found in its file where the index places it.
/// Found only when the second record came, the first's array would already be written.
/// Repeated names within one file are left to the run, which finds them as they come.
fn check_npy_clashes(input: &InputArgs) -> Result<()> {
    // Each file name, with the record that takes it.
    let mut seen: HashMap<String, NpyOwner> = HashMap::new();
    let mut opened = HashMap::new();
    for path in &input.inputs {
        let Some(names) = indexed_lengths(path) else {
            continue;
        };
        let mut own = std::collections::HashSet::new();
        for (id, _) in names {
            if !own.insert(id.clone()) {
                continue;
            }
            let name = npy_name(&id);
            let owner = NpyOwner {
                label: id,
                number: None,
                source: path.clone(),
            };
            let Some(first) = seen.get(&name) else {
                seen.insert(name, owner);
                continue;
            };
            // Only a clash that both files confirm (an index may describe an older file);
            // a pair not confirmed is left to the run, and the others are still checked.
            if held(&mut opened, &first.source, &first.label)
                && held(&mut opened, path, &owner.label)
            {
                return Err(first.clash(&owner, &name));
            }
        }
    }
    Ok(())
}

/// Refuses, before any work, an output directory holding a `.npy` file that may not be
/// replaced: found only when its record came, it would stop the run after the arrays before
/// it had been replaced, leaving two runs' arrays side by side. With regions the records'
/// files are known and only they are checked; otherwise every `.npy` in the directory is.
fn check_npy_files(dir: &str, input: &InputArgs) -> Result<()> {
    let regions = input.regions()?;
    let names: Vec<String> = if regions.is_empty() {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(());
        };
        entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".npy"))
            .collect()
    } else {
        regions
            .iter()
            .map(|item| npy_name(&item.record_id()))
            .collect()
    };
    for name in names {
        if let Some(why) = unwritable(&Path::new(dir).join(&name)) {
            let whose = if regions.is_empty() {
                "a record with that id"
            } else {
                "its record"
            };
            return Err(Error::usage(
                format!(
                    "cannot write into {dir}: it holds {name}, which {why}; {whose} would stop the run after the arrays before it had been replaced"
                ),
                format!("move {name} away, make it one you may replace, or choose another -o"),
            ));
        }
    }
    Ok(())
}

/// One `.npy` per record; the header is rewritten with the length once the record ends.
struct NpySink {
    dir: PathBuf,
    d: usize,
    /// Each file name given so far, with the record that took it.
    seen: HashMap<String, NpyOwner>,
    /// Every file the run reads, which no `.npy` may replace.
    reads: Vec<String>,
}

impl RecordSink for NpySink {
    type Acc = Output;

    fn begin(&mut self, meta: &RecordMeta) -> Result<Output> {
        let name = npy_name(&meta.id);
        let record = meta.label();
        let owner = NpyOwner {
            label: record.clone(),
            number: Some(meta.number),
            source: meta.source.clone(),
        };
        if let Some(first) = self.seen.get(&name) {
            return Err(first.clash(&owner, &name));
        }
        self.seen.insert(name.clone(), owner);
        // Most file systems take names of up to 255 bytes; the temporary file adds 12.
        if name.len() > MAX_NPY_NAME {
            return Err(Error::input(
                &meta.source,
                format!(
                    "the record id is too long for a file name ({} bytes, at most {} fit)",
                    meta.id.len(),
                    MAX_NPY_NAME - 4
                ),
                "shorten the ids (a --regions-bed interval's name is its id under --bed-names)",
            )
            .in_record(genomamba::error::shorten(&record, 60)));
        }
        let path = self.dir.join(&name).to_string_lossy().into_owned();
        check_outputs(&self.reads, &[("-o", &path)])?;
        let mut o = Output::create(&path)?;
        o.write_all(&npy_header_fixed(&[0, self.d]))?;
        Ok(o)
    }

    fn rows(
        &mut self,
        out: &mut Output,
        meta: &RecordMeta,
        start: usize,
        rows: &[f32],
        d: usize,
    ) -> Result<()> {
        // 1-based, on the record.
        check_finite(rows, meta, |i| {
            Some(format!("position {}", start + i / d + 1))
        })?;
        let bytes: Vec<u8> = rows.iter().flat_map(|x| x.to_le_bytes()).collect();
        out.write_all(&bytes)
    }

    fn end(&mut self, mut out: Output, _: &RecordMeta, len: usize) -> Result<()> {
        out.patch(0, &npy_header_fixed(&[len, self.d]))?;
        out.commit()
    }
}

pub fn run(a: EmbedArgs) -> Result<()> {
    let per_position = a.pool == "none";
    let format = a
        .format
        .clone()
        .unwrap_or_else(|| if per_position { "npy" } else { "tsv" }.to_string());
    match (per_position, format.as_str()) {
        (true, "npy") | (false, "tsv") => {}
        (true, f) => {
            return Err(Error::usage(
                format!("--pool none writes per-position arrays; format '{f}' cannot hold them"),
                "use --pool none --format npy (or a pooled --pool mean|max|last with tsv)",
            ));
        }
        (false, f) => {
            return Err(Error::usage(
                format!("format '{f}' is not available for pooled embeddings"),
                "use --format tsv, or --pool none --format npy for per-position arrays",
            ));
        }
    }
    let pool = if per_position {
        None
    } else {
        Some(a.pool.parse::<Pool>()?)
    };
    if per_position && a.output == "-" {
        return Err(Error::usage(
            "--pool none writes one .npy file per record into a directory, which stdout (-o -) cannot be",
            "give a directory with -o",
        ));
    }
    // The pooled table is a file; per-position arrays go into a directory.
    let file_outputs: &[(&str, &str)] = match pool {
        Some(_) => &[("-o", &a.output)],
        None => {
            check_output_dir(
                Path::new(&a.output),
                " (--pool none writes one .npy per record into a directory)",
                "choose another -o",
            )?;
            check_inputs_once(&a.input)?;
            a.input.check_unique_regions(npy_name)?;
            if a.input.regions()?.is_empty() {
                check_npy_clashes(&a.input)?;
            }
            check_npy_files(&a.output, &a.input)?;
            &[]
        }
    };
    let (device, model) = a.input.setup(file_outputs)?;
    let d = model.backbone.d_model();
    let pb = a.input.progress("embed");
    let skipped = match pool {
        Some(pool) => {
            let mut out = Output::create(&a.output)?;
            let mut line = String::from("id\tlength");
            for i in 0..d {
                line.push_str(&format!("\tdim_{i}"));
            }
            line.push('\n');
            out.write_all(line.as_bytes())?;
            let mut sink = PooledSink { out, pool, d };
            let skipped = a.input.drive(&model, &device, &pb, &mut sink, false)?;
            check_some_records(&skipped)?;
            super::mark("all chunks done");
            sink.out.commit()?;
            super::mark("output written");
            skipped
        }
        None => {
            let dir = PathBuf::from(&a.output);
            // A directory made here goes again if no record reaches it (an error, or an
            // interruption, before the first file is finished).
            let made = PendingPath::make_dir(&dir).map_err(|e| Error::io(&a.output, e))?;
            let mut sink = NpySink {
                dir,
                d,
                seen: HashMap::new(),
                reads: a.input.read_files(),
            };
            let skipped = a.input.drive(&model, &device, &pb, &mut sink, false)?;
            check_some_records(&skipped)?;
            PendingPath::keep_all(made);
            skipped
        }
    };
    pb.finish_and_clear();
    report_skipped(&skipped);
    Ok(())
}
