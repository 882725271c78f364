//! Times the selective scan alone on `cuda:0`: batch 1 (or the fourth argument), d_inner 1024
//! (or the second argument), d_state 16, lengths 2^12 to 2^20, random inputs already on the
//! device, in f32 (or the format the third argument names: `f16`, `bf16`; the state stays f32).
//!
//! For each length: a warm-up call (kernel compilation), then `REPS` timed calls, each between
//! two device synchronisations. Reports the best and median time, elements (time steps ×
//! channels) per second, and the bandwidth against the byte floor: `u`, `delta`, `z`, `B`, `C`
//! read once and `y` written once, 4 bytes each (2 in a half format).
//!
//! Run: `cargo run --release --features cuda --example scan_bench -- [MAX_LOG2 [D_INNER [FORMAT
//! [BATCH [MIN_LOG2]]]]]` (defaults 20, 1024, f32, 1, 12; lengths step by factors of 4 from
//! 2^MIN_LOG2). The layer shape of the chr20 runs in BENCHMARKS.md:
//! `16 512 f16`; its sixteen layers' scans of one chunk as batch rows: `16 512 f16 16`.
//! `GENOMAMBA_SCAN_WALK=off` keeps the chunked kernels where the walk would run.

use std::time::Instant;

use burn::tensor::{Device, FloatDType};
use genomamba::ops::{ScanArgs, selective_scan};

#[path = "common/scan_inputs.rs"]
mod scan_inputs;
use scan_inputs::scan_inputs;

const D_STATE: usize = 16;
const REPS: usize = 10;

/// One scan between two synchronisations; seconds.
fn timed(args: &ScanArgs, device: &Device) -> f64 {
    device.sync().expect("device sync");
    let start = Instant::now();
    let out = selective_scan(args.clone());
    device.sync().expect("device sync");
    let secs = start.elapsed().as_secs_f64();
    drop(out);
    secs
}

fn main() {
    let arg = |i: usize| std::env::args().nth(i);
    let max_log2: u32 = arg(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    let d_inner: usize = arg(2).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let (act, act_bytes) = match arg(3).as_deref() {
        None | Some("f32") => (FloatDType::F32, 4.0),
        Some("f16") => (FloatDType::F16, 2.0),
        Some("bf16") => (FloatDType::BF16, 2.0),
        Some(other) => panic!("format {other:?}: use f32, f16 or bf16"),
    };
    let batch: usize = arg(4).and_then(|s| s.parse().ok()).unwrap_or(1);
    let min_log2: u32 = arg(5).and_then(|s| s.parse().ok()).unwrap_or(12);
    let device = Device::cuda(0);
    println!(
        "selective scan on cuda:0: batch {batch}, d_inner {d_inner}, d_state {D_STATE}, \
         {act:?} activations, best and median of {REPS}"
    );
    println!(
        "{:>9} {:>10} {:>10} {:>12} {:>14} {:>12}",
        "L", "best ms", "median ms", "Gelem/s", "floor GB", "GB/s (best)"
    );
    for log2 in (min_log2..=max_log2).step_by(2) {
        let len = 1usize << log2;
        let args = scan_inputs([batch, len, d_inner, D_STATE], act, false, &device);
        let first = timed(&args, &device);
        let mut times: Vec<f64> = (0..REPS).map(|_| timed(&args, &device)).collect();
        times.sort_by(f64::total_cmp);
        let (best, median) = (times[0], times[REPS / 2]);
        let elems = (batch * len * d_inner) as f64;
        let bytes = act_bytes * (batch * len * (4 * d_inner + 2 * D_STATE)) as f64;
        println!(
            "{len:>9} {:>10.3} {:>10.3} {:>12.2} {:>14.3} {:>12.1}   (first call {:.1} ms)",
            best * 1e3,
            median * 1e3,
            elems / best / 1e9,
            bytes / 1e9,
            bytes / best / 1e9,
            first * 1e3,
        );
    }
}
