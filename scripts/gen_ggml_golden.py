#!/usr/bin/env python3
"""scripts/gen_ggml_golden.py: writes tests/io/data/ggml_golden.bin, the reference values for
tests/io/test_gguf.c, from llama.cpp's own Python GGUF package (PyPI `gguf`, made with version 0.19.0,
numpy 2.x), an implementation independent of e8q's C decoders.

    python3 scripts/gen_ggml_golden.py [MODEL.gguf] [OUT]

MODEL defaults to $E8Q_MODELS (or ~/.cache/e8q)/SmolLM2-135M-Instruct.Q4_1.gguf (bash
scripts/fetch_smollm2.sh fetches it); OUT to tests/io/data/ggml_golden.bin. Deterministic (seeded).

Contents:
  * for each of the 13 ggml types e8q decodes (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K,
    Q3_K, Q4_K, Q5_K, Q6_K): random blocks (random bytes with every f16 scale field forced finite,
    and an all-zero and an all-0xFF block with the scales made finite) and gguf.quants.dequantize's
    f32 output for them;
  * from the SmolLM2-135M GGUF: whole rows of several tensors in Hugging Face order (dequantized by
    gguf, q/k rows un-permuted with numpy: GGUF row h*hd + 2i + s holds HF row h*hd + s*hd/2 + i),
    and exact sums (math.fsum) over whole tensors in HF order: sum x, sum x * (i % 1000 + 1) with i
    the HF row-major index, sum x^2.

Format (little-endian): "E8QGGML1", u32 record count, then records, each starting with u32 kind:
  1 blocks:   u32 ggml type, u32 n_blocks, u32 block_bytes, u32 block_size,
              u8 raw[n_blocks * block_bytes], f32 values[n_blocks * block_size]
  2 HF row:   u32 name length, name, i64 row, u32 cols, f32 values[cols]
  3 HF sums:  u32 name length, name, i64 numel, f64 sum, f64 weighted sum, f64 sum of squares
  4 model:    u64 size in bytes of the GGUF file the records 2 and 3 come from
"""
import importlib.metadata
import math
import os
import struct
import sys

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T

# byte offsets of the f16 scale fields inside one block of each type
SCALE_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}
ELEMENT_TYPES = [T.F32, T.F16, T.BF16]

HF_ROWS = [
    ("model.embed_tokens.weight", [0, 1, 2, 12345, 49151]),
    ("model.layers.0.self_attn.q_proj.weight", [0, 1, 31, 32, 33, 63, 64, 320, 575]),
    ("model.layers.0.self_attn.k_proj.weight", [0, 32, 100, 191]),
    ("model.layers.0.self_attn.v_proj.weight", [7]),
    ("model.layers.0.self_attn.o_proj.weight", [5]),
    ("model.layers.0.mlp.gate_proj.weight", [1535]),
    ("model.layers.0.mlp.up_proj.weight", [0]),
    ("model.layers.29.mlp.down_proj.weight", [575]),
    ("model.layers.29.self_attn.q_proj.weight", [100]),
    ("model.layers.0.input_layernorm.weight", [0]),
    ("model.layers.0.post_attention_layernorm.weight", [0]),
    ("model.norm.weight", [0]),
]
HF_SUMS = [
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.k_proj.weight",
    "model.layers.17.mlp.down_proj.weight",
]
LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def finite_f16(raw, off):
    """clears the top exponent bit of an Inf/NaN f16 at raw[off:off+2] (making it finite)"""
    h = raw[off] | raw[off + 1] << 8
    if (h & 0x7C00) == 0x7C00:
        h &= ~0x4000
    raw[off], raw[off + 1] = h & 0xFF, h >> 8


