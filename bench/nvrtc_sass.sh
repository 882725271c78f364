#!/usr/bin/env bash
# Machine code for an H200 (sm_90a) of CUDA C++ that CubeCL generated, without a GPU and without
# a CUDA toolkit install: compiles the file with NVRTC and the options cubecl-cuda uses
# (`--gpu-architecture=sm_90a`, its include path, `-lineinfo`), assembles the PTX with `ptxas`,
# and prints the registers and spills and the instruction mix (whole kernel, and the loop given
# by LOOP=lo-hi, hex addresses from the .sass it leaves beside the input).
#
# The compilers come from PyPI wheels (CUDA 13), in a virtual environment:
#   python3 -m venv /tmp/cudatk && /tmp/cudatk/bin/pip install nvidia-cuda-nvrtc \
#     nvidia-cuda-nvcc nvidia-cuda-runtime nvidia-cuda-cccl nvidia-cuda-cuobjdump
# (CUDATK names another environment.) Keep it off PATH while building with `--features cuda`.
# CubeCL hands NVRTC's PTX to the driver, whose own `ptxas` makes the machine code that runs: on
# the H200 (driver 580, CUDA 13.0) pass 3's step loop ran the same 267 opcodes in the same order
# as CUDA 13.0's `ptxas` makes here (`ncu` source page, BENCHMARKS.md, twenty-eighth session),
# while 13.5's makes 247. So for the machine code that runs,
# take the 13.0 wheels (`"nvidia-cuda-nvrtc==13.0.*" "nvidia-cuda-nvcc==13.0.*"
# "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*"`), copy `cuobjdump` and `nvdisasm`
# from a newer environment into its `bin`, and set LD_LIBRARY_PATH to its `lib` (NVRTC 13.0
# loads its builtins from there). `examples/kernel_source.rs` writes the scan kernels as the
# model runs them (`*_model_*.cu`).
# Sources: `GENOMAMBA_KERNEL_SOURCE_DIR=DIR cargo test --release --features cuda --lib --
# kernel_compiles` writes the tensor-core kernels' C++ to DIR.
#
# Usage: bash bench/nvrtc_sass.sh KERNEL.cu
set -euo pipefail
cu=$1
env=${CUDATK:-/tmp/cudatk}
base=$(echo "$env"/lib/python3*/site-packages/nvidia/cu13)
out=${cu%.cu}
python3 - "$cu" "$out.ptx" "$base" <<'PY'
import ctypes, sys
src, ptx_path, base = sys.argv[1:4]
lib = ctypes.CDLL(base + '/lib/libnvrtc.so.13')
prog = ctypes.c_void_p()
if lib.nvrtcCreateProgram(ctypes.byref(prog), open(src).read().encode(), None, 0, None, None):
    sys.exit('nvrtcCreateProgram failed')
opts = [b'--gpu-architecture=sm_90a', f'--include-path={base}/include'.encode(),
        f'--include-path={base}/include/cccl'.encode(), b'-lineinfo']
rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
size = ctypes.c_size_t()
if rc:
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    sys.exit(log.value.decode()[:4000])
lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
ptx = ctypes.create_string_buffer(size.value)
lib.nvrtcGetPTX(prog, ptx)
open(ptx_path, 'wb').write(ptx.value)
PY
"$base/bin/ptxas" -arch=sm_90a -v -o "$out.cubin" "$out.ptx" 2>&1 | grep -E 'registers|spill' | sed 's/^ptxas info *: //'
"$base/bin/cuobjdump" -sass "$out.cubin" > "$out.sass"
python3 - "$out.sass" "${LOOP:-}" <<'PY'
import collections, re, sys
ins = []
for line in open(sys.argv[1]):
    m = re.match(r'\s+/\*([0-9a-f]{4,})\*/\s+(.*?);', line)
    if m:
        ins.append((int(m.group(1), 16), m.group(2).strip()))
lo, hi = (int(x, 16) for x in sys.argv[2].split('-')) if sys.argv[2] else (0, 1 << 40)
ops = collections.Counter()
for addr, text in ins:
    if lo <= addr <= hi:
        words = text.split()
        ops[(words[1] if words[0].startswith('@') else words[0]).split('.')[0]] += 1
print('instructions', sum(ops.values()), ' '.join(f'{o}:{n}' for o, n in ops.most_common(16)))
print('backward branches (loops):', ' '.join(f'{hex(int(m.group(1), 16))}-{hex(a)}' for a, t in ins
      for m in [re.search(r'BRA\s+0x([0-9a-f]+)', t)] if m and int(m.group(1), 16) < a))
PY
