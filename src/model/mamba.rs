//! The Mamba-1 backbone in Burn: embedding, residual blocks, final RMSNorm.
//!
//! One code path serves the three uses of a block: the whole sequence (a chunk that starts
//! from the zero state), a chunk continuing from a carried [`LayerState`], and a single step
//! (a chunk of length 1).

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};

use super::config::MambaConfig;
use super::state::{LayerState, MambaState};
use crate::ops::block::add_rms_norm;
use crate::ops::{ScanArgs, selective_scan, selective_scan_activated, selective_scan_gated};
use crate::{Error, Result};

/// Number format of the activations inside the blocks (`--precision`).
///
/// With a half format, each block's input is rounded to it after the norm, and everything up
/// to the block's output stays in it: the four projections (in, x, Δ and out, weights stored
/// in the format), the convolution's input and output, and the selective scan's inputs and
/// output. The embedding, the norms, the residual stream, the scan's state and all arithmetic
/// inside the kernels stay f32. On a GPU that halves the bytes the blocks move and runs the
/// products on the tensor cores' half-precision path; on the CPU it only loses precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Everything in f32 (the default).
    #[default]
    F32,
    /// bfloat16 activations (8 significant bits, f32's range).
    Bf16,
    /// IEEE half activations (11 significant bits, range ±65,504).
    F16,
}

impl Precision {
    /// The half format, or `None` for f32.
    pub fn half(self) -> Option<FloatDType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(FloatDType::BF16),
            Precision::F16 => Some(FloatDType::F16),
        }
    }

    /// The name `--precision` takes for it.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "f16" | "fp16" => Ok(Precision::F16),
            _ => Err(Error::usage(
                format!("unknown precision '{s}'"),
                "use --precision f32, bf16 or f16",
            )),
        }
    }
}

/// `linear` applied to `x`, in `half` when given (the weight is already stored in it, see
/// [`Mamba::set_precision`]; the result stays in it), else as the layer is. The product goes
/// through the block operations' `project` (a chosen matrix-product kernel on GPUs).
fn project(linear: &Linear, x: Tensor<3>, half: Option<FloatDType>) -> Tensor<3> {
    let y = crate::ops::block::project(in_format(x, half), linear.weight.val());
    match (&linear.bias, half) {
        (Some(b), Some(half)) => y + b.val().cast(half).unsqueeze::<3>(),
        (Some(b), None) => y + b.val().unsqueeze::<3>(),
        (None, _) => y,
    }
}

/// `x` in the half format `half`, if one is given.
fn in_format(x: Tensor<3>, half: Option<FloatDType>) -> Tensor<3> {
    match half {
        Some(half) if x.dtype() != burn::tensor::DType::from(half) => x.cast(half),
        _ => x,
    }
}

/// Root-mean-square layer norm: `x / sqrt(mean(x²) + eps) * weight`.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// Per-channel scale, `[d_model]`.
    pub weight: Param<Tensor<1>>,
    /// Added to the mean square before the square root.
    #[module(skip)]
    pub eps: f64,
}

impl RmsNorm {
    /// # Shapes
    /// - x: `[batch, length, d_model]` -> same
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        crate::ops::block::rms_norm(x, self.weight.val(), self.eps)
    }
}

