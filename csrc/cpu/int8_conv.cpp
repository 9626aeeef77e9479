// Int8 conv2d kernel for the CPU (pyopt::int8_conv2d_dynamic): per-sample quantisation read straight from
// NCHW into NHWC int8, then an int8 im2col GEMM with the dequant epilogue: with AVX2 and up the native GEMMs
// of int8_gemm.h, the im2col fused into their row packing; otherwise an int8 im2col matrix, at::_int_mm and
// the epilogue pass of int8_linear.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/cpu_isa.h"
#include "cpu/int8_common.h"
#include "cpu/int8_gemm.h"
#include "cpu/quant_simd.h"
#include "op_checks.h"

#if PYOPT_X86
#include <immintrin.h>
#endif

namespace pyopt::int8 {
namespace {

// ---------------------------------------------------------------------------------------------------------
// Conv activations: per-sample quantisation read straight from NCHW and written as NHWC int8, so the float
// input is never copied to channels-last (that copy cost as much as the quantisation itself). The sample's
// amax does not depend on the layout: per-plane maxima first (parallel over B * C planes), then per sample.
// ---------------------------------------------------------------------------------------------------------
// One value of the per-token rule (quant_simd.h, quantize_row_per_token): clamp(rne(float32(v * inv)), ±127),
// NaN -> 0. For the scalar tails of the NCHW conv quantiser below.
inline int8_t quantize_one(float v, float inv) {
  const float r = std::nearbyint(v * inv);  // default rounding mode: half to even
  if (r != r) return 0;
  return static_cast<int8_t>(std::min(std::max(r, -127.0f), 127.0f));
}

// tile[c * n + i] = q(x[c * plane + i]) for i < n: one image row (n = W pixels) of all C channels, each
// channel's row read contiguously.
}  // namespace
namespace scalar {
namespace {
template <typename T>
void quant_tile(const T* x, int64_t plane, int64_t C, int64_t n, float inv, int8_t* tile) {
  for (int64_t c = 0; c < C; ++c)
    for (int64_t i = 0; i < n; ++i) tile[c * n + i] = quantize_one(to_f32(x[c * plane + i]), inv);
}

}  // namespace
}  // namespace scalar

#if PYOPT_X86
namespace avx512 {
namespace {
template <typename T>
PYOPT_TARGET_AVX512 void quant_tile(const T* x, int64_t plane, int64_t C, int64_t n, float inv,
                                           int8_t* tile) {
  const __m512 vinv = _mm512_set1_ps(inv), lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t k = 0; k < n; k += 16) {
      const __mmask16 m = n - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - k)) - 1);
      __m512 v = _mm512_mul_ps(load16(x + c * plane + k, m), vinv);
      v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
      _mm_mask_storeu_epi8(tile + c * n + k, m, _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(v)));
    }
  }
}

}  // namespace
}  // namespace avx512
namespace avx2 {
namespace {
template <typename T>
PYOPT_TARGET_AVX2 void quant_tile(const T* x, int64_t plane, int64_t C, int64_t n, float inv, int8_t* tile) {
  const __m256 vinv = _mm256_set1_ps(inv), lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  const int64_t n8 = n / 8 * 8;
  for (int64_t c = 0; c < C; ++c) {
    const T* xc = x + c * plane;
    int8_t* tc = tile + c * n;
    for (int64_t k = 0; k < n8; k += 8) {
      __m256 v = _mm256_round_ps(_mm256_mul_ps(load8(xc + k), vinv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      __m256i i32 = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, lo), hi));
      __m128i i16 = _mm_packs_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(tc + k), _mm_packs_epi16(i16, i16));
    }
    for (int64_t k = n8; k < n; ++k) tc[k] = quantize_one(to_f32(xc[k]), inv);
  }
}
}  // namespace
}  // namespace avx2
#endif

