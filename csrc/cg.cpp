// Batched conjugate gradient for dense per-task matrices and for the ce-head operator, on the CPU
// (csrc/solvers.h) and on CUDA (cuda/cg.cu: a block per task and column, every iteration in one
// launch); maxiter -1 means the operator's dimension.
#include <tuple>

#include "cuda_support.h"
#include "inputs.h"
#include "operators.h"
#include "registration.h"
#include "solvers.h"

namespace metaif {
namespace {

using CgResult = std::tuple<Tensor, Tensor, Tensor>;

struct CgOutputs {
  Tensor x, iters, resid;
};

#if defined(METAIF_WITH_CUDA)
template <typename T, typename Family>
void cg_cuda(const char* op, const Family& family, const Tensor& b, double rtol, int64_t maxiter, CgOutputs& out) {
  const DeviceGuard guard(b);
  const int64_t tasks = b.size(0), batch = b.size(1);
  const auto task = family.task(0);
  const auto storage = cuda::BlockStorage::plan(team::cg_storage(task.dim(), 1, task.scratch_size()), sizeof(T));
  const Tensor workspace = block_workspace(storage, tasks * batch, b);
  const DeviceStatus status(b);
  const cuda::Columns<T> cols{tasks, batch, b.mutable_data_ptr<T>(), out.x.mutable_data_ptr<T>(), data_or_null<T>(workspace),
                              status.get()};
  check_launch(cuda::cg<T>(family, cols, rtol, maxiter, out.iters.mutable_data_ptr<int64_t>(), out.resid.mutable_data_ptr<T>(),
                           current_stream(b)));
  status.check(op);
}
#endif

// make_family(zero) gives the operator for the team kernels, make_op(zero) for the CPU kernel
// (zero: a scalar_t that selects the type).
template <typename MakeFamily, typename MakeOp>
CgResult run_cg(const char* opname, const Tensor& b, double rtol, int64_t maxiter, const MakeFamily& make_family,
                const MakeOp& make_op) {
  const Tensor bc = contiguous(b);
  const int64_t tasks = b.size(0), batch = b.size(1);
  CgOutputs out{zeros_like_shape(bc, bc.sizes()), zeros_like_shape(bc, {tasks, batch}, ScalarType::Long),
                zeros_like_shape(bc, {tasks, batch})};
  if (out.x.numel() == 0) return {out.x, out.iters, out.resid};
  METAIF_DISPATCH_FLOATING(bc.scalar_type(), "cg", [&] {
    const auto op = make_op(scalar_t(0));
    const int64_t cap = maxiter < 0 ? op.dim() : maxiter;  // -1: the operator's dimension
#if defined(METAIF_WITH_CUDA)
    if (bc.is_cuda()) return cg_cuda<scalar_t>(opname, make_family(scalar_t(0)), bc, rtol, cap, out);
#endif
    cg_solve<scalar_t>(opname, op, tasks, batch, bc.mutable_data_ptr<scalar_t>(), rtol, cap,
                       out.x.mutable_data_ptr<scalar_t>(), out.iters.mutable_data_ptr<int64_t>(), out.resid.mutable_data_ptr<scalar_t>());
  });
  return {out.x, out.iters, out.resid};
}

CgResult cg_dense(const Tensor& a, const Tensor& b, double damping, double rtol, int64_t maxiter) {
  constexpr const char* kOp = "cg_dense";
  check_dense_inputs(kOp, a, b);
  check_solver_args(kOp, damping, rtol, maxiter);
  const Tensor ac = contiguous(a);
  return run_cg(
      kOp, b, rtol, maxiter,
      [&](auto zero) {
        using T = decltype(zero);
        return team::DenseFamily<T>{ac.mutable_data_ptr<T>(), a.size(1), static_cast<T>(damping)};
      },
      [&](auto zero) {
        using T = decltype(zero);
        return DenseOperator<T>{ac.mutable_data_ptr<T>(), a.size(1), static_cast<T>(damping)};
      });
}

CgResult cg_ce_head(const Tensor& feats, const Tensor& probs, const std::optional<Tensor>& weights,
                    const Tensor& b, double damping, double rtol, int64_t maxiter) {
  constexpr const char* kOp = "cg_ce_head";
  const CeHeadInputs in = ce_head_inputs(kOp, feats, probs, weights, b, "b");
  check_solver_args(kOp, damping, rtol, maxiter);
  check_singular_damping(kOp, damping);
  return run_cg(
      kOp, b, rtol, maxiter, [&](auto zero) { return in.family<decltype(zero)>(damping); },
      [&](auto zero) { return in.op<decltype(zero)>(damping); });
}

}  // namespace

METAIF_IMPL_ALL_DEVICES(m.impl("cg_dense", TORCH_BOX(&cg_dense)); m.impl("cg_ce_head", TORCH_BOX(&cg_ce_head));)

}  // namespace metaif
