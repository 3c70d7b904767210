#!/usr/bin/env python3
# hf_parity.py — does layerdrift's libtorch (tch) backend compute, bit for bit,
# what Hugging Face `transformers` computes for the same checkpoint?
# Driven by scripts/hf-parity; subcommands:
#   prepare OUTDIR   build two tiny HF checkpoints (Llama, GPT-2), the token ids,
#                    transformers' own observed rows (full and kv_cache) and a
#                    layerdrift scenario per model; print transformers' own
#                    full-vs-kv_cache drift profile
#   compare OUTDIR   transformers' rows vs layerdrift's saved baseline, bitwise;
#                    exit 0 only if every tensor is bitwise equal; OUTDIR/report.md
#   selftest [DIR]   the comparison against synthetic baselines (no cargo)
#   mimic OUTDIR     a plain-torch decoder written from the list below, reading
#                    only config.json + model.safetensors, writes its rows as a
#                    layerdrift-style baseline (default OUTDIR/<model>/layerdrift.safetensors
#                    — use --into elsewhere so as not to overwrite the real one);
#                    it is bitwise equal to transformers, so the list suffices.
#                    --alt NAME breaks one convention on purpose (see ALTS).
#
# ---------------------------------------------------------------------------
# What bitwise equality with transformers needs (read from transformers 5.24.0
# with torch 2.13.0; the `file:line` are of that release; the "measured" notes
# are torch 2.13 CPU, fp32, 2 threads, on this project's AVX2 machine):
#
# Checkpoint files (save_pretrained, safe_serialization=True)
#  - Llama config.json (5.x) puts RoPE under "rope_parameters":
#      "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}
#    (4.x files have a top-level "rope_theta"): read both. "head_dim" is written
#    (hidden_size // num_attention_heads when not given); "hidden_act": "silu";
#    "attention_bias"/"mlp_bias": false; "tie_word_embeddings": false -> the file
#    holds lm_head.weight [vocab, hidden].
#  - GPT-2's model.safetensors has NO lm_head.weight: the head is tied,
#      gpt2/modeling_gpt2.py:637  _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}
#    so logits = x @ wte.weight^T (nn.Linear, no bias). config.json names:
#    n_embd, n_layer, n_head, n_positions, "n_inner": null (-> 4 * n_embd),
#    "layer_norm_epsilon": 1e-05, "activation_function": "gelu_new",
#    "scale_attn_weights": true, "scale_attn_by_inverse_layer_idx": false,
#    "reorder_and_upcast_attn": false. The file also carries no attn.bias buffers.
#  - HF's random init sets every norm weight to 1 and every bias to 0, which
#    would hide a missing or misplaced bias/gain; `prepare` therefore perturbs
#    them (norm weights 1 + 0.1 N(0,1), biases 0.02 N(0,1), fixed generator)
#    before saving. Linear/Conv1D/embedding weights keep HF's init (N(0, 0.02)).
#
# Llama (models/llama/modeling_llama.py)
#  - RoPE inverse frequencies, float32 throughout (arange in f32, f32 division,
#    torch.pow(python float base, f32 tensor), f32 reciprocal):
#      :106  inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
#    Measured: 3 of the 8 values (head_dim 16) differ from the f64 formula
#    rounded to f32; bits 3f800000 3ea1e89b 3dcccccd 3d0186e3 3c23d70a 3b4f3e38
#    3a83126f 39a5cb60. Compute them with libtorch in f32, not in Rust f64.
#  - cos/sin: an elementwise f32 product (no matmul in 5.24; older releases'
#    `inv_freq_expanded @ position_ids_expanded` with autocast off gives the same
#    bits, K = 1), duplicated halves, libtorch f32 cos/sin, times 1.0:
#      :111  freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
#      :112  emb = torch.cat((freqs, freqs), dim=-1)
#      :113  cos = emb.cos() * self.attention_scaling      (attention_scaling = 1.0 for "default")
#      :116  return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)
#    Measured: f32 cos/sin differ from f64 cos/sin rounded to f32 in 62 / 34 of
#    1024 (position, freq) pairs — take cos/sin from libtorch's f32 kernels.
#  - rotate_half is the split-halves (NeoX) layout, not interleaved pairs:
#      :123  return torch.cat((-x2, x1), dim=-1)     (x1 = x[..., :d/2], x2 = x[..., d/2:])
#      :147  q_embed = (q * cos) + (rotate_half(q) * sin)      (same for k; two muls, one add, no FMA)
#    RoPE is applied before the cache update, so cached keys are rotated.
#  - LlamaRMSNorm (f32 in, so the casts are no-ops):
#      :65   variance = hidden_states.pow(2).mean(-1, keepdim=True)
#      :66   hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
#      :67   return self.weight * hidden_states.to(input_dtype)
#    Measured: x / sqrt(var + eps) differs from x * rsqrt(var + eps) in 879 of
#    3072 elements; (x*x).sum(-1)/n equals pow(2).mean(-1) here.
#  - Attention (eager): scale multiplies the scores after the matmul,
#      :215  self.scaling = self.head_dim**-0.5
#      :193  attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
#    (head_dim 16 -> 0.25, exact, so * and / agree here; measured at head_dim 128
#    `/ sqrt(128)` differs from `* 128**-0.5` in 1892 of 9216 scores: multiply).
#    The mask is added, never filled:
#      :195  attn_weights = attn_weights + attention_mask
#      masking_utils.py:615  min_dtype = torch.finfo(dtype).min
#      masking_utils.py:617  mask = torch.where(mask, torch.zeros((), device=mask.device, dtype=dtype), min_dtype)
#    i.e. 0.0 where allowed, finfo(f32).min (not -inf) where masked; eager always
#    materialises it, also for one-token decode (an all-zero row, still added).
#    Measured: adding finfo.min and masked_fill(-inf) give the same softmax bits.
#    But the full pass's softmax runs over the whole key length (24) with the
#    masked entries present: truncating row i to its i+1 keys changed 341 of
#    2304 probabilities — keep the [.., q, kv] shape, as transformers does.
#      :197  attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
#      :199  attn_output = torch.matmul(attn_weights, value_states)
#      :200  attn_output = attn_output.transpose(1, 2).contiguous()
#      :269  attn_output = attn_output.reshape(*input_shape, -1).contiguous()   then o_proj
#  - GQA: repeat_kv is expand + reshape, i.e. repeat_interleave on the head
#    axis (kv head j serves query heads j*n_rep .. j*n_rep+n_rep-1), done
#    before the batched 4-D matmuls:
#      :176  hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)
#      :177  return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)
#  - q/k/v/o, gate/up/down, lm_head are nn.Linear without bias (F.linear on the
#    [batch, seq, in] tensor: one GEMM over batch*seq rows, weight [out, in]).
#    SwiGLU, act = F.silu (SiLUActivation -> nn.functional.silu):
#      :164  down_proj = self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
#    Measured: silu(x) differs from x * sigmoid(x) in 23526 and from
#    x / (1 + exp(-x)) in 4141 of 100000 values — call libtorch's silu.
#  - Block: residual + attn, then residual + mlp (pre-norm, input_layernorm /
#    post_attention_layernorm); the block returns a tensor (5.x), the final
#    model.norm follows the last block. No embedding scaling.
#
# GPT-2 (models/gpt2/modeling_gpt2.py)
#  - Conv1D: weight stored [in, out], bias added inside addmm (BLAS beta = 1):
#      pytorch_utils.py:110  self.weight = nn.Parameter(torch.empty(nx, nf))
#      pytorch_utils.py:119  x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
#    over batch*seq rows. (Measured at [48,64]x[64,192]: addmm == mm + bias ==
#    F.linear(W^T) here, but use addmm with the [in, out] weight to be safe.)
#  - c_attn's 3*n_embd outputs split q | k | v, then heads:
#      :187  query_states, key_states, value_states = self.c_attn(hidden_states).split(self.split_size, dim=2)
#      :188  shape_kv = (*key_states.shape[:-1], -1, self.head_dim)      then .view(shape_kv).transpose(1, 2)
#  - eager attention: multiply after the matmul, add the same finfo.min mask,
#    softmax in f32 (input is f32), matmul with V, transpose, reshape, c_proj:
#      :99   self.scaling = self.head_dim**-0.5
#      :59   attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
#      :64   attn_weights = nn.functional.softmax(attn_weights, dim=-1)
#      :224  attn_output = attn_output.reshape(*attn_output.shape[:-2], -1).contiguous()
#  - "gelu_new" = NewGELUActivation, written out (NOT F.gelu(approximate="tanh"):
#    measured 1271 of 100000 values differ):
#      activations.py:66  return 0.5 * input * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (input + 0.044715 * torch.pow(input, 3.0))))
#    evaluation order: p = pow(x, 3.0) [libtorch == x*x*x, measured]; a = 0.044715*p;
#    b = x + a; c = 0.7978845608028654*b (python double -> f32 scalar); t = tanh(c);
#    u = 1.0 + t; v = 0.5*x; out = v * u.
#  - LayerNorm: nn.LayerNorm(eps=layer_norm_epsilon = 1e-5) -> F.layer_norm:
#      :254  self.ln_1 = nn.LayerNorm(hidden_size, eps=config.layer_norm_epsilon)
#  - Residuals: attn first, then mlp:
#      :285  hidden_states = attn_output + residual
#      :310  hidden_states = residual + feed_forward_hidden_states
#  - Learned positions; in KV-cache decode the position id is the cache length:
#      :572  past_seen_tokens = cache.get_seq_length() if cache is not None else 0
#      :573  position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
#      :576  position_embeds = self.wpe(position_ids)
#      :577  hidden_states = inputs_embeds + position_embeds.to(inputs_embeds.device)
#    (Llama derives its RoPE positions the same way, modeling_llama.py:378-379.)
#    Dropouts (embd/attn/resid, p = 0.1 in the config) are off under eval().
#
# Both
#  - KV cache (DynamicCache): keys/values concatenated along the sequence axis,
#    the whole batch decoded one position per step ([batch, 1] input):
#      cache_utils.py:136  self.keys = torch.cat([self.keys, key_states], dim=-2)
#  - lm_head runs on EVERY position of the call (logits_to_keep = 0 -> all):
#      modeling_utils.py:5126  logits_to_keep = slice(-logits_to_keep, None)
#      llama :471 / gpt2 :698  logits = self.lm_head(hidden_states)
#    i.e. a [batch*seq, hidden] x [hidden, vocab] GEMM in the full pass,
#    [batch, hidden] x … per decode step. (Measured: 48 rows vs the last 8 rows
#    gave the same logits bits at this size; GEMM row count can matter elsewhere.)
#  - Every GEMM's M is batch*seq of the call (full: 48; prefill: 32; decode: 2);
#    feed libtorch the same shapes to get the same kernel choice.
#
# Which of these decide bits on these two tiny models (`mimic --alt`, each alone,
# against transformers; tensors = 20 checkpoints: 2 models x 2 strategies x
# (3 blocks + final_norm + logits)):
#    rope_f64 (inv_freq in f64, rounded)         10 tensors differ (all Llama)
#    cos_f64 (cos/sin in f64, rounded)           10 (all Llama)
#    rms_div_sqrt (x / sqrt instead of x*rsqrt)  10 (all Llama)
#    silu_mul_sigmoid (x * sigmoid(x))           10 (all Llama)
#    softmax_truncated (row i over i+1 keys)     16 (full and, via prefill K/V, kv_cache)
#    mask_fill_inf (-inf fill instead of + min)   0
#    conv1d_linear (F.linear(W^T) + bias)         5 (GPT-2 kv_cache: the M = 2 decode GEMMs)
#    gelu_tanh (F.gelu approximate="tanh")       10 (all GPT-2)
#    lm_head_last (last position as an M=1 GEMM)  2 (both full logits)
#    lm_head_observed (full: logits of the 8 observed rows only, M = 8) 0
# ---------------------------------------------------------------------------

