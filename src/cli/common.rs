//! Arguments and plumbing shared by the subcommands that read sequences.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};
use clap::Args;
use indicatif::{HumanCount, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use genomamba::alphabet::reverse_complement_tokens;
use genomamba::device::DeviceSpec;
use genomamba::infer::{Batcher, DEFAULT_CHUNK, batch_positions, check_gpu_chunk, gpu_chunk};
use genomamba::infer::{PieceRunner, pad_length, run_batch};
use genomamba::io::bed::read_regions_bed;
use genomamba::io::fastx::{Piece, RecordMeta, for_each_piece};
use genomamba::io::region::{IndexedFasta, Region, indexed_lengths};
use genomamba::model::weights::host_values;
use genomamba::model::{GenoModel, Precision};
use genomamba::{Error, Result};

/// Inputs, device and chunking, shared by `embed`, `classify` and `annotate`.
#[derive(Debug, Args)]
pub struct InputArgs {
    /// Model directory (genomamba or Hugging Face Mamba checkpoint).
    #[arg(short = 'm', long = "model")]
    pub model: PathBuf,
    /// FASTA/FASTQ files (gzip, bgzip, bzip2, xz, zstd detected from content); `-` for stdin.
    #[arg(required = true, value_name = "IN")]
    pub inputs: Vec<String>,
    /// Only this region, `chr:start-end` (1-based, inclusive); repeatable. Needs a `.fai`
    /// index (and `.gzi` for bgzip) next to each input.
    #[arg(long = "region", value_name = "REGION")]
    pub regions: Vec<String>,
    /// Only the intervals of this BED file (0-based, half-open: `chrom start end`, further
    /// columns ignored; plain or compressed like the inputs), in its order, after any
    /// `--region`s; repeatable. Each
    /// is read like `--region chrom:start+1-end`, and that is its id (but see `--bed-names`
    /// and `--bed-strand`).
    #[arg(long = "regions-bed", value_name = "BED")]
    pub regions_bed: Vec<String>,
    /// Name each `--regions-bed` interval by its BED name (column 4) instead of
    /// `chrom:start+1-end`: the id of its output row (embed, classify) or `.npy` file.
    /// Intervals without a name (three columns, or `.`) keep the region as their id.
    /// (annotate writes chromosome coordinates, so ids do not appear in its outputs.)
    #[arg(long = "bed-names")]
    pub bed_names: bool,
    /// Read each `--regions-bed` interval on its strand (column 6), as `bedtools getfasta -s`
    /// does: a `-` interval is read as its reverse complement, with id
    /// `chrom:start+1-end(-)`; `+`, `.` or no column 6 read the forward strand. annotate
    /// keeps chromosome coordinates and writes the strand read (BED column 6, a TSV column);
    /// it holds a `-` interval's per-base outputs until the interval ends.
    #[arg(long = "bed-strand")]
    pub bed_strand: bool,
    /// Compute device: `cpu` or `cuda[:N]`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Number format of the activations inside the blocks: f32, bf16 or f16. The half
    /// formats halve the bytes the blocks move on a GPU; state, scan arithmetic and the
    /// residual stream stay f32. Hidden states differ from f32 by about 1e-2 (bf16) or 1e-3
    /// (f16) relative (BENCHMARKS.md).
    #[arg(long, default_value = "f32", value_name = "FORMAT")]
    pub precision: String,
    /// Bases per chunk; the state is carried across chunks, so results do not depend on it.
    /// Default 8192 on the CPU; on a GPU, where long chunks run a chromosome faster (fewer
    /// kernel launches per base), the longest power of two up to 524288 whose activations
    /// are estimated to fit in 6 GiB and in half the GPU's memory (524288 for d_model 256 in
    /// f16/bf16, 262144 in f32). Memory grows with it: a batch of short records holds at most
    /// one chunk's worth of positions (on a GPU, at least 32 x 8192).
    #[arg(long)]
    pub chunk_size: Option<usize>,
    /// Records run together when they fit in one chunk. Each runs padded to the longest of
    /// its batch, so a batch ends early where it would hold more than one chunk of positions
    /// (on a GPU, at least 32 x 8192) or where padding would pass half its records' own bases
    /// (on a GPU, which pays per batch more than per position: all of them).
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
    /// The default chunk on a GPU, set by [`Self::setup`] once the model's width is known.
    #[arg(skip)]
    gpu_chunk: std::sync::OnceLock<usize>,
    /// The regions of `--region` and `--regions-bed`, read once ([`Self::regions`]).
    #[arg(skip)]
    region_list: std::sync::OnceLock<Vec<RegionItem>>,
}

/// A region to read, and the BED file and line it comes from (`None` for `--region`).
#[derive(Debug, Clone)]
pub struct RegionItem {
    pub region: Region,
    pub from: Option<(String, u64)>,
    /// The record id to give it instead of the region's own (`--bed-names`).
    pub id: Option<String>,
    /// Read as its reverse complement (a `-` interval under `--bed-strand`).
    pub reverse: bool,
}

impl RegionItem {
    /// Says, in an error about this region, the BED line it comes from.
    fn locate(&self, err: Error) -> Error {
        match &self.from {
            Some((bed, line)) => err.prefixed(format!("{bed} line {line}")),
            None => err,
        }
    }

    /// The id of the record read from it: its name (`--bed-names`) or the region (with
    /// `(-)` on the minus strand).
    pub fn record_id(&self) -> String {
        self.id
            .clone()
            .unwrap_or_else(|| self.region.record_id(self.reverse))
    }

    /// Where it was given, for errors: `BED line N` or `--region R`.
    fn origin(&self) -> String {
        match &self.from {
            Some((bed, line)) => format!("{bed} line {line}"),
            None => format!("--region {}", self.region.spec()),
        }
    }
}

impl InputArgs {
    /// Every file the command reads, for [`check_outputs`]: the inputs, their indexes, the
    /// `--regions-bed` files and the model's own files.
    pub fn read_files(&self) -> Vec<String> {
        let mut files = self.inputs.clone();
        for input in self.inputs.iter().filter(|i| *i != "-") {
            files.push(format!("{input}.fai"));
            files.push(format!("{input}.gzi"));
        }
        files.extend(self.regions_bed.iter().cloned());
        for name in ["config.json", "model.safetensors"] {
            files.push(self.model.join(name).to_string_lossy().into_owned());
        }
        files
    }

    /// Validates numbers, inputs and the command's output files (`outputs`, as for
    /// [`check_outputs`]), sets up threads, picks the device and loads the model.
    pub fn setup(&self, outputs: &[(&str, &str)]) -> Result<(Device, GenoModel)> {
        for (flag, on) in [
            ("--bed-names", self.bed_names),
            ("--bed-strand", self.bed_strand),
        ] {
            if on && self.regions_bed.is_empty() {
                return Err(Error::usage(
                    format!(
                        "{flag} reads the intervals of --regions-bed, and no --regions-bed was given"
                    ),
                    format!("add --regions-bed FILE, or drop {flag}"),
                ));
            }
        }
        if self.chunk_size == Some(0) {
            return Err(Error::usage(
                "--chunk-size must be at least 1",
                "pass a positive number of bases, e.g. --chunk-size 8192",
            ));
        }
        if self.batch_size == 0 {
            return Err(Error::usage(
                "--batch-size must be at least 1",
                "pass a positive number, e.g. --batch-size 32",
            ));
        }
        set_threads(self.threads)?;
        let regions = self.regions()?;
        if !regions.is_empty() && self.inputs.iter().any(|i| i == "-") {
            return Err(Error::usage(
                "--region and --regions-bed cannot read from stdin",
                "give the path of an indexed FASTA file",
            ));
        }
        let precision = self.precision.parse::<Precision>()?;
        genomamba::io::fastx::check_inputs(&self.inputs)?;
        // Each region against each file's indexes, before any work.
        if let Some(first) = regions.first() {
            for input in &self.inputs {
                let fasta =
                    IndexedFasta::open(input, &first.region).map_err(|e| first.locate(e))?;
                for item in regions {
                    fasta
                        .check_region(&item.region)
                        .map_err(|e| item.locate(e))?;
                }
            }
        }
        check_outputs(&self.read_files(), outputs)?;
        let spec = self.device.parse::<DeviceSpec>()?;
        let device = spec.device()?;
        // A GPU is started on a thread of its own while the model is read (unless
        // `GENOMAMBA_EARLY_START=off`, for comparisons).
        let early = spec.compiles_per_shape()
            && std::env::var("GENOMAMBA_EARLY_START").map_or(true, |v| v != "off");
        let start = early.then(|| {
            let device = device.clone();
            std::thread::spawn(move || genomamba::device::warm_up(&device))
        });
        let model = GenoModel::load(&self.model, &device);
        if let Some(start) = start {
            let _ = start.join();
        }
        super::mark("device and model ready");
        let mut model = model?;
        model.backbone.set_precision(precision);
        let weights = format!(
            "the weights of {} are out of range for these inputs: use a model from a run that did not diverge",
            self.model.display()
        );
        let _ = NON_FINITE_FIX.set(if precision == Precision::F16 {
            format!(
                "the activations may overflow f16's range (65,504): run with --precision f32 (or bf16); if that fails too, {weights}"
            )
        } else {
            weights
        });
        if spec.compiles_per_shape() {
            let d_inner = model.config.architecture.d_inner();
            match self.chunk_size {
                Some(chunk) => check_gpu_chunk(chunk, d_inner, precision, spec.total_memory())?,
                None => {
                    let chunk = gpu_chunk(d_inner, precision, spec.total_memory());
                    let _ = self.gpu_chunk.set(chunk);
                    super::mark(&format!("default GPU chunk {chunk}"));
                }
            }
        }
        Ok((device, model))
    }

    /// Whether the device compiles and tunes kernels for every new length (a GPU): a record's
    /// last chunk then runs padded to a whole part of a chunk, a batch of whole records to
    /// one of few lengths (`run_batch_tensor`'s `pad_last`, [`pad_length`]), and batches may
    /// hold more padding ([`Batcher::new`]).
    pub fn compiles_per_shape(&self) -> bool {
        self.device
            .parse::<DeviceSpec>()
            .is_ok_and(DeviceSpec::compiles_per_shape)
    }

    /// `--chunk-size`, or on a GPU the default [`Self::setup`] chose for the model's width, the
    /// activations' format and the GPU's memory ([`gpu_chunk`]), or else the default for the
    /// device `--device` names ([`DeviceSpec::default_chunk`]; an unparsable device fails in
    /// [`Self::setup`]).
    pub fn chunk(&self) -> usize {
        self.chunk_size
            .or(self.gpu_chunk.get().copied())
            .unwrap_or_else(|| {
                self.device
                    .parse::<DeviceSpec>()
                    .map_or(DEFAULT_CHUNK, DeviceSpec::default_chunk)
            })
    }

    /// The regions to read: each `--region`, then each interval of each `--regions-bed`
    /// file; read once and kept.
    pub fn regions(&self) -> Result<&[RegionItem]> {
        if let Some(list) = self.region_list.get() {
            return Ok(list);
        }
        let mut list = Vec::new();
        for text in &self.regions {
            list.push(RegionItem {
                region: text.parse::<Region>()?,
                from: None,
                id: None,
                reverse: false,
            });
        }
        for bed in &self.regions_bed {
            for row in read_regions_bed(bed)? {
                let named = self.bed_names && !row.name.is_empty() && row.name != ".";
                let reverse = self.bed_strand && row.on_minus_strand(bed)?;
                list.push(RegionItem {
                    region: row.region,
                    from: Some((bed.clone(), row.line)),
                    id: named.then_some(row.name),
                    reverse,
                });
            }
        }
        Ok(self.region_list.get_or_init(|| list))
    }

    /// Refuses, before any work, two regions whose records would be written to the same
    /// file (`file_of` their record id): same ids, or ids that differ only in characters a
    /// file name cannot hold. The error names where both were given.
    pub fn check_unique_regions(&self, file_of: impl Fn(&str) -> String) -> Result<()> {
        let mut seen = std::collections::HashMap::new();
        for item in self.regions()? {
            let file = file_of(&item.record_id());
            if let Some(first) = seen.insert(file.clone(), item) {
                let fix = if self.bed_names {
                    "give the intervals unique names in column 4, or list each interval once"
                } else {
                    "list each region once"
                };
                return Err(Error::usage(
                    format!(
                        "{} ({}) and {} ({}) would both be written to {file}",
                        first.origin(),
                        first.record_id(),
                        item.origin(),
                        item.record_id()
                    ),
                    fix,
                ));
            }
        }
        Ok(())
    }

    /// The bases the run will read, when the `.fai` index of every input gives them (whole
    /// files, or the `--region`s): the progress bar's total. `None` otherwise (stdin, FASTQ,
    /// files without an index), and then the bar counts without a total.
    pub fn known_bases(&self) -> Option<u64> {
        let regions = self.regions().ok()?;
        let mut total = 0u64;
        for input in &self.inputs {
            let lengths = indexed_lengths(input)?;
            if regions.is_empty() {
                total += lengths.iter().map(|(_, len)| len).sum::<u64>();
                continue;
            }
            // The first of repeated names, as reading finds it.
            let mut by_name = std::collections::HashMap::with_capacity(lengths.len());
            for (name, len) in &lengths {
                by_name.entry(name.as_str()).or_insert(*len);
            }
            for item in regions {
                let region = &item.region;
                let len = *by_name.get(region.name.as_str())?;
                let end = region.end.unwrap_or(len).min(len);
                total += end.saturating_sub(region.start);
            }
        }
        Some(total)
    }

    /// The progress display of a run over these inputs on stderr, counting bases; hidden
    /// with `--quiet` or when stderr is not a terminal ([`progress`]).
    pub fn progress(&self, what: &str) -> ProgressBar {
        if self.quiet || !std::io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        progress(what, self.known_bases())
    }

    /// Runs the model over every input record and hands the final hidden states to `sink`,
    /// record by record, in input order. Whole records shorter than a chunk are batched (up
    /// to `--batch-size`); longer ones arrive and run piece by piece (one chunk each) with
    /// the state carried, so no record is ever held whole. Reading and tokenising run on
    /// their own thread, one group ahead of the model. Returns the number of skipped empty
    /// records.
    ///
    /// With `rc`, every record's reverse complement runs too and its hidden states go to
    /// [`RecordSink::rows_rc`] (in the order of the reverse complement). A long record's
    /// tokens are then kept (one byte per base) until its last piece, when its reverse
    /// complement runs chunk by chunk.
    pub fn drive<S: RecordSink>(
        &self,
        model: &GenoModel,
        device: &Device,
        pb: &ProgressBar,
        sink: &mut S,
        rc: bool,
    ) -> Result<Skipped> {
        let d = model.backbone.d_model();
        let mut long: Option<(PieceRunner<'_>, S::Acc)> = None;
        let mut long_tokens: Vec<u8> = Vec::new();
        let mut consume = |group: Vec<Piece>| -> Result<()> {
            if let [piece] = group.as_slice()
                && !piece.is_whole()
            {
                let meta = &*piece.meta;
                let (mut runner, mut acc) = match long.take() {
                    Some((runner, acc)) if piece.start > 0 => (runner, acc),
                    _ => {
                        long_tokens.clear();
                        (
                            PieceRunner::new(&model.backbone, None, device),
                            sink.begin(meta)?,
                        )
                    }
                };
                // A GPU runs the last piece padded to a whole part of a chunk (few shapes).
                let pad_to = if piece.last && self.compiles_per_shape() {
                    pad_length(piece.tokens.len(), self.chunk())
                } else {
                    0
                };
                // With the blocks in groups, hidden states come back pieces late (`PieceRunner`).
                for (start, hidden) in runner.push(piece.start, &piece.tokens, pad_to) {
                    sink.rows_tensor(&mut acc, meta, start, hidden)?;
                }
                pb.inc(piece.tokens.len() as u64);
                if rc {
                    long_tokens.extend_from_slice(&piece.tokens);
                }
                if piece.last {
                    for (start, hidden) in runner.finish().0 {
                        sink.rows_tensor(&mut acc, meta, start, hidden)?;
                    }
                    if rc {
                        let rev = reverse_complement_tokens(&long_tokens);
                        run_batch(
                            &model.backbone,
                            &[&rev],
                            self.chunk(),
                            device,
                            true,
                            self.compiles_per_shape(),
                            &mut |c| {
                                sink.rows_rc(&mut acc, meta, c.start, &c.values[..c.len * d], d)
                            },
                        )?;
                        drop(rev); // before the sink's own per-record work
                        sink.whole_record(&mut acc, &long_tokens)?;
                        long_tokens = Vec::new();
                    }
                    sink.end(acc, meta, piece.start + piece.tokens.len())?;
                } else {
                    long = Some((runner, acc));
                }
                return Ok(());
            }
            let seqs: Vec<&[u8]> = group.iter().map(|p| p.tokens.as_slice()).collect();
            let mut accs = Vec::with_capacity(group.len());
            for p in &group {
                accs.push(sink.begin(&p.meta)?);
            }
            // Forward strand, then (with `rc`) the reverse complements, whose phases follow
            // the original coordinates.
            let revs: Vec<Vec<u8>> = if rc {
                seqs.iter().map(|s| reverse_complement_tokens(s)).collect()
            } else {
                Vec::new()
            };
            let revs: Vec<&[u8]> = revs.iter().map(|r| r.as_slice()).collect();
            for (recs, reverse) in [(&seqs, false), (&revs, true)] {
                if reverse && !rc {
                    break;
                }
                run_batch(
                    &model.backbone,
                    recs,
                    self.chunk(),
                    device,
                    reverse,
                    self.compiles_per_shape(),
                    &mut |c| {
                        let mut bases = 0;
                        for (b, acc) in accs.iter_mut().enumerate() {
                            let valid = recs[b].len().saturating_sub(c.start).min(c.len);
                            bases += valid;
                            if valid > 0 {
                                let o = b * c.len * d;
                                let rows = &c.values[o..o + valid * d];
                                let meta = &group[b].meta;
                                if reverse {
                                    sink.rows_rc(acc, meta, c.start, rows, d)?;
                                } else {
                                    sink.rows(acc, meta, c.start, rows, d)?;
                                }
                            }
                        }
                        // The records' own bases, not the padding to the longest.
                        if !reverse {
                            pb.inc(bases as u64);
                        }
                        Ok(())
                    },
                )?;
            }
            for (p, mut acc) in group.iter().zip(accs) {
                if rc {
                    sink.whole_record(&mut acc, &p.tokens)?;
                }
                sink.end(acc, &p.meta, p.tokens.len())?;
            }
            Ok(())
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<Piece>>>(1);
        std::thread::scope(|scope| {
            let reader = scope.spawn(move || {
                let mut skipped = Skipped::default();
                let res = self.read_groups(&mut skipped, &mut |group| {
                    tx.send(Ok(group))
                        .map_err(|_| Error::Runtime("the consumer stopped".into()))
                });
                if let Err(e) = res {
                    // Fails silently when the consumer already stopped with its own error.
                    let _ = tx.send(Err(e));
                }
                skipped
            });
            let mut result = Ok(());
            for msg in rx.iter() {
                if let Err(e) = msg.and_then(&mut consume) {
                    result = Err(e);
                    break;
                }
            }
            drop(rx);
            let skipped = reader.join().unwrap_or_default();
            result.map(|()| skipped)
        })
    }

    /// Reads the inputs as groups of pieces: a batch of whole short records, or one piece
    /// of a long record.
    fn read_groups(
        &self,
        skipped_empty: &mut Skipped,
        f: &mut dyn FnMut(Vec<Piece>) -> Result<()>,
    ) -> Result<()> {
        let regions = self.regions()?;
        // Every record of a batch runs padded to the longest (`Batcher` bounds the waste).
        let gpu = self.compiles_per_shape();
        let mut batcher = Batcher::new(self.batch_size, batch_positions(self.chunk(), gpu), gpu);
        let mut push = |p: Piece| -> Result<()> {
            if p.is_whole() && p.tokens.is_empty() {
                skipped_empty.count += 1;
                if skipped_empty.first.is_none() {
                    let m = &p.meta;
                    skipped_empty.first = Some(format!(
                        "{}, record {}",
                        genomamba::error::shown(&m.source),
                        m.label()
                    ));
                }
                return Ok(());
            }
            if p.start == 0 {
                skipped_empty.records += 1;
            }
            if !p.is_whole() {
                batcher.flush(f)?;
                return f(vec![p]);
            }
            let len = p.tokens.len();
            batcher.push(p, len, f)
        };
        for input in &self.inputs {
            if let Some(first) = regions.first() {
                // One opening of the file and its indexes for all its regions.
                let mut fasta =
                    IndexedFasta::open(input, &first.region).map_err(|e| first.locate(e))?;
                for item in regions {
                    fasta
                        .for_each_piece_as(
                            &item.region,
                            Some(&item.record_id()),
                            item.reverse,
                            self.chunk(),
                            &mut push,
                        )
                        .map_err(|e| item.locate(e))?;
                }
            } else {
                for_each_piece(input, self.chunk(), &mut push)?;
            }
        }
        batcher.flush(f)
    }
}

/// Refuses an output directory (`dir`) that exists as something else: "DIR exists and is not a
/// directory" + `why`, and `fix`.
pub fn check_output_dir(dir: &Path, why: &str, fix: &str) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(Error::usage(
            format!("{} exists and is not a directory{why}", dir.display()),
            fix,
        ));
    }
    // The directory, or its deepest part that exists, must take new entries: checked by
    // making (and dropping) one, before any work.
    let base = dir
        .ancestors()
        .filter(|p| !p.as_os_str().is_empty())
        .find(|p| std::fs::symlink_metadata(p).is_ok())
        .unwrap_or(Path::new("."));
    let cannot = |what: String| {
        Error::usage(
            format!("cannot make {}: {what}", dir.display()),
            "choose a location you can write to",
        )
    };
    if !base.is_dir() {
        return Err(cannot(format!("{} is not a directory", base.display())));
    }
    tempfile::Builder::new()
        .prefix(".genomamba-probe.")
        .tempdir_in(base)
        .map_err(|e| {
            cannot(format!(
                "{} (in {})",
                std::io::Error::from(e.kind()),
                base.display()
            ))
        })?;
    // The missing parts themselves (a name too long, say) are made and removed again.
    let missing: Vec<&Path> = dir
        .ancestors()
        .filter(|p| !p.as_os_str().is_empty())
        .take_while(|p| *p != base)
        .collect();
    let mut made = Vec::new();
    let mut failed = None;
    for part in missing.iter().rev() {
        match std::fs::create_dir(part) {
            Ok(()) => made.push(*part),
            Err(e) => {
                failed = Some(cannot(std::io::Error::from(e.kind()).to_string()));
                break;
            }
        }
    }
    for part in made.iter().rev() {
        let _ = std::fs::remove_dir(part);
    }
    failed.map_or(Ok(()), Err)
}

/// Refuses, before any work, an output that is one of the `inputs` (a finished output is
/// renamed over its destination, so the input would be lost) and two outputs naming the same
/// file (or both stdout). `outputs` are (option, path) pairs.
pub fn check_outputs(inputs: &[String], outputs: &[(&str, &str)]) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let identity = |p: &str| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let mut seen: Vec<(&str, PathBuf)> = Vec::new();
    let mut existing: Vec<(&str, (u64, u64))> = Vec::new();
    for &(flag, out) in outputs {
        // A regular file (by any path or link); a device such as /dev/null is written to
        // as it is and may take several outputs.
        let regular = std::fs::metadata(out).is_ok_and(|m| m.is_file());
        if let Some(id) = identity(out).filter(|_| out != "-" && regular) {
            let same = inputs.iter().find(|i| *i != "-" && identity(i) == Some(id));
            if let Some(input) = same {
                return Err(Error::usage(
                    format!("{flag} {out} is the input {input}: the output would replace it"),
                    format!("choose another {flag}"),
                ));
            }
            if let Some((other, _)) = existing.iter().find(|(_, i)| *i == id) {
                return Err(Error::usage(
                    format!("{other} and {flag} both write {out}"),
                    "give each output a file of its own",
                ));
            }
            existing.push((flag, id));
        }
        if std::fs::metadata(out).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
            continue;
        }
        // The same file by another spelling (`./x`, `dir/../x`, a link to a file not made
        // yet): the links followed and the directory resolved.
        let resolved = genomamba::io::output::resolve_links(Path::new(out));
        let path = resolved.as_path();
        let key = match (path.parent(), path.file_name()) {
            (Some(dir), Some(name)) if out != "-" => {
                let dir = if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                };
                std::fs::canonicalize(dir).map_or_else(|_| path.to_path_buf(), |d| d.join(name))
            }
            _ => path.to_path_buf(),
        };
        if let Some((other, _)) = seen.iter().find(|(_, k)| *k == key) {
            let what = if out == "-" { "stdout" } else { out };
            return Err(Error::usage(
                format!("{other} and {flag} both write {what}"),
                "give each output a file of its own",
            ));
        }
        seen.push((flag, key));
    }
    Ok(())
}

