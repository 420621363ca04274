/* bench/bench_decode.c: whole-model decode speed against the memory-bandwidth bound, on a synthetic
 * Llama-2-7B-shaped model built in memory (random weights and codes: no quantization, no files).
 *
 *   bench_decode [--quick] [--layers N] [--threads T] [--steps S] [--warmup W] [--context C] [--flush]
 *                [--only e8p|rvq3|rvq4|bf16|f32]
 *
 * Defaults: 32 layers, T = omp_get_max_threads() (OMP_NUM_THREADS when set, else every CPU; also
 * OpenBLAS's count), S = 48 timed steps after W = 4, context 0, all five cases. --quick (smoke
 * run): 2 layers, 6 steps after 1 unless given.
 *
 * Shape: dim 4096, hidden 11008, 32 heads and 32 KV heads of 128, 32 layers, vocab 32000, max
 * positions 4096. Blocks hold the artifact's fused groups (shard/model.h): qkv [12288 x 4096],
 * o [4096 x 4096], upgate [22016 x 4096], down [4096 x 11008]. One case at a time is built,
 * measured and freed (memory):
 *   e8p, rvq3, rvq4  every linear an e8q_qlinear of that codebook (bench/bench_qlayer.h: random
 *                    codes, ±1 SU/SV, e8q's Hadamard factors; q/k/v and up/gate as pieces, as the
 *                    artifact has them), distinct codes per linear so they stream from DRAM
 *                    (2-bit: 1.6 GB of codes for 32 layers, far beyond the last-level cache);
 *   bf16             dense bfloat16 linears (e8q_linear.w_bf16, e8q_matvec_bf16);
 *   f32              dense float32 linears (sgemv panels on the OpenMP threads); the 32-layer model is 26 GB, so this
 *                    case takes the layers that fit in 8 GiB (10), and says so.
 * Every case keeps the float16 head read in place (lm_head_f16, e8q_matvec_f16) and a float32
 * embedding, as an artifact model does; a case whose model does not fit in the memory available
 * (MemAvailable less 2 GiB) gets fewer layers, with a note.
 *
 * What is timed is e8q_model_step (worker/forward.h), the KV-cached step of `e8q generate`: W
 * warm-up steps, then S steps timed one by one (positions C, C+1, ...; with --context C the cache
 * holds C random positions first), greedy tokens. Printed per case: median and best step time,
 * tokens/s (1 / median), and the bound: the bytes one step must read (every linear in its stored
 * form: codes, second-stage codes, SU and the per-row output scales, or the dense weights; the
 * norms; the float16 head, read whole; one float32 embedding row; the KV cache positions the
 * step attends to) over the DRAM copy bandwidth of the same run with the same thread count
 * (STREAM copy of 2 x 1 GiB arrays, bytes read + written over time, median of 5). fraction =
 * bound time / median step time: 1 means the step streams its bytes at copy speed. A second
 * fraction ("frac rd") takes a read-only stream over 2 GiB instead, since a step mostly reads.
 * Neither stream is a hard ceiling for the step (the copy does not count its write-allocate
 * traffic; the read stream is one simple loop), so a fraction a little above 100% can occur.
 * With fewer layers the head weighs more in the bytes, but the fraction stays per byte; "tok/s32"
 * scales the median time by the 32-layer bytes over the measured ones (an estimate at the same
 * fraction).
 *
 * The last-level cache here is 504 MiB, a quarter of the 2-bit model's 1.9 GB per token: between
 * back-to-back steps (what `e8q generate` does) part of the bytes may still be cached, so a
 * fraction above 100% can also mean cache hits. --flush writes 1 GiB between steps (untimed) so
 * every step starts from cold caches: the pure DRAM figure. Random weights keep the activations finite; a step with non-finite logits is
 * reported (the quantized kernels would have left their integer core for the f32 path).
 */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "bench_qlayer.h"
#include "common/error.h"
#include "kernels/qlinear_avx512.h"
#include "kernels/qlinear_vnni.h"
#include "kernels/transformer.h"
#include "shard/layout.h"
#include "shard/model.h"
#include "worker/forward.h"

enum { CASE_E8P, CASE_RVQ3, CASE_RVQ4, CASE_BF16, CASE_F32, N_CASES };
static const char *const CASE_NAMES[N_CASES] = {"e8p", "rvq3", "rvq4", "bf16", "f32"};
static const char *const CASE_LABELS[N_CASES] = {"E8P 2-bit", "RVQ3 3-bit", "RVQ4 4-bit", "dense bf16", "dense f32"};

