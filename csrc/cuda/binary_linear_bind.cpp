// The CUDA kernel of pyopt::binary_linear (binary_linear.cu): checks (csrc/op_checks.h), x [..., K] of any float
// dtype and layout as contiguous float32 rows, M chunked to the grid limit, the current stream; the result in x's
// dtype.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <optional>
#include <vector>

#include "cuda/registrar.h"
#include "op_checks.h"

namespace pyopt::cuda::binary {
cudaError_t binary_linear_f32(const float* x, const uint8_t* w, const float* alpha, const float* bias, float* y,
                              int64_t M, int64_t N, int64_t K, bool binary_activations, cudaStream_t stream);
}

namespace pyopt::cuda {
namespace {

at::Tensor binary_linear(const at::Tensor& x_in, const at::Tensor& packed_weight, const at::Tensor& alpha,
                         const std::optional<at::Tensor>& bias, int64_t in_features, bool binary_activations) {
  checks::binary_linear(x_in, packed_weight, alpha, bias, in_features);
  checks::same_device(packed_weight, "packed_weight", x_in, "x");
  checks::same_device(alpha, "alpha", x_in, "x");
  if (bias) checks::same_device(*bias, "bias", x_in, "x");
  c10::cuda::CUDAGuard guard(x_in.device());
  const int64_t N = packed_weight.size(0);
  const at::Tensor x =
      x_in.reshape({c10::multiply_integers(x_in.sizes().begin(), x_in.sizes().end() - 1), in_features})
          .to(at::kFloat)
          .contiguous();
  const at::Tensor w = packed_weight.contiguous(), a = alpha.contiguous();
  const std::optional<at::Tensor> b = bias ? std::optional<at::Tensor>(bias->contiguous()) : std::nullopt;
  at::Tensor y = at::empty({x.size(0), N}, x.options());
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  constexpr int64_t kMaxRows = 65535;
  for (int64_t m0 = 0; m0 < x.size(0) && N > 0; m0 += kMaxRows) {
    const int64_t rows = std::min(kMaxRows, x.size(0) - m0);
    cudaError_t err = pyopt::cuda::binary::binary_linear_f32(x.data_ptr<float>() + m0 * in_features, w.data_ptr<uint8_t>(),
                                                    a.data_ptr<float>(), b ? b->data_ptr<float>() : nullptr,
                                                    y.data_ptr<float>() + m0 * N, rows, N, in_features,
                                                    binary_activations, stream);
    TORCH_CHECK(err == cudaSuccess, "binary_linear (cuda): launch failed: ", cudaGetErrorString(err));
  }
  std::vector<int64_t> shape(x_in.sizes().begin(), x_in.sizes().end());
  shape.back() = N;
  return y.to(x_in.scalar_type()).view(shape);
}

}  // namespace

void add_binary_linear(Registrar& r) { r.op("binary_linear", &binary_linear); }

}  // namespace pyopt::cuda