import argparse
import json
import math
import os
import re
import sys
import tempfile

BATCH, SEQ, PREFILL, OBS_BATCH, THREADS = 2, 24, 16, 1, 2
VOCAB = 300
SEED, TOKEN_SEED, PERTURB_SEED = 0, 20261202, 7
STRATEGIES = ("full", "kv_cache")
MODELS = ("llama", "gpt2")
BACKEND = "tch-cpu"
KINDS = ("layers", "final_norm", "logits")


def _die(msg, code=2):
    print(f"hf-parity: {msg}", file=sys.stderr)
    sys.exit(code)


# --------------------------------------------------------------------------- prepare

def _build(kind):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    if kind == "llama":
        cfg = LlamaConfig(
            hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128, rope_theta=10000.0,
            rms_norm_eps=1e-6, tie_word_embeddings=False, attn_implementation="eager",
        )
        model = LlamaForCausalLM(cfg)
    else:
        cfg = GPT2Config(
            n_embd=64, n_layer=3, n_head=4, vocab_size=VOCAB, n_positions=128,
            attn_implementation="eager",
            bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1,  # default 50256 is outside this vocabulary
        )
        model = GPT2LMHeadModel(cfg)
    # HF's init: norm weights 1, biases 0 — perturb them so that a missing or
    # misplaced gain or bias cannot pass unnoticed.
    g = torch.Generator().manual_seed(PERTURB_SEED)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith(".bias"):
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def _blocks_and_norm(model, kind):
    if kind == "llama":
        return list(model.model.layers), model.model.norm
    return list(model.transformer.h), model.transformer.ln_f


