// Torch binding of the CUDA binary_linear kernel (binary_linear.cu): checks, chunks M to the grid limit,
// and launches on the current stream. Registered as torch.ops.pyopt_cuda.binary_linear.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>
#include <ATen/ATen.h>

#include <optional>

namespace pyopt_cuda {
cudaError_t binary_linear_f32(const float* x, const uint8_t* w, const float* alpha, const float* bias, float* y,
                              int64_t M, int64_t N, int64_t K, bool binary_activations, cudaStream_t stream);
}

namespace {
at::Tensor binary_linear(const at::Tensor& x, const at::Tensor& packed_weight, const at::Tensor& alpha,
                         const std::optional<at::Tensor>& bias, int64_t in_features, bool binary_activations) {
  TORCH_CHECK(x.is_cuda() && packed_weight.is_cuda() && alpha.is_cuda(),
              "binary_linear (cuda): x, packed_weight and alpha must be CUDA tensors");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() && x.size(1) == in_features,
              "binary_linear (cuda): x must be a contiguous float32 (M, in_features) tensor");
  TORCH_CHECK(packed_weight.dim() == 2 && packed_weight.scalar_type() == at::kByte &&
                  packed_weight.is_contiguous() && packed_weight.size(1) == (in_features + 7) / 8,
              "binary_linear (cuda): packed_weight must be a contiguous uint8 (N, ceil(in_features/8)) tensor");
  const int64_t N = packed_weight.size(0);
  TORCH_CHECK(alpha.scalar_type() == at::kFloat && alpha.is_contiguous() && alpha.numel() == N,
              "binary_linear (cuda): alpha must be a contiguous float32 tensor of N elements");
  if (bias.has_value())
    TORCH_CHECK(bias->is_cuda() && bias->scalar_type() == at::kFloat && bias->is_contiguous() &&
                    bias->numel() == N,
                "binary_linear (cuda): bias must be a contiguous float32 CUDA tensor of N elements");
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty({x.size(0), N}, x.options());
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  const float* bias_ptr = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  constexpr int64_t kMaxRows = 65535;
  for (int64_t m0 = 0; m0 < x.size(0); m0 += kMaxRows) {
    const int64_t rows = std::min(kMaxRows, x.size(0) - m0);
    cudaError_t err = pyopt_cuda::binary_linear_f32(
        x.data_ptr<float>() + m0 * in_features, packed_weight.data_ptr<uint8_t>(), alpha.data_ptr<float>(),
        bias_ptr, y.data_ptr<float>() + m0 * N, rows, N, in_features, binary_activations, stream);
    TORCH_CHECK(err == cudaSuccess, "binary_linear (cuda): launch failed: ", cudaGetErrorString(err));
  }
  return y;
}
}  // namespace

TORCH_LIBRARY_FRAGMENT(pyopt_cuda, m) { m.def("binary_linear", &binary_linear); }
