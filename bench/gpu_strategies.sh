#!/usr/bin/env bash
# Run on the GPU machine from the repository root, with gpu/ holding the stripped,
# xz-compressed `--features cuda` binary (gpu/genomamba.xz) and 8 Mb of chr20 as gpu/r8m.fa.gz
# (20:30,000,001-38,000,000). Times `embed` with each projection strategy (GENOMAMBA_MATMUL,
# see src/ops/project_cube.rs), twice each: the first run compiles the kernels (NVRTC, cached
# on disk), the second is the one to compare. Output lines: precision, strategy, exit status
# and seconds of the first and of the second run, and the largest difference of the mean-pooled
# embeddings from those of Burn's selection (`burn`, run first), relative to their largest value.
set -u
python3 -c "import lzma,shutil; shutil.copyfileobj(lzma.open('gpu/genomamba.xz'), open('/tmp/g','wb'))"; chmod +x /tmp/g
G=/tmp/g
$G init -o /tmp/m256 --d-model 256 --n-layer 16 --seed 1 --force > /dev/null 2>&1
t() {
  local s e rc
  s=$(date +%s.%N)
  GENOMAMBA_MATMUL=$1 timeout 60 $G embed -m /tmp/m256 gpu/r8m.fa.gz -o /tmp/s_$1_$2.tsv -q \
    --device cuda --precision $2 --chunk-size 65536; rc=$?
  e=$(date +%s.%N)
  python3 -c "print('%d %.2f' % ($rc, $e - $s))"
}
for prec in f16 f32; do
  for n in burn matmul_simple_cyclic_mma matmul_simple_cyclic_cmma_multi_rows \
    matmul_ordered_double_mma_partition_k2_row_count4_rows_per_plane2 \
    matmul_ordered_double_mma_partition_k2_row_count8_rows_per_plane2 \
    matmul_double_cyclic_mma_specialized; do
    timing="first $(t $n $prec) second $(t $n $prec)"
    diff=$(python3 -c "
import numpy as np
a = np.loadtxt('/tmp/s_burn_$prec.tsv', skiprows=1, usecols=range(2, 258))
b = np.loadtxt('/tmp/s_${n}_$prec.tsv', skiprows=1, usecols=range(2, 258))
print('%.2e' % (abs(a - b).max() / abs(a).max()))" 2>/dev/null || echo none)
    echo "$prec $n $timing vs burn $diff"
  done
done
