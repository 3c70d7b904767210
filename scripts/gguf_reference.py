#!/usr/bin/env python3
"""An independent reference for layerdrift's GGUF reader: gguf-py (llama.cpp's
own Python package) dequantises every tensor of the SmolLM2 file, and this
writes the sha256 of each tensor's f32 bytes (little-endian, GGUF's element
order, before any Q/K row reordering) to scenarios/data/smollm2-dequant.json.
The suite's `gguf/smollm2-dequant` trial reads the same file with
layerdrift's reader and compares every digest.

  scripts/fetch-models
  python3 -m pip install gguf==0.19.0 numpy
  python3 scripts/gguf_reference.py
"""

import hashlib
from importlib.metadata import version
import json
from pathlib import Path

import gguf
import numpy as np
from gguf.quants import dequantize

ROOT = Path(__file__).resolve().parent.parent
path = ROOT / "models" / "smollm2-135m" / "SmolLM2-135M-Instruct.Q4_1.gguf"
r = gguf.GGUFReader(str(path))
out = {}
for t in r.tensors:
    x = dequantize(t.data, t.tensor_type).astype("<f4", copy=False)
    assert x.size == int(np.prod(t.shape)), t.name
    out[t.name] = {
        "type": t.tensor_type.name,
        "elements": int(x.size),
        "sha256": hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest(),
    }
doc = {
    "file": path.name,
    "by": f"gguf-py {version('gguf')} gguf.quants.dequantize, f32 little-endian",
    "tensors": out,
}
dest = ROOT / "scenarios" / "data" / "smollm2-dequant.json"
dest.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
print(f"{len(out)} tensors -> {dest}")
