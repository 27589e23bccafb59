// Launchers of the CUDA kernels, defined in cuda/<op>.cu and instantiated there for float and
// double, called by the torch-facing code in csrc/<op>.cpp. Raw pointers, the caller's stream and
// a device Status to report into: no torch types, so that nvcc compiles cuda/ alone. Each returns
// the launch's cudaError_t (the caller checks it).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "metaif/exact.h"
#include "metaif/patch_shape.h"
#include "metaif/status.h"
#include "metaif/task_operators.cuh"
#include "metaif/task_solvers.cuh"

namespace metaif::cuda {

// Threads per block of the per-task kernels: a whole number of warps (team::BlockTeam).
constexpr int kTaskThreads = 256;
// Dynamic shared memory a block may use without opting in.
constexpr int64_t kSharedLimit = 48 * 1024;

// A block's storage of `elements` values of `element_size` bytes: in shared memory when it fits,
// else in a global workspace of per_block elements for every block, which the caller allocates.
struct BlockStorage {
  int64_t per_block;
  bool shared;

  static BlockStorage plan(int64_t elements, int64_t element_size) {
    return {elements, elements * element_size <= kSharedLimit};
  }
};

// Per-column outputs of a batched solve over tasks x batch columns, each of `dim` values.
template <typename T>
struct Columns {
  int64_t tasks, batch;
  const T* b;    // [tasks, batch, dim]
  T* x;          // [tasks, batch, dim]
  T* workspace;  // tasks * batch * per_block values, or nullptr when the storage is shared
  Status* status;
};

// x = (A + damping I)^{-1} b by the scaled Neumann series; scales [tasks] (nullptr: estimated).
template <typename T, typename Family>
cudaError_t neumann(const Family& family, const Columns<T>& cols, const double* scales, int64_t iters, double rtol,
                    cudaStream_t stream);

// x by conjugate gradient; iters / resid [tasks, batch].
template <typename T, typename Family>
cudaError_t cg(const Family& family, const Columns<T>& cols, double rtol, int64_t maxiter, int64_t* iters, T* resid,
               cudaStream_t stream);

// out = (H + damping I) vecs of the ce-head operator (cols.b = vecs, cols.x = out).
template <typename T>
cudaError_t ce_head_hvp(const team::CeHeadFamily<T>& family, const Columns<T>& cols, cudaStream_t stream);

// z [tasks, batch, n, C] <- w (diag p - p p^T) z per example, in place; probs [tasks, n, C],
// weights [tasks, n].
template <typename T>
cudaError_t softmax_hessian_rows(T* z, const T* probs, const T* weights, int64_t tasks, int64_t batch, int64_t n,
                                 int64_t classes, cudaStream_t stream);

// rotated [count, block] <- rotated / (eigvals + damping), eigvals [block]; reports kNotInvertible.
template <typename T>
cudaError_t kfe_scale(T* rotated, const T* eigvals, T damping, int64_t count, int64_t block, Status* status,
                      cudaStream_t stream);

// total [block] += sum_i weights[i] * tiles[i, :]^2 (accumulated in double), tiles [count, block].
template <typename T>
cudaError_t weighted_square_sum(const T* tiles, const T* weights, int64_t count, int64_t block, double* total,
                                cudaStream_t stream);

// out [n, P, C] = mask * (cols[n, index] . weight[c]); an index out of range stops the kernel
// with a device-side error, as torch's own indexing does.
template <typename T>
cudaError_t gather_patch_matmul(const T* cols, const int64_t* index, const T* mask, const T* weight, T* out,
                                const PatchShape& shape, cudaStream_t stream);

// total [K, C] += sum_{n, p} mask signal cols[n, index] (accumulated in double).
template <typename T>
cudaError_t gather_patch_matmul_t(const T* cols, const int64_t* index, const T* mask, const T* signal, double* total,
                                  const PatchShape& shape, cudaStream_t stream);

// Adds x [n] (finite elements; the others are skipped), or only its `rows` (rows.index on the device;
// rows outside [0, n / rows.width) are skipped), into an order-independent sum held as limbs
// [kWindows, n] and top windows [n] (metaif/exact.h), in place.
template <typename T>
cudaError_t exact_add(int64_t* limbs, int32_t* top, const T* x, const exact::Rows& rows, int64_t n,
                      cudaStream_t stream);

// out [n] = the sums held by limbs [kWindows, n] and top [n], each rounded once (the limbs carried
// in place).
template <typename T>
cudaError_t exact_value(int64_t* limbs, const int32_t* top, T* out, int64_t n, cudaStream_t stream);

}  // namespace metaif::cuda
