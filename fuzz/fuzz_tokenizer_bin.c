/* fuzz/fuzz_tokenizer_bin.c: a llama2.c tokenizer.bin (max length, then score/length/bytes per
 * token) loaded and used. */
#include "tok_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) { return tok_fuzz("tokenizer.bin", data, n); }
