#!/usr/bin/env python3
"""fuzz/make_corpus.py OUT [SHARED]: seed corpora for the fuzz targets, one folder per target.

Small valid inputs are generated here (safetensors, checkpoints, GGUF, artifacts, journals,
configs); the tokenizers come from ../shared (stories260K's tok512.model and tok512.bin) and the
repository's tiny tokenizer.json files (tests/io/data). Nothing large is committed: this script
makes the corpus from scratch in a second."""
import hashlib, io, json, os, struct, sys, tarfile

out = sys.argv[1]
here = os.path.dirname(os.path.abspath(__file__))
shared = sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, "..", "..", "shared")


def put(target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def copy(target, name, src):
    if os.path.exists(src):
        with open(src, "rb") as f:
            put(target, name, f.read())


# ---------------------------------------------------------------- safetensors
def safetensors(tensors, meta=None):
    """tensors: [(name, dtype, shape, bytes)]"""
    header, data = {}, b""
    for name, dt, shape, raw in tensors:
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if meta:
        header["__metadata__"] = meta
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


f32 = lambda *v: struct.pack("<%df" % len(v), *v)
small = [("w", "F32", [2, 3], f32(1, -2, 3.5, 0, 1e-3, 7)),
         ("b", "BF16", [4], struct.pack("<4H", 0x3f80, 0xbf80, 0x4000, 0)),
         ("h", "F16", [2], struct.pack("<2H", 0x3c00, 0xc000)),
         ("codes", "U16", [2, 2], struct.pack("<4H", 1, 2, 3, 65535)),
         ("d", "F64", [1], struct.pack("<d", 0.25)),
         ("e", "F32", [0, 5], b"")]
put("safetensors", "small", safetensors(small, {"format": "pt"}))
put("safetensors", "one", safetensors([("x", "F32", [1], f32(1))]))
put("safetensors", "empty", safetensors([]))
hf = [("model.embed_tokens.weight", "F32", [4, 2], f32(*range(8))),
      ("model.layers.0.self_attn.q_proj.weight", "BF16", [2, 2], struct.pack("<4H", 0x3f80, 0, 0, 0x3f80)),
      ("model.norm.weight", "F32", [2], f32(1, 1))]
put("safetensors", "hf", safetensors(hf))

# ---------------------------------------------------------------- checkpoints (io/ckpt.h)
for kind in ["shard", "hessian", "acts", "part", "ft"]:
    t = [("H", "F64", [4, 4], struct.pack("<16d", *[float(i == j) for i in range(4) for j in range(4)])),
         ("model.layers.0.self_attn.qkv_proj.codes", "U16", [2, 1], struct.pack("<2H", 7, 9)),
         ("model.layers.0.self_attn.qkv_proj.SU", "F32", [8], f32(*[1, -1] * 4))]
    put("ckpt", kind, safetensors(t, {"format": "e8q-ckpt", "version": "1", "kind": kind, "block": "0"}))

# ---------------------------------------------------------------- config.json
cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 172,
       "num_hidden_layers": 5, "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 512,
       "max_position_embeddings": 512, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "tie_word_embeddings": True,
       "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"}
put("config", "stories", json.dumps(cfg))
put("config", "mistral", json.dumps(dict(cfg, model_type="mistral", sliding_window=4096, head_dim=8,
                                         eos_token_id=[2, 3], rope_scaling=None)))
put("config", "min", json.dumps({k: cfg[k] for k in ["model_type", "hidden_size", "intermediate_size",
                                                      "num_hidden_layers", "num_attention_heads", "vocab_size"]}))
copy("config", "shared", os.path.join(shared, "models", "stories260K-hf", "config.json"))

# ---------------------------------------------------------------- tokenizers
copy("tokenizer_spm", "tok512.model", os.path.join(shared, "models", "stories260K", "tok512.model"))
copy("tokenizer_bin", "tok512.bin", os.path.join(shared, "models", "stories260K", "tok512.bin"))
for n in ["bpe_tiny_llama3.json", "bpe_tiny_qwen2.json"]:
    copy("bpe_json", n, os.path.join(here, "..", "tests", "io", "data", n))
vocab = {"a": 0, "b": 1, "ab": 2, "\u0120": 3, "\u0120a": 4, "<s>": 5}
put("bpe_json", "mini", json.dumps({"model": {"type": "BPE", "vocab": vocab, "merges": ["a b", "\u0120 a"]},
                                    "added_tokens": [{"id": 5, "content": "<s>", "special": True}],
                                    "pre_tokenizer": {"type": "ByteLevel"}}))
# a tiny llama2.c tokenizer.bin: max length, then (score, length, bytes) per token
tb = struct.pack("<i", 3) + b"".join(struct.pack("<fi", -float(i), len(p)) + p
                                     for i, p in enumerate([b"<unk>"[:3], b"a", b"b", b" ab"]))
put("tokenizer_bin", "tiny.bin", tb)


# ---------------------------------------------------------------- GGUF
def gstr(s):
    s = s.encode()
    return struct.pack("<Q", len(s)) + s