/// The Mamba mixer of one residual block, with its pre-norm.
#[derive(Module, Debug)]
pub struct MambaBlock {
    /// Pre-norm of the block.
    pub norm: RmsNorm,
    /// `d_model -> 2·d_inner` (x and gate z).
    pub in_proj: Linear,
    /// Depthwise causal convolution weights, `[d_conv, d_inner]` (tap k multiplies x[t-(d_conv-1)+k]).
    pub conv_weight: Param<Tensor<2>>,
    /// Convolution bias, `[d_inner]`.
    pub conv_bias: Option<Param<Tensor<1>>>,
    /// `d_inner -> dt_rank + 2·d_state` (Δ, B, C), no bias.
    pub x_proj: Linear,
    /// `dt_rank -> d_inner`, no bias (its bias is [`Self::dt_bias`], applied inside the scan).
    pub dt_proj: Linear,
    /// Bias of the Δ projection, `[d_inner]`.
    pub dt_bias: Param<Tensor<1>>,
    /// `log(-A)`, `[d_inner, d_state]`.
    pub a_log: Param<Tensor<2>>,
    /// Skip connection, `[d_inner]`.
    pub d: Param<Tensor<1>>,
    /// `d_inner -> d_model`.
    pub out_proj: Linear,
    /// Sizes: d_inner, d_state, dt_rank, d_conv.
    #[module(skip)]
    pub sizes: [usize; 4],
    /// Format of the block's activations (set through [`Mamba::set_precision`]).
    #[module(skip)]
    pub precision: Precision,
    /// Zeros, `[d_inner]`, when the block runs dt_proj with the Δ bias and softplus fused
    /// ([`project_softplus`](crate::ops::block::project_softplus)) and the scan without them
    /// ([`selective_scan_activated`]), as set by
    /// [`Mamba::set_precision`] off the CPU; `None` runs the bias and softplus in the scan.
    #[module(skip)]
    pub no_bias: Option<Tensor<1>>,
}

impl MambaBlock {
    /// A zero state for this block.
    pub fn zero_state(&self, batch: usize, device: &Device) -> LayerState {
        let [d_inner, d_state, _, d_conv] = self.sizes;
        LayerState {
            conv: Tensor::zeros([batch, d_conv.saturating_sub(1), d_inner], device),
            ssm: Tensor::zeros([batch, d_inner, d_state], device),
        }
    }

    /// Runs the block over a chunk, continuing from `state`; returns the residual output and
    /// the state after the chunk.
    ///
    /// # Shapes
    /// - x: `[batch, length, d_model]` -> `[batch, length, d_model]`
    pub fn forward(&self, x: Tensor<3>, state: LayerState) -> (Tensor<3>, LayerState) {
        let (out, state) = self.mix(self.norm.forward(x.clone()), state);
        (x + out.cast(FloatDType::F32), state)
    }

    /// x_proj's output split into its `dt`, `B` and `C` columns (views).
    fn x_proj_columns(
        &self,
        u: Tensor<3>,
        half: Option<FloatDType>,
    ) -> (Tensor<3>, Tensor<3>, Tensor<3>) {
        let [_, d_state, dt_rank, _] = self.sizes;
        let [batch, len, _] = u.dims();
        let dbc = project(&self.x_proj, u, half);
        let dt = dbc.clone().slice([0..batch, 0..len, 0..dt_rank]);
        let b = dbc
            .clone()
            .slice([0..batch, 0..len, dt_rank..dt_rank + d_state]);
        let c = dbc.slice([0..batch, 0..len, dt_rank + d_state..dt_rank + 2 * d_state]);
        (dt, b, c)
    }

    /// Format of the block's activations: the format its input should be normed into.
    pub fn activation_dtype(&self) -> FloatDType {
        self.precision.half().unwrap_or(FloatDType::F32)
    }

    /// The mixer alone: runs over `normed` (the block's input after its norm, in f32 or the
    /// block's activation format) continuing from `state`; returns what the block adds to
    /// the residual stream, in the activation format, and the state after the chunk.
    ///
    /// # Shapes
    /// - normed: `[batch, length, d_model]` -> `[batch, length, d_model]`
    pub fn mix(&self, normed: Tensor<3>, state: LayerState) -> (Tensor<3>, LayerState) {
        let half = self.precision.half();
        let (y, state) = self.mix_y(MixInput::Normed(normed), state);
        (project(&self.out_proj, y, half), state)
    }

    /// Whether in_proj applies the gate's SiLU to its `z` columns itself: in f16/bf16, where
    /// the scan takes an activated Δ (off the CPU) and in_proj has no bias (in the tensor-core
    /// kernel's epilogue on CUDA), the scan then multiplying by the gate as it is. Not in f32:
    /// no kernel of in_proj's applies it there, and as tensor operations it would cost a copy
    /// of in_proj's output.
    fn gated(&self) -> bool {
        self.precision.half().is_some()
            && self.no_bias.is_some()
            && self.in_proj.bias.is_none()
            && gate_in_proj()
    }