def _run(model, kind, tokens, strategy):
    """Observed rows of `strategy`: [layers, rows, dim], [rows, dim], [rows, vocab] (f32)."""
    import torch
    from transformers import DynamicCache

    blocks, norm = _blocks_and_norm(model, kind)
    seen = {i: [] for i in range(len(blocks))}
    seen["norm"] = []

    def hook(key):
        def f(_mod, _inp, out):
            t = out[0] if isinstance(out, (tuple, list)) else out
            seen[key].append(t.detach().clone())
        return f

    handles = [b.register_forward_hook(hook(i)) for i, b in enumerate(blocks)]
    handles.append(norm.register_forward_hook(hook("norm")))
    logits = []
    try:
        with torch.no_grad():
            if strategy == "full":
                out = model(input_ids=tokens, use_cache=False)
                logits.append(out.logits)
            else:
                try:
                    cache = DynamicCache(config=model.config)
                except TypeError:
                    cache = DynamicCache()
                import inspect
                key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
                out = model(input_ids=tokens[:, :PREFILL], use_cache=True, **{key: cache})
                logits.append(out.logits)
                for t in range(PREFILL, SEQ):
                    out = model(input_ids=tokens[:, t:t + 1], use_cache=True, **{key: cache})
                    logits.append(out.logits)
                if cache.get_seq_length() != SEQ:
                    _die(f"{kind}: cache holds {cache.get_seq_length()} positions after decode, expected {SEQ}")
    finally:
        for h in handles:
            h.remove()

    def rows(chunks):
        full = torch.cat(chunks, dim=1)  # [batch, seq, dim]
        if tuple(full.shape[:2]) != (BATCH, SEQ):
            _die(f"{kind}/{strategy}: captured {tuple(full.shape)}, expected [{BATCH}, {SEQ}, …]")
        return full[OBS_BATCH, PREFILL:SEQ].to(torch.float32).contiguous()

    layers = torch.stack([rows(seen[i]) for i in range(len(blocks))])
    return layers, rows(seen["norm"]), rows(logits)


def _profile(a, b):
    """Per-layer (mean |a-b|, max |a-b|, bitwise equal) in f64; a, b numpy [layers, rows, dim]."""
    import numpy as np

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    d = np.abs(a - b)
    out = []
    for i in range(a.shape[0]):
        out.append((float(d[i].mean()), float(d[i].max()), bool((a[i].view(np.uint64) == b[i].view(np.uint64)).all())))
    return out


SCENARIO = """\
description: HF parity ({model})
model: {{ checkpoint: {checkpoint} }}
input: {{ tokens: {{ file: {tokens} }} }}
observe: decoded
strategies:
  - full
  - kv_cache: {{ prefill: {prefill} }}
checks:
  - strategies: [full, kv_cache]
    bounds: {{ every_layer: {{ mean_abs: 1.0e-3 }} }}
backends: [tch]
threads: {threads}
"""


