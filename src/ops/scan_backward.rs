//! The backward pass of the selective scan, and its registration on autodiff devices.
//!
//! # Equations
//!
//! Forward, per batch row, channel `d` and state index `n` (module [`scan`](super::scan)):
//!
//! ```text
//! s[t]   = delta[t] + delta_bias
//! Δ[t]   = softplus(s[t])                                   (Algorithm 2, line 6)
//! Ā[t,n] = exp(Δ[t]·A[n])                                   (eq. 4, zero-order hold)
//! h[t,n] = Ā[t,n]·h[t-1,n] + Δ[t]·B[t,n]·u[t]               (eq. 2a)
//! s_y[t] = Σ_n C[t,n]·h[t,n] + D·u[t]                       (eq. 2b, plus the D skip)
//! y[t]   = s_y[t]·SiLU(z[t])
//! ```
//!
//! Backward, with `ȳ = ∂L/∂y` and `h̄_L = ∂L/∂h[L-1]` given. Let `ḡ[t] = ȳ[t]·SiLU(z[t])`
//! (the gradient of `s_y`) and `G[t,n] = ∂L/∂h[t,n]`, the total gradient of a state:
//!
//! ```text
//! G[L-1,n] = h̄_L[n] + C[L-1,n]·ḡ[L-1]
//! G[t,n]   = Ā[t+1,n]·G[t+1,n] + C[t,n]·ḡ[t]                (reverse-time recurrence)
//! ∂L/∂h0   = Ā[0]·G[0]
//! ∂L/∂C[t,n] = Σ_d ḡ[t]·h[t,n]                               (summed over channels)
//! ∂L/∂B[t,n] = Σ_d G[t,n]·Δ[t]·u[t]                          (summed over channels)
//! ∂L/∂A[n]   = Σ_{batch,t} G[t,n]·Δ[t]·Ā[t,n]·h[t-1,n]        (A is shared by batch rows)
//! ∂L/∂D      = Σ_{batch,t} ḡ[t]·u[t]
//! ∂L/∂u[t]   = ḡ[t]·D + Σ_n G[t,n]·Δ[t]·B[t,n]
//! ∂L/∂Δ[t]   = Σ_n G[t,n]·(A[n]·Ā[t,n]·h[t-1,n] + B[t,n]·u[t])
//! ∂L/∂delta[t] = ∂L/∂Δ[t]·sigmoid(s[t])                      (softplus' = sigmoid)
//! ∂L/∂delta_bias = Σ_{batch,t} ∂L/∂delta[t]
//! ∂L/∂z[t]   = ȳ[t]·s_y[t]·SiLU'(z[t]),   SiLU'(z) = σ(z)·(1 + z·(1 - σ(z)))
//! ```
//!
//! The recurrence for `G` needs `h[t-1]` and `Ā[t]` in reverse time order. Both
//! implementations recompute them: a first forward pass keeps only the state at the start of
//! every time block, then the blocks are visited from last to first, each block's states are
//! recomputed from its checkpoint and the block is walked backwards. Memory is the checkpoints
//! (`1/block` of all states) plus one block, never `[L, d_inner, d_state]`.
//!
//! - [`scan_backward_reference`]: plain tensor operations, for every backend (the default body of
//!   `selective_scan_backward`; the CubeCL backend's kernel falls back to it for what it does
//!   not take).
//! - `scan_backward_cube` (with the `cube` feature): one CubeCL kernel, the CubeCL backend's
//!   (CUDA devices') backward step.
//! - [`scan_backward_flex`]: a fused, multi-threaded host loop for the CPU backend.
//! - [`scan_autodiff`]: `selective_scan` on autodiff devices, running the inner backend's fast
//!   forward and registering a backward step that calls `selective_scan_backward`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, DType, Flex, TensorData, TensorMetadata};
use burn::tensor::{Shape, Slice};
use rayon::prelude::*;

use super::scan::{ScanGrads, ScanInput, ScanOutput, SelectiveScanBackend};
use super::scan_cpu::{LANES, fast_exp, fast_softplus, host};
use super::scan_reference::{TIME_BLOCK, silu, softplus};

fn dims<B: Backend>(t: &FloatTensor<B>) -> Vec<usize> {
    t.shape().to_vec()
}

fn slice_time<B: Backend>(t: &FloatTensor<B>, t0: usize, t1: usize) -> FloatTensor<B> {
    let slices: [Slice; 3] = [(..).into(), (t0..t1).into(), (..).into()];
    B::float_slice(t.clone(), &slices)
}

/// Step `i` of a `[batch, block, d_inner, d_state]` tensor, as `[batch, d_inner, d_state]`.
fn step<B: Backend>(
    t: &FloatTensor<B>,
    i: usize,
    batch: usize,
    d_inner: usize,
    d_state: usize,
) -> FloatTensor<B> {
    let slices: [Slice; 4] = [(..).into(), (i..i + 1).into(), (..).into(), (..).into()];
    B::float_reshape(
        B::float_slice(t.clone(), &slices),
        Shape::new([batch, d_inner, d_state]),
    )
}

fn zeros_shaped<B: Backend>(like: &FloatTensor<B>, shape: Shape) -> FloatTensor<B> {
    B::float_zeros(shape, &like.device(), like.dtype().into())
}

/// Gradients for a scan without time steps: `h_last = h0`, nothing else is used.
fn empty_grads<B: Backend>(input: ScanInput<B>, grad_h: FloatTensor<B>) -> ScanGrads<B> {
    let z = |t: FloatTensor<B>| zeros_shaped::<B>(&t, t.shape());
    ScanGrads {
        u: z(input.u),
        delta: z(input.delta),
        a: z(input.a),
        b: z(input.b),
        c: z(input.c),
        d: z(input.d),
        z: z(input.z),
        delta_bias: z(input.delta_bias),
        h0: grad_h,
    }
}

