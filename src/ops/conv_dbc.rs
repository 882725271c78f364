//! The causal convolution + SiLU fused with x_proj and dt_proj, for f16/bf16 activations on
//! CUDA: [`conv_dbc_mma_kernel`].
//!
//! Run one after the other, the convolution ([`block_cube`](super::block_cube)) writes `u`
//! (`[rows, d_inner]`) and the x_proj/dt_proj kernel ([`dbc_mma_kernel`]) reads it back, a
//! round trip of `u` through memory (268 MB per layer and chunk of 262,144 positions at
//! `d_inner` 512 in f16). Here the x_proj kernel computes the convolution itself where it would
//! have loaded `u`: each lane, for its two rows and eight channels of a step, reads the
//! `d_conv` input rows (the first `d_inner` channels of `in_proj`'s output, or the carried
//! window before the chunk; the earlier rows are the neighbouring lanes' current rows, so they
//! come from L1), sums the taps in f32 in the convolution kernel's order, applies SiLU, rounds
//! to the activations' format, writes `u` once (the scan reads it) and passes the same words to
//! the tensor cores. The next window is written by the convolution's small window kernel.
//!
//! The input vectors of a lane's next step are loaded while the current step is summed. Taken
//! separately on the H200 (`ncu`, f16, per layer and chunk of 262,144 positions, d_model 256)
//! the convolution took 185 us and x_proj/dt_proj 276 us (461 us); fused, 527 us without
//! loading ahead (130 registers, 18% occupancy), **439-446 us** with (127 registers, 24%
//! occupancy; long-scoreboard stalls still the largest share). Outputs are bit for bit those
//! of the two kernels (`tests/gpu_scan.rs`; BENCHMARKS.md, twenty-second session).
//!
//! Falls back to the two kernels (or their references) for anything the fused kernel does not
//! take: see [`conv_dbc_cube`]. `GENOMAMBA_CONV_DBC=off` runs the two kernels (for
//! comparisons).

use burn::backend::{DType, TensorMetadata};
use burn::tensor::Shape;
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use cubecl::prelude::*;

use super::block::{ConvDbcInput, ConvDbcOutput, conv_dbc_composed};
use super::block_cube::{MAX_D_CONV, conv_cube, launch_next_window, row_strides};
use super::project_cube::{
    DbcOperands, NamedChoice, dbc_cubes, dbc_finish, dbc_operands, dbc_outputs, dbc_unroll, pack2,
    project_dbc_cube, x_proj_step,
};
use super::scan_cube::{activation_elem, aligned, fast_math, silu};

static CONV_DBC: NamedChoice = NamedChoice::new("GENOMAMBA_CONV_DBC");

static CONV_DBC_LAUNCHES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many times so far the convolution ran fused with x_proj and dt_proj (for tests).
pub fn conv_dbc_launches() -> usize {
    CONV_DBC_LAUNCHES.load(std::sync::atomic::Ordering::Relaxed)
}

/// The convolution followed by x_proj and dt_proj on the CubeCL backend: one kernel where
/// [`conv_dbc_mma`] takes the problem, else the convolution's kernel and then x_proj/dt_proj's
/// (each with its own fallbacks).
pub(crate) fn conv_dbc_cube(input: ConvDbcInput<CubeBackend>) -> ConvDbcOutput<CubeBackend> {
    if let Some(out) = conv_dbc_mma(&input) {
        return out;
    }
    conv_dbc_composed::<CubeBackend>(input, conv_cube, project_dbc_cube)
}

