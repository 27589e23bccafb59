// Argument checks shared by every op: each failure names the op, the argument and what was
// expected, so that a user can act on the message.
#pragma once

#include <cmath>
#include <optional>

#include "tensor.h"

namespace metaif {

inline void check_rank(const char* op, const Tensor& t, const char* name, int64_t rank,
                       const char* shape) {
  METAIF_CHECK(t.dim() == rank, op, ": ", name, " must have shape ", shape, " (", rank,
              " dims), got ", Dims{t.sizes()});
}

inline void check_min_rank(const char* op, const Tensor& t, const char* name, int64_t rank,
                           const char* shape) {
  METAIF_CHECK(t.dim() >= rank, op, ": ", name, " must have shape ", shape, " (at least ", rank,
              " dims), got ", Dims{t.sizes()});
}

inline void check_size(const char* op, const Tensor& t, const char* name, int64_t dim,
                       int64_t expected, const char* what) {
  METAIF_CHECK(t.size(dim) == expected, op, ": ", name, ".shape[", dim, "] must equal ", what,
              " = ", expected, ", got shape ", Dims{t.sizes()});
}

// A square [d, d] matrix (an eigenbasis), d given by another argument described in `what`.
inline void check_square(const char* op, const Tensor& t, const char* name, int64_t d,
                         const char* shape, const char* what) {
  check_rank(op, t, name, 2, shape);
  check_size(op, t, name, 0, d, what);
  check_size(op, t, name, 1, d, what);
}

// The first tensor fixes dtype and device; every other one must match it.
inline void check_floating(const char* op, const Tensor& t, const char* name) {
  METAIF_CHECK(t.scalar_type() == ScalarType::Float || t.scalar_type() == ScalarType::Double, op, ": ", name,
              " must be float32 or float64, got ", t.scalar_type());
}

inline void check_like(const char* op, const Tensor& ref, const char* ref_name,
                       const Tensor& t, const char* name) {
  METAIF_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ",
              t.scalar_type(), " but ", ref_name, " has ", ref.scalar_type(),
              "; pass both in the same dtype");
  METAIF_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ",
              ref_name, " is on ", ref.device(), "; move them to one device");
}

inline void check_finite(const char* op, double value, const char* name) {
  METAIF_CHECK(std::isfinite(value), op, ": ", name, " must be finite, got ", value);
}

inline void check_nonnegative(const char* op, double value, const char* name) {
  check_finite(op, value, name);
  METAIF_CHECK(value >= 0.0, op, ": ", name, " must be >= 0, got ", value);
}

// Optional per-example weights [T, n] (or [n] for a single group); absent means uniform 1/n.
inline Tensor weights_or_uniform(const char* op, const std::optional<Tensor>& weights,
                                     const Tensor& like, Shape shape,
                                     const char* shape_desc) {
  if (!weights.has_value()) {
    const int64_t n = shape.back();
    return full_like_shape(like, shape, n > 0 ? 1.0 / static_cast<double>(n) : 0.0);
  }
  const Tensor& w = *weights;
  check_like(op, like, "the vector inputs", w, "weights");
  METAIF_CHECK(w.sizes() == shape, op, ": weights must have shape ", shape_desc, " = ", Dims{shape},
              ", got ", Dims{w.sizes()});
  return contiguous(w);
}

}  // namespace metaif
