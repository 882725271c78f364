//! The chunk runner: records are cut into chunks of `chunk_size` positions and every layer's
//! state (convolution window and SSM state) is carried from one chunk to the next, so the
//! hidden states equal one pass over the whole record while memory holds one chunk.
//!
//! Short records are batched: a batch is right-padded with `[PAD]` to its longest member.
//! The model is causal, so padding after a record never changes that record's hidden states;
//! consumers ignore positions past each record's length.

pub mod pool;

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::alphabet::PAD;
use crate::device::{gib, usable_memory};
use crate::model::weights::host_values;
use crate::model::{Mamba, MambaState, Precision, Residual};
use crate::{Error, Result};

/// Default positions per chunk (on the CPU).
pub const DEFAULT_CHUNK: usize = 8192;

/// Default positions per chunk on a GPU. On an H200 (d_model 256, 16 layers, f16) whole chr20
/// took 71.3 s with chunks of 8,192 and 32.5 s with 65,536 in the eighth session; with the
/// kernels of the sixteenth session, 15.25 s with 65,536 (1,285 MiB of GPU memory), 13.66 s
/// with 262,144 (3,397 MiB) and 13.40 s with 524,288 (6,213 MiB) (BENCHMARKS.md, call 62):
/// every chunk costs some 350 kernel launches whatever its length. With the kernels of the
/// thirty-second session (call 152), 10.14-10.15 s with 262,144 (3,145 MiB), 9.82-9.85 s with
/// 524,288 (5,705 MiB) and 9.85 s with 1,048,576 (10,831 MiB; its first run). Memory stays flat
/// in the sequence's length at any chunk; `--chunk-size 262144` halves it. Wider models and f32
/// get shorter default chunks ([`gpu_chunk`]).
pub const GPU_DEFAULT_CHUNK: usize = 524_288;

/// GPU memory a chunk's activations may take by default: [`gpu_chunk`] picks the longest
/// chunk (a power of two, at most [`GPU_DEFAULT_CHUNK`]) whose estimate stays within this, or
/// within half the GPU's memory if that is less.
pub const GPU_CHUNK_BUDGET: u64 = 6 << 30;

/// Shortest chunk [`gpu_chunk`] picks, however wide the model or small the GPU.
pub const MIN_GPU_CHUNK: usize = 16_384;

/// GPU memory one chunk position costs per channel of `d_inner`, in bytes, by activation
/// format: an estimate from an H200 (`embed` of 1.2 Mb, chunks of 131,072 to 524,288, peak
/// over the idle GPU from `nvidia-smi`; BENCHMARKS.md, call 155), where d_model 256, 512 and
/// 1,024 (d_inner twice that) added 20-26 bytes per position and channel with half
/// activations and 36-39 in f32 as the chunk grew, and peaked at 22-29 and 39-41 bytes per
/// position and channel in all (the allocator's pools and the fixed part included).
fn bytes_per_position_channel(precision: Precision) -> u64 {
    match precision {
        Precision::F16 | Precision::Bf16 => 24,
        Precision::F32 => 42,
    }
}

/// The default chunk on a GPU for a model with `d_inner` channels whose blocks run in
/// `precision`, on a GPU with `device_memory` bytes (if known): the longest power-of-two chunk
/// up to [`GPU_DEFAULT_CHUNK`] whose activations (estimated per position and channel) fit in
/// [`GPU_CHUNK_BUDGET`] and in half of `device_memory`, and at least [`MIN_GPU_CHUNK`]. So a
/// wider model or f32 gets shorter chunks instead of more memory. The budget is an estimate's,
/// not a hard limit: on an H200 the chunks it picks peaked at 5,685 MiB (d_model 256, f16,
/// 524,288), 5,181 (256, f32, 262,144), 5,721 (512, f16, 262,144), 5,249 (512, f32, 131,072)
/// and 7,363 MiB (1,024, f16, 131,072).
pub fn gpu_chunk(d_inner: usize, precision: Precision, device_memory: Option<u64>) -> usize {
    let budget = device_memory.map_or(GPU_CHUNK_BUDGET, |m| GPU_CHUNK_BUDGET.min(m / 2));
    let per_position = (d_inner as u64).saturating_mul(bytes_per_position_channel(precision));
    let mut chunk = GPU_DEFAULT_CHUNK;
    while chunk > MIN_GPU_CHUNK && (chunk as u64).saturating_mul(per_position) > budget {
        chunk /= 2;
    }
    chunk
}

/// Checks a `--chunk-size` given for a GPU against the GPU's memory (`device_memory`, if
/// known): a chunk whose activations are estimated, as for
/// [`gpu_chunk`], to need more than 90% of the GPU's memory is a usage error that names the
/// default chunk for this model and GPU, instead of running out of memory partway through the
/// input. The estimate comes from measured peaks that were at most 9% below it, so a chunk
/// refused here would have needed over 80% of the GPU.
pub fn check_gpu_chunk(
    chunk: usize,
    d_inner: usize,
    precision: Precision,
    device_memory: Option<u64>,
) -> Result<()> {
    let Some(memory) = device_memory else {
        return Ok(());
    };
    let need = (chunk as u64)
        .saturating_mul(d_inner as u64)
        .saturating_mul(bytes_per_position_channel(precision));
    if need <= usable_memory(memory) {
        return Ok(());
    }
    Err(Error::usage(
        format!(
            "--chunk-size {chunk} needs about {:.1} GiB of GPU memory for this model ({d_inner} channels, {}), more than the GPU's {:.1} GiB",
            gib(need),
            precision.name(),
            gib(memory)
        ),
        format!(
            "use --chunk-size {} or less (the default for this model and GPU), or leave it out",
            gpu_chunk(d_inner, precision, Some(memory))
        ),
    ))
}