def prepare(outdir):
    import torch
    import transformers
    from safetensors.numpy import save_file

    torch.set_num_threads(THREADS)
    outdir = os.path.abspath(outdir)
    os.makedirs(outdir, exist_ok=True)
    g = torch.Generator().manual_seed(TOKEN_SEED)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g, dtype=torch.long)
    tokens_path = os.path.join(outdir, "tokens.json")
    with open(tokens_path, "w") as f:
        json.dump(tokens.tolist(), f)
        f.write("\n")
    print(f"hf-parity: transformers {transformers.__version__}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; tokens [{BATCH}, {SEQ}] -> {tokens_path}")
    for kind in MODELS:
        mdir = os.path.join(outdir, kind)
        os.makedirs(mdir, exist_ok=True)
        model = _build(kind)
        model.save_pretrained(mdir, safe_serialization=True)
        if model.config._attn_implementation != "eager":
            _die(f"{kind}: attention implementation is {model.config._attn_implementation}, not eager")
        tensors, got = {}, {}
        for s in STRATEGIES:
            layers, fnorm, logits = _run(model, kind, tokens, s)
            got[s] = (layers.numpy(), fnorm.numpy(), logits.numpy())
            tensors[s] = got[s][0]
            tensors[f"{s}/final_norm"] = got[s][1]
            tensors[f"{s}/logits"] = got[s][2]
        save_file(tensors, os.path.join(mdir, "transformers.safetensors"), metadata={
            "transformers": transformers.__version__, "torch": torch.__version__,
            "threads": str(THREADS), "observed": json.dumps([[OBS_BATCH, p] for p in range(PREFILL, SEQ)]),
            "prefill": str(PREFILL),
        })
        with open(os.path.join(mdir, "scenario.yaml"), "w") as f:
            f.write(SCENARIO.format(model=kind, checkpoint=mdir, tokens=tokens_path,
                                    prefill=PREFILL, threads=THREADS))
        print(f"\n{kind}: {mdir} (config.json, model.safetensors, transformers.safetensors, scenario.yaml)")
        print(f"  transformers' own full vs kv_cache (rows [{OBS_BATCH}, {PREFILL}..{SEQ - 1}]):")
        print(f"  {'checkpoint':<12} {'mean |Δ|':>11} {'max |Δ|':>11}  bitwise")
        prof = _profile(got["full"][0], got["kv_cache"][0])
        prof.append(_profile(got["full"][1][None], got["kv_cache"][1][None])[0])
        prof.append(_profile(got["full"][2][None], got["kv_cache"][2][None])[0])
        names = [f"layer {i + 1}" for i in range(len(prof) - 2)] + ["final_norm", "logits"]
        for n, (mean, mx, eq) in zip(names, prof):
            print(f"  {n:<12} {mean:11.4e} {mx:11.4e}  {'yes' if eq else 'no'}")


# --------------------------------------------------------------------------- compare

def _parse_name(name, backend=BACKEND):
    """`tch-cpu/<strategy>/<label>[/final_norm|/logits]` -> (strategy, label, kind) or None."""
    parts = name.split("/")
    if len(parts) < 2 or parts[0] != backend:
        return None
    # `kv_cache`, or a decorated form such as `kv_cache(prefill=16)`: the leading name
    strategy, rest = re.match(r"[A-Za-z0-9_]*", parts[1]).group(0), parts[2:]
    kind = "layers"
    if rest and rest[-1] in ("final_norm", "logits"):
        kind, rest = rest[-1], rest[:-1]
    return strategy, "/".join(rest), kind


def _baseline_tensors(path, backend=BACKEND):
    """{(strategy, kind): (name, float64 array)} from a layerdrift baseline; errors as strings."""
    import numpy as np
    from safetensors import safe_open

    cands, notes = {}, []
    with safe_open(path, framework="np") as f:
        meta = f.metadata() or {}
        for name in sorted(f.keys()):
            p = _parse_name(name, backend)
            if p is not None:
                strategy, label, kind = p
                cands.setdefault((strategy, kind), []).append((label != "", name))
        found = {}
        for key, names in cands.items():
            names.sort()  # the unlabelled variant first, then by name
            name = names[0][1]
            notes += [f"ignored {n} (used {name})" for _, n in names[1:]]
            found[key] = (name, np.asarray(f.get_tensor(name), dtype=np.float64))
    return found, meta, notes


def _diff(a, b):
    """(elements not bitwise equal, max |Δ|) of two float64 arrays of one shape."""
    import numpy as np

    ne = int((a.view(np.uint64) != b.view(np.uint64)).sum())
    if ne == 0:
        return 0, 0.0
    with np.errstate(invalid="ignore"):
        mx = float(np.max(np.abs(a - b)))  # NaN propagates: never "close"
    return ne, mx


