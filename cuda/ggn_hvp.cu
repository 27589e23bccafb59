// The elementwise middle of the Gauss-Newton product (between the two batched GEMMs that torch.matmul
// runs on cuBLAS): each example's logit-space vector times the softmax cross-entropy Hessian.
#include "launch.cuh"

namespace metaif::cuda {
namespace {

template <typename T>
__global__ void softmax_hessian_rows_kernel(T* z, const T* probs, const T* weights, int64_t tasks, int64_t batch,
                                            int64_t n, int64_t classes) {
  const int64_t rows = tasks * batch * n;
  for (int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; row < rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t example = row % n, task = row / (batch * n);
    const int64_t at = task * n + example;
    arith::softmax_ce_hessian_inplace(probs + at * classes, weights[at], z + row * classes, classes);
  }
}

}  // namespace

template <typename T>
cudaError_t softmax_hessian_rows(T* z, const T* probs, const T* weights, int64_t tasks, int64_t batch, int64_t n,
                                 int64_t classes, cudaStream_t stream) {
  constexpr int kThreads = 256;
  softmax_hessian_rows_kernel<T><<<grid_for(tasks * batch * n, kThreads), kThreads, 0, stream>>>(
      z, probs, weights, tasks, batch, n, classes);
  return cudaGetLastError();
}

template cudaError_t softmax_hessian_rows<float>(float*, const float*, const float*, int64_t, int64_t, int64_t,
                                                 int64_t, cudaStream_t);
template cudaError_t softmax_hessian_rows<double>(double*, const double*, const double*, int64_t, int64_t, int64_t,
                                                  int64_t, cudaStream_t);

}  // namespace metaif::cuda