// ---------------------------------------------------------------------------------------------
// Tensor operations (every backend)
// ---------------------------------------------------------------------------------------------

/// The discretised block `t0..t1`: `(Ā, Δ·B·u, Δ, u, B, C)` with `Ā` and `Δ·B·u` as
/// `[batch, block, d_inner, d_state]`, `Δ`, `u` as `[batch, block, d_inner, 1]` and `B`, `C` as
/// `[batch, block, 1, d_state]`.
struct Block<B: Backend> {
    abar: FloatTensor<B>,
    dbu: FloatTensor<B>,
    dt: FloatTensor<B>,
    u: FloatTensor<B>,
    b: FloatTensor<B>,
    c: FloatTensor<B>,
}

/// The whole sequence, from which [`Block`]s are cut.
struct Whole<B: Backend> {
    /// `Δ`, `[batch, len, d_inner]`
    dt: FloatTensor<B>,
    u: FloatTensor<B>,
    b: FloatTensor<B>,
    c: FloatTensor<B>,
    /// `A` as `[1, 1, d_inner, d_state]`
    a4: FloatTensor<B>,
    batch: usize,
    d_inner: usize,
    d_state: usize,
}

impl<B: Backend> Whole<B> {
    fn block(&self, t0: usize, t1: usize) -> Block<B> {
        let (batch, tl, di, ds) = (self.batch, t1 - t0, self.d_inner, self.d_state);
        let dt = B::float_reshape(
            slice_time::<B>(&self.dt, t0, t1),
            Shape::new([batch, tl, di, 1]),
        );
        let u = B::float_reshape(
            slice_time::<B>(&self.u, t0, t1),
            Shape::new([batch, tl, di, 1]),
        );
        let b = B::float_reshape(
            slice_time::<B>(&self.b, t0, t1),
            Shape::new([batch, tl, 1, ds]),
        );
        let c = B::float_reshape(
            slice_time::<B>(&self.c, t0, t1),
            Shape::new([batch, tl, 1, ds]),
        );
        // Ā = exp(Δ·A) (eq. 4), Δ·B·u (the Euler approximation of B̄u).
        let abar = B::float_exp(B::float_mul(dt.clone(), self.a4.clone()));
        let dbu = B::float_mul(B::float_mul(dt.clone(), u.clone()), b.clone());
        Block {
            abar,
            dbu,
            dt,
            u,
            b,
            c,
        }
    }
}

