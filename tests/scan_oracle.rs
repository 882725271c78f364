//! Property tests of the selective scan against a plain f64 oracle written in this file.
//!
//! - The fused CPU scan (`selective_scan` on the Flex device) and the tensor-op reference
//!   (`selective_scan_reference`) against the oracle and against each other, over random
//!   inputs of many shapes (lengths around the reference's time block of 32, channel counts
//!   that are not powers of two, zero and non-zero initial state).
//! - State carrying: one call over `[0, L)` equals calls over `[0, k)` and `[k, L)` with the
//!   first call's last state passed on, for both implementations.
//! - Strided and offset input views on the fused path.
//! - Gradients on an autodiff device against central finite differences of the oracle.
//!
//! Errors are measured as `max |got - want| / max |want|` (over the whole tensor).

use burn::tensor::{Device, Tensor, TensorData};
use genomamba::ops::{
    ScanArgs, selective_scan, selective_scan_activated, selective_scan_gated,
    selective_scan_reference,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Relative tolerance of f32 results against the f64 oracle (relative to max |oracle|).
const TOL_F32: f64 = 1e-5;
/// Relative tolerance of a split scan against the same implementation in one call.
const TOL_SPLIT: f64 = 1e-6;
/// Relative tolerance of autodiff gradients against central finite differences.
const TOL_GRAD: f64 = 1e-3;
/// Step of the central finite differences (in the f64 oracle).
const FD_EPS: f64 = 1e-4;

const LENS: [usize; 8] = [1, 2, 7, 31, 32, 33, 100, 257];
const BATCHES: [usize; 2] = [1, 3];
const D_INNERS: [usize; 4] = [1, 5, 24, 37];
const D_STATES: [usize; 4] = [1, 4, 16, 64];

// ---------------------------------------------------------------------------------------------
// Inputs and the oracle
// ---------------------------------------------------------------------------------------------

/// One set of scan inputs, held in f64 but every value exactly representable in f32, so the
/// oracle and the f32 implementations see the same numbers.
#[derive(Clone, Debug)]
struct Case {
    batch: usize,
    len: usize,
    d_inner: usize,
    d_state: usize,
    /// `[batch, len, d_inner]`
    u: Vec<f64>,
    /// `[batch, len, d_inner]`, before bias and softplus
    delta: Vec<f64>,
    /// `[d_inner, d_state]`, negative
    a: Vec<f64>,
    /// `[batch, len, d_state]`
    b: Vec<f64>,
    /// `[batch, len, d_state]`
    c: Vec<f64>,
    /// `[d_inner]`
    d: Vec<f64>,
    /// `[batch, len, d_inner]`
    z: Vec<f64>,
    /// `[d_inner]`
    delta_bias: Vec<f64>,
    /// `[batch, d_inner, d_state]`
    h0: Vec<f64>,
}

impl Case {
    fn describe(&self) -> String {
        format!(
            "batch {} len {} d_inner {} d_state {} h0 {}",
            self.batch,
            self.len,
            self.d_inner,
            self.d_state,
            if self.h0.iter().all(|v| *v == 0.0) {
                "zero"
            } else {
                "random"
            }
        )
    }
}

fn round_f32(x: f64) -> f64 {
    x as f32 as f64
}

/// Standard normal by Box-Muller (no `rand_distr` dependency).
fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn normals(rng: &mut StdRng, n: usize, scale: f64) -> Vec<f64> {
    (0..n).map(|_| round_f32(scale * normal(rng))).collect()
}

/// Inverse of softplus: `log(exp(y) - 1)`.
fn inverse_softplus(y: f64) -> f64 {
    y.exp_m1().ln()
}

/// Random inputs with Mamba-like magnitudes: `delta ~ N(0, delta_scale²)`, `delta_bias` the
/// inverse softplus of `U(0.001, 0.1)`, `A = -exp(U(log 1, log 16))`, everything else
/// `N(0, 1)`; `h0` zero or `N(0, 1)`.
fn random_case(
    rng: &mut StdRng,
    [batch, len, d_inner, d_state]: [usize; 4],
    zero_h0: bool,
    delta_scale: f64,
) -> Case {
    let a = (0..d_inner * d_state)
        .map(|_| round_f32(-(rng.random_range(0.0..16f64.ln())).exp()))
        .collect();
    let delta_bias = (0..d_inner)
        .map(|_| round_f32(inverse_softplus(rng.random_range(0.001..0.1))))
        .collect();
    let h0 = if zero_h0 {
        vec![0.0; batch * d_inner * d_state]
    } else {
        normals(rng, batch * d_inner * d_state, 1.0)
    };
    Case {
        batch,
        len,
        d_inner,
        d_state,
        u: normals(rng, batch * len * d_inner, 1.0),
        delta: normals(rng, batch * len * d_inner, delta_scale),
        a,
        b: normals(rng, batch * len * d_state, 1.0),
        c: normals(rng, batch * len * d_state, 1.0),
        d: normals(rng, d_inner, 1.0),
        z: normals(rng, batch * len * d_inner, 1.0),
        delta_bias,
        h0,
    }
}

/// `log(1 + exp(x))`, written independently of the crate's stable form.
fn softplus(x: f64) -> f64 {
    if x > 40.0 { x } else { x.exp().ln_1p() }
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// The oracle: the recurrence as written in the paper, in f64, one (batch, time, channel)
/// at a time. Returns `(y [batch, len, d_inner], h_last [batch, d_inner, d_state])`.
fn oracle(x: &Case) -> (Vec<f64>, Vec<f64>) {
    let (nb, nl, ni, ns) = (x.batch, x.len, x.d_inner, x.d_state);
    let mut y = vec![0.0; nb * nl * ni];
    let mut h = x.h0.clone();
    for bi in 0..nb {
        for t in 0..nl {
            for ch in 0..ni {
                let i = (bi * nl + t) * ni + ch;
                let dt = softplus(x.delta[i] + x.delta_bias[ch]);
                let mut acc = 0.0;
                for n in 0..ns {
                    let hi = (bi * ni + ch) * ns + n;
                    let bc = (bi * nl + t) * ns + n;
                    h[hi] = (dt * x.a[ch * ns + n]).exp() * h[hi] + dt * x.b[bc] * x.u[i];
                    acc += x.c[bc] * h[hi];
                }
                y[i] = (acc + x.d[ch] * x.u[i]) * silu(x.z[i]);
            }
        }
    }
    (y, h)
}

// ---------------------------------------------------------------------------------------------
// Tensors
// ---------------------------------------------------------------------------------------------

fn tensor<const D: usize>(v: &[f64], shape: [usize; D], device: &Device) -> Tensor<D> {
    let v: Vec<f32> = v.iter().map(|x| *x as f32).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
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

/// `max |got - want| / max |want|` (the absolute error where `want` is all zero).
#[track_caller]
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    assert!(
        got.iter().all(|v| v.is_finite()),
        "non-finite value in the result"
    );
    let num = got
        .iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - w).abs())
        .fold(0.0, f64::max);
    let den = want.iter().map(|w| w.abs()).fold(0.0, f64::max);
    if den > 0.0 { num / den } else { num }
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|x| *x as f64).collect()
}