#define GIB ((double)(1ull << 30))
#define F32_CAP_GIB 8.0 /* the f32 case: the layers whose weights fit in this much */

/* ---------------------------------------------------------------- the shape */
static e8q_config llama2_7b(int n_layers) {
  e8q_config c;
  memset(&c, 0, sizeof c);
  snprintf(c.model_type, sizeof c.model_type, "llama");
  c.dim = 4096;
  c.hidden_dim = 11008;
  c.n_layers = n_layers;
  c.n_heads = 32;
  c.n_kv_heads = 32;
  c.head_dim = 128;
  c.vocab_size = 32000;
  c.max_seq_len = 4096;
  c.rope_theta = 10000;
  c.norm_eps = 1e-5;
  c.tied = 0;
  c.bos_id = 1;
  c.eos_id = 2;
  return c;
}

/* ---------------------------------------------------------------- parallel random fills
 * Value i of a buffer is a hash of (seed, i): the same numbers for any thread count. */
static inline uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
/* uniform in [-scale, scale) */
static void fill_f32(float *w, size_t n, uint64_t seed, float scale) {
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; i++) w[i] = scale * (float)((double)(mix64(seed ^ (i * 0xD6E8FEB86659FD93ull)) >> 40) * 0x1p-23 - 1.0);
}
/* bfloat16 bits: random sign and mantissa, magnitude in [2^-9, 2^-5) */
static void fill_bf16(uint16_t *w, size_t n, uint64_t seed) {
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; i++) {
    const uint64_t v = mix64(seed ^ (i * 0xD6E8FEB86659FD93ull));
    w[i] = (uint16_t)((v & 0x807f) | ((118 + (v >> 16) % 4) << 7));
  }
}
/* float16 bits: random sign and mantissa, magnitude in [2^-9, 2^-5) */
static void fill_f16(uint16_t *w, size_t n, uint64_t seed) {
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; i++) {
    const uint64_t v = mix64(seed ^ (i * 0xD6E8FEB86659FD93ull));
    w[i] = (uint16_t)((v & 0x83ff) | ((6 + (v >> 16) % 4) << 10));
  }
}

/* ---------------------------------------------------------------- the DRAM bound */
/* read-only streaming with the current OpenMP thread count over one array of `bytes` (an xor
 * reduction): bytes read per second, median of reps (after one untimed pass). A decode step
 * mostly reads; the copy also writes. */
static double read_bw(size_t bytes, int reps) {
  const size_t n = bytes / sizeof(uint64_t);
  uint64_t *a = e8q_alloc_aligned(n * sizeof(uint64_t), "read stream");
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; i++) a[i] = mix64(i);
  double t[16];
  uint64_t x = 0;
  if (reps > 16) reps = 16;
  for (int r = -1; r < reps; r++) {
    const double t0 = bench_now();
    uint64_t s = 0;
#pragma omp parallel for simd schedule(static) reduction(^ : s)
    for (size_t i = 0; i < n; i++) s ^= a[i];
    if (r >= 0) t[r] = bench_now() - t0;
    x ^= s;
  }
  volatile uint64_t sink = x;
  (void)sink;
  free(a);
  qsort(t, (size_t)reps, sizeof(double), bench_cmp_d);
  return (double)n * sizeof(uint64_t) / t[reps / 2];
}

/* /proc/meminfo's MemAvailable in bytes, 0 when unknown */
static double mem_available(void) {
  FILE *f = fopen("/proc/meminfo", "r");
  if (!f) return 0;
  char line[256];
  double kb = 0;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "MemAvailable: %lf kB", &kb) == 1) break;
  fclose(f);
  return kb * 1024.0;
}

