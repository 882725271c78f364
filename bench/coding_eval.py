#!/usr/bin/env python3
"""Per-base coding-vs-background scoring of an annotation against a CDS truth set.

Every base of every FASTA record counts, except N bases.  A base is "coding"
in the truth when any truth interval covers it (either strand), and
"predicted coding" when any prediction interval with the chosen label covers
it.  Intervals are merged per record before the masks are built.

Usage:
  # score one prediction (BED6 as written by `genomamba annotate --bed`)
  python3 bench/coding_eval.py --genome G.fa --truth G.cds.bed --pred PRED.bed [--label coding]

  # score Prodigal's gene calls the same way
  python3 bench/coding_eval.py --genome G.fa --truth G.cds.bed --pred calls.gff --pred-format gff

  # annotate and score every DIR/*.fa (or .fa.gz) that has a DIR/*.cds.bed next to it
  python3 bench/coding_eval.py --all DIR MODEL [--bin target/release/genomamba]
      [--annotate-args "--threads 2 --device cuda"] [--keep OUTDIR]

  # built-in check on small hand-made masks
  python3 bench/coding_eval.py --self-test

Formats: BED is 0-based half-open (chrom, start, end[, name, ...]); with a
label filter only rows whose 4th column equals the label count (`any` keeps
every row).  GFF is 1-based inclusive; only rows whose type is CDS count.
A file ending in .gff/.gff3 (optionally .gz) is read as GFF unless the
format is given.  Python standard library only.
"""
import argparse
import glob
import gzip
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time

# ---------------------------------------------------------------- reading


def _open_text(path):
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(path, "rt")
    if magic == b"\xfd7zXZ\x00":
        import lzma

        return lzma.open(path, "rt")
    if magic[:3] == b"BZh":
        import bz2

        return bz2.open(path, "rt")
    return open(path)


def read_fasta(path):
    """Return a list of (name, sequence bytes); name is the header's first word."""
    records = []
    name = None
    chunks = []
    with _open_text(path) as fh:
        for line in fh:
            if line.startswith(">"):
                if name is not None:
                    records.append((name, "".join(chunks).encode("ascii", "replace")))
                words = line[1:].split()
                name = words[0] if words else ""
                chunks = []
            elif line.startswith(";"):
                continue
            else:
                chunks.append(line.strip())
    if name is not None:
        records.append((name, "".join(chunks).encode("ascii", "replace")))
    return records


def _guess_format(path, given):
    if given != "auto":
        return given
    p = path.lower()
    if p.endswith(".gz"):
        p = p[:-3]
    return "gff" if p.endswith((".gff", ".gff3", ".gtf")) else "bed"


def read_intervals(path, fmt="auto", label=None):
    """Return ({chrom: [(start, end), ...]}, {label: rows seen}) as 0-based half-open.

    fmt: bed | gff | auto.  For BED, label=None or 'any' keeps every row.
    For GFF only rows of type CDS are kept.
    """
    fmt = _guess_format(path, fmt)
    out = {}
    seen = {}
    with _open_text(path) as fh:
        for line in fh:
            if not line.strip() or line.startswith(("#", "track", "browser")):
                if line.startswith("##FASTA"):
                    break
                continue
            f = line.rstrip("\n").split("\t")
            if fmt == "gff":
                if len(f) < 9:
                    continue
                kind = f[2]
                seen[kind] = seen.get(kind, 0) + 1
                if kind != "CDS":
                    continue
                chrom, start, end = f[0], int(f[3]) - 1, int(f[4])
            else:
                if len(f) < 3:
                    f = line.split()
                    if len(f) < 3:
                        continue
                kind = f[3] if len(f) > 3 else "."
                seen[kind] = seen.get(kind, 0) + 1
                if label not in (None, "any") and kind != label:
                    continue
                chrom, start, end = f[0], int(f[1]), int(f[2])
            if end > start:
                out.setdefault(chrom, []).append((start, end))
    return out, seen


def merge(intervals):
    """Sort and merge overlapping or touching intervals."""
    merged = []
    for s, e in sorted(intervals):
        if merged and s <= merged[-1][1]:
            if e > merged[-1][1]:
                merged[-1][1] = e
        else:
            merged.append([s, e])
    return merged


