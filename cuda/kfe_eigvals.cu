// EK-FAC corrected eigenvalues for several positions per example: the rotated per-example
// gradients (a batched cuBLAS product: torch.matmul through the stable ABI) are squared, weighted and summed over examples in
// one pass, a thread per eigenvalue (coalesced along the tiles), accumulated in double.
#include "launch.cuh"

namespace metaif::cuda {
namespace {

template <typename T>
__global__ void weighted_square_sum_kernel(const T* tiles, const T* weights, int64_t count, int64_t block,
                                           double* total) {
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < block;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double acc = 0.0;
    for (int64_t i = 0; i < count; ++i) acc += static_cast<double>(arith::weighted_square(tiles[i * block + k], weights[i]));
    total[k] += acc;
  }
}

}  // namespace

template <typename T>
cudaError_t weighted_square_sum(const T* tiles, const T* weights, int64_t count, int64_t block, double* total,
                                cudaStream_t stream) {
  constexpr int kThreads = 256;
  weighted_square_sum_kernel<T><<<grid_for(block, kThreads), kThreads, 0, stream>>>(tiles, weights, count, block,
                                                                                   total);
  return cudaGetLastError();
}

template cudaError_t weighted_square_sum<float>(const float*, const float*, int64_t, int64_t, double*, cudaStream_t);
template cudaError_t weighted_square_sum<double>(const double*, const double*, int64_t, int64_t, double*,
                                                 cudaStream_t);

}  // namespace metaif::cuda
