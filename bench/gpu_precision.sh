#!/usr/bin/env bash
# Run on the GPU machine from the repository root, with gpu/ holding hg19_chr20.fa.gz (+ .fai,
# .gzi) and the stripped, xz-compressed binary named by BIN (default gpu/genomamba.xz, the
# `--features cuda` build; gpu/genomamba-autotune.xz for `--features cuda-autotune`, run it
# twice to see the persistent tuning cache at work). Times whole chr20 per --precision.
set -u
BIN=${BIN:-gpu/genomamba.xz}
python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open('/tmp/g','wb'))" "$BIN"; chmod +x /tmp/g
G=/tmp/g; FA=gpu/hg19_chr20.fa.gz
$G init -o /tmp/m256 --d-model 256 --n-layer 16 --seed 1 --force 2>&1 | tail -1
run() { # precision mb region chunk
  local p=$1 mb=$2 reg=$3 chunk=$4 ra=""
  [ "$reg" = whole ] || ra="--region $reg"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > /tmp/mem.log & P=$!
  s=$(date +%s.%N)
  timeout 200 $G embed -m /tmp/m256 $FA $ra -o /tmp/o_${p}_${mb}_${chunk}.tsv -q --device cuda \
    --chunk-size $chunk --precision $p; rc=$?
  e=$(date +%s.%N); kill $P 2>/dev/null; wait $P 2>/dev/null
  python3 -c "
s,e=float('$s'),float('$e'); mem=[int(x) for x in open('/tmp/mem.log').read().split() if x.isdigit()]
b={'1':1e6,'4':4e6,'16':16e6,'63':63025520}['$mb']
print('$BIN $p $mb Mb chunk $chunk: rc $rc %.2f s %s bases/s peak GPU mem %d MiB' % (e-s, format(int(b/(e-s)),','), max(mem) if mem else -1))"
}
for spec in "f16 1 20:30000001-31000000 65536" "f16 4 20:30000001-34000000 65536" \
  "f16 16 20:30000001-46000000 65536" "f16 63 whole 65536" "bf16 63 whole 65536" \
  "f32 63 whole 65536" "f16 63 whole 8192"; do
  set -- $spec; run $1 $2 $3 $4
done
python3 - <<'PY'
import numpy as np
a = np.loadtxt('/tmp/o_f32_63_65536.tsv', skiprows=1, usecols=range(2, 258))
for p in ['bf16', 'f16']:
    b = np.loadtxt('/tmp/o_%s_63_65536.tsv' % p, skiprows=1, usecols=range(2, 258))
    print("chr20 mean-pooled %s vs f32: max rel %.2e" % (p, abs(a - b).max() / abs(a).max()))
PY
