// Adds a tensor into an order-independent sum, in place: limbs [3, *s] int64 and top windows [*s]
// int32, element by element (include/metaif/exact.h; metaif.parallel.ExactSum keeps the state).
// The pure-PyTorch path it replaces makes about forty passes over the elements in float64; this is
// one, so a sum of ResNet-sized gradients (12 M elements) costs milliseconds, not seconds.
#include "checks.h"
#include "cuda_support.h"
#include "exact_state.h"
#include "registration.h"

namespace metaif {
namespace {

constexpr const char* kOp = "exact_add";

template <typename T>
void exact_add_kernel(int64_t* limbs, int32_t* top, const T* x, int64_t n) {
  torch::stable::parallel_for(0, n, 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) exact::add(static_cast<double>(x[i]), top + i, limbs + i, n);
  });
}

void exact_add(Tensor limbs, Tensor top, const Tensor& x) {
  check_floating(kOp, x, "x");
  check_state(kOp, limbs, top, x);
  const int64_t n = x.numel();
  if (n == 0) return;
  const Tensor values = contiguous(x);
  METAIF_DISPATCH_FLOATING(x.scalar_type(), kOp, [&] {
#if defined(METAIF_WITH_CUDA)
    if (values.is_cuda()) {
      const DeviceGuard guard(values);
      return check_launch(cuda::exact_add<scalar_t>(limbs.mutable_data_ptr<int64_t>(), top.mutable_data_ptr<int32_t>(),
                                                    values.mutable_data_ptr<scalar_t>(), n, current_stream(values)));
    }
#endif
    exact_add_kernel<scalar_t>(limbs.mutable_data_ptr<int64_t>(), top.mutable_data_ptr<int32_t>(),
                               values.mutable_data_ptr<scalar_t>(), n);
  });
}

}  // namespace

METAIF_IMPL_ALL_DEVICES(m.impl("exact_add", TORCH_BOX(&exact_add));)

}  // namespace metaif
