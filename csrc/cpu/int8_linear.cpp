// Int8 linear kernels for the CPU (pyopt::int8_linear_dynamic, int8_linear_weight_only); the conv is in
// int8_conv.cpp, the helpers both share in int8_common.h.
//
// dynamic (W8A8):  per-token symmetric quantisation of the activations (quant_simd.h's row quantiser), the
//                  int8 x int8 -> int32 GEMM and the epilogue out = float(acc) * sx[m] * sw[n] + bias[n], in x's
//                  dtype. Where int8::wanted (AVX2 and up; VNNI from M = 2): the native GEMMs of int8_gemm.h,
//                  quantisation and epilogue fused into them. Otherwise at::_int_mm (oneDNN; small K goes through
//                  our loop because _int_mm is wrong for K == 1 in torch 2.13), then one epilogue pass.
// weight-only:     int8 weights converted to float inside the dot products (GEMV-style kernel, 4 output rows
//                  x up to 4 tokens per register tile) for small M; for large M the weights are dequantised
//                  one block of output rows at a time into a small float buffer that feeds a BLAS GEMM, so a
//                  full float copy of the weight never exists.
//
// Quantisation rule (pyopt/_rules.py, quantize_per_token): amax = max|x| over the row (float32),
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
#include "cpu/int8_common.h"
#include "cpu/int8_gemm.h"
#include "cpu/quant_simd.h"
#include "op_checks.h"

#if PYOPT_X86
#include <immintrin.h>
#endif

