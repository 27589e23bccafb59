// The batched solvers' algorithms, written once against team.cuh for `cols` columns of one task
// (consecutive [cols, dim()] blocks): a CUDA block runs one (task, column) from the first iteration
// to the last in one launch (cuda/neumann.cu, cuda/cg.cu: cols = 1), the CPU kernels run all the
// columns of a task on one thread (csrc/solvers.h: cols = B, so that the operator is applied to them
// at once), and the CPU tests run them as the CUDA kernels do (csrc/emulate.cpp). Reductions
// accumulate in double. Each returns the first failure in the order met (or kOk), the same Status
// on every member. Per-column scalars live in caller-provided state (every member keeps its own
// copy, all equal), so the number of columns is not fixed at compile time.
#pragma once

#include <cmath>
#include <cstdint>

#include "metaif/arith.h"
#include "metaif/status.h"

namespace metaif::team {

// The storage a column group needs besides b and x: Neumann r and A r, CG r, p, A p and the best
// iterate for every column and one column's A x; plus the operator's scratch.
inline int64_t neumann_storage(int64_t dim, int64_t cols, int64_t scratch) { return 2 * cols * dim + scratch; }
inline int64_t cg_storage(int64_t dim, int64_t cols, int64_t scratch) { return (4 * cols + 1) * dim + scratch; }

struct NeumannColumn {
  double b_norm, smallest;
};

struct CgColumn {
  double rs;           // ||r||^2 of the recursion (the true one right after a check)
  double b_norm;
  double best;         // ||b - A x_best||^2: the smallest true residual a check has seen
  double best_missed;  // the stagnation rule's reference (arith::cg_stalled)
  int stalls;
  bool active, x_is_best;
  int64_t iters;
};

// ||b - A x||^2 of one column from a fresh product (left in `product`).
template <typename Team, typename T, typename Op>
METAIF_HD double true_residual_sq(const Team& team, const Op& op, const T* b, const T* x, T* product, T* scratch) {
  op.apply(team, x, product, 1, scratch);
  return team.distance_sq(b, product, op.dim());
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
    const double norm = sqrt(team.dot(x, x, q));
    if (!(norm > 0.0)) break;  // the operator annihilated the iterate
    team.for_each(q, [&](int64_t i) { x[i] = static_cast<T>(x[i] / norm); });
    team.sync();
    op.apply(team, x, y, 1, scratch);
    estimate = team.dot(x, y, q);
    team.for_each(q, [&](int64_t i) { x[i] = y[i]; });
    team.sync();
  }
  return estimate;
}

// Scaled Neumann series x = (1/s) sum_{j<=J} (I - A/s)^j b, as the recursion r_0 = b,
// r_j = b + r_{j-1} - A r_{j-1} / s. The increment e_j = r_j - r_{j-1} = (I - A/s)^j b is the
// residual of the previous iterate; for a symmetric A with spectrum in (0, 2s) its norm never
// grows, so growth above the smallest increment seen (beyond rounding) proves an eigenvalue outside
// (0, 2s) and fails. With rtol >= 0 the true residual ||b - A x|| / ||b|| of the result must not
// exceed it (an eigenvalue at exactly 0 or 2s neither grows nor converges: only this check sees
// it). estimate_scale: s = kScaleSafety times the power iteration's estimate, else `scale`.
// Columns first .. first + cols - 1 of `task`; r, ar: cols * dim() elements each.
template <typename Team, typename T, typename Op>
METAIF_HD Status neumann_columns(const Team& team, const Op& op, int64_t task, int64_t first, int64_t cols,
                                 const T* b, bool estimate_scale, double scale, int64_t iters, double rtol, T* x, T* r,
                                 T* ar, T* scratch, NeumannColumn* state) {
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
  for (int64_t c = 0; c < cols; ++c) {
    state[c].b_norm = sqrt(team.dot(b + c * q, b + c * q, q));
    if (!arith::finite(state[c].b_norm)) return failure(kNonFiniteInput, task, first + c);
    state[c].smallest = arith::kHuge;
  }
  team.for_each(cols * q, [&](int64_t i) { r[i] = b[i]; });
  team.sync();
  const double eps = arith::epsilon<T>();
  for (int64_t j = 1; j <= iters; ++j) {
    op.apply(team, r, ar, cols, scratch);
    for (int64_t c = 0; c < cols; ++c) {
      const arith::NeumannSums sums = team.neumann_step(b + c * q, ar + c * q, inv_s, r + c * q, q);
      const double e_norm = sqrt(sums.increment_sq), smallest = state[c].smallest;
      if (!arith::finite(e_norm)) return failure(kNonFiniteIterate, task, first + c, j, e_norm, 0.0, s);
      if (arith::neumann_grew(e_norm, smallest, arith::neumann_noise(eps, sqrt(sums.iterate_sq))))
        return failure(kDiverged, task, first + c, j, e_norm, smallest, s);
      state[c].smallest = e_norm < smallest ? e_norm : smallest;
    }
  }
  team.for_each(cols * q, [&](int64_t i) { x[i] = r[i] * inv_s; });
  team.sync();
  if (rtol >= 0.0) {
    op.apply(team, x, ar, cols, scratch);
    for (int64_t c = 0; c < cols; ++c) {
      const double rr = team.distance_sq(b + c * q, ar + c * q, q);
      const double rel = state[c].b_norm > 0.0 ? sqrt(rr) / state[c].b_norm : 0.0;
      if (!(rel <= rtol)) return failure(kResidualTooLarge, task, first + c, iters, rel, rtol, s);
    }
  }
  return failure(kOk, -1);
}

