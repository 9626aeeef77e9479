// The sparse ops' semantics in ATen operations, for the paths without a hand-written kernel (CPU float64, CUDA
// tensors other than float32) and for checking a CSR structure on any device (pyopt/ops/reference/sparse.py
// defines the same): y[m, n] = sum over the stored entries (n, k) of w * x[m, k] + b[n] — pruned weights are
// structural zeros, so an inf/NaN in a column no stored weight reads does not reach y.
#pragma once
#include <ATen/ATen.h>

#include <vector>

namespace pyopt::sparse_aten {

// The row of every stored entry of a CSR (or block-row of a BSR) structure.
inline at::Tensor rows_of(const at::Tensor& crow) { return at::repeat_interleave(crow.diff()); }

// crow runs from 0 to nnz without decreasing; column indices are strictly increasing within each row and in
// [0, k). One device sync on a GPU.
inline void check_structure(const at::Tensor& crow, const at::Tensor& col, int64_t nnz, int64_t k, const char* row) {
  const bool crow_ok = crow[0].item<int64_t>() == 0 && crow[-1].item<int64_t>() == nnz &&
                       (crow.numel() < 2 || (crow.slice(0, 1) >= crow.slice(0, 0, -1)).all().item<bool>());
  TORCH_CHECK_VALUE(crow_ok, "crow_indices must start at 0, never decrease and end at nnz=", nnz);
  if (nnz == 0) return;
  const at::Tensor c = col.to(at::kLong), rows = rows_of(crow);
  const at::Tensor up = (c.slice(0, 1) > c.slice(0, 0, -1)) | (rows.slice(0, 1) != rows.slice(0, 0, -1));
  const bool ok = up.all().item<bool>() && c.min().item<int64_t>() >= 0 && c.max().item<int64_t>() < k;
  TORCH_CHECK_VALUE(ok, "col_indices must be in [0, ", k, ") and strictly increasing within each ", row);
}

// [M, n]: y[:, rows[j]] += x2[:, cols[j]] * vals[j] over the stored entries j only.
inline at::Tensor stored_product(const at::Tensor& x2, const at::Tensor& rows, const at::Tensor& cols,
                                 const at::Tensor& vals, int64_t n) {
  return at::zeros({x2.size(0), n}, x2.options()).index_add_(1, rows, x2.index_select(1, cols) * vals);
}

// y = x W^T + b with W in CSR, x [..., K] in its own dtype (values and bias converted to it).
inline at::Tensor csr_linear(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col,
                             const at::Tensor& values, const std::optional<at::Tensor>& bias, int64_t n) {
  const at::Tensor x2 = x.reshape({-1, x.size(-1)});
  at::Tensor y = stored_product(x2, rows_of(crow), col.to(at::kLong), values.to(x.scalar_type()), n);
  if (bias) y.add_(bias->to(x.scalar_type()));
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = n;
  return y.view(shape);
}

}  // namespace pyopt::sparse_aten
