// EK-FAC corrected eigenvalues: eig[a, b] = sum_n w_n ((q_out^T DW_n q_in)[a, b])^2 with
// DW_n = sum_t out_grads[n, t] acts[n, t]^T. The per-position vectors are rotated into the
// eigenbases first (two GEMMs over all n*t rows), so DW_n is only ever formed in rotated form,
// one example at a time, in a reused tile. For t = 1 the rotated DW_n is an outer product and
// the whole sum collapses to a single GEMM of the squared rotated vectors.
#include <ATen/ATen.h>

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
at::Tensor kfe_eigvals_cuda(const at::Tensor& rot_g, const at::Tensor& rot_a, const at::Tensor& w) {
  const c10::cuda::CUDAGuard guard(rot_g.device());
  const int64_t n = rot_g.size(0), d_out = rot_g.size(2), d_in = rot_a.size(2), block = d_out * d_in;
  if (rot_g.size(1) == 1) {
    const at::Tensor g2 = rot_g.squeeze(1).square() * w.unsqueeze(1);
    return at::matmul(g2.t(), rot_a.squeeze(1).square());
  }
  constexpr int64_t kTileElements = int64_t{1} << 26;
  const int64_t chunk = std::max<int64_t>(1, kTileElements / block);
  at::Tensor total = at::zeros({d_out, d_in}, rot_g.options().dtype(at::kDouble));
  for (int64_t begin = 0; begin < n; begin += chunk) {
    const int64_t count = std::min(chunk, n - begin);
    const at::Tensor tiles = at::bmm(rot_g.narrow(0, begin, count).transpose(1, 2), rot_a.narrow(0, begin, count))
                                 .contiguous();
    AT_DISPATCH_FLOATING_TYPES(rot_g.scalar_type(), kOp, [&] {
      check_launch(cuda::weighted_square_sum<scalar_t>(tiles.data_ptr<scalar_t>(), w.data_ptr<scalar_t>() + begin,
                                                       count, block, total.data_ptr<double>(), current_stream()));
    });
  }
  return total.to(rot_g.scalar_type());
}
#endif

at::Tensor kfe_eigvals(const at::Tensor& out_grads, const at::Tensor& acts,
                           const at::Tensor& q_out, const at::Tensor& q_in,
                           const std::optional<at::Tensor>& weights) {
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
  const at::Tensor w = weights_or_uniform(kOp, weights, out_grads, {n}, "[n]");

  at::Tensor out = at::zeros({d_out, d_in}, out_grads.options());
  if (n == 0 || t == 0 || out.numel() == 0) return out;
  const at::Tensor rot_g = at::matmul(out_grads.reshape({n * t, d_out}), q_out).contiguous();
  const at::Tensor rot_a = at::matmul(acts.reshape({n * t, d_in}), q_in).contiguous();
#if defined(METAIF_WITH_CUDA)
  if (out.is_cuda()) return kfe_eigvals_cuda(rot_g.view({n, t, d_out}), rot_a.view({n, t, d_in}), w);
#endif
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), kOp, [&] {
    kfe_eigvals_kernel<scalar_t>(rot_g.data_ptr<scalar_t>(), rot_a.data_ptr<scalar_t>(),
                                 w.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), n, t, d_out,
                                 d_in);
  });
  return out;
}

}  // namespace

METAIF_IMPL_ALL_DEVICES(m.impl("kfe_eigvals", &kfe_eigvals);)

}  // namespace metaif
