//! The selective scan as one walk over time per `(batch row, channel)` with one state per
//! thread ("lanes walk"): an experiment aimed at the batch-1 scan, where the chunked passes
//! compute every decay twice and the [`walk`](super::scan_walk) has too few threads.
//!
//! At batch 1, `d_inner` 1,024 and `d_state` 16 there are 16,384 `(channel, state)` pairs: one
//! thread each is 512 warps, about one per sub-partition of an H200. Each thread walks its
//! state over the whole sequence once (one decay per `(t, d, n)`, the special-function floor of
//! a single pass), so what decides its speed is how few instructions a step costs:
//!
//! - the per-`(t, d)` work (`Δ = softplus(delta + bias)`, `Δ·u`, the gate and `D·u·gate`) is
//!   done once while a stage of `stage` steps is copied into shared memory, laid out so that a
//!   thread reads four steps of `Δ`, `Δ·u`, `B` and `C` with one vector load each;
//! - each thread keeps its part `C·h` of `d_state` consecutive steps in registers, and the
//!   `d_state` threads of a channel then sum them with a reduce-scatter over plane shuffles
//!   (`d_state - 1` shuffles for `d_state` sums), leaving each thread the output of one step;
//! - steps past the sequence are staged with `Δ = 0` (decay 1, no input), so every stage runs
//!   whole and the state passes through them unchanged.
//!
//! On CubeCL's CPU runtime (planes of one unit) the sums go through shared memory instead.
//! Chosen only when asked for (`GENOMAMBA_SCAN_WALK=lanes`, [`ScanPath::Lanes`]
//! (super::scan_cube::ScanPath)); BENCHMARKS.md has its timings against the chunked passes.

use cubecl::prelude::*;

use super::scan_cube::{a_scale, decay, gate_of, time_step};

/// Steps staged at a time unless `GENOMAMBA_LANES_STAGE` says otherwise.
pub(crate) const LANES_STAGE: usize = 64;