namespace pyopt::int8 {
namespace {

#if PYOPT_X86
PYOPT_TARGET_AVX2 inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

// ---------------------------------------------------------------------------------------------------------
// Dequant epilogue: out[m, n] = float(acc[m, n]) * sx[m] * sw[n] + bias[n]. The vector rows return how many
// columns they did; the scalar loop finishes the row (and does every row for bfloat16/float16 outputs).
// ---------------------------------------------------------------------------------------------------------
#if PYOPT_X86
}  // namespace
namespace avx512 {
namespace {
PYOPT_TARGET_AVX512 int64_t epilogue_row(const int32_t* a, float s, const float* sw, const float* bias,
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

}  // namespace
}  // namespace avx512
namespace avx2 {
namespace {
PYOPT_TARGET_AVX2 int64_t epilogue_row(const int32_t* a, float s, const float* sw, const float* bias, float* o,
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
}  // namespace
}  // namespace avx2
namespace {
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
        if (isa >= Isa::Avx512) n = avx512::epilogue_row(a, sx[m], sw, bias, o, N);
        else if (isa == Isa::Avx2) n = avx2::epilogue_row(a, sx[m], sw, bias, o, N);
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

}  // namespace

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

// Epilogue over a contiguous int32 accumulator into `out` (which may alias it, for float32 output).
void epilogue_into(const at::Tensor& acc, const at::Tensor& sx, const at::Tensor& sw,
                   const c10::optional<at::Tensor>& bias, at::Tensor& out, Isa isa) {
  const int64_t M = acc.size(0), N = acc.size(1);
  PYOPT_FLOAT_DISPATCH(out.scalar_type(), [&] {
    dequant_epilogue<scalar_t>(acc.data_ptr<int32_t>(), sx.data_ptr<float>(), sw.data_ptr<float>(),
                               bias ? bias->data_ptr<float>() : nullptr, out.data_ptr<scalar_t>(), M, N, isa);
  });
}

namespace {

// x [M, K] contiguous, weights contiguous, bias contiguous float32 (linear_operands).
at::Tensor dynamic_2d(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scales,
                      const c10::optional<at::Tensor>& bias) {
  const Isa isa = pyopt::active_isa();
  const int64_t M = x.size(0), K = x.size(1), N = w_q.size(0);
  if (M == 0 || N == 0) return at::empty({M, N}, x.options());
  if (wanted(isa, M, K)) {
    // Native GEMM (int8_gemm.h: VNNI or AVX2 tier): each block of rows is quantised into a per-thread buffer
    // right before its GEMM, and the epilogue runs on the accumulators.
    auto out = at::empty({M, N}, x.options());
    PYOPT_FLOAT_DISPATCH(x.scalar_type(), [&] {
      const scalar_t* px = x.data_ptr<scalar_t>();
      auto fill = [&](int64_t m0, int64_t rows, int8_t* q, int64_t ld, float* sx) {
        for (int64_t r = 0; r < rows; ++r)
          sx[r] = pyopt::quant::quantize_row_per_token(isa, px + (m0 + r) * K, q + r * ld, K);
      };
      gemm_dequant<scalar_t>(isa, M, N, K, fill, w_q.data_ptr<int8_t>(), K, w_scales.data_ptr<float>(),
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
}  // namespace
namespace avx512 {
namespace {
template <typename T, int NT, int MT>
PYOPT_TARGET_AVX512 void wo_tile(const T* x, const int8_t* w, int64_t K, int64_t n, int64_t m, T* out,
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

}  // namespace
}  // namespace avx512
namespace avx2 {
namespace {
template <typename T, int NT, int MT>
PYOPT_TARGET_AVX2 void wo_tile(const T* x, const int8_t* w, int64_t K, int64_t n, int64_t m, T* out,
                                    int64_t N, const float* sw, const float* bias) {
  // One token: two accumulator sets (even / odd 8-k steps) hide the FMA latency (4 independent chains are
  // too few for 2 FMA pipes x 4 cycles).
  constexpr int kSets = MT == 1 ? 2 : 1;
  __m256 acc[kSets][NT][MT];
  for (int s = 0; s < kSets; ++s)
    for (int j = 0; j < NT; ++j)
      for (int i = 0; i < MT; ++i) acc[s][j][i] = _mm256_setzero_ps();
  const int64_t K8 = K / 8 * 8;
#define PYOPT_WO_STEP(s, kk)                                                                    \
  {                                                                                             \
    __m256 xv[MT];                                                                              \
    for (int i = 0; i < MT; ++i) xv[i] = load8(x + (m + i) * K + (kk));                         \
    for (int j = 0; j < NT; ++j) {                                                              \
      __m128i wb = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w + (n + j) * K + (kk)));   \
      __m256 wv = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(wb));                                 \
      for (int i = 0; i < MT; ++i) acc[s][j][i] = _mm256_fmadd_ps(wv, xv[i], acc[s][j][i]);     \
    }                                                                                           \
  }
  int64_t k = 0;
  for (; k + 8 * kSets <= K8; k += 8 * kSets) {
    // The next block's NT weight rows (the rows this thread reads next), one line per row every 64 k: each
    // row is its own 4 KiB page at K = 4096, where the hardware prefetchers stop, so without this every row
    // started with DRAM misses (M = 1, K = N = 4096 read the weight at ~13 GB/s). A prefetch cannot fault.
    if ((k & 63) < 8 * kSets)
      for (int j = 0; j < NT; ++j) _mm_prefetch(reinterpret_cast<const char*>(w + (n + NT + j) * K + k), _MM_HINT_T0);
    for (int s = 0; s < kSets; ++s) PYOPT_WO_STEP(s, k + 8 * s)
  }
  for (; k < K8; k += 8) PYOPT_WO_STEP(0, k)
#undef PYOPT_WO_STEP
  for (int j = 0; j < NT; ++j)
    for (int i = 0; i < MT; ++i) {
      __m256 a = acc[0][j][i];
      if constexpr (kSets == 2) a = _mm256_add_ps(a, acc[kSets - 1][j][i]);
      float dot = hsum8(a);
      for (int64_t k = K8; k < K; ++k) dot += to_f32(x[(m + i) * K + k]) * float(w[(n + j) * K + k]);
      wo_store(out, N, m + i, n + j, dot, sw, bias);
    }
}
}  // namespace
}  // namespace avx2
#endif

namespace scalar {
namespace {
template <typename T, int NT, int MT>
void wo_tile(const T* x, const int8_t* w, int64_t K, int64_t n, int64_t m, T* out, int64_t N,
                    const float* sw, const float* bias) {
  for (int j = 0; j < NT; ++j)
    for (int i = 0; i < MT; ++i) {
      float dot = 0.0f;
      for (int64_t k = 0; k < K; ++k) dot += to_f32(x[(m + i) * K + k]) * float(w[(n + j) * K + k]);
      wo_store(out, N, m + i, n + j, dot, sw, bias);
    }
}
}  // namespace
}  // namespace scalar

namespace {
// One block of NT output rows against every token, MT tokens at a time (the weights stay in L1).
template <typename T, int NT, int MT_MAX>
void wo_rows(const T* x, const int8_t* w, int64_t M, int64_t K, int64_t n, T* out, int64_t N, const float* sw,
             const float* bias, Isa isa) {
  int64_t m = 0;
  auto run = [&](auto mt) {
    constexpr int MT = decltype(mt)::value;
#if PYOPT_X86
    if (isa >= Isa::Avx512) return avx512::wo_tile<T, NT, MT>(x, w, K, n, m, out, N, sw, bias);
    if (isa == Isa::Avx2) return avx2::wo_tile<T, NT, (MT > 2 ? 2 : MT)>(x, w, K, n, m, out, N, sw, bias);
#endif
    scalar::wo_tile<T, NT, MT>(x, w, K, n, m, out, N, sw, bias);
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

at::Tensor weight_only_2d(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scales,
                          const c10::optional<at::Tensor>& bias) {
  const Isa isa = pyopt::active_isa();
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

}  // namespace

// The CPU kernels of pyopt::int8_linear_dynamic / int8_linear_weight_only: x [..., K] in any layout.
at::Tensor int8_linear_dynamic(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scales,
                               const c10::optional<at::Tensor>& bias) {
  pyopt::checks::int8_linear(x, w_q, w_scales, bias);
  const LinearOperands a = linear_operands(x, w_q, w_scales, bias);
  return dynamic_2d(a.x, a.w, a.sw, a.bias).view(linear_out_shape(x, w_q.size(0)));
}

at::Tensor int8_linear_weight_only(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scales,
                                   const c10::optional<at::Tensor>& bias) {
  pyopt::checks::int8_linear(x, w_q, w_scales, bias);
  const LinearOperands a = linear_operands(x, w_q, w_scales, bias);
  return weight_only_2d(a.x, a.w, a.sw, a.bias).view(linear_out_shape(x, w_q.size(0)));
}

}  // namespace pyopt::int8

TORCH_LIBRARY_IMPL(pyopt, CPU, m) {
  m.impl("int8_linear_dynamic", &pyopt::int8::int8_linear_dynamic);
  m.impl("int8_linear_weight_only", &pyopt::int8::int8_linear_weight_only);
}
