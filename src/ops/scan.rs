//! The selective scan (Mamba's S6 recurrence) as a backend-extension operation.
//!
//! For every batch row `b`, channel `d` and state index `n`, with `Δ = softplus(delta + delta_bias)`
//! (Mamba paper, Algorithm 2, lines 5-6) and zero-order-hold discretisation
//! `Ā = exp(Δ·A)`, `B̄u ≈ Δ·B·u` (paper eq. 4):
//!
//! ```text
//! h[t] = exp(Δ[t]·A) ⊙ h[t-1] + Δ[t]·B[t]·u[t]          (paper eq. 2a)
//! y[t] = Σ_n C[t,n]·h[t,n] + D·u[t]                        (paper eq. 2b, plus the D skip)
//! out[t] = y[t] · SiLU(z[t])                               (the gated output of the Mamba block)
//! ```
//!
//! The operation starts from a given state `h0` and returns the last state, so a sequence can
//! be processed in chunks with the state carried across chunk borders.
//!
//! Every backend gets the reference (`scan_reference`), written in
//! ordinary tensor operations and processing time in blocks so that `[L, d_inner, d_state]`
//! is never materialised for the whole sequence. Backends override it with fused kernels
//! (the CPU backend with a host loop; the CubeCL backend, i.e. CUDA devices, with the chunked
//! GPU kernel of `scan_cube.rs` when the `cuda` feature is on); the reference
//! stays the truth they are tested against.
//!
//! On autodiff devices `selective_scan` runs the backend's fast forward and registers a
//! hand-written backward step, `selective_scan_backward` (see
//! `scan_backward` for the equations): a tensor-operation body every
//! backend gets, overridden for the CPU backend by a fused host loop and for the CubeCL backend
//! by a kernel (`scan_backward_cube`).
//! `selective_scan_reference` is not overridden there, so autodiff differentiates through its
//! primitive operations: that is the oracle the hand-written gradients are tested against.
//!
//! With the `cuda` feature, Burn's CUDA devices run `Fusion<CubeBackend>`: the extension lists
//! `Fusion`, so the macro registers `selective_scan` as one opaque custom operation in the fusion
//! stream (its output shapes come from the `#[fusion(meta = ...)]` callback) and runs
//! `CubeBackend`'s implementation, the kernel, when the stream executes.

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, ExtensionType, Flex, backend_extension};
use burn::tensor::Tensor;

/// Inputs of the selective scan, as backend primitives.
///
/// # Shapes
/// - `u`, `delta`, `z`: `[batch, length, d_inner]` (time-major)
/// - `a`: `[d_inner, d_state]` (already negative: `A = -exp(A_log)`)
/// - `b`, `c`: `[batch, length, d_state]`
/// - `d`, `delta_bias`: `[d_inner]`
/// - `h0`: `[batch, d_inner, d_state]`
#[derive(ExtensionType)]
#[extension_type(fusion: cfg(feature = "cube"))]
pub struct ScanInput<B: Backend> {
    /// Input sequence (after the convolution and SiLU).
    pub u: FloatTensor<B>,
    /// Time steps before the bias and softplus.
    pub delta: FloatTensor<B>,
    /// State matrix `A` (diagonal, one row per channel).
    pub a: FloatTensor<B>,
    /// Input-dependent `B`.
    pub b: FloatTensor<B>,
    /// Input-dependent `C`.
    pub c: FloatTensor<B>,
    /// Skip connection `D`.
    pub d: FloatTensor<B>,
    /// Gate `z` (the output is multiplied by `SiLU(z)`).
    pub z: FloatTensor<B>,
    /// Bias added to `delta` before the softplus.
    pub delta_bias: FloatTensor<B>,
    /// Initial state.
    pub h0: FloatTensor<B>,
}