/// [`conv_dbc_mma_kernel`] on `input` if it takes it: what x_proj/dt_proj's tensor-core kernel
/// takes ([`dbc_operands`]), and for the convolution `x` (`[batch, len, ≥ d_inner]`) with
/// adjacent channels, batch and row strides multiples of 8 and data from a 16-byte boundary,
/// the window in the same format, weight and bias f32, `d_conv` from 1 to [`MAX_D_CONV`];
/// `None` otherwise, and when `GENOMAMBA_CONV_DBC=off` (for comparisons).
fn conv_dbc_mma(input: &ConvDbcInput<CubeBackend>) -> Option<ConvDbcOutput<CubeBackend>> {
    if CONV_DBC.get().as_deref() == Some("off") {
        return None;
    }
    let ConvDbcInput {
        x,
        window,
        weight,
        bias,
        w_x,
        w_dt,
        dt_bias,
    } = input;
    let client = x.client.clone();
    if !fast_math(&client) {
        return None;
    }
    let (xs, ws) = (x.shape().to_vec(), weight.shape().to_vec());
    let ([batch, len, cx], [k, d_inner]) = (xs.as_slice(), ws.as_slice()) else {
        return None;
    };
    let (batch, len, cx, k, d_inner) = (*batch, *len, *cx, *k, *d_inner);
    let rows = batch * len;
    let act = x.dtype;
    // 16-bit activations only (the tensor cores'); checked again, with the weights, below.
    if !matches!(act, DType::F16 | DType::BF16) {
        return None;
    }
    let act_elem = activation_elem(act)?;
    let k1 = k.checked_sub(1)?;
    let conv_fits = k <= MAX_D_CONV
        && cx >= d_inner
        && window.shape().to_vec() == [batch, k1, d_inner]
        && bias.shape().to_vec() == [d_inner]
        && window.dtype == act
        && weight.dtype == DType::F32
        && bias.dtype == DType::F32
        // The kernel writes `u` and `Δ` with one row width: dt_proj gives `d_inner` columns.
        && w_dt.shape().to_vec().get(1) == Some(&d_inner);
    if !conv_fits {
        return None;
    }
    let (xs0, xs1) = row_strides(x)?;
    let window = into_contiguous(window.clone());
    let (weight, bias) = (
        into_contiguous(weight.clone()),
        into_contiguous(bias.clone()),
    );
    // `x` and the window are read 8 values (16 bytes) at a time, weight and bias 4 floats.
    let vectors_fit = xs0.is_multiple_of(8)
        && xs1.is_multiple_of(8)
        && aligned(x, 8)
        && aligned(&window, 8)
        && aligned(&weight, 4)
        && aligned(&bias, 4);
    if !vectors_fit {
        return None;
    }
    // Last, as it copies the weights transposed.
    let DbcOperands {
        bf16,
        d_inner: _,
        dt_rank,
        d_state,
        wxt,
        wdtt,
        bias: dbias,
    } = dbc_operands(&client, act, d_inner, rows, w_x, w_dt, dt_bias)?;
    let device = x.device.clone();
    let empty = |shape: [usize; 3]| {
        empty_device_contiguous_dtype(client.clone(), device.clone(), Shape::new(shape), act)
    };
    let u = empty([batch, len, d_inner]);
    let next = empty([batch, k1, d_inner]);
    let (delta, b, c) = dbc_outputs(x, batch, len, d_inner, d_state);
    let (cubes, dim) = dbc_cubes(rows)?;
    let n_x = dt_rank + 2 * d_state;
    let x_span = (batch - 1) * xs0 + (len - 1) * xs1 + d_inner;
    let address = AddressType::from_len(
        x_span
            .max(rows * d_inner)
            .max(n_x * d_inner)
            .max(batch * k1 * d_inner)
            .max(k * d_inner),
    );
    // SAFETY: every warp's tile of 16 rows starts below `rows` (warps past the end return
    // before any access). Row `r` (clamped to `rows - 1`) is position `t = r % len` of batch row
    // `r / len`; the convolution reads `x` at positions `t - k1 + j ≥ 0` (`≤ t < len`), columns
    // below `d_inner ≤ cx`, so below `x_span`, and the window at rows `t + j < k1` (when `t - k1
    // + j < 0`), below `batch·k1·d_inner`; weight rows below `k`, bias below `d_inner`. `x` and
    // the window are read 8 values at a time (their strides and `d_inner` multiples of 8, data
    // on 16-byte boundaries), weight and bias 4 floats (`d_inner` a multiple of 32, aligned).
    // `u` is written at rows below `rows` in whole 16-byte vectors; the rest is as for
    // [`dbc_mma_kernel`] (`project_dbc_mma`).
    unsafe {
        conv_dbc_mma_kernel::launch_unchecked(
            &client,
            cubes,
            dim,
            address,
            8,
            4,
            x.clone().into_tensor_arg(),
            window.clone().into_tensor_arg(),
            weight.into_tensor_arg(),
            bias.into_tensor_arg(),
            wxt.into_tensor_arg(),
            wdtt.into_tensor_arg(),
            dbias.into_tensor_arg(),
            u.clone().into_tensor_arg(),
            delta.clone().into_tensor_arg(),
            b.clone().into_tensor_arg(),
            c.clone().into_tensor_arg(),
            rows,
            len,
            d_inner,
            xs0 / 8,
            xs1 / 8,
            k,
            dt_rank,
            d_state,
            bf16,
            dbc_unroll(d_inner),
            act_elem,
        );
    }
    launch_next_window(
        x,
        &window,
        &next,
        [batch, len, d_inner, xs0, xs1, k1],
        act_elem,
        address,
    );
    CONV_DBC_LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Some(ConvDbcOutput {
        u,
        window: next,
        delta,
        b,
        c,
    })
}