/// Fewest padded positions (records x the longest of them) a batch of whole records may
/// hold on a GPU, whatever the chunk: 32 records of 8,192. A batch may hold as many positions
/// as one chunk when that is more ([`batch_positions`]).
pub const MIN_GPU_BATCH_POSITIONS: usize = 32 * DEFAULT_CHUNK;

/// Most padded positions (records x the longest of them) in one batch of whole records for
/// chunks of `chunk_size`: one chunk's worth, so that a batch takes no more memory than a
/// long record's chunk. On a GPU (`gpu`), where each batch costs a launch of every kernel of
/// every layer, at least [`MIN_GPU_BATCH_POSITIONS`] (more than a chunk only where
/// `--chunk-size` is set below it). On two CPU cores that floor made 32 records of 8,000
/// bases take 1.4 GiB instead of 66 MiB, and more time than one record at a time.
pub fn batch_positions(chunk_size: usize, gpu: bool) -> usize {
    if gpu {
        chunk_size.max(MIN_GPU_BATCH_POSITIONS)
    } else {
        chunk_size
    }
}

/// Padded positions a batch of whole records may hold per position of its records, as a
/// percentage (150: at most half as many padding positions as bases), on the CPU. Records
/// run padded to the longest of their batch, so records of mixed lengths in input order (CpG
/// islands of 201 to 10,782 bases) ran at four times their own positions. On two CPU cores
/// the 801 CpG islands of chr20 took 5.9 s at 150%, 8.3 s at 200% and 29.7 s unbounded.
const BATCH_PADDING_PERCENT: usize = 150;

/// The same limit on a GPU, where every batch costs a launch of each kernel of each layer
/// and padding costs little: the same islands on an H100 took 1.9 s at 200%, 2.0 s at 300%,
/// 2.5 s at 150% and 3.1 s unbounded.
const GPU_BATCH_PADDING_PERCENT: usize = 200;

/// The whole number in the environment variable `name`, if it is one and `keep` accepts it
/// (the knobs kept for comparisons).
pub fn env_count(name: &str, keep: impl Fn(usize) -> bool) -> Option<usize> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&v| keep(v))
}

/// The padding limit for a GPU (`gpu`) or the CPU, unless the environment variable
/// `GENOMAMBA_BATCH_PADDING` holds another percentage of at least 100 (for comparisons; a
/// large value batches by count and positions alone, as before the forty-fourth session).
fn batch_padding_percent(gpu: bool) -> usize {
    static PERCENT: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let set = PERCENT.get_or_init(|| env_count("GENOMAMBA_BATCH_PADDING", |p| p >= 100));
    set.unwrap_or(if gpu {
        GPU_BATCH_PADDING_PERCENT
    } else {
        BATCH_PADDING_PERCENT
    })
}

/// Groups whole records, in input order, into batches: at most `max_records` of them, at
/// most `max_positions` padded positions (records x the longest), and, beyond one record,
/// at most a limit of padded positions per hundred of the records' own. A
/// record that would break a limit starts the next batch.
#[derive(Debug, Clone)]
pub struct Batcher<T> {
    max_records: usize,
    max_positions: usize,
    padding_percent: usize,
    items: Vec<T>,
    /// The longest record in `items`, and their positions together.
    longest: usize,
    positions: usize,
}

impl<T> Batcher<T> {
    /// A batcher with the padding limit of `BATCH_PADDING_PERCENT`, or on a GPU (`gpu`) of
    /// `GPU_BATCH_PADDING_PERCENT` (or their environment override).
    pub fn new(max_records: usize, max_positions: usize, gpu: bool) -> Self {
        Self::with_padding(max_records, max_positions, batch_padding_percent(gpu))
    }

    /// A batcher allowing `padding_percent` padded positions per hundred of the records' own.
    pub fn with_padding(max_records: usize, max_positions: usize, padding_percent: usize) -> Self {
        Self {
            max_records: max_records.max(1),
            max_positions,
            padding_percent,
            items: Vec::new(),
            longest: 0,
            positions: 0,
        }
    }

