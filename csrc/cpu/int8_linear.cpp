// Int8 linear / conv kernels for the CPU (pyopt::int8_linear_dynamic, int8_linear_weight_only,
// int8_conv2d_dynamic).
//
// dynamic (W8A8):  per-token symmetric quantisation of the activations (quant_simd.h's row quantiser), the
//                  int8 x int8 -> int32 GEMM (at::_int_mm: oneDNN's VNNI kernel, measured faster here than
//                  our own; small K goes through our loop because _int_mm is wrong for K == 1 in torch 2.13),
//                  then one epilogue pass: out = float(acc) * sx[m] * sw[n] + bias[n], in x's dtype.
// weight-only:     int8 weights converted to float inside the dot products (GEMV-style kernel, 4 output rows
//                  x up to 4 tokens per register tile) for small M; for large M the weights are dequantised
//                  one block of output rows at a time into a small float buffer that feeds a BLAS GEMM, so a
//                  full float copy of the weight never exists.
//
// Quantisation rule (docs/API.md, quantize_per_token): amax = max|x| over the row (float32),
// scale = amax / 127 (1 if 0), q = clamp(rint_half_even(float32(x * float32(1 / scale))), -127, 127).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/cpu_isa.h"
#include "cpu/int8_gemm.h"
#include "cpu/quant_simd.h"

#if PYOPT_X86
#include <immintrin.h>
#endif

namespace {

using pyopt::Isa;

// ---------------------------------------------------------------------------------------------------------
// Element loads: x may be float32, bfloat16 or float16; the kernels compute in float32.
// ---------------------------------------------------------------------------------------------------------
template <typename T>
inline float to_f32(T v) {
  return static_cast<float>(v);
}

#if PYOPT_X86
// 16 elements -> __m512 (mask selects the valid lanes; the others read as 0).
template <typename T>
PYOPT_TARGET_AVX512 inline __m512 load16(const T* p, __mmask16 m);
template <>
PYOPT_TARGET_AVX512 inline __m512 load16<float>(const float* p, __mmask16 m) {
  return _mm512_maskz_loadu_ps(m, p);
}
template <>
PYOPT_TARGET_AVX512 inline __m512 load16<c10::BFloat16>(const c10::BFloat16* p, __mmask16 m) {
  __m256i h = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
template <>
PYOPT_TARGET_AVX512 inline __m512 load16<c10::Half>(const c10::Half* p, __mmask16 m) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

// 8 elements -> __m256 (AVX2 has no masked byte/word loads: the callers handle tails with scalar code).
template <typename T>
PYOPT_TARGET_AVX2 inline __m256 load8(const T* p);
template <>
PYOPT_TARGET_AVX2 inline __m256 load8<float>(const float* p) {
  return _mm256_loadu_ps(p);
}
template <>
PYOPT_TARGET_AVX2 inline __m256 load8<c10::BFloat16>(const c10::BFloat16* p) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
template <>
PYOPT_TARGET_AVX2 inline __m256 load8<c10::Half>(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

PYOPT_TARGET_AVX2 inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

// Per-token (per-row) symmetric quantisation, q[r, :] int8 and scales[r] float32: the quant family's row
// quantiser (quant_simd.h), so quantize_per_token and the int8 layers round identically.
template <typename T>
void quant_rows(const T* x, int8_t* q, float* scales, int64_t rows, int64_t K, Isa isa) {
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) scales[r] = pyopt::quant::quantize_row_per_token(isa, x + r * K, q + r * K, K);
  });
}

// ---------------------------------------------------------------------------------------------------------
// Dequant epilogue: out[m, n] = float(acc[m, n]) * sx[m] * sw[n] + bias[n]. The vector rows return how many
// columns they did; the scalar loop finishes the row (and does every row for bfloat16/float16 outputs).
// ---------------------------------------------------------------------------------------------------------
#if PYOPT_X86
PYOPT_TARGET_AVX512 int64_t epilogue_row_avx512(const int32_t* a, float s, const float* sw, const float* bias,
                                                float* o, int64_t N) {
  const __m512 vs = _mm512_set1_ps(s);
  int64_t n = 0;
  for (; n + 16 <= N; n += 16) {
    __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(a + n)), vs), _mm512_loadu_ps(sw + n));
    if (bias) v = _mm512_add_ps(v, _mm512_loadu_ps(bias + n));
    _mm512_storeu_ps(o + n, v);
  }
  return n;
}

