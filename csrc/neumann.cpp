// Batched scaled Neumann series for dense per-task matrices and for the ce-head operator, on the
// CPU (csrc/solvers.h) and on CUDA (cuda/neumann.cu: a block per task and column, every term in
// one launch).
#include <ATen/ATen.h>

#include "cuda_support.h"
#include "inputs.h"
#include "operators.h"
#include "registration.h"
#include "solvers.h"

namespace metaif {
namespace {

const double* scale_data(const std::optional<at::Tensor>& s) {
  return s.has_value() ? s->data_ptr<double>() : nullptr;
}

#if defined(METAIF_WITH_CUDA)
template <typename T, typename Family>
void neumann_cuda(const char* op, const Family& family, const at::Tensor& b, const std::optional<at::Tensor>& scale,
                  int64_t iters, double rtol, at::Tensor& x) {
  const c10::cuda::CUDAGuard guard(b.device());
  const int64_t tasks = b.size(0), batch = b.size(1);
  const auto task = family.task(0);
  const auto storage = cuda::BlockStorage::plan(team::neumann_storage(task.dim(), 1, task.scratch_size()), sizeof(T));
  const at::Tensor workspace = block_workspace(storage, tasks * batch, b);
  const DeviceStatus status(b);
  const cuda::Columns<T> cols{tasks, batch, b.data_ptr<T>(), x.data_ptr<T>(), data_or_null<T>(workspace),
                              status.get()};
  check_launch(cuda::neumann<T>(family, cols, scale_data(scale), iters, rtol, current_stream()));
  status.check(op);
}
#endif

at::Tensor neumann_dense(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& scale,
                         int64_t iters, double damping, std::optional<double> rtol) {
  constexpr const char* kOp = "neumann_dense";
  check_dense_inputs(kOp, a, b);
  const auto s = neumann_scales(kOp, scale, a.size(0), iters, damping, b);
  const double tol = neumann_rtol(kOp, rtol);
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  at::Tensor x = at::empty(bc.sizes(), bc.options());
  if (x.numel() == 0) return x;
  AT_DISPATCH_FLOATING_TYPES(bc.scalar_type(), kOp, [&] {
    const auto damp = static_cast<scalar_t>(damping);
#if defined(METAIF_WITH_CUDA)
    if (bc.is_cuda())
      return neumann_cuda<scalar_t>(kOp, team::DenseFamily<scalar_t>{ac.data_ptr<scalar_t>(), a.size(1), damp}, bc,
                                    s, iters, tol, x);
#endif
    const DenseOperator<scalar_t> op{ac.data_ptr<scalar_t>(), a.size(1), damp};
    neumann_solve<scalar_t>(kOp, op, a.size(0), b.size(1), bc.data_ptr<scalar_t>(), scale_data(s), iters, tol,
                            x.data_ptr<scalar_t>());
  });
  return x;
}

at::Tensor neumann_ce_head(const at::Tensor& feats, const at::Tensor& probs, const std::optional<at::Tensor>& weights,
                           const at::Tensor& b, const std::optional<at::Tensor>& scale, int64_t iters, double damping,
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
#if defined(METAIF_WITH_CUDA)
    if (bc.is_cuda()) return neumann_cuda<scalar_t>(kOp, in.family<scalar_t>(damping), bc, s, iters, tol, x);
#endif
    neumann_solve<scalar_t>(kOp, in.op<scalar_t>(damping), in.tasks, b.size(1), bc.data_ptr<scalar_t>(),
                            scale_data(s), iters, tol, x.data_ptr<scalar_t>());
  });
  return x;
}

}  // namespace

METAIF_IMPL_ALL_DEVICES(m.impl("neumann_dense", &neumann_dense); m.impl("neumann_ce_head", &neumann_ce_head);)

}  // namespace metaif
