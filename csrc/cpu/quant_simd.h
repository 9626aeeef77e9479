// Vector kernels of the quant family, one namespace per ISA (scalar, avx2, avx512), all with one interface:
//
//   quant_span<In, R, PerElem, Signed>(x, out, n, inv, zp, lo, hi)   n elements of x -> int8/uint8 bytes
//   dequant_span<Out, PerElem, Signed>(q, out, n, scale, zp)          n int8/uint8 -> float/half/bf16
//   minmax_span<In>(x, n, &min, &max)                                 NaN-propagating min and max
//
// nt: the output is large (bigger than the caches): the AVX-512 and AVX2 paths then write it with streaming stores,
// which skip the read-for-ownership of each destination line (results are identical). Each thread calls
// stream_fence() once after its last span, before the results are handed over.
// PerElem: inv/zp/scale are arrays running along x (else one broadcast value). In/Out: float, at::Half,
// at::BFloat16 (widened / narrowed in registers; narrowing rounds to nearest even, as torch does).
// The rounding rules (README "Quantize / dequantize"; identical on every ISA, tests compare them bit for bit):
//   Rule::Fma      v = fma(x, inv, zp)            per-tensor (torch/fbgemm); NaN -> hi
//   Rule::Product  v = float32(x * inv) + zp      per-channel/-group/-token (the product is rounded); NaN -> 0
//   q = round_half_even(clamp(v, lo, hi))         (clamp and rounding commute: lo, hi are integers)
// The product is pinned with an empty asm so the compiler can never contract it into an fma.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/cpu_isa.h"
#if PYOPT_X86
#include <immintrin.h>
#endif

