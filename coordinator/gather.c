/* coordinator/gather.c: the gather and pack stages of `e8q quantize` (rank 0).
 *
 * gather: R/model.safetensors (DESIGN §4) from the block shards, the Hadamard factors and the
 *         unquantized tensors copied byte for byte from a safetensors source (from a GGUF:
 *         dequantized, kept in F16 unless F32/BF16 in the file), and R/config.json (the source
 *         config, or a GGUF's derived one, plus "quantization_config"). Tensors are laid out F32 first, then U16,
 *         then U8, so every tensor's data is aligned for its type in a memory mapping.
 * pack:   OUT.e8q (io/artifact.h) from R/config.json, R/model.safetensors, the tokenizer files
 *         of the source model (a GGUF's tokenizer written out as tokenizer.json) and the manifest (fingerprint, options, seed, sizes, validation
 *         and evaluation from R/validation.json). Everything in it is deterministic: the same
 *         options and seed give the same bytes, with any number of ranks and after any resume.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/error.h"
#include "common/fault.h"
#include "common/hash.h"
#include "common/log.h"
#include "coordinator/e2e.h"
#include "coordinator/gather.h"
#include "io/artifact.h"
#include "io/atomic.h"
#include "io/ckpt.h"
#include "io/text.h"
#include "io/config.h"
#include "io/tokenizer.h"
#include "kernels/e8p.h"
#include "kernels/hadamard.h"
#include "kernels/matvec_q8.h"
#include "shard/layout.h"

/* ---------------------------------------------------------------- quantization_config */
static int distinct_factors(const e8q_plan *p, int *Ks) {
  int n = 0;
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    int k2[2] = {p->groups[g].K_n, p->groups[g].K_m};
    for (int t = 0; t < 2; t++) {
      if (k2[t] <= 1) continue;
      int seen = 0;
      for (int i = 0; i < n; i++) seen |= Ks[i] == k2[t];
      if (!seen) Ks[n++] = k2[t];
    }
  }
  return n;
}

static cJSON *quantization_config(const e8q_run *R) {
  cJSON *q = cJSON_CreateObject();
  const e8q_codebook_traits *cbt = e8q_cb_traits(e8q_cb_from_bits(R->o->bits));
  cJSON_AddStringToObject(q, "quant_method", "e8q");
  cJSON_AddStringToObject(q, "codebook", cbt->name);
  cJSON_AddNumberToObject(q, "bits", cbt->bits);
  if (cbt->codes2_bytes) cJSON_AddNumberToObject(q, "resid_scale", cbt->resid_scale);
  cJSON_AddStringToObject(q, "method", e8q_method_cli_name(R->o->method));
  if (e8q_method_dense(R->o->method)) /* noe8 / rtn: "{G}.weight" holds the quantized weight, dense */
    cJSON_AddBoolToObject(q, "dense_ablation", 1);
  cJSON *pad = cJSON_AddObjectToObject(q, "padding");
  cJSON *had = cJSON_AddObjectToObject(q, "hadamard");
  char key[32];
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    const e8q_group_plan *gp = &R->plan.groups[g];
    if (gp->n_pad != gp->n) {
      snprintf(key, sizeof key, "%d", gp->n);
      if (!cJSON_GetObjectItemCaseSensitive(pad, key)) cJSON_AddNumberToObject(pad, key, gp->n_pad);
    }
    snprintf(key, sizeof key, "%d", gp->n_pad);
    if (!cJSON_GetObjectItemCaseSensitive(had, key)) cJSON_AddNumberToObject(had, key, gp->K_n);
    snprintf(key, sizeof key, "%d", gp->m);
    if (!cJSON_GetObjectItemCaseSensitive(had, key)) cJSON_AddNumberToObject(had, key, gp->K_m);
  }
  cJSON *fused = cJSON_AddObjectToObject(q, "groups");
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    const e8q_group_plan *gp = &R->plan.groups[g];
    cJSON *a = cJSON_AddArrayToObject(fused, gp->name);
    for (int k = 0; k < gp->n_pieces; k++) {
      cJSON *pc = cJSON_CreateObject();
      cJSON_AddStringToObject(pc, "name", gp->piece_names[k]);
      cJSON_AddNumberToObject(pc, "rows", gp->piece_rows[k]);
      cJSON_AddItemToArray(a, pc);
    }
  }
  return q;
}

