// The adjoint of gather_patch_matmul in its weight: grad[c, k] = sum_{n, p} mask[n, p, c]
// signal[n, p, c] cols[n, index[n, p, c], k]. Per image the masked signal is scattered into a
// thread-local [L, C] tile (L2-resident) and contracted with the image's patch rows by one small
// GEMM; images are accumulated in double. CUDA: cuda/gather_patch_matmul_t.cu.
#include <algorithm>
#include <atomic>
#include <mutex>
#include <vector>

#include "blas.h"
#include "cuda_support.h"
#include "patch_args.h"
#include "registration.h"

namespace metaif {
namespace {

constexpr const char* kOp = "gather_patch_matmul_t";

// Returns whether some index was out of range (those entries are skipped). Each range of images
// that parallel_for hands out is accumulated on its own; the ranges are added in image order, so
// the sum depends only on the (static) split, not on which thread ran first.
template <typename T>
bool gather_patch_matmul_t_kernel(const T* cols, const int64_t* index, const T* mask, const T* signal,
                                  double* total, const PatchShape& s) {
  const int64_t block = s.taps * s.channels;
  std::vector<std::pair<int64_t, std::vector<double>>> ranges;
  std::mutex ranges_mutex;
  std::atomic<bool> bad{false};
  torch::stable::parallel_for(0, s.n, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> sums(static_cast<size_t>(block), 0.0);
    double* acc = sums.data();
    std::vector<T> tile(static_cast<size_t>(s.rows * s.channels), T(0)), partial(static_cast<size_t>(block));
    for (int64_t i = begin; i < end; ++i) {
      T* t = tile.data();
      if (!for_each_gathered(index, s, i, [&](int64_t at, int64_t slot) { t[slot] += mask[at] * signal[at]; }))
        bad = true;
      // partial [K, C] = cols_i^T [K, L] @ tile [L, C]
      blas::gemm<T>(true, false, s.taps, s.channels, s.rows, T(1), cols + i * s.rows * s.taps, s.taps,
                    tile.data(), s.channels, T(0), partial.data(), s.channels);
      for (int64_t j = 0; j < block; ++j) acc[j] += static_cast<double>(partial[j]);
      for_each_gathered(index, s, i, [&](int64_t, int64_t slot) { t[slot] = T(0); });  // reset what was written
    }
    const std::lock_guard<std::mutex> lock(ranges_mutex);
    ranges.emplace_back(begin, std::move(sums));
  });
  std::sort(ranges.begin(), ranges.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (const auto& range : ranges)
    for (int64_t j = 0; j < block; ++j) total[j] += range.second[static_cast<size_t>(j)];
  return bad;
}

Tensor gather_patch_matmul_t(const Tensor& cols, const Tensor& index, const Tensor& mask,
                                     const Tensor& signal) {
  const PatchShape s = check_patch_args(kOp, cols, index, mask);
  check_like(kOp, cols, "cols", signal, "signal");
  METAIF_CHECK(signal.sizes() == index.sizes(), kOp, ": signal must have the shape of index ",
               Dims{index.sizes()}, ", got ", Dims{signal.sizes()});
  Tensor total = zeros_like_shape(cols, {s.taps, s.channels}, ScalarType::Double);
  if (index.numel() > 0 && s.taps > 0) {
    const Tensor c = contiguous(cols), idx = contiguous(index), m = contiguous(mask);
    const Tensor g = contiguous(signal);
    bool bad = false;
    METAIF_DISPATCH_FLOATING(cols.scalar_type(), kOp, [&] {
#if defined(METAIF_WITH_CUDA)
      if (c.is_cuda()) {
        const DeviceGuard guard(c);
        return check_launch(cuda::gather_patch_matmul_t<scalar_t>(c.mutable_data_ptr<scalar_t>(), idx.mutable_data_ptr<int64_t>(),
                                                                  m.mutable_data_ptr<scalar_t>(), g.mutable_data_ptr<scalar_t>(),
                                                                  total.mutable_data_ptr<double>(), s, current_stream(c)));
      }
#endif
      bad = gather_patch_matmul_t_kernel<scalar_t>(c.mutable_data_ptr<scalar_t>(), idx.mutable_data_ptr<int64_t>(),
                                             m.mutable_data_ptr<scalar_t>(), g.mutable_data_ptr<scalar_t>(),
                                             total.mutable_data_ptr<double>(), s);
    });
    check_index_range(kOp, bad, s.rows);
  }
  return contiguous(torch::stable::to(torch::stable::transpose(total, 0, 1), cols.scalar_type()));
}

}  // namespace

METAIF_IMPL_ALL_DEVICES(m.impl("gather_patch_matmul_t", TORCH_BOX(&gather_patch_matmul_t));)

}  // namespace metaif
