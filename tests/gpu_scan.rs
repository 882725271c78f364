//! The GPU selective scan (`selective_scan` on `cuda:0`, the CubeCL kernel) against the
//! tensor-op reference (`selective_scan_reference` on the Flex CPU device), on random inputs of
//! many shapes: lengths 1, 7, 2049 (one chunk and many chunks of the kernel) and 2^20 for a
//! small `d_inner`; `d_inner` not a power of two (5, 37, 1536); `d_state` 1, 16, 64; zero and
//! random initial state; strided and offset input views; state carried across two calls; and,
//! on a CUDA device, inputs of more than `u32::MAX` elements (the kernels' 64-bit offsets).
//!
//! Errors are `max |gpu - ref| / max |ref|` over each output tensor. The scan does no matrix
//! products, so TF32 is not involved and f32 accuracy is expected.
//!
//! The fused causal convolution + SiLU (`causal_conv_silu` on `cuda:0`, a CubeCL kernel that
//! reads `in_proj`'s output through its strides) is checked the same way against its reference,
//! including chunks shorter than the carried window and a window carried across two calls.
//! Both kernels are also checked with f16 and bf16 activations (`--precision`) against their
//! references on the same half inputs.
//!
//! The residual add fused with the next RMSNorm (`add_rms_norm`, one CubeCL kernel with a
//! plane reduction per position) is checked against its reference for f32 and half inputs and
//! outputs, widths below, at and above a plane (3, 37, 256, 1000).
//!
//! The block's projections (`project`, a chosen cubek matrix-product kernel) are checked against
//! the CPU's matrix product, in f32 and f16; on a CUDA device for every strategy
//! `GENOMAMBA_MATMUL` may name (or only those listed in `GENOMAMBA_TEST_MATMUL`, comma-separated).
//!
//! Built with `--features cube-cpu`, the same kernels run on CubeCL's CPU runtime instead
//! (CI does this: `cargo test --features cube-cpu --test gpu_scan`). Without either, every
//! test prints "skipped: ..." and passes.
//!
//! Run: `cargo test --release --features cuda --test gpu_scan -- --nocapture --test-threads 1`
#![cfg(feature = "cube")]

use burn::tensor::{DType, Device, Distribution, FloatDType, Tensor, TensorData};
use genomamba::alphabet::tokenize;
use genomamba::infer::hidden_states;
use genomamba::model::{GenoModel, MambaConfig, ModelConfig, Precision};
use genomamba::ops::block::{
    ConvDbc, Impl, add_rms_norm_only, add_rms_norm_with, causal_conv_silu_with, conv_dbc_with,
    project_add_with, project_dbc_with, project_norm_silu_from_with, project_silu_from_with,
    project_softplus_with, project_with, rms_norm_with,
};
use genomamba::ops::conv_dbc::conv_dbc_launches;
use genomamba::ops::project_cube::{
    SMALL_K_MAX, Tiling, dbc_mma_launches, default_strategy, default_tiling, force_naive_fallback,
    naive_fallbacks, refusals, set_strategy, set_tiling, small_k_launches, strategy_names,
};
use genomamba::ops::project_mma::{
    GEMM_MAX_K, gemm_gated_launches, gemm_mma_launches, gemm_norm_launches, gemm_residual_launches,
    set_gemm_band, set_gemm_rows,
};
use genomamba::ops::project_wgmma::{gemm_wg_launches, set_gemm_wgmma};
use genomamba::ops::scan_backward_cube::{scan_backward_launches, set_backward_chunk_len};
use genomamba::ops::{
    ScanArgs, ScanGradTensors, ScanPath, WALK_MIN_LANES, WHOLE_ROWS_THREADS, selective_scan,
    selective_scan_activated, selective_scan_backward, selective_scan_backward_reference,
    selective_scan_gated, selective_scan_reference, selective_scan_reference_with, set_scan_path,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Relative tolerance of the GPU scan against the reference.
const TOL: f64 = 1e-4;

/// `cuda:0` when a CUDA device answers, detected without panicking the test.
#[cfg(feature = "cuda")]
fn cuda_device() -> Option<Device> {
    use burn::tensor::DeviceType;
    use std::panic::{AssertUnwindSafe, catch_unwind};
    let found = catch_unwind(|| Device::enumerate(DeviceType::Cuda).len()).unwrap_or(0);
    if found == 0 {
        return None;
    }
    let device = Device::cuda(0);
    let works = catch_unwind(AssertUnwindSafe(|| {
        let t = Tensor::<1>::ones([4], &device);
        t.sum().into_scalar::<f32>() == 4.0
    }))
    .unwrap_or(false);
    works.then_some(device)
}

/// Whether `device` is a CUDA device (not CubeCL's CPU runtime).
#[cfg(feature = "cuda")]
fn is_cuda(device: &Device) -> bool {
    *device == Device::cuda(0)
}

/// Whether `device` is a CUDA device: never, in a build without CUDA.
#[cfg(not(feature = "cuda"))]
fn is_cuda(_: &Device) -> bool {
    false
}

/// The device the kernels run on: `cuda:0` when the build has CUDA and a GPU answers, else
/// CubeCL's CPU runtime when the build has it (`--features cube-cpu`, which CI uses).
fn kernel_device() -> Option<Device> {
    #[cfg(feature = "cuda")]
    if let Some(device) = cuda_device() {
        println!("kernels on cuda:0");
        return Some(device);
    }
    #[cfg(feature = "cube-cpu")]
    {
        println!("kernels on CubeCL's CPU runtime");
        return Some(Device::cpu());
    }
    #[allow(unreachable_code)]
    None
}

macro_rules! require_cuda {
    () => {
        match kernel_device() {
            Some(device) => device,
            None => {
                println!("skipped: no CUDA device (and no CubeCL CPU runtime in this build)");
                return;
            }
        }
    };
}

/// Holds the scan to `path` for the guard's life: the choice is process-wide and tests run in
/// parallel, so every test that scans takes this lock first.
fn scan_path(path: ScanPath) -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    set_scan_path(path);
    // The backward kernel's usual time chunks (a test that forces them holds this lock).
    set_backward_chunk_len(0);
    guard
}

/// Host copies of one set of inputs (`f32`), with their shapes.
#[derive(Clone)]
struct Case {
    batch: usize,
    len: usize,
    d_inner: usize,
    d_state: usize,
    zero_h0: bool,
    u: Vec<f32>,
    delta: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    d: Vec<f32>,
    z: Vec<f32>,
    delta_bias: Vec<f32>,
    h0: Vec<f32>,
}

impl Case {
    fn describe(&self) -> String {
        format!(
            "batch {} len {} d_inner {} d_state {} h0 {}",
            self.batch,
            self.len,
            self.d_inner,
            self.d_state,
            if self.zero_h0 { "zero" } else { "random" }
        )
    }
}

/// Standard normal by Box-Muller.
fn normal(rng: &mut StdRng) -> f32 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

fn normals(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| scale * normal(rng)).collect()
}

/// Mamba-like magnitudes: `A = -exp(U(0, log 16))`, `delta_bias` the inverse softplus of
/// `U(0.001, 0.1)`, everything else `N(0, 1)`.
fn random_case(seed: u64, [batch, len, d_inner, d_state]: [usize; 4], zero_h0: bool) -> Case {
    let mut rng = StdRng::seed_from_u64(seed);
    let a = (0..d_inner * d_state)
        .map(|_| -(rng.random_range(0.0..16f64.ln())).exp() as f32)
        .collect();
    let delta_bias = (0..d_inner)
        .map(|_| rng.random_range(0.001f64..0.1).exp_m1().ln() as f32)
        .collect();
    let h0 = if zero_h0 {
        vec![0.0; batch * d_inner * d_state]
    } else {
        normals(&mut rng, batch * d_inner * d_state, 1.0)
    };
    Case {
        batch,
        len,
        d_inner,
        d_state,
        zero_h0,
        u: normals(&mut rng, batch * len * d_inner, 1.0),
        delta: normals(&mut rng, batch * len * d_inner, 1.0),
        a,
        b: normals(&mut rng, batch * len * d_state, 1.0),
        c: normals(&mut rng, batch * len * d_state, 1.0),
        d: normals(&mut rng, d_inner, 1.0),
        z: normals(&mut rng, batch * len * d_inner, 1.0),
        delta_bias,
        h0,
    }
}

fn tensor<const D: usize>(v: &[f32], shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), device)
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("tensor data as f32")
}

fn args(x: &Case, device: &Device) -> ScanArgs {
    let (nb, nl, ni, ns) = (x.batch, x.len, x.d_inner, x.d_state);
    ScanArgs {
        u: tensor(&x.u, [nb, nl, ni], device),
        delta: tensor(&x.delta, [nb, nl, ni], device),
        a: tensor(&x.a, [ni, ns], device),
        b: tensor(&x.b, [nb, nl, ns], device),
        c: tensor(&x.c, [nb, nl, ns], device),
        d: tensor(&x.d, [ni], device),
        z: tensor(&x.z, [nb, nl, ni], device),
        delta_bias: tensor(&x.delta_bias, [ni], device),
        h0: tensor(&x.h0, [nb, ni, ns], device),
    }
}

/// `x · w` (`[batch, len, k]` and `[k, n]`) by the reference on the CPU, in f32.
fn cpu_product(x: &[f32], w: &[f32], [batch, len, k, n]: [usize; 4]) -> Vec<f32> {
    host(project_with(
        Impl::Reference,
        tensor(x, [batch, len, k], &Device::flex()),
        tensor(w, [k, n], &Device::flex()),
    ))
}

/// `x · w` (`[batch, len, k]` and `[k, n]`, given in f32) on `gpu` in `dtype` by the fastest
/// implementation, its shape and format checked; not yet read back (fusion runs it then).
fn gpu_product(
    gpu: &Device,
    x: &[f32],
    w: &[f32],
    [batch, len, k, n]: [usize; 4],
    dtype: FloatDType,
) -> Tensor<3> {
    let got = project_with(
        Impl::Fastest,
        tensor(x, [batch, len, k], gpu).cast(dtype),
        tensor(w, [k, n], gpu).cast(dtype),
    );
    assert_eq!(got.dims(), [batch, len, n], "shape");
    assert_eq!(got.dtype(), DType::from(dtype), "format");
    got
}

/// `max |got - want| / max |want|` (the absolute error where `want` is all zero).
#[track_caller]
fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    assert!(got.iter().all(|v| v.is_finite()), "non-finite GPU value");
    let num = got
        .iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - *w as f64).abs())
        .fold(0.0, f64::max);
    let den = want.iter().map(|w| (*w as f64).abs()).fold(0.0, f64::max);
    if den > 0.0 { num / den } else { num }
}

/// `(y, h_last)` of one scan, checked for shape, as host values.
#[track_caller]
fn outputs(x: &Case, (y, h): (Tensor<3>, Tensor<3>), what: &str) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(y.dims(), [x.batch, x.len, x.d_inner], "{what}: y shape");
    assert_eq!(h.dims(), [x.batch, x.d_inner, x.d_state], "{what}: h shape");
    (host(y), host(h))
}

/// The reference on the CPU, once per case.
fn reference(x: &Case) -> (Vec<f32>, Vec<f32>) {
    outputs(
        x,
        selective_scan_reference(args(x, &Device::flex())),
        "reference",
    )
}

/// Compares the GPU scan with the reference for one case; returns `(err y, err h)`.
fn compare(x: &Case, gpu: &Device) -> (f64, f64) {
    let (want_y, want_h) = reference(x);
    let (got_y, got_h) = outputs(x, selective_scan(args(x, gpu)), "gpu");
    let (ey, eh) = (rel_err(&got_y, &want_y), rel_err(&got_h, &want_h));
    println!("{:<58} y {ey:9.2e}   h_last {eh:9.2e}", x.describe());
    (ey, eh)
}

#[test]
fn gpu_scan_matches_reference_over_shapes() {
    let gpu = require_cuda!();
    let _path = scan_path(ScanPath::Chunked);
    let mut shapes = Vec::new();
    for len in [1, 7, 2049] {
        for d_inner in [5, 37, 1536] {
            for d_state in [1, 16, 64] {
                let batch = if d_inner == 1536 { 1 } else { 2 };
                shapes.push([batch, len, d_inner, d_state]);
            }
        }
    }
    // Many chunks, so that the combine runs over groups of chunks: 70 chunks of 64 (groups of
    // 9, the last one shorter) and one long sequence (16,384 chunks) for a small d_inner.
    shapes.push([2, 4480, 37, 16]);
    shapes.push([1, 1 << 20, 5, 16]);

    let mut worst = (0.0f64, String::new());
    let mut failures = Vec::new();
    for (i, shape) in shapes.iter().enumerate() {
        for zero_h0 in [true, false] {
            let x = random_case(1000 + 2 * i as u64 + zero_h0 as u64, *shape, zero_h0);
            let (ey, eh) = compare(&x, &gpu);
            let e = ey.max(eh);
            if e > worst.0 {
                worst = (e, x.describe());
            }
            if !e.is_finite() || e > TOL {
                failures.push(format!("{}: y {ey:.2e} h {eh:.2e}", x.describe()));
            }
        }
    }
    println!("max relative error {:.2e} ({})", worst.0, worst.1);
    assert!(
        failures.is_empty(),
        "GPU scan off the reference by more than {TOL:e}:\n{}",
        failures.join("\n")
    );
}

