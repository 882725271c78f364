//! The other per-position operations of a Mamba block, as a backend extension: the causal
//! depthwise convolution over a carried window fused with SiLU, RMSNorm, the residual add
//! between blocks fused with the next RMSNorm, and the projections (`x · w`, which the CubeCL
//! backend routes to a chosen matrix-product kernel).
//!
//! Like the scan, each has a reference in plain tensor operations (the default body, which
//! every backend and autodiff get) and a fused, multi-threaded host loop for the CPU backend.

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, Backend, DType, Dispatch, ExtensionType, Flex, Scalar, TensorData, TensorMetadata,
    backend_extension,
};
use burn::tensor::{FloatDType, Shape, Slice, Tensor};
use rayon::prelude::*;

use super::scan_cpu::{fast_exp, host};
use super::scan_reference::{softplus, to_dtype, to_f32};

/// Inputs of the causal convolution.
///
/// # Shapes
/// - `x`: `[batch, length, channels]` where `channels >= d_inner`; the convolution reads
///   channels `0..d_inner` (the conv branch of `in_proj`'s output)
/// - `window`: `[batch, d_conv - 1, d_inner]`, the inputs before this chunk
/// - `weight`: `[d_conv, d_inner]`; tap `k` multiplies `x[t - (d_conv - 1) + k]`
/// - `bias`: `[d_inner]`
#[derive(ExtensionType)]
#[extension_type(fusion: cfg(feature = "cube"))]
pub struct ConvInput<B: Backend> {
    /// Chunk input.
    pub x: FloatTensor<B>,
    /// Carried window.
    pub window: FloatTensor<B>,
    /// Depthwise weights.
    pub weight: FloatTensor<B>,
    /// Bias (zeros when the model has none).
    pub bias: FloatTensor<B>,
}

/// Outputs of the causal convolution.
///
/// # Shapes
/// - `u`: `[batch, length, d_inner]`, `SiLU(conv(x) + bias)`
/// - `window`: `[batch, d_conv - 1, d_inner]`, the window after this chunk
#[derive(ExtensionType)]
#[extension_type(fusion: cfg(feature = "cube"))]
pub struct ConvOutput<B: Backend> {
    /// Activated output.
    pub u: FloatTensor<B>,
    /// Next window.
    pub window: FloatTensor<B>,
}

/// Inputs of the residual add fused with RMSNorm.
///
/// # Shapes
/// - `x`: `[batch, length, d_model]`, the residual stream (f32)
/// - `y`: `[batch, length, d_model]`, what a block adds to it (any float format)
/// - `weight`: `[d_model]`, the norm's scale (f32)
#[derive(ExtensionType)]
#[extension_type(fusion: cfg(feature = "cube"))]
pub struct AddNormInput<B: Backend> {
    /// Residual stream.
    pub x: FloatTensor<B>,
    /// Block output added to it.
    pub y: FloatTensor<B>,
    /// Norm scale.
    pub weight: FloatTensor<B>,
}

/// Outputs of the residual add fused with RMSNorm.
///
/// # Shapes
/// - `sum`: `[batch, length, d_model]`, `x + y` in f32 (the next residual stream)
/// - `normed`: `[batch, length, d_model]`, `RMSNorm(x + y)` in the format asked for
#[derive(ExtensionType)]
#[extension_type(fusion: cfg(feature = "cube"))]
pub struct AddNormOutput<B: Backend> {
    /// The new residual stream.
    pub sum: FloatTensor<B>,
    /// Its norm.
    pub normed: FloatTensor<B>,
}

/// Inputs of out_proj with the residual add ([`BlockOpsBackend::project_add`]).
///
/// # Shapes
/// - `y`: `[batch, length, k]`, what out_proj projects (the scan's output)
/// - `w`: `[k, d_model]`, out_proj's weight (the format of `y`)
/// - `x`: `[batch, length, d_model]`, the residual stream (f32)
#[derive(ExtensionType)]
#[extension_type(fusion: cfg(feature = "cube"))]
pub struct ProjectAddInput<B: Backend> {
    /// Projected input.
    pub y: FloatTensor<B>,
    /// Projection weight.
    pub w: FloatTensor<B>,
    /// Residual stream.
    pub x: FloatTensor<B>,
}

/// Outputs of out_proj with the residual add.
///
/// # Shapes
/// - `sum`: `[batch, length, d_model]`, `x + (y · w)` in f32, the product rounded to the
///   format of `y` first (as a block's output is before it is added)
/// - `half`: `[batch, length, d_model]`, `sum` rounded to the format of `y` (the next block's
///   input, which [`BlockOpsBackend::project_norm_silu_from`] normalises)
#[derive(ExtensionType)]
#[extension_type(fusion: cfg(feature = "cube"))]
pub struct ProjectAddOutput<B: Backend> {
    /// The new residual stream.
    pub sum: FloatTensor<B>,
    /// The same in the activation format.
    pub half: FloatTensor<B>,
}

/// Inputs of x_proj followed by dt_proj ([`BlockOpsBackend::project_dbc`]).
///
/// # Shapes
/// - `x`: `[batch, length, d_inner]`, the convolution's output
/// - `w_x`: `[d_inner, dt_rank + 2·d_state]`, x_proj's weight (no bias)
/// - `w_dt`: `[dt_rank, d_inner]`, dt_proj's weight
/// - `bias`: `[d_inner]` (f32), the time step's bias
#[derive(ExtensionType)]
#[extension_type(fusion: cfg(feature = "cube"))]
pub struct DbcInput<B: Backend> {
    /// The convolution's output.
    pub x: FloatTensor<B>,
    /// x_proj's weight.
    pub w_x: FloatTensor<B>,
    /// dt_proj's weight.
    pub w_dt: FloatTensor<B>,
    /// The time step's bias.
    pub bias: FloatTensor<B>,
}

/// Outputs of x_proj followed by dt_proj, in the format of `x`.
///
/// # Shapes
/// - `delta`: `[batch, length, d_inner]`, `softplus(dt · w_dt + bias)` where `dt` is the first
///   `dt_rank` columns of `x · w_x` (rounded to the format of `x`)
/// - `b`, `c`: `[batch, length, d_state]`, the next `d_state` columns and the last `d_state`
#[derive(ExtensionType)]
#[extension_type(fusion: cfg(feature = "cube"))]
pub struct DbcOutput<B: Backend> {
    /// The scan's time step Δ (bias added, softplus applied).
    pub delta: FloatTensor<B>,
    /// The scan's `B`.
    pub b: FloatTensor<B>,
    /// The scan's `C`.
    pub c: FloatTensor<B>,
}

/// Inputs of the convolution followed by x_proj and dt_proj
/// ([`BlockOpsBackend::conv_dbc`]): [`ConvInput`]'s and [`DbcInput`]'s but `x` of the latter,
/// which is the convolution's output.
#[derive(ExtensionType)]
#[extension_type(fusion: cfg(feature = "cube"))]
pub struct ConvDbcInput<B: Backend> {
    /// Chunk input (`in_proj`'s output; the convolution reads its first `d_inner` channels).
    pub x: FloatTensor<B>,
    /// Carried window.
    pub window: FloatTensor<B>,
    /// Depthwise weights.
    pub weight: FloatTensor<B>,
    /// Convolution bias (zeros when the model has none).
    pub bias: FloatTensor<B>,
    /// x_proj's weight.
    pub w_x: FloatTensor<B>,
    /// dt_proj's weight.
    pub w_dt: FloatTensor<B>,
    /// The time step's bias.
    pub dt_bias: FloatTensor<B>,
}

/// Outputs of the convolution followed by x_proj and dt_proj: [`ConvOutput`]'s and
/// [`DbcOutput`]'s.
#[derive(ExtensionType)]
#[extension_type(fusion: cfg(feature = "cube"))]
pub struct ConvDbcOutput<B: Backend> {
    /// Activated convolution output (the scan's `u`).
    pub u: FloatTensor<B>,
    /// Next window.
    pub window: FloatTensor<B>,
    /// The scan's time step Δ (bias added, softplus applied).
    pub delta: FloatTensor<B>,
    /// The scan's `B`.
    pub b: FloatTensor<B>,
    /// The scan's `C`.
    pub c: FloatTensor<B>,
}

