/* kernels/qlinear.h: a quantized linear layer and its fused forward product.
 *
 * For a linear W of shape (m out, n in), quantized as in DESIGN.md §3-4:
 *   y = fs ⊙ SV ⊙ M_m( Wscale · Ŵr · ( M_n_padᵀ (SU ⊙ pad(x)) ) )
 * where Ŵr [m, n_pad] is decoded on the fly from the codes (never materialised):
 *   Ŵr[r, 8j+t] = E8P(codes[r,j])[t] + S2(codes2[r,j])[t] / resid_scale   (no S2 at 2 bit),
 * M_k = kron(R_K, WHT_{k/K}) / sqrt(k) (index a·(k/K)+b), pad() appends n_pad - n zeros and
 * fs is the fuse scale of the row's piece (q/k/v or up/gate of a stacked group).
 *
 * One call does the whole product for a batch of inputs: e8q_qlinear_forward. It runs the
 * AVX-512 kernel (kernels/qlinear_avx512.h) when the CPU has AVX-512 F/BW/VL/DQ/VBMI and GFNI,
 * else the AVX2+FMA kernel, else the scalar _ref (cpuid at run time), with
 * OpenMP threads over output rows; batch 1 (matvec) and batches of any size (tuned for 2..64).
 * Inputs and outputs f32, accumulation f32.
 *
 * The struct borrows the codes and SU (for example memory-mapped safetensors tensors) and owns
 * what e8q_qlinear_init builds (per-row output scales, the two transforms); the AVX2 decode
 * table (512 KiB, all E8P codes) is process-wide, built once. The canonical code layout stays
 * as given: the kernels read it directly, nothing is repacked. Concurrent forwards on the same
 * layer are safe (work buffers are per call).
 */
#ifndef E8Q_KERNELS_QLINEAR_H
#define E8Q_KERNELS_QLINEAR_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/codebook.h"
#ifdef __cplusplus
extern "C" { /* kernels/hadamard.h has no C++ guards of its own (CUDA/C++ includers) */
#endif
#include "kernels/hadamard.h"
#ifdef __cplusplus
}
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* what the caller provides (codes, codes2 and SU are borrowed and must outlive the
 * e8q_qlinear; SV, piece_rows, fuse_scales and the factors are only read by e8q_qlinear_init) */
typedef struct e8q_qlinear_desc {
  int m, n, n_pad;               /* out, in, in padded to a multiple of 8 (n <= n_pad < n + 8) */
  e8q_codebook_id codebook;      /* E8Q_CB_E8P12 | E8Q_CB_E8P12RVQ3B | E8Q_CB_E8P12RVQ4B */
  const uint16_t *codes;         /* [m, n_pad/8] E8P codes, row-major */
  const void *codes2;            /* [m, n_pad/8] u16 (RVQ4) or u8 (RVQ3); NULL at 2 bit */
  float resid_scale;             /* RVQ second-stage divisor; 0 = the codebook's default */
  const float *SU;               /* [n_pad] input-side scales (signs before fine-tuning) */
  const float *SV;               /* [m] output-side scales */
  float Wscale;                  /* global weight scale */
  int n_pieces;                  /* >= 1: q,k,v = 3; up,gate = 2; unfused = 1 */
  const int *piece_rows;         /* [n_pieces] rows of each piece, summing to m; NULL if n_pieces == 1 */
  const float *fuse_scales;      /* [n_pieces] fuse scale of each piece; NULL means all 1 */
  int K_in;                      /* Hadamard factor of n_pad: n_pad = K_in * 2^p */
  const float *R_in;             /* [K_in, K_in] with R Rᵀ = K_in·I; NULL when K_in == 1 */
  int K_out;                     /* Hadamard factor of m: m = K_out * 2^q */
  const float *R_out;            /* [K_out, K_out]; NULL when K_out == 1 */
} e8q_qlinear_desc;