/// `softplus(x)` in f64, as the reference computes it.
fn softplus64(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// Shapes and paths of the activated and gated scans' tests: one chunk, the chunked passes
/// (several chunks, grouped pass 2) and the walk.
const ACTIVATED_CASES: [([usize; 4], ScanPath); 4] = [
    ([2, 7, 37, 16], ScanPath::Chunked),
    ([2, 2049, 37, 16], ScanPath::Chunked),
    ([2, 4480, 5, 16], ScanPath::Chunked),
    ([3, 300, 37, 16], ScanPath::Walk(2)),
];

/// `softplus(delta + bias) - b2` per element: the `delta` that, with `b2` as its bias, gives a
/// scan without softplus the case's time steps.
fn activated_delta(x: &Case, b2: &[f32]) -> Vec<f32> {
    x.delta
        .iter()
        .enumerate()
        .map(|(j, &v)| {
            let ch = j % x.d_inner;
            (softplus64(v as f64 + x.delta_bias[ch] as f64) - b2[ch] as f64) as f32
        })
        .collect()
}

#[test]
fn gpu_activated_scan_matches_reference() {
    // `selective_scan_activated` takes `Δ - bias` and `bias` (no softplus); given
    // `softplus(delta + bias) - b2` and `b2` for a random `b2` it must return what the
    // reference returns for `delta` and `bias`: through one chunk, the chunked passes
    // (several chunks, grouped pass 2) and the walk.
    let gpu = require_cuda!();
    for (i, (shape, path)) in ACTIVATED_CASES.into_iter().enumerate() {
        let _path = scan_path(path);
        let x = random_case(700 + i as u64, shape, i % 2 == 1);
        let mut rng = StdRng::seed_from_u64(800 + i as u64);
        let b2 = normals(&mut rng, x.d_inner, 0.5);
        let activated = activated_delta(&x, &b2);
        let (want_y, want_h) = reference(&x);
        let mut a = args(&x, &gpu);
        a.delta = tensor(&activated, [x.batch, x.len, x.d_inner], &gpu);
        a.delta_bias = tensor(&b2, [x.d_inner], &gpu);
        let (got_y, got_h) = outputs(&x, selective_scan_activated(a), "activated");
        let (ey, eh) = (rel_err(&got_y, &want_y), rel_err(&got_h, &want_h));
        println!(
            "activated {:<48} {path:?}: y {ey:9.2e} h {eh:9.2e}",
            x.describe()
        );
        assert!(
            ey <= TOL && eh <= TOL,
            "{}: y {ey:e} h {eh:e}",
            x.describe()
        );
    }
}

/// `SiLU(x)` in f64.
fn silu64(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

#[test]
fn gpu_gated_scan_matches_reference() {
    // `selective_scan_gated` takes an activated Δ (as `selective_scan_activated`) and the gate
    // itself in place of `z`; given `softplus(delta + bias) - b2`, `b2` and `SiLU(z)` it must
    // return what the reference returns for `delta`, `bias` and `z`: through one chunk, the
    // chunked passes (several chunks, grouped pass 2) and the walk, in f32 and f16.
    let gpu = require_cuda!();
    for (i, (shape, path)) in ACTIVATED_CASES.into_iter().enumerate() {
        let _path = scan_path(path);
        let x = random_case(900 + i as u64, shape, i % 2 == 1);
        let mut rng = StdRng::seed_from_u64(950 + i as u64);
        let b2 = normals(&mut rng, x.d_inner, 0.5);
        let activated = activated_delta(&x, &b2);
        let gate: Vec<f32> = x.z.iter().map(|&v| silu64(v as f64) as f32).collect();
        let gated_args = |device: &Device| {
            let mut a = args(&x, device);
            a.delta = tensor(&activated, [x.batch, x.len, x.d_inner], device);
            a.delta_bias = tensor(&b2, [x.d_inner], device);
            a.z = tensor(&gate, [x.batch, x.len, x.d_inner], device);
            a
        };
        let (want_y, want_h) = reference(&x);
        // The CPU's reference of the gated form is the same scan.
        let (ref_y, ref_h) = outputs(
            &x,
            selective_scan_reference_with(gated_args(&Device::flex()), false, false),
            "gated reference",
        );
        let (ry, rh) = (rel_err(&ref_y, &want_y), rel_err(&ref_h, &want_h));
        assert!(
            ry <= 1e-5 && rh <= 1e-5,
            "gated reference: y {ry:e} h {rh:e}"
        );
        let (got_y, got_h) = outputs(&x, selective_scan_gated(gated_args(&gpu)), "gated");
        let (ey, eh) = (rel_err(&got_y, &want_y), rel_err(&got_h, &want_h));
        println!(
            "gated {:<48} {path:?}: y {ey:9.2e} h {eh:9.2e}",
            x.describe()
        );
        assert!(
            ey <= TOL && eh <= TOL,
            "{}: y {ey:e} h {eh:e}",
            x.describe()
        );
        // In f16 against the gated reference on the same rounded inputs.
        let half = |a: ScanArgs| ScanArgs {
            u: a.u.cast(FloatDType::F16),
            delta: a.delta.cast(FloatDType::F16),
            z: a.z.cast(FloatDType::F16),
            b: a.b.cast(FloatDType::F16),
            c: a.c.cast(FloatDType::F16),
            ..a
        };
        let (want_y, want_h) = outputs(
            &x,
            selective_scan_reference_with(half(gated_args(&Device::flex())), false, false),
            "gated f16 reference",
        );
        let (got_y, got_h) = outputs(
            &x,
            selective_scan_gated(half(gated_args(&gpu))),
            "gated f16",
        );
        let (ey, eh) = (rel_err(&got_y, &want_y), rel_err(&got_h, &want_h));
        println!(
            "gated f16 {:<44} {path:?}: y {ey:9.2e} h {eh:9.2e}",
            x.describe()
        );
        assert!(
            ey <= 2e-3 && eh <= TOL,
            "f16 {}: y {ey:e} h {eh:e}",
            x.describe()
        );
    }
}

#[test]
fn gpu_project_silu_from_matches_reference() {
    // in_proj with the gate's SiLU on its `z` columns: on CUDA in f16/bf16 the tensor-core
    // kernel's epilogue (its launches counted) where the first gated column is a multiple of
    // 64, else the product and the SiLU as tensor operations; against the CPU in f32.
    let gpu = require_cuda!();
    let _alone = projections_alone();
    set_strategy(None);
    set_gemm_band(None);
    set_gemm_rows(None);
    let mut rng = StdRng::seed_from_u64(61);
    // [batch, len, k, n, from]: in_proj of the d_model 256 model, its gate from column 512;
    // a first gated column inside an epilogue group (100); all columns gated; none.
    let shapes: &[[usize; 5]] = if is_cuda(&gpu) {
        &[
            [1, 2049, 256, 1024, 512],
            [1, 40, 96, 192, 100],
            [2, 37, 96, 128, 0],
            [1, 33, 96, 128, 128],
        ]
    } else {
        &[[1, 40, 96, 128, 64]]
    };
    for &[batch, len, k, n, from] in shapes {
        let x = normals(&mut rng, batch * len * k, 1.0);
        let w = normals(&mut rng, k * n, 2.0 / (k as f32).sqrt());
        let want = host(project_silu_from_with(
            Impl::Reference,
            tensor(&x, [batch, len, k], &Device::flex()),
            tensor(&w, [k, n], &Device::flex()),
            from,
        ));
        // The reference is the product with SiLU on the gated columns.
        let product = cpu_product(&x, &w, [batch, len, k, n]);
        for (i, (&p, &v)) in product.iter().zip(&want).enumerate() {
            let e = if i % n >= from {
                silu64(p as f64)
            } else {
                p as f64
            };
            assert!(
                (v as f64 - e).abs() <= 1e-5 * (1.0 + e.abs()),
                "reference at {i}"
            );
        }
        let mut formats = vec![(FloatDType::F32, 5e-3), (FloatDType::F16, 4e-3)];
        if is_cuda(&gpu) {
            formats.push((FloatDType::BF16, 3e-2));
        }
        for (dtype, tol) in formats {
            let before = gemm_mma_launches();
            let before_gated = gemm_gated_launches();
            let got = project_silu_from_with(
                Impl::Fastest,
                tensor(&x, [batch, len, k], &gpu).cast(dtype),
                tensor(&w, [k, n], &gpu).cast(dtype),
                from,
            );
            assert_eq!(got.dims(), [batch, len, n], "shape");
            assert_eq!(got.dtype(), DType::from(dtype), "format");
            let got = host(got);
            let mma = gemm_mma_launches() - before;
            let gated = gemm_gated_launches() - before_gated;
            // The product runs on the tensor-core kernel either way; its epilogue applies the
            // SiLU where `from` is a multiple of 64 below `n`.
            let half = is_cuda(&gpu) && dtype != FloatDType::F32;
            assert_eq!(mma, usize::from(half), "[{k},{n}] {dtype:?}: kernel");
            let fused = half && from % 64 == 0 && from < n;
            assert_eq!(
                gated,
                usize::from(fused),
                "[{k},{n}] from {from} {dtype:?}: SiLU in the epilogue"
            );
            let e = rel_err(&got, &want);
            println!(
                "project_silu_from {batch}x{len}x{k} -> {n} from {from} {dtype:?}: {e:9.2e} (mma {mma}, gated {gated})"
            );
            assert!(e <= tol, "[{k},{n}] from {from} {dtype:?}: {e:e}");
        }
    }
}

#[test]
fn gpu_norm_and_residual_projections_match_reference() {
    // in_proj with the block's norm folded in (`project_norm_silu_from`) and out_proj with the
    // residual add (`project_add`): on CUDA in f16/bf16 the tensor-core kernel (its norm and
    // residual launches counted), else tensor operations; against the CPU in f32. The add's
    // sum equals, bit for bit, the kernel's plain product added to the stream on the GPU, and
    // its copy in the activation format is that sum rounded.
    let gpu = require_cuda!();
    let _alone = projections_alone();
    set_strategy(None);
    set_gemm_band(None);
    set_gemm_rows(None);
    let mut rng = StdRng::seed_from_u64(67);
    let eps = 1e-5;
    // [batch, len, k, n, from]: in_proj of the d_model 256 model (gate from 512), all columns
    // gated, a gate from 128 of 192.
    let shapes: &[[usize; 5]] = if is_cuda(&gpu) {
        &[
            [1, 2049, 256, 1024, 512],
            [2, 37, 96, 128, 0],
            [1, 40, 96, 192, 128],
        ]
    } else {
        &[[1, 40, 96, 128, 64]]
    };
    for &[batch, len, k, n, from] in shapes {
        // A stream of a few units with uneven rows, so that the norm's scale matters.
        let x: Vec<f32> = normals(&mut rng, batch * len * k, 1.0)
            .iter()
            .enumerate()
            .map(|(i, v)| v * (1.0 + 3.0 * ((i / k) % 5) as f32))
            .collect();
        let norm: Vec<f32> = normals(&mut rng, k, 0.2).iter().map(|v| 1.0 + v).collect();
        let w = normals(&mut rng, k * n, 2.0 / (k as f32).sqrt());
        let norm_on = |dev: &Device| -> Tensor<1> {
            Tensor::from_data(TensorData::new(norm.clone(), [k]), dev)
        };
        let want = host(project_norm_silu_from_with(
            Impl::Reference,
            tensor(&x, [batch, len, k], &Device::flex()),
            norm_on(&Device::flex()),
            tensor(&w, [k, n], &Device::flex()),
            eps,
            from,
        ));
        let mut formats = vec![(FloatDType::F32, 5e-3), (FloatDType::F16, 5e-3)];
        if is_cuda(&gpu) {
            formats.push((FloatDType::BF16, 4e-2));
        }
        for (dtype, tol) in formats {
            let before = gemm_norm_launches();
            let got = project_norm_silu_from_with(
                Impl::Fastest,
                tensor(&x, [batch, len, k], &gpu).cast(dtype),
                norm_on(&gpu),
                tensor(&w, [k, n], &gpu).cast(dtype),
                eps,
                from,
            );
            assert_eq!(got.dims(), [batch, len, n], "shape");
            assert_eq!(got.dtype(), DType::from(dtype), "format");
            let got = host(got);
            let launches = gemm_norm_launches() - before;
            let fused = is_cuda(&gpu) && dtype != FloatDType::F32;
            assert_eq!(
                launches,
                usize::from(fused),
                "[{k},{n}] {dtype:?}: norm kernel"
            );
            let e = rel_err(&got, &want);
            println!(
                "project_norm_silu_from {batch}x{len}x{k} -> {n} from {from} {dtype:?}: {e:9.2e} (kernel {launches})"
            );
            assert!(e <= tol, "[{k},{n}] from {from} {dtype:?}: {e:e}");
        }
    }
    // [batch, len, k, n]: out_proj of the d_model 256 model; a smaller one.
    let shapes: &[[usize; 4]] = if is_cuda(&gpu) {
        &[[1, 2049, 512, 256], [2, 37, 96, 128]]
    } else {
        &[[1, 40, 96, 128]]
    };
    for &[batch, len, k, n] in shapes {
        let y = normals(&mut rng, batch * len * k, 1.0);
        let w = normals(&mut rng, k * n, 1.0 / (k as f32).sqrt());
        let x = normals(&mut rng, batch * len * n, 2.0);
        let (want, _) = project_add_with(
            Impl::Reference,
            tensor(&y, [batch, len, k], &Device::flex()),
            tensor(&w, [k, n], &Device::flex()),
            tensor(&x, [batch, len, n], &Device::flex()),
        );
        let want = host(want);
        let mut formats = vec![(FloatDType::F32, 1e-3), (FloatDType::F16, 3e-3)];
        if is_cuda(&gpu) {
            formats.push((FloatDType::BF16, 2e-2));
        }
        for (dtype, tol) in formats {
            let before = gemm_residual_launches();
            let (yg, wg) = (
                tensor(&y, [batch, len, k], &gpu).cast(dtype),
                tensor(&w, [k, n], &gpu).cast(dtype),
            );
            let stream = tensor(&x, [batch, len, n], &gpu);
            let (sum, half) =
                project_add_with(Impl::Fastest, yg.clone(), wg.clone(), stream.clone());
            assert_eq!(sum.dtype(), DType::F32, "the sum is f32");
            assert_eq!(half.dtype(), DType::from(dtype), "the copy's format");
            assert_eq!(
                host(half),
                host(sum.clone().cast(dtype)),
                "[{k},{n}] {dtype:?}: the copy is the sum rounded"
            );
            // Counted once the results were read (fusion runs operations when they are).
            let launches = gemm_residual_launches() - before;
            let fused = is_cuda(&gpu) && dtype != FloatDType::F32;
            assert_eq!(
                launches,
                usize::from(fused),
                "[{k},{n}] {dtype:?}: residual kernel"
            );
            // The same product by the kernel alone, added as tensor operations.
            let composed = stream + project_with(Impl::Fastest, yg, wg).cast(FloatDType::F32);
            let sum = host(sum);
            assert_eq!(sum, host(composed), "[{k},{n}] {dtype:?}: product then add");
            let e = rel_err(&sum, &want);
            println!(
                "project_add {batch}x{len}x{k} -> {n} {dtype:?}: {e:9.2e} (kernel {launches})"
            );
            assert!(e <= tol, "[{k},{n}] {dtype:?}: {e:e}");
        }
    }
}

#[test]
fn gpu_project_wgmma_matches_reference() {
    // The `wgmma` kernel: in_proj plain and with the norm and gate, and out_proj (`k` 512, in
    // two pieces) with the residual add, in f16 and bf16, against the CPU in f32 and against
    // the `mma.sync` kernel (`GENOMAMBA_GEMM_WGMMA=off`), whose outputs they equal bit for bit
    // (same f32 sums). Elsewhere (no CUDA device) it never runs, which is checked too.
    let gpu = require_cuda!();
    let _alone = projections_alone();
    set_strategy(None);
    set_gemm_band(None);
    set_gemm_rows(None);
    let cuda = is_cuda(&gpu);
    let mut rng = StdRng::seed_from_u64(71);
    let eps = 1e-5;
    let (batch, len, k, n, from) = if cuda {
        (1, 2049, 256, 1024, 512)
    } else {
        (1, 40, 256, 256, 128)
    };
    let x: Vec<f32> = normals(&mut rng, batch * len * k, 1.0)
        .iter()
        .enumerate()
        .map(|(i, v)| v * (1.0 + 3.0 * ((i / k) % 5) as f32))
        .collect();
    let norm: Vec<f32> = normals(&mut rng, k, 0.2).iter().map(|v| 1.0 + v).collect();
    let w = normals(&mut rng, k * n, 2.0 / (k as f32).sqrt());
    let norm_on =
        |dev: &Device| -> Tensor<1> { Tensor::from_data(TensorData::new(norm.clone(), [k]), dev) };
    let plain_want = cpu_product(&x, &w, [batch, len, k, n]);
    let normed_want = host(project_norm_silu_from_with(
        Impl::Reference,
        tensor(&x, [batch, len, k], &Device::flex()),
        norm_on(&Device::flex()),
        tensor(&w, [k, n], &Device::flex()),
        eps,
        from,
    ));
    // out_proj: `y` of 512 channels onto a stream of 256.
    let (rk, rn) = (512, 256);
    let y = normals(&mut rng, batch * len * rk, 1.0);
    let stream = normals(&mut rng, batch * len * rn, 2.0);
    let wr = normals(&mut rng, rk * rn, 1.0 / (rk as f32).sqrt());
    let (residual_want, _) = project_add_with(
        Impl::Reference,
        tensor(&y, [batch, len, rk], &Device::flex()),
        tensor(&wr, [rk, rn], &Device::flex()),
        tensor(&stream, [batch, len, rn], &Device::flex()),
    );
    let residual_want = host(residual_want);
    // On CubeCL's CPU runtime (CI) f16 only, with the kernel asked for (and not run).
    let (formats, modes) = if cuda {
        (
            vec![(FloatDType::F16, 5e-3), (FloatDType::BF16, 4e-2)],
            vec![false, true],
        )
    } else {
        (vec![(FloatDType::F16, 5e-3)], vec![true])
    };
    for (dtype, tol) in formats {
        // Each product by the `mma.sync` kernel and by `wgmma`.
        let mut runs = Vec::new();
        for &wg in &modes {
            set_gemm_wgmma(Some(if wg { "on" } else { "off" }));
            let before = gemm_wg_launches();
            let xg = tensor(&x, [batch, len, k], &gpu).cast(dtype);
            let plain = host(project_with(
                Impl::Fastest,
                xg.clone(),
                tensor(&w, [k, n], &gpu).cast(dtype),
            ));
            let normed = host(project_norm_silu_from_with(
                Impl::Fastest,
                xg.clone(),
                norm_on(&gpu),
                tensor(&w, [k, n], &gpu).cast(dtype),
                eps,
                from,
            ));
            let (sum, half) = project_add_with(
                Impl::Fastest,
                tensor(&y, [batch, len, rk], &gpu).cast(dtype),
                tensor(&wr, [rk, rn], &gpu).cast(dtype),
                tensor(&stream, [batch, len, rn], &gpu),
            );
            let (sum, half_host) = (host(sum.clone()), host(half));
            assert_eq!(
                half_host,
                host(sum_as(&sum, [batch, len, rn], &gpu, dtype)),
                "{dtype:?} wgmma {wg}: the copy is the sum rounded"
            );
            let launches = gemm_wg_launches() - before;
            assert_eq!(
                launches,
                if wg && cuda { 3 } else { 0 },
                "{dtype:?} wgmma {wg}"
            );
            for (name, got, want) in [
                ("plain", &plain, &plain_want),
                ("norm+gate", &normed, &normed_want),
                ("residual", &sum, &residual_want),
            ] {
                let e = rel_err(got, want);
                println!("wgmma {wg} {name} {len} rows {dtype:?}: {e:9.2e}");
                assert!(e <= tol, "{name} {dtype:?} wgmma {wg}: {e:e}");
            }
            runs.push((plain, normed, sum));
        }
        if cuda {
            let (a, b) = (&runs[0], &runs[1]);
            assert_eq!(a.0, b.0, "{dtype:?}: plain, wgmma against mma.sync");
            assert_eq!(a.1, b.1, "{dtype:?}: norm and gate, wgmma against mma.sync");
            assert_eq!(a.2, b.2, "{dtype:?}: residual, wgmma against mma.sync");
        }
    }
    set_gemm_wgmma(None);
}

/// `sum` (host values, f32) on `gpu` rounded to `dtype`, back on the host.
fn sum_as(sum: &[f32], dims: [usize; 3], gpu: &Device, dtype: FloatDType) -> Tensor<3> {
    tensor(sum, dims, gpu).cast(dtype)
}

#[test]
fn gpu_project_softplus_matches_reference() {
    // dt_proj with the Δ bias and softplus: the small-k kernel's epilogue (on a view of a
    // wider tensor, as dt_proj reads x_proj's output) and, past its inner dimension, the
    // reference through a matrix product; f32 and f16 against the CPU in f32.
    let gpu = require_cuda!();
    let _alone = projections_alone();
    set_strategy(None);
    let mut rng = StdRng::seed_from_u64(31);
    let (batch, len, wide, n) = (2, 100, 48, 512);
    for k in [16, SMALL_K_MAX + 1] {
        let x = normals(&mut rng, batch * len * wide.max(k), 1.0);
        let w = normals(&mut rng, k * n, 0.25);
        let bias = normals(&mut rng, n, 2.0);
        let wide = wide.max(k);
        let view = |device: &Device, dtype: FloatDType| {
            tensor(&x, [batch, len, wide], device)
                .cast(dtype)
                .slice([0..batch, 0..len, 0..k])
        };
        let want = host(project_softplus_with(
            Impl::Reference,
            view(&Device::flex(), FloatDType::F32),
            tensor(&w, [k, n], &Device::flex()),
            tensor(&bias, [n], &Device::flex()),
        ));
        assert!(want.iter().all(|&v| v >= 0.0), "softplus is not negative");
        for (dtype, tol) in [(FloatDType::F32, 1e-5), (FloatDType::F16, 3e-3)] {
            // Past the small-k kernel the product runs on tensor cores, TF32 in f32 (inputs
            // rounded to 10 mantissa bits): the projection test's tolerance.
            let tol = if k <= SMALL_K_MAX { tol } else { 5e-3 };
            let before = small_k_launches();
            let got = project_softplus_with(
                Impl::Fastest,
                view(&gpu, dtype),
                tensor(&w, [k, n], &gpu).cast(dtype),
                tensor(&bias, [n], &gpu),
            );
            assert_eq!(got.dims(), [batch, len, n], "shape");
            assert_eq!(got.dtype(), DType::from(dtype), "format");
            let e = rel_err(&host(got), &want);
            let small = small_k_launches() - before;
            println!("project_softplus k {k} {dtype:?}: {e:9.2e} (small-k launches {small})");
            assert_eq!(small, usize::from(k <= SMALL_K_MAX), "which kernel ran");
            assert!(e <= tol, "k {k} {dtype:?}: {e:e}");
        }
    }
}

#[test]
fn gpu_project_mma_matches_reference() {
    // in_proj on CUDA in f16 and bf16: the tensor-core kernel with the weight's bands in
    // shared memory (its launches counted), in every band width that divides the output and
    // both warp tiles; elsewhere (f32, CubeCL's CPU runtime, shapes it does not take) cubek.
    // Against the CPU's product in f32.
    let gpu = require_cuda!();
    let _alone = projections_alone();
    set_strategy(None);
    let mut rng = StdRng::seed_from_u64(53);
    // [batch, len, k, n]: in_proj of the d_model 256 model (2049 rows, not a multiple of the
    // kernel's 16 or 32); a `k` (96) whose rows need no padding, 40 rows; out_proj's shape
    // (`k` 512, always 16-row tiles) with 74 rows; a `k` (48, 1,024) and an `n` (48) the
    // kernel does not take.
    // On CubeCL's CPU runtime (CI), where the kernel never runs, one small shape: each shape
    // and format is a kernel compilation there.
    let shapes: &[[usize; 4]] = if is_cuda(&gpu) {
        &[
            [1, 2049, 256, 1024],
            [1, 40, 96, 64],
            [2, 37, 512, 256],
            [1, 10, 48, 64],
            [1, 10, 1024, 64],
            [1, 10, 64, 48],
        ]
    } else {
        &[[1, 40, 96, 64]]
    };
    for &[batch, len, k, n] in shapes {
        let x = normals(&mut rng, batch * len * k, 1.0);
        let w = normals(&mut rng, k * n, 1.0 / (k as f32).sqrt());
        let want = cpu_product(&x, &w, [batch, len, k, n]);
        let fits = k % 32 == 0 && k <= GEMM_MAX_K && n % 64 == 0;
        let mut formats = vec![(FloatDType::F32, 5e-3), (FloatDType::F16, 4e-3)];
        if is_cuda(&gpu) {
            formats.push((FloatDType::BF16, 3e-2));
        }
        let choices = [None, Some(64), Some(128), Some(256)]
            .into_iter()
            .flat_map(|band| [(band, None), (band, Some(16)), (band, Some(32))]);
        for (band, rows) in choices {
            let usual = band.is_none() && rows.is_none();
            if band.is_some_and(|b| n % b != 0) || (!usual && !is_cuda(&gpu)) {
                continue;
            }
            set_gemm_band(band);
            set_gemm_rows(rows);
            for &(dtype, tol) in &formats {
                let before = gemm_mma_launches();
                let got = gpu_product(&gpu, &x, &w, [batch, len, k, n], dtype);
                // Read back first: the product runs when its result is needed.
                let got = host(got);
                let mma = gemm_mma_launches() - before;
                let expected = is_cuda(&gpu) && dtype != FloatDType::F32 && fits;
                assert_eq!(mma, usize::from(expected), "[{k},{n}] {dtype:?}: kernel");
                let e = rel_err(&got, &want);
                println!(
                    "project_mma {batch}x{len}x{k} -> {n} {dtype:?} band {band:?} rows {rows:?}: {e:9.2e} (mma {mma})"
                );
                assert!(
                    e <= tol,
                    "[{k},{n}] {dtype:?} band {band:?} rows {rows:?}: {e:e}"
                );
            }
        }
    }
    set_gemm_band(None);
    set_gemm_rows(None);
}

#[test]
fn gpu_project_dbc_matches_reference() {
    // x_proj and dt_proj as one operation (`project_dbc`): on CUDA in f16 and bf16 the
    // tensor-core kernel (its launches counted); otherwise x_proj's product and dt_proj's
    // small-k kernel on a view of it. Against the reference on the CPU in f32.
    let gpu = require_cuda!();
    let _alone = projections_alone();
    set_strategy(None);
    let mut rng = StdRng::seed_from_u64(47);
    // [batch, len, d_inner, dt_rank, d_state]: the d_model 256 block (200 rows); 37 rows (not a
    // multiple of the kernel's 16) with two steps of dt_rank; a d_state the kernel does not take;
    // on CUDA also a d_inner (96) not a multiple of 64, so that dt_proj's epilogue takes one
    // block of 32 columns per step instead of two.
    let mut shapes = vec![
        [2, 100, 512, 16, 16],
        [1, 37, 64, 32, 8],
        [1, 20, 48, 16, 5],
    ];
    if is_cuda(&gpu) {
        shapes.push([1, 21, 96, 16, 16]);
    }
    for [batch, len, d_inner, dt_rank, d_state] in shapes {
        let n_x = dt_rank + 2 * d_state;
        let x = normals(&mut rng, batch * len * d_inner, 1.0);
        let w_x = normals(&mut rng, d_inner * n_x, 1.0 / (d_inner as f32).sqrt());
        let w_dt = normals(&mut rng, dt_rank * d_inner, 0.25);
        let bias = normals(&mut rng, d_inner, 2.0);
        let run = |which: Impl, device: &Device, dtype: FloatDType| {
            let (delta, b, c) = project_dbc_with(
                which,
                tensor(&x, [batch, len, d_inner], device).cast(dtype),
                tensor(&w_x, [d_inner, n_x], device).cast(dtype),
                tensor(&w_dt, [dt_rank, d_inner], device).cast(dtype),
                tensor(&bias, [d_inner], device),
            );
            assert_eq!(delta.dims(), [batch, len, d_inner], "delta shape");
            assert_eq!(
                [b.dims(), c.dims()],
                [[batch, len, d_state]; 2],
                "B, C shapes"
            );
            for t in [&delta, &b, &c] {
                assert_eq!(t.dtype(), DType::from(dtype), "format");
            }
            [host(delta), host(b), host(c)]
        };
        let want = run(Impl::Reference, &Device::flex(), FloatDType::F32);
        assert!(
            want[0].iter().all(|&v| v >= 0.0),
            "softplus is not negative"
        );
        // f32 on CUDA multiplies in TF32 (the projection test's tolerance).
        let mut formats = vec![(FloatDType::F32, 5e-3), (FloatDType::F16, 4e-3)];
        if is_cuda(&gpu) {
            formats.push((FloatDType::BF16, 3e-2));
        }
        for (dtype, tol) in formats {
            let before = dbc_mma_launches();
            let got = run(Impl::Fastest, &gpu, dtype);
            let mma = dbc_mma_launches() - before;
            let fits = d_state % 8 == 0;
            let expected = is_cuda(&gpu) && dtype != FloatDType::F32 && fits;
            assert_eq!(
                mma,
                usize::from(expected),
                "{d_inner}/{d_state} {dtype:?}: kernel"
            );
            for (name, (g, w)) in ["delta", "B", "C"].into_iter().zip(got.iter().zip(&want)) {
                let e = rel_err(g, w);
                println!(
                    "project_dbc {batch}x{len}x{d_inner} {dt_rank}/{d_state} {dtype:?} {name}: {e:9.2e} (mma {mma})"
                );
                assert!(e <= tol, "{d_inner}/{d_state} {dtype:?} {name}: {e:e}");
            }
        }
    }
}

/// Host copies of `conv_dbc`'s outputs: `[u, window, Δ, B, C]`.
fn conv_dbc_host(out: ConvDbc) -> [Vec<f32>; 5] {
    [out.u, out.window, out.delta, out.b, out.c].map(host)
}

#[test]
fn gpu_conv_dbc_matches_reference_and_carries_the_window() {
    // The convolution followed by x_proj and dt_proj as one operation (`conv_dbc`): on CUDA in
    // f16 and bf16 one kernel (its launches counted), which must give what the convolution's
    // and x_proj/dt_proj's kernels give one after the other, bit for bit, and the CPU's f32
    // reference to the projections' tolerance; split into two chunks with the window carried,
    // the same as one chunk.
    let gpu = require_cuda!();
    let _alone = projections_alone();
    set_strategy(None);
    let mut rng = StdRng::seed_from_u64(53);
    // [batch, len, d_inner, dt_rank, d_state, d_conv]: the d_model 256 block (200 rows, not a
    // multiple of the kernel's 16); two steps of dt_rank; a chunk shorter than the window;
    // d_conv 2; a d_state the tensor-core kernel does not take.
    let shapes = [
        [2, 100, 512, 16, 16, 4],
        [1, 37, 64, 32, 8, 4],
        [2, 2, 96, 16, 16, 4],
        [3, 21, 64, 16, 8, 2],
        [1, 20, 64, 16, 5, 4],
    ];
    for [batch, len, d, dt_rank, d_state, k] in shapes {
        let n_x = dt_rank + 2 * d_state;
        let x = normals(&mut rng, batch * len * 2 * d, 1.0);
        let window = normals(&mut rng, batch * (k - 1) * d, 1.0);
        let weight = normals(&mut rng, k * d, 0.5);
        let bias = normals(&mut rng, d, 0.5);
        let w_x = normals(&mut rng, d * n_x, 1.0 / (d as f32).sqrt());
        let w_dt = normals(&mut rng, dt_rank * d, 0.25);
        let dt_bias = normals(&mut rng, d, 2.0);
        let run = |which: Impl, x: &[f32], win: &[f32], len: usize, dev: &Device, f: FloatDType| {
            let out = conv_dbc_with(
                which,
                tensor(x, [batch, len, 2 * d], dev).cast(f),
                tensor(win, [batch, k - 1, d], dev).cast(f),
                tensor(&weight, [k, d], dev),
                tensor(&bias, [d], dev),
                tensor(&w_x, [d, n_x], dev).cast(f),
                tensor(&w_dt, [dt_rank, d], dev).cast(f),
                tensor(&dt_bias, [d], dev),
            );
            assert_eq!(out.u.dims(), [batch, len, d], "u shape");
            assert_eq!(out.window.dims(), [batch, k - 1, d], "window shape");
            assert_eq!(out.delta.dims(), [batch, len, d], "delta shape");
            assert_eq!([out.b.dims(), out.c.dims()], [[batch, len, d_state]; 2]);
            for t in [&out.u, &out.delta, &out.b, &out.c] {
                assert_eq!(t.dtype(), DType::from(f), "format");
            }
            conv_dbc_host(out)
        };
        let names = ["u", "window", "delta", "B", "C"];
        let want = run(
            Impl::Reference,
            &x,
            &window,
            len,
            &Device::flex(),
            FloatDType::F32,
        );
        let mut formats = vec![(FloatDType::F32, 5e-3), (FloatDType::F16, 4e-3)];
        if is_cuda(&gpu) {
            formats.push((FloatDType::BF16, 3e-2));
        }
        for (dtype, tol) in formats {
            let before = conv_dbc_launches();
            let got = run(Impl::Fastest, &x, &window, len, &gpu, dtype);
            let fused = conv_dbc_launches() - before;
            let expected = is_cuda(&gpu) && dtype != FloatDType::F32 && d_state % 8 == 0;
            assert_eq!(
                fused,
                usize::from(expected),
                "{d}/{d_state} {dtype:?}: fused kernel"
            );
            for (name, (g, w)) in names.iter().zip(got.iter().zip(&want)) {
                let e = rel_err(g, w);
                println!(
                    "conv_dbc {batch}x{len}x{d} {dt_rank}/{d_state} k {k} {dtype:?} {name}: {e:9.2e} (fused {fused})"
                );
                assert!(e <= tol, "{d}/{d_state} k {k} {dtype:?} {name}: {e:e}");
            }
            // The two kernels one after the other, on the same device and format.
            let (u, next) = causal_conv_silu_with(
                Impl::Fastest,
                tensor(&x, [batch, len, 2 * d], &gpu).cast(dtype),
                tensor(&window, [batch, k - 1, d], &gpu).cast(dtype),
                tensor(&weight, [k, d], &gpu),
                tensor(&bias, [d], &gpu),
            );
            let (delta, b, c) = project_dbc_with(
                Impl::Fastest,
                u.clone(),
                tensor(&w_x, [d, n_x], &gpu).cast(dtype),
                tensor(&w_dt, [dt_rank, d], &gpu).cast(dtype),
                tensor(&dt_bias, [d], &gpu),
            );
            let apart = [u, next, delta, b, c].map(host);
            for (name, (g, w)) in names.iter().zip(got.iter().zip(&apart)) {
                assert!(
                    g == w,
                    "{d}/{d_state} k {k} {dtype:?} {name}: differs from the two kernels"
                );
            }
            // Two chunks, the window carried, give the same as one.
            if len > 2 {
                let cut = len / 3;
                let rows = |t0: usize, t1: usize| -> Vec<f32> {
                    (0..batch)
                        .flat_map(|b| x[(b * len + t0) * 2 * d..(b * len + t1) * 2 * d].to_vec())
                        .collect()
                };
                let first = run(Impl::Fastest, &rows(0, cut), &window, cut, &gpu, dtype);
                let second = run(
                    Impl::Fastest,
                    &rows(cut, len),
                    &first[1],
                    len - cut,
                    &gpu,
                    dtype,
                );
                assert!(second[1] == got[1], "{dtype:?}: carried window");
                for (i, name) in [(0, "u"), (2, "delta"), (3, "B"), (4, "C")] {
                    let width = got[i].len() / (batch * len);
                    let mut joined = Vec::with_capacity(got[i].len());
                    for b in 0..batch {
                        let (n1, n2) = (cut * width, (len - cut) * width);
                        joined.extend_from_slice(&first[i][b * n1..(b + 1) * n1]);
                        joined.extend_from_slice(&second[i][b * n2..(b + 1) * n2]);
                    }
                    assert!(
                        joined == got[i],
                        "{d} k {k} {dtype:?} {name}: split differs"
                    );
                }
            }
        }
    }
}

#[test]
fn gpu_scan_reads_strided_views() {
    let gpu = require_cuda!();
    let _path = scan_path(ScanPath::Chunked);
    strided_views(&gpu, "strided views");
}

/// The scan over views as the Mamba block passes them (`u|z` and `dt|B|C` side by side in wider
/// tensors, `C` off a vector boundary, `A` transposed), against the reference.
fn strided_views(gpu: &Device, what: &str) {
    let gpu = gpu.clone();
    // u|z and dt|B|C side by side in wider tensors, as the Mamba block produces them.
    let x = random_case(7, [2, 300, 37, 16], false);
    let (want_y, want_h) = reference(&x);
    let (nb, nl, ni, ns) = (x.batch, x.len, x.d_inner, x.d_state);
    let mut uz = Vec::with_capacity(nb * nl * 2 * ni);
    let mut xbc = Vec::with_capacity(nb * nl * (3 + 2 * ns));
    for row in 0..nb * nl {
        uz.extend_from_slice(&x.u[row * ni..(row + 1) * ni]);
        uz.extend_from_slice(&x.z[row * ni..(row + 1) * ni]);
        xbc.extend_from_slice(&[0.5, -1.0, 2.0]);
        xbc.extend_from_slice(&x.b[row * ns..(row + 1) * ns]);
        xbc.extend_from_slice(&x.c[row * ns..(row + 1) * ns]);
    }
    let uz = tensor(&uz, [nb, nl, 2 * ni], &gpu);
    let xbc = tensor(&xbc, [nb, nl, 3 + 2 * ns], &gpu);
    let mut a = args(&x, &gpu);
    a.u = uz.clone().slice([0..nb, 0..nl, 0..ni]);
    a.z = uz.slice([0..nb, 0..nl, ni..2 * ni]);
    a.b = xbc.slice([0..nb, 0..nl, 3..3 + ns]);
    // C as a contiguous view that starts one float into its buffer (not on a vector boundary).
    let mut padded = vec![9.0f32];
    padded.extend_from_slice(&x.c);
    a.c = tensor(&padded, [1 + nb * nl * ns], &gpu)
        .narrow(0, 1, nb * nl * ns)
        .reshape([nb, nl, ns]);
    // A transposed view of a [d_state, d_inner] tensor.
    let mut a_t = vec![0.0f32; ns * ni];
    for ch in 0..ni {
        for n in 0..ns {
            a_t[n * ni + ch] = x.a[ch * ns + n];
        }
    }
    a.a = tensor(&a_t, [ns, ni], &gpu).transpose();
    let (got_y, got_h) = outputs(&x, selective_scan(a), "gpu views");
    let (ey, eh) = (rel_err(&got_y, &want_y), rel_err(&got_h, &want_h));
    println!(
        "{what}, {:<40} y {ey:9.2e}   h_last {eh:9.2e}",
        x.describe()
    );
    assert!(ey <= TOL && eh <= TOL, "{what}: y {ey:e}, h {eh:e}");
}

#[test]
fn gpu_scan_carries_state_across_calls() {
    let gpu = require_cuda!();
    let _path = scan_path(ScanPath::Chunked);
    carried_state(&gpu, [1, 5000, 64, 16], "split");
}

/// The scan of `shape` in two calls, the second starting from the first's last state, against
/// the reference in one call.
fn carried_state(gpu: &Device, shape: [usize; 4], what: &str) {
    let gpu = gpu.clone();
    let x = random_case(11, shape, false);
    let (want_y, want_h) = reference(&x);
    let (nb, nl, ni) = (x.batch, x.len, x.d_inner);
    let split = 1777.min(nl / 3).max(1);
    let full = args(&x, &gpu);
    let part = |t0: usize, t1: usize, h0: Tensor<3>| ScanArgs {
        u: full.u.clone().slice([0..nb, t0..t1, 0..ni]),
        delta: full.delta.clone().slice([0..nb, t0..t1, 0..ni]),
        z: full.z.clone().slice([0..nb, t0..t1, 0..ni]),
        b: full.b.clone().slice([0..nb, t0..t1, 0..x.d_state]),
        c: full.c.clone().slice([0..nb, t0..t1, 0..x.d_state]),
        h0,
        ..full.clone()
    };
    let (y1, h1) = selective_scan(part(0, split, full.h0.clone()));
    let (y2, h2) = selective_scan(part(split, nl, h1));
    let y = Tensor::cat(vec![y1, y2], 1);
    let (got_y, got_h) = outputs(&x, (y, h2), "gpu split");
    let (ey, eh) = (rel_err(&got_y, &want_y), rel_err(&got_h, &want_h));
    println!(
        "{what} at {split}, {:<40} y {ey:9.2e}   h_last {eh:9.2e}",
        x.describe()
    );
    assert!(ey <= TOL && eh <= TOL, "{what}: y {ey:e}, h {eh:e}");
}

/// The walk kernel (one pass over time per row and channel, states spread over `lanes` threads
/// per channel) against the reference: lanes 1, 2, 4 (and 8 on CUDA) over lengths shorter than,
/// equal to and longer than its stages, `d_inner` not a multiple of a cube's channels,
/// `d_state` 1, 7, 16, 64; views as the block passes them; state carried across calls; half
/// activations. On CUDA also a shape where the usual choice walks by itself.
#[test]
fn gpu_scan_walk_matches_reference() {
    let gpu = require_cuda!();
    let cuda = is_cuda(&gpu);
    // On CubeCL's CPU runtime a cube's barrier spins with one worker thread per unit, so a
    // cube of more units (lanes, one channel per cube there) than the machine has cores waits
    // on the OS scheduler at every barrier: 4 lanes took ~140 of this test's 160 s on 2 cores.
    // There the lane counts stop at the core count; the GPU checks them all.
    let lane_counts: Vec<usize> = if cuda {
        vec![1, 2, 4, 8]
    } else {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        [1, 2, 4]
            .into_iter()
            .filter(|&l| l <= cores.max(2))
            .collect()
    };
    let widest = lane_counts.iter().copied().max().unwrap_or(1);
    let mut shapes = vec![
        [2, 1, 37, 16],
        [2, 7, 5, 16],
        [1, 32, 37, 16],
        [2, 300, 37, 16],
        [3, 70, 5, 7],
        [2, 65, 12, 1],
        [1, 257, 5, 64],
    ];
    if cuda {
        shapes.push([2, 2049, 1536, 16]);
        shapes.push([1, 1 << 16, 37, 16]);
    }
    let mut ran = 0;
    for &lanes in &lane_counts {
        let _path = scan_path(ScanPath::Walk(lanes));
        for (i, shape) in shapes.iter().enumerate() {
            let d_state = shape[3];
            // The walk needs `lanes` to divide `d_state` and at most 16 states per lane;
            // other shapes go to the chunked passes (covered by the other tests).
            if d_state % lanes != 0 || d_state / lanes > 16 {
                continue;
            }
            for zero_h0 in [true, false] {
                let x = random_case(3000 + 10 * i as u64 + zero_h0 as u64, *shape, zero_h0);
                print!("walk, {lanes} lanes: ");
                let (ey, eh) = compare(&x, &gpu);
                assert!(
                    ey <= TOL && eh <= TOL,
                    "walk, {lanes} lanes, {}: y {ey:e}, h {eh:e}",
                    x.describe()
                );
                ran += 1;
            }
        }
        strided_views(&gpu, &format!("walk, {lanes} lanes, strided views"));
        carried_state(
            &gpu,
            [2, 700, 37, 16],
            &format!("walk, {lanes} lanes, split"),
        );
    }
    // Every lane count takes at least the four 16-state shapes, with and without `h0`.
    assert!(
        ran >= 8 * lane_counts.len(),
        "only {ran} walk cases ran over lanes {lane_counts:?}"
    );

    // Half activations, with B and C in the format (not vector-aligned) and widened to f32.
    let formats: &[(FloatDType, f64)] = if cuda {
        &[(FloatDType::F16, 2e-3), (FloatDType::BF16, 1e-2)]
    } else {
        &[(FloatDType::F16, 2e-3)]
    };
    let half_walk = scan_path(ScanPath::Walk(widest.min(4)));
    for &(dtype, tol) in formats {
        for (i, wide_bc) in [false, true].into_iter().enumerate() {
            let x = random_case(4000 + i as u64, [2, 300, 37, 16], false);
            let (want_y, want_h) =
                selective_scan_reference(half_args(&x, dtype, wide_bc, &Device::flex()));
            let (got_y, got_h) = selective_scan(half_args(&x, dtype, wide_bc, &gpu));
            assert_eq!(got_y.dtype(), DType::from(dtype), "y keeps the format");
            let (want_y, want_h) = outputs(&x, (want_y, want_h), "reference");
            let (got_y, got_h) = outputs(&x, (got_y, got_h), "walk");
            let (ey, eh) = (rel_err(&got_y, &want_y), rel_err(&got_h, &want_h));
            println!(
                "walk {dtype:?} wide B/C {wide_bc} {:<40} y {ey:9.2e}   h_last {eh:9.2e}",
                x.describe()
            );
            assert!(ey <= tol && eh <= TOL, "walk {dtype:?}: y {ey:e}, h {eh:e}");
        }
    }

    // More rows than a launch's y dimension holds (65,535) go to the chunked passes.
    let x = random_case(4200, [70_000, 3, 2, 16], false);
    print!("walk asked for, 70,000 rows: ");
    let (ey, eh) = compare(&x, &gpu);
    assert!(ey <= TOL && eh <= TOL, "70,000 rows: y {ey:e}, h {eh:e}");
    // (The lock is not reentrant: release it before taking it again below.)
    drop(half_walk);

    // The usual choice walks once rows × channels × 4 lanes reach WALK_MIN_LANES.
    if cuda {
        let _path = scan_path(ScanPath::Auto);
        let d_inner = WALK_MIN_LANES / 4 / 8;
        let x = random_case(4100, [8, 300, d_inner, 16], false);
        print!("auto (walks): ");
        let (ey, eh) = compare(&x, &gpu);
        assert!(ey <= TOL && eh <= TOL, "auto walk: y {ey:e}, h {eh:e}");
        // From WHOLE_ROWS_THREADS rows × channels on, pass 3 alone over whole rows instead.
        let x = random_case(4110, [WHOLE_ROWS_THREADS / 512, 40, 512, 16], false);
        print!("auto (whole rows, pass 3 alone): ");
        let (ey, eh) = compare(&x, &gpu);
        assert!(
            ey <= TOL && eh <= TOL,
            "auto whole rows: y {ey:e}, h {eh:e}"
        );
    }
}

/// Gradients of `sum(y · w1) + sum(h_last · w2)` with respect to every scan input, as host
/// values in the order u, delta, a, b, c, d, z, delta_bias, h0.
fn gradients(x: &Case, device: &Device, reference: bool) -> Vec<Vec<f32>> {
    let device = device.clone().autodiff();
    let a = args(x, &device);
    let leaves = a.require_grad();
    let mut rng = StdRng::seed_from_u64(99);
    let (nb, nl, ni, ns) = (x.batch, x.len, x.d_inner, x.d_state);
    let w1 = tensor(&normals(&mut rng, nb * nl * ni, 1.0), [nb, nl, ni], &device);
    let w2 = tensor(&normals(&mut rng, nb * ni * ns, 1.0), [nb, ni, ns], &device);
    let (y, h) = if reference {
        selective_scan_reference(leaves.clone())
    } else {
        selective_scan(leaves.clone())
    };
    let grads = ((y * w1).sum() + (h * w2).sum()).backward();
    let g3 = |t: &Tensor<3>| host(t.grad(&grads).expect("gradient"));
    let g2 = |t: &Tensor<2>| host(t.grad(&grads).expect("gradient"));
    let g1 = |t: &Tensor<1>| host(t.grad(&grads).expect("gradient"));
    vec![
        g3(&leaves.u),
        g3(&leaves.delta),
        g2(&leaves.a),
        g3(&leaves.b),
        g3(&leaves.c),
        g1(&leaves.d),
        g3(&leaves.z),
        g1(&leaves.delta_bias),
        g3(&leaves.h0),
    ]
}

/// The scan's inputs in the order gradients are listed here ([`gradients`],
/// [`ScanGradTensors::into_host`]).
const GRAD_NAMES: [&str; 9] = ScanGradTensors::NAMES;

/// Channels `channels` of every row and step of a `[batch, len, width]` tensor, as host f32 in
/// `[batch, len, channels.len()]` order (one column copied back at a time).
fn columns(t: &Tensor<3>, channels: &[usize]) -> Vec<f32> {
    let [batch, len, _] = t.dims();
    let k = channels.len();
    let mut out = vec![0.0; batch * len * k];
    for (j, &ch) in channels.iter().enumerate() {
        let col = host(t.clone().slice([0..batch, 0..len, ch..ch + 1]));
        for (i, v) in col.into_iter().enumerate() {
            out[i * k + j] = v;
        }
    }
    out
}

/// The rows of `[outer, width, inner]` host values at `channels` of the middle dimension.
fn pick(v: &[f32], [outer, width, inner]: [usize; 3], channels: &[usize]) -> Vec<f32> {
    assert_eq!(v.len(), outer * width * inner, "pick: length");
    (0..outer)
        .flat_map(|o| {
            channels
                .iter()
                .flat_map(move |&ch| (0..inner).map(move |i| (o, ch, i)))
        })
        .map(|(o, ch, i)| v[(o * width + ch) * inner + i])
        .collect()
}

/// Inputs with more elements than `u32::MAX`, which the kernels index with 64-bit offsets:
/// two rows of 2,228,224 steps x 1,024 channels in f16 (4.56e9 elements, 9.1 GB per tensor;
/// the second row's last 262,144 steps lie past 2^32). Scanned by the chunked passes and by
/// the walk, and convolved; three channels of both rows checked against the references on the
/// CPU over the whole length. CUDA only: about 60 GB of GPU memory.
#[test]
fn gpu_kernels_take_offsets_past_u32() {
    let gpu = require_cuda!();
    if !is_cuda(&gpu) {
        println!("skipped: needs a CUDA device with about 60 GB of memory");
        return;
    }
    let (batch, len, d_inner, d_state) = (2, (1usize << 21) + (1 << 17), 1024, 16);
    assert!(batch * len * d_inner > u32::MAX as usize);
    let channels = [0, 517, 1023];
    let k = channels.len();
    let cpu = Device::flex();
    let half = FloatDType::F16;
    let normal = Distribution::Normal(0.0, 1.0);
    let seq = |width: usize| Tensor::<3>::random([batch, len, width], normal, &gpu).cast(half);
    let small = random_case(77, [batch, 1, d_inner, d_state], false);
    let gpu_args = ScanArgs {
        u: seq(d_inner),
        delta: seq(d_inner),
        a: tensor(&small.a, [d_inner, d_state], &gpu),
        b: seq(d_state),
        c: seq(d_state),
        d: tensor(&small.d, [d_inner], &gpu),
        z: seq(d_inner),
        delta_bias: tensor(&small.delta_bias, [d_inner], &gpu),
        h0: tensor(&small.h0, [batch, d_inner, d_state], &gpu),
    };
    let ref_args = ScanArgs {
        u: tensor(&columns(&gpu_args.u, &channels), [batch, len, k], &cpu),
        delta: tensor(&columns(&gpu_args.delta, &channels), [batch, len, k], &cpu),
        a: tensor(
            &pick(&small.a, [1, d_inner, d_state], &channels),
            [k, d_state],
            &cpu,
        ),
        b: tensor(&host(gpu_args.b.clone()), [batch, len, d_state], &cpu),
        c: tensor(&host(gpu_args.c.clone()), [batch, len, d_state], &cpu),
        d: tensor(&pick(&small.d, [1, d_inner, 1], &channels), [k], &cpu),
        z: tensor(&columns(&gpu_args.z, &channels), [batch, len, k], &cpu),
        delta_bias: tensor(
            &pick(&small.delta_bias, [1, d_inner, 1], &channels),
            [k],
            &cpu,
        ),
        h0: tensor(
            &pick(&small.h0, [batch, d_inner, d_state], &channels),
            [batch, k, d_state],
            &cpu,
        ),
    };
    let (want_y, want_h) = selective_scan_reference(ref_args);
    let (want_y, want_h) = (host(want_y), host(want_h));
    // `y` is rounded to f16 (2^-11 relative), the state stays f32 (as in the half-format test).
    for (path, name) in [(ScanPath::Chunked, "chunked"), (ScanPath::Walk(0), "walk")] {
        let _path = scan_path(path);
        let (y, h) = selective_scan(gpu_args.clone());
        let got_y = columns(&y, &channels);
        drop(y);
        let got_h = pick(&host(h), [batch, d_inner, d_state], &channels);
        let (ey, eh) = (rel_err(&got_y, &want_y), rel_err(&got_h, &want_h));
        println!(
            "{name} scan past u32 offsets ({batch} x {len} x {d_inner}, f16): y {ey:9.2e}   h_last {eh:9.2e}"
        );
        assert!(ey <= 2e-3 && eh <= TOL, "{name}: y {ey:e} h {eh:e}");
    }

    // The convolution over the same `u` (all of its channels are the conv branch here).
    let mut rng = StdRng::seed_from_u64(78);
    let (window, weight, bias) = (
        normals(&mut rng, batch * 3 * d_inner, 1.0),
        normals(&mut rng, 4 * d_inner, 0.5),
        normals(&mut rng, d_inner, 0.5),
    );
    let (got_u, got_w) = causal_conv_silu_with(
        Impl::Fastest,
        gpu_args.u.clone(),
        tensor(&window, [batch, 3, d_inner], &gpu).cast(half),
        tensor(&weight, [4, d_inner], &gpu),
        tensor(&bias, [d_inner], &gpu),
    );
    let (want_u, want_w) = causal_conv_silu_with(
        Impl::Reference,
        tensor(&columns(&gpu_args.u, &channels), [batch, len, k], &cpu),
        tensor(
            &pick(&window, [batch * 3, d_inner, 1], &channels),
            [batch, 3, k],
            &cpu,
        )
        .cast(half)
        .cast(FloatDType::F32),
        tensor(&pick(&weight, [4, d_inner, 1], &channels), [4, k], &cpu),
        tensor(&pick(&bias, [1, d_inner, 1], &channels), [k], &cpu),
    );
    let eu = rel_err(&columns(&got_u, &channels), &host(want_u));
    let ew = rel_err(&columns(&got_w, &channels), &host(want_w));
    println!("conv past u32 offsets: u {eu:9.2e}   window {ew:9.2e}");
    assert!(eu <= 2e-3 && ew == 0.0, "conv: u {eu:e} window {ew:e}");
}

/// Training on the GPU: the kernel's forward with the hand-written backward (the backward
/// kernel, `scan_backward_cube.rs`) against autodiff of the reference on the CPU, for every
/// input's gradient.
#[test]
fn gpu_scan_gradients_match_autodiff_of_the_reference() {
    let gpu = require_cuda!();
    let _path = scan_path(ScanPath::Auto);
    let mut worst = 0.0f64;
    for (i, (shape, zero)) in [
        ([2, 7, 37, 16], false),
        ([1, 300, 40, 4], true),
        ([2, 2049, 12, 1], false),
        ([3, 65, 5, 64], false),
    ]
    .into_iter()
    .enumerate()
    {
        let x = random_case(500 + i as u64, shape, zero);
        let want = gradients(&x, &Device::flex(), true);
        let before = scan_backward_launches();
        let got = gradients(&x, &gpu, false);
        assert!(
            scan_backward_launches() > before,
            "{}: training did not run the backward kernel",
            x.describe()
        );
        for ((g, w), name) in got.iter().zip(&want).zip(GRAD_NAMES) {
            let e = rel_err(g, w);
            worst = worst.max(e);
            assert!(e <= TOL, "{}: gradient of {name}: {e:.2e}", x.describe());
        }
        println!("{:<58} gradients ok", x.describe());
    }
    // Training on a long sequence of one row, the backward kernel's time in chunks of 64.
    set_backward_chunk_len(64);
    let x = random_case(510, [1, 1000, 24, 16], false);
    let want = gradients(&x, &Device::flex(), true);
    let got = gradients(&x, &gpu, false);
    set_backward_chunk_len(0);
    for ((g, w), name) in got.iter().zip(&want).zip(GRAD_NAMES) {
        let e = rel_err(g, w);
        worst = worst.max(e);
        assert!(
            e <= TOL,
            "{}, chunks of 64: gradient of {name}: {e:.2e}",
            x.describe()
        );
    }
    println!("{:<58} gradients ok (chunks of 64)", x.describe());
    println!("worst gradient error {worst:.2e}");
}

/// The backward kernel (`selective_scan_backward` on `gpu`) against the tensor-operation
/// backward on the CPU (`selective_scan_backward_reference` on Flex, the truth) for the inputs
/// of `x` and random output gradients (seed `seed`): asserts that the kernel ran and that every
/// gradient is within [`TOL`]; returns the worst relative error.
fn backward_kernel_against_the_tensor_backward(gpu: &Device, x: &Case, seed: u64) -> f64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let (nb, nl, ni, ns) = (x.batch, x.len, x.d_inner, x.d_state);
    let gy = normals(&mut rng, nb * nl * ni, 1.0);
    let gh = normals(&mut rng, nb * ni * ns, 1.0);
    let run = |device: &Device, kernel: bool| -> Vec<Vec<f32>> {
        let gy = tensor(&gy, [nb, nl, ni], device);
        let gh = tensor(&gh, [nb, ni, ns], device);
        let g = if kernel {
            selective_scan_backward(args(x, device), gy, gh)
        } else {
            selective_scan_backward_reference(args(x, device), gy, gh)
        };
        assert_eq!(g.a.dims(), [ni, ns], "grad a shape");
        assert_eq!(g.b.dims(), [nb, nl, ns], "grad b shape");
        assert_eq!(g.delta_bias.dims(), [ni], "grad bias shape");
        g.into_host()
    };
    let want = run(&Device::flex(), false);
    let before = scan_backward_launches();
    let got = run(gpu, true);
    assert!(
        scan_backward_launches() > before,
        "{}: the backward kernel did not run",
        x.describe()
    );
    let mut worst = 0.0f64;
    let mut line = String::new();
    for ((g, w), name) in got.iter().zip(&want).zip(GRAD_NAMES) {
        let e = rel_err(g, w);
        worst = worst.max(e);
        assert!(e <= TOL, "{}: gradient of {name}: {e:.2e}", x.describe());
        line.push_str(&format!(" {name} {e:.1e}"));
    }
    println!("{:<58}{line}", x.describe());
    worst
}

/// The backward kernel against the tensor-operation backward on the CPU, for every input's
/// gradient, on random inputs and output gradients: channels not a multiple of a cube's 32
/// (5, 37, 40), one and many checkpoint blocks (lengths 1, 7, 65, 300, 2,049), `d_state` 1, 4,
/// 7, 16, 64, zero and random `h0`. Asserts the kernel ran for each.
#[test]
fn gpu_scan_backward_kernel_matches_the_tensor_backward() {
    let gpu = require_cuda!();
    let _path = scan_path(ScanPath::Auto);
    let mut worst = 0.0f64;
    for (i, (shape, zero)) in [
        ([1, 1, 3, 1], false),
        ([2, 7, 37, 16], false),
        ([1, 300, 40, 4], true),
        ([3, 65, 5, 64], false),
        ([2, 130, 33, 7], false),
        ([2, 2049, 12, 1], false),
    ]
    .into_iter()
    .enumerate()
    {
        let x = random_case(700 + i as u64, shape, zero);
        worst = worst.max(backward_kernel_against_the_tensor_backward(
            &gpu,
            &x,
            800 + i as u64,
        ));
    }
    println!("worst backward-kernel error {worst:.2e}");
}

/// The backward kernel with time split into chunks, as it splits a long sequence of few rows
/// on a GPU (each chunk's forward state from the forward scan's passes, each chunk's adjoint
/// from the chunks after it through a reverse pass), against the tensor-operation backward:
/// a last chunk of one step (7 = 3 + 3 + 1), chunks not a whole number of checkpoint blocks
/// (10, 3), 129 chunks (pass 2 over groups of chunks), zero and random `h0`.
#[test]
fn gpu_scan_backward_kernel_in_time_chunks_matches_the_tensor_backward() {
    let gpu = require_cuda!();
    let _path = scan_path(ScanPath::Auto);
    let mut worst = 0.0f64;
    for (i, (shape, zero, steps)) in [
        ([1, 7, 5, 7], false, 3),
        ([2, 300, 37, 4], true, 64),
        ([3, 65, 5, 64], false, 10),
        ([1, 2049, 12, 16], false, 16),
    ]
    .into_iter()
    .enumerate()
    {
        set_backward_chunk_len(steps);
        let x = random_case(720 + i as u64, shape, zero);
        print!("chunks of {steps:>3}: ");
        worst = worst.max(backward_kernel_against_the_tensor_backward(
            &gpu,
            &x,
            820 + i as u64,
        ));
    }
    set_backward_chunk_len(0);
    println!("worst chunked backward-kernel error {worst:.2e}");
}

/// Training's convolution, RMSNorm and projection (the plain tensor operations, differentiated
/// by autodiff) on a row long enough that they take it as rows of 64 steps (`time_rows` in
/// src/ops/block.rs: 4,160 = 65 x 64 steps), on the kernel device against the CPU: the outputs
/// and the gradients of the inputs, the convolution's weight and bias, the norm's weight and
/// the projection's weight. The projection is a graph of its own: on CUDA Burn multiplies f32
/// in TF32, so it gets the projection tests' tolerance (5e-3) and the rest f32's.
#[test]
fn gpu_long_row_training_ops_match_the_cpu() {
    let gpu = require_cuda!();
    let (len, d, k) = (4160, 8, 4);
    let mut rng = StdRng::seed_from_u64(41);
    let x = normals(&mut rng, len * 2 * d, 1.0);
    let window = normals(&mut rng, (k - 1) * d, 1.0);
    let weight = normals(&mut rng, k * d, 0.5);
    let bias = normals(&mut rng, d, 0.1);
    let norm = normals(&mut rng, d, 1.0);
    let proj = normals(&mut rng, d * 3, 0.5);
    let proj_in = normals(&mut rng, len * d, 1.0);
    let run = |device: &Device| -> Vec<Vec<f32>> {
        let dev = device.clone().autodiff();
        let xt = tensor(&x, [1, len, 2 * d], &dev).require_grad();
        let wt = tensor(&weight, [k, d], &dev).require_grad();
        let bt = tensor(&bias, [d], &dev).require_grad();
        let nt = tensor(&norm, [d], &dev).require_grad();
        let pt = tensor(&proj, [d, 3], &dev).require_grad();
        let pin = tensor(&proj_in, [1, len, d], &dev).require_grad();
        let win = tensor(&window, [1, k - 1, d], &dev);
        let (u, _) =
            causal_conv_silu_with(Impl::Reference, xt.clone(), win, wt.clone(), bt.clone());
        let y = rms_norm_with(Impl::Reference, u, nt.clone(), 1e-5);
        let p = project_with(Impl::Reference, pin.clone(), pt.clone());
        let weights = |n: usize| -> Tensor<3> {
            Tensor::arange(0..(len * n) as i64, &dev)
                .float()
                .reshape([1, len, n])
                .sin()
        };
        let loss = (y.clone() * weights(d)).sum() + (p.clone() * weights(3)).sum();
        let grads = loss.backward();
        vec![
            host(y),
            host(xt.grad(&grads).expect("input gradient")),
            host(
                wt.grad(&grads)
                    .expect("conv weight gradient")
                    .unsqueeze::<3>(),
            ),
            host(
                bt.grad(&grads)
                    .expect("conv bias gradient")
                    .unsqueeze::<3>(),
            ),
            host(
                nt.grad(&grads)
                    .expect("norm weight gradient")
                    .unsqueeze::<3>(),
            ),
            host(p),
            host(pin.grad(&grads).expect("projection input gradient")),
            host(
                pt.grad(&grads)
                    .expect("projection gradient")
                    .unsqueeze::<3>(),
            ),
        ]
    };
    let want = run(&Device::flex());
    let got = run(&gpu);
    let tf32 = if is_cuda(&gpu) { 5e-3 } else { TOL };
    for ((g, w), (name, tol)) in got.iter().zip(&want).zip([
        ("y", TOL),
        ("x", TOL),
        ("conv weight", TOL),
        ("conv bias", TOL),
        ("norm weight", TOL),
        ("projection output", tf32),
        ("projection input", tf32),
        ("projection weight", tf32),
    ]) {
        let e = rel_err(g, w);
        println!("long row conv, norm, projection: {name} {e:.2e}");
        assert!(e <= tol, "{name}: {e:.2e}");
    }
}

/// One causal convolution + SiLU: `x` is `[batch, len, 2·d]` (the kernel reads the first `d`
/// channels through the row strides, as it reads `in_proj`'s output), `window` the carried
/// `[batch, k-1, d]`; returns host `(u, next window)`.
fn conv(
    which: Impl,
    [x, window, weight, bias]: [&[f32]; 4],
    [batch, len, d, k]: [usize; 4],
    device: &Device,
) -> (Vec<f32>, Vec<f32>) {
    let (u, next) = causal_conv_silu_with(
        which,
        tensor(x, [batch, len, 2 * d], device),
        tensor(window, [batch, k - 1, d], device),
        tensor(weight, [k, d], device),
        tensor(bias, [d], device),
    );
    assert_eq!(u.dims(), [batch, len, d], "u shape");
    assert_eq!(next.dims(), [batch, k - 1, d], "window shape");
    (host(u), host(next))
}

#[test]
fn gpu_conv_matches_reference_and_carries_the_window() {
    let gpu = require_cuda!();
    // Chunks shorter than the window (len 1, 2 with k 4), d not a power of two, k 1..4;
    // channels read one at a time (d 5, 37), two (d 38) and four (d 64, 1536).
    let shapes = [
        [2, 1, 5, 4],
        [2, 2, 37, 4],
        [1, 3, 37, 4],
        [2, 7, 37, 4],
        [3, 300, 64, 1],
        [2, 50, 37, 2],
        [2, 50, 38, 3],
        [1, 2049, 1536, 4],
    ];
    let mut rng = StdRng::seed_from_u64(5);
    for [batch, len, d, k] in shapes {
        let x = normals(&mut rng, batch * len * 2 * d, 1.0);
        let window = normals(&mut rng, batch * (k - 1) * d, 1.0);
        let weight = normals(&mut rng, k * d, 0.5);
        let bias = normals(&mut rng, d, 0.5);
        let parts = [&x[..], &window, &weight, &bias];
        let (want_u, want_w) = conv(Impl::Reference, parts, [batch, len, d, k], &Device::flex());
        let (got_u, got_w) = conv(Impl::Fastest, parts, [batch, len, d, k], &gpu);
        let (eu, ew) = (rel_err(&got_u, &want_u), rel_err(&got_w, &want_w));
        println!("conv batch {batch} len {len} d {d} k {k}: u {eu:9.2e}   window {ew:9.2e}");
        assert!(
            eu <= 1e-5 && ew == 0.0,
            "conv {batch}x{len}x{d} k {k}: u {eu:e} window {ew:e}"
        );

        // Two chunks with the window carried give the same as one.
        if len > 2 {
            let cut = len / 3;
            let rows = |t0: usize, t1: usize| -> Vec<f32> {
                (0..batch)
                    .flat_map(|b| x[(b * len + t0) * 2 * d..(b * len + t1) * 2 * d].to_vec())
                    .collect()
            };
            let (first, second) = (rows(0, cut), rows(cut, len));
            let (u1, w1) = conv(
                Impl::Fastest,
                [&first, &window, &weight, &bias],
                [batch, cut, d, k],
                &gpu,
            );
            let (u2, w2) = conv(
                Impl::Fastest,
                [&second, &w1, &weight, &bias],
                [batch, len - cut, d, k],
                &gpu,
            );
            let mut joined = Vec::with_capacity(want_u.len());
            for b in 0..batch {
                joined.extend_from_slice(&u1[b * cut * d..(b + 1) * cut * d]);
                joined.extend_from_slice(&u2[b * (len - cut) * d..(b + 1) * (len - cut) * d]);
            }
            let (eu, ew) = (rel_err(&joined, &want_u), rel_err(&w2, &want_w));
            assert!(
                eu <= 1e-5 && ew == 0.0,
                "split conv: u {eu:e} window {ew:e}"
            );
        }
    }
}

/// The scan's activations (`u`, `delta`, `z`, `B`, `C`) in `dtype`, the rest f32, as the
/// Mamba block passes them with `--precision bf16|f16`; `B` and `C` are views into one wider
/// tensor (as `x_proj`'s output is sliced). With `wide_bc`, `B` and `C` are rounded to
/// `dtype` and widened back to f32 (as the block hands them to the scan), at offsets and row
/// strides that allow vector reads (4 columns before them); without, they stay in `dtype` at
/// element offsets that are not vector-aligned (3 columns before them).
fn half_args(x: &Case, dtype: FloatDType, wide_bc: bool, device: &Device) -> ScanArgs {
    let (nb, nl, ns) = (x.batch, x.len, x.d_state);
    let lead: &[f32] = if wide_bc {
        &[0.5, -1.0, 2.0, 3.0]
    } else {
        &[0.5, -1.0, 2.0]
    };
    let p = lead.len();
    let mut xbc = Vec::with_capacity(nb * nl * (p + 2 * ns));
    for row in 0..nb * nl {
        xbc.extend_from_slice(lead);
        xbc.extend_from_slice(&x.b[row * ns..(row + 1) * ns]);
        xbc.extend_from_slice(&x.c[row * ns..(row + 1) * ns]);
    }
    let mut xbc = tensor(&xbc, [nb, nl, p + 2 * ns], device).cast(dtype);
    if wide_bc {
        xbc = xbc.cast(FloatDType::F32);
    }
    let a = args(x, device);
    ScanArgs {
        u: a.u.cast(dtype),
        delta: a.delta.cast(dtype),
        z: a.z.cast(dtype),
        b: xbc.clone().slice([0..nb, 0..nl, p..p + ns]),
        c: xbc.slice([0..nb, 0..nl, p + ns..p + 2 * ns]),
        ..a
    }
}

#[test]
fn gpu_kernels_take_half_activations() {
    let gpu = require_cuda!();
    let _path = scan_path(ScanPath::Chunked);
    // The kernels widen half inputs to f32 and round `y` (and the conv's `u`) to the format
    // once; the reference does the same arithmetic in tensor operations on the same half
    // inputs. So `y` may differ by about one unit in the last place of the format (2^-8
    // for bf16, 2^-11 for f16) and the f32 state by f32 rounding only.
    //
    // bf16 runs on CUDA only: CubeCL's CPU runtime, JIT-compiling with Debian's LLVM 22.1.8,
    // cannot link f32-to-bf16 conversions (`__truncsfbf2` is not found; Burn's own cast kernel
    // fails the same way), so there only f16 is checked.
    let formats: &[(FloatDType, f64)] = if is_cuda(&gpu) {
        &[(FloatDType::F16, 2e-3), (FloatDType::BF16, 1e-2)]
    } else {
        println!("bf16 skipped: not a CUDA device (see the comment above)");
        &[(FloatDType::F16, 2e-3)]
    };
    for &(dtype, tol) in formats {
        // B and C in the activations' format for every shape; widened to f32 (as the block
        // passes them) for the two small ones, in one chunk and in four.
        let cases = [
            ([2, 7, 37, 16], false),
            ([1, 2049, 1536, 16], false),
            ([2, 300, 5, 4], false),
            ([2, 7, 37, 16], true),
            ([2, 300, 5, 4], true),
        ];
        for (i, (shape, wide_bc)) in cases.into_iter().enumerate() {
            let x = random_case(77 + i as u64, shape, i == 1);
            let (want_y, want_h) =
                selective_scan_reference(half_args(&x, dtype, wide_bc, &Device::flex()));
            let (got_y, got_h) = selective_scan(half_args(&x, dtype, wide_bc, &gpu));
            assert_eq!(
                got_y.dtype(),
                DType::from(dtype),
                "y keeps the activations' format"
            );
            assert_eq!(got_h.dtype(), DType::F32, "the state stays f32");
            let (want_y, want_h) = outputs(&x, (want_y, want_h), "reference");
            let (got_y, got_h) = outputs(&x, (got_y, got_h), "gpu");
            let (ey, eh) = (rel_err(&got_y, &want_y), rel_err(&got_h, &want_h));
            let bc = if wide_bc { "B/C f32" } else { "B/C same" };
            println!(
                "{dtype:?} {bc} {:<50} y {ey:9.2e}   h_last {eh:9.2e}",
                x.describe()
            );
            assert!(
                ey <= tol && eh <= TOL,
                "{dtype:?} {bc} {}: y {ey:e} (tol {tol:e}), h {eh:e}",
                x.describe()
            );
        }
        // The convolution in the same format, window carried in it: channels read one at a
        // time (d 37) and eight (d 40).
        for d in [37, 40] {
            let (batch, len, k) = (2, 300, 4);
            let mut rng = StdRng::seed_from_u64(9);
            let x = normals(&mut rng, batch * len * 2 * d, 1.0);
            let window = normals(&mut rng, batch * (k - 1) * d, 1.0);
            let weight = normals(&mut rng, k * d, 0.5);
            let bias = normals(&mut rng, d, 0.5);
            let run = |which: Impl, device: &Device| {
                let (u, next) = causal_conv_silu_with(
                    which,
                    tensor(&x, [batch, len, 2 * d], device).cast(dtype),
                    tensor(&window, [batch, k - 1, d], device).cast(dtype),
                    tensor(&weight, [k, d], device),
                    tensor(&bias, [d], device),
                );
                assert_eq!(u.dtype(), DType::from(dtype), "conv output format");
                assert_eq!(next.dtype(), DType::from(dtype), "window format");
                (host(u), host(next))
            };
            let (want_u, want_w) = run(Impl::Reference, &Device::flex());
            let (got_u, got_w) = run(Impl::Fastest, &gpu);
            let (eu, ew) = (rel_err(&got_u, &want_u), rel_err(&got_w, &want_w));
            println!(
                "{dtype:?} conv batch {batch} len {len} d {d} k {k}: u {eu:9.2e} window {ew:9.2e}"
            );
            assert!(
                eu <= tol && ew == 0.0,
                "{dtype:?} conv d {d}: u {eu:e} window {ew:e}"
            );
        }
    }
}

#[test]
fn gpu_add_norm_matches_reference() {
    let gpu = require_cuda!();
    // The sum is f32 arithmetic on the same inputs (exact up to the half input's widening);
    // the norm differs by the reduction's order in f32, and by one rounding of the output
    // format (2^-11 relative for f16, 2^-8 for bf16) at most. bf16 on CUDA only (see
    // `gpu_kernels_take_half_activations`).
    let mut formats = vec![
        (FloatDType::F32, FloatDType::F32, 1e-5),
        (FloatDType::F16, FloatDType::F16, 1e-3),
        (FloatDType::F16, FloatDType::F32, 1e-5),
    ];
    if is_cuda(&gpu) {
        formats.push((FloatDType::BF16, FloatDType::BF16, 8e-3));
    }
    let mut rng = StdRng::seed_from_u64(12);
    for [batch, len, d] in [[1, 1, 3], [2, 7, 37], [1, 5000, 256], [3, 33, 1000]] {
        let n = batch * len * d;
        let x = normals(&mut rng, n, 3.0);
        let y = normals(&mut rng, n, 1.0);
        let w = normals(&mut rng, d, 1.0);
        for &(y_fmt, out, tol) in &formats {
            let run = |which: Impl, device: &Device| {
                let (s, normed) = add_rms_norm_with(
                    which,
                    tensor(&x, [batch, len, d], device),
                    tensor(&y, [batch, len, d], device).cast(y_fmt),
                    tensor(&w, [d], device),
                    1e-5,
                    out,
                );
                assert_eq!(s.dtype(), DType::F32, "the sum stays f32");
                assert_eq!(normed.dtype(), DType::from(out), "norm format");
                (host(s), host(normed))
            };
            let (want_s, want_n) = run(Impl::Reference, &Device::flex());
            let (got_s, got_n) = run(Impl::Fastest, &gpu);
            let (es, en) = (rel_err(&got_s, &want_s), rel_err(&got_n, &want_n));
            println!(
                "add_norm {batch}x{len}x{d} y {y_fmt:?} out {out:?}: sum {es:9.2e} norm {en:9.2e}"
            );
            assert!(
                es <= 1e-6 && en <= tol,
                "add_norm {batch}x{len}x{d} y {y_fmt:?} out {out:?}: sum {es:e} norm {en:e}"
            );
            // The final norm (f32, the sum not written) equals the f32 norm above.
            if out == FloatDType::F32 {
                let only = host(add_rms_norm_only(
                    tensor(&x, [batch, len, d], &gpu),
                    tensor(&y, [batch, len, d], &gpu).cast(y_fmt),
                    tensor(&w, [d], &gpu),
                    1e-5,
                ));
                assert_eq!(only, got_n, "norm only {batch}x{len}x{d} y {y_fmt:?}");
            }
        }
    }
}

/// Held by every test that runs projections: the strategy override and the small-k launch
/// counter are process-wide, and tests run in parallel threads.
static PROJECTIONS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn projections_alone() -> std::sync::MutexGuard<'static, ()> {
    PROJECTIONS.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn gpu_projection_matches_the_cpu_product() {
    let gpu = require_cuda!();
    let _alone = projections_alone();
    // Every strategy on a CUDA device. On CubeCL's CPU runtime (CI) only the default, and
    // in_proj's shape shortened, since each strategy and shape is a separate kernel
    // compilation there and the products run on the CPU (the full set took 465 s there).
    let every = is_cuda(&gpu);
    // (strategy, plane tiling); `None` for the usual choice.
    let mut names: Vec<(Option<String>, Option<&str>)> = vec![(None, None)];
    if every {
        names.push((Some("burn".to_string()), None));
        names.extend(strategy_names().into_iter().map(|n| (Some(n), None)));
        // The simple mma routines also with cubek's own tiling and two other plane tilings.
        for (name, tiling) in [
            ("matmul_simple_tma_mma", "inferred"),
            ("matmul_simple_cyclic_mma", "inferred"),
            ("matmul_simple_tma_mma", "p4r1k2s0d0"),
            ("matmul_simple_cyclic_mma", "p8r2k4s1d1"),
        ] {
            names.push((Some(name.to_string()), Some(tiling)));
        }
        // `GENOMAMBA_TEST_MATMUL=a,b` checks only those strategies (for short GPU sessions).
        if let Ok(only) = std::env::var("GENOMAMBA_TEST_MATMUL") {
            let only: Vec<&str> = only.split(',').collect();
            names.retain(|(n, _)| n.as_deref().is_none_or(|n| only.contains(&n)));
            println!("strategies checked: {names:?}");
        }
    }
    // in_proj and out_proj of the GPU model's shape, x_proj- and dt_proj-like skinny products,
    // and odd sizes. TF32 (f32 on tensor cores) and f16 round the inputs to 10 mantissa bits.
    let long = if every { 2049 } else { 129 };
    let shapes = [
        [1, long, 256, 1024],
        [1, 700, 512, 48],
        [2, 7, 37, 48],
        [1, 300, 16, 40],
        [3, 50, 8, 12],
        [2, 33, 32, 6],
        [1, 33, 64, 6],
    ];
    let mut rng = StdRng::seed_from_u64(5);
    for [batch, len, k, n] in shapes {
        let x = normals(&mut rng, batch * len * k, 1.0);
        let w = normals(&mut rng, k * n, 1.0 / (k as f32).sqrt());
        let want = cpu_product(&x, &w, [batch, len, k, n]);
        for (name, tiling) in &names {
            set_strategy(name.as_deref());
            set_tiling(*tiling);
            // bf16 (8 mantissa bits) on CUDA only: on CubeCL's CPU runtime each format is
            // another set of kernel compilations.
            let formats: &[(FloatDType, f64)] = if every {
                &[
                    (FloatDType::F32, 5e-3),
                    (FloatDType::F16, 5e-3),
                    (FloatDType::BF16, 3e-2),
                ]
            } else {
                &[(FloatDType::F32, 5e-3), (FloatDType::F16, 5e-3)]
            };
            for &(dtype, tol) in formats {
                let refused = refusals();
                let got = gpu_product(&gpu, &x, &w, [batch, len, k, n], dtype);
                let e = rel_err(&host(got), &want);
                let label = format!(
                    "{} {}",
                    name.as_deref().unwrap_or("default"),
                    tiling.unwrap_or("")
                );
                println!("project {batch}x{len}x{k} -> {n} {dtype:?} {label:<40} {e:9.2e}");
                assert!(
                    e <= tol,
                    "{label} {dtype:?} [{batch},{len},{k}]x[{k},{n}]: {e:e}"
                );
                // On CUDA the default choice (TMA loads with the default plane tiling in the
                // half formats) must run as chosen wherever rows are 16-byte aligned, as TMA
                // needs, not fall back to another kernel.
                if every && name.is_none() && k % 8 == 0 && n % 8 == 0 {
                    assert_eq!(refusals(), refused, "{label} {dtype:?} refused [{k},{n}]");
                }
            }
        }
    }
    set_strategy(None);
    set_tiling(None);
}

/// Where Burn's matrix-product selection refuses a projection (on CubeCL's CPU runtime with a
/// 32 KiB L1 data cache its tiles can outgrow the shared memory the runtime offers), cubek's naive
/// kernel runs it: here forced, on the product's shapes, in f32 and f16, against the CPU's
/// product, counting that the fallback ran.
#[test]
fn gpu_projection_falls_back_to_the_naive_kernel() {
    let gpu = require_cuda!();
    let _alone = projections_alone();
    // Burn's selection is where the fallback sits (the chosen strategies have their own).
    set_strategy(Some("burn"));
    struct Unforce;
    impl Drop for Unforce {
        fn drop(&mut self) {
            force_naive_fallback(false);
            set_strategy(None);
        }
    }
    let _unforce = Unforce;
    force_naive_fallback(true);
    let mut rng = StdRng::seed_from_u64(15);
    for [batch, len, k, n] in [[1, 129, 256, 96], [2, 37, 40, 48]] {
        let x = normals(&mut rng, batch * len * k, 1.0);
        let w = normals(&mut rng, k * n, 1.0 / (k as f32).sqrt());
        let want = cpu_product(&x, &w, [batch, len, k, n]);
        for (dtype, tol) in [(FloatDType::F32, 1e-5), (FloatDType::F16, 5e-3)] {
            let before = naive_fallbacks();
            let got = gpu_product(&gpu, &x, &w, [batch, len, k, n], dtype);
            let e = rel_err(&host(got), &want);
            println!("naive project {batch}x{len}x{k} -> {n} {dtype:?} {e:9.2e}");
            assert_eq!(
                naive_fallbacks(),
                before + 1,
                "the naive kernel did not run"
            );
            assert!(
                e <= tol,
                "naive {dtype:?} [{batch},{len},{k}]x[{k},{n}]: {e:e}"
            );
        }
    }
}

/// Projections with a short inner dimension (dt_proj's) run their own kernel by default,
/// reading `x` through its row strides: here views of the first and of later columns of a
/// wider tensor, as dt_proj reads x_proj's output, and a view that skips rows.
#[test]
fn gpu_small_k_projection_reads_views() {
    let gpu = require_cuda!();
    let _alone = projections_alone();
    set_strategy(None);
    let mut rng = StdRng::seed_from_u64(9);
    let (batch, len, wide, k, n) = (2, 100, 48, 16, 512);
    let x = normals(&mut rng, batch * len * wide, 1.0);
    let w = normals(&mut rng, k * n, 0.25);
    // The last view starts on an odd column: read one element at a time.
    for (cols, rows) in [
        (0..k, 0..len),
        (16..16 + k, 0..len),
        (4..4 + k, 10..len),
        (3..3 + k, 0..len),
    ] {
        let rlen = rows.end - rows.start;
        let view = |device: &Device, dtype: FloatDType| {
            tensor(&x, [batch, len, wide], device).cast(dtype).slice([
                0..batch,
                rows.clone(),
                cols.clone(),
            ])
        };
        let want = host(project_with(
            Impl::Reference,
            view(&Device::flex(), FloatDType::F32),
            tensor(&w, [k, n], &Device::flex()),
        ));
        for (dtype, tol) in [(FloatDType::F32, 1e-5), (FloatDType::F16, 3e-3)] {
            let before = small_k_launches();
            let got = project_with(
                Impl::Fastest,
                view(&gpu, dtype),
                tensor(&w, [k, n], &gpu).cast(dtype),
            );
            assert_eq!(got.dims(), [batch, rlen, n], "shape");
            let e = rel_err(&host(got), &want);
            println!("small-k view cols {cols:?} rows {rows:?} {dtype:?}: {e:9.2e}");
            assert_eq!(small_k_launches(), before + 1, "small-k kernel did not run");
            assert!(e <= tol, "cols {cols:?} rows {rows:?} {dtype:?}: {e:e}");
        }
    }
    // Past the largest inner dimension it takes, and with a strategy chosen, it stands aside.
    let before = small_k_launches();
    let big = SMALL_K_MAX + 1;
    project_with(
        Impl::Fastest,
        tensor(&normals(&mut rng, 5 * big, 1.0), [1, 5, big], &gpu),
        tensor(&normals(&mut rng, big * 3, 1.0), [big, 3], &gpu),
    );
    set_strategy(Some("burn"));
    project_with(
        Impl::Fastest,
        tensor(&normals(&mut rng, 5 * k, 1.0), [1, 5, k], &gpu),
        tensor(&normals(&mut rng, k * 3, 1.0), [k, 3], &gpu),
    );
    set_strategy(None);
    assert_eq!(small_k_launches(), before);
}

#[test]
fn projection_tilings_read_and_print() {
    for text in ["p8r4k4s1d0", "p4r1k2s0d1", "p16r2k8s0d0"] {
        let t: Tiling = text.parse().expect(text);
        assert_eq!(t.to_string(), text);
    }
    let t: Tiling = "p8r4k4s1d0".parse().expect("tiling");
    assert_eq!(
        (t.planes, t.rows, t.partition_k, t.swizzled, t.double),
        (8, 4, 4, true, false)
    );
    for bad in [
        "",
        "inferred",
        "p8",
        "p8r4k4s1",
        "p8r4k4s2d0",
        "p0r4k4s1d0",
        "p8r4k4s1d0x",
        "r4p8k4s1d0",
        "p8r4k-4s1d0",
    ] {
        assert!(bad.parse::<Tiling>().is_err(), "{bad:?} was accepted");
    }
    // The CUDA default for the half formats is a tiling; f32 and other runtimes have none.
    for dtype in [DType::F16, DType::BF16] {
        assert_eq!(default_tiling(dtype, "cuda"), Some(t), "{dtype:?}");
        assert_eq!(default_tiling(dtype, "cpu"), None);
    }
    assert_eq!(default_tiling(DType::F32, "cuda"), None);
}

#[test]
fn projection_strategy_names_are_distinct() {
    let names = strategy_names();
    println!("GENOMAMBA_MATMUL may name: burn {}", names.join(" "));
    let set: std::collections::BTreeSet<_> = names.iter().collect();
    assert_eq!(set.len(), names.len(), "{names:?}");
    assert!(names.len() >= 10, "{names:?}");
    assert!(
        !names.iter().any(|n| n == "burn"),
        "burn names Burn's own choice"
    );
    // The CUDA defaults are among the candidates (a name matching none would silently fall
    // back to Burn's selection).
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let name = default_strategy(dtype, "cuda");
        assert!(names.iter().any(|n| n == name), "{dtype:?}: {name}");
        assert_eq!(default_strategy(dtype, "cpu"), "burn");
    }
}

