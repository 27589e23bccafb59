// out[n, p, c] = mask[n, p, c] * sum_k cols[n, index[n, p, c], k] * weight[c, k]: a layer's
// output (im2col rows times weights) read only where a max-pool picked it. Per image the dense
// product [L, C] is one small GEMM into a thread-local tile that stays in L2 and is gathered from
// there, instead of writing and re-reading the whole layer output through memory.
#include <atomic>
#include <vector>

#include "blas.h"
#include "cuda_support.h"
#include "patch_args.h"
#include "registration.h"

namespace metaif {
namespace {

constexpr const char* kOp = "gather_patch_matmul";

// Returns whether some index was out of range (the caller then raises).
template <typename T>
bool gather_patch_matmul_kernel(const T* cols, const int64_t* index, const T* mask, const T* weight,
                                T* out, const PatchShape& s) {
  std::atomic<bool> bad{false};
  torch::stable::parallel_for(0, s.n, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> tile(static_cast<size_t>(s.rows * s.channels));
    for (int64_t i = begin; i < end; ++i) {
      // tile [L, C] = cols_i [L, K] @ weight^T
      blas::gemm<T>(false, true, s.rows, s.channels, s.taps, T(1), cols + i * s.rows * s.taps, s.taps, weight,
                    s.taps, T(0), tile.data(), s.channels);
      const T* t = tile.data();
      if (!for_each_gathered(index, s, i, [&](int64_t at, int64_t slot) { out[at] = mask[at] * t[slot]; }))
        bad = true;
    }
  });
  return bad;
}

Tensor gather_patch_matmul(const Tensor& cols, const Tensor& index, const Tensor& mask,
                                   const Tensor& weight) {
  const PatchShape s = check_patch_args(kOp, cols, index, mask);
  check_like(kOp, cols, "cols", weight, "weight");
  check_rank(kOp, weight, "weight", 2, "[C, K]");
  check_size(kOp, weight, "weight", 0, s.channels, "index.shape[2] (C)");
  check_size(kOp, weight, "weight", 1, s.taps, "cols.shape[2] (K)");
  Tensor out = empty_like_shape(cols, {s.n, s.positions, s.channels});
  if (out.numel() == 0) return out;
  const Tensor c = contiguous(cols), idx = contiguous(index), m = contiguous(mask);
  const Tensor w = contiguous(weight);
  bool bad = false;
  METAIF_DISPATCH_FLOATING(cols.scalar_type(), kOp, [&] {
#if defined(METAIF_WITH_CUDA)
    if (c.is_cuda()) {
      const DeviceGuard guard(c);
      return check_launch(cuda::gather_patch_matmul<scalar_t>(c.mutable_data_ptr<scalar_t>(), idx.mutable_data_ptr<int64_t>(),
                                                              m.mutable_data_ptr<scalar_t>(), w.mutable_data_ptr<scalar_t>(),
                                                              out.mutable_data_ptr<scalar_t>(), s, current_stream(c)));
    }
#endif
    bad = gather_patch_matmul_kernel<scalar_t>(c.mutable_data_ptr<scalar_t>(), idx.mutable_data_ptr<int64_t>(),
                                               m.mutable_data_ptr<scalar_t>(), w.mutable_data_ptr<scalar_t>(),
                                               out.mutable_data_ptr<scalar_t>(), s);
  });
  check_index_range(kOp, bad, s.rows);
  return out;
}

}  // namespace

METAIF_IMPL_ALL_DEVICES(m.impl("gather_patch_matmul", TORCH_BOX(&gather_patch_matmul));)

}  // namespace metaif
