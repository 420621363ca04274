/* io/bpe.h: byte-level BPE tokenizers (GPT-2 style), as in Hugging Face tokenizer.json and in GGUF
 * metadata (tokenizer.ggml.model "gpt2"). Used through io/tokenizer.h (e8q_tokenizer_load
 * dispatches here); this header is the builder and the engine behind it.
 *
 * Vocabulary: token strings as stored (normal tokens in GPT-2's byte-to-unicode alphabet, where
 * every byte is one printable code point: 0x20 is "Ġ", 0x0A is "Ċ"; added/special tokens as their
 * raw text), merges "a b" (rank = order), token types as GGUF numbers them (1 normal, 2 unknown,
 * 3 control, 4 user defined, 5 unused, 6 byte).
 *
 * Encoding (the Hugging Face `tokenizers` pipeline, byte for byte):
 *   1. tokens of type unknown, control and user defined are matched whole in the text, leftmost
 *      first and the longest at a position (like tokenizers' added-token split); each becomes its id;
 *   2. each stretch between them is pre-tokenized by the named pre-tokenizer (PCRE2 regexes, UTF
 *      and Unicode properties, JIT where available); pieces between matches are kept too:
 *        "gpt2"    's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *        "smollm"  every \p{N} character its own piece (Digits individual_digits), then "gpt2"
 *        "llama3"  (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
 *                  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+   ("llama-bpe" is a synonym)
 *        "qwen2"   the llama3 regex with \p{N} in place of \p{N}{1,3}
 *   3. each piece's bytes are its initial symbols (the token of each byte's alphabet character; a
 *      byte without one becomes the unknown token when there is one, else it is dropped, as in
 *      tokenizers); with ignore_merges, a piece that is itself a vocabulary token is that token;
 *   4. adjacent pairs are merged by rank, lowest first, the leftmost on ties, one merge at a time,
 *      until no pair has a merge.
 * The fast encoder merges with a heap over a linked list and caches the ids of pieces already
 * seen in the same call; e8q_bpe_encode_ref is the readable O(n^2) twin and gives the same ids.
 *
 * Invalid UTF-8 is refused: the text must be valid UTF-8 without NUL bytes (as Hugging Face's
 * tokenizers requires); encoding fails with the tokenizer file and the byte offset of the first
 * bad sequence (e8q_tokenizer_encode_file reads text through e8q_text_read, which names the file).
 *
 * Decoding inverts the alphabet: the text of a token is its exact bytes (a token may hold part of
 * a UTF-8 character); control and user-defined tokens decode to their own text, so the
 * concatenated decoding of encode(text) is text, byte for byte. */
#ifndef E8Q_IO_BPE_H
#define E8Q_IO_BPE_H

#include <stddef.h>

typedef struct e8q_bpe e8q_bpe;

enum {
  E8Q_BPE_NORMAL = 1,
  E8Q_BPE_UNKNOWN = 2,
  E8Q_BPE_CONTROL = 3,
  E8Q_BPE_USER_DEFINED = 4,
  E8Q_BPE_UNUSED = 5,
  E8Q_BPE_BYTE = 6
};

/* ---------------------------------------------------------------- loaders */

/* a Hugging Face tokenizer.json (model.type "BPE"); refuses what it does not implement, naming the
 * file and the field. BOS: the post_processor's TemplateProcessing (its leading special token sets
 * bos and add_bos), else tokenizer_config.json (bos_token, eos_token) or config.json
 * (bos_token_id, eos_token_id) beside the file; -1 when none says. */
e8q_bpe *e8q_bpe_load_json(const char *path);
/* the same from a tokenizer.json already in memory (json[0..len)); path names it in messages */
e8q_bpe *e8q_bpe_parse_json(const char *path, const char *json, size_t len);

/* ---------------------------------------------------------------- builder (GGUF metadata) */

/* an empty vocabulary of n tokens; then every token set, merges added in rank order, finished */
e8q_bpe *e8q_bpe_new(const char *path, int n);
/* token id as stored (form[0..len), not NUL-terminated), type E8Q_BPE_* */
void e8q_bpe_set_token(e8q_bpe *b, int id, const char *form, size_t len, int type);
/* merge number `rank` given as "a b" (s[0..len)); field names the source in messages */
void e8q_bpe_add_merge(e8q_bpe *b, const char *s, size_t len, const char *field, int rank);
/* pre: a pre-tokenizer name above (field names where it came from); bos/eos -1 for none */
void e8q_bpe_finish(e8q_bpe *b, const char *pre, const char *field, int bos, int eos, int add_bos, int ignore_merges);
/* 1 when name is a pre-tokenizer this file implements */
int e8q_bpe_pre_known(const char *name);

void e8q_bpe_free(e8q_bpe *b);

/* ---------------------------------------------------------------- use */

int e8q_bpe_vocab_size(const e8q_bpe *b);
int e8q_bpe_bos_id(const e8q_bpe *b); /* -1: none known */
int e8q_bpe_eos_id(const e8q_bpe *b); /* -1: none known */
int e8q_bpe_add_bos(const e8q_bpe *b);
const char *e8q_bpe_pre_name(const e8q_bpe *b);
const char *e8q_bpe_path(const e8q_bpe *b);

/* Encodes UTF-8 text (NUL-terminated); returns the count, *ids malloc'd (caller frees). bos/eos:
 * prepend/append those tokens (fatal, naming the file, when the tokenizer has none). */
int e8q_bpe_encode(const e8q_bpe *b, const char *text, int bos, int eos, int **ids);
int e8q_bpe_encode_ref(const e8q_bpe *b, const char *text, int bos, int eos, int **ids);
/* the exact bytes of token id (NUL-terminated; *len may be NULL); fatal when out of range */
const char *e8q_bpe_text(const e8q_bpe *b, int id, size_t *len);

/* writes a Hugging Face tokenizer.json (vocab, merges, added tokens, pre-tokenizer, BOS
 * post-processor when add_bos) atomically; loading it gives the same ids */
void e8q_bpe_write_json(const e8q_bpe *b, const char *path);

#endif
