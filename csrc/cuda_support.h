// What the CUDA implementations in csrc/<op>.cpp share: the current stream, launch-error checks,
// per-block workspaces and the device Status an op reads back once, after its kernels.
#pragma once

#if defined(METAIF_WITH_CUDA)

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>

#include "metaif/kernels.h"
#include "status_message.h"

namespace metaif {

static_assert(sizeof(Status) == 56, "Status must have one layout on the host and on the device");

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }

inline void check_launch(cudaError_t error) { C10_CUDA_CHECK(error); }

// A zeroed (kOk) Status on the device of `like`; check() copies it back (a small copy that waits
// for the kernels before it: one synchronisation per op call, never one per iteration) and raises
// what it reports.
class DeviceStatus {
 public:
  explicit DeviceStatus(const at::Tensor& like)
      : buffer_(at::zeros({static_cast<int64_t>(sizeof(Status))}, like.options().dtype(at::kByte))) {}

  Status* get() const { return reinterpret_cast<Status*>(buffer_.data_ptr()); }

  void check(const char* op) const {
    Status host{};
    c10::cuda::memcpy_and_sync(&host, buffer_.data_ptr(), sizeof(Status), cudaMemcpyDeviceToHost, current_stream());
    check_status(op, host);
  }

 private:
  at::Tensor buffer_;
};

// Global per-block storage for `blocks` blocks when it does not fit in shared memory (else an
// undefined tensor: the kernel uses shared memory).
inline at::Tensor block_workspace(const cuda::BlockStorage& storage, int64_t blocks, const at::Tensor& like) {
  return storage.shared ? at::Tensor() : at::empty({blocks * storage.per_block}, like.options());
}

template <typename T>
T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

}  // namespace metaif

#endif  // METAIF_WITH_CUDA
