#!/usr/bin/env python3
"""Build small random Hugging Face Mamba checkpoints and reference outputs.

Run by hand from the repository root:

    python3 scripts/make_hf_fixtures.py

For every case in CASES this writes tests/fixtures/hf/<case>/ containing

  config.json        transformers MambaConfig (model_type "mamba")
  model.safetensors  float32 weights as written by save_pretrained
  expected.json      DNA inputs, their token ids and the float64
                     last_hidden_state (after norm_f) for each input

plus tests/fixtures/hf/manifest.json (a machine-readable summary of the
cases and of the checks below) and tests/fixtures/hf/README.md.

How the reference is produced
-----------------------------
The float32 checkpoint is loaded back with MambaModel.from_pretrained,
cast with .double() and run on CPU (batch 1, use_cache=False, eval mode)
through transformers' pure-PyTorch Mamba path: no mamba_ssm, causal_conv1d,
kernels or mambapy are importable, and the script asserts that the
module-level helpers of modeling_mamba still wrap their own torch code.

Even with residual_in_fp32=False, the stock transformers code drops to
float32 in a few places (MambaRMSNorm casts its input to float32, and the
mixer calls .float() on A_log, dt_proj.bias, D, B and the conv output).
So that the stored numbers are a genuine float64 reference, those casts
are neutralised for float64 tensors while the reference forward runs
(see float64_everywhere()).  Nothing else in the transformers code is
changed.  The largest difference from the stock (partly float32) forward
is recorded in manifest.json for each case; it is at float32 rounding
level.  The float64 outputs are also cross-checked against a short
independent float64 implementation in this file (independent_forward).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import random
import shutil
import sys
from pathlib import Path

import torch
import transformers
from safetensors import safe_open
from transformers import MambaConfig, MambaForCausalLM, MambaModel
from transformers.models.mamba import modeling_mamba

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_ROOT = REPO_ROOT / "tests" / "fixtures" / "hf"
COMMAND = "python3 scripts/make_hf_fixtures.py"

# Token ids of genomamba's character vocabulary (src/alphabet.rs).
TOKEN_OF = {"A": 7, "C": 8, "G": 9, "T": 10, "U": 10, "N": 11}
IUPAC_OTHER = set("RYSWKMBDHV")
PAD_ID, BOS_ID, EOS_ID = 4, 2, 1  # [PAD], [BOS], [SEP]: never produced by DNA
VOCAB_SIZE = 16

MAX_DIR_BYTES = 300 * 1024

# Each case: name, seed, the MambaConfig values that vary, which HF class is
# saved, and the standard deviation of the embedding table.
CASES = [
    dict(
        name="d16_l2_n16_e2_k4",
        seed=101,
        hidden_size=16, num_hidden_layers=2, state_size=16, expand=2, conv_kernel=4,
        use_bias=False, use_conv_bias=True, time_step_rank="auto", layer_norm_epsilon=1e-5,
        model_class="MambaModel", embed_std=0.5,
    ),
    dict(
        name="d24_l3_n8_e1_k3_bias",
        seed=202,
        hidden_size=24, num_hidden_layers=3, state_size=8, expand=1, conv_kernel=3,
        use_bias=True, use_conv_bias=True, time_step_rank="auto", layer_norm_epsilon=1e-5,
        model_class="MambaModel", embed_std=0.5,
    ),
    dict(
        name="d16_l3_n8_e2_k4_noconvbias",
        seed=303,
        hidden_size=16, num_hidden_layers=3, state_size=8, expand=2, conv_kernel=4,
        use_bias=True, use_conv_bias=False, time_step_rank="auto", layer_norm_epsilon=1e-5,
        model_class="MambaModel", embed_std=0.5,
    ),
    dict(
        name="d24_l2_n16_e2_k3_rank3",
        seed=404,
        hidden_size=24, num_hidden_layers=2, state_size=16, expand=2, conv_kernel=3,
        use_bias=False, use_conv_bias=False, time_step_rank=3, layer_norm_epsilon=1e-5,
        model_class="MambaModel", embed_std=0.5,
    ),
    dict(
        # Small embeddings so that eps=1e-3 visibly changes the first RMSNorm.
        name="d16_l2_n16_e1_k4_eps1e-3",
        seed=505,
        hidden_size=16, num_hidden_layers=2, state_size=16, expand=1, conv_kernel=4,
        use_bias=True, use_conv_bias=True, time_step_rank="auto", layer_norm_epsilon=1e-3,
        model_class="MambaModel", embed_std=0.05,
    ),
    dict(
        # Saved from MambaForCausalLM: tensor names carry the "backbone." prefix.
        name="causal_lm_d16_l2_n8_e2_k4",
        seed=606,
        hidden_size=16, num_hidden_layers=2, state_size=8, expand=2, conv_kernel=4,
        use_bias=False, use_conv_bias=True, time_step_rank="auto", layer_norm_epsilon=1e-5,
        model_class="MambaForCausalLM", embed_std=0.5,
    ),
]

CONFIG_KEYS = [
    "hidden_size", "num_hidden_layers", "state_size", "expand", "conv_kernel",
    "use_bias", "use_conv_bias", "time_step_rank", "layer_norm_epsilon",
]

SEQ_LENGTHS = (300, 97)


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------

def tokenize(dna: str) -> list[int]:
    ids = []
    for ch in dna:
        up = ch.upper()
        if up in TOKEN_OF:
            ids.append(TOKEN_OF[up])
        elif up in IUPAC_OTHER:
            ids.append(TOKEN_OF["N"])
        else:
            raise ValueError(f"not a nucleotide code: {ch!r}")
    return ids


def make_dna(rng: random.Random, length: int) -> str:
    """Random DNA with upper/lowercase bases, an N run and some IUPAC codes."""
    seq = [rng.choice("ACGT") for _ in range(length)]
    # A soft-masked (lowercase) stretch of roughly a quarter of the sequence,
    # in the first part.
    soft_len = max(12, length // 4)
    soft_start = rng.randrange(2, length // 3)
    for i in range(soft_start, min(length, soft_start + soft_len)):
        seq[i] = seq[i].lower()
    # A run of 20-26 N in the second half (so the state must survive it).
    n_len = rng.randint(20, 26)
    n_start = rng.randrange(length // 2, length - n_len - 8)
    for i in range(n_start, n_start + n_len):
        seq[i] = "N"
    # A few IUPAC ambiguity codes (mixed case) and one uracil, away from the N run.
    extras = ["R", "Y", "s", "w", "u" if length < 150 else "U"]
    free = [i for i in range(length) if not (n_start - 1 <= i <= n_start + n_len) and i > 0]
    for code, pos in zip(extras, rng.sample(free, len(extras))):
        seq[pos] = code
    dna = "".join(seq)
    assert "N" * 20 in dna
    assert any(c.islower() for c in dna) and any(c in "ACGT" for c in dna)
    return dna


# ---------------------------------------------------------------------------
# Model construction and perturbation
# ---------------------------------------------------------------------------

def build_config(case: dict) -> MambaConfig:
    return MambaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=case["hidden_size"],
        state_size=case["state_size"],
        num_hidden_layers=case["num_hidden_layers"],
        layer_norm_epsilon=case["layer_norm_epsilon"],
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        expand=case["expand"],
        conv_kernel=case["conv_kernel"],
        use_bias=case["use_bias"],
        use_conv_bias=case["use_conv_bias"],
        hidden_act="silu",
        residual_in_fp32=False,
        time_step_rank=case["time_step_rank"],
        use_cache=False,
        use_mambapy=False,
        use_associative_scan=False,
        tie_word_embeddings=True,
    )


def uniform_(t: torch.Tensor, lo: float, hi: float) -> None:
    t.copy_(torch.rand(t.shape, dtype=t.dtype) * (hi - lo) + lo)


@torch.no_grad()
def randomize(backbone: MambaModel, case: dict) -> None:
    """Overwrite every parameter with seeded random values of useful size.

    Nothing keeps a default init value (zero biases, unit norm weights,
    D = 1, A_log = log(1..N)), so a loader that silently skips a tensor,
    or an implementation that ignores one, shows up in the comparison.
    """
    emb = backbone.embeddings.weight
    emb.copy_(torch.randn(emb.shape) * case["embed_std"])
    uniform_(backbone.norm_f.weight, 0.6, 1.4)
    for block in backbone.layers:
        uniform_(block.norm.weight, 0.6, 1.4)
        m = block.mixer
        d_model, d_inner = m.hidden_size, m.intermediate_size
        n, rank, k = m.ssm_state_size, m.time_step_rank, m.conv_kernel_size

        a = 1.5 / math.sqrt(d_model)
        uniform_(m.in_proj.weight, -a, a)
        if m.in_proj.bias is not None:
            uniform_(m.in_proj.bias, -0.3, 0.3)

        a = 1.5 / math.sqrt(k)
        uniform_(m.conv1d.weight, -a, a)
        if m.conv1d.bias is not None:
            uniform_(m.conv1d.bias, -0.3, 0.3)

        a = 1.5 / math.sqrt(d_inner)
        uniform_(m.x_proj.weight, -a, a)

        a = 1.0 / math.sqrt(rank)
        uniform_(m.dt_proj.weight, -a, a)
        # softplus(bias) spans roughly 0.05 .. 0.7
        uniform_(m.dt_proj.bias, -3.0, 0.0)

        base = torch.log(torch.arange(1, n + 1, dtype=torch.float32)).expand(d_inner, n)
        m.A_log.copy_(base + 0.2 * torch.randn(d_inner, n))
        uniform_(m.D, 0.5, 1.5)

        a = 1.0 / math.sqrt(d_inner)
        uniform_(m.out_proj.weight, -a, a)
        if m.out_proj.bias is not None:
            uniform_(m.out_proj.bias, -0.2, 0.2)


def check_no_init_values(backbone: MambaModel) -> None:
    for name, p in backbone.named_parameters():
        v = p.detach().flatten()
        distinct = torch.unique(v).numel()
        assert distinct >= 0.95 * v.numel(), f"{name}: only {distinct} distinct values"
        assert not (v == 0).any(), f"{name} has exact zeros"
        assert not (v == 1).any(), f"{name} has exact ones"


# ---------------------------------------------------------------------------
# Reference forward
# ---------------------------------------------------------------------------

def assert_slow_path(model: MambaModel) -> None:
    """Fail unless transformers will use its own PyTorch Mamba code."""
    for pkg in ("mamba_ssm", "causal_conv1d", "kernels", "mambapy"):
        assert importlib.util.find_spec(pkg) is None, f"{pkg} is installed; fixtures need the torch path"
    for fname in ("causal_conv1d_fn", "causal_conv1d_update", "mamba_selective_scan",
                  "mamba_selective_state_update", "mamba_inner_fn"):
        wrapped = getattr(modeling_mamba, fname)
        free = dict(zip(wrapped.__code__.co_freevars, (c.cell_contents for c in wrapped.__closure__)))
        assert free["is_new_implementation"] is False, f"{fname} dispatches to an external kernel"
        assert free["implementation"] is free["torch_function"], fname
        assert free["torch_function"].__module__ == modeling_mamba.__name__, fname
    for block in model.layers:
        assert not block.mixer.use_mambapy
        assert not block.mixer.use_associative_scan
    assert not model.training


@contextlib.contextmanager
def float64_everywhere():
    """Keep float64 tensors in float64 inside transformers' Mamba forward.

    Tensor.float() becomes a no-op for float64 tensors (used in the mixer on
    A_log, dt_proj.bias, D, B and the conv output) and MambaRMSNorm is run
    without its cast to float32; the formula is otherwise the same.
    """
    orig_float = torch.Tensor.float
    orig_norm = modeling_mamba.MambaRMSNorm.forward

    def keep_f64_float(self, *args, **kwargs):
        if self.dtype == torch.float64:
            return self
        return orig_float(self, *args, **kwargs)

    def norm_forward(self, hidden_states):
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states

    torch.Tensor.float = keep_f64_float
    modeling_mamba.MambaRMSNorm.forward = norm_forward
    try:
        yield
    finally:
        torch.Tensor.float = orig_float
        modeling_mamba.MambaRMSNorm.forward = orig_norm


def run_hf(model: MambaModel, ids: list[int]) -> torch.Tensor:
    x = torch.tensor([ids], dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids=x, use_cache=False, return_dict=True)
    h = out.last_hidden_state[0]
    assert h.dtype == torch.float64
    return h


def independent_forward(sd: dict[str, torch.Tensor], cfg: MambaConfig, ids: list[int]) -> torch.Tensor:
    """Plain float64 Mamba forward written from the recurrence, for cross-checking."""
    sd = {k.removeprefix("backbone."): v.to(torch.float64) for k, v in sd.items()}
    d_inner = cfg.intermediate_size
    n = cfg.state_size
    r = int(cfg.time_step_rank)
    k = cfg.conv_kernel
    eps = cfg.layer_norm_epsilon

    def rms(x, w):
        return w * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))

    def silu(x):
        return x * torch.sigmoid(x)

    h = sd["embeddings.weight"][torch.tensor(ids)]  # (L, d_model)
    L = h.shape[0]
    for i in range(cfg.num_hidden_layers):
        p = f"layers.{i}."
        g = lambda name: sd.get(p + name)  # noqa: E731
        u = rms(h, g("norm.weight"))
        xz = u @ g("mixer.in_proj.weight").T
        if g("mixer.in_proj.bias") is not None:
            xz = xz + g("mixer.in_proj.bias")
        x, z = xz[:, :d_inner], xz[:, d_inner:]
        w = g("mixer.conv1d.weight")[:, 0, :]  # (d_inner, K)
        xc = torch.zeros_like(x)
        for t in range(L):
            for j in range(k):
                s = t - (k - 1) + j
                if s >= 0:
                    xc[t] += w[:, j] * x[s]
        if g("mixer.conv1d.bias") is not None:
            xc = xc + g("mixer.conv1d.bias")
        xc = silu(xc)
        dbc = xc @ g("mixer.x_proj.weight").T
        dt_low, B, C = dbc[:, :r], dbc[:, r:r + n], dbc[:, r + n:]
        dt = torch.nn.functional.softplus(dt_low @ g("mixer.dt_proj.weight").T + g("mixer.dt_proj.bias"))
        A = -torch.exp(g("mixer.A_log"))  # (d_inner, N)
        state = torch.zeros(d_inner, n, dtype=torch.float64)
        ys = []
        for t in range(L):
            state = torch.exp(dt[t][:, None] * A) * state + (dt[t] * xc[t])[:, None] * B[t][None, :]
            ys.append(state @ C[t] + g("mixer.D") * xc[t])
        y = torch.stack(ys) * silu(z)
        out = y @ g("mixer.out_proj.weight").T
        if g("mixer.out_proj.bias") is not None:
            out = out + g("mixer.out_proj.bias")
        h = h + out
    return rms(h, sd["norm_f.weight"])


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------

def write_expected(path: Path, case_name: str, seqs: list[dict]) -> None:
    """Compact JSON, one hidden row per line; floats via repr (round-trip exact)."""
    dumps = lambda v: json.dumps(v, separators=(",", ":"))  # noqa: E731
    parts = ["{" + f'"case":{dumps(case_name)},"sequences":[']
    for si, s in enumerate(seqs):
        rows = ",\n".join(dumps(row) for row in s["hidden"])
        parts.append(
            "{" + f'"dna":{dumps(s["dna"])},\n"token_ids":{dumps(s["token_ids"])},\n"hidden":[\n{rows}\n]' + "}"
            + ("," if si + 1 < len(seqs) else "")
        )
    parts.append("]}\n")
    path.write_text("\n".join(parts))
    # Make sure it parses back to exactly the same numbers.
    back = json.loads(path.read_text())
    assert back["case"] == case_name
    for a, b in zip(back["sequences"], seqs):
        assert a["hidden"] == b["hidden"] and a["token_ids"] == b["token_ids"] and a["dna"] == b["dna"]


def tensor_layout(path: Path) -> dict[str, dict]:
    layout = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            t = f.get_tensor(key)
            layout[key] = {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
    return layout


def make_case(case: dict) -> dict:
    name = case["name"]
    out_dir = OUT_ROOT / name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)

    torch.manual_seed(case["seed"])
    cfg = build_config(case)
    if case["model_class"] == "MambaForCausalLM":
        model = MambaForCausalLM(cfg)
        backbone = model.backbone
    else:
        model = MambaModel(cfg)
        backbone = model
    randomize(backbone, case)
    check_no_init_values(backbone)
    model = model.to(torch.float32).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    for f in out_dir.iterdir():
        f.chmod(0o644)  # safetensors writes 0600

    # --- what was written ------------------------------------------------
    config_json = json.loads((out_dir / "config.json").read_text())
    assert config_json["model_type"] == "mamba", config_json.get("model_type")
    st_path = out_dir / "model.safetensors"
    layout = tensor_layout(st_path)
    assert all(v["dtype"] == "float32" for v in layout.values()), layout
    prefix = "backbone." if case["model_class"] == "MambaForCausalLM" else ""
    assert all(k.startswith(prefix) for k in layout), list(layout)
    assert prefix or not any(k.startswith("backbone.") for k in layout), list(layout)
    assert f"{prefix}embeddings.weight" in layout
    print(f"\n[{name}] {case['model_class']} -> {st_path.relative_to(REPO_ROOT)}")
    for key, v in layout.items():
        print(f"    {key:45s} {v['dtype']} {v['shape']}")

    file_sd = {}
    with safe_open(str(st_path), framework="pt") as f:
        for key in f.keys():
            file_sd[key] = f.get_tensor(key)

    # --- reference -------------------------------------------------------
    ref, info = MambaModel.from_pretrained(out_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    ref = ref.eval()
    for key, p in ref.state_dict().items():
        saved = file_sd[prefix + key]
        assert p.dtype == torch.float32 and torch.equal(p, saved), f"{key} differs after reload"
    ref = ref.double()
    assert_slow_path(ref)

    rng = random.Random(case["seed"])
    seqs, stats = [], []
    for length in SEQ_LENGTHS:
        dna = make_dna(rng, length)
        ids = tokenize(dna)
        assert len(ids) == length and set(ids) <= {7, 8, 9, 10, 11}
        with float64_everywhere():
            hidden = run_hf(ref, ids)
        stock = run_hf(ref, ids)  # transformers as shipped (float32 inside)
        mine = independent_forward(file_sd, ref.config, ids)

        assert torch.isfinite(hidden).all()
        stock_diff = (hidden - stock).abs().max().item()
        indep_diff = (hidden - mine).abs().max().item()
        assert indep_diff < 1e-11, f"independent float64 forward disagrees: {indep_diff}"
        assert stock_diff < 1e-3, f"stock transformers forward disagrees: {stock_diff}"

        # Not near-constant: every channel moves along the sequence and
        # neighbouring positions differ.
        pos_std = hidden.std(dim=0)
        step = (hidden[1:] - hidden[:-1]).abs().max(dim=1).values
        assert pos_std.min().item() > 0.05, pos_std
        assert step.min().item() > 1e-6, step.min()

        # Long memory: changing only the first token must still change the
        # output well beyond the conv window (the SSM state carries it).
        alt = list(ids)
        alt[0] = 7 if ids[0] != 7 else 9
        with float64_everywhere():
            hidden_alt = run_hf(ref, alt)
        far = 3 * case["conv_kernel"]
        memory = (hidden - hidden_alt)[far:].abs().max().item()
        assert memory > 1e-8, memory

        seqs.append({
            "dna": dna,
            "token_ids": ids,
            "hidden": [[float(v) for v in row] for row in hidden.tolist()],
        })
        stats.append({
            "length": length,
            "max_abs_hidden": hidden.abs().max().item(),
            "min_std_over_positions": pos_std.min().item(),
            "max_abs_diff_vs_stock_transformers": stock_diff,
            "max_abs_diff_vs_independent_f64": indep_diff,
            "max_effect_of_first_token_after_pos_%d" % far: memory,
        })
        print(f"    len {length}: |h|max {stats[-1]['max_abs_hidden']:.3f}, "
              f"min pos-std {pos_std.min().item():.3f}, vs stock {stock_diff:.2e}, "
              f"vs independent {indep_diff:.2e}, first-token effect after {far}: {memory:.2e}")

    extra = {}
    if case["layer_norm_epsilon"] != 1e-5:
        # Show the epsilon matters: same weights, default epsilon.
        ref.config.layer_norm_epsilon = 1e-5
        for mod in ref.modules():
            if isinstance(mod, modeling_mamba.MambaRMSNorm):
                mod.variance_epsilon = 1e-5
        with float64_everywhere():
            h_default = run_hf(ref, seqs[0]["token_ids"])
        eps_effect = (torch.tensor(seqs[0]["hidden"], dtype=torch.float64) - h_default).abs().max().item()
        assert eps_effect > 1e-4, eps_effect
        extra["max_abs_change_if_eps_were_1e-5"] = eps_effect
        print(f"    eps effect (1e-3 vs 1e-5): {eps_effect:.2e}")

    write_expected(out_dir / "expected.json", name, seqs)

    (out_dir / "expected.json").chmod(0o644)
    sizes = {p.name: p.stat().st_size for p in sorted(out_dir.iterdir())}
    total = sum(sizes.values())
    assert total < MAX_DIR_BYTES, (name, sizes)
    print(f"    files: {sizes}  total {total} bytes")

    return {
        "case": name,
        "seed": case["seed"],
        "saved_class": case["model_class"],
        "tensor_prefix": prefix,
        "config": {k: config_json.get(k) for k in CONFIG_KEYS + ["intermediate_size", "vocab_size", "residual_in_fp32"]},
        "config_requested_time_step_rank": case["time_step_rank"],
        "embed_std": case["embed_std"],
        "tensors": layout,
        "sequences": stats,
        **extra,
        "bytes": total,
    }


def main() -> int:
    torch.set_num_threads(1)
    OUT_ROOT.mkdir(parents=True, exist_ok=True)
    summaries = [make_case(c) for c in CASES]

    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "python": sys.version.split()[0]}
    manifest = {"command": COMMAND, "versions": versions, "cases": summaries}
    (OUT_ROOT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (OUT_ROOT / "README.md").write_text(readme(summaries, versions))

    total = sum(s["bytes"] for s in summaries)
    print(f"\nwrote {len(summaries)} cases, {total} bytes of case files, under {OUT_ROOT.relative_to(REPO_ROOT)}")
    return 0


def readme(summaries: list[dict], versions: dict) -> str:
    rows = []
    for s in summaries:
        c = s["config"]
        rows.append(
            f"| `{s['case']}` | {s['saved_class']} | {c['hidden_size']} | {c['num_hidden_layers']} | "
            f"{c['state_size']} | {c['expand']} ({c['intermediate_size']}) | {c['conv_kernel']} | "
            f"{c['use_bias']} | {c['use_conv_bias']} | {c['time_step_rank']}"
            f"{' (set)' if s['config_requested_time_step_rank'] != 'auto' else ' (auto)'} | "
            f"{c['layer_norm_epsilon']:g} |"
        )
    table = "\n".join(rows)
    return f"""# Hugging Face Mamba fixtures

