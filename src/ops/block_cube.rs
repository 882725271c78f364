//! The causal depthwise convolution fused with SiLU as CubeCL kernels, for the CubeCL backend
//! (CUDA devices).
//!
//! The tensor-operation reference (see [`block`](super::block)) concatenates the carried window
//! with the chunk, slices it once per tap, and runs bias and SiLU as further operations: a copy
//! of the chunk's `x` branch, one copy per tap, and the element-wise passes, each reading and
//! writing `[batch, len, d_inner]` floats. Here each thread owns a few adjacent channels (up to
//! 16 bytes of them, read and written as one vector) and a run of consecutive positions: it
//! reads its inputs straight from `in_proj`'s output (the `x` branch is the first `d_inner`
//! channels of each row, read through the row strides, so the slice is never copied) or,
//! before the chunk, from the carried window; keeps the last `d_conv - 1` inputs in registers,
//! so each input is read once; adds the bias; applies SiLU (on CUDA with the scan's
//! one-instruction `exp2` and reciprocal, see [`scan_cube`](super::scan_cube)); and writes `u`
//! once. Adjacent threads own adjacent channels, so every read and write is coalesced. A
//! second, small launch writes the next window (`[batch, d_conv - 1, d_inner]`). In the model
//! on CUDA in f16/bf16 the convolution runs inside x_proj/dt_proj's tensor-core kernel instead
//! ([`conv_dbc`](super::conv_dbc)), which reuses that window launch.
//!
//! `x`, the window and the outputs may be f32, f16 or bf16 (one format; the sums are f32),
//! weight and bias f32. Other formats, channels that are not adjacent in memory, and empty
//! shapes go to the reference.
//!
//! The residual add between two blocks and the next block's RMSNorm are one kernel
//! ([`add_norm_kernel`]): one plane per position reads the residual row and the block's output
//! once, writes their f32 sum, reduces the sum of squares across the plane, and writes the
//! norm in the next block's activation format. As tensor operations under Burn's fusion the
//! same work took an add, a cast, a reduction and an element-wise pass (2.3 ms of GPU time
//! per chunk of 65,536 positions at d_model 256 x 16 layers on an H200); the kernel takes
//! 0.9 ms, near its bytes' floor (BENCHMARKS.md).

use burn::backend::{DType, TensorMetadata};
use burn::tensor::Shape;
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;
use cubecl::{CubeDim, calculate_cube_count_elemwise};

use burn::tensor::FloatDType;

use super::block::{
    AddNormInput, AddNormOutput, ConvInput, ConvOutput, add_norm_reference, conv_reference,
};
use super::scan_cube::{activation_elem, aligned, fast_math, silu};

/// Threads per cube.
const CUBE_THREADS: u32 = 256;

/// Largest `d_conv` compiled (the taps are unrolled).
pub const MAX_D_CONV: usize = 16;

/// Consecutive positions each thread of [`conv_silu_kernel`] computes.
const RUN: usize = 8;

