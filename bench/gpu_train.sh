#!/usr/bin/env bash
# Run on the GPU machine from the repository root, with gpu/ holding genomamba.xz and
# scan_backward_bench.xz (stripped, xz-compressed `--features cuda` release builds),
# oct4_peaks.fa, mafk_peaks.fa, ecoli_k12.fa.gz (+ .fai, .gzi) and ecoli_k12.features.bed.
# The scan's backward step alone (kernel against the tensor-operation backward, same GPU),
# then training throughput with the backward kernel (default) and with
# GENOMAMBA_SCAN_BACKWARD=reference (the tensor-operation backward), interleaved.
# MODES lists the runs (default: kernel reference kernel reference; `whole`: the kernel with
# time never split into chunks, GENOMAMBA_BACK_CHUNK=0); ALONE=0 skips the
# backward step alone. BINS names the builds to run, each gpu/NAME.xz (default: genomamba);
# with several, every mode runs each build in turn (interleaved comparisons of two builds). TESTS=1 first runs the backward and gradient tests of tests/gpu_scan.rs (gpu/gpu_scan.xz).
# LONG=1 adds a run on E. coli windows of 131,072 bases, one per batch (SHORT=0 leaves out the
# two usual runs).
set -u
unpack() { python3 -c "import lzma,shutil; shutil.copyfileobj(lzma.open('gpu/$1.xz'), open('/tmp/$1','wb'))"; chmod +x "/tmp/$1"; }
MODES=${MODES-kernel reference kernel reference}
BINS=${BINS:-genomamba}
if [ -n "$MODES" ]; then for bin in $BINS; do unpack "$bin"; done; fi
[ "${ALONE:-1}" = 1 ] && unpack scan_backward_bench
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
if [ "${TESTS:-0}" = 1 ]; then
  unpack gpu_scan
  /tmp/gpu_scan --test-threads 1 --nocapture gpu_scan_backward_kernel gpu_scan_gradients 2>&1 | grep -v "^$"
fi
if [ "${ALONE:-1}" = 1 ]; then
  echo "== backward step alone"
  /tmp/scan_backward_bench
fi
bps() { python3 -c "
import json,sys
rows=[json.loads(l) for l in open('$1/metrics.jsonl')]
print(' '.join('%.0f' % r['train_bases_per_s'] for r in rows if 'train_bases_per_s' in r))"; }
# E. coli training of build $1 into $2: windows of $3 bases, $4 per epoch, batch $5, 2 epochs;
# prints the wall time and each epoch's train bases/s.
ecoli() {
  s=$(date +%s.%N)
  /tmp/$1 train -o "$2" --fasta gpu/ecoli_k12.fa.gz --bed gpu/ecoli_k12.features.bed \
    --bed-class coding=CDS --window "$3" --windows-per-epoch "$4" --batch-size "$5" --epochs 2 \
    --d-model 64 --n-layer 3 --bidirectional --seed 1 --device cuda -q >/dev/null 2>&1 || echo "ecoli window $3 train failed"
  e=$(date +%s.%N)
  echo "$1 $mode ecoli window $3 batch $5, 2 epochs: $(python3 -c "print('%.1f s' % ($e-$s))"), train bases/s per epoch: $(bps "$2")"
}
for mode in $MODES; do for bin in $BINS; do
  G=/tmp/$bin
  if [ $mode = reference ]; then export GENOMAMBA_SCAN_BACKWARD=reference; else unset GENOMAMBA_SCAN_BACKWARD; fi
  if [ $mode = whole ]; then export GENOMAMBA_BACK_CHUNK=0; else unset GENOMAMBA_BACK_CHUNK; fi
  rm -rf /tmp/t1 /tmp/t2 /tmp/t3
  if [ "${LONG:-0}" = 1 ]; then
    ecoli "$bin" /tmp/t3 131072 8 1
    tail -1 /tmp/t3/metrics.jsonl | cut -c1-200
  fi
  [ "${SHORT:-1}" = 1 ] || continue
  s=$(date +%s.%N)
  $G train -o /tmp/t1 --class oct4=gpu/oct4_peaks.fa --class mafk=gpu/mafk_peaks.fa --epochs 2 \
    --d-model 64 --n-layer 2 --batch-size 32 --seed 1 --device cuda -q >/dev/null 2>&1 || echo "oct4 train failed"
  e=$(date +%s.%N)
  echo "$bin $mode oct4/mafk 2 epochs: $(python3 -c "print('%.1f s' % ($e-$s))"), train bases/s per epoch: $(bps /tmp/t1)"
  ecoli "$bin" /tmp/t2 2048 512 64
  tail -1 /tmp/t1/metrics.jsonl | cut -c1-200
  tail -1 /tmp/t2/metrics.jsonl | cut -c1-200
done; done
