// The CPU batched solvers of (A_t + damping I) x = b_t over tasks t, each with B right-hand sides:
// the team algorithms of metaif/task_solvers.cuh (the code the CUDA kernels run) on a one-thread
// team with SIMD vector steps (cpu_team.h). A task's B columns are solved together, so that each
// product applies the operator to all of them at once, and one task is solved start to finish
// before the next (its operator stays in cache); tasks are spread over threads.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

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

// scale == nullptr: per-task power-iteration scales. Raises the first failure of a task.
template <typename T, typename Op>
void neumann_solve(const char* opname, const Op& op, int64_t tasks, int64_t batch, const T* b,
                   const double* scale, int64_t iters, double rtol, T* x) {
  const int64_t q = op.dim(), stride = batch * q;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> vectors(static_cast<size_t>(team::neumann_storage(q, batch, 0)));
    TaskBuffers<T, Op> buf(op, batch);
    std::vector<team::NeumannColumn> state(static_cast<size_t>(batch));
    T* r = vectors.data();
    for (int64_t t = begin; t < end; ++t) {
      const auto task = op.prepare(t, buf.storage.data());
      check_status(opname, team::neumann_columns(CpuTeam{}, TeamOperator<decltype(task)>{task, q}, t, 0, batch,
                                                 b + t * stride, scale == nullptr, scale != nullptr ? scale[t] : 0.0,
                                                 iters, rtol, x + t * stride, r, r + stride, buf.scratch.data(),
                                                 state.data()));
    }
  });
}

// iters[t, c] counts CG iterations; resid[t, c] is the true relative residual of the returned x.
template <typename T, typename Op>
void cg_solve(const char* opname, const Op& op, int64_t tasks, int64_t batch, const T* b,
              double rtol, int64_t maxiter, T* x, int64_t* iters, T* resid) {
  const int64_t q = op.dim(), stride = batch * q;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> vectors(static_cast<size_t>(team::cg_storage(q, batch, 0)));
    TaskBuffers<T, Op> buf(op, batch);
    std::vector<team::CgColumn> state(static_cast<size_t>(batch));
    T* r = vectors.data();
    for (int64_t t = begin; t < end; ++t) {
      const auto task = op.prepare(t, buf.storage.data());
      check_status(opname, team::cg_columns(CpuTeam{}, TeamOperator<decltype(task)>{task, q}, t, 0, batch,
                                            b + t * stride, rtol, maxiter, x + t * stride, r, r + stride,
                                            r + 2 * stride, r + 3 * stride, r + 4 * stride, buf.scratch.data(),
                                            state.data(), iters + t * batch, resid + t * batch));
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
