//! The selective scan in one pass over time for few batch rows: every decay `exp(Δ·A)` computed
//! once, time split across the threads of a cube instead of across launches.
//!
//! The chunked kernels of [`scan_cube`](super::scan_cube) split a batch-1 sequence into chunks
//! so that enough threads run, and so compute every decay twice (pass 1 from a zero state,
//! pass 3 from the true one). Here a cube owns `channels` channels for the whole sequence and
//! walks it in tiles of `lanes · items` steps; within a tile each of a channel's `lanes`
//! threads takes `items` consecutive steps, so the time-parallel work of a tile is spread over
//! the cube and the state is handed from tile to tile in shared memory.
//!
//! # One tile
//!
//! The map a span of steps applies to a state is affine per state index, `h ↦ P·h + S`
//! (`P` the product of the span's decays, `S` its state scanned from zero), and maps compose
//! associatively. For each group of `vec` state indices (the `B`/`C` vector loads' width):
//!
//! 1. Every thread scans its `items` steps from zero, adds `C·S_i` to its outputs and keeps
//!    `C_i·P_i` per step and state (the coefficient of its unknown incoming state).
//! 2. The threads of a channel within a plane (`seg` of them, adjacent `channels` apart) scan
//!    their `(P, S)` maps with plane shuffles; each plane's last such thread writes its
//!    segment's map to shared memory.
//! 3. After a barrier one plane lane per `(segment, channel, state)` scans the segments' maps
//!    across the cube with shuffles (`segs` lanes), applies them to the state carried in from
//!    the previous tile, and writes each segment's incoming state; the last segment's outgoing
//!    state is the next tile's carried state (double-buffered by tile parity).
//! 4. After a second barrier every thread forms its own incoming state (its segment's, through
//!    its predecessors in the segment by one more shuffle) and adds `C_i·P_i·h_in` to its
//!    outputs.
//!
//! With `replay`, step 1 keeps each step's decay and input `Δ·B·u` instead of `C_i·P_i`, takes
//! the thread's `P` as one exponential of its `ΣΔ`, and step 4 replays the thread's steps from
//! its true incoming state (`h = decay·h + input`, `y += C·h`): one multiply fewer per step and
//! state in step 1 and no `C` there, for twice the registers.
//!
//! `y = (Σ_n C·h + D·u) · SiLU(z)` is written once a tile's state groups are done. Steps past
//! the sequence get `Δ = 0` (decay 1, no input), which leaves every map unchanged, so the last
//! tile needs no special case and the final carried state is the last state.
//!
//! On CubeCL's CPU runtime (planes of one unit) `seg` is 1, there are no shuffles, and step 3
//! composes the earlier segments' maps in a loop per thread instead.

use cubecl::prelude::*;

use super::scan_cube::{a_scale, decay, gate_of, time_step};