/// The lanes walk (see the module docs). Cubes: `(channel group, batch row)`, each of
/// `channels · d_state` units, unit `j·d_state + n` walking state `n` of the group's channel
/// `j`. `B`, `C`: read one float at a time at `bi·bs0 + t·bs1 + n`; `z` at `bi·zs0 + t·zs1 +
/// d`; `u`, `delta`, `y` contiguous `[batch, len, d_inner]`; `h0`, `h_last`: `[batch, d_inner,
/// d_state]`. `V` must be 4 (the shared-memory vectors of four steps). `stage` is a multiple of
/// `d_state` and of 4; `d_state` a power of two from 4 to 32.
#[cube(launch_unchecked, create_dummy_kernel, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
pub(crate) fn scan_lanes_kernel<F: Float, G: Float, V: Size>(
    u: &Tensor<F>,
    delta: &Tensor<F>,
    a: &Tensor<f32>,
    b: &Tensor<G>,
    c: &Tensor<G>,
    d: &Tensor<f32>,
    z: &Tensor<F>,
    delta_bias: &Tensor<f32>,
    h0: &Tensor<f32>,
    y: &mut Tensor<F>,
    h_last: &mut Tensor<f32>,
    len: usize,
    d_inner: usize,
    zs0: usize,
    zs1: usize,
    bs0: usize,
    bs1: usize,
    cs0: usize,
    cs1: usize,
    #[comptime] d_state: usize,
    #[comptime] channels: usize,
    #[comptime] stage: usize,
    #[comptime] shuffle: bool,
    #[comptime] fast: bool,
    #[comptime] activate: bool,
    #[comptime] silu_gate: bool,
    #[define(F, G)] _elems: [ElemType; 2],
) {
    let threads = comptime!(channels * d_state);
    // Vectors of four steps per staged row, and the row length padded by one vector so that
    // the threads of a channel, reading one row each of `B`/`C`, spread over the banks.
    let row = comptime!(stage / 4 + 1);
    let groups = comptime!(stage / d_state);
    let gv = comptime!(d_state / 4);
    let uz_items = comptime!(channels * (stage / 4));
    let uz_per = comptime!((channels * (stage / 4)).div_ceil(channels * d_state));
    let bc_items = comptime!(d_state * (stage / 4));
    let bc_per = comptime!((d_state * (stage / 4)).div_ceil(channels * d_state));
    let red_len = comptime!(if shuffle {
        1
    } else {
        channels * d_state * d_state
    });

    let tid = UNIT_POS_X as usize;
    let bi = CUBE_POS_Y as usize;
    let c0 = CUBE_POS_X as usize * channels;
    let j = tid / d_state;
    let n = tid % d_state;
    let active = c0 + j < d_inner;
    let ch = if active { c0 + j } else { d_inner - 1 };

    let mut s_dt = Shared::<[Vector<f32, V>]>::new_slice(comptime!(channels * row));
    let mut s_dtu = Shared::<[Vector<f32, V>]>::new_slice(comptime!(channels * row));
    let mut s_b = Shared::<[Vector<f32, V>]>::new_slice(comptime!(d_state * row));
    let mut s_c = Shared::<[Vector<f32, V>]>::new_slice(comptime!(d_state * row));
    let mut s_gate = Shared::<[f32]>::new_slice(comptime!(channels * stage));
    let mut s_skip = Shared::<[f32]>::new_slice(comptime!(channels * stage));
    let mut s_y = Shared::<[f32]>::new_slice(comptime!(channels * stage));
    let mut s_red = Shared::<[f32]>::new_slice(red_len);

    let av = a[ch * d_state + n] * a_scale(fast);
    let mut h = h0[(bi * d_inner + ch) * d_state + n];
    // The Δ bias and `D` of the channels this thread stages.
    let mut bias = Array::<f32>::new(uz_per);
    let mut dskip = Array::<f32>::new(uz_per);
    #[unroll]
    for r in 0..uz_per {
        let k = tid + r * threads;
        let sc = stage_channel(c0, k % channels, d_inner);
        bias[r] = delta_bias[sc];
        dskip[r] = d[sc];
    }

    // Registers holding the next stage's raw inputs.
    let mut pu = Array::<F>::new(comptime!(uz_per * 4));
    let mut pd = Array::<F>::new(comptime!(uz_per * 4));
    let mut pz = Array::<F>::new(comptime!(uz_per * 4));
    let mut pb = Array::<G>::new(comptime!(bc_per * 4));
    let mut pc = Array::<G>::new(comptime!(bc_per * 4));
    lanes_load(
        u, delta, z, b, c, &mut pu, &mut pd, &mut pz, &mut pb, &mut pc, 0, bi, len, d_inner, c0,
        zs0, zs1, bs0, bs1, cs0, cs1, d_state, channels, stage,
    );

    let mut ts = 0;
    while ts < len {
        // Everyone is done with the previous stage: its outputs are in `s_y`.
        sync_cube();
        if ts > 0 {
            lanes_write_y(
                &s_y,
                y,
                ts - stage,
                bi,
                len,
                d_inner,
                c0,
                channels,
                stage,
                threads,
            );
        }
        // The stage's inputs into shared memory, the per-`(t, d)` work done once.
        #[unroll]
        for r in 0..uz_per {
            let k = tid + r * threads;
            if k < uz_items {
                let jj = k % channels;
                let tq = k / channels;
                let mut wdt = Vector::<f32, V>::empty();
                let mut wdtu = Vector::<f32, V>::empty();
                #[unroll]
                for e in 0..4 {
                    let t = tq * 4 + e;
                    let ut = f32::cast_from(pu[r * 4 + e]);
                    let g = gate_of(f32::cast_from(pz[r * 4 + e]), fast, silu_gate);
                    let dt = if ts + t < len {
                        time_step(f32::cast_from(pd[r * 4 + e]) + bias[r], fast, activate)
                    } else {
                        0.0f32
                    };
                    wdt.insert(e, dt);
                    wdtu.insert(e, dt * ut);
                    s_gate[jj * stage + t] = g;
                    s_skip[jj * stage + t] = dskip[r] * ut * g;
                }
                s_dt[jj * row + tq] = wdt;
                s_dtu[jj * row + tq] = wdtu;
            }
        }
        #[unroll]
        for r in 0..bc_per {
            let k = tid + r * threads;
            if k < bc_items {
                let nn = k % d_state;
                let tq = k / d_state;
                let mut wb = Vector::<f32, V>::empty();
                let mut wc = Vector::<f32, V>::empty();
                #[unroll]
                for e in 0..4 {
                    wb.insert(e, f32::cast_from(pb[r * 4 + e]));
                    wc.insert(e, f32::cast_from(pc[r * 4 + e]));
                }
                s_b[nn * row + tq] = wb;
                s_c[nn * row + tq] = wc;
            }
        }
        if ts + stage < len {
            lanes_load(
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
                ts + stage,
                bi,
                len,
                d_inner,
                c0,
                zs0,
                zs1,
                bs0,
                bs1,
                cs0,
                cs1,
                d_state,
                channels,
                stage,
            );
        }
        sync_cube();
        #[unroll]
        for g in 0..groups {
            let mut part = Array::<f32>::new(d_state);
            #[unroll]
            for q in 0..gv {
                let vdt = s_dt[j * row + g * gv + q];
                let vdtu = s_dtu[j * row + g * gv + q];
                let vb = s_b[n * row + g * gv + q];
                let vc = s_c[n * row + g * gv + q];
                #[unroll]
                for e in 0..4 {
                    // h = exp(Δ·A)·h + Δ·u·B   (eq. 2a), this thread's state
                    h = decay(vdt.extract(e) * av, fast) * h + vdtu.extract(e) * vb.extract(e);
                    part[q * 4 + e] = vc.extract(e) * h;
                }
            }
            // Σ_n C·h of step `g·d_state + n` into this thread's `part[0]`.
            if comptime!(shuffle) {
                if comptime!(d_state >= 32) {
                    reduce_round(&mut part, n, 16usize);
                }
                if comptime!(d_state >= 16) {
                    reduce_round(&mut part, n, 8usize);
                }
                if comptime!(d_state >= 8) {
                    reduce_round(&mut part, n, 4usize);
                }
                reduce_round(&mut part, n, 2usize);
                reduce_round(&mut part, n, 1usize);
            } else {
                #[unroll]
                for i in 0..d_state {
                    s_red[tid * d_state + i] = part[i];
                }
                sync_cube();
                let mut sum = 0.0f32;
                for l in 0..d_state {
                    sum += s_red[(j * d_state + l) * d_state + n];
                }
                part[0] = sum;
                sync_cube();
            }
            let t = g * d_state + n;
            s_y[t * channels + j] = part[0] * s_gate[j * stage + t] + s_skip[j * stage + t];
        }
        ts += stage;
    }
    sync_cube();
    if ts > 0 {
        lanes_write_y(
            &s_y,
            y,
            ts - stage,
            bi,
            len,
            d_inner,
            c0,
            channels,
            stage,
            threads,
        );
    }
    if active {
        h_last[(bi * d_inner + ch) * d_state + n] = h;
    }
}

