/* coordinator/cmd_generate.c: `e8q generate`: greedy (or sampled) decoding with the KV-cached step,
 * from a model (--model) or a quantized artifact (--artifact: every quantized linear through the
 * fused decode kernels, or with --dense through its dense decode; the tokenizer from the archive).
 * Text (or, with --ids, a JSON list of the generated ids) on stdout; tokens/s on stderr.
 * Runs on rank 0 only. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/device.h"
#include "common/error.h"
#include "common/log.h"
#include "common/rng.h"
#include "coordinator/artifact_model.h"
#include "coordinator/commands.h"
#include "coordinator/options.h"
#include "coordinator/eval.h"
#include "coordinator/sample.h"
#include "kernels/transformer.h"
#include "worker/forward.h"

static void generate_usage(FILE *f) {
  fprintf(f,
          "usage: e8q generate --model PATH | --artifact OUT.e8q [--dense] [--tokenizer FILE] [--prompt TEXT]\n"
          "                    [--tokens N] [--ids] [--temperature T [--top-p P] [--seed S]] [--head H] [--device D]\n\n"
          "Generation from [BOS] + prompt, stopping at EOS or after N tokens: greedy (argmax) by default,\n"
          "sampled from softmax(logits / T) (nucleus of probability P) with --temperature T > 0.\n"
          "Tokens per second are printed on stderr.\n\n"
          "  --model PATH      model directory (config.json + safetensors) or llama2.c .bin\n"
          "  --artifact F      an .e8q archive from e8q quantize: verified against its manifest, the\n"
          "                    weights mapped in place, every quantized linear through the fused decode\n"
          "                    kernels, the tokenizer taken from the archive\n"
          "  --dense           with --artifact: the dense decode of the quantized linears (reference)\n"
          "  --tokenizer FILE  tokenizer.model or tokenizer.bin (default: DIR/tokenizer.model, or\n"
          "                    tokenizer.bin / tok<vocab>.bin / tokenizer.model beside a .bin, or the\n"
          "                    artifact's own)\n"
          "  --prompt TEXT     text to continue (default: none, start from BOS)\n"
          "  --tokens N        tokens to generate (default 100; capped by the model's max positions)\n"
          "  --ids             print the generated ids as a JSON list instead of text\n"
          "  --temperature T   sample at temperature T (default 0: greedy)\n"
          "  --top-p P         sample from the smallest set of tokens with probability >= P (default 1)\n"
          "  --seed S          sampling seed (default 1; same seed, same text)\n" E8Q_OPT_HEAD_HELP
          "  --device D        auto (default: CUDA when every rank has a device, else the CPU), cpu, or cuda\n"
          "                    (fatal without one): each token's whole step on the device (the quantized\n"
          "                    linears on the CUDA fused kernels, the KV cache and the head there too;\n"
          "                    with --head q8 the step stays on the CPU)\n"
          "  --help            this text\n");
}

/* prints a decoded piece, dropping lone control bytes other than newline and tab */
static void print_piece(const char *p) {
  if (!p || !*p) return;
  if (p[1] == '\0') {
    unsigned char b = (unsigned char)p[0];
    if (b < 32 && b != '\n' && b != '\t') return;
  }
  fputs(p, stdout);
}

