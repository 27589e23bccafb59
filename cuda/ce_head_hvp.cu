// The ce-head Hessian-vector product: one block per (task, column), the logit-space vector in
// shared memory when it fits (team::CeHeadTaskOp, the operator the solvers apply).
#include "launch.cuh"

namespace metaif::cuda {
namespace {

template <typename T>
__global__ void __launch_bounds__(kTaskThreads)
    ce_head_hvp_kernel(team::CeHeadFamily<T> family, Columns<T> cols, int64_t per_block) {
  __shared__ double reduce[kTaskThreads / team::kWarp];
  const int64_t task = blockIdx.x / cols.batch;
  const auto op = family.task(task);
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * op.dim();
  op.apply(team::BlockTeam(reduce), cols.b + offset, cols.x + offset, 1, block_storage(cols.workspace, per_block));
}

}  // namespace

template <typename T>
cudaError_t ce_head_hvp(const team::CeHeadFamily<T>& family, const Columns<T>& cols, cudaStream_t stream) {
  const BlockStorage storage = BlockStorage::plan(family.task(0).scratch_size(), sizeof(T));
  ce_head_hvp_kernel<T><<<static_cast<unsigned>(cols.tasks * cols.batch), kTaskThreads,
                          shared_bytes(storage, sizeof(T)), stream>>>(family, cols, storage.per_block);
  return cudaGetLastError();
}

template cudaError_t ce_head_hvp<float>(const team::CeHeadFamily<float>&, const Columns<float>&, cudaStream_t);
template cudaError_t ce_head_hvp<double>(const team::CeHeadFamily<double>&, const Columns<double>&, cudaStream_t);

}  // namespace metaif::cuda
