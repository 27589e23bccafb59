// What the CUDA implementations in csrc/<op>.cpp share: the device guard, the current stream,
// launch-error checks, per-block workspaces and the device Status an op reads back once, after its
// kernels. Through the stable ABI and the CUDA runtime only.
#pragma once

#if defined(METAIF_WITH_CUDA)

#include <cuda_runtime_api.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>

#include "metaif/kernels.h"
#include "status_message.h"
#include "tensor.h"

namespace metaif {

static_assert(sizeof(Status) == 56, "Status must have one layout on the host and on the device");

// Makes the device of `t` current for the kernels and cuBLAS calls of one op.
class DeviceGuard {
 public:
  explicit DeviceGuard(const Tensor& t) : guard_(t.get_device_index()) {}

 private:
  torch::stable::accelerator::DeviceGuard guard_;
};

inline cudaStream_t current_stream(const Tensor& on) {
  void* stream = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(on.get_device_index(), &stream));
  return static_cast<cudaStream_t>(stream);
}

inline void check_launch(cudaError_t error) { STD_CUDA_CHECK(error); }

// A zeroed (kOk) Status on the device of `like`; check() copies it back (a small copy that waits
// for the kernels before it: one synchronisation per op call, never one per iteration) and raises
// what it reports.
class DeviceStatus {
 public:
  explicit DeviceStatus(const Tensor& like)
      : buffer_(zeros_like_shape(like, {static_cast<int64_t>(sizeof(Status))}, ScalarType::Byte)) {}

  Status* get() const { return reinterpret_cast<Status*>(buffer_.data_ptr()); }

  void check(const char* op) const {
    Status host{};
    const cudaStream_t stream = current_stream(buffer_);
    check_launch(cudaMemcpyAsync(&host, buffer_.data_ptr(), sizeof(Status), cudaMemcpyDeviceToHost, stream));
    check_launch(cudaStreamSynchronize(stream));
    check_status(op, host);
  }

 private:
  Tensor buffer_;
};

// Global per-block storage for `blocks` blocks when it does not fit in shared memory (else an
// undefined tensor: the kernel uses shared memory).
inline Tensor block_workspace(const cuda::BlockStorage& storage, int64_t blocks, const Tensor& like) {
  return storage.shared ? Tensor() : empty_like_shape(like, {blocks * storage.per_block});
}

}  // namespace metaif

#endif  // METAIF_WITH_CUDA
