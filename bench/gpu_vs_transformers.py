# Run on the GPU machine (python3 with torch + transformers), after unpacking the cuda binary to /tmp/g.
# Device-side: transformers' MambaModel (PyTorch scan) vs genomamba on the same GPU, same weights.
import json, os, random, subprocess, time, torch
from transformers import MambaConfig, MambaModel
torch.manual_seed(0); random.seed(0)
cfg = MambaConfig(vocab_size=16, hidden_size=256, num_hidden_layers=16, state_size=16, expand=2,
                  conv_kernel=4, residual_in_fp32=False, pad_token_id=4, bos_token_id=2, eos_token_id=1)
MambaModel(cfg).save_pretrained("/tmp/ck", safe_serialization=True)
m = MambaModel.from_pretrained("/tmp/ck").cuda().eval()
T = {"A": 7, "C": 8, "G": 9, "T": 10}
# LENGTHS=4096,16384 limits the lengths (the peer takes about a second per 1,000 bases).
for L in [int(x) for x in os.environ.get("LENGTHS", "4096,16384,65536").split(",")]:
    dna = "".join(random.choice("ACGT") for _ in range(L))
    open("/tmp/d.fa", "w").write(">s\n" + dna + "\n")
    ids = torch.tensor([[T[c] for c in dna]], device="cuda")
    torch.cuda.reset_peak_memory_stats(); torch.cuda.synchronize(); t0 = time.perf_counter()
    with torch.no_grad():
        h = m(ids, use_cache=False).last_hidden_state[0].mean(0)
    torch.cuda.synchronize(); th = time.perf_counter() - t0
    mem = torch.cuda.max_memory_allocated() / 2**30
    t0 = time.perf_counter()
    subprocess.run(["/tmp/g", "embed", "-m", "/tmp/ck", "/tmp/d.fa", "-o", "/tmp/o.tsv", "-q", "--device", "cuda"], check=True)
    tg = time.perf_counter() - t0
    g = torch.tensor([float(x) for x in open("/tmp/o.tsv").read().splitlines()[1].split("\t")[2:]])
    err = (g - h.cpu()).abs().max() / h.abs().max()
    print(f"L={L}: transformers {th:.2f} s ({L/th:,.0f} bases/s, peak {mem:.2f} GiB) | genomamba process {tg:.2f} s ({L/tg:,.0f} bases/s) | ratio {th/tg:.1f}x | mean-pooled rel err {err:.1e}", flush=True)
