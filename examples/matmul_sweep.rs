//! Times the block's projections on `cuda:0` under many plane tilings of cubek's simple mma
//! routines (and its double-buffered TMA one) (see `genomamba::ops::project_cube::Tiling`), against the kernels chosen without
//! one, for the shapes of the d_model 256 x 16-layer model at chunk 65,536: in_proj
//! (256 -> 1,024), x_proj (512 -> 48), dt_proj (16 -> 512), out_proj (512 -> 256).
//!
//! Every candidate's output is compared with that of the same routine with cubek's inferred
//! tiling (max |diff| / max |inferred|) before it is timed; a candidate that cubek refuses (the
//! projection ran with another choice) is reported as such and not timed. Time: `REPS` launches between two device
//! synchronisations, divided by `REPS`, best of three such rounds.
//!
//! Run: `cargo run --release --features cuda --example matmul_sweep -- [FORMAT [SHAPES [TILINGS [ROUTINES]]]]`
//! FORMAT `f16` (default) or `bf16`; SHAPES a comma list of `in`, `x`, `dt`, `out` (default all);
//! TILINGS a comma list of tilings (`p16r1k2s1d0`), default the grid of [`grid`]; ROUTINES a
//! comma list of the routines that take a tiling (default `matmul_simple_cyclic_mma,
//! matmul_simple_tma_mma`; `matmul_double_tma_mma` too). Each shape is first timed with the
//! usual choice (no strategy or tiling set).

use std::time::Instant;

use burn::tensor::{Device, Distribution, FloatDType, Tensor};
use genomamba::ops::block::project;
use genomamba::ops::project_cube::{Tiling, refusals, set_strategy, set_tiling};

const LEN: usize = 65_536;
const REPS: usize = 20;

/// The default grid. With swizzling (and a row-major weight) cubek caps a plane's partition
/// at 128 bytes along n, so beyond 8 planes swizzled tilings repeat; unswizzled ones go wider.
/// Double partition buffering only with one row and partition k 2.
fn grid() -> Vec<Tiling> {
    let mut out = Vec::new();
    for (swizzled, planes_list) in [(true, &[4u32, 8][..]), (false, &[4, 8, 16][..])] {
        for &planes in planes_list {
            for rows in [1, 2, 4] {
                for partition_k in [1, 2, 4] {
                    for double in [false, true] {
                        if double && (rows != 1 || partition_k != 2) {
                            continue;
                        }
                        out.push(Tiling {
                            planes,
                            rows,
                            partition_k,
                            swizzled,
                            double,
                        });
                    }
                }
            }
        }
    }
    out
}

/// Seconds per projection: best of three rounds of `REPS` launches.
fn time(x: &Tensor<3>, w: &Tensor<2>, device: &Device) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        device.sync().expect("device sync");
        let start = Instant::now();
        for _ in 0..REPS {
            drop(project(x.clone(), w.clone()));
        }
        device.sync().expect("device sync");
        best = best.min(start.elapsed().as_secs_f64() / REPS as f64);
    }
    best
}

fn max_abs(t: Tensor<3>) -> f64 {
    t.cast(FloatDType::F32)
        .abs()
        .max()
        .into_scalar::<f32>()
        .into()
}

fn main() {
    let arg = |i: usize| std::env::args().nth(i);
    let act = match arg(1).as_deref() {
        None | Some("f16") => FloatDType::F16,
        Some("bf16") => FloatDType::BF16,
        Some(other) => panic!("format {other:?}: use f16 or bf16"),
    };
    let shapes: Vec<(&str, usize, usize)> = [
        ("in", 256, 1024),
        ("x", 512, 48),
        ("dt", 16, 512),
        ("out", 512, 256),
    ]
    .into_iter()
    .filter(|(name, _, _)| arg(2).is_none_or(|list| list.split(',').any(|s| s == *name)))
    .collect();
    let tilings: Vec<Tiling> = match arg(3) {
        Some(list) => list
            .split(',')
            .map(|t| t.parse().unwrap_or_else(|e| panic!("{e}")))
            .collect(),
        None => grid(),
    };
    let routines: Vec<String> = match arg(4) {
        Some(list) => list.split(',').map(str::to_string).collect(),
        None => vec![
            "matmul_simple_cyclic_mma".to_string(),
            "matmul_simple_tma_mma".to_string(),
        ],
    };
    let device = Device::cuda(0);
    let normal = Distribution::Normal(0.0, 1.0);
    for (name, k, n) in shapes {
        let x = Tensor::<3>::random([1, LEN, k], normal, &device).cast(act);
        let w = (Tensor::<2>::random([k, n], normal, &device) / (k as f64).sqrt()).cast(act);
        // The usual choice first (for dt_proj's shape, the small-k kernel).
        set_strategy(None);
        set_tiling(None);
        let secs = time(&x, &w, &device);
        println!("{name} {k}->{n} {act:?} default {:.1} us", secs * 1e6);
        for strategy in &routines {
            let strategy = strategy.as_str();
            set_strategy(Some(strategy));
            set_tiling(Some("inferred"));
            let reference = project(x.clone(), w.clone());
            let scale = max_abs(reference.clone());
            let secs = time(&x, &w, &device);
            println!(
                "{name} {k}->{n} {act:?} {strategy} inferred {:.1} us",
                secs * 1e6
            );
            for tiling in &tilings {
                set_tiling(Some(&tiling.to_string()));
                let before = refusals();
                let got = std::panic::catch_unwind(|| {
                    let out = project(x.clone(), w.clone());
                    let err = max_abs(out - reference.clone()) / scale;
                    (err, refusals() != before)
                });
                match got {
                    Err(_) => println!("{name} {strategy} {tiling} panicked"),
                    Ok((_, true)) => println!("{name} {strategy} {tiling} refused"),
                    Ok((err, false)) => {
                        let secs = time(&x, &w, &device);
                        println!(
                            "{name} {k}->{n} {act:?} {strategy} {tiling} {:.1} us rel_err {err:.2e}",
                            secs * 1e6
                        );
                    }
                }
            }
        }
    }
    set_tiling(None);
    set_strategy(None);
}
