//! Custom operations, as Burn backend extensions.
//!
//! - [`block`]: causal convolution fused with SiLU over a carried window, RMSNorm, the
//!   residual add fused with the next RMSNorm, and the projections `x · w` (with the `cuda`
//!   feature, the convolution and the add + norm are CubeCL kernels and the
//!   projections go through `project_cube`, which can pick cubek's matrix-product kernel).
//! - [`scan`]: the selective scan of Mamba (S6), with a reference written in plain tensor
//!   operations that every backend gets, a fused host loop for the CPU backend, and (with the
//!   `cuda` feature) a chunked-time GPU kernel for the CubeCL backend; on autodiff devices a
//!   hand-written backward step (tensor operations for every backend, a fused host loop for
//!   the CPU backend, a CubeCL kernel for the CubeCL backend: `scan_backward_cube`).

pub mod block;
#[cfg(feature = "cube")]
mod block_cube;
#[cfg(feature = "cube")]
pub mod conv_dbc;
#[cfg(feature = "cube")]
pub mod project_cube;
#[cfg(feature = "cube")]
pub mod project_mma;
#[cfg(feature = "cube")]
pub mod project_wgmma;
pub mod scan;
mod scan_backward;
#[cfg(feature = "cube")]
pub mod scan_backward_cube;
mod scan_cpu;
#[cfg(feature = "cube")]
mod scan_cube;
mod scan_reference;
#[cfg(feature = "cube")]
mod scan_walk;

pub use scan::{
    ScanArgs, ScanGradTensors, ScanGrads, ScanInput, ScanOutput, SelectiveScanBackend,
    selective_scan, selective_scan_activated, selective_scan_backward,
    selective_scan_backward_reference, selective_scan_gated, selective_scan_reference,
    selective_scan_reference_with,
};
#[cfg(feature = "cuda")]
pub use scan_cube::cuda_sources as scan_cuda_sources;
#[cfg(feature = "cube")]
pub use scan_cube::{ScanPath, WALK_MIN_LANES, WHOLE_ROWS_THREADS, set_scan_path};
