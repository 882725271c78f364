#!/usr/bin/env bash
# Two builds of genomamba, interleaved in one run on the GPU machine, embedding the same FASTA
# (mean-pooled, d_model 256 x 16 layers from `init`), whole process, wall time per run.
# Usage (from the repository root on the device):
#   OLD=gpu/old.xz NEW=gpu/genomamba.xz FA=gpu/r16.fa.xz [ROUNDS=3] [PRECISIONS="f16 f32"] \
#     bash bench/gpu_compare.sh
# OLD/NEW are stripped, xz-compressed `--features cuda` release binaries; FA a FASTA, plain or
# xz-compressed. The first run of each binary compiles its kernels and is reported apart.
# Afterwards NEW runs f16 at chunk sizes 65,536 / 131,072 / 262,144 with peak GPU memory
# (`nvidia-smi` every 100 ms).
set -u
unx() { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; chmod +x "$2"; }
unx "$OLD" /tmp/old; unx "$NEW" /tmp/new
case "$FA" in
  *.xz) python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open('/tmp/in.fa','wb'))" "$FA"; IN=/tmp/in.fa ;;
  *) IN=$FA ;;
esac
/tmp/new init -o /tmp/m256 --d-model 256 --n-layer 16 --seed 1 --force > /dev/null 2>&1
r() { # binary precision [label]
  local s e rc
  s=$(date +%s.%N)
  timeout 120 /tmp/$1 embed -m /tmp/m256 $IN -o /tmp/o.tsv -q --device cuda --precision $2; rc=$?
  e=$(date +%s.%N)
  python3 -c "print('$1 $2 ${3:-} rc $rc %.2f s' % ($e - $s))"
}
for p in ${PRECISIONS:-f16 f32}; do
  r new $p first; r old $p first
  for i in $(seq "${ROUNDS:-3}"); do r old $p; r new $p; done
done
for c in 65536 131072 262144; do
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > /tmp/mem.log & M=$!
  s=$(date +%s.%N)
  timeout 120 /tmp/new embed -m /tmp/m256 $IN -o /tmp/o.tsv -q --device cuda --precision f16 --chunk-size $c; rc=$?
  e=$(date +%s.%N); kill $M; wait $M 2>/dev/null
  python3 -c "
mem=[int(x) for x in open('/tmp/mem.log').read().split() if x.strip().isdigit()]
print('new f16 chunk $c rc $rc %.2f s, peak GPU mem %d MiB' % ($e-$s, max(mem)))"
done