#[track_caller]
fn check_shape<const D: usize>(t: &Tensor<D>, want: [usize; D], what: &str) {
    assert_eq!(t.dims(), want, "{what}: wrong shape");
}

/// Runs one implementation on the Flex device, checking output shapes; host values of `(y, h)`.
fn run(x: &Case, scan: fn(ScanArgs) -> (Tensor<3>, Tensor<3>), what: &str) -> (Vec<f32>, Vec<f32>) {
    let (y, h) = scan(args(x, &Device::flex()));
    check_shape(&y, [x.batch, x.len, x.d_inner], &format!("{what} y"));
    check_shape(
        &h,
        [x.batch, x.d_inner, x.d_state],
        &format!("{what} h_last"),
    );
    (host(y), host(h))
}

/// Running maximum of one error, with the case where it was seen.
#[derive(Default)]
struct MaxErr {
    err: f64,
    at: String,
}

impl MaxErr {
    fn see(&mut self, err: f64, at: &str) {
        if err > self.err || self.at.is_empty() {
            self.err = self.err.max(err);
            self.at = at.to_string();
        }
    }
}

#[track_caller]
fn assert_close(err: f64, tol: f64, what: &str, case: &str) {
    assert!(
        err <= tol,
        "{what} ({case}): relative error {err:.3e} > tolerance {tol:.0e} (relative to max |expected|)"
    );
}

