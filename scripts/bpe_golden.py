#!/usr/bin/env python3
"""scripts/bpe_golden.py: reference tokenizers for tests/io/test_bpe.c, made with the Hugging Face
`tokenizers` package (pip install tokenizers; the GGUF reader needs `gguf`).

  bpe_golden.py hf-json GGUF OUT.json
      a tokenizer.json built by `tokenizers` from the GGUF's own vocabulary, merges and control
      tokens, with the SmolLM2 pre-tokenizer Sequence(Digits(individual_digits=True),
      ByteLevel(add_prefix_space=False)) (how golden/smollm2/*.u32 was made). Run by the test at
      test time (the file is 2 MB, not committed).

  bpe_golden.py tiny WIKI_TEST_RAW OUTDIR
      trains a tiny byte-level BPE (600 tokens) on the first 200 kB of wiki.test.raw with the
      Llama 3 pre-tokenizer (Split on the Llama 3 regex, Isolated, then ByteLevel without regex;
      ignore_merges and a <|begin_of_text|> TemplateProcessing, as Llama 3 ships; then, to test
      the corners, "Ġzyzzyva" (600) in the vocabulary without merges that make it, so only
      ignore_merges finds it, a non-special added token "hello world" (601) and a special "<|end_of"
      (602) that is a prefix of "<|end_of_text|>"), writes it and a
      Qwen 2 variant (same vocabulary, the Qwen 2 regex, no BOS) as OUTDIR/bpe_tiny_llama3.json and
      OUTDIR/bpe_tiny_qwen2.json, and the ids `tokenizers` gives for the edge cases below and for
      the first 16 kB of wiki.test.raw as OUTDIR/bpe_tiny_golden.json. Committed (small).

  bpe_golden.py check TOKENIZER_JSON EDGE_IDS_JSON
      loads a tokenizer.json (one e8q wrote) with `tokenizers` and encodes every case of an
      edge_ids.json ({"cases": [{"text", "ids"}]}) without special tokens; exit status 0 when all
      ids equal, 1 (with the first difference on stderr) otherwise.
"""
import json
import sys

LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
          r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
         r"\s*[\r\n]+|\s+(?!\S)|\s+")

EDGE = [
    "Hello world",
    "don't I'll we've they're SHE'S I'M you'D it'Ll",
    "1 12 123 1234 12345 1234567 3.14159 2024-05-01",
    "日本語のテキストと中文, 한국어 텍스트",
    "emoji 🙂🚀 and ZWJ 👩‍💻 flags 🇫🇷",
    "  multiple   spaces\tand\t\ttabs   ",
    "line one\r\nline two\r\n\r\nCRLF\r\n",
    "a\n\n\nb\n \n c",
    "end.\n\nNext!!! ??? ...",
    "x=1e-5; y = 3.14159 // (a+b)*c",
    "<|begin_of_text|>hello<|end_of_text|> <|begin_of_text|>",
    "\u00a0non-breaking\u00a0space \u2003em space",
    "Ünïcödé ÅÄÖ ß ſtraße",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "   leading and trailing   ",
    "",
    " ",
    "\n",
    "a zyzzyva, zyzzyva and Zyzzyva",
    "say hello world!hello worldly <|end_of|><|end_of_text|><|end_of_tex",
    "'s 's's ''' '",
]


def hf_json(gguf_path, out):
    import gguf
    from tokenizers import Tokenizer, AddedToken, decoders, models, pre_tokenizers

    r = gguf.GGUFReader(gguf_path)

    def strings(key):
        f = r.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    tokens = strings("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ")) for m in strings("tokenizer.ggml.merges")]
    tt = r.fields["tokenizer.ggml.token_type"]
    types = [int(tt.parts[i][0]) for i in tt.data]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == 3])
    tok.save(out)


def tiny(wiki, outdir):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    text = open(wiki, encoding="utf-8").read()
    train = text[:200_000]
    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([train], trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
        special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])
    tok.add_tokens([AddedToken("hello world", special=False, normalized=False)])
    tok.add_special_tokens([AddedToken("<|end_of", special=True, normalized=False)])
    j = json.loads(tok.to_str())
    assert len(j["model"]["vocab"]) == 600 and [a["id"] for a in j["added_tokens"]] == [0, 1, 600, 601]
    j["model"]["vocab"]["\u0120zyzzyva"] = 600
    j["added_tokens"][2]["id"], j["added_tokens"][3]["id"] = 601, 602  # what tokenizers assigns on loading
    j["model"]["ignore_merges"] = True
    llama3 = json.dumps(j, ensure_ascii=False)
    j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = QWEN2
    j["post_processor"] = None
    j["model"]["ignore_merges"] = False
    qwen2 = json.dumps(j, ensure_ascii=False)
    open(f"{outdir}/bpe_tiny_llama3.json", "w", encoding="utf-8").write(llama3)
    open(f"{outdir}/bpe_tiny_qwen2.json", "w", encoding="utf-8").write(qwen2)

    head = text[:16_000]
    golden = {"tokenizers": __import__("tokenizers").__version__, "wiki_head_chars": len(head),
              "wiki_head_bytes": len(head.encode("utf-8")), "cases": []}
    for name, s in (("llama3", llama3), ("qwen2", qwen2)):
        t = Tokenizer.from_str(s)
        golden[name + "_wiki_head"] = t.encode(head, add_special_tokens=False).ids
        golden[name + "_bos"] = t.encode("Hello world", add_special_tokens=True).ids
    for e in EDGE:
        case = {"text": e}
        for name, s in (("llama3", llama3), ("qwen2", qwen2)):
            case[name] = Tokenizer.from_str(s).encode(e, add_special_tokens=False).ids
        golden["cases"].append(case)
    with open(f"{outdir}/bpe_tiny_golden.json", "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False)


def check(tok_json, edge):
    from tokenizers import Tokenizer

    t = Tokenizer.from_file(tok_json)
    for c in json.load(open(edge, encoding="utf-8"))["cases"]:
        got = t.encode(c["text"], add_special_tokens=False).ids
        if got != c["ids"]:
            sys.stderr.write(f"{tok_json}: {c['text']!r}: tokenizers gives {got}, expected {c['ids']}\n")
            sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "hf-json":
        hf_json(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "tiny":
        tiny(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
