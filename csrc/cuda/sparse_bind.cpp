// The CUDA kernel of pyopt::sparse_csr_linear (csrc/cuda/sparse.cu: a warp per output row, float32): checks
// (csrc/op_checks.h and the CSR structure, one device sync), x [..., K] as contiguous rows. Other dtypes run the
// same semantics in ATen (csrc/sparse_aten.h).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <vector>

#include "cuda/registrar.h"
#include "op_checks.h"
#include "sparse_aten.h"

namespace pyopt::cuda::sparse {  // the launcher of csrc/cuda/sparse.cu
cudaError_t csr_linear_launch(const float* x, const int64_t* crow, const int32_t* col, const float* values,
                              const float* bias, float* y, int64_t M, int64_t N, int64_t K, cudaStream_t stream);
}  // namespace pyopt::cuda::sparse

namespace pyopt::cuda {
namespace {

at::Tensor sparse_csr_linear(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col,
                             const at::Tensor& values, const std::optional<at::Tensor>& bias, int64_t out_features) {
  checks::sparse_csr_linear(x, crow, col, values, bias, out_features);
  const std::pair<const char*, const at::Tensor*> others[] = {{"crow_indices", &crow}, {"col_indices", &col},
                                                              {"values", &values}};
  for (const auto& [name, t] : others) checks::same_device(*t, name, x, "x");
  if (bias) checks::same_device(*bias, "bias", x, "x");
  const int64_t K = x.size(-1), N = out_features;
  c10::cuda::CUDAGuard guard(x.device());
  pyopt::sparse_aten::check_structure(crow, col, values.size(0), K, "row");
  if (x.scalar_type() != at::kFloat) return pyopt::sparse_aten::csr_linear(x, crow, col, values, bias, N);
  const at::Tensor x2 = x.reshape({c10::multiply_integers(x.sizes().begin(), x.sizes().end() - 1), K}).contiguous();
  const at::Tensor crow_c = crow.contiguous(), col_c = col.to(at::kInt).contiguous(), v = values.contiguous();
  const std::optional<at::Tensor> b = bias ? std::optional<at::Tensor>(bias->contiguous()) : std::nullopt;
  const int64_t M = x2.size(0);
  at::Tensor y = at::empty({M, N}, x.options());
  if (M > 0 && N > 0) {
    const cudaError_t err = sparse::csr_linear_launch(
        x2.data_ptr<float>(), crow_c.data_ptr<int64_t>(), col_c.data_ptr<int32_t>(), v.data_ptr<float>(),
        b ? b->data_ptr<float>() : nullptr, y.data_ptr<float>(), M, N, K, c10::cuda::getCurrentCUDAStream());
    TORCH_CHECK(err == cudaSuccess, "sparse_csr_linear CUDA launch failed: ", cudaGetErrorString(err));
  }
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = N;
  return y.view(shape);
}

}  // namespace

void add_sparse(Registrar& r) { r.op("sparse_csr_linear", &sparse_csr_linear); }

}  // namespace pyopt::cuda
