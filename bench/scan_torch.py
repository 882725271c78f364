"""The selective scan in plain PyTorch on the GPU: the peer for `examples/scan_bench.rs`.

The same op as genomamba's scan (batch 1, d_inner channels, d_state 16, f32): Δ = softplus(delta +
bias), h[t] = exp(Δ[t]·A)·h[t-1] + Δ[t]·B[t]·u[t], y[t] = (C[t]·h[t] + D·u[t])·SiLU(z[t]),
computed the way transformers' MambaMixer computes it without the fused CUDA kernels: the decays
and inputs of all steps materialised as [batch, d_inner, L, d_state] tensors, then a Python loop
over time, one state update and one product with C per step. Inputs drawn as scan_bench draws
them. Prints, per length, the best time of REPS calls (each between two synchronisations) and the
bandwidth against the same byte floor as scan_bench (u, delta, z, B, C read once, y written once).

Usage: python3 bench/scan_torch.py [MAX_LOG2 [D_INNER [REPS]]]   (defaults 16, 1024, 3)
"""
import math
import sys
import time

import torch

D_STATE = 16


def inputs(length, d_inner, device):
    g = torch.Generator(device=device).manual_seed(0)
    seq = lambda width: torch.randn(1, width, length, generator=g, device=device)
    a = -torch.exp(torch.rand(d_inner, D_STATE, generator=g, device=device) * math.log(16))
    dt = 0.001 + torch.rand(d_inner, generator=g, device=device) * (0.1 - 0.001)
    bias = torch.log(torch.expm1(dt))
    return dict(u=seq(d_inner), delta=seq(d_inner), a=a, b=seq(D_STATE), c=seq(D_STATE),
                d=torch.randn(d_inner, generator=g, device=device), z=seq(d_inner), bias=bias)


def scan(u, delta, a, b, c, d, z, bias, h0=None):
    # u, delta, z: [batch, d_inner, L]; b, c: [batch, d_state, L]; h0: [batch, d_inner, d_state]
    dt = torch.nn.functional.softplus(delta + bias[None, :, None])
    decay = torch.exp(a[None, :, None, :] * dt[..., None])                 # [B, D, L, N]
    drive = dt[..., None] * b.transpose(1, 2)[:, None] * u[..., None]      # [B, D, L, N]
    h = h0 if h0 is not None else torch.zeros(u.shape[0], u.shape[1], a.shape[1], device=u.device)
    ys = []
    for t in range(u.shape[2]):
        h = decay[:, :, t] * h + drive[:, :, t]
        ys.append(torch.matmul(h, c[:, :, t, None])[..., 0])
    y = torch.stack(ys, dim=-1) + u * d[None, :, None]
    return y * torch.nn.functional.silu(z), h


def main():
    max_log2 = int(sys.argv[1]) if len(sys.argv) > 1 else 16
    d_inner = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
    reps = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    device = torch.device("cuda")
    print(f"PyTorch {torch.__version__} scan on {torch.cuda.get_device_name(0)}: batch 1, "
          f"d_inner {d_inner}, d_state {D_STATE}, f32, best of {reps}")
    print(f"{'L':>9} {'best ms':>12} {'GB/s (best)':>12} {'peak GiB':>9}")
    for log2 in range(12, max_log2 + 1, 2):
        length = 1 << log2
        args = inputs(length, d_inner, device)
        torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            scan(**args)  # warm-up
            best = float("inf")
            for _ in range(reps):
                torch.cuda.synchronize()
                start = time.perf_counter()
                scan(**args)
                torch.cuda.synchronize()
                best = min(best, time.perf_counter() - start)
        floor = 4 * length * (4 * d_inner + 2 * D_STATE)
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"{length:>9} {best * 1e3:>12.1f} {floor / best / 1e9:>12.2f} {peak:>9.2f}",
              flush=True)


if __name__ == "__main__":
    main()