/// `u = SiLU(conv(x) + bias)` (the convolution of [`block_cube`](super::block_cube)), then
/// x_proj and dt_proj on it as [`dbc_mma_kernel`] computes them, 16 rows per warp.
///
/// Where [`dbc_mma_kernel`] loads 16 bytes of `u` (vector `s` of rows `r0 + g` and `r0 + g + 8`)
/// this kernel computes them ([`conv_words`]), writes them to `u` and takes the same words as
/// the tensor cores' operand. `x` (`in_proj`'s output) and the window (`[batch, k - 1,
/// d_inner]`) are read as vectors of 8 values (`W`), weight (`[k, d_inner]`) and bias as 4
/// floats (`V`), which is also the width in 32-bit words of the vectors of `u`, `wxt` and
/// `delta`. `xs0`, `xs1`: the batch and row strides of `x` in vectors of 8.
#[cube(launch_unchecked, create_dummy_kernel, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn conv_dbc_mma_kernel<F: Float, W: Size, V: Size>(
    x: &Tensor<Vector<F, W>>,
    window: &Tensor<Vector<F, W>>,
    weight: &Tensor<Vector<f32, V>>,
    bias: &Tensor<Vector<f32, V>>,
    wxt: &Tensor<Vector<u32, V>>,
    wdtt: &Tensor<u32>,
    dt_bias: &Tensor<f32>,
    u: &mut Tensor<Vector<u32, V>>,
    delta: &mut Tensor<Vector<u32, V>>,
    b: &mut Tensor<u32>,
    c: &mut Tensor<u32>,
    rows: usize,
    len: usize,
    d_inner: usize,
    xs0: usize,
    xs1: usize,
    #[comptime] k: usize,
    #[comptime] dt_rank: usize,
    #[comptime] d_state: usize,
    #[comptime] bf16: bool,
    #[comptime] unroll: usize,
    #[define(F)] _act: ElemType,
) {
    let lane = UNIT_POS_X as usize;
    let group = lane / 4;
    let quad = lane % 4;
    let tile = CUBE_POS_X as usize * CUBE_DIM_Y as usize + UNIT_POS_Y as usize;
    let r0 = tile * 16;
    if r0 >= rows {
        terminate!();
    }
    let n_tiles = comptime!((dt_rank + 2 * d_state) / 8);
    let last = rows - 1;
    let row_lo = r0 + group;
    let row_hi = row_lo + 8;
    let xlo = if row_lo < last { row_lo } else { last };
    let xhi = if row_hi < last { row_hi } else { last };
    let (blo, tlo) = (xlo / len, xlo % len);
    let (bhi, thi) = (xhi / len, xhi % len);
    let k1 = comptime!(k - 1);
    // Row length of `u` in 16-byte vectors (8 values, 4 words); of the weight in 4 floats.
    let kv = d_inner / 8;
    let wv = d_inner / 4;

    let mut acc = Array::<f32>::new(comptime!(n_tiles * 4));
    #[unroll]
    for i in 0..comptime!(n_tiles * 4) {
        acc[i] = 0.0f32;
    }
    // The `k` input vectors of each row for the lane's next step are loaded a step ahead, while
    // this step's are summed (the last step loads its own again); `lo`/`hi`: rows `r0 + g`,
    // `r0 + g + 8`.
    let wlo = (blo * k1 + tlo) * kv;
    let whi = (bhi * k1 + thi) * kv;
    let xlo_at = blo * xs0 + tlo * xs1;
    let xhi_at = bhi * xs0 + thi * xs1;
    let mut next_lo = Array::<Vector<F, W>>::new(k);
    let mut next_hi = Array::<Vector<F, W>>::new(k);
    let mut in_lo = Array::<Vector<F, W>>::new(k);
    let mut in_hi = Array::<Vector<F, W>>::new(k);
    let mut s = quad;
    load_taps::<F, W>(
        x,
        window,
        &mut next_lo,
        xlo_at + s,
        xs1,
        wlo + s,
        kv,
        tlo,
        k,
    );
    load_taps::<F, W>(
        x,
        window,
        &mut next_hi,
        xhi_at + s,
        xs1,
        whi + s,
        kv,
        thi,
        k,
    );
    while s < kv {
        #[unroll]
        for j in 0..k {
            in_lo[j] = next_lo[j];
            in_hi[j] = next_hi[j];
        }
        let nxt = if s + 4 < kv { s + 4 } else { s };
        load_taps::<F, W>(
            x,
            window,
            &mut next_lo,
            xlo_at + nxt,
            xs1,
            wlo + nxt,
            kv,
            tlo,
            k,
        );
        load_taps::<F, W>(
            x,
            window,
            &mut next_hi,
            xhi_at + nxt,
            xs1,
            whi + nxt,
            kv,
            thi,
            k,
        );
        let xa = conv_words::<F, W, V>(&in_lo, weight, bias, s, wv, k, bf16);
        let xb = conv_words::<F, W, V>(&in_hi, weight, bias, s, wv, k, bf16);
        if row_lo < rows {
            u[row_lo * kv + s] = xa;
        }
        if row_hi < rows {
            u[row_hi * kv + s] = xb;
        }
        x_proj_step(xa, xb, wxt, &mut acc, s, kv, group, n_tiles, bf16);
        s += 4;
    }
    dbc_finish(
        &acc, wdtt, dt_bias, delta, b, c, rows, d_inner, row_lo, row_hi, dt_rank, d_state, bf16,
        unroll,
    );
}