/// `u[b, t, d] = SiLU(bias[d] + Σ_j weight[j, d] · input(b, t - (k-1) + j, d))`, where
/// `input(b, p, d)` is `x[b, p, d]` for `p >= 0` and the window's row `k - 1 + p` before.
///
/// Thread `(b·runs + r)·(d_inner / vec) + g` computes positions `r·RUN .. r·RUN + RUN` (those
/// below `len`) of channels `g·vec .. g·vec + vec`, keeping the last `k - 1` inputs and the
/// weights in registers, so each input is read once; every tensor is read and written `vec`
/// values at a time. `x` is read at `b·xs0 + p·xs1 + g` (strides in vectors); `d_inner` counts
/// vectors.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn conv_silu_kernel<F: Float, V: Size>(
    x: &Tensor<Vector<F, V>>,
    window: &Tensor<Vector<F, V>>,
    weight: &Tensor<Vector<f32, V>>,
    bias: &Tensor<Vector<f32, V>>,
    u: &mut Tensor<Vector<F, V>>,
    batch: usize,
    len: usize,
    d_inner: usize,
    runs: usize,
    xs0: usize,
    xs1: usize,
    #[comptime] k: usize,
    #[comptime] vec: usize,
    #[comptime] fast: bool,
    #[define(F)] _act: ElemType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= batch * runs * d_inner {
        terminate!();
    }
    let ch = pos % d_inner;
    let br = pos / d_inner;
    let t0 = (br % runs) * RUN;
    let b = br / runs;
    let k1 = comptime!(k - 1);
    // w[j·vec + e]: tap j of channel g·vec + e.
    let mut w = Array::<f32>::new(k * vec);
    // hist[j·vec + e]: the input at position t - k1 + j for the next output t (j < k1).
    let mut hist = Array::<f32>::new(k * vec);
    #[unroll]
    for j in 0..k {
        let wq = weight[j * d_inner + ch];
        #[unroll]
        for e in 0..vec {
            w[j * vec + e] = wq.extract(e);
        }
    }
    #[unroll]
    for j in 0..k1 {
        // Input position t0 - k1 + j: in the chunk when t0 + j >= k1, else window row t0 + j.
        let hq = if t0 + j >= k1 {
            x[b * xs0 + (t0 + j - k1) * xs1 + ch]
        } else {
            window[(b * k1 + t0 + j) * d_inner + ch]
        };
        #[unroll]
        for e in 0..vec {
            hist[j * vec + e] = f32::cast_from(hq.extract(e));
        }
    }
    let bias_ch = bias[ch];
    // All of the run's inputs are loaded before any output is stored: the compiler may not
    // move a load of `x` past a store to `u` (they could alias), so loading each position in
    // its own iteration would leave one load in flight per thread at a time.
    let mut run = Array::<Vector<F, V>>::new(RUN);
    #[unroll]
    for i in 0..RUN {
        let t = t0 + i;
        // Past `len` (the last run), position `len - 1` again; those are not stored.
        let tc = if t < len { t } else { len - 1 };
        run[i] = x[b * xs0 + tc * xs1 + ch];
    }
    #[unroll]
    for i in 0..RUN {
        let t = t0 + i;
        if t < len {
            let cur = run[i];
            let mut out = Vector::<F, V>::empty();
            #[unroll]
            for e in 0..vec {
                let c = f32::cast_from(cur.extract(e));
                let mut acc = bias_ch.extract(e) + w[k1 * vec + e] * c;
                #[unroll]
                for j in 0..k1 {
                    acc += w[j * vec + e] * hist[j * vec + e];
                }
                #[unroll]
                for j in 0..k1 {
                    if j + 1 < k1 {
                        hist[j * vec + e] = hist[(j + 1) * vec + e];
                    } else {
                        hist[j * vec + e] = c;
                    }
                }
                out.insert(e, F::cast_from(silu(acc, fast)));
            }
            u[(b * len + t) * d_inner + ch] = out;
        }
    }
}

/// The window after the chunk: row `r` is the input at position `len - k1 + r`.
///
/// Thread `(b·k1 + r)·d_inner + d`.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn conv_window_kernel<F: Float>(
    x: &Tensor<F>,
    window: &Tensor<F>,
    next: &mut Tensor<F>,
    batch: usize,
    len: usize,
    d_inner: usize,
    xs0: usize,
    xs1: usize,
    #[comptime] k1: usize,
    #[define(F)] _act: ElemType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= batch * k1 * d_inner {
        terminate!();
    }
    let ch = pos % d_inner;
    let br = pos / d_inner;
    let r = br % k1;
    let b = br / k1;
    if len + r >= k1 {
        next[pos] = x[b * xs0 + (len + r - k1) * xs1 + ch];
    } else {
        // A chunk shorter than the window: the row comes from the old window, shifted.
        next[pos] = window[(b * k1 + len + r) * d_inner + ch];
    }
}

