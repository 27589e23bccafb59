// One element of an order-independent sum (metaif.parallel.ExactSum): the addend is cut into
// integer digits on a grid of kWindowBits-bit windows, the kWindows windows from the one holding
// the element's largest leading bit down, and the digits are added to 64-bit integer limbs. Shared
// by the CPU and CUDA kernels of exact_add; the same steps as ExactSum's pure-PyTorch path (and
// metaif.reference.exact_add), so that both give the same limbs.
#pragma once

#include <cstring>

#include "metaif/arith.h"

namespace metaif::exact {

constexpr int kWindowBits = 32;         // digits below 2**32: 2**31 of them fit an int64 limb
constexpr int kWindows = 3;             // at least 64 bits below an element's largest leading bit
constexpr int kLowest = -31 + kWindows - 1;  // the lowest top window: units stay >= 2**-992
constexpr int32_t kEmpty = -(1 << 20);  // the top window of an element that has only had zeros

// Rows of a [rows, width] view of the values that an addition touches, in order and possibly
// repeated (each added as often); index == nullptr: every element once.
struct Rows {
  const int64_t* index = nullptr;
  int64_t count = 0;
  int64_t width = 0;
};

// The window holding the leading bit of x != 0 (floor((exponent - 1) / 32), at least kLowest),
// the exponent read from the bits (frexp for subnormals).
METAIF_HD int32_t window_of(double x) {
  uint64_t bits;
  memcpy(&bits, &x, sizeof bits);
  const int biased = static_cast<int>((bits >> 52) & 0x7ff);
  int exponent = biased - 1022;  // |x| < 2**exponent
  if (biased == 0) frexp(x, &exponent);
  const int lead = exponent - 1;
  const int window = lead >= 0 ? lead / kWindowBits : -((-lead + kWindowBits - 1) / kWindowBits);
  return window < kLowest ? kLowest : window;
}

// 2**e for e in the normal range, from its bits.
METAIF_HD double power_of_two(int e) {
  const uint64_t bits = static_cast<uint64_t>(e + 1023) << 52;
  double value;
  memcpy(&value, &bits, sizeof value);
  return value;
}

// Adds the finite x into the element whose top window is *top and whose limbs are limbs[0],
// limbs[stride], ... (most significant first); a non-finite x is left to the caller.
METAIF_HD void add(double x, int32_t* top, int64_t* limbs, int64_t stride) {
  if (!arith::finite(x) || x == 0.0) return;
  const int32_t window = window_of(x);
  if (window > *top) {  // re-express the limbs on the higher windows; the lowest ones drop
    const int64_t shift = static_cast<int64_t>(window) - *top;
    for (int j = kWindows - 1; j >= 0; --j) limbs[j * stride] = j - shift >= 0 ? limbs[(j - shift) * stride] : 0;
    *top = window;
  }
  // the units 2**(kWindowBits * (top - j)) are normal powers of two for a top window >= kLowest
  for (int j = 0; j < kWindows; ++j) {
    const int e = kWindowBits * (*top - j);
    // exact: scaling by a power of two (x / unit, written as a product), |digits| < 2**32
    const double digits = trunc(x * power_of_two(-e));
    x -= digits * power_of_two(e);  // exact: clears the digits' bits
    limbs[j * stride] += static_cast<int64_t>(digits);
  }
}

// The sum held by one element, rounded once to a double: the limbs are first carried upwards (each
// lower limb into [0, 2**32), in place: the same sum), then added from the lowest window up, the
// top window's last (its digits dominate; below them at most 64 bits, so one rounding).
METAIF_HD double value(const int32_t* top, int64_t* limbs, int64_t stride) {
  if (*top == kEmpty) return 0.0;  // nothing was ever added but zeros
  for (int j = kWindows - 1; j > 0; --j) {
    const int64_t carry = limbs[j * stride] >> kWindowBits;  // floor division (arithmetic shift)
    limbs[j * stride] -= carry * (int64_t(1) << kWindowBits);
    limbs[(j - 1) * stride] += carry;
  }
  double total = static_cast<double>(limbs[(kWindows - 1) * stride]) * power_of_two(kWindowBits * (*top - kWindows + 1));
  for (int j = kWindows - 2; j > 0; --j)
    total += static_cast<double>(limbs[j * stride]) * power_of_two(kWindowBits * (*top - j));
  return static_cast<double>(limbs[0]) * power_of_two(kWindowBits * *top) + total;
}

}  // namespace metaif::exact
