//! The backward pass of the selective scan as a CubeCL kernel, for the CubeCL backend (CUDA
//! devices when training on a GPU; CubeCL's CPU runtime in the tests).
//!
//! The equations are those of [`scan_backward`](super::scan_backward); the tensor-operation
//! backward there is the truth this kernel is tested against (and the fallback for shapes and
//! formats the kernel does not take). That one runs a few tensor operations per time step, so
//! on a GPU a training step was bound by kernel launches (thousands per layer for windows of a
//! few thousand bases).
//!
//! # Design
//!
//! One launch, `lanes` threads per `(batch row b, time chunk k, channel d)` ([`back_lanes`]:
//! on CUDA 4, or 1 when time is split into chunks), each with `d_state / lanes` of the
//! channel's states in registers, the chunk's steps walked in order by each thread:
//!
//! 1. Forward over the chunk from its incoming state, writing the state at the start of every
//!    block of [`back_block`] steps (`ckpt`, `[batch·chunks, blocks, d_state, padded
//!    d_inner]`).
//! 2. Blocks from last to first: the block's states are recomputed from its checkpoint into a
//!    per-thread array (`block` rows of the thread's states: the state before each step; the
//!    state after a step is made again from it when needed), and the block is walked backwards
//!    with the reverse recurrence `G[t] = Ā[t+1]·G[t+1] + C[t]·ḡ[t]`, summing `∂A` per
//!    thread; the sums over a channel's states that `∂u`, `∂delta`, `∂z` need go through
//!    shared memory each step, and the channel's first thread writes those and sums `∂D`,
//!    `∂Δbias`.
//!
//! `∂B[t,n]` and `∂C[t,n]` are sums over channels: every step, the cube's threads (its
//! channels: 32 on CUDA, one on the CPU runtime, whose barriers spin) put their terms in
//! shared memory, and after a barrier threads add up the `2·d_state` columns and write the
//! cube's partial sum (`dbc`, `[2, batch, groups, len, d_state]`: ∂C, then ∂B).
//! The partial sums over groups of channels, and `∂A`, `∂D`, `∂Δbias` over batch rows, are
//! added afterwards by tensor operations (small tensors).
//!
//! # Time chunks
//!
//! With few rows (a long window, or a small batch), rows × channels leave most of a GPU idle
//! and each thread walks a long time axis in order: at batch 1 × 131,072 steps × `d_inner`
//! 512 the kernel took 262 ms on an H200. So time is split into chunks ([`back_chunk_len`]),
//! each chunk a row of its own, given two things from outside:
//!
//! - the forward state coming into it: the forward scan's passes 1 and 2
//!   ([`chunk_incoming_states`]), each chunk's state from zero and then the walk over chunks;
//! - the adjoint coming into it from the steps after it (`Ā[t1]·G[t1]`, the gradient of its
//!   last state that the later steps send back): [`scan_adjoint_chunk_kernel`] walks every
//!   chunk backwards from a zero adjoint, and pass 2 of the forward scan ([`combine_chunks`])
//!   carries the adjoints from the last chunk to the first, since across a chunk the adjoint
//!   maps as `x_in = exp(A·ΣΔ)·x_out + L`, the forward recurrence with time reversed; it starts
//!   from `∂L/∂h[len-1]` and its result at the first chunk is `∂L/∂h0`.
//!
//! Then every chunk runs the steps above on its own, `∂A`, `∂D`, `∂Δbias` are summed over
//! rows and chunks, and `∂B`/`∂C`, per time step, need nothing more. At batch 1 × 131,072 ×
//! 512 the kernel then takes 8-9 ms (29-32x), at 1 × 2^20 × 128 17.7 ms against 2.1 s, and at
//! training batches (64 × 2,048 × 128) 2.6-2.7 ms against 4.7 (BENCHMARKS.md, thirty-seventh
//! session).

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, DType, TensorMetadata};
use burn::tensor::{Shape, Slice};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;
use cubecl::{CubeCount, CubeDim};

use super::scan::{ScanGrads, ScanInput};
use super::scan_backward::scan_backward_reference;
use super::scan_cube::{
    a_scale, chunk_and_channel, chunk_cubes, chunk_incoming_states, combine_chunks, decay,
    fast_math, sigmoid, softplus,
};

/// Largest `d_state` the kernel takes (a thread keeps about `6·d_state / lanes` values in
/// registers, plus `block·d_state / lanes` in its local array); larger states go to the
/// tensor-operation backward.
pub const MAX_BACK_D_STATE: usize = 64;

