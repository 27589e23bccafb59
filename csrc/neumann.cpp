// Batched scaled Neumann series for dense per-task matrices and for the ce-head operator, on the
// CPU (csrc/solvers.h) and on CUDA (cuda/neumann.cu: a block per task and column, every term in
// one launch).
#include "cuda_support.h"
#include "inputs.h"
#include "operators.h"
#include "registration.h"
#include "solvers.h"

namespace metaif {
namespace {

const double* scale_data(const std::optional<Tensor>& s) {
  return s.has_value() ? s->mutable_data_ptr<double>() : nullptr;
}

#if defined(METAIF_WITH_CUDA)
template <typename T, typename Family>
void neumann_cuda(const char* op, const Family& family, const Tensor& b, const std::optional<Tensor>& scale,
                  int64_t iters, double rtol, Tensor& x) {
  const DeviceGuard guard(b);
  const int64_t tasks = b.size(0), batch = b.size(1);
  const auto task = family.task(0);
  const auto storage = cuda::BlockStorage::plan(team::neumann_storage(task.dim(), 1, task.scratch_size()), sizeof(T));
  const Tensor workspace = block_workspace(storage, tasks * batch, b);
  const DeviceStatus status(b);
  const cuda::Columns<T> cols{tasks, batch, b.mutable_data_ptr<T>(), x.mutable_data_ptr<T>(), data_or_null<T>(workspace),
                              status.get()};
  check_launch(cuda::neumann<T>(family, cols, scale_data(scale), iters, rtol, current_stream(b)));
  status.check(op);
}
#endif

Tensor neumann_dense(const Tensor& a, const Tensor& b, const std::optional<Tensor>& scale,
                         int64_t iters, double damping, std::optional<double> rtol) {
  constexpr const char* kOp = "neumann_dense";
  check_dense_inputs(kOp, a, b);
  const auto s = neumann_scales(kOp, scale, a.size(0), iters, damping, b);
  const double tol = neumann_rtol(kOp, rtol);
  const Tensor ac = contiguous(a), bc = contiguous(b);
  Tensor x = empty_like_shape(bc, bc.sizes());
  if (x.numel() == 0) return x;
  METAIF_DISPATCH_FLOATING(bc.scalar_type(), kOp, [&] {
    const auto damp = static_cast<scalar_t>(damping);
#if defined(METAIF_WITH_CUDA)
    if (bc.is_cuda())
      return neumann_cuda<scalar_t>(kOp, team::DenseFamily<scalar_t>{ac.mutable_data_ptr<scalar_t>(), a.size(1), damp}, bc,
                                    s, iters, tol, x);
#endif
    const DenseOperator<scalar_t> op{ac.mutable_data_ptr<scalar_t>(), a.size(1), damp};
    neumann_solve<scalar_t>(kOp, op, a.size(0), b.size(1), bc.mutable_data_ptr<scalar_t>(), scale_data(s), iters, tol,
                            x.mutable_data_ptr<scalar_t>());
  });
  return x;
}

Tensor neumann_ce_head(const Tensor& feats, const Tensor& probs, const std::optional<Tensor>& weights,
                           const Tensor& b, const std::optional<Tensor>& scale, int64_t iters, double damping,
                           std::optional<double> rtol) {
  constexpr const char* kOp = "neumann_ce_head";
  const CeHeadInputs in = ce_head_inputs(kOp, feats, probs, weights, b, "b");
  check_singular_damping(kOp, damping);
  const auto s = neumann_scales(kOp, scale, in.tasks, iters, damping, b);
  const double tol = neumann_rtol(kOp, rtol);
  const Tensor bc = contiguous(b);
  Tensor x = empty_like_shape(bc, bc.sizes());
  if (x.numel() == 0) return x;
  METAIF_DISPATCH_FLOATING(bc.scalar_type(), kOp, [&] {
#if defined(METAIF_WITH_CUDA)
    if (bc.is_cuda()) return neumann_cuda<scalar_t>(kOp, in.family<scalar_t>(damping), bc, s, iters, tol, x);
#endif
    neumann_solve<scalar_t>(kOp, in.op<scalar_t>(damping), in.tasks, b.size(1), bc.mutable_data_ptr<scalar_t>(),
                            scale_data(s), iters, tol, x.mutable_data_ptr<scalar_t>());
  });
  return x;
}

}  // namespace

METAIF_IMPL_ALL_DEVICES(m.impl("neumann_dense", TORCH_BOX(&neumann_dense)); m.impl("neumann_ce_head", TORCH_BOX(&neumann_ce_head));)

}  // namespace metaif
