#!/usr/bin/env bash
# Run on the GPU machine from the repository root, gpu/ holding scan_bench.xz (a stripped,
# xz-compressed `--features cuda` release build of examples/scan_bench.rs). The scan alone at
# batches whose rows × channels fill the GPU without splitting time, 2^30 elements (f32,
# d_inner 1024) or 2^29 (f16, d_inner 512), three ways: the usual choice (the walk kernel at
# these shapes), the chunked passes (GENOMAMBA_SCAN_WALK=off), and pass 3 alone over whole
# rows (GENOMAMBA_SCAN_WALK=off GENOMAMBA_SCAN_THREADS=1: one chunk per row).
set -u
python3 -c "import lzma,shutil; shutil.copyfileobj(lzma.open('gpu/scan_bench.xz'), open('/tmp/scan_bench','wb'))"; chmod +x /tmp/scan_bench
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
for s in ${SHAPES:-16:16:1024:f32 64:14:1024:f32 256:12:1024:f32 1024:10:1024:f32 16:16:512:f16 64:14:512:f16 256:12:512:f16}; do
  IFS=: read -r b l d f <<<"$s"
  for mode in auto chunked whole; do
    case $mode in
      auto) env=() ;;
      chunked) env=(GENOMAMBA_SCAN_WALK=off) ;;
      whole) env=(GENOMAMBA_SCAN_WALK=off GENOMAMBA_SCAN_THREADS=1) ;;
    esac
    echo "batch $b L 2^$l d_inner $d $f $mode: $(env "${env[@]}" /tmp/scan_bench "$l" "$d" "$f" "$b" "$l" | tail -1)"
  done
done
