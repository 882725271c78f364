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
//! One launch, `lanes` threads per `(batch row b, channel d)` ([`back_lanes`]: 4 on CUDA),
//! each with `d_state / lanes` of the channel's states in registers, time walked in order by
//! each thread:
//!
//! 1. Forward over the whole sequence from `h0`, writing the state at the start of every block
//!    of [`back_block`] steps (`ckpt`, `[batch, blocks, d_state, padded d_inner]`).
//! 2. Blocks from last to first: the block's states are recomputed from its checkpoint into a
//!    per-thread array (`block + 1` rows of the thread's states: the state before the block,
//!    then after each step), and the block is walked backwards with the reverse recurrence
//!    `G[t] = Ā[t+1]·G[t+1] + C[t]·ḡ[t]`, summing `∂A` per thread; the sums over a channel's
//!    states that `∂u`, `∂delta`, `∂z` need go through shared memory each step, and the
//!    channel's first thread writes those and sums `∂D`, `∂Δbias`.
//!
//! `∂B[t,n]` and `∂C[t,n]` are sums over channels: every step, the cube's threads (its
//! channels: 32 on CUDA, one on the CPU runtime, whose barriers spin) put their terms in
//! shared memory, and after a barrier threads add up the `2·d_state` columns and write the
//! cube's partial sum (`dbc`, `[2, batch, groups, len, d_state]`: ∂C, then ∂B).
//! The partial sums over groups of channels, and `∂A`, `∂D`, `∂Δbias` over batch rows, are
//! added afterwards by tensor operations (small tensors).
//!
//! Parallel over batch rows × channels only (time is walked in order by each thread): enough
//! for training batches; a scan over a single long sequence would want time split as the
//! forward kernels split it.

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
use super::scan_cube::{a_scale, decay, fast_math, sigmoid, softplus};

/// Largest `d_state` the kernel takes (a thread keeps about `6·d_state / lanes` values in
/// registers, plus `(block + 1)·d_state / lanes` in its local array); larger states go to the
/// tensor-operation backward.
pub const MAX_BACK_D_STATE: usize = 64;

/// Time steps per checkpoint for `d_state` states: the recomputed block is `(block + 1) ·
/// d_state / lanes` floats per thread, a local array (for one lane 65 to 144 floats up to
/// `d_state` 16, 9·`d_state` above), between 8 and 64 steps. Smaller blocks mean more
/// checkpoints (`len / block` states per channel) but a local array that stays in L1: at
/// `d_state` 16 on the H200, with one thread per channel, 8 steps took 6.18 ms where 32 took
/// 6.91 (training shape 128 × 2,048 × 128; BENCHMARKS.md, thirty-sixth session). `GENOMAMBA_BACK_BLOCK` (1 to 64) sets it for every `d_state`, for comparisons.
fn back_block(d_state: usize) -> usize {
    static FROM_ENV: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let forced = *FROM_ENV.get_or_init(|| {
        std::env::var("GENOMAMBA_BACK_BLOCK")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|b| (1..=64).contains(b))
    });
    forced.unwrap_or_else(|| (128 / d_state.max(1)).clamp(8, 64))
}

/// Threads per channel: 4 on CUDA (four times the warps of one thread per channel, which
/// left one warp per scheduler at training shapes), 2 on the CPU runtime (so that its tests
/// take the same path), each a power of two dividing `d_state` (else fewer);
/// `GENOMAMBA_BACK_LANES` (1, 2, 4, 8, 16) sets the wish, for comparisons.
fn back_lanes(d_state: usize, fast: bool) -> usize {
    static FROM_ENV: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let forced = *FROM_ENV.get_or_init(|| {
        std::env::var("GENOMAMBA_BACK_LANES")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|l| l.is_power_of_two() && *l <= 16)
    });
    let mut lanes = forced.unwrap_or(if fast { 4 } else { 2 });
    while lanes > 1 && !d_state.is_multiple_of(lanes) {
        lanes /= 2;
    }
    lanes
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