/* ---------------------------------------------------------------- sizes */
/* bytes of the stored form of one linear [m, n] of case c: what a one-token product reads */
static double linear_bytes(int c, int m, int n) {
  const double np = (double)((n + 7) / 8 * 8), codes = (double)m * np / 8;
  switch (c) {
  case CASE_F32: return 4.0 * m * n;
  case CASE_BF16: return 2.0 * m * n;
  default: return codes * (c == CASE_E8P ? 2 : c == CASE_RVQ3 ? 3 : 4) + 4.0 * np + 4.0 * m; /* codes, SU, out scales */
  }
}
/* the linears and norms of one layer as read per token */
static double layer_bytes(int c, const e8q_config *cfg) {
  double b = 2.0 * 4 * cfg->dim; /* the two RMSNorm weights */
  for (int g = 0; g < E8Q_N_GROUPS; g++) {
    int m, n;
    e8q_group_shape(cfg, g, &m, &n);
    b += linear_bytes(c, m, n);
  }
  return b;
}
/* resident bytes of one layer as built here: quantized linears also keep SV, and the VNNI core
 * its own copy of the codes (kernels/qlinear_vnni.h) */
static double layer_resident(int c, const e8q_config *cfg) {
  double b = layer_bytes(c, cfg);
  if (c <= CASE_RVQ4)
    for (int g = 0; g < E8Q_N_GROUPS; g++) {
      int m, n;
      e8q_group_shape(cfg, g, &m, &n);
      b += 4.0 * m + (e8q_cpu_has_vnni() ? linear_bytes(c, m, n) : 0);
    }
  return b;
}
/* the head, the embedding and the final norm, as resident */
static double fixed_resident(const e8q_config *cfg) {
  return (double)cfg->vocab_size * cfg->dim * (2 + 4) + 4.0 * cfg->dim;
}
static double kv_resident(const e8q_config *cfg, int max_T) {
  return 2.0 * 4 * cfg->n_layers * (double)max_T * cfg->n_kv_heads * cfg->head_dim;
}
/* bytes one step at position pos reads outside the layers' weights: the head whole, one
 * embedding row, the final norm, and the keys and values of positions 0..pos of every layer */
static double step_other_bytes(const e8q_config *cfg, int pos) {
  return 2.0 * cfg->vocab_size * cfg->dim + 4.0 * cfg->dim + 4.0 * cfg->dim +
         2.0 * 4 * cfg->n_layers * (double)(pos + 1) * cfg->n_kv_heads * cfg->head_dim;
}

/* ---------------------------------------------------------------- the model */
typedef struct {
  e8q_model m;            /* cfg, embed (= lm_head), final_norm, lm_head_f16, blocks */
  uint16_t *head_f16;     /* [vocab, dim], owned (m.lm_head_f16) */
  e8q_qlinear *ql;        /* [n_layers * 4] quantized cases */
  bench_qcodes *qc;       /* [n_layers * 4] their arrays */
  const char *path;       /* the product the linears run, in words */
} bench_model;

static int g_piece_rows[E8Q_N_GROUPS][E8Q_PLAN_MAX_PIECES]; /* read by e8q_qlinear_init only */

