// CPU kernels of the quant family: quantize / dequantize per tensor, channel, token and group.
//
// Each op takes any-strided input (made contiguous once; contiguous input is read in place, in one pass,
// fp16/bf16 widened in registers), splits the flat range into chunks for OpenMP, and runs the span kernels
// of quant_simd.h for the ISA active on the calling thread. Rounding rules: pyopt/_rules.py, quant_simd.h.
// These are the CPU-key kernels of the pyopt:: quant ops: every argument is checked here (op_checks.h: the
// messages and exception types of pyopt/ops/checks.py).
#include <ATen/ATen.h>
#include <omp.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>
#ifdef __linux__
#include <sys/mman.h>
#endif


#include "cpu/cpu_isa.h"
#include "cpu/quant_simd.h"
#include "op_checks.h"

namespace pyopt::quant {
namespace {
namespace checks = pyopt::checks;

constexpr int64_t kGrain = 1 << 15;  // elements per OpenMP chunk (a multiple of the 64-element block)
// Per-channel values are broadcast along rows of at least this many elements; shorter rows use arrays of
// per-element values (one period of C * inner elements if at most kMaxPeriod, else filled block by block).
constexpr int64_t kBroadcastInner = 64;
// Outputs of at least this many bytes are written with streaming stores (they would not stay in cache).
constexpr int64_t kStreamBytes = 4 << 20;
constexpr int64_t kMaxPeriod = 1 << 16;

// A new output tensor. Large ones are asked to be backed by 2 MB pages: a fresh 64 MB output otherwise costs
// 16k page faults, which on the 2-core machines here take longer than the kernel itself (madvise only marks
// the mapping; it is a hint, harmless where transparent huge pages are off). No cache of released blocks: that
// would be process-wide mutable state and would hand out non-resizable (from_blob) storages; callers that
// dequantize repeatedly pass out= (the fast path, README "Speed (CPU)").
at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const uintptr_t huge = uintptr_t{1} << 21, p = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t begin = (p + huge - 1) & ~(huge - 1), end = (p + t.nbytes()) & ~(huge - 1);
  if (t.nbytes() >= 4 * huge && end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
  return t;
}

// f(begin, end) on [0, n) in kGrain chunks, in parallel when there is more than one chunk. Chunks are handed
// out dynamically: on a shared machine a descheduled thread then delays one chunk, not half the work.
template <class F>
void parallel_chunks(int64_t n, const F& f) {
  const int64_t chunks = (n + kGrain - 1) / kGrain;
  if (chunks <= 1) {
    if (n > 0) f(int64_t{0}, n);
    stream_fence();
    return;
  }
#pragma omp parallel
  {
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t c = 0; c < chunks; ++c) f(c * kGrain, std::min(n, (c + 1) * kGrain));
    stream_fence();
  }
}

// f(i) for i in [0, count), dynamically scheduled over the threads when `in_parallel`.
template <class F>
void parallel_items(int64_t count, bool in_parallel, const F& f) {
#pragma omp parallel if (in_parallel)
  {
#pragma omp for schedule(dynamic, 16) nowait
    for (int64_t i = 0; i < count; ++i) f(i);
    stream_fence();
  }
}

template <class F>
void dispatch_float(at::ScalarType t, const F& f) {
  switch (t) {
    case at::kFloat: return f(float{});
    case at::kHalf: return f(at::Half{});
    case at::kBFloat16: return f(at::BFloat16{});
    default: TORCH_CHECK(false, "expected a float32/float16/bfloat16 tensor, got ", t);
  }
}

// float32 scales (converted exactly from float32/float64) and zero points, validated.
struct ChannelParams {
  std::vector<double> scale;
  std::vector<float> scale32, zp;
};

// The values of validated per-channel / per-group qparams (their metadata is checked by the caller): every
// scale finite and > 0 in float32, every zero point in the range of the quantized dtype (ValueError).
ChannelParams channel_params(const at::Tensor& scales, const at::Tensor& zero_points, at::ScalarType qdtype) {
  const int64_t n = scales.numel();
  const auto range = checks::qrange(qdtype, "dtype");
  at::Tensor s = scales.to(at::kDouble).contiguous(), z = zero_points.to(at::kLong).contiguous();
  const double* ps = s.const_data_ptr<double>();
  const int64_t* pz = z.const_data_ptr<int64_t>();
  ChannelParams p{std::vector<double>(ps, ps + n), std::vector<float>(n), std::vector<float>(n)};
  for (int64_t c = 0; c < n; ++c) {
    const float s32 = static_cast<float>(ps[c]);
    TORCH_CHECK_VALUE(std::isfinite(s32) && s32 > 0, "scales must all be finite and > 0 (as float32), got ", ps[c]);
    TORCH_CHECK_VALUE(pz[c] >= range.first && pz[c] <= range.second, "zero_points must be in [", range.first, ", ",
                      range.second, "] for torch.", c10::toString(qdtype), ", got ", pz[c]);
    p.scale32[c] = s32;
    p.zp[c] = static_cast<float>(pz[c]);
  }
  return p;
}

// (outer, C, inner) of a tensor viewed around `axis`.
// Checks axis, then the per-channel qparams' metadata (one per channel of that axis).
std::tuple<int64_t, int64_t, int64_t> around_axis(const at::Tensor& t, int64_t axis, const char* name,
                                                  const at::Tensor& scales, const at::Tensor& zero_points) {
  axis = checks::axis(axis, t.dim(), "axis");
  TORCH_CHECK_VALUE(t.dim() >= 1, name, " must have at least 1 dimension for per-channel quantization");
  const std::string what = std::string(name) + ".shape[axis=" + std::to_string(axis) + "]";
  checks::qparams_meta(t, scales, zero_points, {t.size(axis)}, what.c_str());
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= t.size(d);
  for (int64_t d = axis + 1; d < t.dim(); ++d) inner *= t.size(d);
  return {outer, t.size(axis), inner};
}

// Runs span(i, len, a, b) over [0, n) of a flat (outer, C, inner) tensor where the per-channel values a[c],
// b[c] apply to element i with c = (i / inner) % C: broadcast per row when inner is long; else as arrays
// running along the data, expanded once over the period C * inner when that is short, or block by block.
template <class BroadcastSpan, class ElemSpan>
void per_channel_ranges(int64_t n, int64_t C, int64_t inner, const std::vector<float>& a,
                        const std::vector<float>& b, const BroadcastSpan& bspan, const ElemSpan& espan) {
  if (inner >= kBroadcastInner) {
    parallel_chunks(n, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end;) {
        const int64_t row = i / inner, stop = std::min(end, (row + 1) * inner), c = row % C;
        bspan(i, stop - i, &a[c], &b[c]);
        i = stop;
      }
    });
    return;
  }
  const int64_t period = C * inner;
  if (period <= kMaxPeriod) {
    std::vector<float> ea(period), eb(period);
    for (int64_t p = 0; p < period; ++p) ea[p] = a[p / inner], eb[p] = b[p / inner];
    parallel_chunks(n, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end;) {
        const int64_t p = i % period, len = std::min(period - p, end - i);
        espan(i, len, &ea[p], &eb[p]);
        i += len;
      }
    });
    return;
  }
  constexpr int64_t kBlock = 1024;
  parallel_chunks(n, [&](int64_t begin, int64_t end) {
    float ea[kBlock], eb[kBlock];
    int64_t c = (begin / inner) % C, within = begin % inner;
    for (int64_t i = begin; i < end; i += kBlock) {
      const int64_t len = std::min(kBlock, end - i);
      for (int64_t k = 0; k < len; ++k) {
        ea[k] = a[c];
        eb[k] = b[c];
        if (++within == inner) within = 0, c = c + 1 == C ? 0 : c + 1;
      }
      espan(i, len, ea, eb);
    }
  });
}

