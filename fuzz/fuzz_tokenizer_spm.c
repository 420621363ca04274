/* fuzz/fuzz_tokenizer_spm.c: a SentencePiece tokenizer.model (protobuf ModelProto) loaded and used. */
#include "tok_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) { return tok_fuzz("tokenizer.model", data, n); }
