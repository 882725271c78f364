#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: what `--device cuda[:N]` and `--chunk-size` say when the GPU,
# the driver or the toolkit is not as asked (each must be one line on stderr and exit code 2,
# with no output file left), and that the same binary runs on the GPU that is there.
# BIN: a genomamba built with `--features cuda` (default target/release/genomamba).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/genomamba}
t=$(mktemp -d)
"$BIN" init -o "$t/m" --d-model 256 --n-layer 2 >/dev/null || exit 1
fails=0
expect() { # expect CODE NEEDLE -- ARGS...: run, check exit code, one stderr line holding NEEDLE
  local code=$1 needle=$2; shift 3
  rm -f "$t/o.tsv"
  "$@" >/dev/null 2>"$t/err"; local rc=$?
  local lines; lines=$(wc -l <"$t/err")
  if [ "$rc" = "$code" ] && { [ "$code" = 0 ] || { [ "$lines" = 1 ] && grep -qF -- "$needle" "$t/err"; }; } \
      && { [ "$code" = 0 ] || [ ! -e "$t/o.tsv" ]; }; then
    echo "ok   exit $rc: $(head -c 300 "$t/err")"
  else
    echo "FAIL exit $rc (wanted $code, '$needle'), $lines stderr lines: $(head -c 600 "$t/err")"
    fails=$((fails + 1))
  fi
}
n=$(nvidia-smi -L | wc -l)
echo "GPUs: $n"
has="this machine has $n CUDA GPUs"
[ "$n" = 1 ] && has="this machine has one CUDA GPU"
E=(embed -m "$t/m" data/peaks.fa -o "$t/o.tsv" --quiet)
expect 0 "" -- "$BIN" "${E[@]}" --device cuda
expect 2 "$has" -- "$BIN" "${E[@]}" --device "cuda:$n"
expect 2 "$has" -- "$BIN" "${E[@]}" --device cuda:99
expect 2 "$has" -- "$BIN" train -o "$t/tr" --class a=data/peaks_oct4.fa \
  --class b=data/peaks_mafk.fa --device "cuda:$n"
expect 2 "CUDA_ERROR_NO_DEVICE" -- env CUDA_VISIBLE_DEVICES= "$BIN" "${E[@]}" --device cuda
expect 2 "has no include/cuda_fp16.h" -- env CUDA_PATH=/nonexistent "$BIN" "${E[@]}" --device cuda
expect 2 "needs about 192.0 GiB" -- "$BIN" "${E[@]}" --device cuda --precision f16 --chunk-size 16777216
expect 0 "" -- "$BIN" "${E[@]}" --device cuda --precision f16 --chunk-size 4194304
# Far more than the GPU holds: a training batch of 4,096 windows of 16,384 bases through a
# d_model 1,024 model (one of its activations alone is 4,096 x 16,384 x 2,048 x 4 bytes),
# refused before training starts.
chrom=$(head -n 1 data/yeast_chrI_20k.fa | cut -c 2- | cut -d ' ' -f 1)
# Genes in the training and the validation part (the last tenth), so no warning comes first.
printf '%s\t1000\t5000\tgene\n%s\t17000\t19500\tgene\n' "$chrom" "$chrom" >"$t/genes.bed"
T=(train -o "$t/tr" --fasta data/yeast_chrI_20k.fa --bed "$t/genes.bed" --epochs 1 --device cuda -q)
expect 2 "a training step of 4096 windows of 16384 bases needs at least" -- "$BIN" "${T[@]}" \
  --window 16384 --windows-per-epoch 4096 --batch-size 4096 --d-model 1024 --n-layer 2
[ -e "$t/tr" ] && { echo "FAIL: train left $t/tr"; fails=$((fails + 1)); }
# Past what fits but under the up-front check's lower bound (about 2.5 GiB a window of 8,192 at
# d_model 256, 16 layers, where 32 such windows peaked at 123 GiB): out of memory at the first
# step. 40 windows on a card of 141 GiB (H200); 28 on one of 80 GiB (H100), where 40 are
# already refused by the lower bound.
mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
windows=40
[ "${mib:-0}" -lt 120000 ] && windows=28
expect 2 "the GPU ran out of memory" -- "$BIN" "${T[@]}" \
  --window 8192 --windows-per-epoch $windows --batch-size $windows --d-model 256 --n-layer 16
[ -e "$t/tr" ] && { echo "FAIL: train left $t/tr"; fails=$((fails + 1)); }
echo "left in the scratch directory: $(ls -A "$t" | tr "\n" " ")"
echo "failures: $fails"
rm -rf "$t"
[ "$fails" = 0 ]