/* ---------------------------------------------------------------- gather */
typedef struct {
  char name[192];
  e8q_dtype dt;
  int ndim;
  int64_t shape[2];
  const void *data;     /* [numel] in dt: borrowed (a mapping) or == owned */
  void *owned;          /* converted copy (GGUF tensors), freed after writing; NULL when borrowed */
} out_tensor;

/* A GGUF tensor (io/safetensors.h: read dequantized in HF order) in the dtype the artifact keeps:
 * its own F32/F16/BF16, F16 for a block-quantized one; F32 when a value would overflow F16. */
static void *gguf_tensor_keep(const e8q_run *R, const char *name, int64_t numel, e8q_dtype *dt) {
  float *f = e8q_malloc(sizeof(float) * (size_t)numel, name);
  e8q_st_model_read_f32_range(R->st, name, 0, numel, f);
  if (*dt == E8Q_DT_F32) return f;
  uint16_t *h = e8q_malloc(sizeof(uint16_t) * (size_t)numel, name);
  e8q_f32_convert(f, *dt, h, (size_t)numel);
  int finite = 1;
  for (int64_t i = 0; i < numel && finite; i++)
    finite = (*dt == E8Q_DT_F16 ? (h[i] & 0x7c00u) != 0x7c00u : (h[i] & 0x7f80u) != 0x7f80u);
  if (finite) {
    free(f);
    return h;
  }
  e8q_warn("%s: tensor %s overflows %s: kept as F32", R->o->model, name, e8q_dtype_name(*dt));
  free(h);
  *dt = E8Q_DT_F32;
  return f;
}

/* --head q8: the head or embedding o ([V, D], F32/F16/BF16) replaced by its 8-bit form (the block
 * format of common/f16.h, rounded by kernels/matvec_q8.c), its scales written into s */
static void head_to_q8(out_tensor *o, out_tensor *s) {
  E8Q_CHECK(o->ndim == 2, "--head q8: tensor %s has %d dimensions, not 2", o->name, o->ndim);
  const int64_t V = o->shape[0], D = o->shape[1];
  float *f = e8q_malloc(sizeof(float) * (size_t)(V * D), "head in f32"); /* [V, D] */
  E8Q_CHECK(e8q_f32_from(o->data, o->dt, f, (size_t)(V * D)), "--head q8: tensor %s has dtype %s, not a float",
            o->name, e8q_dtype_name(o->dt));
  e8q_q8_matrix M;
  e8q_q8_quantize(&M, (int)V, (int)D, f, o->name); /* fatal, naming it, on a NaN/Inf or D % 32 */
  free(f);
  free(o->owned);
  o->dt = E8Q_DT_I8;
  o->data = o->owned = (void *)M.q; /* quantize allocated them: ours to free after writing */
  snprintf(s->name, sizeof s->name, "%s%s", o->name, E8Q_Q8_SCALES_SUFFIX);
  s->dt = E8Q_DT_F32;
  s->ndim = 2;
  s->shape[0] = V;
  s->shape[1] = D / E8Q_Q8_BLOCK;
  s->data = s->owned = (void *)M.scale;
}