def compare(outdir, backend=BACKEND, quiet=False):
    """Returns (exit code, report text)."""
    import numpy as np
    from safetensors import safe_open

    outdir = os.path.abspath(outdir)
    lines = ["# HF parity: transformers vs layerdrift (" + backend + ")", ""]
    rows, prof_rows, first_bad, env = [], [], None, []

    def bad(what):
        nonlocal first_bad
        if first_bad is None:
            first_bad = what

    for kind in MODELS:
        mdir = os.path.join(outdir, kind)
        hf_path = os.path.join(mdir, "transformers.safetensors")
        ld_path = os.path.join(mdir, "layerdrift.safetensors")
        if not os.path.isfile(hf_path):
            bad(f"{kind}: no {hf_path} (run `scripts/hf-parity` / `hf_parity.py prepare` first)")
            rows.append((kind, "-", "-", "-", "missing transformers.safetensors", "-"))
            continue
        if not os.path.isfile(ld_path):
            bad(f"{kind}: no {ld_path} (the layerdrift run did not write its baseline)")
            rows.append((kind, "-", "-", "-", "missing layerdrift.safetensors", "-"))
            continue
        with safe_open(hf_path, framework="np") as f:
            hf_meta = f.metadata() or {}
            hf = {k: np.asarray(f.get_tensor(k), dtype=np.float64) for k in f.keys()}
        try:
            ld, ld_meta, notes = _baseline_tensors(ld_path, backend)
        except Exception as e:  # not a safetensors file, truncated, …
            bad(f"{kind}: cannot read {ld_path}: {e}")
            rows.append((kind, "-", "-", "-", f"unreadable baseline: {e}", "-"))
            continue
        env.append(f"- {kind}: transformers {hf_meta.get('transformers', '?')}, torch {hf_meta.get('torch', '?')}, "
                   f"{hf_meta.get('threads', '?')} threads")
        for k, v in sorted(ld_meta.items()):
            if k.startswith(f"entry:{backend}/"):
                try:
                    info = json.loads(v)
                    env.append(f"  - layerdrift `{k[6:]}`: {info.get('version', '?')}, {info.get('device', '?')}, "
                               f"{info.get('threads', '?')} threads, class {info.get('class', '?')}, {info.get('dtype', '?')}")
                except ValueError:
                    pass
        for n in notes:
            env.append(f"  - {kind}: {n}")
        sides = {}  # (strategy) -> {"hf": [..checkpoints..], "ld": [...]}
        for s in STRATEGIES:
            sides[s] = {"hf": [], "ld": [], "names": []}
            for ck in KINDS:
                hkey = s if ck == "layers" else f"{s}/{ck}"
                h = hf.get(hkey)
                if h is None:
                    bad(f"{kind}/{s}/{ck}: not in {hf_path}")
                    rows.append((kind, s, ck, "-", "missing in transformers.safetensors", "-"))
                    continue
                if ck != "layers":
                    h = h[None]
                got = ld.get((s, ck))
                if got is None:
                    bad(f"{kind}/{s}/{ck}: no `{backend}/{s}/…{'' if ck == 'layers' else '/' + ck}` tensor in {ld_path}")
                    for i in range(h.shape[0]):
                        rows.append((kind, s, _ckname(ck, i), _shape(h[i]), "missing in baseline", "-"))
                    continue
                lname, l = got
                if ck != "layers":
                    l = l[None]
                if l.shape != h.shape:
                    bad(f"{kind}/{s}/{ck}: shape {list(l.shape if ck == 'layers' else l.shape[1:])} in {lname}, "
                        f"transformers {list(h.shape if ck == 'layers' else h.shape[1:])}")
                    rows.append((kind, s, ck, f"{_shape(h)} vs {_shape(l)}", "shape mismatch", "-"))
                    continue
                for i in range(h.shape[0]):
                    ne, mx = _diff(h[i], l[i])
                    name = _ckname(ck, i)
                    rows.append((kind, s, name, _shape(h[i]), f"{ne} / {h[i].size}", _fmt(mx)))
                    sides[s]["hf"].append(h[i])
                    sides[s]["ld"].append(l[i])
                    sides[s]["names"].append(name)
                    if ne:
                        bad(f"{kind}/{s}/{name} ({lname}): {ne} of {h[i].size} elements not bitwise equal, "
                            f"max |Δ| {_fmt(mx)}")
        # the two drift profiles, each from its own side's rows
        f_, k_ = sides["full"], sides["kv_cache"]
        for i, name in enumerate(f_["names"]):
            if i >= len(k_["names"]) or k_["names"][i] != name:
                break
            ph = _profile(f_["hf"][i][None], k_["hf"][i][None])[0]
            pl = _profile(f_["ld"][i][None], k_["ld"][i][None])[0]
            same = (np.float64(ph[0]).view(np.uint64) == np.float64(pl[0]).view(np.uint64)
                    and np.float64(ph[1]).view(np.uint64) == np.float64(pl[1]).view(np.uint64))
            prof_rows.append((kind, name, _fmt(ph[0]), _fmt(ph[1]), _fmt(pl[0]), _fmt(pl[1]),
                              "yes" if same else "no"))

    head = ("model", "strategy", "checkpoint", "shape", "not bitwise equal", "max |Δ|")
    lines += ["## transformers vs layerdrift, per tensor", ""] + _md(head, rows) + [""]
    lines += ["## drift profile: full vs kv_cache, each side from its own rows", ""]
    lines += _md(("model", "checkpoint", "HF mean |Δ|", "HF max |Δ|", "layerdrift mean |Δ|",
                  "layerdrift max |Δ|", "equal"), prof_rows) + [""]
    lines += ["## environment", ""] + (env or ["- (none read)"]) + [""]
    if first_bad is None:
        verdict = "PASS: every tensor is bitwise equal"
    else:
        verdict = f"FAIL: first mismatch: {first_bad}"
    lines += [verdict, ""]
    text = "\n".join(lines)
    if not quiet:
        print(_plain(head, rows))
        print()
        print("drift profile (full vs kv_cache), each side from its own rows:")
        print(_plain(("model", "checkpoint", "HF mean", "HF max", "ld mean", "ld max", "equal"), prof_rows))
        print()
        print(verdict)
    with open(os.path.join(outdir, "report.md"), "w") as f:
        f.write(text)
    return (0 if first_bad is None else 1), text