// ---------------------------------------------------------------------------------------------
// Forward against the oracle
// ---------------------------------------------------------------------------------------------

#[test]
fn fused_and_reference_match_the_oracle_over_random_shapes() {
    const CASES: usize = 40;
    let mut rng = StdRng::seed_from_u64(0x5CA7_0AC1E);
    let names = [
        "fused y vs oracle",
        "fused h_last vs oracle",
        "reference y vs oracle",
        "reference h_last vs oracle",
        "fused y vs reference",
        "fused h_last vs reference",
    ];
    let mut worst: Vec<MaxErr> = names.iter().map(|_| MaxErr::default()).collect();
    let mut seen = [[false; 8]; 4];
    for i in 0..CASES {
        // Every length five times; the other sizes drawn at random (their coverage is
        // checked below, so a change of seed cannot silently drop one).
        let li = i % LENS.len();
        let bi = rng.random_range(0..BATCHES.len());
        let di = rng.random_range(0..D_INNERS.len());
        let si = rng.random_range(0..D_STATES.len());
        let zero_h0 = rng.random_bool(0.5);
        for (k, idx) in [li, bi, di, si].into_iter().enumerate() {
            seen[k][idx] = true;
        }
        let shape = [BATCHES[bi], LENS[li], D_INNERS[di], D_STATES[si]];
        let x = random_case(&mut rng, shape, zero_h0, 1.0);
        let case = format!("case {i}: {}", x.describe());

        let (want_y, want_h) = oracle(&x);
        let (fy, fh) = run(&x, selective_scan, "fused");
        let (ry, rh) = run(&x, selective_scan_reference, "reference");
        let errs = [
            rel_err(&fy, &want_y),
            rel_err(&fh, &want_h),
            rel_err(&ry, &want_y),
            rel_err(&rh, &want_h),
            rel_err(&fy, &widen(&ry)),
            rel_err(&fh, &widen(&rh)),
        ];
        for ((err, name), w) in errs.iter().zip(names).zip(&mut worst) {
            assert_close(*err, TOL_F32, name, &case);
            w.see(*err, &case);
        }
    }
    let sizes: [&[usize]; 4] = [&LENS, &BATCHES, &D_INNERS, &D_STATES];
    for (k, set) in sizes.iter().enumerate() {
        for (j, v) in set.iter().enumerate() {
            assert!(seen[k][j], "size {v} of set {set:?} was never drawn");
        }
    }
    for (w, name) in worst.iter().zip(names) {
        println!("max {name}: {:.3e} ({})", w.err, w.at);
    }
}

