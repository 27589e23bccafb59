// Validated, contiguous inputs of the curvature operators (the ce-head Hessian and dense
// per-task matrices): every failure names the op, the argument and what was expected.
#pragma once

#include <optional>

#include "checks.h"
#include "operators.h"
#include "metaif/task_operators.cuh"

namespace metaif {

// Validated, contiguous inputs of the ce-head operator; keeps the tensors alive.
struct CeHeadInputs {
  Tensor feats, probs, weights;
  int64_t tasks, n, d, classes;

  template <typename T>
  CeHeadOperator<T> op(double damping) const {
    return {feats.mutable_data_ptr<T>(), probs.mutable_data_ptr<T>(), weights.mutable_data_ptr<T>(), n, d, classes,
            static_cast<T>(damping)};
  }

  // The same operator as the team kernels (CUDA, emulation) take it.
  template <typename T>
  team::CeHeadFamily<T> family(double damping) const {
    return {feats.mutable_data_ptr<T>(), probs.mutable_data_ptr<T>(), weights.mutable_data_ptr<T>(), n, d, classes,
            static_cast<T>(damping)};
  }
};

// vecs: [T, B, C, d]
inline CeHeadInputs ce_head_inputs(const char* opname, const Tensor& feats,
                                   const Tensor& probs,
                                   const std::optional<Tensor>& weights,
                                   const Tensor& vecs, const char* vecs_name) {
  check_rank(opname, feats, "feats", 3, "[T, n, d]");
  check_floating(opname, feats, "feats");
  check_like(opname, feats, "feats", probs, "probs");
  check_like(opname, feats, "feats", vecs, vecs_name);
  const int64_t tasks = feats.size(0), n = feats.size(1), d = feats.size(2);
  check_rank(opname, probs, "probs", 3, "[T, n, C]");
  check_size(opname, probs, "probs", 0, tasks, "feats.shape[0] (T)");
  check_size(opname, probs, "probs", 1, n, "feats.shape[1] (n)");
  const int64_t classes = probs.size(2);
  check_rank(opname, vecs, vecs_name, 4, "[T, B, C, d]");
  check_size(opname, vecs, vecs_name, 0, tasks, "feats.shape[0] (T)");
  check_size(opname, vecs, vecs_name, 2, classes, "probs.shape[2] (C)");
  check_size(opname, vecs, vecs_name, 3, d, "feats.shape[2] (d)");
  return {contiguous(feats), contiguous(probs),
          weights_or_uniform(opname, weights, feats, {tasks, n}, "[T, n]"), tasks, n, d, classes};
}

// The softmax cross-entropy Hessian is singular (adding one constant to every class's logit changes
// nothing), so the solvers of the ce-head operator need damping > 0.
inline void check_singular_damping(const char* opname, double damping) {
  METAIF_CHECK(std::isfinite(damping) && damping > 0.0, opname, ": damping must be > 0, got ", damping,
              ": the softmax cross-entropy Hessian is singular (adding one constant to every class's logit "
              "changes nothing), so without damping there is no inverse to converge to");
}

// b: [T, B, q]
inline void check_dense_inputs(const char* opname, const Tensor& a, const Tensor& b) {
  check_rank(opname, a, "a", 3, "[T, q, q]");
  check_floating(opname, a, "a");
  check_like(opname, a, "a", b, "b");
  METAIF_CHECK(a.size(1) == a.size(2), opname, ": a must be square per task, [T, q, q], got ",
              Dims{a.sizes()});
  check_rank(opname, b, "b", 3, "[T, B, q]");
  check_size(opname, b, "b", 0, a.size(0), "a.shape[0] (T)");
  check_size(opname, b, "b", 2, a.size(1), "a.shape[1] (q)");
}

}  // namespace metaif