    /// Whether the residual stream reaches this block's in_proj not yet normed: where in_proj
    /// is `Self::gated` and out_proj has no bias, out_proj adds its output to the stream
    /// ([`project_add`](crate::ops::block::project_add)) and the next in_proj applies its
    /// block's norm ([`project_norm_silu_from`](crate::ops::block::project_norm_silu_from)),
    /// each in the tensor-core kernel on CUDA, so the block's output and the normed input are
    /// never written. `GENOMAMBA_FOLD_NORM=off` keeps the separate add-and-norm kernel.
    pub fn folds_norm(&self) -> bool {
        self.gated() && self.out_proj.bias.is_none() && fold_norm()
    }

    /// The mixer up to the scan: runs over `input` continuing from `state`; returns the
    /// scan's output (what out_proj projects), in the activation format, and the state after
    /// the chunk.
    ///
    /// # Shapes
    /// - input: `[batch, length, d_model]` -> `[batch, length, d_inner]`
    pub fn mix_y(&self, input: MixInput, state: LayerState) -> (Tensor<3>, LayerState) {
        let [d_inner, _, _, _] = self.sizes;
        let half = self.precision.half();
        let gated = self.gated();
        let normed = match input {
            MixInput::Stream(x) if gated => {
                let x = in_format(x, half);
                let xz = crate::ops::block::project_norm_silu_from(
                    x,
                    self.norm.weight.val(),
                    self.in_proj.weight.val(),
                    self.norm.eps,
                    d_inner,
                );
                return self.mix_from(xz, gated, state);
            }
            MixInput::Stream(x) => self.norm.forward(x.cast(FloatDType::F32)),
            MixInput::Normed(normed) => normed,
        };
        let xz = if gated {
            crate::ops::block::project_silu_from(
                in_format(normed, half),
                self.in_proj.weight.val(),
                d_inner,
            )
        } else {
            project(&self.in_proj, normed, half)
        };
        self.mix_from(xz, gated, state)
    }

    /// The mixer from in_proj's output `xz` (`z` already activated with `gated`) to the scan's
    /// output.
    fn mix_from(&self, xz: Tensor<3>, gated: bool, state: LayerState) -> (Tensor<3>, LayerState) {
        let [d_inner, _, _, _] = self.sizes;
        let [batch, len, _] = xz.dims();
        let half = self.precision.half();
        let z = xz.clone().slice([0..batch, 0..len, d_inner..2 * d_inner]);

        // Causal depthwise conv over [carried window | chunk], fused with SiLU; it reads the
        // first d_inner channels of in_proj's output (the x branch).
        let bias = match &self.conv_bias {
            Some(b) => b.val(),
            None => Tensor::zeros([d_inner], &xz.device()),
        };
        // The carried window is kept in f32 between chunks and used in the activations'
        // format (its values came from that format, so the round trip is exact).
        let window = match half {
            Some(h) => state.conv.cast(h),
            None => state.conv,
        };
        // Input-dependent Δ, B, C (Algorithm 2, lines 3-5).
        let a = self.a_log.val().exp().neg();
        // With `no_bias`, Δ = softplus(dt · W + bias) is made with the projections (once per
        // element, instead of once in each of the scan's passes) and the scan adds a zero bias.
        // Where x_proj has no bias, the convolution, x_proj and dt_proj are one operation,
        // `conv_dbc` (one kernel on CUDA in f16/bf16, so `u` is not read back for x_proj).
        type Scan = fn(ScanArgs) -> (Tensor<3>, Tensor<3>);
        let (u, new_conv, delta, b, c, delta_bias, scan): (_, _, _, _, _, _, Scan) =
            match (&self.no_bias, &self.x_proj.bias) {
                (Some(zeros), None) => {
                    let out = crate::ops::block::conv_dbc(
                        xz,
                        window,
                        self.conv_weight.val(),
                        bias,
                        self.x_proj.weight.val(),
                        self.dt_proj.weight.val(),
                        self.dt_bias.val(),
                    );
                    let (delta, b, c) = (out.delta, out.b, out.c);
                    let (u, w) = (out.u, out.window);
                    (u, w, delta, b, c, zeros.clone(), selective_scan_activated)
                }
                (no_bias, _) => {
                    let (u, w) = crate::ops::block::causal_conv_silu(
                        xz,
                        window,
                        self.conv_weight.val(),
                        bias,
                    );
                    let (dt, b, c) = self.x_proj_columns(u.clone(), half);
                    match no_bias {
                        Some(zeros) => {
                            let delta = crate::ops::block::project_softplus(
                                in_format(dt, half),
                                self.dt_proj.weight.val(),
                                self.dt_bias.val(),
                            );
                            (u, w, delta, b, c, zeros.clone(), selective_scan_activated)
                        }
                        None => {
                            let delta = project(&self.dt_proj, dt, half);
                            (u, w, delta, b, c, self.dt_bias.val(), selective_scan)
                        }
                    }
                }
            };
        let new_conv = new_conv.cast(FloatDType::F32);
        let scan: Scan = if gated { selective_scan_gated } else { scan };
        let (y, ssm) = scan(ScanArgs {
            u,
            delta,
            a,
            b,
            c,
            d: self.d.val(),
            z,
            delta_bias,
            h0: state.ssm,
        });
        (
            y,
            LayerState {
                conv: new_conv,
                ssm,
            },
        )
    }
}