/// Time steps per checkpoint for `d_state` states: the recomputed block is `block · d_state /
/// lanes` floats per thread, a local array (for one lane 64 floats up to `d_state` 16,
/// 4·`d_state` above), between 4 and 64 steps. Smaller blocks mean more checkpoints (`len /
/// block` states per channel: at `d_state` 16 and 4 steps a transient tensor 4 times the size
/// of `u`) but a local array that stays in L1: at `d_state` 16 on the H200, with one thread per
/// channel, 8 steps took 6.18 ms where 32 took 6.91 (training shape 128 × 2,048 × 128;
/// BENCHMARKS.md, thirty-sixth session), and 4 steps 3.14 ms where 8 took 3.33 (time chunks,
/// 2 × 131,072 × 128; thirty-eighth session).
/// `GENOMAMBA_BACK_BLOCK` (1 to 64) sets it for every `d_state`, for comparisons.
fn back_block(d_state: usize) -> usize {
    static FROM_ENV: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let forced = *FROM_ENV.get_or_init(|| {
        std::env::var("GENOMAMBA_BACK_BLOCK")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|b| (1..=64).contains(b))
    });
    forced.unwrap_or_else(|| (64 / d_state.max(1)).clamp(4, 64))
}

/// Threads per channel. On CUDA 4 (four times the warps of one thread per channel, which left
/// one warp per scheduler at training shapes), but 1 when time is split into chunks that
/// already make [`ONE_LANE_THREADS`] threads of one lane (the chunks supply the threads, and
/// one thread per channel does each step's per-channel work once instead of four times: at 2
/// × 131,072 × 128 3.60 ms against 4.14, at 64 × 2,048 × 128 2.13 against 2.40, at 32 × 2,048 ×
/// 128 (32,768 threads of one lane) 1.40 against 1.46 on the H200; at 16 × 2,048 × 128 1.29
/// against 1.20; BENCHMARKS.md, thirty-eighth session). On the CPU runtime 2 (so that its
/// tests take the path of several lanes). Each a power of two dividing `d_state` (else fewer);
/// `GENOMAMBA_BACK_LANES` (1, 2, 4, 8, 16) sets the wish, for comparisons.
fn back_lanes(d_state: usize, fast: bool, one_lane: bool) -> usize {
    static FROM_ENV: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let forced = *FROM_ENV.get_or_init(|| {
        std::env::var("GENOMAMBA_BACK_LANES")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|l| l.is_power_of_two() && *l <= 16)
    });
    let mut lanes = forced.unwrap_or(match (fast, one_lane) {
        (false, _) => 2,
        (true, false) => 4,
        (true, true) => 1,
    });
    while lanes > 1 && !d_state.is_multiple_of(lanes) {
        lanes /= 2;
    }
    lanes
}

/// Threads of one lane per channel (batch rows × time chunks × channels) from which a kernel
/// with time chunks runs one lane per channel ([`back_lanes`]).
const ONE_LANE_THREADS: usize = 1 << 15;