Small random Mamba checkpoints in Hugging Face format, with reference
hidden states from `transformers`, for testing genomamba's loader and
forward pass against an independent implementation.

Regenerate (from the repository root; deletes and rewrites every case
directory, the output is deterministic for a given torch build):

    {COMMAND}

Generated with torch {versions['torch']}, transformers {versions['transformers']},
Python {versions['python']}, on CPU.

## Cases

All cases: `vocab_size` 16, `hidden_act` silu, `residual_in_fp32` false,
`pad/bos/eos_token_id` 4/2/1 (`[PAD]`, `[BOS]`, `[SEP]`, which DNA never
produces), tied word embeddings.

| case | saved class | hidden | layers | state | expand (d_inner) | conv K | use_bias | use_conv_bias | dt rank | eps |
|---|---|---|---|---|---|---|---|---|---|---|
{table}

`time_step_rank` "auto" is resolved by `MambaConfig` to `ceil(hidden/16)`
and config.json stores the resulting integer. The `causal_lm_*` case was
saved from `MambaForCausalLM`, so its tensor names start with `backbone.`;
`lm_head.weight` is tied to the embeddings and is not stored. The other
cases were saved from `MambaModel` and have no prefix.

## Files per case

* `config.json`, `model.safetensors`: written by
  `save_pretrained(dir, safe_serialization=True)`, float32. The
  `causal_lm_*` case also got a `generation_config.json` from
  `save_pretrained`; it is not needed by the tests.