namespace pyopt::quant {
using pyopt::Isa;

enum class Rule { Fma, Product };

template <class T>
inline float to_float(T v) {
  return static_cast<float>(v);
}
template <class T>
inline T from_float(float v) {
  return static_cast<T>(v);  // c10::Half / BFloat16 conversions round to nearest even
}

// Runs `block(x, out, inv, zp)` on the last n < kBlock elements through zero-padded stack buffers, so the
// vector body (and its exact rounding) also handles tails.
template <int kBlock, bool PerElem, class In, class Out, class Block>
inline void run_tail(const In* x, Out* out, int64_t n, const float* a, const float* b, Block block) {
  In xbuf[kBlock] = {};
  Out obuf[kBlock];
  float abuf[kBlock] = {}, bbuf[kBlock] = {};
  std::memcpy(xbuf, x, n * sizeof(In));
  if (PerElem) {
    std::memcpy(abuf, a, n * sizeof(float));
    std::memcpy(bbuf, b, n * sizeof(float));
    for (int64_t i = n; i < kBlock; ++i) abuf[i] = 1.0f;  // keep padding lanes finite
  }
  block(xbuf, obuf, PerElem ? abuf : a, PerElem ? bbuf : b);
  std::memcpy(out, obuf, n * sizeof(Out));
}

// ---------------------------------------------------------------------------------------------------------
// scalar (any CPU; also the reference the vector paths are tested against)
// ---------------------------------------------------------------------------------------------------------
namespace scalar {

template <Rule R>
inline float quant_value(float x, float inv, float zp, float lo, float hi) {
  float v;
  if (R == Rule::Fma) {
    v = std::fma(x, inv, zp);
    if (std::isnan(v)) v = hi;
  } else {
    float p = x * inv;
#if PYOPT_X86
    asm("" : "+x"(p));  // no contraction into an fma
#else
    volatile float rounded = p;
    p = rounded;
#endif
    v = p + zp;
    if (std::isnan(v)) v = 0.0f;
  }
  v = v < lo ? lo : (v > hi ? hi : v);
  return std::nearbyint(v);
}

template <class In, Rule R, bool PerElem, bool Signed>
void quant_span(const In* x, uint8_t* out, int64_t n, const float* inv, const float* zp, float lo, float hi,
                bool /*nt*/) {
  for (int64_t i = 0; i < n; ++i) {
    float v = quant_value<R>(to_float(x[i]), inv[PerElem ? i : 0], zp[PerElem ? i : 0], lo, hi);
    out[i] = static_cast<uint8_t>(static_cast<int32_t>(v));
  }
}

template <class Out, bool PerElem, bool Signed>
void dequant_span(const uint8_t* q, Out* out, int64_t n, const float* scale, const float* zp, bool /*nt*/) {
  for (int64_t i = 0; i < n; ++i) {
    float qv = Signed ? static_cast<float>(static_cast<int8_t>(q[i])) : static_cast<float>(q[i]);
    out[i] = from_float<Out>((qv - zp[PerElem ? i : 0]) * scale[PerElem ? i : 0]);
  }
}

template <class In>
void minmax_span(const In* x, int64_t n, float* mn, float* mx) {
  float lo = INFINITY, hi = -INFINITY;
  bool nan = false;
  for (int64_t i = 0; i < n; ++i) {
    float v = to_float(x[i]);
    nan |= std::isnan(v);
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
  }
  *mn = nan ? NAN : lo;
  *mx = nan ? NAN : hi;
}

}  // namespace scalar

#if PYOPT_X86
// ---------------------------------------------------------------------------------------------------------
// AVX2 + FMA + F16C: 32 elements per block
// ---------------------------------------------------------------------------------------------------------
namespace avx2 {

template <class In>
PYOPT_TARGET_AVX2 inline __m256 load8(const In* p) {
  if constexpr (std::is_same_v<In, float>) {
    return _mm256_loadu_ps(p);
  } else if constexpr (std::is_same_v<In, at::Half>) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  } else {
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
}

template <Rule R>
PYOPT_TARGET_AVX2 inline __m256i quant8(__m256 x, __m256 inv, __m256 zp, __m256 lo, __m256 hi) {
  __m256 v;
  if constexpr (R == Rule::Fma) {
    v = _mm256_min_ps(_mm256_fmadd_ps(x, inv, zp), hi);  // minps returns hi when v is NaN
  } else {
    __m256 p = _mm256_mul_ps(x, inv);
    asm("" : "+x"(p));
    v = _mm256_add_ps(p, zp);
    v = _mm256_min_ps(_mm256_and_ps(v, _mm256_cmp_ps(v, v, _CMP_ORD_Q)), hi);  // NaN -> 0
  }
  v = _mm256_max_ps(v, lo);
  return _mm256_cvtps_epi32(_mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

template <class In, Rule R, bool PerElem, bool Signed>
PYOPT_TARGET_AVX2 void quant_block(const In* x, uint8_t* out, const float* inv, const float* zp, float lo,
                                   float hi, bool nt = false) {
  const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
  __m256i r[4];
  for (int j = 0; j < 4; ++j) {
    __m256 vi = PerElem ? _mm256_loadu_ps(inv + 8 * j) : _mm256_set1_ps(*inv);
    __m256 vz = PerElem ? _mm256_loadu_ps(zp + 8 * j) : _mm256_set1_ps(*zp);
    r[j] = quant8<R>(load8(x + 8 * j), vi, vz, vlo, vhi);
  }
  // int32 -> int16 (exact: values are in [-128, 255]) -> bytes (saturation is exact too), then undo the
  // per-128-bit-lane interleaving of the packs.
  __m256i ab = _mm256_packs_epi32(r[0], r[1]), cd = _mm256_packs_epi32(r[2], r[3]);
  __m256i b = Signed ? _mm256_packs_epi16(ab, cd) : _mm256_packus_epi16(ab, cd);
  b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  if (nt)
    _mm256_stream_si256(reinterpret_cast<__m256i*>(out), b);
  else
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), b);
}

template <class In, Rule R, bool PerElem, bool Signed>
PYOPT_TARGET_AVX2 void quant_span(const In* x, uint8_t* out, int64_t n, const float* inv, const float* zp,
                                  float lo, float hi, bool nt) {
  nt = nt && reinterpret_cast<uintptr_t>(out) % 32 == 0;  // every 32-byte block is then aligned
  int64_t i = 0;
  for (; i + 32 <= n; i += 32)
    quant_block<In, R, PerElem, Signed>(x + i, out + i, PerElem ? inv + i : inv, PerElem ? zp + i : zp, lo, hi, nt);
  if (i < n)
    run_tail<32, PerElem>(x + i, out + i, n - i, PerElem ? inv + i : inv, PerElem ? zp + i : zp,
                          [&](const In* xb, uint8_t* ob, const float* a, const float* b) {
                            quant_block<In, R, PerElem, Signed>(xb, ob, a, b, lo, hi);
                          });
}

PYOPT_TARGET_AVX2 inline void store128(void* p, __m128i v, bool nt) {
  if (nt)
    _mm_stream_si128(reinterpret_cast<__m128i*>(p), v);
  else
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), v);
}

