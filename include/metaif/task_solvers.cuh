// The batched solvers' per-column algorithms, written once against team.cuh: a CUDA block runs
// one (task, column) from the first iteration to the last in one launch (cuda/neumann.cu,
// cuda/cg.cu), and the CPU tests run the very same code through csrc/emulate.cpp. They follow the
// CPU kernels (csrc/solvers.h) step for step and share their arithmetic (arith.h); reductions
// accumulate in double. Each returns the column's Status (the same on every member).
#pragma once

#include <cmath>
#include <cstdint>

#include "metaif/arith.h"
#include "metaif/status.h"

namespace metaif::team {

// The storage a column needs besides b and x: Neumann r and A r, CG r, p, A p and A x; plus the
// operator's scratch.
inline int64_t neumann_storage(int64_t dim, int64_t scratch) { return 2 * dim + scratch; }
inline int64_t cg_storage(int64_t dim, int64_t scratch) { return 4 * dim + scratch; }

template <typename Team, typename T>
METAIF_HD double dot(const Team& team, const T* a, const T* b, int64_t count) {
  double partial = 0.0;
  team.for_each(count, [&](int64_t i) { partial += static_cast<double>(a[i]) * static_cast<double>(b[i]); });
  return team.sum(partial);
}

// ||b - A x||^2 from a fresh product (left in `product`).
template <typename Team, typename T, typename Op>
METAIF_HD double true_residual_sq(const Team& team, const Op& op, const T* b, const T* x, T* product, T* scratch) {
  op.apply(team, x, product, scratch);
  double partial = 0.0;
  team.for_each(op.dim(), [&](int64_t i) {
    const double d = static_cast<double>(b[i]) - static_cast<double>(product[i]);
    partial += d * d;
  });
  return team.sum(partial);
}

// The Rayleigh quotient after arith::kPowerIterations power steps from arith::PowerStart (x, y:
// dim() elements each).
template <typename Team, typename T, typename Op>
METAIF_HD double power_estimate(const Team& team, const Op& op, T* x, T* y, T* scratch) {
  const int64_t q = op.dim();
  if (team.leader()) {  // a sequential generator: one member fills the start vector
    arith::PowerStart start;
    for (int64_t i = 0; i < q; ++i) x[i] = static_cast<T>(start.next());
  }
  team.sync();
  double estimate = 0.0;
  for (int it = 0; it < arith::kPowerIterations; ++it) {
    const double norm = sqrt(dot(team, x, x, q));
    if (!(norm > 0.0)) break;  // the operator annihilated the iterate
    team.for_each(q, [&](int64_t i) { x[i] = static_cast<T>(x[i] / norm); });
    team.sync();
    op.apply(team, x, y, scratch);
    estimate = dot(team, x, y, q);
    team.for_each(q, [&](int64_t i) { x[i] = y[i]; });
    team.sync();
  }
  return estimate;
}

// Scaled Neumann series for one column b (see neumann_solve in csrc/solvers.h): x = (1/s) r_J
// with r_0 = b, r_j = b + r_{j-1} - A r_{j-1} / s. estimate_scale: s from the power iteration,
// else `scale`. rtol < 0: no final residual check. r, ar: dim() elements each.
template <typename Team, typename T, typename Op>
METAIF_HD Status neumann_column(const Team& team, const Op& op, int64_t task, int64_t column, const T* b,
                                bool estimate_scale, double scale, int64_t iters, double rtol, T* x, T* r, T* ar,
                                T* scratch) {
  const int64_t q = op.dim();
  double s = scale;
  if (estimate_scale) {
    const double estimate = power_estimate(team, op, x, ar, scratch);
    if (!(arith::finite(estimate) && estimate > 0.0)) return failure(kScaleNotPositive, task, -1, -1, estimate);
    s = arith::kScaleSafety * estimate;
  }
  const T inv_s = static_cast<T>(1.0 / s);
  if (!(arith::finite(static_cast<double>(inv_s)) && inv_s > T(0)))
    return failure(kBadScale, task, -1, -1, 0.0, 0.0, s);
  const double b_norm = sqrt(dot(team, b, b, q));
  if (!arith::finite(b_norm)) return failure(kNonFiniteInput, task, column);
  team.for_each(q, [&](int64_t i) { r[i] = b[i]; });
  team.sync();
  const double eps = arith::epsilon<T>();
  double smallest = arith::kHuge;
  for (int64_t j = 1; j <= iters; ++j) {
    op.apply(team, r, ar, scratch);
    double e2 = 0.0, r2 = 0.0;
    team.for_each(q, [&](int64_t i) {
      const T e = arith::neumann_increment(b[i], ar[i], inv_s);
      r[i] += e;
      e2 += static_cast<double>(e) * static_cast<double>(e);
      r2 += static_cast<double>(r[i]) * static_cast<double>(r[i]);
    });
    const double e_norm = sqrt(team.sum(e2));
    const double r_norm = sqrt(team.sum(r2));
    if (!arith::finite(e_norm)) return failure(kNonFiniteIterate, task, column, j, e_norm, 0.0, s);
    if (arith::neumann_grew(e_norm, smallest, arith::neumann_noise(eps, r_norm)))
      return failure(kDiverged, task, column, j, e_norm, smallest, s);
    smallest = e_norm < smallest ? e_norm : smallest;
  }
  team.for_each(q, [&](int64_t i) { x[i] = r[i] * inv_s; });
  team.sync();
  if (rtol >= 0.0) {
    const double rr = true_residual_sq(team, op, b, x, ar, scratch);
    const double rel = b_norm > 0.0 ? sqrt(rr) / b_norm : 0.0;
    if (!(rel <= rtol)) return failure(kResidualTooLarge, task, column, iters, rel, rtol, s);
  }
  return failure(kOk, -1);
}

// Conjugate gradient for one column from x_0 = 0 with convergence on the true residual,
// residual replacement and the stagnation rule of cg_solve (csrc/solvers.h). r, p, ap, product:
// dim() elements each. Writes the iteration count and the true relative residual of x.
template <typename Team, typename T, typename Op>
METAIF_HD Status cg_column(const Team& team, const Op& op, int64_t task, int64_t column, const T* b, double rtol,
                           int64_t maxiter, T* x, T* r, T* p, T* ap, T* product, T* scratch, int64_t* iters_out,
                           T* resid_out) {
  const int64_t q = op.dim();
  team.for_each(q, [&](int64_t i) {
    x[i] = T(0);
    r[i] = b[i];
    p[i] = b[i];
  });
  double rs = dot(team, b, b, q);
  if (!arith::finite(rs)) return failure(kNonFiniteInput, task, column);
  const double b_norm = sqrt(rs), target = rtol * b_norm;
  bool active = b_norm > 0.0;
  int64_t iters = 0;
  double best_false = arith::kHuge;
  int stalls = 0;
  for (int64_t k = 0; k < maxiter && active; ++k) {
    op.apply(team, p, ap, scratch);
    const double curvature = dot(team, p, ap, q);
    if (!(arith::finite(curvature) && curvature > 0.0))
      return failure(kNonPositiveCurvature, task, column, k, curvature);
    const T alpha = static_cast<T>(rs / curvature);
    double partial = 0.0;
    team.for_each(q, [&](int64_t i) {
      arith::cg_update(x[i], r[i], p[i], ap[i], alpha);
      partial += static_cast<double>(r[i]) * static_cast<double>(r[i]);
    });
    const double rs_rec = team.sum(partial);
    iters = k + 1;
    const bool claims = sqrt(rs_rec) <= target;
    const double beta = rs_rec / rs;
    double rs_new = rs_rec;
    bool stop = claims;
    if (claims || (k + 1) % arith::kReplaceEvery == 0) {  // replace the recursive residual by the true one
      op.apply(team, x, product, scratch);
      double fresh = 0.0;
      team.for_each(q, [&](int64_t i) {
        r[i] = b[i] - product[i];
        fresh += static_cast<double>(r[i]) * static_cast<double>(r[i]);
      });
      rs_new = team.sum(fresh);
      if (claims && sqrt(rs_new) > target)  // a false claim: go on, unless stagnating
        stop = arith::cg_stalled(rs_new, best_false, stalls);
    }
    if (stop) {
      active = false;
    } else {
      team.for_each(q, [&](int64_t i) { p[i] = arith::cg_direction(r[i], static_cast<T>(beta), p[i]); });
      team.sync();
    }
    rs = rs_new;
  }
  if (active) rs = true_residual_sq(team, op, b, x, product, scratch);  // stopped by maxiter
  if (team.leader()) {
    *iters_out = iters;
    *resid_out = static_cast<T>(b_norm > 0.0 ? sqrt(rs) / b_norm : 0.0);
  }
  return failure(kOk, -1);
}

}  // namespace metaif::team
