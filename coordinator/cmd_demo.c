/* coordinator/cmd_demo.c: `e8q demo --out DIR [--seed S]`: writes the random demo model. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/log.h"
#include "coordinator/commands.h"
#include "coordinator/options.h"
#include "coordinator/demo_model.h"

static void demo_usage(FILE *f) {
  fprintf(f,
          "usage: e8q demo --out DIR [--seed S]\n\n"
          "Writes a small DEMO model with RANDOM weights (not a trained model): a Llama-architecture\n"
          "Hugging Face checkpoint (config.json, model.safetensors, tokenizer.model; dim 128,\n"
          "intermediate 344, 4 layers, 4 heads, 2 kv heads, vocab %d, heavy-tailed weights with outlier\n"
          "channels) plus calib.txt and eval.txt of generated sentences. Same seed, same bytes.\n\n"
          "  --out DIR   directory to write (created if missing)\n"
          "  --seed S    seed (default 1)\n"
          "  --help      this text\n",
          E8Q_DEMO_VOCAB);
}

int cmd_demo(int argc, char **argv) {
  const char *out = NULL;
  unsigned long long seed = 1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (e8q_opt_help(a, demo_usage)) {
      return 0;
    } else if (!strcmp(a, "--out")) {
      out = e8q_opt_value("demo", argc, argv, &i);
    } else if (!strcmp(a, "--seed")) {
      seed = e8q_opt_u64(a, e8q_opt_value("demo", argc, argv, &i));
    } else {
      E8Q_FATAL("demo: unknown option '%s' (see e8q demo --help)", a);
    }
  }
  E8Q_CHECK(out, "demo: --out DIR is required (see e8q demo --help)");
  if (e8q_rank() != 0) return 0;
  e8q_demo_write(out, (uint64_t)seed);
  e8q_info("demo: wrote a random-weight demo model (seed %llu) to %s: config.json, model.safetensors, "
           "tokenizer.model, calib.txt, eval.txt",
           seed, out);
  return 0;
}