/// The channel staged by a thread for its `jj`-th channel of the group, clamped into range
/// (threads past `d_inner` stage the last channel and their results are never written).
#[cube]
fn stage_channel(c0: usize, jj: usize, d_inner: usize) -> usize {
    let c = c0 + jj;
    if c < d_inner { c } else { d_inner - 1 }
}

/// One round of the reduce-scatter over the `2m` entries of `part` still summed: the thread
/// whose lane has bit `m` set keeps the upper `m` entries and passes the lower ones to its
/// partner (lane xor `m`), the other the reverse; each adds what it receives.
#[cube]
fn reduce_round(part: &mut Array<f32>, n: usize, #[comptime] m: usize) {
    let upper = (n / m) % 2 == 1;
    let mask = comptime!(m as u32);
    #[unroll]
    for i in 0..m {
        let lo = part[i];
        let hi = part[i + m];
        let send = select(upper, lo, hi);
        let keep = select(upper, hi, lo);
        part[i] = keep + plane_shuffle_xor(send, mask);
    }
}

/// Writes the outputs of the stage starting at `ts0` from `s_y` (step-major), coalesced along
/// channels.
#[cube]
#[allow(clippy::too_many_arguments)]
fn lanes_write_y<F: Float>(
    s_y: &Shared<[f32]>,
    y: &mut Tensor<F>,
    ts0: usize,
    bi: usize,
    len: usize,
    d_inner: usize,
    c0: usize,
    #[comptime] channels: usize,
    #[comptime] stage: usize,
    #[comptime] threads: usize,
) {
    let tid = UNIT_POS_X as usize;
    #[unroll]
    for r in 0..comptime!((channels * stage).div_ceil(threads)) {
        let k = tid + r * threads;
        if k < comptime!(channels * stage) {
            let jj = k % channels;
            let t = k / channels;
            if ts0 + t < len && c0 + jj < d_inner {
                y[(bi * len + ts0 + t) * d_inner + c0 + jj] = F::cast_from(s_y[k]);
            }
        }
    }
}

