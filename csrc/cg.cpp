// Batched conjugate gradient for dense per-task matrices and for the ce-head operator;
// maxiter -1 means the operator's dimension.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "inputs.h"
#include "operators.h"
#include "solvers.h"

namespace metaif {
namespace {

using CgResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

template <typename MakeOp>
CgResult run_cg(const char* opname, const at::Tensor& b, double rtol, int64_t maxiter,
                const MakeOp& make_op) {
  const at::Tensor bc = b.contiguous();
  const int64_t tasks = b.size(0), batch = b.size(1);
  at::Tensor x = at::empty(bc.sizes(), bc.options());
  at::Tensor iters = at::zeros({tasks, batch}, bc.options().dtype(at::kLong));
  at::Tensor resid = at::zeros({tasks, batch}, bc.options());
  if (x.numel() == 0) {
    x.zero_();
    return {x, iters, resid};
  }
  AT_DISPATCH_FLOATING_TYPES(bc.scalar_type(), "cg", [&] {
    const auto op = make_op(scalar_t(0));
    const int64_t cap = maxiter < 0 ? op.dim() : maxiter;  // -1: the operator's dimension
    cg_solve<scalar_t>(opname, op, tasks, batch, bc.data_ptr<scalar_t>(), rtol, cap,
                       x.data_ptr<scalar_t>(), iters.data_ptr<int64_t>(), resid.data_ptr<scalar_t>());
  });
  return {x, iters, resid};
}

CgResult cg_dense_cpu(const at::Tensor& a, const at::Tensor& b, double damping, double rtol,
                      int64_t maxiter) {
  constexpr const char* kOp = "cg_dense";
  check_dense_inputs(kOp, a, b);
  check_solver_args(kOp, damping, rtol, maxiter);
  const at::Tensor ac = a.contiguous();
  return run_cg(kOp, b, rtol, maxiter, [&](auto zero) {
    using T = decltype(zero);
    return DenseOperator<T>{ac.data_ptr<T>(), a.size(1), static_cast<T>(damping)};
  });
}

CgResult cg_ce_head_cpu(const at::Tensor& feats, const at::Tensor& probs,
                        const std::optional<at::Tensor>& weights, const at::Tensor& b,
                        double damping, double rtol, int64_t maxiter) {
  constexpr const char* kOp = "cg_ce_head";
  const CeHeadInputs in = ce_head_inputs(kOp, feats, probs, weights, b, "b");
  check_solver_args(kOp, damping, rtol, maxiter);
  check_singular_damping(kOp, damping);
  return run_cg(kOp, b, rtol, maxiter, [&](auto zero) {
    using T = decltype(zero);
    return in.op<T>(damping);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(metaif, CPU, m) {
  m.impl("cg_dense", &cg_dense_cpu);
  m.impl("cg_ce_head", &cg_ce_head_cpu);
}

}  // namespace metaif