/// Per-position block operations.
///
/// On GPU devices (the `cuda` feature) the convolution and the fused residual add + RMSNorm
/// are CubeCL kernels (`block_cube`), each registered with Burn's fusion
/// as one opaque operation; a lone RMSNorm (the first block's) runs as tensor operations,
/// which fusion compiles into few kernels.
#[backend_extension(
    Flex,
    Autodiff,
    Cube: cfg(feature = "cube"),
    Fusion: cfg(feature = "cube")
)]
pub trait BlockOpsBackend: Backend {
    /// `SiLU(causal_depthwise_conv([window | x]) + bias)` and the next window.
    // Under Fusion: one custom operation; `u` is `x` narrowed to the weight's channels.
    #[fusion(meta = |input| ConvOutputMetadata {
        u: conv_u_spec(&input.x, &input.weight),
        window: input.window.clone(),
    })]
    fn causal_conv_silu(#[extension_type] input: ConvInput<Self>) -> ConvOutput<Self> {
        conv_reference::<Self>(input)
    }

    /// `x / sqrt(mean(x², last dim) + eps) * weight`.
    #[fusion(default)]
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        rms_reference::<Self>(x, weight, eps)
    }

    /// `(x + y, RMSNorm(x + y) · weight)`: the residual add between two blocks fused with the
    /// next block's norm. The sum is f32; the norm is computed in f32 and rounded once to `out`
    /// (the next block's activation format).
    // Under Fusion: one custom operation.
    #[fusion(meta = |input, _eps, out| AddNormOutputMetadata {
        sum: input.x.clone(),
        normed: norm_spec(&input.x, *out),
    })]
    fn add_rms_norm(
        #[extension_type] input: AddNormInput<Self>,
        eps: f64,
        out: FloatDType,
    ) -> AddNormOutput<Self> {
        add_norm_reference::<Self>(input, eps, out)
    }

    /// `RMSNorm(x + y) · weight` in f32 without the sum: the norm after the last block,
    /// whose sum nothing reads (so the GPU does not write it). `x` is f32.
    // Under Fusion: one custom operation, f32 like `x`.
    #[fusion(dtype = x, shape = same_shape(x, y))]
    fn add_rms_norm_only(
        x: FloatTensor<Self>,
        y: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        add_norm_reference::<Self>(AddNormInput { x, y, weight }, eps, FloatDType::F32).normed
    }

    /// The fused add and norm's reference (never overridden).
    #[fusion(default)]
    fn add_rms_norm_reference(
        #[extension_type] input: AddNormInput<Self>,
        eps: f64,
        out: FloatDType,
    ) -> AddNormOutput<Self> {
        add_norm_reference::<Self>(input, eps, out)
    }

    /// A projection without bias: `x · w` for `x: [batch, length, in]` and `w: [in, out]`, in
    /// their (common) float format.
    // Under Fusion: one custom operation, `[batch, length, out]` in the format of `x`.
    #[fusion(dtype = x, shape = project_shape(x, w))]
    fn project(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        project_reference::<Self>(x, w)
    }

    /// `softplus(x · w + bias)` for `x: [batch, length, in]`, `w: [in, out]` (the format of
    /// `x`) and `bias: [out]` (f32), in the format of `x`, computed in f32: dt_proj with the
    /// time step's bias and softplus, whose output goes to `selective_scan_activated`.
    // Under Fusion: one custom operation, `[batch, length, out]` in the format of `x`.
    #[fusion(dtype = x, shape = project_shape(x, w))]
    fn project_softplus(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        project_softplus_reference::<Self>(x, w, bias)
    }

    /// `x · w` with SiLU on the output columns from `from` on, for `x: [batch, length, in]`
    /// and `w: [in, out]` in their (common) float format: in_proj with the gate's activation
    /// (its first `d_inner` columns, the convolution's input, as they are; the rest, `z`, as
    /// `SiLU(z)` for `selective_scan_gated`). The SiLU is computed in f32 and rounded once.
    // Under Fusion: one custom operation, `[batch, length, out]` in the format of `x`.
    #[fusion(dtype = x, shape = project_shape(x, w))]
    fn project_silu_from(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        from: usize,
    ) -> FloatTensor<Self> {
        project_silu_from_reference::<Self>(x, w, from)
    }

    /// out_proj followed by the residual add: `x + (y · w)` (f32) and the same rounded to the
    /// format of `y` ([`ProjectAddOutput`]). One kernel where a backend fuses them (on CUDA in
    /// f16/bf16: the tensor-core kernel's epilogue), so the block's output is never written.
    // Under Fusion: one custom operation.
    #[fusion(meta = |input| ProjectAddOutputMetadata {
        sum: input.x.clone(),
        half: half_spec(&input.x, &input.y),
    })]
    fn project_add(#[extension_type] input: ProjectAddInput<Self>) -> ProjectAddOutput<Self> {
        project_add_composed::<Self>(input, project_reference::<Self>)
    }

    /// in_proj of the next block's norm: `RMSNorm(x) · weight` rounded to the format of `x`,
    /// then `· w` with SiLU on the output columns from `from` on, as
    /// [`Self::project_silu_from`]; `x` (`[batch, length, in]`, 16-bit or f32) is the residual
    /// stream in the activation format ([`ProjectAddOutput::half`]), `norm` (`[in]`, f32) the
    /// norm's scale. On CUDA in f16/bf16 one kernel: the norm's scale folded into the weight,
    /// the per-row `1 / sqrt(mean(x²) + eps)` applied to the product's rows.
    // Under Fusion: one custom operation, `[batch, length, out]` in the format of `x`.
    #[fusion(dtype = x, shape = project_shape(x, w))]
    fn project_norm_silu_from(
        x: FloatTensor<Self>,
        norm: FloatTensor<Self>,
        w: FloatTensor<Self>,
        eps: f64,
        from: usize,
    ) -> FloatTensor<Self> {
        project_norm_silu_from_reference::<Self>(x, norm, w, eps, from)
    }

    /// x_proj, then dt_proj on its first `dt_rank` columns with the time step's bias and
    /// softplus: `Δ`, `B` and `C` for `selective_scan_activated` ([`DbcOutput`]).
    // Under Fusion: one custom operation.
    #[fusion(meta = |input| DbcOutputMetadata {
        delta: dbc_spec(&input.x, &input.w_x, &input.w_dt, true),
        b: dbc_spec(&input.x, &input.w_x, &input.w_dt, false),
        c: dbc_spec(&input.x, &input.w_x, &input.w_dt, false),
    })]
    fn project_dbc(#[extension_type] input: DbcInput<Self>) -> DbcOutput<Self> {
        project_dbc_reference::<Self>(input)
    }

    /// [`Self::causal_conv_silu`], then [`Self::project_dbc`] on its output: `u`, the next
    /// window, `Δ`, `B` and `C` ([`ConvDbcOutput`]). One kernel where a backend fuses them (on
    /// CUDA in f16/bf16, so that `u` is written once and never read back for x_proj).
    // Under Fusion: one custom operation.
    #[fusion(meta = |input| ConvDbcOutputMetadata {
        u: conv_u_spec(&input.x, &input.weight),
        window: input.window.clone(),
        delta: dbc_spec(&conv_u_spec(&input.x, &input.weight), &input.w_x, &input.w_dt, true),
        b: dbc_spec(&conv_u_spec(&input.x, &input.weight), &input.w_x, &input.w_dt, false),
        c: dbc_spec(&conv_u_spec(&input.x, &input.weight), &input.w_x, &input.w_dt, false),
    })]
    fn conv_dbc(#[extension_type] input: ConvDbcInput<Self>) -> ConvDbcOutput<Self> {
        conv_dbc_composed::<Self>(input, Self::causal_conv_silu, Self::project_dbc)
    }

    /// The projection's reference: the backend's own matrix product (never overridden).
    #[fusion(default)]
    fn project_reference(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        project_reference::<Self>(x, w)
    }

    /// The convolution's reference (never overridden; fused versions are tested against it).
    #[fusion(default)]
    fn causal_conv_silu_reference(#[extension_type] input: ConvInput<Self>) -> ConvOutput<Self> {
        conv_reference::<Self>(input)
    }

    /// RMSNorm's reference (never overridden).
    #[fusion(default)]
    fn rms_norm_reference(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        rms_reference::<Self>(x, weight, eps)
    }
}

