//! `genomamba train`: trains or fine-tunes a model on labeled data.
//!
//! Sequence classification from one FASTA/FASTQ per class (`--class NAME=PATH`) or a TSV
//! (`--tsv`, columns `sequence` and `label`); per-position segmentation from a reference
//! FASTA and a BED of labeled intervals (`--fasta` + `--bed`, column 4 = class). Every input is
//! read and checked before anything is written.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::SeedableRng;
use rand::rngs::StdRng;

use genomamba::device::DeviceSpec;
use genomamba::io::bed::LabelFormat;
use genomamba::io::output::PendingPath;
use genomamba::model::{GenoModel, HeadKind, ModelConfig};
use genomamba::train::data::{
    self, FileDigest, PositionDataset, SeqDataset, check_class_bases, check_distinct_files,
    check_exists, class_bases, contiguous_split, copies_of_training, load_class_files,
    load_position, load_some_class_files, load_tsv, parse_bed_class, parse_class_spec,
    remap_labels, stratified_split,
};
use genomamba::train::trainer::{
    Event, RunSpec, Task, TrainOptions, check_gpu_training, fit_orf_head, padding_ratio,
    prepare_head, sequence_batches, train,
};
use genomamba::{Error, Result};

use super::common::{ArchArgs, SeqDataArgs, check_output_dir, set_threads};

/// Arguments of `train`.
#[derive(Debug, Args)]
// A model given with --from keeps its architecture: flags for a new one are refused with it,
// not ignored (clap counts only flags given, not their defaults).
#[command(group(
    clap::ArgGroup::new("new_architecture")
        .args(["d_model", "n_layer", "d_state", "expand", "d_conv", "dt_rank", "phase_period"])
        .multiple(true)
        .conflicts_with("from")
))]
// Flags of one task are refused with the other's data, not ignored.
#[command(group(
    clap::ArgGroup::new("position_task_flags")
        .args([
            "bed_classes",
            "records",
            "window",
            "gc_augment",
            "windows_per_epoch",
            "bidirectional",
            "orf_features",
        ])
        .multiple(true)
        .conflicts_with_all(["classes", "tsv"])
))]
#[command(group(
    clap::ArgGroup::new("validation_files")
        .args(["val_classes", "val_tsv"])
        .multiple(true)
        .conflicts_with_all(["fasta", "bed", "gff"])
))]
pub struct TrainArgs {
    /// Output model directory (best model, `checkpoint/`, `metrics.jsonl`).
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,

    #[command(flatten)]
    pub data: SeqDataArgs,

    /// Position task: the reference FASTA.
    #[arg(long)]
    pub fasta: Option<String>,
    /// Position task: BED of labeled intervals (column 4 = name; other bases are background),
    /// or GFF3/GTF (told by content; column 3, the feature type, is the name)
    #[arg(long)]
    pub bed: Option<String>,
    /// Position task: GFF3/GTF of labeled features, read as GFF whatever its first rows look
    /// like (column 3, the feature type, is the name; choose classes with --bed-class)
    #[arg(long, conflicts_with = "bed")]
    pub gff: Option<String>,
    /// Position task: which BED names (GFF feature types) form a class,
    /// `CLASS=NAME[,NAME...]`; repeatable (default for a BED: every distinct name is a class;
    /// a GFF needs it).
    #[arg(long = "bed-class", value_name = "CLASS=NAMES")]
    pub bed_classes: Vec<String>,
    /// Position task: only these FASTA records (comma-separated; default all).
    #[arg(long, value_delimiter = ',')]
    pub records: Vec<String>,
    /// Position task: bases per training window.
    #[arg(long, default_value_t = 2048)]
    pub window: usize,
    /// Position task: composition augmentation, the largest per-base rate at which A/T bases
    /// become G/C (or the reverse) in a training window, never creating or destroying a stop
    /// codon (0 = off).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.0)]
    pub gc_augment: f64,
    /// Sequence task: batch sequences of similar length together (each batch is padded to its
    /// longest sequence, so with lengths that vary widely this trains several times faster;
    /// batches then mix lengths less).
    #[arg(long)]
    pub group_by_length: bool,
    /// Position task: windows drawn per epoch.
    #[arg(long, default_value_t = 1024)]
    pub windows_per_epoch: usize,