impl<B: Backend> ScanInput<B> {
    /// The same inputs, each passed through `f`.
    pub(crate) fn map(self, f: impl Fn(FloatTensor<B>) -> FloatTensor<B>) -> Self {
        ScanInput {
            u: f(self.u),
            delta: f(self.delta),
            a: f(self.a),
            b: f(self.b),
            c: f(self.c),
            d: f(self.d),
            z: f(self.z),
            delta_bias: f(self.delta_bias),
            h0: f(self.h0),
        }
    }
}

/// Outputs of the selective scan.
///
/// # Shapes
/// - `y`: `[batch, length, d_inner]`
/// - `h`: `[batch, d_inner, d_state]`, the state after the last time step
#[derive(ExtensionType)]
#[extension_type(fusion: cfg(feature = "cube"))]
pub struct ScanOutput<B: Backend> {
    /// Gated output.
    pub y: FloatTensor<B>,
    /// Final state.
    pub h: FloatTensor<B>,
}

/// Gradients of a scalar loss with respect to every input of the selective scan.
///
/// # Shapes
/// Each field has the shape of the [`ScanInput`] field of the same name.
#[derive(ExtensionType)]
#[extension_type(fusion: cfg(feature = "cube"))]
pub struct ScanGrads<B: Backend> {
    /// `[batch, length, d_inner]`
    pub u: FloatTensor<B>,
    /// `[batch, length, d_inner]`, with respect to `delta` before the bias and softplus
    pub delta: FloatTensor<B>,
    /// `[d_inner, d_state]`, summed over batch and time
    pub a: FloatTensor<B>,
    /// `[batch, length, d_state]`, summed over channels
    pub b: FloatTensor<B>,
    /// `[batch, length, d_state]`, summed over channels
    pub c: FloatTensor<B>,
    /// `[d_inner]`
    pub d: FloatTensor<B>,
    /// `[batch, length, d_inner]`
    pub z: FloatTensor<B>,
    /// `[d_inner]`
    pub delta_bias: FloatTensor<B>,
    /// `[batch, d_inner, d_state]`
    pub h0: FloatTensor<B>,
}

/// The selective scan as a backend extension.
///
/// `selective_scan` may be overridden by a backend with a fused implementation;
/// `selective_scan_reference` is never overridden and is what fused versions are tested against.
#[backend_extension(
    Flex,
    Autodiff,
    Cube: cfg(feature = "cube"),
    Fusion: cfg(feature = "cube")
)]
pub trait SelectiveScanBackend: Backend {
    /// The selective scan; see the module documentation for the recurrence.
    // Under Fusion: one custom operation; `y` is shaped like `u`, the last state like `h0`.
    #[fusion(meta = |input| ScanOutputMetadata { y: input.u.clone(), h: input.h0.clone() })]
    fn selective_scan(#[extension_type] input: ScanInput<Self>) -> ScanOutput<Self> {
        super::scan_reference::scan_reference::<Self>(input)
    }

    /// The scan of a `delta` that is already activated: `Δ = delta + delta_bias`, without
    /// the softplus, for callers that applied it where `delta` was made
    /// ([`project_softplus`](super::block::project_softplus)); otherwise as
    /// `selective_scan`. The default body is the reference (so autodiff differentiates it op
    /// by op); the CubeCL backend runs the kernels without their softplus.
    #[fusion(meta = |input| ScanOutputMetadata { y: input.u.clone(), h: input.h0.clone() })]
    fn selective_scan_activated(#[extension_type] input: ScanInput<Self>) -> ScanOutput<Self> {
        super::scan_reference::scan_reference_with::<Self>(input, false, true)
    }

    /// The scan of a `delta` that is already activated (as `selective_scan_activated`) whose
    /// `z` is already the gate: `y = (C·h + D·u) ⊙ z`, for callers that applied the SiLU
    /// where `z` was made ([`project_silu_from`](super::block::project_silu_from): in_proj
    /// with the gate's activation). The default body is the reference (autodiff
    /// differentiates it op by op); the CubeCL backend runs the kernels without their softplus
    /// and SiLU.
    #[fusion(meta = |input| ScanOutputMetadata { y: input.u.clone(), h: input.h0.clone() })]
    fn selective_scan_gated(#[extension_type] input: ScanInput<Self>) -> ScanOutput<Self> {
        super::scan_reference::scan_reference_with::<Self>(input, false, false)
    }