/// Steps per time chunk set by [`set_backward_chunk_len`] (0: unset).
static CHUNK_LEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Makes later backward kernels split time into chunks of `steps` steps (`usize::MAX`: never
/// split; 0: the usual choice, [`back_chunk_len`]); process-wide, for tests and tuning runs.
/// Results agree to rounding whatever the chunks.
pub fn set_backward_chunk_len(steps: usize) {
    CHUNK_LEN.store(steps, std::sync::atomic::Ordering::Relaxed);
}

/// Threads (batch rows × channels × lanes × time chunks) the backward kernel aims for on CUDA
/// when it splits time: with [`BACK_MIN_CHUNK`] this makes chunks of 256 steps at every
/// training shape measured, the fastest choice there (H200, `scan_backward_bench` against
/// the kernel with time in one piece: batch 1 × 131,072 × `d_inner` 512 8.2 ms at 256 or
/// 128 steps, 9.0 at 1,024, 16.5 at 4,096, 262 ms unsplit; 64 × 2,048 × 128 2.57-2.70 ms at
/// 128-256, 2.94 at 512, 3.02 at 64, 4.7 unsplit; BENCHMARKS.md, thirty-seventh session).
const BACK_TARGET_THREADS: usize = 1 << 20;

/// Fewest steps in a time chunk the backward kernel makes on its own: each chunk costs its
/// share of two extra passes (the forward state and the adjoint from zero at every chunk),
/// and below 128 steps chunks timed slower.
const BACK_MIN_CHUNK: usize = 256;

/// Steps per time chunk of the backward kernel for `[batch, len, d_inner]` (`len`: one chunk,
/// time walked in order by each thread). Set by [`set_backward_chunk_len`], else by the
/// environment variable `GENOMAMBA_BACK_CHUNK` (steps; 0 never splits), else on CUDA enough
/// chunks for [`BACK_TARGET_THREADS`] threads, none shorter than [`BACK_MIN_CHUNK`] steps and
/// each a whole number of checkpoint blocks; on the CPU runtime one chunk.
fn back_chunk_len(
    [batch, len, d_inner]: [usize; 3],
    lanes: usize,
    block: usize,
    fast: bool,
) -> usize {
    static FROM_ENV: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let forced = match CHUNK_LEN.load(std::sync::atomic::Ordering::Relaxed) {
        0 => *FROM_ENV.get_or_init(|| {
            std::env::var("GENOMAMBA_BACK_CHUNK")
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .map(|v| if v == 0 { usize::MAX } else { v })
        }),
        steps => Some(steps),
    };
    let steps = match forced {
        Some(steps) => steps,
        None if fast => {
            let threads = (batch * d_inner * lanes).max(1);
            let wanted = BACK_TARGET_THREADS.div_ceil(threads);
            len.div_ceil(wanted)
                .max(BACK_MIN_CHUNK)
                .next_multiple_of(block.max(1))
        }
        None => len,
    };
    steps.clamp(1, len.max(1))
}

static LAUNCHES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Launches of the backward kernel so far in this process (tests check that it ran).
pub fn scan_backward_launches() -> usize {
    LAUNCHES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether the kernel may run: unless the environment variable `GENOMAMBA_SCAN_BACKWARD` is
/// `reference` (the tensor-operation backward on every shape, for comparisons).
fn kernel_enabled() -> bool {
    std::env::var("GENOMAMBA_SCAN_BACKWARD").map_or(true, |v| v != "reference")
}

/// See the module documentation. Cubes: `(group of channels, batch row · chunks + time
/// chunk)`; `width · lanes` threads per cube, thread `t` on channel `grp·width + t / lanes`
/// and its states
/// `(t % lanes)·per ..` (`per = d_state / lanes`); threads past `d_inner` follow the last
/// channel, write nothing and add zeros to the sums.
#[cube(launch_unchecked, create_dummy_kernel, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn scan_backward_kernel(
    u: &Tensor<f32>,
    delta: &Tensor<f32>,
    a: &Tensor<f32>,
    b: &Tensor<f32>,
    c: &Tensor<f32>,
    d: &Tensor<f32>,
    z: &Tensor<f32>,
    delta_bias: &Tensor<f32>,
    h_start: &Tensor<f32>,
    grad_y: &Tensor<f32>,
    g_end: &Tensor<f32>,
    ckpt: &mut Tensor<f32>,
    du: &mut Tensor<f32>,
    ddelta: &mut Tensor<f32>,
    dz: &mut Tensor<f32>,
    dbc: &mut Tensor<f32>,
    da: &mut Tensor<f32>,
    dd: &mut Tensor<f32>,
    dbias: &mut Tensor<f32>,
    dh0: &mut Tensor<f32>,
    len: usize,
    d_inner: usize,
    batch: usize,
    chunks: usize,
    chunk_len: usize,
    blocks: usize,
    #[comptime] d_state: usize,
    #[comptime] block: usize,
    #[comptime] width: usize,
    #[comptime] lanes: usize,
    #[comptime] fast: bool,
    #[comptime] chunked: bool,
) {
    let threads = comptime!(width * lanes);
    let per = comptime!(d_state / lanes);
    let grp = CUBE_POS_X as usize;
    // Cubes along y: `(batch row bi, time chunk kc)`; the chunk is steps `[tb, te)`.
    let bk = CUBE_POS_Y as usize;
    let bi = bk / chunks;
    let kc = bk % chunks;
    let tb = kc * chunk_len;
    let te = min(tb + chunk_len, len);
    let groups = CUBE_COUNT_X as usize;
    let tid = UNIT_POS_X as usize;
    // This thread's channel within the cube, and the first of its states.
    let lane = tid / lanes;
    let n0 = (tid % lanes) * per;
    let first_lane = n0 == 0;
    let col = grp * width + lane;
    let padded = groups * width;
    let active = col < d_inner;
    let ch = if active { col } else { d_inner - 1 };

    let mut av = Array::<f32>::new(per);
    let mut ar = Array::<f32>::new(per);
    let mut h = Array::<f32>::new(per);
    #[unroll]
    for q in 0..per {
        let an = a[ch * d_state + n0 + q];
        ar[q] = an;
        av[q] = an * a_scale(fast);
        h[q] = h_start[state_index(bi, kc, chunks, ch, n0 + q, d_inner, d_state, chunked)];
    }
    let bias = delta_bias[ch];
    let dskip = d[ch];

    // 1. Forward: the state at the start of every block (each thread its own column, so the
    //    threads past `d_inner` keep theirs too).
    for k in 0..blocks {
        let t0 = min(tb + k * block, te);
        let t1 = min(t0 + block, te);
        #[unroll]
        for q in 0..per {
            ckpt[((bk * blocks + k) * d_state + n0 + q) * padded + col] = h[q];
        }
        for t in t0..t1 {
            advance(
                &mut h,
                &av,
                u,
                delta,
                b,
                bias,
                bi * len + t,
                ch,
                n0,
                d_inner,
                d_state,
                per,
                fast,
            );
        }
    }

    // 2. Backward over the blocks, last to first.
    let mut g = Array::<f32>::new(per);
    let mut ga = Array::<f32>::new(per);
    #[unroll]
    for q in 0..per {
        // The adjoint coming in from after the chunk (`g_end` holds the chunks in reverse
        // order, see `scan_adjoint_chunk_kernel`), or `∂L/∂h[len-1]`.
        let kr = chunks - 1 - kc;
        g[q] = g_end[state_index(bi, kr, chunks, ch, n0 + q, d_inner, d_state, chunked)];
        ga[q] = 0.0f32;
    }
    let mut gd = 0.0f32;
    let mut gbias = 0.0f32;
    let mut hs = Array::<f32>::new(comptime!(block * per));
    // ∂C/∂B terms per column (`2·d_state`) and channel, each column's row padded to `width + 1`
    // so that the threads summing adjacent columns read different banks (a row of exactly
    // `width` = 32 put a warp's 32 reads of one step in one bank).
    let stride = comptime!(width + 1);
    let mut red = Shared::<[f32]>::new_slice(comptime!(2 * d_state * stride));
    // Each thread's parts of the channel's three sums over states, per step.
    let mut part = Shared::<[f32]>::new_slice(comptime!(3 * threads));
    let cols = comptime!(2 * d_state);
    let mut k = blocks;
    while k > 0 {
        k -= 1;
        let t0 = min(tb + k * block, te);
        let t1 = min(t0 + block, te);
        // Row r: the state before step t0 + r (the state after it is recomputed from it in
        // the walk back, so a block keeps `block` rows, not `block + 1`).
        #[unroll]
        for q in 0..per {
            h[q] = ckpt[((bk * blocks + k) * d_state + n0 + q) * padded + col];
        }
        for t in t0..t1 {
            let row = (t - t0) * per;
            #[unroll]
            for q in 0..per {
                hs[row + q] = h[q];
            }
            if t + 1 < t1 {
                advance(
                    &mut h,
                    &av,
                    u,
                    delta,
                    b,
                    bias,
                    bi * len + t,
                    ch,
                    n0,
                    d_inner,
                    d_state,
                    per,
                    fast,
                );
            }
        }
        let mut t = t1;
        while t > t0 {
            t -= 1;
            let i = (bi * len + t) * d_inner + ch;
            let s = delta[i] + bias;
            let dt = softplus(s, fast);
            let sig_s = sigmoid(s, fast);
            let ut = u[i];
            let zt = z[i];
            let gy = grad_y[i];
            let sig_z = sigmoid(zt, fast);
            // ḡ = ȳ·SiLU(z), the gradient of the pre-gate output.
            let gbar = gy * zt * sig_z;
            let dtu = dt * ut;
            let bo = (bi * len + t) * d_state + n0;
            let prev = (t - t0) * per;
            let mut sy = 0.0f32;
            let mut dus = 0.0f32;
            let mut ddt = 0.0f32;
            #[unroll]
            for q in 0..per {
                let n = n0 + q;
                let hp = hs[prev + q];
                let bn = b[bo + q];
                let cn = c[bo + q];
                // G[t] = Ā[t+1]·G[t+1] (carried) + C[t]·ḡ[t]
                let gn = g[q] + cn * gbar;
                let abar = decay(dt * av[q], fast);
                // The state after step t, as the forward step makes it.
                let ht = abar * hp + dtu * bn;
                let gah = gn * abar * hp;
                // ∂C[t,n] and ∂B[t,n] terms of this channel.
                red[n * stride + lane] = if active { gbar * ht } else { 0.0f32 };
                red[(d_state + n) * stride + lane] = if active { gn * dtu } else { 0.0f32 };
                dus += gn * bn;
                ddt += gah * ar[q] + gn * bn * ut;
                ga[q] += gah * dt;
                sy += cn * ht;
                g[q] = abar * gn;
            }
            if comptime!(lanes > 1) {
                part[tid] = dus;
                part[threads + tid] = ddt;
                part[2 * threads + tid] = sy;
            }
            sync_cube();
            if first_lane {
                // The channel's sums over all its states (its lanes are adjacent threads).
                #[unroll]
                for l in 1..lanes {
                    dus += part[tid + l];
                    ddt += part[threads + tid + l];
                    sy += part[2 * threads + tid + l];
                }
                let gdelta = ddt * sig_s;
                if active {
                    du[i] = gbar * dskip + dt * dus;
                    ddelta[i] = gdelta;
                    // ∂z = ȳ·s_y·SiLU'(z), SiLU'(z) = σ(z)·(1 + z·(1 − σ(z)))
                    dz[i] = gy * (sy + dskip * ut) * sig_z * (1.0f32 + zt * (1.0f32 - sig_z));
                }
                gbias += gdelta;
                gd += gbar * ut;
            }
            let mut j = tid;
            while j < cols {
                let mut acc = 0.0f32;
                #[unroll]
                for w in 0..width {
                    acc += red[j * stride + w];
                }
                // Column j is ∂C[t, j] (j < d_state) or ∂B[t, j - d_state].
                let half = j / d_state;
                let n = j % d_state;
                dbc[(((half * batch + bi) * groups + grp) * len + t) * d_state + n] = acc;
                j += threads;
            }
            sync_cube();
        }
    }
    if active {
        #[unroll]
        for q in 0..per {
            let o = (bk * d_inner + ch) * d_state + n0 + q;
            if kc == 0 {
                // ∂h0 = Ā[0]·G[0], what the recurrence carried past the first step.
                dh0[(bi * d_inner + ch) * d_state + n0 + q] = g[q];
            }
            da[o] = ga[q];
        }
        if first_lane {
            dd[bk * d_inner + ch] = gd;
            dbias[bk * d_inner + ch] = gbias;
        }
    }
}

/// One step of a thread's states at row `rt = bi·len + t` of the sequences, channel `ch`:
/// `h = exp(Δ·A)·h + Δ·u·B[t]`, `Δ = softplus(delta + bias)`, for the `count` states from
/// `n0` (`av`: `A` scaled for [`decay`]). The forward walk and each block's recomputation
/// advance the state with it.
#[cube]
#[allow(clippy::too_many_arguments)]
fn advance(
    h: &mut Array<f32>,
    av: &Array<f32>,
    u: &Tensor<f32>,
    delta: &Tensor<f32>,
    b: &Tensor<f32>,
    bias: f32,
    rt: usize,
    ch: usize,
    n0: usize,
    d_inner: usize,
    #[comptime] d_state: usize,
    #[comptime] count: usize,
    #[comptime] fast: bool,
) {
    let i = rt * d_inner + ch;
    let dt = softplus(delta[i] + bias, fast);
    let dtu = dt * u[i];
    let bo = rt * d_state + n0;
    #[unroll]
    for n in 0..count {
        h[n] = decay(dt * av[n], fast) * h[n] + dtu * b[bo + n];
    }
}

/// Where state `n` of channel `ch` of batch row `bi` is in a kernel input of states: a
/// `[batch, d_inner, d_state]` tensor (`h0`, `∂L/∂h[len-1]`), or, `chunked`, entry `k` of
/// `[batch, chunks, d_state, d_inner]` (pass 2's chunk states and adjoints).
#[cube]
#[allow(clippy::too_many_arguments)]
fn state_index(
    bi: usize,
    k: usize,
    chunks: usize,
    ch: usize,
    n: usize,
    d_inner: usize,
    #[comptime] d_state: usize,
    #[comptime] chunked: bool,
) -> usize {
    if chunked {
        ((bi * chunks + k) * d_state + n) * d_inner + ch
    } else {
        (bi * d_inner + ch) * d_state + n
    }
}

/// Each time chunk's adjoint from a zero start, walking its steps last to first with the
/// reverse recurrence `G[t] = Ā[t+1]·G[t+1] + C[t]·ḡ[t]`: writes `Ā[t0]·G[t0]` (what the chunk
/// passes to the state before it) and the chunk's `ΣΔ`, both at chunk index `chunks - 1 - k`,
/// so that pass 2 of the forward scan ([`combine_chunks`], walking its chunks in index order)
/// carries the adjoint from the last chunk to the first: across a chunk the adjoint maps as
/// `x_in = exp(A·ΣΔ)·x_out + L`, the forward recurrence in reverse time.
///
/// One thread per `(b, chunk k, channel d)` with all `d_state` states, cubes as pass 1's
/// ([`chunk_and_channel`]). `state`: `[batch, chunks, d_state, d_inner]`; `dsum`: `[batch,
/// chunks, d_inner]`.
#[cube(launch_unchecked, create_dummy_kernel, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn scan_adjoint_chunk_kernel(
    delta: &Tensor<f32>,
    a: &Tensor<f32>,
    c: &Tensor<f32>,
    z: &Tensor<f32>,
    delta_bias: &Tensor<f32>,
    grad_y: &Tensor<f32>,
    state: &mut Tensor<f32>,
    dsum: &mut Tensor<f32>,
    len: usize,
    d_inner: usize,
    chunks: usize,
    chunk_len: usize,
    #[comptime] d_state: usize,
    #[comptime] fast: bool,
) {
    let (bk, ch, active) = chunk_and_channel(d_inner);
    let k = bk % chunks;
    let bi = bk / chunks;
    let t0 = k * chunk_len;
    let t1 = min(t0 + chunk_len, len);
    let mut av = Array::<f32>::new(d_state);
    let mut g = Array::<f32>::new(d_state);
    #[unroll]
    for n in 0..d_state {
        av[n] = a[ch * d_state + n] * a_scale(fast);
        g[n] = 0.0f32;
    }
    let bias = delta_bias[ch];
    let mut sum = 0.0f32;
    let mut t = t1;
    while t > t0 {
        t -= 1;
        let i = (bi * len + t) * d_inner + ch;
        let dt = softplus(delta[i] + bias, fast);
        let zt = z[i];
        // ḡ = ȳ·SiLU(z)
        let gbar = grad_y[i] * zt * sigmoid(zt, fast);
        sum += dt;
        let co = (bi * len + t) * d_state;
        #[unroll]
        for n in 0..d_state {
            // G[t] = (carried) + C[t]·ḡ[t]; carried to t - 1: Ā[t]·G[t].
            g[n] = decay(dt * av[n], fast) * (g[n] + c[co + n] * gbar);
        }
    }
    if active {
        let kr = chunks - 1 - k;
        #[unroll]
        for n in 0..d_state {
            state[((bi * chunks + kr) * d_state + n) * d_inner + ch] = g[n];
        }
        dsum[(bi * chunks + kr) * d_inner + ch] = sum;
    }
}