/// Channels each thread of [`conv_silu_kernel`] reads and writes at once: the most (16 bytes of
/// activations, at most 8) that divide `d` and the row strides of `x`, with every tensor's data
/// starting on a vector boundary. The environment variable `GENOMAMBA_CONV_VEC=1` keeps one
/// (for A/B timing runs; results do not depend on it).
fn conv_vector_width(
    act: DType,
    d: usize,
    xs0: usize,
    xs1: usize,
    tensors: [&CubeTensor; 4],
) -> usize {
    static SCALAR: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *SCALAR.get_or_init(|| std::env::var("GENOMAMBA_CONV_VEC").as_deref() == Ok("1")) {
        return 1;
    }
    let widest = (16 / act.size()).clamp(1, 8);
    [8, 4, 2]
        .into_iter()
        .find(|&v| {
            v <= widest
                && [d, xs0, xs1].iter().all(|s| s.is_multiple_of(v))
                && tensors.iter().all(|t| aligned(t, v))
        })
        .unwrap_or(1)
}

/// Batch and row strides of a `[batch, len, channels]` tensor whose channels are adjacent
/// (`None` when they are not, or the layout is tiled).
pub(crate) fn row_strides(t: &CubeTensor) -> Option<(usize, usize)> {
    if t.meta.is_tiled() {
        return None;
    }
    match &t.meta.strides()[..] {
        [s0, s1, 1] => Some((*s0, *s1)),
        _ => None,
    }
}

/// The fused convolution; falls back to the reference for other formats, unexpected shapes
/// or layouts, `d_conv` of 0 or above [`MAX_D_CONV`], and empty shapes.
pub(crate) fn conv_cube(input: ConvInput<CubeBackend>) -> ConvOutput<CubeBackend> {
    let xshape = input.x.shape().to_vec();
    let wshape = input.weight.shape().to_vec();
    let (batch, len, cx) = match xshape.as_slice() {
        [b, l, c] => (*b, *l, *c),
        _ => return conv_reference::<CubeBackend>(input),
    };
    let (k, d) = match wshape.as_slice() {
        [k, d] => (*k, *d),
        _ => return conv_reference::<CubeBackend>(input),
    };
    let shapes_ok = input.window.shape().to_vec() == [batch, k.saturating_sub(1), d]
        && input.bias.shape().to_vec() == [d];
    let act = input.x.dtype;
    let formats = input.window.dtype == act
        && [&input.weight, &input.bias]
            .iter()
            .all(|t| t.dtype == DType::F32);
    let strides = row_strides(&input.x);
    let (Some((xs0, xs1)), Some(act_elem), true, true) =
        (strides, activation_elem(act), shapes_ok, formats)
    else {
        return conv_reference::<CubeBackend>(input);
    };
    if batch == 0 || len == 0 || d == 0 || cx < d || k == 0 || k > MAX_D_CONV {
        return conv_reference::<CubeBackend>(input);
    }
    let ConvInput {
        x,
        window,
        weight,
        bias,
    } = input;
    let [window, weight, bias] = [window, weight, bias].map(into_contiguous);
    let client = x.client.clone();
    let device = x.device.clone();
    let empty = |shape: [usize; 3]| {
        empty_device_contiguous_dtype(
            client.clone(),
            device.clone(),
            Shape::from(shape.to_vec()),
            act,
        )
    };
    let u = empty([batch, len, d]);
    let k1 = k - 1;
    let next = empty([batch, k1, d]);
    // The furthest element read from `x` is at most `(batch-1)·xs0 + (len-1)·xs1 + d - 1`.
    let x_span = (batch - 1) * xs0 + (len - 1) * xs1 + d;
    let address = AddressType::from_len(x_span.max(batch * len * d).max(batch * k1 * d));
    let dim = CubeDim::new_1d(CUBE_THREADS);
    let runs = len.div_ceil(RUN);
    let vec = conv_vector_width(act, d, xs0, xs1, [&x, &window, &weight, &bias]);
    let count = calculate_cube_count_elemwise(&client, batch * runs * (d / vec), dim);
    // SAFETY: threads past `batch·runs·d/vec` return at once; for the others the vector
    // `ch < d/vec`, `b < batch`, and positions are written and read only below `len`
    // (`t < len`; history rows `t0 + j - k1 < t0 < len`), so every `x` index is below
    // `x_span` (the view's extent, `d <= cx`), every window index below `batch·k1·d`
    // (rows `t0 + j < k1` only), weights below `k·d`, and `u` has `batch·len·d` elements
    // (all in vectors of `vec`, which divides `d` and the strides of `x`, every tensor's data
    // starting on a vector boundary). Window, weight and bias are contiguous with the checked
    // shapes.
    unsafe {
        conv_silu_kernel::launch_unchecked(
            &client,
            count,
            dim,
            address,
            vec,
            x.clone().into_tensor_arg(),
            window.clone().into_tensor_arg(),
            weight.into_tensor_arg(),
            bias.into_tensor_arg(),
            u.clone().into_tensor_arg(),
            batch,
            len,
            d / vec,
            runs,
            xs0 / vec,
            xs1 / vec,
            k,
            vec,
            fast_math(&client),
            act_elem,
        );
    }
    launch_next_window(
        &x,
        &window,
        &next,
        [batch, len, d, xs0, xs1, k1],
        act_elem,
        address,
    );
    ConvOutput { u, window: next }
}