// --------------------------------------------------------------------------------------------------------
// quantize
// --------------------------------------------------------------------------------------------------------
}  // namespace

at::Tensor quantize_per_tensor(const at::Tensor& x_, double scale, int64_t zero_point, at::ScalarType dtype) {
  checks::quant_input(x_, "x");
  const float inv = 1.0f / checks::scalar_scale(scale, "scale"), zp = static_cast<float>(zero_point);
  const auto range = checks::qrange(dtype, "dtype");
  checks::zero_point(zero_point, range, "zero_point", dtype);
  const at::Tensor x = x_.contiguous();
  at::Tensor out = new_output(x.sizes(), x.options().dtype(dtype));
  const bool nt = out.nbytes() >= kStreamBytes;
  const Isa isa = pyopt::active_isa();
  uint8_t* po = static_cast<uint8_t*>(out.data_ptr());
  dispatch_float(x.scalar_type(), [&](auto tag) {
    using In = decltype(tag);
    const In* px = static_cast<const In*>(x.const_data_ptr());
    parallel_chunks(x.numel(), [&](int64_t b, int64_t e) {
      if (dtype == at::kChar)
        quant_span<In, Rule::Fma, false, true>(isa, px + b, po + b, e - b, &inv, &zp, range.first, range.second, nt);
      else
        quant_span<In, Rule::Fma, false, false>(isa, px + b, po + b, e - b, &inv, &zp, range.first, range.second, nt);
    });
  });
  return out;
}