fn sum_dim<B: Backend>(t: FloatTensor<B>, dim: usize) -> FloatTensor<B> {
    B::float_sum_dim(t, dim)
}

fn reshape<B: Backend>(t: FloatTensor<B>, shape: Vec<usize>) -> FloatTensor<B> {
    B::float_reshape(t, Shape::from(shape))
}

/// Row `k` of a 2-D tensor, as a `[1, columns]` view.
fn row<B: Backend>(t: FloatTensor<B>, k: usize) -> FloatTensor<B> {
    let rows: [Slice; 2] = [(k..k + 1).into(), (..).into()];
    B::float_slice(t, &rows)
}

/// The scan's backward step on the CubeCL backend: the kernel for f32 inputs of the expected
/// shapes with `1 <= d_state <= MAX_BACK_D_STATE`; the tensor-operation backward otherwise
/// (and for empty shapes, and when `GENOMAMBA_SCAN_BACKWARD=reference`).
pub(crate) fn scan_backward_cube(
    input: ScanInput<CubeBackend>,
    grad_y: CubeTensor,
    grad_h: CubeTensor,
) -> ScanGrads<CubeBackend> {
    let ushape = input.u.shape().to_vec();
    let ashape = input.a.shape().to_vec();
    let (batch, len, d_inner, d_state) = match (ushape.as_slice(), ashape.as_slice()) {
        ([bt, l, di], [_, n]) => (*bt, *l, *di, *n),
        _ => return scan_backward_reference::<CubeBackend>(input, grad_y, grad_h),
    };
    let usable = {
        let want: [(&CubeTensor, &[usize]); 11] = [
            (&input.u, &[batch, len, d_inner]),
            (&input.delta, &[batch, len, d_inner]),
            (&input.z, &[batch, len, d_inner]),
            (&input.a, &[d_inner, d_state]),
            (&input.b, &[batch, len, d_state]),
            (&input.c, &[batch, len, d_state]),
            (&input.d, &[d_inner]),
            (&input.delta_bias, &[d_inner]),
            (&input.h0, &[batch, d_inner, d_state]),
            (&grad_y, &[batch, len, d_inner]),
            (&grad_h, &[batch, d_inner, d_state]),
        ];
        want.iter()
            .all(|(t, dims)| t.dtype == DType::F32 && t.shape().to_vec() == *dims)
    };
    if !usable
        || !kernel_enabled()
        || batch == 0
        || len == 0
        || d_inner == 0
        || d_state == 0
        || d_state > MAX_BACK_D_STATE
    {
        return scan_backward_reference::<CubeBackend>(input, grad_y, grad_h);
    }
    let ScanInput {
        u,
        delta,
        a,
        b,
        c,
        d,
        z,
        delta_bias,
        h0,
    } = input;
    let [u, delta, a, b, c, d, z, delta_bias, h0, grad_y, grad_h] =
        [u, delta, a, b, c, d, z, delta_bias, h0, grad_y, grad_h].map(into_contiguous);
    let client = u.client.clone();
    let device = u.device.clone();
    let empty = |shape: Vec<usize>| {
        empty_device_contiguous_dtype(
            client.clone(),
            device.clone(),
            Shape::from(shape),
            DType::F32,
        )
    };
    let fast = fast_math(&client);
    // A cube's channels: a warp on CUDA; one on the CPU runtime (see the module documentation).
    let width = if fast { 32 } else { 1 };
    let groups = d_inner.div_ceil(width);
    let block = back_block(d_state);
    // Whether time is split is decided at the lanes of one piece; split, the kernel then runs
    // its own number of lanes.
    let whole_lanes = back_lanes(d_state, fast, false);
    let chunk_len = back_chunk_len([batch, len, d_inner], whole_lanes, block, fast);
    let chunks = len.div_ceil(chunk_len);
    let rows = batch * chunks;
    let lanes = back_lanes(
        d_state,
        fast,
        chunks > 1 && rows * d_inner >= ONE_LANE_THREADS,
    );
    let blocks = chunk_len.div_ceil(block);
    let ckpt = empty(vec![rows, blocks, d_state, groups * width]);
    let du = empty(vec![batch, len, d_inner]);
    let ddelta = empty(vec![batch, len, d_inner]);
    let dz = empty(vec![batch, len, d_inner]);
    let dbc = empty(vec![2, batch, groups, len, d_state]);
    let da = empty(vec![rows, d_inner, d_state]);
    let dd = empty(vec![rows, d_inner]);
    let dbias = empty(vec![rows, d_inner]);
    let dh0 = empty(vec![batch, d_inner, d_state]);
    let address = AddressType::from_len(
        [
            batch * len * d_inner,
            batch * len * d_state,
            rows * blocks * d_state * groups * width,
            2 * batch * groups * len * d_state,
            rows * d_inner * d_state,
        ]
        .into_iter()
        .max()
        .unwrap_or(0),
    );
    let chunked = chunks > 1;
    let (h_start, g_end) = if chunked {
        // The forward state coming into each chunk (the forward scan's passes 1 and 2), and
        // the adjoint coming into each chunk from the steps after it: every chunk's adjoint
        // from zero, then pass 2 over the chunks in reverse, from `∂L/∂h[len-1]`.
        let dims = [batch, len, d_inner, d_state];
        let h_start = chunk_incoming_states(
            &u,
            &delta,
            &a,
            &b,
            &delta_bias,
            &h0,
            dims,
            chunk_len,
            address,
        );
        let g_end = empty(vec![batch, chunks, d_state, d_inner]);
        let dsum = empty(vec![batch, chunks, d_inner]);
        let g_first = empty(vec![batch, d_inner, d_state]);
        let (count, dim) = chunk_cubes(&client, rows, d_inner);
        // SAFETY: threads past `d_inner` read the last channel and write nothing; `t < len`,
        // `k < chunks`, `n < d_state`; all tensors are contiguous with the shapes checked or
        // allocated above.
        unsafe {
            scan_adjoint_chunk_kernel::launch_unchecked(
                &client,
                count,
                dim,
                address,
                delta.clone().into_tensor_arg(),
                a.clone().into_tensor_arg(),
                c.clone().into_tensor_arg(),
                z.clone().into_tensor_arg(),
                delta_bias.clone().into_tensor_arg(),
                grad_y.clone().into_tensor_arg(),
                g_end.clone().into_tensor_arg(),
                dsum.clone().into_tensor_arg(),
                len,
                d_inner,
                chunks,
                chunk_len,
                d_state,
                fast,
            );
        }
        // `g_first` receives `∂L/∂h0` too; the kernel's chunk 0 writes the same into `dh0`.
        combine_chunks(
            &client,
            address,
            &a,
            &grad_h,
            &dsum,
            &g_end,
            &g_first,
            [batch, d_inner, d_state],
            chunks,
            fast,
        );
        (h_start, g_end)
    } else {
        (h0, grad_h)
    };
    let count = CubeCount::Static(groups as u32, rows as u32, 1);
    let dim = CubeDim::new_1d((width * lanes) as u32);
    // SAFETY: every tensor is contiguous with the shape checked or allocated above. Threads
    // read channel `ch < d_inner` (those past `d_inner` the last one) and write `ckpt` only in
    // their own column `col < groups·width`; per-channel outputs only when `col < d_inner`;
    // `t < len`, `n0 + q < d_state`, `k < blocks`, `j < 2·d_state`, `w < width`, and the
    // local array and shared memory are indexed below their comptime sizes (`block·per`:
    // `t - t0 < block`; `2·d_state·(width + 1)`; `3·threads`, read at `tid + l` only by a
    // channel's first thread, `l < lanes`).
    unsafe {
        scan_backward_kernel::launch_unchecked(
            &client,
            count,
            dim,
            address,
            u.into_tensor_arg(),
            delta.into_tensor_arg(),
            a.into_tensor_arg(),
            b.into_tensor_arg(),
            c.into_tensor_arg(),
            d.into_tensor_arg(),
            z.into_tensor_arg(),
            delta_bias.into_tensor_arg(),
            h_start.into_tensor_arg(),
            grad_y.into_tensor_arg(),
            g_end.into_tensor_arg(),
            ckpt.into_tensor_arg(),
            du.clone().into_tensor_arg(),
            ddelta.clone().into_tensor_arg(),
            dz.clone().into_tensor_arg(),
            dbc.clone().into_tensor_arg(),
            da.clone().into_tensor_arg(),
            dd.clone().into_tensor_arg(),
            dbias.clone().into_tensor_arg(),
            dh0.clone().into_tensor_arg(),
            len,
            d_inner,
            batch,
            chunks,
            chunk_len,
            blocks,
            d_state,
            block,
            width,
            lanes,
            fast,
            chunked,
        );
    }
    LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    type B = CubeBackend;
    // The groups' partial sums of ∂C (first half) and ∂B (second); each half of the sum is a
    // contiguous block, so taking it is a view.
    let dbc = reshape::<B>(sum_dim::<B>(dbc, 2), vec![2, batch * len * d_state]);
    let half = |k: usize| reshape::<B>(row::<B>(dbc.clone(), k), vec![batch, len, d_state]);
    let (grad_c, grad_b) = (half(0), half(1));
    // Sums of the per-(row, chunk) ∂A, ∂D, ∂Δbias.
    let grad_a = reshape::<B>(sum_dim::<B>(da, 0), vec![d_inner, d_state]);
    let grad_d = reshape::<B>(sum_dim::<B>(dd, 0), vec![d_inner]);
    let grad_bias = reshape::<B>(sum_dim::<B>(dbias, 0), vec![d_inner]);
    ScanGrads {
        u: du,
        delta: ddelta,
        a: grad_a,
        b: grad_b,
        c: grad_c,
        d: grad_d,
        z: dz,
        delta_bias: grad_bias,
        h0: dh0,
    }
}