impl BlockOpsBackend for Flex {
    fn causal_conv_silu(input: ConvInput<Self>) -> ConvOutput<Self> {
        conv_flex(input)
    }

    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        rms_flex(x, weight, eps)
    }

    fn add_rms_norm(input: AddNormInput<Self>, eps: f64, out: FloatDType) -> AddNormOutput<Self> {
        add_norm_flex(input, eps, out)
    }

    fn add_rms_norm_only(
        x: FloatTensor<Self>,
        y: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        add_norm_flex(AddNormInput { x, y, weight }, eps, FloatDType::F32).normed
    }
}

impl<B: Backend + BlockOpsBackend, C: CheckpointStrategy> BlockOpsBackend for Autodiff<B, C> {}

// The GPU backend: the convolution and the residual add with the next norm as CubeCL kernels,
// the projections through a chosen matrix-product kernel, a lone RMSNorm as tensor operations.
#[cfg(feature = "cube")]
impl BlockOpsBackend for burn_cubecl::CubeBackend {
    fn causal_conv_silu(input: ConvInput<Self>) -> ConvOutput<Self> {
        super::block_cube::conv_cube(input)
    }

    fn project(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        super::project_cube::project_cube(x, w)
    }

    fn project_softplus(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        super::project_cube::project_softplus_cube(x, w, bias)
    }

    fn project_silu_from(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        from: usize,
    ) -> FloatTensor<Self> {
        super::project_cube::project_silu_from_cube(x, w, from)
    }

    fn project_add(input: ProjectAddInput<Self>) -> ProjectAddOutput<Self> {
        super::project_cube::project_add_cube(input)
    }

    fn project_norm_silu_from(
        x: FloatTensor<Self>,
        norm: FloatTensor<Self>,
        w: FloatTensor<Self>,
        eps: f64,
        from: usize,
    ) -> FloatTensor<Self> {
        super::project_cube::project_norm_silu_from_cube(x, norm, w, eps, from)
    }

    fn project_dbc(input: DbcInput<Self>) -> DbcOutput<Self> {
        super::project_cube::project_dbc_cube(input)
    }

    fn conv_dbc(input: ConvDbcInput<Self>) -> ConvDbcOutput<Self> {
        super::conv_dbc::conv_dbc_cube(input)
    }

    fn add_rms_norm(input: AddNormInput<Self>, eps: f64, out: FloatDType) -> AddNormOutput<Self> {
        super::block_cube::add_norm_cube(input, eps, out)
    }

    fn add_rms_norm_only(
        x: FloatTensor<Self>,
        y: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        super::block_cube::add_norm_only_cube(AddNormInput { x, y, weight }, eps)
    }
}

/// Shape of a projection's output: `[batch, length, out]` from `x: [batch, length, in]` and
/// `w: [in, out]`.
#[cfg(feature = "cube")]
fn project_shape(x: &Shape, w: &Shape) -> Shape {
    let dim = |s: &Shape, i: usize| s.to_vec().get(i).copied().unwrap_or(0);
    Shape::new([dim(x, 0), dim(x, 1), dim(w, 1)])
}

/// Shape of an output shaped like its first input (under Fusion).
#[cfg(feature = "cube")]
fn same_shape(x: &Shape, _y: &Shape) -> Shape {
    x.clone()
}

/// Shape of the convolution's output under Fusion: `[batch, length, d_inner]`.
#[cfg(feature = "cube")]
fn conv_u_spec(
    x: &burn::backend::fusion::custom::TensorSpec,
    weight: &burn::backend::fusion::custom::TensorSpec,
) -> burn::backend::fusion::custom::TensorSpec {
    let (xs, ws) = (x.shape.to_vec(), weight.shape.to_vec());
    let dim = |s: &[usize], i: usize| s.get(i).copied().unwrap_or(0);
    burn::backend::fusion::custom::TensorSpec::new(
        Shape::new([dim(&xs, 0), dim(&xs, 1), dim(&ws, 1)]),
        x.dtype,
    )
}

/// The fused add and norm's `normed` under Fusion: the shape of `x`, in `out`.
#[cfg(feature = "cube")]
fn norm_spec(
    x: &burn::backend::fusion::custom::TensorSpec,
    out: FloatDType,
) -> burn::backend::fusion::custom::TensorSpec {
    burn::backend::fusion::custom::TensorSpec::new(x.shape.clone(), DType::from(out))
}

/// [`BlockOpsBackend::project_add`]'s `half` under Fusion: the shape of `x`, in the format of
/// `y`.
#[cfg(feature = "cube")]
fn half_spec(
    x: &burn::backend::fusion::custom::TensorSpec,
    y: &burn::backend::fusion::custom::TensorSpec,
) -> burn::backend::fusion::custom::TensorSpec {
    burn::backend::fusion::custom::TensorSpec::new(x.shape.clone(), y.dtype)
}

/// Shape of [`BlockOpsBackend::project_dbc`]'s `delta` (`delta` true: `[batch, length,
/// d_inner]`) or of its `b` and `c` (`[batch, length, d_state]`) under Fusion, in the format of
/// `x`.
#[cfg(feature = "cube")]
fn dbc_spec(
    x: &burn::backend::fusion::custom::TensorSpec,
    w_x: &burn::backend::fusion::custom::TensorSpec,
    w_dt: &burn::backend::fusion::custom::TensorSpec,
    delta: bool,
) -> burn::backend::fusion::custom::TensorSpec {
    let (xs, wx, wdt) = (x.shape.to_vec(), w_x.shape.to_vec(), w_dt.shape.to_vec());
    let dim = |s: &[usize], i: usize| s.get(i).copied().unwrap_or(0);
    let cols = if delta {
        dim(&wdt, 1)
    } else {
        dim(&wx, 1).saturating_sub(dim(&wdt, 0)) / 2
    };
    burn::backend::fusion::custom::TensorSpec::new(
        Shape::new([dim(&xs, 0), dim(&xs, 1), cols]),
        x.dtype,
    )
}

/// `softplus(x · w + bias)` in the format of `x`: the product through the backend's matrix
/// product (in that format), then the bias and softplus in f32, rounded once.
pub fn project_softplus_reference<B: Backend>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    bias: FloatTensor<B>,
) -> FloatTensor<B> {
    project_softplus_composed::<B>(x, w, bias, project_reference::<B>)
}

/// [`project_softplus_reference`] with the product computed by `project`.
pub(crate) fn project_softplus_composed<B: Backend>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    bias: FloatTensor<B>,
    project: impl FnOnce(FloatTensor<B>, FloatTensor<B>) -> FloatTensor<B>,
) -> FloatTensor<B> {
    let dtype = x.dtype();
    let out = bias.shape().to_vec().first().copied().unwrap_or(0);
    let p = to_f32::<B>(project(x, w));
    let bias = B::float_reshape(to_f32::<B>(bias), Shape::new([1, 1, out]));
    to_dtype::<B>(softplus::<B>(B::float_add(p, bias)), dtype)
}

/// [`BlockOpsBackend::project_silu_from`] as the backend's matrix product (in the format of
/// `x`), then SiLU in f32 on columns `from..`, rounded back to that format.
pub fn project_silu_from_reference<B: Backend>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    from: usize,
) -> FloatTensor<B> {
    silu_from::<B>(project_reference::<B>(x, w), from)
}

/// `p` (`[batch, length, n]`) with SiLU (in f32, rounded back to the format of `p`) on its
/// columns `from..`.
pub(crate) fn silu_from<B: Backend>(p: FloatTensor<B>, from: usize) -> FloatTensor<B> {
    let [batch, len, n] = <[usize; 3]>::try_from(dims::<B>(&p)).unwrap_or([0, 0, 0]);
    if from >= n {
        return p;
    }
    let dtype = p.dtype();
    let cols = |c: std::ops::Range<usize>| -> [Slice; 3] {
        [(0..batch).into(), (0..len).into(), c.into()]
    };
    let tail = B::float_slice(p.clone(), &cols(from..n));
    let tail = to_dtype::<B>(super::scan_reference::silu::<B>(to_f32::<B>(tail)), dtype);
    if from == 0 {
        return tail;
    }
    let head = B::float_slice(p, &cols(0..from));
    B::float_cat(vec![head, tail], 2)
}

