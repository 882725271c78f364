#!/usr/bin/env bash
# Batches of whole records under the padding limit (GENOMAMBA_BATCH_PADDING, percent; 100000
# stands for "no limit", the batching before the forty-fourth session; b1 is --batch-size 1;
# auto is the device's own limit).
# Inputs: chr20's 801 CpG islands (201-10,782 bases, genome order) read by --regions-bed, their
# first 200, and 200 regions of 750 bases (one length). Prints wall time and peak RSS of each
# run (ROUNDS times, interleaved) and checks that every setting wrote the same table as the
# first of SETTINGS, the unlimited one by default (the same values on the CPU; within 1e-3 of
# the largest on a GPU); exits 1 where one did not.
# BIN, MODEL (a model directory; made with `init` if missing: D_MODEL, N_LAYER), FA, BED,
# DEVICE (cpu | cuda), PRECISION, ROUNDS, SETTINGS.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/genomamba}
FA=${FA:-../shared/data/genomes/hg19_chr20.fa.gz}
BED=${BED:-../shared/data/genomes/hg19_chr20.cpg_islands.bed}
DEVICE=${DEVICE:-cpu}; PRECISION=${PRECISION:-f32}; ROUNDS=${ROUNDS:-2}
SETTINGS=${SETTINGS:-100000 200 150 125 b1}
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
MODEL=${MODEL:-$t/m}
[ -e "$MODEL" ] || "$BIN" init -o "$MODEL" --d-model "${D_MODEL:-64}" --n-layer "${N_LAYER:-4}" --seed 1 >/dev/null
cp "$BED" "$t/cpg801.bed"; head -200 "$BED" > "$t/cpg200.bed"
python3 -c "
for i in range(200):
    s = 31000000 + i * 750
    print(f'20\t{s}\t{s + 750}')" > "$t/u200.bed"
run() { # run SET SETTING ROUND
  local a="" e=$2
  if [ "$2" = b1 ]; then a="--batch-size 1"; e=100000; fi
  if [ "$2" = auto ]; then e=""; fi
  local s; s=$(date +%s.%N)
  env ${e:+GENOMAMBA_BATCH_PADDING=$e} /usr/bin/time -f "%M" -o "$t/rss" "$BIN" embed -m "$MODEL" "$FA" \
    --regions-bed "$t/$1.bed" -o "$t/$1_$2.tsv" -q --device "$DEVICE" --precision "$PRECISION" $a
  python3 -c "import sys; print('%-7s padding %-7s round %s: %6.2f s, peak RSS %4.0f MiB' % ('$1', '$2', '$3', $(date +%s.%N) - $s, $(cat "$t/rss") / 1024))"
}
[ "$DEVICE" = cpu ] || "$BIN" embed -m "$MODEL" "$FA" --regions-bed "$t/cpg801.bed" -o "$t/warm.tsv" -q --device "$DEVICE" --precision "$PRECISION"
for set in cpg200 cpg801 u200; do
  for r in $(seq "$ROUNDS"); do for x in $SETTINGS; do run $set $x $r; done; done
done
# Against the first setting (the unlimited one by default): the same ids and lengths, and
# the same values (exactly on the CPU; within 1e-3 of the largest on a GPU). Exits 1 if not.
python3 - "$t" "$DEVICE" $SETTINGS <<'PY'
import sys
t, device, settings = sys.argv[1], sys.argv[2], sys.argv[3:]
tol = 0.0 if device.lower() == 'cpu' else 1e-3
def rows(p):
    return [l.rstrip('\n').split('\t') for l in open(p)][1:]
bad = 0
for name in ['cpg200', 'cpg801', 'u200']:
    base = rows(f'{t}/{name}_{settings[0]}.tsv')
    for x in settings[1:]:
        other = rows(f'{t}/{name}_{x}.tsv')
        assert [r[:2] for r in base] == [r[:2] for r in other], (name, x)
        big = max(abs(float(v)) for r in base for v in r[2:])
        diff = max(abs(float(a) - float(b)) for ra, rb in zip(base, other) for a, b in zip(ra[2:], rb[2:]))
        ok = diff <= tol * big
        bad += not ok
        print(f'{name} padding {x} against {settings[0]}: {len(base)} rows, max |diff| / max |value| = {diff / big:.2e}{"" if ok else " FAIL"}')
sys.exit(1 if bad else 0)
PY
