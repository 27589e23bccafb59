// Batched scaled Neumann series for dense per-task matrices and for the ce-head operator.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "inputs.h"
#include "operators.h"
#include "solvers.h"

namespace metaif {
namespace {

const double* scale_data(const std::optional<at::Tensor>& s) {
  return s.has_value() ? s->data_ptr<double>() : nullptr;
}

at::Tensor neumann_dense_cpu(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& scale,
                             int64_t iters, double damping, std::optional<double> rtol) {
  constexpr const char* kOp = "neumann_dense";
  check_dense_inputs(kOp, a, b);
  const auto s = neumann_scales(kOp, scale, a.size(0), iters, damping, b);
  const double tol = neumann_rtol(kOp, rtol);
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  at::Tensor x = at::empty(bc.sizes(), bc.options());
  if (x.numel() == 0) return x;
  AT_DISPATCH_FLOATING_TYPES(bc.scalar_type(), kOp, [&] {
    const DenseOperator<scalar_t> op{ac.data_ptr<scalar_t>(), a.size(1), static_cast<scalar_t>(damping)};
    neumann_solve<scalar_t>(kOp, op, a.size(0), b.size(1), bc.data_ptr<scalar_t>(), scale_data(s), iters, tol,
                            x.data_ptr<scalar_t>());
  });
  return x;
}

at::Tensor neumann_ce_head_cpu(const at::Tensor& feats, const at::Tensor& probs,
                               const std::optional<at::Tensor>& weights, const at::Tensor& b,
                               const std::optional<at::Tensor>& scale, int64_t iters, double damping,
                               std::optional<double> rtol) {
  constexpr const char* kOp = "neumann_ce_head";
  const CeHeadInputs in = ce_head_inputs(kOp, feats, probs, weights, b, "b");
  check_singular_damping(kOp, damping);
  const auto s = neumann_scales(kOp, scale, in.tasks, iters, damping, b);
  const double tol = neumann_rtol(kOp, rtol);
  const at::Tensor bc = b.contiguous();
  at::Tensor x = at::empty(bc.sizes(), bc.options());
  if (x.numel() == 0) return x;
  AT_DISPATCH_FLOATING_TYPES(bc.scalar_type(), kOp, [&] {
    neumann_solve<scalar_t>(kOp, in.op<scalar_t>(damping), in.tasks, b.size(1), bc.data_ptr<scalar_t>(),
                            scale_data(s), iters, tol, x.data_ptr<scalar_t>());
  });
  return x;
}

}  // namespace

TORCH_LIBRARY_IMPL(metaif, CPU, m) {
  m.impl("neumann_dense", &neumann_dense_cpu);
  m.impl("neumann_ce_head", &neumann_ce_head_cpu);
}

}  // namespace metaif
