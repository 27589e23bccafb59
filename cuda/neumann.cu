// Batched scaled Neumann series: one block per (task, column) runs the power iteration (when no
// scale is given) and every term in one launch, its vectors in shared memory when they fit.
#include "launch.cuh"
#include "metaif/task_solvers.cuh"

namespace metaif::cuda {
namespace {

template <typename T, typename Family>
__global__ void __launch_bounds__(kTaskThreads)
    neumann_kernel(Family family, Columns<T> cols, const double* scales, int64_t iters, double rtol,
                   int64_t per_block) {
  __shared__ double reduce[kTaskThreads / team::kWarp];
  const int64_t task = blockIdx.x / cols.batch, column = blockIdx.x % cols.batch;
  const auto op = family.task(task);
  const int64_t q = op.dim(), offset = static_cast<int64_t>(blockIdx.x) * q;
  T* r = block_storage(cols.workspace, per_block);
  T* ar = r + q;
  team::NeumannColumn state;
  const Status s = team::neumann_columns(team::BlockTeam(reduce), op, task, column, 1, cols.b + offset,
                                         scales == nullptr, scales != nullptr ? scales[task] : 0.0, iters, rtol,
                                         cols.x + offset, r, ar, ar + q, &state);
  if (s.code != kOk && threadIdx.x == 0) report(cols.status, s);
}

}  // namespace

template <typename T, typename Family>
cudaError_t neumann(const Family& family, const Columns<T>& cols, const double* scales, int64_t iters, double rtol,
                    cudaStream_t stream) {
  const auto op = family.task(0);
  const BlockStorage storage = BlockStorage::plan(team::neumann_storage(op.dim(), 1, op.scratch_size()), sizeof(T));
  neumann_kernel<T, Family><<<static_cast<unsigned>(cols.tasks * cols.batch), kTaskThreads,
                              shared_bytes(storage, sizeof(T)), stream>>>(family, cols, scales, iters, rtol,
                                                                          storage.per_block);
  return cudaGetLastError();
}

#define METAIF_INSTANTIATE(T, Family)                                                                        \
  template cudaError_t neumann<T, team::Family<T>>(const team::Family<T>&, const Columns<T>&, const double*, \
                                                   int64_t, double, cudaStream_t);
METAIF_INSTANTIATE(float, DenseFamily)
METAIF_INSTANTIATE(double, DenseFamily)
METAIF_INSTANTIATE(float, CeHeadFamily)
METAIF_INSTANTIATE(double, CeHeadFamily)
#undef METAIF_INSTANTIATE

}  // namespace metaif::cuda
