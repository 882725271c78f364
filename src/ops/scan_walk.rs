//! The selective scan as one sequential walk over time per `(batch row, channel)`, for inputs
//! with enough rows × channels to fill the GPU without splitting time.
//!
//! The chunked kernels of [`scan_cube`](super::scan_cube) split time so that a batch-1 scan has
//! enough threads; the price is that every decay `exp(Δ·A)` is computed twice (pass 1 scans
//! each chunk from zero, pass 3 rescans it from its true incoming state), and on an H200 those
//! `2·d_state` special-function results per `(t, d)` are the floor of the two passes
//! (module docs of `scan_cube`). When the batch rows × channels are many, time needs no
//! splitting: each `(row, channel)` walks its whole sequence once from `h0`, one decay per
//! `(t, d, n)`.
//!
//! # Layout
//!
//! The `d_state` states of a channel are spread over `lanes` adjacent threads (`lanes` a power
//! of two, `d_state / lanes` states each), so that a walk over a few thousand channels still has
//! tens of thousands of threads. A cube holds `channels` channels (`channels · lanes` threads)
//! and walks time in stages of `8·lanes` steps:
//!
//! 1. The cube's threads load the stage's `u`, `Δ`, `z` (`stage × channels`, coalesced along
//!    channels) and its rows of `B` and `C` into registers one stage ahead, so the loads have a
//!    whole stage of arithmetic to arrive in.
//! 2. They store them into shared memory with the per-`(t, d)` work done once, not once per
//!    lane: `Δ = softplus(delta + bias)`, `Δ·u`, the gate `SiLU(z)` and `D·u·SiLU(z)`; `B` and
//!    `C` widened to f32.
//! 3. Every lane walks the stage for its states (`h = exp(Δ·A)·h + Δ·u·B`) and writes its part
//!    of `Σ_n C·h` per step to shared memory.
//! 4. The cube sums the lanes' parts and writes `y = Σ·SiLU(z) + D·u·SiLU(z)`, coalesced.
//!
//! The state is f32 in registers throughout and the last one is written at the end; activations
//! may be f32, f16 or bf16 as for the chunked kernels (`B`/`C` also f32 with half activations).
//! `A`, `D` and the Δ bias may differ per batch row (row strides `a_rs`, `d_rs`, `bias_rs`, 0
//! when shared), so that the same launch can scan several layers' inputs stacked as rows (the
//! op passes 0 today).
//!
//! # Cost, as measured on an H200 (d_inner 512, d_state 16, L = 65,536; BENCHMARKS.md)
//!
//! Four lanes per channel, against the chunked passes in the same run: batch 16 f16 6.44-6.49
//! against 6.78-6.80 ms, f32 5.01 against 6.96 ms; batch 32 f16 9.71 against 13.02 ms, batch 64
//! 18.9 against 25.8 ms. Below 16 rows the walk loses: it takes about 5.2 ms at batch 2, 4 and
//! 8 alike (the chunked passes 1.05, 1.78, 3.48 ms), because one warp per sub-partition then
//! walks 65,536 steps one after another and a stage of 32 steps costs about 1,770 instructions
//! (a third of them staging, address arithmetic and barriers) at low issue rate. Hence
//! [`WALK_MIN_LANES`](super::scan_cube::WALK_MIN_LANES). Two lanes took 8.4 ms and eight 7.5 ms
//! at batch 16. Keeping each stage's per-step sums in registers (rather than storing each to
//! shared memory as it is made) let ptxas load later steps' values early: 6.9 -> 6.45 ms at
//! batch 16 f16, 6.1 -> 5.0 ms in f32 (128 registers, no spills). With still more rows, from
//! [`WHOLE_ROWS_THREADS`](super::scan_cube::WHOLE_ROWS_THREADS) rows × channels, the chunked
//! kernels' pass 3 alone over whole rows is faster (2^30 elements in f32 at `d_inner` 1,024:
//! batch 256 8.1 against 8.8 ms, batch 1,024 7.4 against 8.6), so the walk stops there.

use cubecl::prelude::*;

use super::scan_cube::{a_scale, decay, gate_of, time_step};