/// [`BlockOpsBackend::project_add`] with `project` for the product: the product (in the
/// format of `y`) widened to f32 and added to `x`, and the sum rounded back to that format.
pub(crate) fn project_add_composed<B: Backend>(
    input: ProjectAddInput<B>,
    project: impl Fn(FloatTensor<B>, FloatTensor<B>) -> FloatTensor<B>,
) -> ProjectAddOutput<B> {
    let ProjectAddInput { y, w, x } = input;
    let dtype = y.dtype();
    let out = to_f32::<B>(project(y, w));
    let sum = B::float_add(to_f32::<B>(x), out);
    let half = to_dtype::<B>(sum.clone(), dtype);
    ProjectAddOutput { sum, half }
}

/// [`BlockOpsBackend::project_add`] in plain tensor operations.
pub fn project_add_reference<B: Backend>(input: ProjectAddInput<B>) -> ProjectAddOutput<B> {
    project_add_composed::<B>(input, project_reference::<B>)
}

/// [`BlockOpsBackend::project_norm_silu_from`] as RMSNorm in f32 (rounded to the format of
/// `x`), then [`project_silu_from_reference`].
pub fn project_norm_silu_from_reference<B: Backend>(
    x: FloatTensor<B>,
    norm: FloatTensor<B>,
    w: FloatTensor<B>,
    eps: f64,
    from: usize,
) -> FloatTensor<B> {
    let dtype = x.dtype();
    let normed = to_dtype::<B>(rms_reference::<B>(to_f32::<B>(x), norm, eps), dtype);
    project_silu_from_reference::<B>(normed, w, from)
}

/// [`BlockOpsBackend::project_dbc`] as x_proj through the backend's matrix product, three
/// column slices of its output, and [`project_softplus_reference`] on the first.
pub fn project_dbc_reference<B: Backend>(input: DbcInput<B>) -> DbcOutput<B> {
    project_dbc_composed::<B>(
        input,
        project_reference::<B>,
        project_softplus_reference::<B>,
    )
}

/// x_proj by `project`, then `project_softplus` on its first `dt_rank` columns; `B` and `C`
/// are views of x_proj's output.
pub(crate) fn project_dbc_composed<B: Backend>(
    input: DbcInput<B>,
    project: impl Fn(FloatTensor<B>, FloatTensor<B>) -> FloatTensor<B>,
    project_softplus: impl Fn(FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) -> FloatTensor<B>,
) -> DbcOutput<B> {
    let DbcInput { x, w_x, w_dt, bias } = input;
    let dt_rank = dims::<B>(&w_dt).first().copied().unwrap_or(0);
    let n_x = dims::<B>(&w_x).get(1).copied().unwrap_or(0);
    let d_state = n_x.saturating_sub(dt_rank) / 2;
    let dbc = project(x, w_x);
    let columns = |r: std::ops::Range<usize>| {
        B::float_slice(
            dbc.clone(),
            &[Slice::from(..), Slice::from(..), Slice::from(r)],
        )
    };
    DbcOutput {
        delta: project_softplus(columns(0..dt_rank), w_dt, bias),
        b: columns(dt_rank..dt_rank + d_state),
        c: columns(dt_rank + d_state..dt_rank + 2 * d_state),
    }
}

/// [`BlockOpsBackend::conv_dbc`] as the convolution `conv`, then `dbc` on its output.
pub(crate) fn conv_dbc_composed<B: Backend>(
    input: ConvDbcInput<B>,
    conv: impl Fn(ConvInput<B>) -> ConvOutput<B>,
    dbc: impl Fn(DbcInput<B>) -> DbcOutput<B>,
) -> ConvDbcOutput<B> {
    let ConvDbcInput {
        x,
        window,
        weight,
        bias,
        w_x,
        w_dt,
        dt_bias,
    } = input;
    let ConvOutput { u, window } = conv(ConvInput {
        x,
        window,
        weight,
        bias,
    });
    let DbcOutput { delta, b, c } = dbc(DbcInput {
        x: u.clone(),
        w_x,
        w_dt,
        bias: dt_bias,
    });
    ConvDbcOutput {
        u,
        window,
        delta,
        b,
        c,
    }
}

/// `x · w` through the backend's matrix product (`w` broadcast over the batch). Rows longer
/// than `TIME_GROUP` steps are multiplied as rows of `time_rows` steps, so that under
/// autodiff the weight's gradient is many products side by side and a sum, not one product
/// over the whole row: Burn's CUDA backend ran each projection's weight gradient of a window
/// of 131,072 at batch 1 in 4 to 32 cubes, 6-7 ms each (`ncu`, BENCHMARKS.md, thirty-seventh
/// session). Each output is the same product of a row of `x` and a column of `w`.
///
/// In f16 the sums are taken in f32 and rounded once, as the GPU's kernels take them: the CPU
/// backend's f16 product (the `gemm` crate's) rounds its running sum to f16 at every term when
/// a side has one row or column (a chunk or record of one position), so results depended on
/// how the input was cut.
pub fn project_reference<B: Backend>(x: FloatTensor<B>, w: FloatTensor<B>) -> FloatTensor<B> {
    if x.dtype() == DType::F16 {
        let y = project_rows::<B>(to_f32::<B>(x), to_f32::<B>(w));
        return to_dtype::<B>(y, DType::F16);
    }
    project_rows::<B>(x, w)
}

/// [`project_reference`] in the format of its inputs.
fn project_rows<B: Backend>(x: FloatTensor<B>, w: FloatTensor<B>) -> FloatTensor<B> {
    if let [batch, len, k] = dims::<B>(&x)[..] {
        let (rows, steps) = time_rows(batch, len);
        if rows != batch {
            let x = B::float_reshape(x, Shape::new([rows, steps, k]));
            let y = B::float_matmul(x, batched_weight::<B>(w));
            let n = dims::<B>(&y).last().copied().unwrap_or(0);
            return B::float_reshape(y, Shape::new([batch, len, n]));
        }
    }
    B::float_matmul(x, batched_weight::<B>(w))
}

/// A projection weight `[in, out]` as `[1, in, out]`, to multiply a batch of sequences.
pub(crate) fn batched_weight<B: Backend>(w: FloatTensor<B>) -> FloatTensor<B> {
    match dims::<B>(&w).as_slice() {
        [k, n] => B::float_reshape(w, Shape::new([1, *k, *n])),
        _ => w,
    }
}

fn dims<B: Backend>(t: &FloatTensor<B>) -> Vec<usize> {
    t.shape().to_vec()
}

/// The convolution in plain tensor operations.
///
/// Computes in f32 whatever the inputs' formats: `u` comes back in the format of `x`, the
/// next window in that of the window.
pub fn conv_reference<B: Backend>(input: ConvInput<B>) -> ConvOutput<B> {
    let (act, win_dtype) = (input.x.dtype(), input.window.dtype());
    let ConvInput {
        x,
        window,
        weight,
        bias,
    } = input;
    let [x, window, weight, bias] = [x, window, weight, bias].map(to_f32::<B>);
    let xd = dims::<B>(&x);
    let len = xd[1];
    let wd = dims::<B>(&weight);
    let (k, d) = (wd[0], wd[1]);
    let xs = B::float_slice(x, &[Slice::from(..), Slice::from(..), Slice::from(0..d)]);
    let xpad = B::float_cat(vec![window, xs], 1);
    let mut acc: Option<FloatTensor<B>> = None;
    for j in 0..k {
        let tap = B::float_slice(
            xpad.clone(),
            &[Slice::from(..), Slice::from(j..j + len), Slice::from(..)],
        );
        let w = B::float_slice(weight.clone(), &[Slice::from(j..j + 1), Slice::from(..)]);
        let term = per_channel_op::<B>(tap, w, ChannelOp::Mul);
        acc = Some(match acc {
            None => term,
            Some(a) => B::float_add(a, term),
        });
    }
    let conv = match acc {
        Some(a) => a,
        None => B::float_mul_scalar(
            B::float_slice(
                xpad.clone(),
                &[Slice::from(..), Slice::from(0..len), Slice::from(..)],
            ),
            Scalar::from(0.0f32),
        ),
    };
    let conv = per_channel_op::<B>(conv, bias, ChannelOp::Add);
    let u = B::float_mul(conv.clone(), B::sigmoid(conv));
    let next = B::float_slice(
        xpad,
        &[
            Slice::from(..),
            Slice::from(len..len + k.saturating_sub(1)),
            Slice::from(..),
        ],
    );
    ConvOutput {
        u: to_dtype::<B>(u, act),
        window: to_dtype::<B>(next, win_dtype),
    }
}