static void model_build(bench_model *B, int c, int n_layers) {
  memset(B, 0, sizeof *B);
  e8q_model *m = &B->m;
  m->cfg = llama2_7b(n_layers);
  const e8q_config *cfg = &m->cfg;
  const size_t D = (size_t)cfg->dim, V = (size_t)cfg->vocab_size;
  m->embed = e8q_alloc_aligned(sizeof(float) * V * D, "embed_tokens");
  fill_f32(m->embed, V * D, 11, 0.02f);
  m->lm_head = m->embed; /* only batched heads read it; a step reads lm_head_f16 */
  B->head_f16 = e8q_alloc_aligned(sizeof(uint16_t) * V * D, "lm_head f16");
  fill_f16(B->head_f16, V * D, 12);
  m->lm_head_f16 = B->head_f16;
  m->final_norm = e8q_malloc(sizeof(float) * D, "model.norm");
  for (size_t i = 0; i < D; i++) m->final_norm[i] = 1.0f;
  m->blocks = e8q_calloc((size_t)n_layers, sizeof(e8q_block), "blocks");
  if (c <= CASE_RVQ4) {
    B->ql = e8q_calloc((size_t)n_layers * E8Q_N_GROUPS, sizeof(e8q_qlinear), "quantized linears");
    B->qc = e8q_calloc((size_t)n_layers * E8Q_N_GROUPS, sizeof(bench_qcodes), "quantized linears' arrays");
  }
  for (int l = 0; l < n_layers; l++) {
    e8q_block *b = &m->blocks[l];
    b->layer1 = l + 1;
    b->attn_norm = e8q_malloc(sizeof(float) * D, "attn_norm");
    b->ffn_norm = e8q_malloc(sizeof(float) * D, "ffn_norm");
    for (size_t i = 0; i < D; i++) b->attn_norm[i] = b->ffn_norm[i] = 1.0f;
    for (int g = 0; g < E8Q_N_GROUPS; g++) {
      e8q_linear *L = &b->lin[g];
      e8q_group_shape(cfg, g, &L->m, &L->n);
      const size_t mn = (size_t)L->m * L->n;
      const uint64_t seed = 1000 + (uint64_t)l * E8Q_N_GROUPS + g;
      if (c == CASE_F32) {
        L->w = e8q_alloc_aligned(sizeof(float) * mn, e8q_group_names[g]);
        fill_f32(L->w, mn, seed, 0.02f);
      } else if (c == CASE_BF16) {
        uint16_t *w = e8q_alloc_aligned(sizeof(uint16_t) * mn, e8q_group_names[g]);
        fill_bf16(w, mn, seed);
        L->w_bf16 = w;
      } else {
        const int np = (L->n + 7) / 8 * 8, K_in = e8q_had_choose_K(np), K_out = e8q_had_choose_K(L->m);
        bench_qcodes *C = &B->qc[l * E8Q_N_GROUPS + g];
        bench_qcodes_make(C, L->m, np, K_in, K_out);
        /* keep only the second stage this codebook reads */
        if (c != CASE_RVQ4) free(C->codes2), C->codes2 = NULL;
        if (c != CASE_RVQ3) free(C->codes3), C->codes3 = NULL;
        e8q_qlinear_desc d = bench_qcodes_desc(C, c - CASE_E8P, L->m, L->n, np, K_in, K_out);
        d.n_pieces = e8q_layout_pieces(cfg, g, g_piece_rows[g], NULL); /* q|k|v, up|gate, as the artifact */
        d.piece_rows = d.n_pieces > 1 ? g_piece_rows[g] : NULL;
        char name[96];
        snprintf(name, sizeof name, "bench.layers.%d.%s (%s)", l, e8q_group_names[g], BENCH_CB_NAMES[c - CASE_E8P]);
        e8q_qlinear *q = &B->ql[l * E8Q_N_GROUPS + g];
        e8q_qlinear_init(q, &d, name);
        L->q = (const struct e8q_qlinear *)q;
      }
    }
  }
  B->path = c == CASE_F32 ? "sgemv in OpenMP panels" : c == CASE_BF16 ? "e8q_matvec_bf16" : e8q_qlinear_path(&B->ql[0]);
}

static void model_free(bench_model *B) {
  e8q_model *m = &B->m;
  for (int l = 0; l < m->cfg.n_layers; l++) {
    e8q_block *b = &m->blocks[l];
    free(b->attn_norm);
    free(b->ffn_norm);
    for (int g = 0; g < E8Q_N_GROUPS; g++) {
      free(b->lin[g].w);
      free((void *)b->lin[g].w_bf16);
      if (B->ql) {
        e8q_qlinear_free(&B->ql[l * E8Q_N_GROUPS + g]);
        bench_qcodes_free(&B->qc[l * E8Q_N_GROUPS + g]);
      }
    }
  }
  free(m->blocks);
  free(B->ql);
  free(B->qc);
  free(m->embed);
  free(m->final_norm);
  free(B->head_f16);
  memset(B, 0, sizeof *B);
}

/* ---------------------------------------------------------------- one case */
typedef struct {
  int layers, threads, steps, warmup, context, quick, flush;
} bench_opts;

/* --flush: 1 GiB written between steps, evicting the last-level cache */
#define FLUSH_BYTES ((size_t)1 << 30)
static unsigned char *g_flush;
static void cache_flush(int s) {
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < FLUSH_BYTES; i += 64) memset(g_flush + i, s, 64);
}

