#!/usr/bin/env python3
"""Gene-structure-only baselines for the coding-vs-background task (per base, N excluded).

1. Length rule: a base is coding when a stop-to-stop open reading frame of at least L bases
   (any of the six frames) contains it, for several L.
2. ORF-feature logistic regression: the six sorted ln(1 + ORF length) features that
   `genomamba train --orf-features` feeds its head, fitted by Newton's method on every 7th
   base of the training genome's first 90% (its last 10% is the held-out stretch, as in
   `genomamba train --val-fraction 0.1`), then applied unchanged to the other genomes.

This is what the Mamba part of models/coding-bacteria must beat or at least not spoil.

Usage:
  python3 bench/orf_baseline.py --train GENOME.fa[.gz] TRUTH.bed --eval DIR
  (DIR holds NAME.fa[.gz] with NAME.cds.bed; truth BED rows named CDS count as coding)
Needs numpy.
"""
import argparse
import glob
import gzip
import os

import numpy as np

FWD = [b"TAA", b"TAG", b"TGA"]
REV = [b"TTA", b"CTA", b"TCA"]


def read_fasta(path):
    op = gzip.open if path.endswith(".gz") else open
    recs, name, parts = {}, None, []
    with op(path, "rt") as fh:
        for line in fh:
            if line.startswith(">"):
                if name is not None:
                    recs[name] = "".join(parts)
                name, parts = line[1:].split()[0], []
            else:
                parts.append(line.strip().upper())
    if name is not None:
        recs[name] = "".join(parts)
    return recs


def truth_masks(bed, recs):
    m = {k: np.zeros(len(v), bool) for k, v in recs.items()}
    with open(bed) as fh:
        for line in fh:
            f = line.rstrip("\n").split("\t")
            if len(f) >= 4 and f[3] == "CDS" and f[0] in m:
                m[f[0]][int(f[1]):int(f[2])] = True
    return m


def stretch_lengths(seq):
    """[len, 6]: per base and frame, the length of its stop-to-stop stretch (genomamba's rule:
    a stop codon belongs to the stretch it ends, in reading direction)."""
    n = len(seq)
    b = np.frombuffer(seq.encode(), np.uint8)
    cols = []
    for rev, stops in ((False, FWD), (True, REV)):
        is_stop = np.zeros(n, bool)
        if n >= 3:
            for st in stops:
                is_stop[: n - 2] |= (b[: n - 2] == st[0]) & (b[1 : n - 1] == st[1]) & (b[2:] == st[2])
        for frame in range(3):
            pos = np.nonzero(is_stop[frame::3])[0] * 3 + frame
            cuts = pos if rev else pos + 3
            cuts = cuts[(cuts > 0) & (cuts < n)]
            edges = np.concatenate([[0], cuts, [n]])
            widths = np.diff(edges)
            cols.append(np.repeat(widths, widths))
    return np.stack(cols, 1)


def features(seq):
    return np.sort(np.log1p(stretch_lengths(seq)), 1)[:, ::-1]


def mcc(t, p):
    tp = float(np.sum(t & p)); tn = float(np.sum(~t & ~p))
    fp = float(np.sum(~t & p)); fn = float(np.sum(t & ~p))
    d = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / d if d else 0.0


def load(fa, bed):
    recs = read_fasta(fa)
    t = truth_masks(bed, recs)
    keep = np.concatenate([np.frombuffer(recs[k].encode(), np.uint8) != ord("N") for k in recs])
    return recs, np.concatenate([t[k] for k in recs]), keep


def fit_logistic(x, y, iters=30):
    x = np.c_[x, np.ones(len(x))]
    w = np.zeros(x.shape[1])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-x @ w))
        g = x.T @ (p - y)
        h = (x * (p * (1 - p))[:, None]).T @ x + 1e-6 * len(x) * np.eye(len(w))
        step = np.linalg.solve(h, g)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", nargs=2, metavar=("GENOME", "BED"), required=True)
    ap.add_argument("--eval", metavar="DIR", required=True)
    ap.add_argument("--lengths", default="150,300,450,600")
    a = ap.parse_args()
    lengths = [int(v) for v in a.lengths.split(",")]
    recs, t, keep = load(*a.train)
    # Held-out stretch: the last 10% of every record (one record for a bacterial genome).
    train_mask, val_mask, feats = [], [], []
    for k, s in recs.items():
        n = len(s)
        cut = n - int(n * 0.1)
        m = np.zeros(n, bool); m[:cut] = True
        train_mask.append(m); val_mask.append(~m); feats.append(features(s))
    tm, vm, f = np.concatenate(train_mask), np.concatenate(val_mask), np.concatenate(feats)
    sel = np.nonzero(tm & keep)[0][::7]
    w = fit_logistic(f[sel], t[sel].astype(float))
    print("# ORF-feature logistic regression weights (6 sorted ln(1+length), bias):",
          " ".join("%.3f" % v for v in w))

    def score(recs, t, keep, mask=None):
        f = np.concatenate([features(s) for s in recs.values()])
        lens = np.concatenate([stretch_lengths(s).max(1) for s in recs.values()])
        m = keep if mask is None else keep & mask
        row = [mcc(t[m], (np.c_[f, np.ones(len(f))] @ w > 0)[m])]
        row += [mcc(t[m], (lens >= L)[m]) for L in lengths]
        return row

    print("genome\tgc\tlogistic\t" + "\t".join("len>=%d" % L for L in lengths))
    row = score(recs, t, keep, vm)
    print("%s (held-out 10%%)\t\t" % os.path.basename(a.train[0]) + "\t".join("%.4f" % v for v in row))
    rows = []
    fas = sorted(glob.glob(os.path.join(a.eval, "*.fa")) + glob.glob(os.path.join(a.eval, "*.fa.gz")))
    for fa in fas:
        stem = fa[:-3] if fa.endswith(".gz") else fa
        bed = os.path.splitext(stem)[0] + ".cds.bed"
        if not os.path.exists(bed):
            continue
        r, tt, kk = load(fa, bed)
        seq = "".join(r.values())
        gc = 100.0 * sum(seq.count(c) for c in "GC") / max(1, sum(seq.count(c) for c in "ACGT"))
        row = score(r, tt, kk)
        rows.append(row)
        print("%s\t%.1f\t" % (os.path.basename(os.path.splitext(stem)[0]), gc) + "\t".join("%.4f" % v for v in row))
    if rows:
        print("mean\t\t" + "\t".join("%.4f" % v for v in np.mean(rows, 0)))


if __name__ == "__main__":
    main()
