// torch.ops.metaif_emulate: the CUDA kernels' per-task code run on the CPU, for the tests. Each op
// takes the arguments of its torch.ops.metaif namesake and runs, column by column as the CUDA
// kernels do a block per column, the same team algorithm (metaif/task_solvers.cuh,
// metaif/task_operators.cuh) or per-element function (metaif/patch_shape.h) that the kernel runs:
// by one thread (threads = 0) or by a block of `threads` std::threads (thread_team.h). Launch
// configuration and memory placement are all that the GPU adds.
//
// A test-only extension module of its own, metaif._emulate, built with -DMETAIF_TEST_OPS=ON and
// left out of the wheel; importing it registers the ops.
#include "python_module.h"  // first: it includes Python.h

#include <tuple>
#include <vector>

#include "inputs.h"
#include "patch_args.h"
#include "solvers.h"
#include "status_message.h"
#include "metaif/task_solvers.cuh"
#include "metaif/team.cuh"
#include "thread_team.h"

namespace metaif {
namespace {

void check_threads(const char* op, int64_t threads) {
  METAIF_CHECK(threads >= 0 && threads <= 64, op, ": threads must lie in [0, 64] (0: one thread), got ", threads);
}

// column(team, task, column, storage) for every column of a [tasks, batch, dim] problem, each on a
// fresh team; raises the first failure in (task, column) order.
template <typename T, typename Column>
void run_columns(const char* op, int64_t tasks, int64_t batch, int64_t storage, int64_t threads, const Column& column) {
  std::vector<T> buffer(static_cast<size_t>(storage));
  for (int64_t t = 0; t < tasks; ++t) {
    for (int64_t c = 0; c < batch; ++c) {
      const Status s = threads == 0
          ? column(team::SerialTeam{}, t, c, buffer.data())
          : team::run_thread_team(threads, [&](const team::ThreadTeam& team) { return column(team, t, c, buffer.data()); });
      check_status(op, s);
    }
  }
}

template <typename T, typename Family>
Tensor neumann_blocks(const char* op, const Family& family, const Tensor& b,
                           const std::optional<Tensor>& scale, int64_t iters, double rtol, int64_t threads) {
  Tensor x = empty_like_shape(b, b.sizes());
  const int64_t batch = b.size(1), q = family.task(0).dim();
  const T* bp = b.mutable_data_ptr<T>();
  T* xp = x.mutable_data_ptr<T>();
  const double* sp = scale.has_value() ? scale->mutable_data_ptr<double>() : nullptr;
  const int64_t storage = team::neumann_storage(q, 1, family.task(0).scratch_size());
  run_columns<T>(op, b.size(0), batch, storage, threads, [&](const auto& team, int64_t t, int64_t c, T* buf) {
    const int64_t offset = (t * batch + c) * q;
    team::NeumannColumn state;
    return team::neumann_columns(team, family.task(t), t, c, 1, bp + offset, sp == nullptr,
                                 sp != nullptr ? sp[t] : 0.0, iters, rtol, xp + offset, buf, buf + q, buf + 2 * q,
                                 &state);
  });
  return x;
}

template <typename T, typename Family>
std::tuple<Tensor, Tensor, Tensor> cg_blocks(const char* op, const Family& family, const Tensor& b,
                                                          double rtol, int64_t maxiter, int64_t threads) {
  const int64_t tasks = b.size(0), batch = b.size(1), q = family.task(0).dim();
  Tensor x = zeros_like_shape(b, b.sizes());
  Tensor iters = zeros_like_shape(b, {tasks, batch}, ScalarType::Long);
  Tensor resid = zeros_like_shape(b, {tasks, batch});
  const int64_t cap = maxiter < 0 ? q : maxiter;
  const T* bp = b.mutable_data_ptr<T>();
  T* xp = x.mutable_data_ptr<T>();
  int64_t* ip = iters.mutable_data_ptr<int64_t>();
  T* rp = resid.mutable_data_ptr<T>();
  const int64_t storage = team::cg_storage(q, 1, family.task(0).scratch_size());
  run_columns<T>(op, tasks, batch, storage, threads, [&](const auto& team, int64_t t, int64_t c, T* buf) {
    const int64_t offset = (t * batch + c) * q;
    team::CgColumn state;
    return team::cg_columns(team, family.task(t), t, c, 1, bp + offset, rtol, cap, xp + offset, buf, buf + q,
                            buf + 2 * q, buf + 3 * q, buf + 4 * q, buf + 5 * q, &state, ip + t * batch + c,
                            rp + t * batch + c);
  });
  return {x, iters, resid};
}

Tensor neumann_dense(const Tensor& a, const Tensor& b, const std::optional<Tensor>& scale,
                         int64_t iters, double damping, std::optional<double> rtol, int64_t threads) {
  constexpr const char* kOp = "neumann_dense";
  check_dense_inputs(kOp, a, b);
  check_threads(kOp, threads);
  const auto s = neumann_scales(kOp, scale, a.size(0), iters, damping, b);
  const double tol = neumann_rtol(kOp, rtol);
  const Tensor ac = contiguous(a), bc = contiguous(b);
  if (bc.numel() == 0) return empty_like_shape(bc, bc.sizes());
  return METAIF_DISPATCH_FLOATING(bc.scalar_type(), kOp, [&] {
    const team::DenseFamily<scalar_t> family{ac.mutable_data_ptr<scalar_t>(), a.size(1), static_cast<scalar_t>(damping)};
    return neumann_blocks<scalar_t>(kOp, family, bc, s, iters, tol, threads);
  });
}

Tensor neumann_ce_head(const Tensor& feats, const Tensor& probs, const std::optional<Tensor>& weights,
                           const Tensor& b, const std::optional<Tensor>& scale, int64_t iters, double damping,
                           std::optional<double> rtol, int64_t threads) {
  constexpr const char* kOp = "neumann_ce_head";
  const CeHeadInputs in = ce_head_inputs(kOp, feats, probs, weights, b, "b");
  check_singular_damping(kOp, damping);
  check_threads(kOp, threads);
  const auto s = neumann_scales(kOp, scale, in.tasks, iters, damping, b);
  const double tol = neumann_rtol(kOp, rtol);
  const Tensor bc = contiguous(b);
  if (bc.numel() == 0) return empty_like_shape(bc, bc.sizes());
  return METAIF_DISPATCH_FLOATING(bc.scalar_type(), kOp, [&] {
    return neumann_blocks<scalar_t>(kOp, in.family<scalar_t>(damping), bc, s, iters, tol, threads);
  });
}

std::tuple<Tensor, Tensor, Tensor> cg_dense(const Tensor& a, const Tensor& b, double damping,
                                                        double rtol, int64_t maxiter, int64_t threads) {
  constexpr const char* kOp = "cg_dense";
  check_dense_inputs(kOp, a, b);
  check_solver_args(kOp, damping, rtol, maxiter);
  check_threads(kOp, threads);
  const Tensor ac = contiguous(a), bc = contiguous(b);
  return METAIF_DISPATCH_FLOATING(bc.scalar_type(), kOp, [&] {
    const team::DenseFamily<scalar_t> family{ac.mutable_data_ptr<scalar_t>(), a.size(1), static_cast<scalar_t>(damping)};
    return cg_blocks<scalar_t>(kOp, family, bc, rtol, maxiter, threads);
  });
}

std::tuple<Tensor, Tensor, Tensor> cg_ce_head(const Tensor& feats, const Tensor& probs,
                                                          const std::optional<Tensor>& weights,
                                                          const Tensor& b, double damping, double rtol,
                                                          int64_t maxiter, int64_t threads) {
  constexpr const char* kOp = "cg_ce_head";
  const CeHeadInputs in = ce_head_inputs(kOp, feats, probs, weights, b, "b");
  check_solver_args(kOp, damping, rtol, maxiter);
  check_singular_damping(kOp, damping);
  check_threads(kOp, threads);
  const Tensor bc = contiguous(b);
  return METAIF_DISPATCH_FLOATING(bc.scalar_type(), kOp, [&] {
    return cg_blocks<scalar_t>(kOp, in.family<scalar_t>(damping), bc, rtol, maxiter, threads);
  });
}

Tensor ce_head_hvp(const Tensor& feats, const Tensor& probs, const Tensor& vecs, double damping,
                       const std::optional<Tensor>& weights, int64_t threads) {
  constexpr const char* kOp = "ce_head_hvp";
  const CeHeadInputs in = ce_head_inputs(kOp, feats, probs, weights, vecs, "vecs");
  check_finite(kOp, damping, "damping");
  check_threads(kOp, threads);
  const Tensor v = contiguous(vecs);
  Tensor out = empty_like_shape(v, v.sizes());
  const int64_t batch = v.size(1), dim = in.classes * in.d;
  METAIF_DISPATCH_FLOATING(v.scalar_type(), kOp, [&] {
    const auto family = in.family<scalar_t>(damping);
    const scalar_t* vp = v.mutable_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    run_columns<scalar_t>(kOp, in.tasks, batch, in.n * in.classes, threads,
                          [&](const auto& team, int64_t t, int64_t c, scalar_t* z) {
                            const int64_t offset = (t * batch + c) * dim;
                            family.task(t).apply(team, vp + offset, op + offset, 1, z);
                            return failure(kOk, -1);
                          });
  });
  return out;
}

Tensor gather_patch_matmul(const Tensor& cols, const Tensor& index, const Tensor& mask,
                               const Tensor& weight) {
  constexpr const char* kOp = "gather_patch_matmul";
  const PatchShape s = check_patch_args(kOp, cols, index, mask);
  check_like(kOp, cols, "cols", weight, "weight");
  const Tensor c = contiguous(cols), idx = contiguous(index), m = contiguous(mask), w = contiguous(weight);
  Tensor out = empty_like_shape(cols, {s.n, s.positions, s.channels});
  bool in_range = true;
  METAIF_DISPATCH_FLOATING(cols.scalar_type(), kOp, [&] {
    // pointers taken once: through the stable ABI each access is a call into libtorch
    const int64_t* ip = idx.mutable_data_ptr<int64_t>();
    const scalar_t *mp = m.mutable_data_ptr<scalar_t>(), *cp = c.mutable_data_ptr<scalar_t>();
    const scalar_t* wp = w.mutable_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const int64_t count = out.numel();
    for (int64_t at = 0; at < count; ++at) {  // the kernel's thread `at`
      const int64_t row = ip[at];
      if (!arith::row_in_range(row, s)) {
        in_range = false;
        continue;
      }
      op[at] = mp[at] * arith::patch_product(cp, wp, s, at / (s.positions * s.channels), row, at % s.channels);
    }
  });
  check_index_range(kOp, !in_range, s.rows);
  return out;
}

Tensor gather_patch_matmul_t(const Tensor& cols, const Tensor& index, const Tensor& mask,
                                 const Tensor& signal) {
  constexpr const char* kOp = "gather_patch_matmul_t";
  const PatchShape s = check_patch_args(kOp, cols, index, mask);
  check_like(kOp, cols, "cols", signal, "signal");
  const Tensor c = contiguous(cols), idx = contiguous(index), m = contiguous(mask), g = contiguous(signal);
  Tensor total = zeros_like_shape(cols, {s.channels, s.taps}, ScalarType::Double);
  bool in_range = true;
  METAIF_DISPATCH_FLOATING(cols.scalar_type(), kOp, [&] {
    double* tp = total.mutable_data_ptr<double>();
    const scalar_t *cp = c.mutable_data_ptr<scalar_t>(), *mp = m.mutable_data_ptr<scalar_t>();
    const scalar_t* gp = g.mutable_data_ptr<scalar_t>();
    const int64_t* ip = idx.mutable_data_ptr<int64_t>();
    for (int64_t channel = 0; channel < s.channels; ++channel)  // the kernel's thread (channel, tap)
      for (int64_t tap = 0; tap < s.taps; ++tap)
        for (int64_t image = 0; image < s.n; ++image)
          tp[channel * s.taps + tap] += arith::patch_adjoint(cp, ip, mp, gp, s, image, channel, tap, in_range);
  });
  check_index_range(kOp, !in_range, s.rows);
  return torch::stable::to(total, cols.scalar_type());
}

}  // namespace

STABLE_TORCH_LIBRARY(metaif_emulate, m) {
  m.def("neumann_dense(Tensor a, Tensor b, Tensor? scale, int iters, float damping, float? rtol, int threads) "
        "-> Tensor");
  m.def("neumann_ce_head(Tensor feats, Tensor probs, Tensor? weights, Tensor b, Tensor? scale, int iters, "
        "float damping, float? rtol, int threads) -> Tensor");
  m.def("cg_dense(Tensor a, Tensor b, float damping, float rtol, int maxiter, int threads) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("cg_ce_head(Tensor feats, Tensor probs, Tensor? weights, Tensor b, float damping, float rtol, int maxiter, "
        "int threads) -> (Tensor, Tensor, Tensor)");
  m.def("ce_head_hvp(Tensor feats, Tensor probs, Tensor vecs, float damping, Tensor? weights, int threads) -> Tensor");
  m.def("gather_patch_matmul(Tensor cols, Tensor index, Tensor mask, Tensor weight) -> Tensor");
  m.def("gather_patch_matmul_t(Tensor cols, Tensor index, Tensor mask, Tensor signal) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(metaif_emulate, CPU, m) {
  m.impl("neumann_dense", TORCH_BOX(&neumann_dense));
  m.impl("neumann_ce_head", TORCH_BOX(&neumann_ce_head));
  m.impl("cg_dense", TORCH_BOX(&cg_dense));
  m.impl("cg_ce_head", TORCH_BOX(&cg_ce_head));
  m.impl("ce_head_hvp", TORCH_BOX(&ce_head_hvp));
  m.impl("gather_patch_matmul", TORCH_BOX(&gather_patch_matmul));
  m.impl("gather_patch_matmul_t", TORCH_BOX(&gather_patch_matmul_t));
}

}  // namespace metaif

PyMODINIT_FUNC PyInit__emulate(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_emulate", nullptr, -1, nullptr,
                                   nullptr, nullptr, nullptr, nullptr};
  return metaif::create_module(&module_def);
}
