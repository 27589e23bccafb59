// The shape of a gathered-patch product and its per-element terms, shared by the CPU argument
// checks (patch_args.h), the CUDA kernels (cuda/gather_patch_matmul*.cu) and their emulation.
// No torch headers: nvcc compiles it alone.
#pragma once

#include <cstdint>

#include "metaif/arith.h"

namespace metaif {

// cols [n, rows, taps] (each image's patches), index / mask / signal [n, positions, channels].
struct PatchShape {
  int64_t n, rows, taps, positions, channels;
};

namespace arith {

METAIF_HD bool row_in_range(int64_t row, const PatchShape& s) { return row >= 0 && row < s.rows; }

// sum_k cols[image, row, k] * weight[channel, k]: the layer's output at one gathered place.
template <typename T>
METAIF_HD T patch_product(const T* cols, const T* weight, const PatchShape& s, int64_t image, int64_t row,
                          int64_t channel) {
  const T* x = cols + (image * s.rows + row) * s.taps;
  const T* w = weight + channel * s.taps;
  T acc = 0;
  for (int64_t k = 0; k < s.taps; ++k) acc += x[k] * w[k];
  return acc;
}

// sum_p mask[at] signal[at] cols[image, index[at], tap] over one image's places at = (image, p,
// channel): one term of the adjoint in the weight. in_range turns false on an index out of range
// (that place is skipped).
template <typename T>
METAIF_HD double patch_adjoint(const T* cols, const int64_t* index, const T* mask, const T* signal, const PatchShape& s,
                               int64_t image, int64_t channel, int64_t tap, bool& in_range) {
  double acc = 0.0;
  for (int64_t p = 0; p < s.positions; ++p) {
    const int64_t at = (image * s.positions + p) * s.channels + channel;
    const int64_t row = index[at];
    if (!row_in_range(row, s)) {
      in_range = false;
      continue;
    }
    acc += static_cast<double>(mask[at] * signal[at]) * static_cast<double>(cols[(image * s.rows + row) * s.taps + tap]);
  }
  return acc;
}

}  // namespace arith
}  // namespace metaif