at::Tensor quantize_per_channel(const at::Tensor& x_, const at::Tensor& scales, const at::Tensor& zero_points,
                                int64_t axis, at::ScalarType dtype) {
  checks::quant_input(x_, "x");
  const auto range = checks::qrange(dtype, "dtype");
  int64_t outer, C, inner;
  std::tie(outer, C, inner) = around_axis(x_, axis, "x", scales, zero_points);
  ChannelParams p = channel_params(scales, zero_points, dtype);
  std::vector<float> inv(C);
  for (int64_t c = 0; c < C; ++c) inv[c] = 1.0f / p.scale32[c];
  const at::Tensor x = x_.contiguous();
  at::Tensor out = new_output(x.sizes(), x.options().dtype(dtype));
  const bool nt = out.nbytes() >= kStreamBytes;
  const Isa isa = pyopt::active_isa();
  uint8_t* po = static_cast<uint8_t*>(out.data_ptr());
  const float lo = range.first, hi = range.second;
  dispatch_float(x.scalar_type(), [&](auto tag) {
    using In = decltype(tag);
    const In* px = static_cast<const In*>(x.const_data_ptr());
    auto spans = [&](auto is_signed) {
      constexpr bool S = decltype(is_signed)::value;
      per_channel_ranges(
          x.numel(), C, inner, inv, p.zp,
          [&](int64_t i, int64_t n, const float* a, const float* b) {
            quant_span<In, Rule::Product, false, S>(isa, px + i, po + i, n, a, b, lo, hi, nt);
          },
          [&](int64_t i, int64_t n, const float* a, const float* b) {
            quant_span<In, Rule::Product, true, S>(isa, px + i, po + i, n, a, b, lo, hi, nt);
          });
    };
    if (dtype == at::kChar) spans(std::true_type{});
    else spans(std::false_type{});
  });
  (void)outer;
  return out;
}

std::tuple<at::Tensor, at::Tensor> quantize_per_token(const at::Tensor& x_, at::ScalarType dtype) {
  checks::quant_input(x_, "x");
  TORCH_CHECK_TYPE(dtype == at::kChar, "dtype must be torch.int8 (per-token quantization is symmetric), got ", dtype);
  TORCH_CHECK_VALUE(x_.dim() >= 1, "x must have at least 1 dimension for per-token quantization");
  const at::Tensor x = x_.contiguous();
  at::Tensor out = new_output(x.sizes(), x.options().dtype(dtype));
  const bool nt = out.nbytes() >= kStreamBytes;
  std::vector<int64_t> sshape(x.sizes().begin(), x.sizes().end());
  const int64_t K = sshape.back();
  sshape.back() = 1;
  at::Tensor scales = at::empty(sshape, x.options().dtype(at::kFloat));
  const int64_t rows = scales.numel();
  float* ps = scales.data_ptr<float>();
  uint8_t* po = static_cast<uint8_t*>(out.data_ptr());
  const Isa isa = pyopt::active_isa();
  dispatch_float(x.scalar_type(), [&](auto tag) {
    using In = decltype(tag);
    const In* px = static_cast<const In*>(x.const_data_ptr());
    parallel_items(rows, rows * K > kGrain, [&](int64_t r) {
      ps[r] = quantize_row_per_token<In>(isa, px + r * K, reinterpret_cast<int8_t*>(po + r * K), K, nt);
    });
  });
  return {out, scales};
}