/// The `k` input vectors (8 channels each) of the convolution at position `t` of a batch row,
/// into `taps` (tap `j`: position `t - (k-1) + j`): from `x` at `at - (k-1-j)·xs1` where that
/// position is in the chunk (`at` is position `t`'s vector, `xs1` vectors per position), else
/// from the window at `win + j·kv` (`win`: window row `t`'s vector, `kv` per row; row `t + j`
/// holds position `t + j - (k-1)` before the chunk).
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_taps<F: Float, W: Size>(
    x: &Tensor<Vector<F, W>>,
    window: &Tensor<Vector<F, W>>,
    taps: &mut Array<Vector<F, W>>,
    at: usize,
    xs1: usize,
    win: usize,
    kv: usize,
    t: usize,
    #[comptime] k: usize,
) {
    let k1 = comptime!(k - 1);
    taps[k1] = x[at];
    #[unroll]
    for j in 0..k1 {
        taps[j] = if t + j >= k1 {
            x[at - (k1 - j) * xs1]
        } else {
            window[win + j * kv]
        };
    }
}

/// Eight channels (`8s ..`) of `u` from their `k` input vectors `taps` ([`load_taps`]), as four
/// words of two rounded values: `SiLU(bias + Σ_j weight[j]·taps[j])` in f32, the taps summed in
/// the order of the convolution kernel (the last tap first, onto the bias). Weight row `j` is
/// read at `j·wv + 2s` and `+ 1`, the bias at `2s` and `+ 1`.
#[cube]
fn conv_words<F: Float, W: Size, V: Size>(
    taps: &Array<Vector<F, W>>,
    weight: &Tensor<Vector<f32, V>>,
    bias: &Tensor<Vector<f32, V>>,
    s: usize,
    wv: usize,
    #[comptime] k: usize,
    #[comptime] bf16: bool,
) -> Vector<u32, V> {
    let k1 = comptime!(k - 1);
    let mut sum = Array::<f32>::new(8usize);
    let cur = taps[k1];
    let (b0, b1) = (bias[2 * s], bias[2 * s + 1]);
    let (w0, w1) = (weight[k1 * wv + 2 * s], weight[k1 * wv + 2 * s + 1]);
    #[unroll]
    for e in 0..4usize {
        sum[e] = b0.extract(e) + w0.extract(e) * f32::cast_from(cur.extract(e));
        sum[4 + e] = b1.extract(e) + w1.extract(e) * f32::cast_from(cur.extract(4 + e));
    }
    #[unroll]
    for j in 0..k1 {
        let h = taps[j];
        let (wa, wb) = (weight[j * wv + 2 * s], weight[j * wv + 2 * s + 1]);
        #[unroll]
        for e in 0..4usize {
            sum[e] += wa.extract(e) * f32::cast_from(h.extract(e));
            sum[4 + e] += wb.extract(e) * f32::cast_from(h.extract(4 + e));
        }
    }
    let mut out = Vector::<u32, V>::empty();
    #[unroll]
    for e in 0..4usize {
        out.insert(
            e,
            pack2(silu(sum[2 * e], true), silu(sum[2 * e + 1], true), bf16),
        );
    }
    out
}