def _ckname(ck, i):
    return f"layer {i + 1}" if ck == "layers" else ck


def _shape(a):
    return "[" + ", ".join(str(d) for d in a.shape) + "]"


def _fmt(x):
    return "nan" if x != x else (f"{x:.3e}" if x else "0")


def _md(head, rows):
    cell = lambda c: str(c).replace("|", "\\|")
    out = ["| " + " | ".join(map(cell, head)) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(map(cell, r)) + " |" for r in rows]
    return out


def _plain(head, rows):
    w = [max(len(str(x)) for x in col) for col in zip(head, *rows)] if rows else [len(h) for h in head]
    fmt = "  ".join("{:<%d}" % n for n in w)
    return "\n".join([fmt.format(*head)] + [fmt.format(*map(str, r)) for r in rows])


# --------------------------------------------------------------------------- mimic

def _mimic_forward(kind, cfg, w, ids, cache, start, alt=()):
    """One call of a plain-torch decoder written from the conventions above:
    ids [batch, n] at positions start..start+n-1; `cache` (a list of per-layer
    [k, v]) grows. Returns (block outputs, final norm output, logits), all
    [batch, n, ·]. `alt` names conventions to break on purpose (see ALTS)."""
    import torch
    import torch.nn.functional as F

    b, n = ids.shape
    pos = torch.arange(n) + start
    outs = []
    kv_len = start + n
    # eager mask: 0 where key j <= query position, finfo.min elsewhere, added
    allowed = torch.arange(kv_len)[None, :] <= pos[:, None]
    mask = torch.where(allowed, torch.zeros(()), torch.finfo(torch.float32).min)[None, None]
    if kind == "llama":
        hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        rope = cfg.get("rope_parameters") or {}
        theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
        eps = cfg["rms_norm_eps"]
        inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float) / hd))
        if "rope_f64" in alt:
            inv_freq = (1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))).float()
        freqs = pos[None, :, None].float() * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[:, None], emb.sin()[:, None]  # [1, 1, n, hd]
        if "cos_f64" in alt:
            cos, sin = emb.double().cos().float()[:, None], emb.double().sin().float()[:, None]

        def rms(x, g):
            v = x.pow(2).mean(-1, keepdim=True)
            if "rms_div_sqrt" in alt:
                return g * (x / torch.sqrt(v + eps))
            return g * (x * torch.rsqrt(v + eps))

        def rot(x):
            h = x.shape[-1] // 2
            return torch.cat((-x[..., h:], x[..., :h]), dim=-1)

        x = F.embedding(ids, w["model.embed_tokens.weight"])
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            r = x
            h = rms(x, w[p + "input_layernorm.weight"])
            q = F.linear(h, w[p + "self_attn.q_proj.weight"]).view(b, n, -1, hd).transpose(1, 2)
            k = F.linear(h, w[p + "self_attn.k_proj.weight"]).view(b, n, -1, hd).transpose(1, 2)
            v = F.linear(h, w[p + "self_attn.v_proj.weight"]).view(b, n, -1, hd).transpose(1, 2)
            q = (q * cos) + (rot(q) * sin)
            k = (k * cos) + (rot(k) * sin)
            if cache is not None:
                if len(cache) <= i:
                    cache.append([k, v])
                else:
                    cache[i] = [torch.cat([cache[i][0], k], dim=-2), torch.cat([cache[i][1], v], dim=-2)]
                k, v = cache[i]
            rep = nh // nkv
            k = k[:, :, None].expand(b, nkv, rep, kv_len, hd).reshape(b, nh, kv_len, hd)
            v = v[:, :, None].expand(b, nkv, rep, kv_len, hd).reshape(b, nh, kv_len, hd)
            a = torch.matmul(q, k.transpose(2, 3)) * hd ** -0.5
            a = _softmax(a, mask, alt)
            o = torch.matmul(a, v).transpose(1, 2).contiguous().reshape(b, n, -1)
            x = r + F.linear(o, w[p + "self_attn.o_proj.weight"])
            r = x
            h = rms(x, w[p + "post_attention_layernorm.weight"])
            gt = F.linear(h, w[p + "mlp.gate_proj.weight"])
            act = gt * torch.sigmoid(gt) if "silu_mul_sigmoid" in alt else F.silu(gt)
            m = act * F.linear(h, w[p + "mlp.up_proj.weight"])
            x = r + F.linear(m, w[p + "mlp.down_proj.weight"])
            outs.append(x)
        fn = rms(x, w["model.norm.weight"])
        head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    else:
        d, nh = cfg["n_embd"], cfg["n_head"]
        hd, eps = d // nh, cfg.get("layer_norm_epsilon", 1e-5)

        def conv1d(x, name):
            if "conv1d_linear" in alt:  # F.linear with the transposed weight, bias apart
                y = F.linear(x.reshape(-1, x.shape[-1]), w[name + ".weight"].t().contiguous()) + w[name + ".bias"]
            else:
                y = torch.addmm(w[name + ".bias"], x.reshape(-1, x.shape[-1]), w[name + ".weight"])
            return y.view(*x.shape[:-1], -1)

        def ln(x, name):
            return F.layer_norm(x, (d,), w[name + ".weight"], w[name + ".bias"], eps)

        def gelu_new(x):
            if "gelu_tanh" in alt:
                return F.gelu(x, approximate="tanh")
            return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))

        x = F.embedding(ids, w["transformer.wte.weight"]) + F.embedding(pos[None], w["transformer.wpe.weight"])
        for i in range(cfg["n_layer"]):
            p = f"transformer.h.{i}."
            r = x
            q, k, v = conv1d(ln(x, p + "ln_1"), p + "attn.c_attn").split(d, dim=2)
            q, k, v = (t.view(b, n, -1, hd).transpose(1, 2) for t in (q, k, v))
            if cache is not None:
                if len(cache) <= i:
                    cache.append([k, v])
                else:
                    cache[i] = [torch.cat([cache[i][0], k], dim=-2), torch.cat([cache[i][1], v], dim=-2)]
                k, v = cache[i]
            a = torch.matmul(q, k.transpose(-1, -2)) * hd ** -0.5
            a = _softmax(a, mask, alt)
            o = torch.matmul(a, v).transpose(1, 2)
            o = o.reshape(*o.shape[:-2], -1).contiguous()
            x = conv1d(o, p + "attn.c_proj") + r
            r = x
            x = r + conv1d(gelu_new(conv1d(ln(x, p + "ln_2"), p + "mlp.c_fc")), p + "mlp.c_proj")
            outs.append(x)
        fn = ln(x, "transformer.ln_f")
        head = w.get("lm_head.weight", w["transformer.wte.weight"])  # tied: no lm_head in the file
    if "lm_head_observed" in alt and fn.shape[1] == SEQ:  # full pass: logits of the observed rows only
        lg = torch.zeros(*fn.shape[:-1], head.shape[0])
        lg[OBS_BATCH, PREFILL:SEQ] = F.linear(fn[OBS_BATCH, PREFILL:SEQ].contiguous(), head)
        return outs, fn, lg
    if "lm_head_last" in alt:  # logits of the last position only, per call
        return outs, fn, torch.cat([F.linear(fn[:, :-1], head), F.linear(fn[:, -1:].contiguous(), head)], 1)
    return outs, fn, F.linear(fn, head)


