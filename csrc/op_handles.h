// Typed dispatcher handles of pyopt:: ops, looked up once, for C++ code that calls an op (the autograd kernels,
// the typed Python bindings). The schemas are defined by pyopt/ops/schemas.py before any call reaches here.
#pragma once
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>

namespace pyopt::ops {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// C++ signatures of the schemas (pyopt/ops/schemas.py), as the dispatcher's typed calls need them.
using LinearFn = Tensor(const Tensor&, const Tensor&, const Tensor&, const OptTensor&);
using ConvFn = Tensor(const Tensor&, const Tensor&, const Tensor&, const OptTensor&, at::IntArrayRef, at::IntArrayRef,
                      at::IntArrayRef);
using Grad2Fn = Tensor(const Tensor&, const Tensor&, const Tensor&);
using QuantizeFn = Tensor(const Tensor&, double, int64_t, at::ScalarType);
using BinaryFn = Tensor(const Tensor&, const Tensor&, const Tensor&, const OptTensor&, int64_t, bool);
using CsrFn = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&, int64_t);
using CsrInt8Fn = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                         int64_t);
using SgdFn = void(at::TensorList, at::TensorList, at::TensorList, at::TensorList,
                   const c10::List<std::optional<Tensor>>&, const c10::List<bool>&, double, double, double, double,
                   bool, bool, const OptTensor&, const OptTensor&, const OptTensor&);

#define PYOPT_OP_NAMES(X)                                                 \
  X(kInt8LinearDynamic, "pyopt::int8_linear_dynamic")                     \
  X(kInt8LinearWeightOnly, "pyopt::int8_linear_weight_only")              \
  X(kInt8ConvDynamic, "pyopt::int8_conv2d_dynamic")                       \
  X(kInt8ConvWeightOnly, "pyopt::int8_conv2d_weight_only")                \
  X(kMaskedLinear, "pyopt::sparse_masked_linear")                         \
  X(kMaskedLinearGradInput, "pyopt::sparse_masked_linear_grad_input")     \
  X(kMaskedSddmm, "pyopt::sparse_masked_sddmm")                           \
  X(kQuantizePerTensor, "pyopt::quantize_per_tensor")                     \
  X(kDequantizePerTensor, "pyopt::dequantize_per_tensor")                 \
  X(kBinaryLinear, "pyopt::binary_linear")                                \
  X(kCsrLinear, "pyopt::sparse_csr_linear")                               \
  X(kCsrInt8Linear, "pyopt::sparse_csr_int8_linear")                      \
  X(kBsrLinear, "pyopt::sparse_bsr_linear")                               \
  X(kFusedSgd, "pyopt::fused_sgd_")
#define PYOPT_OP_NAME_CONST(id, name) inline constexpr char id[] = name;
PYOPT_OP_NAMES(PYOPT_OP_NAME_CONST)
#undef PYOPT_OP_NAME_CONST

// The op's default overload, resolved on first use (function-local static: immutable afterwards).
template <typename Fn, const char* kName>
const c10::TypedOperatorHandle<Fn>& handle() {
  static const auto h = c10::Dispatcher::singleton().findSchemaOrThrow(kName, "").typed<Fn>();
  return h;
}

}  // namespace pyopt::ops
