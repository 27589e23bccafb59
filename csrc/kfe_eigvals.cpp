// EK-FAC corrected eigenvalues: eig[a, b] = sum_n w_n ((q_out^T DW_n q_in)[a, b])^2 with
// DW_n = sum_t out_grads[n, t] acts[n, t]^T. The per-position vectors are rotated into the
// eigenbases first (two GEMMs over all n*t rows), so DW_n is only ever formed in rotated form,
// one example at a time, in a reused tile. For t = 1 the rotated DW_n is an outer product and
// the whole sum collapses to a single GEMM of the squared rotated vectors.
#include <algorithm>
#include <optional>
#include <vector>

#include "metaif/arith.h"
#include "blas.h"
#include "checks.h"
#include "cuda_support.h"
#include "registration.h"

namespace metaif {
namespace {

constexpr const char* kOp = "kfe_eigvals";

template <typename T>
void kfe_eigvals_kernel(const T* rot_g, const T* rot_a, const T* w, T* out, int64_t n, int64_t t,
                        int64_t d_out, int64_t d_in) {
  const int64_t block = d_out * d_in;
  if (t == 1) {
    std::vector<T> g2(static_cast<size_t>(n * d_out)), a2(static_cast<size_t>(n * d_in));
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t o = 0; o < d_out; ++o) {
        const T v = rot_g[i * d_out + o];
        g2[i * d_out + o] = arith::weighted_square(v, w[i]);
      }
      for (int64_t c = 0; c < d_in; ++c) {
        const T v = rot_a[i * d_in + c];
        a2[i * d_in + c] = v * v;
      }
    }
    blas::gemm<T>(true, false, d_out, d_in, n, T(1), g2.data(), d_out, a2.data(), d_in, T(0),
                  out, d_in);
    return;
  }
  std::fill(out, out + block, T(0));
  std::vector<T> tile(static_cast<size_t>(block));
  for (int64_t i = 0; i < n; ++i) {
    blas::gemm<T>(true, false, d_out, d_in, t, T(1), rot_g + i * t * d_out, d_out,
                  rot_a + i * t * d_in, d_in, T(0), tile.data(), d_in);
    const T wi = w[i];
    for (int64_t k = 0; k < block; ++k) out[k] += arith::weighted_square(tile[k], wi);
  }
}

#if defined(METAIF_WITH_CUDA)
// rot_g [n, t, d_out], rot_a [n, t, d_in]. t = 1: one cuBLAS product of the squared rotated vectors;
// else per-example rotated tiles (batched cuBLAS products, in chunks that bound their memory),
// squared, weighted and summed by cuda/kfe_eigvals.cu.
Tensor kfe_eigvals_cuda(const Tensor& rot_g, const Tensor& rot_a, const Tensor& w) {
  const DeviceGuard guard(rot_g);
  const int64_t n = rot_g.size(0), d_out = rot_g.size(2), d_in = rot_a.size(2), block = d_out * d_in;
  if (rot_g.size(1) == 1) {
    const Tensor g = torch::stable::squeeze(rot_g, 1), a = torch::stable::squeeze(rot_a, 1);
    const Tensor g2 = mul(mul(g, g), torch::stable::unsqueeze(w, 1));
    return torch::stable::matmul(torch::stable::transpose(g2, 0, 1), mul(a, a));
  }
  constexpr int64_t kTileElements = int64_t{1} << 26;
  const int64_t chunk = std::max<int64_t>(1, kTileElements / block);
  Tensor total = zeros_like_shape(rot_g, {d_out, d_in}, ScalarType::Double);
  for (int64_t begin = 0; begin < n; begin += chunk) {
    const int64_t count = std::min(chunk, n - begin);
    Tensor g = rot_g, a = rot_a;  // narrow takes a non-const reference
    const Tensor tiles = contiguous(torch::stable::matmul(torch::stable::transpose(torch::stable::narrow(g, 0, begin, count), 1, 2),
                                                          torch::stable::narrow(a, 0, begin, count)));
    METAIF_DISPATCH_FLOATING(rot_g.scalar_type(), kOp, [&] {
      check_launch(cuda::weighted_square_sum<scalar_t>(tiles.mutable_data_ptr<scalar_t>(), w.mutable_data_ptr<scalar_t>() + begin,
                                                       count, block, total.mutable_data_ptr<double>(), current_stream(rot_g)));
    });
  }
  return torch::stable::to(total, rot_g.scalar_type());
}
#endif

Tensor kfe_eigvals(const Tensor& out_grads, const Tensor& acts,
                           const Tensor& q_out, const Tensor& q_in,
                           const std::optional<Tensor>& weights) {
  check_rank(kOp, out_grads, "out_grads", 3, "[n, t, d_out]");
  check_floating(kOp, out_grads, "out_grads");
  check_rank(kOp, acts, "acts", 3, "[n, t, d_in]");
  check_like(kOp, out_grads, "out_grads", acts, "acts");
  check_like(kOp, out_grads, "out_grads", q_out, "q_out");
  check_like(kOp, out_grads, "out_grads", q_in, "q_in");
  const int64_t n = out_grads.size(0), t = out_grads.size(1), d_out = out_grads.size(2);
  const int64_t d_in = acts.size(2);
  check_size(kOp, acts, "acts", 0, n, "out_grads.shape[0] (n)");
  check_size(kOp, acts, "acts", 1, t, "out_grads.shape[1] (t)");
  check_square(kOp, q_out, "q_out", d_out, "[d_out, d_out]", "out_grads.shape[2] (d_out)");
  check_square(kOp, q_in, "q_in", d_in, "[d_in, d_in]", "acts.shape[2] (d_in)");
  const Tensor w = weights_or_uniform(kOp, weights, out_grads, {n}, "[n]");

  Tensor out = zeros_like_shape(out_grads, {d_out, d_in});
  if (n == 0 || t == 0 || out.numel() == 0) return out;
  const Tensor rot_g = contiguous(torch::stable::matmul(torch::stable::reshape(out_grads, {n * t, d_out}), q_out));
  const Tensor rot_a = contiguous(torch::stable::matmul(torch::stable::reshape(acts, {n * t, d_in}), q_in));
#if defined(METAIF_WITH_CUDA)
  if (out.is_cuda()) return kfe_eigvals_cuda(torch::stable::view(rot_g, {n, t, d_out}), torch::stable::view(rot_a, {n, t, d_in}), w);
#endif
  METAIF_DISPATCH_FLOATING(out.scalar_type(), kOp, [&] {
    kfe_eigvals_kernel<scalar_t>(rot_g.mutable_data_ptr<scalar_t>(), rot_a.mutable_data_ptr<scalar_t>(),
                                 w.mutable_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), n, t, d_out,
                                 d_in);
  });
  return out;
}

}  // namespace

METAIF_IMPL_ALL_DEVICES(m.impl("kfe_eigvals", TORCH_BOX(&kfe_eigvals));)

}  // namespace metaif