/// RMSNorm in plain tensor operations.
pub fn rms_reference<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    eps: f64,
) -> FloatTensor<B> {
    let xd = dims::<B>(&x);
    let last = xd.len() - 1;
    let ms = B::float_mean_dim(B::float_mul(x.clone(), x.clone()), last);
    let inv = B::float_recip(B::float_sqrt(B::float_add_scalar(ms, Scalar::from(eps))));
    per_channel_op::<B>(B::float_mul(x, inv), weight, ChannelOp::Mul)
}

/// How [`per_channel_op`] applies its parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChannelOp {
    Add,
    Mul,
}

/// Most time steps [`time_group`] puts in a group.
const TIME_GROUP: usize = 2048;

/// Time steps per group for rows of `len` steps: `None` (one group per row) up to
/// [`TIME_GROUP`] steps, else the largest power of two up to [`TIME_GROUP`] that divides `len`,
/// if at least 64 (a length with no such divisor keeps one group per row).
fn time_group(len: usize) -> Option<usize> {
    if len <= TIME_GROUP {
        return None;
    }
    let g = (1usize << len.trailing_zeros()).min(TIME_GROUP);
    (g >= 64).then_some(g)
}

/// `[batch, len, d]` seen as `[rows, steps, d]` with `rows · steps = batch · len`: rows of
/// [`time_group`] steps when `len` is longer than [`TIME_GROUP`] (and has such a divisor),
/// else `(batch, len)`. A parameter applied to every position then takes its gradient
/// (under autodiff, summed over positions) as `rows` sums or products side by side and one
/// sum over rows, where one long row would be a single reduction over all its positions.
pub(crate) fn time_rows(batch: usize, len: usize) -> (usize, usize) {
    match time_group(len) {
        Some(g) => (batch * (len / g), g),
        None => (batch, len),
    }
}

/// `x` (`[batch, len, d]`, or any shape with channels last) plus or times a per-channel
/// parameter `w` (`d` values), through [`per_channel`]. For rows longer than [`TIME_GROUP`]
/// steps, `x` is first seen as rows of [`time_rows`] steps, so that under autodiff the
/// parameter's gradient sums groups of steps side by side, then the groups: with one row per
/// batch the per-row sum is one reduction over the whole window, which Burn's CUDA backend
/// runs in a cube or two (a training step on windows of 131,072 at batch 1 spent most of its
/// time there; BENCHMARKS.md, thirty-seventh session). The values are the same either way; a
/// strided `x` is copied by the reshape.
fn per_channel_op<B: Backend>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    op: ChannelOp,
) -> FloatTensor<B> {
    per_channel_op_with::<B>(x, w, op, true)
}

/// [`per_channel_op`], with `group` false always one group per row (for tests).
fn per_channel_op_with<B: Backend>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    op: ChannelOp,
    group: bool,
) -> FloatTensor<B> {
    let apply = |a: FloatTensor<B>, b: FloatTensor<B>| match op {
        ChannelOp::Add => B::float_add(a, b),
        ChannelOp::Mul => B::float_mul(a, b),
    };
    let xd = dims::<B>(&x);
    if let ([batch, len, d], true) = (xd.as_slice(), group) {
        let (batch, len, d) = (*batch, *len, *d);
        let (rows, steps) = time_rows(batch, len);
        if rows != batch {
            let x = B::float_reshape(x, Shape::new([rows, steps, d]));
            let w = per_channel::<B>(w, &[rows, steps, d]);
            return B::float_reshape(apply(x, w), Shape::new([batch, len, d]));
        }
    }
    let w = per_channel::<B>(w, &xd);
    apply(x, w)
}

/// A per-channel parameter (`d` values, any shape) ready to multiply or add to a tensor of
/// shape `dims` (channels last): `[dims[0], 1, .., 1, d]`, expanded over the first axis, for
/// three or more axes; `[1, d]` for two. Under autodiff the parameter's gradient then sums
/// the middle axes per row of the first (many sums side by side) and that axis afterwards
/// (the expansion's backward), instead of one reduction over all rows at once, which Burn's
/// CUDA backend ran as one cube of 32 threads each walking every row: 28-29 ms per gradient
/// of a `[128, 2048, 128]` activation on an H200, most of a training step (BENCHMARKS.md,
/// thirty-fifth session). The values are the same; only the gradient's order of summation
/// differs.
fn per_channel<B: Backend>(w: FloatTensor<B>, dims: &[usize]) -> FloatTensor<B> {
    let d = dims.last().copied().unwrap_or(1);
    let mut shape = vec![1; dims.len().max(2)];
    if let Some(last) = shape.last_mut() {
        *last = d;
    }
    let w = B::float_reshape(w, Shape::from(shape.clone()));
    if dims.len() < 3 {
        return w;
    }
    shape[0] = dims[0];
    B::float_expand(w, Shape::from(shape))
}

/// The residual add and RMSNorm in plain tensor operations: the sum in f32, the norm
/// computed in f32 and cast to `out`.
pub fn add_norm_reference<B: Backend>(
    input: AddNormInput<B>,
    eps: f64,
    out: FloatDType,
) -> AddNormOutput<B> {
    let AddNormInput { x, y, weight } = input;
    let sum = B::float_add(to_f32::<B>(x), to_f32::<B>(y));
    let normed = rms_reference::<B>(sum.clone(), to_f32::<B>(weight), eps);
    AddNormOutput {
        sum,
        normed: to_dtype::<B>(normed, DType::from(out)),
    }
}

/// Rows of positions handled per parallel task.
const ROWS_PER_TASK: usize = 64;

fn conv_flex(input: ConvInput<Flex>) -> ConvOutput<Flex> {
    let xd = input.x.shape().to_vec();
    let wd = input.weight.shape().to_vec();
    let (Some(&batch), Some(&len), Some(&cx), Some(&k), Some(&d)) =
        (xd.first(), xd.get(1), xd.get(2), wd.first(), wd.get(1))
    else {
        return conv_reference::<Flex>(input);
    };
    let parts = (
        host(&input.x),
        host(&input.window),
        host(&input.weight),
        host(&input.bias),
    );
    let (Some(x), Some(win), Some(w), Some(bias)) = parts else {
        drop(parts);
        return conv_reference::<Flex>(input);
    };
    if k == 0 || batch == 0 || len == 0 || d == 0 || cx < d {
        drop((x, win, w, bias));
        return conv_reference::<Flex>(input);
    }
    let k1 = k - 1;
    // Input of position p (-k1 <= p < len) of batch row b, channel slice.
    let row = |b: usize, p: isize| -> &[f32] {
        if p < 0 {
            let r = (k1 as isize + p) as usize;
            &win[(b * k1 + r) * d..(b * k1 + r + 1) * d]
        } else {
            let o = (b * len + p as usize) * cx;
            &x[o..o + d]
        }
    };
    let mut u = vec![0.0f32; batch * len * d];
    u.par_chunks_mut(ROWS_PER_TASK * d)
        .enumerate()
        .for_each(|(task, out)| {
            let first = task * ROWS_PER_TASK;
            for (i, o) in out.chunks_mut(d).enumerate() {
                let pos = first + i;
                let (b, t) = (pos / len, pos % len);
                o.copy_from_slice(bias.as_ref());
                for j in 0..k {
                    let src = row(b, t as isize - k1 as isize + j as isize);
                    let wj = &w[j * d..(j + 1) * d];
                    for ((acc, s), wv) in o.iter_mut().zip(src).zip(wj) {
                        *acc += s * wv;
                    }
                }
                for v in o.iter_mut() {
                    *v /= 1.0 + fast_exp(-*v);
                }
            }
        });
    let mut next = vec![0.0f32; batch * k1 * d];
    for b in 0..batch {
        for r in 0..k1 {
            let src = row(b, len as isize - k1 as isize + r as isize);
            next[(b * k1 + r) * d..(b * k1 + r + 1) * d].copy_from_slice(src);
        }
    }
    ConvOutput {
        u: FlexTensor::from_data(TensorData::new(u, [batch, len, d])),
        window: FlexTensor::from_data(TensorData::new(next, [batch, k1, d])),
    }
}