/// What a block's mixer starts from ([`MambaBlock::mix_y`]).
#[derive(Debug, Clone)]
pub enum MixInput {
    /// The block's input after its norm (f32 or the activation format).
    Normed(Tensor<3>),
    /// The residual stream itself, in the activation format, which in_proj normalises with the
    /// block's norm ([`MambaBlock::folds_norm`]; otherwise the norm runs first).
    Stream(Tensor<3>),
}

/// Whether blocks that can ([`MambaBlock::folds_norm`]) fold the residual add into out_proj and
/// the norm into in_proj: yes unless `GENOMAMBA_FOLD_NORM` is `off`, for comparisons.
fn fold_norm() -> bool {
    std::env::var("GENOMAMBA_FOLD_NORM").map_or(true, |v| v != "off")
}

/// Whether the first block, in f16/bf16, folds its norm into in_proj too (from the embedding
/// rounded to the activation format, as the later blocks fold theirs from the stream so
/// rounded): yes unless `GENOMAMBA_FOLD_NORM` is `off` or `after-first`, for comparisons.
fn fold_first_norm() -> bool {
    std::env::var("GENOMAMBA_FOLD_NORM").map_or(true, |v| v != "off" && v != "after-first")
}

/// Whether blocks off the CPU run dt_proj with the Δ bias and softplus fused (see
/// [`MambaBlock::no_bias`]): yes unless the environment variable `GENOMAMBA_FUSED_DT` is
/// `off`, for comparisons. The CPU's scan applies them in its own loop, so it keeps them.
fn fused_dt() -> bool {
    std::env::var("GENOMAMBA_FUSED_DT").map_or(true, |v| v != "off")
}

/// Whether blocks in f16/bf16 that run the scan with an activated Δ ([`fused_dt`]) and have no
/// in_proj bias apply the gate's SiLU in in_proj ([`project_silu_from`](crate::ops::block::project_silu_from))
/// and run [`selective_scan_gated`]: yes unless the environment variable
/// `GENOMAMBA_GATE_IN_PROJ` is `off`, for comparisons.
fn gate_in_proj() -> bool {
    std::env::var("GENOMAMBA_GATE_IN_PROJ").map_or(true, |v| v != "off")
}

/// `w` stored row-major on its device, unless that is the CPU (whose matrix product reads
/// either layout; its measured speeds were taken with the transposed views).
fn row_major(w: Tensor<2>) -> Tensor<2> {
    let device = w.device();
    if device == Device::flex() {
        return w;
    }
    let dtype = w.dtype();
    // The host copy is in logical (row-major) order; the format is restored in case the
    // upload widens it.
    Tensor::<2>::from_data(w.into_data(), &device).cast(FloatDType::from(dtype))
}

