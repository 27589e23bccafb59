// How a kernel reports the first failure it meets (a CPU kernel from any thread, a CUDA kernel
// from any block), so that one function (status_message.h) words every message for both devices.
// Plain C++: nvcc compiles it for cuda/ too.
#pragma once

#include <cstdint>

namespace metaif {

enum StatusCode : int32_t {
  kOk = 0,
  kNonFiniteInput = 1,        // b has NaN/inf
  kNonFiniteIterate = 2,      // a Neumann term went non-finite
  kDiverged = 3,              // Neumann terms grew: value = the term, extra = the smallest before
  kScaleNotPositive = 4,      // the power iteration's estimate: value
  kResidualTooLarge = 5,      // Neumann's final true residual: value, extra = rtol
  kNonPositiveCurvature = 6,  // CG's p.Ap: value
  kNotInvertible = 7,         // eigvals + damping: value
  kBadScale = 8,              // 1 / scale not finite positive
};

// The first failure of a kernel call; task / column / iteration are -1 where they do not apply,
// scale is the Neumann scale in use (0 where none).
struct Status {
  int32_t code;
  int32_t pad;
  int64_t task, column, iteration;
  double value, extra, scale;
};

#if defined(__CUDACC__)
#define METAIF_STATUS_HD __host__ __device__
#else
#define METAIF_STATUS_HD
#endif

inline METAIF_STATUS_HD Status failure(StatusCode code, int64_t task, int64_t column = -1, int64_t iteration = -1,
                                       double value = 0.0, double extra = 0.0, double scale = 0.0) {
  return Status{code, 0, task, column, iteration, value, extra, scale};
}

#undef METAIF_STATUS_HD

}  // namespace metaif
