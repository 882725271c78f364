#!/usr/bin/env bash
# Run on the GPU machine from the repository root. The scan's backward op (`scan_backward_bench B L D
# whole`, best / median of 5) for each build in BINS (gpu/NAME.xz: stripped, xz-compressed
# `--features cuda` builds of examples/scan_backward_bench.rs), in turn, ROUNDS times, at
# SHAPES ("BATCH:LEN:D_INNER") and each lane count in LANES (GENOMAMBA_BACK_LANES; `default`
# leaves it unset), and each checkpoint block in BLOCKS (GENOMAMBA_BACK_BLOCK, same).
set -u
BINS=${BINS:-back_old back_new}
SHAPES=${SHAPES:-2:131072:128 1:131072:512 64:2048:128 128:2048:128 32:200:128}
for b in $BINS; do python3 -c "import lzma,shutil; shutil.copyfileobj(lzma.open('gpu/$b.xz'), open('/tmp/$b','wb'))"; chmod +x /tmp/$b; done
for r in $(seq "${ROUNDS:-1}"); do
  for s in $SHAPES; do
    IFS=: read -r bt l d <<<"$s"
    for ln in ${LANES:-default}; do
      for bl in ${BLOCKS:-default}; do
        for b in $BINS; do
          env=()
          [ "$ln" != default ] && env+=("GENOMAMBA_BACK_LANES=$ln")
          [ "$bl" != default ] && env+=("GENOMAMBA_BACK_BLOCK=$bl")
          echo "$b lanes $ln block $bl: $(env "${env[@]}" /tmp/$b "$bt" "$l" "$d" whole 2>&1 | tail -1)"
        done
      done
    done
  done
done