/// `selective_scan_activated` (`Δ = delta + delta_bias`, no softplus) against the oracle:
/// given `softplus(delta + bias) - b2` and `b2` it returns the oracle's result for `delta` and
/// `bias`, on the CPU and on an autodiff device (where its reference body is differentiated
/// op by op: the gradient with respect to its `delta` is that of `Δ`, so it must equal the
/// standard scan's gradient with respect to `delta` divided by `softplus' = sigmoid`).
#[test]
fn activated_scan_matches_the_oracle() {
    let mut rng = StdRng::seed_from_u64(0xAC71);
    for (i, shape) in [[2, 9, 5, 4], [1, 130, 7, 16], [3, 1, 3, 2]]
        .into_iter()
        .enumerate()
    {
        let x = random_case(&mut rng, shape, i == 1, 1.0);
        let b2 = normals(&mut rng, x.d_inner, 0.5);
        let pre: Vec<f64> = (0..x.delta.len())
            .map(|j| x.delta[j] + x.delta_bias[j % x.d_inner])
            .collect();
        let activated: Vec<f64> = (0..pre.len())
            .map(|j| softplus(pre[j]) - b2[j % x.d_inner])
            .collect();
        let case = format!("case {i}: {}", x.describe());
        let (want_y, want_h) = oracle(&x);
        let (nb, nl, ni) = (x.batch, x.len, x.d_inner);
        // The arguments of the activated scan: `softplus(delta + bias) - b2` and `b2`.
        let activated_args = |device: &Device| {
            let mut a = args(&x, device);
            a.delta = tensor(&activated, [nb, nl, ni], device);
            a.delta_bias = tensor(&b2, [ni], device);
            a
        };
        for device in [Device::flex(), Device::flex().autodiff()] {
            let (y, h) = selective_scan_activated(activated_args(&device));
            check_shape(&y, [nb, nl, ni], "activated y");
            assert_close(rel_err(&host(y), &want_y), TOL_F32, "activated y", &case);
            assert_close(
                rel_err(&host(h), &want_h),
                TOL_F32,
                "activated h_last",
                &case,
            );
        }
        // Gradients of sum(y) with respect to each scan's `delta`.
        let device = Device::flex().autodiff();
        let grad_of = |activated_path: bool| {
            let mut a = if activated_path {
                activated_args(&device)
            } else {
                args(&x, &device)
            };
            let delta = a.delta.clone().require_grad();
            a.delta = delta.clone();
            let (y, _) = if activated_path {
                selective_scan_activated(a)
            } else {
                selective_scan(a)
            };
            let grads = y.sum().backward();
            host(delta.grad(&grads).expect("gradient of delta"))
        };
        let (g_act, g_std) = (grad_of(true), grad_of(false));
        let want: Vec<f64> = g_std
            .iter()
            .zip(&pre)
            .map(|(g, p)| *g as f64 / (1.0 / (1.0 + (-p).exp())))
            .collect();
        assert_close(rel_err(&g_act, &want), 1e-4, "activated d delta", &case);
    }
}

/// `selective_scan_gated` (Δ activated as above, `z` the gate itself) against the oracle:
/// given `softplus(delta + bias) - b2`, `b2` and `SiLU(z)` it returns the oracle's result for
/// `delta`, `bias` and `z`, on the CPU and on an autodiff device; there the gradient with
/// respect to its gate is the standard scan's gradient with respect to `z` divided by
/// `SiLU'(z)`.
#[test]
fn gated_scan_matches_the_oracle() {
    let mut rng = StdRng::seed_from_u64(0x6A7E);
    let silu = |v: f64| v / (1.0 + (-v).exp());
    for (i, shape) in [[2, 9, 5, 4], [1, 130, 7, 16], [3, 1, 3, 2]]
        .into_iter()
        .enumerate()
    {
        let x = random_case(&mut rng, shape, i == 1, 1.0);
        let b2 = normals(&mut rng, x.d_inner, 0.5);
        let activated: Vec<f64> = (0..x.delta.len())
            .map(|j| softplus(x.delta[j] + x.delta_bias[j % x.d_inner]) - b2[j % x.d_inner])
            .collect();
        let gate: Vec<f64> = x.z.iter().map(|&v| silu(v)).collect();
        let case = format!("case {i}: {}", x.describe());
        let (want_y, want_h) = oracle(&x);
        let (nb, nl, ni) = (x.batch, x.len, x.d_inner);
        let gated_args = |device: &Device| {
            let mut a = args(&x, device);
            a.delta = tensor(&activated, [nb, nl, ni], device);
            a.delta_bias = tensor(&b2, [ni], device);
            a.z = tensor(&gate, [nb, nl, ni], device);
            a
        };
        for device in [Device::flex(), Device::flex().autodiff()] {
            let (y, h) = selective_scan_gated(gated_args(&device));
            check_shape(&y, [nb, nl, ni], "gated y");
            assert_close(rel_err(&host(y), &want_y), TOL_F32, "gated y", &case);
            assert_close(rel_err(&host(h), &want_h), TOL_F32, "gated h_last", &case);
        }
        // Gradients of sum(y) with respect to each scan's `z`.
        let device = Device::flex().autodiff();
        let grad_of = |gated_path: bool| {
            let mut a = if gated_path {
                gated_args(&device)
            } else {
                args(&x, &device)
            };
            let z = a.z.clone().require_grad();
            a.z = z.clone();
            let (y, _) = if gated_path {
                selective_scan_gated(a)
            } else {
                selective_scan(a)
            };
            let grads = y.sum().backward();
            host(z.grad(&grads).expect("gradient of z"))
        };
        let (g_gate, g_std) = (grad_of(true), grad_of(false));
        let got: Vec<f64> = g_gate
            .iter()
            .zip(&x.z)
            .map(|(g, &v)| {
                let s = 1.0 / (1.0 + (-v).exp());
                *g as f64 * (s * (1.0 + v * (1.0 - s)))
            })
            .collect();
        let got: Vec<f32> = got.iter().map(|&v| v as f32).collect();
        let want: Vec<f64> = g_std.iter().map(|&v| v as f64).collect();
        assert_close(rel_err(&got, &want), 1e-4, "gated d z", &case);
    }
}