    /// Adds a record of `len` positions, handing `run` the batch before it when the record
    /// would break a limit, and the batch with it when that is now full.
    pub fn push<E>(
        &mut self,
        item: T,
        len: usize,
        run: &mut dyn FnMut(Vec<T>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        if !self.items.is_empty() {
            let padded = (self.items.len() + 1).saturating_mul(self.longest.max(len));
            let own = self.positions + len;
            if padded > self.max_positions
                || padded.saturating_mul(100) > own.saturating_mul(self.padding_percent)
            {
                self.flush(run)?;
            }
        }
        self.items.push(item);
        self.longest = self.longest.max(len);
        self.positions += len;
        if self.items.len() >= self.max_records {
            self.flush(run)?;
        }
        Ok(())
    }

    /// Hands `run` the batch so far, if any.
    pub fn flush<E>(
        &mut self,
        run: &mut dyn FnMut(Vec<T>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        self.longest = 0;
        self.positions = 0;
        if self.items.is_empty() {
            return Ok(());
        }
        run(std::mem::take(&mut self.items))
    }
}

/// Parts of a chunk a padded last chunk is rounded up to, unless the environment variable
/// `GENOMAMBA_PAD_PARTS` holds another positive number (1: a whole chunk, as before the
/// thirty-second session; for comparisons).
const PAD_PARTS: usize = 4;

/// The length a GPU runs a record's last chunk of `len` positions at, for chunks of
/// `chunk_size`: `len` rounded up to a whole part of a chunk (`PAD_PARTS` parts). A few
/// lengths keep the kernels compiled and tuned for them few, yet a short last chunk does not
/// cost a whole chunk's work (about 40 ms on an H200 at chr20's model).
pub fn pad_length(len: usize, chunk_size: usize) -> usize {
    static PARTS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let parts =
        *PARTS.get_or_init(|| env_count("GENOMAMBA_PAD_PARTS", |p| p > 0).unwrap_or(PAD_PARTS));
    pad_length_in(len, chunk_size, parts)
}

/// Lengths per doubling a batch of whole records shorter than a chunk is rounded up to on a
/// GPU, unless the environment variable `GENOMAMBA_SHAPE_STEPS` holds another number (0: no
/// rounding, as before the forty-fifth session; for comparisons).
const SHAPE_STEPS: usize = 4;

/// The length a GPU runs a batch of whole records of at most `len` positions at, for chunks
/// of `chunk_size`: `len` rounded up to one of `SHAPE_STEPS` lengths per doubling (at most
/// a quarter more), or to [`pad_length`]'s length if that is shorter. Records of mixed
/// lengths otherwise give every batch a length of its own, and a GPU compiles and tunes
/// kernels for each (on an H100, 801 CpG islands one per batch took 13-16 s, 200 records of
/// one length 1.3 s).
fn shape_length(len: usize, chunk_size: usize) -> usize {
    round_length(len).min(pad_length(len, chunk_size))
}

/// `len` rounded up to one of `SHAPE_STEPS` lengths per doubling (or its environment
/// override): the length a GPU runs a batch of sequences of at most `len` positions at.
pub fn round_length(len: usize) -> usize {
    static STEPS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let steps =
        *STEPS.get_or_init(|| env_count("GENOMAMBA_SHAPE_STEPS", |_| true).unwrap_or(SHAPE_STEPS));
    round_length_in(len, steps)
}

/// `len` rounded up to a multiple of its highest power of two divided by `steps` (at least
/// 1); `len` itself for `steps` 0.
fn round_length_in(len: usize, steps: usize) -> usize {
    if steps == 0 || len == 0 {
        return len;
    }
    let top = 1usize << len.ilog2();
    let unit = (top / steps).max(1);
    len.div_ceil(unit).saturating_mul(unit)
}

/// `len` rounded up to a multiple of `chunk_size / parts` (at least 1), at most `chunk_size`
/// unless `len` is longer.
fn pad_length_in(len: usize, chunk_size: usize, parts: usize) -> usize {
    let part = (chunk_size / parts.max(1)).max(1);
    len.div_ceil(part)
        .saturating_mul(part)
        .min(chunk_size.max(len))
}

/// Hidden states of one chunk of a batch, on the host.
pub struct ChunkOut<'a> {
    /// Position of the chunk's first element within each record (0-based).
    pub start: usize,
    /// Positions in this chunk (the same for every batch row).
    pub len: usize,
    /// Width of each hidden state.
    pub d: usize,
    /// `[batch, len, d]`, row-major.
    pub values: &'a [f32],
}

impl ChunkOut<'_> {
    /// Hidden state of batch row `b` at chunk position `t`.
    pub fn at(&self, b: usize, t: usize) -> &[f32] {
        let o = (b * self.len + t) * self.d;
        &self.values[o..o + self.d]
    }
}

/// Runs the backbone over a batch of records, chunk by chunk with carried state, handing
/// each chunk's final hidden states to `sink` (tensor on the device, `[batch, len, d_model]`).
/// With `reverse`, the records are reverse complements of the records the caller works on,
/// and their phases follow the original coordinates ([`Mamba::zero_state_reverse`]).
///
/// With `pad_last`, when the records take more than one chunk, the last (shorter) chunk runs
/// padded with `[PAD]` to a whole part of a chunk ([`pad_length`]), and records that all fit
/// in one chunk run padded to one of few lengths ([`round_length`]); hidden states are cut
/// back before `sink` sees them (the model is causal, so they are unchanged): chunks then
/// come in few shapes, which spares a GPU the kernels it would compile and tune for every
/// other length (seconds on a fresh machine). Pointless on the CPU, where it only adds work.
pub fn run_batch_tensor(
    model: &Mamba,
    records: &[&[u8]],
    chunk_size: usize,
    device: &Device,
    reverse: bool,
    pad_last: bool,
    sink: &mut dyn FnMut(usize, Tensor<3>) -> Result<()>,
) -> Result<()> {
    if chunk_size == 0 {
        return Err(Error::usage(
            "--chunk-size must be at least 1",
            "pass a positive number of bases",
        ));
    }
    let batch = records.len();
    let max_len = records.iter().map(|r| r.len()).max().unwrap_or(0);
    if batch == 0 || max_len == 0 {
        return Ok(());
    }
    let mut state = if reverse {
        let lengths: Vec<usize> = records.iter().map(|r| r.len()).collect();
        model.zero_state_reverse(&lengths, device)
    } else {
        model.zero_state(batch, device)
    };
    let chunks = Chunks {
        records,
        chunk_size,
        max_len,
        pad_last,
        device,
    };
    let stages = pipeline(device);
    if max_len > chunk_size && model.layers.len() >= 2 && stages >= 2 {
        return run_pipelined(model, chunks, state, stages, sink);
    }
    let mut ids: Vec<i64> = Vec::with_capacity(batch * chunk_size.min(max_len));
    for (start, end, run) in chunks.spans() {
        let (hidden, next) =
            forward_padded(model, records, start..end, run, state, device, &mut ids);
        state = next;
        sink(start, hidden)?;
    }
    Ok(())
}

