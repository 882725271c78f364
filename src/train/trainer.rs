//! The training loop: AdamW with parameter groups (no weight decay on `A_log`, `D`, norms and
//! biases), linear warm-up then cosine decay of the learning rate, clipping of the global
//! gradient norm, validation after every epoch, checkpoints that let `--resume` continue
//! exactly, early stopping, a JSON-lines metrics log.
//!
//! Optimisation runs on an autodiff device (`device.autodiff()`); validation runs the same
//! weights without autodiff through the chunked inference path. All randomness (order of
//! examples, windows, reverse-complement augmentation) is drawn from generators seeded with
//! `(seed, epoch)`, so an epoch does the same work whether or not the run was resumed before it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::nn::Linear;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::data::{IGNORE, PositionDataset, SeqDataset, Span, draw_windows};
use super::metrics::{ConfusionMatrix, ScoreHistogram, auprc, auroc};
use crate::alphabet::{PAD, complement};
use crate::io::output::{PendingPath, publish};
use crate::model::orf::OrfIndex;
use crate::model::weights::host_values;
use crate::model::{GenoModel, HeadKind, Mamba};
use crate::{Error, Result};

/// Backbone plus head, as one module for the optimiser.
#[derive(Module, Debug)]
pub struct Net {
    /// The Mamba backbone.
    pub backbone: Mamba,
    /// `d_model -> n_classes`.
    pub head: Linear,
}

impl Net {
    /// Mean-pooled sequence logits.
    ///
    /// # Shapes
    /// - tokens: `[batch, length]` (right-padded), mask: `[batch, length]` (1 on real bases)
    /// - returns `[batch, n_classes]`
    pub fn sequence_logits(&self, tokens: Tensor<2, Int>, mask: Tensor<2>) -> Tensor<2> {
        let [batch, _] = tokens.dims();
        let device = tokens.device();
        let (h, _) = self
            .backbone
            .forward(tokens, self.backbone.zero_state(batch, &device));
        let m: Tensor<3> = mask.unsqueeze_dim(2);
        let summed: Tensor<2> = (h * m.clone()).sum_dim(1).squeeze_dim(1);
        let count: Tensor<2> = m.sum_dim(1).squeeze_dim(1).clamp_min(1.0);
        self.head.forward(summed / count)
    }

    /// Per-position logits; `bidirectional` heads read the mean of the forward hidden state
    /// and the reverse strand's hidden state at the same position, followed by the per-base
    /// `extra` inputs (ORF features) when the head takes them.
    ///
    /// # Shapes
    /// - tokens: `[batch, length]`, extra: `[batch, length, k]` -> `[batch, length, n_classes]`
    pub fn position_logits(
        &self,
        tokens: Tensor<2, Int>,
        bidirectional: bool,
        extra: Option<Tensor<3>>,
    ) -> Tensor<3> {
        let [batch, len] = tokens.dims();
        let device = tokens.device();
        let with_extra = |h: Tensor<3>| match extra {
            Some(f) => Tensor::cat(vec![h, f], 2),
            None => h,
        };
        if !bidirectional {
            let (h, _) = self
                .backbone
                .forward(tokens, self.backbone.zero_state(batch, &device));
            return position_head(&self.head, with_extra(h));
        }
        // Both strands in one batch: rows 0..batch forward, batch..2·batch reverse complement.
        let rc = reverse_complement_rows(tokens.clone());
        let both = Tensor::cat(vec![tokens, rc], 0);
        // Reverse rows start at the phase that keeps forward/reverse phase pairs fixed.
        let mut state = self.backbone.zero_state(2 * batch, &device);
        let rc_phase = crate::model::reverse_start_phase(len, self.backbone.phase_period());
        state.phase[batch..].fill(rc_phase);
        let (h, _) = self.backbone.forward(both, state);
        let d = h.dims()[2];
        let fwd = h.clone().slice([0..batch, 0..len, 0..d]);
        let rev = h.slice([batch..2 * batch, 0..len, 0..d]).flip([1]);
        position_head(&self.head, with_extra((fwd + rev) * 0.5))
    }
}

/// `head` over the last axis of `x` (`[batch, len, d]` -> `[batch, len, classes]`): the
/// values of `Linear::forward`, with the weight and bias expanded over rows first: the batch
/// rows, or for windows longer than 2,048 rows of up to 2,048 positions
/// ([`time_rows`](crate::ops::block::time_rows)). Burn's linear op takes the weight's gradient
/// as one product over all `batch·len` positions and the bias's as one reduction over them,
/// which Burn's CUDA backend ran in one or two cubes (the bias alone about 10 ms of a step of
/// 64 windows of 2,048 on an H200, BENCHMARKS.md, thirty-sixth session; at one window of
/// 131,072 per batch, per-row sums were again one reduction, 8.6 ms, thirty-seventh session).
/// Expanded, both sum each row's positions side by side, then the rows.
fn position_head(head: &Linear, x: Tensor<3>) -> Tensor<3> {
    let [batch, len, d] = x.dims();
    let (rows, steps) = crate::ops::block::time_rows(batch, len);
    let x = x.reshape([rows, steps, d]);
    let w = head.weight.val();
    let classes = w.dims()[1];
    let y = x.matmul(w.reshape([1, d, classes]).expand([rows, d, classes]));
    let y = match &head.bias {
        Some(b) => y + b.val().reshape([1, 1, classes]).expand([rows, 1, classes]),
        None => y,
    };
    y.reshape([batch, len, classes])
}

/// Reverse complement of every row of a token batch (right-padding is not expected).
fn reverse_complement_rows(tokens: Tensor<2, Int>) -> Tensor<2, Int> {
    // Complement through a lookup table indexed by token id.
    let table: Vec<i64> = (0..crate::alphabet::VOCAB_SIZE as u8)
        .map(|t| complement(t) as i64)
        .collect();
    let device = tokens.device();
    let [b, l] = tokens.dims();
    let lut: Tensor<1, Int> = Tensor::from_data(
        TensorData::new(table, [crate::alphabet::VOCAB_SIZE]),
        &device,
    );
    lut.select(0, tokens.flip([1]).reshape([b * l]))
        .reshape([b, l])
}

/// What is being trained, with its data and split.
pub enum Task<'a> {
    /// One label per sequence.
    Sequence {
        /// Training examples.
        train: &'a SeqDataset,
        /// Validation examples (same classes).
        val: &'a SeqDataset,
    },
    /// One label per position.
    Position {
        /// The labeled records.
        data: &'a PositionDataset,
        /// Stretches windows are drawn from.
        train: Vec<Span>,
        /// Stretches validated on (whole, chunked).
        val: Vec<Span>,
    },
}

impl Task<'_> {
    /// The validation metric that picks the best epoch: [`monitored_metric`], or the
    /// validation loss when some class has no validation example (or base), which leaves
    /// auROC and MCC undefined; the loss is the one metric where lower is better.
    pub fn metric(&self) -> &'static str {
        let complete = match self {
            Task::Sequence { val, .. } => val.class_counts().iter().all(|&n| n > 0),
            Task::Position { data, val, .. } => crate::train::data::class_bases(data, val)
                .iter()
                .all(|&n| n > 0),
        };
        if complete {
            monitored_metric(self.kind(), self.labels().len())
        } else {
            "loss"
        }
    }

    fn kind(&self) -> HeadKind {
        match self {
            Task::Sequence { .. } => HeadKind::Sequence,
            Task::Position { .. } => HeadKind::Position,
        }
    }

    fn labels(&self) -> &[String] {
        match self {
            Task::Sequence { train, .. } => &train.labels,
            Task::Position { data, .. } => &data.labels,
        }
    }
}

/// The most windows `--windows-per-epoch` may draw (2^24).
pub const MAX_WINDOWS_PER_EPOCH: usize = 1 << 24;

/// Hyper-parameters of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    /// Passes over the data (sequence task) or rounds of windows (position task).
    pub epochs: usize,
    /// Sequences or windows per optimiser step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate at the end of the cosine decay, as a fraction of `lr`.
    pub min_lr_ratio: f64,
    /// Steps of linear warm-up from 0 to `lr`.
    pub warmup_steps: usize,
    /// AdamW decoupled weight decay (not applied to `A_log`, `D`, norms, biases).
    pub weight_decay: f64,
    /// Maximum global gradient norm (0 = no clipping).
    pub clip_norm: f64,
    /// Seed of every random choice.
    pub seed: u64,
    /// Stop after this many epochs without a better validation score (0 = never).
    pub patience: usize,
    /// Train on the reverse complement half of the time (labels reversed along).
    pub rc_augment: bool,
    /// Window length of the position task.
    pub window: usize,
    /// Windows per epoch of the position task.
    pub windows_per_epoch: usize,
    /// Positions per chunk during validation.
    pub eval_chunk: usize,
    /// Position task: largest per-base rate of the composition augmentation
    /// ([`shift_composition`]); 0 turns it off.
    #[serde(default)]
    pub gc_augment: f64,
    /// Sequence task: batch sequences of similar length together ([`sequence_batches`]).
    #[serde(default)]
    pub group_by_length: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 10,
            batch_size: 32,
            lr: 2e-3,
            min_lr_ratio: 0.05,
            warmup_steps: 100,
            weight_decay: 0.05,
            clip_norm: 1.0,
            seed: 0,
            patience: 0,
            rc_augment: true,
            window: 2048,
            windows_per_epoch: 1024,
            eval_chunk: 8192,
            gc_augment: 0.0,
            group_by_length: false,
        }
    }
}

impl TrainOptions {
    /// Checks the numbers.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, fix: &str| Err(Error::usage(what.to_string(), fix.to_string()));
        if self.epochs == 0 {
            return bad("--epochs must be at least 1", "pass e.g. --epochs 10");
        }
        if self.batch_size == 0 {
            return bad(
                "--batch-size must be at least 1",
                "pass e.g. --batch-size 32",
            );
        }
        // The optimiser works in f32: a larger value would become infinite there.
        if !(self.lr > 0.0 && (self.lr as f32).is_finite()) {
            return bad(
                "--lr must be a positive number (within f32's range)",
                "pass e.g. --lr 0.002",
            );
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return bad("--min-lr-ratio must be between 0 and 1", "pass e.g. 0.05");
        }
        for (flag, value) in [
            ("--weight-decay", self.weight_decay),
            ("--clip-norm", self.clip_norm),
        ] {
            if value.is_nan() || value < 0.0 {
                return bad(
                    &format!("{flag} must be a number, not negative (got {value})"),
                    &format!("pass {flag} 0 to switch it off"),
                );
            }
        }
        if !(self.weight_decay as f32).is_finite() {
            return bad(
                "--weight-decay must be within f32's range",
                "pass e.g. --weight-decay 0.01, or 0 to switch it off",
            );
        }
        if !(0.0..1.0).contains(&self.gc_augment) {
            return bad(
                "--gc-augment must be in [0, 1)",
                "pass e.g. --gc-augment 0.3, or 0 to turn it off",
            );
        }
        // Each named by itself: the window options are refused with sequence data.
        for (flag, value) in [
            ("--window", self.window),
            ("--windows-per-epoch", self.windows_per_epoch),
            ("--chunk-size", self.eval_chunk),
        ] {
            if value == 0 {
                return bad(
                    &format!("{flag} must be at least 1"),
                    "pass a positive number",
                );
            }
        }
        // An epoch's window positions are drawn up front (24 bytes each).
        if self.windows_per_epoch > MAX_WINDOWS_PER_EPOCH {
            return bad(
                &format!(
                    "--windows-per-epoch {} is more than the {MAX_WINDOWS_PER_EPOCH} supported",
                    self.windows_per_epoch
                ),
                "use fewer windows per epoch and more --epochs",
            );
        }
        Ok(())
    }

    /// Learning rate at optimiser step `step` (0-based) of `total`: linear warm-up, then
    /// cosine decay from `lr` to `lr · min_lr_ratio`.
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = total.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        let floor = self.lr * self.min_lr_ratio;
        floor + (self.lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// Validation results of one epoch (names: `loss`, `accuracy`, `auroc`, `auprc`, `f1`, `mcc`;
/// per-position runs report them per base).
pub type Scores = std::collections::BTreeMap<String, f64>;

/// One line of the metrics log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    /// 1-based epoch.
    pub epoch: usize,
    /// Optimiser steps done so far.
    pub step: usize,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    /// Mean training loss over the epoch.
    pub train_loss: f64,
    /// Bases (tokens, padding excluded) trained on per second of the epoch.
    pub train_bases_per_s: f64,
    /// Validation results.
    pub val: Scores,
    /// Seconds for the epoch (training and validation).
    pub seconds: f64,
}

