//! The fused CPU convolution+SiLU and RMSNorm against their tensor-op references and a plain
//! f64 loop, on random inputs; the convolution followed by x_proj/dt_proj as one operation
//! against the two in sequence; and gradients through them on an autodiff device.

use burn::tensor::{Device, FloatDType, Tensor, TensorData};
use genomamba::ops::block::{
    Impl, add_rms_norm_only, add_rms_norm_with, causal_conv_silu_with, conv_dbc_with,
    project_add_with, project_dbc_with, project_norm_silu_from_with, project_silu_from_with,
    rms_norm_with,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn rand_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect()
}

fn t3(v: &[f32], s: [usize; 3], dev: &Device) -> Tensor<3> {
    Tensor::from_data(TensorData::new(v.to_vec(), s), dev)
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

fn max_rel(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max);
    num / b.iter().map(|y| y.abs()).fold(1e-12, f64::max)
}

/// Plain loop: u[b,t,c] = silu(bias[c] + Σ_j w[j,c]·xin[b, t - (k-1) + j, c]) over [window | x].
#[allow(clippy::too_many_arguments)]
fn conv_oracle(
    x: &[f32],
    win: &[f32],
    w: &[f32],
    bias: &[f32],
    (batch, len, cx, k, d): (usize, usize, usize, usize, usize),
) -> (Vec<f64>, Vec<f64>) {
    let input = |b: usize, p: isize, c: usize| -> f64 {
        if p < 0 {
            win[(b * (k - 1) + (k as isize - 1 + p) as usize) * d + c] as f64
        } else {
            x[(b * len + p as usize) * cx + c] as f64
        }
    };
    let mut u = vec![0.0; batch * len * d];
    for b in 0..batch {
        for t in 0..len {
            for c in 0..d {
                let mut acc = bias[c] as f64;
                for j in 0..k {
                    acc += w[j * d + c] as f64
                        * input(b, t as isize - (k as isize - 1) + j as isize, c);
                }
                u[(b * len + t) * d + c] = acc / (1.0 + (-acc).exp());
            }
        }
    }
    let mut next = vec![0.0; batch * (k - 1) * d];
    for b in 0..batch {
        for r in 0..k - 1 {
            for c in 0..d {
                next[(b * (k - 1) + r) * d + c] =
                    input(b, len as isize - (k as isize - 1) + r as isize, c);
            }
        }
    }
    (u, next)
}

#[test]
fn fused_conv_matches_reference_and_oracle() {
    let dev = Device::flex();
    let mut rng = StdRng::seed_from_u64(42);
    let mut cases = 0;
    for &(batch, len, d, k, extra) in &[
        (1, 1, 5, 4, 0),
        (2, 7, 24, 4, 24),
        (1, 3, 37, 3, 37),
        (3, 33, 8, 2, 1),
        (1, 100, 16, 1, 0),
        (2, 2, 64, 4, 64),
    ] {
        let cx = d + extra; // the convolution reads the first d channels of a wider x
        let x = rand_vec(&mut rng, batch * len * cx);
        let win = rand_vec(&mut rng, batch * (k - 1) * d);
        let w = rand_vec(&mut rng, k * d);
        let bias = rand_vec(&mut rng, d);
        let (want_u, want_next) = conv_oracle(&x, &win, &w, &bias, (batch, len, cx, k, d));
        for which in [Impl::Fastest, Impl::Reference] {
            let (u, next) = causal_conv_silu_with(
                which,
                t3(&x, [batch, len, cx], &dev),
                t3(&win, [batch, k - 1, d], &dev),
                Tensor::from_data(TensorData::new(w.clone(), [k, d]), &dev),
                Tensor::from_data(TensorData::new(bias.clone(), [d]), &dev),
            );
            assert_eq!(u.dims(), [batch, len, d]);
            let (eu, en) = (max_rel(&host(u), &want_u), max_rel(&host(next), &want_next));
            assert!(
                eu < 1e-5,
                "{which:?} u: rel err {eu:e} (case b{batch} l{len} d{d} k{k})"
            );
            assert!(en == 0.0 || en < 1e-7, "{which:?} window: rel err {en:e}");
        }
        cases += 1;
    }
    assert_eq!(cases, 6);
}