/// Like [`run_batch_tensor`], with each chunk's hidden states copied to the host.
pub fn run_batch(
    model: &Mamba,
    records: &[&[u8]],
    chunk_size: usize,
    device: &Device,
    reverse: bool,
    pad_last: bool,
    sink: &mut dyn FnMut(&ChunkOut<'_>) -> Result<()>,
) -> Result<()> {
    let d = model.d_model();
    run_batch_tensor(
        model,
        records,
        chunk_size,
        device,
        reverse,
        pad_last,
        &mut |start, hidden| {
            let [_, len, _] = hidden.dims();
            let values = host_values(hidden);
            sink(&ChunkOut {
                start,
                len,
                d,
                values: &values,
            })
        },
    )
}

/// Hidden states of one record, whole, on the host: `[len, d_model]` row-major.
pub fn hidden_states(
    model: &Mamba,
    tokens: &[u8],
    chunk_size: usize,
    device: &Device,
) -> Result<Vec<f32>> {
    let d = model.d_model();
    let mut out = Vec::with_capacity(tokens.len() * d);
    run_batch(
        model,
        &[tokens],
        chunk_size,
        device,
        false,
        false,
        &mut |c| {
            out.extend_from_slice(&c.values[..c.len * d]);
            Ok(())
        },
    )?;
    Ok(out)
}

/// Runs one piece of a long record (one batch row), continuing from `state` (a zero state
/// when `None`); returns the piece's final hidden states, left on the device (`[len,
/// d_model]`), and the state after it. Nothing here waits for the device, so the host can
/// prepare the next piece while this one runs.
///
/// A piece shorter than `pad_to` runs padded with `[PAD]` to `pad_to` positions (as
/// [`run_batch_tensor`]'s `pad_last`): its hidden states are cut back to the piece, but the
/// returned state is then the state after the padding, so pad only a record's last piece.
pub fn run_piece_tensor(
    model: &Mamba,
    tokens: &[u8],
    state: Option<MambaState>,
    device: &Device,
    pad_to: usize,
) -> (Tensor<2>, MambaState) {
    let state = state.unwrap_or_else(|| model.zero_state(1, device));
    let len = tokens.len();
    let (hidden, next) = forward_padded(
        model,
        &[tokens],
        0..len,
        len.max(pad_to),
        state,
        device,
        &mut Vec::new(),
    );
    let d = hidden.dims()[2];
    (hidden.reshape([len, d]), next)
}

/// Runs one long record piece after piece, as [`run_piece_tensor`] in a loop does, optionally
/// with the blocks split into groups that each submit their work under their own stream
/// (CubeCL stream ids, which on CUDA are separate CUDA streams): piece `p` goes through the
/// first group while piece `p - 1` goes through the second, so the GPU may run one stream's
/// kernels on multiprocessors the other's leave idle. All of it is submitted from the calling
/// thread; each group carries its own blocks' states, so the results are those of the plain
/// loop. Hidden states come back one piece late per extra group: [`push`](Self::push) returns
/// those of earlier pieces, [`finish`](Self::finish) the rest.
///
/// One group (every piece through all blocks at once, back from its own `push`) unless
/// [`set_pipeline`] or `GENOMAMBA_PIPELINE` ask for more. On an H200 (whole chr20, d_model 256,
/// 16 layers, f16; BENCHMARKS.md, twenty-seventh session) `ncu` saw the groups' kernels on
/// separate CUDA streams, but the time barely moved: one group 10.95-11.03 s, two 10.88-11.10 s
/// (5.5 GiB of GPU memory against 3.4), four 10.73-10.96 s (10 GiB). The kernels fill every
/// multiprocessor they run on (in_proj and out_proj one cube of 232 registers per thread per
/// multiprocessor), so little runs side by side.
pub struct PieceRunner<'a> {
    model: &'a Mamba,
    device: Device,
    /// Per group: its blocks, their states and the stream its work is submitted under.
    groups: Vec<Group>,
    phase: Vec<usize>,
    /// Pieces on their way through the groups, oldest first: start, length, the residual
    /// stream and the group it goes through next.
    inflight: std::collections::VecDeque<(usize, usize, Residual, usize)>,
    ids: Vec<i64>,
}

struct Group {
    layers: std::ops::Range<usize>,
    states: Vec<crate::model::LayerState>,
    stream: StreamTag,
}

impl<'a> PieceRunner<'a> {
    /// A runner continuing from `state` (a zero state for one record when `None`).
    pub fn new(model: &'a Mamba, state: Option<MambaState>, device: &Device) -> Self {
        Self::with_groups(model, state, device, pipeline_or(1))
    }

