// The one-thread team that runs the solvers' team algorithms (metaif/task_solvers.cuh) in the CPU
// kernels: team.cuh's SerialTeam with the vector steps replaced by the SIMD kernels of
// vector_kernels.h (the loops of LoopVectors, written with a lambda's running sum, do not vectorise).
#pragma once

#include <cstdint>

#include "metaif/team.cuh"
#include "vector_kernels.h"

namespace metaif {

struct CpuTeam : team::SerialTeam {
  template <typename T>
  double dot(const T* a, const T* b, int64_t count) const { return metaif::dot(a, b, count); }

  template <typename T>
  double distance_sq(const T* b, const T* c, int64_t count) const { return metaif::distance_sq(b, c, count); }

  template <typename T>
  double residual(const T* b, const T* product, T* r, int64_t count) const {
    return metaif::residual(b, product, r, count);
  }

  template <typename T>
  double cg_step(const T* p, const T* ap, T alpha, T* x, T* r, int64_t count) const {
    return metaif::cg_step(p, ap, alpha, x, r, count);
  }

  template <typename T>
  void cg_direction(const T* r, T beta, T* p, int64_t count) const { metaif::cg_direction(r, beta, p, count); }

  template <typename T>
  arith::NeumannSums neumann_step(const T* b, const T* ar, T inv_s, T* r, int64_t count) const {
    return metaif::neumann_step(b, ar, inv_s, r, count);
  }
};

}  // namespace metaif
