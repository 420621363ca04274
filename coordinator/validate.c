/* coordinator/validate.c: the validate stage of `e8q quantize`.
 *
 * On what was gathered (R/config.json + R/model.safetensors, the bytes that go into the
 * artifact): every quantized linear's fused kernel (kernels/qlinear.h) against its dense
 * decode on random inputs, with the proxy loss recorded at quantization; then the perplexity
 * of the dense decoded model on the held-out text (all ranks, rank-count independent).
 * Result: R/validation.json {"validation": {...}, "evaluation": {...}}.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/fault.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/rng.h"
#include "coordinator/eval.h"
#include "coordinator/qmodel.h"
#include "coordinator/e2e.h"
#include "coordinator/validate.h"
#include "io/ckpt.h"
#include "io/text.h"
#include "shard/layout.h"

#define E8Q_VALIDATE_BATCH 4
#define E8Q_VALIDATE_TOL 1e-3 /* fused vs float64, relative to max |y| of each input */

void e8q_run_validate(e8q_run *R) {
  cJSON *out = NULL;
  /* rank 0 validates every linear; the others need the model only for the evaluation */
  const int want_model = R->rank == 0 || R->o->eval_text;
  e8q_qmodel q;
  if (want_model) e8q_qmodel_open(&q, R->o->run_dir);
  if (R->rank == 0) {
    out = cJSON_CreateObject();
    cJSON *val = cJSON_AddObjectToObject(out, "validation");
    cJSON *lin = cJSON_AddArrayToObject(val, "linears");
    double worst = 0, sum_proxy = 0;
    int n = 0;
    char path[4096], rel[64];
    for (int b = 0; b < q.cfg.n_layers; b++) {
      e8q_layout_shard_rel(rel, sizeof rel, b);
      e8q_rundir_path(R->rd, rel, path, sizeof path);
      e8q_safetensors *sh = e8q_ckpt_open(path, "shard");
      cJSON *stats = cJSON_Parse(e8q_ckpt_meta(sh, "stats") ? e8q_ckpt_meta(sh, "stats") : "{}");
      e8q_block orig;
      e8q_block_load(R->st, &R->cfg, b, &orig);
      for (int g = 0; g < E8Q_N_GROUPS; g++) {
        /* fused kernel vs dense decode (not for dense ablations: they have no codes) */
        double e = 0;
        size_t mn = (size_t)orig.lin[g].m * orig.lin[g].n;
        double *Wd = e8q_malloc(sizeof(double) * mn, "decoded weight");
        if (q.dense) {
          for (size_t i = 0; i < mn; i++) Wd[i] = q.W[b * E8Q_N_GROUPS + g][i];
        } else {
          const e8q_qlinear *ql = e8q_qmodel_linear(&q, b, g);
          /* max over random inputs of max |fused - float64| / max |float64| */
          e = e8q_qlinear_validate(ql, E8Q_VALIDATE_BATCH, R->o->seed + (uint64_t)(b * E8Q_N_GROUPS + g));
          e8q_qlinear_dequant(ql, Wd);
        }
        /* relative Frobenius error of the decoded weight against the source */
        double num = 0, den = 0;
        for (size_t i = 0; i < mn; i++) {
          double d = Wd[i] - orig.lin[g].w[i];
          num += d * d;
          den += (double)orig.lin[g].w[i] * orig.lin[g].w[i];
        }
        free(Wd);
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(stats, e8q_group_names[g]);
        const cJSON *pl = cJSON_GetObjectItemCaseSensitive(s, "proxy_loss");
        const cJSON *rt = cJSON_GetObjectItemCaseSensitive(s, "retries");
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "layer", b);
        cJSON_AddStringToObject(o, "group", e8q_group_names[g]);
        cJSON_AddNumberToObject(o, "proxy_loss", cJSON_IsNumber(pl) ? pl->valuedouble : -1);
        cJSON_AddNumberToObject(o, "retries", cJSON_IsNumber(rt) ? rt->valueint : 0);
        const cJSON *fm = cJSON_GetObjectItemCaseSensitive(s, "factorisation");
        cJSON_AddStringToObject(o, "factorisation", cJSON_IsString(fm) ? fm->valuestring : "");
        if (q.dense) cJSON_AddNullToObject(o, "fused_vs_dense_max_rel_err");
        else cJSON_AddNumberToObject(o, "fused_vs_dense_max_rel_err", e);
        cJSON_AddNumberToObject(o, "weight_rel_err", den > 0 ? sqrt(num / den) : 0);
        /* block fine-tuning: the round after this group, held-out MSE before and after */
        const cJSON *ft = cJSON_GetObjectItemCaseSensitive(s, "fine_tuning");
        if (cJSON_IsObject(ft)) cJSON_AddItemToObject(o, "fine_tuning", cJSON_Duplicate(ft, 1));
        cJSON_AddItemToArray(lin, o);
        E8Q_CHECK(e <= E8Q_VALIDATE_TOL,
                  "validation failed: layer %d %s: the fused kernel differs from the dense decode by %.3g (relative), "
                  "more than %.0e; the artifact would be wrong: report this with the run directory %s",
                  b, e8q_group_names[g], e, E8Q_VALIDATE_TOL, R->o->run_dir);
        worst = fmax(worst, e);
        sum_proxy += cJSON_IsNumber(pl) ? pl->valuedouble : 0;
        n++;
      }
      e8q_block_free(&orig);
      cJSON_Delete(stats);
      e8q_st_close(sh);
    }
    cJSON_AddNumberToObject(val, "max_fused_vs_dense_rel_err", worst);
    cJSON_AddNumberToObject(val, "mean_proxy_loss", n ? sum_proxy / n : 0);
    cJSON_AddNumberToObject(val, "tolerance", E8Q_VALIDATE_TOL);
    /* end-to-end fine-tuning: held-out CE before and after (coordinator/e2e.c) */
    cJSON *e2e = e8q_run_e2e_record(R);
    if (e2e) cJSON_AddItemToObject(val, "end_to_end_fine_tuning", e2e);
  }
  /* perplexity on the held-out text (all ranks), through the fused kernels on the mapped codes
   * (the dense decode only for the dense ablations): no rank holds a dense copy of the model */
  cJSON *ev = NULL;
  if (R->o->eval_text) {
    e8q_model *m = q.dense ? e8q_qmodel_dense(&q) : e8q_qmodel_fused(&q);
    if (!q.dense) e8q_qmodel_upload(&q, m, R->dev.cuda); /* --device cuda: the quantized linears on the GPU */
    /* a token id file needs no tokenizer (the model may have none: e8q_run_quantize checked
     * before any work that a text file has one) */
    e8q_tokenizer *tok = e8q_eval_open_tokenizer(R->o->model, &m->cfg, NULL, !e8q_ids_is_file(R->o->eval_text), NULL);
    e8q_eval_set set;
    e8q_eval_set_lines(&set, R->o->eval_text, tok, R->o->eval_lines);
    e8q_eval_result r = e8q_eval_run(m, &set, 0);
    if (R->rank == 0) { /* the record is rank 0's */
      ev = cJSON_CreateObject();
      char hex[65];
      e8q_sha256_file_hex(R->o->eval_text, hex);
      cJSON_AddStringToObject(ev, "text_sha256", hex);
      cJSON_AddNumberToObject(ev, "per_line", R->o->eval_lines);
      cJSON_AddStringToObject(ev, "weights", q.dense ? "dense ablation weights" : "quantized linears through the fused kernels");
      cJSON_AddStringToObject(ev, "device", R->dev.name); /* rank 0's: the blocks ran there */
      cJSON_AddNumberToObject(ev, "mean_nll", r.mean_nll);
      cJSON_AddNumberToObject(ev, "ppl", r.ppl);
      cJSON_AddNumberToObject(ev, "tokens", (double)r.tokens);
    }
    e8q_eval_set_free(&set);
    if (tok) e8q_tokenizer_free(tok);
    e8q_model_free(m);
  }
  if (want_model) e8q_qmodel_close(&q);
  if (R->rank == 0) {
    if (ev) cJSON_AddItemToObject(out, "evaluation", ev);
    else cJSON_AddStringToObject(out, "evaluation", "no --eval-text given");
    char *txt = cJSON_Print(out);
    cJSON_Delete(out);
    e8q_rundir_commit(R->rd, "validation.json", "validation", txt, strlen(txt));
    free(txt);
    e8q_run_step(R, "validate");
  }
}