/// `w` (`[in, out]`) stored as `[out, in]` on its device and handed back as the transposed view,
/// unless the device is the CPU (see [`row_major`]).
fn out_major(w: Tensor<2>) -> Tensor<2> {
    let device = w.device();
    if device == Device::flex() {
        return w;
    }
    let dtype = w.dtype();
    Tensor::<2>::from_data(w.transpose().into_data(), &device)
        .cast(FloatDType::from(dtype))
        .transpose()
}

/// Positions per group of [`lookup`]'s gradient product.
const LOOKUP_GROUP: usize = 256;

/// Rows `ids` of the table `w` (`[rows, d]` -> `[ids, d]`): the token and phase embeddings.
///
/// The values are always `w.select(0, ids)`. When `w` takes a gradient (training), the
/// gradient instead flows through products of one-hot matrices of `ids` with `w`, groups of
/// [`LOOKUP_GROUP`] positions side by side, whose backward is one batched product and a sum
/// over the groups. The backward of `select` would be Burn's `select_assign`, which on CubeCL
/// runs one thread per column of the table, each walking every position in turn: 64 threads
/// for 131,072 positions, about 70-78 ms of a GPU training step on an H200 (BENCHMARKS.md,
/// thirty-fifth and thirty-sixth sessions); one product over all positions at once would
/// likewise run in a couple of cubes. Written as `rows + (p - p)` with the second `p`
/// detached, the added term is exactly zero, so the values do not depend on how the product
/// rounds (Burn may run f32 products as TF32 on tensor cores).
pub(crate) fn lookup(w: Tensor<2>, ids: Tensor<1, Int>) -> Tensor<2> {
    if !w.is_require_grad() {
        return w.select(0, ids);
    }
    let [n] = ids.dims();
    let [rows, d] = w.dims();
    let device = w.device();
    // Autodiff's `detach` keeps a leaf's `require_grad` (and so a backward for the select);
    // this makes an untracked copy.
    let values = w.clone().set_require_grad(false).select(0, ids.clone());
    let groups = n.div_ceil(LOOKUP_GROUP).max(1);
    let padded = groups * LOOKUP_GROUP;
    // Padding positions name row `rows`, which no row matches: zero rows of the one-hot.
    let ids = if padded > n {
        let pad = Tensor::<1, Int>::full([padded - n], rows as i64, &device);
        Tensor::cat(vec![ids, pad], 0)
    } else {
        ids
    };
    let shape = [groups, LOOKUP_GROUP, rows];
    let row_ids = Tensor::<1, Int>::arange(0..rows as i64, &device)
        .reshape([1, 1, rows])
        .expand(shape);
    let one_hot = ids
        .reshape([groups, LOOKUP_GROUP, 1])
        .expand(shape)
        .equal(row_ids)
        .float();
    let table = w.reshape([1, rows, d]).expand([groups, rows, d]);
    let product = one_hot
        .matmul(table)
        .reshape([padded, d])
        .slice([0..n, 0..d]);
    values + (product.clone() - product.detach())
}

/// The Mamba backbone: embedding, blocks, final norm.
#[derive(Module, Debug)]
pub struct Mamba {
    /// Token embedding, `[vocab_size, d_model]`.
    pub embedding: Param<Tensor<2>>,
    /// Position-phase embedding, `[phase_period, d_model]`, added to the token embedding.
    pub phase: Option<Param<Tensor<2>>>,
    /// Residual blocks.
    pub layers: Vec<MambaBlock>,
    /// Final norm.
    pub norm_f: RmsNorm,
}