fn rms_flex(x: FlexTensor, weight: FlexTensor, eps: f64) -> FlexTensor {
    let shape = x.shape().to_vec();
    let d = shape.last().copied().unwrap_or(0);
    let (Some(xs), Some(w)) = (host(&x), host(&weight)) else {
        return rms_reference::<Flex>(x, weight, eps);
    };
    if d == 0 || w.len() != d {
        drop((xs, w));
        return rms_reference::<Flex>(x, weight, eps);
    }
    let mut out = vec![0.0f32; xs.len()];
    out.par_chunks_mut(ROWS_PER_TASK * d)
        .zip(xs.par_chunks(ROWS_PER_TASK * d))
        .for_each(|(o, src)| {
            for (orow, xrow) in o.chunks_mut(d).zip(src.chunks(d)) {
                norm_row(orow, xrow, &w, eps);
            }
        });
    FlexTensor::from_data(TensorData::new(out, shape))
}

/// One row of RMSNorm: `out = x / sqrt(mean(x^2) + eps) * w`, the mean of squares in f64.
fn norm_row(out: &mut [f32], x: &[f32], w: &[f32], eps: f64) {
    let ms = x.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / x.len().max(1) as f64;
    let inv = (1.0 / (ms + eps).sqrt()) as f32;
    for ((ov, xv), wv) in out.iter_mut().zip(x).zip(w) {
        *ov = xv * inv * wv;
    }
}

fn add_norm_flex(input: AddNormInput<Flex>, eps: f64, out: FloatDType) -> AddNormOutput<Flex> {
    // A half `y` (a block's output with `--precision`) is widened first (exactly).
    let input = AddNormInput {
        y: to_f32::<Flex>(input.y),
        ..input
    };
    let shape = input.x.shape().to_vec();
    let d = shape.last().copied().unwrap_or(0);
    let same = input.y.shape().to_vec() == shape;
    let parts = (host(&input.x), host(&input.y), host(&input.weight));
    let (Some(xs), Some(ys), Some(w), true) = (parts.0, parts.1, parts.2, same) else {
        return add_norm_reference::<Flex>(input, eps, out);
    };
    if d == 0 || w.len() != d {
        drop((xs, ys, w));
        return add_norm_reference::<Flex>(input, eps, out);
    }
    let mut sum = vec![0.0f32; xs.len()];
    let mut normed = vec![0.0f32; xs.len()];
    sum.par_chunks_mut(ROWS_PER_TASK * d)
        .zip(normed.par_chunks_mut(ROWS_PER_TASK * d))
        .zip(
            xs.par_chunks(ROWS_PER_TASK * d)
                .zip(ys.par_chunks(ROWS_PER_TASK * d)),
        )
        .for_each(|((s, n), (xc, yc))| {
            for (((srow, nrow), xrow), yrow) in s
                .chunks_mut(d)
                .zip(n.chunks_mut(d))
                .zip(xc.chunks(d))
                .zip(yc.chunks(d))
            {
                for ((sv, xv), yv) in srow.iter_mut().zip(xrow).zip(yrow) {
                    *sv = xv + yv;
                }
                norm_row(nrow, srow, &w, eps);
            }
        });
    let normed = FlexTensor::from_data(TensorData::new(normed, shape.clone()));
    AddNormOutput {
        sum: FlexTensor::from_data(TensorData::new(sum, shape)),
        normed: to_dtype::<Flex>(normed, DType::from(out)),
    }
}

/// Which implementation to run: the backend's fastest, or the tensor-op reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impl {
    /// The backend's override (fused on the CPU), or the reference where there is none.
    Fastest,
    /// The reference in plain tensor operations.
    Reference,
}

/// [`causal_conv_silu`] with a choice of implementation.
pub fn causal_conv_silu_with(
    which: Impl,
    x: Tensor<3>,
    window: Tensor<3>,
    weight: Tensor<2>,
    bias: Tensor<1>,
) -> (Tensor<3>, Tensor<3>) {
    let input = ConvInput {
        x: x.into_dispatch(),
        window: window.into_dispatch(),
        weight: weight.into_dispatch(),
        bias: bias.into_dispatch(),
    };
    let out = match which {
        Impl::Fastest => <Dispatch as BlockOpsBackend>::causal_conv_silu(input),
        Impl::Reference => <Dispatch as BlockOpsBackend>::causal_conv_silu_reference(input),
    };
    (
        Tensor::from_dispatch(out.u),
        Tensor::from_dispatch(out.window),
    )
}

/// [`rms_norm`] with a choice of implementation.
pub fn rms_norm_with(which: Impl, x: Tensor<3>, weight: Tensor<1>, eps: f64) -> Tensor<3> {
    let (x, w) = (x.into_dispatch(), weight.into_dispatch());
    Tensor::from_dispatch(match which {
        Impl::Fastest => <Dispatch as BlockOpsBackend>::rms_norm(x, w, eps),
        Impl::Reference => <Dispatch as BlockOpsBackend>::rms_norm_reference(x, w, eps),
    })
}

/// [`project`] with a choice of implementation.
pub fn project_with(which: Impl, x: Tensor<3>, w: Tensor<2>) -> Tensor<3> {
    let (x, w) = (x.into_dispatch(), w.into_dispatch());
    Tensor::from_dispatch(match which {
        Impl::Fastest => <Dispatch as BlockOpsBackend>::project(x, w),
        Impl::Reference => <Dispatch as BlockOpsBackend>::project_reference(x, w),
    })
}

/// [`project_silu_from`] with a choice of implementation.
pub fn project_silu_from_with(which: Impl, x: Tensor<3>, w: Tensor<2>, from: usize) -> Tensor<3> {
    let (x, w) = (x.into_dispatch(), w.into_dispatch());
    Tensor::from_dispatch(match which {
        Impl::Fastest => <Dispatch as BlockOpsBackend>::project_silu_from(x, w, from),
        Impl::Reference => project_silu_from_reference::<Dispatch>(x, w, from),
    })
}

/// `x · w` with SiLU on the output columns `from..`, on the device of `x`: in_proj with the
/// gate's activation, for [`selective_scan_gated`](super::scan::selective_scan_gated) (on
/// CUDA in f16/bf16 the SiLU runs in the tensor-core kernel's epilogue).
///
/// # Shapes
/// - x: `[batch, length, in]`, w: `[in, out]`; returns `[batch, length, out]`
pub fn project_silu_from(x: Tensor<3>, w: Tensor<2>, from: usize) -> Tensor<3> {
    project_silu_from_with(Impl::Fastest, x, w, from)
}

/// [`project_add`] with a choice of implementation.
pub fn project_add_with(
    which: Impl,
    y: Tensor<3>,
    w: Tensor<2>,
    x: Tensor<3>,
) -> (Tensor<3>, Tensor<3>) {
    let input = ProjectAddInput {
        y: y.into_dispatch(),
        w: w.into_dispatch(),
        x: x.into_dispatch(),
    };
    let o = match which {
        Impl::Fastest => <Dispatch as BlockOpsBackend>::project_add(input),
        Impl::Reference => project_add_reference::<Dispatch>(input),
    };
    (Tensor::from_dispatch(o.sum), Tensor::from_dispatch(o.half))
}

/// out_proj with the residual add, on the device of `y`: returns `(x + y · w, the same in the
/// format of y)`, the sum in f32 (the product rounded to the format of `y` before it is
/// added, as [`add_rms_norm`] adds a block's output). On CUDA in f16/bf16 the add runs in the
/// tensor-core kernel's epilogue.
///
/// # Shapes
/// - y: `[batch, length, k]`, w: `[k, d_model]`, x: `[batch, length, d_model]`; both results
///   like `x`
pub fn project_add(y: Tensor<3>, w: Tensor<2>, x: Tensor<3>) -> (Tensor<3>, Tensor<3>) {
    project_add_with(Impl::Fastest, y, w, x)
}

