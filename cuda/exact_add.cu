// One thread per element of an order-independent sum (include/metaif/exact.h).
#include "launch.cuh"
#include "metaif/exact.h"

namespace metaif::cuda {
namespace {

template <typename T>
__global__ void exact_add_kernel(int64_t* limbs, int32_t* top, const T* x, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    exact::add(static_cast<double>(x[i]), top + i, limbs + i, n);
}

}  // namespace

template <typename T>
cudaError_t exact_add(int64_t* limbs, int32_t* top, const T* x, int64_t n, cudaStream_t stream) {
  constexpr int kThreads = 256;
  exact_add_kernel<T><<<grid_for(n, kThreads), kThreads, 0, stream>>>(limbs, top, x, n);
  return cudaGetLastError();
}

template cudaError_t exact_add<float>(int64_t*, int32_t*, const float*, int64_t, cudaStream_t);
template cudaError_t exact_add<double>(int64_t*, int32_t*, const double*, int64_t, cudaStream_t);

}  // namespace metaif::cuda
