#!/usr/bin/env bash
# Time and peak RSS of `embed` on one sequence written two ways: on a single unwrapped line,
# and wrapped at 60 columns. Sequence lines are read 1 MiB at a time, so both should cost the
# same. Each binary in BINS runs both files, in turn, on one thread.
# Usage: BINS="old/genomamba target/release/genomamba" [MB=80] [CHUNK=8192] bash bench/one_line_fasta.sh
set -euo pipefail
BINS=${BINS:-target/release/genomamba}
MB=${MB:-80}
CHUNK=${CHUNK:-8192}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$work" "$MB" <<'PY'
import sys
work, mb = sys.argv[1], int(sys.argv[2])
n = mb * 1_000_000
unit = b"ACGTTGCAAGCTNacgt" * 64
s = (unit * (n // len(unit) + 1))[:n]
with open(f"{work}/one.fa", "wb") as f:
    f.write(b">c\n" + s + b"\n")
with open(f"{work}/wrapped.fa", "wb") as f:
    f.write(b">c\n")
    for i in range(0, n, 60):
        f.write(s[i:i + 60] + b"\n")
PY
first=${BINS%% *}
"$first" init -o "$work/m" --d-model 2 --n-layer 1 --expand 1 --d-state 1 --d-conv 2 >/dev/null 2>&1
echo "| binary | file | wall | max RSS | mean-pooled row |"
echo "| --- | --- | --- | --- | --- |"
for bin in $BINS; do
  for file in one wrapped; do
    /usr/bin/time -f '%e %M' -o "$work/time" "$bin" embed -m "$work/m" "$work/$file.fa" \
      -o "$work/out.tsv" --chunk-size "$CHUNK" --threads 1 --quiet
    read -r wall kb < "$work/time"
    row=$(tail -1 "$work/out.tsv" | cut -f2- | md5sum | cut -c1-8)
    echo "| $bin | $file ($MB Mb) | ${wall} s | $((kb / 1024)) MiB | md5 $row |"
  done
done