namespace {

// dst[j * ldd + i] = src[i * lds + j] for a 16 x 16 block of bytes (SSE2, baseline x86-64): four rounds of
// unpacklo / unpackhi at 1, 2, 4, 8 bytes. Register k of the last round holds column bitrev4(k) (each round
// moves one bit of the column index into the register index, lowest bit last), hence the reversed store.
#if PYOPT_X86
inline void transpose16x16_epi8(const int8_t* src, int64_t lds, int8_t* dst, int64_t ldd) {
  __m128i a[16], b[16];
  for (int i = 0; i < 16; ++i) a[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i * lds));
  for (int k = 0; k < 8; ++k) b[k] = _mm_unpacklo_epi8(a[2 * k], a[2 * k + 1]), b[k + 8] = _mm_unpackhi_epi8(a[2 * k], a[2 * k + 1]);
  for (int k = 0; k < 8; ++k) a[k] = _mm_unpacklo_epi16(b[2 * k], b[2 * k + 1]), a[k + 8] = _mm_unpackhi_epi16(b[2 * k], b[2 * k + 1]);
  for (int k = 0; k < 8; ++k) b[k] = _mm_unpacklo_epi32(a[2 * k], a[2 * k + 1]), b[k + 8] = _mm_unpackhi_epi32(a[2 * k], a[2 * k + 1]);
  for (int k = 0; k < 8; ++k) a[k] = _mm_unpacklo_epi64(b[2 * k], b[2 * k + 1]), a[k + 8] = _mm_unpackhi_epi64(b[2 * k], b[2 * k + 1]);
  constexpr int kRev[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};
  for (int j = 0; j < 16; ++j) _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + j * ldd), a[kRev[j]]);
}
#endif

// tile [C, W] (row stride W) -> dst [W, C] (row stride ldd): 16 x 16 byte blocks, scalar edges. The scalar
// byte loop it replaces was ~1/3 of the conv quantiser's time.
inline void transpose_cw(const int8_t* tile, int64_t C, int64_t W, int8_t* dst, int64_t ldd) {
  int64_t c0 = 0;
#if PYOPT_X86
  for (; c0 + 16 <= C; c0 += 16) {
    int64_t i0 = 0;
    for (; i0 + 16 <= W; i0 += 16) transpose16x16_epi8(tile + c0 * W + i0, W, dst + i0 * ldd + c0, ldd);
    for (int64_t i = i0; i < W; ++i)
      for (int64_t c = c0; c < c0 + 16; ++c) dst[i * ldd + c] = tile[c * W + i];
  }
#endif
  for (int64_t i = 0; i < W; ++i)
    for (int64_t c = c0; c < C; ++c) dst[i * ldd + c] = tile[c * W + i];
}

