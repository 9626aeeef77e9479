// Argument checks of the pyopt:: ops for the C++ kernels (CPU, and the CUDA bindings): the conditions and
// messages of pyopt/ops/checks.py (which the fake and reference kernels run), so every backend refuses the same
// input with the same Python exception type: TORCH_CHECK_TYPE -> TypeError, TORCH_CHECK_VALUE -> ValueError.
// Messages name the argument. Header-only; it includes only ATen.
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <initializer_list>
#include <sstream>
#include <string>
#include <utility>

namespace pyopt::checks {

inline std::string dtype_list(std::initializer_list<at::ScalarType> dtypes) {
  std::ostringstream s;
  s << "(";
  const char* sep = "";
  for (auto d : dtypes) s << sep << "'torch." << c10::toString(d) << "'", sep = ", ";
  s << ")";
  return s.str();
}

inline bool one_of(at::ScalarType t, std::initializer_list<at::ScalarType> dtypes) {
  for (auto d : dtypes)
    if (t == d) return true;
  return false;
}

// `name` must have one of `dtypes` (TypeError).
inline void dtype_in(const at::Tensor& t, const char* name, std::initializer_list<at::ScalarType> dtypes) {
  TORCH_CHECK_TYPE(one_of(t.scalar_type(), dtypes), name, " must have dtype in ", dtype_list(dtypes), ", got ",
                   t.scalar_type());
}

inline constexpr std::initializer_list<at::ScalarType> kFloat16to32 = {at::kFloat, at::kHalf, at::kBFloat16};
inline constexpr std::initializer_list<at::ScalarType> kSparseFloat = {at::kFloat, at::kDouble, at::kBFloat16,
                                                                        at::kHalf};

inline void ndim(const at::Tensor& t, const char* name, int64_t n) {
  TORCH_CHECK_VALUE(t.dim() == n, name, " must be ", n, "-D, got shape ", t.sizes());
}

// Every tensor of an op on one device (a CUDA kernel may be handed CPU tensors mixed with CUDA ones).
inline void same_device(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), name, " is on ", t.device(), " but ", ref_name, " is on ",
                    ref.device());
}

// Whether two strided tensors may share memory: the same storage and overlapping byte extents (conservative:
// two interleaved views that never touch the same element count as overlapping). Mirrors checks.py _overlaps.
inline bool may_overlap(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0 || b.numel() == 0 || !a.has_storage() || !b.has_storage()) return false;
  if (a.storage().data() != b.storage().data() || a.storage().data() == nullptr) return false;
  auto extent = [](const at::Tensor& t) {
    int64_t span = 0;
    for (int64_t d = 0; d < t.dim(); ++d) span += (t.size(d) - 1) * t.stride(d);
    const int64_t lo = t.storage_offset() * static_cast<int64_t>(t.element_size());
    return std::pair<int64_t, int64_t>{lo, lo + (span + 1) * static_cast<int64_t>(t.element_size())};
  };
  const auto [a0, a1] = extent(a);
  const auto [b0, b1] = extent(b);
  return a0 < b1 && b0 < a1;
}

// ---------------------------------------------------------------------------------------------------------
// quant family
// ---------------------------------------------------------------------------------------------------------
// (qmin, qmax) of an int8 / uint8 output type.
inline std::pair<int64_t, int64_t> qrange(at::ScalarType dtype, const char* name) {
  TORCH_CHECK_TYPE(dtype == at::kChar || dtype == at::kByte, name, " must be torch.int8 or torch.uint8, got ",
                   dtype);
  return dtype == at::kChar ? std::pair<int64_t, int64_t>{-128, 127} : std::pair<int64_t, int64_t>{0, 255};
}

// float32(scale), which must be finite and > 0 (the kernels use 1.0f / float32(scale), as torch does).
inline float scalar_scale(double scale, const char* name) {
  const float s = static_cast<float>(scale);
  TORCH_CHECK_VALUE(std::isfinite(scale) && scale > 0, name, " must be finite and > 0, got ", scale);
  TORCH_CHECK_VALUE(std::isfinite(s) && s > 0, name, " must be representable as a positive finite float32, got ",
                    scale);
  return s;
}

