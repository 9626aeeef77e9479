// Torch bindings of the int8 layer CUDA kernels (csrc/cuda/int8_linear.cu): checks, allocation, stream.
// Weight-only with more than kGemvMaxTokens tokens dequantises 128 output rows at a time into a small buffer
// and uses cuBLAS through at::addmm (compute-bound there; the GEMV wins only while reading weights dominates).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

void pyopt_int8_quant_rows(const void* x, int dtype, int8_t* q, float* scales, int64_t M, int64_t K,
                           cudaStream_t stream);
void pyopt_int8_dynamic_gemm(const int8_t* a, const int8_t* w, const float* sx, const float* sw, const float* bias,
                             void* out, int dtype, int64_t M, int64_t N, int64_t K, cudaStream_t stream);
void pyopt_int8_weight_only_gemv(const void* x, const int8_t* w, const float* sw, const float* bias, void* out,
                                 int dtype, int64_t M, int64_t N, int64_t K, cudaStream_t stream);

namespace {

constexpr int64_t kGemvMaxTokens = 16;

int dtype_code(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat: return 0;
    case at::kHalf: return 1;
    case at::kBFloat16: return 2;
    default: TORCH_CHECK(false, "x must be float32, float16 or bfloat16, got ", x.scalar_type());
  }
  return 0;
}

void check_args(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scales,
                const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.is_contiguous(), "x must be a contiguous 2-d CUDA tensor");
  TORCH_CHECK(w_q.is_cuda() && w_q.scalar_type() == at::kChar && w_q.dim() == 2 && w_q.is_contiguous(),
              "w_q must be a contiguous 2-d int8 CUDA tensor");
  TORCH_CHECK(x.size(1) == w_q.size(1), "x.size(1) must equal in_features (", w_q.size(1), ")");
  TORCH_CHECK(w_scales.is_cuda() && w_scales.scalar_type() == at::kFloat && w_scales.numel() == w_q.size(0) &&
                  w_scales.is_contiguous(),
              "w_scales must be a contiguous float32 CUDA tensor [out_features]");
  if (bias) {
    TORCH_CHECK(bias->is_cuda() && bias->scalar_type() == at::kFloat && bias->numel() == w_q.size(0) &&
                    bias->is_contiguous(),
                "bias must be a contiguous float32 CUDA tensor [out_features]");
  }
}

at::Tensor int8_linear_dynamic(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scales,
                               const c10::optional<at::Tensor>& bias) {
  check_args(x, w_q, w_scales, bias);
  const int dt = dtype_code(x);
  c10::cuda::CUDAGuard guard(x.device());
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  const int64_t M = x.size(0), K = x.size(1), N = w_q.size(0);
  auto out = at::empty({M, N}, x.options());
  auto q = at::empty({M, K}, x.options().dtype(at::kChar));
  auto sx = at::empty({M}, x.options().dtype(at::kFloat));
  pyopt_int8_quant_rows(x.data_ptr(), dt, q.data_ptr<int8_t>(), sx.data_ptr<float>(), M, K, stream);
  pyopt_int8_dynamic_gemm(q.data_ptr<int8_t>(), w_q.data_ptr<int8_t>(), sx.data_ptr<float>(),
                          w_scales.data_ptr<float>(), bias ? bias->data_ptr<float>() : nullptr, out.data_ptr(), dt,
                          M, N, K, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor int8_linear_weight_only(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scales,
                                   const c10::optional<at::Tensor>& bias) {
  check_args(x, w_q, w_scales, bias);
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
  pyopt_int8_weight_only_gemv(x.data_ptr(), w_q.data_ptr<int8_t>(), w_scales.data_ptr<float>(),
                              bias ? bias->data_ptr<float>() : nullptr, out.data_ptr(), dt, M, N, K,
                              c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(pyopt_cuda, m) {
  m.def("int8_linear_dynamic", &int8_linear_dynamic);
  m.def("int8_linear_weight_only", &int8_linear_weight_only);
}
