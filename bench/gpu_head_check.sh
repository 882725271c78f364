#!/usr/bin/env bash
# On the GPU machine, from the repository root, with gpu/ holding g.xz (the stripped,
# xz-compressed `--features cuda` release binary), hg19_chr20.fa.gz with its .fai and .gzi, and
# cpg.bed (chr20 CpG islands, three columns). GPU against CPU (200 kb mean-pooled, 1 Mb per
# position, 200 CpG islands named by --bed-names), whole chr20 in f16 twice and in f32, the
# 1/4/16 Mb scaling runs with peak GPU memory, and the one-line device errors.
set -u
python3 -c "import lzma,shutil; shutil.copyfileobj(lzma.open('gpu/g.xz'), open('/tmp/g','wb'))"; chmod +x /tmp/g
G=/tmp/g; FA=gpu/hg19_chr20.fa.gz
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
$G init -o /tmp/m256 --d-model 256 --n-layer 16 --seed 1 --force 2>&1 | tail -1
R=20:31000001-31200000; P=20:30000001-31000000
TIMEFORMAT="cpu 200 kb %R s"; time $G embed -m /tmp/m256 $FA --region $R -o /tmp/cpu.tsv -q --device cpu
TIMEFORMAT="cuda 200 kb %R s"; time $G embed -m /tmp/m256 $FA --region $R -o /tmp/gpu.tsv -q --device cuda
$G embed -m /tmp/m256 $FA --region $P -o /tmp/npc -q --device cpu --pool none --format npy
$G embed -m /tmp/m256 $FA --region $P -o /tmp/npg -q --device cuda --pool none --format npy
head -200 gpu/cpg.bed | awk 'BEGIN{OFS="\t"}{print $1,$2,$3,"cpg_" NR}' > /tmp/cpg200.bed
TIMEFORMAT="cpu 200 CpG islands %R s"; time $G embed -m /tmp/m256 $FA --regions-bed /tmp/cpg200.bed -o /tmp/bc.tsv -q --device cpu --bed-names
TIMEFORMAT="cuda 200 CpG islands %R s"; time $G embed -m /tmp/m256 $FA --regions-bed /tmp/cpg200.bed -o /tmp/bg.tsv -q --device cuda --bed-names
python3 - <<'PY'
import glob, numpy as np
def tsv(p):
    rows=[l.rstrip('\n').split('\t') for l in open(p)][1:]
    return [r[0] for r in rows], np.array([[float(x) for x in r[2:]] for r in rows])
ia,a=tsv('/tmp/cpu.tsv'); ib,b=tsv('/tmp/gpu.tsv')
print("mean-pooled 200 kb: max|gpu-cpu|/max|cpu| = %.2e" % (abs(a-b).max()/abs(a).max()))
x=np.load(glob.glob('/tmp/npc/*.npy')[0]); y=np.load(glob.glob('/tmp/npg/*.npy')[0])
print("per-position 1 Mb:", x.shape, "max rel %.2e" % (abs(x-y).max()/abs(x).max()), "mean abs %.2e" % abs(x-y).mean())
ia,a=tsv('/tmp/bc.tsv'); ib,b=tsv('/tmp/bg.tsv')
assert ia==ib==['cpg_%d' % (i+1) for i in range(200)], (len(ia), ia[:2], ib[:2])
print("--regions-bed 200 CpG islands:", ia[0], "...", ia[-1], "max rel %.2e" % (abs(a-b).max()/abs(a).max()))
PY
echo "== whole chr20, f16, default chunk, twice (first after a 1 Mb warm-up)"
$G embed -m /tmp/m256 $FA --region $P -o /tmp/t.tsv -q --device cuda --precision f16
for i in 1 2; do
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > /tmp/mem.log & M=$!
  s=$(date +%s.%N); $G embed -m /tmp/m256 $FA -o /tmp/w$i.tsv -q --device cuda --precision f16; rc=$?
  e=$(date +%s.%N); kill $M
  echo "run $i rc=$rc $(python3 -c "print('%.2f s, %.0f bases/s' % ($e-$s, 63025520/($e-$s)))") peak $(sort -n /tmp/mem.log | tail -1) MiB"
done
echo "== scaling, f16, default chunk"
for spec in "1 20:30000001-31000000" "4 20:30000001-34000000" "16 20:30000001-46000000"; do
  set -- $spec
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > /tmp/mem.log & M=$!
  s=$(date +%s.%N); $G embed -m /tmp/m256 $FA --region $2 -o /tmp/s.tsv -q --device cuda --precision f16; rc=$?
  e=$(date +%s.%N); kill $M
  echo "$1 Mb rc=$rc $(python3 -c "print('%.2f s' % ($e-$s))") peak $(sort -n /tmp/mem.log | tail -1) MiB"
done
echo "== f32 whole chr20 once"
s=$(date +%s.%N); $G embed -m /tmp/m256 $FA -o /tmp/w3.tsv -q --device cuda; e=$(date +%s.%N)
python3 -c "print('f32 %.2f s' % ($e-$s))"
python3 - <<'PY'
import numpy as np
r=[np.array([float(x) for x in open(p).read().splitlines()[1].split('\t')[2:]]) for p in ('/tmp/w1.tsv','/tmp/w3.tsv')]
print("whole chr20 mean-pooled f16 vs f32: %.2e" % (abs(r[0]-r[1]).max()/abs(r[1]).max()))
PY
echo "== device errors"
BIN=/tmp/g bash scripts/gpu_device_errors.sh 2>&1 | tail -14