/// Launches [`conv_window_kernel`]: the window after a chunk of `x` (`[batch, len, ≥ d]`,
/// strides `xs0`, `xs1`) into `next` (`[batch, k1, d]`, contiguous), from `x` and the window
/// before it (`[batch, k1, d]`, contiguous); nothing when `k1` is 0. `address` must cover `x`'s
/// extent and `batch·k1·d`.
pub(crate) fn launch_next_window(
    x: &CubeTensor,
    window: &CubeTensor,
    next: &CubeTensor,
    [batch, len, d, xs0, xs1, k1]: [usize; 6],
    act_elem: ElemType,
    address: AddressType,
) {
    if k1 == 0 {
        return;
    }
    let client = x.client.clone();
    let dim = CubeDim::new_1d(CUBE_THREADS);
    let count = calculate_cube_count_elemwise(&client, batch * k1 * d, dim);
    // SAFETY: threads past `batch·k1·d` return at once; `r < k1`, so `x` rows read are
    // `len + r - k1 < len` and window rows `len + r < k1` (only when `len + r < k1`).
    unsafe {
        conv_window_kernel::launch_unchecked(
            &client,
            count,
            dim,
            address,
            x.clone().into_tensor_arg(),
            window.clone().into_tensor_arg(),
            next.clone().into_tensor_arg(),
            batch,
            len,
            d,
            xs0,
            xs1,
            k1,
            act_elem,
        );
    }
}

/// `sum = x + y` (f32) and `normed = sum / sqrt(mean(sum²) + eps) · weight` (in `G`), per row
/// of `d` elements.
///
/// The cube is `plane × rows-per-cube`; the units along x form one plane and own one row,
/// unit `i` the elements `i, i + plane, ...` (so each plane-wide access is contiguous). The
/// sum of squares is reduced across the plane (`plane == false` where planes have one unit,
/// as on CubeCL's CPU runtime: a unit then owns a whole row). The second pass reads back the
/// sums this unit wrote.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn add_norm_kernel<F: Float, G: Float>(
    x: &Tensor<f32>,
    y: &Tensor<F>,
    weight: &Tensor<f32>,
    sum: &mut Tensor<f32>,
    normed: &mut Tensor<G>,
    rows: usize,
    d: usize,
    eps: f32,
    #[comptime] plane: bool,
    #[comptime] write_sum: bool,
    #[define(F)] _y_format: ElemType,
    #[define(G)] _out_format: ElemType,
) {
    let step = CUBE_DIM_X as usize;
    let row = ABSOLUTE_POS / step;
    if row >= rows {
        terminate!();
    }
    let lane = UNIT_POS_X as usize;
    let base = row * d;
    // Elements lane, lane + step, ... below d (none when lane >= d).
    let n = (d + step - 1 - lane) / step;
    let mut ss = 0.0f32;
    for i in 0..n {
        let c = base + lane + i * step;
        let v = x[c] + f32::cast_from(y[c]);
        if write_sum {
            sum[c] = v;
        }
        ss += v * v;
    }
    if comptime!(plane) {
        ss = plane_sum(ss);
    }
    let inv = 1.0f32 / (ss / f32::cast_from(d) + eps).sqrt();
    for i in 0..n {
        let j = lane + i * step;
        let c = base + j;
        // The sum this unit wrote, or (not written) the same sum again from its inputs.
        let v = if write_sum {
            sum[c]
        } else {
            x[c] + f32::cast_from(y[c])
        };
        normed[c] = G::cast_from(v * inv * weight[j]);
    }
}

