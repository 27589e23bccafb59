// Adds a tensor, or some rows of it, into an order-independent sum, in place: limbs [3, *s] int64 and
// top windows [*s] int32, element by element (include/metaif/exact.h; metaif.parallel.ExactSum keeps
// the state). The pure-PyTorch path it replaces makes about forty passes over the elements in float64
// (and, for rows, a gather and scatters on top); this is one, so a sum of ResNet-sized gradients
// (12 M elements) costs milliseconds, not seconds.
#include <algorithm>

#include "checks.h"
#include "cuda_support.h"
#include "exact_state.h"
#include "registration.h"

namespace metaif {
namespace {

constexpr const char* kOp = "exact_add";

// Rows may repeat (each is added as often), so the work is split by columns: every element is
// updated by one thread, the rows in their order.
template <typename T>
void exact_add_kernel(int64_t* limbs, int32_t* top, const T* x, const exact::Rows& rows, int64_t n) {
  if (rows.index == nullptr) {
    torch::stable::parallel_for(0, n, 1 << 14, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) exact::add(static_cast<double>(x[i]), top + i, limbs + i, n);
    });
    return;
  }
  // blocks of whole cache lines of every row: a thread walks its block of each row in turn
  constexpr int64_t kBlock = 512;
  const int64_t blocks = (rows.width + kBlock - 1) / kBlock;
  torch::stable::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    const int64_t begin = first * kBlock, end = std::min(rows.width, last * kBlock);
    for (int64_t k = 0; k < rows.count; ++k) {
      const int64_t base = rows.index[k] * rows.width;
      for (int64_t i = base + begin; i < base + end; ++i) exact::add(static_cast<double>(x[i]), top + i, limbs + i, n);
    }
  });
}

// rows: int64 [count], each in [0, x.size(0)); the row width is the product of x's other sizes.
// Holds the contiguous index that `rows` points into.
struct SelectedRows {
  std::optional<Tensor> index;
  exact::Rows rows;
};

SelectedRows select_rows(const Tensor& x, const std::optional<Tensor>& rows) {
  if (!rows.has_value()) return {};
  METAIF_CHECK(x.dim() >= 1, kOp, ": rows need values with a first dimension, got a 0-d tensor");
  check_rank(kOp, *rows, "rows", 1, "[count]");
  METAIF_CHECK(rows->scalar_type() == ScalarType::Long, kOp, ": rows must be int64, got ", rows->scalar_type());
  METAIF_CHECK(rows->device() == x.device(), kOp, ": rows (", rows->device(), ") must be on the device of x (",
               x.device(), ")");
  SelectedRows out{contiguous(*rows), {}};
  out.rows = {out.index->mutable_data_ptr<int64_t>(), out.index->numel(), x.size(0) == 0 ? 0 : x.numel() / x.size(0)};
  if (!out.index->is_cuda()) {  // on a GPU the Python layer checks (metaif.parallel.ExactSum); the kernel skips
    for (int64_t k = 0; k < out.rows.count; ++k)
      METAIF_CHECK(out.rows.index[k] >= 0 && out.rows.index[k] < x.size(0), kOp, ": rows[", k, "] = ",
                   out.rows.index[k], " is not a row of x (", x.size(0), " rows)");
  }
  return out;
}

void exact_add(Tensor limbs, Tensor top, const Tensor& x, const std::optional<Tensor>& rows) {
  check_floating(kOp, x, "x");
  check_state(kOp, limbs, top, x);
  const SelectedRows selected = select_rows(x, rows);
  const int64_t n = x.numel();
  if (n == 0 || (selected.index.has_value() && selected.rows.count == 0)) return;
  const Tensor values = contiguous(x);
  METAIF_DISPATCH_FLOATING(x.scalar_type(), kOp, [&] {
#if defined(METAIF_WITH_CUDA)
    if (values.is_cuda()) {
      const DeviceGuard guard(values);
      return check_launch(cuda::exact_add<scalar_t>(limbs.mutable_data_ptr<int64_t>(), top.mutable_data_ptr<int32_t>(),
                                                    values.mutable_data_ptr<scalar_t>(), selected.rows, n,
                                                    current_stream(values)));
    }
#endif
    exact_add_kernel<scalar_t>(limbs.mutable_data_ptr<int64_t>(), top.mutable_data_ptr<int32_t>(),
                               values.mutable_data_ptr<scalar_t>(), selected.rows, n);
  });
}

}  // namespace

METAIF_IMPL_ALL_DEVICES(m.impl("exact_add", TORCH_BOX(&exact_add));)

}  // namespace metaif