typedef struct e8q_qlinear { /* tag named: shard/model.h (fwd) forward-declares struct e8q_qlinear */
  e8q_qlinear_desc d;            /* validated copy of the description */
  int nc;                        /* codes per row = n_pad / 8 */
  float resid_scale;             /* resolved second-stage divisor */
  float *out_scale;              /* [m] fs(r) * SV[r], owned */
  e8q_had h_in;                  /* M_n_pad from (K_in, R_in), owned (kernels/hadamard.h) */
  e8q_had h_out;                 /* M_m from (K_out, R_out), owned */
  struct e8q_qlinear_vnni *vnni; /* repacked codes of the VNNI core (kernels/qlinear_vnni.h), owned; NULL
                                    when the CPU, codebook or E8Q_NO_VNNI rules that path out */
  int gemm_min;                  /* batches of at least this many inputs are decoded to f32 panels and
                                    multiplied by BLAS (e8q_qlinear_codes_matmul_gemm); 0 (the init
                                    default): never. Inference models set E8Q_QLINEAR_GEMM_MIN; the
                                    quantizer and fine-tuning keep 0, so their bits stay those of the
                                    fused cores */
} e8q_qlinear;
/* the batch from which decode + GEMM beats the fused cores (bench/README.md, "Prefill") */
#define E8Q_QLINEAR_GEMM_MIN 16

/* Validates the description (fatal with a message naming `name` and the bad field; a factor
 * with R Rᵀ != K·I is refused) and builds the per-row scales and the two transforms.
 * name: the tensor group for messages, e.g. "model.layers.3.mlp.down_proj". */
void e8q_qlinear_init(e8q_qlinear *q, const e8q_qlinear_desc *d, const char *name);
void e8q_qlinear_free(e8q_qlinear *q);
/* Refreshes the per-row output scales fs(piece(r)) · SV[r] after SV or the fuse scales changed
 * (fine-tuning updates them in place): out_scale as e8q_qlinear_init would build it, bit for bit.
 * SV [m]; fuse_scales [n_pieces] or NULL (all 1). Both pointers replace d.SV / d.fuse_scales and
 * are borrowed from then on (the backward, kernels/qlinear_grad.h, reads them); the piece walk
 * reads d.piece_rows, which must still be valid. SU needs no refresh: it is read at every call. */
void e8q_qlinear_set_scales(e8q_qlinear *q, const float *SV, const float *fuse_scales);

/* ---------------------------------------------------------------- the product */
/* y[b, :] = layer(x[b, :]) for b < batch. x: [batch, n], y: [batch, m], row-major, not
 * aliased. Dispatches to AVX-512 (its VNNI integer core where init prepared one), else
 * AVX2, else _ref; in the environment E8Q_NO_AVX512=1 stops at AVX2, E8Q_NO_AVX2=1 forces
 * _ref and E8Q_NO_VNNI=1 keeps the f32 AVX-512 core. */
void e8q_qlinear_forward(const e8q_qlinear *q, int batch, const float *x, float *y);
/* the same, and z [batch, m] (NULL: not kept) <- the output before the output scales, y = os ⊙ z
 * (os = fs · SV per row): what the backward needs for dSV and dfs (e8q_qlinear_backward_z) */