/// Progress of a run, saved with every checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Epochs finished.
    pub epochs_done: usize,
    /// Optimiser steps done.
    pub step: usize,
    /// Best validation score so far (the monitored metric).
    pub best_score: Option<f64>,
    /// Epoch that reached it.
    pub best_epoch: usize,
    /// Epochs since the best.
    pub epochs_since_best: usize,
    /// Metrics of every finished epoch.
    pub history: Vec<EpochLog>,
    /// The options the run started with (a resumed run must use the same).
    pub options: Option<TrainOptions>,
}

impl TrainerState {
    /// Whether the state is one that a run of `epochs` epochs could have saved: one log per
    /// finished epoch, in order, the step count of the last, and the best epoch among them.
    fn check(&self, epochs: usize) -> std::result::Result<(), String> {
        if self.epochs_done > epochs {
            return Err(format!("{} epochs done, of {epochs}", self.epochs_done));
        }
        if self.history.len() != self.epochs_done {
            return Err(format!(
                "{} epochs done but {} logged",
                self.epochs_done,
                self.history.len()
            ));
        }
        if let Some((i, _)) = (self.history.iter().enumerate()).find(|(i, log)| log.epoch != i + 1)
        {
            return Err(format!("log {} is not of epoch {}", i + 1, i + 1));
        }
        if self.history.windows(2).any(|w| w[1].step < w[0].step) {
            return Err("step counts that go back".into());
        }
        let last = self.history.last().map_or(0, |log| log.step);
        if self.step != last {
            return Err(format!(
                "step {} but the last epoch ended at step {last}",
                self.step
            ));
        }
        if self.best_epoch > self.epochs_done
            || self.epochs_since_best > self.epochs_done
            || (self.epochs_done > 0) != (self.best_epoch > 0)
        {
            return Err(format!(
                "best epoch {} ({} since) of {} done",
                self.best_epoch, self.epochs_since_best, self.epochs_done
            ));
        }
        Ok(())
    }
}

/// What the loop reports while it runs.
pub enum Event<'a> {
    /// An epoch starts with this many steps.
    EpochStart {
        /// 1-based.
        epoch: usize,
        /// Steps in it.
        steps: usize,
    },
    /// A step finished.
    Step {
        /// Loss of the step's batch.
        loss: f64,
    },
    /// Validation starts.
    Validating,
    /// An epoch finished.
    EpochEnd(&'a EpochLog, bool),
}

/// Name of the metric that picks the best epoch: auROC for two classes of sequences, MCC
/// otherwise.
pub fn monitored_metric(kind: HeadKind, n_classes: usize) -> &'static str {
    if kind == HeadKind::Sequence && n_classes == 2 {
        "auroc"
    } else {
        "mcc"
    }
}

/// GPU memory a training step takes per position, layer and inner channel, at least: the
/// activations autodiff keeps for the backward pass. Measured on an H200 (f32 training, peak
/// memory of one-step runs, BENCHMARKS.md, fortieth session): 44-76 bytes for windows of
/// 2,048-32,768 at `d_model` 128-512 and 4-16 layers, 90-98 for batches of 200-base
/// sequences. A step estimated from this figure to need more than the GPU has would not fit
/// however the estimate errs, so [`check_gpu_training`] can refuse it before any work.
pub const TRAIN_BYTES_PER_POSITION_CHANNEL: u64 = 40;

/// The most GPU memory per position, layer and inner channel measured for a training step
/// (see [`TRAIN_BYTES_PER_POSITION_CHANNEL`]), rounded up: what the batch size or window that
/// [`check_gpu_training`] suggests instead is sized by, so that the suggestion fits.
pub const TRAIN_BYTES_PER_POSITION_CHANNEL_HIGH: u64 = 100;

/// Checks, before training starts, that the largest step of this task fits in a GPU of
/// `device_memory` bytes (if known): rows of the batch (`--batch-size`, or fewer if the epoch
/// has fewer) times their length (`--window`, doubled for bidirectional heads, which run both
/// strands; the longest training sequence for the sequence task), times `n_layer · d_inner ·`
/// [`TRAIN_BYTES_PER_POSITION_CHANNEL`]. A step estimated past 90% of the GPU is a usage error
/// instead of running out of memory at the first step; it names a batch size (or, when one row
/// is already too much, a window) that fits by the highest measured figure,
/// [`TRAIN_BYTES_PER_POSITION_CHANNEL_HIGH`]. The refusal's estimate is a lower bound of
/// measured peaks, so steps that pass may still run out of memory; that ends in a one-line
/// error too.
pub fn check_gpu_training(
    task: &Task<'_>,
    opts: &TrainOptions,
    arch: &crate::model::MambaConfig,
    bidirectional: bool,
    device_memory: Option<u64>,
) -> Result<()> {
    let Some(memory) = device_memory else {
        return Ok(());
    };
    // Bidirectional heads run both strands of every window.
    let strands = if bidirectional { 2 } else { 1 };
    let (rows, len, rows_text) = match task {
        Task::Sequence { train, .. } => {
            let rows = opts.batch_size.min(train.examples.len());
            let longest = train.examples.iter().map(|e| e.tokens.len()).max();
            let len = longest.unwrap_or(0);
            (rows, len, format!("{rows} sequences of up to {len} bases"))
        }
        Task::Position { .. } => {
            let rows = opts.batch_size.min(opts.windows_per_epoch);
            let both = if bidirectional { " (both strands)" } else { "" };
            let text = format!("{rows} windows of {} bases{both}", opts.window);
            (rows, opts.window.saturating_mul(strands), text)
        }
    };
    // Bytes per position at the lowest and the highest measured figure.
    let units = (arch.n_layer as u64).saturating_mul(arch.d_inner() as u64);
    let per_position = units.saturating_mul(TRAIN_BYTES_PER_POSITION_CHANNEL);
    let per_position_high = units.saturating_mul(TRAIN_BYTES_PER_POSITION_CHANNEL_HIGH);
    let need = (len as u64)
        .saturating_mul(rows as u64)
        .saturating_mul(per_position);
    let allowed = crate::device::usable_memory(memory);
    if need <= allowed {
        return Ok(());
    }
    let fits = allowed / (len as u64).saturating_mul(per_position_high).max(1);
    let how = match task {
        Task::Sequence { .. } if fits == 0 => format!(
            "the longest training sequence ({len} bases) alone is too long for this GPU: train on shorter sequences, a smaller model, or --device cpu"
        ),
        Task::Position { .. } if fits == 0 => {
            let window = (allowed / per_position_high.max(1) / strands as u64).max(1);
            format!("use --batch-size 1 with a --window of {window} or less")
        }
        Task::Position { .. } => {
            format!("use --batch-size {fits} or less, or a shorter --window")
        }
        Task::Sequence { .. } => format!("use --batch-size {fits} or less"),
    };
    Err(Error::usage(
        format!(
            "a training step of {rows_text} needs at least {:.1} GiB of GPU memory for this model ({} layers of {} channels), more than the GPU's {:.1} GiB",
            crate::device::gib(need),
            arch.n_layer,
            arch.d_inner(),
            crate::device::gib(memory)
        ),
        how,
    ))
}

/// Where a checkpoint is written before it is swapped in, in the run directory.
const CHECKPOINT_TMP: &str = ".checkpoint.tmp";
/// Where the previous checkpoint is moved aside when the swap takes two renames.
const CHECKPOINT_OLD: &str = ".checkpoint.old";

/// Directory of the resumable checkpoint inside the output directory.
pub fn checkpoint_dir(out: &Path) -> PathBuf {
    out.join("checkpoint")
}

/// Gives every parameter an id derived from its path in the module, so that optimiser state
/// saved in a checkpoint finds its parameter again after the model is reloaded; records the
/// parameters exempt from weight decay.
struct StableIds {
    path: Vec<String>,
    no_decay: Vec<ParamId>,
    all: Vec<(ParamId, usize)>,
}

impl StableIds {
    fn id_of(path: &str) -> ParamId {
        // FNV-1a 64: stable across runs and platforms.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in path.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        ParamId::from(h)
    }

    fn exempt(path: &str) -> bool {
        let last = path.rsplit('.').next().unwrap_or(path);
        last == "a_log"
            || last == "d"
            || last.contains("bias")
            || path.contains("norm")
            || last == "dt_bias"
    }
}

impl ModuleMapper for StableIds {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.path.join(".");
        let id = Self::id_of(&path);
        if Self::exempt(&path) {
            self.no_decay.push(id);
        }
        self.all.push((id, D));
        // A contiguous copy: loaded weights can be transposed views, and the order of sums in
        // a product depends on the layout; a fresh run and a resumed one must compute alike.
        let (_, value, mapper) = param.consume();
        let value = Tensor::from_data(value.to_data(), &value.device());
        Param::from_mapped_value(id, value, mapper)
    }
}

/// Collects the ids of float parameters with their ranks.
struct Ranks(Vec<(ParamId, usize)>);

impl ModuleVisitor for Ranks {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push((param.id, D));
    }
}

/// Scales the gradients so that their global L2 norm is at most `max_norm`; returns the norm
/// before scaling.
fn clip_global_norm(
    grads: &mut GradientsParams,
    params: &[(ParamId, usize)],
    max_norm: f64,
) -> f64 {
    let mut sq = 0.0f64;
    for &(id, rank) in params {
        let s = match rank {
            1 => grads
                .get::<1>(id)
                .map(|g| g.square().sum().into_scalar::<f32>()),
            2 => grads
                .get::<2>(id)
                .map(|g| g.square().sum().into_scalar::<f32>()),
            3 => grads
                .get::<3>(id)
                .map(|g| g.square().sum().into_scalar::<f32>()),
            _ => None,
        };
        sq += s.unwrap_or(0.0) as f64;
    }
    let norm = sq.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = (max_norm / (norm + 1e-6)) as f32;
        for &(id, rank) in params {
            match rank {
                1 => {
                    if let Some(g) = grads.remove::<1>(id) {
                        grads.register(id, g.mul_scalar(scale));
                    }
                }
                2 => {
                    if let Some(g) = grads.remove::<2>(id) {
                        grads.register(id, g.mul_scalar(scale));
                    }
                }
                3 => {
                    if let Some(g) = grads.remove::<3>(id) {
                        grads.register(id, g.mul_scalar(scale));
                    }
                }
                _ => {}
            }
        }
    }
    norm
}

/// A batch ready for the device.
struct Batch {
    tokens: Vec<i64>,
    /// Sequence task: 1 on real bases. Position task: 1 where the label counts.
    mask: Vec<f32>,
    /// Sequence task: one label per row; position task: one per position (0 where masked).
    labels: Vec<i64>,
    rows: usize,
    len: usize,
    bases: usize,
    /// Position task with ORF features: `[rows][len][ORF_FEATURES]`; empty otherwise.
    extra: Vec<f32>,
}

/// Batches of a pool of this many batches are cut from one length-sorted pool when grouping.
const LENGTH_POOL_BATCHES: usize = 64;

/// One epoch's batches of the sequence task, as indices into `lengths` (every index once;
/// `ceil(n / batch_size)` batches, all full but at most one).
///
/// Without `group`, batches are consecutive runs of a random order, so each is padded to the
/// longest of a random sample. With `group`, the random order is cut into pools of
/// `LENGTH_POOL_BATCHES` batches, each pool sorted by length and cut into batches, and the
/// batches shuffled: sequences of similar length train together and padding stays small,
/// while which sequences meet in a pool, and the order of batches, stay random.
pub fn sequence_batches(
    lengths: &[usize],
    batch_size: usize,
    group: bool,
    rng: &mut StdRng,
) -> Vec<Vec<usize>> {
    let size = batch_size.max(1);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(rng);
    if !group {
        return order.chunks(size).map(<[usize]>::to_vec).collect();
    }
    let mut batches: Vec<Vec<usize>> = Vec::with_capacity(lengths.len().div_ceil(size));
    for pool in order.chunks_mut(size.saturating_mul(LENGTH_POOL_BATCHES)) {
        // Stable, so ties keep their random order.
        pool.sort_by_key(|&i| lengths[i]);
        batches.extend(pool.chunks(size).map(<[usize]>::to_vec));
    }
    batches.shuffle(rng);
    batches
}

