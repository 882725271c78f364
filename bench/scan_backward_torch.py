"""The selective scan's backward step in plain PyTorch on the GPU: the peer for
`examples/scan_backward_bench.rs`.

The same op as genomamba's scan (f32, d_state 16): Δ = softplus(delta + bias), h[t] = exp(Δ[t]·A)·
h[t-1] + Δ[t]·B[t]·u[t], y[t] = (C[t]·h[t] + D·u[t])·SiLU(z[t]), written as transformers'
MambaMixer writes it without the fused CUDA kernels (decays and inputs of all steps as
[batch, d_inner, L, d_state] tensors, a Python loop over time), differentiated by autograd with
respect to all nine inputs. Timed: the backward call alone (`torch.autograd.grad` of
sum(y·gy) + sum(h·gh)), after a forward with gradients, best and median of REPS, each between
two synchronisations; the same shapes as scan_backward_bench by default.

Usage: python3 bench/scan_backward_torch.py [BATCH LEN D_INNER [REPS]]   (default: the list, 5)
"""
import math
import sys
import time

import torch

from scan_torch import scan  # the forward, as the scan-alone peer writes it

D_STATE = 16
SHAPES = [(32, 200, 128), (8, 2048, 128), (64, 2048, 128), (8, 2048, 512)]


def inputs(batch, length, d_inner, device):
    g = torch.Generator(device=device).manual_seed(0)
    seq = lambda width: torch.randn(batch, width, length, generator=g, device=device)
    a = -torch.exp(torch.rand(d_inner, D_STATE, generator=g, device=device) * math.log(16))
    dt = 0.001 + torch.rand(d_inner, generator=g, device=device) * (0.1 - 0.001)
    bias = torch.log(torch.expm1(dt))
    x = dict(u=seq(d_inner), delta=seq(d_inner), a=a, b=seq(D_STATE), c=seq(D_STATE),
             d=torch.randn(d_inner, generator=g, device=device), z=seq(d_inner), bias=bias,
             h0=torch.randn(batch, d_inner, D_STATE, generator=g, device=device))
    for v in x.values():
        v.requires_grad_(True)
    gy = torch.randn(batch, d_inner, length, generator=g, device=device)
    gh = torch.randn(batch, d_inner, D_STATE, generator=g, device=device)
    return x, gy, gh


def main():
    args = [int(v) for v in sys.argv[1:]]
    shapes = [tuple(args[:3])] if len(args) >= 3 else SHAPES
    reps = args[3] if len(args) > 3 else 5
    device = torch.device("cuda")
    print(f"PyTorch {torch.__version__} scan backward on {torch.cuda.get_device_name(0)}: "
          f"f32, d_state {D_STATE}, best and median of {reps}")
    print(f"{'batch':>6} {'L':>6} {'d_inner':>8} {'best ms':>10} {'median ms':>10} {'peak GiB':>9}")
    for batch, length, d_inner in shapes:
        x, gy, gh = inputs(batch, length, d_inner, device)
        torch.cuda.reset_peak_memory_stats()
        times = []
        for i in range(reps + 1):  # the first is a warm-up
            y, h = scan(**x)
            loss = (y * gy).sum() + (h * gh).sum()
            torch.cuda.synchronize()
            start = time.perf_counter()
            torch.autograd.grad(loss, list(x.values()))
            torch.cuda.synchronize()
            if i > 0:
                times.append(time.perf_counter() - start)
        times.sort()
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"{batch:>6} {length:>6} {d_inner:>8} {times[0] * 1e3:>10.1f} "
              f"{times[len(times) // 2] * 1e3:>10.1f} {peak:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
