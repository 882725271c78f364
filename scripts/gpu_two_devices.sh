#!/usr/bin/env bash
# On a machine with two NVIDIA GPUs: `--device cuda:1` runs on the second GPU only (peak memory
# per GPU from nvidia-smi) and gives what cuda:0 gives, for embed and train; then the device
# error checks (scripts/gpu_device_errors.sh) with two GPUs. BIN: a `--features cuda` genomamba.
set -u
cd "$(dirname "$0")/.."
G=${BIN:-target/release/genomamba}; FA=${FA:-../shared/data/genomes/hg19_chr20.fa.gz}
nvidia-smi -L
$G init -o /tmp/m256 --d-model 256 --n-layer 16 --seed 1 --force 2>&1 | tail -1
R=20:30000001-31000000
run() { # run NAME ARGS...: peak memory per GPU while it runs
  local name=$1; shift
  nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 100 > /tmp/mem.log & local P=$!
  local s=$(date +%s.%N); "$@" 2>/tmp/err; local rc=$?; local e=$(date +%s.%N); kill $P
  echo "$name: rc=$rc $(python3 -c "print('%.2f s' % ($e-$s))"), peak MiB GPU0 $(awk -F', ' '$1==0{print $2}' /tmp/mem.log | sort -n | tail -1), GPU1 $(awk -F', ' '$1==1{print $2}' /tmp/mem.log | sort -n | tail -1) $(head -c 300 /tmp/err)"
}
for d in 0 1 0 1; do
  run "embed 1 Mb f32 cuda:$d" $G embed -m /tmp/m256 $FA --region $R -o /tmp/e$d.tsv -q --device cuda:$d
done
python3 - <<'PY'
import numpy as np
a=np.loadtxt('/tmp/e0.tsv',skiprows=1,usecols=range(2,258)); b=np.loadtxt('/tmp/e1.tsv',skiprows=1,usecols=range(2,258))
print("cuda:1 vs cuda:0, mean-pooled 1 Mb: max|diff| = %.3e (max|value| %.3f)" % (abs(a-b).max(), abs(a).max()))
PY
for d in 0 1; do
  run "train oct4/mafk 1 epoch cuda:$d" $G train -o /tmp/t$d --class oct4=data/peaks_oct4.fa --class mafk=data/peaks_mafk.fa \
    --epochs 1 --d-model 64 --n-layer 2 --batch-size 32 --seed 1 --device cuda:$d -q --force
done
python3 -c "
import json
for d in (0,1):
  l=[json.loads(x) for x in open('/tmp/t%d/metrics.jsonl'%d)]; print('cuda:%d'%d, {'train_loss': l[-1]['train_loss'], 'val_loss': l[-1]['val']['loss'], 'val_auroc': l[-1]['val'].get('auroc')})"
BIN=$G bash scripts/gpu_device_errors.sh 2>&1 | grep -E "cuda:2|cuda:99|failures"
