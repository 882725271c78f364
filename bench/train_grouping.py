"""Sequence training on records of mixed lengths, with and without --group-by-length.

The task: chr20's CpG islands (201-10,782 bases) against stretches of the same lengths 20 kb
beside them (island-free), as one FASTA per class. Each setting trains the same model from
the same seed; the script prints wall time, peak RSS, the training rate the metrics log
records (bases, padding excluded, per second) and the best validation auROC.

    python3 bench/train_grouping.py [--bin BIN] [--fa FA] [--bed BED] [--device cpu]
        [--epochs 2] [--rounds 1] [--d-model 128] [--n-layer 4] [-- extra train args]
"""
import argparse, gzip, json, os, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import BIN, CHR20, ROOT, timed

p = argparse.ArgumentParser()
p.add_argument("--bin", default=BIN)
p.add_argument("--fa", default=CHR20)
p.add_argument("--bed", default=os.path.join(ROOT, "..", "shared", "data", "genomes", "hg19_chr20.cpg_islands.bed"))
p.add_argument("--device", default="cpu")
p.add_argument("--epochs", type=int, default=2)
p.add_argument("--rounds", type=int, default=1)
p.add_argument("--d-model", type=int, default=128)
p.add_argument("--n-layer", type=int, default=4)
p.add_argument("extra", nargs="*")
a = p.parse_args()

seq = "".join(l.strip() for l in gzip.open(a.fa, "rt") if not l.startswith(">"))
islands = [tuple(map(int, l.split()[1:3])) for l in open(a.bed) if l.strip()]


def free(s, e):
    return s >= 0 and e <= len(seq) and all(e <= i or s >= j for i, j in islands) and "N" not in seq[s:e].upper()


t = tempfile.mkdtemp()
with open(f"{t}/cpg.fa", "w") as c, open(f"{t}/flank.fa", "w") as f:
    for k, (s, e) in enumerate(islands):
        n = e - s
        for d in (-20_000, 20_000, -40_000, 40_000):
            if free(s + d, e + d):
                c.write(f">cpg{k}\n{seq[s:e]}\n")
                f.write(f">flank{k}\n{seq[s + d:e + d]}\n")
                break
pairs = sum(1 for l in open(f"{t}/cpg.fa") if l.startswith(">"))
print(f"{pairs} islands with an island-free flank of the same length")

for r in range(1, a.rounds + 1):
    for group in (False, True):
        out = f"{t}/m_{int(group)}_{r}"
        cmd = [a.bin, "train", "--class", f"cpg={t}/cpg.fa", "--class", f"flank={t}/flank.fa",
               "-o", out, "--epochs", str(a.epochs), "--d-model", str(a.d_model),
               "--n-layer", str(a.n_layer), "--device", a.device, "--seed", "1", "-q"] + a.extra
        if group:
            cmd.append("--group-by-length")
        secs, rss = timed(cmd)
        logs = [json.loads(l) for l in open(f"{out}/metrics.jsonl")]
        rate = sum(l["train_bases_per_s"] for l in logs) / len(logs)
        best = max(l["val"]["auroc"] for l in logs)
        print(f"round {r} {'--group-by-length' if group else 'random batches   '}: {secs:7.2f} s, peak RSS {rss:5.0f} MiB, "
              f"training {rate / 1e3:8.1f} k bases/s, best val auROC {best:.4f}")
