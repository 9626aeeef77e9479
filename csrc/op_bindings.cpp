// Typed Python bindings of the pyopt:: ops that sit on a model's per-call path (layer forwards, the optimizer
// step, tensor quantisation), as pyopt._C.ops.<op>.
//
// Why: a call through torch.ops.pyopt.<op> converts its arguments generically in libtorch_python (the
// schema-driven createStackForSchema, a __torch_function__ scan of every argument) before the dispatcher
// runs; measured with callgrind on a 64-element quantize_per_tensor, that is ~80 % of the call (the kernel is
// ~11 %), and it is what torch's own generated bindings (python_torch_functions) avoid with typed parsing.
// These bindings do the same: typed pybind arguments, then the same dispatcher call (every key: autograd,
// dispatch modes, the CPU / CUDA / reference kernels), with the GIL released. pyopt's modules, FusedSGD and
// pyopt.functional use them for plain tensors outside torch.compile (pyopt/ops/native.py `fast_ops`);
// tracing, subclasses and __torch_function__ overrides keep going through torch.ops.
#include <torch/extension.h>

#include <vector>

#include "op_handles.h"

namespace pyopt::ops {
namespace {

namespace py = pybind11;
using Release = py::call_guard<py::gil_scoped_release>;

template <const char* kName>
Tensor linear(const Tensor& x, const Tensor& w_q, const Tensor& w_scales, const OptTensor& bias) {
  return handle<LinearFn, kName>().call(x, w_q, w_scales, bias);
}

template <const char* kName>
Tensor conv(const Tensor& x, const Tensor& w_q, const Tensor& w_scales, const OptTensor& bias,
            std::vector<int64_t> stride, std::vector<int64_t> padding, std::vector<int64_t> dilation) {
  return handle<ConvFn, kName>().call(x, w_q, w_scales, bias, stride, padding, dilation);
}

template <const char* kName>
Tensor csr(const Tensor& x, const Tensor& crow, const Tensor& col, const Tensor& values, const OptTensor& bias,
           int64_t out_features) {
  return handle<CsrFn, kName>().call(x, crow, col, values, bias, out_features);
}

void fused_sgd_(const std::vector<Tensor>& params, const std::vector<Tensor>& grads, const std::vector<Tensor>& bufs,
                const std::vector<Tensor>& masters, const std::vector<OptTensor>& masks,
                const std::vector<bool>& first_step, double lr, double weight_decay, double momentum,
                double dampening, bool nesterov, bool maximize, const OptTensor& lr_tensor,
                const OptTensor& grad_scale, const OptTensor& found_inf) {
  c10::List<OptTensor> mask_list;
  mask_list.reserve(masks.size());
  for (const auto& m : masks) mask_list.push_back(m);
  c10::List<bool> first;
  first.reserve(first_step.size());
  for (bool f : first_step) first.push_back(f);
  handle<SgdFn, kFusedSgd>().call(params, grads, bufs, masters, mask_list, first, lr, weight_decay, momentum, dampening,
                                  nesterov, maximize, lr_tensor, grad_scale, found_inf);
}

}  // namespace

void add_op_bindings(py::module_& m) {
  auto ops = m.def_submodule("ops", "typed bindings of the per-call pyopt:: ops (same dispatcher call as torch.ops)");
  ops.def("int8_linear_dynamic", &linear<kInt8LinearDynamic>, Release());
  ops.def("int8_linear_weight_only", &linear<kInt8LinearWeightOnly>, Release());
  ops.def("sparse_masked_linear", &linear<kMaskedLinear>, Release());
  ops.def("int8_conv2d_dynamic", &conv<kInt8ConvDynamic>, Release());
  ops.def("int8_conv2d_weight_only", &conv<kInt8ConvWeightOnly>, Release());
  ops.def("sparse_csr_linear", &csr<kCsrLinear>, Release());
  ops.def("sparse_bsr_linear", &csr<kBsrLinear>, Release());
  ops.def(
      "sparse_csr_int8_linear",
      [](const Tensor& x, const Tensor& crow, const Tensor& col, const Tensor& values, const Tensor& row_scales,
         const OptTensor& bias, int64_t out_features) {
        return handle<CsrInt8Fn, kCsrInt8Linear>().call(x, crow, col, values, row_scales, bias, out_features);
      },
      Release());
  ops.def(
      "binary_linear",
      [](const Tensor& x, const Tensor& packed, const Tensor& alpha, const OptTensor& bias, int64_t in_features,
         bool binary_activations) {
        return handle<BinaryFn, kBinaryLinear>().call(x, packed, alpha, bias, in_features, binary_activations);
      },
      Release());
  ops.def(
      "quantize_per_tensor",
      [](const Tensor& x, double scale, int64_t zero_point, at::ScalarType dtype) {
        return handle<QuantizeFn, kQuantizePerTensor>().call(x, scale, zero_point, dtype);
      },
      Release());
  ops.def(
      "dequantize_per_tensor",
      [](const Tensor& q, double scale, int64_t zero_point, at::ScalarType out_dtype) {
        return handle<QuantizeFn, kDequantizePerTensor>().call(q, scale, zero_point, out_dtype);
      },
      Release());
  ops.def("fused_sgd_", &fused_sgd_, Release());
}

}  // namespace pyopt::ops
