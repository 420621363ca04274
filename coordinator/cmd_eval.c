/* coordinator/cmd_eval.c: `e8q eval`: perplexity of a model on a text, per line or in windows.
 * The last line on stdout is one JSON object (mean_nll, ppl, tokens, ...). */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/comm.h"
#include "common/device.h"
#include "common/error.h"
#include "common/log.h"
#include "coordinator/commands.h"
#include "coordinator/options.h"
#include "coordinator/artifact_model.h"
#include "coordinator/eval.h"
#include "io/text.h"

static void eval_usage(FILE *f) {
  fprintf(f,
          "usage: [mpirun -np N] e8q eval --model PATH | --artifact OUT.e8q [--dense] --text FILE [--tokenizer FILE]\n"
          "                               [--per-line N | --ctx T [--windows W]] [--pipeline P] [--head H] [--device D]\n\n"
          "Perplexity of a model (Hugging Face directory, GGUF file or llama2.c .bin) on a text.\n\n"
          "  --model PATH      model directory (config.json + safetensors), .gguf file or llama2.c .bin\n"
          "  --artifact F      an .e8q archive from e8q quantize (linears through the fused kernels)\n"
          "  --dense           with --artifact: use the dense decode of the quantized linears instead\n"
          "  --text FILE       UTF-8 text, or pre-tokenized ids (.ids / .u32: little-endian uint32)\n"
          "  --tokenizer FILE  tokenizer.model, tokenizer.json, tokenizer.bin or a .gguf (default: the\n"
          "                    model's own: DIR/tokenizer.model or tokenizer.json, a GGUF's metadata,\n"
          "                    or tokenizer.bin / tok<vocab>.bin / tokenizer.model beside a .bin)\n"
          "  --per-line N      score the first N non-empty lines, each [BOS]+tokens with a fresh context\n"
          "                    (an id file is cut into sequences before each BOS id)\n"
          "  --ctx T           score non-overlapping windows of T tokens over the whole text\n"
          "                    (default when neither is given: the model's max positions, at most %d);\n"
          "                    the text is encoded once, with BOS first when the model's tokenizer adds one\n"
          "  --windows W       with --ctx: score only the first W windows\n"
          "  --pipeline P      with --artifact: ranks form groups of P; each rank of a group maps and builds\n"
          "                    only its contiguous range of layers (split by resident bytes, embeddings and\n"
          "                    head counted; e8q plan --artifact F --ranks N --pipeline P prints it), windows\n"
          "                    flow rank to rank, groups split the windows; the result is the same bits\n"
          E8Q_OPT_HEAD_HELP
          "  --device D        auto (default: CUDA when every rank has a device, else the CPU), cpu, or cuda\n"
          "                    (fatal without one): the decoder blocks run on it (an artifact's quantized\n"
          "                    linears through the CUDA fused kernels, uploaded once; dense ones through\n"
          "                    cuBLAS); embeddings and the head stay on the CPU\n"
          "  --help            this text\n\n"
          "Sequences are split across MPI ranks; the result does not depend on the rank count (nor on P).\n"
          "Rank 0 prints every rank's peak resident memory (stderr, and peak_rss_bytes in the JSON).\n"
          "The last line printed on stdout is one JSON object with mean_nll, ppl and tokens.\n",
          E8Q_DEFAULT_CTX);
}