/// The backward pass in plain tensor operations; see the module documentation for the
/// equations.
///
/// Time runs in blocks of [`TIME_BLOCK`] steps, as in the reference forward: one forward pass
/// keeps the state at each block start, then each block (last to first) recomputes its states
/// and runs the reverse recurrence step by step; everything that is not recurrent is formed
/// for the whole block at once.
///
/// # Shapes
/// - `input`: as in [`ScanInput`]
/// - `grad_y`: `[batch, length, d_inner]`; `grad_h`: `[batch, d_inner, d_state]`
/// - returns one gradient per input, shaped like it ([`ScanGrads`])
pub fn scan_backward_reference<B: Backend>(
    input: ScanInput<B>,
    grad_y: FloatTensor<B>,
    grad_h: FloatTensor<B>,
) -> ScanGrads<B> {
    let [batch, len, d_inner] = <[usize; 3]>::try_from(dims::<B>(&input.u)).unwrap_or([0, 0, 0]);
    let d_state = dims::<B>(&input.a).get(1).copied().unwrap_or(0);
    if batch == 0 || len == 0 {
        return empty_grads::<B>(input, grad_h);
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

    // s = delta + bias, Δ = softplus(s), dΔ/ds = sigmoid(s).
    let bias = B::float_reshape(delta_bias, Shape::new([1, 1, d_inner]));
    let s = B::float_add(delta, bias);
    let dt = softplus::<B>(s.clone());
    let sig_s = B::sigmoid(s);
    // ḡ = ȳ·SiLU(z), the gradient of the pre-gate output.
    let gate = silu::<B>(z.clone());
    let gbar = B::float_mul(grad_y.clone(), gate);
    let whole = Whole::<B> {
        dt,
        u: u.clone(),
        b,
        c,
        a4: B::float_reshape(a, Shape::new([1, 1, d_inner, d_state])),
        batch,
        d_inner,
        d_state,
    };
    let bounds: Vec<(usize, usize)> = (0..len)
        .step_by(TIME_BLOCK)
        .map(|t0| (t0, (t0 + TIME_BLOCK).min(len)))
        .collect();
    let st = |t: &FloatTensor<B>, i| step::<B>(t, i, batch, d_inner, d_state);
    let as4 = |t: FloatTensor<B>| B::float_reshape(t, Shape::new([batch, 1, d_inner, d_state]));

    // Forward pass keeping the state at the start of every block (eq. 2a).
    let mut starts = Vec::with_capacity(bounds.len());
    let mut h = h0;
    for &(t0, t1) in &bounds {
        starts.push(h.clone());
        let blk = whole.block(t0, t1);
        for i in 0..t1 - t0 {
            h = B::float_add(B::float_mul(st(&blk.abar, i), h), st(&blk.dbu, i));
        }
    }

    // Backward over blocks, last to first. `carry` = ∂L/∂h[t1-1] from the steps after the
    // block (h̄_L for the last block).
    let mut carry = grad_h;
    let mut d_a: Option<FloatTensor<B>> = None;
    let nb = bounds.len();
    let (mut du_state, mut d_dt, mut d_b, mut d_c, mut y_state) = (
        Vec::with_capacity(nb),
        Vec::with_capacity(nb),
        Vec::with_capacity(nb),
        Vec::with_capacity(nb),
        Vec::with_capacity(nb),
    );
    for (&(t0, t1), h_start) in bounds.iter().zip(starts).rev() {
        let tl = t1 - t0;
        let blk = whole.block(t0, t1);
        // Recompute h[t] (eq. 2a); `prev` holds h[t-1] for the same steps.
        let mut hs = Vec::with_capacity(tl);
        let mut prev = Vec::with_capacity(tl);
        let mut h = h_start;
        for i in 0..tl {
            prev.push(as4(h.clone()));
            h = B::float_add(B::float_mul(st(&blk.abar, i), h), st(&blk.dbu, i));
            hs.push(as4(h.clone()));
        }
        let h_cur = B::float_cat(hs, 1);
        let h_prev = B::float_cat(prev, 1);
        let gbar4 = B::float_reshape(
            slice_time::<B>(&gbar, t0, t1),
            Shape::new([batch, tl, d_inner, 1]),
        );
        // C[t]·ḡ[t], the gradient reaching h[t] through y[t] (eq. 2b).
        let cg = B::float_mul(blk.c.clone(), gbar4.clone());
        // G[t] = Ā[t+1]·G[t+1] + C[t]·ḡ[t], in reverse time.
        let mut gs = Vec::with_capacity(tl);
        let mut next = carry;
        for i in (0..tl).rev() {
            let g = B::float_add(next, st(&cg, i));
            next = B::float_mul(st(&blk.abar, i), g.clone());
            gs.push(as4(g));
        }
        carry = next;
        gs.reverse();
        let g = B::float_cat(gs, 1);

        let to3 =
            |t: FloatTensor<B>, last: usize| B::float_reshape(t, Shape::new([batch, tl, last]));
        // ∂L/∂C[t,n] = Σ_d ḡ[t]·h[t,n]
        d_c.push(to3(
            B::float_sum_dim(B::float_mul(gbar4, h_cur.clone()), 2),
            d_state,
        ));
        // ∂L/∂B[t,n] = Σ_d G[t,n]·Δ[t]·u[t]
        let dtu = B::float_mul(blk.dt.clone(), blk.u.clone());
        d_b.push(to3(
            B::float_sum_dim(B::float_mul(g.clone(), dtu), 2),
            d_state,
        ));
        // The state part of ∂L/∂u[t]: Δ[t]·Σ_n G[t,n]·B[t,n]
        let gb = B::float_sum_dim(B::float_mul(g.clone(), blk.b.clone()), 3);
        du_state.push(to3(B::float_mul(gb, blk.dt.clone()), d_inner));
        // G·Ā·h[t-1], shared by ∂L/∂Δ and ∂L/∂A.
        let gah = B::float_mul(B::float_mul(g.clone(), blk.abar), h_prev);
        // ∂L/∂Δ[t] = Σ_n G·(A·Ā·h[t-1] + B·u)
        let bu = B::float_mul(blk.b, blk.u);
        let ddt = B::float_add(
            B::float_mul(gah.clone(), whole.a4.clone()),
            B::float_mul(g, bu),
        );
        d_dt.push(to3(B::float_sum_dim(ddt, 3), d_inner));
        // ∂L/∂A[n] = Σ_{batch,t} G·Δ·Ā·h[t-1]
        let da_blk = B::float_reshape(
            B::float_sum_dims(B::float_mul(gah, blk.dt), &[0, 1]),
            Shape::new([d_inner, d_state]),
        );
        d_a = Some(match d_a {
            None => da_blk,
            Some(acc) => B::float_add(acc, da_blk),
        });
        // Σ_n C[t,n]·h[t,n], the state part of the pre-gate output (for ∂L/∂z).
        y_state.push(to3(
            B::float_sum_dim(B::float_mul(h_cur, blk.c), 3),
            d_inner,
        ));
    }
    let ordered = |mut v: Vec<FloatTensor<B>>| {
        v.reverse();
        B::float_cat(v, 1)
    };
    let dskip = B::float_reshape(d, Shape::new([1, 1, d_inner]));
    // ∂L/∂u = ḡ·D + Δ·Σ_n G·B
    let grad_u = B::float_add(ordered(du_state), B::float_mul(gbar.clone(), dskip.clone()));
    // ∂L/∂D = Σ_{batch,t} ḡ·u
    let grad_d = B::float_reshape(
        B::float_sum_dims(B::float_mul(gbar, u.clone()), &[0, 1]),
        Shape::new([d_inner]),
    );
    // ∂L/∂delta = ∂L/∂Δ·sigmoid(s); ∂L/∂delta_bias sums it over batch and time.
    let grad_delta = B::float_mul(ordered(d_dt), sig_s);
    let grad_bias = B::float_reshape(
        B::float_sum_dims(grad_delta.clone(), &[0, 1]),
        Shape::new([d_inner]),
    );
    // ∂L/∂z = ȳ·s_y·SiLU'(z), s_y = Σ_n C·h + D·u, SiLU'(z) = σ(z)·(1 + z·(1 - σ(z)))
    let s_y = B::float_add(ordered(y_state), B::float_mul(u, dskip));
    let sig_z = B::sigmoid(z.clone());
    let one_minus = B::float_add_scalar(B::float_neg(sig_z.clone()), 1.0.into());
    let dsilu = B::float_mul(
        sig_z,
        B::float_add_scalar(B::float_mul(z, one_minus), 1.0.into()),
    );
    let grad_z = B::float_mul(B::float_mul(grad_y, s_y), dsilu);
    let grad_a = match d_a {
        Some(g) => g,
        None => zeros_shaped::<B>(&carry, Shape::new([d_inner, d_state])),
    };
    ScanGrads {
        u: grad_u,
        delta: grad_delta,
        a: grad_a,
        b: ordered(d_b),
        c: ordered(d_c),
        d: grad_d,
        z: grad_z,
        delta_bias: grad_bias,
        // ∂L/∂h0 = Ā[0]·G[0], what the recurrence carried past the first step.
        h0: carry,
    }
}

// ---------------------------------------------------------------------------------------------
// Fused host loop (CPU backend)
// ---------------------------------------------------------------------------------------------

/// Time steps per checkpoint of the fused backward: the states of one block of one channel
/// group (`(block + 1) · d_state · LANES` values, with `Ā`) stay in L2 while it is walked back.
const BACK_BLOCK: usize = 128;

/// A 3-D f32 tensor whose last dimension is contiguous: `[b, t, j]` at `off + b·sb + t·st + j`.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    off: usize,
    sb: usize,
    st: usize,
}