// nt: streaming stores (p aligned to the store's width: the span checks the output's alignment once).
template <class Out>
PYOPT_TARGET_AVX2 inline void store8(Out* p, __m256 v, bool nt) {
  if constexpr (std::is_same_v<Out, float>) {
    if (nt)
      _mm256_stream_ps(p, v);
    else
      _mm256_storeu_ps(p, v);
  } else if constexpr (std::is_same_v<Out, at::Half>) {
    store128(p, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), nt);
  } else {  // bf16, round to nearest even (dequantized values are never NaN)
    __m256i u = _mm256_castps_si256(v);
    __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    u = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), odd), 16);
    __m256i w = _mm256_permute4x64_epi64(_mm256_packus_epi32(u, u), 0x08);
    store128(p, _mm256_castsi256_si128(w), nt);
  }
}

template <class Out, bool PerElem, bool Signed>
PYOPT_TARGET_AVX2 void dequant_block(const uint8_t* q, Out* out, const float* scale, const float* zp,
                                     bool nt = false) {
  for (int j = 0; j < 4; ++j) {
    __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8 * j));
    __m256 qv = _mm256_cvtepi32_ps(Signed ? _mm256_cvtepi8_epi32(b) : _mm256_cvtepu8_epi32(b));
    __m256 vs = PerElem ? _mm256_loadu_ps(scale + 8 * j) : _mm256_set1_ps(*scale);
    __m256 vz = PerElem ? _mm256_loadu_ps(zp + 8 * j) : _mm256_set1_ps(*zp);
    store8(out + 8 * j, _mm256_mul_ps(_mm256_sub_ps(qv, vz), vs), nt);
  }
}

template <class Out, bool PerElem, bool Signed>
PYOPT_TARGET_AVX2 void dequant_span(const uint8_t* q, Out* out, int64_t n, const float* scale, const float* zp,
                                    bool nt) {
  nt = nt && reinterpret_cast<uintptr_t>(out) % 32 == 0;  // 32 outputs of 2 or 4 bytes: every store aligned
  int64_t i = 0;
  for (; i + 32 <= n; i += 32)
    dequant_block<Out, PerElem, Signed>(q + i, out + i, PerElem ? scale + i : scale, PerElem ? zp + i : zp, nt);
  if (i < n)
    run_tail<32, PerElem>(q + i, out + i, n - i, PerElem ? scale + i : scale, PerElem ? zp + i : zp,
                          [&](const uint8_t* qb, Out* ob, const float* a, const float* b) {
                            dequant_block<Out, PerElem, Signed>(qb, ob, a, b);
                          });
}

template <class In>
PYOPT_TARGET_AVX2 void minmax_span(const In* x, int64_t n, float* mn, float* mx) {
  __m256 lo = _mm256_set1_ps(INFINITY), hi = _mm256_set1_ps(-INFINITY), nan = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = load8(x + i);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    lo = _mm256_min_ps(lo, v);
    hi = _mm256_max_ps(hi, v);
  }
  alignas(32) float l[8], h[8];
  _mm256_store_ps(l, lo);
  _mm256_store_ps(h, hi);
  float tl, th;
  scalar::minmax_span(x + i, n - i, &tl, &th);
  bool any_nan = _mm256_movemask_ps(nan) != 0 || std::isnan(tl);
  for (int j = 0; j < 8; ++j) {
    tl = l[j] < tl ? l[j] : tl;
    th = h[j] > th ? h[j] : th;
  }
  *mn = any_nan ? NAN : tl;
  *mx = any_nan ? NAN : th;
}

}  // namespace avx2

// ---------------------------------------------------------------------------------------------------------
// AVX-512 (F/BW/VL/DQ): 64 elements per block, one 64-byte store of the quantized bytes
// ---------------------------------------------------------------------------------------------------------
namespace avx512 {

template <class In>
PYOPT_TARGET_AVX512 inline __m512 load16(const In* p) {
  if constexpr (std::is_same_v<In, float>) {
    return _mm512_loadu_ps(p);
  } else if constexpr (std::is_same_v<In, at::Half>) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  } else {
    __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }
}

