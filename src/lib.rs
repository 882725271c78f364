//! genomamba: selective state-space models (Mamba) over DNA at single-nucleotide resolution.
//!
//! Whole chromosomes are streamed in chunks; every layer's recurrent state (convolution
//! window and SSM state) is carried across chunk borders, so chunked results equal one pass
//! over the whole sequence while memory stays bounded by the chunk.
//!
//! Modules:
//! - [`alphabet`]: DNA to token ids (Caduceus vocabulary), reverse complement.
//! - [`io`]: FASTA/FASTQ streaming, indexed region reads, output writers.
//! - [`model`]: configuration, Mamba blocks, carried state, heads, weights.
//! - [`ops`]: the selective-scan backend extension and its reference.
//! - [`infer`]: the chunk runner, pooling.
//! - [`device`]: choosing the compute device at run time.
//! - [`train`]: labeled data, metrics, baseline, training loop.

pub mod alphabet;
pub mod device;
pub mod error;
pub mod infer;
pub mod io;
pub mod model;
pub mod ops;
pub mod train;

pub use error::{Error, Result};