/// The CUDA C++ of [`conv_dbc_mma_kernel`] for an sm_90 device (an H200), without a GPU, as
/// the d_model 256 model runs it (`d_inner` 512, `d_conv` 4, `dt_rank` and `d_state` 16) with
/// 16-bit activations (`bf16` or f16): for reading the generated code and its machine code
/// (`bench/nvrtc_sass.sh`).
#[cfg(feature = "cuda")]
pub fn conv_dbc_cuda_source(bf16: bool) -> Result<String, String> {
    use super::scan_cube::Sm90;
    use cubecl::CubeKernel;
    use cubecl::ir::FloatKind;
    let mut sm90 = Sm90::new();
    let [x, window, weight, bias, wxt, wdtt, dt_bias, u, delta, b, c] =
        std::array::from_fn(|_| Sm90::arg(8));
    let act = if bf16 {
        FloatKind::BF16
    } else {
        FloatKind::F16
    };
    let kernel = conv_dbc_mma_kernel::create_dummy_kernel(
        sm90.props.clone(),
        sm90.target.clone(),
        CubeCount::new_1d(1),
        CubeDim::new_2d(32, 4),
        // As the model's chunks run it (offsets below 2^32): the machine code's registers are
        // then those of the device's (127 on the H200), not the 64-bit offsets' (142).
        AddressType::U32,
        8,
        4,
        x,
        window,
        weight,
        bias,
        wxt,
        wdtt,
        dt_bias,
        u,
        delta,
        b,
        c,
        1,   // rows
        1,   // len
        512, // d_inner
        128, // xs0
        128, // xs1
        4,   // d_conv
        16,  // dt_rank
        16,  // d_state
        bf16,
        dbc_unroll(512),
        ElemType::Float(act),
    );
    sm90.compile("conv_dbc_mma", kernel.define())
        .map(|(_, source)| source)
}

#[cfg(all(test, feature = "cuda"))]
mod tests {
    #[test]
    fn conv_dbc_kernel_compiles_to_tensor_core_instructions() {
        for bf16 in [false, true] {
            let source = super::conv_dbc_cuda_source(bf16).unwrap();
            crate::ops::project_cube::assert_tensor_core_mma(
                &format!("conv_dbc_bf16_{bf16}"),
                &source,
                bf16,
            );
            // `x` and the window are read as 8 values, `u` written as 4 words.
            let half = if bf16 { "__nv_bfloat16" } else { "__half" };
            assert!(source.contains(half), "bf16 {bf16}: no {half}");
        }
    }
}
