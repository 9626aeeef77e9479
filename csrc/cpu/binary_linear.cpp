// BinaryLinear on CPU: y = x @ (alpha * sign(W))^T + b computed straight from the packed sign bits.
//
// Packed layout (shared by every backend, see pyopt/_rules.py pack_signs): packed[n, j] is one byte whose
// bit b (LSB first) is 1 iff W[n, 8j + b] >= 0; K is padded to a multiple of 8 per row and the padding bits
// are ignored by every kernel (they are written as 0).
//
// Float activations (XNOR-Net BWN), s_k = +1 for bit 1 and -1 for bit 0. No float weight is ever formed.
// AVX-512: sum_k s_k x_k = 2 * sum_{bit=1} x_k - sum_k x_k, so each output needs only a *masked add* of x
// (16 bits of the packed row are directly a __mmask16 for _mm512_mask_add_ps) and one per-row sum of x;
// register tiles 4x4 (each x load and each mask load reused 4 times), 1x8 at M=1 (8 independent add chains).
// AVX2 (no mask registers): sum_k s_k x_k directly, each packed byte selecting 8 sign-bit lane masks from a
// 256-entry table, one XOR and one add per 8 weights; tiles 1x6 at M=1 (two add chains per output), else 2x4.
// OpenMP over the tiles.
//
// Binary activations (XNOR + popcount): sign(x) is packed per row the same way, beta = mean|x|, and
//     sum_k s_k t_k = K - 2 * popcount(xbits XOR wbits),   y = alpha * beta * that + b.
//
// Special values: 2 * S+ - S is formed in double (2 * S+ may overflow float32 where the result does not), and a
// row holding inf/NaN (S not finite: inf - inf would give NaN where the dot product is +-inf) or an output
// that is not finite (an overflowing float partial sum of the AVX2 form) is computed directly as
// sum_k s_k x_k in double, so every backend propagates inf and NaN as the reference's matmul does.
#include <ATen/ATen.h>
#include <immintrin.h>
#include <omp.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <vector>

#include <c10/util/accumulate.h>

#include "cpu/cpu_isa.h"
#include "op_checks.h"