    /// Fraction held out for validation when no separate validation files are given
    /// (sequence task: stratified random; position task: the last stretch of every record).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.1)]
    pub val_fraction: f64,

    /// Start from this model (genomamba or Hugging Face Mamba checkpoint) instead of a new one.
    #[arg(long = "from", value_name = "MODEL")]
    pub from: Option<PathBuf>,
    /// Replace the starting model's head by a new one for this task's classes.
    #[arg(long)]
    pub replace_head: bool,
    /// New model (without `--from`).
    #[command(flatten)]
    pub arch: ArchArgs,

    /// Epochs (passes over the sequences, or rounds of --windows-per-epoch windows).
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Sequences or windows per step.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Peak learning rate (AdamW).
    #[arg(long, allow_negative_numbers = true, default_value_t = 2e-3)]
    pub lr: f64,
    /// Final learning rate of the cosine decay, as a fraction of --lr.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.05)]
    pub min_lr_ratio: f64,
    /// Steps of linear warm-up.
    #[arg(long, default_value_t = 100)]
    pub warmup_steps: usize,
    /// AdamW weight decay (never on A_log, D, norms, biases).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.05)]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0 = off).
    #[arg(long, allow_negative_numbers = true, default_value_t = 1.0)]
    pub clip_norm: f64,
    /// Stop after this many epochs without a better validation score (0 = never).
    #[arg(long, default_value_t = 0)]
    pub patience: usize,
    /// Seed for initialisation, split, order, windows and augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Do not train on reverse complements.
    #[arg(long)]
    pub no_rc_augment: bool,
    /// Predict with the average of both strands (saved in the model; per-position heads then
    /// see context on both sides of every position).
    #[arg(long)]
    pub rc_average: bool,
    /// Per-position heads: predict from both strands' hidden states at each position
    /// (trained that way; saved in the model).
    #[arg(long, conflicts_with = "rc_average")]
    pub bidirectional: bool,
    /// Per-position bidirectional heads: also feed the head each base's open-reading-frame
    /// lengths in all six frames (stop codon to stop codon, sorted), a gene-structure cue
    /// that does not depend on base composition (saved in the model). Needs --bidirectional.
    #[arg(long, requires = "bidirectional")]
    pub orf_features: bool,
    /// Positions per chunk during validation.
    #[arg(long, default_value_t = genomamba::infer::DEFAULT_CHUNK)]
    pub chunk_size: usize,

    /// Continue the run saved in OUTPUT/checkpoint (same options).
    #[arg(long)]
    pub resume: bool,
    /// Stop (as if interrupted) after this many epochs in total; `--resume` continues.
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
    /// Overwrite an existing output directory.
    #[arg(long)]
    pub force: bool,
    /// Compute device: `cpu` or `cuda[:N]`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// No progress display or per-epoch lines.
    #[arg(short, long)]
    pub quiet: bool,
}

enum Loaded {
    Sequence {
        train: SeqDataset,
        val: SeqDataset,
        split: serde_json::Value,
    },
    Position {
        data: PositionDataset,
        split: serde_json::Value,
        fraction: f64,
    },
}

impl TrainArgs {
    /// The per-position labels file, how it is read, and the flag that gave it.
    fn labels(&self) -> Option<(&str, LabelFormat, &'static str)> {
        match (&self.bed, &self.gff) {
            (Some(bed), _) => Some((bed, LabelFormat::Detect, "--bed")),
            (None, Some(gff)) => Some((gff, LabelFormat::Gff, "--gff")),
            (None, None) => None,
        }
    }
}