/// Steps per stage per lane of a channel (a stage is `STAGE_PER_LANE · lanes` steps, so every
/// thread stages `STAGE_PER_LANE` values of `u`, `Δ` and `z`).
pub(crate) const STAGE_PER_LANE: usize = 8;

/// Most states per lane the walk takes (each lane keeps `2·states` values in registers).
pub(crate) const MAX_STATES_PER_LANE: usize = 16;

/// The walk over time (see the module docs). Cubes: `(channel group, batch row)`, each of
/// `channels · lanes` units. `h0`, `h_last`: `[batch, d_inner, d_state]`; `a`: `[rows, d_inner,
/// d_state]` with row stride `a_rs` (0 when shared), `d` and `delta_bias` likewise.
#[cube(launch_unchecked, create_dummy_kernel, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
pub(crate) fn scan_walk_kernel<F: Float, G: Float, V: Size>(
    u: &Tensor<F>,
    delta: &Tensor<F>,
    a: &Tensor<f32>,
    b: &Tensor<Vector<G, V>>,
    c: &Tensor<Vector<G, V>>,
    d: &Tensor<f32>,
    z: &Tensor<F>,
    delta_bias: &Tensor<f32>,
    h0: &Tensor<f32>,
    y: &mut Tensor<F>,
    h_last: &mut Tensor<f32>,
    len: usize,
    d_inner: usize,
    a_rs: usize,
    d_rs: usize,
    bias_rs: usize,
    zs0: usize,
    zs1: usize,
    bs0: usize,
    bs1: usize,
    cs0: usize,
    cs1: usize,
    #[comptime] d_state: usize,
    #[comptime] vec: usize,
    #[comptime] lanes: usize,
    #[comptime] channels: usize,
    #[comptime] fast: bool,
    #[comptime] activate: bool,
    #[comptime] silu_gate: bool,
    #[define(F, G)] _elems: [ElemType; 2],
) {
    let threads = comptime!(channels * lanes);
    let stage = comptime!(STAGE_PER_LANE * lanes);
    let per_lane = comptime!(d_state / lanes);
    let nvec = comptime!(d_state / vec);
    let lane_vecs = comptime!(per_lane / vec);
    let bc_items = comptime!(stage * nvec);
    let bc_per_thread = comptime!(bc_items.div_ceil(threads));

    let tid = UNIT_POS_X as usize;
    let bi = CUBE_POS_Y as usize;
    let c0 = CUBE_POS_X as usize * channels;
    // The channel and state lane this thread walks.
    let walk_j = tid / lanes;
    let p = tid % lanes;
    let walk_active = c0 + walk_j < d_inner;
    let walk_ch = if walk_active {
        c0 + walk_j
    } else {
        d_inner - 1
    };
    // The channel and first step this thread stages (and writes `y` for): every staged item
    // of the thread has the same channel, at steps `first + r·lanes`.
    let stage_j = tid % channels;
    let stage_first = tid / channels;
    let stage_active = c0 + stage_j < d_inner;
    let stage_ch = if stage_active {
        c0 + stage_j
    } else {
        d_inner - 1
    };

    let mut s_dt = Shared::<[f32]>::new_slice(comptime!(stage * channels));
    let mut s_dtu = Shared::<[f32]>::new_slice(comptime!(stage * channels));
    let mut s_gate = Shared::<[f32]>::new_slice(comptime!(stage * channels));
    let mut s_skip = Shared::<[f32]>::new_slice(comptime!(stage * channels));
    let mut s_acc = Shared::<[f32]>::new_slice(comptime!(stage * threads));
    let mut s_b = Shared::<[Vector<f32, V>]>::new_slice(bc_items);
    let mut s_c = Shared::<[Vector<f32, V>]>::new_slice(bc_items);

    let mut av = Array::<f32>::new(per_lane);
    let mut h = Array::<f32>::new(per_lane);
    #[unroll]
    for g in 0..per_lane {
        let n = p * per_lane + g;
        av[g] = a[bi * a_rs + walk_ch * d_state + n] * a_scale(fast);
        h[g] = h0[(bi * d_inner + walk_ch) * d_state + n];
    }
    let bias = delta_bias[bi * bias_rs + stage_ch];
    let dskip = d[bi * d_rs + stage_ch];

    // Registers holding the next stage's raw inputs.
    let mut pu = Array::<F>::new(STAGE_PER_LANE);
    let mut pd = Array::<F>::new(STAGE_PER_LANE);
    let mut pz = Array::<F>::new(STAGE_PER_LANE);
    let mut pb = Array::<Vector<G, V>>::new(bc_per_thread);
    let mut pc = Array::<Vector<G, V>>::new(bc_per_thread);
    walk_load(
        u,
        delta,
        z,
        b,
        c,
        &mut pu,
        &mut pd,
        &mut pz,
        &mut pb,
        &mut pc,
        0,
        bi,
        len,
        d_inner,
        stage_ch,
        stage_first,
        zs0,
        zs1,
        bs0,
        bs1,
        cs0,
        cs1,
        nvec,
        lanes,
        threads,
        bc_items,
    );

    let mut ts = 0;
    while ts < len {
        // Everyone is done with the previous stage's shared values.
        sync_cube();
        #[unroll]
        for r in 0..STAGE_PER_LANE {
            let si = (stage_first + r * lanes) * channels + stage_j;
            let ut = f32::cast_from(pu[r]);
            let dt = time_step(f32::cast_from(pd[r]) + bias, fast, activate);
            let gate = gate_of(f32::cast_from(pz[r]), fast, silu_gate);
            s_dt[si] = dt;
            s_dtu[si] = dt * ut;
            s_gate[si] = gate;
            s_skip[si] = dskip * ut * gate;
        }
        #[unroll]
        for r in 0..bc_per_thread {
            let k = tid + r * threads;
            if k < bc_items {
                let vb = pb[r];
                let vc = pc[r];
                let mut wb = Vector::<f32, V>::empty();
                let mut wc = Vector::<f32, V>::empty();
                #[unroll]
                for e in 0..vec {
                    wb.insert(e, f32::cast_from(vb.extract(e)));
                    wc.insert(e, f32::cast_from(vc.extract(e)));
                }
                s_b[k] = wb;
                s_c[k] = wc;
            }
        }
        let next = ts + stage;
        if next < len {
            walk_load(
                u,
                delta,
                z,
                b,
                c,
                &mut pu,
                &mut pd,
                &mut pz,
                &mut pb,
                &mut pc,
                next,
                bi,
                len,
                d_inner,
                stage_ch,
                stage_first,
                zs0,
                zs1,
                bs0,
                bs1,
                cs0,
                cs1,
                nvec,
                lanes,
                threads,
                bc_items,
            );
        }
        sync_cube();
        let steps = if next < len { stage } else { len - ts };
        // A whole stage runs unrolled, so that the decays of later steps (which do not depend
        // on the state) issue while earlier steps' multiply-adds wait; the last, partial stage
        // runs as a loop.
        // The lanes' parts of `Σ_n C·h` stay in registers until the stage ends: a store to
        // shared memory after every step kept ptxas from loading later steps' values before it,
        // so each step waited out its loads and special-function results in turn.
        if steps == stage {
            let mut accs = Array::<f32>::new(stage);
            #[unroll]
            for t in 0..stage {
                accs[t] = walk_step(
                    &s_dt, &s_dtu, &s_b, &s_c, &av, &mut h, t, walk_j, p, channels, nvec,
                    lane_vecs, vec, fast,
                );
            }
            #[unroll]
            for t in 0..stage {
                s_acc[t * threads + tid] = accs[t];
            }
        } else {
            for t in 0..steps {
                s_acc[t * threads + tid] = walk_step(
                    &s_dt, &s_dtu, &s_b, &s_c, &av, &mut h, t, walk_j, p, channels, nvec,
                    lane_vecs, vec, fast,
                );
            }
        }
        sync_cube();
        // y = (Σ_n C·h + D·u) · SiLU(z), the lanes' parts summed.
        #[unroll]
        for r in 0..STAGE_PER_LANE {
            let t_off = stage_first + r * lanes;
            if stage_active && t_off < steps {
                let si = t_off * channels + stage_j;
                let base = t_off * threads + stage_j * lanes;
                let mut sum = 0.0f32;
                #[unroll]
                for l in 0..lanes {
                    sum += s_acc[base + l];
                }
                y[(bi * len + ts + t_off) * d_inner + stage_ch] =
                    F::cast_from(sum * s_gate[si] + s_skip[si]);
            }
        }
        ts = next;
    }
    if walk_active {
        #[unroll]
        for g in 0..per_lane {
            h_last[(bi * d_inner + walk_ch) * d_state + p * per_lane + g] = h[g];
        }
    }
}

