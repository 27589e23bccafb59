// Raising a kernel's Status as a RuntimeError whose message names the op, where and what went
// wrong, and what to do: one wording for the CPU and the CUDA kernels.
#pragma once

#include "tensor.h"

#include "metaif/status.h"

namespace metaif {

[[noreturn]] inline void raise_status(const char* op, const Status& s) {
  switch (s.code) {
    case kNonFiniteInput:
      fail(op, ": b has non-finite values in task ", s.task, ", column ", s.column);
    case kNonFiniteIterate:
      fail(op, ": the Neumann series produced non-finite values at iteration ", s.iteration,
                  " in task ", s.task, ", column ", s.column, "; check the operator for NaN/Inf or raise the scale (",
                  s.scale, ")");
    case kDiverged:
      fail(op, ": the Neumann series diverges in task ", s.task, ", column ", s.column,
                  " (its terms grew from ", s.extra, " to ", s.value, " by iteration ", s.iteration,
                  "); every eigenvalue of A + damping*I must lie in (0, 2*scale): raise scale (", s.scale,
                  ") or damping so the operator is positive definite");
    case kScaleNotPositive:
      fail(op, ": the power iteration estimates the top eigenvalue of A + damping*I in task ", s.task,
                  " as ", s.value, ": the operator is zero or not positive definite, and the Neumann series "
                  "cannot invert it; add damping or pass scale");
    case kResidualTooLarge:
      fail(op, ": after ", s.iteration, " terms the relative residual in task ", s.task, ", column ",
                  s.column, " is ", s.value, " > rtol ", s.extra, ": raise iters, or damping (an eigenvalue near 0 "
                  "or 2*scale converges slowly or not at all)");
    case kNonPositiveCurvature:
      fail(op, ": conjugate gradient met non-positive curvature p.Ap = ", s.value, " at iteration ",
                  s.iteration, " in task ", s.task, ", column ", s.column,
                  "; the operator is not positive definite: add damping");
    case kNotInvertible:
      fail(op, ": eigvals + damping must be positive and finite everywhere, but one entry is ", s.value,
                  "; raise damping (got ", s.extra, ") or check eigvals for NaN/Inf");
    case kBadScale:
      fail(op, ": 1 / scale is not a finite positive number in task ", s.task, " (scale ", s.scale,
                  "); leave scale out (None) to estimate it by power iteration");
    default:
      fail(op, ": internal error: kernel failure code ", s.code);
  }
}

// Raises when s reports a failure.
inline void check_status(const char* op, const Status& s) {
  if (s.code != kOk) raise_status(op, s);
}

}  // namespace metaif