#[test]
fn gpu_model_matches_the_cpu_model() {
    let gpu = require_cuda!();
    let _alone = projections_alone();
    let _path = scan_path(ScanPath::Auto);
    // The whole model on the kernel device (every kernel; the weights stored row-major there by
    // `set_precision`) against the same model on the CPU, in f32, over three chunks with the
    // state carried: the weights are the same values, the hidden states agree within 1e-4.
    let mut arch = MambaConfig::new(32, 2);
    arch.d_state = 8;
    let mut rng = StdRng::seed_from_u64(21);
    let dna: Vec<u8> = (0..700).map(|_| b"ACGT"[rng.random_range(0..4)]).collect();
    let tokens = tokenize(&dna).unwrap();
    let run = |device: &Device| {
        let mut model = GenoModel::init(ModelConfig::new(arch.clone()), 5, device).unwrap();
        model.backbone.set_precision(Precision::F32);
        // Off the CPU the blocks run dt_proj with the softplus and the scan without it.
        let fused = model.backbone.layers.iter().all(|l| l.no_bias.is_some());
        assert_eq!(
            fused,
            *device != Device::flex(),
            "fused dt_proj on {device:?}"
        );
        let layer = &model.backbone.layers[1];
        let weights = [
            host(layer.in_proj.weight.val()),
            host(layer.dt_proj.weight.val()),
            host(layer.conv_weight.val()),
        ];
        let dims = [
            layer.in_proj.weight.val().dims(),
            layer.conv_weight.val().dims(),
        ];
        let states = hidden_states(&model.backbone, &tokens, 256, device).unwrap();
        (weights, dims, states)
    };
    let (want_w, want_dims, want) = run(&Device::flex());
    let (got_w, got_dims, got) = run(&gpu);
    assert_eq!(got_dims, want_dims, "weight shapes");
    assert_eq!(got_w, want_w, "weights changed on the kernel device");
    let err = rel_err(&got, &want);
    println!(
        "model d_model 32, 2 layers, 700 positions in chunks of 256: hidden states {err:9.2e}"
    );
    assert!(err <= 1e-4, "model on the kernel device vs CPU: {err:e}");
}