* `expected.json`:
  `{{"case": ..., "sequences": [{{"dna": ..., "token_ids": [...], "hidden": [[...], ...]}}, ...]}}`.
  `hidden` is `last_hidden_state` (after `norm_f`), one row of `hidden_size`
  float64 values per position, written with Python's `repr` (round-trips
  exactly).

Each case has two DNA strings (lengths {SEQ_LENGTHS[0]} and {SEQ_LENGTHS[1]}) from a seeded RNG, with
uppercase and soft-masked lowercase bases, a run of at least 20 `N`,
the ambiguity codes `R`, `Y`, `s`, `w` and one `U`/`u`. Token ids:
A=7, C=8, G=9, T=10 (U too), N=11 (other IUPAC codes too), either case.

## How the reference was computed

1. Build the model under `torch.manual_seed(seed)` and overwrite every
   parameter with random values of useful size: embeddings, norm weights
   (0.6..1.4), in/x/dt/out projection weights, conv weights, all biases
   that exist (none left at zero), `A_log = log(1..N) + 0.2 * noise`,
   `D` in 0.5..1.5, `dt_proj.bias` in -3..0.
2. Save in float32, load back with `MambaModel.from_pretrained` (checked to
   be bit-identical to the file), convert with `.double()`.
3. Forward on CPU, batch 1, `use_cache=False`, eval mode, through
   transformers' pure-PyTorch path (no `mamba_ssm`, `causal_conv1d`,
   `kernels`, `mambapy`; the script asserts this, and that the sequential
   scan loop is used).
4. Stock transformers still casts to float32 in `MambaRMSNorm` and in a few
   `.float()` calls inside the mixer, even for a float64 model. While the
   reference runs, those casts are made no-ops for float64 tensors so the
   stored values are true float64. The difference from the unmodified
   forward is at float32 rounding level and is listed per case in
   `manifest.json` (`max_abs_diff_vs_stock_transformers`), as is the
   agreement with a separate plain float64 implementation in the script
   (`max_abs_diff_vs_independent_f64`).

`manifest.json` also lists each case's tensor names, shapes and a few
sanity numbers (spread of the hidden states along the sequence, effect of
the first token on positions past the conv window).
"""


if __name__ == "__main__":
    sys.exit(main())
