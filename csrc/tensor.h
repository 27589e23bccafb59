// The tensor API of metaif's C++: LibTorch's stable ABI (torch/csrc/stable, torch/headeronly), so
// that one binary loads in every torch from the version CMakeLists.txt targets on
// (TORCH_TARGET_VERSION). Nothing in csrc/ includes ATen or c10: the symbol check in
// tests/test_wheel.py fails on any mangled libtorch C++ symbol.
#pragma once

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/Dispatch.h>
#include <torch/headeronly/core/ScalarType.h>

#include <array>
#include <cstdint>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>

namespace metaif {

using Tensor = torch::stable::Tensor;
using Shape = torch::headeronly::IntHeaderOnlyArrayRef;
using torch::headeronly::ScalarType;

// A shape as torch prints it: [2, 3].
struct Dims {
  Shape sizes;
};

inline std::ostream& operator<<(std::ostream& os, Dims d) {
  os << '[';
  for (size_t i = 0; i < d.sizes.size(); ++i) os << (i ? ", " : "") << d.sizes[i];
  return os << ']';
}

inline std::ostream& operator<<(std::ostream& os, const torch::stable::Device& device) {
  if (device.type() == torch::headeronly::DeviceType::CPU) return os << "cpu";
  if (device.type() == torch::headeronly::DeviceType::CUDA) return os << "cuda:" << static_cast<int>(device.index());
  return os << "device type " << static_cast<int>(device.type()) << ':' << static_cast<int>(device.index());
}

// Raises a RuntimeError whose message is the concatenated parts: the op, the argument, what was
// expected. (STD_TORCH_CHECK would prefix every message with the C++ function, file and line.)
template <typename... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::ostringstream message;
  (message << ... << parts);
  throw std::runtime_error(message.str());
}

#define METAIF_CHECK(cond, ...) \
  do {                          \
    if (!(cond)) ::metaif::fail(__VA_ARGS__); \
  } while (0)

// Runs the lambda with scalar_t = float or double (the ops check the dtype before they dispatch).
#define METAIF_DISPATCH_FLOATING(TYPE, NAME, ...)                                 \
  THO_DISPATCH_SWITCH(TYPE, NAME,                                                 \
                      THO_DISPATCH_CASE(torch::headeronly::ScalarType::Float, __VA_ARGS__) \
                      THO_DISPATCH_CASE(torch::headeronly::ScalarType::Double, __VA_ARGS__))

inline bool is_floating(ScalarType type) {
  return type == ScalarType::Float || type == ScalarType::Double || type == ScalarType::Half ||
         type == ScalarType::BFloat16;
}

template <typename T>
T* data_or_null(const Tensor& t) {
  return t.defined() ? t.mutable_data_ptr<T>() : nullptr;
}

// Uninitialised / zero / constant tensors of `like`'s device (and dtype unless given).
inline Tensor empty_like_shape(const Tensor& like, Shape sizes, std::optional<ScalarType> dtype = std::nullopt) {
  return torch::stable::new_empty(like, sizes, dtype);
}

inline Tensor zeros_like_shape(const Tensor& like, Shape sizes, std::optional<ScalarType> dtype = std::nullopt) {
  return torch::stable::new_zeros(like, sizes, dtype);
}

inline Tensor full_like_shape(const Tensor& like, Shape sizes, double value) {
  return torch::stable::full(sizes, value, like.scalar_type(), std::nullopt, like.device());
}

// The aten ops the stable headers do not wrap, through the stable dispatcher call (tensors in, one
// tensor out).
template <size_t N>
Tensor call_aten(const char* name, const char* overload, std::array<Tensor, N> args) {
  std::array<StableIValue, N> stack{};
  for (size_t i = 0; i < N; ++i) stack[i] = torch::stable::detail::from(args[i]);
  STABLE_TORCH_ERROR_CODE_CHECK(torch_call_dispatcher(name, overload, stack.data(), TORCH_FEATURE_VERSION));
  return torch::stable::detail::to<Tensor>(stack[0]);
}

inline Tensor mul(const Tensor& a, const Tensor& b) { return call_aten<2>("aten::mul", "Tensor", {a, b}); }

}  // namespace metaif
