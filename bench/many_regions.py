#!/usr/bin/env python3
"""Many short regions (CPU): wall time and peak RSS of `embed`.

Writes a BED of N intervals of W bases spread evenly over hg19 chr20 (bgzip, with .fai and
.gzi), or with `--contigs K` over a synthetic draft assembly of K contigs (random bases,
seeded; plain FASTA, or bgzip with `--bgzip`, indexed with `samtools faidx`), one interval
(or `--per-contig` intervals, in order) per contig spread evenly over them, then runs, for
each binary given, `embed` with the regions as N `--region` arguments and, when the binary
has it, as `--regions-bed`. A tiny model, so that reading the regions is what is measured. Usage (from the repository root, after `cargo build --release`):

    python3 bench/many_regions.py --bin OLD --bin NEW [--n 10000] [--width 1000]
        [--contigs 100000 --contig-len 400 [--per-contig K] [--bgzip]] [--bed-only]

Prints one line per run: binary, how the regions were given, regions, seconds, regions/s,
peak RSS (MiB).
"""
import argparse, os, random, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import BIN, CHR20, CHR20_LEN, timed  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", action="append", help="a genomamba binary (repeatable)")
    ap.add_argument("--n", type=int, default=10_000, help="number of regions")
    ap.add_argument("--width", type=int, default=1_000, help="bases per region")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--contigs", type=int, default=0,
                    help="a synthetic assembly of this many contigs instead of chr20")
    ap.add_argument("--contig-len", type=int, default=400)
    ap.add_argument("--per-contig", type=int, default=1,
                    help="intervals per chosen contig, in order within it")
    ap.add_argument("--bgzip", action="store_true",
                    help="the synthetic assembly bgzip-compressed (indexed with .fai and .gzi)")
    ap.add_argument("--bed-only", action="store_true",
                    help="give the regions only as --regions-bed (past the argument-list limit)")
    a = ap.parse_args()
    bins = a.bin or [BIN]
    with tempfile.TemporaryDirectory() as tmp:
        if a.contigs:
            assert a.width <= a.contig_len
            genome = os.path.join(tmp, "assembly.fa")
            rng = random.Random(7)
            with open(genome, "w") as f:
                for i in range(a.contigs):
                    seq = "".join(rng.choice("ACGT") for _ in range(a.contig_len))
                    f.write(f">contig_{i}\n")
                    for j in range(0, len(seq), 60):
                        f.write(seq[j:j + 60] + "\n")
            if a.bgzip:
                subprocess.run(["bgzip", genome], check=True)
                genome += ".gz"
            subprocess.run(["samtools", "faidx", genome], check=True)
            k = a.per_contig
            assert a.n % k == 0 and a.n // k <= a.contigs
            step = a.contigs // (a.n // k)
            gap = (a.contig_len - a.width) // k
            places = [(f"contig_{i * step}", j * gap) for i in range(a.n // k) for j in range(k)]
            what = (f"a synthetic assembly of {a.contigs} contigs of {a.contig_len} bases "
                    f"({'bgzip' if a.bgzip else 'plain'}), {k} per contig")
        else:
            genome = CHR20
            # Skip chr20's leading Ns: regions from 1 Mb on.
            first, step = 1_000_000, (CHR20_LEN - 1_000_000 - a.width) // a.n
            places = [("20", first + i * step) for i in range(a.n)]
            what = "chr20 (bgzip)"
        bed = os.path.join(tmp, "regions.bed")
        with open(bed, "w") as f:
            for name, s in places:
                f.write(f"{name}\t{s}\t{s + a.width}\n")
        as_args = []
        for name, s in places:
            as_args += ["--region", f"{name}:{s + 1}-{s + a.width}"]
        model = os.path.join(tmp, "m")
        subprocess.run([bins[0], "init", "-o", model, "--d-model", "8", "--n-layer", "1",
                        "--d-state", "4"], check=True, capture_output=True)
        print(f"{a.n} regions of {a.width} bases on {what}; model d_model 8, 1 layer, "
              f"d_state 4; threads {a.threads}")
        print("binary\tgiven as\tregions\tseconds\tregions_per_s\tpeak_rss_MiB")
        for _ in range(a.repeat):
            for b in bins:
                has_bed = subprocess.run([b, "embed", "--help"], capture_output=True,
                                         text=True).stdout.count("--regions-bed") > 0
                ways = [] if a.bed_only else [("--region x N", as_args)]
                if has_bed:
                    ways.append(("--regions-bed", ["--regions-bed", bed]))
                for how, extra in ways:
                    out = os.path.join(tmp, "out.tsv")
                    cmd = [b, "embed", "-m", model, genome, "-o", out, "--quiet", "--threads",
                           a.threads] + extra
                    secs, rss = timed(cmd)
                    with open(out) as f:
                        rows = sum(1 for _ in f) - 1
                    assert rows == a.n, f"{b} {how}: {rows} rows, expected {a.n}"
                    print(f"{b}\t{how}\t{a.n}\t{secs:.2f}\t{a.n / secs:,.0f}\t{rss:.0f}",
                          flush=True)


if __name__ == "__main__":
    main()