/// Positions the batches run (each row padded to its batch's longest) per position of the
/// sequences themselves: 1 means no padding.
pub fn padding_ratio(lengths: &[usize], batches: &[Vec<usize>]) -> f64 {
    let own: usize = batches.iter().flatten().map(|&i| lengths[i]).sum();
    let padded: usize = batches
        .iter()
        .map(|b| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap_or(0))
        .sum();
    padded as f64 / own.max(1) as f64
}

/// A right-padded batch of sequences, as long as the longest (rounded to few lengths with
/// `round`; the mask keeps padding out of the pool either way).
fn seq_batch(examples: &[(&[u8], usize)], rc: &[bool], round: bool) -> Batch {
    let rows = examples.len();
    let longest = examples.iter().map(|e| e.0.len()).max().unwrap_or(0);
    let len = if round {
        crate::infer::round_length(longest)
    } else {
        longest
    };
    let mut tokens = Vec::with_capacity(rows * len);
    let mut mask = Vec::with_capacity(rows * len);
    let mut labels = Vec::with_capacity(rows);
    let mut bases = 0;
    for (i, (t, l)) in examples.iter().enumerate() {
        let n = t.len();
        bases += n;
        for p in 0..len {
            let tok = if p >= n {
                PAD
            } else if rc[i] {
                complement(t[n - 1 - p])
            } else {
                t[p]
            };
            tokens.push(tok as i64);
            mask.push(if p < n { 1.0 } else { 0.0 });
        }
        labels.push(*l as i64);
    }
    Batch {
        tokens,
        mask,
        labels,
        rows,
        len,
        bases,
        extra: Vec::new(),
    }
}

/// A batch of windows; `features` holds every record's ORF index when the head reads ORF
/// features.
fn window_batch(
    data: &PositionDataset,
    features: Option<&[OrfIndex]>,
    windows: &[Span],
    rc: &[bool],
) -> Batch {
    let rows = windows.len();
    let len = windows.first().map(|w| w.len()).unwrap_or(0);
    let mut tokens = Vec::with_capacity(rows * len);
    let mut mask = Vec::with_capacity(rows * len);
    let mut labels = Vec::with_capacity(rows * len);
    let mut extra = Vec::new();
    let mut rows_of_window = Vec::new();
    for (i, w) in windows.iter().enumerate() {
        let r = &data.records[w.record];
        if let Some(f) = features {
            rows_of_window.clear();
            rows_of_window.extend(f[w.record].rows(w.start, w.end));
        }
        for p in 0..len {
            let q = if rc[i] { w.end - 1 - p } else { w.start + p };
            let (tok, lab) = if rc[i] {
                (complement(r.tokens[q]), r.labels[q])
            } else {
                (r.tokens[q], r.labels[q])
            };
            // The features of a reverse complement are the mirrored features.
            if features.is_some() {
                extra.extend_from_slice(&rows_of_window[q - w.start]);
            }
            tokens.push(tok as i64);
            if lab == IGNORE {
                mask.push(0.0);
                labels.push(0);
            } else {
                mask.push(1.0);
                labels.push(lab as i64);
            }
        }
    }
    Batch {
        tokens,
        mask,
        labels,
        rows,
        len,
        bases: rows * len,
        extra,
    }
}

/// Whether tokens `t[i..i + 3]` (as ids) are a stop codon of the standard bacterial code on
/// either strand: TAA, TAG, TGA, or their reverse complements TTA, CTA, TCA.
fn stop_either_strand(t: &[i64]) -> bool {
    use crate::alphabet::{A, C, G, T};
    let (a, c, g, tt) = (A as i64, C as i64, G as i64, T as i64);
    matches!(
        (t[0], t[1], t[2]),
        (x, y, z) if (x == tt && y == a && (z == a || z == g))
            || (x == tt && y == g && z == a)
            || (y == tt && z == a && (x == tt || x == c))
            || (x == tt && y == c && z == a)
    )
}

/// Composition augmentation: moves a window's GC content up (`up`) or down by changing each
/// A/T (or G/C) base to a random G/C (or A/T) with probability `rate`, skipping any change
/// that would create or destroy a stop codon on either strand in any reading frame. Gene
/// structure (open reading frames, their lengths and ends) is kept while base composition
/// varies like it does between genomes, so the model cannot lean on one genome's composition.
pub fn shift_composition(row: &mut [i64], up: bool, rate: f64, rng: &mut StdRng) {
    use crate::alphabet::{A, C, G, T};
    let n = row.len();
    let (a, c, g, t) = (A as i64, C as i64, G as i64, T as i64);
    let touches_stop = |row: &[i64], p: usize| -> bool {
        (p.saturating_sub(2)..=p)
            .filter(|&s| s + 3 <= n)
            .any(|s| stop_either_strand(&row[s..s + 3]))
    };
    for p in 0..n {
        let b = row[p];
        let eligible = if up {
            b == a || b == t
        } else {
            b == c || b == g
        };
        if !eligible || !rng.random_bool(rate) {
            continue;
        }
        if touches_stop(row, p) {
            continue;
        }
        let new = match (up, rng.random_bool(0.5)) {
            (true, true) => g,
            (true, false) => c,
            (false, true) => a,
            (false, false) => t,
        };
        row[p] = new;
        if touches_stop(row, p) {
            row[p] = b;
        }
    }
}

/// Cross-entropy of a batch on the autodiff device.
fn batch_loss(
    net: &Net,
    kind: HeadKind,
    bidirectional: bool,
    b: &Batch,
    device: &Device,
) -> Tensor<1> {
    let tokens: Tensor<2, Int> =
        Tensor::from_data(TensorData::new(b.tokens.clone(), [b.rows, b.len]), device);
    let mask: Tensor<2> =
        Tensor::from_data(TensorData::new(b.mask.clone(), [b.rows, b.len]), device);
    match kind {
        HeadKind::Sequence => {
            let logits = net.sequence_logits(tokens, mask);
            let labels: Tensor<2, Int> =
                Tensor::from_data(TensorData::new(b.labels.clone(), [b.rows, 1]), device);
            let picked = log_softmax(logits, 1).gather(1, labels);
            picked.mean().neg()
        }
        HeadKind::Position => {
            let extra = (!b.extra.is_empty()).then(|| {
                let k = b.extra.len() / (b.rows * b.len).max(1);
                Tensor::from_data(TensorData::new(b.extra.clone(), [b.rows, b.len, k]), device)
            });
            let logits = net.position_logits(tokens, bidirectional, extra);
            let labels: Tensor<3, Int> = Tensor::from_data(
                TensorData::new(b.labels.clone(), [b.rows, b.len, 1]),
                device,
            );
            let picked = log_softmax(logits, 2).gather(2, labels);
            let m: Tensor<3> = mask.unsqueeze_dim(2);
            let count = m.clone().sum().clamp_min(1.0);
            (picked * m).sum().neg() / count
        }
    }
}

/// Class probabilities of sequences (no autodiff), optionally averaged with those of the
/// reverse complements; `round` pads each batch to one of few lengths (for GPUs). Returns
/// `[n][n_classes]` row-major.
pub fn predict_sequences(
    net: &Net,
    seqs: &[&[u8]],
    batch_size: usize,
    rc_average: bool,
    round: bool,
    device: &Device,
) -> Vec<f32> {
    let mut out = Vec::new();
    // Sort by length so padding stays small; write back in input order.
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| seqs[i].len());
    let n_classes = net.head.weight.val().dims()[1];
    out.resize(seqs.len() * n_classes, 0.0);
    for chunk in order.chunks(batch_size.max(1)) {
        let ex: Vec<(&[u8], usize)> = chunk.iter().map(|&i| (seqs[i], 0)).collect();
        let strands: &[bool] = if rc_average { &[false, true] } else { &[false] };
        let mut acc = vec![0.0f32; chunk.len() * n_classes];
        for &rc in strands {
            let b = seq_batch(&ex, &vec![rc; ex.len()], round);
            let tokens: Tensor<2, Int> =
                Tensor::from_data(TensorData::new(b.tokens, [b.rows, b.len]), device);
            let mask: Tensor<2> =
                Tensor::from_data(TensorData::new(b.mask, [b.rows, b.len]), device);
            let p = host_values(softmax(net.sequence_logits(tokens, mask), 1));
            for (a, v) in acc.iter_mut().zip(p) {
                *a += v / strands.len() as f32;
            }
        }
        for (k, &i) in chunk.iter().enumerate() {
            out[i * n_classes..(i + 1) * n_classes]
                .copy_from_slice(&acc[k * n_classes..(k + 1) * n_classes]);
        }
    }
    out
}

/// The negative log-likelihood of probability `p` of the true class (floored at 1e-12); NaN
/// for a NaN, which a floor taken with `max` would turn into a finite loss.
fn nll(p: f32) -> f64 {
    if p.is_nan() {
        f64::NAN
    } else {
        -(p.max(1e-12) as f64).ln()
    }
}

/// Validation scores of sequence predictions (`probs`: `[n][n_classes]` row-major).
pub fn sequence_scores(probs: &[f32], labels: &[usize], n_classes: usize) -> Scores {
    let n = labels.len();
    let mut s = Scores::new();
    let mut cm = ConfusionMatrix::new(n_classes);
    let mut loss = 0.0f64;
    for i in 0..n {
        let p = &probs[i * n_classes..(i + 1) * n_classes];
        let pred = argmax(p);
        cm.add(pred, labels[i]);
        loss += nll(p[labels[i]]);
    }
    s.insert("loss".into(), loss / n.max(1) as f64);
    s.insert("accuracy".into(), cm.accuracy());
    s.insert("mcc".into(), cm.mcc());
    s.insert("f1".into(), cm.macro_f1());
    // auROC / auPRC: of the second class for two classes, else averaged one-vs-rest.
    let classes: Vec<usize> = if n_classes == 2 {
        vec![1]
    } else {
        (0..n_classes).collect()
    };
    insert_areas(
        &mut s,
        classes.into_iter().map(|c| {
            let scores: Vec<f32> = (0..n).map(|i| probs[i * n_classes + c]).collect();
            let pos: Vec<bool> = labels.iter().map(|&l| l == c).collect();
            (auroc(&scores, &pos), auprc(&scores, &pos))
        }),
    );
    s
}

/// Inserts the mean auROC and auPRC over the classes where both are defined.
fn insert_areas(s: &mut Scores, areas: impl Iterator<Item = (Option<f64>, Option<f64>)>) {
    let (mut roc, mut prc, mut k) = (0.0, 0.0, 0.0);
    for (r, p) in areas {
        if let (Some(r), Some(p)) = (r, p) {
            roc += r;
            prc += p;
            k += 1.0;
        }
    }
    if k > 0.0 {
        s.insert("auroc".into(), roc / k);
        s.insert("auprc".into(), prc / k);
    }
}

/// Index of the largest value.
pub fn argmax(p: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in p.iter().enumerate() {
        if v > p[best] {
            best = i;
        }
    }
    best
}

/// How the two strands of a sequence are combined when predicting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strands {
    /// The forward strand only.
    Forward,
    /// The mean of both strands' probabilities.
    AverageProbs,
    /// The head applied to the mean of both strands' hidden states (bidirectional heads).
    AverageStates,
}

impl Strands {
    /// The combination a head asks for.
    pub fn of(head: Option<&crate::model::HeadConfig>) -> Strands {
        match head {
            Some(h) if h.bidirectional => Strands::AverageStates,
            Some(h) if h.rc_average => Strands::AverageProbs,
            _ => Strands::Forward,
        }
    }
}

