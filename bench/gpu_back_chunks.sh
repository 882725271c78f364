#!/usr/bin/env bash
# Run on the GPU machine from the repository root. The scan's backward kernel with time split
# into chunks (the usual choice, or GENOMAMBA_BACK_CHUNK) against the same kernel with time
# walked in one piece by each thread, at few rows and long sequences (examples/
# scan_backward_bench.rs with `whole`); with TESTS=1 first the backward and gradient tests of
# tests/gpu_scan.rs. gpu/ holds scan_backward_bench.xz (and gpu_scan.xz for TESTS=1): stripped,
# xz-compressed `--features cuda` release builds. SHAPES lists "BATCH:LEN:D_INNER" items;
# CHUNKS lists chunk lengths to try on the first shape.
set -u
unpack() { python3 -c "import lzma,shutil; shutil.copyfileobj(lzma.open('gpu/$1.xz'), open('/tmp/$1','wb'))"; chmod +x "/tmp/$1"; }
unpack scan_backward_bench
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
if [ "${TESTS:-0}" = 1 ]; then
  unpack gpu_scan
  /tmp/gpu_scan --test-threads 1 --nocapture gpu_scan_backward_kernel gpu_scan_gradients 2>&1 | grep -v "^$"
fi
SHAPES=${SHAPES:-1:131072:512 1:131072:128 4:32768:512 64:2048:128 8:2048:128 1:1048576:128}
for s in $SHAPES; do
  IFS=: read -r b l d <<<"$s"
  /tmp/scan_backward_bench "$b" "$l" "$d" whole | tail -1
done
first=${SHAPES%% *}
IFS=: read -r b l d <<<"$first"
for c in ${CHUNKS:-}; do
  echo "GENOMAMBA_BACK_CHUNK=$c"
  GENOMAMBA_BACK_CHUNK=$c /tmp/scan_backward_bench "$b" "$l" "$d" whole | tail -1
done
