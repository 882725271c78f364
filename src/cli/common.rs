//! Arguments and plumbing shared by the subcommands that read sequences.

use std::io::IsTerminal;
use std::path::PathBuf;

use burn::tensor::Device;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use genomamba::device::DeviceSpec;
use genomamba::infer::DEFAULT_CHUNK;
use genomamba::io::fastx::{Record, for_each_record};
use genomamba::io::region::{Region, read_region};
use genomamba::model::GenoModel;
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
    /// Compute device: `cpu` or `cuda[:N]`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Bases per chunk; the state is carried across chunks, so results do not depend on it.
    #[arg(long, default_value_t = DEFAULT_CHUNK)]
    pub chunk_size: usize,
    /// Records run together when they fit in one chunk.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

impl InputArgs {
    /// Validates numbers, sets up threads, picks the device and loads the model.
    pub fn setup(&self) -> Result<(Device, GenoModel)> {
        if self.chunk_size == 0 {
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
        if let Some(n) = self.threads {
            if n == 0 {
                return Err(Error::usage(
                    "--threads must be at least 1",
                    "pass a positive number or leave it out",
                ));
            }
            // Ignored if the pool was already built (only in tests running several commands).
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build_global();
        }
        let regions = self.parsed_regions()?;
        if !regions.is_empty() && self.inputs.iter().any(|i| i == "-") {
            return Err(Error::usage(
                "--region cannot read from stdin",
                "give the path of an indexed FASTA file",
            ));
        }
        let device = self.device.parse::<DeviceSpec>()?.device()?;
        let model = GenoModel::load(&self.model, &device)?;
        Ok((device, model))
    }

    fn parsed_regions(&self) -> Result<Vec<Region>> {
        self.regions.iter().map(|r| r.parse::<Region>()).collect()
    }

    /// Streams records in input order, grouped into batches: a record longer than one chunk
    /// runs alone; shorter ones are grouped up to `--batch-size`. Zero-length records are
    /// counted and skipped. Reading and tokenising run on their own thread, one batch ahead
    /// of `f`, so input overlaps with compute.
    pub fn for_each_batch(
        &self,
        skipped_empty: &mut usize,
        f: &mut dyn FnMut(Vec<Record>) -> Result<()>,
    ) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<Record>>>(1);
        std::thread::scope(|scope| {
            let reader = scope.spawn(move || {
                let mut skipped = 0;
                let res = self.read_batches(&mut skipped, &mut |batch| {
                    tx.send(Ok(batch))
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
                match msg.and_then(&mut *f) {
                    Ok(()) => {}
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            drop(rx);
            *skipped_empty += reader.join().unwrap_or(0);
            result
        })
    }

    fn read_batches(
        &self,
        skipped_empty: &mut usize,
        f: &mut dyn FnMut(Vec<Record>) -> Result<()>,
    ) -> Result<()> {
        let regions = self.parsed_regions()?;
        let mut batch: Vec<Record> = Vec::new();
        let chunk = self.chunk_size;
        let max_batch = self.batch_size;
        let mut push = |rec: Record, batch: &mut Vec<Record>| -> Result<()> {
            if rec.tokens.is_empty() {
                *skipped_empty += 1;
                return Ok(());
            }
            if rec.tokens.len() > chunk {
                if !batch.is_empty() {
                    f(std::mem::take(batch))?;
                }
                return f(vec![rec]);
            }
            batch.push(rec);
            if batch.len() >= max_batch {
                f(std::mem::take(batch))?;
            }
            Ok(())
        };
        for input in &self.inputs {
            if regions.is_empty() {
                for_each_record(input, &mut |rec| push(rec, &mut batch))?;
            } else {
                for region in &regions {
                    let rec = read_region(input, region)?;
                    push(rec, &mut batch)?;
                }
            }
        }
        if !batch.is_empty() {
            f(batch)?;
        }
        Ok(())
    }
}

/// A progress display on stderr counting bases; hidden with `--quiet` or when stderr is not
/// a terminal.
pub fn progress(quiet: bool, what: &str) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg} {human_pos} bases, {per_sec}, {elapsed_precise}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_message(what.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    pb
}

/// Warns on stderr about skipped empty records.
pub fn report_skipped(skipped: usize, quiet: bool) {
    if skipped > 0 && !quiet {
        eprintln!("genomamba: warning: skipped {skipped} record(s) of length 0");
    }
}

/// Formats an f32 for tables (shortest representation that reads back exactly).
pub fn fmt_f32(v: f32, out: &mut String) {
    use std::fmt::Write;
    let _ = write!(out, "{v}");
}