fn load(a: &TrainArgs) -> Result<Loaded> {
    let seq = !a.data.classes.is_empty() || a.data.tsv.is_some();
    let pos = a.fasta.is_some() || a.labels().is_some();
    if seq == pos {
        return Err(Error::usage(
            if seq {
                "both sequence (--class/--tsv) and position (--fasta/--bed/--gff) data given"
            } else {
                "no training data given"
            },
            "give --class NAME=PATH (repeat) or --tsv FILE for sequence labels, or --fasta REF --bed LABELS.bed for per-position labels",
        ));
    }
    if pos && a.group_by_length {
        return Err(Error::usage(
            "--group-by-length applies to sequence labels (--class/--tsv): per-position windows all have --window bases",
            "leave out --group-by-length",
        ));
    }
    if !(0.0..1.0).contains(&a.val_fraction) {
        return Err(Error::usage(
            format!("--val-fraction {} is not in [0, 1)", a.val_fraction),
            "pass e.g. --val-fraction 0.1",
        ));
    }
    let mut reads = a.data.paths();
    reads.extend(a.fasta.iter().chain(&a.bed).chain(&a.gff).cloned());
    if reads.iter().filter(|p| p.as_str() == "-").count() > 1 {
        return Err(Error::usage(
            "stdin (-) is given for more than one training file, but it can be read only once",
            "give - once, or files by their paths",
        ));
    }
    // Stdin under another name (`/dev/stdin`), or one pipe under two.
    genomamba::io::fastx::check_streams_once(&reads)?;
    if seq {
        let (train, val, split) = load_sequence_sets(&a.data, a.val_fraction, a.seed)?;
        Ok(Loaded::Sequence { train, val, split })
    } else {
        let (Some(fasta), Some((bed, format, flag))) = (&a.fasta, a.labels()) else {
            return Err(Error::usage(
                "--fasta and --bed (or --gff) go together",
                "give both the reference FASTA and the BED (or GFF) of labeled intervals",
            ));
        };
        check_exists(fasta, &format!("--fasta {fasta}"))?;
        check_exists(bed, &format!("{flag} {bed}"))?;
        if a.val_fraction <= 0.0 {
            return Err(Error::usage(
                "validation is always reported: per-position training needs --val-fraction > 0",
                "pass e.g. --val-fraction 0.1 (the last 10% of every record is held out)",
            ));
        }
        let classes = a
            .bed_classes
            .iter()
            .map(|s| parse_bed_class(s))
            .collect::<Result<Vec<_>>>()?;
        let data = load_position(fasta, bed, format, &classes, &a.records)?;
        let split = serde_json::json!({"kind": "contiguous hold-out: the last stretch of every record", "val_fraction": a.val_fraction});
        Ok(Loaded::Position {
            data,
            split,
            fraction: a.val_fraction,
        })
    }
}

/// Checks `--output` against `--resume`, `--force` and `--from`; `existed`: whether the
/// directory was there before this run made it.
fn check_output(a: &TrainArgs, existed: bool) -> Result<()> {
    let out = &a.output;
    // Writing the run's model over the model it starts from would lose it on a failure.
    if let Some(from) = &a.from
        && let (Ok(f), Ok(o)) = (std::fs::canonicalize(from), std::fs::canonicalize(out))
        && f == o
    {
        return Err(Error::usage(
            format!(
                "--output {} is the --from model: the run would write over the model it starts from",
                out.display()
            ),
            "choose another --output",
        ));
    }
    if a.resume {
        // (A swap cut short by a crash is completed once the directory is locked.)
        if !genomamba::train::trainer::checkpoint_dir(out)
            .join("trainer.json")
            .is_file()
            && !genomamba::train::trainer::interrupted_swap(out)
        {
            let fix = if existed {
                "its run ended before its first epoch was saved: leave out --resume and pass --force to start it again"
            } else {
                "resume into the output directory of an earlier run, or leave out --resume"
            };
            return Err(Error::usage(
                format!("--resume: no checkpoint in {}", out.display()),
                fix,
            ));
        }
        return Ok(());
    }
    // A run's own leftovers (the temporary files of one killed outright) do not count.
    let non_empty = out.is_dir()
        && std::fs::read_dir(out).is_ok_and(|mut d| {
            d.any(|e| {
                e.is_ok_and(|e| {
                    !genomamba::train::trainer::is_stale_temporary(&e.file_name().to_string_lossy())
                })
            })
        });
    check_output_dir(out, "", "choose another --output")?;
    if non_empty && !a.force {
        let resumable = genomamba::train::trainer::checkpoint_dir(out)
            .join("trainer.json")
            .is_file()
            || genomamba::train::trainer::interrupted_swap(out);
        let fix = if resumable {
            "pass --force to overwrite it, --resume to continue its run, or choose another --output"
        } else {
            "pass --force to overwrite it (it holds no checkpoint to resume), or choose another --output"
        };
        return Err(Error::usage(
            format!("{} already exists", out.display()),
            fix,
        ));
    }
    Ok(())
}

