// Batched iterative solvers of (A_t + damping I) x = b_t over tasks t, each with B right-hand
// sides. One task is solved start to finish before the next (its operator stays in cache),
// tasks are spread over threads, and every reduction accumulates in double.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "checks.h"
#include "operators.h"
#include "status_message.h"
#include "vector_kernels.h"

namespace metaif {

// kScaleSafety times the Rayleigh quotient after kPowerIterations power steps of the prepared
// operator (damping included) from arith::PowerStart: an estimate of its top eigenvalue. Raises
// when it is not positive.
template <typename T, typename Task>
double power_scale(const char* opname, const Task& task, int64_t t, int64_t q, T* x, T* y, T* scratch) {
  arith::PowerStart start;
  for (int64_t i = 0; i < q; ++i) x[i] = static_cast<T>(start.next());
  double estimate = 0.0;
  for (int it = 0; it < arith::kPowerIterations; ++it) {
    const double norm = std::sqrt(dot(x, x, q));
    if (!(norm > 0.0)) break;  // the operator annihilated the iterate
    for (int64_t i = 0; i < q; ++i) x[i] = static_cast<T>(x[i] / norm);
    task.apply(x, y, 1, scratch);
    estimate = dot(x, y, q);
    std::copy(y, y + q, x);
  }
  if (!(std::isfinite(estimate) && estimate > 0.0)) raise_status(opname, failure(kScaleNotPositive, t, -1, -1, estimate));
  return arith::kScaleSafety * estimate;
}

// Scaled Neumann series x = (1/s) sum_{j<=J} (I - A/s)^j b, as the recursion
// r_0 = b, r_j = b + r_{j-1} - A r_{j-1} / s. The increment e_j = r_j - r_{j-1} = (I - A/s)^j b is
// the residual of the previous iterate; for a symmetric A with spectrum in (0, 2s) its norm never
// grows, so growth above the smallest increment seen (beyond rounding) proves an eigenvalue
// outside (0, 2s) and raises. With rtol >= 0 the true residual ||b - A x|| / ||b|| of the result
// is recomputed and must not exceed it (an eigenvalue at exactly 0 or 2s neither grows nor
// converges: only this check sees it). scale == nullptr: per-task power-iteration scales.
template <typename T, typename Op>
void neumann_solve(const char* opname, const Op& op, int64_t tasks, int64_t batch, const T* b,
                   const double* scale, int64_t iters, double rtol, T* x) {
  const int64_t q = op.dim(), stride = batch * q;
  const double eps = arith::epsilon<T>();
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> r(stride), ar(stride), power(2 * q);
    std::vector<double> b_norm(batch), smallest(batch);
    TaskBuffers<T, Op> buf(op, std::max<int64_t>(batch, 1));
    for (int64_t t = begin; t < end; ++t) {
      const auto task = op.prepare(t, buf.storage.data());
      const T* bt = b + t * stride;
      const double s = scale != nullptr
          ? scale[t] : power_scale<T>(opname, task, t, q, power.data(), power.data() + q, buf.scratch.data());
      const T inv_s = static_cast<T>(1.0 / s);
      if (!(std::isfinite(static_cast<double>(inv_s)) && inv_s > T(0)))
        raise_status(opname, failure(kBadScale, t, -1, -1, 0.0, 0.0, s));
      std::copy(bt, bt + stride, r.begin());
      for (int64_t c = 0; c < batch; ++c) {
        b_norm[c] = std::sqrt(dot(bt + c * q, bt + c * q, q));
        if (!std::isfinite(b_norm[c])) raise_status(opname, failure(kNonFiniteInput, t, c));
        smallest[c] = arith::kHuge;
      }
      for (int64_t j = 1; j <= iters; ++j) {
        task.apply(r.data(), ar.data(), batch, buf.scratch.data());
        for (int64_t c = 0; c < batch; ++c) {
          T* rc = r.data() + c * q;
          const double e_norm = std::sqrt(neumann_step(bt + c * q, ar.data() + c * q, inv_s, rc, q));
          if (!std::isfinite(e_norm)) raise_status(opname, failure(kNonFiniteIterate, t, c, j, e_norm, 0.0, s));
          const double noise = arith::neumann_noise(eps, std::sqrt(dot(rc, rc, q)));
          if (arith::neumann_grew(e_norm, smallest[c], noise))
            raise_status(opname, failure(kDiverged, t, c, j, e_norm, smallest[c], s));
          smallest[c] = std::min(smallest[c], e_norm);
        }
      }
      T* xt = x + t * stride;
      for (int64_t i = 0; i < stride; ++i) xt[i] = r[i] * inv_s;
      if (rtol >= 0.0 && batch > 0) {
        task.apply(xt, ar.data(), batch, buf.scratch.data());
        for (int64_t c = 0; c < batch; ++c) {
          double rr = 0.0;
          for (int64_t i = 0; i < q; ++i) {
            const double d = static_cast<double>(bt[c * q + i]) - static_cast<double>(ar[c * q + i]);
            rr += d * d;
          }
          const double rel = b_norm[c] > 0.0 ? std::sqrt(rr) / b_norm[c] : 0.0;
          if (!(rel <= rtol)) raise_status(opname, failure(kResidualTooLarge, t, c, iters, rel, rtol, s));
        }
      }
    }
  });
}

// ||b - A x||^2 for one column, from a fresh product (scratch holds the product).
template <typename T, typename Task>
double true_residual_sq(const Task& task, const T* b, const T* x, int64_t q, T* product, T* scratch) {
  task.apply(x, product, 1, scratch);
  double rr = 0.0;
  for (int64_t i = 0; i < q; ++i) {
    const double d = static_cast<double>(b[i]) - static_cast<double>(product[i]);
    rr += d * d;
  }
  return rr;
}