def gkv(key, typ, val):
    b = gstr(key) + struct.pack("<I", typ)
    if typ == 8:
        return b + gstr(val)
    if typ == 9:
        et, items = val
        b += struct.pack("<IQ", et, len(items))
        for it in items:
            b += gstr(it) if et == 8 else struct.pack({4: "<I", 5: "<i", 6: "<f"}[et], it)
        return b
    return b + struct.pack({4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q"}[typ], val)


def gguf(kvs, tensors, align=32):
    """tensors: [(name, ne, type, raw)]"""
    infos, data = b"", b""
    for name, ne, typ, raw in tensors:
        data += b"\0" * (-len(data) % align)
        infos += gstr(name) + struct.pack("<I", len(ne)) + struct.pack("<%dQ" % len(ne), *ne) + struct.pack("<IQ", typ, len(data))
        data += raw
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs) + infos
    head += b"\0" * (-len(head) % align)
    return head + data


D, V, F = 8, 6, 16
toks = ["<unk>", "<s>", "</s>", "\u2581a", "b", "<0x41>"]
kvs = [gkv("general.architecture", 8, "llama"), gkv("llama.embedding_length", 4, D),
       gkv("llama.feed_forward_length", 4, F), gkv("llama.block_count", 4, 1),
       gkv("llama.attention.head_count", 4, 2), gkv("llama.attention.head_count_kv", 4, 1),
       gkv("llama.context_length", 4, 64), gkv("llama.attention.layer_norm_rms_epsilon", 6, 1e-5),
       gkv("tokenizer.ggml.model", 8, "llama"), gkv("tokenizer.ggml.tokens", 9, (8, toks)),
       gkv("tokenizer.ggml.scores", 9, (6, [0.0, 0.0, 0.0, -1.0, -2.0, -3.0])),
       gkv("tokenizer.ggml.token_type", 9, (5, [2, 3, 3, 1, 1, 6])),
       gkv("tokenizer.ggml.bos_token_id", 4, 1), gkv("tokenizer.ggml.eos_token_id", 4, 2)]
w = lambda *ne: f32(*[((i * 7) % 5 - 2) / 4 for i in range(eval("*".join(map(str, ne))))])
ten = [("token_embd.weight", [D, V], 0, w(D, V)), ("output_norm.weight", [D], 0, f32(*[1] * D)),
       ("blk.0.attn_norm.weight", [D], 0, f32(*[1] * D)), ("blk.0.ffn_norm.weight", [D], 0, f32(*[1] * D)),
       ("blk.0.attn_q.weight", [D, D], 1, struct.pack("<%dH" % (D * D), *[0x3c00 if i % 9 == 0 else 0 for i in range(D * D)])),
       ("blk.0.attn_k.weight", [D, 4], 0, w(D, 4)), ("blk.0.attn_v.weight", [D, 4], 0, w(D, 4)),
       ("blk.0.attn_output.weight", [D, D], 0, w(D, D)), ("blk.0.ffn_gate.weight", [D, F], 0, w(D, F)),
       ("blk.0.ffn_up.weight", [D, F], 0, w(D, F)), ("blk.0.ffn_down.weight", [F, D], 0, w(F, D)),
       ("extra.q8", [32, 1], 8, struct.pack("<H", 0x3c00) + bytes(range(32)))]
put("gguf", "tiny_llama", gguf(kvs, ten))
put("gguf", "gpt2_tok", gguf([gkv("general.architecture", 8, "llama"), gkv("tokenizer.ggml.model", 8, "gpt2"),
                              gkv("tokenizer.ggml.pre", 8, "smollm"),
                              gkv("tokenizer.ggml.tokens", 9, (8, ["a", "b", "ab", "\u0120"])),
                              gkv("tokenizer.ggml.merges", 9, (8, ["a b"]))], []))
put("gguf", "empty", gguf([], []))


# ---------------------------------------------------------------- artifacts (io/artifact.h)
def artifact(members, extra=None):
    man = {"format": "e8q", "format_version": 1, "e8q_version": "0.1.0"}
    man.update(extra or {})
    man["members"] = {n: {"size": len(b), "sha256": hashlib.sha256(b).hexdigest()} for n, b in members}
    mt = json.dumps(man, indent=1).encode()
    allm = members + [("manifest.json", mt), ("manifest.json.sha256", (hashlib.sha256(mt).hexdigest() + "\n").encode())]
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for n, b in allm:
            ti = tarfile.TarInfo(n)
            ti.size, ti.mode, ti.mtime = len(b), 0o644, 0
            tf.addfile(ti, io.BytesIO(b))
    return bio.getvalue()


put("artifact", "small", artifact([("config.json", json.dumps(cfg).encode()),
                                   ("model.safetensors", safetensors(small))], {"seed": 7}))
put("artifact", "one", artifact([("tokenizer.model", b"\x0a\x03abc")]))


# ---------------------------------------------------------------- journals (io/journal.h)
def record(typ, payload):
    p = payload.encode()
    h = struct.pack("<IHHI", 0x4a513845, 1, typ, len(p)) + p
    return h + hashlib.sha256(h).digest()


j = record(1, '{"step":"plan"}') + record(2, '{"path":"shards/0.e8qs","sha256":"' + "0" * 64 + '","size":3}') + \
    record(3, '{"retry":1}') + record(1, '{"step":"embed"}')
put("journal", "four", j)
put("journal", "torn", j[:-7])
put("journal", "empty", b"")
