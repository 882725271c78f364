#!/usr/bin/env bash
# Run on the GPU machine from the repository root, with gpu/ holding genomamba.xz (the stripped,
# xz-compressed `--features cuda` release binary; or bins.tar.xz, a tar of it named `new`) and
# hg19_chr20.fa.gz with its .fai and .gzi. Timings in f16 at the default chunk (524,288 on a
# GPU) and at 262,144 (the default from the seventeenth to the thirty-first session); PROFILE=1
# adds `ncu`'s GPU time per kernel over 524,288 positions (two chunks of 262,144).
set -u
if [ -e gpu/bins.tar.xz ]; then
  python3 -c "import lzma,tarfile; tarfile.open(fileobj=lzma.open('gpu/bins.tar.xz')).extractall('/tmp')"; cp /tmp/new /tmp/g
else
  python3 -c "import lzma,shutil; shutil.copyfileobj(lzma.open('gpu/genomamba.xz'), open('/tmp/g','wb'))"
fi
chmod +x /tmp/g
G=/tmp/g; FA=gpu/hg19_chr20.fa.gz
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
$G init -o /tmp/m256 --d-model 256 --n-layer 16 --seed 1 --force 2>&1 | tail -1
echo "== correctness: mean-pooled 200 kb, per-position 1 Mb, cuda vs cpu (defaults, f32)"
R=20:31000001-31200000
TIMEFORMAT="cpu %R s"; time $G embed -m /tmp/m256 $FA --region $R -o /tmp/cpu.tsv -q --device cpu
TIMEFORMAT="cuda %R s"; time $G embed -m /tmp/m256 $FA --region $R -o /tmp/gpu.tsv -q --device cuda
P=20:30000001-31000000
$G embed -m /tmp/m256 $FA --region $P -o /tmp/npc -q --device cpu --pool none --format npy
$G embed -m /tmp/m256 $FA --region $P -o /tmp/npg -q --device cuda --pool none --format npy
python3 - <<'PY'
import glob, numpy as np
a=np.loadtxt('/tmp/cpu.tsv',skiprows=1,usecols=range(2,258)); b=np.loadtxt('/tmp/gpu.tsv',skiprows=1,usecols=range(2,258))
print("mean-pooled 200 kb: max|gpu-cpu|/max|cpu| = %.2e" % (abs(a-b).max()/abs(a).max()))
x=np.load(glob.glob('/tmp/npc/*.npy')[0]); y=np.load(glob.glob('/tmp/npg/*.npy')[0])
print("per-position 1 Mb:", x.shape, "max rel %.2e" % (abs(x-y).max()/abs(x).max()), "mean abs %.2e" % abs(x-y).mean())
PY
echo "== timings (cuda, f16), peak GPU memory from nvidia-smi every 100 ms"
$G embed -m /tmp/m256 $FA --region $P -o /tmp/t.tsv -q --device cuda --precision f16 # compile
for spec in "1 20:30000001-31000000" "4 20:30000001-34000000" "16 20:30000001-46000000" "63 whole"; do
  set -- $spec; mb=$1; reg=$2
  if [ "$reg" = whole ]; then ra=""; else ra="--region $reg"; fi
  for chunk in default 262144; do
    if [ $chunk = default ]; then ca=""; else ca="--chunk-size $chunk"; fi
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > /tmp/mem.log & P=$!
    s=$(date +%s.%N)
    timeout 200 $G embed -m /tmp/m256 $FA $ra -o /tmp/t.tsv -q --device cuda --precision f16 $ca; rc=$?
    e=$(date +%s.%N); kill $P 2>/dev/null; wait $P 2>/dev/null
    python3 -c "
import sys; s,e,mb,ch,rc=float('$s'),float('$e'),'$mb','$chunk','$rc'
mem=[int(x) for x in open('/tmp/mem.log').read().split() if x.strip().isdigit()]
bases={'1':1e6,'4':4e6,'16':16e6,'63':63025520}[mb]
print(f'{mb} Mb chunk {ch}: rc {rc} {e-s:.2f} s {bases/(e-s):,.0f} bases/s peak GPU mem {max(mem) if mem else -1} MiB')"
  done
done
if [ "${PROFILE:-0}" = 1 ]; then
  echo "== GPU time per kernel, two chunks of 262,144, f16 (ncu, clocks left alone)"
  ncu --clock-control none --metrics gpu__time_duration.sum --csv --page raw \
    $G embed -m /tmp/m256 $FA --region 20:30000001-30524288 -o /tmp/n.tsv -q --device cuda \
    --precision f16 --chunk-size 262144 > /tmp/ncu.csv 2>/dev/null
  python3 - <<'PY'
import csv, collections
rows = list(csv.reader(open('/tmp/ncu.csv')))
h = next(i for i, r in enumerate(rows) if r and r[0] == 'ID')
name, dur = rows[h].index('Kernel Name'), rows[h].index('gpu__time_duration.sum')
agg = collections.defaultdict(lambda: [0, 0.0])
for r in rows[h + 2:]:
    a = agg[r[name].split('_lhs_')[0][:40]]; a[0] += 1; a[1] += float(r[dur].replace(',', '')) / 1e3
total = sum(t for _, t in agg.values())
print(f"total {total:.1f} us")
for k, (n, t) in sorted(agg.items(), key=lambda x: -x[1][1])[:16]:
    print(f"{t:10.1f} us {100 * t / total:5.1f}% {n:5d} launches  {k}")
PY
fi