PYOPT_TARGET_AVX2 int64_t epilogue_row_avx2(const int32_t* a, float s, const float* sw, const float* bias, float* o,
                                            int64_t N) {
  const __m256 vs = _mm256_set1_ps(s);
  int64_t n = 0;
  for (; n + 8 <= N; n += 8) {
    __m256i ai = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + n));
    __m256 v = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(ai), vs), _mm256_loadu_ps(sw + n));
    if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + n));
    _mm256_storeu_ps(o + n, v);
  }
  return n;
}
#endif

template <typename T>
void dequant_epilogue(const int32_t* acc, const float* sx, const float* sw, const float* bias, T* out,
                      int64_t M, int64_t N, Isa isa) {
  at::parallel_for(0, M, std::max<int64_t>(1, 16384 / std::max<int64_t>(N, 1)), [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const int32_t* a = acc + m * N;
      T* o = out + m * N;
      int64_t n = 0;
#if PYOPT_X86
      if constexpr (std::is_same_v<T, float>) {
        if (isa >= Isa::Avx512) n = epilogue_row_avx512(a, sx[m], sw, bias, o, N);
        else if (isa == Isa::Avx2) n = epilogue_row_avx2(a, sx[m], sw, bias, o, N);
      }
#endif
      for (; n < N; ++n) {
        float v = static_cast<float>(a[n]) * sx[m] * sw[n];
        if (bias) v += bias[n];
        o[n] = static_cast<T>(v);
      }
    }
  });
}

// int32 acc[M, N] = q[M, K] @ w[N, K]^T. at::_int_mm (oneDNN) except for tiny K, where it is both slow
// and, for K == 1, wrong in torch 2.13.
at::Tensor int8_gemm_acc(const at::Tensor& q, const at::Tensor& w) {
  const int64_t M = q.size(0), K = q.size(1), N = w.size(0);
  if (K >= 8 && M > 0 && N > 0) return at::_int_mm(q, w.t());
  auto acc = at::zeros({M, N}, q.options().dtype(at::kInt));
  const int8_t* pq = q.data_ptr<int8_t>();
  const int8_t* pw = w.data_ptr<int8_t>();
  int32_t* pa = acc.data_ptr<int32_t>();
  at::parallel_for(0, M, 64, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t n = 0; n < N; ++n) {
        int32_t s = 0;
        for (int64_t k = 0; k < K; ++k) s += int32_t(pq[m * K + k]) * int32_t(pw[n * K + k]);
        pa[m * N + n] = s;
      }
  });
  return acc;
}

void check_weights(const at::Tensor& w_q, const at::Tensor& w_scales, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(w_q.device().is_cpu() && w_q.scalar_type() == at::kChar && w_q.dim() == 2 && w_q.is_contiguous(),
              "w_q must be a contiguous 2-d int8 CPU tensor [out_features, in_features]");
  TORCH_CHECK(w_scales.scalar_type() == at::kFloat && w_scales.is_contiguous() && w_scales.dim() == 1 &&
                  w_scales.size(0) == w_q.size(0),
              "w_scales must be a contiguous float32 tensor of shape [out_features]");
  if (bias) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->dim() == 1 &&
                    bias->size(0) == w_q.size(0),
                "bias must be a contiguous float32 tensor of shape [out_features]");
  }
}

void check_x2d(const at::Tensor& x, int64_t K) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.is_contiguous(), "x must be a contiguous 2-d CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf,
              "x must be float32, bfloat16 or float16");
  TORCH_CHECK(x.size(1) == K, "x.size(1) (", x.size(1), ") must equal in_features (", K, ")");
}

#define PYOPT_FLOAT_DISPATCH(dtype, ...)                                 \
  [&] {                                                                  \
    switch (dtype) {                                                     \
      case at::kFloat: {                                                 \
        using scalar_t = float;                                          \
        return __VA_ARGS__();                                            \
      }                                                                  \
      case at::kBFloat16: {                                              \
        using scalar_t = c10::BFloat16;                                  \
        return __VA_ARGS__();                                            \
      }                                                                  \
      default: {                                                         \
        using scalar_t = c10::Half;                                      \
        return __VA_ARGS__();                                            \
      }                                                                  \
    }                                                                    \
  }()

