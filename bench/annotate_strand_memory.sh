#!/usr/bin/env bash
# Peak RSS of `annotate --regions-bed --bed-strand` for intervals on each strand: a `+`
# interval streams; a `-` interval keeps its per-base outputs (4 bytes x classes per base)
# until it ends, the last 16 MiB in memory and the rest in a temporary file.
# Usage: BIN=target/release/genomamba [SIZES="2000000 20000000"] bash bench/annotate_strand_memory.sh
set -euo pipefail
BIN=${BIN:-target/release/genomamba}
GENOME=${GENOME:-../shared/data/genomes/hg19_chr20.fa.gz}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$BIN" init -o "$work/m" --d-model 8 --n-layer 1 --head position --labels background,feature >/dev/null 2>&1
echo "| interval | strand | wall | max RSS |"
echo "| --- | --- | --- | --- |"
for size in ${SIZES:-2000000 20000000}; do
  for strand in + -; do
    start=$(( size > 30000000 ? 1000000 : 30000000 ))
    printf '20\t%d\t%d\tx\t0\t%s\n' $start $((start + size)) "$strand" > "$work/r.bed"
    /usr/bin/time -f '%e %M' -o "$work/time" "$BIN" annotate -m "$work/m" "$GENOME" \
      --regions-bed "$work/r.bed" --bed-strand --bed "$work/o.bed" --threads 1 --quiet
    read -r wall kb < "$work/time"
    echo "| 20:$((start + 1)) + $((size / 1000000)) Mb | $strand | ${wall} s | $((kb / 1024)) MiB |"
  done
done