    /// [`new`](Self::new) with the blocks in `groups` groups (at least one, at most one block
    /// each), whatever the device.
    pub fn with_groups(
        model: &'a Mamba,
        state: Option<MambaState>,
        device: &Device,
        groups: usize,
    ) -> Self {
        let state = state.unwrap_or_else(|| model.zero_state(1, device));
        let n = model.layers.len();
        let stages = groups.clamp(1, n.max(1));
        let mut rest = state.layers;
        let mut groups = Vec::with_capacity(stages);
        for i in (0..stages).rev() {
            let start = n * i / stages;
            let states = rest.split_off(start.min(rest.len()));
            groups.push(Group {
                layers: start..n * (i + 1) / stages,
                states,
                stream: StreamTag::new(stages > 1),
            });
        }
        groups.reverse();
        Self {
            model,
            device: device.clone(),
            groups,
            phase: state.phase,
            inflight: std::collections::VecDeque::new(),
            ids: Vec::new(),
        }
    }

    /// Submits the next piece of the record, starting at `start` (run padded with `[PAD]` to
    /// `pad_to` positions when shorter, as [`run_piece_tensor`] does: only for a record's last
    /// piece). Returns the hidden states (`[len, d_model]`, on the device) of the pieces that
    /// left the last group, with their starts, in order.
    pub fn push(&mut self, start: usize, tokens: &[u8], pad_to: usize) -> Vec<(usize, Tensor<2>)> {
        // Earlier pieces first, each one group on: a group's output is then taken by the next
        // group before the group queues work for the next piece.
        let mut done = self.advance();
        let len = tokens.len();
        let model = self.model;
        let single = self.groups.len() == 1;
        let first = &mut self.groups[0];
        let tokens = padded_tokens(
            &[tokens],
            0..len,
            len.max(pad_to),
            &self.device,
            &mut self.ids,
        );
        let phase = std::mem::take(&mut self.phase);
        let states = std::mem::take(&mut first.states);
        let layers = first.layers.clone();
        let ((stream, next), phase) = first.stream.run(|| {
            let (x, phase) = model.embed_chunk(tokens, phase);
            let residual = Residual {
                x,
                pending: None,
                half: None,
            };
            (model.forward_layers(residual, layers, states), phase)
        });
        first.states = next;
        self.phase = phase;
        if single {
            done.push((start, first.stream.run(|| out_rows(model, stream, len))));
        } else {
            self.inflight.push_back((start, len, stream, 1));
        }
        done
    }

    /// Moves every piece in flight through its next group; returns those that came out.
    fn advance(&mut self) -> Vec<(usize, Tensor<2>)> {
        let model = self.model;
        let mut done = Vec::new();
        let mut kept = std::collections::VecDeque::with_capacity(self.inflight.len());
        let count = self.groups.len();
        while let Some((start, len, stream, g)) = self.inflight.pop_front() {
            let group = &mut self.groups[g];
            let states = std::mem::take(&mut group.states);
            let layers = group.layers.clone();
            let (stream, next) = group
                .stream
                .run(|| model.forward_layers(stream, layers, states));
            group.states = next;
            if g + 1 == count {
                done.push((start, group.stream.run(|| out_rows(model, stream, len))));
            } else {
                kept.push_back((start, len, stream, g + 1));
            }
        }
        self.inflight = kept;
        done
    }

    /// Runs the pieces still in flight through the remaining groups; returns their hidden
    /// states (as [`push`](Self::push)) and the state after the last piece.
    pub fn finish(mut self) -> (Vec<(usize, Tensor<2>)>, MambaState) {
        let mut done = Vec::new();
        while !self.inflight.is_empty() {
            done.extend(self.advance());
        }
        let layers = self.groups.into_iter().flat_map(|g| g.states).collect();
        (
            done,
            MambaState {
                layers,
                phase: self.phase,
            },
        )
    }
}

/// The final norm over a piece's residual stream, cut to its first `len` positions: `[len,
/// d_model]`.
fn out_rows(model: &Mamba, stream: Residual, len: usize) -> Tensor<2> {
    let hidden = first_positions(model.finish(stream), len);
    let d = hidden.dims()[2];
    hidden.reshape([len, d])
}

/// The stream a group of blocks submits its work under: its own CubeCL stream id where the
/// build has CubeCL backends and the runner splits the blocks, else the calling thread's.
struct StreamTag {
    #[cfg(feature = "cube")]
    id: Option<cubecl_environment::stream::Stream>,
}

impl StreamTag {
    fn new(own: bool) -> Self {
        #[cfg(feature = "cube")]
        {
            Self {
                id: own.then(cubecl_environment::stream::Stream::new),
            }
        }
        #[cfg(not(feature = "cube"))]
        {
            let _ = own;
            Self {}
        }
    }

    fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        #[cfg(feature = "cube")]
        if let Some(id) = &self.id {
            return id.enter(f);
        }
        f()
    }
}

/// Runs positions `span` of every record (one batch row each) from `state`, as `run`
/// positions: past a record's end (and past `span`, when `run` is longer) with `[PAD]`.
/// Returns the hidden states of `span` alone (`[batch, span.len(), d_model]`; a view when
/// padded past `span`) and the state after all `run` positions. `ids` is scratch space.
fn forward_padded(
    model: &Mamba,
    records: &[&[u8]],
    span: std::ops::Range<usize>,
    run: usize,
    state: MambaState,
    device: &Device,
    ids: &mut Vec<i64>,
) -> (Tensor<3>, MambaState) {
    let len = span.len();
    let tokens = padded_tokens(records, span, run, device, ids);
    let (hidden, next) = model.forward(tokens, state);
    (first_positions(hidden, len), next)
}

