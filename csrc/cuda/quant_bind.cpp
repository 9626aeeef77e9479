// The CUDA kernels of the quant ops (launchers in csrc/cuda/quant.cu): argument checks (csrc/op_checks.h, the
// messages of pyopt/ops/checks.py), the values of tensor scales / zero points (one device sync, as torch's own
// quantizers), allocation, the current stream. The .out overloads write through a fresh result and a copy
// (the caching allocator makes the fresh result cheap on a GPU).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "cuda/quant.cuh"
#include "cuda/registrar.h"
#include "op_checks.h"

namespace pyopt::cuda {
namespace {
namespace cq = pyopt::cuda::quant;

cq::FloatType float_type(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return cq::kF16;
    case at::kBFloat16: return cq::kBF16;
    default: return cq::kF32;  // (the checks allow only these three)
  }
}

void check_cuda_error(cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, "pyopt quant CUDA kernel: ", cudaGetErrorString(err));
}

// Every scale finite and > 0 in float32, every zero point in the range of the quantized dtype (a device sync).
void qparams_values(const at::Tensor& scales, const at::Tensor& zero_points, at::ScalarType qdtype) {
  if (scales.numel() == 0) return;
  const auto s = scales.to(at::kFloat);
  const auto [s_min, s_max] = at::aminmax(s);
  const double lo = s_min.item<double>(), hi = s_max.item<double>();
  TORCH_CHECK_VALUE(lo > 0 && std::isfinite(hi), "scales must all be finite and > 0 (as float32), got ",
                    (lo > 0 ? hi : lo));
  const auto range = checks::qrange(qdtype, "dtype");
  const auto [z_min, z_max] = at::aminmax(zero_points);
  const int64_t zlo = z_min.item<int64_t>(), zhi = z_max.item<int64_t>();
  TORCH_CHECK_VALUE(zlo >= range.first && zhi <= range.second, "zero_points must be in [", range.first, ", ",
                    range.second, "] for torch.", c10::toString(qdtype), ", got ", (zlo < range.first ? zlo : zhi));
}

// (C, inner) of a tensor viewed around `axis`, after the per-channel checks.
std::pair<int64_t, int64_t> channel_layout(const at::Tensor& t, int64_t axis, const at::Tensor& scales,
                                           const at::Tensor& zero_points, const char* name) {
  axis = checks::axis(axis, t.dim(), "axis");
  TORCH_CHECK_VALUE(t.dim() >= 1, name, " must have at least 1 dimension for per-channel quantization");
  const std::string what = std::string(name) + ".shape[axis=" + std::to_string(axis) + "]";
  checks::qparams_meta(t, scales, zero_points, {t.size(axis)}, what.c_str());
  int64_t inner = 1;
  for (int64_t d = axis + 1; d < t.dim(); ++d) inner *= t.size(d);
  return {t.size(axis), std::max<int64_t>(inner, 1)};
}

at::Tensor quantize_per_tensor(const at::Tensor& x_, double scale, int64_t zero_point, at::ScalarType dtype) {
  checks::quant_input(x_, "x");
  const float inv = 1.0f / checks::scalar_scale(scale, "scale");
  const auto r = checks::qrange(dtype, "dtype");
  checks::zero_point(zero_point, r, "zero_point", dtype);
  c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous();
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(dtype));
  check_cuda_error(cq::quantize(x.const_data_ptr(), float_type(x.scalar_type()), static_cast<uint8_t*>(q.data_ptr()),
                                x.numel(), nullptr, nullptr, inv, static_cast<float>(zero_point), 1, 1, r.first,
                                r.second, true, c10::cuda::getCurrentCUDAStream()));
  return q;
}

