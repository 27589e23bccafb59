// Gauss-Newton-vector products of softmax cross-entropy from per-example logit Jacobians,
// batched over tasks and vectors: out[t, b] = (G_t + damping I) vecs[t, b]. CPU: per task, two
// GEMMs around the Hessian rows (csrc/operators.h); CUDA: two batched cuBLAS products (torch.matmul)
// around one elementwise kernel (cuda/ggn_hvp.cu).
#include "checks.h"
#include "cuda_support.h"
#include "operators.h"
#include "registration.h"

namespace metaif {
namespace {

Tensor ggn_hvp(const Tensor& jac, const Tensor& probs, const Tensor& vecs, double damping,
                   const std::optional<Tensor>& weights) {
  constexpr const char* kOp = "ggn_hvp";
  check_rank(kOp, jac, "jac", 4, "[T, n, C, P]");
  check_floating(kOp, jac, "jac");
  check_like(kOp, jac, "jac", probs, "probs");
  check_like(kOp, jac, "jac", vecs, "vecs");
  const int64_t tasks = jac.size(0), n = jac.size(1), classes = jac.size(2), params = jac.size(3);
  check_rank(kOp, probs, "probs", 3, "[T, n, C]");
  check_size(kOp, probs, "probs", 0, tasks, "jac.shape[0] (T)");
  check_size(kOp, probs, "probs", 1, n, "jac.shape[1] (n)");
  check_size(kOp, probs, "probs", 2, classes, "jac.shape[2] (C)");
  check_rank(kOp, vecs, "vecs", 3, "[T, B, P]");
  check_size(kOp, vecs, "vecs", 0, tasks, "jac.shape[0] (T)");
  check_size(kOp, vecs, "vecs", 2, params, "jac.shape[3] (P)");
  check_finite(kOp, damping, "damping");
  const Tensor w = weights_or_uniform(kOp, weights, jac, {tasks, n}, "[T, n]");
  const Tensor j = contiguous(jac), p = contiguous(probs), v = contiguous(vecs);
  if (v.numel() == 0) return empty_like_shape(v, v.sizes());
#if defined(METAIF_WITH_CUDA)
  if (v.is_cuda()) {
    const DeviceGuard guard(v);
    const Tensor rows = torch::stable::view(j, {tasks, n * classes, params});
    Tensor z = contiguous(torch::stable::matmul(v, torch::stable::transpose(rows, 1, 2)));  // [T, B, n C]
    METAIF_DISPATCH_FLOATING(v.scalar_type(), kOp, [&] {
      check_launch(cuda::softmax_hessian_rows<scalar_t>(z.mutable_data_ptr<scalar_t>(), p.mutable_data_ptr<scalar_t>(),
                                                        w.mutable_data_ptr<scalar_t>(), tasks, v.size(1), n, classes,
                                                        current_stream(v)));
    });
    return torch::stable::subtract(torch::stable::matmul(z, rows), v, -damping);  // z rows + damping v
  }
#endif
  Tensor out = empty_like_shape(v, v.sizes());
  METAIF_DISPATCH_FLOATING(v.scalar_type(), kOp, [&] {
    const GgnOperator<scalar_t> op{j.mutable_data_ptr<scalar_t>(), p.mutable_data_ptr<scalar_t>(), w.mutable_data_ptr<scalar_t>(), n, classes,
                                   params, static_cast<scalar_t>(damping)};
    apply_each_task<scalar_t>(op, tasks, v.size(1), v.mutable_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace

METAIF_IMPL_ALL_DEVICES(m.impl("ggn_hvp", TORCH_BOX(&ggn_hvp));)

}  // namespace metaif