pub fn run(a: TrainArgs) -> Result<()> {
    set_threads(a.threads)?;
    if a.replace_head && a.from.is_none() {
        return Err(Error::usage(
            "--replace-head needs --from MODEL",
            "add --from, or leave out --replace-head",
        ));
    }
    let opts = TrainOptions {
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        min_lr_ratio: a.min_lr_ratio,
        warmup_steps: a.warmup_steps,
        weight_decay: a.weight_decay,
        clip_norm: a.clip_norm,
        seed: a.seed,
        patience: a.patience,
        rc_augment: !a.no_rc_augment,
        window: a.window,
        windows_per_epoch: a.windows_per_epoch,
        eval_chunk: a.chunk_size,
        gc_augment: a.gc_augment,
        group_by_length: a.group_by_length,
    };
    opts.validate()?;
    // The output directory, made now (removed again if it is still empty after an error or
    // an interruption) and locked for the whole run, before it is looked into: a second run
    // into it is refused instead of mixing its files into this one's.
    check_output_dir(&a.output, "", "choose another --output")?;
    let made = PendingPath::make_dir(&a.output)
        .map_err(|e| Error::io(a.output.display().to_string(), e))?;
    let _lock = lock_run_dir(&a.output)?;
    check_output(&a, made.is_empty())?;
    if a.resume && genomamba::train::trainer::recover_checkpoint(&a.output)? {
        eprintln!(
            "genomamba: note: recovered the checkpoint of {}, left under a temporary name by a crash",
            a.output.display()
        );
    }
    // Temporary files of a run killed outright (nothing else writes here while it is locked).
    genomamba::train::trainer::remove_stale_temporaries(&a.output);
    let device_spec = a.device.parse::<DeviceSpec>()?;
    let device = device_spec.device()?;
    let loaded = load(&a)?;
    if let Loaded::Sequence { train, .. } = &loaded
        && !a.group_by_length
        && !a.quiet
    {
        note_padding(train, a.batch_size, a.seed);
    }

    let (mut model, base) = match &a.from {
        Some(dir) => (
            GenoModel::load(dir, &device)?,
            serde_json::json!(dir.display().to_string()),
        ),
        None => {
            let arch = a.arch.config();
            (
                GenoModel::init(ModelConfig::new(arch), a.seed, &device)?,
                serde_json::Value::Null,
            )
        }
    };
    let (task, split, files, counts) = match &loaded {
        Loaded::Sequence { train, val, split } => {
            if let (Some(h), false) = (&model.config.head, a.replace_head)
                && h.kind == HeadKind::Sequence
            {
                // Fine-tuning a head: the data's classes must be the head's, all of them (a
                // class with no training data would only be trained away).
                let mut t = train.clone();
                let mut v = val.clone();
                remap_labels(&mut t, &h.labels, "the training data")?;
                remap_labels(&mut v, &h.labels, "the validation data")?;
                let missing: Vec<&str> = h
                    .labels
                    .iter()
                    .filter(|l| !train.labels.contains(l))
                    .map(String::as_str)
                    .collect();
                if !missing.is_empty() {
                    return Err(Error::usage(
                        format!(
                            "the model's class(es) {} have no training data (the model's classes are {}; the training data's are {})",
                            missing.join(", "),
                            h.labels.join(", "),
                            train.labels.join(", ")
                        ),
                        "give training data for every class of the model, or pass --replace-head to train a new head",
                    ));
                }
                let counts =
                    serde_json::json!({"train": t.class_counts(), "val": v.class_counts()});
                let files: Vec<FileDigest> = t.files.iter().chain(&v.files).cloned().collect();
                (TaskData::Seq(t, v), split.clone(), files, counts)
            } else {
                let counts =
                    serde_json::json!({"train": train.class_counts(), "val": val.class_counts()});
                let files: Vec<FileDigest> =
                    train.files.iter().chain(&val.files).cloned().collect();
                (
                    TaskData::Seq(train.clone(), val.clone()),
                    split.clone(),
                    files,
                    counts,
                )
            }
        }
        Loaded::Position {
            data,
            split,
            fraction,
        } => {
            let (tr, va) = contiguous_split(data, *fraction);
            let bases = |spans: &[genomamba::train::data::Span]| -> usize {
                spans.iter().map(|s| s.len()).sum()
            };
            let total: usize = data.records.iter().map(|r| r.tokens.len()).sum();
            for (spans, part, fix) in [
                (&va, "validation", "pass a larger --val-fraction"),
                (&tr, "training", "pass a smaller --val-fraction"),
            ] {
                if bases(spans) == 0 {
                    return Err(Error::usage(
                        format!(
                            "--val-fraction {fraction} leaves the {part} part empty: the last {fraction} of every record of {} ({total} bases) is held out",
                            a.fasta.as_deref().unwrap_or("--fasta")
                        ),
                        fix,
                    ));
                }
            }
            let bed = a.labels().map_or("--bed", |(path, ..)| path);
            let unseen = check_class_bases(data, &tr, &va, bed)?;
            if !unseen.is_empty() {
                super::warn(&format!(
                    "class(es) {} label no validation base: their validation metrics are undefined, so the best epoch is the one of lowest validation loss; give a larger --val-fraction or move their intervals",
                    unseen.join(", ")
                ));
            }
            let mut record_names: Vec<&str> =
                data.records.iter().map(|r| r.name.as_str()).collect();
            record_names.sort_unstable();
            let counts = serde_json::json!({
                "train_bases": tr.iter().map(|s| s.len()).sum::<usize>(),
                "val_bases": va.iter().map(|s| s.len()).sum::<usize>(),
                "train_class_bases": class_bases(data, &tr),
                "val_class_bases": class_bases(data, &va),
                "val_spans": va,
                // Which records, in any order: other records of the same counts are other
                // data to a resumed run.
                "records": record_names,
            });
            (
                TaskData::Pos(tr, va),
                split.clone(),
                data.files.clone(),
                counts,
            )
        }
    };
    let task = match (&task, &loaded) {
        (TaskData::Seq(t, v), _) => Task::Sequence { train: t, val: v },
        (TaskData::Pos(tr, va), Loaded::Position { data, .. }) => Task::Position {
            data,
            train: tr.clone(),
            val: va.clone(),
        },
        _ => return Err(Error::Runtime("inconsistent task".into())),
    };
    // A step that cannot fit in the GPU stops here, before any work on the device.
    check_gpu_training(
        &task,
        &opts,
        &model.config.architecture,
        a.bidirectional,
        device_spec.total_memory(),
    )?;
    // A kept head keeps its strand averaging at prediction time unless --rc-average is given.
    let base_rc_average = model.config.head.as_ref().is_some_and(|h| h.rc_average);
    let new_head = prepare_head(
        &mut model,
        &task,
        a.replace_head,
        a.orf_features,
        a.seed,
        &device,
    )?;
    if new_head && a.orf_features {
        let acc = fit_orf_head(&mut model, &task, &device)?;
        if !a.quiet {
            eprintln!("ORF-feature head fitted alone: training accuracy {acc:.4}");
        }
    }
    if a.bidirectional && !matches!(task, Task::Position { .. }) {
        return Err(Error::usage(
            "--bidirectional applies to per-position heads",
            "leave it out, or use --rc-average for sequence heads",
        ));
    }
    if let Some(h) = &mut model.config.head {
        let inherited = base_rc_average && !new_head && !a.rc_average && !a.bidirectional;
        if inherited && !a.quiet {
            eprintln!(
                "genomamba: note: the head of --from averages both strands' predictions (rc_average); the new model keeps that"
            );
        }
        h.rc_average = a.rc_average || inherited;
        h.bidirectional = a.bidirectional;
    }
    let labels = model
        .config
        .head
        .as_ref()
        .map(|h| h.labels.clone())
        .unwrap_or_default();
    let provenance = serde_json::json!({
        "trained_by": format!("genomamba {}", env!("CARGO_PKG_VERSION")),
        "command": super::common::command_line(),
        "task": if matches!(task, Task::Sequence { .. }) { "sequence" } else { "position" },
        "labels": labels,
        "data": files,
        "split": split,
        "counts": counts,
        "base_model": base,
        "device": a.device,
        "threads": rayon::current_num_threads(),
    });
    // With --force, the previous run's model, log and checkpoint stay in place until this
    // run's first epoch replaces them (each swapped in whole), so a run that fails or is
    // interrupted before then leaves the previous model as it was.
    let spec = RunSpec {
        out: &a.output,
        resume: a.resume,
        device: device.clone(),
        provenance,
        stop_after: a.stop_after,
        round_lengths: device_spec.compiles_per_shape(),
    };
    let metric = task.metric();

    // An interruption says how to continue once this run has a checkpoint in place
    // (checkpoints are swapped in whole, and the question is asked with no swap under way);
    // before that, one in the directory is the previous run's (kept under --force).
    let checkpoint = genomamba::train::trainer::checkpoint_dir(&a.output);
    let saved = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(a.resume));
    let saved_in_hint = saved.clone();
    super::set_interrupted_hint(Box::new(move || {
        let ours = saved_in_hint.load(std::sync::atomic::Ordering::SeqCst);
        (ours && checkpoint.join("trainer.json").is_file()).then(|| {
            format!(
                "the last finished epoch is saved in {}: run the same command with --resume to continue",
                checkpoint.display()
            )
        })
    }));
    let show = !a.quiet && std::io::stderr().is_terminal();
    let mut pb: Option<ProgressBar> = None;
    let epochs = a.epochs;
    let quiet = a.quiet;
    let mut loss_avg = None::<f64>;
    let state = train(model, &task, &opts, &spec, &mut |ev| match ev {
        Event::EpochStart { epoch, steps } => {
            if show {
                let p =
                    ProgressBar::with_draw_target(Some(steps as u64), ProgressDrawTarget::stderr());
                p.set_style(
                    ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} steps, {msg}, {elapsed_precise} (eta {eta})")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                p.set_prefix(format!("{epoch}/{epochs}"));
                pb = Some(p);
            }
            loss_avg = None;
        }
        Event::Step { loss } => {
            let avg = loss_avg.map_or(loss, |m| 0.95 * m + 0.05 * loss);
            loss_avg = Some(avg);
            if let Some(p) = &pb {
                p.set_message(format!("loss {avg:.4}"));
                p.inc(1);
            }
        }
        Event::Validating => {
            if let Some(p) = &pb {
                p.set_message("validating".to_string());
            }
        }
        Event::EpochEnd(log, best) => {
            // The epoch's checkpoint is in place.
            saved.store(true, std::sync::atomic::Ordering::SeqCst);
            if let Some(p) = pb.take() {
                p.finish_and_clear();
            }
            if !quiet {
                let mut line = format!(
                    "epoch {}/{}: train loss {:.4}, {:.0} bases/s; validation",
                    log.epoch, epochs, log.train_loss, log.train_bases_per_s
                );
                for k in ["loss", "accuracy", "auroc", "auprc", "f1", "mcc"] {
                    if let Some(v) = log.val.get(k) {
                        line.push_str(&format!(" {k} {v:.4}"));
                    }
                }
                if best {
                    line.push_str(&format!(" (best {metric})"));
                }
                eprintln!("{line}");
            }
        }
    })?;
    let stopped_early = a.patience > 0
        && state.epochs_done < a.epochs
        && state.epochs_since_best >= a.patience
        && a.stop_after.is_none_or(|n| state.epochs_done < n);
    if stopped_early && !a.quiet {
        eprintln!(
            "genomamba: stopped early after epoch {}: no better validation {metric} for {} epochs (--patience)",
            state.epochs_done, a.patience
        );
    }
    if !a.quiet {
        eprintln!(
            "genomamba: best epoch {} ({} {:.4}); model in {}",
            state.best_epoch,
            metric,
            state.best_score.unwrap_or(f64::NAN),
            a.output.display()
        );
    }
    PendingPath::keep_all(made);
    Ok(())
}