void e8q_qlinear_forward_keep(const e8q_qlinear *q, int batch, const float *x, float *y, float *z);
void e8q_qlinear_forward_keep_ref(const e8q_qlinear *q, int batch, const float *x, float *y, float *z);
/* the core e8q_qlinear_forward runs for q, in words (benchmarks, logs) */
const char *e8q_qlinear_path(const e8q_qlinear *q);
/* the same for a batch of that many inputs (inference batches may take decode + GEMM) */
const char *e8q_qlinear_path_batch(const e8q_qlinear *q, int batch);
/* the scalar reference of the same product (same arithmetic in plain loops, OpenMP rows) */
void e8q_qlinear_forward_ref(const e8q_qlinear *q, int batch, const float *x, float *y);
#if defined(__x86_64__) || defined(__i386__)
/* the AVX2+FMA path; callers must check e8q_cpu_has_avx2() first */
void e8q_qlinear_forward_avx2(const e8q_qlinear *q, int batch, const float *x, float *y);
#endif
int e8q_cpu_has_avx2(void); /* AVX2 and FMA present (cpuid) */
/* the SIMD level the forward and the backward (kernels/qlinear_grad.h) dispatch to, decided once
 * per process: 0 = scalar _ref, 1 = AVX2, 2 = AVX-512. E8Q_NO_AVX2=1 forces _ref (no SIMD at
 * all), E8Q_NO_AVX512=1 stops at AVX2. */
int e8q_qlinear_simd_level(void);

/* ---------------------------------------------------------------- the core (exposed for tests)
 * z[b, r] = Σ_k Ŵr[r, k] · u[b, k]: the decoded codes times already-rotated inputs, no scales.
 * u: [batch, n_pad], z: [batch, m]. */
void e8q_qlinear_codes_matmul_ref(const e8q_qlinear *q, int batch, const float *u, float *z);
/* Batches through BLAS: rows decoded exactly to f32 in panels, each multiplied by the batch with
 * a single-threaded sgemm, the panels shared out to the OpenMP threads (kernels/gemm_panels.h).
 * Used when q->gemm_min says so; the _rows form takes the panel height (tests). */
void e8q_qlinear_codes_matmul_gemm(const e8q_qlinear *q, int batch, const float *u, float *z);
void e8q_qlinear_codes_matmul_gemm_rows(const e8q_qlinear *q, int batch, const float *u, float *z, int P);
#if defined(__x86_64__) || defined(__i386__)
void e8q_qlinear_codes_matmul_avx2(const e8q_qlinear *q, int batch, const float *u, float *z);
/* W [rows, n_pad] <- Ŵr rows r0..r0+rows-1 in f32 through the int8 tables: the bits of the _ref's
 * decode, a table load per code instead of codebook arithmetic */
void e8q_qlinear_decode_rows_avx2(const e8q_qlinear *q, int r0, int rows, float *W);
#endif

/* ---------------------------------------------------------------- dense float64 decodes */
/* Ŵr decoded to float64: what [m, n_pad] */
void e8q_qlinear_decode_f64(const e8q_qlinear *q, double *what);
/* the dense equivalent weight in float64: W [m, n] with y = W x, i.e.
 * W = diag(fs ⊙ SV) · M_m · Wscale·Ŵr · M_n_padᵀ · diag(SU), first n columns. The pipeline's
 * version applies the transforms as fast Hadamard transforms (kernels/hadamard.h,
 * O(m·n_pad·(log + K)); the _ref twin multiplies the matrices written out from their
 * definition, O(m²·n_pad + m·n_pad²): tests only. */
void e8q_qlinear_dequant(const e8q_qlinear *q, double *W);
void e8q_qlinear_dequant_ref(const e8q_qlinear *q, double *W);

/* ---------------------------------------------------------------- validation (pipeline)
 * The same product in float64 without the dense matrix: exact decode, f64 transforms
 * (kernels/hadamard.h), O(m·n) per input. x: [batch, n], y: [batch, m]. */
void e8q_qlinear_forward_f64_ref(const e8q_qlinear *q, int batch, const double *x, double *y);
/* Runs e8q_qlinear_forward on `batch` standard-normal inputs drawn from (seed, stream
 * E8Q_RNG_STREAM_TEST) and returns max over inputs of max_r |y - y64| / max_r |y64|, the
 * error of the fused f32 kernel against the float64 product (recorded per linear in the
 * artifact's validation record). */
double e8q_qlinear_validate(const e8q_qlinear *q, int batch, uint64_t seed);

#ifdef __cplusplus
}
#endif
#endif