namespace pyopt::binary {
namespace {

struct Problem {
  const float* x;        // (M, K) contiguous
  const uint8_t* w;      // (N, KB) contiguous
  const float* alpha;    // (N)
  const float* bias;     // (N) or nullptr
  const float* row_sum;  // (M): sum_k x[m, k]
  float* y;              // (M, N)
  int64_t M, N, K, KB;
};

inline float epilogue(const Problem& p, int64_t m, int64_t n, float masked_sum) {
  float v = p.alpha[n] * static_cast<float>(2.0 * masked_sum - p.row_sum[m]);
  return p.bias ? v + p.bias[n] : v;
}

// sum_k s_k x_k of one row and one output channel, directly (the rows with inf/NaN; the scalar tier).
inline double signed_dot(const Problem& p, int64_t m, int64_t n) {
  const float* xr = p.x + m * p.K;
  const uint8_t* wr = p.w + n * p.KB;
  double acc = 0.0;
  for (int64_t k = 0; k < p.K; ++k) acc += ((wr[k >> 3] >> (k & 7)) & 1) ? xr[k] : -xr[k];
  return acc;
}

inline float epilogue_direct(const Problem& p, int64_t m, int64_t n) {
  float v = p.alpha[n] * static_cast<float>(signed_dot(p, m, n));
  return p.bias ? v + p.bias[n] : v;
}

// --- scalar (double accumulation: no intermediate overflow) --------------------------------------------
namespace scalar {
void tile(const Problem& p, int64_t m0, int64_t n0, int64_t rows, int64_t cols) {
  const int64_t m1 = m0 + rows, n1 = std::min(n0 + cols, p.N);
  for (int64_t m = m0; m < m1; ++m)
    for (int64_t n = n0; n < n1; ++n) p.y[m * p.N + n] = epilogue_direct(p, m, n);
}

int64_t mismatches(const uint8_t* a, const uint8_t* b, int64_t KB, uint8_t last_keep) {
  int64_t count = 0;
  for (int64_t j = 0; j < KB; ++j) {
    uint32_t d = static_cast<uint32_t>(a[j] ^ b[j]) & (j == KB - 1 ? last_keep : 0xFFu);
    while (d) {
      d &= d - 1;
      ++count;
    }
  }
  return count;
}
}  // namespace scalar

#if PYOPT_X86
// Fully unrolled register-tile loops: without this GCC keeps the accumulator array in memory and stores
// it on every iteration of the K loop (seen in the disassembly).
#define PYOPT_UNROLL _Pragma("GCC unroll 16")
#ifndef BINARY_TN
#define BINARY_TN 6
#endif

// Software prefetch of the weight rows 4 tiles ahead (the OpenMP schedule gives a thread consecutive tiles),
// one line per 64 k: TN rows of KB = K / 8 bytes are TN * K / 512 lines, one per 64 k of the tile's loop.
// A row is only 8 lines at K = 4096, too short a stream for the hardware prefetcher, so with the weights out
// of cache (in a model, the other layers ran in between; in the bench, F.linear) every line was a demand
// miss: M=1, 4096^2, interleaved with F.linear: 0.47-0.61 ms without, 0.35-0.47 ms with (one tile ahead:
// no gain; warm cache: 0.2 ms either way).
template <int TN>
struct RowPrefetch {
  const uint8_t* rows;
  int64_t bytes, KB;
  RowPrefetch(const Problem& p, int64_t n0)
      : rows(p.w + std::min<int64_t>(n0 + 4 * TN, p.N - 1) * p.KB),
        bytes(std::clamp<int64_t>(p.N - n0 - 4 * TN, 0, TN) * p.KB),
        KB(p.KB) {}
  void step(int64_t k) const {
    if (k & 63) return;
    const int64_t i = k >> 6, off = (i % TN) * KB + (i / TN) * 64;  // row i % TN, line i / TN
    if (off < bytes) _mm_prefetch(reinterpret_cast<const char*>(rows + off), _MM_HINT_T0);
  }
};

// --- AVX-512: 16 packed bits are a lane mask ----------------------------------------------------------
namespace avx512 {
// kmovw k, m16 is a load-port uop; compilers lower _load_mask16 / _cvtu32_mask16 to a GPR load + kmovd,
// which costs a port-5 uop per mask, competing with the masked adds (measured ~2x slower at M=1).
PYOPT_TARGET_AVX512 inline __mmask16 load_mask16(const uint8_t* p) {
  __mmask16 m;
  asm("kmovw %1, %0" : "=Yk"(m) : "m"(*reinterpret_cast<const uint16_t*>(p)));
  return m;
}

// TM rows of x (all present) x TN output channels (the last tile repeats its final channel, not stored).
template <int TM, int TN>
PYOPT_TARGET_AVX512 void tile(const Problem& p, int64_t m0, int64_t n0) {
  const int64_t tn = std::min<int64_t>(TN, p.N - n0);
  __m512 acc[TM][TN];
  const float* xr[TM];
  const uint8_t* wr[TN];
  PYOPT_UNROLL for (int i = 0; i < TM; ++i) {
    xr[i] = p.x + (m0 + i) * p.K;
    PYOPT_UNROLL for (int j = 0; j < TN; ++j) acc[i][j] = _mm512_setzero_ps();
  }
  PYOPT_UNROLL for (int j = 0; j < TN; ++j) wr[j] = p.w + (n0 + std::min<int64_t>(j, tn - 1)) * p.KB;
  const RowPrefetch<TN> ahead(p, n0);
  const int64_t k_full = p.K & ~int64_t(15);
  for (int64_t k = 0; k < k_full; k += 16) {
    ahead.step(k);
    __m512 xv[TM];
    PYOPT_UNROLL for (int i = 0; i < TM; ++i) xv[i] = _mm512_loadu_ps(xr[i] + k);
    PYOPT_UNROLL for (int j = 0; j < TN; ++j) {  // one mask live at a time: there are only 7 usable mask registers
      const __mmask16 mk = load_mask16(wr[j] + (k >> 3));  // bits k..k+15, LSB = lane 0
      PYOPT_UNROLL for (int i = 0; i < TM; ++i) acc[i][j] = _mm512_mask_add_ps(acc[i][j], mk, acc[i][j], xv[i]);
    }
  }
  // Reduce first, then the 0..15 leftover columns in scalar code (a vector tail here also made the compiler
  // keep acc in memory).
  float sums[TM][TN];
  PYOPT_UNROLL for (int i = 0; i < TM; ++i)
    PYOPT_UNROLL for (int j = 0; j < TN; ++j) sums[i][j] = _mm512_reduce_add_ps(acc[i][j]);
  for (int64_t k = k_full; k < p.K; ++k)
    PYOPT_UNROLL for (int j = 0; j < TN; ++j)
      if ((wr[j][k >> 3] >> (k & 7)) & 1)
        PYOPT_UNROLL for (int i = 0; i < TM; ++i) sums[i][j] += xr[i][k];
  PYOPT_UNROLL for (int i = 0; i < TM; ++i)
    PYOPT_UNROLL for (int j = 0; j < tn; ++j) p.y[(m0 + i) * p.N + n0 + j] = epilogue(p, m0 + i, n0 + j, sums[i][j]);
}

}  // namespace avx512

// --- AVX2: sign flips from a 256-entry table -----------------------------------------------------------
// y = sum_k s_k x_k directly: each packed byte indexes a table of 8 lane masks holding the float sign bit
// where the weight bit is 0, so s_k x_k for 8 k is one XOR (the table load is its memory operand) and one
// add. Per 8 weights and output that is a byte load, a table load, an XOR and an add, and x is loaded once
// per tile; the earlier form (broadcast the byte, AND with the lane bits, compare, AND, add) spent 5 vector
// uops per 8 weights and ran at 2.1x fp32 F.linear at M=1 on Zen 3. The table is 8 KiB and stays in L1.
// No row sum and no double conversion: an output that overflowed or met inf/NaN is not finite and is
// recomputed in double by the caller (so no intermediate overflow reaches a finite result).
namespace avx2 {
struct SignTable {
  alignas(32) uint32_t lanes[256][8];
};
constexpr SignTable make_sign_table() {
  SignTable t{};
  for (int b = 0; b < 256; ++b)
    for (int i = 0; i < 8; ++i) t.lanes[b][i] = ((b >> i) & 1) ? 0u : 0x80000000u;
  return t;
}
alignas(32) constexpr SignTable kSigns = make_sign_table();

PYOPT_TARGET_AVX2 inline __m256 signs(uint8_t bits) {
  return _mm256_load_ps(reinterpret_cast<const float*>(kSigns.lanes[bits]));
}

// TM rows of x x TN output channels (the last tile repeats its final channel, not stored). At M = 1 each
// output keeps U = 2 accumulators (even / odd 8-float chunk): two independent add chains per output.
template <int TM, int TN>
PYOPT_TARGET_AVX2 void tile(const Problem& p, int64_t m0, int64_t n0) {
  constexpr int U = TM == 1 ? 2 : 1;
  const int64_t tn = std::min<int64_t>(TN, p.N - n0);
  __m256 acc[U][TM][TN];
  const float* xr[TM];
  const uint8_t* wr[TN];
  PYOPT_UNROLL for (int u = 0; u < U; ++u)
    PYOPT_UNROLL for (int i = 0; i < TM; ++i)
      PYOPT_UNROLL for (int j = 0; j < TN; ++j) acc[u][i][j] = _mm256_setzero_ps();
  PYOPT_UNROLL for (int i = 0; i < TM; ++i) xr[i] = p.x + (m0 + i) * p.K;
  PYOPT_UNROLL for (int j = 0; j < TN; ++j) wr[j] = p.w + (n0 + std::min<int64_t>(j, tn - 1)) * p.KB;
  const RowPrefetch<TN> ahead(p, n0);
  const int64_t k_vec = p.K & ~int64_t(8 * U - 1);
  for (int64_t k = 0; k < k_vec; k += 8 * U) {
    ahead.step(k);
    PYOPT_UNROLL for (int u = 0; u < U; ++u) {
      __m256 xv[TM];
      PYOPT_UNROLL for (int i = 0; i < TM; ++i) xv[i] = _mm256_loadu_ps(xr[i] + k + 8 * u);
      PYOPT_UNROLL for (int j = 0; j < TN; ++j) {
        const __m256 s = signs(wr[j][(k >> 3) + u]);
        PYOPT_UNROLL for (int i = 0; i < TM; ++i) acc[u][i][j] = _mm256_add_ps(acc[u][i][j], _mm256_xor_ps(xv[i], s));
      }
    }
  }
  float sums[TM][TN];
  PYOPT_UNROLL for (int i = 0; i < TM; ++i)
    PYOPT_UNROLL for (int j = 0; j < TN; ++j) {
      __m256 a = acc[0][i][j];
      PYOPT_UNROLL for (int u = 1; u < U; ++u) a = _mm256_add_ps(a, acc[u][i][j]);
      __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
      h = _mm_add_ps(h, _mm_movehl_ps(h, h));
      sums[i][j] = _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
    }
  for (int64_t k = k_vec; k < p.K; ++k)  // the 0 .. 8U-1 leftover columns
    PYOPT_UNROLL for (int j = 0; j < TN; ++j) {
      const bool plus = (wr[j][k >> 3] >> (k & 7)) & 1;
      PYOPT_UNROLL for (int i = 0; i < TM; ++i) sums[i][j] += plus ? xr[i][k] : -xr[i][k];
    }
  PYOPT_UNROLL for (int i = 0; i < TM; ++i)
    PYOPT_UNROLL for (int j = 0; j < TN; ++j) {
      if (j >= tn) continue;
      const float v = p.alpha[n0 + j] * sums[i][j];
      p.y[(m0 + i) * p.N + n0 + j] = p.bias ? v + p.bias[n0 + j] : v;
    }
}

PYOPT_TARGET_AVX2 int64_t mismatches(const uint8_t* a, const uint8_t* b, int64_t KB, uint8_t last_keep) {
  int64_t count = 0, j = 0;
  for (; j + 8 <= KB - 1; j += 8) {  // the last byte is handled apart (its padding bits are dropped)
    uint64_t u, v;
    std::memcpy(&u, a + j, 8);
    std::memcpy(&v, b + j, 8);
    count += _mm_popcnt_u64(u ^ v);
  }
  for (; j < KB - 1; ++j) count += _mm_popcnt_u32(static_cast<uint32_t>(a[j] ^ b[j]));
  return count + _mm_popcnt_u32(static_cast<uint32_t>((a[KB - 1] ^ b[KB - 1]) & last_keep));
}
}  // namespace avx2
#endif

// x: (M, K) float32 contiguous, packed_weight: (N, ceil(K/8)) uint8, alpha: (N) float32, bias: (N) float32 or
// None, all contiguous. Returns float32 (M, N).
at::Tensor binary_linear_2d(const at::Tensor& x, const at::Tensor& packed_weight, const at::Tensor& alpha,
                            const std::optional<at::Tensor>& bias, int64_t in_features, bool binary_activations) {
  const int64_t M = x.size(0), N = packed_weight.size(0), K = in_features, KB = packed_weight.size(1);
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  if (K == 0) {
    if (bias.has_value()) y.copy_(bias->unsqueeze(0).expand({M, N}));
    else y.zero_();
    return y;
  }
  const pyopt::Isa isa = pyopt::active_isa();
  const bool parallel = M * N * K >= (int64_t(1) << 16);  // below this OpenMP start-up costs more than it saves
  const float* bias_ptr = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  float* py = y.data_ptr<float>();
  const float* pa = alpha.data_ptr<float>();
  const uint8_t* pw = packed_weight.data_ptr<uint8_t>();

  if (binary_activations) {
    // Pack sign(x) per row exactly like the weights, and beta = mean|x| per row.
    at::Tensor xbits = at::zeros({M, KB}, packed_weight.options());
    std::vector<float> beta(M);
    uint8_t* pxb = xbits.data_ptr<uint8_t>();
    const float* px = x.data_ptr<float>();
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t m = 0; m < M; ++m) {
      double abs_sum = 0.0;
      for (int64_t k = 0; k < K; ++k) {
        float v = px[m * K + k];
        abs_sum += std::fabs(v);
        if (v >= 0.0f) pxb[m * KB + (k >> 3)] |= static_cast<uint8_t>(1u << (k & 7));
      }
      beta[m] = static_cast<float>(abs_sum / K);
    }
    const uint8_t last_keep = static_cast<uint8_t>((K & 7) ? (1u << (K & 7)) - 1u : 0xFFu);
    auto xnor = [&](auto mismatches) {
#pragma omp parallel for collapse(2) schedule(static) if (parallel)
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) {
          const int64_t diff = mismatches(pxb + m * KB, pw + n * KB, KB, last_keep);
          float v = pa[n] * beta[m] * static_cast<float>(K - 2 * diff);
          py[m * N + n] = bias_ptr ? v + bias_ptr[n] : v;
        }
    };
    switch (isa) {
#if !PYOPT_X86
      default:
#endif
      case pyopt::Isa::Scalar: xnor(scalar::mismatches); break;
#if PYOPT_X86
      default: xnor(avx2::mismatches); break;  // popcnt: every tier from AVX2 up
#endif
    }
    return y;
  }