// Epilogue over a contiguous int32 accumulator into `out` (which may alias it, for float32 output).
void epilogue_into(const at::Tensor& acc, const at::Tensor& sx, const at::Tensor& sw,
                   const c10::optional<at::Tensor>& bias, at::Tensor& out, Isa isa) {
  const int64_t M = acc.size(0), N = acc.size(1);
  PYOPT_FLOAT_DISPATCH(out.scalar_type(), [&] {
    dequant_epilogue<scalar_t>(acc.data_ptr<int32_t>(), sx.data_ptr<float>(), sw.data_ptr<float>(),
                               bias ? bias->data_ptr<float>() : nullptr, out.data_ptr<scalar_t>(), M, N, isa);
  });
}

at::Tensor int8_linear_dynamic(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scales,
                               const c10::optional<at::Tensor>& bias, int64_t isa_req) {
  check_weights(w_q, w_scales, bias);
  check_x2d(x, w_q.size(1));
  const Isa isa = pyopt::select_isa(isa_req);
  const int64_t M = x.size(0), K = x.size(1), N = w_q.size(0);
  if (M == 0 || N == 0) return at::empty({M, N}, x.options());
  if (pyopt::int8gemm::available(isa) && K > 0) {
    // Native VNNI GEMM: each block of rows is quantised into a per-thread buffer right before its GEMM, and
    // the epilogue runs on the accumulators.
    auto out = at::empty({M, N}, x.options());
    PYOPT_FLOAT_DISPATCH(x.scalar_type(), [&] {
      const scalar_t* px = x.data_ptr<scalar_t>();
      auto fill = [&](int64_t m0, int64_t rows, int8_t* q, int64_t ld, float* sx) {
        for (int64_t r = 0; r < rows; ++r)
          sx[r] = pyopt::quant::quantize_row_per_token(isa, px + (m0 + r) * K, q + r * ld, K);
      };
      pyopt::int8gemm::gemm_dequant<scalar_t>(M, N, K, fill, w_q.data_ptr<int8_t>(), K, w_scales.data_ptr<float>(),
                                              bias ? bias->data_ptr<float>() : nullptr, out.data_ptr<scalar_t>(), N);
    });
    return out;
  }
  auto q = at::empty({M, K}, x.options().dtype(at::kChar));
  auto sx = at::empty({M}, x.options().dtype(at::kFloat));
  PYOPT_FLOAT_DISPATCH(x.scalar_type(), [&] {
    quant_rows(x.data_ptr<scalar_t>(), q.data_ptr<int8_t>(), sx.data_ptr<float>(), M, K, isa);
  });
  auto acc = int8_gemm_acc(q, w_q);
  // float32 output: the epilogue runs in place over the int32 accumulator (same size), saving a 4*M*N-byte
  // allocation and its page faults.
  auto out = x.scalar_type() == at::kFloat ? acc.view(at::kFloat) : at::empty({M, N}, x.options());
  epilogue_into(acc, sx, w_scales, bias, out, isa);
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Weight-only: out[m, n] = (sum_k x[m, k] * float(w_q[n, k])) * sw[n] + bias[n].
// Register tile: NT output rows (weights converted once per 16/8 k) x MT tokens (each x vector reused NT times).
// ---------------------------------------------------------------------------------------------------------
constexpr int64_t kWoGemvMaxM = 64;  // above this, dequantise-a-block + BLAS wins (bench sweep, this machine)

template <typename T>
inline void wo_store(T* out, int64_t ldo, int64_t m, int64_t n, float dot, const float* sw, const float* bias) {
  float v = dot * sw[n];
  if (bias) v += bias[n];
  out[m * ldo + n] = static_cast<T>(v);
}

#if PYOPT_X86
// NT weight rows x MT tokens; each k-step of 16 converts NT weight vectors once and FMAs each into MT token
// accumulators. With few tokens, two accumulator sets (even / odd k-steps) hide the FMA latency. The
// accumulators are flushed through a small buffer (reducing them in registers made GCC keep a stack copy
// updated inside the hot loop: 16 extra stores per step).
template <typename T, int NT, int MT>
PYOPT_TARGET_AVX512 void wo_tile_avx512(const T* x, const int8_t* w, int64_t K, int64_t n, int64_t m, T* out,
                                        int64_t N, const float* sw, const float* bias) {
  constexpr int kSets = MT <= 2 ? 2 : 1;
  constexpr int kAcc = NT * MT * kSets;
  const T* xm = x + m * K;
  const int8_t* wn = w + n * K;
  __m512 acc[kAcc];
#pragma GCC unroll 32
  for (int a = 0; a < kAcc; ++a) acc[a] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 * kSets <= K; k += 16 * kSets) {
#pragma GCC unroll 2
    for (int set = 0; set < kSets; ++set) {
      __m512 xv[MT];
#pragma GCC unroll 4
      for (int i = 0; i < MT; ++i) xv[i] = load16(xm + i * K + k + 16 * set, (__mmask16)0xffff);
#pragma GCC unroll 4
      for (int j = 0; j < NT; ++j) {
        const __m128i wb = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wn + j * K + k + 16 * set));
        const __m512 wv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(wb));
#pragma GCC unroll 4
        for (int i = 0; i < MT; ++i) acc[(set * NT + j) * MT + i] = _mm512_fmadd_ps(wv, xv[i], acc[(set * NT + j) * MT + i]);
      }
    }
  }
  if (k < K) {  // at most 2 masked steps (the second only with two accumulator sets)
    for (; k < K; k += 16) {
      const __mmask16 mask = K - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (K - k)) - 1);
      __m512 xv[MT];
