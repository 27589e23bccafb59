// SIMD helpers shared by the kernels: function multiversioning for AVX-512 / AVX2+FMA / baseline
// x86-64 (GCC target_clones, chosen at load time, so that a portable wheel still runs the widest
// vectors the CPU has), forced inlining of the bodies those clones wrap, and 64-byte vectors.
#pragma once

#include <cstdint>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define METAIF_TARGET_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define METAIF_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define METAIF_TARGET_CLONES
#define METAIF_ALWAYS_INLINE inline
#endif

namespace metaif {

constexpr int64_t kSimdPad = 16;

inline int64_t round_up(int64_t v) { return (v + kSimdPad - 1) / kSimdPad * kSimdPad; }

// 64-byte SIMD vectors (GCC vector extensions; lowered to narrower registers where the clone
// has them), readable from any element-aligned address.
template <typename T>
struct Simd;
template <>
struct Simd<float> {
  typedef float type __attribute__((vector_size(64), aligned(4)));
};
template <>
struct Simd<double> {
  typedef double type __attribute__((vector_size(64), aligned(8)));
};

}  // namespace metaif
