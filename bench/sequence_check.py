#!/usr/bin/env python3
"""Scores `genomamba classify` on the validation split of `genomamba train`, next to the k-mer
baseline, through the command line only.

`genomamba baseline --predictions FILE` (same data flags and seed as `train`) lists the
validation records of the split (column `id` = `path:record`) with the baseline's
probabilities. This script writes those records to a FASTA, runs `genomamba classify -m MODEL`
on it, and prints both auROCs and accuracies (rank-based auROC, ties counted half).

    python3 bench/sequence_check.py --bin target/release/genomamba --model models/oct4-mafk \\
        --class oct4=PATH --class mafk=PATH --seed 0
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile


def auroc(scores, positives):
    pairs = sorted(zip(scores, positives))
    n_pos = sum(positives)
    n_neg = len(positives) - n_pos
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        mid = (i + j + 1) / 2.0  # mean 1-based rank of the tie group
        rank_sum += mid * sum(1 for k in range(i, j) if pairs[k][1])
        i = j
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def read_fasta(path):
    recs, name, seq = {}, None, []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\r\n")
            if line.startswith(">"):
                if name is not None:
                    recs[name] = "".join(seq)
                name, seq = line[1:].split()[0], []
            else:
                seq.append(line)
    if name is not None:
        recs[name] = "".join(seq)
    return recs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/genomamba")
    ap.add_argument("--model", required=True)
    ap.add_argument("--class", dest="classes", action="append", required=True)
    ap.add_argument("--seed", default="0")
    ap.add_argument("--val-fraction", default="0.1")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pred = os.path.join(tmp, "baseline.tsv")
        cmd = [a.bin, "baseline", "--seed", a.seed, "--val-fraction", a.val_fraction,
               "--predictions", pred, "-o", os.path.join(tmp, "b.json")]
        for c in a.classes:
            cmd += ["--class", c]
        subprocess.run(cmd, check=True)
        labels = [c.split("=", 1)[0] for c in a.classes]
        files = {c.split("=", 1)[1]: read_fasta(c.split("=", 1)[1]) for c in a.classes}
        rows = [l.rstrip("\n").split("\t") for l in open(pred)][1:]
        fa = os.path.join(tmp, "val.fa")
        truth, base = {}, {}
        with open(fa, "w") as out:
            for i, r in enumerate(rows):
                # `id` is `path:record`, and record names may hold ':' themselves.
                path = next(p for p in files if r[0].startswith(p + ":"))
                rec = r[0][len(path) + 1:]
                name = f"v{i}"
                out.write(f">{name}\n{files[path][rec]}\n")
                truth[name] = r[1]
                base[name] = float(r[3 + 1])  # p of the second class
        got = os.path.join(tmp, "classify.tsv")
        subprocess.run([a.bin, "classify", "-m", a.model, fa, "-o", got, "--quiet"], check=True)
        crow = [l.rstrip("\n").split("\t") for l in open(got)][1:]
        names = [r[0] for r in crow]
        pos = [truth[n] == labels[1] for n in names]
        model_p = [float(r[4]) for r in crow]
        model_acc = sum(r[2] == truth[r[0]] for r in crow) / len(crow)
        base_acc = sum((base[n] >= 0.5) == p for n, p in zip(names, pos)) / len(names)
        report = {
            "validation_records": len(names),
            "model": {"auroc": auroc(model_p, pos), "accuracy": model_acc},
            "kmer_baseline": {"auroc": auroc([base[n] for n in names], pos), "accuracy": base_acc},
        }
        json.dump(report, sys.stdout, indent=1)
        print()


if __name__ == "__main__":
    main()
