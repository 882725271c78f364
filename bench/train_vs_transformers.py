#!/usr/bin/env python3
"""Training throughput: genomamba vs Hugging Face transformers' MambaModel on the CPU.

Same architecture (Mamba-1 backbone, d_state 16, expand 2, conv 4, mean-pooled hidden states
into a linear head), same DNA, same batch size, same thread count, one run. Measures bases per
second of forward + backward + optimizer step:
  - genomamba: `genomamba train --class oct4=A.fa --class mafk=B.fa ... --threads T --quiet`,
    `train_bases_per_s` from metrics.jsonl (validation time excluded; mean over the epochs
    after the first, which carries the warm-up, or the only epoch);
  - transformers: a python process (torch.set_num_threads(T)) training MambaModel + a linear
    head on the masked mean of last_hidden_state (transformers has no
    MambaForSequenceClassification), AdamW lr 1e-3, cross-entropy, global grad-norm clipping
    at 1 as genomamba does by default; K timed steps after 2 warm-up steps; bases/s = real
    (non-padding) tokens / time. Without mamba_ssm / causal_conv1d (the usual CPU case) it
    runs its PyTorch reference path: a Python loop over positions for the selective scan.
Data: the first N/2 sequences of each of oct4_peaks.fa and mafk_peaks.fa (200 bp peaks),
written to temporary FASTA files. Peak RSS of each tool's whole process comes from GNU time.

Usage: python3 bench/train_vs_transformers.py [--d-model 64] [--n-layer 2] [--batch-size 32]
       [--threads 2] [--sequences 2048] [--epochs 2] [--steps 20] [--bin target/release/genomamba]
Prints one JSON object. Needs: pip install torch transformers; cargo build --release.
"""
import argparse, json, os, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import timed  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "labeled", "oct4_vs_mafk")
CLASSES = [("oct4", "oct4_peaks.fa"), ("mafk", "mafk_peaks.fa")]

# Runs in its own process so that GNU time's peak RSS is torch's alone.
# argv: data.json settings.json out.json
TORCH_TRAIN = r"""
import importlib.util, json, random, sys, time
cfg = json.load(open(sys.argv[2]))
import torch
torch.set_num_threads(cfg["threads"])
import transformers
from transformers import MambaConfig, MambaModel

TOKENS = {"A": 7, "C": 8, "G": 9, "T": 10, "U": 10}
PAD = 4
data = json.load(open(sys.argv[1]))
examples = [([TOKENS.get(c, 11) for c in seq.upper()], label) for seq, label in data]
n_classes = max(label for _, label in examples) + 1

torch.manual_seed(cfg["seed"])
rng = random.Random(cfg["seed"])


class Classifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = MambaModel(MambaConfig(
            vocab_size=16, hidden_size=cfg["d_model"], num_hidden_layers=cfg["n_layer"],
            state_size=16, expand=2, conv_kernel=4, residual_in_fp32=False,
            pad_token_id=PAD, bos_token_id=2, eos_token_id=1))
        self.head = torch.nn.Linear(cfg["d_model"], n_classes)

    def forward(self, ids, mask):
        # Right padding and a causal model: padding never reaches a real position, so only
        # the pool needs the mask (as in genomamba).
        h = self.backbone(input_ids=ids, use_cache=False).last_hidden_state
        m = mask.unsqueeze(-1)
        return self.head((h * m).sum(1) / m.sum(1).clamp_min(1.0))


def batches():
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        for i in range(0, len(order) - cfg["batch_size"] + 1, cfg["batch_size"]):
            rows = [examples[j] for j in order[i:i + cfg["batch_size"]]]
            width = max(len(t) for t, _ in rows)
            ids = torch.full((len(rows), width), PAD, dtype=torch.long)
            mask = torch.zeros((len(rows), width))
            for r, (t, _) in enumerate(rows):
                ids[r, :len(t)] = torch.tensor(t)
                mask[r, :len(t)] = 1.0
            labels = torch.tensor([label for _, label in rows])
            yield ids, mask, labels, sum(len(t) for t, _ in rows)


model = Classifier().train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
stream = batches()


def step():
    ids, mask, labels, bases = next(stream)
    loss = torch.nn.functional.cross_entropy(model(ids, mask), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    loss.item()  # genomamba reads every step's loss back too
    return bases


for _ in range(2):
    step()
bases = 0
t0 = time.perf_counter()
for _ in range(cfg["steps"]):
    bases += step()
secs = time.perf_counter() - t0
have = lambda m: importlib.util.find_spec(m) is not None
json.dump({
    "bases_per_s": bases / secs, "timed_steps": cfg["steps"], "timed_bases": bases,
    "timed_s": secs, "torch": torch.__version__, "transformers": transformers.__version__,
    "torch_threads": torch.get_num_threads(),
    "params": sum(p.numel() for p in model.parameters()),
    "mamba_ssm": have("mamba_ssm"), "causal_conv1d": have("causal_conv1d"),
    "kernels": have("kernels"),
}, open(sys.argv[3], "w"))
"""


