// Teams: the threads that solve one task together. The per-task algorithms (task_solvers.cuh) are
// written once against this interface and run by a CUDA block (BlockTeam) on the GPU, by one thread
// in the CPU kernels (csrc/cpu_team.h) and, in the CPU tests, by one thread (SerialTeam) or a block
// emulated by std::threads (csrc/thread_team.h).
//
// Every member of a team calls every team function in the same order (they are collectives);
// for_each and rows split the work among the members and do not synchronise: a caller that next
// reads what another member wrote calls sync() first. sum() returns the same double on every
// member, so that branches on it are uniform across the team.
//
// The solvers' vector steps (dot products, the CG and Neumann updates) are team members too:
// LoopVectors writes them once from for_each and sum for every team, and a team with faster ones
// hides them with its own (the CPU kernels' CpuTeam, csrc/cpu_team.h: SIMD loops). Every step that
// writes ends synchronised: what it wrote is ready for every member.
#pragma once

#include <cstdint>

#include "metaif/arith.h"

namespace metaif::team {

template <typename Team>
struct LoopVectors {
  template <typename T>
  METAIF_HD double dot(const T* a, const T* b, int64_t count) const {
    double partial = 0.0;
    self().for_each(count, [&](int64_t i) { partial += static_cast<double>(a[i]) * static_cast<double>(b[i]); });
    return self().sum(partial);
  }

  // ||b - c||^2.
  template <typename T>
  METAIF_HD double distance_sq(const T* b, const T* c, int64_t count) const {
    double partial = 0.0;
    self().for_each(count, [&](int64_t i) {
      const double d = static_cast<double>(b[i]) - static_cast<double>(c[i]);
      partial += d * d;
    });
    return self().sum(partial);
  }

  // r = b - product; returns ||r||^2.
  template <typename T>
  METAIF_HD double residual(const T* b, const T* product, T* r, int64_t count) const {
    double partial = 0.0;
    self().for_each(count, [&](int64_t i) {
      r[i] = b[i] - product[i];
      partial += static_cast<double>(r[i]) * static_cast<double>(r[i]);
    });
    return self().sum(partial);
  }

  // x += alpha p, r -= alpha ap; returns ||r||^2.
  template <typename T>
  METAIF_HD double cg_step(const T* p, const T* ap, T alpha, T* x, T* r, int64_t count) const {
    double partial = 0.0;
    self().for_each(count, [&](int64_t i) {
      arith::cg_update(x[i], r[i], p[i], ap[i], alpha);
      partial += static_cast<double>(r[i]) * static_cast<double>(r[i]);
    });
    return self().sum(partial);
  }

  // p = r + beta p.
  template <typename T>
  METAIF_HD void cg_direction(const T* r, T beta, T* p, int64_t count) const {
    self().for_each(count, [&](int64_t i) { p[i] = arith::cg_direction(r[i], beta, p[i]); });
    self().sync();
  }

  // r += e with e = b - inv_s ar (one Neumann term); returns ||e||^2 and the new ||r||^2.
  template <typename T>
  METAIF_HD arith::NeumannSums neumann_step(const T* b, const T* ar, T inv_s, T* r, int64_t count) const {
    double e2 = 0.0, r2 = 0.0;
    self().for_each(count, [&](int64_t i) {
      const T e = arith::neumann_increment(b[i], ar[i], inv_s);
      r[i] += e;
      e2 += static_cast<double>(e) * static_cast<double>(e);
      r2 += static_cast<double>(r[i]) * static_cast<double>(r[i]);
    });
    const double increment_sq = self().sum(e2);
    return {increment_sq, self().sum(r2)};
  }

 private:
  METAIF_HD const Team& self() const { return static_cast<const Team&>(*this); }
};

struct SerialTeam : LoopVectors<SerialTeam> {
  METAIF_HD void sync() const {}
  METAIF_HD double sum(double partial) const { return partial; }

  template <typename F>
  METAIF_HD void for_each(int64_t count, F&& f) const {
    for (int64_t i = 0; i < count; ++i) f(i);
  }

  // store(i, sum_j term(i, j)) for every i < count, j < length, accumulated in Acc.
  template <typename Acc, typename Term, typename Store>
  METAIF_HD void rows(int64_t count, int64_t length, Term&& term, Store&& store) const {
    for (int64_t i = 0; i < count; ++i) {
      Acc acc = 0;
      for (int64_t j = 0; j < length; ++j) acc += term(i, j);
      store(i, acc);
    }
  }

  // Only one member writes a value every member computed.
  METAIF_HD bool leader() const { return true; }
};

#if defined(__CUDACC__)

constexpr int kWarp = 32;

// A CUDA block whose size is a multiple of 32; `shared` holds one double per warp.
struct BlockTeam : LoopVectors<BlockTeam> {
  double* shared;

  __device__ explicit BlockTeam(double* reduce) : shared(reduce) {}

  __device__ void sync() const { __syncthreads(); }

  __device__ double sum(double partial) const {
    for (int offset = kWarp / 2; offset > 0; offset /= 2) partial += __shfl_down_sync(0xffffffffu, partial, offset);
    __syncthreads();  // the previous sum's readers are done with `shared`
    if (threadIdx.x % kWarp == 0) shared[threadIdx.x / kWarp] = partial;
    __syncthreads();
    // Every thread adds the per-warp sums in the same order: one value, bit for bit, on all.
    double total = 0.0;
    for (unsigned w = 0; w < blockDim.x / kWarp; ++w) total += shared[w];
    return total;
  }

  template <typename F>
  __device__ void for_each(int64_t count, F&& f) const {
    for (int64_t i = threadIdx.x; i < count; i += blockDim.x) f(i);
  }

  // A warp per row: lanes stride along the row (coalesced reads), then a shuffle reduction.
  template <typename Acc, typename Term, typename Store>
  __device__ void rows(int64_t count, int64_t length, Term&& term, Store&& store) const {
    const int lane = threadIdx.x % kWarp;
    const int64_t warps = blockDim.x / kWarp;
    for (int64_t i = threadIdx.x / kWarp; i < count; i += warps) {
      Acc acc = 0;
      for (int64_t j = lane; j < length; j += kWarp) acc += term(i, j);
      for (int offset = kWarp / 2; offset > 0; offset /= 2) acc += __shfl_down_sync(0xffffffffu, acc, offset);
      if (lane == 0) store(i, acc);
    }
  }

  __device__ bool leader() const { return threadIdx.x == 0; }
};

#endif

}  // namespace metaif::team