/// Time steps far outside the usual range (pre-bias `delta ~ N(0, 8²)`): softplus in both of
/// its regimes, `exp(Δ·A)` underflowing to zero, long memory where `Δ` is tiny.
#[test]
fn fused_and_reference_match_the_oracle_for_extreme_time_steps() {
    let mut rng = StdRng::seed_from_u64(0xE57E);
    for (i, shape) in [[2, 33, 5, 16], [1, 100, 24, 4], [3, 7, 37, 64]]
        .into_iter()
        .enumerate()
    {
        let x = random_case(&mut rng, shape, i % 2 == 0, 8.0);
        let case = format!("extreme case {i}: {}", x.describe());
        let (want_y, want_h) = oracle(&x);
        let (fy, fh) = run(&x, selective_scan, "fused");
        let (ry, rh) = run(&x, selective_scan_reference, "reference");
        let errs = [
            ("fused y vs oracle", rel_err(&fy, &want_y)),
            ("fused h_last vs oracle", rel_err(&fh, &want_h)),
            ("reference y vs oracle", rel_err(&ry, &want_y)),
            ("reference h_last vs oracle", rel_err(&rh, &want_h)),
        ];
        for (name, err) in errs {
            println!("{case}: {name}: {err:.3e}");
            assert_close(err, TOL_F32, name, &case);
        }
    }
}

