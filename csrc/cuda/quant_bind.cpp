// torch bindings of the quant CUDA kernels (csrc/cuda/quant.cu): torch.ops.pyopt_cuda.<op>(...).
// Argument metadata is checked here; the values of scales / zero points (which need a device sync) are
// checked once by the pyopt:: router before any backend runs (pyopt/_op_checks.py check_qparams_values).
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "cpu/quant_args.h"
#include "cuda/quant.cuh"

namespace {
namespace cq = pyopt::cuda_quant;
using namespace pyopt::quant_args;

cq::FloatType float_type(at::ScalarType t, const char* name) {
  switch (t) {
    case at::kFloat: return cq::kF32;
    case at::kHalf: return cq::kF16;
    case at::kBFloat16: return cq::kBF16;
    default: TORCH_CHECK(false, name, " must be float32, float16 or bfloat16, got ", t);
  }
}

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got ", t.device());
}

void check_cuda_error(cudaError_t err) { TORCH_CHECK(err == cudaSuccess, "pyopt quant CUDA kernel: ", cudaGetErrorString(err)); }

// (C, inner) around `axis`, and the channel parameters checked for shape, dtype and device.
std::pair<int64_t, int64_t> channel_layout(const at::Tensor& t, int64_t axis, const at::Tensor& scales,
                                           const at::Tensor& zero_points) {
  TORCH_CHECK(t.dim() >= 1, "input must have at least 1 dimension");
  TORCH_CHECK(axis >= -t.dim() && axis < t.dim(), "axis must be in [", -t.dim(), ", ", t.dim() - 1, "], got ", axis);
  axis = axis < 0 ? axis + t.dim() : axis;
  int64_t inner = 1;
  for (int64_t d = axis + 1; d < t.dim(); ++d) inner *= t.size(d);
  check_cuda(scales, "scales");
  check_cuda(zero_points, "zero_points");
  TORCH_CHECK(scales.numel() == t.size(axis), "scales must have ", t.size(axis), " elements, got ", scales.numel());
  TORCH_CHECK(zero_points.numel() == t.size(axis), "zero_points must have ", t.size(axis), " elements, got ",
              zero_points.numel());
  TORCH_CHECK(scales.scalar_type() == at::kFloat || scales.scalar_type() == at::kDouble,
              "scales must be float32 or float64, got ", scales.scalar_type());
  return {t.size(axis), std::max<int64_t>(inner, 1)};
}

at::Tensor quantize_per_tensor(const at::Tensor& x_, double scale, int64_t zero_point, at::ScalarType dtype) {
  check_cuda(x_, "x");
  const auto r = qrange(dtype, "dtype");
  const float inv = 1.0f / checked_scale(scale, "scale");
  check_zero_point(zero_point, r, "zero_point");
  c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous();
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(dtype));
  check_cuda_error(cq::quantize(x.const_data_ptr(), float_type(x.scalar_type(), "x"), static_cast<uint8_t*>(q.data_ptr()),
                                x.numel(), nullptr, nullptr, inv, static_cast<float>(zero_point), 1, 1, r.first,
                                r.second, true, c10::cuda::getCurrentCUDAStream()));
  return q;
}

at::Tensor quantize_per_channel(const at::Tensor& x_, const at::Tensor& scales, const at::Tensor& zero_points,
                                int64_t axis, at::ScalarType dtype) {
  check_cuda(x_, "x");
  const auto r = qrange(dtype, "dtype");
  const auto [C, inner] = channel_layout(x_, axis, scales, zero_points);
  c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous();
  const at::Tensor s32 = scales.to(at::kFloat);
  const at::Tensor inv = (at::ones_like(s32) / s32).contiguous();  // IEEE division: 1.0f / float32(scale)
  const at::Tensor zp = zero_points.to(at::kFloat).contiguous();
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(dtype));
  check_cuda_error(cq::quantize(x.const_data_ptr(), float_type(x.scalar_type(), "x"), static_cast<uint8_t*>(q.data_ptr()),
                                x.numel(), inv.const_data_ptr<float>(), zp.const_data_ptr<float>(), 1.0f, 0.0f, C,
                                inner, r.first, r.second, false, c10::cuda::getCurrentCUDAStream()));
  return q;
}

