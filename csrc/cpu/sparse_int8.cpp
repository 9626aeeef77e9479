// csr_int8: weight-only int8 CSR linear. W (N x K) is stored as CSR with one int8 value per kept weight and a
// float32 symmetric scale per output row (scale_n = max_k |w[n, k]| / 127), so
//   y[m, n] = scale_n * sum_j q[j] * x[m, col[j]] + b[n]      (j over row n's nonzeros)
// Activations stay float. The kernels are the float CSR forward of sparse_common.h instantiated with int8
// values: each q is converted to float where the float path loads a float (a broadcast scalar in the M > 4
// AXPY, a vpmovsxbd + vcvtdq2ps of 16 / 8 values in the M <= 4 gather GEMV), and scale_n multiplies the
// finished row once: sum_k float(q) * x in float32 as in the float path, then the scale, so the result differs
// from dequantise-then-float-CSR only by float rounding order.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/sparse_common.h"

namespace pyopt_sparse {

static at::Tensor csr_int8_linear(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col,
                                  const at::Tensor& values, const at::Tensor& row_scales,
                                  const std::optional<at::Tensor>& bias, int64_t out_features, int64_t isa) {
  const int64_t N = out_features;
  TORCH_CHECK(values.scalar_type() == at::kChar && values.dim() == 1 && values.is_contiguous(),
              "values must be a contiguous 1-D int8 tensor, got ", values.scalar_type(), " of shape ", values.sizes());
  TORCH_CHECK(row_scales.scalar_type() == at::kFloat && row_scales.dim() == 1 && row_scales.is_contiguous() &&
                  row_scales.size(0) == N,
              "row_scales must be a contiguous 1-D float32 tensor of ", N, " entries (out_features), got ",
              row_scales.scalar_type(), " of shape ", row_scales.sizes());
  if (auto empty = csr_prologue(x, crow, col, values.size(0), bias, out_features)) return *empty;
  const float* b = bias_ptr(bias, N);
  const Kernels& kr = kernels_for(isa);
  const int64_t* pc = crow.data_ptr<int64_t>();
  const int8_t* pv = values.data_ptr<int8_t>();
  const float* ps = row_scales.data_ptr<float>();
  if (col.scalar_type() == at::kShort)
    return csr_linear_impl<int16_t, int8_t>(x, pc, col.data_ptr<int16_t>(), pv, N, b, ps, kr, kr.q8.gemv_row_i16,
                                            kr.q8.axpy_tile_i16, kr.in_range_i16);
  return csr_linear_impl<int32_t, int8_t>(x, pc, col.data_ptr<int32_t>(), pv, N, b, ps, kr, kr.q8.gemv_row_i32,
                                          kr.q8.axpy_tile_i32, kr.in_range_i32);
}

}  // namespace pyopt_sparse

TORCH_LIBRARY_FRAGMENT(pyopt_cpu, m) { m.def("sparse_csr_int8_linear", &pyopt_sparse::csr_int8_linear); }