impl<'a> View<'a> {
    /// Values `j0..j1` of row `[b, t]`.
    #[inline(always)]
    fn get(&self, b: usize, t: usize, j0: usize, j1: usize) -> &'a [f32] {
        let o = self.off + b * self.sb + t * self.st;
        &self.data[o + j0..o + j1]
    }
}

/// The tensor itself when its last dimension is contiguous (views such as `z` sliced out of a
/// projection are read in place), else a contiguous copy; `None` unless a 3-D f32 tensor.
fn viewable(t: &FlexTensor) -> Option<std::borrow::Cow<'_, FlexTensor>> {
    if t.dtype() != DType::F32 || t.shape().num_dims() != 3 {
        return None;
    }
    let layout = t.layout();
    let s = layout.strides();
    let in_place = s.len() == 3 && s[2] == 1 && s[0] >= 0 && s[1] >= 0;
    Some(if in_place {
        std::borrow::Cow::Borrowed(t)
    } else {
        std::borrow::Cow::Owned(t.to_contiguous())
    })
}

fn view(t: &FlexTensor) -> View<'_> {
    let layout = t.layout();
    let s = layout.strides();
    View {
        data: t.storage::<f32>(),
        off: layout.start_offset(),
        sb: s[0].unsigned_abs(),
        st: s[1].unsigned_abs(),
    }
}

/// `1 / (1 + exp(-x))`.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + fast_exp(-x))
}

/// Sum of the lanes, as a tree of pairwise additions (vector-friendly, unlike a serial sum).
#[inline(always)]
fn hsum(v: [f32; LANES]) -> f32 {
    const { assert!(LANES.is_power_of_two()) };
    let mut w = v;
    let mut half = LANES / 2;
    while half > 0 {
        for l in 0..half {
            w[l] += w[l + half];
        }
        half /= 2;
    }
    w[0]
}

/// Copies a group's `width` values into a zeroed lane array (lanes past `width` stay zero,
/// which makes their contributions to every reduction zero).
#[inline(always)]
fn lanes(src: &[f32]) -> [f32; LANES] {
    let mut out = [0.0f32; LANES];
    match <&[f32; LANES]>::try_from(src) {
        Ok(full) => out = *full,
        Err(_) => out[..src.len()].copy_from_slice(src),
    }
    out
}

/// Read-only inputs of the fused backward.
#[derive(Clone, Copy)]
struct Inputs<'a> {
    u: View<'a>,
    delta: View<'a>,
    z: View<'a>,
    b: View<'a>,
    c: View<'a>,
    gy: View<'a>,
    d_state: usize,
}

/// One work item: the channels `c0..c0 + width` of batch row `bi`.
struct Item {
    bi: usize,
    c0: usize,
    width: usize,
    /// `A[c0.., n]` as `[d_state][LANES]` (zero past `width`).
    a: Vec<[f32; LANES]>,
    dskip: [f32; LANES],
    bias: [f32; LANES],
    /// Running state of the checkpoint pass, `[d_state][LANES]`.
    h: Vec<[f32; LANES]>,
    /// State at the start of every block, `[block][d_state][LANES]`.
    ckpt: Vec<[f32; LANES]>,
    /// `G`, the gradient carried into the current block from later steps, `[d_state][LANES]`;
    /// `∂L/∂h0` at the end.
    g: Vec<[f32; LANES]>,
    /// Partial sums over this item's time steps of `∂L/∂A`, `∂L/∂D`, `∂L/∂delta_bias`.
    grad_a: Vec<[f32; LANES]>,
    grad_d: [f32; LANES],
    grad_bias: [f32; LANES],
    /// This block's `∂L/∂u`, `∂L/∂delta`, `∂L/∂z`: `[step][LANES]`.
    du: Vec<[f32; LANES]>,
    ddelta: Vec<[f32; LANES]>,
    dz: Vec<[f32; LANES]>,
    /// This block's `∂L/∂B`, `∂L/∂C` summed over this item's channels: `[step][d_state]`.
    db: Vec<f32>,
    dc: Vec<f32>,
}

/// Per-thread scratch of the block walk.
#[derive(Default)]
struct Scratch {
    /// `h[t0-1..t1)`: `[step + 1][d_state][LANES]` (row 0 is the block's checkpoint).
    hs: Vec<[f32; LANES]>,
    /// `Ā[t]`: `[step][d_state][LANES]`.
    abar: Vec<[f32; LANES]>,
    /// `Δ[t]`: `[step][LANES]`.
    dt: Vec<[f32; LANES]>,
    /// `s_y[t] = Σ_n C·h + D·u`: `[step][LANES]`.
    sy: Vec<[f32; LANES]>,
}

/// Advances the item's state over `t0..t1` (eq. 2a), keeping the state at `t0` as checkpoint
/// `blk`.
#[inline(always)]
fn checkpoint_body(x: &Inputs<'_>, it: &mut Item, blk: usize, t0: usize, t1: usize) {
    let n = x.d_state;
    let (c0, c1, bi) = (it.c0, it.c0 + it.width, it.bi);
    it.ckpt[blk * n..(blk + 1) * n].copy_from_slice(&it.h);
    advance(x, &mut it.h, &it.a, &it.bias, bi, c0, c1, t0, t1);
}