def block_records(rng):
    recs = []
    for qtype in ELEMENT_TYPES:
        n = 96
        if qtype == T.F32:
            vals = (rng.standard_normal(n) * np.exp2(rng.integers(-30, 30, n))).astype(np.float32)
            vals[:4] = [0.0, -0.0, np.float32(1e-42), np.float32(-3.4e38)]  # zeros, a subnormal, a large value
            raw = vals.view(np.uint8)
        else:
            raw16 = rng.integers(0, 1 << 16, n, dtype=np.uint32).astype(np.uint16)
            exp_mask = 0x7C00 if qtype == T.F16 else 0x7F80
            bad = (raw16 & exp_mask) == exp_mask
            raw16[bad] &= ~np.uint16(0x4000)  # Inf/NaN -> finite
            raw16[:3] = [0x0000, 0x8000, 0x0001]  # zeros and the smallest subnormal
            raw = raw16.view(np.uint8)
        vals = gguf.quants.dequantize(raw.copy(), qtype).astype(np.float32).ravel()
        recs.append((qtype, n, 4 if qtype == T.F32 else 2, 1, raw.tobytes(), vals))
    for qtype, fields in SCALE_FIELDS.items():
        bs, bb = gguf.GGML_QUANT_SIZES[qtype]
        nb = 6 if bs == 32 else 4
        raw = bytearray(rng.integers(0, 256, nb * bb, dtype=np.uint8).tobytes())
        raw[0:bb] = bytes(bb)  # block 0: all zero
        raw[bb:2 * bb] = b"\xff" * bb  # block 1: every bit set (scales made finite below)
        for b in range(nb):
            for f in fields:
                finite_f16(raw, b * bb + f)
        arr = np.frombuffer(bytes(raw), dtype=np.uint8).reshape(nb, bb)
        vals = gguf.quants.dequantize(arr.copy(), qtype).astype(np.float32).ravel()
        assert vals.size == nb * bs and np.all(np.isfinite(vals)), qtype.name
        recs.append((qtype, nb, bb, bs, bytes(raw), vals))
    return recs


def gguf_name(hf):
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf in fixed:
        return fixed[hf]
    parts = hf.split(".", 3)  # model, layers, i, rest
    return f"blk.{parts[2]}.{LAYER_NAMES[parts[3]]}"


class Model:
    def __init__(self, path):
        self.r = gguf.GGUFReader(path)
        self.tensors = {t.name: t for t in self.r.tensors}
        f = self.r.fields
        self.heads = int(f["llama.attention.head_count"].parts[-1][0])
        self.kv_heads = int(f["llama.attention.head_count_kv"].parts[-1][0])

    def hf(self, name):
        """tensor `name` dequantized, in HF order ([rows, cols] or [n]), float32"""
        t = self.tensors[gguf_name(name)]
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = [int(x) for x in t.shape]  # ne order: ne[0] first
        if len(shape) == 1:
            return w.reshape(shape[0])
        w = w.reshape(shape[1], shape[0])
        heads = self.heads if name.endswith("q_proj.weight") else self.kv_heads if name.endswith("k_proj.weight") else 0
        if heads:
            rows, cols = w.shape
            hd = rows // heads
            # GGUF (h, i, s) -> HF (h, s, i)
            w = w.reshape(heads, hd // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)
        return w


def model_records(path):
    m = Model(path)
    rows, sums = [], []
    for name, idx in HF_ROWS:
        w = m.hf(name)
        if w.ndim == 1:
            w = w.reshape(1, -1)
        for r in idx:
            rows.append((name, r, w[r].astype(np.float32)))
    for name in HF_SUMS:
        x = m.hf(name).astype(np.float64).ravel()
        wts = (np.arange(x.size) % 1000 + 1).astype(np.float64)
        sums.append((name, x.size, math.fsum(x), math.fsum(x * wts), math.fsum(x * x)))
    return rows, sums


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    models = os.environ.get("E8Q_MODELS") or os.path.expanduser("~/.cache/e8q")
    model = sys.argv[1] if len(sys.argv) > 1 else os.path.join(models, "SmolLM2-135M-Instruct.Q4_1.gguf")
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, "..", "tests", "io", "data", "ggml_golden.bin")
    rng = np.random.default_rng(20240817)
    blocks = block_records(rng)
    rows, sums = model_records(model)
    recs = []
    for qtype, nb, bb, bs, raw, vals in blocks:
        recs.append(struct.pack("<IIIII", 1, int(qtype), nb, bb, bs) + raw + vals.astype("<f4").tobytes())
    for name, r, vals in rows:
        nm = name.encode()
        recs.append(struct.pack("<II", 2, len(nm)) + nm + struct.pack("<qI", r, vals.size) + vals.astype("<f4").tobytes())
    for name, n, s, ws, ss in sums:
        nm = name.encode()
        recs.append(struct.pack("<II", 3, len(nm)) + nm + struct.pack("<qddd", n, s, ws, ss))
    recs.append(struct.pack("<IQ", 4, os.path.getsize(model)))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "wb") as f:
        f.write(b"E8QGGML1" + struct.pack("<I", len(recs)) + b"".join(recs))
    print(f"{out}: {len(recs)} records, {os.path.getsize(out)} bytes (gguf {importlib.metadata.version('gguf')})")


if __name__ == "__main__":
    main()