namespace {
// One group's (scale, zero point): torch.ao's observer formulas (pyopt/_rules.py qparams_from_minmax).
std::pair<float, float> group_qparams(float mn, float mx, float qmin, float qmax, bool symmetric, bool is_uint8) {
  if (std::isnan(mn) || std::isnan(mx)) return {NAN, symmetric && is_uint8 ? 128.0f : 0.0f};
  const float eps = std::numeric_limits<float>::epsilon();
  const float min_neg = std::min(mn, 0.0f), max_pos = std::max(mx, 0.0f);
  if (symmetric) {
    const float scale = std::max(std::max(-min_neg, max_pos) / ((qmax - qmin) / 2.0f), eps);
    return {scale, is_uint8 ? 128.0f : 0.0f};
  }
  const float scale = std::max((max_pos - min_neg) / (qmax - qmin), eps);
  float zp = qmin - std::nearbyint(min_neg / scale);
  zp = std::isnan(zp) ? 0.0f : std::min(std::max(zp, qmin), qmax);
  return {scale, zp};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_per_group(const at::Tensor& x_, int64_t group_size,
                                                                  at::ScalarType dtype, bool symmetric) {
  checks::quant_input(x_, "x");
  const auto range = checks::qrange(dtype, "dtype");
  checks::group_size(x_, group_size, "x");
  const at::Tensor x = x_.contiguous();
  at::Tensor out = new_output(x.sizes(), x.options().dtype(dtype));
  const bool nt = out.nbytes() >= kStreamBytes;
  std::vector<int64_t> gshape(x.sizes().begin(), x.sizes().end());
  gshape.back() /= group_size;
  at::Tensor scales = at::empty(gshape, x.options().dtype(at::kFloat));
  at::Tensor zps = at::empty(gshape, x.options().dtype(at::kLong));
  const int64_t groups = scales.numel();
  float* ps = scales.data_ptr<float>();
  int64_t* pz = zps.data_ptr<int64_t>();
  uint8_t* po = static_cast<uint8_t*>(out.data_ptr());
  const Isa isa = pyopt::active_isa();
  const float lo = range.first, hi = range.second;
  dispatch_float(x.scalar_type(), [&](auto tag) {
    using In = decltype(tag);
    const In* px = static_cast<const In*>(x.const_data_ptr());
    parallel_items(groups, groups * group_size > kGrain, [&](int64_t g) {
      const In* xg = px + g * group_size;
      float mn, mx;
      minmax_span<In>(isa, xg, group_size, &mn, &mx);
      const auto [scale, zp] = group_qparams(mn, mx, lo, hi, symmetric, dtype == at::kByte);
      const float inv = 1.0f / scale;
      ps[g] = scale;
      pz[g] = static_cast<int64_t>(zp);
      if (dtype == at::kChar)
        quant_span<In, Rule::Product, false, true>(isa, xg, po + g * group_size, group_size, &inv, &zp, lo, hi, nt);
      else
        quant_span<In, Rule::Product, false, false>(isa, xg, po + g * group_size, group_size, &inv, &zp, lo, hi, nt);
    });
  });
  return {out, scales, zps};
}

// --------------------------------------------------------------------------------------------------------
// dequantize: (float32(q) - zp) * scale, narrowed to out_dtype
// --------------------------------------------------------------------------------------------------------
namespace {
template <class F>
void dispatch_out(at::ScalarType out_dtype, bool is_signed, const F& f) {
  dispatch_float(out_dtype, [&](auto tag) {
    if (is_signed) f(tag, std::true_type{});
    else f(tag, std::false_type{});
  });
}

// dequant_span over per_channel_ranges (see there): the broadcast and the per-element variant of one
// (Out, signedness) pair.
template <class Out, bool S>
void dequant_channels(Isa isa, const uint8_t* pq, Out* po, int64_t numel, int64_t C, int64_t inner,
                      const std::vector<float>& scale, const std::vector<float>& zp, bool nt) {
  per_channel_ranges(
      numel, C, inner, scale, zp,
      [&](int64_t i, int64_t n, const float* a, const float* b) {
        dequant_span<Out, false, S>(isa, pq + i, po + i, n, a, b, nt);
      },
      [&](int64_t i, int64_t n, const float* a, const float* b) {
        dequant_span<Out, true, S>(isa, pq + i, po + i, n, a, b, nt);
      });
}

// The caller's output (the pyopt::dequantize_*.out overloads): a float tensor of q's shape that does not share
// memory with q (the kernels read q while writing out). A fresh output is the other case (new_output); writing
// into a reused one skips the page faults of a new mapping.
void check_out(const at::Tensor& q, const at::Tensor& out) {
  checks::float_out_dtype(out.scalar_type(), "out_dtype");
  TORCH_CHECK_VALUE(out.sizes() == q.sizes(), "out must have q's shape ", q.sizes(), ", got ", out.sizes());
  TORCH_CHECK_VALUE(!checks::may_overlap(out, q),
                    "out must not overlap q (it is read while out is written)");
}

// Every dequantize op: checks, then `body(q, out, nt)` writes the contiguous q into the contiguous out
// (fresh, or the caller's; a non-contiguous caller's out gets a contiguous result copied in).
template <class Body>
void dequantize_into(const at::Tensor& q_, at::Tensor& out, const Body& body) {
  const at::Tensor q = q_.contiguous();
  at::Tensor dst = out.is_contiguous() ? out : new_output(q.sizes(), q.options().dtype(out.scalar_type()));
  body(q, dst, dst.nbytes() >= kStreamBytes);
  if (!dst.is_same(out)) out.copy_(dst);
}

template <class Body>
at::Tensor dequantize_new(const at::Tensor& q, at::ScalarType out_dtype, const Body& body) {
  at::Tensor out = new_output(q.sizes(), q.options().dtype(out_dtype));
  dequantize_into(q, out, body);
  return out;
}

auto per_tensor_body(const at::Tensor& q_, double scale, int64_t zero_point) {
  checks::q_input(q_, "q");
  const float s = checks::scalar_scale(scale, "scale"), zp = static_cast<float>(zero_point);
  checks::zero_point(zero_point, checks::qrange(q_.scalar_type(), "q.dtype"), "zero_point", q_.scalar_type());
  const Isa isa = pyopt::active_isa();
  return [=](const at::Tensor& q, at::Tensor& out, bool nt) {
    const uint8_t* pq = static_cast<const uint8_t*>(q.const_data_ptr());
    dispatch_out(out.scalar_type(), q.scalar_type() == at::kChar, [&](auto tag, auto is_signed) {
      using Out = decltype(tag);
      constexpr bool S = decltype(is_signed)::value;
      Out* po = static_cast<Out*>(out.data_ptr());
      parallel_chunks(q.numel(), [&](int64_t b, int64_t e) {
        dequant_span<Out, false, S>(isa, pq + b, po + b, e - b, &s, &zp, nt);
      });
    });
  };
}

auto per_channel_body(const at::Tensor& q_, const at::Tensor& scales, const at::Tensor& zero_points, int64_t axis) {
  checks::q_input(q_, "q");
  int64_t outer, C, inner;
  std::tie(outer, C, inner) = around_axis(q_, axis, "q", scales, zero_points);
  (void)outer;
  ChannelParams p = channel_params(scales, zero_points, q_.scalar_type());
  // torch computes (q - zp) * scale in float64 and rounds once. With float32-representable scales the
  // float32 product is that same correctly rounded value, so the vector kernels apply; otherwise float64.
  const bool f32_exact = std::all_of(p.scale.begin(), p.scale.end(), [](double v) { return (double)(float)v == v; });
  const Isa isa = f32_exact ? pyopt::active_isa() : Isa::Scalar;
  // init-capture: the per-channel / per-group vectors move into the closure instead of being copied
  return [=, p = std::move(p)](const at::Tensor& q, at::Tensor& out, bool nt) {
    const uint8_t* pq = static_cast<const uint8_t*>(q.const_data_ptr());
    dispatch_out(out.scalar_type(), q.scalar_type() == at::kChar, [&](auto tag, auto is_signed) {
      using Out = decltype(tag);
      constexpr bool S = decltype(is_signed)::value;
      Out* po = static_cast<Out*>(out.data_ptr());
      if (!f32_exact) {
        parallel_chunks(q.numel(), [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) {
            const int64_t c = (i / inner) % C;
            const double qv = S ? static_cast<int8_t>(pq[i]) : pq[i];
            po[i] = from_float<Out>(static_cast<float>((qv - p.zp[c]) * p.scale[c]));
          }
        });
        return;
      }
      dequant_channels<Out, S>(isa, pq, po, q.numel(), C, inner, p.scale32, p.zp, nt);
    });
  };
}

auto per_group_body(const at::Tensor& q_, const at::Tensor& scales, const at::Tensor& zero_points,
                    int64_t group_size) {
  checks::q_input(q_, "q");
  const int64_t row_groups = checks::group_size(q_, group_size, "q");
  std::vector<int64_t> gshape(q_.sizes().begin(), q_.sizes().end());
  gshape.back() = row_groups;
  checks::qparams_meta(q_, scales, zero_points, gshape, "q.shape[:-1] + (groups,)");
  const int64_t groups = q_.numel() / group_size;
  ChannelParams p = channel_params(scales, zero_points, q_.scalar_type());
  const Isa isa = pyopt::active_isa();
  // init-capture: the per-channel / per-group vectors move into the closure instead of being copied
  return [=, p = std::move(p)](const at::Tensor& q, at::Tensor& out, bool nt) {
    const uint8_t* pq = static_cast<const uint8_t*>(q.const_data_ptr());
    dispatch_out(out.scalar_type(), q.scalar_type() == at::kChar, [&](auto tag, auto is_signed) {
      using Out = decltype(tag);
      constexpr bool S = decltype(is_signed)::value;
      // Groups are channels of a (groups, group_size) view; per-group math is float32 (float32(scales)).
      dequant_channels<Out, S>(isa, pq, static_cast<Out*>(out.data_ptr()), q.numel(), groups, group_size,
                               p.scale32, p.zp, nt);
    });
  };
}

}  // namespace

// dequantize_*: a fresh output of out_dtype; dequantize_*.out: into the caller's tensor.
at::Tensor dequantize_per_tensor(const at::Tensor& q, double scale, int64_t zero_point, at::ScalarType out_dtype) {
  auto body = per_tensor_body(q, scale, zero_point);
  checks::float_out_dtype(out_dtype, "out_dtype");
  return dequantize_new(q, out_dtype, body);
}

void dequantize_per_tensor_out(const at::Tensor& q, double scale, int64_t zero_point, at::Tensor& out) {
  auto body = per_tensor_body(q, scale, zero_point);
  check_out(q, out);
  dequantize_into(q, out, body);
}

at::Tensor dequantize_per_channel(const at::Tensor& q, const at::Tensor& scales, const at::Tensor& zero_points,
                                  int64_t axis, at::ScalarType out_dtype) {
  checks::q_input(q, "q");
  checks::float_out_dtype(out_dtype, "out_dtype");
  return dequantize_new(q, out_dtype, per_channel_body(q, scales, zero_points, axis));
}

void dequantize_per_channel_out(const at::Tensor& q, const at::Tensor& scales, const at::Tensor& zero_points,
                                       int64_t axis, at::Tensor& out) {
  auto body = per_channel_body(q, scales, zero_points, axis);
  check_out(q, out);
  dequantize_into(q, out, body);
}

at::Tensor dequantize_per_group(const at::Tensor& q, const at::Tensor& scales, const at::Tensor& zero_points,
                                int64_t group_size, at::ScalarType out_dtype) {
  checks::q_input(q, "q");
  checks::float_out_dtype(out_dtype, "out_dtype");
  return dequantize_new(q, out_dtype, per_group_body(q, scales, zero_points, group_size));
}

void dequantize_per_group_out(const at::Tensor& q, const at::Tensor& scales, const at::Tensor& zero_points,
                                     int64_t group_size, at::Tensor& out) {
  auto body = per_group_body(q, scales, zero_points, group_size);
  check_out(q, out);
  dequantize_into(q, out, body);
}

}  // namespace pyopt::quant

TORCH_LIBRARY_IMPL(pyopt, CPU, m) {
  namespace q = pyopt::quant;
  m.impl("quantize_per_tensor", &q::quantize_per_tensor);
  m.impl("quantize_per_channel", &q::quantize_per_channel);
  m.impl("quantize_per_token", &q::quantize_per_token);
  m.impl("quantize_per_group", &q::quantize_per_group);
  m.impl("dequantize_per_tensor", &q::dequantize_per_tensor);
  m.impl("dequantize_per_channel", &q::dequantize_per_channel);
  m.impl("dequantize_per_group", &q::dequantize_per_group);
  m.impl("dequantize_per_tensor.out", &q::dequantize_per_tensor_out);
  m.impl("dequantize_per_channel.out", &q::dequantize_per_channel_out);
  m.impl("dequantize_per_group.out", &q::dequantize_per_group_out);
}