/// `h = exp(Δ·A)·h + Δ·B·u` over `t0..t1` for channels `c0..c1` of row `bi` (eq. 2a, 4).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn advance(
    x: &Inputs<'_>,
    h: &mut [[f32; LANES]],
    a: &[[f32; LANES]],
    bias: &[f32; LANES],
    bi: usize,
    c0: usize,
    c1: usize,
    t0: usize,
    t1: usize,
) {
    let n = x.d_state;
    for t in t0..t1 {
        let ut = lanes(x.u.get(bi, t, c0, c1));
        let mut dt = lanes(x.delta.get(bi, t, c0, c1));
        let mut dtu = [0.0f32; LANES];
        for l in 0..LANES {
            // Δ = softplus(delta + bias)
            dt[l] = fast_softplus(dt[l] + bias[l]);
            dtu[l] = dt[l] * ut[l];
        }
        let bt = x.b.get(bi, t, 0, n);
        for ((hk, ak), bk) in h.iter_mut().zip(a).zip(bt) {
            // Work on copies: the compiler cannot tell that `h` and `a` do not overlap, and
            // would not vectorise the lanes otherwise.
            let (ak, mut hv) = (*ak, *hk);
            for l in 0..LANES {
                hv[l] = fast_exp(dt[l] * ak[l]) * hv[l] + dtu[l] * bk;
            }
            *hk = hv;
        }
    }
}

/// Walks block `blk` (`t0..t1`) of one item backwards: recomputes its states from the
/// checkpoint, then runs the reverse recurrence, leaving this block's gradients in the item.
#[inline(always)]
fn block_body(x: &Inputs<'_>, it: &mut Item, sc: &mut Scratch, blk: usize, t0: usize, t1: usize) {
    let n = x.d_state;
    let tl = t1 - t0;
    let (c0, c1, bi) = (it.c0, it.c0 + it.width, it.bi);
    sc.hs.resize((tl + 1) * n, [0.0; LANES]);
    sc.abar.resize(tl * n, [0.0; LANES]);
    sc.dt.resize(tl, [0.0; LANES]);
    sc.sy.resize(tl, [0.0; LANES]);
    it.du.resize(tl, [0.0; LANES]);
    it.ddelta.resize(tl, [0.0; LANES]);
    it.dz.resize(tl, [0.0; LANES]);
    it.db.resize(tl * n, 0.0);
    it.dc.resize(tl * n, 0.0);

    // Recompute Δ, Ā and h over the block (eq. 2a), and s_y (eq. 2b).
    sc.hs[..n].copy_from_slice(&it.ckpt[blk * n..(blk + 1) * n]);
    for i in 0..tl {
        let t = t0 + i;
        let ut = lanes(x.u.get(bi, t, c0, c1));
        let mut dt = lanes(x.delta.get(bi, t, c0, c1));
        let mut dtu = [0.0f32; LANES];
        for l in 0..LANES {
            dt[l] = fast_softplus(dt[l] + it.bias[l]);
            dtu[l] = dt[l] * ut[l];
        }
        let (bt, ct) = (x.b.get(bi, t, 0, n), x.c.get(bi, t, 0, n));
        let (done, rest) = sc.hs.split_at_mut((i + 1) * n);
        let (h_prev, h_cur) = (&done[i * n..], &mut rest[..n]);
        let abar = &mut sc.abar[i * n..(i + 1) * n];
        let mut acc = [0.0f32; LANES];
        for k in 0..n {
            let (ak, hp, bk, ck) = (it.a[k], h_prev[k], bt[k], ct[k]);
            let (mut e, mut hc) = ([0.0f32; LANES], [0.0f32; LANES]);
            for l in 0..LANES {
                e[l] = fast_exp(dt[l] * ak[l]);
                hc[l] = e[l] * hp[l] + dtu[l] * bk;
                acc[l] += ck * hc[l];
            }
            abar[k] = e;
            h_cur[k] = hc;
        }
        for l in 0..LANES {
            sc.sy[i][l] = acc[l] + it.dskip[l] * ut[l];
        }
        sc.dt[i] = dt;
    }

    // Reverse time: G[t] = Ā[t+1]·G[t+1] + C[t]·ḡ[t]; `it.g` holds Ā[t+1]·G[t+1] on entry
    // to step t (h̄_L for the last step of the sequence).
    for i in (0..tl).rev() {
        let t = t0 + i;
        let ut = lanes(x.u.get(bi, t, c0, c1));
        let zt = lanes(x.z.get(bi, t, c0, c1));
        let gyt = lanes(x.gy.get(bi, t, c0, c1));
        let raw = lanes(x.delta.get(bi, t, c0, c1));
        let dt = sc.dt[i];
        let mut gbar = [0.0f32; LANES];
        let mut dtu = [0.0f32; LANES];
        let mut du = [0.0f32; LANES];
        for l in 0..LANES {
            let sz = sigmoid(zt[l]);
            // ḡ = ȳ·SiLU(z); ∂L/∂z = ȳ·s_y·σ(z)·(1 + z·(1 - σ(z)))
            gbar[l] = gyt[l] * zt[l] * sz;
            it.dz[i][l] = gyt[l] * sc.sy[i][l] * sz * (1.0 + zt[l] * (1.0 - sz));
            // ∂L/∂D += ḡ·u; ∂L/∂u starts at ḡ·D
            it.grad_d[l] += gbar[l] * ut[l];
            du[l] = gbar[l] * it.dskip[l];
            dtu[l] = dt[l] * ut[l];
        }
        let (bt, ct) = (x.b.get(bi, t, 0, n), x.c.get(bi, t, 0, n));
        let (h_prev, h_cur) = (&sc.hs[i * n..(i + 1) * n], &sc.hs[(i + 1) * n..(i + 2) * n]);
        let abar = &sc.abar[i * n..(i + 1) * n];
        let (db, dc) = (
            &mut it.db[i * n..(i + 1) * n],
            &mut it.dc[i * n..(i + 1) * n],
        );
        let mut ddt = [0.0f32; LANES];
        for k in 0..n {
            // Copies in, results out (see `advance`).
            let (ak, ek, hp, hc) = (it.a[k], abar[k], h_prev[k], h_cur[k]);
            let (mut gk, mut dak) = (it.g[k], it.grad_a[k]);
            let (bk, ck) = (bt[k], ct[k]);
            let mut sum_b = [0.0f32; LANES];
            let mut sum_c = [0.0f32; LANES];
            for l in 0..LANES {
                // G[t] = (Ā[t+1]·G[t+1]) + C[t]·ḡ[t]
                let g = gk[l] + ck * gbar[l];
                let ah = ek[l] * hp[l];
                // ∂L/∂C += ḡ·h[t]; ∂L/∂B += G·Δ·u
                sum_c[l] = gbar[l] * hc[l];
                sum_b[l] = g * dtu[l];
                // ∂L/∂Δ += G·(A·Ā·h[t-1] + B·u); ∂L/∂A += G·Δ·Ā·h[t-1]; ∂L/∂u += G·Δ·B
                ddt[l] += g * (ak[l] * ah + bk * ut[l]);
                dak[l] += g * dt[l] * ah;
                du[l] += g * dt[l] * bk;
                // what reaches h[t-1]: Ā[t]·G[t]
                gk[l] = g * ek[l];
            }
            it.g[k] = gk;
            it.grad_a[k] = dak;
            db[k] = hsum(sum_b);
            dc[k] = hsum(sum_c);
        }
        for l in 0..LANES {
            // ∂L/∂delta = ∂L/∂Δ·sigmoid(delta + bias)
            let dd = ddt[l] * sigmoid(raw[l] + it.bias[l]);
            it.ddelta[i][l] = dd;
            it.grad_bias[l] += dd;
        }
        it.du[i] = du;
    }
}