/// The one-pass tile scan (see the module docs). Cubes: `(channel group, batch row)`, each of
/// `channels · seg · segs` units, `channels · seg` of them one plane when `plane_scan`.
/// `h0`, `h_last`: `[batch, d_inner, d_state]`; `a`: `[d_inner, d_state]`; `d`, `delta_bias`:
/// `[d_inner]`; `u`, `delta`, `y` contiguous `[batch, len, d_inner]`; `z`, `B`, `C` read
/// through row strides (`B`/`C` strides in vectors of `vec`).
#[cube(launch_unchecked, create_dummy_kernel, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
pub(crate) fn scan_tile_kernel<F: Float, G: Float, V: Size>(
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
    zs0: usize,
    zs1: usize,
    bs0: usize,
    bs1: usize,
    cs0: usize,
    cs1: usize,
    #[comptime] d_state: usize,
    #[comptime] vec: usize,
    #[comptime] channels: usize,
    #[comptime] seg: usize,
    #[comptime] segs: usize,
    #[comptime] items: usize,
    #[comptime] plane_scan: bool,
    #[comptime] replay: bool,
    #[comptime] fast: bool,
    #[comptime] activate: bool,
    #[comptime] silu_gate: bool,
    #[define(F, G)] _elems: [ElemType; 2],
) {
    let lanes = comptime!(seg * segs);
    let tile = comptime!(lanes * items);
    let threads = comptime!(channels * lanes);
    let groups = comptime!(d_state / vec);
    // `(channel, state)` pairs of one group of states.
    let pairs = comptime!(channels * vec);
    let carry_len = comptime!(channels * d_state);
    let seg_levels = comptime!(seg.trailing_zeros() as usize);
    let segs_levels = comptime!(segs.trailing_zeros() as usize);
    let seg_last = comptime!(seg - 1);
    let segs_last = comptime!(segs - 1);

    let tid = UNIT_POS_X as usize;
    let bi = CUBE_POS_Y as usize;
    let c0 = CUBE_POS_X as usize * channels;
    let j = tid % channels;
    let w = tid / channels;
    // Position within the segment (the threads of channel `j` in this plane) and segment.
    let wl = w % seg;
    let m = w / seg;
    let active = c0 + j < d_inner;
    let ch = if active { c0 + j } else { d_inner - 1 };

    let mut s_carry = Shared::<[f32]>::new_slice(comptime!(2 * carry_len));
    let mut s_aggp = Shared::<[f32]>::new_slice(comptime!(segs * pairs));
    let mut s_aggs = Shared::<[f32]>::new_slice(comptime!(segs * pairs));
    let mut s_hin = Shared::<[f32]>::new_slice(comptime!(segs * pairs));

    let mut k = tid;
    while k < carry_len {
        let cj = c0 + k / d_state;
        let cj = if cj < d_inner { cj } else { d_inner - 1 };
        s_carry[k] = h0[(bi * d_inner + cj) * d_state + k % d_state];
        k += threads;
    }

    let bias = delta_bias[ch];
    let dskip = d[ch];
    let mut dt = Array::<f32>::new(items);
    let mut dtu = Array::<f32>::new(items);
    let mut acc = Array::<f32>::new(items);
    let mut gate = Array::<f32>::new(items);
    // Per step and state of the group: `C_i·P_i`, or with `replay` the decay, and with
    // `replay` the input `Δ·B·u` in `inflow`.
    let mut coef = Array::<f32>::new(comptime!(items * vec));
    let mut inflow = Array::<f32>::new(comptime!(if replay { items * vec } else { 1 }));
    let mut av = Array::<f32>::new(vec);
    let mut p = Array::<f32>::new(vec);
    let mut s = Array::<f32>::new(vec);

    let last = len - 1;
    let mut cur = 0usize;
    let mut ts = 0usize;
    while ts < len {
        let first = ts + w * items;
        #[unroll]
        for i in 0..items {
            let t = first + i;
            let valid = t < len;
            let tt = if valid { t } else { last };
            let idx = (bi * len + tt) * d_inner + ch;
            let ut = f32::cast_from(u[idx]);
            let step = time_step(f32::cast_from(delta[idx]) + bias, fast, activate);
            gate[i] = gate_of(f32::cast_from(z[bi * zs0 + tt * zs1 + ch]), fast, silu_gate);
            acc[i] = dskip * ut;
            let step = if valid { step } else { 0.0f32 };
            dt[i] = step;
            dtu[i] = step * ut;
        }
        let mut dsum = 0.0f32;
        if comptime!(replay) {
            #[unroll]
            for i in 0..items {
                dsum += dt[i];
            }
        }
        let nxt = 1 - cur;
        for grp in 0..groups {
            // 1. This thread's steps from zero.
            #[unroll]
            for e in 0..vec {
                av[e] = a[ch * d_state + grp * vec + e] * a_scale(fast);
                p[e] = 1.0f32;
                s[e] = 0.0f32;
            }
            #[unroll]
            for i in 0..items {
                let t = first + i;
                let tt = if t < len { t } else { last };
                let bv = b[bi * bs0 + tt * bs1 + grp];
                if comptime!(replay) {
                    #[unroll]
                    for e in 0..vec {
                        let da = decay(dt[i] * av[e], fast);
                        let bt = dtu[i] * f32::cast_from(bv.extract(e));
                        s[e] = da * s[e] + bt;
                        coef[i * vec + e] = da;
                        inflow[i * vec + e] = bt;
                    }
                } else {
                    let cv = c[bi * cs0 + tt * cs1 + grp];
                    #[unroll]
                    for e in 0..vec {
                        let da = decay(dt[i] * av[e], fast);
                        s[e] = da * s[e] + dtu[i] * f32::cast_from(bv.extract(e));
                        p[e] *= da;
                        let ce = f32::cast_from(cv.extract(e));
                        acc[i] += ce * s[e];
                        coef[i * vec + e] = ce * p[e];
                    }
                }
            }
            if comptime!(replay) {
                #[unroll]
                for e in 0..vec {
                    p[e] = decay(dsum * av[e], fast);
                }
            }
            // 2. Scan the maps of the segment's threads (inclusive).
            if comptime!(plane_scan) {
                let mut off = 1usize;
                #[unroll]
                for _lvl in 0..seg_levels {
                    let by = u32::cast_from(off * channels);
                    #[unroll]
                    for e in 0..vec {
                        let pp = plane_shuffle_up(p[e], by);
                        let sp = plane_shuffle_up(s[e], by);
                        if wl >= off {
                            s[e] += p[e] * sp;
                            p[e] *= pp;
                        }
                    }
                    off *= 2;
                }
            }
            if wl == seg_last {
                #[unroll]
                for e in 0..vec {
                    s_aggp[m * pairs + j * vec + e] = p[e];
                    s_aggs[m * pairs + j * vec + e] = s[e];
                }
            }
            sync_cube();
            // 3. The segments' incoming states, and the next tile's carried state.
            if comptime!(plane_scan) {
                let lane = tid % comptime!(channels * seg);
                let plane = tid / comptime!(channels * seg);
                let pair = plane * comptime!(channels * seg / segs) + lane / segs;
                let mm = lane % segs;
                let has = pair < pairs;
                let slot = if has { mm * pairs + pair } else { 0usize };
                let mut gp = s_aggp[slot];
                let mut gs = s_aggs[slot];
                let mut off = 1usize;
                #[unroll]
                for _lvl in 0..segs_levels {
                    let by = u32::cast_from(off);
                    let pp = plane_shuffle_up(gp, by);
                    let sp = plane_shuffle_up(gs, by);
                    if mm >= off {
                        gs += gp * sp;
                        gp *= pp;
                    }
                    off *= 2;
                }
                let pex = plane_shuffle_up(gp, 1u32);
                let sex = plane_shuffle_up(gs, 1u32);
                if has {
                    let cslot = (pair / vec) * d_state + grp * vec + pair % vec;
                    let hc = s_carry[cur * carry_len + cslot];
                    s_hin[slot] = if mm == 0 { hc } else { pex * hc + sex };
                    if mm == segs_last {
                        s_carry[nxt * carry_len + cslot] = gp * hc + gs;
                    }
                }
            } else {
                #[unroll]
                for e in 0..vec {
                    let pair = j * vec + e;
                    let cslot = j * d_state + grp * vec + e;
                    let mut h = s_carry[cur * carry_len + cslot];
                    for mm in 0..m {
                        h = s_aggp[mm * pairs + pair] * h + s_aggs[mm * pairs + pair];
                    }
                    s_hin[m * pairs + pair] = h;
                    if m == segs_last {
                        s_carry[nxt * carry_len + cslot] = p[e] * h + s[e];
                    }
                }
            }
            sync_cube();
            // 4. This thread's incoming state, and its part of the outputs.
            #[unroll]
            for e in 0..vec {
                let hin = s_hin[m * pairs + j * vec + e];
                let mut start = hin;
                if comptime!(plane_scan && seg > 1) {
                    let before = plane_shuffle_up(p[e] * hin + s[e], u32::cast_from(channels));
                    if wl > 0 {
                        start = before;
                    }
                }
                if comptime!(replay) {
                    s[e] = start;
                } else {
                    #[unroll]
                    for i in 0..items {
                        acc[i] += coef[i * vec + e] * start;
                    }
                }
            }
            if comptime!(replay) {
                // The thread's steps again from the true incoming state, with the decays and
                // inputs kept from step 1.
                #[unroll]
                for i in 0..items {
                    let t = first + i;
                    let tt = if t < len { t } else { last };
                    let cv = c[bi * cs0 + tt * cs1 + grp];
                    #[unroll]
                    for e in 0..vec {
                        s[e] = coef[i * vec + e] * s[e] + inflow[i * vec + e];
                        acc[i] += f32::cast_from(cv.extract(e)) * s[e];
                    }
                }
            }
        }
        if active {
            #[unroll]
            for i in 0..items {
                let t = first + i;
                if t < len {
                    y[(bi * len + t) * d_inner + ch] = F::cast_from(acc[i] * gate[i]);
                }
            }
        }
        cur = nxt;
        ts += tile;
    }
    sync_cube();
    let mut k = tid;
    while k < carry_len {
        let cj = c0 + k / d_state;
        if cj < d_inner {
            h_last[(bi * d_inner + cj) * d_state + k % d_state] = s_carry[cur * carry_len + k];
        }
        k += threads;
    }
}
