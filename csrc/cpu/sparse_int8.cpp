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
#include "op_checks.h"

namespace pyopt::sparse {
namespace {

at::Tensor csr_int8_linear_f32(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col,
                               const at::Tensor& values, const at::Tensor& row_scales,
                               const std::optional<at::Tensor>& bias, int64_t N) {
  const int64_t M = x.size(0);
  if (M == 0 || N == 0) {
    at::Tensor y = at::zeros({M, N}, x.options());
    return bias ? y.add_(*bias) : y;
  }
  const float* b = bias ? bias->data_ptr<float>() : nullptr;
  const Kernels& kr = kernels_for(pyopt::active_isa());
  const int64_t* pc = crow.data_ptr<int64_t>();
  const int8_t* pv = values.data_ptr<int8_t>();
  const float* ps = row_scales.data_ptr<float>();
  if (col.scalar_type() == at::kShort)
    return csr_linear_impl<int16_t, int8_t>(x, pc, col.data_ptr<int16_t>(), pv, N, b, ps, kr, kr.q8.gemv_row_i16,
                                            kr.q8.axpy_tile_i16, kr.in_range_i16);
  return csr_linear_impl<int32_t, int8_t>(x, pc, col.data_ptr<int32_t>(), pv, N, b, ps, kr, kr.q8.gemv_row_i32,
                                          kr.q8.axpy_tile_i32, kr.in_range_i32);
}

}  // namespace

// The CPU kernel of pyopt::sparse_csr_int8_linear: x [..., K] of any float dtype and layout. float64 x:
// dequantised values (float32, as the reference) through the float CSR op's float64 path.
at::Tensor csr_int8_linear(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col,
                           const at::Tensor& values, const at::Tensor& row_scales,
                           const std::optional<at::Tensor>& bias, int64_t out_features) {
  pyopt::checks::sparse_csr_int8_linear(x, crow, col, values, row_scales, bias, out_features);
  check_crow_values(crow, out_features, values.size(0));
  if (x.scalar_type() == at::kDouble) {
    const at::Tensor rows = at::repeat_interleave(crow.diff());
    const at::Tensor w = (values.to(at::kFloat) * row_scales.index_select(0, rows)).to(at::kDouble);
    return csr_linear(x, crow, col, w, bias ? std::optional<at::Tensor>(bias->to(at::kDouble)) : std::nullopt,
                      out_features);
  }
  return like_x(csr_int8_linear_f32(as_f32_rows(x), crow.contiguous(), col.contiguous(), values.contiguous(),
                                    row_scales.contiguous(), as_f32(bias), out_features),
                x, out_features);
}

}  // namespace pyopt::sparse

TORCH_LIBRARY_IMPL(pyopt, CPU, m) { m.impl("sparse_csr_int8_linear", &pyopt::sparse::csr_int8_linear); }