/// [`checkpoint_body`] and [`block_body`] compiled for AVX2 + FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA (checked by the caller at run time).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn checkpoint_avx2(x: &Inputs<'_>, it: &mut Item, blk: usize, t0: usize, t1: usize) {
    checkpoint_body(x, it, blk, t0, t1)
}

/// See [`checkpoint_avx2`].
///
/// # Safety
/// The CPU must support AVX2 and FMA (checked by the caller at run time).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(
    x: &Inputs<'_>,
    it: &mut Item,
    sc: &mut Scratch,
    blk: usize,
    t0: usize,
    t1: usize,
) {
    block_body(x, it, sc, blk, t0, t1)
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn checkpoint_item(avx2: bool, x: &Inputs<'_>, it: &mut Item, blk: usize, t0: usize, t1: usize) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` is true only when AVX2 and FMA were detected at run time.
        unsafe { checkpoint_avx2(x, it, blk, t0, t1) };
        return;
    }
    let _ = avx2;
    checkpoint_body(x, it, blk, t0, t1)
}

fn block_item(
    avx2: bool,
    x: &Inputs<'_>,
    it: &mut Item,
    sc: &mut Scratch,
    blk: usize,
    t0: usize,
    t1: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` is true only when AVX2 and FMA were detected at run time.
        unsafe { block_avx2(x, it, sc, blk, t0, t1) };
        return;
    }
    let _ = avx2;
    block_body(x, it, sc, blk, t0, t1)
}

/// The fused CPU backward; falls back to [`scan_backward_reference`] for non-f32 tensors and
/// empty or inconsistent shapes.
///
/// Work items are (batch row, group of [`LANES`] channels), spread over rayon's threads.
/// A first pass keeps every item's state at the start of each block of [`BACK_BLOCK`] steps;
/// then, block by block from the last, every item recomputes its block and walks it
/// backwards. Reductions are race-free and deterministic: each item accumulates its own
/// partial `∂L/∂A`, `∂L/∂D`, `∂L/∂delta_bias` (summed over batch rows at the end) and its
/// own per-step `∂L/∂B`, `∂L/∂C` over its channels (summed over the channel groups of each
/// batch row after every block, in parallel over batch rows).
///
/// # Shapes
/// - `input`: as in [`ScanInput`]
/// - `grad_y`: `[batch, length, d_inner]`; `grad_h`: `[batch, d_inner, d_state]`
/// - returns one gradient per input, shaped like it ([`ScanGrads`])
pub(crate) fn scan_backward_flex(
    input: ScanInput<Flex>,
    grad_y: FlexTensor,
    grad_h: FlexTensor,
) -> ScanGrads<Flex> {
    let shape = input.u.shape().to_vec();
    let d_state = input.a.shape().to_vec().get(1).copied().unwrap_or(0);
    let (batch, len, d_inner) = match shape.as_slice() {
        [b, l, d] => (*b, *l, *d),
        _ => return scan_backward_reference::<Flex>(input, grad_y, grad_h),
    };
    // The host loop indexes by these sizes: anything else (empty or inconsistent shapes) goes
    // to the tensor operations, which handle or report it.
    let seq = [batch, len, d_inner];
    let bc = [batch, len, d_state];
    let state = [batch, d_inner, d_state];
    let shapes_agree = [
        (&input.delta, &seq[..]),
        (&input.z, &seq[..]),
        (&grad_y, &seq[..]),
        (&input.b, &bc[..]),
        (&input.c, &bc[..]),
        (&input.a, &[d_inner, d_state][..]),
        (&input.d, &[d_inner][..]),
        (&input.delta_bias, &[d_inner][..]),
        (&input.h0, &state[..]),
        (&grad_h, &state[..]),
    ]
    .iter()
    .all(|(t, want)| t.shape().to_vec() == *want);
    if batch == 0 || len == 0 || d_inner == 0 || d_state == 0 || !shapes_agree {
        return scan_backward_reference::<Flex>(input, grad_y, grad_h);
    }
    let parts = (
        viewable(&input.u),
        viewable(&input.delta),
        viewable(&input.z),
        viewable(&input.b),
        viewable(&input.c),
        viewable(&grad_y),
        host(&input.a),
        host(&input.d),
        host(&input.delta_bias),
        host(&input.h0),
        host(&grad_h),
    );
    let (
        Some(u),
        Some(delta),
        Some(z),
        Some(bm),
        Some(cm),
        Some(gy),
        Some(a),
        Some(dv),
        Some(bias),
        Some(h0),
        Some(gh),
    ) = parts
    else {
        drop(parts);
        return scan_backward_reference::<Flex>(input, grad_y, grad_h);
    };
    let x = Inputs {
        u: view(&u),
        delta: view(&delta),
        z: view(&z),
        b: view(&bm),
        c: view(&cm),
        gy: view(&gy),
        d_state,
    };
    let n = d_state;
    let nblocks = len.div_ceil(BACK_BLOCK);
    let groups = d_inner.div_ceil(LANES);
    let mut items: Vec<Item> = (0..batch * groups)
        .map(|idx| {
            let (bi, grp) = (idx / groups, idx % groups);
            let c0 = grp * LANES;
            let width = LANES.min(d_inner - c0);
            let mut it = Item {
                bi,
                c0,
                width,
                a: vec![[0.0; LANES]; n],
                dskip: lanes(&dv[c0..c0 + width]),
                bias: lanes(&bias[c0..c0 + width]),
                h: vec![[0.0; LANES]; n],
                ckpt: vec![[0.0; LANES]; nblocks * n],
                g: vec![[0.0; LANES]; n],
                grad_a: vec![[0.0; LANES]; n],
                grad_d: [0.0; LANES],
                grad_bias: [0.0; LANES],
                du: Vec::new(),
                ddelta: Vec::new(),
                dz: Vec::new(),
                db: Vec::new(),
                dc: Vec::new(),
            };
            for (l, ch) in (c0..c0 + width).enumerate() {
                for k in 0..n {
                    let src = (bi * d_inner + ch) * n + k;
                    it.a[k][l] = a[ch * n + k];
                    it.h[k][l] = h0[src];
                    it.g[k][l] = gh[src];
                }
            }
            it
        })
        .collect();
    let avx2 = has_avx2();
    let block = |blk: usize| (blk * BACK_BLOCK, ((blk + 1) * BACK_BLOCK).min(len));

    // Pass 1: checkpoints. Block-major so a block's rows stay in cache across groups.
    for blk in 0..nblocks {
        let (t0, t1) = block(blk);
        items
            .par_iter_mut()
            .for_each(|it| checkpoint_item(avx2, &x, it, blk, t0, t1));
    }

    // Pass 2: blocks from last to first.
    let mut grad_u = vec![0.0f32; batch * len * d_inner];
    let mut grad_delta = vec![0.0f32; batch * len * d_inner];
    let mut grad_z = vec![0.0f32; batch * len * d_inner];
    let mut grad_b = vec![0.0f32; batch * len * n];
    let mut grad_c = vec![0.0f32; batch * len * n];
    for blk in (0..nblocks).rev() {
        let (t0, t1) = block(blk);
        items
            .par_iter_mut()
            .for_each_init(Scratch::default, |sc, it| {
                block_item(avx2, &x, it, sc, blk, t0, t1)
            });
        // Gather this block into the outputs, one batch row per task: each row's items are
        // `items[bi * groups..(bi + 1) * groups]` and write only that row.
        let row_items = items.chunks(groups);
        grad_u
            .par_chunks_mut(len * d_inner)
            .zip(grad_delta.par_chunks_mut(len * d_inner))
            .zip(grad_z.par_chunks_mut(len * d_inner))
            .zip(grad_b.par_chunks_mut(len * n))
            .zip(grad_c.par_chunks_mut(len * n))
            .zip(row_items.collect::<Vec<_>>())
            .for_each(|(((((gu, gd), gz), gb), gc), row)| {
                for it in row {
                    for i in 0..t1 - t0 {
                        let o = (t0 + i) * d_inner + it.c0;
                        let w = it.width;
                        gu[o..o + w].copy_from_slice(&it.du[i][..w]);
                        gd[o..o + w].copy_from_slice(&it.ddelta[i][..w]);
                        gz[o..o + w].copy_from_slice(&it.dz[i][..w]);
                    }
                    // ∂L/∂B, ∂L/∂C: sum over the channel groups of the row.
                    let o = t0 * n;
                    for (dst, src) in gb[o..t1 * n].iter_mut().zip(&it.db) {
                        *dst += *src;
                    }
                    for (dst, src) in gc[o..t1 * n].iter_mut().zip(&it.dc) {
                        *dst += *src;
                    }
                }
            });
    }

    // Reductions over batch rows (A, D, delta_bias are shared by the rows) and ∂L/∂h0.
    let mut grad_a = vec![0.0f32; d_inner * n];
    let mut grad_d = vec![0.0f32; d_inner];
    let mut grad_bias = vec![0.0f32; d_inner];
    let mut grad_h0 = vec![0.0f32; batch * d_inner * n];
    for it in &items {
        for l in 0..it.width {
            let ch = it.c0 + l;
            grad_d[ch] += it.grad_d[l];
            grad_bias[ch] += it.grad_bias[l];
            for k in 0..n {
                grad_a[ch * n + k] += it.grad_a[k][l];
                grad_h0[(it.bi * d_inner + ch) * n + k] = it.g[k][l];
            }
        }
    }
    let t = |v: Vec<f32>, shape: Vec<usize>| FlexTensor::from_data(TensorData::new(v, shape));
    ScanGrads {
        u: t(grad_u, vec![batch, len, d_inner]),
        delta: t(grad_delta, vec![batch, len, d_inner]),
        a: t(grad_a, vec![d_inner, n]),
        b: t(grad_b, vec![batch, len, n]),
        c: t(grad_c, vec![batch, len, n]),
        d: t(grad_d, vec![d_inner]),
        z: t(grad_z, vec![batch, len, d_inner]),
        delta_bias: t(grad_bias, vec![d_inner]),
        h0: t(grad_h0, vec![batch, d_inner, n]),
    }
}

// ---------------------------------------------------------------------------------------------
// Autodiff registration
// ---------------------------------------------------------------------------------------------

/// The forward inputs, kept for the backward step.
struct Saved<B: Backend> {
    u: FloatTensor<B>,
    delta: FloatTensor<B>,
    a: FloatTensor<B>,
    b: FloatTensor<B>,
    c: FloatTensor<B>,
    d: FloatTensor<B>,
    z: FloatTensor<B>,
    delta_bias: FloatTensor<B>,
    h0: FloatTensor<B>,
}

impl<B: Backend> Saved<B> {
    fn input(self) -> ScanInput<B> {
        ScanInput {
            u: self.u,
            delta: self.delta,
            a: self.a,
            b: self.b,
            c: self.c,
            d: self.d,
            z: self.z,
            delta_bias: self.delta_bias,
            h0: self.h0,
        }
    }
}

impl<B: Backend> Clone for Saved<B> {
    fn clone(&self) -> Self {
        Self {
            u: self.u.clone(),
            delta: self.delta.clone(),
            a: self.a.clone(),
            b: self.b.clone(),
            c: self.c.clone(),
            d: self.d.clone(),
            z: self.z.clone(),
            delta_bias: self.delta_bias.clone(),
            h0: self.h0.clone(),
        }
    }
}

impl<B: Backend> std::fmt::Debug for Saved<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Saved")
            .field("u", &self.u.shape())
            .field("a", &self.a.shape())
            .finish_non_exhaustive()
    }
}

/// `y` and the last state in one tensor, so the scan is one node of the autodiff graph:
/// `[batch, len + d_state, d_inner]`, rows `0..len` are `y`, rows `len..` are `h` transposed.
fn pack<B: Backend>(out: ScanOutput<B>) -> FloatTensor<B> {
    B::float_cat(vec![out.y, B::float_swap_dims(out.h, 1, 2)], 1)
}

/// The inverse of [`pack`]: `(y [batch, len, d_inner], h [batch, d_inner, d_state])`.
fn unpack<B: Backend>(packed: FloatTensor<B>, len: usize) -> (FloatTensor<B>, FloatTensor<B>) {
    let rows = dims::<B>(&packed).get(1).copied().unwrap_or(len);
    let y = slice_time::<B>(&packed, 0, len);
    let h = B::float_swap_dims(slice_time::<B>(&packed, len, rows), 1, 2);
    (y, h)
}

/// The backward step of the scan node: splits the packed output gradient and calls the inner
/// backend's `selective_scan_backward`.
#[derive(Debug)]
struct ScanBackward;

impl<B: Backend + SelectiveScanBackend> Backward<B, 9> for ScanBackward {
    type State = Saved<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 9>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let packed = grads.consume::<B>(&ops.node);
        let len = dims::<B>(&ops.state.u).get(1).copied().unwrap_or(0);
        let (grad_y, grad_h) = unpack::<B>(packed, len);
        let g = B::selective_scan_backward(ops.state.input(), grad_y, grad_h);
        let all = [g.u, g.delta, g.a, g.b, g.c, g.d, g.z, g.delta_bias, g.h0];
        for (parent, grad) in ops.parents.into_iter().zip(all) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// `selective_scan` on an autodiff device: the inner backend's scan, registered as one
/// compute-bound node whose backward step is `selective_scan_backward`.
///
/// The two outputs leave the inner backend packed in one tensor (see [`pack`]) and are cut
/// out of it with differentiable slices, so the gradients of `y` and of the last state arrive
/// together in the packed gradient (zeros for an output the loss does not use) and the
/// backward step runs once.
///
/// # Shapes
/// As [`ScanInput`] to [`ScanOutput`].
pub(crate) fn scan_autodiff<B: Backend + SelectiveScanBackend, C: CheckpointStrategy>(
    input: ScanInput<Autodiff<B, C>>,
) -> ScanOutput<Autodiff<B, C>> {
    let shape = input.u.shape().to_vec();
    let (batch, len) = (
        shape.first().copied().unwrap_or(0),
        shape.get(1).copied().unwrap_or(0),
    );
    if batch == 0 || len == 0 {
        // No time steps: the output is empty and the state is unchanged.
        return ScanOutput {
            y: input.u,
            h: input.h0,
        };
    }
    // Guards first: they keep the input nodes alive until the step is registered.
    let nodes = [
        input.u.node(),
        input.delta.node(),
        input.a.node(),
        input.b.node(),
        input.c.node(),
        input.d.node(),
        input.z.node(),
        input.delta_bias.node(),
        input.h0.node(),
    ];
    let inner = Saved::<B> {
        u: input.u.into_primitive(),
        delta: input.delta.into_primitive(),
        a: input.a.into_primitive(),
        b: input.b.into_primitive(),
        c: input.c.into_primitive(),
        d: input.d.into_primitive(),
        z: input.z.into_primitive(),
        delta_bias: input.delta_bias.into_primitive(),
        h0: input.h0.into_primitive(),
    };
    let packed = match ScanBackward.prepare::<C>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let out = B::selective_scan(inner.clone().input());
            prep.finish(inner, pack::<B>(out))
        }
        OpsKind::UnTracked(prep) => prep.finish(pack::<B>(B::selective_scan(inner.input()))),
    };
    let (y, h) = unpack::<Autodiff<B, C>>(packed, len);
    ScanOutput { y, h }
}
