// The adjoint of gather_patch_matmul in its weight: grad[c, k] = sum_{n, p} mask[n, p, c]
// signal[n, p, c] cols[n, index[n, p, c], k]. Per image the masked signal is scattered into a
// thread-local [L, C] tile (L2-resident) and contracted with the image's patch rows by one small
// GEMM; images are accumulated in double. CUDA: cuda/gather_patch_matmul_t.cu.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <vector>

#include "blas.h"
#include "cuda_support.h"
#include "patch_args.h"
#include "registration.h"

namespace metaif {
namespace {

constexpr const char* kOp = "gather_patch_matmul_t";

// Returns whether some index was out of range (those entries are skipped).
template <typename T>
bool gather_patch_matmul_t_kernel(const T* cols, const int64_t* index, const T* mask, const T* signal,
                                  double* total, const PatchShape& s) {
  const int64_t block = s.taps * s.channels;
  std::vector<double> per_thread(static_cast<size_t>(at::get_num_threads() * block), 0.0);
  std::atomic<bool> bad{false};
  at::parallel_for(0, s.n, 1, [&](int64_t begin, int64_t end) {
    double* acc = per_thread.data() + at::get_thread_num() * block;
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
  });
  for (size_t t = 0; t < per_thread.size(); t += static_cast<size_t>(block))
    for (int64_t j = 0; j < block; ++j) total[j] += per_thread[t + j];
  return bad;
}

at::Tensor gather_patch_matmul_t(const at::Tensor& cols, const at::Tensor& index, const at::Tensor& mask,
                                     const at::Tensor& signal) {
  const PatchShape s = check_patch_args(kOp, cols, index, mask);
  check_like(kOp, cols, "cols", signal, "signal");
  TORCH_CHECK(signal.sizes() == index.sizes(), kOp, ": signal must have the shape of index ", index.sizes(),
              ", got ", signal.sizes());
  at::Tensor total = at::zeros({s.taps, s.channels}, cols.options().dtype(at::kDouble));
  if (index.numel() > 0 && s.taps > 0) {
    const at::Tensor c = cols.contiguous(), idx = index.contiguous(), m = mask.contiguous();
    const at::Tensor g = signal.contiguous();
    bool bad = false;
    AT_DISPATCH_FLOATING_TYPES(cols.scalar_type(), kOp, [&] {
#if defined(METAIF_WITH_CUDA)
      if (c.is_cuda()) {
        const c10::cuda::CUDAGuard guard(c.device());
        return check_launch(cuda::gather_patch_matmul_t<scalar_t>(c.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(),
                                                                  m.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(),
                                                                  total.data_ptr<double>(), s, current_stream()));
      }
#endif
      bad = gather_patch_matmul_t_kernel<scalar_t>(c.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(),
                                             m.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(),
                                             total.data_ptr<double>(), s);
    });
    check_index_range(kOp, bad, s.rows);
  }
  return total.t().to(cols.scalar_type()).contiguous();
}

}  // namespace

METAIF_IMPL_ALL_DEVICES(m.impl("gather_patch_matmul_t", &gather_patch_matmul_t);)

}  // namespace metaif
