/* common/heap.h: a binary min-heap of a small struct type, as static functions over a
 * { T *h; size_t n, cap; } heap, defined where it is used (so the comparison inlines):
 *
 *   E8Q_HEAP_DEFINE(name, T, before, first_cap, oom)
 *     typedef struct { T *h; size_t n, cap; } name;          h [cap], n in use
 *     static void name##_push(name *q, T c)                  grows to first_cap, then doubles;
 *                                                            fatal with message oom when out of memory
 *     static T name##_pop(name *q)                           the first by before(&a, &b); n > 0
 *
 * before(a, b) is nonzero when *a comes out before *b; ties keep no particular order, so a
 * deterministic order needs a total `before`. The caller frees q->h. */
#ifndef E8Q_COMMON_HEAP_H
#define E8Q_COMMON_HEAP_H

#include <stdlib.h>

#include "common/error.h"

#define E8Q_HEAP_DEFINE(name, T, before, first_cap, oom)            \
  typedef struct {                                                  \
    T *h;                                                           \
    size_t n, cap;                                                  \
  } name;                                                           \
                                                                    \
  static void name##_push(name *q, T c) {                           \
    if (q->n == q->cap) {                                           \
      q->cap = q->cap ? 2 * q->cap : (first_cap);                   \
      q->h = realloc(q->h, q->cap * sizeof(T));                     \
      E8Q_CHECK(q->h, oom);                                         \
    }                                                               \
    size_t i = q->n++;                                              \
    while (i > 0) {                                                 \
      size_t up = (i - 1) / 2;                                      \
      if (!before(&c, &q->h[up])) break;                            \
      q->h[i] = q->h[up];                                           \
      i = up;                                                       \
    }                                                               \
    q->h[i] = c;                                                    \
  }                                                                 \
                                                                    \
  static T name##_pop(name *q) {                                    \
    T top = q->h[0], last = q->h[--q->n];                           \
    size_t i = 0;                                                   \
    for (;;) {                                                      \
      size_t c = 2 * i + 1;                                         \
      if (c >= q->n) break;                                         \
      if (c + 1 < q->n && before(&q->h[c + 1], &q->h[c])) c++;      \
      if (!before(&q->h[c], &last)) break;                          \
      q->h[i] = q->h[c];                                            \
      i = c;                                                        \
    }                                                               \
    if (q->n) q->h[i] = last;                                       \
    return top;                                                     \
  }

#endif