#[test]
fn fused_rms_norm_matches_reference_and_oracle() {
    let dev = Device::flex();
    let mut rng = StdRng::seed_from_u64(7);
    for &(batch, len, d, eps) in &[(1, 1, 3, 1e-5), (2, 70, 64, 1e-3), (3, 5, 24, 1e-6)] {
        let x = rand_vec(&mut rng, batch * len * d);
        let w = rand_vec(&mut rng, d);
        let mut want = vec![0.0f64; x.len()];
        for (row, out) in x.chunks(d).zip(want.chunks_mut(d)) {
            let ms = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / d as f64;
            for ((o, v), wv) in out.iter_mut().zip(row).zip(&w) {
                *o = *v as f64 / (ms + eps).sqrt() * *wv as f64;
            }
        }
        for which in [Impl::Fastest, Impl::Reference] {
            let got = rms_norm_with(
                which,
                t3(&x, [batch, len, d], &dev),
                Tensor::from_data(TensorData::new(w.clone(), [d]), &dev),
                eps,
            );
            let e = max_rel(&host(got), &want);
            assert!(e < 1e-6, "{which:?}: rel err {e:e} (d {d}, eps {eps})");
        }
    }
}

#[test]
fn fused_add_and_norm_match_reference_and_oracle() {
    // `(x + y, RMSNorm(x + y))` on the CPU (fused loop) and as tensor operations, against an
    // f64 loop; the norm in f32 and rounded to f16 (within f16's half-unit, 2^-11 relative).
    let dev = Device::flex();
    let mut rng = StdRng::seed_from_u64(8);
    for &(batch, len, d, eps) in &[(1, 1, 3, 1e-5), (2, 70, 64, 1e-3), (3, 5, 37, 1e-6)] {
        let n = batch * len * d;
        let (x, y, w) = (
            rand_vec(&mut rng, n),
            rand_vec(&mut rng, n),
            rand_vec(&mut rng, d),
        );
        let sum: Vec<f64> = x
            .iter()
            .zip(&y)
            .map(|(a, b)| *a as f64 + *b as f64)
            .collect();
        let mut want = vec![0.0f64; n];
        for (row, out) in sum.chunks(d).zip(want.chunks_mut(d)) {
            let ms = row.iter().map(|v| v * v).sum::<f64>() / d as f64;
            for ((o, v), wv) in out.iter_mut().zip(row).zip(&w) {
                *o = v / (ms + eps).sqrt() * *wv as f64;
            }
        }
        for which in [Impl::Fastest, Impl::Reference] {
            for (out, tol) in [(FloatDType::F32, 1e-6), (FloatDType::F16, 6e-4)] {
                let (s, normed) = add_rms_norm_with(
                    which,
                    t3(&x, [batch, len, d], &dev),
                    t3(&y, [batch, len, d], &dev),
                    Tensor::from_data(TensorData::new(w.clone(), [d]), &dev),
                    eps,
                    out,
                );
                assert_eq!(normed.dtype(), out.into(), "{which:?}: output format");
                let es = max_rel(&host(s), &sum);
                let en = max_rel(&host(normed), &want);
                assert!(es < 1e-7, "{which:?}: sum rel err {es:e}");
                assert!(en < tol, "{which:?} {out:?}: norm rel err {en:e} (d {d})");
            }
        }
        // The final norm (no sum) gives the f32 norm above.
        let normed = add_rms_norm_only(
            t3(&x, [batch, len, d], &dev),
            t3(&y, [batch, len, d], &dev),
            Tensor::from_data(TensorData::new(w.clone(), [d]), &dev),
            eps,
        );
        let en = max_rel(&host(normed), &want);
        assert!(en < 1e-6, "norm only: rel err {en:e} (d {d})");
    }
}

