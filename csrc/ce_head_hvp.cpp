// Exact Hessian-vector products of the weighted softmax cross-entropy w.r.t. a linear head,
// batched over tasks and vectors: out[t, b] = (H_t + damping I) vecs[t, b]. CPU: csrc/operators.h;
// CUDA: cuda/ce_head_hvp.cu (a block per task and vector).
#include "cuda_support.h"
#include "inputs.h"
#include "operators.h"
#include "registration.h"

namespace metaif {
namespace {

Tensor ce_head_hvp(const Tensor& feats, const Tensor& probs, const Tensor& vecs, double damping,
                       const std::optional<Tensor>& weights) {
  constexpr const char* kOp = "ce_head_hvp";
  const CeHeadInputs in = ce_head_inputs(kOp, feats, probs, weights, vecs, "vecs");
  check_finite(kOp, damping, "damping");
  const Tensor v = contiguous(vecs);
  Tensor out = empty_like_shape(v, v.sizes());
  if (out.numel() == 0) return out;
  METAIF_DISPATCH_FLOATING(v.scalar_type(), kOp, [&] {
#if defined(METAIF_WITH_CUDA)
    if (v.is_cuda()) {
      const DeviceGuard guard(v);
      const auto family = in.family<scalar_t>(damping);
      const auto storage = cuda::BlockStorage::plan(family.task(0).scratch_size(), sizeof(scalar_t));
      const Tensor workspace = block_workspace(storage, in.tasks * v.size(1), v);
      const cuda::Columns<scalar_t> cols{in.tasks, v.size(1), v.mutable_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                                         data_or_null<scalar_t>(workspace), nullptr};
      return check_launch(cuda::ce_head_hvp<scalar_t>(family, cols, current_stream(v)));
    }
#endif
    apply_each_task<scalar_t>(in.op<scalar_t>(damping), in.tasks, v.size(1), v.mutable_data_ptr<scalar_t>(),
                              out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace

METAIF_IMPL_ALL_DEVICES(m.impl("ce_head_hvp", TORCH_BOX(&ce_head_hvp));)

}  // namespace metaif