void e8q_run_gather(e8q_run *R) {
  const e8q_plan *p = &R->plan;
  int L = p->n_layers;
  e8q_safetensors **sh = e8q_calloc((size_t)L, sizeof *sh, "shards");
  char rel[256], path[4096];
  for (int b = 0; b < L; b++) {
    e8q_layout_shard_rel(rel, sizeof rel, b);
    e8q_rundir_path(R->rd, rel, path, sizeof path);
    sh[b] = e8q_ckpt_open(path, "shard");
  }
  /* end-to-end fine-tuning's tuned SU/SV, norms, final norm and lm_head (NULL when it did not run) */
  e8q_e2e_tuned *tuned_e2e = e8q_run_e2e_tuned_open(R);
  /* the Hadamard factors, built exactly as quantization used them */
  int Ks[2 * E8Q_N_GROUPS];
  int nK = distinct_factors(p, Ks);
  e8q_had_factor fac[2 * E8Q_N_GROUPS];
  for (int i = 0; i < nK; i++) e8q_had_factor_build(&fac[i], Ks[i], E8Q_HAD_SEED);
  /* the list of tensors: quantized linears, factors, float tensors of the source */
  int cap = L * E8Q_N_GROUPS * E8Q_N_FIELDS + nK + 3 * L + 8, n = 0;
  out_tensor *t = e8q_calloc((size_t)cap, sizeof *t, "tensor list");
  for (int pass = 0; pass < 3; pass++) { /* F32, U16, U8 */
    for (int b = 0; b < L; b++)
      for (int g = 0; g < E8Q_N_GROUPS; g++)
        for (int f = 0; f < E8Q_N_FIELDS; f++) {
          char src[160];
          e8q_layout_group_name(src, sizeof src, g, (e8q_field)f);
          const e8q_st_tensor *x = e8q_st_find(sh[b], src);
          if (!x) continue;
          int want = x->dtype == E8Q_DT_F32 ? 0 : x->dtype == E8Q_DT_U16 ? 1 : 2;
          if (want != pass) continue;
          out_tensor *o = &t[n++];
          e8q_layout_group_tensor(o->name, sizeof o->name, b, g, (e8q_field)f);
          o->dt = x->dtype;
          o->ndim = x->ndim;
          o->shape[0] = x->shape[0];
          o->shape[1] = x->ndim > 1 ? x->shape[1] : 0;
          o->data = e8q_st_data(sh[b], x);
          int nd;
          int64_t shp[2];
          const float *e2e = e8q_run_e2e_tuned_find(tuned_e2e, o->name, &nd, shp);
          if (e2e) o->data = e2e; /* same dtype (F32) and shape */
        }
    if (pass == 0) {
      for (int i = 0; i < nK; i++) {
        out_tensor *o = &t[n++];
        e8q_layout_hadamard_tensor(o->name, sizeof o->name, Ks[i]);
        o->dt = E8Q_DT_F32;
        o->ndim = 2;
        o->shape[0] = o->shape[1] = Ks[i];
        o->data = fac[i].Rf;
      }
    }
  }
  /* float tensors, copied byte for byte in their source dtype (a block's norms from its shard
   * when fine-tuning tuned them) */
  for (int i = -1; i <= L; i++) {
    const char *names[3];
    char a[192], c[192];
    int k = 0;
    if (i == -1) {
      names[k++] = E8Q_LAYOUT_EMBED;
    } else if (i == L) {
      names[k++] = E8Q_LAYOUT_FINAL_NORM;
      if (!R->cfg.tied) names[k++] = E8Q_LAYOUT_LM_HEAD;
    } else {
      e8q_layout_layer_tensor(a, sizeof a, i, e8q_layout_norm_names[E8Q_NORM_ATTN]);
      e8q_layout_layer_tensor(c, sizeof c, i, e8q_layout_norm_names[E8Q_NORM_FFN]);
      names[k++] = a;
      names[k++] = c;
    }
    for (int j = 0; j < k; j++) {
      out_tensor *o = &t[n++];
      snprintf(o->name, sizeof o->name, "%s", names[j]);
      /* tuned end to end: from e2e/state.ckpt (F32) */
      const float *e2e = e8q_run_e2e_tuned_find(tuned_e2e, names[j], &o->ndim, o->shape);
      if (e2e) {
        o->dt = E8Q_DT_F32;
        o->data = e2e;
        continue;
      }
      /* a block's norms tuned by fine-tuning: from its shard (F32) */
      const e8q_st_tensor *tuned =
          i >= 0 && i < L ? e8q_st_find(sh[i], e8q_layout_norm_names[j == 0 ? E8Q_NORM_ATTN : E8Q_NORM_FFN]) : NULL;
      if (tuned) {
        o->dt = tuned->dtype;
        o->ndim = tuned->ndim;
        o->shape[0] = tuned->shape[0];
        o->shape[1] = tuned->ndim > 1 ? tuned->shape[1] : 0;
        o->data = e8q_st_data(sh[i], tuned);
        continue;
      }
      o->ndim = e8q_st_model_info(R->st, names[j], o->shape, &o->dt, NULL);
      E8Q_CHECK(o->ndim, "%s: tensor %s is missing", R->o->model, names[j]);
      const e8q_safetensors *file = NULL;
      const e8q_st_tensor *x = e8q_st_model_find(R->st, names[j], &file);
      if (x) /* safetensors: the bytes as they are */
        o->data = e8q_st_data(file, x);
      else
        o->data = o->owned = gguf_tensor_keep(R, names[j], o->shape[0] * (o->ndim > 1 ? o->shape[1] : 1), &o->dt);
    }
  }
  if (R->o->head_q8) /* the head and embeddings at 8 bits, their scales beside them */
    for (int i = 0, n0 = n; i < n0; i++)
      if (!strcmp(t[i].name, E8Q_LAYOUT_EMBED) || !strcmp(t[i].name, E8Q_LAYOUT_LM_HEAD)) head_to_q8(&t[i], &t[n++]);
  e8q_rundir_path(R->rd, "model.safetensors", path, sizeof path);
  e8q_st_writer *w = e8q_st_writer_begin(path);
  e8q_st_writer_meta(w, "format", "e8q");
  e8q_st_writer_meta(w, "e8q_version", E8Q_VERSION);
  for (int i = 0; i < n; i++) e8q_st_writer_declare(w, t[i].name, t[i].dt, t[i].ndim, t[i].shape);
  for (int i = 0; i < n; i++) {
    int64_t numel = t[i].shape[0] * (t[i].ndim > 1 ? t[i].shape[1] : 1);
    e8q_st_writer_write(w, t[i].data, (size_t)numel * e8q_dtype_size(t[i].dt));
    free(t[i].owned);
    t[i].owned = NULL;
  }
  e8q_st_writer_finish(w);
  char sha[65];
  e8q_sha256_file_hex(path, sha);
  struct stat stt;
  E8Q_CHECK_ERRNO(stat(path, &stt) == 0, "cannot stat %s", path);
  e8q_fault_point("gather.mid");
  e8q_journal_file(R->rd->journal, "model.safetensors", sha, (uint64_t)stt.st_size);
  free(t);
  for (int i = 0; i < nK; i++) e8q_had_factor_free(&fac[i]);
  for (int b = 0; b < L; b++) e8q_st_close(sh[b]);
  free(sh);
  e8q_run_e2e_tuned_close(tuned_e2e);

  /* config.json: the source's (a GGUF's is derived from its metadata, io/config.h) */
  char *src = e8q_config_json(R->o->model);
  cJSON *cfg = cJSON_Parse(src);
  free(src);
  E8Q_CHECK(cfg, "%s: its config is not valid JSON", R->o->model);
  cJSON_DeleteItemFromObjectCaseSensitive(cfg, "quantization_config");
  cJSON_AddItemToObject(cfg, "quantization_config", quantization_config(R));
  char *txt = cJSON_Print(cfg);
  cJSON_Delete(cfg);
  e8q_rundir_commit(R->rd, "config.json", "config", txt, strlen(txt));
  free(txt);
  e8q_run_step(R, "gather");
}