// Conjugate gradient from x_0 = 0 with per-column convergence ||b - A x|| <= rtol ||b|| on the true
// residual. The true residual b - A x replaces the recursive one where the recursion claims
// convergence and every arith::kReplaceEvery iterations (residual replacement); a check that meets
// rtol stops the column, one that misses it is a stall unless it made progress (arith::cg_stalled),
// and a column with more than arith::kStalls stalls stops there (rtol is out of this precision's
// reach). Past that point rounding can carry x away again, so each column returns its best checked
// iterate (the smallest true residual; the last x is checked at maxiter) and that residual. The
// operator is applied to all cols columns at once, stopped ones included. Writes each column's
// iteration count and the true relative residual of its x. r, p, ap, best: cols * dim() elements
// each, product: dim().
template <typename Team, typename T, typename Op>
METAIF_HD Status cg_columns(const Team& team, const Op& op, int64_t task, int64_t first, int64_t cols, const T* b,
                            double rtol, int64_t maxiter, T* x, T* r, T* p, T* ap, T* best, T* product, T* scratch,
                            CgColumn* state, int64_t* iters_out, T* resid_out) {
  const int64_t q = op.dim();
  team.for_each(cols * q, [&](int64_t i) {
    x[i] = T(0);
    best[i] = T(0);
    r[i] = b[i];
    p[i] = b[i];
  });
  team.sync();
  int64_t active = 0;
  for (int64_t c = 0; c < cols; ++c) {
    CgColumn& col = state[c];
    col.rs = team.dot(b + c * q, b + c * q, q);
    if (!arith::finite(col.rs)) return failure(kNonFiniteInput, task, first + c);
    col.b_norm = sqrt(col.rs);
    col.best = col.rs;  // x_0 = 0
    col.best_missed = arith::kHuge;
    col.stalls = 0;
    col.active = col.b_norm > 0.0;
    col.x_is_best = true;
    col.iters = 0;
    active += col.active;
  }
  for (int64_t k = 0; k < maxiter && active > 0; ++k) {
    op.apply(team, p, ap, cols, scratch);
    const bool replace = (k + 1) % arith::kReplaceEvery == 0;
    for (int64_t c = 0; c < cols; ++c) {
      CgColumn& col = state[c];
      if (!col.active) continue;
      T *xc = x + c * q, *rc = r + c * q, *pc = p + c * q;
      const T *apc = ap + c * q, *bc = b + c * q;
      const double curvature = team.dot(pc, apc, q);
      if (!(arith::finite(curvature) && curvature > 0.0))
        return failure(kNonPositiveCurvature, task, first + c, k, curvature);
      const double rs_rec = team.cg_step(pc, apc, static_cast<T>(col.rs / curvature), xc, rc, q);
      col.iters = k + 1;
      col.x_is_best = false;
      const double target = rtol * col.b_norm;
      const double beta = rs_rec / col.rs;
      double rs_new = rs_rec;
      bool stop = false;
      if (sqrt(rs_rec) <= target || replace) {  // check: the true residual replaces the recursive one
        op.apply(team, xc, product, 1, scratch);
        rs_new = team.residual(bc, product, rc, q);
        if (rs_new < col.best) {
          col.best = rs_new;
          col.x_is_best = true;
          T* keep = best + c * q;
          team.for_each(q, [&](int64_t i) { keep[i] = xc[i]; });
          team.sync();
        }
        stop = sqrt(rs_new) <= target || arith::cg_stalled(rs_new, col.best_missed, col.stalls);
      }
      if (stop) {
        col.active = false;
        --active;
      } else {
        team.cg_direction(rc, static_cast<T>(beta), pc, q);
      }
      col.rs = rs_new;
    }
  }
  for (int64_t c = 0; c < cols; ++c) {
    CgColumn& col = state[c];
    T* xc = x + c * q;
    if (col.active) {  // stopped by maxiter: the last x is checked too
      const double rs_x = true_residual_sq(team, op, b + c * q, xc, product, scratch);
      if (rs_x < col.best) {
        col.best = rs_x;
        col.x_is_best = true;
      }
    }
    if (!col.x_is_best) {
      const T* keep = best + c * q;
      team.for_each(q, [&](int64_t i) { xc[i] = keep[i]; });
      team.sync();
    }
    if (team.leader()) {
      iters_out[c] = col.iters;
      resid_out[c] = static_cast<T>(col.b_norm > 0.0 ? sqrt(col.best) / col.b_norm : 0.0);
    }
  }
  return failure(kOk, -1);
}

}  // namespace metaif::team
