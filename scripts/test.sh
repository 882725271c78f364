#!/usr/bin/env bash
# The whole test suite, on the CPU: every test with the CubeCL kernels built in for CubeCL's
# CPU runtime (`--features cube-cpu`), then the kernel tests themselves (tests/gpu_scan.rs: the
# selective scan, the convolution and the projections against their references) on that
# runtime, one at a time. Both commands share one build: building the suite once without the
# feature and once with it took 9 + 31 minutes of a 57-minute CI run on 2 cores. On a machine
# with an NVIDIA GPU, `cargo test --release --features cuda --test gpu_scan` runs the kernel
# tests there.
set -euo pipefail
cd "$(dirname "$0")/.."
# CubeCL's build needs an LLVM; on machines without internet access, the workplace's stand-in
# installs Debian's (elsewhere CubeCL's build script downloads its own).
standin=../shared/tools/cubecl-llvm-standin.sh
if [ -f "$standin" ]; then
  bash "$standin"
fi
cargo test --features cube-cpu
cargo test --features cube-cpu --test gpu_scan -- --test-threads 1