/// [`project_norm_silu_from`] with a choice of implementation.
pub fn project_norm_silu_from_with(
    which: Impl,
    x: Tensor<3>,
    norm: Tensor<1>,
    w: Tensor<2>,
    eps: f64,
    from: usize,
) -> Tensor<3> {
    let (x, norm, w) = (x.into_dispatch(), norm.into_dispatch(), w.into_dispatch());
    Tensor::from_dispatch(match which {
        Impl::Fastest => {
            <Dispatch as BlockOpsBackend>::project_norm_silu_from(x, norm, w, eps, from)
        }
        Impl::Reference => project_norm_silu_from_reference::<Dispatch>(x, norm, w, eps, from),
    })
}

/// in_proj of a block's norm, on the device of `x`: `RMSNorm(x) · norm` rounded to the format
/// of `x`, times `w`, with SiLU on the output columns `from..` (as [`project_silu_from`]). `x`
/// is the residual stream in the activation format ([`project_add`]'s second result). On CUDA
/// in f16/bf16 one tensor-core kernel.
///
/// # Shapes
/// - x: `[batch, length, in]`, norm: `[in]`, w: `[in, out]`; returns `[batch, length, out]`
pub fn project_norm_silu_from(
    x: Tensor<3>,
    norm: Tensor<1>,
    w: Tensor<2>,
    eps: f64,
    from: usize,
) -> Tensor<3> {
    project_norm_silu_from_with(Impl::Fastest, x, norm, w, eps, from)
}

/// [`project_softplus`] with a choice of implementation.
pub fn project_softplus_with(
    which: Impl,
    x: Tensor<3>,
    w: Tensor<2>,
    bias: Tensor<1>,
) -> Tensor<3> {
    let (x, w, bias) = (x.into_dispatch(), w.into_dispatch(), bias.into_dispatch());
    Tensor::from_dispatch(match which {
        Impl::Fastest => <Dispatch as BlockOpsBackend>::project_softplus(x, w, bias),
        Impl::Reference => project_softplus_reference::<Dispatch>(x, w, bias),
    })
}

/// `softplus(x · w + bias)` on the device of `x` (dt_proj with the time step's bias and
/// softplus, for [`selective_scan_activated`](super::scan::selective_scan_activated)).
///
/// # Shapes
/// - x: `[batch, length, in]`, w: `[in, out]`, bias: `[out]` (f32); returns
///   `[batch, length, out]` in the format of `x`
pub fn project_softplus(x: Tensor<3>, w: Tensor<2>, bias: Tensor<1>) -> Tensor<3> {
    project_softplus_with(Impl::Fastest, x, w, bias)
}

/// [`project_dbc`] with a choice of implementation.
pub fn project_dbc_with(
    which: Impl,
    x: Tensor<3>,
    w_x: Tensor<2>,
    w_dt: Tensor<2>,
    bias: Tensor<1>,
) -> (Tensor<3>, Tensor<3>, Tensor<3>) {
    let input = DbcInput {
        x: x.into_dispatch(),
        w_x: w_x.into_dispatch(),
        w_dt: w_dt.into_dispatch(),
        bias: bias.into_dispatch(),
    };
    let out = match which {
        Impl::Fastest => <Dispatch as BlockOpsBackend>::project_dbc(input),
        Impl::Reference => project_dbc_reference::<Dispatch>(input),
    };
    (
        Tensor::from_dispatch(out.delta),
        Tensor::from_dispatch(out.b),
        Tensor::from_dispatch(out.c),
    )
}

/// x_proj (`w_x`, no bias) followed by dt_proj (`w_dt`) with the time step's bias and softplus,
/// on the device of `x`: returns `(Δ, B, C)` for
/// [`selective_scan_activated`](super::scan::selective_scan_activated), in the format of `x`.
///
/// # Shapes
/// - x: `[batch, length, d_inner]`, w_x: `[d_inner, dt_rank + 2·d_state]`,
///   w_dt: `[dt_rank, d_inner]`, bias: `[d_inner]` (f32)
/// - returns Δ `[batch, length, d_inner]`, B and C `[batch, length, d_state]`
pub fn project_dbc(
    x: Tensor<3>,
    w_x: Tensor<2>,
    w_dt: Tensor<2>,
    bias: Tensor<1>,
) -> (Tensor<3>, Tensor<3>, Tensor<3>) {
    project_dbc_with(Impl::Fastest, x, w_x, w_dt, bias)
}

/// [`conv_dbc`] with a choice of implementation: the backend's (fused on CUDA in f16/bf16),
/// or the references of the convolution and of x_proj + dt_proj one after the other.
#[allow(clippy::too_many_arguments)]
pub fn conv_dbc_with(
    which: Impl,
    x: Tensor<3>,
    window: Tensor<3>,
    weight: Tensor<2>,
    bias: Tensor<1>,
    w_x: Tensor<2>,
    w_dt: Tensor<2>,
    dt_bias: Tensor<1>,
) -> ConvDbc {
    let input = ConvDbcInput {
        x: x.into_dispatch(),
        window: window.into_dispatch(),
        weight: weight.into_dispatch(),
        bias: bias.into_dispatch(),
        w_x: w_x.into_dispatch(),
        w_dt: w_dt.into_dispatch(),
        dt_bias: dt_bias.into_dispatch(),
    };
    let out = match which {
        Impl::Fastest => <Dispatch as BlockOpsBackend>::conv_dbc(input),
        Impl::Reference => conv_dbc_composed::<Dispatch>(
            input,
            <Dispatch as BlockOpsBackend>::causal_conv_silu_reference,
            project_dbc_reference::<Dispatch>,
        ),
    };
    ConvDbc {
        u: Tensor::from_dispatch(out.u),
        window: Tensor::from_dispatch(out.window),
        delta: Tensor::from_dispatch(out.delta),
        b: Tensor::from_dispatch(out.b),
        c: Tensor::from_dispatch(out.c),
    }
}

/// What [`conv_dbc`] returns.
#[derive(Debug, Clone)]
pub struct ConvDbc {
    /// `SiLU(conv(x) + bias)`: `[batch, length, d_inner]`, the format of `x`.
    pub u: Tensor<3>,
    /// The window after the chunk: `[batch, d_conv - 1, d_inner]`, the window's format.
    pub window: Tensor<3>,
    /// `softplus(dt · w_dt + dt_bias)`: `[batch, length, d_inner]`.
    pub delta: Tensor<3>,
    /// `[batch, length, d_state]`.
    pub b: Tensor<3>,
    /// `[batch, length, d_state]`.
    pub c: Tensor<3>,
}

/// The causal convolution + SiLU ([`causal_conv_silu`]) followed by x_proj and dt_proj on its
/// output ([`project_dbc`]), on the device of `x`: one operation, so that a backend may fuse
/// them (on CUDA in f16/bf16 one kernel computes `u`, writes it once for the scan and feeds it
/// to the tensor cores from registers).
///
/// # Shapes
/// - x: `[batch, length, >= d_inner]`, window: `[batch, d_conv - 1, d_inner]`,
///   weight: `[d_conv, d_inner]`, bias: `[d_inner]`, w_x: `[d_inner, dt_rank + 2·d_state]`,
///   w_dt: `[dt_rank, d_inner]`, dt_bias: `[d_inner]` (f32)
pub fn conv_dbc(
    x: Tensor<3>,
    window: Tensor<3>,
    weight: Tensor<2>,
    bias: Tensor<1>,
    w_x: Tensor<2>,
    w_dt: Tensor<2>,
    dt_bias: Tensor<1>,
) -> ConvDbc {
    conv_dbc_with(Impl::Fastest, x, window, weight, bias, w_x, w_dt, dt_bias)
}

/// A projection without bias, `x · w`, on the device of `x`.
///
/// # Shapes
/// - x: `[batch, length, in]`, w: `[in, out]`; returns `[batch, length, out]`
pub fn project(x: Tensor<3>, w: Tensor<2>) -> Tensor<3> {
    project_with(Impl::Fastest, x, w)
}