/// Per-position class probabilities of one stretch of tokens (chunked, state carried).
/// Returns `[len][n_classes]` row-major.
///
/// `extra`: the head's extra inputs for these positions (`[len][k]`, ORF features of the
/// record they come from), for heads that read them (bidirectional ones only).
pub fn predict_positions(
    net: &Net,
    tokens: &[u8],
    extra: Option<&[f32]>,
    chunk: usize,
    strands: Strands,
    device: &Device,
) -> Result<Vec<f32>> {
    let head = crate::model::HostHead::from_linear(&net.head);
    let n = head.n_labels();
    let len = tokens.len();
    let mut out = vec![0.0f32; len * n];
    let mut v = vec![0.0f32; n];
    // Forward strand: logits when states are averaged (the head is affine, so the mean of
    // two logit vectors is the head of the mean state), else probabilities.
    let logits = strands == Strands::AverageStates;
    if extra.is_some() && !logits {
        return Err(Error::Runtime(
            "ORF features need a bidirectional head".into(),
        ));
    }
    crate::infer::run_batch(
        &net.backbone,
        &[tokens],
        chunk,
        device,
        false,
        false,
        &mut |c| {
            for t in 0..c.len {
                head.values(c.at(0, t), &mut v, logits);
                let p = c.start + t;
                out[p * n..(p + 1) * n].copy_from_slice(&v);
            }
            Ok(())
        },
    )?;
    if strands != Strands::Forward {
        let rev = crate::alphabet::reverse_complement_tokens(tokens);
        crate::infer::run_batch(
            &net.backbone,
            &[&rev],
            chunk,
            device,
            true,
            false,
            &mut |c| {
                for t in 0..c.len {
                    head.values(c.at(0, t), &mut v, logits);
                    let p = len - 1 - (c.start + t);
                    for (a, q) in out[p * n..(p + 1) * n].iter_mut().zip(&v) {
                        *a = 0.5 * (*a + q);
                    }
                }
                Ok(())
            },
        )?;
        if logits {
            if let Some(f) = extra {
                let k = f.len() / len.max(1);
                for (row, x) in out.chunks_exact_mut(n).zip(f.chunks_exact(k.max(1))) {
                    head.add_extra(x, row);
                }
            }
            for row in out.chunks_exact_mut(n) {
                crate::model::softmax_in_place(row);
            }
        }
    }
    Ok(out)
}

/// Per-base validation of a position model over whole stretches (chunked, state carried).
fn position_scores(
    net: &Net,
    data: &PositionDataset,
    features: Option<&[OrfIndex]>,
    spans: &[Span],
    chunk: usize,
    strands: Strands,
    device: &Device,
) -> Result<Scores> {
    let n_classes = data.labels.len();
    let mut cm = ConfusionMatrix::new(n_classes);
    let mut hists: Vec<ScoreHistogram> = (0..n_classes).map(|_| ScoreHistogram::new()).collect();
    let mut loss = 0.0f64;
    let mut counted = 0usize;
    for s in spans {
        let r = &data.records[s.record];
        let extra = features.map(|f| {
            let mut v = Vec::new();
            f[s.record].extend(s.start, s.end, &mut v);
            v
        });
        let probs = predict_positions(
            net,
            &r.tokens[s.start..s.end],
            extra.as_deref(),
            chunk,
            strands,
            device,
        )?;
        for (t, p) in probs.chunks_exact(n_classes).enumerate() {
            let lab = r.labels[s.start + t];
            if lab == IGNORE {
                continue;
            }
            let lab = lab as usize;
            cm.add(argmax(p), lab);
            loss += nll(p[lab]);
            counted += 1;
            for (k, h) in hists.iter_mut().enumerate() {
                h.add(p[k], lab == k);
            }
        }
    }
    let mut s = Scores::new();
    s.insert("loss".into(), loss / counted.max(1) as f64);
    s.insert("accuracy".into(), cm.accuracy());
    s.insert("mcc".into(), cm.mcc());
    s.insert("f1".into(), cm.macro_f1());
    insert_areas(&mut s, hists.iter().skip(1).map(|h| (h.auroc(), h.auprc())));
    s.insert("bases".into(), counted as f64);
    Ok(s)
}

/// Checks that a model's head fits the task; with `replace_head` (or no head) a new head is
/// initialised for the task's classes.
/// `orf_features`: the head also reads ORF features (its width grows by
/// [`crate::model::orf::ORF_FEATURES`]). Returns whether a new head was made.
pub fn prepare_head(
    model: &mut GenoModel,
    task: &Task<'_>,
    replace_head: bool,
    orf_features: bool,
    seed: u64,
    device: &Device,
) -> Result<bool> {
    let labels = task.labels().to_vec();
    let kind = task.kind();
    let fits = match &model.config.head {
        Some(h) => {
            h.kind == kind
                && h.labels == labels
                && h.orf_features == orf_features
                && model.head.is_some()
        }
        None => false,
    };
    if fits && !replace_head {
        return Ok(false);
    }
    if let Some(h) = &model.config.head
        && !replace_head
    {
        let what = if h.kind != kind {
            let name = |k: HeadKind| match k {
                HeadKind::Sequence => "sequence",
                HeadKind::Position => "per-position",
            };
            format!(
                "the model's head is a {} head; this task needs a {} head",
                name(h.kind),
                name(kind)
            )
        } else if h.orf_features != orf_features {
            format!(
                "the model's head {} ORF features; this run asks for a head that {}",
                if h.orf_features {
                    "reads"
                } else {
                    "does not read"
                },
                if orf_features { "does" } else { "does not" }
            )
        } else {
            format!(
                "the model's classes are {}; the data's are {}",
                h.labels.join(", "),
                labels.join(", ")
            )
        };
        return Err(Error::usage(
            what,
            "pass --replace-head to train a new head",
        ));
    }
    let d = model.config.architecture.d_model
        + if orf_features {
            crate::model::orf::ORF_FEATURES
        } else {
            0
        };
    let mut map = crate::model::weights::TensorMap::new();
    crate::model::init::init_head(&mut map, labels.len(), d, seed);
    model.head = Some(crate::model::weights::head_from_tensors(
        &mut map,
        labels.len(),
        d,
        device,
    )?);
    model.config.head = Some(crate::model::HeadConfig {
        kind,
        labels,
        rc_average: false,
        bidirectional: false,
        orf_features,
    });
    Ok(true)
}

/// The most positions [`fit_orf_head`] fits on (about 64 MiB of samples).
pub const ORF_FIT_POSITIONS: usize = 1 << 20;

/// Every how many training positions [`fit_orf_head`] takes one: 7, or more when that would
/// give more than [`ORF_FIT_POSITIONS`].
fn orf_fit_stride(total: usize) -> usize {
    total.div_ceil(ORF_FIT_POSITIONS).max(7)
}

/// Starts a fresh ORF-feature head as a softmax regression on the ORF features alone:
/// fitted (Newton's method, small ridge) on every 7th labeled position of the training
/// stretches (every `k`th, `k` larger, past [`ORF_FIT_POSITIONS`] positions, so that a whole
/// genome needs no more memory than a bacterial one), with the hidden-state weights zero. Training then begins from a model that
/// already knows how gene length separates the classes, and the backbone learns what the
/// lengths miss. (Gradient steps alone would need thousands of steps to grow the feature
/// weights to the size the lengths call for.) Returns the fitted model's training accuracy.
pub fn fit_orf_head(model: &mut GenoModel, task: &Task<'_>, device: &Device) -> Result<f64> {
    use crate::model::orf::ORF_FEATURES as K;
    let Task::Position { data, train, .. } = task else {
        return Err(Error::usage(
            "ORF features apply to per-position tasks",
            "leave out --orf-features",
        ));
    };
    let head = model
        .head
        .as_ref()
        .ok_or_else(|| Error::Runtime("no head to fit".into()))?;
    let n_classes = data.labels.len();
    let mut xs: Vec<[f64; K + 1]> = Vec::new();
    let mut ys: Vec<usize> = Vec::new();
    let total: usize = train.iter().map(|s| s.end - s.start).sum();
    let stride = orf_fit_stride(total);
    let mut cache: Option<(usize, OrfIndex)> = None;
    for s in train {
        if cache.as_ref().is_none_or(|(r, _)| *r != s.record) {
            cache = Some((s.record, OrfIndex::new(&data.records[s.record].tokens)));
        }
        let Some((_, index)) = &cache else { continue };
        let labels = &data.records[s.record].labels;
        for (p, f) in (s.start..s.end)
            .zip(index.rows(s.start, s.end))
            .step_by(stride)
        {
            if labels[p] == IGNORE {
                continue;
            }
            let mut x = [1.0f64; K + 1];
            for (j, v) in f.iter().enumerate() {
                x[j] = *v as f64;
            }
            xs.push(x);
            ys.push(labels[p] as usize);
        }
    }
    if xs.is_empty() {
        return Err(Error::usage(
            "no labeled training positions for the ORF features",
            "check the BED and --val-fraction",
        ));
    }
    let (theta, accuracy) = softmax_newton::<{ K + 1 }>(&xs, &ys, n_classes);
    // Head weight layout: [d_model + K, n_classes]; hidden rows zero, feature rows fitted.
    let [d_in, n] = head.weight.val().dims();
    let d = d_in - K;
    let mut w = vec![0.0f32; d_in * n];
    let mut b = vec![0.0f32; n];
    for c in 0..n {
        for j in 0..K {
            w[(d + j) * n + c] = theta[c][j] as f32;
        }
        b[c] = theta[c][K] as f32;
    }
    let head = model
        .head
        .as_mut()
        .ok_or_else(|| Error::Runtime("no head to fit".into()))?;
    head.weight = Param::from_tensor(Tensor::from_data(TensorData::new(w, [d_in, n]), device));
    head.bias = Some(Param::from_tensor(Tensor::from_data(
        TensorData::new(b, [n]),
        device,
    )));
    Ok(accuracy)
}

/// Multinomial logistic regression by Newton's method on dense inputs whose last column is
/// the constant 1; class 0's parameters stay zero (the reference). Returns the parameters,
/// `[n_classes][M]`, and the training accuracy.
fn softmax_newton<const M: usize>(
    xs: &[[f64; M]],
    ys: &[usize],
    n_classes: usize,
) -> (Vec<[f64; M]>, f64) {
    let free = n_classes.saturating_sub(1);
    let p = free * M;
    let mut theta = vec![[0.0f64; M]; n_classes];
    let ridge = 1e-6 * xs.len() as f64;
    for _ in 0..25 {
        let mut g = vec![0.0f64; p];
        let mut h = vec![0.0f64; p * p];
        let mut probs = vec![0.0f64; n_classes];
        for (x, &y) in xs.iter().zip(ys) {
            for (c, pc) in probs.iter_mut().enumerate() {
                *pc = theta[c].iter().zip(x).map(|(a, b)| a * b).sum();
            }
            let mx = probs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let mut z = 0.0;
            for pc in probs.iter_mut() {
                *pc = (*pc - mx).exp();
                z += *pc;
            }
            for pc in probs.iter_mut() {
                *pc /= z;
            }
            for a in 0..free {
                let ca = a + 1;
                let r = probs[ca] - f64::from(u8::from(y == ca));
                for i in 0..M {
                    g[a * M + i] += r * x[i];
                }
                for bcls in 0..free {
                    let cb = bcls + 1;
                    let wgt = probs[ca] * (f64::from(u8::from(ca == cb)) - probs[cb]);
                    for i in 0..M {
                        for j in 0..M {
                            h[(a * M + i) * p + bcls * M + j] += wgt * x[i] * x[j];
                        }
                    }
                }
            }
        }
        for (a, row) in theta.iter().skip(1).enumerate() {
            for i in 0..M {
                g[a * M + i] += ridge * row[i];
                h[(a * M + i) * p + a * M + i] += ridge;
            }
        }
        let step = solve(h, g, p);
        let mut biggest = 0.0f64;
        for a in 0..free {
            for i in 0..M {
                theta[a + 1][i] -= step[a * M + i];
                biggest = biggest.max(step[a * M + i].abs());
            }
        }
        if biggest < 1e-8 {
            break;
        }
    }
    let correct = xs
        .iter()
        .zip(ys)
        .filter(|(x, y)| {
            let score =
                |c: usize| -> f64 { theta[c].iter().zip(x.iter()).map(|(a, b)| a * b).sum() };
            (0..n_classes).max_by(|&a, &b| score(a).total_cmp(&score(b))) == Some(**y)
        })
        .count();
    (theta, correct as f64 / xs.len() as f64)
}

