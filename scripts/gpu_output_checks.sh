#!/usr/bin/env bash
# On a machine with an NVIDIA GPU, from the repository root: the output checks of the
# fifty-first session on $DEV path.
# - Compressed outputs (`*.gz`): annotate and classify on $DEV, the compressed files equal
#   the plain ones after decompression, and annotate's equal the CPU's to 1e-3.
# - Non-finite outputs: a model whose in_proj holds 1e30 gives NaN on $DEV too; classify,
#   embed (mean and max pooling) and annotate must stop with one line and exit 2 and write
#   nothing.
# - Training on $DEV saves whole epochs: a run interrupted (SIGINT) after its first
#   checkpoint resumes, and its log has one line per epoch.
# BIN: a genomamba built with `--features cuda`; INPUT: a bgzip FASTA with .fai/.gzi and
# a BED of features beside it (default gpu_t/ecoli_k12.fa.gz); DEV (default cuda; `cpu`
# runs the same checks on the CPU) and LEN (bases annotated, default 1,000,000). Prints
# "ok"/"FAIL" lines and a count of failures.
set -uo pipefail
BIN=${BIN:-target/release/genomamba}
INPUT=${INPUT:-gpu_t/ecoli_k12.fa.gz}
DEV=${DEV:-cuda}
LEN=${LEN:-1000000}
t=$(mktemp -d)
fails=0
check() { # check WHAT CONDITION...: prints ok/FAIL
  local what=$1; shift
  if "$@"; then echo "ok   $what"; else echo "FAIL $what"; fails=$((fails + 1)); fi
}
name=$(cut -f1 "$INPUT.fai" | head -1)
region="$name:1-$LEN"
"$BIN" init -o "$t/pos" --d-model 128 --n-layer 4 --head position --labels bg,f --seed 2 >/dev/null
"$BIN" init -o "$t/seq" --d-model 128 --n-layer 4 --head sequence --labels a,b --seed 2 >/dev/null

# Compressed outputs.
for dev in "$DEV" cpu; do
  "$BIN" annotate -m "$t/pos" "$INPUT" --region "$region" --device $dev -q --digits 5 \
    --bed "$t/a_$dev.bed.gz" --bedgraph "$t/a_$dev.bg.gz" --tsv "$t/a_$dev.tsv.gz"
done
"$BIN" annotate -m "$t/pos" "$INPUT" --region "$region" --device "$DEV" -q --digits 5 \
  --bed "$t/a.bed" --bedgraph "$t/a.bg" --tsv "$t/a.tsv"
for ext in bed bg tsv; do
  check "annotate --$ext .gz on $DEV equals the plain file" \
    cmp -s <(python3 -c "import gzip,sys; sys.stdout.buffer.write(gzip.open('$t/a_$DEV.$ext.gz').read())") "$t/a.$ext"
done
if python3 - "$t/a_$DEV.tsv.gz" "$t/a_cpu.tsv.gz" "$LEN" <<'PY'
import gzip, sys
def load(p):
    rows = gzip.open(p, 'rt').read().splitlines()[1:]
    return [[float(x) for x in r.split('\t')[3:]] for r in rows]
a, b = load(sys.argv[1]), load(sys.argv[2])
d = max(abs(x - y) for r, s in zip(a, b) for x, y in zip(r, s))
print(f"     rows {len(a)} / {len(b)}, max |diff| {d:.2e}")
sys.exit(0 if len(a) == len(b) == int(sys.argv[3]) and d < 1e-3 else 1)
PY
then echo "ok   annotate on $DEV vs CPU within 1e-3"; else echo "FAIL annotate on $DEV vs CPU"; fails=$((fails + 1)); fi
"$BIN" classify -m "$t/seq" "$INPUT" --region "$region" --device "$DEV" -q -o "$t/c.tsv.gz"
check "classify -o .gz on $DEV is gzip with one row" \
  test "$(python3 -c "import gzip; print(len(gzip.open('$t/c.tsv.gz','rt').read().splitlines()))")" = 2