  // sum_k x[m, k], the "- sum_k x_k" term of the AVX-512 form (the AVX2 and scalar tiers sum s_k x_k directly)
  const bool masked_add = PYOPT_X86 && isa >= pyopt::Isa::Avx512;
  at::Tensor row_sum = masked_add ? x.sum(1) : at::Tensor();
  Problem p{x.data_ptr<float>(), pw, pa, bias_ptr, masked_add ? row_sum.data_ptr<float>() : nullptr, py, M, N, K, KB};
  // `tiles(tile_m, tile_n, kernel)`: kernel(m0, n0, rows) over the register tiles, OpenMP over them.
  // Small chunks handed out dynamically: on a busy machine a descheduled thread then delays only its own
  // chunk (static halves: M=1 4096^2 took 14 ms with 2 threads on a loaded Zen 3, 1.4 ms with one).
  auto tiles = [&](int64_t tile_m, int64_t tile_n, auto kernel) {
    const int64_t tiles_m = (M + tile_m - 1) / tile_m, tiles_n = (N + tile_n - 1) / tile_n;
#pragma omp parallel for collapse(2) schedule(dynamic, 16) if (parallel)
    for (int64_t tm = 0; tm < tiles_m; ++tm)
      for (int64_t tn = 0; tn < tiles_n; ++tn)
        kernel(tm * tile_m, tn * tile_n, std::min(tile_m, M - tm * tile_m));
  };
  // Register tiles (rows x channels): M == 1 uses 1x8 on AVX-512 (8 independent add chains hide the add
  // latency), otherwise 4x4 (16 accumulators of 32 zmm); 2x4 on AVX2 (8 of 16 ymm).
  switch (isa) {
#if !PYOPT_X86
    default:
#endif
    case pyopt::Isa::Scalar:
      tiles(4, 4, [&](int64_t m0, int64_t n0, int64_t rows) { scalar::tile(p, m0, n0, rows, 4); });
      break;
#if PYOPT_X86
    case pyopt::Isa::Avx2:
      if (M == 1) {
        tiles(1, BINARY_TN, [&](int64_t m0, int64_t n0, int64_t) { avx2::tile<1, BINARY_TN>(p, m0, n0); });
        break;
      }
      tiles(2, 4, [&](int64_t m0, int64_t n0, int64_t rows) {
        if (rows == 2) avx2::tile<2, 4>(p, m0, n0);
        else avx2::tile<1, 4>(p, m0, n0);
      });
      break;
    default:  // AVX-512 and every tier above it
      if (M == 1) {
        tiles(1, 8, [&](int64_t m0, int64_t n0, int64_t) { avx512::tile<1, 8>(p, m0, n0); });
        break;
      }
      tiles(4, 4, [&](int64_t m0, int64_t n0, int64_t rows) {
        if (rows == 4) avx512::tile<4, 4>(p, m0, n0);
        else if (rows == 3) avx512::tile<3, 4>(p, m0, n0);
        else if (rows == 2) avx512::tile<2, 4>(p, m0, n0);
        else avx512::tile<1, 4>(p, m0, n0);
      });
      break;
#endif
  }
  // Outputs that are not finite (inf/NaN in x, or a float partial sum that overflowed) and, in the AVX-512
  // form, rows whose sum S is not finite: recomputed directly in double, see the header.
  const float* prs = p.row_sum;
  for (int64_t m = 0; m < M; ++m) {
    const bool row_bad = prs && !std::isfinite(prs[m]);
    for (int64_t n = 0; n < N; ++n)
      if (row_bad || !std::isfinite(py[m * N + n])) py[m * N + n] = epilogue_direct(p, m, n);
  }
  return y;
}

}  // namespace

// The CPU kernel of pyopt::binary_linear: x [..., K] of any float dtype and layout, the result in x's dtype.
at::Tensor binary_linear(const at::Tensor& x, const at::Tensor& packed_weight, const at::Tensor& alpha,
                         const std::optional<at::Tensor>& bias, int64_t in_features, bool binary_activations) {
  pyopt::checks::binary_linear(x, packed_weight, alpha, bias, in_features);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = packed_weight.size(0);
  const at::Tensor x2 =
      x.reshape({c10::multiply_integers(x.sizes().begin(), x.sizes().end() - 1), in_features}).to(at::kFloat).contiguous();
  const std::optional<at::Tensor> b = bias ? std::optional<at::Tensor>(bias->contiguous()) : std::nullopt;
  at::Tensor y = binary_linear_2d(x2, packed_weight.contiguous(), alpha.contiguous(), b, in_features, binary_activations);
  return y.to(x.scalar_type()).view(out_shape);
}

}  // namespace pyopt::binary

TORCH_LIBRARY_IMPL(pyopt, CPU, m) { m.impl("binary_linear", &pyopt::binary::binary_linear); }
