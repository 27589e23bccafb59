// Kronecker-factored eigenbasis inverse (EK-FAC / K-FAC iHVP), batched over vectors:
//   out[b] = q_out @ ((q_out^T @ grads[b] @ q_in) / (eigvals + damping)) @ q_in^T.
// The two products with q_in run as one GEMM over all rows of the batch; the q_out products
// and the eigenvalue division run per matrix while it is hot in cache.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "blas.h"
#include "checks.h"

namespace metaif {
namespace {

constexpr const char* kOp = "kfe_ihvp";

void check_kfe_args(const at::Tensor& grads, const at::Tensor& q_out, const at::Tensor& q_in,
                    const at::Tensor& eigvals, double damping) {
  check_min_rank(kOp, grads, "grads", 2, "[..., d_out, d_in]");
  check_floating(kOp, grads, "grads");
  check_cpu(kOp, grads, "grads");
  check_like(kOp, grads, "grads", q_out, "q_out");
  check_like(kOp, grads, "grads", q_in, "q_in");
  check_like(kOp, grads, "grads", eigvals, "eigvals");
  const int64_t d_out = grads.size(-2), d_in = grads.size(-1);
  check_square(kOp, q_out, "q_out", d_out, "[d_out, d_out]", "grads.shape[-2] (d_out)");
  check_square(kOp, q_in, "q_in", d_in, "[d_in, d_in]", "grads.shape[-1] (d_in)");
  check_rank(kOp, eigvals, "eigvals", 2, "[d_out, d_in]");
  check_size(kOp, eigvals, "eigvals", 0, d_out, "grads.shape[-2] (d_out)");
  check_size(kOp, eigvals, "eigvals", 1, d_in, "grads.shape[-1] (d_in)");
  check_nonnegative(kOp, damping, "damping");
}

// inv = 1 / (eigvals + damping), validated through inv itself (positive and finite exactly
// when eigvals + damping is), in branch-free loops that vectorise.
template <typename T>
void inverse_eigenvalues(const T* eig, double damping, int64_t count, T* inv) {
  const T shift = static_cast<T>(damping);
  for (int64_t i = 0; i < count; ++i) inv[i] = T(1) / (eig[i] + shift);
  const T inf = std::numeric_limits<T>::infinity();
  int bad = 0;
  for (int64_t i = 0; i < count; ++i) bad |= !(inv[i] > T(0)) | !(inv[i] < inf);
  if (bad) {
    double smallest = std::numeric_limits<double>::infinity();
    for (int64_t i = 0; i < count; ++i) smallest = std::fmin(smallest, static_cast<double>(eig[i]) + damping);
    TORCH_CHECK(false, kOp, ": eigvals + damping must be positive and finite everywhere, its ",
                "minimum is ", smallest, "; raise damping (got ", damping,
                ") or check eigvals for NaN/Inf");
  }
}

// A square basis as a BLAS operand, copied only when it is neither row- nor column-major.
struct Basis {
  at::Tensor storage;
  bool column_major;

  explicit Basis(const at::Tensor& q)
      : storage(q.is_contiguous() || !q.t().is_contiguous() ? q.contiguous() : q),
        column_major(!q.is_contiguous() && q.t().is_contiguous()) {}

  template <typename T>
  blas::Operand<T> operand() const {
    return {storage.data_ptr<T>(), storage.size(0), column_major};
  }
};

// workspace holds (batch + 2) * d_out * d_in elements: inv, one tile, and the batch.
template <typename T>
void kfe_ihvp_kernel(const T* grads, blas::Operand<T> q_out, blas::Operand<T> q_in, const T* eig,
                     double damping, T* out, T* workspace, int64_t batch, int64_t d_out,
                     int64_t d_in) {
  const int64_t rows = batch * d_out, block = d_out * d_in;
  T* inv = workspace;
  T* tile = workspace + block;
  T* work = workspace + 2 * block;
  inverse_eigenvalues(eig, damping, block, inv);
  // work = grads @ q_in over all batch rows at once.
  blas::gemm<T>(false, q_in.trans, rows, d_in, d_in, T(1), grads, d_in, q_in.data, q_in.ld, T(0),
                work, d_in);
  for (int64_t b = 0; b < batch; ++b) {
    T* w = work + b * block;
    blas::gemm<T>(!q_out.trans, false, d_out, d_in, d_out, T(1), q_out.data, q_out.ld, w, d_in,
                  T(0), tile, d_in);
    for (int64_t i = 0; i < block; ++i) tile[i] *= inv[i];
    blas::gemm<T>(q_out.trans, false, d_out, d_in, d_out, T(1), q_out.data, q_out.ld, tile, d_in,
                  T(0), w, d_in);
  }
  blas::gemm<T>(false, !q_in.trans, rows, d_in, d_in, T(1), work, d_in, q_in.data, q_in.ld, T(0),
                out, d_in);
}

at::Tensor kfe_ihvp_cpu(const at::Tensor& grads, const at::Tensor& q_out, const at::Tensor& q_in,
                        const at::Tensor& eigvals, double damping) {
  check_kfe_args(grads, q_out, q_in, eigvals, damping);
  const int64_t d_out = grads.size(-2), d_in = grads.size(-1);
  at::Tensor out = at::empty(grads.sizes(), grads.options());
  if (out.numel() == 0) return out;
  const int64_t batch = grads.numel() / (d_out * d_in);
  const at::Tensor g = grads.contiguous(), eig = eigvals.contiguous();
  const Basis qo(q_out), qi(q_in);
  at::Tensor workspace = at::empty({(batch + 2) * d_out * d_in}, g.options());
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), kOp, [&] {
    kfe_ihvp_kernel<scalar_t>(g.data_ptr<scalar_t>(), qo.operand<scalar_t>(),
                              qi.operand<scalar_t>(), eig.data_ptr<scalar_t>(), damping,
                              out.data_ptr<scalar_t>(), workspace.data_ptr<scalar_t>(), batch,
                              d_out, d_in);
  });
  return out;
}

std::vector<at::Tensor> kfe_ihvp_grouped_cpu(at::TensorList grads, at::TensorList q_out,
                                             at::TensorList q_in, at::TensorList eigvals,
                                             double damping) {
  const size_t layers = grads.size();
  TORCH_CHECK(q_out.size() == layers && q_in.size() == layers && eigvals.size() == layers,
              "kfe_ihvp_grouped: grads, q_out, q_in and eigvals must have one entry per layer; "
              "got ", layers, ", ", q_out.size(), ", ", q_in.size(), " and ", eigvals.size());
  std::vector<at::Tensor> outs;
  outs.reserve(layers);
  for (size_t l = 0; l < layers; ++l) {
    try {
      outs.push_back(kfe_ihvp_cpu(grads[l], q_out[l], q_in[l], eigvals[l], damping));
    } catch (const c10::Error& e) {
      TORCH_CHECK(false, "kfe_ihvp_grouped: layer ", l, ": ", e.what_without_backtrace());
    }
  }
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(metaif, CPU, m) {
  m.impl("kfe_ihvp", &kfe_ihvp_cpu);
  m.impl("kfe_ihvp_grouped", &kfe_ihvp_grouped_cpu);
}

}  // namespace metaif
