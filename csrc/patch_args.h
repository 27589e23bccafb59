// Shared argument checks of the gathered-patch ops (gather_patch_matmul and its adjoint): a
// layer whose input patches (im2col rows, a ones column for the bias) are cached, and whose
// output is only needed at gathered positions (the arg-max of a max-pool window), masked.
#pragma once

#include "checks.h"
#include "metaif/patch_shape.h"

namespace metaif {

// cols [N, L, K], index [N, P, C] (int64 rows of cols), mask [N, P, C].
inline PatchShape check_patch_args(const char* op, const Tensor& cols, const Tensor& index,
                                   const Tensor& mask) {
  check_rank(op, cols, "cols", 3, "[N, L, K]");
  check_floating(op, cols, "cols");
  check_rank(op, index, "index", 3, "[N, P, C]");
  METAIF_CHECK(index.scalar_type() == ScalarType::Long, op, ": index must be int64, got ", index.scalar_type());
  METAIF_CHECK(index.device() == cols.device(), op, ": index is on ", index.device(), " but cols is on ",
              cols.device(), "; move them to one device");
  check_size(op, index, "index", 0, cols.size(0), "cols.shape[0] (N)");
  check_like(op, cols, "cols", mask, "mask");
  METAIF_CHECK(mask.sizes() == index.sizes(), op, ": mask must have the shape of index ", Dims{index.sizes()},
              ", got ", Dims{mask.sizes()});
  return PatchShape{cols.size(0), cols.size(1), cols.size(2), index.size(1), index.size(2)};
}

// Calls visit(at, slot) for every output (p, c) of image i whose index is in range: `at` is its
// offset in index/mask/signal/out, `slot` = index * C + c its place in the image's [L, C] tile.
// Returns false if some index was out of range (those entries are skipped).
template <typename Visit>
inline bool for_each_gathered(const int64_t* index, const PatchShape& s, int64_t i, Visit&& visit) {
  bool ok = true;
  const int64_t begin = i * s.positions * s.channels, end = begin + s.positions * s.channels;
  for (int64_t at = begin; at < end; at += s.channels) {
    for (int64_t c = 0; c < s.channels; ++c) {
      const int64_t row = index[at + c];
      if (!arith::row_in_range(row, s)) {
        ok = false;
        continue;
      }
      visit(at + c, row * s.channels + c);
    }
  }
  return ok;
}

// The kernels check every index as they read it (no extra pass over index) and report here.
inline void check_index_range(const char* op, bool out_of_range, int64_t rows) {
  METAIF_CHECK(!out_of_range, op, ": index values must lie in [0, cols.shape[1]) = [0, ", rows, ")");
}

}  // namespace metaif
