//! The hand-written backward pass of the selective scan against autodiff of the reference.
//!
//! - On an autodiff CPU device, `selective_scan` (fast forward + registered backward step)
//!   against `selective_scan_reference` (differentiated op by op by Burn's autodiff): forward
//!   values and the gradient of every input, over random inputs of many shapes.
//! - The tensor-operation backward (the default body every backend gets, used by CUDA) against
//!   the fused CPU backward, called directly on the plain CPU device.
//! - Losses that use only `y` or only the last state, and inputs read through strided views.
//!
//! Errors are `‖got - want‖₂ / ‖want‖₂` over the whole tensor.

use burn::tensor::{Device, Tensor, TensorData};
use genomamba::ops::{
    ScanArgs, ScanGradTensors, selective_scan, selective_scan_backward,
    selective_scan_backward_reference, selective_scan_reference,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Relative tolerance (on the L2 norm of the difference) of the fast path against autodiff of
/// the reference, for forward values and gradients; both are f32.
const TOL: f64 = 1e-4;

const LENS: [usize; 5] = [1, 7, 33, 128, 300];
const BATCHES: [usize; 3] = [1, 2, 3];
const D_INNERS: [usize; 2] = [12, 40];
const D_STATES: [usize; 3] = [1, 4, 16];

const INPUTS: [&str; 9] = ScanGradTensors::NAMES;

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

/// Scan inputs on the host, f32, with Mamba-like magnitudes.
#[derive(Clone, Debug)]
struct Case {
    batch: usize,
    len: usize,
    d_inner: usize,
    d_state: usize,
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
            if self.h0.iter().all(|v| *v == 0.0) {
                "zero"
            } else {
                "random"
            }
        )
    }
}

/// Standard normal (Box-Muller).
fn normal(rng: &mut StdRng) -> f32 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

fn normals(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| normal(rng)).collect()
}

/// `delta ~ N(0, 1)`, `delta_bias` the inverse softplus of `U(0.001, 0.1)`,
/// `A = -exp(U(0, log 16))`, the rest `N(0, 1)`; `h0` zero or `N(0, 1)`.
fn random_case(
    rng: &mut StdRng,
    [batch, len, d_inner, d_state]: [usize; 4],
    zero_h0: bool,
) -> Case {
    let a = (0..d_inner * d_state)
        .map(|_| -(rng.random_range(0.0..16f64.ln())).exp() as f32)
        .collect();
    let delta_bias = (0..d_inner)
        .map(|_| rng.random_range(0.001f64..0.1).exp_m1().ln() as f32)
        .collect();
    let h0 = if zero_h0 {
        vec![0.0; batch * d_inner * d_state]
    } else {
        normals(rng, batch * d_inner * d_state)
    };
    Case {
        batch,
        len,
        d_inner,
        d_state,
        u: normals(rng, batch * len * d_inner),
        delta: normals(rng, batch * len * d_inner),
        a,
        b: normals(rng, batch * len * d_state),
        c: normals(rng, batch * len * d_state),
        d: normals(rng, d_inner),
        z: normals(rng, batch * len * d_inner),
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

/// `‖got - want‖₂ / ‖want‖₂` (the absolute norm where `want` is all zero).
#[track_caller]
fn rel_err(got: &[f32], want: &[f32], what: &str) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length mismatch");
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{what}: non-finite value"
    );
    let diff: f64 = got
        .iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - *w as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = want.iter().map(|w| (*w as f64).powi(2)).sum::<f64>().sqrt();
    if norm > 0.0 { diff / norm } else { diff }
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt()
}

#[track_caller]
fn assert_close(got: &[f32], want: &[f32], what: &str, case: &str) -> f64 {
    let err = rel_err(got, want, what);
    assert!(
        err <= TOL,
        "{what} ({case}): relative L2 error {err:.3e} > tolerance {TOL:.0e}"
    );
    err
}

/// Which outputs the loss reads.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Loss {
    /// `sum(y ⊙ w1) + sum(h_last ⊙ w2)`
    Both,
    /// `sum(y ⊙ w1)` (the last state unused)
    YOnly,
    /// `sum(h_last ⊙ w2)` (`y` unused)
    HOnly,
}

