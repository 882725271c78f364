#!/usr/bin/env bash
# Builds genomamba and runs its main jobs on the bundled data in data/.
# Outputs go to target/quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
G=target/release/genomamba
OUT=target/quickstart
mkdir -p "$OUT"

echo "== a small random model with a per-position head"
$G init -o "$OUT/model-pos" --d-model 64 --n-layer 4 --head position --labels background,feature --force
$G info -m "$OUT/model-pos"

echo "== embed 40 ChIP-seq peaks (mean-pooled, one row per record)"
$G embed -m "$OUT/model-pos" data/peaks.fa -o "$OUT/peaks.embeddings.tsv"
cut -f1-5 "$OUT/peaks.embeddings.tsv" | head -n 4

echo "== per-position embeddings of 20 kb of yeast chrI as .npy"
$G embed -m "$OUT/model-pos" data/yeast_chrI_20k.fa --pool none --format npy -o "$OUT/npy"
ls -l "$OUT/npy"

echo "== annotate 20 kb of yeast chrI base by base (BED6 + bedGraph), in chunks of 1000 bases"
$G annotate -m "$OUT/model-pos" data/yeast_chrI_20k.fa --chunk-size 1000 \
  --bed "$OUT/yeast.bed" --bedgraph "$OUT/yeast.bedgraph"
head -n 3 "$OUT/yeast.bed" "$OUT/yeast.bedgraph"

echo "== classify the peaks with the shipped Oct4-vs-MafK model (models/oct4-mafk)"
$G classify -m models/oct4-mafk data/peaks.fa -o "$OUT/peaks.classes.tsv"
head -n 4 "$OUT/peaks.classes.tsv"

echo "== annotate coding bases in 30 kb of the E. coli stretch held out from training (models/coding-bacteria)"
EC=../shared/data/genomes/ecoli_k12.fa.gz
if [ -f "$EC" ]; then
  $G annotate -m models/coding-bacteria "$EC" --region NC_000913:4300001-4330000 --bed "$OUT/ecoli.coding.bed"
  head -n 3 "$OUT/ecoli.coding.bed"
else
  echo "(skipped: $EC not found)"
fi

echo "== train a tiny sequence classifier for two epochs (the full recipe is in models/oct4-mafk/MODEL_CARD.md)"
$G train -o "$OUT/tiny-train" --force --class oct4=data/peaks_oct4.fa --class mafk=data/peaks_mafk.fa \
  --d-model 16 --n-layer 1 --epochs 2 --batch-size 8 --val-fraction 0.25 --warmup-steps 2
cat "$OUT/tiny-train/metrics.jsonl" | cut -c1-160
echo "done: outputs in $OUT"