#pragma GCC unroll 4
      for (int i = 0; i < MT; ++i) xv[i] = load16(xm + i * K + k, mask);
#pragma GCC unroll 4
      for (int j = 0; j < NT; ++j) {
        const __m512 wv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, wn + j * K + k)));
#pragma GCC unroll 4
        for (int i = 0; i < MT; ++i) acc[j * MT + i] = _mm512_fmadd_ps(wv, xv[i], acc[j * MT + i]);
      }
    }
  }
  alignas(64) float lanes[NT * MT][16];
#pragma GCC unroll 16
  for (int a = 0; a < NT * MT; ++a) {
    if constexpr (kSets == 2) _mm512_store_ps(lanes[a], _mm512_add_ps(acc[a], acc[a + NT * MT]));
    else _mm512_store_ps(lanes[a], acc[a]);
  }
  for (int j = 0; j < NT; ++j)
    for (int i = 0; i < MT; ++i) {
      float dot = 0.0f;
      for (int l = 0; l < 16; ++l) dot += lanes[j * MT + i][l];
      wo_store(out, N, m + i, n + j, dot, sw, bias);
    }
}

template <typename T, int NT, int MT>
PYOPT_TARGET_AVX2 void wo_tile_avx2(const T* x, const int8_t* w, int64_t K, int64_t n, int64_t m, T* out,
                                    int64_t N, const float* sw, const float* bias) {
  __m256 acc[NT][MT];
  for (int j = 0; j < NT; ++j)
    for (int i = 0; i < MT; ++i) acc[j][i] = _mm256_setzero_ps();
  const int64_t K8 = K / 8 * 8;
  for (int64_t k = 0; k < K8; k += 8) {
    __m256 xv[MT];
    for (int i = 0; i < MT; ++i) xv[i] = load8(x + (m + i) * K + k);
    for (int j = 0; j < NT; ++j) {
      __m128i wb = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w + (n + j) * K + k));
      __m256 wv = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(wb));
      for (int i = 0; i < MT; ++i) acc[j][i] = _mm256_fmadd_ps(wv, xv[i], acc[j][i]);
    }
  }
  for (int j = 0; j < NT; ++j)
    for (int i = 0; i < MT; ++i) {
      float dot = hsum8(acc[j][i]);
      for (int64_t k = K8; k < K; ++k) dot += to_f32(x[(m + i) * K + k]) * float(w[(n + j) * K + k]);
      wo_store(out, N, m + i, n + j, dot, sw, bias);
    }
}
#endif

