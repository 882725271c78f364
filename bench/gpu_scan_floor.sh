#!/usr/bin/env bash
# Run on the GPU machine from the repository root, gpu/ holding scan_bench.xz and
# scan_backward_bench.xz (stripped, xz-compressed `--features cuda` release builds of the examples).
# The scan alone at batch 1 x 2^20 and at batches of the same 2^30 elements, GPU time per kernel
# of the batch-1 scan (`ncu`), then the backward kernel at 2 x 131,072 x 128 over lanes and
# chunk lengths and its `ncu` sections.
set -u
unpack() { python3 -c "import lzma,shutil; shutil.copyfileobj(lzma.open('gpu/$1.xz'), open('/tmp/$1','wb'))"; chmod +x "/tmp/$1"; }
unpack scan_bench; unpack scan_backward_bench
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
echo "== scan alone, batch 1, 2^20"; /tmp/scan_bench 20 1024 f32 1 20 | tail -1
echo "== batch 16 x 2^16"; /tmp/scan_bench 16 1024 f32 16 16 | tail -1
echo "== batch 64 x 2^14"; /tmp/scan_bench 14 1024 f32 64 14 | tail -1
echo "== batch 64 x 2^14 walk off"; GENOMAMBA_SCAN_WALK=off /tmp/scan_bench 14 1024 f32 64 14 | tail -1
echo "== ncu per kernel, batch 1, 2^20"
timeout 200 ncu --clock-control none --metrics gpu__time_duration.sum --csv /tmp/scan_bench 20 1024 f32 1 20 > $OUT/scan_ncu.csv 2>/dev/null
python3 bench/ncu_top.py $OUT/scan_ncu.csv > /tmp/scan_top.txt; head -12 /tmp/scan_top.txt
echo "== backward sweep 2x131072x128"
for l in 1 2 4; do for c in 128 256 512; do echo "lanes $l chunk $c: $(GENOMAMBA_BACK_LANES=$l GENOMAMBA_BACK_CHUNK=$c /tmp/scan_backward_bench 2 131072 128 whole 2>&1 | tail -1)"; done; done
echo "== ncu backward"
timeout 200 ncu --clock-control none --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis --kernel-name regex:scan_backward_kernel --launch-count 1 /tmp/scan_backward_bench 2 131072 128 whole > $OUT/back_ncu.txt 2>&1
grep -v "^==PROF" $OUT/back_ncu.txt | grep -E "Duration|Throughput|Registers|Achieved|Theoretical Occ|Block Limit|Issue Slots|Eligible|Active Warps|Stall|Warp Cycles|Grid Size|Block Size|Shared Memory|Local|L1/TEX Hit|Executed Ipc" | head -60
