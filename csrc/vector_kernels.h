// The per-iteration vector steps of the solvers (team.cuh's LoopVectors, as SIMD loops), cloned for
// AVX-512 / AVX2 / baseline like the ce-head kernel: with small operators they are a sizeable share
// of each iteration. Every reduction accumulates in double.
#pragma once

#include <cstdint>

#include "metaif/arith.h"
#include "simd.h"

namespace metaif {

template <typename T>
METAIF_ALWAYS_INLINE double dot_impl(const T* a, const T* b, int64_t count) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < count; ++i) acc += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  return acc;
}

template <typename T>
METAIF_ALWAYS_INLINE double distance_sq_impl(const T* b, const T* c, int64_t count) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < count; ++i) {
    const double d = static_cast<double>(b[i]) - static_cast<double>(c[i]);
    acc += d * d;
  }
  return acc;
}

template <typename T>
METAIF_ALWAYS_INLINE double residual_impl(const T* b, const T* product, T* r, int64_t count) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < count; ++i) {
    r[i] = b[i] - product[i];
    acc += static_cast<double>(r[i]) * static_cast<double>(r[i]);
  }
  return acc;
}

template <typename T>
METAIF_ALWAYS_INLINE arith::NeumannSums neumann_step_impl(const T* b, const T* ar, T inv_s, T* r, int64_t count) {
  double e2 = 0.0, r2 = 0.0;
#pragma omp simd reduction(+ : e2, r2)
  for (int64_t i = 0; i < count; ++i) {
    const T e = arith::neumann_increment(b[i], ar[i], inv_s);
    r[i] += e;
    e2 += static_cast<double>(e) * static_cast<double>(e);
    r2 += static_cast<double>(r[i]) * static_cast<double>(r[i]);
  }
  return {e2, r2};
}

template <typename T>
METAIF_ALWAYS_INLINE double cg_step_impl(const T* p, const T* ap, T alpha, T* x, T* r, int64_t count) {
  double rs = 0.0;
#pragma omp simd reduction(+ : rs)
  for (int64_t i = 0; i < count; ++i) {
    arith::cg_update(x[i], r[i], p[i], ap[i], alpha);
    rs += static_cast<double>(r[i]) * static_cast<double>(r[i]);
  }
  return rs;
}

template <typename T>
METAIF_ALWAYS_INLINE void cg_direction_impl(const T* r, T beta, T* p, int64_t count) {
#pragma omp simd
  for (int64_t i = 0; i < count; ++i) p[i] = arith::cg_direction(r[i], beta, p[i]);
}

#define METAIF_DEFINE_VECTOR_KERNELS(T)                                                                  \
  METAIF_TARGET_CLONES inline double dot(const T* a, const T* b, int64_t count) {                       \
    return dot_impl(a, b, count);                                                                        \
  }                                                                                                      \
  METAIF_TARGET_CLONES inline double distance_sq(const T* b, const T* c, int64_t count) {               \
    return distance_sq_impl(b, c, count);                                                                \
  }                                                                                                      \
  METAIF_TARGET_CLONES inline double residual(const T* b, const T* product, T* r, int64_t count) {      \
    return residual_impl(b, product, r, count);                                                          \
  }                                                                                                      \
  METAIF_TARGET_CLONES inline arith::NeumannSums neumann_step(const T* b, const T* ar, T inv_s, T* r,   \
                                                              int64_t count) {                           \
    return neumann_step_impl(b, ar, inv_s, r, count);                                                    \
  }                                                                                                      \
  METAIF_TARGET_CLONES inline double cg_step(const T* p, const T* ap, T alpha, T* x, T* r, int64_t count) { \
    return cg_step_impl(p, ap, alpha, x, r, count);                                                      \
  }                                                                                                      \
  METAIF_TARGET_CLONES inline void cg_direction(const T* r, T beta, T* p, int64_t count) {              \
    cg_direction_impl(r, beta, p, count);                                                                \
  }

METAIF_DEFINE_VECTOR_KERNELS(float)
METAIF_DEFINE_VECTOR_KERNELS(double)
#undef METAIF_DEFINE_VECTOR_KERNELS

}  // namespace metaif