def _softmax(a, mask, alt):
    import torch
    import torch.nn.functional as F

    if "softmax_truncated" in alt:  # each query row over its allowed keys only
        q, kv = a.shape[-2], a.shape[-1]
        rows = [F.softmax(a[..., i:i + 1, :kv - q + i + 1], dim=-1) for i in range(q)]
        rows = [torch.cat([r, torch.zeros(*r.shape[:-1], kv - r.shape[-1])], -1) for r in rows]
        return torch.cat(rows, dim=-2)
    if "mask_fill_inf" in alt:
        return F.softmax(a.masked_fill(mask != 0, float("-inf")), dim=-1, dtype=torch.float32)
    return F.softmax(a + mask, dim=-1, dtype=torch.float32)


# conventions mimic can break on purpose, to see which ones decide bits here
ALTS = ("rope_f64", "cos_f64", "rms_div_sqrt", "silu_mul_sigmoid", "softmax_truncated", "mask_fill_inf",
        "conv1d_linear", "gelu_tanh", "lm_head_last", "lm_head_observed")


def mimic(outdir, into=None, name="layerdrift.safetensors", alt=()):
    """Re-implements both models in plain torch from config.json + model.safetensors
    only (what a loader sees) and writes their observed rows as a layerdrift-style
    baseline: proof that the conventions above suffice for bitwise equality."""
    import torch
    from safetensors.numpy import save_file
    from safetensors.torch import load_file

    torch.set_num_threads(THREADS)
    outdir = os.path.abspath(outdir)
    into = os.path.abspath(into or outdir)
    with open(os.path.join(outdir, "tokens.json")) as f:
        ids = torch.tensor(json.load(f), dtype=torch.long)
    for kind in MODELS:
        mdir = os.path.join(outdir, kind)
        with open(os.path.join(mdir, "config.json")) as f:
            cfg = json.load(f)
        w = load_file(os.path.join(mdir, "model.safetensors"))
        res = {}
        with torch.no_grad():
            for s in STRATEGIES:
                if s == "full":
                    outs, fn, lg = _mimic_forward(kind, cfg, w, ids, None, 0, alt)
                else:
                    cache, steps = [], [(0, PREFILL)] + [(t, t + 1) for t in range(PREFILL, SEQ)]
                    parts = [_mimic_forward(kind, cfg, w, ids[:, a:b], cache, a, alt) for a, b in steps]
                    outs = [torch.cat([p[0][i] for p in parts], dim=1) for i in range(len(parts[0][0]))]
                    fn = torch.cat([p[1] for p in parts], dim=1)
                    lg = torch.cat([p[2] for p in parts], dim=1)
                sel = lambda t: t[OBS_BATCH, PREFILL:SEQ].contiguous().numpy()
                res[f"{BACKEND}/{s}/"] = torch.stack([torch.from_numpy(sel(o)) for o in outs]).numpy()
                res[f"{BACKEND}/{s}//final_norm"] = sel(fn)
                res[f"{BACKEND}/{s}//logits"] = sel(lg)
        os.makedirs(os.path.join(into, kind), exist_ok=True)
        save_file(res, os.path.join(into, kind, name), metadata={"format": "hf_parity.py mimic"})
        if not alt:
            print(f"mimic: {kind} -> {os.path.join(into, kind, name)}")


