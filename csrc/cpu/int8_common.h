// Shared by the int8 layers' CPU kernels (int8_linear.cpp: linear ops, int8_conv.cpp: conv): element
// loads of float32 / bfloat16 / float16 activations, the per-token row quantiser, weight checks, the dtype
// dispatch, and the _int_mm GEMM + dequant epilogue used where the native GEMMs (int8_gemm.h) are not.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <vector>

#include <c10/util/accumulate.h>

#include "cpu/cpu_isa.h"
#include "cpu/quant_simd.h"

#if PYOPT_X86
#include <immintrin.h>
#endif

namespace pyopt::int8 {

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

#endif

// Per-token (per-row) symmetric quantisation, q[r, :] int8 and scales[r] float32: the quant family's row
// quantiser (quant_simd.h), so quantize_per_token and the int8 layers round identically.
template <typename T>
inline void quant_rows(const T* x, int8_t* q, float* scales, int64_t rows, int64_t K, Isa isa) {
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) scales[r] = pyopt::quant::quantize_row_per_token(isa, x + r * K, q + r * K, K);
  });
}

// The 2-d operands of a linear op's kernel: x as [rows, K] contiguous, the weights contiguous, the bias as a
// contiguous float32 vector (the modules keep it float32; a bf16/fp16 bias is widened exactly).
struct LinearOperands {
  at::Tensor x, w, sw;
  c10::optional<at::Tensor> bias;
};

// x [..., K] viewed as [rows, K] (rows = the product of the leading dims; also right when K == 0 or x is empty).
inline at::Tensor rows_2d(const at::Tensor& x, int64_t K) {
  return x.reshape({c10::multiply_integers(x.sizes().begin(), x.sizes().end() - 1), K});
}

inline LinearOperands linear_operands(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scales,
                                      const c10::optional<at::Tensor>& bias) {
  const int64_t K = w_q.size(1);
  return {rows_2d(x, K).contiguous(),
          w_q.contiguous(), w_scales.contiguous(),
          bias ? c10::optional<at::Tensor>(bias->to(at::kFloat).contiguous()) : c10::nullopt};
}

// The output shape of a linear op: x's leading dims + (N,).
inline std::vector<int64_t> linear_out_shape(const at::Tensor& x, int64_t N) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = N;
  return shape;
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

// int32 acc[M, N] = q[M, K] @ w[N, K]^T (at::_int_mm, or a plain loop for tiny K) and the epilogue pass
// out = float(acc) * sx[m] * sw[n] + bias[n] into `out` (which may alias acc, for float32). int8_linear.cpp.
at::Tensor int8_gemm_acc(const at::Tensor& q, const at::Tensor& w);
void epilogue_into(const at::Tensor& acc, const at::Tensor& sx, const at::Tensor& sw,
                   const c10::optional<at::Tensor>& bias, at::Tensor& out, Isa isa);

}  // namespace pyopt::int8