inline void zero_point(int64_t zp, std::pair<int64_t, int64_t> range, const char* name, at::ScalarType dtype) {
  TORCH_CHECK_VALUE(zp >= range.first && zp <= range.second, name, " must be in [", range.first, ", ",
                    range.second, "] for torch.", c10::toString(dtype), ", got ", zp);
}

// x of a quantize op: a float32 / float16 / bfloat16 tensor.
inline void quant_input(const at::Tensor& x, const char* name) { dtype_in(x, name, kFloat16to32); }

inline void q_input(const at::Tensor& q, const char* name) {
  TORCH_CHECK_TYPE(q.scalar_type() == at::kChar || q.scalar_type() == at::kByte, name,
                   " must have dtype torch.int8 or torch.uint8, got ", q.scalar_type());
}

inline void float_out_dtype(at::ScalarType t, const char* name) {
  TORCH_CHECK_TYPE(one_of(t, kFloat16to32), name, " must be one of ", dtype_list(kFloat16to32), ", got ", t);
}

// axis in [-ndim, ndim) -> its non-negative value.
inline int64_t axis(int64_t axis, int64_t ndim, const char* name) {
  TORCH_CHECK_VALUE(axis >= -ndim && axis < std::max<int64_t>(ndim, 1), name, " must be in [", -ndim, ", ",
                    ndim - 1, "] for a ", ndim, "-d tensor, got ", axis);
  return axis < 0 ? axis + ndim : axis;
}

inline int64_t group_size(const at::Tensor& x, int64_t group_size, const char* x_name) {
  TORCH_CHECK_VALUE(group_size >= 1, "group_size must be a positive int, got ", group_size);
  TORCH_CHECK_VALUE(x.dim() >= 1, x_name, " must have at least 1 dimension for per-group quantization");
  TORCH_CHECK_VALUE(x.size(-1) % group_size == 0, "group_size (", group_size, ") must divide the last dim of ",
                    x_name, " (", x.size(-1), ")");
  return x.size(-1) / group_size;
}

// scales: float32/float64 of `shape`; zero_points: an integer tensor of `shape`; on x's device.
inline void qparams_meta(const at::Tensor& x, const at::Tensor& scales, const at::Tensor& zero_points,
                         at::IntArrayRef shape, const char* what) {
  TORCH_CHECK_VALUE(scales.sizes() == shape, "scales must have shape ", shape, " (", what, "), got ", scales.sizes());
  TORCH_CHECK_VALUE(zero_points.sizes() == shape, "zero_points must have shape ", shape, " (", what, "), got ",
                    zero_points.sizes());
  same_device(scales, "scales", x, "the input");
  same_device(zero_points, "zero_points", x, "the input");
  TORCH_CHECK_TYPE(scales.scalar_type() == at::kFloat || scales.scalar_type() == at::kDouble,
                   "scales must be float32 or float64, got ", scales.scalar_type());
  const auto z = zero_points.scalar_type();
  TORCH_CHECK_TYPE(at::isIntegralType(z, /*includeBool=*/false), "zero_points must be an integer tensor, got ", z);
}

// ---------------------------------------------------------------------------------------------------------
// int8 / binary layers
// ---------------------------------------------------------------------------------------------------------
inline void int8_weights(const at::Tensor& w_q, const at::Tensor& w_scales, const std::optional<at::Tensor>& bias,
                         int64_t w_ndim) {
  TORCH_CHECK_TYPE(w_q.scalar_type() == at::kChar, "w_q must be an int8 tensor, got ", w_q.scalar_type());
  TORCH_CHECK_VALUE(w_q.dim() == w_ndim, "w_q must be ", w_ndim, "-d, got shape ", w_q.sizes());
  TORCH_CHECK_TYPE(w_scales.scalar_type() == at::kFloat, "w_scales must be a float32 tensor, got ",
                   w_scales.scalar_type());
  TORCH_CHECK_VALUE(w_scales.dim() == 1 && w_scales.size(0) == w_q.size(0), "w_scales must have shape (",
                    w_q.size(0), ",), got ", w_scales.sizes());
  if (bias) {
    dtype_in(*bias, "bias", kFloat16to32);
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == w_q.size(0), "bias must have shape (", w_q.size(0),
                      ",), got ", bias->sizes());
  }
}

inline void int8_linear(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scales,
                        const std::optional<at::Tensor>& bias) {
  dtype_in(x, "x", kFloat16to32);
  int8_weights(w_q, w_scales, bias, 2);
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) == w_q.size(1), "x: last dim must equal in_features=", w_q.size(1),
                    ", got shape ", x.sizes());
}

