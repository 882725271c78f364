//! Training: labeled data, metrics, the k-mer baseline, and the training loop.

pub mod data;
pub mod kmer;
pub mod metrics;
pub mod trainer;
