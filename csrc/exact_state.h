// The state of an order-independent sum that exact_add and exact_value update in place, and its
// checks (include/metaif/exact.h holds the per-element arithmetic).
#pragma once

#include "checks.h"
#include "metaif/exact.h"

namespace metaif {

// limbs [kWindows, *like.shape] int64 and top [*like.shape] int32, contiguous, on like's device.
inline void check_state(const char* op, const Tensor& limbs, const Tensor& top, const Tensor& like) {
  METAIF_CHECK(limbs.scalar_type() == ScalarType::Long && top.scalar_type() == ScalarType::Int, op,
               ": limbs must be int64 and top int32, got ", limbs.scalar_type(), " and ", top.scalar_type());
  METAIF_CHECK(limbs.device() == like.device() && top.device() == like.device(), op, ": limbs (", limbs.device(),
               ") and top (", top.device(), ") must be on the device of the values (", like.device(), ")");
  METAIF_CHECK(limbs.is_contiguous() && top.is_contiguous(), op,
               ": limbs and top are updated in place and must be contiguous");
  bool shaped = limbs.dim() == like.dim() + 1 && top.dim() == like.dim() && limbs.size(0) == exact::kWindows;
  for (int64_t d = 0; shaped && d < like.dim(); ++d)
    shaped = limbs.size(d + 1) == like.size(d) && top.size(d) == like.size(d);
  METAIF_CHECK(shaped, op, ": limbs must have shape [", exact::kWindows, ", *values.shape] and top values.shape ",
               Dims{like.sizes()}, ", got ", Dims{limbs.sizes()}, " and ", Dims{top.sizes()});
}

}  // namespace metaif
