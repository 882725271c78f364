#!/usr/bin/env bash
# Run on the GPU machine from the repository root, with gpu/scan_bench.xz holding the stripped,
# xz-compressed `--features cuda` build of examples/scan_bench.rs. Times the scan alone
# (best of 10 after a warm-up) at the Mamba paper's setting (L up to 2^20, d_inner 1024, f32)
# and at the layer shape of the chr20 runs (L = 65,536 per chunk, d_inner 512) in f16, f32 and
# bf16, once per choice of GENOMAMBA_SCAN_PREFETCH (which passes load later steps' inputs
# ahead; `default` leaves the variable unset, i.e. the choice in src/ops/scan_cube.rs; how
# far ahead is GENOMAMBA_SCAN_DEPTH, 1 to 4; by default four in pass 1, two in pass 3).
# Prints the rows of L = 65,536 and L = 2^20.
set -u
python3 -c "import lzma,shutil; shutil.copyfileobj(lzma.open('gpu/scan_bench.xz'), open('/tmp/sb','wb'))"
chmod +x /tmp/sb
for v in ${VARIANTS:-default none pass1 pass3 both}; do
  for shape in "20 1024 f32" "16 512 f16" "16 512 f32" "16 512 bf16"; do
    if [ "$v" = default ]; then unset GENOMAMBA_SCAN_PREFETCH; else export GENOMAMBA_SCAN_PREFETCH=$v; fi
    timeout 60 /tmp/sb $shape 2>&1 | awk -v tag="$v $shape" '$1 == 65536 || $1 == 1048576 { print tag ": L " $1 " best " $2 " ms, " $6 " GB/s" }'
  done
done