# Non-finite outputs.
python3 - "$t/seq" "$t/pos" <<'PY'
import json, struct, sys
for d in sys.argv[1:]:
    p = d + '/model.safetensors'
    b = bytearray(open(p, 'rb').read())
    n = struct.unpack('<Q', b[:8])[0]
    h = json.loads(b[8:8 + n])
    s, e = h['layers.0.mixer.in_proj.weight']['data_offsets']
    for i in range(8 + n + s, 8 + n + e, 4):
        struct.pack_into('<f', b, i, 1e30)
    open(p, 'wb').write(b)
PY
refused() { # refused NEEDLE OUTPUT ARGS...: exit 2, one line holding NEEDLE, OUTPUT absent
  local needle=$1 out=$2; shift 2
  "$@" >/dev/null 2>"$t/err"; local rc=$?
  [ "$rc" = 2 ] && [ "$(wc -l <"$t/err")" = 1 ] && grep -qF -- "$needle" "$t/err" && [ ! -e "$out" ] \
    || { echo "     exit $rc: $(head -c 300 "$t/err")"; return 1; }
  echo "     $(head -c 200 "$t/err")"
}
check "classify on $DEV refuses NaN" refused "the model gives NaN" "$t/n1.tsv" \
  "$BIN" classify -m "$t/seq" "$INPUT" --region "$name:1-50000" --device "$DEV" -q -o "$t/n1.tsv"
for pool in mean max; do
  check "embed --pool $pool on $DEV refuses NaN" refused "the model gives NaN" "$t/n2.tsv" \
    "$BIN" embed -m "$t/seq" "$INPUT" --region "$name:1-50000" --pool $pool --device "$DEV" -q -o "$t/n2.tsv"
done
check "annotate on $DEV refuses NaN" refused "the model gives NaN" "$t/n3.bed" \
  "$BIN" annotate -m "$t/pos" "$INPUT" --region "$name:1-50000" --device "$DEV" -q --bed "$t/n3.bed"

# Training on $DEV: interrupted after its first checkpoint, resumed.
awk -v OFS='\t' -v n="$name" '$1==n && $4=="CDS"{print $1,$2,$3,"cds"}' "${INPUT%.fa.gz}.features.bed" > "$t/cds.bed"
T=("$BIN" train --fasta "$INPUT" --bed "$t/cds.bed" --d-model 64 --n-layer 2 --window 2048
   --windows-per-epoch 64 --epochs 1000 --seed 3 --device "$DEV" -q -o "$t/run")
"${T[@]}" 2>"$t/train_err" & pid=$!
for _ in $(seq 600); do [ -e "$t/run/checkpoint/trainer.json" ] && break; sleep 0.2; done
second=$("${T[@]}" --force 2>&1 >/dev/null); second_rc=$?
kill -INT $pid; wait $pid; rc=$?
check "a second run into the directory is refused while the first writes it" \
  grep -qF "is being written by another genomamba train run" <<<"$second"
check "interrupted training exits 130 and says how to resume" \
  bash -c "[ $rc = 130 ] && grep -qF -- '--resume to continue' '$t/train_err'"
done_epochs=$(python3 -c "import json; print(json.load(open('$t/run/checkpoint/trainer.json'))['epochs_done'])")
"${T[@]}" --resume --stop-after $((done_epochs + 1)) 2>"$t/resume_err"
check "resumed on $DEV: one log line per epoch, 1..$((done_epochs + 1))" \
  test "$(python3 -c "import json; print([json.loads(l)['epoch'] for l in open('$t/run/metrics.jsonl')] == list(range(1, $done_epochs + 2)))")" = True
check "no temporary files left in the run directory" \
  test -z "$(ls -A "$t/run" | grep '^\.' || true)"
echo "failures: $fails"
rm -rf "$t"
exit $((fails > 0))
