#!/usr/bin/env python3
"""genomamba vs Hugging Face transformers' MambaModel on the CPU, same weights, same DNA.

Writes a random Hugging Face Mamba checkpoint (vocab 16, Caduceus DNA token ids), a FASTA of
random DNA, then times each tool as a user runs it (a whole process, wall clock, peak RSS):
  - transformers: a python process that loads the checkpoint and runs MambaModel forward
    (no mamba_ssm installed, so its PyTorch scan), torch.set_num_threads(THREADS);
  - genomamba: `genomamba embed -m CKPT dna.fa -o out.tsv --threads THREADS`.
It also checks that both give the same mean-pooled hidden states (relative error).

Usage: python3 bench/vs_transformers.py --d-model 256 --n-layer 16 --length 4096 [--threads 2]
Needs: pip install torch transformers safetensors; cargo build --release.
"""
import argparse, json, os, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import timed  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "genomamba")
TOKENS = {"A": 7, "C": 8, "G": 9, "T": 10, "N": 11}

HF_RUN = r"""
import sys, time, json, torch
torch.set_num_threads(int(sys.argv[3]))
from transformers import MambaModel
ids = json.load(open(sys.argv[2]))
m = MambaModel.from_pretrained(sys.argv[1]).eval()
with torch.no_grad():
    h = m(torch.tensor([ids]), use_cache=False).last_hidden_state[0]
json.dump(h.mean(0).tolist(), open(sys.argv[4], "w"))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--n-layer", type=int, default=16)
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--threads", default="2")
    ap.add_argument("--skip-transformers", action="store_true")
    a = ap.parse_args()
    import random
    import torch
    from transformers import MambaConfig, MambaModel
    random.seed(0)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "ckpt")
        cfg = MambaConfig(vocab_size=16, hidden_size=a.d_model, num_hidden_layers=a.n_layer,
                          state_size=16, expand=2, conv_kernel=4, residual_in_fp32=False,
                          pad_token_id=4, bos_token_id=2, eos_token_id=1)
        MambaModel(cfg).save_pretrained(ckpt, safe_serialization=True)
        dna = "".join(random.choice("ACGT") for _ in range(a.length))
        fa = os.path.join(tmp, "dna.fa")
        with open(fa, "w") as f:
            f.write(">seq\n" + dna + "\n")
        ids_path = os.path.join(tmp, "ids.json")
        json.dump([TOKENS[c] for c in dna], open(ids_path, "w"))
        out_tsv = os.path.join(tmp, "out.tsv")
        g_secs, g_rss = timed([BIN, "embed", "-m", ckpt, fa, "-o", out_tsv, "--quiet",
                               "--threads", a.threads])
        g_vec = [float(x) for x in open(out_tsv).read().splitlines()[1].split("\t")[2:]]
        print(f"setting\td_model={a.d_model} n_layer={a.n_layer} L={a.length} threads={a.threads}")
        print(f"genomamba\t{g_secs:.2f} s\t{a.length / g_secs:,.0f} bases/s\tpeak RSS {g_rss:.0f} MiB")
        if a.skip_transformers:
            return
        script = os.path.join(tmp, "hf_run.py")
        open(script, "w").write(HF_RUN)
        hf_out = os.path.join(tmp, "hf.json")
        h_secs, h_rss = timed([sys.executable, script, ckpt, ids_path, a.threads, hf_out])
        h_vec = json.load(open(hf_out))
        err = max(abs(x - y) for x, y in zip(g_vec, h_vec)) / max(abs(y) for y in h_vec)
        print(f"transformers\t{h_secs:.2f} s\t{a.length / h_secs:,.0f} bases/s\tpeak RSS {h_rss:.0f} MiB")
        print(f"ratio\tgenomamba is {h_secs / g_secs:.1f}x transformers (bases/s)\t"
              f"mean-pooled relative error {err:.1e}")


if __name__ == "__main__":
    main()
