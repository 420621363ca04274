/* io/tokenizer.h: Llama tokenizers, SentencePiece tokenizer.model (protobuf) and llama2.c
 * tokenizer.bin, giving the same ids for the same text and vocabulary.
 *
 * Encoding is Llama's: the text gets the dummy-prefix space (" " + text), spaces become
 * U+2581, each UTF-8 character becomes a piece (or byte-fallback tokens <0xNN>), then pairs
 * are merged greedily by highest score. BOS/EOS added on request. */
#ifndef E8Q_IO_TOKENIZER_H
#define E8Q_IO_TOKENIZER_H

#include <stddef.h>

typedef struct e8q_tokenizer e8q_tokenizer;

/* loads .model (SentencePiece protobuf) or .bin (llama2.c), detected from the content */
e8q_tokenizer *e8q_tokenizer_load(const char *path);
void e8q_tokenizer_free(e8q_tokenizer *t);
int e8q_tokenizer_vocab_size(const e8q_tokenizer *t);
/* the tokenizer file in a HF model directory (tokenizer.model), or NULL if none: malloc'd */
char *e8q_tokenizer_find(const char *model_dir);

/* Encodes UTF-8 text; returns the number of ids written to *ids (malloc'd, caller frees). */
int e8q_tokenizer_encode(const e8q_tokenizer *t, const char *text, int bos, int eos, int **ids);
/* The text of token id following token prev (strips the leading space after BOS, turns
 * <0xNN> into the raw byte). Pointer valid until the next call. */
const char *e8q_tokenizer_decode(const e8q_tokenizer *t, int prev, int id);

#endif