# --------------------------------------------------------------------------- selftest

def selftest(workdir=None):
    """compare() against synthetic baselines built from transformers' own rows."""
    import shutil

    import numpy as np
    from safetensors.numpy import load_file, save_file

    tmp = tempfile.mkdtemp(prefix="hf-parity-selftest-")
    try:
        src = workdir
        if src is None or not all(os.path.isfile(os.path.join(src, m, "transformers.safetensors")) for m in MODELS):
            print(f"selftest: preparing transformers' rows in {tmp}/src")
            src = os.path.join(tmp, "src")
            prepare(src)
        out = os.path.join(tmp, "out")

        def make(mutate=None, f64=False, names=None):
            shutil.rmtree(out, ignore_errors=True)
            for m in MODELS:
                os.makedirs(os.path.join(out, m))
                shutil.copy(os.path.join(src, m, "transformers.safetensors"), os.path.join(out, m))
                hf = load_file(os.path.join(src, m, "transformers.safetensors"))
                base = {}
                for k, v in hf.items():
                    s, _, ck = k.partition("/")
                    label = (names or {}).get(s, "")
                    n = f"{BACKEND}/{s}/{label}" + (f"/{ck}" if ck else "")
                    base[n] = v.astype(np.float64) if f64 else v.copy()
                    # unrelated entries the comparison must ignore
                    base[f"reference-cpu/{s}/{label}" + (f"/{ck}" if ck else "")] = np.zeros_like(v)
                if mutate:
                    mutate(m, base)
                save_file(base, os.path.join(out, m, "layerdrift.safetensors"),
                          metadata={"format": "layerdrift-baseline/1", "scenario": "hf-parity"})

        ok = True

        def expect(what, want, needle=None):
            nonlocal ok
            rc, text = compare(out, quiet=True)
            good = rc == want and (needle is None or needle in text)
            ok &= good
            verdict = [ln for ln in text.splitlines() if ln.startswith(("PASS", "FAIL"))][0]
            print(f"selftest: {'ok  ' if good else 'FAIL'} {what}: rc {rc} — {verdict}")

        make()
        expect("identical rows, empty variant label", 0)
        make(f64=True, names={"full": "batch=2", "kv_cache": "batch=2"})
        expect("identical rows stored as F64, label batch=2", 0)

        def flip(m, base):
            if m == "gpt2":
                t = base[f"{BACKEND}/kv_cache//logits"]
                t.view(np.uint32)[3, 7] ^= 1  # one ulp
        make(flip)
        expect("one logit one ulp off", 1, "gpt2/kv_cache/logits")

        def flip_layer(m, base):
            if m == "llama":
                base[f"{BACKEND}/full/"].view(np.uint32)[1, 0, 5] ^= 1
        make(flip_layer)
        expect("one element of llama full layer 2 one ulp off", 1, "llama/full/layer 2")

        def negzero(m, base):
            if m == "llama":
                t = base[f"{BACKEND}/kv_cache/"]
                t[2, 4, 9] = 0.0
                base[f"{BACKEND}/kv_cache/"] = t
                # and the transformers side gets -0.0 at the same place
                p = os.path.join(out, m, "transformers.safetensors")
                hf = load_file(p)
                hf["kv_cache"][2, 4, 9] = -0.0
                save_file(hf, p)
        make(negzero)
        expect("+0.0 vs -0.0 counts as not bitwise equal", 1, "llama/kv_cache/layer 3")

        def drop(m, base):
            if m == "llama":
                del base[f"{BACKEND}/full//final_norm"]
        make(drop)
        expect("missing final_norm", 1, "llama/full/final_norm")

        def reshape(m, base):
            if m == "gpt2":
                base[f"{BACKEND}/full/"] = base[f"{BACKEND}/full/"][:2].copy()
        make(reshape)
        expect("2 layers instead of 3", 1, "gpt2/full/layers: shape")

        # an independent plain-torch implementation (mimic) as the "layerdrift" side
        def from_mimic(alt=()):
            shutil.rmtree(out, ignore_errors=True)
            for m in MODELS:
                os.makedirs(os.path.join(out, m))
                shutil.copy(os.path.join(src, m, "transformers.safetensors"), os.path.join(out, m))
            mimic(src, out, alt=alt)
        from_mimic()
        expect("plain-torch re-implementation from config.json + model.safetensors", 0)
        from_mimic(("gelu_tanh",))
        expect("the same with F.gelu(approximate='tanh') for gelu_new", 1, "gpt2/full/layer 1")

        print("selftest:", "all ok" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare").add_argument("outdir")
    c = sub.add_parser("compare")
    c.add_argument("outdir")
    c.add_argument("--backend", default=BACKEND)
    sub.add_parser("selftest").add_argument("outdir", nargs="?")
    mm = sub.add_parser("mimic")
    mm.add_argument("outdir")
    mm.add_argument("--into", help="write <model>/layerdrift.safetensors here (default: OUTDIR)")
    mm.add_argument("--alt", action="append", default=[], choices=ALTS, help="break one convention on purpose")
    a = ap.parse_args()
    if a.cmd == "mimic":
        mimic(a.outdir, a.into, alt=tuple(a.alt))
        return 0
    if a.cmd == "prepare":
        prepare(a.outdir)
        return 0
    if a.cmd == "compare":
        return compare(a.outdir, a.backend)[0]
    return selftest(a.outdir)


if __name__ == "__main__":
    sys.exit(main())