#[test]
fn gradients_flow_through_the_block_ops_on_autodiff() {
    // Gradient of sum(conv_silu(x)) w.r.t. the weight, checked by central differences.
    let dev = Device::flex().autodiff();
    let mut rng = StdRng::seed_from_u64(9);
    let (batch, len, d, k) = (2, 6, 3, 4);
    let x = rand_vec(&mut rng, batch * len * d);
    let win = rand_vec(&mut rng, batch * (k - 1) * d);
    let w = rand_vec(&mut rng, k * d);
    let bias = rand_vec(&mut rng, d);
    let loss = |wv: &[f32]| -> f64 {
        let (u, _) = conv_oracle(&x, &win, wv, &bias, (batch, len, d, k, d));
        u.iter().sum()
    };
    let wt: Tensor<2> = Tensor::from_data(TensorData::new(w.clone(), [k, d]), &dev).require_grad();
    let (u, _) = causal_conv_silu_with(
        Impl::Fastest,
        t3(&x, [batch, len, d], &dev),
        t3(&win, [batch, k - 1, d], &dev),
        wt.clone(),
        Tensor::from_data(TensorData::new(bias.clone(), [d]), &dev),
    );
    let grads = u.sum().backward();
    let g = host(wt.grad(&grads).expect("weight gradient"));
    for i in 0..w.len() {
        let (mut p, mut m) = (w.clone(), w.clone());
        p[i] += 1e-3;
        m[i] -= 1e-3;
        let fd = (loss(&p) - loss(&m)) / 2e-3;
        assert!(
            (g[i] as f64 - fd).abs() < 2e-3 * (1.0 + fd.abs()),
            "w[{i}]: {} vs {fd}",
            g[i]
        );
    }
}

#[test]
fn conv_dbc_is_the_conv_then_the_projections_with_their_gradients() {
    // `conv_dbc` (one operation, so that a GPU backend can fuse it) against
    // `causal_conv_silu` then `project_dbc`: the same outputs (on the CPU it is that
    // composition, fused convolution included), the references' within rounding, and the same
    // gradients on an autodiff device.
    let mut rng = StdRng::seed_from_u64(21);
    let (batch, len, d, k, dt_rank, d_state) = (2, 9, 6, 4, 3, 2);
    let n_x = dt_rank + 2 * d_state;
    let x = rand_vec(&mut rng, batch * len * 2 * d);
    let win = rand_vec(&mut rng, batch * (k - 1) * d);
    let w = rand_vec(&mut rng, k * d);
    let bias = rand_vec(&mut rng, d);
    let w_x = rand_vec(&mut rng, d * n_x);
    let w_dt = rand_vec(&mut rng, dt_rank * d);
    let dt_bias = rand_vec(&mut rng, d);
    let t2 = |v: &[f32], s: [usize; 2], dev: &Device| -> Tensor<2> {
        Tensor::from_data(TensorData::new(v.to_vec(), s), dev)
    };
    let t1 = |v: &[f32], dev: &Device| -> Tensor<1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), dev)
    };
    let dev = Device::flex();
    let run = |which: Impl| {
        let out = conv_dbc_with(
            which,
            t3(&x, [batch, len, 2 * d], &dev),
            t3(&win, [batch, k - 1, d], &dev),
            t2(&w, [k, d], &dev),
            t1(&bias, &dev),
            t2(&w_x, [d, n_x], &dev),
            t2(&w_dt, [dt_rank, d], &dev),
            t1(&dt_bias, &dev),
        );
        [out.u, out.window, out.delta, out.b, out.c].map(host)
    };
    let (u, next) = causal_conv_silu_with(
        Impl::Fastest,
        t3(&x, [batch, len, 2 * d], &dev),
        t3(&win, [batch, k - 1, d], &dev),
        t2(&w, [k, d], &dev),
        t1(&bias, &dev),
    );
    let (delta, b, c) = project_dbc_with(
        Impl::Fastest,
        u.clone(),
        t2(&w_x, [d, n_x], &dev),
        t2(&w_dt, [dt_rank, d], &dev),
        t1(&dt_bias, &dev),
    );
    let apart = [u, next, delta, b, c].map(host);
    let fused = run(Impl::Fastest);
    let reference = run(Impl::Reference);
    let names = ["u", "window", "delta", "B", "C"];
    for (i, name) in names.iter().enumerate() {
        assert_eq!(
            fused[i], apart[i],
            "{name}: conv_dbc differs from the two operations"
        );
        let want: Vec<f64> = reference[i].iter().map(|&v| v as f64).collect();
        let e = max_rel(&fused[i], &want);
        assert!(e < 1e-5, "{name}: {e:e} against the reference");
    }
    assert!(fused[2].iter().all(|&v| v > 0.0), "softplus is positive");

    // Gradients of a loss over all outputs w.r.t. every weight and the input, both ways.
    let ad = Device::flex().autodiff();
    let grads_of = |together: bool| -> Vec<Vec<f32>> {
        let xt = t3(&x, [batch, len, 2 * d], &ad).require_grad();
        let wt = t2(&w, [k, d], &ad).require_grad();
        let wxt = t2(&w_x, [d, n_x], &ad).require_grad();
        let wdt = t2(&w_dt, [dt_rank, d], &ad).require_grad();
        let (window, cb, db) = (
            t3(&win, [batch, k - 1, d], &ad),
            t1(&bias, &ad),
            t1(&dt_bias, &ad),
        );
        let (u, delta, b, c) = if together {
            let o = conv_dbc_with(
                Impl::Fastest,
                xt.clone(),
                window,
                wt.clone(),
                cb,
                wxt.clone(),
                wdt.clone(),
                db,
            );
            (o.u, o.delta, o.b, o.c)
        } else {
            let (u, _) = causal_conv_silu_with(Impl::Fastest, xt.clone(), window, wt.clone(), cb);
            let (delta, b, c) =
                project_dbc_with(Impl::Fastest, u.clone(), wxt.clone(), wdt.clone(), db);
            (u, delta, b, c)
        };
        let loss = u.sum() + delta.sum() * 0.5 + (b * c).sum();
        let g = loss.backward();
        vec![
            host(xt.grad(&g).expect("x gradient")),
            host(wt.grad(&g).expect("conv weight gradient")),
            host(wxt.grad(&g).expect("x_proj gradient")),
            host(wdt.grad(&g).expect("dt_proj gradient")),
        ]
    };
    let (g1, g2) = (grads_of(true), grads_of(false));
    for (i, name) in ["x", "conv weight", "x_proj", "dt_proj"].iter().enumerate() {
        assert!(g1[i].iter().any(|&v| v != 0.0), "{name}: zero gradient");
        assert_eq!(g1[i], g2[i], "{name} gradient");
    }
}