# ---------------------------------------------------------------- scoring

_ONE = b"\x01"
# byte -> 1 for a real base, 0 for N/n (excluded from every count)
_VALID = bytes(0 if chr(i) in "Nn" else 1 for i in range(256))


def _popcount(x):
    try:
        return x.bit_count()
    except AttributeError:  # Python < 3.10
        return bin(x).count("1")


def mask_of(length, intervals):
    """bytearray with 1 at every base covered by the (merged) intervals."""
    m = bytearray(length)
    for s, e in merge(intervals):
        s = max(0, s)
        e = min(length, e)
        if e > s:
            m[s:e] = _ONE * (e - s)
    return m


def confusion(valid, truth, pred):
    """Counts (tp, fp, fn, tn) over bases where valid == 1.

    Each argument is a 0/1 byte string of one length.  The bytes are read as one
    big integer each, so AND and popcount work on the whole record at once.
    """
    v = int.from_bytes(valid, "little")
    t = int.from_bytes(truth, "little") & v
    p = int.from_bytes(pred, "little") & v
    n = _popcount(v)
    nt = _popcount(t)
    np_ = _popcount(p)
    tp = _popcount(t & p)
    fp = np_ - tp
    fn = nt - tp
    tn = n - tp - fp - fn
    return tp, fp, fn, tn


def metrics(tp, fp, fn, tn):
    n = tp + fp + fn + tn
    den = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    mcc = (tp * tn - fp * fn) / math.sqrt(den) if den else 0.0
    return {
        "bases": n,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "mcc": mcc,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
        "accuracy": (tp + tn) / n if n else 0.0,
        "pred_frac": (tp + fp) / n if n else 0.0,
        "truth_frac": (tp + fn) / n if n else 0.0,
    }


def score(records, truth, pred, warn=None):
    """records: [(name, seq)]; truth/pred: {chrom: [(s, e)]}.

    Returns (overall metrics, {record: metrics}, info dict).
    """
    names = {n for n, _ in records}
    info = {
        "records": len(records),
        "length": sum(len(s) for _, s in records),
        "n_bases": 0,
        "gc": 0.0,
        "truth_unknown_chroms": sorted(set(truth) - names),
        "pred_unknown_chroms": sorted(set(pred) - names),
    }
    gc = acgt = 0
    total = [0, 0, 0, 0]
    per = {}
    for name, seq in records:
        valid = seq.translate(_VALID)
        info["n_bases"] += len(seq) - _popcount(int.from_bytes(valid, "little"))
        up = seq.upper()
        g = up.count(b"G") + up.count(b"C")
        gc += g
        acgt += g + up.count(b"A") + up.count(b"T")
        c = confusion(valid, mask_of(len(seq), truth.get(name, ())), mask_of(len(seq), pred.get(name, ())))
        per[name] = metrics(*c)
        total = [a + b for a, b in zip(total, c)]
    info["gc"] = 100.0 * gc / acgt if acgt else 0.0
    if warn:
        for key in ("truth_unknown_chroms", "pred_unknown_chroms"):
            if info[key]:
                warn("%s: %d chrom(s) not in the FASTA, ignored (e.g. %s)"
                     % (key.split("_")[0], len(info[key]), info[key][0]))
    return metrics(*total), per, info


def score_files(genome, truth_path, pred_path, label="coding", pred_format="auto",
                truth_format="auto", truth_label="CDS", warn=None):
    records = read_fasta(genome)
    truth, truth_seen = read_intervals(truth_path, truth_format, truth_label)
    pred, pred_seen = read_intervals(pred_path, pred_format, label)
    if warn and not pred and pred_seen:
        warn("no prediction row has label %r; labels seen: %s" % (label, dict(pred_seen)))
    if warn and not truth and truth_seen:
        warn("no truth row has label %r; labels seen: %s (try --truth-label any)"
             % (truth_label, dict(truth_seen)))
    return score(records, truth, pred, warn)


