#!/usr/bin/env bash
# On the GPU machine, from the repository root, with gpu_t/ holding g.xz (the stripped,
# xz-compressed `--features cuda` release binary), ecoli_k12.fa.gz (+ .fai, .gzi) and
# ecoli_k12.features.bed. Trains a bidirectional per-position head with ORF features on
# E. coli CDS for one epoch on the GPU and on the CPU (same seed), then compares annotate's
# probabilities of the GPU-trained model on 200 kb, GPU against CPU.
set -u
python3 -c "import lzma,shutil; shutil.copyfileobj(lzma.open('gpu_t/g.xz'), open('/tmp/g','wb'))"; chmod +x /tmp/g
G=/tmp/g
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader
awk -v OFS='\t' '$4=="CDS"{print $1,$2,$3,"cds"}' gpu_t/ecoli_k12.features.bed > /tmp/cds.bed
wc -l < /tmp/cds.bed
for dev in cuda cpu; do
  s=$(date +%s.%N)
  $G train --fasta gpu_t/ecoli_k12.fa.gz --bed /tmp/cds.bed --d-model 64 --n-layer 4 --bidirectional \
    --orf-features --window 2048 --windows-per-epoch 256 --epochs 1 --seed 3 --device $dev \
    -o /tmp/orf_$dev 2>&1 | grep -v "^$" | tail -4
  e=$(date +%s.%N); python3 -c "print('$dev: %.1f s' % ($e-$s))"
done
$G annotate -m /tmp/orf_cuda gpu_t/ecoli_k12.fa.gz --region NC_000913:1-200000 --tsv /tmp/a_gpu.tsv --device cuda -q --digits 6
$G annotate -m /tmp/orf_cuda gpu_t/ecoli_k12.fa.gz --region NC_000913:1-200000 --tsv /tmp/a_cpu.tsv --device cpu -q --digits 6
python3 - <<'PY'
import numpy as np
def load(p):
    rows=[l.split('\t') for l in open(p).read().splitlines()[1:]]
    return np.array([[float(x) for x in r[3:]] for r in rows])
a,b=load('/tmp/a_gpu.tsv'),load('/tmp/a_cpu.tsv')
print("annotate 200 kb with ORF features, GPU vs CPU: rows %d, max |diff| %.2e" % (len(a), abs(a-b).max()))
PY
