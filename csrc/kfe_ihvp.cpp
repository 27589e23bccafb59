// Kronecker-factored eigenbasis inverse (EK-FAC / K-FAC iHVP), batched over vectors:
//   out[b] = q_out @ ((q_out^T @ grads[b] @ q_in) / (eigvals + damping)) @ q_in^T.
// CPU: the two products with q_in run as one GEMM over all rows of the batch; the q_out products
// and the eigenvalue division run per matrix while it is hot in cache. CUDA: rotate (cuBLAS),
// scale (cuda/kfe_ihvp.cu), rotate back (cuBLAS).
#include <vector>

#include "metaif/arith.h"
#include "blas.h"
#include "checks.h"
#include "cuda_support.h"
#include "registration.h"
#include "status_message.h"

namespace metaif {
namespace {

constexpr const char* kOp = "kfe_ihvp";

void check_kfe_args(const Tensor& grads, const Tensor& q_out, const Tensor& q_in,
                    const Tensor& eigvals, double damping) {
  check_min_rank(kOp, grads, "grads", 2, "[..., d_out, d_in]");
  check_floating(kOp, grads, "grads");
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

// inv = 1 / (eigvals + damping), validated in a branch-free loop that vectorises.
template <typename T>
void inverse_eigenvalues(const T* eig, double damping, int64_t count, T* inv) {
  const T shift = static_cast<T>(damping);
  for (int64_t i = 0; i < count; ++i) inv[i] = arith::kfe_scale(T(1), eig[i], shift);
  int bad = 0;
  for (int64_t i = 0; i < count; ++i) bad |= !arith::kfe_invertible(eig[i], shift);
  if (bad) {
    for (int64_t i = 0; i < count; ++i)
      if (!arith::kfe_invertible(eig[i], shift))
        raise_status(kOp, failure(kNotInvertible, -1, -1, -1, static_cast<double>(eig[i]) + damping, damping));
  }
}

// A square basis as a BLAS operand, copied only when it is neither row- nor column-major.
struct Basis {
  Tensor storage;
  bool column_major;

  explicit Basis(const Tensor& q)
      : column_major(!q.is_contiguous() && torch::stable::transpose(q, 0, 1).is_contiguous()) {
    storage = column_major ? q : contiguous(q);
  }

  template <typename T>
  blas::Operand<T> operand() const {
    return {storage.mutable_data_ptr<T>(), storage.size(0), column_major};
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

#if defined(METAIF_WITH_CUDA)
// The rotations through cuBLAS (torch.matmul), the division in one elementwise kernel that reports to
// status instead of raising.
Tensor kfe_ihvp_cuda(const Tensor& g, const Tensor& q_out, const Tensor& q_in,
                         const Tensor& eig, double damping, Status* status) {
  const int64_t d_out = g.size(-2), d_in = g.size(-1);
  using torch::stable::matmul;
  const Tensor q_out_t = torch::stable::transpose(q_out, 0, 1), q_in_t = torch::stable::transpose(q_in, 0, 1);
  Tensor rotated = contiguous(matmul(q_out_t, matmul(torch::stable::reshape(g, {-1, d_out, d_in}), q_in)));
  METAIF_DISPATCH_FLOATING(g.scalar_type(), kOp, [&] {
    check_launch(cuda::kfe_scale<scalar_t>(rotated.mutable_data_ptr<scalar_t>(), eig.mutable_data_ptr<scalar_t>(),
                                           static_cast<scalar_t>(damping), rotated.size(0), d_out * d_in, status,
                                           current_stream(g)));
  });
  return torch::stable::reshape(matmul(matmul(q_out, rotated), q_in_t), g.sizes());
}
#endif

// One layer; on CUDA the eigenvalue check reports to `status` (read back by the caller), on the
// CPU it raises here.
Tensor kfe_ihvp_layer(const Tensor& grads, const Tensor& q_out, const Tensor& q_in,
                          const Tensor& eigvals, double damping, Status* status) {
  check_kfe_args(grads, q_out, q_in, eigvals, damping);
  const int64_t d_out = grads.size(-2), d_in = grads.size(-1);
  if (grads.numel() == 0) return empty_like_shape(grads, grads.sizes());
  const Tensor g = contiguous(grads), eig = contiguous(eigvals);
#if defined(METAIF_WITH_CUDA)
  if (g.is_cuda()) return kfe_ihvp_cuda(g, q_out, q_in, eig, damping, status);
#endif
  Tensor out = empty_like_shape(grads, grads.sizes());
  const int64_t batch = grads.numel() / (d_out * d_in);
  const Basis qo(q_out), qi(q_in);
  Tensor workspace = empty_like_shape(g, {(batch + 2) * d_out * d_in});
  METAIF_DISPATCH_FLOATING(g.scalar_type(), kOp, [&] {
    kfe_ihvp_kernel<scalar_t>(g.mutable_data_ptr<scalar_t>(), qo.operand<scalar_t>(),
                              qi.operand<scalar_t>(), eig.mutable_data_ptr<scalar_t>(), damping,
                              out.mutable_data_ptr<scalar_t>(), workspace.mutable_data_ptr<scalar_t>(), batch,
                              d_out, d_in);
  });
  return out;
}

Tensor kfe_ihvp(const Tensor& grads, const Tensor& q_out, const Tensor& q_in,
                    const Tensor& eigvals, double damping) {
#if defined(METAIF_WITH_CUDA)
  if (grads.is_cuda()) {
    const DeviceGuard guard(grads);
    const DeviceStatus status(grads);
    Tensor out = kfe_ihvp_layer(grads, q_out, q_in, eigvals, damping, status.get());
    status.check(kOp);
    return out;
  }
#endif
  return kfe_ihvp_layer(grads, q_out, q_in, eigvals, damping, nullptr);
}

// Runs f, prefixing what it raises with the layer.
template <typename F>
auto for_layer(size_t layer, F&& f) {
  try {
    return f();
  } catch (const std::exception& e) {
    fail("kfe_ihvp_grouped: layer ", layer, ": ", e.what());
  }
}

std::vector<Tensor> kfe_ihvp_grouped(const std::vector<Tensor>& grads, const std::vector<Tensor>& q_out,
                                     const std::vector<Tensor>& q_in, const std::vector<Tensor>& eigvals,
                                     double damping) {
  const size_t layers = grads.size();
  METAIF_CHECK(q_out.size() == layers && q_in.size() == layers && eigvals.size() == layers,
              "kfe_ihvp_grouped: grads, q_out, q_in and eigvals must have one entry per layer; "
              "got ", layers, ", ", q_out.size(), ", ", q_in.size(), " and ", eigvals.size());
  std::vector<Tensor> outs;
  outs.reserve(layers);
#if defined(METAIF_WITH_CUDA)
  if (layers > 0 && grads[0].is_cuda()) {  // every layer launched before the statuses are read
    const DeviceGuard guard(grads[0]);
    std::vector<DeviceStatus> statuses;
    statuses.reserve(layers);
    for (size_t l = 0; l < layers; ++l) {
      statuses.emplace_back(grads[0]);
      outs.push_back(for_layer(l, [&] { return kfe_ihvp_layer(grads[l], q_out[l], q_in[l], eigvals[l], damping,
                                                              statuses[l].get()); }));
    }
    for (size_t l = 0; l < layers; ++l) for_layer(l, [&] { statuses[l].check(kOp); });
    return outs;
  }
#endif
  for (size_t l = 0; l < layers; ++l)
    outs.push_back(for_layer(l, [&] { return kfe_ihvp_layer(grads[l], q_out[l], q_in[l], eigvals[l], damping,
                                                            nullptr); }));
  return outs;
}

}  // namespace

METAIF_IMPL_ALL_DEVICES(m.impl("kfe_ihvp", TORCH_BOX(&kfe_ihvp)); m.impl("kfe_ihvp_grouped", TORCH_BOX(&kfe_ihvp_grouped));)

}  // namespace metaif
