"""Shared by the benchmark scripts: time a command as a whole process, with its peak RSS."""
import os, subprocess, sys, tempfile, time

# The repository, its release binary, and the bundled chr20 with its length.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "genomamba")
CHR20 = os.path.join(ROOT, "..", "shared", "data", "genomes", "hg19_chr20.fa.gz")
CHR20_LEN = 63_025_520


def timed(cmd):
    """Runs cmd; returns (wall seconds, peak RSS in MiB). Exits on failure.

    Peak RSS comes from GNU time: a child forked or vforked from this python would count
    the interpreter's own pages (torch included) in its maxrss, even after exec.
    """
    t0 = time.perf_counter()
    with tempfile.NamedTemporaryFile("r") as rss:
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss.name] + cmd)
        secs = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"failed: {' '.join(cmd)}")
        kib = int(rss.read().split()[-1])
    return secs, kib / 1024.0
