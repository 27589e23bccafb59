// Per-task curvature operators shared by the HVP ops and the batched solvers. An operator
// prepares one task at a time (copying what its kernel wants into prepare_size() elements of
// thread-local storage) and the prepared task applies (A_task + damping I) to B row vectors of
// length dim(), with scratch_size(B) elements of scratch. The solvers run every iteration of
// a task on its prepared form, so its data stays in cache for the whole solve.
#pragma once

#include <vector>

#include "metaif/arith.h"
#include "blas.h"
#include "ce_head_kernel.h"
#include "tensor.h"

namespace metaif {

template <typename T>
inline void scaled_copy(const T* in, T* out, int64_t count, T scale) {
  for (int64_t i = 0; i < count; ++i) out[i] = scale * in[i];
}

// A[t] dense [q, q]: out = in @ A[t]^T + damping in.
template <typename T>
struct DenseOperator {
  const T* a;
  int64_t q;
  T damping;

  struct Task {
    const T* a;
    int64_t q;
    T damping;
    void apply(const T* in, T* out, int64_t batch, T*) const {
      scaled_copy(in, out, batch * q, damping);
      blas::gemm<T>(false, true, batch, q, q, T(1), in, q, a, q, T(1), out, q);
    }
  };

  int64_t dim() const { return q; }
  int64_t prepare_size() const { return 0; }
  int64_t scratch_size(int64_t) const { return 0; }
  Task prepare(int64_t task, T*) const { return {a + task * q * q, q, damping}; }
};

// Weighted softmax cross-entropy Hessian w.r.t. a linear head Theta [C, d] (bias folded into
// the features): H[V] = sum_j w_j (diag p_j - p_j p_j^T) V phi_j phi_j^T.
template <typename T>
struct CeHeadOperator {
  const T* feats;    // [T, n, d]
  const T* probs;    // [T, n, C]
  const T* weights;  // [T, n]
  int64_t n, d, classes;
  T damping;

  struct Task {
    PaddedHead<T> head;
    void apply(const T* in, T* out, int64_t batch, T* scratch) const {
      ce_head_apply(head, in, out, batch, scratch);
    }
  };

  int64_t dim() const { return classes * d; }
  int64_t prepare_size() const { return PaddedHead<T>::storage_size(n, d, classes); }
  int64_t scratch_size(int64_t) const {
    return (classes + 1) * round_up(n) + classes * round_up(d);
  }
  Task prepare(int64_t task, T* storage) const {
    return {pad_head(feats + task * n * d, probs + task * n * classes, weights + task * n, n, d,
                     classes, damping, storage)};
  }
};

// Gauss-Newton operator of softmax cross-entropy from per-example logit Jacobians
// jac [T, n, C, P]: G v = sum_j w_j J_j^T (diag p_j - p_j p_j^T) J_j v.
template <typename T>
struct GgnOperator {
  const T* jac;      // [T, n, C, P]
  const T* probs;    // [T, n, C]
  const T* weights;  // [T, n]
  int64_t n, classes, params;
  T damping;

  struct Task {
    const T *jac, *probs, *weights;
    int64_t n, classes, params;
    T damping;
    void apply(const T* in, T* out, int64_t batch, T* z) const {
      const int64_t rows = n * classes;
      blas::gemm<T>(false, true, batch, rows, params, T(1), in, params, jac, params, T(0), z, rows);
      for (int64_t b = 0; b < batch; ++b)
        for (int64_t e = 0; e < n; ++e)
          arith::softmax_ce_hessian_inplace(probs + e * classes, weights[e], z + b * rows + e * classes,
                                            classes);
      scaled_copy(in, out, batch * params, damping);
      blas::gemm<T>(false, false, batch, params, rows, T(1), z, rows, jac, params, T(1), out, params);
    }
  };

  int64_t dim() const { return params; }
  int64_t prepare_size() const { return 0; }
  int64_t scratch_size(int64_t batch) const { return batch * n * classes; }
  Task prepare(int64_t task, T*) const {
    return {jac + task * n * classes * params, probs + task * n * classes, weights + task * n,
            n, classes, params, damping};
  }
};

// Thread-local buffers for preparing and applying one task of an operator.
template <typename T, typename Op>
struct TaskBuffers {
  std::vector<T> storage, scratch;
  TaskBuffers(const Op& op, int64_t batch)
      : storage(static_cast<size_t>(op.prepare_size())),
        scratch(static_cast<size_t>(op.scratch_size(batch))) {}
};

// out[t] = (A_t + damping I) in[t] for every task, tasks spread over threads.
template <typename T, typename Op>
void apply_each_task(const Op& op, int64_t tasks, int64_t batch, const T* in, T* out) {
  const int64_t stride = batch * op.dim();
  torch::stable::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    TaskBuffers<T, Op> buf(op, batch);
    for (int64_t t = begin; t < end; ++t)
      op.prepare(t, buf.storage.data())
          .apply(in + t * stride, out + t * stride, batch, buf.scratch.data());
  });
}

}  // namespace metaif