/// Solves `a x = b` (`a` is `n x n`, symmetric positive definite in practice) by Gaussian
/// elimination with partial pivoting; singular directions get a zero step.
fn solve(mut a: Vec<f64>, mut b: Vec<f64>, n: usize) -> Vec<f64> {
    for col in 0..n {
        let piv = (col..n)
            .max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs()))
            .unwrap_or(col);
        if a[piv * n + col].abs() < 1e-300 {
            continue;
        }
        if piv != col {
            for k in 0..n {
                a.swap(piv * n + k, col * n + k);
            }
            b.swap(piv, col);
        }
        for r in col + 1..n {
            let f = a[r * n + col] / a[col * n + col];
            if f != 0.0 {
                for k in col..n {
                    a[r * n + k] -= f * a[col * n + k];
                }
                b[r] -= f * b[col];
            }
        }
    }
    let mut x = vec![0.0f64; n];
    for r in (0..n).rev() {
        let d = a[r * n + r];
        if d.abs() < 1e-300 {
            continue;
        }
        let s: f64 = (r + 1..n).map(|k| a[r * n + k] * x[k]).sum();
        x[r] = (b[r] - s) / d;
    }
    x
}

/// Everything a run needs besides the task.
pub struct RunSpec<'a> {
    /// Output directory (best model, `checkpoint/`, `metrics.jsonl`).
    pub out: &'a Path,
    /// Continue from `out/checkpoint`.
    pub resume: bool,
    /// The compute device (plain; autodiff is switched on here).
    pub device: Device,
    /// Provenance recorded in the saved model's config (extended with metrics).
    pub provenance: serde_json::Value,
    /// Stop after this many epochs in total, as if interrupted (tests of `--resume`).
    pub stop_after: Option<usize>,
    /// Run batches of sequences padded to few lengths ([`crate::infer::round_length`]): on a
    /// GPU, which compiles and tunes kernels for every new length.
    pub round_lengths: bool,
}

/// Trains `model` on `task`; the best epoch's weights end up in `spec.out`. Returns the state
/// at the end (history, best epoch).
pub fn train(
    mut model: GenoModel,
    task: &Task<'_>,
    opts: &TrainOptions,
    spec: &RunSpec<'_>,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<TrainerState> {
    opts.validate()?;
    let kind = task.kind();
    let n_classes = task.labels().len();
    let metric = task.metric();
    let device = &spec.device;
    let ad = device.clone().autodiff();
    let ckpt = checkpoint_dir(spec.out);

    let mut state = TrainerState {
        options: Some(opts.clone()),
        ..Default::default()
    };
    if spec.resume {
        let st_path = ckpt.join("trainer.json");
        let text = std::fs::read_to_string(&st_path).map_err(|e| {
            Error::usage(
                format!("cannot resume: {} unreadable ({e})", st_path.display()),
                "resume only into an output directory of an earlier `genomamba train` run, or leave out --resume",
            )
        })?;
        state = serde_json::from_str(&text).map_err(|e| {
            Error::usage(
                format!("cannot resume: {} is damaged ({e})", st_path.display()),
                "start a new run without --resume",
            )
        })?;
        if let Err(why) = state.check(opts.epochs) {
            return Err(Error::usage(
                format!("cannot resume: {} is damaged ({why})", st_path.display()),
                "start a new run without --resume",
            ));
        }
        let best = spec.out.join("model.safetensors");
        if state.best_epoch > 0 && !best.is_file() {
            return Err(Error::usage(
                format!(
                    "cannot resume: {} (the best model so far, of epoch {}) is missing",
                    best.display(),
                    state.best_epoch
                ),
                "put it back, or start a new run without --resume",
            ));
        }
        let saved = GenoModel::load(&ckpt, device)?;
        let mut diffs = Vec::new();
        if state.options.as_ref() != Some(opts) {
            diffs.push(option_differences(state.options.as_ref(), opts));
        }
        diffs.extend(run_differences(
            &saved.config,
            &model.config,
            &spec.provenance,
        ));
        if !diffs.is_empty() {
            return Err(Error::usage(
                format!(
                    "cannot resume: this run differs from the checkpoint's ({})",
                    diffs.join("; ")
                ),
                "resume with the same command as the first run (see checkpoint/trainer.json and checkpoint/config.json), or start a new run without --resume",
            ));
        }
        model = saved;
    }
    let head = model
        .head
        .take()
        .ok_or_else(|| Error::Runtime("training needs a head (prepare_head first)".into()))?;
    let mut config = model.config.clone();
    let bidirectional = config.head.as_ref().is_some_and(|h| h.bidirectional);
    // The stop codons of every record, once (they survive the composition augmentation,
    // which never creates or destroys a stop codon); each batch computes its windows'
    // features from them.
    let orf: Option<Vec<OrfIndex>> = match task {
        Task::Position { data, .. } if config.head.as_ref().is_some_and(|h| h.orf_features) => {
            Some(
                data.records
                    .iter()
                    .map(|r| OrfIndex::new(&r.tokens))
                    .collect(),
            )
        }
        _ => None,
    };
    let net = Net {
        backbone: model.backbone,
        head,
    };
    let mut ids = StableIds {
        path: Vec::new(),
        no_decay: Vec::new(),
        all: Vec::new(),
    };
    let mut net = net.map(&mut ids).fork(&ad).train();
    let mut ranks = Ranks(Vec::new());
    net.visit(&mut ranks);
    let params = ranks.0;

    let mut optim: ModuleOptimizer = AdamWConfig::new()
        .with_weight_decay(opts.weight_decay as f32)
        .with_epsilon(1e-8)
        .init()
        .with_group(
            ParamGroup::from_ids(ids.no_decay.clone()),
            AdamWConfig::new()
                .with_weight_decay(0.0)
                .with_epsilon(1e-8)
                .build(),
            None,
        );
    if spec.resume {
        let p = ckpt.join("optimizer.bpk");
        optim = optim.load(&p).map_err(|e| {
            Error::usage(
                format!(
                    "cannot resume: optimizer state {} unreadable ({e:?})",
                    p.display()
                ),
                "start a new run without --resume",
            )
        })?;
    }

    let steps_per_epoch = match task {
        Task::Sequence { train, .. } => train.examples.len().div_ceil(opts.batch_size),
        Task::Position { .. } => opts.windows_per_epoch.div_ceil(opts.batch_size),
    };
    let total_steps = steps_per_epoch.saturating_mul(opts.epochs);
    // Rewritten whole at every epoch (a previous run's, in a directory given with --force,
    // stays until this run's first epoch).
    let log_path = spec.out.join("metrics.jsonl");

    // Sequence task: the training sequences' lengths, which every epoch batches by.
    let train_lengths: Vec<usize> = match task {
        Task::Sequence { train, .. } => train.examples.iter().map(|e| e.tokens.len()).collect(),
        Task::Position { .. } => Vec::new(),
    };
    for epoch in state.epochs_done + 1..=opts.epochs {
        if opts.patience > 0 && state.epochs_since_best >= opts.patience {
            break;
        }
        if spec.stop_after.is_some_and(|n| epoch > n) {
            break;
        }
        let t0 = Instant::now();
        let mut rng =
            StdRng::seed_from_u64(opts.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64));
        // The epoch's draws (which examples or windows, in which order) are made up front;
        // each batch's tensors are built as its step comes, so memory holds one batch, not
        // an epoch's worth.
        let (n_batches, batches): (usize, Box<dyn Iterator<Item = Batch> + '_>) = match task {
            Task::Sequence { train, .. } => {
                let groups = sequence_batches(
                    &train_lengths,
                    opts.batch_size,
                    opts.group_by_length,
                    &mut rng,
                );
                let rng = &mut rng;
                let n = groups.len();
                let batches = groups.into_iter().map(move |idx| {
                    let ex: Vec<(&[u8], usize)> = idx
                        .iter()
                        .map(|&i| (train.examples[i].tokens.as_slice(), train.examples[i].label))
                        .collect();
                    let rc: Vec<bool> = idx
                        .iter()
                        .map(|_| opts.rc_augment && rng.random_bool(0.5))
                        .collect();
                    seq_batch(&ex, &rc, spec.round_lengths)
                });
                (n, Box::new(batches))
            }
            Task::Position { data, train, .. } => {
                let windows = draw_windows(train, opts.window, opts.windows_per_epoch, &mut rng);
                if windows.is_empty() {
                    let longest = train.iter().map(|s| s.len()).max().unwrap_or(0);
                    // Holding out less lengthens the stretches only where a record is longer
                    // than the window.
                    let records_long_enough =
                        data.records.iter().any(|r| r.tokens.len() >= opts.window);
                    return Err(Error::usage(
                        format!(
                            "no training stretch is as long as --window {} (the longest is {longest} bases)",
                            opts.window
                        ),
                        if records_long_enough {
                            format!("use --window {longest} or less, or a smaller --val-fraction")
                        } else {
                            format!("use --window {longest} or less")
                        },
                    ));
                }
                let orf = orf.as_deref();
                let rng = &mut rng;
                let batch_size = opts.batch_size;
                let n = windows.len().div_ceil(batch_size);
                let batches = (0..n).map(move |i| {
                    let w = &windows[i * batch_size..((i + 1) * batch_size).min(windows.len())];
                    let rc: Vec<bool> = w
                        .iter()
                        .map(|_| opts.rc_augment && rng.random_bool(0.5))
                        .collect();
                    let mut b = window_batch(data, orf, w, &rc);
                    if opts.gc_augment > 0.0 {
                        for row in b.tokens.chunks_mut(b.len.max(1)) {
                            let up = rng.random_bool(0.5);
                            let rate = rng.random_range(0.0..opts.gc_augment);
                            shift_composition(row, up, rate, &mut *rng);
                        }
                    }
                    b
                });
                (n, Box::new(batches))
            }
        };
        on_event(Event::EpochStart {
            epoch,
            steps: n_batches,
        });
        let mut loss_sum = 0.0f64;
        let mut bases = 0usize;
        let mut lr = 0.0;
        for b in batches {
            let loss = batch_loss(&net, kind, bidirectional, &b, &ad);
            let loss_value = loss.clone().into_scalar::<f32>() as f64;
            if !loss_value.is_finite() {
                if state.step == 0 {
                    // Before any update: the starting model (or the data) is the cause.
                    return Err(Error::usage(
                        format!(
                            "the loss of the first batch is {loss_value}, before any training step: the starting model gives non-finite outputs"
                        ),
                        "check the model given with --from (weights far out of range, or half precision overflowing), or start from a new model",
                    ));
                }
                return Err(diverged(
                    format!("at step {} (loss {loss_value})", state.step + 1),
                    opts,
                    &state,
                    spec.out,
                ));
            }
            let grads = loss.backward();
            let mut grads = GradientsParams::from_grads(grads, &net);
            clip_global_norm(&mut grads, &params, opts.clip_norm);
            lr = opts.lr_at(state.step, total_steps);
            net = optim.step(lr, net, grads);
            state.step = state.step.saturating_add(1);
            loss_sum += loss_value;
            bases += b.bases;
            on_event(Event::Step { loss: loss_value });
        }
        let train_secs = t0.elapsed().as_secs_f64();
        on_event(Event::Validating);
        let valid = net.valid();
        // The last step's update is not seen by any loss: weights that overflowed there are
        // caught here, before they are validated or saved.
        if let Err(what) = to_model(&valid, &config).check_finite() {
            return Err(diverged(
                format!("in epoch {epoch} ({what} after step {})", state.step),
                opts,
                &state,
                spec.out,
            ));
        }
        let rc_average = config.head.as_ref().is_some_and(|h| h.rc_average);
        let val = match task {
            Task::Sequence { val, .. } => {
                let seqs: Vec<&[u8]> = val.examples.iter().map(|e| e.tokens.as_slice()).collect();
                let labels: Vec<usize> = val.examples.iter().map(|e| e.label).collect();
                let p = predict_sequences(
                    &valid,
                    &seqs,
                    opts.batch_size.max(32),
                    rc_average,
                    spec.round_lengths,
                    device,
                );
                sequence_scores(&p, &labels, n_classes)
            }
            Task::Position { data, val, .. } => position_scores(
                &valid,
                data,
                orf.as_deref(),
                val,
                opts.eval_chunk,
                Strands::of(config.head.as_ref()),
                device,
            )?,
        };
        if val.get("loss").is_some_and(|l| l.is_nan()) {
            return Err(diverged(
                format!("in epoch {epoch} (the validation predictions are NaN)"),
                opts,
                &state,
                spec.out,
            ));
        }
        let log = EpochLog {
            epoch,
            step: state.step,
            lr,
            train_loss: loss_sum / n_batches.max(1) as f64,
            train_bases_per_s: bases as f64 / train_secs.max(1e-9),
            val,
            seconds: t0.elapsed().as_secs_f64(),
        };
        let score = log.val.get(metric).copied().unwrap_or(f64::NAN);
        let improved = state.best_score.is_none_or(|b| better(metric, score, b));
        state.epochs_done = epoch;
        if improved {
            state.best_score = Some(score);
            state.best_epoch = epoch;
            state.epochs_since_best = 0;
        } else {
            state.epochs_since_best += 1;
        }
        state.history.push(log.clone());
        config.provenance = provenance(&spec.provenance, &state, opts, metric);
        // Save: the log, the best model into `out`, the resumable checkpoint into
        // `out/checkpoint`; an interruption waits for all of them, so that it never leaves a
        // model without its checkpoint or a log ahead of it.
        crate::io::output::uninterrupted(|| -> Result<()> {
            // Made at the first write, so a run that fails before then leaves no empty
            // directory.
            std::fs::create_dir_all(spec.out)
                .map_err(|e| Error::io(spec.out.display().to_string(), e))?;
            // The whole log from the state that the checkpoint keeps: a run resumed from a
            // checkpoint older than the log (a crash between the two) rewrites it.
            write_log(&log_path, &state.history)?;
            if improved {
                to_model(&valid, &config).save(spec.out)?;
            } else {
                // The saved (best) model's weights stay; its provenance says how far the run
                // got.
                GenoModel::save_config(&config, spec.out)?;
            }
            let snapshot = to_model(&valid, &config);
            save_checkpoint(&ckpt, &snapshot, &optim, &state)?;
            // Told before an interruption waiting for this save is handled, so that its line
            // can say how to resume.
            on_event(Event::EpochEnd(&log, improved));
            Ok(())
        })?;
    }
    Ok(state)
}

