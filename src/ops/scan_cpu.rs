//! Fused selective scan for the CPU backend: one pass over time per (batch, channel) pair,
//! the `d_state` values of the state held in registers/cache, channels spread over rayon's
//! threads. No `[L, d_inner, d_state]` intermediate is formed.

use burn::backend::flex::FlexTensor;
use burn::backend::{DType, Flex, TensorData, TensorMetadata};
use rayon::prelude::*;

use super::scan::{ScanInput, ScanOutput};

fn host(t: &FlexTensor) -> Option<std::borrow::Cow<'_, [f32]>> {
    if t.dtype() != DType::F32 {
        return None;
    }
    match t.as_slice::<f32>() {
        Some(s) if t.is_contiguous() => Some(std::borrow::Cow::Borrowed(s)),
        _ => {
            let c = t.to_contiguous();
            c.as_slice::<f32>()
                .map(|s| std::borrow::Cow::Owned(s.to_vec()))
        }
    }
}

#[inline]
fn softplus(x: f32) -> f32 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

#[inline]
fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Per-channel slices of one (batch row, channel) pair's work.
struct Dims {
    len: usize,
    d_inner: usize,
    d_state: usize,
}

/// The scan for one batch row and one channel; writes `y[t]` for every t (stride `d_inner`)
/// and the final state into `h` (`d_state` values, holding `h0` on entry).
#[allow(clippy::too_many_arguments)]
#[inline]
fn scan_channel(
    dm: &Dims,
    ch: usize,
    u: &[f32],
    delta: &[f32],
    a: &[f32],
    b: &[f32],
    c: &[f32],
    z: &[f32],
    dskip: f32,
    bias: f32,
    h: &mut [f32],
    y: &mut [f32],
) {
    let n = dm.d_state;
    for t in 0..dm.len {
        let i = t * dm.d_inner + ch;
        let dt = softplus(delta[i] + bias);
        let ut = u[i];
        let dtu = dt * ut;
        let bt = &b[t * n..(t + 1) * n];
        let ct = &c[t * n..(t + 1) * n];
        let mut acc = 0.0f32;
        for k in 0..n {
            let hk = (dt * a[k]).exp() * h[k] + dtu * bt[k];
            h[k] = hk;
            acc += hk * ct[k];
        }
        y[t] = (acc + dskip * ut) * silu(z[i]);
    }
}

/// The fused CPU scan; falls back to the reference for non-f32 tensors.
pub(crate) fn scan_flex(input: ScanInput<Flex>) -> ScanOutput<Flex> {
    let shape = input.u.shape().to_vec();
    let d_state = input.a.shape().to_vec().get(1).copied().unwrap_or(0);
    let (batch, len, d_inner) = match shape.as_slice() {
        [b, l, d] => (*b, *l, *d),
        _ => return super::scan_reference::scan_reference::<Flex>(input),
    };
    if batch == 0 || len == 0 || d_inner == 0 || d_state == 0 {
        // Degenerate shapes: nothing to fuse; the reference handles them.
        return super::scan_reference::scan_reference::<Flex>(input);
    }
    let parts = (
        host(&input.u),
        host(&input.delta),
        host(&input.a),
        host(&input.b),
        host(&input.c),
        host(&input.d),
        host(&input.z),
        host(&input.delta_bias),
        host(&input.h0),
    );
    let (
        Some(u),
        Some(delta),
        Some(a),
        Some(bm),
        Some(cm),
        Some(dv),
        Some(z),
        Some(bias),
        Some(h0),
    ) = parts
    else {
        drop(parts);
        return super::scan_reference::scan_reference::<Flex>(input);
    };
    let dm = Dims {
        len,
        d_inner,
        d_state,
    };
    // Work items: (batch row, channel). Each produces y for one channel (time-strided) and
    // its final state.
    let mut h_out = h0.to_vec();
    let mut y_cm = vec![0.0f32; batch * d_inner * len]; // channel-major scratch
    h_out
        .par_chunks_mut(d_state)
        .zip(y_cm.par_chunks_mut(len))
        .enumerate()
        .for_each(|(idx, (h, y))| {
            let bi = idx / d_inner;
            let ch = idx % d_inner;
            let off = bi * len * d_inner;
            let offn = bi * len * d_state;
            scan_channel(
                &dm,
                ch,
                &u[off..off + len * d_inner],
                &delta[off..off + len * d_inner],
                &a[ch * d_state..(ch + 1) * d_state],
                &bm[offn..offn + len * d_state],
                &cm[offn..offn + len * d_state],
                &z[off..off + len * d_inner],
                dv[ch],
                bias[ch],
                h,
                y,
            );
        });
    // Back to time-major [batch, len, d_inner].
    let mut y = vec![0.0f32; batch * len * d_inner];
    y.par_chunks_mut(len * d_inner)
        .enumerate()
        .for_each(|(bi, yb)| {
            for ch in 0..d_inner {
                let src = &y_cm[(bi * d_inner + ch) * len..(bi * d_inner + ch + 1) * len];
                for (t, v) in src.iter().enumerate() {
                    yb[t * d_inner + ch] = *v;
                }
            }
        });
    let y = FlexTensor::from_data(TensorData::new(y, [batch, len, d_inner]));
    let h = FlexTensor::from_data(TensorData::new(h_out, [batch, d_inner, d_state]));
    ScanOutput { y, h }
}