/// Forward values and the gradients of every input (in [`INPUTS`] order) of
/// `loss(scan(leaves))`; `None` for an input the loss does not depend on in the graph.
fn forward_backward(
    scan: impl Fn(ScanArgs) -> (Tensor<3>, Tensor<3>),
    leaves: ScanArgs,
    w1: &Tensor<3>,
    w2: &Tensor<3>,
    loss: Loss,
    case: &str,
) -> (Vec<f32>, Vec<f32>, Vec<Option<Vec<f32>>>) {
    let (y, h) = scan(leaves.clone());
    assert!(
        y.is_tracked() && h.is_tracked(),
        "{case}: outputs not part of an autodiff graph"
    );
    let ly = (y.clone() * w1.clone()).sum();
    let lh = (h.clone() * w2.clone()).sum();
    let total = match loss {
        Loss::Both => ly + lh,
        Loss::YOnly => ly,
        Loss::HOnly => lh,
    };
    let grads = total.backward();
    let got = [
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
    (host(y.detach()), host(h.detach()), got.into())
}

/// Input gradients that are zero for a structural reason: with only `h_last` in the loss, `C`,
/// `D` and `z` do not matter (the reference graph gives them no gradient at all); with one
/// time step from a zero state, `A` multiplies only zeros.
fn structurally_zero(x: &Case, loss: Loss, name: &str) -> bool {
    (loss == Loss::HOnly && matches!(name, "c" | "d" | "z"))
        || (name == "a" && x.len == 1 && x.h0.iter().all(|v| *v == 0.0))
}

/// Fast path vs autodiff of the reference for one case; returns the worst error seen.
fn check_case(x: &Case, loss: Loss, seed: u64) -> f64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let (nb, nl, ni, ns) = (x.batch, x.len, x.d_inner, x.d_state);
    let device = Device::flex().autodiff();
    let w1 = tensor(&normals(&mut rng, nb * nl * ni), [nb, nl, ni], &device);
    let w2 = tensor(&normals(&mut rng, nb * ni * ns), [nb, ni, ns], &device);
    let case = format!("{}, loss {loss:?}", x.describe());

    let (fy, fh, fg) = forward_backward(
        selective_scan,
        args(x, &device).require_grad(),
        &w1,
        &w2,
        loss,
        &case,
    );
    let (ry, rh, rg) = forward_backward(
        selective_scan_reference,
        args(x, &device).require_grad(),
        &w1,
        &w2,
        loss,
        &case,
    );
    let mut worst = assert_close(&fy, &ry, "forward y", &case);
    worst = worst.max(assert_close(&fh, &rh, "forward h_last", &case));
    for ((name, got), want) in INPUTS.iter().zip(fg).zip(rg) {
        let got = got.unwrap_or_else(|| panic!("{case}: no gradient for {name} (fast path)"));
        if structurally_zero(x, loss, name) {
            // The reference may have no gradient at all; the fast path must give zeros.
            let want = want.unwrap_or_else(|| vec![0.0; got.len()]);
            assert!(
                got.iter().chain(&want).all(|v| *v == 0.0),
                "{case}: gradient of {name} should be exactly zero"
            );
            continue;
        }
        let want = want.unwrap_or_else(|| panic!("{case}: no gradient for {name} (reference)"));
        assert!(
            norm(&want) > 1e-6,
            "{case}: reference gradient of {name} is ~0; the check would be vacuous"
        );
        worst = worst.max(assert_close(
            &got,
            &want,
            &format!("gradient of {name}, fast path vs autodiff of the reference"),
            &case,
        ));
    }
    worst
}

// ---------------------------------------------------------------------------------------------
// Fast path vs autodiff of the reference
// ---------------------------------------------------------------------------------------------

#[test]
fn fast_path_gradients_match_autodiff_of_the_reference() {
    let mut rng = StdRng::seed_from_u64(0x6AAD_5CA1);
    let mut seen = [[false; 5]; 4];
    let mut worst = (0.0f64, String::new());
    let mut i = 0;
    for (li, &len) in LENS.iter().enumerate() {
        for (si, &d_state) in D_STATES.iter().enumerate() {
            for zero_h0 in [false, true] {
                let bi = i % BATCHES.len();
                let di = (i / 2) % D_INNERS.len();
                i += 1;
                for (k, idx) in [li, bi, di, si].into_iter().enumerate() {
                    seen[k][idx] = true;
                }
                let shape = [BATCHES[bi], len, D_INNERS[di], d_state];
                let x = random_case(&mut rng, shape, zero_h0);
                let err = check_case(&x, Loss::Both, rng.random());
                if err > worst.0 {
                    worst = (err, x.describe());
                }
            }
        }
    }
    let sizes: [&[usize]; 4] = [&LENS, &BATCHES, &D_INNERS, &D_STATES];
    for (k, set) in sizes.iter().enumerate() {
        for (j, v) in set.iter().enumerate() {
            assert!(seen[k][j], "size {v} of {set:?} never used");
        }
    }
    println!(
        "{i} cases; worst relative L2 error {:.3e} ({})",
        worst.0, worst.1
    );
}

