//! Random inputs of the selective scan for the examples that time it (included with `#[path]`).

use burn::tensor::{Device, Distribution, FloatDType, Tensor};
use genomamba::ops::ScanArgs;

/// Inputs already on `device`, drawn as the Mamba paper's setting suggests: `u`, `delta`, `z`,
/// `B`, `C`, `D` standard normal (the sequences in `act`), `A = -exp(U(0, log 16))`, the Δ bias
/// the inverse softplus of `U(0.001, 0.1)`; `h0` zero, or standard normal with `random_h0`.
pub fn scan_inputs(
    [batch, len, d_inner, d_state]: [usize; 4],
    act: FloatDType,
    random_h0: bool,
    device: &Device,
) -> ScanArgs {
    let normal = Distribution::Normal(0.0, 1.0);
    let seq = |width: usize| Tensor::<3>::random([batch, len, width], normal, device).cast(act);
    let a = Tensor::<2>::random(
        [d_inner, d_state],
        Distribution::Uniform(0.0, 16f64.ln()),
        device,
    )
    .exp()
    .neg();
    let dt = Tensor::<1>::random([d_inner], Distribution::Uniform(0.001, 0.1), device);
    let delta_bias = (dt.exp() - 1.0).log();
    let h0 = if random_h0 {
        Tensor::<3>::random([batch, d_inner, d_state], normal, device)
    } else {
        Tensor::<3>::zeros([batch, d_inner, d_state], device)
    };
    ScanArgs {
        u: seq(d_inner),
        delta: seq(d_inner),
        a,
        b: seq(d_state),
        c: seq(d_state),
        d: Tensor::<1>::random([d_inner], normal, device),
        z: seq(d_inner),
        delta_bias,
        h0,
    }
}