# ---------------------------------------------------------------- self-test


def self_test():
    failures = 0

    def check(what, got, want, tol=1e-9):
        nonlocal failures
        ok = abs(got - want) <= tol
        print("%-52s got %.6f want %.6f  %s" % (what, got, want, "ok" if ok else "FAIL"))
        if not ok:
            failures += 1

    # merge
    got = merge([(5, 8), (0, 3), (2, 4), (8, 9), (12, 15)])
    want = [[0, 4], [5, 9], [12, 15]]
    print("%-52s %s" % ("merge", "ok" if got == want else "FAIL %r" % got))
    failures += got != want

    # 1) 10 bases, truth [0,4), pred [2,6): tp=2 fp=2 fn=2 tn=4
    #    mcc = (2*4 - 2*2) / sqrt(4*4*6*6) = 4/24
    seq = b"ACGTACGTAC"
    m, _, _ = score([("r", seq)], {"r": [(0, 4)]}, {"r": [(2, 6)]})
    check("partial overlap mcc", m["mcc"], 4 / 24)
    check("partial overlap precision", m["precision"], 0.5)
    check("partial overlap recall", m["recall"], 0.5)
    check("partial overlap pred_frac", m["pred_frac"], 0.4)

    # 2) perfect and inverted predictions
    m, _, _ = score([("r", seq)], {"r": [(3, 7)]}, {"r": [(3, 5), (4, 7)]})
    check("perfect (overlapping pred rows) mcc", m["mcc"], 1.0)
    m, _, _ = score([("r", seq)], {"r": [(3, 7)]}, {"r": [(0, 3), (7, 10)]})
    check("exact complement mcc", m["mcc"], -1.0)

    # 3) all-coding prediction: degenerate, MCC defined as 0
    m, _, _ = score([("r", seq)], {"r": [(3, 7)]}, {"r": [(0, 10)]})
    check("all predicted coding mcc", m["mcc"], 0.0)

    # 4) N bases excluded: pred covers only the N run, so it is as if empty
    m, _, _ = score([("r", b"ACGTNNNNAC")], {"r": [(0, 2)]}, {"r": [(0, 2), (4, 8)]})
    check("N bases excluded (bases)", m["bases"], 6)
    check("N bases excluded mcc", m["mcc"], 1.0)

    # 5) two records, either strand / overlapping truth rows, interval past end
    #    rec a (8 bp): truth [0,4) pred [0,2)  -> tp2 fn2 tn4
    #    rec b (6 bp): truth [2,5)+[3,6) = [2,6), pred [5,9)->[5,6) and [0,1)
    #                  -> tp1 fp1 fn3 tn1
    #    total tp3 fp1 fn5 tn5: mcc = (15-5)/sqrt(4*8*10*6)
    recs = [("a", b"ACGTACGT"), ("b", b"GGCCAA")]
    truth = {"a": [(0, 4)], "b": [(2, 5), (3, 6)]}
    pred = {"b": [(5, 9), (0, 1)], "a": [(0, 2)], "zz": [(0, 5)]}
    m, per, info = score(recs, truth, pred)
    check("two records mcc", m["mcc"], 10 / math.sqrt(4 * 8 * 10 * 6))
    check("two records recall", m["recall"], 3 / 8)
    check("record a precision", per["a"]["precision"], 1.0)
    check("GC%", info["gc"], 100.0 * 8 / 14)
    print("%-52s %s" % ("unknown pred chrom reported",
                        "ok" if info["pred_unknown_chroms"] == ["zz"] else "FAIL"))
    failures += info["pred_unknown_chroms"] != ["zz"]

    # 6) file round trip: BED label filter and Prodigal-style GFF
    with tempfile.TemporaryDirectory() as d:
        fa, tb, pb, pg = (os.path.join(d, x) for x in ("g.fa", "t.bed", "p.bed", "p.gff"))
        with open(fa, "w") as fh:
            fh.write(">chr1 some description\nACGTACGTAC\nGTACGTACGT\n>chr2\nNNNNACGTAC\n")
        with open(tb, "w") as fh:
            fh.write("chr1\t0\t10\tCDS\t0\t+\nchr1\t12\t15\tCDS\t0\t-\nchr1\t15\t20\ttRNA\t0\t+\n"
                     "chr2\t4\t8\tCDS\t0\t+\n")
        with open(pb, "w") as fh:
            fh.write("track name=x\nchr1\t0\t10\tcoding\t900\t.\nchr1\t10\t20\tother\t900\t.\n"
                     "chr2\t6\t10\tcoding\t900\t.\n")
        with open(pg, "w") as fh:
            fh.write("##gff-version  3\n# Sequence Data: seqnum=1\n"
                     "chr1\tProdigal_v2.6.3\tCDS\t1\t10\t5.0\t+\t0\tID=1_1\n"
                     "chr1\tProdigal_v2.6.3\tgene\t13\t15\t.\t-\t.\tID=x\n"
                     "chr2\tProdigal_v2.6.3\tCDS\t7\t10\t5.0\t-\t0\tID=2_1\n")
        # truth (CDS only): chr1 [0,10)+[12,15) = 13 bases; chr2 [4,8) = 4 bases
        # valid bases: 20 + 6 = 26; pred: chr1 [0,10), chr2 [6,10)
        # tp = 10 + 2 = 12, fp = 2, fn = 3 + 2 = 5, tn = 26 - 19 = 7
        want = (12 * 7 - 2 * 5) / math.sqrt(14 * 17 * 9 * 12)
        m, _, _ = score_files(fa, tb, pb)
        check("files: BED pred, label filter mcc", m["mcc"], want)
        m, _, _ = score_files(fa, tb, pg, pred_format="gff")
        check("files: GFF pred (CDS rows only) mcc", m["mcc"], want)
        m, _, _ = score_files(fa, tb, pb, label="any")
        # label any: chr1 pred [0,20): tp13 fp7; chr2 pred [6,10): tp2 fp2 fn2
        # -> tp15 fp9 fn2 tn0
        want_any = (15 * 0 - 9 * 2) / math.sqrt(24 * 17 * 9 * 2)
        check("files: --label any mcc", m["mcc"], want_any)

    print("self-test: %s" % ("all ok" if not failures else "%d FAILED" % failures))
    return 0 if not failures else 1