int cmd_generate(int argc, char **argv) {
  const char *model_path = NULL, *tok_path = NULL, *prompt = NULL, *artifact = NULL;
  int n_tokens = 100, want_ids = 0, dense = 0, head_q8 = 0;
  double temp = 0.0, top_p = 1.0;
  int top_p_given = 0;
  unsigned long long seed = 1;
  e8q_device_mode device = E8Q_DEVICE_AUTO;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (e8q_opt_help(a, generate_usage)) {
      return 0;
    } else if (e8q_opt_model("generate", argc, argv, &i, &model_path, &artifact, &dense, &tok_path) ||
               e8q_opt_head("generate", argc, argv, &i, &head_q8)) {
      continue;
    } else if (!strcmp(a, "--prompt")) {
      prompt = e8q_opt_value("generate", argc, argv, &i);
    } else if (!strcmp(a, "--tokens")) {
      n_tokens = e8q_opt_int(a, e8q_opt_value("generate", argc, argv, &i), 1, 1 << 30);
    } else if (!strcmp(a, "--ids")) {
      want_ids = 1;
    } else if (!strcmp(a, "--temperature")) {
      temp = e8q_opt_double(a, e8q_opt_value("generate", argc, argv, &i), 0, 1e6);
    } else if (!strcmp(a, "--top-p")) {
      top_p = e8q_opt_double(a, e8q_opt_value("generate", argc, argv, &i), 1e-9, 1);
      top_p_given = 1;
    } else if (!strcmp(a, "--seed")) {
      seed = e8q_opt_u64(a, e8q_opt_value("generate", argc, argv, &i));
    } else if (!strcmp(a, "--device")) {
      device = e8q_device_parse(a, e8q_opt_value("generate", argc, argv, &i));
    } else {
      E8Q_FATAL("generate: unknown option '%s' (see e8q generate --help)", a);
    }
  }
  E8Q_CHECK(!(model_path && artifact), "generate: give --model or --artifact, not both");
  E8Q_CHECK(model_path || artifact, "generate: --model PATH or --artifact OUT.e8q is required (see e8q generate --help)");
  E8Q_CHECK(!dense || artifact, "generate: --dense applies to --artifact only");
  E8Q_CHECK(!top_p_given || temp > 0,
            "generate: --top-p %g applies to sampling, and without --temperature T > 0 generation is greedy (argmax); "
            "give --temperature with it, or drop --top-p",
            top_p);
  e8q_device dev;
  e8q_device_select(&dev, device, "generate");
  e8q_artifact_model am = {0};
  if (artifact) { /* collective (every rank takes part in the verification), then rank 0 alone */
    e8q_artifact_model_open(&am, artifact, !dense);
    model_path = am.dir; /* the unpacked tokenizer files */
    if (e8q_rank() != 0) {
      e8q_artifact_model_close(&am);
      return 0;
    }
  }
  if (e8q_rank() != 0) return 0; /* generation is not distributed */

  e8q_model *m = artifact ? am.m : e8q_model_load(model_path);
  if (head_q8) e8q_model_head_to_q8(m);
  /* --device cuda: an artifact's quantized linears on the GPU (token by token, host buffers) */
  if (artifact && !am.q.dense && !dense) e8q_qmodel_upload(&am.q, m, dev.cuda);
  const e8q_config *c = &m->cfg;
  /* a tokenizer is needed for a prompt or for text output */
  e8q_tokenizer *tok = e8q_eval_open_tokenizer(model_path, c, tok_path, prompt || !want_ids, NULL);
  int *prompt_ids = NULL, n_prompt;
  if (prompt) {
    n_prompt = e8q_tokenizer_encode(tok, prompt, e8q_tokenizer_add_bos(tok), 0, &prompt_ids);
  } else {
    prompt_ids = e8q_malloc(sizeof(int), "prompt");
    prompt_ids[0] = c->bos_id;
    n_prompt = 1;
  }
  E8Q_CHECK(n_prompt < c->max_seq_len, "generate: the prompt has %d tokens, the model only %d positions", n_prompt,
            c->max_seq_len);
  if (n_prompt + n_tokens > c->max_seq_len) {
    e8q_warn("generate: %d prompt + %d new tokens exceed the model's %d positions; generating %d", n_prompt, n_tokens,
             c->max_seq_len, c->max_seq_len - n_prompt);
    n_tokens = c->max_seq_len - n_prompt;
  }

  e8q_kv_cache kv;
  e8q_kv_init(&kv, c, n_prompt + n_tokens);
  int *out = e8q_malloc(sizeof(int) * (size_t)n_tokens, "generated ids");
  e8q_prob_id *probs = e8q_malloc(sizeof(e8q_prob_id) * (size_t)c->vocab_size, "sampling scratch");
  e8q_rng rng;
  e8q_rng_init(&rng, seed, E8Q_RNG_STREAM_SAMPLE);
  int n_out = 0;
  if (!want_ids && prompt) fputs(prompt, stdout);
  double t0 = e8q_now();
  const float *logits = NULL;
  for (int p = 0; p < n_prompt; p++) logits = e8q_model_step(m, &kv, prompt_ids[p], p);
  double t1 = e8q_now();
  int prev = prompt_ids[n_prompt - 1];
  while (n_out < n_tokens) {
    int next = e8q_sample_token(c->vocab_size, logits, temp, top_p, &rng, probs);
    if (next == c->eos_id) break;
    out[n_out++] = next;
    if (!want_ids) {
      print_piece(e8q_tokenizer_decode(tok, prev, next));
      fflush(stdout);
    }
    prev = next;
    if (n_out < n_tokens) logits = e8q_model_step(m, &kv, next, n_prompt + n_out - 1);
  }
  double t2 = e8q_now();
  if (want_ids) {
    printf("[");
    for (int i = 0; i < n_out; i++) printf(i ? ", %d" : "%d", out[i]);
    printf("]\n");
  } else {
    printf("\n");
  }
  fflush(stdout);
  fprintf(stderr, "generate: %d prompt tokens in %.3f s, %d new tokens at %.1f tokens/s%s\n", n_prompt, t1 - t0, n_out,
          t2 > t1 ? n_out / (t2 - t1) : 0.0,
          !artifact  ? ""
          : am.q.dense ? " (artifact: dense ablation weights)"
          : dense      ? " (artifact: dense decode of the quantized linears)"
                       : " (artifact: quantized linears through the fused kernels)");
  free(out);
  free(probs);
  free(prompt_ids);
  e8q_kv_free(&kv);
  if (tok) e8q_tokenizer_free(tok);
  if (artifact) e8q_artifact_model_close(&am);
  else e8q_model_free(m);
  return 0;
}