// Conjugate gradient from x_0 = 0 with per-column convergence ||b - A x|| <= rtol ||b|| on the
// true residual. A column whose recursive residual claims convergence is checked against b - A x
// and, when the claim was false (the recursion drifted), continues from the true residual
// (residual replacement, as also every arith::kReplaceEvery iterations); a column whose true residual no
// longer falls (arith::cg_stalled) stops there (rtol is out of this precision's reach). iters[t, c] counts CG iterations; resid[t, c] is the true relative residual of the
// returned x.
template <typename T, typename Op>
void cg_solve(const char* opname, const Op& op, int64_t tasks, int64_t batch, const T* b,
              double rtol, int64_t maxiter, T* x, int64_t* iters, T* resid) {
  const int64_t q = op.dim(), stride = batch * q;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> r(stride), p(stride), ap(stride), product(q);
    std::vector<double> rs(batch), b_norm(batch), best_false(batch);
    std::vector<int> stalls(batch);
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
        if (!std::isfinite(rs[c])) raise_status(opname, failure(kNonFiniteInput, t, c));
        b_norm[c] = std::sqrt(rs[c]);
        active[c] = b_norm[c] > 0.0;
        n_active += active[c];
        iters[t * batch + c] = 0;
        best_false[c] = arith::kHuge;
        stalls[c] = 0;
      }
      for (int64_t k = 0; k < maxiter && n_active > 0; ++k) {
        task.apply(p.data(), ap.data(), batch, buf.scratch.data());
        const bool replace = (k + 1) % arith::kReplaceEvery == 0;
        for (int64_t c = 0; c < batch; ++c) {
          if (!active[c]) continue;
          T* pc = p.data() + c * q;
          T* rc = r.data() + c * q;
          T* xc = xt + c * q;
          const T* apc = ap.data() + c * q;
          const T* bc = bt + c * q;
          const double curvature = dot(pc, apc, q);
          if (!(std::isfinite(curvature) && curvature > 0.0))
            raise_status(opname, failure(kNonPositiveCurvature, t, c, k, curvature));
          const double rs_rec = cg_step(pc, apc, static_cast<T>(rs[c] / curvature), xc, rc, q);
          iters[t * batch + c] = k + 1;
          const double target = rtol * b_norm[c];
          const bool claims = std::sqrt(rs_rec) <= target;
          const double beta = rs_rec / rs[c];
          double rs_new = rs_rec;
          bool stop = claims;
          if (claims || replace) {  // replace the recursive residual by the true one
            true_residual_sq(task, bc, xc, q, product.data(), buf.scratch.data());
            for (int64_t i = 0; i < q; ++i) rc[i] = bc[i] - product[i];
            rs_new = dot(rc, rc, q);
            if (claims && std::sqrt(rs_new) > target)  // a false claim: go on, unless stagnating
              stop = arith::cg_stalled(rs_new, best_false[c], stalls[c]);
          }
          if (stop) {
            active[c] = 0;
            --n_active;
          } else {
            cg_direction(rc, static_cast<T>(beta), pc, q);
          }
          rs[c] = rs_new;
        }
      }
      for (int64_t c = 0; c < batch; ++c) {
        if (active[c])  // stopped by maxiter: report the true residual of what is returned
          rs[c] = true_residual_sq(task, bt + c * q, xt + c * q, q, product.data(), buf.scratch.data());
        resid[t * batch + c] = static_cast<T>(b_norm[c] > 0.0 ? std::sqrt(rs[c]) / b_norm[c] : 0.0);
      }
    }
  });
}

inline void check_solver_args(const char* opname, double damping, double rtol, int64_t maxiter) {
  check_finite(opname, damping, "damping");
  check_nonnegative(opname, rtol, "rtol");
  TORCH_CHECK(maxiter >= -1, opname, ": maxiter must be >= 0 (or -1: the operator's dimension), got ", maxiter);
}

// Per-task Neumann scales as doubles (absent: computed per task). CPU scales are checked here, up
// front; CUDA ones by the kernel (kBadScale, the same message), which reads them anyway: no host
// copy of a device tensor.
inline std::optional<at::Tensor> neumann_scales(const char* opname, const std::optional<at::Tensor>& scale,
                                                int64_t tasks, int64_t iters, double damping,
                                                const at::Tensor& like) {
  check_finite(opname, damping, "damping");
  TORCH_CHECK(iters >= 0, opname, ": iters must be >= 0, got ", iters);
  if (!scale.has_value()) return std::nullopt;
  check_rank(opname, *scale, "scale", 1, "[T]");
  check_size(opname, *scale, "scale", 0, tasks, "the number of tasks T");
  TORCH_CHECK(scale->device() == like.device(), opname, ": scale is on ", scale->device(), " but b is on ",
              like.device(), "; move them to one device");
  TORCH_CHECK(scale->is_floating_point(), opname, ": scale must be a floating-point tensor, got ",
              scale->scalar_type());
  at::Tensor s = scale->to(at::kDouble).contiguous();
  if (s.is_cpu()) {
    const double* values = s.data_ptr<double>();
    for (int64_t t = 0; t < tasks; ++t)
      if (!(std::isfinite(1.0 / values[t]) && values[t] > 0.0))
        raise_status(opname, failure(kBadScale, t, -1, -1, 0.0, 0.0, values[t]));
  }
  return s;
}

// rtol of the final residual check: absent or negative means no check.
inline double neumann_rtol(const char* opname, const std::optional<double>& rtol) {
  if (!rtol.has_value()) return -1.0;
  check_nonnegative(opname, *rtol, "rtol");
  return *rtol;
}

}  // namespace metaif