/// Causal depthwise convolution + SiLU on the device of `x`; returns `(u, next_window)`.
///
/// # Shapes
/// - x: `[batch, length, >= d_inner]`, window: `[batch, d_conv - 1, d_inner]`,
///   weight: `[d_conv, d_inner]`, bias: `[d_inner]`
/// - returns u: `[batch, length, d_inner]`, next window: `[batch, d_conv - 1, d_inner]`
pub fn causal_conv_silu(
    x: Tensor<3>,
    window: Tensor<3>,
    weight: Tensor<2>,
    bias: Tensor<1>,
) -> (Tensor<3>, Tensor<3>) {
    causal_conv_silu_with(Impl::Fastest, x, window, weight, bias)
}

/// RMSNorm over the last dimension on the device of `x`.
pub fn rms_norm(x: Tensor<3>, weight: Tensor<1>, eps: f64) -> Tensor<3> {
    rms_norm_with(Impl::Fastest, x, weight, eps)
}

/// The norm after the last block, on the device of `x`: `RMSNorm(x + y) · weight` in f32,
/// as [`add_rms_norm`]'s second result, without the sum.
///
/// # Shapes
/// - x, y: `[batch, length, d_model]`, weight: `[d_model]`; the result like `x`
pub fn add_rms_norm_only(x: Tensor<3>, y: Tensor<3>, weight: Tensor<1>, eps: f64) -> Tensor<3> {
    Tensor::from_dispatch(<Dispatch as BlockOpsBackend>::add_rms_norm_only(
        x.into_dispatch(),
        y.into_dispatch(),
        weight.into_dispatch(),
        eps,
    ))
}

/// [`add_rms_norm`] with a choice of implementation.
pub fn add_rms_norm_with(
    which: Impl,
    x: Tensor<3>,
    y: Tensor<3>,
    weight: Tensor<1>,
    eps: f64,
    out: FloatDType,
) -> (Tensor<3>, Tensor<3>) {
    let input = AddNormInput {
        x: x.into_dispatch(),
        y: y.into_dispatch(),
        weight: weight.into_dispatch(),
    };
    let o = match which {
        Impl::Fastest => <Dispatch as BlockOpsBackend>::add_rms_norm(input, eps, out),
        Impl::Reference => <Dispatch as BlockOpsBackend>::add_rms_norm_reference(input, eps, out),
    };
    (
        Tensor::from_dispatch(o.sum),
        Tensor::from_dispatch(o.normed),
    )
}

/// The residual add between blocks fused with the next norm, on the device of `x`: returns
/// `(x + y, RMSNorm(x + y) · weight)`, the sum in f32 and the norm in `out`.
///
/// # Shapes
/// - x, y: `[batch, length, d_model]`, weight: `[d_model]`; both results like `x`
pub fn add_rms_norm(
    x: Tensor<3>,
    y: Tensor<3>,
    weight: Tensor<1>,
    eps: f64,
    out: FloatDType,
) -> (Tensor<3>, Tensor<3>) {
    add_rms_norm_with(Impl::Fastest, x, y, weight, eps, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights::host_values as host;
    use burn::tensor::{Device, TensorData};

    fn one_product<B: Backend>(x: FloatTensor<B>, w: FloatTensor<B>) -> FloatTensor<B> {
        B::float_matmul(x, batched_weight::<B>(w))
    }

    /// f16 products sum in f32 for one row as for many: 4,096 ones times ones is 4,096 (a
    /// running f16 sum stops at 2,048, where adding 1 rounds back), so a chunk or record of
    /// one position gets the values the same position gets inside a longer one.
    #[test]
    fn f16_projection_sums_in_f32_for_one_row_as_for_many() {
        let device = Device::flex();
        let k = 4096;
        for rows in [1, 4] {
            let x = Tensor::<3>::ones([1, rows, k], &device).cast(FloatDType::F16);
            let w = Tensor::<2>::ones([k, 3], &device).cast(FloatDType::F16);
            let y = Tensor::<3>::from_dispatch(project_reference::<Dispatch>(
                x.into_dispatch(),
                w.into_dispatch(),
            ));
            assert_eq!(y.dtype(), burn::tensor::DType::F16);
            let y = host(y.cast(FloatDType::F32));
            assert!(y.iter().all(|&v| v == 4096.0), "{rows} row(s): {y:?}");
        }
    }

    /// The projection of a row longer than `TIME_GROUP` steps, taken as rows of 64 steps,
    /// against one product over the row: the same values and input gradient, and the weight's
    /// gradient to rounding; on the autodiff CPU backend.
    #[test]
    fn projection_of_a_long_row_keeps_values_and_gradients() {
        let ad = Device::flex().autodiff();
        let (len, k, n) = (4160, 6, 5);
        let xv: Vec<f32> = (0..len * k)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let wv: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |grouped: bool| {
            let x: Tensor<3> =
                Tensor::from_data(TensorData::new(xv.clone(), [1, len, k]), &ad).require_grad();
            let w: Tensor<2> =
                Tensor::from_data(TensorData::new(wv.clone(), [k, n]), &ad).require_grad();
            let (xp, wp) = (x.clone().into_dispatch(), w.clone().into_dispatch());
            let y = Tensor::<3>::from_dispatch(if grouped {
                project_reference::<Dispatch>(xp, wp)
            } else {
                one_product::<Dispatch>(xp, wp)
            });
            let weights: Tensor<3> = Tensor::arange(0..(len * n) as i64, &ad)
                .float()
                .reshape([1, len, n])
                .sin();
            let grads = (y.clone() * weights).sum().backward();
            let gx = x.grad(&grads).expect("x gradient");
            let gw = w.grad(&grads).expect("weight gradient");
            (host(y), host(gx), host(gw))
        };
        assert_eq!(time_rows(1, len), (65, 64));
        let (grouped, one) = (run(true), run(false));
        for (what, g, o) in [
            ("values", &grouped.0, &one.0),
            ("x gradient", &grouped.1, &one.1),
            ("weight gradient", &grouped.2, &one.2),
        ] {
            for (a, b) in g.iter().zip(o) {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "{what}: {a} against {b}"
                );
            }
        }
    }

    /// Per-channel parameters on rows longer than `TIME_GROUP` steps: the grouped form gives
    /// the same values and the same gradients of `x` as one group per row, and the parameter's
    /// gradient to rounding (summed in another order); on the autodiff CPU backend.
    #[test]
    fn per_channel_ops_on_long_rows_keep_values_and_gradients() {
        assert_eq!(time_group(2048), None);
        assert_eq!(time_group(4097), None);
        assert_eq!(time_group(4160), Some(64));
        assert_eq!(time_group(131_072), Some(2048));
        let ad = Device::flex().autodiff();
        for (shape, op) in [
            ([1, 4160, 6], ChannelOp::Mul),
            ([1, 4160, 6], ChannelOp::Add),
            ([2, 4096, 3], ChannelOp::Mul),
        ] {
            let [batch, len, d] = shape;
            let n = batch * len * d;
            let xv: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                .collect();
            let wv: Vec<f32> = (0..d).map(|i| 0.5 + i as f32 * 0.25).collect();
            let run = |group: bool| {
                let x: Tensor<3> =
                    Tensor::from_data(TensorData::new(xv.clone(), shape), &ad).require_grad();
                let w: Tensor<1> =
                    Tensor::from_data(TensorData::new(wv.clone(), [d]), &ad).require_grad();
                let y = Tensor::<3>::from_dispatch(per_channel_op_with::<Dispatch>(
                    x.clone().into_dispatch(),
                    w.clone().into_dispatch(),
                    op,
                    group,
                ));
                let weights: Tensor<3> = Tensor::arange(0..n as i64, &ad)
                    .float()
                    .reshape(shape)
                    .sin();
                let grads = (y.clone() * weights).sum().backward();
                let gx = x.grad(&grads).expect("x gradient");
                let gw = w.grad(&grads).expect("parameter gradient");
                (host(y), host(gx), host(gw))
            };
            let (grouped, rows) = (run(true), run(false));
            assert_eq!(grouped.0, rows.0, "{shape:?} {op:?}: values");
            assert_eq!(grouped.1, rows.1, "{shape:?} {op:?}: x gradient");
            for (g, r) in grouped.2.iter().zip(&rows.2) {
                assert!(
                    (g - r).abs() <= 1e-5 * r.abs().max(1.0),
                    "{shape:?} {op:?}: parameter gradient {g} against {r}"
                );
            }
        }
    }
}