/// How to fix a model's non-finite outputs, set with the precision in [`InputArgs::setup`].
static NON_FINITE_FIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Refuses `values` (outputs of record `meta`) if any is a NaN or an infinity: such a number
/// would be written as an answer. The error names the record, the place that `place` gives
/// for the index of the first bad value (`None` for a value of the whole record), and the
/// fix for this run's precision.
pub fn check_finite(
    values: &[f32],
    meta: &RecordMeta,
    place: impl FnOnce(usize) -> Option<String>,
) -> Result<()> {
    let Some(i) = values.iter().position(|v| !v.is_finite()) else {
        return Ok(());
    };
    let mut what = format!("the model gives {} for record {}", values[i], meta.label());
    if let Some(place) = place(i) {
        what = format!("{what} at {place}");
    }
    let fix = NON_FINITE_FIX
        .get()
        .map_or("use a model whose weights are in range", String::as_str);
    Err(Error::usage(what, fix))
}

/// What a subcommand does with the hidden states of each record.
pub trait RecordSink {
    /// Per-record accumulator.
    type Acc;
    /// A record starts.
    fn begin(&mut self, meta: &RecordMeta) -> Result<Self::Acc>;
    /// Final hidden states of positions `start..start + rows.len() / d` of the record.
    fn rows(
        &mut self,
        acc: &mut Self::Acc,
        meta: &RecordMeta,
        start: usize,
        rows: &[f32],
        d: usize,
    ) -> Result<()>;
    /// Like [`Self::rows`], with the hidden states (`[positions, d]`) still on the model's
    /// device, for sinks that reduce them there; the default copies them to the host and
    /// calls [`Self::rows`]. Long records arrive this way, piece by piece.
    fn rows_tensor(
        &mut self,
        acc: &mut Self::Acc,
        meta: &RecordMeta,
        start: usize,
        hidden: Tensor<2>,
    ) -> Result<()> {
        let d = hidden.dims()[1];
        let rows = host_values(hidden);
        self.rows(acc, meta, start, &rows, d)
    }
    /// Final hidden states of the record's reverse complement, positions `start..` of it
    /// (only when [`InputArgs::drive`] runs with `rc`).
    fn rows_rc(
        &mut self,
        _acc: &mut Self::Acc,
        _meta: &RecordMeta,
        _start: usize,
        _rows: &[f32],
        _d: usize,
    ) -> Result<()> {
        Ok(())
    }
    /// The whole record's tokens, after both strands ran and before [`Self::end`] (only when
    /// [`InputArgs::drive`] runs with `rc`, which keeps them anyway).
    fn whole_record(&mut self, _acc: &mut Self::Acc, _tokens: &[u8]) -> Result<()> {
        Ok(())
    }
    /// The record ends; `len` is its length.
    fn end(&mut self, acc: Self::Acc, meta: &RecordMeta, len: usize) -> Result<()>;
}