// (ho, wo) of a convolution; the checks of stride / padding / dilation and the spatial size.
inline std::pair<int64_t, int64_t> int8_conv2d(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scales,
                                               const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                               at::IntArrayRef padding, at::IntArrayRef dilation) {
  dtype_in(x, "x", kFloat16to32);
  int8_weights(w_q, w_scales, bias, 4);
  TORCH_CHECK_VALUE(x.dim() == 4 && x.size(1) == w_q.size(1), "x must be [B, ", w_q.size(1), ", H, W] (in_channels=",
                    w_q.size(1), "), got ", x.sizes());
  const std::pair<const char*, at::IntArrayRef> args[] = {{"stride", stride}, {"padding", padding},
                                                          {"dilation", dilation}};
  for (const auto& [name, v] : args) {
    const int64_t lo = std::string(name) == "padding" ? 0 : 1;
    TORCH_CHECK_VALUE(v.size() == 2 && v[0] >= lo && v[1] >= lo, name, " must be 2 ints >= ", lo, ", got ", v);
  }
  int64_t out[2];
  for (int i = 0; i < 2; ++i)
    out[i] = (x.size(2 + i) + 2 * padding[i] - dilation[i] * (w_q.size(2 + i) - 1) - 1) / stride[i] + 1;
  // (the numerator may be negative: C++ truncates toward 0 where Python floors, hence the explicit test)
  for (int i = 0; i < 2; ++i)
    TORCH_CHECK_VALUE(x.size(2 + i) + 2 * padding[i] - dilation[i] * (w_q.size(2 + i) - 1) - 1 >= 0 && out[i] >= 1,
                      "x spatial size ", x.sizes().slice(2), " is smaller than the (dilated) kernel");
  return {out[0], out[1]};
}

inline void binary_linear(const at::Tensor& x, const at::Tensor& packed_weight, const at::Tensor& alpha,
                          const std::optional<at::Tensor>& bias, int64_t in_features) {
  dtype_in(x, "x", kFloat16to32);
  TORCH_CHECK_VALUE(in_features >= 0, "in_features must be >= 0, got ", in_features);
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) == in_features, "x must have last dimension in_features=",
                    in_features, ", got shape ", x.sizes());
  TORCH_CHECK_TYPE(packed_weight.scalar_type() == at::kByte, "packed_weight must be a torch.uint8 tensor");
  TORCH_CHECK_VALUE(packed_weight.dim() == 2 && packed_weight.size(1) == (in_features + 7) / 8,
                    "packed_weight must have shape (out_features, ceil(in_features/8)=", (in_features + 7) / 8,
                    "), got ", packed_weight.sizes());
  const int64_t n = packed_weight.size(0);
  TORCH_CHECK_VALUE(alpha.scalar_type() == at::kFloat && alpha.dim() == 1 && alpha.size(0) == n,
                    "alpha must be a float32 tensor of shape (", n, ",)");
  TORCH_CHECK_VALUE(!bias || (bias->scalar_type() == at::kFloat && bias->dim() == 1 && bias->size(0) == n),
                    "bias must be None or a float32 tensor of shape (", n, ",)");
}

// ---------------------------------------------------------------------------------------------------------
// sparse family
// ---------------------------------------------------------------------------------------------------------
inline void same_dtype(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), name, " must have the dtype of ", ref_name, " (",
                   ref.scalar_type(), "), got ", t.scalar_type());
}

inline void sparse_bias(const std::optional<at::Tensor>& bias, int64_t n, const at::Tensor& x) {
  if (!bias) return;
  ndim(*bias, "bias", 1);
  same_dtype(*bias, "bias", x, "x");
  TORCH_CHECK_VALUE(bias->size(0) == n, "bias must have shape (", n, ",), got ", bias->sizes());
}

inline void sparse_mask(const at::Tensor& mask, at::IntArrayRef weight_shape) {
  TORCH_CHECK_TYPE(mask.scalar_type() == at::kBool, "mask must have dtype in ('torch.bool',), got ",
                   mask.scalar_type());
  TORCH_CHECK_VALUE(mask.sizes() == weight_shape, "mask must have the weight's shape ", weight_shape, ", got ",
                    mask.sizes());
}