template <Rule R>
PYOPT_TARGET_AVX512 inline __m512i quant16(__m512 x, __m512 inv, __m512 zp, __m512 lo, __m512 hi) {
  __m512 v;
  if constexpr (R == Rule::Fma) {
    v = _mm512_min_ps(_mm512_fmadd_ps(x, inv, zp), hi);  // vminps returns hi when v is NaN
  } else {
    __m512 p = _mm512_mul_ps(x, inv);
    asm("" : "+v"(p));
    v = _mm512_add_ps(p, zp);
    v = _mm512_min_ps(_mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v), hi);  // NaN -> 0
  }
  v = _mm512_max_ps(v, lo);
  return _mm512_cvt_roundps_epi32(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

template <class In, Rule R, bool PerElem, bool Signed>
PYOPT_TARGET_AVX512 void quant_block(const In* x, uint8_t* out, const float* inv, const float* zp, float lo,
                                     float hi, bool nt = false) {
  const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
  __m512i r[4];
  for (int j = 0; j < 4; ++j) {
    __m512 vi = PerElem ? _mm512_loadu_ps(inv + 16 * j) : _mm512_set1_ps(*inv);
    __m512 vz = PerElem ? _mm512_loadu_ps(zp + 16 * j) : _mm512_set1_ps(*zp);
    r[j] = quant16<R>(load16(x + 16 * j), vi, vz, vlo, vhi);
  }
  __m512i ab = _mm512_packs_epi32(r[0], r[1]), cd = _mm512_packs_epi32(r[2], r[3]);
  __m512i b = Signed ? _mm512_packs_epi16(ab, cd) : _mm512_packus_epi16(ab, cd);
  // packs interleave per 128-bit lane: dword 4*l + k holds elements 16*k + 4*l .. +3 (vector k, lane l).
  b = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), b);
  if (nt)
    _mm512_stream_si512(reinterpret_cast<__m512i*>(out), b);
  else
    _mm512_storeu_si512(out, b);
}

template <class In, Rule R, bool PerElem, bool Signed>
PYOPT_TARGET_AVX512 void quant_span(const In* x, uint8_t* out, int64_t n, const float* inv, const float* zp,
                                    float lo, float hi, bool nt) {
  nt = nt && reinterpret_cast<uintptr_t>(out) % 64 == 0;  // every 64-byte block is then aligned
  int64_t i = 0;
  for (; i + 64 <= n; i += 64)
    quant_block<In, R, PerElem, Signed>(x + i, out + i, PerElem ? inv + i : inv, PerElem ? zp + i : zp, lo, hi, nt);
  if (i < n)
    run_tail<64, PerElem>(x + i, out + i, n - i, PerElem ? inv + i : inv, PerElem ? zp + i : zp,
                          [&](const In* xb, uint8_t* ob, const float* a, const float* b) {
                            quant_block<In, R, PerElem, Signed>(xb, ob, a, b, lo, hi);
                          });
}

PYOPT_TARGET_AVX512 inline void store256(void* p, __m256i v, bool nt) {
  if (nt)
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), v);
  else
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v);
}

template <class Out>
PYOPT_TARGET_AVX512 inline void store16(Out* p, __m512 v, bool nt) {
  if constexpr (std::is_same_v<Out, float>) {
    if (nt)
      _mm512_stream_ps(p, v);
    else
      _mm512_storeu_ps(p, v);
  } else if constexpr (std::is_same_v<Out, at::Half>) {
    store256(p, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), nt);
  } else {  // bf16, round to nearest even (dequantized values are never NaN)
    __m512i u = _mm512_castps_si512(v);
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    u = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), odd), 16);
    store256(p, _mm512_cvtepi32_epi16(u), nt);
  }
}

template <class Out, bool PerElem, bool Signed>
PYOPT_TARGET_AVX512 void dequant_block(const uint8_t* q, Out* out, const float* scale, const float* zp,
                                       bool nt = false) {
  for (int j = 0; j < 4; ++j) {
    __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 16 * j));
    __m512 qv = _mm512_cvtepi32_ps(Signed ? _mm512_cvtepi8_epi32(b) : _mm512_cvtepu8_epi32(b));
    __m512 vs = PerElem ? _mm512_loadu_ps(scale + 16 * j) : _mm512_set1_ps(*scale);
    __m512 vz = PerElem ? _mm512_loadu_ps(zp + 16 * j) : _mm512_set1_ps(*zp);
    store16(out + 16 * j, _mm512_mul_ps(_mm512_sub_ps(qv, vz), vs), nt);
  }
}

template <class Out, bool PerElem, bool Signed>
PYOPT_TARGET_AVX512 void dequant_span(const uint8_t* q, Out* out, int64_t n, const float* scale, const float* zp,
                                      bool nt) {
  nt = nt && reinterpret_cast<uintptr_t>(out) % 64 == 0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64)
    dequant_block<Out, PerElem, Signed>(q + i, out + i, PerElem ? scale + i : scale, PerElem ? zp + i : zp, nt);
  if (i < n)
    run_tail<64, PerElem>(q + i, out + i, n - i, PerElem ? scale + i : scale, PerElem ? zp + i : zp,
                          [&](const uint8_t* qb, Out* ob, const float* a, const float* b) {
                            dequant_block<Out, PerElem, Signed>(qb, ob, a, b);
                          });
}

