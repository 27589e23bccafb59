// What the .cu files share: reporting a Status from a kernel, the per-task kernels' storage,
// grid sizes. Device code only.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>

#include "metaif/kernels.h"
#include "metaif/team.cuh"

namespace metaif::cuda {

// The first report wins; the fields after `code` are written by the winner only, and read after
// the kernel has finished.
__device__ inline void report(Status* status, const Status& s) {
  if (atomicCAS(&status->code, static_cast<int32_t>(kOk), s.code) == static_cast<int32_t>(kOk)) {
    status->task = s.task;
    status->column = s.column;
    status->iteration = s.iteration;
    status->value = s.value;
    status->extra = s.extra;
    status->scale = s.scale;
  }
}

// The storage of the current block: dynamic shared memory, or its slice of the workspace.
template <typename T>
__device__ T* block_storage(T* workspace, int64_t per_block) {
  extern __shared__ double dynamic_shared[];  // double: aligned for float and double
  return workspace != nullptr ? workspace + blockIdx.x * per_block : reinterpret_cast<T*>(dynamic_shared);
}

inline size_t shared_bytes(const BlockStorage& storage, size_t element_size) {
  return storage.shared ? static_cast<size_t>(storage.per_block) * element_size : 0;
}

// Blocks of `threads` for a grid-stride loop over `count` elements.
inline unsigned grid_for(int64_t count, int threads) {
  const int64_t blocks = (count + threads - 1) / threads;
  return static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 65535 * 32));
}

// Stops the kernel with a device-side error (the context is lost, as after an out-of-range index
// in torch's own CUDA indexing); row < 0 when the value is not known here.
__device__ inline void index_out_of_range(const char* op, int64_t row, int64_t rows) {
  printf("metaif %s: an index value (%lld) is outside [0, cols.shape[1]) = [0, %lld)\n", op,
         static_cast<long long>(row), static_cast<long long>(rows));
  __trap();
}

}  // namespace metaif::cuda