at::Tensor quantize_per_channel(const at::Tensor& x_, const at::Tensor& scales, const at::Tensor& zero_points,
                                int64_t axis, at::ScalarType dtype) {
  checks::quant_input(x_, "x");
  const auto r = checks::qrange(dtype, "dtype");
  const auto [C, inner] = channel_layout(x_, axis, scales, zero_points, "x");
  qparams_values(scales, zero_points, dtype);
  c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous();
  const at::Tensor s32 = scales.to(at::kFloat);
  const at::Tensor inv = (at::ones_like(s32) / s32).contiguous();  // IEEE division: 1.0f / float32(scale)
  const at::Tensor zp = zero_points.to(at::kFloat).contiguous();
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(dtype));
  check_cuda_error(cq::quantize(x.const_data_ptr(), float_type(x.scalar_type()), static_cast<uint8_t*>(q.data_ptr()),
                                x.numel(), inv.const_data_ptr<float>(), zp.const_data_ptr<float>(), 1.0f, 0.0f, C,
                                inner, r.first, r.second, false, c10::cuda::getCurrentCUDAStream()));
  return q;
}

std::tuple<at::Tensor, at::Tensor> quantize_per_token(const at::Tensor& x_, at::ScalarType dtype) {
  checks::quant_input(x_, "x");
  TORCH_CHECK_TYPE(dtype == at::kChar, "dtype must be torch.int8 (per-token quantization is symmetric), got ", dtype);
  TORCH_CHECK_VALUE(x_.dim() >= 1, "x must have at least 1 dimension for per-token quantization");
  c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous();
  std::vector<int64_t> sshape(x.sizes().begin(), x.sizes().end());
  const int64_t K = sshape.back();
  sshape.back() = 1;
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(dtype));
  at::Tensor scales = at::empty(sshape, x.options().dtype(at::kFloat));
  check_cuda_error(cq::quantize_per_token(x.const_data_ptr(), float_type(x.scalar_type()), q.data_ptr<int8_t>(),
                                          scales.data_ptr<float>(), scales.numel(), K,
                                          c10::cuda::getCurrentCUDAStream()));
  return {q, scales};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_per_group(const at::Tensor& x_, int64_t group_size,
                                                                  at::ScalarType dtype, bool symmetric) {
  checks::quant_input(x_, "x");
  checks::qrange(dtype, "dtype");
  checks::group_size(x_, group_size, "x");
  c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous();
  std::vector<int64_t> gshape(x.sizes().begin(), x.sizes().end());
  gshape.back() /= group_size;
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(dtype));
  at::Tensor scales = at::empty(gshape, x.options().dtype(at::kFloat));
  at::Tensor zps = at::empty(gshape, x.options().dtype(at::kLong));
  check_cuda_error(cq::quantize_per_group(x.const_data_ptr(), float_type(x.scalar_type()),
                                          static_cast<uint8_t*>(q.data_ptr()), scales.data_ptr<float>(),
                                          zps.data_ptr<int64_t>(), scales.numel(), group_size, dtype == at::kChar,
                                          symmetric, c10::cuda::getCurrentCUDAStream()));
  return {q, scales, zps};
}