static void run_case(int c, const bench_opts *o, double bw, double bw_read) {
  const e8q_config full = llama2_7b(32);
  const int max_T = o->context + o->warmup + o->steps;
  /* layers: asked for, capped for f32 and by the memory available */
  int layers = o->layers;
  char note[256] = "";
  const double per_layer = layer_resident(c, &full);
  if (c == CASE_F32 && layers * per_layer > F32_CAP_GIB * GIB) {
    layers = (int)(F32_CAP_GIB * GIB / per_layer);
    snprintf(note, sizeof note, "%d layers: the f32 weights of %d would take %.1f GiB (cap %.0f GiB)", layers,
             o->layers, o->layers * per_layer / GIB, F32_CAP_GIB);
  }
  const double avail = mem_available();
  if (avail > 0) {
    e8q_config probe = llama2_7b(layers);
    const double fixed = fixed_resident(&full) + 2 * GIB + (o->flush ? FLUSH_BYTES : 0), kv_layer = kv_resident(&probe, max_T) / layers;
    int fit = (int)((avail - fixed) / (per_layer + kv_layer));
    if (fit < layers) {
      if (fit < 1) {
        printf("%-10s | skipped: %.1f GiB available, one layer and the head need %.1f GiB\n", CASE_LABELS[c], avail / GIB,
               (fixed + per_layer + kv_layer) / GIB);
        return;
      }
      snprintf(note + strlen(note), sizeof note - strlen(note), "%s%d layers: %.1f GiB available", note[0] ? "; " : "",
               fit, avail / GIB);
      layers = fit;
    }
  }

  const double t_build = bench_now();
  bench_model B;
  model_build(&B, c, layers);
  e8q_kv_cache kv;
  e8q_kv_init(&kv, &B.m.cfg, max_T);
  const size_t kvd = (size_t)B.m.cfg.n_kv_heads * B.m.cfg.head_dim;
  if (o->context > 0) /* positions 0..C-1 already in the cache: random keys and values */
    for (int l = 0; l < layers; l++) {
      fill_f32(kv.k + (size_t)l * max_T * kvd, (size_t)o->context * kvd, 77 + 2 * (uint64_t)l, 1.0f);
      fill_f32(kv.v + (size_t)l * max_T * kvd, (size_t)o->context * kvd, 78 + 2 * (uint64_t)l, 1.0f);
    }
  const double build_s = bench_now() - t_build;

  double *t = e8q_malloc(sizeof(double) * (size_t)o->steps, "step times");
  double bytes = 0; /* mean over the timed steps */
  const double lb = layers * layer_bytes(c, &full);
  int tok = 1, finite = 1; /* BOS, then greedy */
  for (int s = 0; s < o->warmup + o->steps; s++) {
    const int pos = o->context + s;
    if (o->flush) cache_flush(s);
    const double t0 = bench_now();
    const float *logits = e8q_model_step(&B.m, &kv, tok, pos);
    const double dt = bench_now() - t0;
    if (s >= o->warmup) {
      t[s - o->warmup] = dt;
      bytes += (lb + step_other_bytes(&B.m.cfg, pos)) / o->steps;
    }
    for (int i = 0; i < B.m.cfg.vocab_size; i += 97) finite &= isfinite(logits[i]);
    tok = e8q_argmax(B.m.cfg.vocab_size, logits);
  }
  qsort(t, (size_t)o->steps, sizeof(double), bench_cmp_d);
  const double med = t[o->steps / 2], best = t[0], bound = bytes / bw;
  /* the 32-layer bytes at the middle timed position, for the estimate */
  const double bytes32 = 32 * layer_bytes(c, &full) + step_other_bytes(&full, o->context + o->warmup + o->steps / 2);
  printf("%-10s | %2d | %-27s | %6.3f GB | %8.2f ms | %8.2f ms %8.2f ms | %7.2f | %7.2f | %5.1f%% | %5.1f%% |%s%s\n",
         CASE_LABELS[c], layers, B.path, bytes / 1e9, bound * 1e3, med * 1e3, best * 1e3, 1 / med,
         1 / (med * bytes32 / bytes), 100 * bound / med, 100 * bytes / bw_read / med, note[0] ? " " : "", note);
  if (!finite) printf("    warning: non-finite logits: the quantized kernels fell back to their f32 path\n");
  if (o->quick) printf("    (built in %.1f s)\n", build_s);
  fflush(stdout);
  free(t);
  e8q_kv_free(&kv);
  model_free(&B);
}

/* ---------------------------------------------------------------- main */
static const char *USAGE = "usage: %s [--quick] [--layers N] [--threads T] [--steps S] [--warmup W] [--context C] "
                           "[--flush] [--only e8p|rvq3|rvq4|bf16|f32]\n";

