#!/usr/bin/env bash
# On a machine with an NVIDIA GPU, from the repository root: the fifty-second session's
# checks on the $DEV path.
# - Regions read through the index checks give on $DEV the values the same intervals give as
#   plain records, and (to TF32's tolerance) the CPU's values (per position, --regions-bed
#   over many intervals of a bgzip file).
# - A copy of the input edited after indexing (one line of the first sequence made one
#   base longer, its old index kept) is refused on $DEV: one line, exit 2, no output.
# - f16 on $DEV: chunks of one position give what the default chunk gives (the CPU's f16
#   products rounded every term's sum when a chunk had one position).
# BIN: a genomamba built with `--features cuda`; INPUT: a bgzip FASTA with .fai/.gzi (default
# gpu_t/ecoli_k12.fa.gz); DEV (default cuda; `cpu` runs the same checks on the CPU). Needs
# python3 with numpy. Prints "ok"/"FAIL" lines and a count of failures.
set -uo pipefail
BIN=${BIN:-target/release/genomamba}
INPUT=${INPUT:-gpu_t/ecoli_k12.fa.gz}
DEV=${DEV:-cuda}
t=$(mktemp -d)
fails=0
check() { # check WHAT CONDITION...: prints ok/FAIL
  local what=$1; shift
  if "$@"; then echo "ok   $what"; else echo "FAIL $what"; fails=$((fails + 1)); fi
}
name=$(cut -f1 "$INPUT.fai" | head -1)
"$BIN" init -o "$t/m" --d-model 128 --n-layer 4 --seed 3 >/dev/null

# Many intervals of a bgzip file, per position, on $DEV and on the CPU.
python3 - "$name" > "$t/r.bed" <<'PY'
import random, sys
rng = random.Random(7)
for _ in range(300):
    a = rng.randrange(0, 4_000_000)
    print(f"{sys.argv[1]}\t{a}\t{a + rng.randrange(1, 3000)}")
PY
for dev in "$DEV" cpu; do
  "$BIN" embed -m "$t/m" "$INPUT" --regions-bed "$t/r.bed" --pool none --format npy \
    --device $dev -q -o "$t/e_$dev"
done
close() { # close DIR_A DIR_B TOL: every array of A equals B's to TOL (relative to max |B|)
  python3 - "$@" <<'PY'
import numpy as np, os, sys
a, b, tol = sys.argv[1], sys.argv[2], float(sys.argv[3])
names = sorted(os.listdir(b))
assert names and sorted(os.listdir(a)) == names
worst = max(float(np.abs(np.load(f"{a}/{n}") - np.load(f"{b}/{n}")).max() / max(1e-12, float(np.abs(np.load(f"{b}/{n}")).max()))) for n in names)
print(f"     {len(names)} arrays, worst relative difference {worst:.2e}")
sys.exit(0 if worst <= tol else 1)
PY
}
# The same intervals as plain records (cut here from the decompressed file), on $DEV: the
# region reads give what the records give on the same device. Against the CPU the tolerance
# is TF32's, in which CUDA multiplies f32 matrices.
python3 - "$INPUT" "$t/r.bed" > "$t/r.fa" <<'PY'
import gzip, sys
seq = "".join(l.strip() for l in gzip.open(sys.argv[1], "rt") if not l.startswith(">"))
for line in open(sys.argv[2]):
    name, a, b = line.split()
    print(f">{name}:{int(a) + 1}-{b}\n{seq[int(a):int(b)]}")
PY
"$BIN" embed -m "$t/m" "$t/r.fa" --pool none --format npy --device "$DEV" -q -o "$t/p_$DEV"
check "300 --regions-bed intervals on $DEV equal the same records on $DEV (f32, 1e-4)" \
  close "$t/e_$DEV" "$t/p_$DEV" 1e-4
check "300 --regions-bed intervals on $DEV equal the CPU's (f32, TF32 on cuda: 3e-3)" \
  close "$t/e_$DEV" "$t/e_cpu" 3e-3

# A file edited after indexing: the index of the first 2 Mb of $INPUT, then one base added to
# the sequence's second line.
python3 - "$INPUT" "$t/edited.fa" <<'PY'
import gzip, sys
lines = [l for l in gzip.open(sys.argv[1], "rt").read(2_000_000).split("\n") if l]
header, seq = lines[0], lines[1:]
name = header[1:].split()[0]
width = len(seq[0])
with open(sys.argv[2] + ".fai", "w") as fai:
    fai.write(f"{name}\t{sum(map(len, seq))}\t{len(header) + 1}\t{width}\t{width + 1}\n")
seq[1] += "A"
open(sys.argv[2], "w").write(header + "\n" + "\n".join(seq) + "\n")
PY
"$BIN" embed -m "$t/m" "$t/edited.fa" --region "$name:1-1000" --device "$DEV" -q \
  -o "$t/edited.tsv" 2> "$t/edited.err"
code=$?
check "an edited file's old index is refused on $DEV (exit 2, one line, no output)" \
  test "$code" = 2 -a "$(wc -l < "$t/edited.err")" = 1 -a ! -e "$t/edited.tsv"
check "the refusal says the index does not match the file" \
  grep -q "does not match the file" "$t/edited.err"
grep -q "does not match the file" "$t/edited.err" || echo "     $(cat "$t/edited.err")"

# f16: chunks of one position against the default chunk, 2,000 positions.
for chunk in 1 default; do
  extra=()
  [ "$chunk" = default ] || extra=(--chunk-size "$chunk")
  "$BIN" embed -m "$t/m" "$INPUT" --region "$name:1-2000" --pool none --format npy \
    --precision f16 --device "$DEV" -q -o "$t/h_$chunk" "${extra[@]}"
done
check "f16 on $DEV: chunks of one position equal the default chunk (2e-3)" \
  close "$t/h_1" "$t/h_default" 2e-3

echo "$fails failure(s)"
rm -rf "$t"
exit $((fails > 0))