#[test]
fn gpu_piece_runner_on_two_streams_matches_one() {
    let gpu = require_cuda!();
    let _alone = projections_alone();
    let _path = scan_path(ScanPath::Auto);
    // A long record's pieces with the blocks in two and three groups, each submitting its
    // work under its own stream id (tensors handed from one stream to the next), against one
    // group on the calling thread's stream: the same kernels on the same values, so the
    // hidden states and the final state are equal, in f32 and f16.
    use genomamba::infer::PieceRunner;
    let mut arch = MambaConfig::new(32, 3);
    arch.d_state = 8;
    let mut rng = StdRng::seed_from_u64(23);
    let dna: Vec<u8> = (0..700).map(|_| b"ACGT"[rng.random_range(0..4)]).collect();
    let tokens = tokenize(&dna).unwrap();
    for precision in [Precision::F32, Precision::F16] {
        let mut model = GenoModel::init(ModelConfig::new(arch.clone()), 5, &gpu).unwrap();
        model.backbone.set_precision(precision);
        let run = |groups: usize| {
            let mut runner = PieceRunner::with_groups(&model.backbone, None, &gpu, groups);
            let mut out = Vec::new();
            let pieces: Vec<&[u8]> = tokens.chunks(256).collect();
            for (i, p) in pieces.iter().enumerate() {
                let pad = if i + 1 == pieces.len() { 256 } else { 0 };
                out.extend(runner.push(i * 256, p, pad));
            }
            let (rest, state) = runner.finish();
            out.extend(rest);
            let mut values: Vec<f32> = Vec::new();
            let mut starts = Vec::new();
            for (start, h) in out {
                starts.push(start);
                values.extend(host(h));
            }
            for l in state.layers {
                values.extend(host(l.conv));
                values.extend(host(l.ssm));
            }
            (starts, values)
        };
        let (want_starts, want) = run(1);
        assert_eq!(want_starts, vec![0, 256, 512]);
        for groups in [2, 3] {
            let (starts, got) = run(groups);
            assert_eq!(starts, want_starts, "{precision:?}, {groups} groups");
            assert_eq!(got.len(), want.len());
            let diff = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            println!(
                "{precision:?}: {groups} groups on their own streams against one: max |diff| {diff:e}"
            );
            assert_eq!(diff, 0.0, "{precision:?}, {groups} groups");
        }
    }
}