// x: contiguous NCHW [B, C, H, W] -> q: zero-padded NHWC int8 [B, H + 2 ph, W + 2 pw, C] (the image at rows
// ph.., columns pw..; the border is zeroed here), scales[b] = per-sample scale. The padding is quantised zeros
// (q = 0 is exactly 0.0), so the im2col reads whole runs with no bounds tests.
template <typename T>
void quant_nchw_to_nhwc(const T* x, int8_t* q, float* scales, int64_t B, int64_t C, int64_t H, int64_t W,
                        int64_t ph, int64_t pw, Isa isa) {
  const int64_t plane = H * W, Hp = H + 2 * ph, Wp = W + 2 * pw;
  std::vector<float> plane_amax(B * C);
  at::parallel_for(0, B * C, std::max<int64_t>(1, 16384 / std::max<int64_t>(plane, 1)), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      float mn = 0.0f, mx = 0.0f;  // the quant family's SIMD min/max (NaN-propagating), as per-token uses
      pyopt::quant::minmax_span<T>(isa, x + p * plane, plane, &mn, &mx);
      plane_amax[p] = std::isnan(mn) ? NAN : std::max(-mn, mx);
    }
  });
  for (int64_t b = 0; b < B; ++b) {  // NaN-propagating max over the sample's planes (std::max_element is not)
    float amax = 0.0f;
    for (int64_t c = 0; c < C; ++c) {
      const float v = plane_amax[b * C + c];
      amax = (std::isnan(v) || std::isnan(amax)) ? NAN : std::max(amax, v);
    }
    scales[b] = pyopt::quant::per_token_scale(amax);
  }
  // padded rows r = (b, hp): the border rows and columns zeroed, the image rows quantised and transposed
  at::parallel_for(0, B * Hp, 1, [&](int64_t r0, int64_t r1) {
    std::vector<int8_t> tile(C * W);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / Hp, h = r % Hp - ph;
      int8_t* row = q + r * Wp * C;
      if (h < 0 || h >= H) {
        std::memset(row, 0, static_cast<size_t>(Wp * C));
        continue;
      }
      std::memset(row, 0, static_cast<size_t>(pw * C));
      std::memset(row + (pw + W) * C, 0, static_cast<size_t>(pw * C));
      const float inv = 1.0f / scales[b];
      const T* src = x + b * C * plane + h * W;
#if PYOPT_X86
      if (isa >= Isa::Avx512) avx512::quant_tile(src, plane, C, W, inv, tile.data());
      else if (isa == Isa::Avx2) avx2::quant_tile(src, plane, C, W, inv, tile.data());
      else
#endif
        scalar::quant_tile(src, plane, C, W, inv, tile.data());
      transpose_cw(tile.data(), C, W, row + pw * C, C);
    }
  });
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// Dynamic conv2d (groups = 1): per-sample symmetric activation quantisation (one scale per image, so every
// im2col row of an image shares it and the scale factors out of the integer dot product), int8 im2col in
// channels-last order (kh, kw, c), the same int8 GEMM + epilogue as the linear layer. The output is a
// channels-last NCHW tensor (the GEMM's natural layout; torch's conv keeps channels-last too).
// With a native GEMM the im2col rows are written straight into its per-thread packing buffer (its RowFill), so
// neither the [B*HO*WO, KH*KW*C] int8 matrix nor an int32 accumulator is ever stored: at batch 8, 64->64,
// 56x56, 3x3 that measured 8.2 vs 12.3 ms single-thread (F.conv2d fp32: 18.0 ms). The CPU kernel of
// pyopt::int8_conv2d_dynamic.
// ---------------------------------------------------------------------------------------------------------
at::Tensor int8_conv2d_dynamic(const at::Tensor& x_in, const at::Tensor& w_q, const at::Tensor& w_scales_in,
                               const c10::optional<at::Tensor>& bias_in, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation) {
  const auto [HO, WO] = pyopt::checks::int8_conv2d(x_in, w_q, w_scales_in, bias_in, stride, padding, dilation);
  const Isa isa = pyopt::active_isa();
  const int64_t B = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  const int64_t O = w_q.size(0), KH = w_q.size(2), KW = w_q.size(3);
  const at::Tensor w_scales = w_scales_in.contiguous();
  const c10::optional<at::Tensor> bias =
      bias_in ? c10::optional<at::Tensor>(bias_in->to(at::kFloat).contiguous()) : c10::nullopt;
  auto wmat = w_q.permute({0, 2, 3, 1}).contiguous().view({O, KH * KW * C});
  auto out = at::empty({B, O, HO, WO}, x_in.options(), at::MemoryFormat::ChannelsLast);
  if (B == 0 || O == 0) return out;

  // The int8 activations, NHWC with the conv's zero padding around each image: an im2col row is then KH runs
  // of KW * C contiguous bytes (dilation 1) read with no bounds tests.
  const int64_t ph = padding[0], pw = padding[1], Hp = H + 2 * ph, Wp = W + 2 * pw;
  auto q = at::empty({B, Hp * Wp * C}, x_in.options().dtype(at::kChar));
  auto sx = at::empty({B}, x_in.options().dtype(at::kFloat));
  if (x_in.is_contiguous(at::MemoryFormat::ChannelsLast) && !x_in.is_contiguous()) {
    // Already NHWC in memory: one sample is one row of the per-token quantiser (then moved into the padding).
    auto qs = ph == 0 && pw == 0 ? q : at::empty({B, H * W * C}, q.options());
    PYOPT_FLOAT_DISPATCH(x_in.scalar_type(), [&] {
      quant_rows(x_in.data_ptr<scalar_t>(), qs.data_ptr<int8_t>(), sx.data_ptr<float>(), B, H * W * C, isa);
    });
    if (ph != 0 || pw != 0) {
      q.zero_();
      q.view({B, Hp, Wp, C}).narrow(1, ph, H).narrow(2, pw, W).copy_(qs.view({B, H, W, C}));
    }
  } else {
    auto x = x_in.contiguous();
    PYOPT_FLOAT_DISPATCH(x.scalar_type(), [&] {
      quant_nchw_to_nhwc(x.data_ptr<scalar_t>(), q.data_ptr<int8_t>(), sx.data_ptr<float>(), B, C, H, W, ph, pw,
                         isa);
    });
  }

  // One im2col row (output pixel m = (b, ho, wo)) of the padded NHWC int8 activations: per kernel row, one run
  // of KW * C bytes (dilation 1: the KW pixels are adjacent) or KW runs of C bytes.
  const int64_t KC = KH * KW * C;
  const int8_t* pq = q.data_ptr<int8_t>();
  const int64_t sh = stride[0], sw = stride[1], dh = dilation[0], dw = dilation[1];
  auto im2col_row = [&](int64_t m, int8_t* dst) {
    const int64_t b = m / (HO * WO), ho = m / WO % HO, wo = m % WO;
    const int8_t* src = pq + ((b * Hp + ho * sh) * Wp + wo * sw) * C;
    for (int64_t i = 0; i < KH; ++i, src += dh * Wp * C) {
      if (dw == 1) {
        std::memcpy(dst, src, static_cast<size_t>(KW * C));
        dst += KW * C;
      } else {
        for (int64_t j = 0; j < KW; ++j, dst += C) std::memcpy(dst, src + j * dw * C, static_cast<size_t>(C));
      }
    }
  };
  if (wanted(isa, B * HO * WO, KC)) {
    // Native GEMM (VNNI or AVX2 tier) with the im2col fused into its row packing: no cols matrix, no int32
    // accumulators.
    const float* psx = sx.data_ptr<float>();
    auto fill = [&](int64_t m0, int64_t rows, int8_t* dst, int64_t ld, float* rs) {
      for (int64_t r = 0; r < rows; ++r) {
        im2col_row(m0 + r, dst + r * ld);
        rs[r] = psx[(m0 + r) / (HO * WO)];
      }
    };
    PYOPT_FLOAT_DISPATCH(out.scalar_type(), [&] {
      gemm_dequant<scalar_t>(isa, B * HO * WO, O, KC, fill, wmat.data_ptr<int8_t>(), KC,
                                              w_scales.data_ptr<float>(), bias ? bias->data_ptr<float>() : nullptr,
                                              out.data_ptr<scalar_t>(), O);
    });
    return out;
  }
  const bool pointwise = KH == 1 && KW == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0;
  at::Tensor cols = pointwise ? q.view({B * H * W, C}) : at::empty({B * HO * WO, KC}, q.options());
  if (!pointwise) {
    int8_t* pc = cols.data_ptr<int8_t>();
    at::parallel_for(0, B * HO * WO, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) im2col_row(r, pc + r * KC);
    });
  }
  auto row_scales = sx.repeat_interleave(HO * WO);
  auto out_rows = out.permute({0, 2, 3, 1}).view({B * HO * WO, O});  // channels-last storage, row-major
  epilogue_into(int8_gemm_acc(cols, wmat), row_scales, w_scales, bias, out_rows, isa);
  return out;
}

}  // namespace pyopt::int8

TORCH_LIBRARY_IMPL(pyopt, CPU, m) { m.impl("int8_conv2d_dynamic", &pyopt::int8::int8_conv2d_dynamic); }
