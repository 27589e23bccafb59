// The CPU batched solvers of (A_t + damping I) x = b_t over tasks t, each with B right-hand sides:
// the team algorithms of metaif/task_solvers.cuh (the code the CUDA kernels run) on a one-thread
// team with SIMD vector steps (cpu_team.h). A task's B columns are solved together, so that each
// product applies the operator to all of them at once, and one task is solved start to finish
// before the next (its operator stays in cache); tasks are spread over threads.
#pragma once

#include <cmath>
#include <optional>
#include <vector>

#include "checks.h"
#include "cpu_team.h"
#include "metaif/task_solvers.cuh"
#include "operators.h"
#include "status_message.h"

namespace metaif {

// A prepared CPU task (operators.h) as the team algorithms apply an operator.
template <typename Task>
struct TeamOperator {
  const Task& task;
  int64_t q;

  int64_t dim() const { return q; }

  template <typename T>
  void apply(const CpuTeam&, const T* in, T* out, int64_t cols, T* scratch) const {
    task.apply(in, out, cols, scratch);
  }
};

// Runs solve_task(t) -> Status for every task, tasks spread over threads; a thread stops at its
// first failure. Raises the failure of the lowest task after the threads are done: whatever the
// thread count, and with no exception thrown across the stable ABI's parallel_for.
template <typename SolveRange>
void solve_tasks(const char* opname, int64_t tasks, const SolveRange& solve_range) {
  std::vector<Status> statuses(static_cast<size_t>(tasks), failure(kOk, -1));
  torch::stable::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) { solve_range(begin, end, statuses.data()); });
  for (const Status& s : statuses) check_status(opname, s);
}

// scale == nullptr: per-task power-iteration scales.
template <typename T, typename Op>
void neumann_solve(const char* opname, const Op& op, int64_t tasks, int64_t batch, const T* b,
                   const double* scale, int64_t iters, double rtol, T* x) {
  const int64_t q = op.dim(), stride = batch * q;
  solve_tasks(opname, tasks, [&](int64_t begin, int64_t end, Status* statuses) {
    std::vector<T> vectors(static_cast<size_t>(team::neumann_storage(q, batch, 0)));
    TaskBuffers<T, Op> buf(op, batch);
    std::vector<team::NeumannColumn> state(static_cast<size_t>(batch));
    T* r = vectors.data();
    for (int64_t t = begin; t < end; ++t) {
      const auto task = op.prepare(t, buf.storage.data());
      statuses[t] = team::neumann_columns(CpuTeam{}, TeamOperator<decltype(task)>{task, q}, t, 0, batch, b + t * stride,
                                          scale == nullptr, scale != nullptr ? scale[t] : 0.0, iters, rtol,
                                          x + t * stride, r, r + stride, buf.scratch.data(), state.data());
      if (statuses[t].code != kOk) return;
    }
  });
}

// iters[t, c] counts CG iterations; resid[t, c] is the true relative residual of the returned x.
template <typename T, typename Op>
void cg_solve(const char* opname, const Op& op, int64_t tasks, int64_t batch, const T* b,
              double rtol, int64_t maxiter, T* x, int64_t* iters, T* resid) {
  const int64_t q = op.dim(), stride = batch * q;
  solve_tasks(opname, tasks, [&](int64_t begin, int64_t end, Status* statuses) {
    std::vector<T> vectors(static_cast<size_t>(team::cg_storage(q, batch, 0)));
    TaskBuffers<T, Op> buf(op, batch);
    std::vector<team::CgColumn> state(static_cast<size_t>(batch));
    T* r = vectors.data();
    for (int64_t t = begin; t < end; ++t) {
      const auto task = op.prepare(t, buf.storage.data());
      statuses[t] = team::cg_columns(CpuTeam{}, TeamOperator<decltype(task)>{task, q}, t, 0, batch, b + t * stride,
                                     rtol, maxiter, x + t * stride, r, r + stride, r + 2 * stride, r + 3 * stride,
                                     r + 4 * stride, buf.scratch.data(), state.data(), iters + t * batch,
                                     resid + t * batch);
      if (statuses[t].code != kOk) return;
    }
  });
}

inline void check_solver_args(const char* opname, double damping, double rtol, int64_t maxiter) {
  check_finite(opname, damping, "damping");
  check_nonnegative(opname, rtol, "rtol");
  METAIF_CHECK(maxiter >= -1, opname, ": maxiter must be >= 0 (or -1: the operator's dimension), got ", maxiter);
}

// Per-task Neumann scales as doubles (absent: computed per task). CPU scales are checked here, up
// front; CUDA ones by the kernel (kBadScale, the same message), which reads them anyway: no host
// copy of a device tensor.
inline std::optional<Tensor> neumann_scales(const char* opname, const std::optional<Tensor>& scale,
                                                int64_t tasks, int64_t iters, double damping,
                                                const Tensor& like) {
  check_finite(opname, damping, "damping");
  METAIF_CHECK(iters >= 0, opname, ": iters must be >= 0, got ", iters);
  if (!scale.has_value()) return std::nullopt;
  check_rank(opname, *scale, "scale", 1, "[T]");
  check_size(opname, *scale, "scale", 0, tasks, "the number of tasks T");
  METAIF_CHECK(scale->device() == like.device(), opname, ": scale is on ", scale->device(), " but b is on ",
               like.device(), "; move them to one device");
  METAIF_CHECK(is_floating(scale->scalar_type()), opname,
               ": scale must be a floating-point tensor, got ", scale->scalar_type());
  Tensor s = contiguous(torch::stable::to(*scale, ScalarType::Double));
  if (s.is_cpu()) {
    const double* values = s.mutable_data_ptr<double>();
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
