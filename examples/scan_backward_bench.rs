//! Times the selective scan's backward step alone on `cuda:0`: the CubeCL kernel
//! (`selective_scan_backward`) against the tensor-operation backward it replaced on CUDA
//! (`selective_scan_backward_reference`, run on the same GPU), f32, d_state 16, random inputs
//! and output gradients already on the device, at training shapes (batch × window × d_inner).
//!
//! For each shape: both run once (kernel compilation) and their gradients are compared (the
//! largest `max |kernel - tensor| / max |tensor|` over the nine gradients is printed), then
//! each is timed `REPS` times between two device synchronisations; best and median reported,
//! with the ratio of the best times.
//!
//! Run: `cargo run --release --features cuda --example scan_backward_bench -- [BATCH LEN D_INNER
//! [whole]]` (default: a list of shapes; the training runs of BENCHMARKS.md use d_inner 128).
//! With `whole` the baseline is the kernel itself with time walked in one piece by each
//! thread (`set_backward_chunk_len(usize::MAX)`) instead of the tensor-operation backward,
//! whose launches per step make long sequences impractical: for the kernel's time chunks at
//! few rows and long sequences. `GENOMAMBA_BACK_CHUNK` sets the kernel's chunk length.

use std::time::Instant;

use burn::tensor::{Device, Distribution, FloatDType, Tensor};
use genomamba::ops::scan_backward_cube::set_backward_chunk_len;
use genomamba::ops::{selective_scan_backward, selective_scan_backward_reference};

#[path = "common/scan_inputs.rs"]
mod scan_inputs;
use scan_inputs::scan_inputs;

const D_STATE: usize = 16;
const REPS: usize = 5;

fn rel(got: &[f32], want: &[f32]) -> f64 {
    let num = got
        .iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - *w as f64).abs())
        .fold(0.0, f64::max);
    let den = want.iter().map(|w| (*w as f64).abs()).fold(0.0, f64::max);
    if got.iter().any(|v| !v.is_finite()) {
        f64::INFINITY
    } else if den > 0.0 {
        num / den
    } else {
        num
    }
}

fn main() {
    let arg = |i: usize| {
        std::env::args()
            .nth(i)
            .and_then(|s| s.parse::<usize>().ok())
    };
    let shapes: Vec<[usize; 3]> = match (arg(1), arg(2), arg(3)) {
        (Some(b), Some(l), Some(d)) => vec![[b, l, d]],
        _ => vec![
            [32, 200, 128],
            [8, 2048, 128],
            [64, 2048, 128],
            [8, 2048, 512],
        ],
    };
    let whole = std::env::args().nth(4).as_deref() == Some("whole");
    let baseline = if whole { "one chunk" } else { "tensor" };
    let device = Device::cuda(0);
    println!(
        "selective scan backward on cuda:0, f32, d_state {D_STATE}, best and median of {REPS}"
    );
    println!(
        "{:>6} {:>6} {:>8} {:>14} {:>14} {:>14} {:>14} {:>8} {:>10}",
        "batch",
        "L",
        "d_inner",
        "kernel best",
        "kernel median",
        format!("{baseline} best"),
        format!("{baseline} median"),
        "ratio",
        "max rel"
    );
    for [batch, len, d_inner] in shapes {
        let args = scan_inputs(
            [batch, len, d_inner, D_STATE],
            FloatDType::F32,
            true,
            &device,
        );
        let normal = Distribution::Normal(0.0, 1.0);
        let gy = Tensor::<3>::random([batch, len, d_inner], normal, &device);
        let gh = Tensor::<3>::random([batch, d_inner, D_STATE], normal, &device);
        let run = |kernel: bool| {
            // The chunk setting is read when the queued operation runs: each use below ends in
            // a copy to the host or a device synchronisation before the setting changes.
            set_backward_chunk_len(if kernel || !whole { 0 } else { usize::MAX });
            if kernel || whole {
                selective_scan_backward(args.clone(), gy.clone(), gh.clone())
            } else {
                selective_scan_backward_reference(args.clone(), gy.clone(), gh.clone())
            }
        };
        let got = run(true).into_host();
        let want = run(false).into_host();
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| rel(g, w))
            .fold(0.0, f64::max);
        let time = |kernel: bool| {
            let mut t: Vec<f64> = (0..REPS)
                .map(|_| {
                    device.sync().expect("device sync");
                    let start = Instant::now();
                    let g = run(kernel);
                    device.sync().expect("device sync");
                    let secs = start.elapsed().as_secs_f64();
                    drop(g);
                    secs
                })
                .collect();
            t.sort_by(f64::total_cmp);
            (t[0] * 1e3, t[REPS / 2] * 1e3)
        };
        let (kb, km) = time(true);
        let (tb, tm) = time(false);
        println!(
            "{batch:>6} {len:>6} {d_inner:>8} {kb:>11.3} ms {km:>11.3} ms {tb:>11.3} ms \
             {tm:>11.3} ms {:>7.1}x {worst:>10.2e}",
            tb / kb
        );
    }
}
