// Torch side of csrc/cuda/sparse.cu: argument checks, output allocation, the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

cudaError_t pyopt_sparse_csr_linear_launch(const float* x, const int64_t* crow, const int32_t* col,
                                           const float* values, const float* bias, float* y, int64_t M, int64_t N,
                                           int64_t K, cudaStream_t stream);

namespace {

at::Tensor sparse_csr_linear_cuda(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col,
                                  const at::Tensor& values, const std::optional<at::Tensor>& bias,
                                  int64_t out_features) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.is_contiguous() && x.scalar_type() == at::kFloat,
              "x must be a contiguous 2-D float32 CUDA tensor");
  const int64_t M = x.size(0), K = x.size(1), N = out_features;
  TORCH_CHECK(crow.is_cuda() && crow.scalar_type() == at::kLong && crow.dim() == 1 && crow.size(0) == N + 1,
              "crow_indices must be an int64 CUDA tensor of ", N + 1, " entries");
  TORCH_CHECK(col.is_cuda() && col.scalar_type() == at::kInt && col.dim() == 1 && col.is_contiguous(),
              "col_indices must be a contiguous int32 CUDA tensor");
  TORCH_CHECK(values.is_cuda() && values.scalar_type() == at::kFloat && values.dim() == 1 &&
                  values.is_contiguous() && values.size(0) == col.size(0),
              "values must be a contiguous float32 CUDA tensor with one entry per col_indices entry");
  if (col.numel() > 0) {
    TORCH_CHECK(col.min().item<int32_t>() >= 0 && col.max().item<int32_t>() < K, "col_indices must be in [0, ", K,
                ")");
  }
  const float* pb = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK(bias->is_cuda() && bias->scalar_type() == at::kFloat && bias->dim() == 1 && bias->size(0) == N &&
                    bias->is_contiguous(),
                "bias must be a contiguous float32 CUDA tensor of ", N, " entries");
    pb = bias->data_ptr<float>();
  }
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty({M, N}, x.options());
  const at::Tensor crow_c = crow.contiguous();
  const cudaError_t err = pyopt_sparse_csr_linear_launch(
      x.data_ptr<float>(), crow_c.data_ptr<int64_t>(), col.data_ptr<int32_t>(), values.data_ptr<float>(), pb,
      y.data_ptr<float>(), M, N, K, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "sparse_csr_linear CUDA launch failed: ", cudaGetErrorString(err));
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(pyopt_cuda, m) { m.def("sparse_csr_linear", &sparse_csr_linear_cuda); }