/// Step `t` of a stage for one lane: its states advance by one step; returns its part of
/// `Σ_n C·h`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn walk_step<V: Size>(
    s_dt: &Shared<[f32]>,
    s_dtu: &Shared<[f32]>,
    s_b: &Shared<[Vector<f32, V>]>,
    s_c: &Shared<[Vector<f32, V>]>,
    av: &Array<f32>,
    h: &mut Array<f32>,
    t: usize,
    walk_j: usize,
    p: usize,
    #[comptime] channels: usize,
    #[comptime] nvec: usize,
    #[comptime] lane_vecs: usize,
    #[comptime] vec: usize,
    #[comptime] fast: bool,
) -> f32 {
    let si = t * channels + walk_j;
    let dt = s_dt[si];
    let dtu = s_dtu[si];
    let row = t * nvec + p * lane_vecs;
    let mut acc = 0.0f32;
    #[unroll]
    for q in 0..lane_vecs {
        let bq = s_b[row + q];
        let cq = s_c[row + q];
        #[unroll]
        for e in 0..vec {
            let g = q * vec + e;
            // h = exp(Δ·A) ⊙ h + Δ·B·u   (eq. 2a), this lane's states
            h[g] = decay(dt * av[g], fast) * h[g] + dtu * bq.extract(e);
            acc += cq.extract(e) * h[g];
        }
    }
    acc
}