def read_fasta(path, n):
    """The first n records of a FASTA file, as sequences (multi-line records joined)."""
    seqs, cur = [], None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith(">"):
                if cur is not None:
                    seqs.append("".join(cur))
                    if len(seqs) == n:
                        return seqs
                cur = []
            elif line and cur is not None:
                cur.append(line)
    if cur is not None and len(seqs) < n:
        seqs.append("".join(cur))
    if len(seqs) < n:
        sys.exit(f"{path}: only {len(seqs)} records, --sequences asks for {n}")
    return seqs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sequences", type=int, default=2048, help="total, half from each class")
    ap.add_argument("--epochs", type=int, default=2, help="genomamba epochs")
    ap.add_argument("--steps", type=int, default=20, help="timed transformers steps")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "genomamba"))
    a = ap.parse_args()
    if a.sequences < 2 or a.epochs < 1 or a.steps < 1 or a.batch_size < 1 or a.threads < 1:
        sys.exit("--sequences >= 2, --epochs, --steps, --batch-size and --threads >= 1")
    if a.sequences < a.batch_size:
        sys.exit("--sequences must be at least --batch-size")
    if not os.access(a.bin, os.X_OK):
        sys.exit(f"{a.bin}: not found; run cargo build --release")

    per_class = a.sequences // 2
    with tempfile.TemporaryDirectory() as tmp:
        data, class_args = [], []
        for label, (name, file) in enumerate(CLASSES):
            seqs = read_fasta(os.path.join(DATA, file), per_class)
            fa = os.path.join(tmp, f"{name}.fa")
            with open(fa, "w") as f:
                f.writelines(f">{name}{i}\n{s}\n" for i, s in enumerate(seqs))
            class_args += ["--class", f"{name}={fa}"]
            data += [(s, label) for s in seqs]
        mean_len = sum(len(s) for s, _ in data) / len(data)

        # genomamba
        out_dir = os.path.join(tmp, "model")
        g_secs, g_rss = timed([a.bin, "train", "-o", out_dir] + class_args + [
            "--d-model", str(a.d_model), "--n-layer", str(a.n_layer), "--d-state", "16",
            "--expand", "2", "--d-conv", "4", "--epochs", str(a.epochs),
            "--batch-size", str(a.batch_size), "--threads", str(a.threads), "--quiet",
            "--val-fraction", "0.1", "--seed", "0"])
        with open(os.path.join(out_dir, "metrics.jsonl")) as f:
            epochs = [json.loads(line) for line in f if line.strip()]
        rates = [e["train_bases_per_s"] for e in epochs]
        counted = rates[1:] or rates
        g_rate = sum(counted) / len(counted)
        g_version = subprocess.run([a.bin, "--version"], capture_output=True,
                                   text=True).stdout.strip()

        # transformers, in its own process (own peak RSS, own thread pool)
        data_path, cfg_path, res_path = (os.path.join(tmp, n) for n in
                                         ("data.json", "settings.json", "torch.json"))
        json.dump(data, open(data_path, "w"))
        json.dump({"d_model": a.d_model, "n_layer": a.n_layer, "batch_size": a.batch_size,
                   "threads": a.threads, "steps": a.steps, "seed": 0}, open(cfg_path, "w"))
        script = os.path.join(tmp, "torch_train.py")
        open(script, "w").write(TORCH_TRAIN)
        t_secs, t_rss = timed([sys.executable, script, data_path, cfg_path, res_path])
        t = json.load(open(res_path))

    fast = t["mamba_ssm"] and t["causal_conv1d"]
    print(json.dumps({
        "genomamba_train_bases_per_s": round(g_rate, 1),
        "transformers_train_bases_per_s": round(t["bases_per_s"], 1),
        "ratio_genomamba_over_transformers": round(g_rate / t["bases_per_s"], 2),
        "settings": {"d_model": a.d_model, "n_layer": a.n_layer, "d_state": 16, "expand": 2,
                     "d_conv": 4, "batch_size": a.batch_size, "threads": a.threads,
                     "sequences": a.sequences, "mean_length": round(mean_len, 1),
                     "genomamba_epochs": a.epochs, "transformers_timed_steps": a.steps,
                     "transformers_warmup_steps": 2},
        "genomamba": {"version": g_version, "bin": a.bin,
                      "train_bases_per_s_per_epoch": [round(r, 1) for r in rates],
                      "epochs_averaged": len(counted), "process_wall_s": round(g_secs, 2),
                      "peak_rss_mib": round(g_rss, 1),
                      "optimizer": "AdamW lr 2e-3 (warm-up + cosine), wd 0.05, clip-norm 1, "
                                   "rc augmentation; 90% of sequences trained per epoch"},
        "transformers": {"version": t["transformers"], "torch": t["torch"],
                         "torch_threads": t["torch_threads"], "params": t["params"],
                         "model": "MambaModel + Linear head on the masked mean of "
                                  "last_hidden_state (no MambaForSequenceClassification)",
                         "optimizer": "AdamW lr 1e-3, clip_grad_norm 1",
                         "timed_s": round(t["timed_s"], 2), "timed_bases": t["timed_bases"],
                         "process_wall_s": round(t_secs, 2), "peak_rss_mib": round(t_rss, 1),
                         "mamba_ssm": t["mamba_ssm"], "causal_conv1d": t["causal_conv1d"],
                         "scan_path": "PyTorch reference path (sequential loop over positions; "
                         + ("mamba_ssm / causal_conv1d are installed but CUDA-only)" if fast else
                            "mamba_ssm / causal_conv1d not installed, the usual CPU case)")},
    }, indent=2))


if __name__ == "__main__":
    main()
