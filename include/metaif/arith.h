// The per-element arithmetic of the kernels, shared by the CPU kernels (csrc/) and the CUDA ones
// (cuda/): __host__ __device__ under nvcc, plain inline functions otherwise, so that the CPU tests
// exercise the arithmetic the GPU runs. Launch configuration and memory layout stay per device.
// No torch headers: nvcc compiles this alone.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define METAIF_HD __host__ __device__ __forceinline__
#else
#define METAIF_HD inline
#endif

namespace metaif::arith {

// A double above every finite value a solver compares with ("none seen yet").
constexpr double kHuge = 1.7976931348623157e308;

METAIF_HD bool finite(double v) { return v - v == 0.0; }  // inf - inf and NaN - NaN are NaN

template <typename T>
METAIF_HD double epsilon();
template <>
METAIF_HD double epsilon<float>() { return 1.1920928955078125e-07; }
template <>
METAIF_HD double epsilon<double>() { return 2.220446049250313e-16; }

// Hessian of softmax cross-entropy in the logits at probabilities p, applied in place to one
// logit-space vector z [C]: z <- w (p * z - p (p . z)).
template <typename T>
METAIF_HD void softmax_ce_hessian_inplace(const T* p, T w, T* z, int64_t classes) {
  T pz = 0;
  for (int64_t c = 0; c < classes; ++c) pz += p[c] * z[c];
  for (int64_t c = 0; c < classes; ++c) z[c] = w * p[c] * (z[c] - pz);
}

// One Neumann term: the increment e = b - inv_s * (A r) (r then grows by e).
template <typename T>
METAIF_HD T neumann_increment(T b, T ar, T inv_s) {
  return b - inv_s * ar;
}

// What one Neumann step reports: ||e||^2 of its increment and ||r||^2 of the grown iterate.
struct NeumannSums {
  double increment_sq, iterate_sq;
};

// The Neumann divergence test: for a symmetric A with spectrum in (0, 2s) the increments never
// grow, so growth above the smallest seen by more than kGrowthTolerance of it plus rounding
// (`noise`) proves divergence. metaif.linalg.neumann names the same constants.
constexpr double kGrowthTolerance = 1e-6;
METAIF_HD bool neumann_grew(double increment, double smallest, double noise) {
  return increment - smallest > kGrowthTolerance * smallest + noise;
}

// The rounding level of a Neumann iterate of norm `norm` in a type with machine epsilon `eps`.
constexpr double kNoiseEpsilons = 100.0;
METAIF_HD double neumann_noise(double eps, double norm) { return kNoiseEpsilons * eps * norm; }

// A CG step of one element: x += alpha p, r -= alpha ap.
template <typename T>
METAIF_HD void cg_update(T& x, T& r, T p, T ap, T alpha) {
  x += alpha * p;
  r -= alpha * ap;
}

// A CG search direction of one element: p = z + beta p.
template <typename T>
METAIF_HD T cg_direction(T z, T beta, T p) {
  return z + beta * p;
}

// CG replaces its recursive residual by the true one b - A x every kReplaceEvery iterations.
constexpr int64_t kReplaceEvery = 50;

// CG's stagnation rule at a true-residual check that misses rtol (metaif.linalg.cg: at a false
// convergence claim): a true residual that fell by at least 1% (its square below kStallProgress
// times the best one) resets the count of checks without progress; more than kStalls of them stop
// the column. metaif.linalg.cg names the same constants.
constexpr int kStalls = 3;
constexpr double kStallProgress = 0.98;

METAIF_HD bool cg_stalled(double residual_sq, double& best_missed, int& stalls) {
  if (residual_sq < kStallProgress * best_missed) {
    best_missed = residual_sq;
    stalls = 0;
  }
  return ++stalls > kStalls;
}

// One coordinate of an EK-FAC / K-FAC inverse in the eigenbasis: value / (eigenvalue + damping).
template <typename T>
METAIF_HD T kfe_scale(T value, T eigenvalue, T damping) {
  return value / (eigenvalue + damping);
}

// Whether 1 / (eigenvalue + damping) is a positive finite number (the inverse exists and is
// representable): false for a non-positive, NaN, infinite or underflowing shifted eigenvalue.
template <typename T>
METAIF_HD bool kfe_invertible(T eigenvalue, T damping) {
  const T inv = kfe_scale(T(1), eigenvalue, damping);
  return inv > T(0) && inv - inv == T(0);  // finite: inf - inf is NaN
}

// One example's contribution to an EK-FAC corrected eigenvalue: w * (rotated gradient)^2.
template <typename T>
METAIF_HD T weighted_square(T value, T weight) {
  return weight * value * value;
}

// The start vector of the Neumann scale's power iteration: one deterministic vector in [-1, 1)
// (a 64-bit LCG) for every task, so that a task's scale depends on its operator only.
struct PowerStart {
  uint64_t state = 0x9E3779B97F4A7C15ull;
  METAIF_HD double next() {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<double>(state >> 11) / 9007199254740992.0 * 2.0 - 1.0;
  }
};

constexpr int kPowerIterations = 20;
constexpr double kScaleSafety = 1.1;

}  // namespace metaif::arith