    /// The reference implementation in plain tensor operations (every backend, every device).
    // Under Fusion: the default body, i.e. the reference in fused tensor operations.
    #[fusion(default)]
    fn selective_scan_reference(#[extension_type] input: ScanInput<Self>) -> ScanOutput<Self> {
        super::scan_reference::scan_reference::<Self>(input)
    }

    /// Gradients of the scan's inputs from the gradients of its outputs (the backward step of
    /// `selective_scan` on autodiff devices); the forward states are recomputed.
    ///
    /// # Shapes
    /// - `input`: as in [`ScanInput`]
    /// - `grad_y`: `[batch, length, d_inner]`, the gradient of `y`
    /// - `grad_h`: `[batch, d_inner, d_state]`, the gradient of the last state
    /// - returns one gradient per input, shaped like that input
    // Under Fusion: one custom operation; every gradient is shaped like its input.
    #[fusion(meta = |input, _grad_y, _grad_h| ScanGradsMetadata {
        u: input.u.clone(),
        delta: input.delta.clone(),
        a: input.a.clone(),
        b: input.b.clone(),
        c: input.c.clone(),
        d: input.d.clone(),
        z: input.z.clone(),
        delta_bias: input.delta_bias.clone(),
        h0: input.h0.clone(),
    })]
    fn selective_scan_backward(
        #[extension_type] input: ScanInput<Self>,
        grad_y: FloatTensor<Self>,
        grad_h: FloatTensor<Self>,
    ) -> ScanGrads<Self> {
        super::scan_backward::scan_backward_reference::<Self>(input, grad_y, grad_h)
    }
}

impl SelectiveScanBackend for Flex {
    fn selective_scan(input: ScanInput<Self>) -> ScanOutput<Self> {
        super::scan_cpu::scan_flex(input)
    }

    fn selective_scan_backward(
        input: ScanInput<Self>,
        grad_y: FloatTensor<Self>,
        grad_h: FloatTensor<Self>,
    ) -> ScanGrads<Self> {
        super::scan_backward::scan_backward_flex(input, grad_y, grad_h)
    }
}

// The backward step is a CubeCL kernel here (`scan_backward_cube.rs`), which falls back to the
// tensor-operation body for what it does not take.
#[cfg(feature = "cube")]
impl SelectiveScanBackend for burn_cubecl::CubeBackend {
    fn selective_scan_backward(
        input: ScanInput<Self>,
        grad_y: FloatTensor<Self>,
        grad_h: FloatTensor<Self>,
    ) -> ScanGrads<Self> {
        super::scan_backward_cube::scan_backward_cube(input, grad_y, grad_h)
    }

    fn selective_scan(input: ScanInput<Self>) -> ScanOutput<Self> {
        super::scan_cube::scan_cube(input)
    }

    fn selective_scan_activated(input: ScanInput<Self>) -> ScanOutput<Self> {
        super::scan_cube::scan_cube_with(input, false, true)
    }

    fn selective_scan_gated(input: ScanInput<Self>) -> ScanOutput<Self> {
        super::scan_cube::scan_cube_with(input, false, false)
    }
}

// On autodiff devices `selective_scan` runs the inner backend's fast scan and registers the
// hand-written backward step. The reference and the backward itself keep their default
// bodies, which run through differentiable tensor operations (so the reference is
// differentiated op by op, as the oracle of the hand-written gradients).
impl<B: Backend + SelectiveScanBackend, C: CheckpointStrategy> SelectiveScanBackend
    for Autodiff<B, C>
{
    fn selective_scan(input: ScanInput<Self>) -> ScanOutput<Self> {
        super::scan_backward::scan_autodiff::<B, C>(input)
    }
}

