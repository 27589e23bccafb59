// The adjoint of gather_patch_matmul in its weight. A block takes a few images; its threads own
// (channel, tap) pairs (consecutive taps: coalesced patch reads) and sum over the images' gathered
// places in double, then add their partial sums into the total with one atomic each.
#include "launch.cuh"

namespace metaif::cuda {
namespace {

constexpr int64_t kImagesPerBlock = 8;

template <typename T>
__global__ void gather_patch_matmul_t_kernel(const T* cols, const int64_t* index, const T* mask, const T* signal,
                                             double* total, PatchShape s) {
  const int64_t first = blockIdx.x * kImagesPerBlock;
  const int64_t last = first + kImagesPerBlock < s.n ? first + kImagesPerBlock : s.n;
  for (int64_t e = threadIdx.x; e < s.channels * s.taps; e += blockDim.x) {
    const int64_t channel = e / s.taps, tap = e % s.taps;
    double acc = 0.0;
    bool in_range = true;
    for (int64_t image = first; image < last; ++image)
      acc += arith::patch_adjoint(cols, index, mask, signal, s, image, channel, tap, in_range);
    if (!in_range) index_out_of_range("gather_patch_matmul_t", -1, s.rows);
    atomicAdd(total + tap * s.channels + channel, acc);
  }
}

}  // namespace

template <typename T>
cudaError_t gather_patch_matmul_t(const T* cols, const int64_t* index, const T* mask, const T* signal, double* total,
                                  const PatchShape& shape, cudaStream_t stream) {
  const int64_t blocks = (shape.n + kImagesPerBlock - 1) / kImagesPerBlock;
  gather_patch_matmul_t_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(cols, index, mask, signal,
                                                                                      total, shape);
  return cudaGetLastError();
}

template cudaError_t gather_patch_matmul_t<float>(const float*, const int64_t*, const float*, const float*, double*,
                                                  const PatchShape&, cudaStream_t);
template cudaError_t gather_patch_matmul_t<double>(const double*, const int64_t*, const double*, const double*,
                                                   double*, const PatchShape&, cudaStream_t);

}  // namespace metaif::cuda