#[test]
fn fast_path_gradients_when_only_one_output_is_used() {
    let mut rng = StdRng::seed_from_u64(0x0E_0075);
    for (shape, zero_h0) in [([2, 33, 12, 4], false), ([1, 300, 40, 16], true)] {
        let x = random_case(&mut rng, shape, zero_h0);
        for loss in [Loss::YOnly, Loss::HOnly] {
            let err = check_case(&x, loss, rng.random());
            println!("{} {loss:?}: worst {err:.3e}", x.describe());
        }
    }
}

/// Training on chunks with the state carried: the last state of one fast-path call is the
/// initial state of the next, so gradients flow from one backward step into the other (and
/// through the time slices of the inputs). Against one reference call over the whole sequence.
#[test]
fn fast_path_gradients_through_a_carried_state() {
    let mut rng = StdRng::seed_from_u64(0xCA_771ED);
    let x = random_case(&mut rng, [2, 150, 12, 4], false);
    let (nb, nl, ni, ns) = (x.batch, x.len, x.d_inner, x.d_state);
    let device = Device::flex().autodiff();
    let w1 = tensor(&normals(&mut rng, nb * nl * ni), [nb, nl, ni], &device);
    let w2 = tensor(&normals(&mut rng, nb * ni * ns), [nb, ni, ns], &device);
    let case = format!("chunks 0..61, 61..150, {}", x.describe());
    let in_chunks = |l: ScanArgs| {
        let piece = |t0: usize, t1: usize, h0: Tensor<3>| ScanArgs {
            u: l.u.clone().slice_dim(1, t0..t1),
            delta: l.delta.clone().slice_dim(1, t0..t1),
            b: l.b.clone().slice_dim(1, t0..t1),
            c: l.c.clone().slice_dim(1, t0..t1),
            z: l.z.clone().slice_dim(1, t0..t1),
            h0,
            ..l.clone()
        };
        let (y1, h1) = selective_scan(piece(0, 61, l.h0.clone()));
        let (y2, h2) = selective_scan(piece(61, nl, h1));
        (Tensor::cat(vec![y1, y2], 1), h2)
    };
    let (fy, fh, fg) = forward_backward(
        in_chunks,
        args(&x, &device).require_grad(),
        &w1,
        &w2,
        Loss::Both,
        &case,
    );
    let (ry, rh, rg) = forward_backward(
        selective_scan_reference,
        args(&x, &device).require_grad(),
        &w1,
        &w2,
        Loss::Both,
        &case,
    );
    let mut worst = assert_close(&fy, &ry, "forward y", &case);
    worst = worst.max(assert_close(&fh, &rh, "forward h_last", &case));
    for ((name, got), want) in INPUTS.iter().zip(fg).zip(rg) {
        let (Some(got), Some(want)) = (got, want) else {
            panic!("{case}: missing gradient for {name}");
        };
        worst = worst.max(assert_close(
            &got,
            &want,
            &format!("gradient of {name}, chunked fast path vs reference"),
            &case,
        ));
    }
    println!("{case}: worst {worst:.3e}");
}

/// Time steps far outside the usual range (`delta ~ N(0, 8²)`): softplus in both regimes,
/// `exp(Δ·A)` underflowing to zero.
#[test]
fn fast_path_gradients_for_extreme_time_steps() {
    let mut rng = StdRng::seed_from_u64(0xE_C7E);
    let mut x = random_case(&mut rng, [2, 200, 12, 16], false);
    for v in &mut x.delta {
        *v *= 8.0;
    }
    let err = check_case(&x, Loss::Both, rng.random());
    println!("extreme delta: worst {err:.3e}");
}

