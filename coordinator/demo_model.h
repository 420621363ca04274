/* coordinator/demo_model.h: a small deterministic demo model, for the README's first command and tests.
 *
 * A real Llama-architecture checkpoint in Hugging Face format with RANDOM weights (not a
 * trained model, it generates gibberish): dim 128, intermediate 344 (= 43*8, a non-power-of-two
 * Hadamard size like Llama-2-7B's 11008 = 43*256), 4 layers, 4 heads of 32, 2 kv heads, vocab
 * 300, untied lm_head, max positions 512. Weights are Student-t (4 degrees of freedom, heavy
 * tailed) scaled by 1/sqrt(fan_in), and a few hidden channels carry large norm weights
 * (activation outliers, as in real LLMs).
 *
 * DIR gets config.json, model.safetensors (f32), tokenizer.model (SentencePiece BPE: <unk>
 * <s> </s>, the 256 byte tokens, lower-case letters and a few merges), calib.txt and eval.txt
 * (deterministic generated sentences). The same seed gives bit-identical files. */
#ifndef E8Q_COORDINATOR_DEMO_MODEL_H
#define E8Q_COORDINATOR_DEMO_MODEL_H

#include <stdint.h>

#define E8Q_DEMO_VOCAB 300

/* creates dir if needed; fatal naming the path on any I/O error */
void e8q_demo_write(const char *dir, uint64_t seed);

#endif
