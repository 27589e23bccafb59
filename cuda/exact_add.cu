// One thread per element of an order-independent sum (include/metaif/exact.h); for an addition of
// rows, which may repeat, one thread per column that adds the rows in their order.
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

template <typename T>
__global__ void exact_add_rows_kernel(int64_t* limbs, int32_t* top, const T* x, exact::Rows rows, int64_t n) {
  const int64_t height = n / rows.width;
  for (int64_t column = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; column < rows.width;
       column += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    for (int64_t k = 0; k < rows.count; ++k) {
      const int64_t row = rows.index[k];
      if (row < 0 || row >= height) continue;  // checked by the caller; never written out of bounds
      const int64_t i = row * rows.width + column;
      exact::add(static_cast<double>(x[i]), top + i, limbs + i, n);
    }
  }
}

}  // namespace

template <typename T>
cudaError_t exact_add(int64_t* limbs, int32_t* top, const T* x, const exact::Rows& rows, int64_t n,
                      cudaStream_t stream) {
  constexpr int kThreads = 256;
  if (rows.index == nullptr)
    exact_add_kernel<T><<<grid_for(n, kThreads), kThreads, 0, stream>>>(limbs, top, x, n);
  else
    exact_add_rows_kernel<T><<<grid_for(rows.width, kThreads), kThreads, 0, stream>>>(limbs, top, x, rows, n);
  return cudaGetLastError();
}

template cudaError_t exact_add<float>(int64_t*, int32_t*, const float*, const exact::Rows&, int64_t, cudaStream_t);
template cudaError_t exact_add<double>(int64_t*, int32_t*, const double*, const exact::Rows&, int64_t, cudaStream_t);

}  // namespace metaif::cuda
