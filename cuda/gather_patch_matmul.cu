// A layer's output read only where a max-pool picked it: a thread per gathered place computes the
// one dot product it needs from the image's cached patch row, so the full layer output is never
// formed.
#include "launch.cuh"

namespace metaif::cuda {
namespace {

template <typename T>
__global__ void gather_patch_matmul_kernel(const T* cols, const int64_t* index, const T* mask, const T* weight,
                                           T* out, PatchShape s) {
  const int64_t total = s.n * s.positions * s.channels;
  for (int64_t at = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; at < total;
       at += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = index[at];
    if (!arith::row_in_range(row, s)) index_out_of_range("gather_patch_matmul", row, s.rows);
    const int64_t image = at / (s.positions * s.channels), channel = at % s.channels;
    out[at] = mask[at] * arith::patch_product(cols, weight, s, image, row, channel);
  }
}

}  // namespace

template <typename T>
cudaError_t gather_patch_matmul(const T* cols, const int64_t* index, const T* mask, const T* weight, T* out,
                                const PatchShape& shape, cudaStream_t stream) {
  constexpr int kThreads = 256;
  gather_patch_matmul_kernel<T><<<grid_for(shape.n * shape.positions * shape.channels, kThreads), kThreads, 0,
                                  stream>>>(cols, index, mask, weight, out, shape);
  return cudaGetLastError();
}

template cudaError_t gather_patch_matmul<float>(const float*, const int64_t*, const float*, const float*, float*,
                                                const PatchShape&, cudaStream_t);
template cudaError_t gather_patch_matmul<double>(const double*, const int64_t*, const double*, const double*, double*,
                                                 const PatchShape&, cudaStream_t);

}  // namespace metaif::cuda
