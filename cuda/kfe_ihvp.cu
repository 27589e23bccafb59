// The eigenvalue division of the Kronecker-factored inverse, between the rotations into and out of
// the eigenbasis that torch.matmul runs on cuBLAS: one elementwise pass over the rotated batch.
#include "launch.cuh"

namespace metaif::cuda {
namespace {

template <typename T>
__global__ void kfe_scale_kernel(T* rotated, const T* eigvals, T damping, int64_t count, int64_t block,
                                 Status* status) {
  const int64_t total = count * block;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const T eigenvalue = eigvals[i % block];
    if (!arith::kfe_invertible(eigenvalue, damping)) {
      report(status, failure(kNotInvertible, -1, -1, -1, static_cast<double>(eigenvalue) + damping, damping));
      continue;
    }
    rotated[i] = arith::kfe_scale(rotated[i], eigenvalue, damping);
  }
}

}  // namespace

template <typename T>
cudaError_t kfe_scale(T* rotated, const T* eigvals, T damping, int64_t count, int64_t block, Status* status,
                      cudaStream_t stream) {
  constexpr int kThreads = 256;
  kfe_scale_kernel<T><<<grid_for(count * block, kThreads), kThreads, 0, stream>>>(rotated, eigvals, damping, count,
                                                                                 block, status);
  return cudaGetLastError();
}

template cudaError_t kfe_scale<float>(float*, const float*, float, int64_t, int64_t, Status*, cudaStream_t);
template cudaError_t kfe_scale<double>(double*, const double*, double, int64_t, int64_t, Status*, cudaStream_t);

}  // namespace metaif::cuda