/// Loads the raw inputs of the stage starting at `ts` into registers: `u`, `delta`, `z` at
/// steps `ts + first + r·lanes` of channel `ch`, and the stage's `B`/`C` vectors
/// `tid + r·threads` (row-major over `stage × nvec`). Steps past the sequence load its last
/// step (their values are never used).
#[cube]
#[allow(clippy::too_many_arguments)]
fn walk_load<F: Float, G: Float, V: Size>(
    u: &Tensor<F>,
    delta: &Tensor<F>,
    z: &Tensor<F>,
    b: &Tensor<Vector<G, V>>,
    c: &Tensor<Vector<G, V>>,
    pu: &mut Array<F>,
    pd: &mut Array<F>,
    pz: &mut Array<F>,
    pb: &mut Array<Vector<G, V>>,
    pc: &mut Array<Vector<G, V>>,
    ts: usize,
    bi: usize,
    len: usize,
    d_inner: usize,
    ch: usize,
    first: usize,
    zs0: usize,
    zs1: usize,
    bs0: usize,
    bs1: usize,
    cs0: usize,
    cs1: usize,
    #[comptime] nvec: usize,
    #[comptime] lanes: usize,
    #[comptime] threads: usize,
    #[comptime] bc_items: usize,
) {
    let last = len - 1;
    #[unroll]
    for r in 0..STAGE_PER_LANE {
        let t = ts + first + r * lanes;
        let t = if t < len { t } else { last };
        let i = (bi * len + t) * d_inner + ch;
        pu[r] = u[i];
        pd[r] = delta[i];
        pz[r] = z[bi * zs0 + t * zs1 + ch];
    }
    let tid = UNIT_POS_X as usize;
    #[unroll]
    for r in 0..comptime!(bc_items.div_ceil(threads)) {
        let k = tid + r * threads;
        let k = if k < bc_items { k } else { 0usize };
        let t = ts + k / nvec;
        let t = if t < len { t } else { last };
        let q = k % nvec;
        pb[r] = b[bi * bs0 + t * bs1 + q];
        pc[r] = c[bi * cs0 + t * cs1 + q];
    }
}