at::Tensor dequantize_per_tensor(const at::Tensor& q_, double scale, int64_t zero_point, at::ScalarType out_dtype) {
  checks::q_input(q_, "q");
  const float s = checks::scalar_scale(scale, "scale");
  checks::zero_point(zero_point, checks::qrange(q_.scalar_type(), "q.dtype"), "zero_point", q_.scalar_type());
  checks::float_out_dtype(out_dtype, "out_dtype");
  c10::cuda::CUDAGuard guard(q_.device());
  const at::Tensor q = q_.contiguous();
  at::Tensor out = at::empty(q.sizes(), q.options().dtype(out_dtype));
  check_cuda_error(cq::dequantize(static_cast<const uint8_t*>(q.const_data_ptr()), q.scalar_type() == at::kChar,
                                  out.data_ptr(), float_type(out_dtype), q.numel(), nullptr, nullptr, nullptr, s,
                                  static_cast<float>(zero_point), 1, 1, c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor dequantize_channels(const at::Tensor& q_, const at::Tensor& scales, const at::Tensor& zero_points,
                               int64_t C, int64_t inner, at::ScalarType out_dtype, bool float64_math) {
  qparams_values(scales, zero_points, q_.scalar_type());
  c10::cuda::CUDAGuard guard(q_.device());
  const at::Tensor q = q_.contiguous();
  const at::Tensor s32 = scales.to(at::kFloat).contiguous();
  const at::Tensor s64 = float64_math ? scales.to(at::kDouble).contiguous() : at::Tensor();
  const at::Tensor zp = zero_points.to(at::kFloat).contiguous();
  at::Tensor out = at::empty(q.sizes(), q.options().dtype(out_dtype));
  check_cuda_error(cq::dequantize(static_cast<const uint8_t*>(q.const_data_ptr()), q.scalar_type() == at::kChar,
                                  out.data_ptr(), float_type(out_dtype), q.numel(), s32.const_data_ptr<float>(),
                                  float64_math ? s64.const_data_ptr<double>() : nullptr, zp.const_data_ptr<float>(),
                                  1.0f, 0.0f, C, inner, c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor dequantize_per_channel(const at::Tensor& q, const at::Tensor& scales, const at::Tensor& zero_points,
                                  int64_t axis, at::ScalarType out_dtype) {
  checks::q_input(q, "q");
  checks::float_out_dtype(out_dtype, "out_dtype");
  const auto [C, inner] = channel_layout(q, axis, scales, zero_points, "q");
  // torch: (q - zp) * scale in float64, rounded once; identical to float32 math for float32 scales.
  return dequantize_channels(q, scales, zero_points, C, inner, out_dtype, scales.scalar_type() == at::kDouble);
}

at::Tensor dequantize_per_group(const at::Tensor& q, const at::Tensor& scales, const at::Tensor& zero_points,
                                int64_t group_size, at::ScalarType out_dtype) {
  checks::q_input(q, "q");
  checks::float_out_dtype(out_dtype, "out_dtype");
  const int64_t row_groups = checks::group_size(q, group_size, "q");
  std::vector<int64_t> gshape(q.sizes().begin(), q.sizes().end());
  gshape.back() = row_groups;
  checks::qparams_meta(q, scales, zero_points, gshape, "q.shape[:-1] + (groups,)");
  const int64_t groups = q.numel() / group_size;
  return dequantize_channels(q, scales, zero_points, std::max<int64_t>(groups, 1), group_size, out_dtype, false);
}

// The .out overloads: out must be a float tensor of q's shape on q's device that does not overlap q.
void into(const at::Tensor& q, at::Tensor& out, const at::Tensor& result) {
  TORCH_CHECK_VALUE(out.sizes() == q.sizes(), "out must have q's shape ", q.sizes(), ", got ", out.sizes());
  TORCH_CHECK_VALUE(out.device() == q.device(), "out must be on q's device (", q.device(), "), got ", out.device());
  TORCH_CHECK_VALUE(!checks::may_overlap(out, q),
                    "out must not overlap q (it is read while out is written)");
  out.copy_(result);
}

void dequantize_per_tensor_out(const at::Tensor& q, double scale, int64_t zero_point, at::Tensor& out) {
  into(q, out, dequantize_per_tensor(q, scale, zero_point, out.scalar_type()));
}

void dequantize_per_channel_out(const at::Tensor& q, const at::Tensor& scales, const at::Tensor& zero_points,
                                       int64_t axis, at::Tensor& out) {
  into(q, out, dequantize_per_channel(q, scales, zero_points, axis, out.scalar_type()));
}

void dequantize_per_group_out(const at::Tensor& q, const at::Tensor& scales, const at::Tensor& zero_points,
                                     int64_t group_size, at::Tensor& out) {
  into(q, out, dequantize_per_group(q, scales, zero_points, group_size, out.scalar_type()));
}

}  // namespace

void add_quant(Registrar& r) {
  r.op("quantize_per_tensor", &quantize_per_tensor);
  r.op("quantize_per_channel", &quantize_per_channel);
  r.op("quantize_per_token", &quantize_per_token);
  r.op("quantize_per_group", &quantize_per_group);
  r.op("dequantize_per_tensor", &dequantize_per_tensor);
  r.op("dequantize_per_channel", &dequantize_per_channel);
  r.op("dequantize_per_group", &dequantize_per_group);
  r.op("dequantize_per_tensor.out", &dequantize_per_tensor_out);
  r.op("dequantize_per_channel.out", &dequantize_per_channel_out);
  r.op("dequantize_per_group.out", &dequantize_per_group_out);
}

}  // namespace pyopt::cuda
