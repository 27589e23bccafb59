// Batched iterative solvers of (A_t + damping I) x = b_t over tasks t, each with B right-hand
// sides. One task is solved start to finish before the next (its operator stays in cache),
// tasks are spread over threads, and every reduction accumulates in double.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "checks.h"
#include "operators.h"
#include "vector_kernels.h"

namespace metaif {

// Scaled Neumann series x = (1/s) sum_{j<=J} (I - A/s)^j b, as the recursion
// r_0 = b, r_j = b + r_{j-1} - A r_{j-1} / s. Its increments e_j = r_j - r_{j-1} = (I - A/s)^j b
// shrink monotonically for a symmetric A with spectrum in (0, 2s); growth beyond a noise floor
// therefore proves divergence and is reported instead of returning a wrong answer.
template <typename T, typename Op>
void neumann_solve(const char* opname, const Op& op, int64_t tasks, int64_t batch, const T* b,
                   const double* scale, int64_t iters, T* x) {
  const int64_t q = op.dim(), stride = batch * q;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> r(stride), ar(stride);
    std::vector<double> b_norm(batch), prev(batch);
    TaskBuffers<T, Op> buf(op, batch);
    for (int64_t t = begin; t < end; ++t) {
      const auto task = op.prepare(t, buf.storage.data());
      const T* bt = b + t * stride;
      const T inv_s = static_cast<T>(1.0 / scale[t]);
      std::copy(bt, bt + stride, r.begin());
      for (int64_t c = 0; c < batch; ++c) {
        b_norm[c] = std::sqrt(dot(bt + c * q, bt + c * q, q));
        TORCH_CHECK(std::isfinite(b_norm[c]), opname, ": b has non-finite values in task ", t,
                    ", column ", c);
        prev[c] = b_norm[c];
      }
      for (int64_t j = 1; j <= iters; ++j) {
        task.apply(r.data(), ar.data(), batch, buf.scratch.data());
        for (int64_t c = 0; c < batch; ++c) {
          const double e_norm =
              std::sqrt(neumann_step(bt + c * q, ar.data() + c * q, inv_s, r.data() + c * q, q));
          TORCH_CHECK(std::isfinite(e_norm), opname, ": the Neumann series produced non-finite "
                      "values at iteration ", j, " in task ", t, ", column ", c,
                      "; check the operator for NaN/Inf or raise the scale (", scale[t], ")");
          TORCH_CHECK(!(e_norm > 1.001 * prev[c] && e_norm > 1e-3 * b_norm[c]), opname,
                      ": the Neumann series diverges in task ", t, ", column ", c,
                      " (its terms grew from ", prev[c], " to ", e_norm, " at iteration ", j,
                      "); every eigenvalue of A + damping*I must lie in (0, 2*scale): raise "
                      "scale (", scale[t], ") or damping so the operator is positive definite");
          prev[c] = e_norm;
        }
      }
      T* xt = x + t * stride;
      for (int64_t i = 0; i < stride; ++i) xt[i] = r[i] * inv_s;
    }
  });
}

// Conjugate gradient from x_0 = 0 with per-column convergence ||r|| <= rtol ||b||.
// iters[t, c] counts the iterations column c took; resid[t, c] = ||r|| / ||b|| at exit.
template <typename T, typename Op>
void cg_solve(const char* opname, const Op& op, int64_t tasks, int64_t batch, const T* b,
              double rtol, int64_t maxiter, T* x, int64_t* iters, T* resid) {
  const int64_t q = op.dim(), stride = batch * q;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> r(stride), p(stride), ap(stride);
    std::vector<double> rs(batch), b_norm(batch);
    std::vector<char> active(batch);
    TaskBuffers<T, Op> buf(op, batch);
    for (int64_t t = begin; t < end; ++t) {
      const auto task = op.prepare(t, buf.storage.data());
      const T* bt = b + t * stride;
      T* xt = x + t * stride;
      std::fill(xt, xt + stride, T(0));
      std::copy(bt, bt + stride, r.begin());
      std::copy(bt, bt + stride, p.begin());
      int64_t n_active = 0;
      for (int64_t c = 0; c < batch; ++c) {
        rs[c] = dot(bt + c * q, bt + c * q, q);
        TORCH_CHECK(std::isfinite(rs[c]), opname, ": b has non-finite values in task ", t,
                    ", column ", c);
        b_norm[c] = std::sqrt(rs[c]);
        active[c] = b_norm[c] > 0.0 && std::sqrt(rs[c]) > rtol * b_norm[c];
        n_active += active[c];
        iters[t * batch + c] = 0;
      }
      for (int64_t k = 0; k < maxiter && n_active > 0; ++k) {
        task.apply(p.data(), ap.data(), batch, buf.scratch.data());
        for (int64_t c = 0; c < batch; ++c) {
          if (!active[c]) continue;
          T* pc = p.data() + c * q;
          T* rc = r.data() + c * q;
          T* xc = xt + c * q;
          const T* apc = ap.data() + c * q;
          const double curvature = dot(pc, apc, q);
          TORCH_CHECK(std::isfinite(curvature) && curvature > 0.0, opname,
                      ": conjugate gradient met non-positive curvature p.Ap = ", curvature,
                      " at iteration ", k, " in task ", t, ", column ", c,
                      "; the operator is not positive definite: add damping");
          const double rs_new = cg_step(pc, apc, static_cast<T>(rs[c] / curvature), xc, rc, q);
          iters[t * batch + c] = k + 1;
          if (std::sqrt(rs_new) <= rtol * b_norm[c]) {
            active[c] = 0;
            --n_active;
          } else {
            cg_direction(rc, static_cast<T>(rs_new / rs[c]), pc, q);
          }
          rs[c] = rs_new;
        }
      }
      for (int64_t c = 0; c < batch; ++c)
        resid[t * batch + c] = static_cast<T>(b_norm[c] > 0.0 ? std::sqrt(rs[c]) / b_norm[c] : 0.0);
    }
  });
}

inline void check_solver_args(const char* opname, double damping, double rtol, int64_t maxiter) {
  check_finite(opname, damping, "damping");
  check_nonnegative(opname, rtol, "rtol");
  TORCH_CHECK(maxiter >= 0, opname, ": maxiter must be >= 0, got ", maxiter);
}

// Per-task Neumann scales as doubles, validated positive and finite.
inline at::Tensor neumann_scales(const char* opname, const at::Tensor& scale, int64_t tasks,
                                 int64_t iters, double damping) {
  check_finite(opname, damping, "damping");
  TORCH_CHECK(iters >= 0, opname, ": iters must be >= 0, got ", iters);
  check_rank(opname, scale, "scale", 1, "[T]");
  check_size(opname, scale, "scale", 0, tasks, "the number of tasks T");
  check_cpu(opname, scale, "scale");
  at::Tensor s = scale.to(at::kDouble).contiguous();
  if (tasks > 0) {
    const bool ok = at::all(at::isfinite(s) & (s > 0)).item<bool>();
    TORCH_CHECK(ok, opname, ": scale must be positive and finite for every task, got min ",
                s.min().item<double>(), "; estimate it with metaif.ops.estimate_scale");
  }
  return s;
}

}  // namespace metaif
