// The ce-head Hessian-vector product for one task, as plain loops: with C = 5 classes and
// n = 25 examples each product is a few thousand multiply-adds, far too small for a BLAS call
// to pay off. The task's features are first copied feature-major with the examples padded to
// whole vectors, so that the inner loops run over whole SIMD vectors along a contiguous axis,
// accumulate in registers and need no horizontal reductions (compiled for every SIMD width,
// simd.h).
#pragma once

#include <cstdint>

#include "simd.h"

namespace metaif {

// One task's data for the kernel: the features as they are ([n, d], example-major) and
// transposed with the examples padded to whole vectors ([d, n_pad], zero padding), so that the
// padded lanes contribute nothing.
template <typename T>
struct PaddedHead {
  int64_t n, d, classes, n_pad, d_pad;
  T damping;
  const T* phi;    // [n, d], the caller's
  const T* phi_t;  // [d, n_pad]
  const T* p_t;    // [C, n_pad]
  const T* w;      // [n_pad]

  static int64_t storage_size(int64_t n, int64_t d, int64_t classes) {
    const int64_t np = round_up(n);
    return d * np + classes * np + np;
  }
};

template <typename T>
PaddedHead<T> pad_head(const T* phi, const T* probs, const T* w, int64_t n, int64_t d,
                       int64_t classes, T damping, T* storage) {
  const int64_t np = round_up(n);
  T* phi_t = storage;
  T* p_t = phi_t + d * np;
  T* w_p = p_t + classes * np;
  for (int64_t k = 0; k < d; ++k) {
    T* row = phi_t + k * np;
    for (int64_t j = 0; j < n; ++j) row[j] = phi[j * d + k];
    for (int64_t j = n; j < np; ++j) row[j] = T(0);
  }
  for (int64_t c = 0; c < classes; ++c) {
    T* row = p_t + c * np;
    for (int64_t j = 0; j < n; ++j) row[j] = probs[j * classes + c];
    for (int64_t j = n; j < np; ++j) row[j] = T(0);
  }
  for (int64_t j = 0; j < np; ++j) w_p[j] = j < n ? w[j] : T(0);
  return {n, d, classes, np, round_up(d), damping, phi, phi_t, p_t, w_p};
}

// acc += sum_i a[i] * B[i * stride : +lanes] for i < count, four independent chains so that
// the multiply-add latency is hidden.
template <typename T, typename V = typename Simd<T>::type>
METAIF_ALWAYS_INLINE V broadcast_mac(const T* a, const T* b, int64_t stride, int64_t count) {
  V acc0 = V{} , acc1 = V{}, acc2 = V{}, acc3 = V{};
  int64_t i = 0;
  for (; i + 4 <= count; i += 4) {
    acc0 += a[i] * *reinterpret_cast<const V*>(b + i * stride);
    acc1 += a[i + 1] * *reinterpret_cast<const V*>(b + (i + 1) * stride);
    acc2 += a[i + 2] * *reinterpret_cast<const V*>(b + (i + 2) * stride);
    acc3 += a[i + 3] * *reinterpret_cast<const V*>(b + (i + 3) * stride);
  }
  for (; i < count; ++i) acc0 += a[i] * *reinterpret_cast<const V*>(b + i * stride);
  return (acc0 + acc1) + (acc2 + acc3);
}

// out[b] = (sum_j w_j (diag p_j - p_j p_j^T) V_b phi_j phi_j^T) + damping V_b, V_b [C, d].
// Logits Z[c, j-block] = sum_k V[c, k] phi_t[k, j-block] and output blocks
// O[c, k-block] = sum_j S[c, j] phi[j, k-block] are accumulated in registers; O is [C, d_pad].
template <typename T>
METAIF_ALWAYS_INLINE void ce_head_apply_impl(const PaddedHead<T>& h, const T* in, T* out,
                                             int64_t batch, T* scratch) {
  using V = typename Simd<T>::type;
  constexpr int64_t lanes = sizeof(V) / sizeof(T);
  const int64_t np = h.n_pad, dp = h.d_pad, d = h.d, classes = h.classes;
  T* z = scratch;            // [C, n_pad]
  T* pz = z + classes * np;  // [n_pad]
  T* o = pz + np;            // [C, d_pad]
  for (int64_t b = 0; b < batch; ++b) {
    const T* v = in + b * classes * d;
    for (int64_t c = 0; c < classes; ++c)
      for (int64_t jb = 0; jb < np; jb += lanes)
        *reinterpret_cast<V*>(z + c * np + jb) = broadcast_mac<T>(v + c * d, h.phi_t + jb, np, d);
    for (int64_t jb = 0; jb < np; jb += lanes) {
      V acc = V{};
      for (int64_t c = 0; c < classes; ++c)
        acc += *reinterpret_cast<const V*>(h.p_t + c * np + jb) * *reinterpret_cast<const V*>(z + c * np + jb);
      const V wj = *reinterpret_cast<const V*>(h.w + jb);
      for (int64_t c = 0; c < classes; ++c) {
        V* zc = reinterpret_cast<V*>(z + c * np + jb);
        *zc = wj * *reinterpret_cast<const V*>(h.p_t + c * np + jb) * (*zc - acc);
      }
    }
    const int64_t d_full = d / lanes * lanes;
    for (int64_t c = 0; c < classes; ++c) {
      const T* zc = z + c * np;
      for (int64_t kb = 0; kb < d_full; kb += lanes)
        *reinterpret_cast<V*>(o + c * dp + kb) = broadcast_mac<T>(zc, h.phi + kb, d, h.n);
      if (d_full < d && d >= lanes) {
        // The ragged end of the rows as one more whole vector that ends at the row's end; its
        // overlap with the previous block recomputes identical sums.
        *reinterpret_cast<V*>(o + c * dp + d - lanes) = broadcast_mac<T>(zc, h.phi + d - lanes, d, h.n);
      } else {
        for (int64_t k = d_full; k < d; ++k) {
          T acc = T(0);
          for (int64_t j = 0; j < h.n; ++j) acc += zc[j] * h.phi[j * d + k];
          o[c * dp + k] = acc;
        }
      }
      T* dst = out + b * classes * d + c * d;
      const T* src = v + c * d;
      const T* oc = o + c * dp;
      for (int64_t k = 0; k < d; ++k) dst[k] = oc[k] + h.damping * src[k];
    }
  }
}

METAIF_TARGET_CLONES inline void ce_head_apply(const PaddedHead<float>& h, const float* in,
                                               float* out, int64_t batch, float* scratch) {
  ce_head_apply_impl(h, in, out, batch, scratch);
}

METAIF_TARGET_CLONES inline void ce_head_apply(const PaddedHead<double>& h, const double* in,
                                               double* out, int64_t batch, double* scratch) {
  ce_head_apply_impl(h, in, out, batch, scratch);
}

}  // namespace metaif
