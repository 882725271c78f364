//! Custom operations, as Burn backend extensions.
//!
//! - [`block`]: causal convolution fused with SiLU over a carried window, and RMSNorm.
//! - [`scan`]: the selective scan of Mamba (S6), with a reference written in plain tensor
//!   operations that every backend gets, and a fused host loop for the CPU backend.

pub mod block;
pub mod scan;
mod scan_cpu;
mod scan_reference;

pub use scan::{
    ScanArgs, ScanInput, ScanOutput, SelectiveScanBackend, selective_scan, selective_scan_reference,
};