int main(int argc, char **argv) {
  bench_opts o = {.layers = 32, .threads = omp_get_max_threads(), .steps = 48, .warmup = 4, .context = 0};
  int only = -1, layers_set = 0, steps_set = 0, warmup_set = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--quick")) o.quick = 1;
    else if (!strcmp(a, "--layers") && v) o.layers = atoi(v), layers_set = 1, i++;
    else if (!strcmp(a, "--threads") && v) o.threads = atoi(v), i++;
    else if (!strcmp(a, "--steps") && v) o.steps = atoi(v), steps_set = 1, i++;
    else if (!strcmp(a, "--warmup") && v) o.warmup = atoi(v), warmup_set = 1, i++;
    else if (!strcmp(a, "--context") && v) o.context = atoi(v), i++;
    else if (!strcmp(a, "--flush")) o.flush = 1;
    else if (!strcmp(a, "--only") && v) {
      for (int c = 0; c < N_CASES; c++)
        if (!strcmp(v, CASE_NAMES[c])) only = c;
      if (only < 0) { fprintf(stderr, USAGE, argv[0]); return 2; }
      i++;
    } else { fprintf(stderr, USAGE, argv[0]); return 2; }
  }
  if (o.quick) { /* a smoke run: 2 layers, a few steps */
    if (!layers_set) o.layers = 2;
    if (!steps_set) o.steps = 6;
    if (!warmup_set) o.warmup = 1;
  }
  if (o.layers < 1 || o.layers > 32 || o.threads < 1 || o.steps < 1 || o.warmup < 0 || o.context < 0 ||
      o.context + o.warmup + o.steps > 4096) {
    fprintf(stderr, "bench_decode: need 1 <= layers <= 32, threads >= 1, steps >= 1, warmup >= 0, context >= 0 and "
                    "context + warmup + steps <= 4096 positions\n");
    return 2;
  }
  omp_set_num_threads(o.threads);
  openblas_set_num_threads(1); /* as in the e8q commands: dense products are OpenMP panels (kernels/gemm_panels.h) */

  const double bw = bench_copy_bw_omp((size_t)1 << 30, o.quick ? 3 : 5); /* 2 x 1 GiB: far beyond the 480 MiB L3 */
  const double bw_read = read_bw((size_t)2 << 30, o.quick ? 3 : 5);
  printf("bench_decode: Llama-2-7B-shaped model (dim 4096, hidden 11008, 32 heads / 32 KV heads of 128, vocab 32000), "
         "random weights, %d layers asked\n", o.layers);
  printf("  e8q_model_step: %d threads, %d warm-up steps, then %d timed steps at positions %d..%d%s; GB = 1e9 bytes\n",
         o.threads, o.warmup, o.steps, o.context + o.warmup, o.context + o.warmup + o.steps - 1,
         o.flush ? ", caches flushed (1 GiB written) before each" : ", back to back");
  printf("  CPU: AVX2 %s, AVX-512 %s, VNNI %s; %d threads: DRAM copy (2 x 1 GiB, read + written) %.1f GB/s, "
         "DRAM read (2 GiB) %.1f GB/s\n", e8q_cpu_has_avx2() ? "yes" : "no", e8q_cpu_has_avx512() ? "yes" : "no",
         e8q_cpu_has_vnni() ? "yes" : "no", o.threads, bw / 1e9, bw_read / 1e9);
  printf("  bytes/token: all linears as stored (codes + 2nd-stage codes + SU + row scales | dense weights), norms,\n"
         "  the float16 head (32000 x 4096, read whole), one f32 embedding row, the KV positions attended;\n"
         "  bound = bytes/token / DRAM copy bandwidth; frac = bound / median step time; frac rd: the same\n"
         "  against the read-only stream (neither stream is a hard ceiling: a little over 100%% can occur)\n");
  printf("%-10s | %2s | %-27s | %9s | %11s | %11s %11s | %7s | %7s | %6s | %7s |\n", "case", "L", "linear product",
         "bytes/tok", "bound", "median", "best", "tok/s", "tok/s32", "frac", "frac rd");
  if (o.flush) g_flush = e8q_alloc_aligned(FLUSH_BYTES, "cache flush buffer");
  for (int c = 0; c < N_CASES; c++) {
    if (only >= 0 && c != only) continue;
    run_case(c, &o, bw, bw_read);
  }
  printf("  L: layers built; tok/s32: the median scaled to 32 layers' bytes (an estimate at the same fraction)\n");
  free(g_flush);
  return 0;
}