std::tuple<at::Tensor, at::Tensor> quantize_per_token(const at::Tensor& x_, at::ScalarType dtype) {
  check_cuda(x_, "x");
  TORCH_CHECK(dtype == at::kChar, "dtype must be torch.int8 (per-token quantization is symmetric), got ", dtype);
  TORCH_CHECK(x_.dim() >= 1, "x must have at least 1 dimension");
  c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous();
  std::vector<int64_t> sshape(x.sizes().begin(), x.sizes().end());
  const int64_t K = sshape.back();
  sshape.back() = 1;
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(dtype));
  at::Tensor scales = at::empty(sshape, x.options().dtype(at::kFloat));
  check_cuda_error(cq::quantize_per_token(x.const_data_ptr(), float_type(x.scalar_type(), "x"), q.data_ptr<int8_t>(),
                                          scales.data_ptr<float>(), scales.numel(), K,
                                          c10::cuda::getCurrentCUDAStream()));
  return {q, scales};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_per_group(const at::Tensor& x_, int64_t group_size,
                                                                  at::ScalarType dtype, bool symmetric) {
  check_cuda(x_, "x");
  qrange(dtype, "dtype");
  TORCH_CHECK(x_.dim() >= 1, "x must have at least 1 dimension");
  TORCH_CHECK(group_size >= 1 && x_.size(-1) % group_size == 0, "group_size (", group_size,
              ") must be positive and divide the last dim of x (", x_.size(-1), ")");
  c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous();
  std::vector<int64_t> gshape(x.sizes().begin(), x.sizes().end());
  gshape.back() /= group_size;
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(dtype));
  at::Tensor scales = at::empty(gshape, x.options().dtype(at::kFloat));
  at::Tensor zps = at::empty(gshape, x.options().dtype(at::kLong));
  check_cuda_error(cq::quantize_per_group(x.const_data_ptr(), float_type(x.scalar_type(), "x"),
                                          static_cast<uint8_t*>(q.data_ptr()), scales.data_ptr<float>(),
                                          zps.data_ptr<int64_t>(), scales.numel(), group_size, dtype == at::kChar,
                                          symmetric, c10::cuda::getCurrentCUDAStream()));
  return {q, scales, zps};
}

void check_q(const at::Tensor& q) {
  check_cuda(q, "q");
  TORCH_CHECK(q.scalar_type() == at::kChar || q.scalar_type() == at::kByte, "q must be int8 or uint8, got ",
              q.scalar_type());
}

at::Tensor dequantize_per_tensor(const at::Tensor& q_, double scale, int64_t zero_point, at::ScalarType out_dtype) {
  check_q(q_);
  const float s = checked_scale(scale, "scale");
  check_zero_point(zero_point, qrange(q_.scalar_type(), "q.dtype"), "zero_point");
  c10::cuda::CUDAGuard guard(q_.device());
  const at::Tensor q = q_.contiguous();
  at::Tensor out = at::empty(q.sizes(), q.options().dtype(out_dtype));
  check_cuda_error(cq::dequantize(static_cast<const uint8_t*>(q.const_data_ptr()), q.scalar_type() == at::kChar,
                                  out.data_ptr(), float_type(out_dtype, "out_dtype"), q.numel(), nullptr, nullptr,
                                  nullptr, s, static_cast<float>(zero_point), 1, 1, c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor dequantize_channels(const at::Tensor& q_, const at::Tensor& scales, const at::Tensor& zero_points,
                               int64_t C, int64_t inner, at::ScalarType out_dtype, bool float64_math) {
  c10::cuda::CUDAGuard guard(q_.device());
  const at::Tensor q = q_.contiguous();
  const at::Tensor s32 = scales.to(at::kFloat).contiguous();
  const at::Tensor s64 = float64_math ? scales.to(at::kDouble).contiguous() : at::Tensor();
  const at::Tensor zp = zero_points.to(at::kFloat).contiguous();
  at::Tensor out = at::empty(q.sizes(), q.options().dtype(out_dtype));
  check_cuda_error(cq::dequantize(static_cast<const uint8_t*>(q.const_data_ptr()), q.scalar_type() == at::kChar,
                                  out.data_ptr(), float_type(out_dtype, "out_dtype"), q.numel(),
                                  s32.const_data_ptr<float>(), float64_math ? s64.const_data_ptr<double>() : nullptr,
                                  zp.const_data_ptr<float>(), 1.0f, 0.0f, C, inner, c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor dequantize_per_channel(const at::Tensor& q, const at::Tensor& scales, const at::Tensor& zero_points,
                                  int64_t axis, at::ScalarType out_dtype) {
  check_q(q);
  const auto [C, inner] = channel_layout(q, axis, scales, zero_points);
  // torch: (q - zp) * scale in float64, rounded once; identical to float32 math for float32 scales.
  return dequantize_channels(q, scales, zero_points, C, inner, out_dtype, scales.scalar_type() == at::kDouble);
}

at::Tensor dequantize_per_group(const at::Tensor& q, const at::Tensor& scales, const at::Tensor& zero_points,
                                int64_t group_size, at::ScalarType out_dtype) {
  check_q(q);
  TORCH_CHECK(q.dim() >= 1, "q must have at least 1 dimension");
  TORCH_CHECK(group_size >= 1 && q.size(-1) % group_size == 0, "group_size (", group_size,
              ") must be positive and divide the last dim of q (", q.size(-1), ")");
  const int64_t groups = q.numel() / group_size;
  TORCH_CHECK(scales.numel() == groups && zero_points.numel() == groups, "scales and zero_points must have ", groups,
              " elements (one per group)");
  check_cuda(scales, "scales");
  check_cuda(zero_points, "zero_points");
  return dequantize_channels(q, scales, zero_points, std::max<int64_t>(groups, 1), group_size, out_dtype, false);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(pyopt_cuda, m) {
  m.def("quantize_per_tensor", &quantize_per_tensor);
  m.def("quantize_per_channel", &quantize_per_channel);
  m.def("quantize_per_token", &quantize_per_token);
  m.def("quantize_per_group", &quantize_per_group);
  m.def("dequantize_per_tensor", &dequantize_per_tensor);
  m.def("dequantize_per_channel", &dequantize_per_channel);
  m.def("dequantize_per_group", &dequantize_per_group);
}