impl Mamba {
    /// Runs the blocks in `precision` from now on (see [`Precision`]): stores the four
    /// projection weights of every block in that format (bias stays f32), so the
    /// rounding stays: going back to f32 later does not restore the original weights. For
    /// inference; training keeps f32.
    ///
    /// On devices other than the CPU the projection and convolution weights are also stored
    /// in the layout their GPU kernels read: in_proj, out_proj and the convolution row-major
    /// (`[in, out]`, `[d_conv, d_inner]`); x_proj and dt_proj in f16/bf16 as `[out, in]`
    /// (transposed views), for the convolution + x_proj/dt_proj kernel. Loaded from PyTorch's
    /// `[out, in]` they are transposed views, which the kernels would otherwise copy into their
    /// layout on every call (small copies per layer and chunk). The values do not change. Off the CPU the
    /// blocks also run dt_proj with the Δ bias and softplus fused and the scan without them
    /// ([`MambaBlock::no_bias`]; `GENOMAMBA_FUSED_DT=off` keeps them in the scan).
    pub fn set_precision(&mut self, precision: Precision) {
        let dtype = precision.half().unwrap_or(FloatDType::F32);
        for layer in &mut self.layers {
            for lin in [&mut layer.in_proj, &mut layer.out_proj] {
                lin.weight = Param::from_tensor(row_major(lin.weight.val().cast(dtype)));
            }
            // x_proj and dt_proj in f16/bf16 go to the convolution + x_proj/dt_proj kernel,
            // which reads them as `[out, in]`: stored that way, as transposed views, they are
            // not copied into that layout on every call.
            let place = if precision.half().is_some() {
                out_major
            } else {
                row_major
            };
            for lin in [&mut layer.x_proj, &mut layer.dt_proj] {
                lin.weight = Param::from_tensor(place(lin.weight.val().cast(dtype)));
            }
            layer.conv_weight = Param::from_tensor(row_major(layer.conv_weight.val()));
            layer.precision = precision;
            let device = layer.dt_bias.val().device();
            layer.no_bias = (device != Device::flex() && fused_dt())
                .then(|| Tensor::zeros([layer.sizes[0]], &device));
        }
    }

    /// Width of the hidden states.
    pub fn d_model(&self) -> usize {
        self.embedding.val().dims()[1]
    }

    /// Period of the phase embedding (0 when the model has none).
    pub fn phase_period(&self) -> usize {
        self.phase.as_ref().map_or(0, |p| p.val().dims()[0])
    }

    /// A zero state for every layer, at position 0 of every row.
    pub fn zero_state(&self, batch: usize, device: &Device) -> MambaState {
        MambaState {
            layers: self
                .layers
                .iter()
                .map(|l| l.zero_state(batch, device))
                .collect(),
            phase: vec![0; batch],
        }
    }

    /// A zero state for running reverse complements: row `b` holds the reverse complement of
    /// a record of `lengths[b]` bases, and its phases follow the original record's
    /// coordinates negated (the base at original position `x` gets phase `-x mod period`), so
    /// that the pairing of forward and reverse phases at a base does not depend on the
    /// record's length.
    pub fn zero_state_reverse(&self, lengths: &[usize], device: &Device) -> MambaState {
        let mut state = self.zero_state(lengths.len(), device);
        state.phase = lengths
            .iter()
            .map(|&n| reverse_start_phase(n, self.phase_period()))
            .collect();
        state
    }

    /// Embeds token ids.
    ///
    /// # Shapes
    /// - tokens: `[batch, length]` -> `[batch, length, d_model]`
    pub fn embed(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let [batch, len] = tokens.dims();
        let w = self.embedding.val();
        let d = w.dims()[1];
        lookup(w, tokens.reshape([batch * len])).reshape([batch, len, d])
    }

    /// Hidden states of the final layer (after the final norm) for one chunk, continuing from
    /// `state`; returns them and the state after the chunk.
    ///
    /// # Shapes
    /// - tokens: `[batch, length]` -> `[batch, length, d_model]`
    pub fn forward(&self, tokens: Tensor<2, Int>, state: MambaState) -> (Tensor<3>, MambaState) {
        let (x, phase) = self.embed_chunk(tokens, state.phase);
        let all = 0..self.layers.len();
        let (stream, layers) = self.forward_layers(
            Residual {
                x,
                pending: None,
                half: None,
            },
            all,
            state.layers,
        );
        (self.finish(stream), MambaState { layers, phase })
    }