template <class In>
PYOPT_TARGET_AVX512 void minmax_span(const In* x, int64_t n, float* mn, float* mx) {
  __m512 lo = _mm512_set1_ps(INFINITY), hi = _mm512_set1_ps(-INFINITY);
  __mmask16 nan = 0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 v = load16(x + i);
    nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    lo = _mm512_min_ps(lo, v);
    hi = _mm512_max_ps(hi, v);
  }
  float tl, th;
  scalar::minmax_span(x + i, n - i, &tl, &th);
  float vl = _mm512_reduce_min_ps(lo), vh = _mm512_reduce_max_ps(hi);
  bool any_nan = nan != 0 || std::isnan(tl);
  *mn = any_nan ? NAN : (vl < tl ? vl : tl);
  *mx = any_nan ? NAN : (vh > th ? vh : th);
}

}  // namespace avx512
#endif  // PYOPT_X86

// ---------------------------------------------------------------------------------------------------------
// Run-time dispatch: the best path not above `isa`, chosen by a switch on the Isa (the same function name in
// each ISA namespace)
// ---------------------------------------------------------------------------------------------------------
// Orders this thread's streaming stores before what follows (once per thread and op, not per span: a fence
// drains the write-combining buffers and costs hundreds of cycles).
inline void stream_fence() {
#if PYOPT_X86
  _mm_sfence();
#endif
}

template <class In, Rule R, bool PerElem, bool Signed>
inline void quant_span(Isa isa, const In* x, uint8_t* out, int64_t n, const float* inv, const float* zp, float lo,
                       float hi, bool nt = false) {
  switch (isa) {
#if PYOPT_X86
    case Isa::Avx2: return avx2::quant_span<In, R, PerElem, Signed>(x, out, n, inv, zp, lo, hi, nt);
    default: return avx512::quant_span<In, R, PerElem, Signed>(x, out, n, inv, zp, lo, hi, nt);  // AVX-512 and every tier above it
#else
    default:
#endif
    case Isa::Scalar: return scalar::quant_span<In, R, PerElem, Signed>(x, out, n, inv, zp, lo, hi, nt);
  }
}

template <class Out, bool PerElem, bool Signed>
inline void dequant_span(Isa isa, const uint8_t* q, Out* out, int64_t n, const float* scale, const float* zp,
                         bool nt = false) {
  switch (isa) {
#if PYOPT_X86
    case Isa::Avx2: return avx2::dequant_span<Out, PerElem, Signed>(q, out, n, scale, zp, nt);
    default: return avx512::dequant_span<Out, PerElem, Signed>(q, out, n, scale, zp, nt);  // AVX-512 and every tier above it
#else
    default:
#endif
    case Isa::Scalar: return scalar::dequant_span<Out, PerElem, Signed>(q, out, n, scale, zp, nt);
  }
}

template <class In>
inline void minmax_span(Isa isa, const In* x, int64_t n, float* mn, float* mx) {
  switch (isa) {
#if PYOPT_X86
    case Isa::Avx2: return avx2::minmax_span<In>(x, n, mn, mx);
    default: return avx512::minmax_span<In>(x, n, mn, mx);  // AVX-512 and every tier above it
#else
    default:
#endif
    case Isa::Scalar: return scalar::minmax_span<In>(x, n, mn, mx);
  }
}

// The symmetric int8 scale of a row (or image) whose largest |x| is amax: amax / 127, and 1 where that is 0
// (an all-zero row quantises to zeros with a harmless scale instead of dividing by zero).
inline float per_token_scale(float amax) {
  const float scale = amax / 127.0f;
  return scale == 0.0f ? 1.0f : scale;
}

// One row of quantize_per_token (docs: API.md): scale = max|x| / 127 (1 where 0, NaN if the row has a NaN),
// q = clamp(rne(float32(x * float32(1 / scale))), -127, 127); returns the scale. The quant family's op and
// the int8 layers' dynamic activations share it, so the two can never round differently.
template <class In>
inline float quantize_row_per_token(Isa isa, const In* x, int8_t* q, int64_t n, bool nt = false) {
  float mn = 0.0f, mx = 0.0f;
  if (n > 0) minmax_span<In>(isa, x, n, &mn, &mx);
  const float amax = std::isnan(mn) ? NAN : std::max(-mn, mx);
  const float scale = per_token_scale(amax);
  const float inv = 1.0f / scale, zero = 0.0f;
  quant_span<In, Rule::Product, false, true>(isa, x, reinterpret_cast<uint8_t*>(q), n, &inv, &zero, -127.0f,
                                             127.0f, nt);
  return scale;
}

}  // namespace pyopt::quant