int cmd_eval(int argc, char **argv) {
  const char *model_path = NULL, *text_path = NULL, *tok_path = NULL, *artifact = NULL;
  int dense = 0, head_q8 = 0;
  int per_line = 0, ctx = 0, windows = 0, pipeline = 0;
  e8q_device_mode device = E8Q_DEVICE_AUTO;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (e8q_opt_help(a, eval_usage)) {
      return 0;
    } else if (e8q_opt_model("eval", argc, argv, &i, &model_path, &artifact, &dense, &tok_path) ||
               e8q_opt_head("eval", argc, argv, &i, &head_q8)) {
      continue;
    } else if (!strcmp(a, "--text")) {
      text_path = e8q_opt_value("eval", argc, argv, &i);
    } else if (!strcmp(a, "--per-line")) {
      per_line = e8q_opt_int(a, e8q_opt_value("eval", argc, argv, &i), 1, 1 << 30);
    } else if (!strcmp(a, "--ctx")) {
      ctx = e8q_opt_int(a, e8q_opt_value("eval", argc, argv, &i), 1, 1 << 30);
    } else if (!strcmp(a, "--pipeline")) { /* layer-pipelined groups of P ranks (coordinator/eval.h) */
      pipeline = e8q_opt_int(a, e8q_opt_value("eval", argc, argv, &i), 1, 1 << 20);
    } else if (!strcmp(a, "--device")) {
      device = e8q_device_parse(a, e8q_opt_value("eval", argc, argv, &i));
    } else if (!strcmp(a, "--windows")) {
      windows = e8q_opt_int(a, e8q_opt_value("eval", argc, argv, &i), 1, 1 << 30);
    } else {
      E8Q_FATAL("eval: unknown option '%s' (see e8q eval --help)", a);
    }
  }
  /* ---- every option checked before the (slow, collective) verification of an artifact */
  E8Q_CHECK(!(model_path && artifact), "eval: give --model or --artifact, not both");
  E8Q_CHECK(model_path || artifact, "eval: --model PATH or --artifact OUT.e8q is required (see e8q eval --help)");
  E8Q_CHECK(!dense || artifact,
            "eval: --dense applies to --artifact only (the dense decode of an artifact's quantized linears); a --model "
            "is always evaluated dense: drop --dense");
  E8Q_CHECK(text_path, "eval: --text FILE is required (see e8q eval --help)");
  E8Q_CHECK(!(per_line && ctx), "eval: --per-line and --ctx exclude each other; give one");
  E8Q_CHECK(!(per_line && windows), "eval: --windows counts --ctx windows; with --per-line give the number of lines there");
  E8Q_CHECK(!ctx || ctx >= 2, "eval: --ctx %d: a window needs at least 2 tokens (one predicted from the other)", ctx);
  E8Q_CHECK(!pipeline || artifact,
            "eval: --pipeline splits an artifact's layers across ranks; give --artifact OUT.e8q (a --model is "
            "evaluated data parallel: drop --pipeline)");
  int size = e8q_comm_size(e8q_comm_get()), rank = e8q_rank();
  E8Q_CHECK(!pipeline || size % pipeline == 0,
            "eval: --pipeline %d: the %d ranks do not form whole groups of %d; run a multiple of %d ranks", pipeline,
            size, pipeline, pipeline);
  e8q_device dev;
  e8q_device_select(&dev, device, "eval");
  double t0 = e8q_now();
  e8q_artifact_model am = {0};
  e8q_eval_plan plan = {0};
  e8q_eval_ends ends = {0};
  if (pipeline) { /* the split, from the header (the same on every rank), then only this rank's layers */
    e8q_config pc;
    e8q_eval_bytes eb;
    e8q_artifact_eval_bytes(artifact, !dense, &pc, &eb);
    e8q_eval_plan_build(&plan, &pc, &eb, size, pipeline, ctx ? ctx : e8q_default_ctx(pc.max_seq_len));
    e8q_eval_bytes_free(&eb);
    const e8q_eval_stage *me = e8q_eval_plan_rank(&plan, rank);
    e8q_artifact_model_open_layers(&am, artifact, !dense, me->lo, me->hi);
    e8q_eval_ends_from_st(&ends, &am.q.cfg, am.q.st, me->head);
    const e8q_st_tensor *ht = e8q_st_find(am.q.st, ends.head_name);
    /* the ends read head and embedding from the mapping: rounded there, unless stored at 8 bits */
    ends.head_q8 = head_q8 && !(ht && ht->dtype == E8Q_DT_I8);
    if (rank == 0)
      for (int st = 0; st < pipeline; st++)
        e8q_info("eval: pipeline stage %d: layers %d-%d%s%s, about %.1f MiB resident", st, plan.stage[st].lo,
                 plan.stage[st].hi - 1, plan.stage[st].embed ? " + embeddings" : "",
                 plan.stage[st].head ? " + head" : "", (double)plan.stage[st].total / (1 << 20));
    model_path = am.dir;
  } else if (artifact) {
    e8q_artifact_model_open(&am, artifact, !dense);
    model_path = am.dir;
  }

  e8q_model *m = artifact ? am.m : e8q_model_load(model_path);
  if (head_q8 && !pipeline) e8q_model_head_to_q8(m); /* a pipeline's head is in its ends (above) */
  /* --device cuda: quantized linears uploaded once; every block then runs on the device (dense
   * linears through cuBLAS, worker/forward.c); embeddings and the head stay on the CPU */
  if (artifact && !am.q.dense && !dense) e8q_qmodel_upload(&am.q, m, dev.cuda);
  const e8q_config *c = &m->cfg;
  if (!per_line && !ctx) ctx = e8q_default_ctx(c->max_seq_len);
  E8Q_CHECK(!ctx || ctx <= c->max_seq_len, "eval: --ctx %d exceeds the model's max_position_embeddings %d", ctx,
            c->max_seq_len);
  int need_tok = !e8q_ids_is_file(text_path);
  char *tok_used = NULL;
  e8q_tokenizer *tok = e8q_eval_open_tokenizer(model_path, c, tok_path, need_tok, &tok_used);

  if (per_line && !need_tok) { /* --ctx bounds the ids itself; --per-line splits them unchecked */
    int *ids = NULL;
    e8q_ids_read(text_path, c->vocab_size, &ids); /* fatal naming the file, the id and its index */
    free(ids);
  }
  e8q_eval_set set;
  if (per_line)
    e8q_eval_set_lines(&set, text_path, tok, per_line);
  else
    e8q_eval_set_windows(&set, text_path, tok, c->vocab_size, ctx, windows);
  e8q_info("eval: %s on %s: %d %s, %d rank%s", artifact ? artifact : model_path, text_path, set.n, per_line ? "lines" : "windows", size,
           size > 1 ? "s" : "");
  double t1 = e8q_now();
  e8q_eval_result r = pipeline ? e8q_eval_run_pipeline(m, e8q_eval_plan_rank(&plan, rank)->lo,
                                                       e8q_eval_plan_rank(&plan, rank)->hi, &ends, pipeline, &set, 1)
                               : e8q_eval_run(m, &set, 1);
  double t2 = e8q_now();
  /* ---- every rank's peak resident memory, gathered on rank 0 */
  double rss = (double)e8q_peak_rss();
  double *all_rss = rank == 0 ? e8q_malloc(sizeof(double) * (size_t)size, "peak RSS per rank") : NULL; /* [size] */
  e8q_comm_gather(e8q_comm_get(), E8Q_MEM_HOST, &rss, sizeof rss, all_rss, 0);
  for (int q = 0; q < size && rank == 0; q++)
    e8q_info("eval: rank %d peak RSS %.1f MiB%s", q, all_rss[q] / (1 << 20),
             pipeline > 1 ? (q % pipeline == 0 ? " (first stage)" : q % pipeline == pipeline - 1 ? " (last stage)" : "")
                          : "");

  if (e8q_rank() == 0) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model", artifact ? artifact : model_path);
    if (artifact)
      cJSON_AddStringToObject(o, "linears", am.q.dense ? "dense (ablation)" : dense ? "dense decode" : "fused kernels");
    cJSON_AddStringToObject(o, "device", dev.name); /* rank 0's */
    cJSON_AddStringToObject(o, "head", head_q8 ? "q8" : "source");
    cJSON_AddStringToObject(o, "text", text_path);
    if (tok_used && !artifact) cJSON_AddStringToObject(o, "tokenizer", tok_used);
    cJSON_AddStringToObject(o, "mode", per_line ? "per-line" : "ctx");
    if (per_line)
      cJSON_AddNumberToObject(o, "lines", set.n);
    else {
      cJSON_AddNumberToObject(o, "ctx", ctx);
      cJSON_AddNumberToObject(o, "windows", set.n);
    }
    cJSON_AddNumberToObject(o, "tokens", (double)r.tokens);
    cJSON_AddNumberToObject(o, "sum_nll", r.sum_nll);
    cJSON_AddNumberToObject(o, "mean_nll", r.mean_nll);
    cJSON_AddNumberToObject(o, "ppl", r.ppl);
    cJSON_AddNumberToObject(o, "ranks", size);
    if (pipeline) {
      cJSON_AddNumberToObject(o, "pipeline", pipeline);
      cJSON_AddNumberToObject(o, "groups", size / pipeline);
    }
    cJSON_AddItemToObject(o, "peak_rss_bytes", cJSON_CreateDoubleArray(all_rss, size));
    cJSON_AddNumberToObject(o, "seconds", t2 - t0);
    cJSON_AddNumberToObject(o, "tokens_per_s", (t2 - t1) > 0 ? (double)r.tokens / (t2 - t1) : 0.0);
    char *js = cJSON_PrintUnformatted(o);
    printf("%s\n", js);
    fflush(stdout);
    free(js);
    cJSON_Delete(o);
  }
  e8q_eval_set_free(&set);
  if (tok) e8q_tokenizer_free(tok);
  free(tok_used);
  free(all_rss);
  e8q_eval_ends_free(&ends);
  e8q_eval_plan_free(&plan);
  if (artifact) e8q_artifact_model_close(&am);
  else e8q_model_free(m);
  return 0;
}
