#!/usr/bin/env bash
# Run on the GPU machine from the repository root, with SCAN_BENCH naming the `--features cuda`
# build of examples/scan_bench.rs. The scan alone at the Mamba paper's setting (batch 1,
# d_inner 1024, d_state 16, f32): genomamba's kernels for L = 2^12 .. 2^20, and the same op in
# plain PyTorch (bench/scan_torch.py, the loop transformers falls back to) for L = 2^12 ..
# 2^TORCH_MAX (default 16: its per-step loop takes minutes beyond), then the ratio per length.
set -u
SCAN_BENCH=${SCAN_BENCH:-/tmp/sb}
TORCH_MAX=${TORCH_MAX:-16}
"$SCAN_BENCH" 20 1024 f32 | tee /tmp/scan_ours.txt
python3 bench/scan_torch.py "$TORCH_MAX" 1024 3 | tee /tmp/scan_torch.txt
python3 - <<'PY'
def rows(path):
    out = {}
    for line in open(path):
        f = line.split()
        if f and f[0].isdigit():
            out[int(f[0])] = float(f[1])
    return out
ours, torch = rows('/tmp/scan_ours.txt'), rows('/tmp/scan_torch.txt')
print(f"{'L':>9} {'genomamba ms':>13} {'PyTorch ms':>11} {'ratio':>9}")
for length in sorted(ours):
    if length in torch:
        print(f"{length:>9} {ours[length]:>13.3f} {torch[length]:>11.1f} {torch[length] / ours[length]:>8.0f}x")
PY
