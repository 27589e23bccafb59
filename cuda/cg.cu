// Batched conjugate gradient: one block per (task, column) runs every iteration in one launch,
// its vectors in shared memory when they fit.
#include "launch.cuh"
#include "metaif/task_solvers.cuh"

namespace metaif::cuda {
namespace {

template <typename T, typename Family>
__global__ void __launch_bounds__(kTaskThreads)
    cg_kernel(Family family, Columns<T> cols, double rtol, int64_t maxiter, int64_t* iters, T* resid,
              int64_t per_block) {
  __shared__ double reduce[kTaskThreads / team::kWarp];
  const int64_t task = blockIdx.x / cols.batch, column = blockIdx.x % cols.batch;
  const auto op = family.task(task);
  const int64_t q = op.dim(), offset = static_cast<int64_t>(blockIdx.x) * q;
  T* r = block_storage(cols.workspace, per_block);
  T* p = r + q;
  T* ap = p + q;
  T* best = ap + q;
  T* product = best + q;
  team::CgColumn state;
  const Status s = team::cg_columns(team::BlockTeam(reduce), op, task, column, 1, cols.b + offset, rtol, maxiter,
                                    cols.x + offset, r, p, ap, best, product, product + q, &state,
                                    iters + blockIdx.x, resid + blockIdx.x);
  if (s.code != kOk && threadIdx.x == 0) report(cols.status, s);
}

}  // namespace

template <typename T, typename Family>
cudaError_t cg(const Family& family, const Columns<T>& cols, double rtol, int64_t maxiter, int64_t* iters, T* resid,
               cudaStream_t stream) {
  const auto op = family.task(0);
  const BlockStorage storage = BlockStorage::plan(team::cg_storage(op.dim(), 1, op.scratch_size()), sizeof(T));
  cg_kernel<T, Family><<<static_cast<unsigned>(cols.tasks * cols.batch), kTaskThreads,
                         shared_bytes(storage, sizeof(T)), stream>>>(family, cols, rtol, maxiter, iters, resid,
                                                                     storage.per_block);
  return cudaGetLastError();
}

#define METAIF_INSTANTIATE(T, Family)                                                                           \
  template cudaError_t cg<T, team::Family<T>>(const team::Family<T>&, const Columns<T>&, double, int64_t, int64_t*, \
                                              T*, cudaStream_t);
METAIF_INSTANTIATE(float, DenseFamily)
METAIF_INSTANTIATE(double, DenseFamily)
METAIF_INSTANTIATE(float, CeHeadFamily)
METAIF_INSTANTIATE(double, CeHeadFamily)
#undef METAIF_INSTANTIATE

}  // namespace metaif::cuda