template <typename T, int NT, int MT>
void wo_tile_scalar(const T* x, const int8_t* w, int64_t K, int64_t n, int64_t m, T* out, int64_t N,
                    const float* sw, const float* bias) {
  for (int j = 0; j < NT; ++j)
    for (int i = 0; i < MT; ++i) {
      float dot = 0.0f;
      for (int64_t k = 0; k < K; ++k) dot += to_f32(x[(m + i) * K + k]) * float(w[(n + j) * K + k]);
      wo_store(out, N, m + i, n + j, dot, sw, bias);
    }
}

// One block of NT output rows against every token, MT tokens at a time (the weights stay in L1).
template <typename T, int NT, int MT_MAX>
void wo_rows(const T* x, const int8_t* w, int64_t M, int64_t K, int64_t n, T* out, int64_t N, const float* sw,
             const float* bias, Isa isa) {
  int64_t m = 0;
  auto run = [&](auto mt) {
    constexpr int MT = decltype(mt)::value;
#if PYOPT_X86
    if (isa >= Isa::Avx512) return wo_tile_avx512<T, NT, MT>(x, w, K, n, m, out, N, sw, bias);
    if (isa == Isa::Avx2) return wo_tile_avx2<T, NT, (MT > 2 ? 2 : MT)>(x, w, K, n, m, out, N, sw, bias);
#endif
    wo_tile_scalar<T, NT, MT>(x, w, K, n, m, out, N, sw, bias);
  };
  const int64_t mt_max = (isa == Isa::Avx2) ? 2 : MT_MAX;
  for (; m + mt_max <= M; m += mt_max) {
    if (mt_max == 2) run(std::integral_constant<int, 2>{});
    else run(std::integral_constant<int, MT_MAX>{});
  }
  for (; m < M; ++m) run(std::integral_constant<int, 1>{});
}

template <typename T>
void wo_gemv(const T* x, const int8_t* w, const float* sw, const float* bias, T* out, int64_t M, int64_t K,
             int64_t N, Isa isa) {
  constexpr int64_t NT = 4;
  const int64_t blocks = (N + NT - 1) / NT;
  at::parallel_for(0, blocks, 8, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n = b * NT;
      if (n + NT <= N) {
        wo_rows<T, NT, 4>(x, w, M, K, n, out, N, sw, bias, isa);
      } else {
        for (int64_t r = n; r < N; ++r) wo_rows<T, 1, 4>(x, w, M, K, r, out, N, sw, bias, isa);
      }
    }
  });
}

// Large M: dequantise kWoBlockN output rows at a time into a small buffer, then one BLAS GEMM into the
// matching column block of out (row stride N). Peak extra memory: kWoBlockN x K floats.
at::Tensor wo_blocked_gemm(const at::Tensor& x_in, const at::Tensor& w_q, const at::Tensor& w_scales,
                           const c10::optional<at::Tensor>& bias) {
  constexpr int64_t kWoBlockN = 128;
  // bfloat16/float16 activations: one float32 copy of x (this path is compute-bound; a low-precision copy of
  // the dequantised weights would add a rounding the GEMV path does not have).
  const auto x = x_in.to(at::kFloat);
  const int64_t M = x.size(0), K = x.size(1), N = w_q.size(0);
  auto out = at::empty({M, N}, x.options());
  auto wf = at::empty({std::min(kWoBlockN, N), K}, x.options());
  for (int64_t n0 = 0; n0 < N; n0 += kWoBlockN) {
    const int64_t nb = std::min(kWoBlockN, N - n0);
    auto blk = wf.narrow(0, 0, nb);
    at::mul_out(blk, w_q.narrow(0, n0, nb), w_scales.narrow(0, n0, nb).unsqueeze(1));
    // GEMM into a contiguous [M, nb] block, then a cheap strided copy: BLAS into a strided view of `out`
    // was ~10x slower here.
    auto o = bias ? at::addmm(bias->narrow(0, n0, nb), x, blk.t()) : at::mm(x, blk.t());
    out.narrow(1, n0, nb).copy_(o);
  }
  return x_in.scalar_type() == at::kFloat ? out : out.to(x_in.scalar_type());
}