/// See the module documentation. Cubes: `(group of channels, batch row)`; `width · lanes`
/// threads per cube, thread `t` on channel `grp·width + t / lanes` and its states
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
    h0: &Tensor<f32>,
    grad_y: &Tensor<f32>,
    grad_h: &Tensor<f32>,
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
    blocks: usize,
    #[comptime] d_state: usize,
    #[comptime] block: usize,
    #[comptime] width: usize,
    #[comptime] lanes: usize,
    #[comptime] fast: bool,
) {
    let threads = comptime!(width * lanes);
    let per = comptime!(d_state / lanes);
    let grp = CUBE_POS_X as usize;
    let bi = CUBE_POS_Y as usize;
    let groups = CUBE_COUNT_X as usize;
    let batch = CUBE_COUNT_Y as usize;
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
        h[q] = h0[(bi * d_inner + ch) * d_state + n0 + q];
    }
    let bias = delta_bias[ch];
    let dskip = d[ch];

    // 1. Forward: the state at the start of every block (each thread its own column, so the
    //    threads past `d_inner` keep theirs too).
    for k in 0..blocks {
        let t0 = k * block;
        let t1 = if t0 + block < len { t0 + block } else { len };
        #[unroll]
        for q in 0..per {
            ckpt[((bi * blocks + k) * d_state + n0 + q) * padded + col] = h[q];
        }
        for t in t0..t1 {
            let i = (bi * len + t) * d_inner + ch;
            advance(
                &mut h,
                &av,
                b,
                (bi * len + t) * d_state + n0,
                delta[i] + bias,
                u[i],
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
        g[q] = grad_h[(bi * d_inner + ch) * d_state + n0 + q];
        ga[q] = 0.0f32;
    }
    let mut gd = 0.0f32;
    let mut gbias = 0.0f32;
    let mut hs = Array::<f32>::new(comptime!((block + 1) * per));
    let mut red = Shared::<[f32]>::new_slice(comptime!(2 * d_state * width));
    // Each thread's parts of the channel's three sums over states, per step.
    let mut part = Shared::<[f32]>::new_slice(comptime!(3 * threads));
    let cols = comptime!(2 * d_state);
    let mut k = blocks;
    while k > 0 {
        k -= 1;
        let t0 = k * block;
        let t1 = if t0 + block < len { t0 + block } else { len };
        // Row 0: the state before the block; row r + 1: after step t0 + r.
        #[unroll]
        for q in 0..per {
            let v = ckpt[((bi * blocks + k) * d_state + n0 + q) * padded + col];
            h[q] = v;
            hs[q] = v;
        }
        for t in t0..t1 {
            let i = (bi * len + t) * d_inner + ch;
            advance(
                &mut h,
                &av,
                b,
                (bi * len + t) * d_state + n0,
                delta[i] + bias,
                u[i],
                per,
                fast,
            );
            let row = (t - t0 + 1) * per;
            #[unroll]
            for q in 0..per {
                hs[row + q] = h[q];
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
            let cur = (t - t0 + 1) * per;
            let prev = (t - t0) * per;
            let mut sy = 0.0f32;
            let mut dus = 0.0f32;
            let mut ddt = 0.0f32;
            #[unroll]
            for q in 0..per {
                let n = n0 + q;
                let ht = hs[cur + q];
                let hp = hs[prev + q];
                let bn = b[bo + q];
                let cn = c[bo + q];
                // G[t] = Ā[t+1]·G[t+1] (carried) + C[t]·ḡ[t]
                let gn = g[q] + cn * gbar;
                let abar = decay(dt * av[q], fast);
                let gah = gn * abar * hp;
                // ∂C[t,n] and ∂B[t,n] terms of this channel.
                red[n * width + lane] = if active { gbar * ht } else { 0.0f32 };
                red[(d_state + n) * width + lane] = if active { gn * dtu } else { 0.0f32 };
                dus += gn * bn;
                ddt += gah * ar[q] + gn * bn * ut;
                ga[q] += gah * dt;
                sy += cn * ht;
                g[q] = abar * gn;
            }
            part[tid] = dus;
            part[threads + tid] = ddt;
            part[2 * threads + tid] = sy;
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
                    acc += red[j * width + w];
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
            let o = (bi * d_inner + ch) * d_state + n0 + q;
            // ∂h0 = Ā[0]·G[0], what the recurrence carried past the first step.
            dh0[o] = g[q];
            da[o] = ga[q];
        }
        if first_lane {
            dd[bi * d_inner + ch] = gd;
            dbias[bi * d_inner + ch] = gbias;
        }
    }
}

/// One step of a thread's states: `h = exp(Δ·A)·h + Δ·u·B[t]`, `Δ = softplus(s)` from the
/// biased raw step `s`, `B[t]` the `count` values of `b` from `bo` (`av`: `A` scaled for
/// [`decay`]). The forward walk and each block's recomputation advance the state with it.
#[cube]
#[allow(clippy::too_many_arguments)]
fn advance(
    h: &mut Array<f32>,
    av: &Array<f32>,
    b: &Tensor<f32>,
    bo: usize,
    s: f32,
    ut: f32,
    #[comptime] count: usize,
    #[comptime] fast: bool,
) {
    let dt = softplus(s, fast);
    let dtu = dt * ut;
    #[unroll]
    for n in 0..count {
        h[n] = decay(dt * av[n], fast) * h[n] + dtu * b[bo + n];
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
    let lanes = back_lanes(d_state, fast);
    let groups = d_inner.div_ceil(width);
    let block = back_block(d_state);
    let blocks = len.div_ceil(block);
    let ckpt = empty(vec![batch, blocks, d_state, groups * width]);
    let du = empty(vec![batch, len, d_inner]);
    let ddelta = empty(vec![batch, len, d_inner]);
    let dz = empty(vec![batch, len, d_inner]);
    let dbc = empty(vec![2, batch, groups, len, d_state]);
    let da = empty(vec![batch, d_inner, d_state]);
    let dd = empty(vec![batch, d_inner]);
    let dbias = empty(vec![batch, d_inner]);
    let dh0 = empty(vec![batch, d_inner, d_state]);
    let address = AddressType::from_len(
        [
            batch * len * d_inner,
            batch * len * d_state,
            batch * blocks * d_state * groups * width,
            2 * batch * groups * len * d_state,
        ]
        .into_iter()
        .max()
        .unwrap_or(0),
    );
    let count = CubeCount::Static(groups as u32, batch as u32, 1);
    let dim = CubeDim::new_1d((width * lanes) as u32);
    // SAFETY: every tensor is contiguous with the shape checked or allocated above. Threads
    // read channel `ch < d_inner` (those past `d_inner` the last one) and write `ckpt` only in
    // their own column `col < groups·width`; per-channel outputs only when `col < d_inner`;
    // `t < len`, `n0 + q < d_state`, `k < blocks`, `j < 2·d_state`, `w < width`, and the
    // local array and shared memory are indexed below their comptime sizes (`(block + 1)·per`:
    // `t - t0 + 1 <= block`; `2·d_state·width`; `3·threads`, read at `tid + l` only by a
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
            h0.into_tensor_arg(),
            grad_y.into_tensor_arg(),
            grad_h.into_tensor_arg(),
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
            blocks,
            d_state,
            block,
            width,
            lanes,
            fast,
        );
    }
    LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    type B = CubeBackend;
    // The groups' partial sums of ∂C (first half) and ∂B (second); each half of the sum is a
    // contiguous block, so taking it is a view.
    let dbc = reshape::<B>(sum_dim::<B>(dbc, 2), vec![2, batch * len * d_state]);
    let half = |k: usize| reshape::<B>(row::<B>(dbc.clone(), k), vec![batch, len, d_state]);
    let (grad_c, grad_b) = (half(0), half(1));
    // Per-row sums of ∂A, ∂D, ∂Δbias over the batch.
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
