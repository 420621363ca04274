/* tests/comm/test_comm_mpi.c: e8q_comm on host buffers under mpirun -np 1/2/4.
 *
 * Every value checked is exact (small integers in floating point, byte patterns). The ordered
 * sum is checked bit for bit against the same chunks summed on one rank without communication
 * (with two different chunk-to-rank assignments and orders), for accuracy against a long double
 * sum, and for equality across ranks. Prints "N passed, M failed" on rank 0; exits 1 on any
 * failure. */
#include <math.h>
#include <setjmp.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/comm.h"
#include "common/cuda_util.h"
#include "common/error.h"
#include "comm_check.h"
#include "testutil.h"

/* ---------------------------------------------------------------- plain collectives */
static void test_basic(e8q_comm *c) {
  const int r = e8q_comm_rank(c), p = e8q_comm_size(c);
  int wr, wp;
  MPI_Comm_rank(MPI_COMM_WORLD, &wr);
  MPI_Comm_size(MPI_COMM_WORLD, &wp);
  CHECK(r == wr && p == wp, "rank/size %d/%d vs MPI %d/%d", r, p, wr, wp);
  CHECK(!e8q_comm_has_device(c) && !e8q_comm_stream(c), "host-only communicator reports a device");
  e8q_comm_barrier(c);

  /* allreduce f32/f64/i64: buf[i] = (r+1)*(i+1) -> sum = (i+1) p (p+1)/2 exactly */
  enum { N = 1001 };
  float f[N];
  double d[N];
  int64_t q[N];
  for (int i = 0; i < N; i++) {
    f[i] = (float)((r + 1) * (i + 1));
    d[i] = (double)(r + 1) * (i + 1) * 0.5;
    q[i] = (int64_t)(r + 1) * (i + 1) * 1000000007LL;
  }
  e8q_comm_allreduce_sum(c, E8Q_MEM_HOST, E8Q_COMM_F32, f, N);
  e8q_comm_allreduce_sum(c, E8Q_MEM_HOST, E8Q_COMM_F64, d, N);
  e8q_comm_allreduce_sum(c, E8Q_MEM_HOST, E8Q_COMM_I64, q, N);
  int bad = 0;
  for (int i = 0; i < N; i++) {
    double t = (double)(i + 1) * p * (p + 1) / 2;
    bad += f[i] != (float)t || d[i] != t * 0.5 || q[i] != (int64_t)t * 1000000007LL;
  }
  CHECK(bad == 0, "allreduce: %d wrong values", bad);

  /* reduce to the last rank */
  for (int i = 0; i < N; i++) d[i] = r - i;
  e8q_comm_reduce_sum(c, E8Q_MEM_HOST, E8Q_COMM_F64, d, N, p - 1);
  if (r == p - 1) {
    bad = 0;
    for (int i = 0; i < N; i++) bad += d[i] != (double)p * (p - 1) / 2 - (double)i * p;
    CHECK(bad == 0, "reduce: %d wrong values", bad);
  }

  /* bcast bytes from the last rank */
  unsigned char b[777];
  for (int i = 0; i < 777; i++) b[i] = (unsigned char)(r == p - 1 ? (i * 31 + 7) : 0xEE);
  e8q_comm_bcast(c, E8Q_MEM_HOST, b, sizeof b, p - 1);
  bad = 0;
  for (int i = 0; i < 777; i++) bad += b[i] != (unsigned char)(i * 31 + 7);
  CHECK(bad == 0, "bcast: %d wrong bytes", bad);

  /* gatherv/allgatherv: rank k sends 3k+1 bytes of value (k, j) -> 17k + j */
  size_t *counts = malloc(sizeof(size_t) * p), total = 0;
  for (int k = 0; k < p; k++) total += counts[k] = (size_t)(3 * k + 1);
  unsigned char *send = malloc(counts[r]), *recv = malloc(total + 16);
  for (size_t j = 0; j < counts[r]; j++) send[j] = (unsigned char)(17 * r + j);
  for (int pass = 0; pass < 2; pass++) {
    memset(recv, 0xAB, total + 16);
    if (pass == 0) e8q_comm_allgatherv(c, E8Q_MEM_HOST, send, counts[r], recv, counts);
    else e8q_comm_gatherv(c, E8Q_MEM_HOST, send, counts[r], recv, r == 0 ? counts : NULL, 0);
    if (pass == 1 && r != 0) continue;
    bad = 0;
    size_t off = 0;
    for (int k = 0; k < p; k++)
      for (size_t j = 0; j < counts[k]; j++) bad += recv[off++] != (unsigned char)(17 * k + j);
    for (int g = 0; g < 16; g++) bad += recv[total + g] != 0xAB; /* guard after the data */
    CHECK(bad == 0, "%s: %d wrong bytes", pass ? "gatherv" : "allgatherv", bad);
  }
  free(counts);
  free(send);
  free(recv);

  /* send/recv around a ring (rank 0 sends first; with p == 1, to itself is skipped) */
  if (p > 1) {
    int64_t out[5], in[5];
    for (int i = 0; i < 5; i++) out[i] = 100 * r + i;
    int next = (r + 1) % p, prev = (r + p - 1) % p;
    if (r % 2 == 0) {
      e8q_comm_send(c, E8Q_MEM_HOST, out, sizeof out, next, 7);
      e8q_comm_recv(c, E8Q_MEM_HOST, in, sizeof in, prev, 7);
    } else {
      e8q_comm_recv(c, E8Q_MEM_HOST, in, sizeof in, prev, 7);
      e8q_comm_send(c, E8Q_MEM_HOST, out, sizeof out, next, 7);
    }
    bad = 0;
    for (int i = 0; i < 5; i++) bad += in[i] != 100 * prev + i;
    CHECK(bad == 0, "send/recv ring: %d wrong values", bad);
    /* nonblocking, every rank at once (blocking sends in this order could deadlock): two messages
     * each way round the ring, posted receives first on odd ranks, arriving in the order sent */
    int64_t a[2][5], b[2][5];
    e8q_comm_req *rq[2], *sq[2];
    for (int m = 0; m < 2; m++)
      for (int i = 0; i < 5; i++) a[m][i] = 1000 * m + 100 * r + i;
    for (int m = 0; m < 2; m++) {
      if (r % 2) rq[m] = e8q_comm_irecv(c, b[m], sizeof b[m], prev, 9);
      sq[m] = e8q_comm_isend(c, a[m], sizeof a[m], next, 9);
      if (!(r % 2)) rq[m] = e8q_comm_irecv(c, b[m], sizeof b[m], prev, 9);
    }
    for (int m = 0; m < 2; m++) {
      e8q_comm_wait(rq[m]);
      e8q_comm_wait(sq[m]);
    }
    e8q_comm_wait(NULL);
    bad = 0;
    for (int m = 0; m < 2; m++)
      for (int i = 0; i < 5; i++) bad += b[m][i] != 1000 * m + 100 * prev + i;
    CHECK(bad == 0, "isend/irecv ring: %d wrong values", bad);
  }
}