/// Whether `score` of `metric` beats `best`: lower for the loss, higher for the others. An
/// undefined score (NaN) beats nothing, and anything beats an undefined best.
fn better(metric: &str, score: f64, best: f64) -> bool {
    best.is_nan()
        || if metric == "loss" {
            score < best
        } else {
            score > best
        }
}

/// The options that differ between a checkpoint's and this run's, as `name: old -> new`
/// (names as the options are spelled on the command line, mostly).
fn option_differences(old: Option<&TrainOptions>, new: &TrainOptions) -> String {
    let (Some(old), Ok(new)) = (old, serde_json::to_value(new)) else {
        return "the checkpoint records none".into();
    };
    let Ok(old) = serde_json::to_value(old) else {
        return "the checkpoint's cannot be read".into();
    };
    // Keys as the options are spelled on the command line.
    let dashed = |v: serde_json::Value| -> serde_json::Value {
        match v {
            serde_json::Value::Object(o) => (o.into_iter())
                .map(|(k, v)| (k.replace('_', "-"), v))
                .collect(),
            other => other,
        }
    };
    let mut diffs = Vec::new();
    json_differences("", &dashed(old), &dashed(new), &mut diffs);
    diffs.join(", ")
}

/// What makes a resumed run a different run from the checkpoint's, besides the options:
/// the task, the data (by SHA-256), the classes and head, the architecture, the validation
/// split, the examples or bases of each class on each side of it (which differ with other
/// per-position `--records`, say, and would mix two validation sets in one log) and the
/// base model. `saved` is the checkpoint's config (with the first run's
/// provenance), `now` this run's model config and `provenance` this run's.
fn run_differences(
    saved: &crate::model::ModelConfig,
    now: &crate::model::ModelConfig,
    provenance: &serde_json::Value,
) -> Vec<String> {
    let task = |prov: &serde_json::Value| prov.get("task").cloned().unwrap_or_default();
    let (was, is) = (task(&saved.provenance), task(provenance));
    if was != is {
        // Everything else differs with the task.
        return vec![format!("task: {was} in the checkpoint, {is} now")];
    }
    let files = |prov: &serde_json::Value| -> Vec<(String, String)> {
        let files = prov.get("data").and_then(|d| d.as_array());
        let field = |f: &serde_json::Value, k: &str| f[k].as_str().unwrap_or_default().to_string();
        (files.into_iter().flatten())
            .map(|f| (field(f, "path"), field(f, "sha256")))
            .collect()
    };
    let (was, is) = (files(&saved.provenance), files(provenance));
    let mut out = Vec::new();
    if was.len() != is.len() {
        out.push(format!(
            "data: {} files in the checkpoint, {} now",
            was.len(),
            is.len()
        ));
    } else {
        for ((old_path, old_sha), (path, sha)) in was.iter().zip(&is) {
            if old_sha != sha {
                out.push(format!(
                    "data: {} is not the file {old_path} the checkpoint was trained on (SHA-256 differs)",
                    crate::error::shown(path)
                ));
            }
        }
    }
    // Counted the same way in both: the keys both have (an older checkpoint may lack some),
    // less the held-out spans, which number records by their place in the data (the same
    // records in another order are the same data).
    let counts = |prov: &serde_json::Value, other: &serde_json::Value| {
        let mut counts = prov.get("counts").cloned().unwrap_or_default();
        if let Some(c) = counts.as_object_mut() {
            c.retain(|k, _| {
                k != "val_spans" && other.get("counts").is_some_and(|o| o.get(k).is_some())
            });
        }
        counts
    };
    let identity = |config: &crate::model::ModelConfig,
                    prov: &serde_json::Value,
                    other: &serde_json::Value| {
        let mut head = serde_json::to_value(&config.head).unwrap_or_default();
        let classes = head
            .as_object_mut()
            .and_then(|h| h.remove("labels"))
            .unwrap_or_default();
        let counts = counts(prov, other);
        serde_json::json!({
            "classes": classes,
            "head": head,
            "architecture": config.architecture,
            "split": prov.get("split"),
            "counts": counts,
            "base_model": prov.get("base_model"),
        })
    };
    let old = identity(saved, &saved.provenance, provenance);
    let new = identity(now, provenance, &saved.provenance);
    json_differences("", &old, &new, &mut out);
    out
}

/// `key: old in the checkpoint, new now` for every leaf where `old` and `new` differ
/// (objects are compared key by key, anything else whole).
fn json_differences(
    key: &str,
    old: &serde_json::Value,
    new: &serde_json::Value,
    out: &mut Vec<String>,
) {
    if old == new {
        return;
    }
    if let (Some(o), Some(n)) = (old.as_object(), new.as_object()) {
        for (k, v) in n {
            let path = if key.is_empty() {
                k.clone()
            } else {
                format!("{key}.{k}")
            };
            json_differences(&path, o.get(k).unwrap_or(&serde_json::Value::Null), v, out);
        }
        for (k, v) in o.iter().filter(|(k, _)| !n.contains_key(*k)) {
            json_differences(&format!("{key}.{k}"), v, &serde_json::Value::Null, out);
        }
        return;
    }
    let show = |v: &serde_json::Value| {
        if v.is_null() {
            "none".to_string()
        } else {
            crate::error::shorten(&v.to_string(), 120)
        }
    };
    out.push(format!(
        "{key}: {} in the checkpoint, {} now",
        show(old),
        show(new)
    ));
}

fn to_model(net: &Net, config: &crate::model::ModelConfig) -> GenoModel {
    GenoModel {
        config: config.clone(),
        backbone: net.backbone.clone(),
        head: Some(net.head.clone()),
        dir: None,
    }
}

fn provenance(
    base: &serde_json::Value,
    state: &TrainerState,
    opts: &TrainOptions,
    metric: &str,
) -> serde_json::Value {
    let mut p = base.clone();
    if let Some(obj) = p.as_object_mut() {
        obj.insert(
            "options".into(),
            serde_json::to_value(opts).unwrap_or_default(),
        );
        obj.insert("monitored_metric".into(), metric.into());
        obj.insert("best_epoch".into(), state.best_epoch.into());
        obj.insert("epochs_run".into(), state.epochs_done.into());
        obj.insert("steps".into(), state.step.into());
        if let Some(best) = state.history.iter().find(|h| h.epoch == state.best_epoch) {
            obj.insert(
                "validation".into(),
                serde_json::to_value(&best.val).unwrap_or_default(),
            );
            obj.insert("train_bases_per_s".into(), best.train_bases_per_s.into());
        }
        let secs: f64 = state.history.iter().map(|h| h.seconds).sum();
        obj.insert("train_seconds".into(), secs.into());
    }
    p
}

/// Writes the metrics log, one JSON line per epoch of `history`, to a temporary file that
/// replaces `path`.
fn write_log(path: &Path, history: &[EpochLog]) -> Result<()> {
    let mut text = String::new();
    for log in history {
        let line = serde_json::to_string(log)
            .map_err(|e| Error::Runtime(format!("cannot serialise metrics: {e}")))?;
        text.push_str(&line);
        text.push('\n');
    }
    crate::io::output::write_replacing(path, text.as_bytes())
}

/// The error for a run whose loss or weights stopped being finite: what to change, and
/// where the epochs before are kept.
fn diverged(what: String, opts: &TrainOptions, state: &TrainerState, out: &Path) -> Error {
    let mut fix = if opts.clip_norm > 0.0 {
        "lower --lr".to_string()
    } else {
        "lower --lr, or turn gradient clipping back on (--clip-norm 1)".to_string()
    };
    if state.epochs_done > 0 {
        fix.push_str(&format!(
            "; the best model of its {} finished epoch(s) stays in {}: a new run with --from {} (and another --output) goes on from it",
            state.epochs_done,
            out.display(),
            out.display()
        ));
    }
    Error::Runtime(format!("training diverged {what}; {fix}"))
}

/// Writes the checkpoint into a temporary directory and swaps it in, so a crash never leaves
/// a half-written checkpoint.
fn save_checkpoint(
    dir: &Path,
    model: &GenoModel,
    optim: &ModuleOptimizer,
    state: &TrainerState,
) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    // The checkpoint moved aside by the swap below; removed when this is dropped, or by an
    // interruption after the swap.
    let aside = PendingPath::new(parent.join(CHECKPOINT_OLD));
    let old = aside.path();
    // Removed on an error or an interruption before the swap below.
    let pending = PendingPath::new(parent.join(CHECKPOINT_TMP));
    let tmp = pending.path().to_path_buf();
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(tmp.display().to_string(), e))?;
    model.save(&tmp)?;
    optim
        .save(tmp.join("optimizer.bpk"))
        .map_err(|e| Error::Runtime(format!("cannot save optimizer state: {e:?}")))?;
    let json = serde_json::to_string_pretty(state)
        .map_err(|e| Error::Runtime(format!("cannot serialise state: {e}")))?;
    std::fs::write(tmp.join("trainer.json"), json)
        .map_err(|e| Error::io(tmp.display().to_string(), e))?;
    let _ = std::fs::remove_dir_all(old);
    // Swapped in one step where the file system can: a crash at any moment leaves a whole
    // checkpoint in place. The old one, now at the temporary path, goes with `pending`.
    if dir.exists() {
        match exchange(&tmp, dir) {
            Ok(()) => return Ok(()),
            Err(e) if exchange_unsupported(&e) => {}
            Err(e) => return Err(Error::io(dir.display().to_string(), e)),
        }
    }
    // Otherwise two renames, in one section that an interruption waits for: it never finds
    // the old checkpoint moved aside and the new one not yet in place (after a crash between
    // them, `recover_checkpoint` puts the new one in place).
    publish(vec![pending], || {
        if dir.exists() {
            std::fs::rename(dir, old).map_err(|e| Error::io(dir.display().to_string(), e))?;
        }
        std::fs::rename(&tmp, dir).map_err(|e| {
            // The previous checkpoint goes back in place.
            let _ = std::fs::rename(old, dir);
            Error::io(dir.display().to_string(), e)
        })
    })
}

/// Swaps the names of `a` and `b` atomically (Linux `renameat2` with `RENAME_EXCHANGE`).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: two valid NUL-terminated paths, relative to the working directory.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// Whether [`exchange`] failed because the system or the file system lacks it.
fn exchange_unsupported(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::Unsupported
        || matches!(
            e.raw_os_error(),
            Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
        )
}