/// Tensor-level arguments of [`selective_scan`]; shapes as in [`ScanInput`].
#[derive(Clone, Debug)]
pub struct ScanArgs {
    /// `[batch, length, d_inner]`
    pub u: Tensor<3>,
    /// `[batch, length, d_inner]`
    pub delta: Tensor<3>,
    /// `[d_inner, d_state]`
    pub a: Tensor<2>,
    /// `[batch, length, d_state]`
    pub b: Tensor<3>,
    /// `[batch, length, d_state]`
    pub c: Tensor<3>,
    /// `[d_inner]`
    pub d: Tensor<1>,
    /// `[batch, length, d_inner]`
    pub z: Tensor<3>,
    /// `[d_inner]`
    pub delta_bias: Tensor<1>,
    /// `[batch, d_inner, d_state]`
    pub h0: Tensor<3>,
}

impl ScanArgs {
    /// The same arguments, every tensor marked as a leaf that autodiff tracks (on an
    /// autodiff device), for taking gradients with respect to all scan inputs.
    pub fn require_grad(self) -> Self {
        ScanArgs {
            u: self.u.require_grad(),
            delta: self.delta.require_grad(),
            a: self.a.require_grad(),
            b: self.b.require_grad(),
            c: self.c.require_grad(),
            d: self.d.require_grad(),
            z: self.z.require_grad(),
            delta_bias: self.delta_bias.require_grad(),
            h0: self.h0.require_grad(),
        }
    }

    fn into_dispatch(self) -> ScanInput<Dispatch> {
        ScanInput {
            u: self.u.into_dispatch(),
            delta: self.delta.into_dispatch(),
            a: self.a.into_dispatch(),
            b: self.b.into_dispatch(),
            c: self.c.into_dispatch(),
            d: self.d.into_dispatch(),
            z: self.z.into_dispatch(),
            delta_bias: self.delta_bias.into_dispatch(),
            h0: self.h0.into_dispatch(),
        }
    }
}

/// Gradients of every scan input, as tensors; shapes as in [`ScanArgs`].
#[derive(Clone, Debug)]
pub struct ScanGradTensors {
    /// `[batch, length, d_inner]`
    pub u: Tensor<3>,
    /// `[batch, length, d_inner]`
    pub delta: Tensor<3>,
    /// `[d_inner, d_state]`
    pub a: Tensor<2>,
    /// `[batch, length, d_state]`
    pub b: Tensor<3>,
    /// `[batch, length, d_state]`
    pub c: Tensor<3>,
    /// `[d_inner]`
    pub d: Tensor<1>,
    /// `[batch, length, d_inner]`
    pub z: Tensor<3>,
    /// `[d_inner]`
    pub delta_bias: Tensor<1>,
    /// `[batch, d_inner, d_state]`
    pub h0: Tensor<3>,
}

