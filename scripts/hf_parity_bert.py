"""Checks layerdrift's `bert` kind against transformers + sentence-transformers'
pooling on all-MiniLM-L6-v2: the same four token sequences as
scenarios/minilm-l6.yaml, run by transformers' `BertModel` (eager attention,
fp64 and fp32, one padded batch with an attention mask), mean-pooled over the
real tokens and L2-normalised as sentence-transformers does, against the
pooled checkpoint (the last layer) of a layerdrift baseline of that scenario.

Usage: .venv/bin/python scripts/hf_parity_bert.py BASELINE
       (BASELINE: `layerdrift run scenarios/minilm-l6.yaml --save-baseline BASELINE`)
Needs: torch, transformers, safetensors, numpy; models/ fetched.
Prints the max |difference| per run; exit 1 when the oracle (f64, stored
as f32 in the baseline) is further from transformers' fp64 result than one
f32 rounding — a different computation, not rounding.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from transformers import BertModel

ROOT = Path(__file__).resolve().parent.parent
OBSERVED = [(0, 0), (0, -1), (1, -1), (2, -1), (3, 0), (3, -1)]


def sentence_embeddings(model, ids, dtype):
    n = max(len(s) for s in ids)
    x = torch.zeros(len(ids), n, dtype=torch.long)
    mask = torch.zeros(len(ids), n, dtype=torch.long)
    for b, s in enumerate(ids):
        x[b, : len(s)] = torch.tensor(s)
        mask[b, : len(s)] = 1
    m = model.to(dtype)
    with torch.no_grad():
        # The embedding sum in f32, as layerdrift computes it once on the
        # host (word + token type 0, then + position), so both start from
        # the same bits; the rest in `dtype`.
        e = model.embeddings
        w32 = lambda t: t.weight.detach().float()
        s32 = (w32(e.word_embeddings)[x] + w32(e.token_type_embeddings)[0]) + w32(
            e.position_embeddings
        )[:n]
        forward = e.forward
        e.forward = lambda *a, **k: e.LayerNorm(s32.to(dtype))
        h = m(input_ids=x, attention_mask=mask).last_hidden_state
        e.forward = forward
    # sentence-transformers' Pooling(mean) + Normalize.
    w = mask.unsqueeze(-1).to(h.dtype)
    mean = (h * w).sum(1) / w.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(mean, p=2, dim=1).double().numpy()


def main():
    torch.set_num_threads(2)
    base = sys.argv[1]
    ids = json.loads((ROOT / "scenarios/data/minilm-tokens.json").read_text())
    model = BertModel.from_pretrained(ROOT / "models/all-minilm-l6-v2", attn_implementation="eager")
    model.eval()
    ref = {"f64": sentence_embeddings(model, ids, torch.float64),
           "f32": sentence_embeddings(model, ids, torch.float32)}
    want = np.stack([ref["f64"][b] for b, _ in OBSERVED])
    f = safe_open(base, "np")
    worst_oracle = 0.0
    print(f"transformers f32 vs f64: max |d| {np.abs(ref['f32'] - ref['f64']).max():.3e}")
    for name in sorted(f.keys()):
        layers = f.get_tensor(name)  # [layers, rows, dim]
        got = layers[-1].astype(np.float64)
        d = np.abs(got - want).max()
        d32 = np.abs(got - np.stack([ref["f32"][b] for b, _ in OBSERVED])).max()
        print(f"{name:32s} pooled vs transformers f64: max |d| {d:.3e}   vs f32: {d32:.3e}")
        if name.startswith("reference-cpu"):
            # Half an f32 ulp of each value: the baseline's rounding.
            ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
            worst_oracle = max(worst_oracle, float((np.abs(got - want) / ulp).max()))
    if worst_oracle > 0.5:
        print(f"FAIL: the oracle is {worst_oracle:.2f} f32 ulps from transformers in f64")
        sys.exit(1)
    print(f"ok: the oracle is transformers' f64 sentence embedding rounded to f32 (max {worst_oracle:.2f} ulp)")


if __name__ == "__main__":
    main()