#[test]
fn project_silu_from_is_the_product_with_silu_on_the_gate_columns() {
    // in_proj with the gate's SiLU (`project_silu_from`) against a plain f64 loop: columns
    // before `from` are the product, the rest SiLU of it; `from` past the width leaves the
    // product; and gradients flow on an autodiff device (through the reference's ops).
    let mut rng = StdRng::seed_from_u64(31);
    let (batch, len, k, n) = (2, 5, 7, 12);
    let x = rand_vec(&mut rng, batch * len * k);
    let w = rand_vec(&mut rng, k * n);
    let wt =
        |dev: &Device| -> Tensor<2> { Tensor::from_data(TensorData::new(w.clone(), [k, n]), dev) };
    let dev = Device::flex();
    for from in [0, 5, 12, 20] {
        let want: Vec<f64> = (0..batch * len * n)
            .map(|i| {
                let (r, j) = (i / n, i % n);
                let p: f64 = (0..k)
                    .map(|q| x[r * k + q] as f64 * w[q * n + j] as f64)
                    .sum();
                if j >= from { p / (1.0 + (-p).exp()) } else { p }
            })
            .collect();
        for which in [Impl::Fastest, Impl::Reference] {
            let got = project_silu_from_with(which, t3(&x, [batch, len, k], &dev), wt(&dev), from);
            assert_eq!(got.dims(), [batch, len, n]);
            let e = max_rel(&host(got), &want);
            assert!(e < 1e-5, "from {from}: {e:e}");
        }
    }
    let ad = dev.autodiff();
    let xt = t3(&x, [batch, len, k], &ad).require_grad();
    let out = project_silu_from_with(Impl::Fastest, xt.clone(), wt(&ad), 5);
    let grads = out.sum().backward();
    let g = host(xt.grad(&grads).expect("gradient of x"));
    assert!(g.iter().all(|v| v.is_finite()) && g.iter().any(|&v| v != 0.0));
}