/// Token ids of positions `span` of every record as `run` positions, `[PAD]` past a record's
/// end and past `span`: `[records, run]`. `ids` is scratch space.
fn padded_tokens(
    records: &[&[u8]],
    span: std::ops::Range<usize>,
    run: usize,
    device: &Device,
    ids: &mut Vec<i64>,
) -> Tensor<2, Int> {
    ids.clear();
    for r in records {
        for p in span.start..span.start + run {
            ids.push(r.get(p).copied().unwrap_or(PAD) as i64);
        }
    }
    Tensor::from_data(TensorData::new(ids.clone(), [records.len(), run]), device)
}

/// The first `len` positions of `[batch, run, d]` hidden states (a view when `run > len`).
fn first_positions(hidden: Tensor<3>, len: usize) -> Tensor<3> {
    let [batch, run, d] = hidden.dims();
    if run > len {
        hidden.slice([0..batch, 0..len, 0..d])
    } else {
        hidden
    }
}

/// [`set_pipeline`]'s choice: 0 none, else the number of stages.
static PIPELINE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Stages of the block pipeline on GPUs unless told otherwise (`pipeline`).
pub const GPU_PIPELINE_STAGES: usize = 2;

/// Makes [`run_batch_tensor`] run records of more than one chunk with the blocks in
/// `Some(stages)` groups on as many host threads (`Some(1)`: one loop), or as the device and
/// `GENOMAMBA_PIPELINE` decide (`None`, see `pipeline`); process-wide. The results are the
/// same either way; this is for tests and timing runs.
pub fn set_pipeline(stages: Option<usize>) {
    PIPELINE.store(stages.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
}

/// Stages [`run_batch_tensor`] runs the blocks in ([`run_pipelined`]; 1: one loop): as
/// [`pipeline_or`] says, with [`GPU_PIPELINE_STAGES`] by default on every device but Burn's CPU
/// backend (which already spreads each operation over all cores) and 1 there.
fn pipeline(device: &Device) -> usize {
    let default = if *device == Device::flex() {
        1
    } else {
        GPU_PIPELINE_STAGES
    };
    pipeline_or(default)
}

/// Stages as [`set_pipeline`] said, else as `GENOMAMBA_PIPELINE` says (`off`, `on` (that is
/// [`GPU_PIPELINE_STAGES`]), or a number of stages), else `default`.
fn pipeline_or(default: usize) -> usize {
    match PIPELINE.load(std::sync::atomic::Ordering::Relaxed) {
        0 => {}
        stages => return stages,
    }
    match std::env::var("GENOMAMBA_PIPELINE").as_deref() {
        Ok("off") => 1,
        Ok("on") => GPU_PIPELINE_STAGES,
        Ok(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or(default),
        Err(_) => default,
    }
}

/// The chunks of one batch of records, as [`run_batch_tensor`] cuts them.
#[derive(Clone, Copy)]
struct Chunks<'a> {
    records: &'a [&'a [u8]],
    chunk_size: usize,
    max_len: usize,
    pad_last: bool,
    device: &'a Device,
}

impl Chunks<'_> {
    /// `(start, end, run)` of every chunk: positions `start..end`, run as `run` positions (the
    /// chunk, or a whole chunk for a padded last one).
    fn spans(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        (0..self.max_len)
            .step_by(self.chunk_size)
            .map(move |start| {
                let end = (start + self.chunk_size).min(self.max_len);
                let run = if self.pad_last && start > 0 {
                    pad_length(end - start, self.chunk_size)
                } else if self.pad_last && end < start + self.chunk_size {
                    // Whole records, all shorter than a chunk.
                    shape_length(end - start, self.chunk_size)
                } else {
                    end - start
                };
                (start, end, run)
            })
    }
}