/// Locks directory `dir` (an advisory lock, released when the process ends however it
/// ends) for this run alone.
fn lock_run_dir(dir: &Path) -> Result<std::fs::File> {
    let handle = std::fs::File::open(dir).map_err(|e| Error::io(dir.display().to_string(), e))?;
    match handle.try_lock() {
        Ok(()) => Ok(handle),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::usage(
            format!(
                "{} is being written by another genomamba train run",
                dir.display()
            ),
            "wait for that run to finish, or choose another --output",
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(dir.display().to_string(), e)),
    }
}

enum TaskData {
    Seq(SeqDataset, SeqDataset),
    Pos(Vec<data::Span>, Vec<data::Span>),
}

/// Where sequence-level data comes from, as the loader reads it.
struct SeqSources<'a> {
    classes: &'a [String],
    tsv: Option<&'a str>,
    val_classes: &'a [String],
    val_tsv: Option<&'a str>,
    val_fraction: f64,
    seed: u64,
}

/// Padding beyond which `train` suggests `--group-by-length`.
const PADDING_NOTE: f64 = 1.5;

/// Tells the user when random batches of these sequences would run mostly as padding.
fn note_padding(train: &SeqDataset, batch_size: usize, seed: u64) {
    let lengths: Vec<usize> = train.examples.iter().map(|e| e.tokens.len()).collect();
    let mut rng = StdRng::seed_from_u64(seed);
    let ratio = padding_ratio(
        &lengths,
        &sequence_batches(&lengths, batch_size, false, &mut rng),
    );
    if ratio > PADDING_NOTE {
        let (lo, hi) = (lengths.iter().min(), lengths.iter().max());
        eprintln!(
            "genomamba: note: the training sequences ({}-{} bases) in random batches of {batch_size} run {ratio:.1}x their own bases, the rest padding; --group-by-length batches similar lengths together",
            lo.unwrap_or(&0),
            hi.unwrap_or(&0)
        );
    }
}