/// Inputs as the model passes them: `z` and `B`, `C` as column slices of wider tensors, `u`
/// as a transposed (non-contiguous) view. Gradients must reach the leaves behind the views and
/// not depend on the layout.
#[test]
fn fast_path_gradients_from_strided_views() {
    let mut rng = StdRng::seed_from_u64(0x57_1DE);
    let x = random_case(&mut rng, [2, 150, 12, 4], false);
    let (nb, nl, ni, ns) = (x.batch, x.len, x.d_inner, x.d_state);
    let device = Device::flex().autodiff();
    let w1 = tensor(&normals(&mut rng, nb * nl * ni), [nb, nl, ni], &device);
    let w2 = tensor(&normals(&mut rng, nb * ni * ns), [nb, ni, ns], &device);
    let case = format!("strided views, {}", x.describe());

    let viewed = |l: ScanArgs| {
        let (nb, nl) = (l.u.dims()[0], l.u.dims()[1]);
        let dev = l.u.device();
        // `t` as columns `at..at + width` of a wider tensor.
        let inside = |t: Tensor<3>, at: usize| {
            let width = t.dims()[2];
            let left = Tensor::<3>::zeros([nb, nl, at], &dev);
            let right = Tensor::<3>::zeros([nb, nl, 3], &dev);
            Tensor::cat(vec![left, t, right], 2).slice_dim(2, at..at + width)
        };
        // `u` through a transposed copy, so the scan sees a transposed view.
        let u_t = l.u.swap_dims(1, 2) * 1.0;
        ScanArgs {
            u: u_t.swap_dims(1, 2),
            z: inside(l.z, 3),
            b: inside(l.b, 2),
            c: inside(l.c, 5),
            ..l
        }
    };
    let (fy, fh, fg) = forward_backward(
        |l| selective_scan(viewed(l)),
        args(&x, &device).require_grad(),
        &w1,
        &w2,
        Loss::Both,
        &case,
    );
    let (ry, rh, rg) = forward_backward(
        selective_scan_reference,
        args(&x, &device).require_grad(),
        &w1,
        &w2,
        Loss::Both,
        &case,
    );
    let mut worst = assert_close(&fy, &ry, "forward y", &case);
    worst = worst.max(assert_close(&fh, &rh, "forward h_last", &case));
    for ((name, got), want) in INPUTS.iter().zip(fg).zip(rg) {
        let (Some(got), Some(want)) = (got, want) else {
            panic!("{case}: missing gradient for {name}");
        };
        worst = worst.max(assert_close(
            &got,
            &want,
            &format!("gradient of {name}, strided fast path vs reference"),
            &case,
        ));
    }
    println!("{case}: worst {worst:.3e}");
}

// ---------------------------------------------------------------------------------------------
// The tensor-operation backward (default body) vs the fused CPU backward
// ---------------------------------------------------------------------------------------------

#[test]
fn tensor_op_backward_matches_the_fused_backward() {
    let mut rng = StdRng::seed_from_u64(0xDEF_A017);
    let device = Device::flex();
    let mut worst = 0.0f64;
    let mut count = 0;
    for &len in &LENS {
        for (k, &d_state) in D_STATES.iter().enumerate() {
            let batch = BATCHES[(len + k) % BATCHES.len()];
            let d_inner = D_INNERS[k % D_INNERS.len()];
            let x = random_case(&mut rng, [batch, len, d_inner, d_state], k == 1);
            let (nb, nl, ni, ns) = (x.batch, x.len, x.d_inner, x.d_state);
            let gy = tensor(&normals(&mut rng, nb * nl * ni), [nb, nl, ni], &device);
            let gh = tensor(&normals(&mut rng, nb * ni * ns), [nb, ni, ns], &device);
            let case = x.describe();
            let fused =
                selective_scan_backward(args(&x, &device), gy.clone(), gh.clone()).into_host();
            let tensor_ops =
                selective_scan_backward_reference(args(&x, &device), gy, gh).into_host();
            let shapes = [
                nb * nl * ni,
                nb * nl * ni,
                ni * ns,
                nb * nl * ns,
                nb * nl * ns,
                ni,
                nb * nl * ni,
                ni,
                nb * ni * ns,
            ];
            for (((name, f), t), size) in INPUTS.iter().zip(&fused).zip(&tensor_ops).zip(shapes) {
                assert_eq!(
                    f.len(),
                    size,
                    "{case}: fused gradient of {name}: wrong size"
                );
                if !structurally_zero(&x, Loss::Both, name) {
                    assert!(norm(t) > 1e-6, "{case}: gradient of {name} is ~0");
                }
                worst = worst.max(assert_close(
                    f,
                    t,
                    &format!("gradient of {name}, fused vs tensor-op backward"),
                    &case,
                ));
            }
            count += 1;
        }
    }
    println!("{count} cases; worst relative L2 error {worst:.3e}");
}