#[test]
fn project_add_is_the_stream_plus_the_product() {
    // out_proj with the residual add (`project_add`) against a plain f64 loop, in f32 (the sum
    // and its copy in the activation format are then equal) and with a half-precision `y`
    // (the copy is the sum rounded to f16); gradients flow to `y` and the stream.
    let mut rng = StdRng::seed_from_u64(37);
    let (batch, len, k, n) = (2, 6, 9, 8);
    let y = rand_vec(&mut rng, batch * len * k);
    let w = rand_vec(&mut rng, k * n);
    let x = rand_vec(&mut rng, batch * len * n);
    let dev = Device::flex();
    let wt =
        |dev: &Device| -> Tensor<2> { Tensor::from_data(TensorData::new(w.clone(), [k, n]), dev) };
    let want: Vec<f64> = (0..batch * len * n)
        .map(|i| {
            let (r, j) = (i / n, i % n);
            let p: f64 = (0..k)
                .map(|q| y[r * k + q] as f64 * w[q * n + j] as f64)
                .sum();
            x[i] as f64 + p
        })
        .collect();
    for which in [Impl::Fastest, Impl::Reference] {
        let (sum, half) = project_add_with(
            which,
            t3(&y, [batch, len, k], &dev),
            wt(&dev),
            t3(&x, [batch, len, n], &dev),
        );
        assert_eq!(sum.dims(), [batch, len, n]);
        let e = max_rel(&host(sum.clone()), &want);
        assert!(e < 1e-5, "sum: {e:e}");
        assert_eq!(host(sum), host(half), "f32: the copy is the sum");
        // In f16 the product is rounded before the add, the copy after it.
        let (sum, half) = project_add_with(
            which,
            t3(&y, [batch, len, k], &dev).cast(FloatDType::F16),
            wt(&dev).cast(FloatDType::F16),
            t3(&x, [batch, len, n], &dev),
        );
        let e = max_rel(&host(sum.clone()), &want);
        assert!(e < 2e-3, "f16 sum: {e:e}");
        assert_eq!(
            host(half),
            host(sum.cast(FloatDType::F16)),
            "f16: the copy is the sum rounded"
        );
    }
    let ad = dev.autodiff();
    let yt = t3(&y, [batch, len, k], &ad).require_grad();
    let xt = t3(&x, [batch, len, n], &ad).require_grad();
    let (sum, _) = project_add_with(Impl::Fastest, yt.clone(), wt(&ad), xt.clone());
    let grads = sum.sum().backward();
    let gy = host(yt.grad(&grads).expect("gradient of y"));
    let gx = host(xt.grad(&grads).expect("gradient of x"));
    assert!(gy.iter().all(|v| v.is_finite()) && gy.iter().any(|&v| v != 0.0));
    assert!(gx.iter().all(|&v| v == 1.0), "d sum / d stream is one");
}

#[test]
fn project_norm_silu_from_is_rms_norm_then_the_gated_product() {
    // in_proj of the norm (`project_norm_silu_from`) against a plain f64 loop: RMSNorm of each
    // row times the norm's scale, the product, SiLU from `from` on; gradients flow.
    let mut rng = StdRng::seed_from_u64(41);
    let (batch, len, k, n) = (2, 5, 8, 12);
    let eps = 1e-5;
    let x = rand_vec(&mut rng, batch * len * k);
    let norm = rand_vec(&mut rng, k);
    let w = rand_vec(&mut rng, k * n);
    let dev = Device::flex();
    let wt =
        |dev: &Device| -> Tensor<2> { Tensor::from_data(TensorData::new(w.clone(), [k, n]), dev) };
    let nt =
        |dev: &Device| -> Tensor<1> { Tensor::from_data(TensorData::new(norm.clone(), [k]), dev) };
    for from in [0, 4, 12] {
        let want: Vec<f64> = (0..batch * len * n)
            .map(|i| {
                let (r, j) = (i / n, i % n);
                let row = &x[r * k..(r + 1) * k];
                let ms: f64 = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / k as f64;
                let s = 1.0 / (ms + eps).sqrt();
                let p: f64 = (0..k)
                    .map(|q| row[q] as f64 * s * norm[q] as f64 * w[q * n + j] as f64)
                    .sum();
                if j >= from { p / (1.0 + (-p).exp()) } else { p }
            })
            .collect();
        for which in [Impl::Fastest, Impl::Reference] {
            let got = project_norm_silu_from_with(
                which,
                t3(&x, [batch, len, k], &dev),
                nt(&dev),
                wt(&dev),
                eps,
                from,
            );
            assert_eq!(got.dims(), [batch, len, n]);
            let e = max_rel(&host(got), &want);
            assert!(e < 1e-5, "from {from}: {e:e}");
        }
    }
    let ad = dev.autodiff();
    let xt = t3(&x, [batch, len, k], &ad).require_grad();
    let out = project_norm_silu_from_with(Impl::Fastest, xt.clone(), nt(&ad), wt(&ad), eps, 4);
    let grads = out.sum().backward();
    let g = host(xt.grad(&grads).expect("gradient of x"));
    assert!(g.iter().all(|v| v.is_finite()) && g.iter().any(|&v| v != 0.0));
}
