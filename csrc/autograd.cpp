// Autograd kernels of the differentiable pyopt:: ops, on the dispatcher's `Autograd` key (every device).
//
// They live in C++ so that a forward call in grad mode stays one hop: torch.library.register_autograd
// installs a Python kernel on the Autograd key, and every call of the op outside inference_mode/no_grad
// (an nn.Module in eval mode called plainly) would pass through it even when nothing requires grad.
// Each kernel calls the op below autograd (AutoDispatchBelowADInplaceOrView: the device kernel, whichever
// backend is registered for it), and records a node only when grad mode is on and an input requires grad.
//
// Formulas (pyopt/ops/autograd.py keeps the same ones for builds without the native module):
// - int8 linear / conv: w.r.t. x only (the int8 weights are frozen buffers). Weight-only: the exact gradient
//   of x @ (s * w_q)^T, i.e. grad_x = (grad_y * s) @ w_q. Dynamic: the straight-through estimator (the
//   activation rounding treated as identity), as in quantisation-aware training; same formula. Conv: the
//   input gradient of a conv with the dequantised weight w_q * s (aten::convolution_backward, as
//   torch.nn.grad.conv2d_input computes it). Computed in float32, returned in grad_y's dtype.
// - sparse_masked_linear: grad_x = grad_y (W*M) and grad_W = (grad_y^T x) * M, each its own pyopt op (the
//   SDDMM keeps pruned entries of grad_W exactly 0, so W*M stays W*M under SGD); grad_b = sum of grad_y.
#include <torch/autograd.h>
#include <torch/library.h>

#include <vector>

#include "op_handles.h"

namespace pyopt::autograd {
namespace {

using namespace pyopt::ops;  // the op handles and their signatures
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool recording(std::initializer_list<const Tensor*> ts) {
  if (!at::GradMode::is_enabled()) return false;
  for (const Tensor* t : ts)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}

// grad_x of y = x @ (s * w_q)^T: (grad_y * s) @ w_q, in float32, in grad_y's dtype.
Tensor linear_grad_input(const Tensor& grad, const Tensor& w_q, const Tensor& w_scales) {
  return at::matmul(grad.to(at::kFloat) * w_scales, w_q.to(at::kFloat)).to(grad.scalar_type());
}

template <const char* kName>
struct Int8Linear : public torch::autograd::Function<Int8Linear<kName>> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& w_q, const Tensor& w_scales,
                        const std::optional<Tensor>& bias) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({w_q, w_scales});
    return handle<LinearFn, kName>().call(x, w_q, w_scales, bias);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    return {linear_grad_input(grads[0], saved[0], saved[1]), Tensor(), Tensor(), Tensor()};
  }
};

template <const char* kName>
Tensor int8_linear(const Tensor& x, const Tensor& w_q, const Tensor& w_scales, const std::optional<Tensor>& bias) {
  if (!recording({&x})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return handle<LinearFn, kName>().call(x, w_q, w_scales, bias);
  }
  return Int8Linear<kName>::apply(x, w_q, w_scales, bias);
}

template <const char* kName>
struct Int8Conv : public torch::autograd::Function<Int8Conv<kName>> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& w_q, const Tensor& w_scales,
                        const std::optional<Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                        at::IntArrayRef dilation) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({w_q, w_scales});
    ctx->saved_data["x_shape"] = x.sizes().vec();
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    return handle<ConvFn, kName>().call(x, w_q, w_scales, bias, stride, padding, dilation);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor w = saved[0].to(at::kFloat) * saved[1].view({-1, 1, 1, 1});
    const Tensor g = grads[0].to(at::kFloat);
    const auto x_shape = ctx->saved_data["x_shape"].toIntVector();
    // as torch.nn.grad.conv2d_input: only the input's shape matters to the input gradient
    const Tensor input = g.new_empty({1}).expand(x_shape);
    const Tensor gx = std::get<0>(at::convolution_backward(
        g, input, w, std::nullopt, ctx->saved_data["stride"].toIntVector(),
        ctx->saved_data["padding"].toIntVector(), ctx->saved_data["dilation"].toIntVector(), false, {0}, 1,
        {true, false, false}));
    return {gx.to(grads[0].scalar_type()), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

template <const char* kName>
Tensor int8_conv(const Tensor& x, const Tensor& w_q, const Tensor& w_scales, const std::optional<Tensor>& bias,
                 at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  if (!recording({&x})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return handle<ConvFn, kName>().call(x, w_q, w_scales, bias, stride, padding, dilation);
  }
  return Int8Conv<kName>::apply(x, w_q, w_scales, bias, stride, padding, dilation);
}

struct MaskedLinear : public torch::autograd::Function<MaskedLinear> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& weight, const Tensor& mask,
                        const std::optional<Tensor>& bias) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x, weight, mask});
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    return handle<LinearFn, kMaskedLinear>().call(x, weight, mask, bias);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor& gy = grads[0];
    Tensor gx, gw, gb;
    if (ctx->needs_input_grad(0))
      gx = handle<Grad2Fn, kMaskedLinearGradInput>().call(gy, saved[1], saved[2]);
    if (ctx->needs_input_grad(1)) gw = handle<Grad2Fn, kMaskedSddmm>().call(gy, saved[0], saved[2]);
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(3))
      gb = gy.reshape({-1, gy.size(-1)}).sum(0);
    return {gx, gw, Tensor(), gb};
  }
};

Tensor sparse_masked_linear(const Tensor& x, const Tensor& weight, const Tensor& mask,
                            const std::optional<Tensor>& bias) {
  const Tensor none;
  if (!recording({&x, &weight, bias ? &*bias : &none})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return handle<LinearFn, kMaskedLinear>().call(x, weight, mask, bias);
  }
  return MaskedLinear::apply(x, weight, mask, bias);
}

}  // namespace
}  // namespace pyopt::autograd

TORCH_LIBRARY_IMPL(pyopt, Autograd, m) {
  namespace a = pyopt::autograd;
  m.impl("int8_linear_dynamic", &a::int8_linear<pyopt::ops::kInt8LinearDynamic>);
  m.impl("int8_linear_weight_only", &a::int8_linear<pyopt::ops::kInt8LinearWeightOnly>);
  m.impl("int8_conv2d_dynamic", &a::int8_conv<pyopt::ops::kInt8ConvDynamic>);
  m.impl("int8_conv2d_weight_only", &a::int8_conv<pyopt::ops::kInt8ConvWeightOnly>);
  m.impl("sparse_masked_linear", &a::sparse_masked_linear);
}
