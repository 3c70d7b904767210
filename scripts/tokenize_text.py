#!/usr/bin/env python3
"""Tokenizes scenarios/data/text.txt for the real-model scenarios, once; the
token-id files it writes are committed, so neither cargo test nor CI runs it.

  scripts/fetch-models --all
  python3 -m pip install tokenizers==0.23.3 gguf==0.19.0 numpy
  python3 scripts/tokenize_text.py            # rewrites scenarios/data/*-tokens.json

SmolLM2 (models/smollm2-135m/*.gguf): a byte-level BPE built from the GGUF's
own tokenizer metadata (`tokenizer.ggml.tokens` and `.merges`, 49,152 tokens,
48,900 merges) with the pre-tokenizer llama.cpp uses for
`tokenizer.ggml.pre: smollm` (every digit alone, then GPT-2's byte-level
split), no BOS (`tokenizer.ggml.add_bos_token: false`). The original
tokenizer.json (Hugging Face Hub) cannot be fetched here; the build is checked
by round trip (decoding the ids gives the text back, byte for byte) and every
id must lie below the vocabulary; transformers 5.24.0's own GGUF tokenizer
(`AutoTokenizer.from_pretrained(dir, gguf_file=…)`) gives the same 214 ids
(checked 2026-12-03). Output: 4 windows of 40 consecutive ids of
the text (prefill 32, decode 8 in the scenario).

all-MiniLM-L6-v2 (models/all-minilm-l6-v2/tokenizer.json): the model's own
tokenizer (BERT WordPiece, lower-cased, [CLS] … [SEP]). Output: the text's
first sentences, one per row, each with its real length (the scenario pads
them): {"sequences": [[ids], …]}.
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = ROOT / "scenarios" / "data" / "text.txt"
MODELS = ROOT / "models"


def smollm2(text):
    import gguf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    path = MODELS / "smollm2-135m" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    r = gguf.GGUFReader(str(path))

    def strings(key):
        f = r.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    assert r.fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert r.fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert r.fields["tokenizer.ggml.add_bos_token"].contents() is False
    tokens = strings("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in strings("tokenizer.ggml.merges")]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    ids = tok.encode(text, add_special_tokens=False).ids
    back = tok.decode(ids)
    assert back == text, "SmolLM2: decode(encode(text)) is not the text"
    assert all(i < len(tokens) for i in ids)
    rows, seq = 4, 40
    assert len(ids) >= rows * seq, f"the text gives {len(ids)} ids, need {rows * seq}"
    windows = [ids[i * seq : (i + 1) * seq] for i in range(rows)]
    print(f"smollm2: {len(ids)} ids from {len(text)} characters; {rows} x {seq} kept")
    print("  first window:", repr(tok.decode(windows[0])))
    return windows


def minilm(text):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(MODELS / "all-minilm-l6-v2" / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    sentences = [s.strip() + "." for s in text.replace("\n", " ").split(". ") if s.strip()]
    sentences = [s.rstrip(".") + "." for s in sentences][:4]
    seqs = [tok.encode(s).ids for s in sentences]
    for s, ids in zip(sentences, seqs):
        assert ids[0] == 101 and ids[-1] == 102, "expected [CLS] … [SEP]"
        print(f"minilm: {len(ids):3d} ids  {s[:60]!r}")
    return seqs


def main():
    text = TEXT.read_text(encoding="utf-8")
    out = ROOT / "scenarios" / "data"
    which = sys.argv[1:] or ["smollm2", "minilm"]
    if "smollm2" in which:
        w = smollm2(text)
        (out / "smollm2-tokens.json").write_text(json.dumps(w) + "\n")
    if "minilm" in which:
        s = minilm(text)
        (out / "minilm-tokens.json").write_text(json.dumps(s) + "\n")


if __name__ == "__main__":
    main()