/// Warns of the records of length 0 that a set's files held, which were left out.
fn warn_skipped_empty(set: &SeqDataset) {
    for (path, n) in &set.skipped_empty {
        super::warn(&format!(
            "{}: {n} empty record(s) (length 0) skipped",
            genomamba::error::shown(path)
        ));
    }
}

/// Reads sequence-level training data and its validation set (separate files, or a
/// stratified random split of `val_fraction` seeded with `seed`). Shared with `baseline`, so
/// both see the same split.
///
/// An empty validation set is refused; a class without validation examples is warned about
/// on stderr (warnings show with --quiet too, which hides progress and notes).
pub fn load_sequence_sets(
    data: &SeqDataArgs,
    val_fraction: f64,
    seed: u64,
) -> Result<(SeqDataset, SeqDataset, serde_json::Value)> {
    let (train, val, mut split) = read_sequence_sets(data, val_fraction, seed)?;
    if val.examples.is_empty() {
        return Err(Error::usage(
            format!(
                "the validation set is empty: --val-fraction {val_fraction} of {} training sequences holds out none (a class of one sequence keeps it for training)",
                train.examples.len()
            ),
            "give more sequences per class, a larger --val-fraction, or separate validation files with --val-class / --val-tsv",
        ));
    }
    let missing: Vec<&str> = (val.labels.iter())
        .zip(val.class_counts())
        .filter(|(_, n)| *n == 0)
        .map(|(l, _)| l.as_str())
        .collect();
    if !missing.is_empty() {
        super::warn(&format!(
            "class(es) {} have no validation sequence: their validation metrics are undefined (train then picks its best epoch by validation loss alone); give more sequences or separate validation files",
            missing.join(", ")
        ));
    }
    let (copies, first) = copies_of_training(&train, &val);
    if let Some((in_val, in_train)) = first {
        super::warn(&format!(
            "{copies} of {} validation sequences are exact copies of training sequences (the first: {in_val} = {in_train}): validation metrics overstate how the model does on new sequences; remove the copies from one side",
            val.examples.len()
        ));
    }
    if let Some(obj) = split.as_object_mut() {
        obj.insert("val_copies_of_train".into(), copies.into());
    }
    Ok((train, val, split))
}