/// [`run_batch_tensor`]'s loop with the blocks in `stages` consecutive groups, each on its own
/// host thread: while this thread runs chunk `c` through the last group, the final norm and
/// `sink`, workers run chunk `c + 1` through the group before it, and so on back to the first
/// group (which also embeds the chunk). Each group carries its own blocks' states, so the
/// results are those of the one-thread loop. The threads share the host's work per chunk
/// (building and queueing some 350 kernels). The GPU still ran them one after another: `ncu`
/// saw every kernel on one CUDA stream (BENCHMARKS.md, sixteenth session; [`PieceRunner`]'s
/// groups, submitted under stream ids of their own, do reach separate streams).
/// Measured on 16.7 Mb of chr20 on two H200 machines at chunks of 65,536: 5% faster on the one
/// whose host was slower, no change on the other; at 262,144 (the GPU default from then to the thirty-second session) no change
/// (1%, and 13.17 against 13.18 s on chr20).
fn run_pipelined(
    model: &Mamba,
    chunks: Chunks<'_>,
    state: MambaState,
    stages: usize,
    sink: &mut dyn FnMut(usize, Tensor<3>) -> Result<()>,
) -> Result<()> {
    type Msg = (usize, usize, Residual);
    let n = model.layers.len();
    // At least two groups (one is the plain loop), at most one block each.
    let stages = stages.clamp(2, n.max(2));
    let bounds: Vec<usize> = (0..=stages).map(|i| n * i / stages).collect();
    let MambaState {
        layers,
        phase: mut first_phase,
    } = state;
    let mut groups: Vec<Vec<_>> = Vec::with_capacity(stages);
    let mut rest = layers;
    for i in (1..stages).rev() {
        groups.push(rest.split_off(bounds[i]));
    }
    groups.push(rest);
    groups.reverse();
    let mut last_states = groups.pop().unwrap_or_default();
    let last = bounds[stages - 1]..n;
    std::thread::scope(|scope| {
        // One chunk waits between two groups, so the first stays at most a few chunks ahead.
        let mut workers = Vec::with_capacity(stages - 1);
        let mut upstream: Option<std::sync::mpsc::Receiver<Msg>> = None;
        for (i, mut states) in groups.into_iter().enumerate() {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Msg>(1);
            let from = upstream.replace(rx);
            let range = bounds[i]..bounds[i + 1];
            let mut phase = std::mem::take(&mut first_phase);
            workers.push(scope.spawn(move || {
                let mut send = |start, len, stream| {
                    let taken = std::mem::take(&mut states);
                    let (stream, next) = model.forward_layers(stream, range.clone(), taken);
                    states = next;
                    tx.send((start, len, stream)).is_ok()
                };
                match from {
                    // The first group: embeds each chunk.
                    None => {
                        let mut ids = Vec::new();
                        for (start, end, run) in chunks.spans() {
                            let tokens = padded_tokens(
                                chunks.records,
                                start..end,
                                run,
                                chunks.device,
                                &mut ids,
                            );
                            let (x, next_phase) = model.embed_chunk(tokens, phase);
                            phase = next_phase;
                            if !send(
                                start,
                                end - start,
                                Residual {
                                    x,
                                    pending: None,
                                    half: None,
                                },
                            ) {
                                return; // a later stage stopped (an error in `sink`)
                            }
                        }
                    }
                    Some(rx) => {
                        for (start, len, stream) in rx.iter() {
                            if !send(start, len, stream) {
                                return;
                            }
                        }
                    }
                }
            }));
        }
        let mut result = Ok(());
        if let Some(rx) = upstream {
            for (start, len, stream) in rx.iter() {
                let (stream, next) = model.forward_layers(stream, last.clone(), last_states);
                last_states = next;
                let hidden = first_positions(model.finish(stream), len);
                if let Err(e) = sink(start, hidden) {
                    result = Err(e);
                    break;
                }
            }
        }
        for worker in workers {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        result
    })
}

#[cfg(test)]
mod tests {
    use super::{
        Batcher, GPU_DEFAULT_CHUNK, MIN_GPU_CHUNK, check_gpu_chunk, gpu_chunk, pad_length_in,
        round_length_in,
    };
    use crate::model::Precision;

    /// Batches (as lists of lengths) that `batcher` makes of `lens`, in order.
    fn batches(mut batcher: Batcher<usize>, lens: &[usize]) -> Vec<Vec<usize>> {
        let mut out = Vec::new();
        let mut run = |b: Vec<usize>| -> Result<(), ()> {
            out.push(b);
            Ok(())
        };
        for &len in lens {
            batcher.push(len, len, &mut run).unwrap();
        }
        batcher.flush(&mut run).unwrap();
        out
    }

    #[test]
    fn batches_keep_order_and_bound_count_positions_and_padding() {
        // Equal lengths: only the count and the positions limit.
        let b = batches(Batcher::with_padding(4, 1000, 150), &[100; 10]);
        assert_eq!(b, vec![vec![100; 4], vec![100; 4], vec![100; 2]]);
        let b = batches(Batcher::with_padding(32, 250, 150), &[100; 5]);
        assert_eq!(b, vec![vec![100; 2], vec![100; 2], vec![100]]);
        // A long record among short ones: without the padding limit the batch runs at
        // 4 x 1,000 positions for 1,300 bases; with it the long one runs apart.
        let lens = [100, 100, 100, 1000, 100, 100];
        let b = batches(Batcher::with_padding(32, 1 << 20, 100_000), &lens);
        assert_eq!(b, vec![lens.to_vec()]);
        let b = batches(Batcher::with_padding(32, 1 << 20, 150), &lens);
        assert_eq!(b, vec![vec![100, 100, 100], vec![1000], vec![100, 100]]);
        // Near lengths stay together: 3 x 120 padded for 340 own is under 150%.
        let b = batches(Batcher::with_padding(32, 1 << 20, 150), &[100, 120, 120]);
        assert_eq!(b, vec![vec![100, 120, 120]]);
        // A GPU, which pays per batch, allows more padding than the CPU: 2 x 320 for 420
        // own is 152%.
        if std::env::var_os("GENOMAMBA_BATCH_PADDING").is_none() {
            let b = batches(Batcher::new(32, 1 << 20, false), &[100, 320]);
            assert_eq!(b, vec![vec![100], vec![320]]);
            let b = batches(Batcher::new(32, 1 << 20, true), &[100, 320]);
            assert_eq!(b, vec![vec![100, 320]]);
        }
        // Every batch of mixed lengths stays within its limits, and order is kept.
        let lens: Vec<usize> = (0..500).map(|i| 1 + (i * 7919) % 3000).collect();
        for pct in [100, 125, 150, 200] {
            let b = batches(Batcher::with_padding(32, 40_000, pct), &lens);
            assert_eq!(b.concat(), lens, "{pct}");
            for batch in &b {
                let padded = batch.len() * batch.iter().max().unwrap();
                let own: usize = batch.iter().sum();
                assert!(batch.len() <= 32, "{pct}: {batch:?}");
                if batch.len() > 1 {
                    assert!(padded <= 40_000, "{pct}: {batch:?}");
                    assert!(padded * 100 <= own * pct, "{pct}: {batch:?}");
                }
            }
        }
        // 100%: only equal lengths share a batch.
        let b = batches(Batcher::with_padding(32, 1 << 20, 100), &[5, 5, 6, 6, 5]);
        assert_eq!(b, vec![vec![5, 5], vec![6, 6], vec![5]]);
    }

    #[test]
    fn gpu_chunks_shrink_with_width_precision_and_small_gpus() {
        let h200 = Some(143_771u64 << 20);
        // The chunks measured in BENCHMARKS.md (call 155), d_inner = 2 x d_model.
        assert_eq!(gpu_chunk(512, Precision::F16, h200), GPU_DEFAULT_CHUNK);
        assert_eq!(gpu_chunk(512, Precision::Bf16, None), GPU_DEFAULT_CHUNK);
        assert_eq!(gpu_chunk(512, Precision::F32, h200), 262_144);
        assert_eq!(gpu_chunk(1024, Precision::F16, h200), 262_144);
        assert_eq!(gpu_chunk(1024, Precision::F32, h200), 131_072);
        assert_eq!(gpu_chunk(2048, Precision::F16, h200), 131_072);
        assert_eq!(gpu_chunk(2048, Precision::F32, h200), 65_536);
        // Narrow models never go past the longest default; half a 8 GiB GPU is the budget.
        assert_eq!(gpu_chunk(64, Precision::F32, h200), GPU_DEFAULT_CHUNK);
        assert_eq!(gpu_chunk(512, Precision::F16, Some(8 << 30)), 262_144);
        // However wide, never below the floor.
        assert_eq!(
            gpu_chunk(1 << 20, Precision::F32, Some(1 << 30)),
            MIN_GPU_CHUNK
        );
        assert_eq!(gpu_chunk(usize::MAX, Precision::F32, None), MIN_GPU_CHUNK);
    }

    #[test]
    fn a_chunk_too_long_for_the_gpu_is_refused_with_the_default_named() {
        let h200 = Some(143_771u64 << 20);
        // What the defaults pick, and far longer ones that fit, pass.
        check_gpu_chunk(GPU_DEFAULT_CHUNK, 512, Precision::F16, h200).unwrap();
        check_gpu_chunk(1 << 23, 512, Precision::F16, h200).unwrap();
        // Without the GPU's size nothing is refused.
        check_gpu_chunk(1 << 30, 4096, Precision::F32, None).unwrap();
        // 2^24 positions x 512 channels x 24 bytes = 192 GiB on a 140 GiB GPU.
        let e = check_gpu_chunk(1 << 24, 512, Precision::F16, h200).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let m = e.to_string();
        assert!(
            m.contains("--chunk-size 16777216 needs about 192.0 GiB"),
            "{m}"
        );
        assert!(
            m.contains("(512 channels, f16)") && m.contains("140.4 GiB"),
            "{m}"
        );
        assert!(m.contains("use --chunk-size 524288 or less"), "{m}");
        // An 8 GiB GPU: 262,144 x 512 x 42 bytes (5.25 GiB) fits under 90%, twice that does
        // not, and its default (half the GPU) is 131,072.
        let small = Some(8u64 << 30);
        check_gpu_chunk(262_144, 512, Precision::F32, small).unwrap();
        let m = check_gpu_chunk(524_288, 512, Precision::F32, small)
            .unwrap_err()
            .to_string();
        assert!(m.contains("use --chunk-size 131072 or less"), "{m}");
    }

    #[test]
    fn whole_batches_round_to_few_lengths() {
        assert_eq!(round_length_in(750, 4), 768);
        assert_eq!(round_length_in(768, 4), 768);
        assert_eq!(round_length_in(769, 4), 896);
        assert_eq!(round_length_in(1024, 4), 1024);
        assert_eq!(round_length_in(201, 4), 224);
        assert_eq!(round_length_in(3, 4), 3);
        assert_eq!(round_length_in(750, 0), 750);
        // At most a quarter more, and few lengths: 32 from 1 to 10,000 bases.
        let mut seen = std::collections::BTreeSet::new();
        for len in 1..=10_000 {
            let s = round_length_in(len, 4);
            assert!(s >= len && s * 4 <= len * 5, "{len} -> {s}");
            seen.insert(s);
        }
        assert!(seen.len() <= 60, "{}", seen.len());
    }

    #[test]
    fn last_chunks_pad_to_whole_parts() {
        let chunk = 262_144;
        // chr20's last chunk (63,025,520 = 240 chunks + 110,960) runs as two quarters.
        assert_eq!(pad_length_in(110_960, chunk, 4), 131_072);
        assert_eq!(pad_length_in(1, chunk, 4), 65_536);
        assert_eq!(pad_length_in(65_536, chunk, 4), 65_536);
        assert_eq!(pad_length_in(65_537, chunk, 4), 131_072);
        assert_eq!(pad_length_in(chunk, chunk, 4), chunk);
        // One part: a whole chunk, as before.
        assert_eq!(pad_length_in(110_960, chunk, 1), chunk);
        // Parts that do not divide the chunk never pad past it.
        assert_eq!(pad_length_in(98, 100, 3), 99);
        assert_eq!(pad_length_in(100, 100, 3), 100);
        assert_eq!(pad_length_in(5, 3, 8), 5);
    }
}
