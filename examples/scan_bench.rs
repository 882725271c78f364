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
//! [BATCH]]]]` (defaults 20, 1024, f32, 1). The layer shape of the chr20 runs in BENCHMARKS.md:
//! `16 512 f16`; its sixteen layers' scans of one chunk as batch rows: `16 512 f16 16`.
//! `GENOMAMBA_SCAN_WALK=off` keeps the chunked kernels where the walk would run.

use std::time::Instant;

use burn::tensor::{Device, Distribution, FloatDType, Tensor};
use genomamba::ops::{ScanArgs, selective_scan};

const D_STATE: usize = 16;
const REPS: usize = 10;

fn inputs(batch: usize, len: usize, d_inner: usize, act: FloatDType, device: &Device) -> ScanArgs {
    let normal = Distribution::Normal(0.0, 1.0);
    let seq = |width: usize| Tensor::<3>::random([batch, len, width], normal, device).cast(act);
    // A = -exp(U(0, log 16)), delta_bias = inverse softplus of U(0.001, 0.1).
    let a = Tensor::<2>::random(
        [d_inner, D_STATE],
        Distribution::Uniform(0.0, 16f64.ln()),
        device,
    )
    .exp()
    .neg();
    let dt = Tensor::<1>::random([d_inner], Distribution::Uniform(0.001, 0.1), device);
    let delta_bias = (dt.exp() - 1.0).log();
    ScanArgs {
        u: seq(d_inner),
        delta: seq(d_inner),
        a,
        b: seq(D_STATE),
        c: seq(D_STATE),
        d: Tensor::<1>::random([d_inner], normal, device),
        z: seq(d_inner),
        delta_bias,
        h0: Tensor::<3>::zeros([batch, d_inner, D_STATE], device),
    }
}

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
    let device = Device::cuda(0);
    println!(
        "selective scan on cuda:0: batch {batch}, d_inner {d_inner}, d_state {D_STATE}, \
         {act:?} activations, best and median of {REPS}"
    );
    println!(
        "{:>9} {:>10} {:>10} {:>12} {:>14} {:>12}",
        "L", "best ms", "median ms", "Gelem/s", "floor GB", "GB/s (best)"
    );
    for log2 in (12..=max_log2).step_by(2) {
        let len = 1usize << log2;
        let args = inputs(batch, len, d_inner, act, &device);
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
