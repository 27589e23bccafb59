// One implementation per op serves both devices (it dispatches on its inputs' device inside):
// METAIF_IMPL_ALL_DEVICES(m.impl("op", TORCH_BOX(&op)); ...) registers the given m.impl calls for
// the CPU and, in a CUDA build, for CUDA, so that the two registrations cannot drift apart.
#pragma once

#include "tensor.h"

#if defined(METAIF_WITH_CUDA)
#define METAIF_IMPL_CUDA(...) \
  STABLE_TORCH_LIBRARY_IMPL(metaif, CUDA, m) { __VA_ARGS__ }
#else
#define METAIF_IMPL_CUDA(...)
#endif

#define METAIF_IMPL_ALL_DEVICES(...)                         \
  STABLE_TORCH_LIBRARY_IMPL(metaif, CPU, m) { __VA_ARGS__ } \
  METAIF_IMPL_CUDA(__VA_ARGS__)
