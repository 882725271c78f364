#!/usr/bin/env bash
# Run on the GPU machine from the repository root, with gpu/ holding genomamba.xz (a stripped,
# xz-compressed `--features cuda` release build) and the E. coli files of bench/gpu_train.sh.
# Training on E. coli windows of WINDOW bases (default 131,072) at batch BATCH (default 1),
# bidirectional, d_model 64, 3 layers: the last metrics line of two epochs with the backward
# kernel's time chunks (default) and without (GENOMAMBA_BACK_CHUNK=0), then `ncu` GPU time per
# kernel over the first LAUNCHES (default 3,000) launches of one epoch (bench/ncu_top.py),
# the report in $OUT/ncu.csv when OUT is set.
set -u
WINDOW=${WINDOW:-131072}; BATCH=${BATCH:-1}
python3 -c "import lzma,shutil; shutil.copyfileobj(lzma.open('gpu/genomamba.xz'), open('/tmp/genomamba','wb'))"; chmod +x /tmp/genomamba
train() {
  /tmp/genomamba train -o "$1" --fasta gpu/ecoli_k12.fa.gz --bed gpu/ecoli_k12.features.bed \
    --bed-class coding=CDS --window "$WINDOW" --windows-per-epoch "$2" --batch-size "$BATCH" \
    --epochs "$3" --d-model 64 --n-layer 3 --bidirectional --seed 1 --device cuda -q
}
for mode in chunks whole; do
  if [ $mode = whole ]; then export GENOMAMBA_BACK_CHUNK=0; else unset GENOMAMBA_BACK_CHUNK; fi
  rm -rf /tmp/p1; train /tmp/p1 8 2 >/dev/null 2>&1 || echo "train failed"
  echo "$mode: $(tail -1 /tmp/p1/metrics.jsonl | cut -c1-160)"
done
unset GENOMAMBA_BACK_CHUNK
if [ "${LAUNCHES:-3000}" != 0 ]; then
  csv=${OUT:-/tmp}/ncu.csv
  rm -rf /tmp/p2
  ncu --clock-control none --metrics gpu__time_duration.sum --csv --launch-count "${LAUNCHES:-3000}" \
    /tmp/genomamba train -o /tmp/p2 --fasta gpu/ecoli_k12.fa.gz --bed gpu/ecoli_k12.features.bed \
    --bed-class coding=CDS --window "$WINDOW" --windows-per-epoch 8 --batch-size "$BATCH" \
    --epochs 1 --d-model 64 --n-layer 3 --bidirectional --seed 1 --device cuda -q > "$csv" 2>/dev/null
  python3 bench/ncu_top.py "$csv"
fi
