// The value of an order-independent sum (limbs [3, *s] int64, top windows [*s] int32; see
// csrc/exact_add.cpp), rounded once to out's dtype; the limbs are carried in place (the same sum).
#include "checks.h"
#include "cuda_support.h"
#include "exact_state.h"
#include "registration.h"

namespace metaif {
namespace {

constexpr const char* kOp = "exact_value";

template <typename T>
void exact_value_kernel(int64_t* limbs, const int32_t* top, T* out, int64_t n) {
  torch::stable::parallel_for(0, n, 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = static_cast<T>(exact::value(top + i, limbs + i, n));
  });
}

// out = the sum rounded once to out's dtype (the limbs carried in place: the same sum).
void exact_value(Tensor limbs, const Tensor& top, Tensor out) {
  check_floating(kOp, out, "out");
  check_state(kOp, limbs, top, out);
  METAIF_CHECK(out.is_contiguous(), kOp, ": out is written in place and must be contiguous");
  const int64_t n = out.numel();
  if (n == 0) return;
  METAIF_DISPATCH_FLOATING(out.scalar_type(), kOp, [&] {
#if defined(METAIF_WITH_CUDA)
    if (out.is_cuda()) {
      const DeviceGuard guard(out);
      return check_launch(cuda::exact_value<scalar_t>(limbs.mutable_data_ptr<int64_t>(), top.mutable_data_ptr<int32_t>(),
                                                      out.mutable_data_ptr<scalar_t>(), n, current_stream(out)));
    }
#endif
    exact_value_kernel<scalar_t>(limbs.mutable_data_ptr<int64_t>(), top.mutable_data_ptr<int32_t>(),
                                 out.mutable_data_ptr<scalar_t>(), n);
  });
}

}  // namespace

METAIF_IMPL_ALL_DEVICES(m.impl("exact_value", TORCH_BOX(&exact_value));)

}  // namespace metaif