fn read_sequence_sets(
    data: &SeqDataArgs,
    val_fraction: f64,
    seed: u64,
) -> Result<(SeqDataset, SeqDataset, serde_json::Value)> {
    let src = SeqSources {
        classes: &data.classes,
        tsv: data.tsv.as_deref(),
        val_classes: &data.val_classes,
        val_tsv: data.val_tsv.as_deref(),
        val_fraction,
        seed,
    };
    if src.classes.is_empty() && src.tsv.is_none() {
        return Err(Error::usage(
            "no training data given",
            "give --class NAME=PATH (repeat) or --tsv FILE",
        ));
    }
    if !(0.0..1.0).contains(&src.val_fraction) {
        return Err(Error::usage(
            format!("--val-fraction {} is not in [0, 1)", src.val_fraction),
            "pass e.g. --val-fraction 0.1",
        ));
    }
    if !src.classes.is_empty() && src.tsv.is_some() {
        return Err(Error::usage(
            "both --class and --tsv given",
            "use one of them",
        ));
    }
    // Every data file once: (option as written, path, validation?).
    let mut files: Vec<(String, String, bool)> = Vec::new();
    for (flag, specs, val) in [
        ("--class", src.classes, false),
        ("--val-class", src.val_classes, true),
    ] {
        for spec in specs {
            let (_, path) = parse_class_spec(spec)?;
            files.push((format!("{flag} {spec}"), path, val));
        }
    }
    for (flag, tsv, val) in [("--tsv", src.tsv, false), ("--val-tsv", src.val_tsv, true)] {
        if let Some(t) = tsv {
            files.push((format!("{flag} {t}"), t.to_string(), val));
        }
    }
    for (given, path, _) in &files {
        check_exists(path, given)?;
    }
    check_distinct_files(&files)?;
    let mut train = if src.classes.is_empty() {
        load_tsv(src.tsv.unwrap_or(""), None)?
    } else {
        let specs = src
            .classes
            .iter()
            .map(|s| parse_class_spec(s))
            .collect::<Result<Vec<_>>>()?;
        load_class_files(&specs)?
    };
    warn_skipped_empty(&train);
    let separate = !src.val_classes.is_empty() || src.val_tsv.is_some();
    if separate {
        let mut val = if let Some(t) = src.val_tsv {
            load_tsv(t, Some(&train.labels))?
        } else {
            let specs = src
                .val_classes
                .iter()
                .map(|s| parse_class_spec(s))
                .collect::<Result<Vec<_>>>()?;
            for (name, _) in &specs {
                if !train.labels.contains(name) {
                    return Err(Error::usage(
                        format!(
                            "--val-class names unknown class '{name}' (training classes: {})",
                            train.labels.join(", ")
                        ),
                        "give --val-class only classes the training data has",
                    ));
                }
            }
            let mut v = load_some_class_files(&specs)?;
            warn_skipped_empty(&v);
            remap_labels(&mut v, &train.labels.clone(), "--val-class")?;
            v
        };
        val.labels = train.labels.clone();
        let split = serde_json::json!({"kind": "separate files", "val_files": val.files});
        return Ok((train, val, split));
    }
    if src.val_fraction <= 0.0 {
        return Err(Error::usage(
            "validation is always reported: --val-fraction 0 needs separate validation files",
            "give --val-fraction > 0, or --val-class / --val-tsv",
        ));
    }
    let labels: Vec<usize> = train.examples.iter().map(|e| e.label).collect();
    let (tr, va) = stratified_split(&labels, train.labels.len(), src.val_fraction, src.seed);
    let mut val = SeqDataset {
        labels: train.labels.clone(),
        ..Default::default()
    };
    let all = std::mem::take(&mut train.examples);
    let mut keep = vec![false; all.len()];
    for &i in &tr {
        keep[i] = true;
    }
    for (i, e) in all.into_iter().enumerate() {
        if keep[i] {
            train.examples.push(e)
        } else {
            val.examples.push(e)
        }
    }
    let split = serde_json::json!({"kind": "stratified random", "val_fraction": src.val_fraction, "seed": src.seed, "train": tr.len(), "val": va.len()});
    Ok((train, val, split))
}
