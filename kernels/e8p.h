/* kernels/e8p.h: encoders for the E8P12 codebook and its RVQ variants (decoders and the
 * tables live in kernels/codebook.h), tables rebuilt from their definitions, and the
 * reference implementation's packed int64 layout.
 *
 * Every encoder is an exact nearest-point search in double precision: ||x - q||^2 is
 * minimised over the whole codebook. Exact ties do occur (weights on a rational grid): the
 * fast encoder then breaks them as the reference implementation's search does, so golden codes
 * match bit for bit (kernels/e8p.c, encode_compat); the brute force takes the smallest code.
 * e8q_e8p_encode searches 2 shifts x 256 abs rows, choosing signs per row in closed form (the
 * sign of each coordinate, with the weakest coordinate flipped when the row's sign parity
 * requires it); e8q_e8p_encode_ref is the brute force over all 65,536 points.
 */
#ifndef E8Q_KERNELS_E8P_H
#define E8Q_KERNELS_E8P_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/codebook.h"
#include "kernels/e8p_encode_dev.h"

/* ---------------------------------------------------------------- tables from definitions */
/* the 256 abs rows |v| (227 enumerated + 29 norm-12 rows), in table order */
void e8q_e8p_build_abs_rows(double rows[E8Q_E8P_ROWS][8]);
/* their packed words (kernels/codebook.h layout) */
void e8q_e8p_build_packed_abs(uint32_t packed[E8Q_E8P_ROWS]);
/* the 1-bit E8 grid in half units (value = entry / 2) */
void e8q_e81b_build_grid2(int8_t grid2[E8Q_E81B_SIZE][8]);

/* ---------------------------------------------------------------- E8P12 */
/* nearest code to x [8]; writes the decoded point to xhat [8] when not NULL */
uint16_t e8q_e8p_encode(const double x[8], double xhat[8]);
/* brute force over all 65,536 points: the definition the fast encoder is held to */
uint16_t e8q_e8p_encode_ref(const double x[8], double xhat[8]);
/* n vectors: x [n, 8] -> codes [n], xhat [n, 8] (NULL to skip); OpenMP over vectors */
void e8q_e8p_encode_batch(const double *x, size_t n, uint16_t *codes, double *xhat);

/* the encoders' tables for their __host__ __device__ twins (kernels/e8p_encode_dev.h) */
void e8q_e8p_enc_tables_fill(e8q_e8p_enc_tables *t);

/* ---------------------------------------------------------------- RVQ */
/* 4 bit: c1 = E8P(x), c2 = E8P((x - E8P(c1)) * 3.45); xhat = dec(c1) + dec(c2) / 3.45 */
uint16_t e8q_rvq4_encode(const double x[8], uint16_t *c2, double xhat[8]);
/* 1-bit E8: argmax over the 256 points of 2 r.g - |g|^2, first maximum wins */
uint8_t e8q_e81b_encode(const double r[8]);
/* 3 bit: c1 = E8P(x), c2 = E81B((x - E8P(c1)) * 2.04); xhat = dec(c1) + g(c2) / 2.04 */
uint16_t e8q_rvq3_encode(const double x[8], uint8_t *c2, double xhat[8]);

/* ---------------------------------------------------------------- codebook traits
 * One row per codebook (ggml-style): everything a caller may ask about a codebook is read from
 * here, never re-derived from the bit count. Adding a codebook is adding a row. */
typedef struct {
  e8q_codebook_id id;
  const char *name;          /* "E8P12", "E8P12RVQ3B", "E8P12RVQ4B" (quantization_config.codebook) */
  int bits;                  /* nominal bits per weight (--bits) */
  int codes2_bytes;          /* bytes per codes2 entry: 0 (no second stage), 1 (u8), 2 (u16) */
  const char *codes2_dtype;  /* safetensors dtype of codes2: NULL, "U8", "U16" */
  double resid_scale;        /* second stage input = residual * resid_scale; 0 without one */
  double default_rho;        /* target RMS of the rotated weight (DESIGN §3; the reference code's defaults) */
  /* nearest code: c1 (and c2: the second stage, 0 for E8P12); xhat [8] the decoded point, may be NULL */
  void (*encode)(const double x[8], uint16_t *c1, uint16_t *c2, double xhat[8]);
  /* out [8] = decoded (c1, c2) in double (exact) */
  void (*decode_f64)(uint16_t c1, uint16_t c2, double out[8]);
} e8q_codebook_traits;

/* 1 when cb has a row */
int e8q_cb_known(e8q_codebook_id cb);
/* the row of cb (fatal on an unknown id) */
const e8q_codebook_traits *e8q_cb_traits(e8q_codebook_id cb);
/* 2, 3, 4 bits -> codebook: the row with that many bits (fatal on anything else) */
e8q_codebook_id e8q_cb_from_bits(int bits);
/* any codebook, through its row: c2 may be NULL (ignored), holds a u8 index for RVQ3 */
void e8q_cb_encode(e8q_codebook_id cb, const double x[8], uint16_t *c1, uint16_t *c2, double xhat[8]);
void e8q_cb_decode_f64(e8q_codebook_id cb, uint16_t c1, uint16_t c2, double out[8]);
/* the row's name */
const char *e8q_cb_name(e8q_codebook_id cb);
/* the row's default rho (1.03, 0.98, 1.03) */
double e8q_cb_default_rho(e8q_codebook_id cb);

/* ---------------------------------------------------------------- reference packing */
/* codes U16 [m, nc] (canonical layout) <-> reference int64 words [m, nc/4] (layout in
 * kernels/codebook.h); m % 16 == 0 and nc % 8 == 0 (fatal otherwise) */
void e8q_e8p_pack_ref(const uint16_t *codes, int64_t m, int64_t nc, uint64_t *words);
void e8q_e8p_unpack_ref(const uint64_t *words, int64_t m, int64_t nc, uint16_t *codes);

#endif
