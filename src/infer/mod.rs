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
use crate::model::weights::host_values;
use crate::model::{Mamba, MambaState};
use crate::{Error, Result};

/// Default positions per chunk (on the CPU).
pub const DEFAULT_CHUNK: usize = 8192;

/// Default positions per chunk on a GPU: on an H200 (d_model 256, 16 layers, f16) whole chr20
/// took 71.3 s with chunks of 8,192 and 32.5 s with 65,536 (BENCHMARKS.md); 262,144 was 8%
/// faster again on 16 Mb but takes 2.6 times the GPU memory (3.3 GiB).
pub const GPU_DEFAULT_CHUNK: usize = 65536;

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
/// padded with `[PAD]` to a whole chunk and its hidden states are cut back before `sink` sees
/// them (the model is causal, so they are unchanged): every chunk then has one shape, which
/// spares a GPU the kernels it would compile and tune for one more shape (seconds on a fresh
/// machine). Pointless on the CPU, where it only adds work.
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
    let mut start = 0;
    let mut ids: Vec<i64> = Vec::with_capacity(batch * chunk_size.min(max_len));
    while start < max_len {
        let end = (start + chunk_size).min(max_len);
        // Positions run: the chunk, or a whole chunk for a padded last one.
        let run = if pad_last && start > 0 {
            chunk_size
        } else {
            end - start
        };
        let (hidden, next) =
            forward_padded(model, records, start..end, run, state, device, &mut ids);
        state = next;
        sink(start, hidden)?;
        start = end;
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
    let batch = records.len();
    ids.clear();
    for r in records {
        for p in span.start..span.start + run {
            ids.push(r.get(p).copied().unwrap_or(PAD) as i64);
        }
    }
    let tokens: Tensor<2, Int> =
        Tensor::from_data(TensorData::new(ids.clone(), [batch, run]), device);
    let (hidden, next) = model.forward(tokens, state);
    let hidden = if run > span.len() {
        let d = hidden.dims()[2];
        hidden.slice([0..batch, 0..span.len(), 0..d])
    } else {
        hidden
    };
    (hidden, next)
}
