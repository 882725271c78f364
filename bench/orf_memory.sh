#!/usr/bin/env bash
# Peak RSS of a one-epoch per-position `train` on D. melanogaster chr2R (21 Mb, RefSeq exons
# as the class), with and without `--orf-features`, for each binary in BINS. The difference
# is what the ORF features cost: training keeps each record's stop codons and computes a
# window's features when its batch is built. The weights of every binary's ORF run are
# compared by MD5 (same seed, so they should agree across builds).
# Usage: BINS="old/genomamba target/release/genomamba" bash bench/orf_memory.sh
set -euo pipefail
BINS=${BINS:-target/release/genomamba}
data=$(cd "$(dirname "$0")/../../shared/data/genomes" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
awk -v OFS='\t' '{print $1, $2, $3, "exon"}' "$data/dm3_chr2R.refseq_exon.bed" > "$work/exon.bed"
echo "| binary | --orf-features | wall | max RSS | weights (md5) |"
echo "| --- | --- | --- | --- | --- |"
i=0
for bin in $BINS; do
  i=$((i + 1))
  for orf in no yes; do
    flag=()
    [ "$orf" = yes ] && flag=(--orf-features)
    out="$work/m$i$orf"
    /usr/bin/time -f "%e %M" -o "$work/time" "$bin" train --fasta "$data/dm3_chr2R.fa.gz" \
      --bed "$work/exon.bed" --d-model 16 --n-layer 2 --bidirectional "${flag[@]}" \
      --window 512 --windows-per-epoch 32 --epochs 1 --val-fraction 0.002 --threads 1 -q \
      -o "$out" >/dev/null
    read -r wall rss < "$work/time"
    sum=$(md5sum < "$out/model.safetensors" | cut -c1-12)
    echo "| $bin | $orf | ${wall} s | $((rss / 1024)) MiB | $sum |"
  done
done