/// A progress display on stderr counting bases: with `total`, a bar with the time left;
/// without, a spinner.
fn progress(what: &str, total: Option<u64>) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
    let template = match total {
        Some(_) => {
            "{spinner} {msg} [{wide_bar}] {percent}% of {human_len} bases, {rate}, eta {eta}"
        }
        None => "{spinner} {msg} {human_pos} bases, {rate}, {elapsed_precise}",
    };
    let rate = |state: &ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = write!(w, "{} bases/s", HumanCount(state.per_sec() as u64));
    };
    pb.set_style(
        ProgressStyle::with_template(template)
            .map(|style| style.with_key("rate", rate).progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_message(what.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    pb
}

/// Warns on stderr about skipped empty records (with --quiet too: it hides only progress).
pub fn report_skipped(skipped: &Skipped) {
    match (skipped.count, &skipped.first) {
        (0, _) | (_, None) => {}
        (1, Some(first)) => super::warn(&format!("skipped a record of length 0 ({first})")),
        (n, Some(first)) => super::warn(&format!(
            "skipped {n} records of length 0 (the first: {first})"
        )),
    }
}

/// Refuses a run whose inputs held records but only empty ones (as an empty input is
/// refused): it would write nothing but a header and succeed. Called before the outputs are
/// committed.
pub fn check_some_records(skipped: &Skipped) -> Result<()> {
    match (&skipped.first, skipped.records) {
        (Some(first), 0) => Err(Error::usage(
            format!(
                "every record of the input is empty ({} of length 0; the first: {first})",
                skipped.count
            ),
            "check the input: its headers have no sequence lines",
        )),
        _ => Ok(()),
    }
}

/// Records of length 0 that a run skipped: how many, and how to find the first.
#[derive(Debug, Default)]
pub struct Skipped {
    /// Records run (of length 1 or more).
    pub records: usize,
    /// How many were skipped.
    pub count: usize,
    /// The first one, as `FILE, record ID` (`#N` for an empty header).
    pub first: Option<String>,
}

/// The command line as a shell reads it back: each argument as it is, or in single quotes
/// when it holds anything but letters, digits and `_-./=:,+@%`.
pub fn command_line() -> String {
    std::env::args_os()
        .map(|a| shell_quote(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_quote(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./=:,+@%".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// Formats an f32 for tables (shortest representation that reads back exactly).
pub fn fmt_f32(v: f32, out: &mut String) {
    use std::fmt::Write;
    let _ = write!(out, "{v}");
}

/// Architecture flags of a new model (`init`, and `train` without `--from`).
#[derive(Debug, Args)]
pub struct ArchArgs {
    /// Width of the residual stream.
    #[arg(long, default_value_t = 128)]
    pub d_model: usize,
    /// Number of Mamba blocks.
    #[arg(long, default_value_t = 4)]
    pub n_layer: usize,
    /// SSM state size per channel.
    #[arg(long, default_value_t = 16)]
    pub d_state: usize,
    /// d_inner = expand x d_model.
    #[arg(long, default_value_t = 2)]
    pub expand: usize,
    /// Convolution width.
    #[arg(long, default_value_t = 4)]
    pub d_conv: usize,
    /// Rank of the Δ projection (default ceil(d_model/16)).
    #[arg(long)]
    pub dt_rank: Option<usize>,
    /// Add a learned embedding of the position modulo this period to every token (3 = codon
    /// phase, for gene structure; 0 = none). Mamba's real, diagonal state cannot tell
    /// reading frames apart without it.
    #[arg(long, default_value_t = 0)]
    pub phase_period: usize,
}

impl ArchArgs {
    /// The backbone configuration these flags describe.
    pub fn config(&self) -> genomamba::model::MambaConfig {
        let mut arch = genomamba::model::MambaConfig::new(self.d_model, self.n_layer);
        arch.d_state = self.d_state;
        arch.expand = self.expand;
        arch.d_conv = self.d_conv;
        arch.dt_rank = self.dt_rank;
        arch.phase_period = self.phase_period;
        arch
    }
}

/// Sequence-level labeled data (`train` and `baseline`).
#[derive(Debug, Args)]
pub struct SeqDataArgs {
    /// Sequence task: a class and its FASTA/FASTQ file, `NAME=PATH`; repeat per class.
    #[arg(long = "class", value_name = "NAME=PATH")]
    pub classes: Vec<String>,
    /// Sequence task: a TSV with a header and columns `sequence` and `label`.
    #[arg(long)]
    pub tsv: Option<String>,
    /// Separate validation set, one FASTA/FASTQ per class: `NAME=PATH`, repeat per class
    /// (with `--class` or `--tsv` training data alike).
    #[arg(long = "val-class", value_name = "NAME=PATH")]
    pub val_classes: Vec<String>,
    /// Separate validation TSV (with `--tsv` or `--class` training data alike).
    #[arg(long)]
    pub val_tsv: Option<String>,
}

impl SeqDataArgs {
    /// The files the data is read from (the path after `NAME=` of each class).
    pub fn paths(&self) -> Vec<String> {
        let classes = self.classes.iter().chain(&self.val_classes);
        let class_paths = classes.filter_map(|c| c.split_once('=').map(|(_, p)| p.to_string()));
        class_paths
            .chain(self.tsv.clone())
            .chain(self.val_tsv.clone())
            .collect()
    }
}

/// The most threads `--threads` starts.
const MAX_THREADS: usize = 1024;

/// Sizes rayon's global pool from `--threads` (all cores when absent).
pub fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(n) = threads {
        if n == 0 {
            return Err(Error::usage(
                "--threads must be at least 1",
                "pass a positive number or leave it out",
            ));
        }
        if n > MAX_THREADS {
            let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
            return Err(Error::usage(
                format!("--threads {n} is more than {MAX_THREADS}"),
                format!(
                    "use at most the number of cores (this machine has {cores}), or leave it out"
                ),
            ));
        }
        // Ignored if the pool was already built (only in tests running several commands).
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn arguments_are_quoted_as_a_shell_reads_them() {
        assert_eq!(super::shell_quote("--class"), "--class");
        assert_eq!(super::shell_quote("a=b/c.fa"), "a=b/c.fa");
        assert_eq!(super::shell_quote("my model"), "'my model'");
        assert_eq!(super::shell_quote("it's"), r"'it'\''s'");
        assert_eq!(super::shell_quote(""), "''");
    }

    use super::*;
    use clap::Parser;
    use genomamba::infer::GPU_DEFAULT_CHUNK;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        input: InputArgs,
    }

    fn chunk(args: &[&str]) -> usize {
        let argv = ["genomamba", "-m", "model", "in.fa"].iter().chain(args);
        Cli::parse_from(argv).input.chunk()
    }

    #[test]
    fn chunk_size_defaults_to_the_device() {
        assert_eq!(chunk(&[]), DEFAULT_CHUNK);
        assert_eq!(chunk(&["--device", "cpu"]), DEFAULT_CHUNK);
        assert_eq!(chunk(&["--device", "cuda"]), GPU_DEFAULT_CHUNK);
        assert_eq!(chunk(&["--device", "cuda:1"]), GPU_DEFAULT_CHUNK);
        assert_eq!(chunk(&["--device", "cuda", "--chunk-size", "1000"]), 1000);
        assert_eq!(chunk(&["--chunk-size", "77"]), 77);
    }

    #[test]
    fn the_progress_total_comes_from_fresh_indexes_only() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, fai: Option<&str>| {
            let fa = dir.path().join(name);
            std::fs::write(&fa, ">a\nACGTACGTAC\n>b\nACGTA\n").unwrap();
            if let Some(fai) = fai {
                std::fs::write(dir.path().join(format!("{name}.fai")), fai).unwrap();
            }
            fa.to_str().unwrap().to_string()
        };
        let indexed = write("x.fa", Some("a\t10\t3\t10\t11\nb\t5\t17\t5\t6\n"));
        let bare = write("y.fa", None);
        let total = |inputs: &[&str], regions: &[&str]| {
            let mut argv = vec!["genomamba", "-m", "model"];
            argv.extend(inputs);
            for r in regions {
                argv.extend(["--region", r]);
            }
            Cli::parse_from(argv).input.known_bases()
        };
        assert_eq!(total(&[&indexed], &[]), Some(15));
        assert_eq!(total(&[&indexed, &indexed], &[]), Some(30));
        // Regions: their own lengths, an open end to the end of the sequence.
        assert_eq!(total(&[&indexed], &["a:3-7", "b"]), Some(10));
        assert_eq!(total(&[&indexed], &["a:4"]), Some(7));
        // Unknown wherever any input has no index, or a region names no indexed sequence.
        assert_eq!(total(&[&indexed, &bare], &[]), None);
        assert_eq!(total(&["-"], &[]), None);
        assert_eq!(total(&[&indexed], &["c:1-5"]), None);
        // An index older than its file may describe another file.
        let fai = std::fs::File::options()
            .write(true)
            .open(format!("{indexed}.fai"))
            .unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        fai.set_modified(old).unwrap();
        assert_eq!(total(&[&indexed], &[]), None);
    }

    /// The sizes of the groups `read_groups` hands over for a FASTA of records of `lens`
    /// bases, with `args` after the input.
    fn groups(name: &str, lens: &[usize], args: &[&str]) -> Vec<usize> {
        let dir = std::env::temp_dir().join(format!("genomamba-groups-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fa = dir.join(format!("{name}.fa"));
        let text: String = lens
            .iter()
            .enumerate()
            .map(|(i, &n)| format!(">r{i}\n{}\n", &"ACGT".repeat(n.div_ceil(4))[..n]))
            .collect();
        std::fs::write(&fa, text).unwrap();
        let path = fa.to_str().unwrap();
        let argv = ["genomamba", "-m", "model", path]
            .into_iter()
            .chain(args.iter().copied());
        let input = Cli::parse_from(argv).input;
        let mut sizes = Vec::new();
        let mut skipped = Skipped::default();
        input
            .read_groups(&mut skipped, &mut |g| {
                sizes.push(if g.iter().all(|p| p.is_whole()) {
                    g.len()
                } else {
                    0
                });
                Ok(())
            })
            .unwrap();
        std::fs::remove_file(&fa).unwrap();
        sizes
    }

    #[test]
    fn batches_hold_at_most_a_chunk_of_positions() {
        // Chunks of 300,000: a batch may hold 300,000 padded positions, so two records of
        // 100,000 and then one more only if the batch stays within them.
        let big = ["--chunk-size", "300000"];
        assert_eq!(groups("a", &[100_000; 4], &big), vec![3, 1]);
        // The longest record sets the padded length: 60,000 + 150,000 -> 2 x 150,000.
        assert_eq!(groups("b", &[60_000, 150_000, 10, 10], &big), vec![2, 2]);
        // On the CPU a batch holds one chunk's positions however small the chunk: 20 records
        // of 10,000 in chunks of 20,000 run two at a time, whatever --batch-size allows.
        let small = ["--chunk-size", "20000", "--batch-size", "8"];
        assert_eq!(groups("c", &[10_000; 20], &small), vec![2; 10]);
        assert_eq!(
            groups("d", &[10_000; 30], &["--chunk-size", "20000"]),
            vec![2; 15]
        );
        // On a GPU the floor of 32 x 8192 holds: 262,144 positions take 26 such records.
        assert_eq!(batch_positions(20_000, true), 262_144);
        assert_eq!(batch_positions(20_000, false), 20_000);
        assert_eq!(batch_positions(524_288, true), 524_288);
        // A long record runs alone, piece by piece, after the batch before it.
        assert_eq!(
            groups("e", &[10, 10, 700_000, 10], &big),
            vec![2, 0, 0, 0, 1]
        );
    }
}