/// The fused residual add and RMSNorm; falls back to the reference for a residual or weight
/// that is not f32, formats the kernels do not take, mismatched shapes, and empty shapes.
pub(crate) fn add_norm_cube(
    input: AddNormInput<CubeBackend>,
    eps: f64,
    out: FloatDType,
) -> AddNormOutput<CubeBackend> {
    add_norm_cube_with(input, eps, out, true)
}

/// [`add_norm_cube`]'s norm alone, in f32 (the final norm): the kernel does not write the sum.
pub(crate) fn add_norm_only_cube(input: AddNormInput<CubeBackend>, eps: f64) -> CubeTensor {
    add_norm_cube_with(input, eps, FloatDType::F32, false).normed
}

/// [`add_norm_cube`], writing the sum only with `write_sum` (else `sum` is a one-element
/// placeholder).
fn add_norm_cube_with(
    input: AddNormInput<CubeBackend>,
    eps: f64,
    out: FloatDType,
    write_sum: bool,
) -> AddNormOutput<CubeBackend> {
    let xshape = input.x.shape().to_vec();
    let d = xshape.last().copied().unwrap_or(0);
    let rows: usize = xshape.iter().take(xshape.len().saturating_sub(1)).product();
    let out_dtype = DType::from(out);
    let elems = (activation_elem(input.y.dtype), activation_elem(out_dtype));
    let ok = input.y.shape().to_vec() == xshape
        && input.weight.shape().to_vec() == [d]
        && input.x.dtype == DType::F32
        && input.weight.dtype == DType::F32
        && d > 0
        && rows > 0;
    let (Some(y_elem), Some(out_elem), true) = (elems.0, elems.1, ok) else {
        return add_norm_reference::<CubeBackend>(input, eps, out);
    };
    let AddNormInput { x, y, weight } = input;
    let [x, y, weight] = [x, y, weight].map(into_contiguous);
    let client = x.client.clone();
    let device = x.device.clone();
    let shape = Shape::from(xshape);
    let sum_shape = if write_sum {
        shape.clone()
    } else {
        Shape::new([1])
    };
    let sum = empty_device_contiguous_dtype(client.clone(), device.clone(), sum_shape, DType::F32);
    let normed = empty_device_contiguous_dtype(client.clone(), device, shape, out_dtype);
    let plane = client.properties().hardware.plane_size_max.max(1);
    let dim = CubeDim::new_2d(plane, (CUBE_THREADS / plane).max(1));
    let count = calculate_cube_count_elemwise(&client, rows * plane as usize, dim);
    let address = AddressType::from_len(rows * d);
    // SAFETY: units whose row is at or past `rows` return at once (a whole plane together, so
    // the plane reduction sees full planes); the others touch elements `row·d + j` with
    // `j < d` of contiguous `[rows, d]` tensors (`sum` only with `write_sum`), and `weight[j]`
    // of the `[d]` weight.
    unsafe {
        add_norm_kernel::launch_unchecked(
            &client,
            count,
            dim,
            address,
            x.into_tensor_arg(),
            y.into_tensor_arg(),
            weight.into_tensor_arg(),
            sum.clone().into_tensor_arg(),
            normed.clone().into_tensor_arg(),
            rows,
            d,
            eps as f32,
            plane > 1,
            write_sum,
            y_elem,
            out_elem,
        );
    }
    AddNormOutput { sum, normed }
}
