// Batched scaled Neumann series for dense per-task matrices and for the ce-head operator.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "operators.h"
#include "solvers.h"

namespace metaif {
namespace {

at::Tensor neumann_dense_cpu(const at::Tensor& a, const at::Tensor& b, const at::Tensor& scale,
                             int64_t iters, double damping) {
  constexpr const char* kOp = "neumann_dense";
  check_dense_inputs(kOp, a, b);
  const at::Tensor s = neumann_scales(kOp, scale, a.size(0), iters, damping);
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  at::Tensor x = at::empty(bc.sizes(), bc.options());
  if (x.numel() == 0) return x;
  AT_DISPATCH_FLOATING_TYPES(bc.scalar_type(), kOp, [&] {
    const DenseOperator<scalar_t> op{ac.data_ptr<scalar_t>(), a.size(1),
                                     static_cast<scalar_t>(damping)};
    neumann_solve<scalar_t>(kOp, op, a.size(0), b.size(1), bc.data_ptr<scalar_t>(),
                            s.data_ptr<double>(), iters, x.data_ptr<scalar_t>());
  });
  return x;
}

at::Tensor neumann_ce_head_cpu(const at::Tensor& feats, const at::Tensor& probs,
                               const std::optional<at::Tensor>& weights, const at::Tensor& b,
                               const at::Tensor& scale, int64_t iters, double damping) {
  constexpr const char* kOp = "neumann_ce_head";
  const CeHeadInputs in = ce_head_inputs(kOp, feats, probs, weights, b, "b");
  const at::Tensor s = neumann_scales(kOp, scale, in.tasks, iters, damping);
  const at::Tensor bc = b.contiguous();
  at::Tensor x = at::empty(bc.sizes(), bc.options());
  if (x.numel() == 0) return x;
  AT_DISPATCH_FLOATING_TYPES(bc.scalar_type(), kOp, [&] {
    neumann_solve<scalar_t>(kOp, in.op<scalar_t>(damping), in.tasks, b.size(1),
                            bc.data_ptr<scalar_t>(), s.data_ptr<double>(), iters,
                            x.data_ptr<scalar_t>());
  });
  return x;
}

}  // namespace

TORCH_LIBRARY_IMPL(metaif, CPU, m) {
  m.impl("neumann_dense", &neumann_dense_cpu);
  m.impl("neumann_ce_head", &neumann_ce_head_cpu);
}

}  // namespace metaif