/* ---------------------------------------------------------------- exact conversions */
static void test_xsum_convert(void) {
  const int f = 64;
  /* exact values round-trip */
  const double ex[] = {0.0, 1.0, -1.0, 0.75, -3.5e18, 0x1.8p-12, -0x1.fffffffffffffp-12, 123456789.123456789, 0x1p61, -0x1p62 + 1024.0};
  for (size_t i = 0; i < sizeof ex / sizeof ex[0]; i++) {
    __int128 v = e8q_xsum_from_double(ex[i], f);
    CHECK(e8q_xsum_to_double(v, f) == ex[i], "round trip of %a gives %a", ex[i], e8q_xsum_to_double(v, f));
  }
  /* 2^-64 * 1.5 rounds (ties to even) to 2 units; 2^-66 rounds to 0; -2.5 units to -2 */
  CHECK(e8q_xsum_from_double(0x1.8p-64, f) == 2, "tie rounding of 1.5 units");
  CHECK(e8q_xsum_from_double(0x1p-66, f) == 0, "0.25 units rounds to 0");
  CHECK(e8q_xsum_from_double(-0x1.4p-63, f) == -2, "-2.5 units rounds to -2");
  /* large values use both halves: 2^62 + 2^10 at frac 64 is (2^126 + 2^74) units */
  __int128 big = e8q_xsum_from_double(0x1p61 + 0x1p9, f);
  CHECK(big == (((__int128)1 << 125) + ((__int128)1 << 73)), "big split wrong");
  CHECK(e8q_xsum_from_double(-(0x1p61 + 0x1p9), f) == -big, "negative big split wrong");
  /* a full 53-bit mantissa straddling the 64-bit halves, both signs: (2^52 + 1) 2^10 units */
  const __int128 odd = (((__int128)1 << 52) + 1) << 10;
  CHECK(e8q_xsum_from_double(ldexp(0x1p52 + 1, 10 - f), f) == odd, "positive straddling split wrong");
  CHECK(e8q_xsum_from_double(-ldexp(0x1p52 + 1, 10 - f), f) == -odd, "negative straddling split wrong");
  /* random values against libm's rounding (llrint: nearest, ties to even) where it applies */
  t_rng g = {12345};
  int bad = 0;
  for (int i = 0; i < 200000; i++) {
    double x = ldexp(t_rng_normal(&g), (int)(t_rng_u64(&g) % 120) - 100);
    if (i % 7 == 0) x = ldexp(floor(ldexp(x, f)) + 0.5, -f); /* exact ties at the unit (when representable) */
    double y = ldexp(x, f);
    if (fabs(y) < 0x1p62) bad += e8q_xsum_from_double(x, f) != (__int128)llrint(y);
  }
  CHECK(bad == 0, "%d random conversions differ from llrint", bad);
  /* to_double is to_double_ref bit for bit: random 128-bit values of every magnitude, both signs,
   * around the int64 limits, at several frac_bits */
  bad = 0;
  const __int128 edges[] = {0, 1, -1, INT64_MAX, INT64_MIN, (__int128)INT64_MAX + 1, (__int128)INT64_MIN - 1,
                            ((__int128)1 << 126) - 1, -((__int128)1 << 126)};
  for (int fb = 0; fb <= 120; fb += 8) {
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++) {
      double a = e8q_xsum_to_double(edges[i], fb), b = e8q_xsum_to_double_ref(edges[i], fb);
      bad += memcmp(&a, &b, sizeof a) != 0;
    }
    for (int i = 0; i < 20000; i++) {
      __int128 v = (__int128)t_rng_u64(&g) << 64 | t_rng_u64(&g);
      v >>= (int)(t_rng_u64(&g) % 127); /* arithmetic: every magnitude, both signs */
      double a = e8q_xsum_to_double(v, fb), b = e8q_xsum_to_double_ref(v, fb);
      bad += memcmp(&a, &b, sizeof a) != 0;
    }
  }
  CHECK(bad == 0, "%d conversions to double differ from the ldexp reference", bad);
  /* 1000 additions of 1e-17 onto 1 are not lost (a double sum would lose them all) */
  e8q_xsum s;
  e8q_xsum_init(&s, 1, f);
  double one = 1.0, tiny = 1e-17, out;
  e8q_xsum_add(&s, &one);
  for (int i = 0; i < 1000; i++) e8q_xsum_add(&s, &tiny);
  double minus = -1.0;
  e8q_xsum_add(&s, &minus);
  e8q_xsum_get(&s, &out);
  /* each 1e-17 is rounded once, by at most half a unit (2^-65) */
  CHECK(fabs(out - 1e-14) <= 1000 * 0x1p-65, "cancellation: 1 + 1000*1e-17 - 1 = %.17g", out);
  e8q_xsum_free(&s);
}

