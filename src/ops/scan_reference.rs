//! The reference selective scan, in plain tensor operations of any backend.
//!
//! Time is processed in blocks of [`TIME_BLOCK`] steps: for one block the discretised
//! `exp(Δ·A)` and `Δ·B·u` are formed as `[batch, block, d_inner, d_state]` tensors, the
//! recurrence runs step by step inside the block, and `y` is read out with `C` for the whole
//! block at once. Memory is therefore bounded by the block, never by the sequence length.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, DType, Scalar, TensorMetadata};
use burn::tensor::{FloatDType, Shape, Slice};

use super::scan::{ScanInput, ScanOutput};

/// Time steps per block of the reference scan.
pub const TIME_BLOCK: usize = 32;

fn dims<B: Backend>(t: &FloatTensor<B>) -> Vec<usize> {
    t.shape().to_vec()
}

fn slice_time<B: Backend>(t: &FloatTensor<B>, t0: usize, t1: usize) -> FloatTensor<B> {
    let slices: [Slice; 3] = [(..).into(), (t0..t1).into(), (..).into()];
    B::float_slice(t.clone(), &slices)
}

/// `t` as f32 (unchanged when it already is).
pub(crate) fn to_f32<B: Backend>(t: FloatTensor<B>) -> FloatTensor<B> {
    to_dtype::<B>(t, DType::F32)
}

/// `t` in the float format `dtype` (unchanged when it already is).
pub(crate) fn to_dtype<B: Backend>(t: FloatTensor<B>, dtype: DType) -> FloatTensor<B> {
    if t.dtype() == dtype {
        t
    } else {
        B::float_cast(t, FloatDType::from(dtype))
    }
}

/// Numerically stable softplus: `max(x, 0) + log1p(exp(-|x|))`.
pub(crate) fn softplus<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let pos = B::float_clamp_min(x.clone(), Scalar::from(0.0f32));
    let tail = B::float_log1p(B::float_exp(B::float_neg(B::float_abs(x))));
    B::float_add(pos, tail)
}

/// `x · sigmoid(x)`.
pub(crate) fn silu<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    B::float_mul(x.clone(), B::sigmoid(x))
}

/// The reference selective scan; shapes and semantics as in [`ScanInput`].
///
/// Computes in f32 whatever the inputs' formats: inputs in a half format are widened first,
/// `y` is returned in the format of `u` and the last state in f32.
pub fn scan_reference<B: Backend>(input: ScanInput<B>) -> ScanOutput<B> {
    scan_reference_with::<B>(input, true, true)
}

/// [`scan_reference`], or with `activate` false the scan whose `delta` is already activated:
/// `Δ = delta + delta_bias`, without the softplus (`selective_scan_activated`); with
/// `silu_gate` false, `z` is the gate itself (already `SiLU(z)`, `selective_scan_gated`) and
/// multiplies the output as it is.
pub fn scan_reference_with<B: Backend>(
    input: ScanInput<B>,
    activate: bool,
    silu_gate: bool,
) -> ScanOutput<B> {
    let act = input.u.dtype();
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
    } = input.map(to_f32::<B>);
    let [batch, len, d_inner] = <[usize; 3]>::try_from(dims::<B>(&u)).unwrap_or([0, 0, 0]);
    let d_state = dims::<B>(&a).get(1).copied().unwrap_or(0);
    if batch == 0 || len == 0 {
        // No time steps: the output is empty and the state is unchanged.
        return ScanOutput {
            y: to_dtype::<B>(u, act),
            h: h0,
        };
    }

    // Δ = softplus(delta + bias)   (Algorithm 2, line 5-6), or `delta + bias` when `delta`
    // is already activated.
    let bias = B::float_reshape(delta_bias, Shape::new([1, 1, d_inner]));
    let delta = B::float_add(delta, bias);
    let delta = if activate {
        softplus::<B>(delta)
    } else {
        delta
    };
    let a4 = B::float_reshape(a, Shape::new([1, 1, d_inner, d_state]));

    let mut h = h0;
    let mut ys = Vec::with_capacity(len.div_ceil(TIME_BLOCK));
    let mut t0 = 0;
    while t0 < len {
        let t1 = (t0 + TIME_BLOCK).min(len);
        let tl = t1 - t0;
        let dt = B::float_reshape(
            slice_time::<B>(&delta, t0, t1),
            Shape::new([batch, tl, d_inner, 1]),
        );
        let ut = B::float_reshape(
            slice_time::<B>(&u, t0, t1),
            Shape::new([batch, tl, d_inner, 1]),
        );
        let bt = B::float_reshape(
            slice_time::<B>(&b, t0, t1),
            Shape::new([batch, tl, 1, d_state]),
        );
        let ct = B::float_reshape(
            slice_time::<B>(&c, t0, t1),
            Shape::new([batch, tl, 1, d_state]),
        );
        // Ā = exp(Δ·A) (eq. 4, zero-order hold), B̄u = Δ·B·u (Euler approximation of B̄).
        let da = B::float_exp(B::float_mul(dt.clone(), a4.clone()));
        let dbu = B::float_mul(B::float_mul(dt, ut), bt);
        let mut hs = Vec::with_capacity(tl);
        for i in 0..tl {
            let step: [Slice; 4] = [(..).into(), (i..i + 1).into(), (..).into(), (..).into()];
            let da_i = B::float_reshape(
                B::float_slice(da.clone(), &step),
                Shape::new([batch, d_inner, d_state]),
            );
            let dbu_i = B::float_reshape(
                B::float_slice(dbu.clone(), &step),
                Shape::new([batch, d_inner, d_state]),
            );
            // h[t] = Ā[t] ⊙ h[t-1] + B̄u[t]   (eq. 2a)
            h = B::float_add(B::float_mul(da_i, h), dbu_i);
            hs.push(B::float_reshape(
                h.clone(),
                Shape::new([batch, 1, d_inner, d_state]),
            ));
        }
        let hblock = B::float_cat(hs, 1);
        // y[t] = C[t]·h[t]   (eq. 2b)
        let y = B::float_sum_dim(B::float_mul(hblock, ct), 3);
        ys.push(B::float_reshape(y, Shape::new([batch, tl, d_inner])));
        t0 = t1;
    }
    let y = B::float_cat(ys, 1);
    // + D·u, then gate with SiLU(z) (or with `z` where it is the gate already).
    let dskip = B::float_reshape(d, Shape::new([1, 1, d_inner]));
    let y = B::float_add(y, B::float_mul(u, dskip));
    let gate = if silu_gate { silu::<B>(z) } else { z };
    let y = B::float_mul(y, gate);
    ScanOutput {
        y: to_dtype::<B>(y, act),
        h,
    }
}
