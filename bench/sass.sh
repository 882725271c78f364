#!/usr/bin/env bash
# Machine code of the selective-scan kernels for an H200 (sm_90), without a GPU: writes the CUDA
# C++ that CubeCL's C++ backend generates (examples/kernel_source.rs), compiles it with
# `nvcc -cubin -arch=sm_90`, and prints per kernel the registers and spills ptxas reports and
# the instructions of the kernel's time-step loop (the shortest backward branch holding the most
# MUFU instructions), by opcode.
#
# Needs a CUDA toolkit's nvcc and cuobjdump (Debian: `nvidia-cuda-toolkit`, from the non-free
# component; CUDA 11.8 there). NVCC names the compiler (default `nvcc`). Caution: with an `nvcc`
# on PATH, cudarc's build script takes that toolkit's version for the bindings it compiles, and
# CUDA 11.8's lack the tensor-map API cubecl-cuda uses, so `--features cuda` then fails to build;
# keep the toolkit's nvcc off PATH while building (e.g. rename it to nvcc-11.8, NVCC=nvcc-11.8).
#
# Usage: bash bench/sass.sh [D_STATE]   (run from the repository root; default 16)
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-nvcc}
D_STATE=${1:-16}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
# KERNEL_SOURCE: an already built `kernel_source` example (building it alone with `cargo run`
# can unify features differently from the other release targets and rebuild Burn).
if [ -n "${KERNEL_SOURCE:-}" ]; then
  "$KERNEL_SOURCE" "$dir/src" "$D_STATE" > /dev/null
else
  cargo run -q --release --features cuda --example kernel_source -- "$dir/src" "$D_STATE" > /dev/null
fi
for cu in "$dir"/src/*.cu; do
  name=$(basename "$cu" .cu)
  # NVRTC compiles without the host's headers, so CubeCL declares the fixed-width integer types
  # itself; nvcc includes them, so take them from <cstdint> instead.
  { echo '#include <cstdint>'; sed '/^typedef .*int[0-9]*_t;$/d' "$cu"; } > "$dir/$name.cu"
  regs=$("$NVCC" -cubin -arch=sm_90 -Xptxas -v -o "$dir/$name.cubin" "$dir/$name.cu" 2>&1 |
    grep -oE 'Used [0-9]+ registers|[0-9]+ bytes spill stores' | tr '\n' ' ')
  cuobjdump -sass "$dir/$name.cubin" > "$dir/$name.sass"
  loop=$(python3 - "$dir/$name.sass" <<'PY'
import collections, re, sys
ins = []
for line in open(sys.argv[1]):
    m = re.match(r'\s+/\*([0-9a-f]{4,})\*/\s+(.*?);', line)
    if m:
        ins.append((int(m.group(1), 16), m.group(2).strip()))
loops = []
for addr, text in ins:
    m = re.search(r'BRA\s+0x([0-9a-f]+)', text)
    if m and int(m.group(1), 16) < addr:
        loops.append((int(m.group(1), 16), addr))
if not loops:
    print('no loop')
    sys.exit()
def count(lo, hi):
    ops = collections.Counter()
    for addr, text in ins:
        if lo <= addr <= hi:
            words = text.split()
            op = words[1] if words[0].startswith('@') else words[0]
            ops[op.split('.')[0]] += 1
    return ops
# The time-step loop: of the loops holding the most MUFU instructions, the shortest (an outer
# loop over staged tiles of rows holds the step loop and the staging code around it).
counted = [(count(lo, hi), lo, hi) for lo, hi in loops]
most = max(c['MUFU'] for c, _, _ in counted)
ops = min((c for c in counted if c[0]['MUFU'] == most), key=lambda c: c[2] - c[1])[0]
print('loop %d instructions (MUFU %d, LDG %d):' % (sum(ops.values()), ops['MUFU'], ops['LDG']),
      ' '.join('%s %d' % kv for kv in ops.most_common()))
PY
)
  echo "$name: $regs| $loop"
done