/// The fused path reads its inputs from host memory; views that are transposed (strided) or
/// start at an offset into a larger buffer must give the same result as contiguous inputs.
#[test]
fn fused_scan_reads_strided_and_offset_views() {
    let mut rng = StdRng::seed_from_u64(0x57D1);
    let x = random_case(&mut rng, [3, 33, 5, 16], false, 1.0);
    let (nb, nl, ni, ns) = (x.batch, x.len, x.d_inner, x.d_state);
    let device = Device::flex();
    let (want_y, want_h) = oracle(&x);

    // [batch, len, d_inner] from a [batch, d_inner, len] buffer: transposed, not contiguous.
    let transposed = |v: &[f64]| {
        let mut out = vec![0.0; v.len()];
        for b in 0..nb {
            for t in 0..nl {
                for ch in 0..ni {
                    out[(b * ni + ch) * nl + t] = v[(b * nl + t) * ni + ch];
                }
            }
        }
        tensor(&out, [nb, ni, nl], &device).swap_dims(1, 2)
    };
    // [batch, len, d_state] as the second half of a [2 * batch, len, d_state] buffer: an
    // offset view of a contiguous block.
    let offset = |v: &[f64]| {
        let mut buf = normals(&mut StdRng::seed_from_u64(1), v.len(), 1.0);
        buf.extend_from_slice(v);
        tensor(&buf, [2 * nb, nl, ns], &device).slice_dim(0, nb..2 * nb)
    };
    // a [d_inner, d_state] as the transpose of a [d_state, d_inner] buffer.
    let mut a_t = vec![0.0; ni * ns];
    for ch in 0..ni {
        for n in 0..ns {
            a_t[n * ni + ch] = x.a[ch * ns + n];
        }
    }
    let a = tensor(&a_t, [ns, ni], &device).transpose();
    // h0 [batch, d_inner, d_state] from a [batch, d_state, d_inner] buffer.
    let mut h0_t = vec![0.0; nb * ni * ns];
    for b in 0..nb {
        for ch in 0..ni {
            for n in 0..ns {
                h0_t[(b * ns + n) * ni + ch] = x.h0[(b * ni + ch) * ns + n];
            }
        }
    }
    let h0 = tensor(&h0_t, [nb, ns, ni], &device).swap_dims(1, 2);
    let strided = ScanArgs {
        u: transposed(&x.u),
        delta: transposed(&x.delta),
        a,
        b: offset(&x.b),
        c: offset(&x.c),
        d: tensor(&x.d, [ni], &device),
        z: transposed(&x.z),
        delta_bias: tensor(&x.delta_bias, [ni], &device),
        h0,
    };
    for (name, scan) in [
        (
            "fused",
            selective_scan as fn(ScanArgs) -> (Tensor<3>, Tensor<3>),
        ),
        ("reference", selective_scan_reference),
    ] {
        let (y, h) = scan(strided.clone());
        let ey = rel_err(&host(y), &want_y);
        let eh = rel_err(&host(h), &want_h);
        println!("strided views, {name}: y {ey:.3e}, h_last {eh:.3e}");
        assert_close(
            ey,
            TOL_F32,
            &format!("{name} y from strided views"),
            &x.describe(),
        );
        assert_close(
            eh,
            TOL_F32,
            &format!("{name} h_last from strided views"),
            &x.describe(),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// State carrying
// ---------------------------------------------------------------------------------------------

/// Time range `[t0, t1)` of the sequence inputs, as tensor slices (views) of the full inputs.
fn time_slice(full: &ScanArgs, t0: usize, t1: usize, h0: Tensor<3>) -> ScanArgs {
    ScanArgs {
        u: full.u.clone().slice_dim(1, t0..t1),
        delta: full.delta.clone().slice_dim(1, t0..t1),
        b: full.b.clone().slice_dim(1, t0..t1),
        c: full.c.clone().slice_dim(1, t0..t1),
        z: full.z.clone().slice_dim(1, t0..t1),
        h0,
        ..full.clone()
    }
}

/// Scans `bounds` (consecutive time ranges covering the sequence) one call each, carrying the
/// state; returns `(y, h_last)` of the whole sequence.
fn scan_in_pieces(
    full: &ScanArgs,
    bounds: &[(usize, usize)],
    scan: fn(ScanArgs) -> (Tensor<3>, Tensor<3>),
) -> (Tensor<3>, Tensor<3>) {
    let mut h = full.h0.clone();
    let mut ys = Vec::new();
    for &(t0, t1) in bounds {
        let (y, h_next) = scan(time_slice(full, t0, t1, h));
        ys.push(y);
        h = h_next;
    }
    (Tensor::cat(ys, 1), h)
}

#[test]
fn split_scans_carry_the_state() {
    let mut rng = StdRng::seed_from_u64(0xCA221);
    let device = Device::flex();
    let mut worst_split = MaxErr::default();
    let mut worst_oracle = MaxErr::default();
    let mut checks = 0;
    for (ci, shape) in [
        [2, 7, 5, 4],
        [3, 33, 5, 16],
        [1, 100, 24, 16],
        [2, 257, 37, 4],
    ]
    .into_iter()
    .enumerate()
    {
        let x = random_case(&mut rng, shape, ci % 2 == 1, 1.0);
        let len = x.len;
        let (want_y, want_h) = oracle(&x);
        let full = args(&x, &device);

        let mut splits: Vec<Vec<(usize, usize)>> = [1, 2, 31, 32, 33, len / 2, len - 1]
            .into_iter()
            .filter(|k| (1..len).contains(k))
            .map(|k| vec![(0, k), (k, len)])
            .collect();
        // Streaming in equal chunks (the last one shorter), as inference does.
        for chunk in [1usize, 7, 32] {
            let bounds = (0..len)
                .step_by(chunk)
                .map(|t| (t, (t + chunk).min(len)))
                .collect();
            splits.push(bounds);
        }
        splits.sort();
        splits.dedup();

        for (name, scan) in [
            (
                "fused",
                selective_scan as fn(ScanArgs) -> (Tensor<3>, Tensor<3>),
            ),
            ("reference", selective_scan_reference),
        ] {
            let (y1, h1) = scan(full.clone());
            let (y1, h1) = (widen(&host(y1)), widen(&host(h1)));
            for bounds in &splits {
                let case = format!(
                    "{name}, {}, pieces {:?}",
                    x.describe(),
                    if bounds.len() > 3 {
                        format!("{} of {}", bounds.len(), bounds[0].1)
                    } else {
                        format!("{bounds:?}")
                    }
                );
                let (ys, hs) = scan_in_pieces(&full, bounds, scan);
                check_shape(&ys, [x.batch, len, x.d_inner], "split y");
                let (ys, hs) = (host(ys), host(hs));
                let errs = [
                    ("split y vs one call", rel_err(&ys, &y1), TOL_SPLIT),
                    ("split h_last vs one call", rel_err(&hs, &h1), TOL_SPLIT),
                ];
                for (what, err, tol) in errs {
                    assert_close(err, tol, what, &case);
                    worst_split.see(err, &case);
                }
                let errs = [
                    ("split y vs oracle", rel_err(&ys, &want_y)),
                    ("split h_last vs oracle", rel_err(&hs, &want_h)),
                ];
                for (what, err) in errs {
                    assert_close(err, TOL_F32, what, &case);
                    worst_oracle.see(err, &case);
                }
                checks += 1;
            }
        }
    }
    assert!(checks >= 40, "only {checks} split checks ran");
    println!(
        "{checks} splits; max split vs one call: {:.3e} ({}); max split vs oracle: {:.3e} ({})",
        worst_split.err, worst_split.at, worst_oracle.err, worst_oracle.at
    );
}

// ---------------------------------------------------------------------------------------------
// Gradients
// ---------------------------------------------------------------------------------------------

/// `sum(y ⊙ w1) + sum(h_last ⊙ w2)` in the oracle.
fn oracle_loss(x: &Case, w1: &[f64], w2: &[f64]) -> f64 {
    let (y, h) = oracle(x);
    let a: f64 = y.iter().zip(w1).map(|(p, q)| p * q).sum();
    let b: f64 = h.iter().zip(w2).map(|(p, q)| p * q).sum();
    a + b
}

/// The inputs of a case by name, for perturbation.
fn field<'a>(x: &'a mut Case, name: &str) -> &'a mut Vec<f64> {
    match name {
        "u" => &mut x.u,
        "delta" => &mut x.delta,
        "a" => &mut x.a,
        "b" => &mut x.b,
        "c" => &mut x.c,
        "d" => &mut x.d,
        "z" => &mut x.z,
        "delta_bias" => &mut x.delta_bias,
        "h0" => &mut x.h0,
        _ => unreachable!("no input {name}"),
    }
}

const INPUTS: [&str; 9] = ["u", "delta", "a", "b", "c", "d", "z", "delta_bias", "h0"];

/// Central finite differences of the oracle loss with respect to every element of `name`.
fn finite_differences(x: &Case, name: &str, w1: &[f64], w2: &[f64]) -> Vec<f64> {
    let mut p = x.clone();
    let n = field(&mut p, name).len();
    (0..n)
        .map(|i| {
            let v = field(&mut p, name)[i];
            field(&mut p, name)[i] = v + FD_EPS;
            let up = oracle_loss(&p, w1, w2);
            field(&mut p, name)[i] = v - FD_EPS;
            let down = oracle_loss(&p, w1, w2);
            field(&mut p, name)[i] = v;
            (up - down) / (2.0 * FD_EPS)
        })
        .collect()
}

fn check_gradients(shape: [usize; 4], seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let x = random_case(&mut rng, shape, false, 1.0);
    let (nb, nl, ni, ns) = (x.batch, x.len, x.d_inner, x.d_state);
    let w1 = normals(&mut rng, nb * nl * ni, 1.0);
    let w2 = normals(&mut rng, nb * ni * ns, 1.0);
    let fd: Vec<Vec<f64>> = INPUTS
        .iter()
        .map(|name| finite_differences(&x, name, &w1, &w2))
        .collect();
    let (want_y, want_h) = oracle(&x);

    let device = Device::flex().autodiff();
    for (api, scan) in [
        (
            "selective_scan",
            selective_scan as fn(ScanArgs) -> (Tensor<3>, Tensor<3>),
        ),
        ("selective_scan_reference", selective_scan_reference),
    ] {
        let case = format!("{api} on autodiff, {}", x.describe());
        let leaves = args(&x, &device);
        let leaves = ScanArgs {
            u: leaves.u.require_grad(),
            delta: leaves.delta.require_grad(),
            a: leaves.a.require_grad(),
            b: leaves.b.require_grad(),
            c: leaves.c.require_grad(),
            d: leaves.d.require_grad(),
            z: leaves.z.require_grad(),
            delta_bias: leaves.delta_bias.require_grad(),
            h0: leaves.h0.require_grad(),
        };
        let (y, h) = scan(leaves.clone());
        assert!(y.is_tracked(), "{case}: y is not part of an autodiff graph");
        let loss = (y.clone() * tensor(&w1, [nb, nl, ni], &device)).sum()
            + (h.clone() * tensor(&w2, [nb, ni, ns], &device)).sum();

        // The forward values on the autodiff device, too.
        let ey = rel_err(&host(y.detach()), &want_y);
        let eh = rel_err(&host(h.detach()), &want_h);
        assert_close(ey, TOL_F32, "autodiff y vs oracle", &case);
        assert_close(eh, TOL_F32, "autodiff h_last vs oracle", &case);

        let grads = loss.backward();
        let got: [Option<Vec<f32>>; 9] = [
            leaves.u.grad(&grads).map(host),
            leaves.delta.grad(&grads).map(host),
            leaves.a.grad(&grads).map(host),
            leaves.b.grad(&grads).map(host),
            leaves.c.grad(&grads).map(host),
            leaves.d.grad(&grads).map(host),
            leaves.z.grad(&grads).map(host),
            leaves.delta_bias.grad(&grads).map(host),
            leaves.h0.grad(&grads).map(host),
        ];
        let mut report = Vec::new();
        for ((name, g), want) in INPUTS.iter().zip(got).zip(&fd) {
            let g = g.unwrap_or_else(|| panic!("{case}: no gradient for {name}"));
            assert_eq!(
                g.len(),
                want.len(),
                "{case}: gradient of {name} has the wrong size"
            );
            assert!(
                want.iter().any(|v| v.abs() > 1e-3),
                "{case}: finite differences of {name} are all ~0; the check would be vacuous"
            );
            let err = rel_err(&g, want);
            assert_close(
                err,
                TOL_GRAD,
                &format!("gradient of {name} vs finite differences"),
                &case,
            );
            report.push(format!("{name} {err:.1e}"));
        }
        println!(
            "{case}: forward y {ey:.1e} h {eh:.1e}; gradient errors: {}",
            report.join(", ")
        );
    }
}

#[test]
fn gradients_match_finite_differences_of_the_oracle() {
    check_gradients([2, 9, 3, 4], 0x6AD5);
}

/// Longer than one time block of the reference (32), so the backward pass crosses blocks.
#[test]
fn gradients_match_finite_differences_across_time_blocks() {
    check_gradients([2, 35, 3, 4], 0x6AD6);
}
