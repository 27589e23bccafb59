// The curvature operators of one task as a team applies them to `cols` consecutive columns (vectors
// of length dim()): out = (A_t + damping I) in, with scratch_size() elements of scratch. A family
// holds the whole batch and hands out task(t). Written against team.cuh, so that the CUDA kernels
// and the CPU emulation (csrc/emulate.cpp) run the same code. apply() ends with a sync: out is ready.
// (The CPU kernels apply their own operators, csrc/operators.h, through the same interface.)
#pragma once

#include <cstdint>

#include "metaif/arith.h"

namespace metaif::team {

// A[t] dense [q, q]: out = A[t] in + damping in (in @ A^T as a row vector, as the CPU kernel).
template <typename T>
struct DenseTaskOp {
  const T* a;  // [q, q]
  int64_t q;
  T damping;

  METAIF_HD int64_t dim() const { return q; }
  METAIF_HD int64_t scratch_size() const { return 0; }

  template <typename Team>
  METAIF_HD void apply(const Team& team, const T* in, T* out, int64_t cols, T*) const {
    for (int64_t c = 0; c < cols; ++c) {
      const T* v = in + c * q;
      T* w = out + c * q;
      team.template rows<T>(
          q, q, [&](int64_t i, int64_t j) { return a[i * q + j] * v[j]; },
          [&](int64_t i, T acc) { w[i] = acc + damping * v[i]; });
    }
    team.sync();
  }
};

template <typename T>
struct DenseFamily {
  const T* a;  // [T, q, q]
  int64_t q;
  T damping;

  METAIF_HD DenseTaskOp<T> task(int64_t t) const { return {a + t * q * q, q, damping}; }
};

// Weighted softmax cross-entropy Hessian of a linear head Theta [C, d] (in and out are [C, d]):
// out = sum_j w_j (diag p_j - p_j p_j^T) V phi_j phi_j^T + damping V, through the logit-space
// scratch z [n, C].
template <typename T>
struct CeHeadTaskOp {
  const T* phi;  // [n, d]
  const T* p;    // [n, C]
  const T* w;    // [n]
  int64_t n, d, classes;
  T damping;

  METAIF_HD int64_t dim() const { return classes * d; }
  METAIF_HD int64_t scratch_size() const { return n * classes; }

  template <typename Team>
  METAIF_HD void apply(const Team& team, const T* in, T* out, int64_t cols, T* z) const {
    for (int64_t c = 0; c < cols; ++c) apply_one(team, in + c * dim(), out + c * dim(), z);
  }

  template <typename Team>
  METAIF_HD void apply_one(const Team& team, const T* in, T* out, T* z) const {
    team.template rows<T>(
        n * classes, d, [&](int64_t row, int64_t k) { return phi[(row / classes) * d + k] * in[(row % classes) * d + k]; },
        [&](int64_t row, T acc) { z[row] = acc; });
    team.sync();
    team.for_each(n, [&](int64_t j) { arith::softmax_ce_hessian_inplace(p + j * classes, w[j], z + j * classes, classes); });
    team.sync();
    // Consecutive members take consecutive k of one class: the reads of phi are coalesced.
    team.for_each(classes * d, [&](int64_t e) {
      const int64_t c = e / d, k = e % d;
      T acc = 0;
      for (int64_t j = 0; j < n; ++j) acc += z[j * classes + c] * phi[j * d + k];
      out[e] = acc + damping * in[e];
    });
    team.sync();
  }
};

template <typename T>
struct CeHeadFamily {
  const T* feats;    // [T, n, d]
  const T* probs;    // [T, n, C]
  const T* weights;  // [T, n]
  int64_t n, d, classes;
  T damping;

  METAIF_HD CeHeadTaskOp<T> task(int64_t t) const {
    return {feats + t * n * d, probs + t * n * classes, weights + t * n, n, d, classes, damping};
  }
};

}  // namespace metaif::team
