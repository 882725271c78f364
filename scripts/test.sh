#!/usr/bin/env bash
# The whole test suite: every test on Burn's CPU backend (`cargo test`), then the CubeCL
# kernel tests (tests/gpu_scan.rs: the selective scan and the causal convolution against their
# references) on CubeCL's CPU runtime, so no GPU is needed. On a machine with an NVIDIA GPU,
# `cargo test --release --features cuda --test gpu_scan` runs the same tests there.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test
# CubeCL's build needs an LLVM; on machines without internet access, the workplace's stand-in
# installs Debian's (elsewhere CubeCL's build script downloads its own).
standin=../shared/tools/cubecl-llvm-standin.sh
if [ -f "$standin" ]; then
  bash "$standin"
fi
cargo test --features cube-cpu --test gpu_scan -- --test-threads 1
