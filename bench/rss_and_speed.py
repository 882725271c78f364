#!/usr/bin/env python3
"""Speed and peak memory of `genomamba embed` on real chromosomes (CPU).

Runs the release binary as a user would (whole process, wall clock) and reads the child's
peak RSS from getrusage. Usage (from the repository root, after `cargo build --release`):

    python3 bench/rss_and_speed.py [--whole] [--whole-region] [--threads 2] [--d-model 64]
        [--n-layer 4] [--d-state 16] [--bin PATH]

Prints one line per run: what, bases, seconds, bases/s, peak RSS (MiB).
"""
import argparse, os, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import BIN, CHR20, CHR20_LEN, timed  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="2")
    ap.add_argument("--d-model", default="64")
    ap.add_argument("--n-layer", default="4")
    ap.add_argument("--d-state", default="16")
    ap.add_argument("--bin", default=BIN, help="the genomamba binary to run")
    ap.add_argument("--chunk-size", default="8192")
    ap.add_argument("--whole", action="store_true", help="also embed the whole of chr20 (63 Mb)")
    ap.add_argument("--whole-region", action="store_true",
                    help="also embed the whole of chr20 as a region (--region 20)")
    ap.add_argument("--sizes", default="2,8", help="region sizes in Mb")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "m")
        subprocess.run([a.bin, "init", "-o", model, "--d-model", a.d_model, "--n-layer", a.n_layer,
                        "--d-state", a.d_state], check=True, capture_output=True)
        print(f"{a.bin}: model d_model={a.d_model} n_layer={a.n_layer} d_state={a.d_state} "
              f"threads={a.threads} chunk={a.chunk_size}")
        print("what\tbases\tseconds\tbases_per_s\tpeak_rss_MiB")
        jobs = []
        for mb in [float(x) for x in a.sizes.split(",") if x]:
            start, bases = 30_000_001, int(mb * 1_000_000)
            jobs.append((f"chr20 {mb:g} Mb", ["--region", f"20:{start}-{start + bases - 1}"], bases))
        if a.whole_region:
            jobs.append(("chr20 whole, as --region 20", ["--region", "20"], CHR20_LEN))
        if a.whole:
            jobs.append(("chr20 whole", [], CHR20_LEN))
        for what, extra, bases in jobs:
            out = os.path.join(tmp, "out.tsv")
            cmd = [a.bin, "embed", "-m", model, CHR20, "-o", out, "--quiet", "--threads", a.threads,
                   "--chunk-size", a.chunk_size] + extra
            secs, rss = timed(cmd)
            print(f"{what}\t{bases}\t{secs:.1f}\t{bases / secs:,.0f}\t{rss:.0f}", flush=True)


if __name__ == "__main__":
    main()