impl ScanGradTensors {
    /// The inputs' names, in the order of [`Self::into_host`].
    pub const NAMES: [&'static str; 9] =
        ["u", "delta", "a", "b", "c", "d", "z", "delta_bias", "h0"];

    /// Every gradient's values on the host as f32 (waiting for the device), in
    /// [`Self::NAMES`] order.
    pub fn into_host(self) -> Vec<Vec<f32>> {
        use crate::model::weights::host_values;
        vec![
            host_values(self.u),
            host_values(self.delta),
            host_values(self.a),
            host_values(self.b),
            host_values(self.c),
            host_values(self.d),
            host_values(self.z),
            host_values(self.delta_bias),
            host_values(self.h0),
        ]
    }

    fn from_dispatch(g: ScanGrads<Dispatch>) -> Self {
        Self {
            u: Tensor::from_dispatch(g.u),
            delta: Tensor::from_dispatch(g.delta),
            a: Tensor::from_dispatch(g.a),
            b: Tensor::from_dispatch(g.b),
            c: Tensor::from_dispatch(g.c),
            d: Tensor::from_dispatch(g.d),
            z: Tensor::from_dispatch(g.z),
            delta_bias: Tensor::from_dispatch(g.delta_bias),
            h0: Tensor::from_dispatch(g.h0),
        }
    }
}

fn from_dispatch(out: ScanOutput<Dispatch>) -> (Tensor<3>, Tensor<3>) {
    (Tensor::from_dispatch(out.y), Tensor::from_dispatch(out.h))
}

/// Runs the selective scan on the device of its inputs, with the backend's fastest
/// implementation. Returns `(y, h_last)`.
///
/// # Shapes
/// - returns `y: [batch, length, d_inner]`, `h_last: [batch, d_inner, d_state]`
pub fn selective_scan(args: ScanArgs) -> (Tensor<3>, Tensor<3>) {
    from_dispatch(<Dispatch as SelectiveScanBackend>::selective_scan(
        args.into_dispatch(),
    ))
}

/// The selective scan of a `delta` that is already activated (`Δ = delta + delta_bias`, no
/// softplus), with the backend's fastest implementation; see
/// [`SelectiveScanBackend::selective_scan_activated`].
pub fn selective_scan_activated(args: ScanArgs) -> (Tensor<3>, Tensor<3>) {
    from_dispatch(
        <Dispatch as SelectiveScanBackend>::selective_scan_activated(args.into_dispatch()),
    )
}

/// The selective scan of a `delta` that is already activated and a `z` that is already the
/// gate (`y = (C·h + D·u) ⊙ z`), with the backend's fastest implementation; see
/// [`SelectiveScanBackend::selective_scan_gated`].
pub fn selective_scan_gated(args: ScanArgs) -> (Tensor<3>, Tensor<3>) {
    from_dispatch(<Dispatch as SelectiveScanBackend>::selective_scan_gated(
        args.into_dispatch(),
    ))
}

/// The reference implementation (plain tensor operations) of [`selective_scan`] (`activate`
/// and `silu_gate` true), [`selective_scan_activated`] (`activate` false) or
/// [`selective_scan_gated`] (both false), whatever the backend overrides them with.
pub fn selective_scan_reference_with(
    args: ScanArgs,
    activate: bool,
    silu_gate: bool,
) -> (Tensor<3>, Tensor<3>) {
    from_dispatch(super::scan_reference::scan_reference_with::<Dispatch>(
        args.into_dispatch(),
        activate,
        silu_gate,
    ))
}

/// Runs the reference implementation of the selective scan (plain tensor operations).
pub fn selective_scan_reference(args: ScanArgs) -> (Tensor<3>, Tensor<3>) {
    from_dispatch(
        <Dispatch as SelectiveScanBackend>::selective_scan_reference(args.into_dispatch()),
    )
}

/// The backward step of the scan with the backend's fastest implementation: the gradients of
/// every input, given the gradients of `y` and of the last state.
///
/// Training does not call this directly (autodiff devices register it behind
/// [`selective_scan`]); it is public for tests and benchmarks.
///
/// # Shapes
/// - `grad_y`: `[batch, length, d_inner]`, `grad_h`: `[batch, d_inner, d_state]`
/// - returns gradients shaped like the inputs
pub fn selective_scan_backward(
    args: ScanArgs,
    grad_y: Tensor<3>,
    grad_h: Tensor<3>,
) -> ScanGradTensors {
    ScanGradTensors::from_dispatch(<Dispatch as SelectiveScanBackend>::selective_scan_backward(
        args.into_dispatch(),
        grad_y.into_dispatch(),
        grad_h.into_dispatch(),
    ))
}

/// The tensor-operation backward step (the default body of
/// [`SelectiveScanBackend::selective_scan_backward`]) on the device of its inputs, whatever
/// the backend overrides it with; shapes as in [`selective_scan_backward`].
pub fn selective_scan_backward_reference(
    args: ScanArgs,
    grad_y: Tensor<3>,
    grad_h: Tensor<3>,
) -> ScanGradTensors {
    ScanGradTensors::from_dispatch(super::scan_backward::scan_backward_reference::<Dispatch>(
        args.into_dispatch(),
        grad_y.into_dispatch(),
        grad_h.into_dispatch(),
    ))
}
