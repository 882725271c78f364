#!/usr/bin/env bash
# Run on the GPU machine from the repository root: peak GPU memory (`nvidia-smi` every 20 ms)
# of one-step `train` runs (f32) over batch sizes, windows, widths and depths, the figures
# behind `TRAIN_BYTES_PER_POSITION_CHANNEL` and `_HIGH` (src/train/trainer.rs; BENCHMARKS.md,
# fortieth session, call 215). BIN: a genomamba built with `--features cuda`; DATA: a folder
# with ecoli_k12.fa.gz (+ .fai, .gzi), ecoli_k12.features.bed, oct4_peaks.fa and mafk_peaks.fa
# from ../shared/data. The step of 8 windows of 131,072 ran out of memory in call 215; with
# the check it is refused up front.
set -u
BIN=${BIN:-target/release/genomamba}
DATA=${DATA:-gpu}
base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits)
echo "idle used: $base MiB"
run() { # label args...
  local label=$1; shift
  rm -rf /tmp/tm
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 20 > /tmp/smi.txt &
  local smi=$!
  local s=$(date +%s.%N)
  timeout 200 "$BIN" train -o /tmp/tm --epochs 1 --seed 1 --device cuda -q "$@" >/tmp/tm.out 2>/tmp/tm.err
  local rc=$?
  kill $smi; wait $smi 2>/dev/null
  local peak=$(sort -n /tmp/smi.txt | tail -1)
  echo "$label: rc=$rc peak ${peak} MiB, $(python3 -c "import time;print(round(time.time()-$s,1))") s $(head -c 200 /tmp/tm.err)"
}
POS="--fasta $DATA/ecoli_k12.fa.gz --bed $DATA/ecoli_k12.features.bed --bed-class coding=CDS"
run "pos d256 L16 w2048 b32"   $POS --window 2048 --windows-per-epoch 32 --batch-size 32 --d-model 256 --n-layer 16
run "pos d256 L16 w8192 b32"   $POS --window 8192 --windows-per-epoch 32 --batch-size 32 --d-model 256 --n-layer 16
run "pos d256 L16 w32768 b8"   $POS --window 32768 --windows-per-epoch 8 --batch-size 8 --d-model 256 --n-layer 16
run "pos d256 L8 w32768 b8"    $POS --window 32768 --windows-per-epoch 8 --batch-size 8 --d-model 256 --n-layer 8
run "pos d256 L16 w131072 b8"  $POS --window 131072 --windows-per-epoch 8 --batch-size 8 --d-model 256 --n-layer 16
run "pos d512 L8 w8192 b16"    $POS --window 8192 --windows-per-epoch 16 --batch-size 16 --d-model 512 --n-layer 8
run "pos d128 L4 w8192 b16"    $POS --window 8192 --windows-per-epoch 16 --batch-size 16 --d-model 128 --n-layer 4
run "pos bidi d256 L8 w8192 b16" $POS --window 8192 --windows-per-epoch 16 --batch-size 16 --d-model 256 --n-layer 8 --bidirectional
run "seq d256 L16 b32"  --class oct4=$DATA/oct4_peaks.fa --class mafk=$DATA/mafk_peaks.fa --batch-size 32 --d-model 256 --n-layer 16
run "seq d256 L16 b256" --class oct4=$DATA/oct4_peaks.fa --class mafk=$DATA/mafk_peaks.fa --batch-size 256 --d-model 256 --n-layer 16