inline void input_features(const at::Tensor& x, const char* name, int64_t k, const char* what) {
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) == k, name, " must have shape [..., ", k, "] (", what, "), got ",
                    x.sizes());
}

inline void sparse_masked_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
                                 const std::optional<at::Tensor>& bias) {
  dtype_in(x, "x", kSparseFloat);
  dtype_in(weight, "weight", kSparseFloat);
  ndim(weight, "weight", 2);
  same_dtype(weight, "weight", x, "x");
  input_features(x, "x", weight.size(1), "weight.shape[1]");
  sparse_mask(mask, weight.sizes());
  sparse_bias(bias, weight.size(0), x);
}

inline void sparse_masked_linear_grad_input(const at::Tensor& grad_y, const at::Tensor& weight,
                                            const at::Tensor& mask) {
  dtype_in(grad_y, "grad_y", kSparseFloat);
  dtype_in(weight, "weight", kSparseFloat);
  ndim(weight, "weight", 2);
  same_dtype(weight, "weight", grad_y, "grad_y");
  input_features(grad_y, "grad_y", weight.size(0), "weight.shape[0]");
  sparse_mask(mask, weight.sizes());
}

inline void sparse_masked_sddmm(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& mask) {
  dtype_in(grad_y, "grad_y", kSparseFloat);
  dtype_in(x, "x", kSparseFloat);
  same_dtype(x, "x", grad_y, "grad_y");
  TORCH_CHECK_VALUE(grad_y.dim() >= 1 && x.dim() >= 1 && grad_y.sizes().slice(0, grad_y.dim() - 1) ==
                                                              x.sizes().slice(0, x.dim() - 1),
                    "grad_y and x must agree on their leading dims, got ", grad_y.sizes(), " and ", x.sizes());
  sparse_mask(mask, {grad_y.size(-1), x.size(-1)});
}

// The compressed formats (csr, csr_int8, bsr): index structure and shapes; `rows` = entries of crow - 1.
inline void compressed(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                       int64_t out_features, int64_t rows, std::initializer_list<at::ScalarType> col_dtypes,
                       int64_t values_ndim) {
  dtype_in(x, "x", kSparseFloat);
  TORCH_CHECK_VALUE(out_features >= 0, "out_features must be an int >= 0, got ", out_features);
  dtype_in(crow, "crow_indices", {at::kLong});
  ndim(crow, "crow_indices", 1);
  dtype_in(col, "col_indices", col_dtypes);
  ndim(col, "col_indices", 1);
  ndim(values, "values", values_ndim);
  TORCH_CHECK_VALUE(crow.size(0) == rows + 1, "crow_indices must have ", rows + 1, " entries, got ", crow.size(0));
  TORCH_CHECK_VALUE(col.size(0) == values.size(0), "col_indices (", col.size(0), ") and values (", values.size(0),
                    ") must have one entry per nonzero");
  TORCH_CHECK_VALUE(x.dim() >= 1, "x must have at least 1 dim");
}

inline void sparse_csr_linear(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col,
                              const at::Tensor& values, const std::optional<at::Tensor>& bias, int64_t out_features) {
  compressed(x, crow, col, values, out_features, out_features, {at::kShort, at::kInt}, 1);
  same_dtype(values, "values", x, "x");
  sparse_bias(bias, out_features, x);
}

inline void sparse_csr_int8_linear(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col,
                                   const at::Tensor& values, const at::Tensor& row_scales,
                                   const std::optional<at::Tensor>& bias, int64_t out_features) {
  dtype_in(x, "x", kSparseFloat);
  dtype_in(values, "values", {at::kChar});
  ndim(values, "values", 1);
  dtype_in(row_scales, "row_scales", {at::kFloat});
  ndim(row_scales, "row_scales", 1);
  TORCH_CHECK_VALUE(row_scales.size(0) == out_features, "row_scales must have out_features=", out_features,
                    " entries, got ", row_scales.size(0));
  compressed(x, crow, col, values, out_features, out_features, {at::kShort, at::kInt}, 1);
  if (bias) {  // any float dtype (as the int8 linear ops): the layer's float32 bias serves fp16 / bf16 x too
    dtype_in(*bias, "bias", kSparseFloat);
    ndim(*bias, "bias", 1);
    TORCH_CHECK_VALUE(bias->size(0) == out_features, "bias must have shape (", out_features, ",), got ",
                      bias->sizes());
  }
}