/// Whether `out` holds a checkpoint swap that a crash cut short (see
/// [`recover_checkpoint`]).
pub fn interrupted_swap(out: &Path) -> bool {
    let (tmp, old) = (out.join(CHECKPOINT_TMP), out.join(CHECKPOINT_OLD));
    // The old one is moved aside only once the new one is complete.
    !checkpoint_dir(out).exists() && old.is_dir() && tmp.join("trainer.json").is_file()
}

/// Whether `name`, in a run's output directory, is a temporary file or directory that a
/// save makes (a run killed outright leaves them).
pub fn is_stale_temporary(name: &str) -> bool {
    name == CHECKPOINT_TMP
        || name == CHECKPOINT_OLD
        || ([".config.json.", ".model.safetensors.", ".metrics.jsonl."]
            .iter()
            .any(|p| name.starts_with(p))
            && name.ends_with(".tmp"))
}

/// Removes what a run killed outright (SIGKILL, a crash) leaves in its output directory
/// `out`: the temporary files of its model, config and log, and a checkpoint being written
/// or moved aside (once a checkpoint is in place, or none can be recovered). For a caller
/// holding the directory's lock.
pub fn remove_stale_temporaries(out: &Path) {
    let Ok(entries) = std::fs::read_dir(out) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_stale_temporary(&name) && entry.path().is_file() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if !interrupted_swap(out) {
        for name in [CHECKPOINT_TMP, CHECKPOINT_OLD] {
            let _ = std::fs::remove_dir_all(out.join(name));
        }
    }
}