/* ---------------------------------------------------------------- pack */
void e8q_run_pack(e8q_run *R) {
  char path[4096];
  const e8q_plan *p = &R->plan;
  /* the temporary of a pack that was killed (pack.mid): as large as the artifact, and nothing
   * else would ever remove it */
  e8q_atomic_sweep_for(R->o->out);
  e8q_artifact_writer *w = e8q_artifact_create(R->o->out);
  e8q_rundir_path(R->rd, "config.json", path, sizeof path);
  e8q_artifact_add_file(w, "config.json", path);
  e8q_rundir_path(R->rd, "model.safetensors", path, sizeof path);
  e8q_artifact_add_file(w, "model.safetensors", path);
  /* sizes: bits per weight of the quantized linears (codes and their scales) and of the file */
  e8q_safetensors *st = e8q_st_open(path);
  double lin_bytes = 0, code_bytes = 0;
  for (int i = 0; i < st->n_tensors; i++) {
    const e8q_st_tensor *x = &st->tensors[i];
    if (e8q_layout_layer_of(x->name, NULL) < 0 || strstr(x->name, "layernorm")) continue;
    double bytes = (double)(x->end - x->begin);
    lin_bytes += bytes;
    if (strstr(x->name, ".codes")) code_bytes += bytes; /* codes and codes2 */
    if (strstr(x->name, ".weight")) code_bytes += bytes * R->o->bits / 32.0; /* dense ablation: nominal bits */
  }
  double file_bytes = (double)st->file_size;
  e8q_st_close(st);
  e8q_fault_point("pack.mid");
  static const char *const tok_files[] = {"tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                                          "special_tokens_map.json", "generation_config.json", NULL};
  if (R->st->gguf) { /* a GGUF's tokenizer lives in its metadata: stored as a tokenizer.json */
    e8q_rundir_path(R->rd, "tokenizer.json", path, sizeof path);
    e8q_tokenizer *tok = e8q_tokenizer_load(R->o->model);
    e8q_tokenizer_write_json(tok, path);
    e8q_tokenizer_free(tok);
    e8q_artifact_add_file(w, "tokenizer.json", path);
  } else {
    for (int i = 0; tok_files[i]; i++) {
      snprintf(path, sizeof path, "%s/%s", R->o->model, tok_files[i]);
      struct stat stt;
      if (stat(path, &stt) == 0) e8q_artifact_add_file(w, tok_files[i], path);
    }
  }
  cJSON *m = cJSON_CreateObject();
  cJSON_AddItemToObject(m, "fingerprint", cJSON_Duplicate(R->fingerprint, 1));
  cJSON_AddItemToObject(m, "options", cJSON_Duplicate(R->options, 1));
  cJSON_AddNumberToObject(m, "seed", (double)R->o->seed);
  cJSON *sz = cJSON_AddObjectToObject(m, "size");
  double np_lin = (double)p->n_params_linear, np_all = np_lin + (double)p->n_params_other;
  cJSON_AddNumberToObject(sz, "linear_params", np_lin);
  cJSON_AddNumberToObject(sz, "total_params", np_all);
  cJSON_AddNumberToObject(sz, "linear_codes_bpw", 8 * code_bytes / np_lin);
  cJSON_AddNumberToObject(sz, "linear_bpw", 8 * lin_bytes / np_lin);
  cJSON_AddNumberToObject(sz, "model_safetensors_bytes", file_bytes);
  cJSON_AddNumberToObject(sz, "model_bpw", 8 * file_bytes / np_all);
  e8q_rundir_path(R->rd, "validation.json", path, sizeof path);
  char *v = e8q_file_read(path, NULL, "validation record");
  cJSON *val = cJSON_Parse(v);
  free(v);
  E8Q_CHECK(val, "%s is not valid JSON (damaged?): remove it and rerun", path);
  cJSON *c = val->child;
  while (c) {
    cJSON *next = c->next;
    cJSON_AddItemToObject(m, c->string, cJSON_DetachItemViaPointer(val, c));
    c = next;
  }
  cJSON_Delete(val);
  e8q_artifact_finish(w, m);
  cJSON_Delete(m);
  e8q_fault_point("pack.done");
}
