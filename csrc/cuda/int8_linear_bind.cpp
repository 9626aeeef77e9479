// The CUDA kernels of the int8 linear ops (launchers in csrc/cuda/int8_linear.cu): checks (csrc/op_checks.h),
// x [..., K] of any layout viewed as contiguous rows, allocation, the current stream.
// Weight-only with more than kGemvMaxTokens tokens dequantises 128 output rows at a time into a small buffer
// and uses cuBLAS through at::addmm (compute-bound there; the GEMV wins only while reading weights dominates).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "cuda/registrar.h"
#include "op_checks.h"

namespace pyopt::cuda::int8 {  // the launchers of csrc/cuda/int8_linear.cu
void quant_rows(const void* x, int dtype, int8_t* q, float* scales, int64_t M, int64_t K, cudaStream_t stream);
void dynamic_gemm(const int8_t* a, const int8_t* w, const float* sx, const float* sw, const float* bias,
                       void* out, int dtype, int64_t M, int64_t N, int64_t K, cudaStream_t stream);
void weight_only_gemv(const void* x, const int8_t* w, const float* sw, const float* bias, void* out, int dtype,
                           int64_t M, int64_t N, int64_t K, cudaStream_t stream);
}  // namespace pyopt::cuda::int8

namespace pyopt::cuda {
namespace {

constexpr int64_t kGemvMaxTokens = 16;

int dtype_code(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat: return 0;
    case at::kHalf: return 1;
    case at::kBFloat16: return 2;
    default: TORCH_CHECK_TYPE(false, "x must be float32, float16 or bfloat16, got ", x.scalar_type());
  }
  return 0;
}

// The 2-d operands (x rows, weights, a float32 bias), all on x's device.
struct Operands {
  at::Tensor x, w, sw;
  c10::optional<at::Tensor> bias;
};

Operands operands(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scales,
                  const c10::optional<at::Tensor>& bias) {
  checks::int8_linear(x, w_q, w_scales, bias);
  checks::same_device(w_q, "w_q", x, "x");
  checks::same_device(w_scales, "w_scales", x, "x");
  if (bias) checks::same_device(*bias, "bias", x, "x");
  const int64_t K = w_q.size(1);
  return {x.reshape({c10::multiply_integers(x.sizes().begin(), x.sizes().end() - 1), K}).contiguous(),
          w_q.contiguous(), w_scales.contiguous(),
          bias ? c10::optional<at::Tensor>(bias->to(at::kFloat).contiguous()) : c10::nullopt};
}

std::vector<int64_t> out_shape(const at::Tensor& x, int64_t N) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = N;
  return shape;
}

at::Tensor dynamic_2d(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scales,
                      const c10::optional<at::Tensor>& bias) {
  const int dt = dtype_code(x);
  c10::cuda::CUDAGuard guard(x.device());
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  const int64_t M = x.size(0), K = x.size(1), N = w_q.size(0);
  auto out = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return out;
  auto q = at::empty({M, K}, x.options().dtype(at::kChar));
  auto sx = at::empty({M}, x.options().dtype(at::kFloat));
  int8::quant_rows(x.data_ptr(), dt, q.data_ptr<int8_t>(), sx.data_ptr<float>(), M, K, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // |q| <= 127, |w| <= 128: an int32 sum of K products is exact while K <= 2^31 / (127 * 128); longer rows are
  // summed exactly in float64 (|acc| < 2^53) with the reference's float32 epilogue.
  if (K > 2147483647LL / (127 * 128)) {
    auto acc = at::mm(q.to(at::kDouble), w_q.to(at::kDouble).t()).to(at::kFloat) * sx.unsqueeze(1) * w_scales;
    return (bias ? acc + *bias : acc).to(x.scalar_type());
  }
  int8::dynamic_gemm(q.data_ptr<int8_t>(), w_q.data_ptr<int8_t>(), sx.data_ptr<float>(),
                          w_scales.data_ptr<float>(), bias ? bias->data_ptr<float>() : nullptr, out.data_ptr(), dt,
                          M, N, K, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor weight_only_2d(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scales,
                          const c10::optional<at::Tensor>& bias) {
  const int dt = dtype_code(x);
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t M = x.size(0), K = x.size(1), N = w_q.size(0);
  if (M > kGemvMaxTokens) {
    constexpr int64_t kBlockN = 128;
    auto out = at::empty({M, N}, x.options());
    for (int64_t n0 = 0; n0 < N; n0 += kBlockN) {
      const int64_t nb = std::min(kBlockN, N - n0);
      auto blk = (w_q.narrow(0, n0, nb).to(at::kFloat) * w_scales.narrow(0, n0, nb).unsqueeze(1)).to(x.scalar_type());
      auto o = out.narrow(1, n0, nb);
      if (bias) o.copy_(at::addmm(bias->narrow(0, n0, nb).to(x.scalar_type()), x, blk.t()));
      else o.copy_(at::mm(x, blk.t()));
    }
    return out;
  }
  auto out = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return out;
  int8::weight_only_gemv(x.data_ptr(), w_q.data_ptr<int8_t>(), w_scales.data_ptr<float>(),
                              bias ? bias->data_ptr<float>() : nullptr, out.data_ptr(), dt, M, N, K,
                              c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor int8_linear_dynamic(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scales,
                               const c10::optional<at::Tensor>& bias) {
  const Operands a = operands(x, w_q, w_scales, bias);
  return dynamic_2d(a.x, a.w, a.sw, a.bias).view(out_shape(x, w_q.size(0)));
}

at::Tensor int8_linear_weight_only(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scales,
                                   const c10::optional<at::Tensor>& bias) {
  const Operands a = operands(x, w_q, w_scales, bias);
  return weight_only_2d(a.x, a.w, a.sw, a.bias).view(out_shape(x, w_q.size(0)));
}

}  // namespace

void add_int8_linear(Registrar& r) {
  r.op("int8_linear_dynamic", &int8_linear_dynamic);
  r.op("int8_linear_weight_only", &int8_linear_weight_only);
}

}  // namespace pyopt::cuda