/* ---------------------------------------------------------------- ordered sum */
/* chunk k of the data set: n doubles over a wide dynamic range, from (seed, k) only */
static void make_chunk(uint64_t seed, int k, double *x, size_t n) {
  t_rng g = {seed * 0x9E3779B97F4A7C15ULL + (uint64_t)k * 0xD1B54A32D192ED03ULL + 1};
  for (size_t i = 0; i < n; i++) {
    double e = (double)(t_rng_u64(&g) % 40) - 20.0;
    x[i] = ldexp(t_rng_normal(&g), (int)e);
  }
}

static void test_ordered_sum(e8q_comm *c, uint64_t seed) {
  const int r = e8q_comm_rank(c), p = e8q_comm_size(c);
  enum { K = 37, N = 4099 };
  double *x = malloc(sizeof(double) * N), *dist = malloc(sizeof(double) * N),
         *dist2 = malloc(sizeof(double) * N), *local = malloc(sizeof(double) * N);
  e8q_xsum s;
  e8q_xsum_init(&s, N, E8Q_XSUM_FRAC_DEFAULT);

  /* distributed: round robin chunk ownership */
  for (int k = r; k < K; k += p) {
    make_chunk(seed, k, x, N);
    e8q_xsum_add(&s, x);
  }
  e8q_comm_allreduce_sum_ordered(c, &s, dist);

  /* distributed again: contiguous blocks, taken in reverse order */
  e8q_xsum_zero(&s);
  int lo = K * r / p, hi = K * (r + 1) / p;
  for (int k = hi - 1; k >= lo; k--) {
    make_chunk(seed, k, x, N);
    e8q_xsum_add(&s, x);
  }
  e8q_comm_allreduce_sum_ordered(c, &s, dist2);

  /* one rank's view: all chunks, in order, no communication */
  e8q_xsum_zero(&s);
  for (int k = 0; k < K; k++) {
    make_chunk(seed, k, x, N);
    e8q_xsum_add(&s, x);
  }
  e8q_xsum_get(&s, local);

  /* long double sum in order, for an accuracy check */
  long double *ld = calloc(N, sizeof(long double));
  for (int k = 0; k < K; k++) {
    make_chunk(seed, k, x, N);
    for (int i = 0; i < N; i++) ld[i] += x[i];
  }
  int diff1 = memcmp(dist, local, sizeof(double) * N) != 0;
  int diff2 = memcmp(dist2, local, sizeof(double) * N) != 0;
  CHECK(!diff1, "ordered sum (round robin over %d ranks) is not bit-identical to one rank", p);
  CHECK(!diff2, "ordered sum (reverse blocks over %d ranks) is not bit-identical to one rank", p);
  double worst = 0;
  for (int i = 0; i < N; i++) {
    double scale = fabsl(ld[i]) > 1e-300 ? (double)fabsl(ld[i]) : 1e-300;
    double e = fabs((double)(local[i] - ld[i])) / scale;
    if (e > worst) worst = e;
  }
  /* long double has 64-bit mantissa; 37 terms with cancellation: relative error vs long double
   * is dominated by the long double sum itself, far below 1e-6 unless conversion is broken */
  CHECK(worst < 1e-6, "ordered sum differs from the long double sum by %.3g relative", worst);
  /* every rank holds the same bits */
  uint64_t h = 1469598103934665603ULL;
  const unsigned char *bytes = (const unsigned char *)dist;
  for (size_t i = 0; i < sizeof(double) * N; i++) h = (h ^ bytes[i]) * 1099511628211ULL;
  uint64_t hmin = h, hmax = h;
  MPI_Allreduce(MPI_IN_PLACE, &hmin, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, &hmax, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
  CHECK(hmin == hmax, "ranks hold different ordered sums");
  if (r == 0) printf("ordered sum of %d chunks x %d values on %d ranks: FNV-1a %016llx\n", K, N, p,
                     (unsigned long long)h);
  free(ld);
  e8q_xsum_free(&s);
  free(x);
  free(dist);
  free(dist2);
  free(local);
}

/* ---------------------------------------------------------------- max, any, fixed-size gathers */
static void test_max_any_gather(e8q_comm *c) {
  const int r = e8q_comm_rank(c), p = e8q_comm_size(c);
  /* allreduce_max: value (i, rank) = ((r + 3i) mod p) * 10 - i, negative and positive; max is
   * reached on exactly one rank per i: (p - 1) * 10 - i */
  enum { N = 515 };
  int32_t a32[N];
  int64_t a64[N];
  float f[N];
  double d[N];
  for (int i = 0; i < N; i++) {
    int v = ((r + 3 * i) % p) * 10 - i;
    a32[i] = v;
    a64[i] = (int64_t)v * 4000000000LL; /* beyond 32 bits */
    f[i] = (float)v * 0.25f;
    d[i] = -(double)v; /* max of the negatives: the minimum of v, 0 * 10 - i */
  }
  e8q_comm_allreduce_max(c, E8Q_MEM_HOST, E8Q_COMM_I32, a32, N);
  e8q_comm_allreduce_max(c, E8Q_MEM_HOST, E8Q_COMM_I64, a64, N);
  e8q_comm_allreduce_max(c, E8Q_MEM_HOST, E8Q_COMM_F32, f, N);
  e8q_comm_allreduce_max(c, E8Q_MEM_HOST, E8Q_COMM_F64, d, N);
  int bad = 0;
  for (int i = 0; i < N; i++) {
    int mx = (p - 1) * 10 - i, mn = -i;
    bad += a32[i] != mx || a64[i] != (int64_t)mx * 4000000000LL || f[i] != (float)mx * 0.25f || d[i] != -(double)mn;
  }
  CHECK(bad == 0, "allreduce_max: %d wrong values", bad);

  /* I32 sums too (the new element type) */
  int32_t s32[3] = {r, 1, -2 * r};
  e8q_comm_allreduce_sum(c, E8Q_MEM_HOST, E8Q_COMM_I32, s32, 3);
  CHECK(s32[0] == p * (p - 1) / 2 && s32[1] == p && s32[2] == -p * (p - 1), "I32 allreduce_sum: %d %d %d", s32[0],
        s32[1], s32[2]);

  /* any: nobody, only the last rank, everybody */
  CHECK(e8q_comm_any(c, 0) == 0, "any(0 everywhere) is not 0");
  CHECK(e8q_comm_any(c, r == p - 1 ? 7 : 0) == 1, "any(flag on the last rank only) is not 1");
  CHECK(e8q_comm_any(c, -1) == 1, "any(-1 everywhere) is not 1");

  /* gather / allgather of 12-byte items (rank k's item: bytes 7k + j); to the last rank; guards */
  enum { ITEM = 12, GUARD = 8 };
  unsigned char item[ITEM], *all = malloc((size_t)p * ITEM + GUARD);
  for (int j = 0; j < ITEM; j++) item[j] = (unsigned char)(7 * r + j);
  for (int pass = 0; pass < 2; pass++) {
    const int root = p - 1;
    memset(all, 0xCD, (size_t)p * ITEM + GUARD);
    if (pass == 0) e8q_comm_allgather(c, E8Q_MEM_HOST, item, ITEM, all);
    else e8q_comm_gather(c, E8Q_MEM_HOST, item, ITEM, r == root ? all : NULL, root);
    if (pass == 1 && r != root) continue;
    bad = 0;
    for (int k = 0; k < p; k++)
      for (int j = 0; j < ITEM; j++) bad += all[k * ITEM + j] != (unsigned char)(7 * k + j);
    for (int g = 0; g < GUARD; g++) bad += all[p * ITEM + g] != 0xCD;
    CHECK(bad == 0, "%s of fixed-size items: %d wrong bytes", pass ? "gather" : "allgather", bad);
  }
  /* a typed gather as the pipeline uses it (one double per rank, to rank 0) */
  double mine = 1.5 * r + 0.25, *got = r == 0 ? malloc(sizeof(double) * p) : NULL;
  e8q_comm_gather(c, E8Q_MEM_HOST, &mine, sizeof mine, got, 0);
  if (r == 0) {
    bad = 0;
    for (int k = 0; k < p; k++) bad += got[k] != 1.5 * k + 0.25;
    CHECK(bad == 0, "gather of doubles: %d wrong", bad);
  }
  free(got);
  free(all);
}

/* ---------------------------------------------------------------- errors */
/* runs stmt with a fatal-error trap; checks that it fails with a message containing need */
#define EXPECT_FATAL(stmt, need)                                                       \
  do {                                                                                 \
    e8q_error_trap trap_;                                                              \
    if (setjmp(trap_.env) == 0) {                                                      \
      e8q_error_trap_arm(&trap_);                                                      \
      stmt;                                                                            \
      e8q_error_trap_arm(NULL);                                                        \
      CHECK(0, "expected a fatal error from %s", #stmt);                               \
    } else {                                                                           \
      CHECK(strstr(trap_.message, need) != NULL, "message \"%s\" lacks \"%s\"", trap_.message, need); \
    }                                                                                  \
  } while (0)

static void test_errors(e8q_comm *c) {
  const int r = e8q_comm_rank(c), p = e8q_comm_size(c);
  float f[4] = {0};
  /* device buffers on a host-only communicator: refused before any communication */
  EXPECT_FATAL(e8q_comm_allreduce_sum(c, E8Q_MEM_DEVICE, E8Q_COMM_F32, f, 4), "e8q_comm_allreduce_sum: device buffer");
  EXPECT_FATAL(e8q_comm_bcast(c, E8Q_MEM_HOST, f, 4, p), "e8q_comm_bcast: root");
  EXPECT_FATAL(e8q_comm_gather(c, E8Q_MEM_HOST, f, 4, f, -1), "e8q_comm_gather: root");
  EXPECT_FATAL(e8q_comm_allreduce_max(c, E8Q_MEM_DEVICE, E8Q_COMM_I32, f, 1), "e8q_comm_allreduce_max: device buffer");
  EXPECT_FATAL(e8q_comm_allgather(c, E8Q_MEM_DEVICE, f, 4, f), "e8q_comm_allgather: device buffer");
  /* a GPU communicator without a usable GPU: every rank fails the same way, before NCCL */
  if (!e8q_cuda_device_count()) EXPECT_FATAL(e8q_comm_world(0), "CUDA device 0 requested");
  /* ranks that disagree on the exact accumulator's shape (collective: all ranks detect it) */
  if (p > 1) {
    e8q_xsum s;
    e8q_xsum_init(&s, r == 0 ? 5 : 6, E8Q_XSUM_FRAC_DEFAULT);
    EXPECT_FATAL(e8q_comm_allreduce_sum_ordered(c, &s, NULL), "ranks disagree on the accumulator");
    e8q_xsum_free(&s);
  }
  /* overflow of the exact accumulator names the remedy */
  e8q_xsum s1;
  e8q_xsum_init(&s1, 1, E8Q_XSUM_FRAC_DEFAULT);
  double big = 0x1p61;
  for (int i = 0; i < 3; i++) e8q_xsum_add(&s1, &big); /* 3 * 2^125 units < 2^127 */
  EXPECT_FATAL(e8q_xsum_add(&s1, &big), "lower frac_bits");
  double inf = INFINITY;
  EXPECT_FATAL(e8q_xsum_add(&s1, &inf), "non-finite");
  e8q_xsum_free(&s1);
}

/* ---------------------------------------------------------------- the process communicator */
static void test_global(void) {
  CHECK(e8q_comm_get_opt() == NULL, "a process communicator is open before e8q_comm_global_open");
  EXPECT_FATAL(e8q_comm_get(), "not open");
  e8q_comm_global_open(-1);
  e8q_comm *g = e8q_comm_get();
  CHECK(g && e8q_comm_get_opt() == g && e8q_comm_get() == g, "e8q_comm_get does not return the open communicator");
  int wr, wp;
  MPI_Comm_rank(MPI_COMM_WORLD, &wr);
  MPI_Comm_size(MPI_COMM_WORLD, &wp);
  CHECK(e8q_comm_rank(g) == wr && e8q_comm_size(g) == wp, "process communicator rank/size %d/%d vs MPI %d/%d",
        e8q_comm_rank(g), e8q_comm_size(g), wr, wp);
  int64_t one = 1;
  e8q_comm_allreduce_sum(g, E8Q_MEM_HOST, E8Q_COMM_I64, &one, 1);
  CHECK(one == wp, "allreduce over the process communicator: %lld", (long long)one);
  EXPECT_FATAL(e8q_comm_global_open(-1), "already open");
  e8q_comm_global_close();
  CHECK(e8q_comm_get_opt() == NULL, "the process communicator is still open after close");
  e8q_comm_global_close(); /* closing twice is a no-op */
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  e8q_comm *c = e8q_comm_world(-1);
  uint64_t seed = 0;
  if (g_rank == 0) {
    const char *env = getenv("E8Q_TEST_SEED");
    seed = env ? strtoull(env, NULL, 0) : ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid();
    printf("test_comm_mpi: seed %llu (E8Q_TEST_SEED to repeat)\n", (unsigned long long)seed);
  }
  e8q_comm_bcast(c, E8Q_MEM_HOST, &seed, sizeof seed, 0);

  test_basic(c);
  test_max_any_gather(c);
  test_global();
  test_xsum_convert();
  test_ordered_sum(c, seed);
  test_ordered_sum(c, 12345); /* fixed seed: the printed hash is comparable across rank counts */
  test_errors(c);

  int rc = check_report("test_comm_mpi");
  e8q_comm_free(c);
  MPI_Finalize();
  return rc;
}
