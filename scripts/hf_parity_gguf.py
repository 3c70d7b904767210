#!/usr/bin/env python3
"""transformers vs layerdrift on a trained GGUF checkpoint (SmolLM2-135M).

    .venv/bin/python scripts/hf_parity_gguf.py prepare OUTDIR
    cargo layerdrift-tch run OUTDIR/smollm2/scenario.yaml --save-baseline OUTDIR/smollm2/layerdrift.safetensors
    .venv/bin/python scripts/hf_parity_gguf.py compare OUTDIR

`scripts/hf-parity-gguf` runs the three. transformers reads the same GGUF
file (`from_pretrained(…, gguf_file=…)`: gguf-py's dequantisation and its own
undoing of llama.cpp's Q/K row order), in fp32 with eager attention, over
the same real-text windows as scenarios/smollm2-135m.yaml (4 x 40 tokens,
prefill 32 + 8 one-token decode steps; rows 32..39 of window 4 observed).
The hooks, the comparison and the report are scripts/hf_parity.py's.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_parity as hp  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GGUF = os.path.join(ROOT, "models", "smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf")
TOKENS = os.path.join(ROOT, "scenarios", "data", "smollm2-tokens.json")
hp.BATCH, hp.SEQ, hp.PREFILL, hp.OBS_BATCH = 4, 40, 32, 3
hp.MODELS = ("smollm2",)


def prepare(outdir):
    import torch
    import transformers
    from safetensors.numpy import save_file
    from transformers import LlamaForCausalLM

    if not os.path.isfile(GGUF):
        hp._die(f"no {GGUF}: run scripts/fetch-models first")
    torch.set_num_threads(hp.THREADS)
    with open(TOKENS) as f:
        ids = json.load(f)
    tokens = torch.tensor(ids, dtype=torch.long)
    if tuple(tokens.shape) != (hp.BATCH, hp.SEQ):
        hp._die(f"{TOKENS}: shape {tuple(tokens.shape)}, expected [{hp.BATCH}, {hp.SEQ}]")
    model = LlamaForCausalLM.from_pretrained(
        os.path.dirname(GGUF), gguf_file=os.path.basename(GGUF),
        torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    mdir = os.path.join(os.path.abspath(outdir), "smollm2")
    os.makedirs(mdir, exist_ok=True)
    tensors = {}
    got = {}
    for s in hp.STRATEGIES:
        layers, fnorm, logits = hp._run(model, "llama", tokens, s)
        got[s] = (layers.numpy(), fnorm.numpy(), logits.numpy())
        tensors[s], tensors[f"{s}/final_norm"], tensors[f"{s}/logits"] = got[s]
    save_file(tensors, os.path.join(mdir, "transformers.safetensors"), metadata={
        "transformers": transformers.__version__, "torch": torch.__version__,
        "threads": str(hp.THREADS), "prefill": str(hp.PREFILL),
        "observed": json.dumps([[hp.OBS_BATCH, p] for p in range(hp.PREFILL, hp.SEQ)]),
    })
    with open(os.path.join(mdir, "scenario.yaml"), "w") as f:
        f.write(hp.SCENARIO.format(model="smollm2", checkpoint=GGUF, tokens=TOKENS,
                                   prefill=hp.PREFILL, threads=hp.THREADS))
    print(f"hf-parity-gguf: transformers {transformers.__version__}, torch {torch.__version__}; {mdir}")
    prof = hp._profile(got["full"][0], got["kv_cache"][0])
    print("  transformers' own full vs kv_cache, block 1 / 15 / 30 mean |Δ|: "
          f"{prof[0][0]:.4e} / {prof[14][0]:.4e} / {prof[-1][0]:.4e}")
    top = [got[s][2].argmax(-1).tolist() for s in hp.STRATEGIES]
    print(f"  top-1 full {top[0]}, kv_cache {top[1]}")


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("prepare", "compare"):
        print(__doc__, file=sys.stderr)
        return 2
    if sys.argv[1] == "prepare":
        prepare(sys.argv[2])
        return 0
    return hp.compare(sys.argv[2])[0]


if __name__ == "__main__":
    sys.exit(main())
