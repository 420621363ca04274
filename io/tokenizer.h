/* io/tokenizer.h: the tokenizers of e8q's models behind one API: Llama's SentencePiece
 * tokenizer.model (protobuf) and llama2.c tokenizer.bin (the same ids for the same text and
 * vocabulary), and byte-level BPE (GPT-2 style) from a Hugging Face tokenizer.json or from a GGUF
 * file's metadata (io/bpe.h describes that pipeline: special tokens, regex pre-tokenizer
 * gpt2 / smollm / llama3 / qwen2, merges by rank; it refuses invalid UTF-8 text). A GGUF whose
 * tokenizer.ggml.model is "llama" gives the SentencePiece tokenizer below (tokens, scores,
 * token_type, unk/bos/eos ids, add_space_prefix, add_bos_token).
 *
 * The rest of this comment is about SentencePiece / llama2.c.
 *
 * Encoding is Llama's: the text gets the dummy-prefix space (" " + text), spaces become
 * U+2581, each UTF-8 character becomes a piece (or byte-fallback tokens <0xNN>), then pairs
 * are merged greedily by highest score. BOS/EOS added on request.
 *
 * SentencePiece piece types (sentencepiece_model.proto): 1 normal, 2 unknown, 3 control,
 * 4 user defined, 5 unused, 6 byte. Only normal and user-defined pieces are formed from text.
 * Read from tokenizer.model: pieces, scores, types, trainer_spec.model_type (must be BPE),
 * unk/bos/eos ids, normalizer_spec.add_dummy_prefix. Not applied: remove_extra_whitespaces
 * (llama2.c does not either, and Llama's models set it false) and non-identity normalizers
 * (warned). llama2.c tokenizer.bin: ids 0 unk, 1 BOS, 2 EOS, <0xNN> pieces are bytes. */
#ifndef E8Q_IO_TOKENIZER_H
#define E8Q_IO_TOKENIZER_H

#include <stddef.h>

typedef struct e8q_tokenizer e8q_tokenizer;

/* loads .model (SentencePiece protobuf), .bin (llama2.c), tokenizer.json (a .json name, or content
 * starting with '{') or a .gguf file (its metadata; detected by the "GGUF" magic) */
e8q_tokenizer *e8q_tokenizer_load(const char *path);
void e8q_tokenizer_free(e8q_tokenizer *t);
int e8q_tokenizer_vocab_size(const e8q_tokenizer *t);
/* The tokenizer that belongs with a model (a HF directory, or a llama2.c .bin: then beside it):
 * the first of tokenizer.model, tokenizer.bin, tokenizer.json, tok<vocab_size>.model,
 * tok<vocab_size>.bin, then any tok*.model, tok*.bin (first in byte order); vocab_size <= 0: no size
 * hint. A GGUF model file is its own tokenizer: its path is returned. NULL if none; malloc'd. The
 * one lookup of e8q (quantize, eval and generate find the same file). */
char *e8q_tokenizer_find(const char *model_dir, int vocab_size);

/* Encodes UTF-8 text; returns the number of ids written to *ids (malloc'd, caller frees). */
int e8q_tokenizer_encode(const e8q_tokenizer *t, const char *text, int bos, int eos, int **ids);
/* The text of token id following token prev (strips the leading space after BOS, turns
 * <0xNN> into the raw byte). Pointer valid until the next call. Byte-level BPE: the token's exact
 * bytes whatever prev is (possibly part of a UTF-8 character; control tokens give their own text,
 * so the concatenated decoding of encode(text) is text). */
const char *e8q_tokenizer_decode(const e8q_tokenizer *t, int prev, int id);

/* ---------------------------------------------------------------- additions */

/* The readable O(n^2) twin of e8q_tokenizer_encode (llama2.c's merge loop): same ids. */
int e8q_tokenizer_encode_ref(const e8q_tokenizer *t, const char *text, int bos, int eos, int **ids);
int e8q_tokenizer_bos_id(const e8q_tokenizer *t); /* BPE: -1 when the tokenizer names none */
int e8q_tokenizer_eos_id(const e8q_tokenizer *t); /* BPE: -1 when the tokenizer names none */
/* The model's own BOS flag, what callers pass as encode's bos: SentencePiece / llama2.c 1 (a GGUF
 * "llama": tokenizer.ggml.add_bos_token, default 1); BPE: tokenizer.json's post_processor
 * (TemplateProcessing with a leading special token) or GGUF tokenizer.ggml.add_bos_token (default 0). */
int e8q_tokenizer_add_bos(const e8q_tokenizer *t);
/* 1 for a byte-level BPE tokenizer */
int e8q_tokenizer_is_bpe(const e8q_tokenizer *t);
/* the piece of id in llama2.c form (spaces, not U+2581), for BPE its raw bytes; fatal when out of range */
const char *e8q_tokenizer_piece(const e8q_tokenizer *t, int id);
/* fatal, naming the tokenizer file and the model, unless the vocabulary has model_vocab_size pieces */
void e8q_tokenizer_check_vocab(const e8q_tokenizer *t, int model_vocab_size, const char *model);

/* Token ids of a whole file: a pre-tokenized id file (.ids/.u32, ids checked against this
 * vocabulary; BOS prepended when bos and the file does not start with it) or UTF-8 text
 * (validated, encoded in one piece with BOS when bos). Returns the count; *ids malloc'd. */
size_t e8q_tokenizer_encode_file(const e8q_tokenizer *t, const char *path, int bos, int **ids);

/* Writes a minimal valid SentencePiece tokenizer.model (BPE, identity normalizer, dummy prefix,
 * byte fallback when byte pieces are given), atomically (temporary + fsync + rename).
 * pieces[i]: UTF-8, a space is written as U+2581; scores[i]: merge priority; types[i]: the
 * SentencePiece type (1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte <0xNN>),
 * NULL for all normal. Llama convention: 0 <unk>, 1 <s>, 2 </s>. */
void e8q_tokenizer_write_spm(const char *path, int n, const char **pieces, const float *scores, const int *types);

/* Writes the tokenizer as a Hugging Face tokenizer.json (vocab, merges, added tokens, pre-tokenizer,
 * BOS flag) atomically; BPE only (fatal otherwise). Loading it gives identical ids; BOS/EOS ids
 * survive when the BOS flag is set (the TemplateProcessing names BOS), otherwise they come from
 * tokenizer_config.json / config.json beside the written file. */
void e8q_tokenizer_write_json(const e8q_tokenizer *t, const char *path);

#endif