/// After a crash between the two renames of a checkpoint swap (on a file system without an
/// atomic exchange), `out` has no `checkpoint/` but the new one, complete, under its
/// temporary name beside the old one moved aside: puts the new one in place. Whether it
/// did.
pub fn recover_checkpoint(out: &Path) -> Result<bool> {
    if !interrupted_swap(out) {
        return Ok(false);
    }
    let dir = checkpoint_dir(out);
    let (tmp, old) = (out.join(CHECKPOINT_TMP), out.join(CHECKPOINT_OLD));
    std::fs::rename(&tmp, &dir).map_err(|e| Error::io(dir.display().to_string(), e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HeadConfig, MambaConfig, ModelConfig};

    #[test]
    fn resumed_runs_compare_the_counts_both_have_records_in_any_order() {
        let config = ModelConfig::new(MambaConfig::new(16, 2));
        let prov = |counts: serde_json::Value| {
            let mut config = config.clone();
            config.provenance = serde_json::json!({"task": "position", "counts": counts});
            config
        };
        let saved = prov(serde_json::json!({
            "train_bases": 10, "val_bases": 4, "val_spans": [{"record": 0}],
        }));
        // The same bases from records in another order; a count the checkpoint lacks.
        let now = prov(serde_json::json!({
            "train_bases": 10, "val_bases": 4, "val_spans": [{"record": 1}],
            "train_class_bases": [8, 2],
        }));
        assert_eq!(
            run_differences(&saved, &now, &now.provenance),
            Vec::<String>::new()
        );
        // Other records of the same counts: told by their names, where both have them.
        let named = |names: &[&str]| {
            prov(serde_json::json!({"train_bases": 10, "val_bases": 4, "records": names}))
        };
        let (ab, ac) = (named(&["a", "b"]), named(&["a", "c"]));
        assert_eq!(
            run_differences(&ab, &ac, &ac.provenance),
            [r#"counts.records: ["a","b"] in the checkpoint, ["a","c"] now"#]
        );
        assert!(run_differences(&saved, &ac, &ac.provenance).is_empty());
        // Other records: other bases.
        let other = prov(serde_json::json!({"train_bases": 8, "val_bases": 2}));
        assert_eq!(
            run_differences(&saved, &other, &other.provenance),
            [
                "counts.train_bases: 10 in the checkpoint, 8 now",
                "counts.val_bases: 4 in the checkpoint, 2 now"
            ]
        );
    }

    #[test]
    fn checkpoints_are_swapped_whole_and_an_interrupted_swap_is_recovered() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::write(a.join("f"), "new").unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(b.join("f"), "old").unwrap();
        exchange(&a, &b).unwrap();
        assert_eq!(std::fs::read_to_string(b.join("f")).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(a.join("f")).unwrap(), "old");
        // A crash between the fallback's two renames: no checkpoint/, the complete new one
        // under its temporary name, the old one aside.
        let out = t.path().join("run");
        let (tmp, old) = (out.join(CHECKPOINT_TMP), out.join(CHECKPOINT_OLD));
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(tmp.join("trainer.json"), "2").unwrap();
        std::fs::write(old.join("trainer.json"), "1").unwrap();
        assert!(recover_checkpoint(&out).unwrap());
        let ckpt = checkpoint_dir(&out);
        assert_eq!(
            std::fs::read_to_string(ckpt.join("trainer.json")).unwrap(),
            "2"
        );
        assert!(!tmp.exists() && !old.exists());
        // With a checkpoint in place, or a temporary one that may be unfinished (nothing
        // moved aside), nothing is touched.
        assert!(!recover_checkpoint(&out).unwrap());
        std::fs::remove_dir_all(&ckpt).unwrap();
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::write(tmp.join("trainer.json"), "3").unwrap();
        assert!(!recover_checkpoint(&out).unwrap());
        assert!(tmp.exists() && !ckpt.exists());
    }

    #[test]
    fn the_orf_fit_takes_at_most_its_cap_of_positions() {
        assert_eq!(orf_fit_stride(0), 7);
        assert_eq!(orf_fit_stride(1000), 7);
        for total in [
            1usize,
            7 << 20,
            (7 << 20) + 1,
            3_000_000_000,
            usize::MAX / 2,
        ] {
            let stride = orf_fit_stride(total);
            assert!(stride >= 7);
            assert!(total.div_ceil(stride) <= ORF_FIT_POSITIONS.max(total.div_ceil(7)));
            if total > 7 * ORF_FIT_POSITIONS {
                assert!(total.div_ceil(stride) <= ORF_FIT_POSITIONS, "{total}");
            }
        }
    }

    fn tiny_net_with(device: &Device, phase_period: usize, orf_features: bool) -> Net {
        let mut arch = MambaConfig::new(16, 2);
        arch.phase_period = phase_period;
        let mut cfg = ModelConfig::new(arch);
        cfg.head = Some(HeadConfig {
            kind: HeadKind::Position,
            labels: vec!["bg".into(), "x".into(), "y".into()],
            rc_average: false,
            bidirectional: true,
            orf_features,
        });
        let m = GenoModel::init(cfg, 3, device).unwrap();
        Net {
            backbone: m.backbone,
            head: m.head.unwrap(),
        }
    }

    /// The up-front GPU memory check against steps measured on an H200 (BENCHMARKS.md,
    /// fortieth session): those that ran pass, the one that ran out of memory is refused with
    /// a batch size that would pass; a GPU of unknown memory (the CPU) passes everything.
    #[test]
    fn gpu_training_memory_check_refuses_steps_that_cannot_fit() {
        use crate::train::data::SeqExample;
        let h200 = Some(150_110_011_392u64);
        let data = PositionDataset {
            labels: vec!["background".into(), "coding".into()],
            records: Vec::new(),
            files: Vec::new(),
        };
        let pos = Task::Position {
            data: &data,
            train: Vec::new(),
            val: Vec::new(),
        };
        let opts = |batch_size, window| TrainOptions {
            batch_size,
            window,
            windows_per_epoch: 1024,
            ..TrainOptions::default()
        };
        let d256 = |layers| MambaConfig::new(256, layers);
        // The number the message names after `flag`.
        let named = |e: &str, flag: &str| -> usize {
            e.split(flag)
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no {flag} named: {e}"))
        };
        // Ran (peaks 22.2, 123.3, 124.2, 65.1, 62.3 GiB).
        check_gpu_training(&pos, &opts(32, 2048), &d256(16), false, h200).unwrap();
        check_gpu_training(&pos, &opts(32, 8192), &d256(16), false, h200).unwrap();
        check_gpu_training(&pos, &opts(8, 32768), &d256(16), false, h200).unwrap();
        check_gpu_training(&pos, &opts(8, 32768), &d256(8), false, h200).unwrap();
        check_gpu_training(&pos, &opts(16, 8192), &d256(8), true, h200).unwrap();
        // Ran out of memory: 8 windows of 131,072 at 16 layers (320 GiB by the estimate).
        let e = check_gpu_training(&pos, &opts(8, 131_072), &d256(16), false, h200)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("8 windows of 131072 bases needs at least 320.0 GiB")
                && e.contains("use --batch-size 1 or less"),
            "{e}"
        );
        check_gpu_training(&pos, &opts(1, 131_072), &d256(16), false, h200).unwrap();
        // Too long for one window: a shorter window is named, and it passes.
        let e = check_gpu_training(&pos, &opts(1, 1 << 23), &d256(16), true, h200)
            .unwrap_err()
            .to_string();
        let window = named(&e, "--window of ");
        assert!(e.contains("(both strands)") && window < 1 << 23, "{e}");
        check_gpu_training(&pos, &opts(1, window), &d256(16), true, h200).unwrap();
        // Fewer windows per epoch than the batch size: the step has that many rows.
        let few = TrainOptions {
            windows_per_epoch: 2,
            ..opts(64, 131_072)
        };
        check_gpu_training(&pos, &few, &d256(16), false, h200).unwrap();
        check_gpu_training(&pos, &opts(1 << 20, 1 << 20), &d256(64), false, None).unwrap();

        // The sequence task: rows times the longest training sequence.
        let seqs = |n: usize, len: usize| SeqDataset {
            labels: vec!["a".into(), "b".into()],
            examples: (0..n)
                .map(|i| SeqExample {
                    tokens: vec![7; if i == 0 { len } else { 10 }],
                    label: i % 2,
                    origin: format!("test:{i}"),
                })
                .collect(),
            ..Default::default()
        };
        let ran = seqs(5000, 200);
        let seq = Task::Sequence {
            train: &ran,
            val: &ran,
        };
        // Ran (peak 33.6 GiB).
        check_gpu_training(&seq, &opts(256, 0), &d256(16), false, h200).unwrap();
        let e = check_gpu_training(&seq, &opts(4096, 0), &d256(16), false, h200)
            .unwrap_err()
            .to_string();
        let batch = named(&e, "--batch-size ");
        assert!(
            e.contains("4096 sequences of up to 200 bases") && (256..4096).contains(&batch),
            "{e}"
        );
        check_gpu_training(&seq, &opts(batch, 0), &d256(16), false, h200).unwrap();
        let long = seqs(4, 50_000_000);
        let seq = Task::Sequence {
            train: &long,
            val: &long,
        };
        let e = check_gpu_training(&seq, &opts(32, 0), &d256(16), false, h200)
            .unwrap_err()
            .to_string();
        assert!(e.contains("alone is too long for this GPU"), "{e}");
    }

    #[test]
    fn position_head_matches_the_linear_op_with_its_gradients() {
        // Batch rows as they are, and one row of 4,160 = 65 x 64 positions taken as 65 rows.
        assert_eq!(crate::ops::block::time_rows(1, 4160), (65, 64));
        check_position_head(3, 37, 8, 3);
        check_position_head(1, 4160, 8, 3);
    }

    fn check_position_head(batch: usize, len: usize, d: usize, classes: usize) {
        let ad = Device::flex().autodiff();
        let mut rng = StdRng::seed_from_u64(3);
        let mut rand =
            |k: usize| -> Vec<f32> { (0..k).map(|_| rng.random_range(-1.0..1.0)).collect() };
        let (xv, wv, bv) = (rand(batch * len * d), rand(d * classes), rand(classes));
        let head = || Linear {
            weight: Param::from_tensor(
                Tensor::from_data(TensorData::new(wv.clone(), [d, classes]), &ad).require_grad(),
            ),
            bias: Some(Param::from_tensor(
                Tensor::from_data(TensorData::new(bv.clone(), [classes]), &ad).require_grad(),
            )),
        };
        let host = |t: Tensor<3>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        let run = |ours: bool| {
            let h = head();
            let x: Tensor<3> =
                Tensor::from_data(TensorData::new(xv.clone(), [batch, len, d]), &ad).require_grad();
            let y = if ours {
                position_head(&h, x.clone())
            } else {
                h.forward(x.clone())
            };
            // A loss that weighs every output differently.
            let weights: Tensor<3> = Tensor::arange(0..(batch * len * classes) as i64, &ad)
                .float()
                .reshape([batch, len, classes])
                .sin();
            let grads = (y.clone() * weights).sum().backward();
            let gw = h.weight.val().grad(&grads).unwrap();
            let gb = h.bias.as_ref().unwrap().val().grad(&grads).unwrap();
            let gx = x.grad(&grads).unwrap();
            (
                host(y),
                host(gw.unsqueeze()),
                host(gb.unsqueeze()),
                host(gx),
            )
        };
        let (ours, theirs) = (run(true), run(false));
        let close = |a: &[f32], b: &[f32], what: &str| {
            assert_eq!(a.len(), b.len());
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert!(
                    (x - y).abs() < 1e-5 * (1.0 + y.abs()),
                    "{what}[{i}]: {x} vs {y}"
                );
            }
        };
        close(&ours.0, &theirs.0, "logits");
        close(&ours.1, &theirs.1, "weight gradient");
        close(&ours.2, &theirs.2, "bias gradient");
        close(&ours.3, &theirs.3, "input gradient");
    }

    #[test]
    fn stop_codons_on_both_strands() {
        use crate::alphabet::{A, C, G, T};
        let id = |s: &str| -> Vec<i64> {
            s.bytes()
                .map(|b| match b {
                    b'A' => A,
                    b'C' => C,
                    b'G' => G,
                    _ => T,
                } as i64)
                .collect()
        };
        let mut stops = Vec::new();
        for x in "ACGT".chars() {
            for y in "ACGT".chars() {
                for z in "ACGT".chars() {
                    let c = format!("{x}{y}{z}");
                    if stop_either_strand(&id(&c)) {
                        stops.push(c);
                    }
                }
            }
        }
        assert_eq!(stops, ["CTA", "TAA", "TAG", "TCA", "TGA", "TTA"]);
    }

    #[test]
    fn composition_shift_keeps_every_stop_codon() {
        use crate::alphabet::{C, G};
        let mut rng = StdRng::seed_from_u64(5);
        for up in [true, false] {
            let orig: Vec<i64> = (0..5000).map(|_| 7 + rng.random_range(0..4i64)).collect();
            let mut row = orig.clone();
            shift_composition(&mut row, up, 0.5, &mut rng);
            let gc = |r: &[i64]| {
                r.iter()
                    .filter(|&&b| b == C as i64 || b == G as i64)
                    .count()
            };
            if up {
                assert!(gc(&row) > gc(&orig) + 500, "{} vs {}", gc(&row), gc(&orig));
            } else {
                assert!(gc(&row) + 500 < gc(&orig));
            }
            let stops = |r: &[i64]| -> Vec<usize> {
                (0..r.len() - 2)
                    .filter(|&i| stop_either_strand(&r[i..i + 3]))
                    .collect()
            };
            assert_eq!(stops(&orig), stops(&row), "stop codons moved");
            assert!(!stops(&orig).is_empty());
        }
    }

    #[test]
    fn bidirectional_training_path_equals_chunked_prediction() {
        // The batch path (both strands in one batch, flipped in tensors) and the chunked
        // inference path (two passes with carried state, logits averaged) agree, with and
        // without a codon-phase embedding, for every record length modulo 3, and with ORF
        // features.
        let device = Device::flex();
        for (phase, len, orf) in [
            (0, 53, false),
            (3, 53, false),
            (3, 54, false),
            (3, 55, false),
            (0, 301, true),
        ] {
            let net = tiny_net_with(&device, phase, orf);
            let mut rng = StdRng::seed_from_u64(1);
            let toks: Vec<u8> = (0..len).map(|_| 7 + rng.random_range(0..5u8)).collect();
            let t: Tensor<2, Int> = Tensor::from_data(
                TensorData::new(toks.iter().map(|&x| x as i64).collect(), [1, toks.len()]),
                &device,
            );
            let feats = orf.then(|| crate::model::orf::orf_features(&toks));
            let k = crate::model::orf::ORF_FEATURES;
            let extra = feats
                .clone()
                .map(|f| Tensor::from_data(TensorData::new(f, [1, len, k]), &device));
            let want = host_values(softmax(net.position_logits(t, true, extra), 2));
            for chunk in [7, 1000] {
                let got = predict_positions(
                    &net,
                    &toks,
                    feats.as_deref(),
                    chunk,
                    Strands::AverageStates,
                    &device,
                )
                .unwrap();
                assert_eq!(got.len(), want.len());
                let worst = max_diff(&got, &want);
                assert!(
                    worst < 1e-5,
                    "phase {phase} len {len} chunk {chunk}: {worst}"
                );
            }
            // Forward only differs (the check above can fail).
            if !orf {
                let fwd =
                    predict_positions(&net, &toks, None, 7, Strands::Forward, &device).unwrap();
                assert!(max_diff(&fwd, &want) > 1e-4);
            } else {
                // Leaving the features out changes the predictions.
                let bare = predict_positions(&net, &toks, None, 7, Strands::AverageStates, &device)
                    .unwrap();
                assert!(max_diff(&bare, &want) > 1e-4);
            }
        }
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    }

    #[test]
    fn newton_recovers_a_logistic_model() {
        // Labels drawn from known softmax models (2 and 3 classes); the fit finds them.
        let mut rng = StdRng::seed_from_u64(5);
        for truth in [
            vec![[0.0, 0.0, 0.0], [2.0, -1.0, 0.5]],
            vec![[0.0, 0.0, 0.0], [1.5, 0.0, -0.5], [-1.0, 2.0, 0.25]],
        ] {
            let c = truth.len();
            let mut xs = Vec::new();
            let mut ys = Vec::new();
            for _ in 0..40_000 {
                let x = [
                    rng.random_range(-2.0..2.0),
                    rng.random_range(-2.0..2.0),
                    1.0,
                ];
                let logits: Vec<f64> = truth
                    .iter()
                    .map(|w: &[f64; 3]| w.iter().zip(&x).map(|(a, b)| a * b).sum())
                    .collect();
                let z: f64 = logits.iter().map(|l| l.exp()).sum();
                let mut u: f64 = rng.random::<f64>() * z;
                let mut y = c - 1;
                for (k, l) in logits.iter().enumerate() {
                    u -= l.exp();
                    if u <= 0.0 {
                        y = k;
                        break;
                    }
                }
                xs.push(x);
                ys.push(y);
            }
            let (theta, acc) = softmax_newton::<3>(&xs, &ys, c);
            for (got, want) in theta.iter().zip(&truth) {
                for (g, w) in got.iter().zip(want) {
                    assert!((g - w).abs() < 0.1, "{theta:?} vs {truth:?}");
                }
            }
            assert!(acc > 0.5);
        }
    }

    #[test]
    fn reverse_phase_pairs_do_not_depend_on_length() {
        // The base at original position x gets phase -x mod p on the reverse strand.
        for p in [1, 2, 3, 5] {
            for n in 1..20 {
                let start = crate::model::reverse_start_phase(n, p);
                for x in 0..n {
                    let j = n - 1 - x; // position in the reverse complement
                    assert_eq!((start + j) % p, (p - x % p) % p, "p {p} n {n} x {x}");
                }
            }
        }
        assert_eq!(crate::model::reverse_start_phase(10, 0), 0);
    }

    #[test]
    fn batches_rounded_to_few_lengths_give_the_same_logits() {
        let device = Device::flex();
        let net = tiny_net_with(&device, 0, false);
        let mut rng = StdRng::seed_from_u64(3);
        let seqs: Vec<Vec<u8>> = [37, 50, 61]
            .iter()
            .map(|&n| (0..n).map(|_| 7 + rng.random_range(0..4u8)).collect())
            .collect();
        let ex: Vec<(&[u8], usize)> = seqs.iter().map(|s| (s.as_slice(), 0)).collect();
        let logits = |round: bool| {
            let b = seq_batch(&ex, &[false, true, false], round);
            let tokens: Tensor<2, Int> =
                Tensor::from_data(TensorData::new(b.tokens, [b.rows, b.len]), &device);
            let mask: Tensor<2> =
                Tensor::from_data(TensorData::new(b.mask, [b.rows, b.len]), &device);
            (b.len, host_values(net.sequence_logits(tokens, mask)))
        };
        let (plain_len, plain) = logits(false);
        let (round_len, rounded) = logits(true);
        assert_eq!((plain_len, round_len), (61, 64));
        assert!(max_diff(&plain, &rounded) < 1e-5);
    }

    #[test]
    fn length_grouped_batches_cover_every_sequence_once_with_little_padding() {
        // Lengths as mixed as CpG islands: mostly short, a long tail.
        let mut rng = StdRng::seed_from_u64(7);
        let lengths: Vec<usize> = (0..5_000)
            .map(|_| {
                let u: f64 = rng.random_range(0.0..1.0);
                (200.0 / (1.0 - 0.95 * u)) as usize
            })
            .collect();
        for (n, size) in [(5_000, 32), (4_999, 32), (100, 7), (1, 32), (0, 4)] {
            let lengths = &lengths[..n];
            let mut all = Vec::new();
            for group in [false, true] {
                let b = sequence_batches(lengths, size, group, &mut StdRng::seed_from_u64(1));
                assert_eq!(b.len(), n.div_ceil(size), "{n} {size} {group}");
                assert!(b.iter().filter(|x| x.len() != size).count() <= 1);
                let mut seen: Vec<usize> = b.iter().flatten().copied().collect();
                seen.sort_unstable();
                assert_eq!(seen, (0..n).collect::<Vec<_>>());
                all.push(b);
            }
            if n == 5_000 {
                let random = padding_ratio(lengths, &all[0]);
                let grouped = padding_ratio(lengths, &all[1]);
                assert!(random > 3.0, "random batches {random}");
                assert!(grouped < 1.1, "grouped batches {grouped}");
                // Grouping keeps the order random: other seeds, other batches; and the long
                // batches are not all at the start or the end.
                let other = sequence_batches(lengths, size, true, &mut StdRng::seed_from_u64(2));
                assert_ne!(all[1], other);
                let longest = |b: &Vec<usize>| b.iter().map(|&i| lengths[i]).max().unwrap_or(0);
                let half = all[1].len() / 2;
                let first: usize = all[1][..half].iter().map(longest).sum();
                let second: usize = all[1][half..].iter().map(longest).sum();
                let (lo, hi) = (first.min(second) as f64, first.max(second) as f64);
                assert!(lo / hi > 0.5, "{first} {second}");
            }
        }
        // Equal lengths: no padding either way.
        let same = vec![750; 100];
        let b = sequence_batches(&same, 32, false, &mut StdRng::seed_from_u64(3));
        assert_eq!(padding_ratio(&same, &b), 1.0);
    }

    #[test]
    fn schedule_warms_up_then_decays_to_floor() {
        let o = TrainOptions {
            lr: 1.0,
            warmup_steps: 10,
            min_lr_ratio: 0.1,
            ..Default::default()
        };
        assert!((o.lr_at(0, 110) - 0.1).abs() < 1e-12);
        assert!((o.lr_at(9, 110) - 1.0).abs() < 1e-12);
        assert!((o.lr_at(10, 110) - 1.0).abs() < 1e-12);
        assert!((o.lr_at(60, 110) - 0.55).abs() < 1e-9);
        assert!((o.lr_at(110, 110) - 0.1).abs() < 1e-12);
        // Monotone after warm-up.
        for s in 10..109 {
            assert!(o.lr_at(s + 1, 110) <= o.lr_at(s, 110));
        }
    }

    #[test]
    fn exempt_parameters_by_path() {
        assert!(StableIds::exempt("backbone.layers.0.a_log"));
        assert!(StableIds::exempt("backbone.layers.3.d"));
        assert!(StableIds::exempt("backbone.layers.3.norm.weight"));
        assert!(StableIds::exempt("backbone.norm_f.weight"));
        assert!(StableIds::exempt("head.bias"));
        assert!(StableIds::exempt("backbone.layers.1.dt_bias"));
        assert!(StableIds::exempt("backbone.layers.1.conv_bias"));
        assert!(!StableIds::exempt("backbone.layers.1.in_proj.weight"));
        assert!(!StableIds::exempt("backbone.embedding"));
        assert!(!StableIds::exempt("head.weight"));
        assert_ne!(StableIds::id_of("a"), StableIds::id_of("b"));
    }
}
