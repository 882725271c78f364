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
//! Every backend gets the reference ([`scan_reference`](super::scan_reference)), written in
//! ordinary tensor operations and processing time in blocks so that `[L, d_inner, d_state]`
//! is never materialised for the whole sequence. Backends override it with fused kernels
//! (the CPU backend with a host loop; the CubeCL backend, i.e. CUDA devices, with the chunked
//! GPU kernel of `scan_cube.rs` when the `cuda` feature is on); the reference
//! stays the truth they are tested against, and autodiff devices differentiate through it.
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
#[extension_type(fusion: cfg(feature = "cuda"))]
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

/// Outputs of the selective scan.
///
/// # Shapes
/// - `y`: `[batch, length, d_inner]`
/// - `h`: `[batch, d_inner, d_state]`, the state after the last time step
#[derive(ExtensionType)]
#[extension_type(fusion: cfg(feature = "cuda"))]
pub struct ScanOutput<B: Backend> {
    /// Gated output.
    pub y: FloatTensor<B>,
    /// Final state.
    pub h: FloatTensor<B>,
}

/// The selective scan as a backend extension.
///
/// `selective_scan` may be overridden by a backend with a fused implementation;
/// `selective_scan_reference` is never overridden and is what fused versions are tested against.
#[backend_extension(
    Flex,
    Autodiff,
    Cube: cfg(feature = "cuda"),
    Fusion: cfg(feature = "cuda")
)]
pub trait SelectiveScanBackend: Backend {
    /// The selective scan; see the module documentation for the recurrence.
    // Under Fusion: one custom operation; `y` is shaped like `u`, the last state like `h0`.
    #[fusion(meta = |input| ScanOutputMetadata { y: input.u.clone(), h: input.h0.clone() })]
    fn selective_scan(#[extension_type] input: ScanInput<Self>) -> ScanOutput<Self> {
        super::scan_reference::scan_reference::<Self>(input)
    }

    /// The reference implementation in plain tensor operations (every backend, every device).
    // Under Fusion: the default body, i.e. the reference in fused tensor operations.
    #[fusion(default)]
    fn selective_scan_reference(#[extension_type] input: ScanInput<Self>) -> ScanOutput<Self> {
        super::scan_reference::scan_reference::<Self>(input)
    }
}

impl SelectiveScanBackend for Flex {
    fn selective_scan(input: ScanInput<Self>) -> ScanOutput<Self> {
        super::scan_cpu::scan_flex(input)
    }
}

#[cfg(feature = "cuda")]
impl SelectiveScanBackend for burn_cubecl::CubeBackend {
    fn selective_scan(input: ScanInput<Self>) -> ScanOutput<Self> {
        super::scan_cube::scan_cube(input)
    }
}

// On autodiff devices the default bodies run the reference through differentiable tensor
// operations, so gradients come from autodiff of the reference.
impl<B: Backend + SelectiveScanBackend, C: CheckpointStrategy> SelectiveScanBackend
    for Autodiff<B, C>
{
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

/// Runs the reference implementation of the selective scan (plain tensor operations).
pub fn selective_scan_reference(args: ScanArgs) -> (Tensor<3>, Tensor<3>) {
    from_dispatch(
        <Dispatch as SelectiveScanBackend>::selective_scan_reference(args.into_dispatch()),
    )
}