/// Loads the raw inputs of the stage starting at `ts` into registers: for each of the thread's
/// `(channel, four steps)` items `u`, `delta` and `z`, and for each of its `(state, four
/// steps)` items `B` and `C`. Steps past the sequence load its last step (they are staged
/// with `Δ = 0`).
#[cube]
#[allow(clippy::too_many_arguments)]
fn lanes_load<F: Float, G: Float>(
    u: &Tensor<F>,
    delta: &Tensor<F>,
    z: &Tensor<F>,
    b: &Tensor<G>,
    c: &Tensor<G>,
    pu: &mut Array<F>,
    pd: &mut Array<F>,
    pz: &mut Array<F>,
    pb: &mut Array<G>,
    pc: &mut Array<G>,
    ts: usize,
    bi: usize,
    len: usize,
    d_inner: usize,
    c0: usize,
    zs0: usize,
    zs1: usize,
    bs0: usize,
    bs1: usize,
    cs0: usize,
    cs1: usize,
    #[comptime] d_state: usize,
    #[comptime] channels: usize,
    #[comptime] stage: usize,
) {
    let threads = comptime!(channels * d_state);
    let tid = UNIT_POS_X as usize;
    let last = len - 1;
    #[unroll]
    for r in 0..comptime!((channels * (stage / 4)).div_ceil(channels * d_state)) {
        let k = tid + r * threads;
        let k = if k < comptime!(channels * (stage / 4)) {
            k
        } else {
            0usize
        };
        let sc = stage_channel(c0, k % channels, d_inner);
        let tq = k / channels;
        #[unroll]
        for e in 0..4 {
            let t = ts + tq * 4 + e;
            let t = if t < len { t } else { last };
            let i = (bi * len + t) * d_inner + sc;
            pu[r * 4 + e] = u[i];
            pd[r * 4 + e] = delta[i];
            pz[r * 4 + e] = z[bi * zs0 + t * zs1 + sc];
        }
    }
    #[unroll]
    for r in 0..comptime!((d_state * (stage / 4)).div_ceil(channels * d_state)) {
        let k = tid + r * threads;
        let k = if k < comptime!(d_state * (stage / 4)) {
            k
        } else {
            0usize
        };
        let nn = k % d_state;
        let tq = k / d_state;
        #[unroll]
        for e in 0..4 {
            let t = ts + tq * 4 + e;
            let t = if t < len { t } else { last };
            pb[r * 4 + e] = b[bi * bs0 + t * bs1 + nn];
            pc[r * 4 + e] = c[bi * cs0 + t * cs1 + nn];
        }
    }
}
