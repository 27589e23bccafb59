// One thread per element of an order-independent sum's value (include/metaif/exact.h).
#include "launch.cuh"
#include "metaif/exact.h"

namespace metaif::cuda {
namespace {

template <typename T>
__global__ void exact_value_kernel(int64_t* limbs, const int32_t* top, T* out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = static_cast<T>(exact::value(top + i, limbs + i, n));
}

}  // namespace

template <typename T>
cudaError_t exact_value(int64_t* limbs, const int32_t* top, T* out, int64_t n, cudaStream_t stream) {
  constexpr int kThreads = 256;
  exact_value_kernel<T><<<grid_for(n, kThreads), kThreads, 0, stream>>>(limbs, top, out, n);
  return cudaGetLastError();
}

template cudaError_t exact_value<float>(int64_t*, const int32_t*, float*, int64_t, cudaStream_t);
template cudaError_t exact_value<double>(int64_t*, const int32_t*, double*, int64_t, cudaStream_t);

}  // namespace metaif::cuda