# ---------------------------------------------------------------- CLI


def _warn(msg):
    sys.stderr.write("warning: %s\n" % msg)


def run_all(args):
    d, model = args.all
    fas = sorted(sum((glob.glob(os.path.join(d, "*." + e)) for e in ("fa", "fasta", "fa.gz", "fasta.gz")), []))
    jobs = []
    for fa in fas:
        stem = os.path.splitext(fa[:-3] if fa.endswith(".gz") else fa)[0]
        bed = stem + ".cds.bed"
        if os.path.exists(bed):
            jobs.append((os.path.basename(stem), fa, bed))
    if not jobs:
        sys.stderr.write("no *.fa with a matching *.cds.bed in %s\n" % d)
        return 2
    tmp = None
    if args.keep:
        outdir = args.keep
        os.makedirs(outdir, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="coding_eval_")
        outdir = tmp.name
    extra = shlex.split(args.annotate_args or "")
    cols = ["genome", "gc", "length", "mcc", "precision", "recall", "pred_frac", "truth_frac", "seconds"]
    print("\t".join(cols), flush=True)
    rows = []
    for name, fa, bed in jobs:
        pred = os.path.join(outdir, name + ".pred.bed")
        cmd = [args.bin, "annotate", "-m", model, "-q", fa, "--bed", pred] + extra
        t0 = time.time()
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        secs = time.time() - t0
        if r.returncode != 0:
            sys.stderr.write("annotate failed on %s (%d): %s\n" % (name, r.returncode, r.stderr[-2000:]))
            print("\t".join([name, "NA", "NA", "NA", "NA", "NA", "NA", "NA", "%.1f" % secs]), flush=True)
            continue
        m, _, info = score_files(fa, bed, pred, label=args.label, pred_format="bed",
                                 truth_label=args.truth_label, warn=_warn)
        rows.append((name, m, info))
        print("%s\t%.1f\t%d\t%.4f\t%.4f\t%.4f\t%.4f\t%.4f\t%.1f" % (
            name, info["gc"], info["length"], m["mcc"], m["precision"], m["recall"],
            m["pred_frac"], m["truth_frac"], secs), flush=True)
    if rows:
        mean = sum(m["mcc"] for _, m, _ in rows) / len(rows)
        print("mean\t\t\t%.4f\t%.4f\t%.4f" % (
            mean,
            sum(m["precision"] for _, m, _ in rows) / len(rows),
            sum(m["recall"] for _, m, _ in rows) / len(rows)))
        print("# mean MCC over %d/%d genomes: %.4f" % (len(rows), len(jobs), mean))
    if args.keep:
        print("# predictions kept in %s" % outdir)
    if tmp:
        tmp.cleanup()
    return 0 if len(rows) == len(jobs) else 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--genome", help="FASTA (gzip/xz/bzip2 ok)")
    ap.add_argument("--truth", help="truth CDS intervals (BED or GFF)")
    ap.add_argument("--pred", help="predicted intervals (BED or GFF)")
    ap.add_argument("--label", default="coding",
                    help="BED name (col 4) of predicted-coding rows; 'any' = all rows [coding]")
    ap.add_argument("--truth-label", default="CDS",
                    help="BED name (col 4) of truth rows; 'any' = all rows [CDS]")
    ap.add_argument("--pred-format", choices=["auto", "bed", "gff"], default="auto")
    ap.add_argument("--truth-format", choices=["auto", "bed", "gff"], default="auto")
    ap.add_argument("--per-record", action="store_true", help="also print a line per record")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead")
    ap.add_argument("--all", nargs=2, metavar=("DIR", "MODEL"),
                    help="annotate and score every DIR/NAME.fa (or .fa.gz) with a DIR/NAME.cds.bed")
    ap.add_argument("--bin", default="target/release/genomamba", help="genomamba binary for --all")
    ap.add_argument("--annotate-args", default="",
                    help="extra arguments for `genomamba annotate` in --all, e.g. \"--threads 2\"")
    ap.add_argument("--keep", metavar="OUTDIR", help="--all: keep prediction BEDs here")
    ap.add_argument("--self-test", action="store_true", help="run the built-in checks")
    args = ap.parse_args(argv)

    if args.self_test:
        return self_test()
    if args.all:
        return run_all(args)
    if not (args.genome and args.truth and args.pred):
        ap.error("--genome, --truth and --pred are required (or --all / --self-test)")

    t0 = time.time()
    m, per, info = score_files(args.genome, args.truth, args.pred, label=args.label,
                               pred_format=args.pred_format, truth_format=args.truth_format,
                               truth_label=args.truth_label, warn=_warn)
    if args.json:
        print(json.dumps({"overall": m, "records": per if args.per_record else None,
                          "genome": info}, indent=1))
        return 0
    print("genome\t%s\trecords=%d\tlength=%d\tN=%d\tGC=%.1f%%" % (
        args.genome, info["records"], info["length"], info["n_bases"], info["gc"]))
    if args.per_record:
        for name, r in per.items():
            print("record\t%s\tbases=%d\tmcc=%.4f\tprecision=%.4f\trecall=%.4f\tpred_frac=%.4f"
                  "\ttruth_frac=%.4f" % (name, r["bases"], r["mcc"], r["precision"], r["recall"],
                                         r["pred_frac"], r["truth_frac"]))
    print("MCC\t%.4f" % m["mcc"])
    print("precision\t%.4f" % m["precision"])
    print("recall\t%.4f" % m["recall"])
    print("F1\t%.4f" % m["f1"])
    print("accuracy\t%.4f" % m["accuracy"])
    print("pred_frac\t%.4f" % m["pred_frac"])
    print("truth_frac\t%.4f" % m["truth_frac"])
    print("counts\ttp=%d fp=%d fn=%d tn=%d bases=%d" % (m["tp"], m["fp"], m["fn"], m["tn"], m["bases"]))
    print("seconds\t%.2f" % (time.time() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
