#!/usr/bin/env bash
# Run on the GPU machine from the repository root, with gpu/scan_bench.xz holding the stripped,
# xz-compressed `--features cuda` build of examples/scan_bench.rs. Times the scan alone (best
# of 10 after a warm-up) at the Mamba paper's setting (batch 1, d_inner 1024, d_state 16, f32,
# L = 2^12 .. 2^20) with the chunked passes and with the one-pass tile kernel
# for each variant in TILES ("mode:segs:items ...": mode `tile` or `tile-replay`, the value of
# `GENOMAMBA_SCAN_WALK`; planes per cube `GENOMAMBA_TILE_SEGS`; steps per thread
# `GENOMAMBA_TILE_ITEMS`; optionally `:channels`, `GENOMAMBA_TILE_CHANNELS`), interleaved, ROUNDS times. Prints the 2^16 and 2^20 rows (all rows
# with ALL=1).
set -u
python3 -c "import lzma,shutil; shutil.copyfileobj(lzma.open('gpu/scan_bench.xz'), open('/tmp/sb','wb'))"
chmod +x /tmp/sb
SHAPE=${SHAPE:-"20 1024 f32"}
for round in $(seq "${ROUNDS:-1}"); do
  for v in chunked ${TILES:-tile:16:4 tile-replay:16:4}; do
    if [ "$v" = chunked ]; then
      env GENOMAMBA_SCAN_WALK=off timeout 120 /tmp/sb $SHAPE > /tmp/tile_out.txt 2>&1
    else
      IFS=: read -r mode segs items channels <<< "$v"
      env GENOMAMBA_SCAN_WALK="$mode" GENOMAMBA_TILE_SEGS="$segs" GENOMAMBA_TILE_ITEMS="$items" \
        GENOMAMBA_TILE_CHANNELS="${channels:-8}" \
        timeout 120 /tmp/sb $SHAPE > /tmp/tile_out.txt 2>&1
    fi
    rc=$?
    if [ "${ALL:-0}" = 1 ]; then sed "s/^/round $round $v: /" /tmp/tile_out.txt
    else awk -v tag="round $round $v" '$1 == 1048576 || $1 == 65536 { print tag ": L " $1 " best " $2 " ms, median " $3 " ms, " $6 " GB/s" }' /tmp/tile_out.txt; fi
    [ $rc = 0 ] || { echo "round $round $v: rc $rc"; tail -3 /tmp/tile_out.txt; }
  done
done