    /// The input of the first block for one chunk: token embedding plus, for models with one,
    /// the phase embedding from per-row phases `phase`; returns it and the phases after the
    /// chunk.
    ///
    /// # Shapes
    /// - tokens: `[batch, length]` -> `[batch, length, d_model]`
    pub fn embed_chunk(
        &self,
        tokens: Tensor<2, Int>,
        mut phase: Vec<usize>,
    ) -> (Tensor<3>, Vec<usize>) {
        let [batch, len] = tokens.dims();
        let device = tokens.device();
        let mut x = self.embed(tokens);
        if let Some(table) = &self.phase {
            let w = table.val();
            let [period, d] = w.dims();
            let ids: Vec<i64> = (0..batch)
                .flat_map(|b| {
                    let p0 = phase.get(b).copied().unwrap_or(0);
                    (0..len).map(move |t| ((p0 + t) % period) as i64)
                })
                .collect();
            let ids: Tensor<1, Int> =
                Tensor::from_data(TensorData::new(ids, [batch * len]), &device);
            x = x + lookup(w, ids).reshape([batch, len, d]);
            phase = (0..batch)
                .map(|b| (phase.get(b).copied().unwrap_or(0) + len) % period)
                .collect();
        }
        (x, phase)
    }

    /// Runs blocks `layers` (in order) over one chunk's residual stream, continuing from their
    /// states `states` (one per block of the range); returns the stream after them and their
    /// states after the chunk. [`Self::forward`] is this over all blocks between
    /// [`Self::embed_chunk`] and [`Self::finish`]; a range lets the blocks be split across
    /// threads (one chunk in the first half while the previous chunk is in the second).
    pub fn forward_layers(
        &self,
        stream: Residual,
        layers: std::ops::Range<usize>,
        states: Vec<LayerState>,
    ) -> (Residual, Vec<LayerState>) {
        let Residual {
            mut x,
            mut pending,
            mut half,
        } = stream;
        let mut next = Vec::with_capacity(layers.len());
        // Each add of a block's output to the stream runs fused with the next norm (one
        // kernel on GPUs, one pass on the CPU), or, where blocks fold them into their
        // projections ([`MambaBlock::folds_norm`]), in out_proj, the norm in the next in_proj.
        let count = self.layers.len();
        for ((i, layer), st) in layers.clone().zip(&self.layers[layers]).zip(states) {
            let input = match pending.take() {
                Some(out) => {
                    let (sum, normed) = add_rms_norm(
                        x,
                        out,
                        layer.norm.weight.val(),
                        layer.norm.eps,
                        layer.activation_dtype(),
                    );
                    x = sum;
                    MixInput::Normed(normed)
                }
                None => match half.take() {
                    Some(h) if layer.folds_norm() => MixInput::Stream(h),
                    // The first block: one cast of the stream (in `mix_y`) instead of the
                    // norm's own kernels, where in_proj can fold the norm.
                    None if layer.folds_norm() && fold_first_norm() => MixInput::Stream(x.clone()),
                    _ => MixInput::Normed(layer.norm.forward(x.clone())),
                },
            };
            let (y, s) = layer.mix_y(input, st);
            // The last block leaves its output to `finish`, whose add and final norm are one
            // kernel (a lone norm of the f32 stream would be tensor operations).
            if layer.folds_norm() && i + 1 < count {
                let (sum, h) = crate::ops::block::project_add(
                    in_format(y, layer.precision.half()),
                    layer.out_proj.weight.val(),
                    x,
                );
                x = sum;
                half = Some(h);
            } else {
                pending = Some(project(&layer.out_proj, y, layer.precision.half()));
            }
            next.push(s);
        }
        (Residual { x, pending, half }, next)
    }

    /// The final norm over the stream after the last block: the hidden states.
    pub fn finish(&self, stream: Residual) -> Tensor<3> {
        match stream.pending {
            None => self.norm_f.forward(stream.x),
            Some(out) => {
                let w = self.norm_f.weight.val();
                crate::ops::block::add_rms_norm_only(stream.x, out, w, self.norm_f.eps)
            }
        }
    }
}

/// The residual stream of one chunk between blocks: the sum so far (f32) and the last block's
/// output not yet added to it (added, fused with the next norm, by whatever runs next).
#[derive(Debug, Clone)]
pub struct Residual {
    /// `[batch, length, d_model]`, f32.
    pub x: Tensor<3>,
    /// `[batch, length, d_model]` in the blocks' activation format, or none.
    pub pending: Option<Tensor<3>>,
    /// `x` in the blocks' activation format, where the last block added its output itself
    /// ([`MambaBlock::folds_norm`]), for the next block's in_proj; else none.
    pub half: Option<Tensor<3>>,
}