inline void sparse_bsr_linear(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col,
                              const at::Tensor& values, const std::optional<at::Tensor>& bias, int64_t out_features) {
  ndim(values, "values", 3);
  const int64_t bh = values.size(1), bw = values.size(2);
  TORCH_CHECK_VALUE(bh > 0 && bw > 0 && out_features % bh == 0 && (x.dim() < 1 || x.size(-1) % bw == 0),
                    "block shape (", bh, ", ", bw, ") must divide the weight shape (", out_features, ", ",
                    x.dim() >= 1 ? x.size(-1) : 0, ")");
  compressed(x, crow, col, values, out_features, out_features / bh, {at::kInt}, 3);
  same_dtype(values, "values", x, "x");
  sparse_bias(bias, out_features, x);
}

// ---------------------------------------------------------------------------------------------------------
// fused SGD
// ---------------------------------------------------------------------------------------------------------
inline void sgd_lists(size_t n, size_t grads, size_t bufs, size_t masters, size_t masks, size_t first_step, double lr,
                      const std::optional<at::Tensor>& lr_tensor) {
  TORCH_CHECK_VALUE(grads == n, "grads must have one tensor per param (", n, "), got ", grads);
  TORCH_CHECK_VALUE(bufs == 0 || bufs == n, "momentum_buffers must be empty or have one tensor per param (", n,
                    "), got ", bufs);
  TORCH_CHECK_VALUE(masters == 0 || masters == n, "master_params must be empty or have one tensor per param (", n,
                    "), got ", masters);
  TORCH_CHECK_VALUE(masks == 0 || masks == n, "masks must be empty or have one entry per param (", n, "), got ",
                    masks);
  TORCH_CHECK_VALUE(first_step == (bufs ? n : 0), "first_step must have one flag per momentum buffer, got ",
                    first_step);
  TORCH_CHECK_VALUE(lr >= 0 && std::isfinite(lr), "Invalid learning rate: ", lr);
  TORCH_CHECK_VALUE(!lr_tensor || lr_tensor->numel() == 1, "lr_tensor must be 1-element");
}

// params[i] with its grad, momentum buffer, master copy and mask (nullptr where absent).
inline void sgd_tensor(size_t i, at::TensorList params, const at::Tensor& g, const at::Tensor* buf,
                       const at::Tensor* master, const at::Tensor* mask) {
  const at::Tensor& p = params[i];
  const auto dev = params[0].device();
  TORCH_CHECK_TYPE(one_of(p.scalar_type(), {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}), "params[", i,
                   "] must have dtype in ", dtype_list({at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}), ", got ",
                   p.scalar_type());
  const std::pair<const char*, const at::Tensor*> all[] = {
      {"params", &p}, {"grads", &g}, {"momentum_buffers", buf}, {"master_params", master}, {"masks", mask}};
  for (const auto& [name, t] : all)
    TORCH_CHECK_VALUE(!t || t->device() == dev, name, "[", i, "] is on ", t->device(), " but params[0] is on ", dev);
  TORCH_CHECK(!g.is_sparse(), "grads[", i, "]: FusedSGD does not support sparse gradients");
  TORCH_CHECK_VALUE(g.sizes() == p.sizes() && g.scalar_type() == p.scalar_type(), "grads[", i, "] must match params[",
                    i, "] (", p.scalar_type(), ", ", p.sizes(), "), got ", g.scalar_type());
  const bool low = p.scalar_type() == at::kHalf || p.scalar_type() == at::kBFloat16;
  TORCH_CHECK_VALUE(!master || (low && master->scalar_type() == at::kFloat && master->sizes() == p.sizes()),
                    "master_params[", i, "] must be a float32 copy of a bf16/fp16 params[", i, "]");
  if (buf) {
    const auto want = master ? at::kFloat : p.scalar_type();
    TORCH_CHECK_VALUE(buf->sizes() == p.sizes() && buf->scalar_type() == want, "momentum_buffers[", i, "] must be ",
                      want, " with shape ", p.sizes());
  }
  TORCH_CHECK_VALUE(!mask || (mask->scalar_type() == at::kBool && mask->sizes() == p.sizes()), "masks[", i,
                    "] must be a bool tensor of shape ", p.sizes());
}

}  // namespace pyopt::checks