at::Tensor int8_linear_weight_only(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scales,
                                   const c10::optional<at::Tensor>& bias, int64_t isa_req) {
  check_weights(w_q, w_scales, bias);
  check_x2d(x, w_q.size(1));
  const Isa isa = pyopt::select_isa(isa_req);
  const int64_t M = x.size(0), K = x.size(1), N = w_q.size(0);
  if (M > kWoGemvMaxM && K > 0) return wo_blocked_gemm(x, w_q, w_scales, bias);
  auto out = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return out;
  PYOPT_FLOAT_DISPATCH(x.scalar_type(), [&] {
    wo_gemv(x.data_ptr<scalar_t>(), w_q.data_ptr<int8_t>(), w_scales.data_ptr<float>(),
            bias ? bias->data_ptr<float>() : nullptr, out.data_ptr<scalar_t>(), M, K, N, isa);
  });
  return out;
}

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
template <typename T>
void quant_tile_scalar(const T* x, int64_t plane, int64_t C, int64_t n, float inv, int8_t* tile) {
  for (int64_t c = 0; c < C; ++c)
    for (int64_t i = 0; i < n; ++i) tile[c * n + i] = quantize_one(to_f32(x[c * plane + i]), inv);
}

#if PYOPT_X86
template <typename T>
PYOPT_TARGET_AVX512 void quant_tile_avx512(const T* x, int64_t plane, int64_t C, int64_t n, float inv,
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

template <typename T>
PYOPT_TARGET_AVX2 void quant_tile_avx2(const T* x, int64_t plane, int64_t C, int64_t n, float inv, int8_t* tile) {
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
#endif

// x: contiguous NCHW [B, C, H, W] -> q: NHWC int8 [B, H, W, C], scales[b] = per-sample scale.
template <typename T>
void quant_nchw_to_nhwc(const T* x, int8_t* q, float* scales, int64_t B, int64_t C, int64_t H, int64_t W, Isa isa) {
  const int64_t plane = H * W;
  std::vector<float> plane_amax(B * C);
  at::parallel_for(0, B * C, std::max<int64_t>(1, 16384 / std::max<int64_t>(plane, 1)), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      float mn = 0.0f, mx = 0.0f;  // the quant family's SIMD min/max (NaN-propagating), as per-token uses
      pyopt::quant::minmax_span<T>(isa, x + p * plane, plane, &mn, &mx);
      plane_amax[p] = std::isnan(mn) ? NAN : std::max(-mn, mx);
    }
  });
  for (int64_t b = 0; b < B; ++b) {
    auto first = plane_amax.begin() + b * C;
    scales[b] = pyopt::quant::per_token_scale(C == 0 ? 0.0f : *std::max_element(first, first + C));
  }
  at::parallel_for(0, B * H, 1, [&](int64_t r0, int64_t r1) {
    std::vector<int8_t> tile(C * W);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / H, h = r % H;
      const float inv = 1.0f / scales[b];
      const T* src = x + b * C * plane + h * W;
#if PYOPT_X86
      if (isa >= Isa::Avx512) quant_tile_avx512(src, plane, C, W, inv, tile.data());
      else if (isa == Isa::Avx2) quant_tile_avx2(src, plane, C, W, inv, tile.data());
      else
#endif
        quant_tile_scalar(src, plane, C, W, inv, tile.data());
      int8_t* dst = q + r * W * C;
      for (int64_t i = 0; i < W; ++i, dst += C)
        for (int64_t c = 0; c < C; ++c) dst[c] = tile[c * W + i];
    }
  });
}