/// Phase of the first position of the reverse complement of an `n`-base record, when the
/// base at original position `x` has phase `-x mod period` (see [`Mamba::zero_state_reverse`]).
pub fn reverse_start_phase(n: usize, period: usize) -> usize {
    if period == 0 || n == 0 {
        return 0;
    }
    (period - (n - 1) % period) % period
}

/// Builds an untrained backbone from a config (parameters set by [`super::init`]).
pub fn sizes_of(cfg: &MambaConfig) -> [usize; 4] {
    [cfg.d_inner(), cfg.d_state, cfg.dt_rank(), cfg.d_conv]
}

#[cfg(test)]
mod tests {
    use super::lookup;
    use crate::model::weights::host_values as host;
    use burn::tensor::{Device, Int, Tensor, TensorData};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn lookup_gives_the_selected_rows_and_their_summed_gradients() {
        check_lookup(Device::flex());
        // The CubeCL stack (fusion over the CubeCL backend) that CUDA devices run, on the CPU.
        #[cfg(feature = "cube-cpu")]
        check_lookup(Device::cpu());
    }

    fn check_lookup(plain: Device) {
        // Fewer positions than a group, exactly one group, and a padded last group.
        for n in [1, 256, 301] {
            check_lookup_of(&plain, n);
        }
    }

    fn check_lookup_of(plain: &Device, n: usize) {
        let dev = plain.clone().autodiff();
        let mut rng = StdRng::seed_from_u64(5);
        let (rows, d) = (12, 5);
        let w: Vec<f32> = (0..rows * d).map(|_| rng.random_range(-1.0..1.0)).collect();
        let ids: Vec<i64> = (0..n).map(|_| rng.random_range(0..rows as i64)).collect();
        let r: Vec<f32> = (0..n * d).map(|_| rng.random_range(-1.0..1.0)).collect();
        let wt: Tensor<2> =
            Tensor::from_data(TensorData::new(w.clone(), [rows, d]), &dev).require_grad();
        let rt: Tensor<2> =
            Tensor::from_data(TensorData::new(r.clone(), [n, d]), &dev).require_grad();
        let it: Tensor<1, Int> = Tensor::from_data(TensorData::new(ids.clone(), [n]), &dev);
        let out = lookup(wt.clone(), it.clone());
        // Values: exactly the table's rows.
        let got = host(out.clone());
        for (i, &id) in ids.iter().enumerate() {
            let row = id as usize;
            assert_eq!(
                &got[i * d..(i + 1) * d],
                &w[row * d..(row + 1) * d],
                "row {i}"
            );
        }
        // Gradients: each table row sums the weights of the positions that read it; the
        // other factor of the loss gets the rows themselves.
        let grads = (out * rt.clone()).sum().backward();
        let gw = host(wt.grad(&grads).expect("table gradient"));
        let gr = host(rt.grad(&grads).expect("weight gradient"));
        let mut want = vec![0.0f64; rows * d];
        for (i, &id) in ids.iter().enumerate() {
            for j in 0..d {
                want[id as usize * d + j] += r[i * d + j] as f64;
            }
        }
        for (k, (&g, &e)) in gw.iter().zip(&want).enumerate() {
            assert!(
                (g as f64 - e).abs() < 1e-5 * (1.0 + e.abs()),
                "table grad {k}: {g} vs {e}"
            );
        }
        assert_eq!(gr, got, "the other factor's gradient is the looked-up rows");
        // Without a gradient it is a plain select.
        let wp: Tensor<2> = Tensor::from_data(TensorData::new(w.clone(), [rows, d]), plain);
        let ip: Tensor<1, Int> = Tensor::from_data(TensorData::new(ids, [n]), plain);
        assert_eq!(host(lookup(wp.clone(), ip.clone())), host(wp.select(0, ip)));
    }
}
