//! Reading DNA and writing results.
//!
//! - [`bed`]: BED intervals, for training labels and `--regions-bed`.
//! - [`fastx`]: FASTA/FASTQ streaming in pieces (compression detected from content).
//! - [`region`]: `chr:start-end` regions read through the `.fai` / `.gzi` index with noodles.
//! - [`output`]: atomic output files, `.npy` headers.
//! - [`segments`]: BED6 and bedGraph writers for per-position predictions.
//! - [`once`]: stdin and pipes as inputs, hashed as they are read.

pub mod bed;
pub mod fastx;
pub mod once;
pub mod output;
pub mod region;
pub mod segments;