// ---------------------------------------------------------------------------------------------------------
// Dynamic conv2d (groups = 1): per-sample symmetric activation quantisation (one scale per image, so every
// im2col row of an image shares it and the scale factors out of the integer dot product), int8 im2col in
// channels-last order (kh, kw, c), the same int8 GEMM + epilogue as the linear layer. The output is a
// channels-last NCHW tensor (the GEMM's natural layout; torch's conv keeps channels-last too).
// ---------------------------------------------------------------------------------------------------------
at::Tensor int8_conv2d_dynamic(const at::Tensor& x_in, const at::Tensor& w_q, const at::Tensor& w_scales,
                               const c10::optional<at::Tensor>& bias, std::vector<int64_t> stride,
                               std::vector<int64_t> padding, std::vector<int64_t> dilation, int64_t isa_req) {
  TORCH_CHECK(x_in.device().is_cpu() && x_in.dim() == 4, "x must be a 4-d CPU tensor [B, C, H, W]");
  TORCH_CHECK(w_q.scalar_type() == at::kChar && w_q.dim() == 4, "w_q must be a 4-d int8 tensor [O, C, kh, kw]");
  TORCH_CHECK(x_in.size(1) == w_q.size(1), "x.size(1) must equal in_channels");
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "stride, padding and dilation must have 2 elements");
  const Isa isa = pyopt::select_isa(isa_req);
  const int64_t B = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  const int64_t O = w_q.size(0), KH = w_q.size(2), KW = w_q.size(3);
  const int64_t HO = (H + 2 * padding[0] - dilation[0] * (KH - 1) - 1) / stride[0] + 1;
  const int64_t WO = (W + 2 * padding[1] - dilation[1] * (KW - 1) - 1) / stride[1] + 1;
  TORCH_CHECK(HO > 0 && WO > 0, "the input is smaller than the (dilated) kernel");
  auto wmat = w_q.permute({0, 2, 3, 1}).contiguous().view({O, KH * KW * C});
  check_weights(wmat, w_scales, bias);
  auto out = at::empty({B, O, HO, WO}, x_in.options(), at::MemoryFormat::ChannelsLast);
  if (B == 0 || O == 0) return out;

  auto q = at::empty({B, H * W * C}, x_in.options().dtype(at::kChar));  // NHWC int8
  auto sx = at::empty({B}, x_in.options().dtype(at::kFloat));
  if (x_in.is_contiguous(at::MemoryFormat::ChannelsLast) && !x_in.is_contiguous()) {
    // Already NHWC in memory: one sample is one row of the per-token quantiser.
    PYOPT_FLOAT_DISPATCH(x_in.scalar_type(), [&] {
      quant_rows(x_in.data_ptr<scalar_t>(), q.data_ptr<int8_t>(), sx.data_ptr<float>(), B, H * W * C, isa);
    });
  } else {
    auto x = x_in.contiguous();
    PYOPT_FLOAT_DISPATCH(x.scalar_type(), [&] {
      quant_nchw_to_nhwc(x.data_ptr<scalar_t>(), q.data_ptr<int8_t>(), sx.data_ptr<float>(), B, C, H, W, isa);
    });
  }

  const bool pointwise = KH == 1 && KW == 1 && stride[0] == 1 && stride[1] == 1 && padding[0] == 0 && padding[1] == 0;
  at::Tensor cols;
  if (pointwise) {
    cols = q.view({B * H * W, C});
  } else {
    const int64_t KC = KH * KW * C;
    cols = at::empty({B * HO * WO, KC}, q.options());
    const int8_t* pq = q.data_ptr<int8_t>();
    int8_t* pc = cols.data_ptr<int8_t>();
    at::parallel_for(0, B * HO, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / HO, ho = r % HO;
        for (int64_t wo = 0; wo < WO; ++wo) {
          int8_t* dst = pc + ((b * HO + ho) * WO + wo) * KC;
          for (int64_t i = 0; i < KH; ++i) {
            const int64_t h = ho * stride[0] - padding[0] + i * dilation[0];
            for (int64_t j = 0; j < KW; ++j, dst += C) {
              const int64_t w = wo * stride[1] - padding[1] + j * dilation[1];
              if (h < 0 || h >= H || w < 0 || w >= W) std::memset(dst, 0, C);
              else std::memcpy(dst, pq + ((b * H + h) * W + w) * C, C);
            }
          }
        }
      }
    });
  }
  auto row_scales = sx.repeat_interleave(HO * WO);
  auto out_rows = out.permute({0, 2, 3, 1}).view({B * HO * WO, O});  // channels-last storage, row-major
  epilogue_into(int8_gemm_acc(cols, wmat), row_scales, w_scales, bias, out_rows, isa);
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(pyopt_cpu, m) {
  m.def("int8_linear_dynamic", &int8_linear_dynamic);
  m.def("int8_linear_weight_only", &int8_linear_weight_only);
  m.def("int8_conv2d_dynamic", &int8_conv2d_dynamic);
}
