// Native AVX512-VNNI int8 GEMM + fused dequant epilogue (interface and contract: int8_gemm.h), and
// gemm_dequant: the tier dispatch and the K-split path for K > kMaxExactK (end of file).
//
// vpdpbusd multiplies unsigned by signed bytes, so the activations go in shifted: a = q + 128 (u8, = q ^ 0x80)
// and each column's sum is corrected once at the end:
//   sum_k (q[m,k] + 128) * w[n,k] - 128 * sum_k w[n,k] = sum_k q[m,k] * w[n,k].
// All int32 arithmetic wraps (vpdpbusd does not saturate), so the result is exact whenever the true sum fits
// in int32 (127 * 127 * K < 2^31, K < 133k), as with torch._int_mm.
//
// Orientation: the activations are the vector operand (16 rows per zmm, packed per call, see pack16) and the
// weights the broadcast operand, read 4 bytes at a time straight from the plain [N, K] int8 weight. That keeps
// the weight unpacked (no second copy, no layout in the state_dict) at the price of an in-register transpose
// of each output tile, ~50 shuffles per 32 x 8 x K tile (1-2% at K = 512, noise at K = 4096).
//
// Blocking (M=1024, K=N=4096 on Zen 4, single thread: the k loop runs at ~99% of the vpdpbusd peak, one per
// cycle, the whole op at ~93%: epilogue ~1-2%, quantisation + packing ~2%, column corrections ~1%; _int_mm
// alone, without quantisation or epilogue, measured 2-5% slower):
//   work item   = MC rows (rows_per_item) x a range of columns; its rows are quantised and packed once into a
//                 per-thread buffer (MC x K bytes, <= 512 KiB: L2-resident across the item's columns);
//   micro-tile  = kMR = 32 rows (2 zmm) x kNR = 8 columns: 16 accumulators, per 4 k: 2 vector loads and 8
//                 broadcasts for 16 vpdpbusd. All of K is accumulated in registers (no K blocking: the item's
//                 packed rows and the 8 weight rows stream from L2 at ~10 B/cycle, well within its bandwidth).
//                 8 weight rows, not 16: at K = 4096 the rows are 4 KiB apart, so all map to one L1 set, and
//                 16 of them thrash its 8 ways (a 16-column tile measured 2.5x slower).
//   epilogue    = per pair of micro-tiles (16 columns): whole 64-byte output rows, streamed when aligned.
#include "cpu/int8_gemm.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#include "cpu/int8_gemm_amx.h"
#include "cpu/transpose16.h"

#if PYOPT_X86
#include <immintrin.h>
#endif

namespace pyopt::int8 {
namespace avx512vnni {
namespace {

constexpr int64_t kNR = 8;
constexpr int64_t kMR = 32;
// Rows per work item: at most 128, fewer when the packed block (MC x K bytes) would pass 512 KiB, half a Zen 4
// L2, so that it stays there while the weights stream past. At K = 4096, 128 rows measured 2-3% faster than 256
// (whose 1 MiB block is the whole L2) single-threaded, and lets M = 1024 split into 8 items for 2 threads.
inline int64_t rows_per_item(int64_t Kp) {
  return std::clamp<int64_t>((512 << 10) / std::max<int64_t>(Kp, 1) / kMR * kMR, kMR, 128);
}

#if PYOPT_X86
// 16 int8 rows (row i at rows + i * ld, 4 * Kg readable bytes each) -> Kg vectors of 64 bytes: vector g holds
// row r's bytes 4g .. 4g+3 at 4r .. 4r+3, shifted to u8 (^ 0x80), i.e. vpdpbusd's unsigned operand. Pad
// bytes past K must hold -128 (u8 0 after the shift), so the weight bytes they meet never count.
PYOPT_TARGET_AVX512VNNI void pack16(const int8_t* rows, int64_t ld, int64_t Kg, uint8_t* dst) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  for (int64_t g0 = 0; g0 < Kg; g0 += 16) {
    const int64_t gn = std::min<int64_t>(16, Kg - g0);
    const __mmask64 m = gn == 16 ? ~0ULL : (1ULL << (4 * gn)) - 1;
    __m512i r[16];
    for (int i = 0; i < 16; ++i) r[i] = _mm512_maskz_loadu_epi8(m, rows + i * ld + 4 * g0);
    transpose16x16_epi32(r);
    for (int64_t g = 0; g < gn; ++g) _mm512_storeu_si512(dst + (g0 + g) * 64, _mm512_xor_si512(r[g], flip));
  }
}

// sum_k w[k] over one weight row (vpdpbusd with all-ones u8 bytes: 64 bytes per instruction).
PYOPT_TARGET_AVX512VNNI inline int32_t row_sum(const int8_t* w, int64_t K) {
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i s = _mm512_setzero_si512();
  for (int64_t k = 0; k < K; k += 64) {
    const __mmask64 m = K - k >= 64 ? ~0ULL : (1ULL << (K - k)) - 1;
    s = _mm512_dpbusd_epi32(s, ones, _mm512_maskz_loadu_epi8(m, w + k));
  }
  return _mm512_reduce_add_epi32(s);
}

// comp[n] = 128 * sum_k w[n, k] for n in [n0, n1), the correction for the +128 shift of the activations.
PYOPT_TARGET_AVX512VNNI void column_corrections(const int8_t* w, int64_t ldw, int64_t K, int64_t n0, int64_t n1,
                                                int32_t* comp) {
  for (int64_t n = n0; n < n1; ++n)
    comp[n] = static_cast<int32_t>(128u * static_cast<uint32_t>(row_sum(w + n * ldw, K)));  // wraps like the sums
}

inline int32_t load4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

template <typename T>
PYOPT_TARGET_AVX512VNNI inline void store_row(T* p, __m256 v, int64_t cols) {
  if constexpr (std::is_same_v<T, float>) {
    if (cols == kNR) _mm256_storeu_ps(p, v);
    else _mm256_mask_storeu_ps(p, static_cast<__mmask8>((1u << cols) - 1), v);
  } else {  // the scalar conversion torch's .to(dtype) does (round to nearest even)
    alignas(32) float tmp[kNR];
    _mm256_store_ps(tmp, v);
    for (int64_t c = 0; c < cols; ++c) p[c] = static_cast<T>(tmp[c]);
  }
}

// f[j] lane r = out[r, j] for 16 rows x 8 columns -> rows of out (the first `rows` rows, `cols` columns).
template <typename T>
PYOPT_TARGET_AVX512VNNI inline void store_transposed(const __m512* f, int64_t rows, int64_t cols, T* out,
                                                     int64_t ldo) {
  __m512 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(f[2 * i], f[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(f[2 * i], f[2 * i + 1]);
  }
  // u[4i + c], 128-bit lane L = row 4L + c, columns 4i .. 4i + 3.
  for (int i = 0; i < 2; ++i) {
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 2]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 1]), d = _mm512_castps_pd(t[4 * i + 3]);
    u[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
    u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
    u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
  }
  for (int c = 0; c < 4; ++c) {
    // (rows c | 4 + c) and (rows 8 + c | 12 + c), each row = lane L of u[c] then lane L of u[4 + c].
    const __m512 x = _mm512_shuffle_f32x4(_mm512_shuffle_f32x4(u[c], u[4 + c], 0x44),
                                          _mm512_shuffle_f32x4(u[c], u[4 + c], 0x44), 0xD8);
    const __m512 y = _mm512_shuffle_f32x4(_mm512_shuffle_f32x4(u[c], u[4 + c], 0xEE),
                                          _mm512_shuffle_f32x4(u[c], u[4 + c], 0xEE), 0xD8);
    const __m256 v[4] = {_mm512_castps512_ps256(x), _mm512_extractf32x8_ps(x, 1), _mm512_castps512_ps256(y),
                         _mm512_extractf32x8_ps(y, 1)};
    for (int q = 0; q < 4; ++q)
      if (c + 4 * q < rows) store_row(out + (c + 4 * q) * ldo, v[q], cols);
  }
}

// The epilogue of one accumulator vector (16 rows, column j): float(acc - comp[j]) * sx[r] * sw[j] + bias[j],
// in that order and unfused (the products are pinned so the compiler cannot contract them into an fma), so
// the result matches the reference's float32 epilogue bit for bit.
PYOPT_TARGET_AVX512VNNI inline __m512 dequant16(__m512i acc, int32_t comp, __m512 vsx, float sw, const float* bias,
                                                int64_t j) {
  __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, _mm512_set1_epi32(comp)));
  v = _mm512_mul_ps(v, vsx);
  asm("" : "+v"(v));
  v = _mm512_mul_ps(v, _mm512_set1_ps(sw));
  asm("" : "+v"(v));
  return bias ? _mm512_add_ps(v, _mm512_set1_ps(bias[j])) : v;
}

// Epilogue on the accumulators of one micro-tile (dequant16 per column), stored transposed into rows of out.
template <typename T, int MA>
PYOPT_TARGET_AVX512VNNI inline void store_tile(const __m512i* acc, const int32_t* comp, const float* sx,
                                               const float* sw, const float* bias, int64_t rows, int64_t cols,
                                               T* out, int64_t ldo) {
  for (int i = 0; i < MA && 16 * i < rows; ++i) {
    const __m512 vsx = _mm512_loadu_ps(sx + 16 * i);
    __m512 f[kNR];
    for (int j = 0; j < kNR; ++j) f[j] = dequant16(acc[j * MA + i], comp[j], vsx, sw[j], bias, j);
    store_transposed(f, std::min<int64_t>(16, rows - 16 * i), cols, out + 16 * i * ldo, ldo);
  }
}

// Epilogue of two adjacent micro-tiles (columns j < 8 in acc0, 8 <= j < 16 in acc1), same arithmetic, written
// as whole 64-byte rows: half the stores of two 8-column epilogues, and with `stream` (float32, aligned rows)
// non-temporal, so the output (written once, usually larger than L3) costs no read-for-ownership.
template <typename T, int MA>
PYOPT_TARGET_AVX512VNNI inline void store_tile16(const __m512i* acc0, const __m512i* acc1, const int32_t* comp,
                                                 const float* sx, const float* sw, const float* bias, int64_t rows,
                                                 T* out, int64_t ldo, bool stream) {
  for (int i = 0; i < MA && 16 * i < rows; ++i) {
    const __m512 vsx = _mm512_loadu_ps(sx + 16 * i);
    __m512i f[16];
    for (int j = 0; j < 16; ++j) {
      const __m512i a = j < kNR ? acc0[j * MA + i] : acc1[(j - kNR) * MA + i];
      f[j] = _mm512_castps_si512(dequant16(a, comp[j], vsx, sw[j], bias, j));
    }
    transpose16x16_epi32(f);  // f[r] = row 16i + r, columns 0 .. 15
    const int64_t nr = std::min<int64_t>(16, rows - 16 * i);
    for (int64_t r = 0; r < nr; ++r) {
      T* o = out + (16 * i + r) * ldo;
      if constexpr (std::is_same_v<T, float>) {
        if (stream) _mm512_stream_ps(o, _mm512_castsi512_ps(f[r]));
        else _mm512_storeu_ps(o, _mm512_castsi512_ps(f[r]));
      } else {
        alignas(64) float tmp[16];
        _mm512_store_ps(tmp, _mm512_castsi512_ps(f[r]));
        for (int c = 0; c < 16; ++c) o[c] = static_cast<T>(tmp[c]);
      }
    }
  }
}

// acc[j * MA + i] = rows 16i .. 16i+15 of the packed block (group i at ap + i * Kg * 64) times weight row j
// (at w + j * ldw, 4 * Kg bytes read from each), over all of K. When K % 4 != 0 the last group reads up to 3
// bytes past each weight row; the packed pad bytes are u8 0 there, so whatever those bytes hold adds 0 (the
// caller copies the block holding the tensor's last row, so every read stays in bounds).
template <int MA>
PYOPT_TARGET_AVX512VNNI inline void tile(const uint8_t* ap, int64_t Kg, const int8_t* w, int64_t ldw, __m512i* acc) {
  for (int i = 0; i < MA * kNR; ++i) acc[i] = _mm512_setzero_si512();
  for (int64_t g = 0; g < Kg; ++g) {
    __m512i a[MA];
    for (int i = 0; i < MA; ++i) {
      a[i] = _mm512_loadu_si512(ap + (i * Kg + g) * 64);
      _mm_prefetch(reinterpret_cast<const char*>(ap + (i * Kg + g + 16) * 64), _MM_HINT_T0);
    }
    const int8_t* wp = w + 4 * g;
    // One weight row per step, 1 KiB (256 steps) ahead: the first tile of a column block then finds its weight
    // lines in cache instead of waiting on 8 strided streams (~3%).
    _mm_prefetch(reinterpret_cast<const char*>(wp + (g % kNR) * ldw + 1024), _MM_HINT_T0);
#pragma GCC unroll 8
    for (int j = 0; j < kNR; ++j) {
      const __m512i b = _mm512_set1_epi32(load4(wp + j * ldw));
#pragma GCC unroll 2
      for (int i = 0; i < MA; ++i) acc[j * MA + i] = _mm512_dpbusd_epi32(acc[j * MA + i], a[i], b);
    }
  }
}

// The accumulators go through the stack before the epilogue: reading them in registers there made GCC 12
// allocate them so badly that it copied all 16 every iteration of the k loop (~15% slower). 16 stores and
// loads per micro-tile cost nothing next to its K / 4 x 16 vpdpbusd.
template <int MA>
PYOPT_TARGET_AVX512VNNI inline void spill(const __m512i* acc, __m512i* mem) {
  for (int i = 0; i < MA * kNR; ++i) _mm512_store_si512(mem + i, acc[i]);
  asm volatile("" : : "r"(mem) : "memory");  // keep the compiler from forwarding the registers through
}

// The last <= 16 rows: 16 x kNR micro-tiles in their own function and loop (run once), for the same
// register-allocation reason: called straight-line, GCC again copied the accumulators every k step.
template <typename T>
PYOPT_TARGET_AVX512VNNI __attribute__((noinline)) void tile16(const uint8_t* packed, int64_t rows, int64_t Kg,
                                                              const int8_t* w, int64_t ldw, const int32_t* comp,
                                                              const float* sx, const float* sw, const float* bias,
                                                              int64_t cols, T* out, int64_t ldo) {
  alignas(64) __m512i mem[kNR];
  for (int64_t r = 0; r < rows; r += 16) {
    __m512i acc[kNR];
    tile<1>(packed + r * Kg * 4, Kg, w, ldw, acc);
    spill<1>(acc, mem);
    store_tile<T, 1>(mem, comp, sx + r, sw, bias, std::min<int64_t>(16, rows - r), cols, out + r * ldo, ldo);
  }
}

// All rows of a packed block (mrows) x one block of kNR weight rows: 32-row micro-tiles, a 16-row one for a
// remainder of <= 16 rows.
template <typename T>
PYOPT_TARGET_AVX512VNNI __attribute__((noinline)) void column_block(
    const uint8_t* packed, int64_t mrows, int64_t Kg, const int8_t* w, int64_t ldw, const int32_t* comp,
    const float* sx, const float* sw, const float* bias, int64_t cols, T* out, int64_t ldo) {
  alignas(64) __m512i mem[2 * kNR];
  int64_t m0 = 0;
  for (; m0 + 16 < mrows; m0 += kMR) {
    __m512i acc[2 * kNR];
    tile<2>(packed + (m0 / 16) * Kg * 64, Kg, w, ldw, acc);
    spill<2>(acc, mem);
    store_tile<T, 2>(mem, comp, sx + m0, sw, bias, std::min(kMR, mrows - m0), cols, out + m0 * ldo, ldo);
  }
  if (m0 < mrows)
    tile16<T>(packed + (m0 / 16) * Kg * 64, mrows - m0, Kg, w, ldw, comp, sx + m0, sw, bias, cols,
              out + m0 * ldo, ldo);
}

// The last <= 16 rows against two weight blocks (see tile16 for why this is its own function and loop).
template <typename T>
PYOPT_TARGET_AVX512VNNI __attribute__((noinline)) void tile16_pair(
    const uint8_t* packed, int64_t rows, int64_t Kg, const int8_t* w0, const int8_t* w1, int64_t ldw,
    const int32_t* comp, const float* sx, const float* sw, const float* bias, T* out, int64_t ldo, bool stream) {
  alignas(64) __m512i mem[2][kNR];
  for (int64_t r = 0; r < rows; r += 16) {
    __m512i acc[kNR];
    tile<1>(packed + r * Kg * 4, Kg, w0, ldw, acc);
    spill<1>(acc, mem[0]);
    tile<1>(packed + r * Kg * 4, Kg, w1, ldw, acc);
    spill<1>(acc, mem[1]);
    store_tile16<T, 1>(mem[0], mem[1], comp, sx + r, sw, bias, std::min<int64_t>(16, rows - r), out + r * ldo, ldo,
                       stream);
  }
}

// column_block for two full weight blocks (16 columns, w1 = w0 + 8 rows): per 32-row tile, both blocks'
// accumulators, then one 16-column epilogue (store_tile16). The second pass finds the tile's rows in L1.
template <typename T>
PYOPT_TARGET_AVX512VNNI __attribute__((noinline)) void column_block_pair(
    const uint8_t* packed, int64_t mrows, int64_t Kg, const int8_t* w0, const int8_t* w1, int64_t ldw,
    const int32_t* comp, const float* sx, const float* sw, const float* bias, T* out, int64_t ldo, bool stream) {
  alignas(64) __m512i mem[2][2 * kNR];
  int64_t m0 = 0;
  for (; m0 + 16 < mrows; m0 += kMR) {
    const uint8_t* ap = packed + (m0 / 16) * Kg * 64;
    __m512i acc[2 * kNR];
    tile<2>(ap, Kg, w0, ldw, acc);
    spill<2>(acc, mem[0]);
    tile<2>(ap, Kg, w1, ldw, acc);
    spill<2>(acc, mem[1]);
    store_tile16<T, 2>(mem[0], mem[1], comp, sx + m0, sw, bias, std::min(kMR, mrows - m0), out + m0 * ldo, ldo,
                       stream);
  }
  if (m0 < mrows)
    tile16_pair<T>(packed + (m0 / 16) * Kg * 64, mrows - m0, Kg, w0, w1, ldw, comp, sx + m0, sw, bias,
                   out + m0 * ldo, ldo, stream);
}

struct Problem {
  int64_t M, N, K, Kg;
  RowFill fill;
  const int8_t* w;
  int64_t ldw;
  const float* sw;
  const float* bias;
  int64_t ldo;
  const int32_t* comp;  // 128 * sum_k w[n, k], per column
};

// Rows [m0, m0 + rows) of the activations -> packed 16-row groups at dst (Kg * 64 bytes each) and their scales
// (sx[0 .. ceil16(rows)); rows past the end get scale 0). tmp: 16 x Kp bytes of scratch.
PYOPT_TARGET_AVX512VNNI void pack_rows(const Problem& p, int64_t m0, int64_t rows, int8_t* tmp, uint8_t* dst,
                                       float* sx) {
  const int64_t K = p.K, Kg = p.Kg, Kp = 4 * Kg;
  for (int64_t r0 = 0; r0 < rows; r0 += 16) {
    const int64_t nr = std::min<int64_t>(16, rows - r0);
    p.fill(m0 + r0, nr, tmp, Kp, sx + r0);
    for (int64_t r = 0; r < 16; ++r) {
      if (r < nr) {
        std::memset(tmp + r * Kp + K, 0x80, Kp - K);  // pad bytes: -128, u8 0 once packed
      } else {  // rows past M: zero, with scale 0 (their results are never stored)
        std::memset(tmp + r * Kp, 0, Kp);
        sx[r0 + r] = 0.0f;
      }
    }
    pack16(tmp, Kp, Kg, dst + (r0 / 16) * Kg * 64);
  }
}

// Packed rows (mrows of them, scales sx) x columns [n_lo, n_hi) -> out rows [m_lo, m_lo + mrows).
// wtail: kNR x Kp bytes of scratch.
template <typename T>
PYOPT_TARGET_AVX512VNNI void run_item(const Problem& p, T* out, int64_t m_lo, int64_t mrows, const uint8_t* packed,
                                      const float* sx, int64_t n_lo, int64_t n_hi, int8_t* wtail) {
  const int64_t K = p.K, Kg = p.Kg, Kp = 4 * Kg;
  for (int64_t n0 = n_lo; n0 < n_hi;) {
    // Two whole blocks of kNR columns, neither holding the tensor's last row when K % 4 != 0: the paired path,
    // whose streamed 64-byte rows measured 2-3% faster (single thread; M=1024 K=N=4096 and the conv bench).
    if (n0 + 2 * kNR <= n_hi && (Kp == K || n0 + 2 * kNR < p.N)) {
      T* o = out + m_lo * p.ldo + n0;
      const bool stream = std::is_same_v<T, float> && p.ldo % 16 == 0 && reinterpret_cast<uintptr_t>(o) % 64 == 0;
      const int8_t* w = p.w + n0 * p.ldw;
      float bias[2 * kNR];
      for (int64_t j = 0; j < 2 * kNR; ++j) bias[j] = p.bias ? p.bias[n0 + j] : 0.0f;
      column_block_pair<T>(packed, mrows, Kg, w, w + kNR * p.ldw, p.ldw, p.comp + n0, sx, p.sw + n0,
                           p.bias ? bias : nullptr, o, p.ldo, stream);
      n0 += 2 * kNR;
      continue;
    }
    const int64_t nc = std::min<int64_t>(kNR, p.N - n0);
    const int8_t* w = p.w + n0 * p.ldw;
    int64_t ldw = p.ldw;
    if (nc < kNR || (Kp != K && n0 + kNR >= p.N)) {
      // last columns: a zero-padded copy (row stride Kp), so the tile reads kNR whole rows, in bounds
      std::memset(wtail, 0, kNR * Kp);
      for (int64_t j = 0; j < nc; ++j) std::memcpy(wtail + j * Kp, w + j * p.ldw, K);
      w = wtail, ldw = Kp;
    }
    int32_t comp[kNR];
    float sw[kNR], bias[kNR];
    for (int64_t j = 0; j < kNR; ++j) {
      comp[j] = j < nc ? p.comp[n0 + j] : 0;
      sw[j] = j < nc ? p.sw[n0 + j] : 0.0f;
      bias[j] = j < nc && p.bias ? p.bias[n0 + j] : 0.0f;
    }
    column_block<T>(packed, mrows, Kg, w, ldw, comp, sx, sw, p.bias ? bias : nullptr, nc, out + m_lo * p.ldo + n0,
                    p.ldo);
    n0 += kNR;
  }
  _mm_sfence();  // order this thread's streaming stores before the caller reads the output
}
#endif  // PYOPT_X86

}  // namespace

template <typename T>
void gemm_dequant(int64_t M, int64_t N, int64_t K, RowFill fill, const int8_t* w, int64_t ldw,
                               const float* sw, const float* bias, T* out, int64_t ldo) {
#if PYOPT_X86
  if (M <= 0 || N <= 0) return;
  // The column corrections, once per call: per item they re-read the weight block from memory in a latency-bound
  // loop ahead of its tiles (measured ~8% of the time at M=1024, K=N=4096); here it is one sequential pass.
  std::vector<int32_t> comp(N);
  at::parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
    column_corrections(w, ldw, K, n0, n1, comp.data());
  });
  const Problem p{M, N, K, (K + 3) / 4, fill, w, ldw, sw, bias, ldo, comp.data()};
  const int64_t Kp = 4 * p.Kg;
  // Work items: row blocks of MC x column ranges, ~4 per thread. Many row blocks (large M): each item covers all
  // columns and quantises + packs its own rows into a per-thread buffer right before use. Few (small M): the
  // columns are split too, and all rows are packed once up front into a shared buffer.
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t mc = rows_per_item(Kp);
  const int64_t nm = (M + mc - 1) / mc;
  const int64_t nblocks = (N + kNR - 1) / kNR;
  const int64_t nn = std::min(nblocks, nm >= 4 * threads ? int64_t(1) : (4 * threads + nm - 1) / nm);
  if (nn == 1) {
    // Row blocks are dealt out statically (thread t owns blocks [t * nm / T, (t + 1) * nm / T) and packs each
    // once), but their columns are claimed in chunks of kChunk through one counter per block, so a thread that
    // finishes early takes the unclaimed chunks of the others' blocks, last block first, packing that block for
    // itself. On the 2-vCPU VMs one briefly stalled core otherwise held the other at the closing barrier (the
    // main thread waited there ~2% of the time at M=1024, K=N=4096; more on noisy runs).
    constexpr int64_t kChunk = 16 * kNR;  // columns per claim: 8 column pairs (a multiple of 16: paired path)
    const int64_t nchunks = (N + kChunk - 1) / kChunk;
    const int64_t workers = std::min(threads, nm * nchunks);  // N <= 8 comes here whatever M: no idle threads
    std::unique_ptr<std::atomic<int64_t>[]> claimed(new std::atomic<int64_t>[nm]);
    for (int64_t b = 0; b < nm; ++b) claimed[b].store(0, std::memory_order_relaxed);
    at::parallel_for(0, workers, 1, [&](int64_t t0, int64_t t1) {
      std::unique_ptr<int8_t[]> tmp(new int8_t[(16 + kNR) * Kp]);
      std::unique_ptr<uint8_t[]> packed(new uint8_t[mc * Kp]);
      std::unique_ptr<float[]> sx(new float[mc + kMR]);
      int64_t packed_block = -1;
      auto drain = [&](int64_t b) {  // claim and run chunks of row block b until none is left
        const int64_t m0 = b * mc, rows = std::min(M - m0, mc);
        for (int64_t c; (c = claimed[b].fetch_add(1, std::memory_order_relaxed)) < nchunks;) {
          if (packed_block != b) pack_rows(p, m0, rows, tmp.get(), packed.get(), sx.get()), packed_block = b;
          run_item<T>(p, out, m0, rows, packed.get(), sx.get(), c * kChunk, std::min(N, (c + 1) * kChunk),
                      tmp.get() + 16 * Kp);
        }
      };
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t own_lo = t * nm / workers, own_hi = (t + 1) * nm / workers;
        for (int64_t b = own_lo; b < own_hi; ++b) drain(b);
        for (int64_t b = nm - 1; b >= 0; --b)
          if (b < own_lo || b >= own_hi) drain(b);
      }
    });
    return;
  }
  // column ranges of an even number of blocks: each starts on a 16-column boundary (the paired path, aligned rows)
  const int64_t ncols = ((nblocks + nn - 1) / nn + 1) / 2 * 2 * kNR;
  const int64_t items = nm * ((N + ncols - 1) / ncols);
  const int64_t groups = (M + 15) / 16;
  std::unique_ptr<uint8_t[]> packed(new uint8_t[groups * p.Kg * 64]);
  std::unique_ptr<float[]> sx(new float[groups * 16 + kMR]);
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    std::unique_ptr<int8_t[]> tmp(new int8_t[16 * Kp]);
    pack_rows(p, g0 * 16, std::min(M, g1 * 16) - g0 * 16, tmp.get(), packed.get() + g0 * p.Kg * 64, sx.get() + g0 * 16);
  });
  at::parallel_for(0, items, 1, [&](int64_t i0, int64_t i1) {
    std::unique_ptr<int8_t[]> wtail(new int8_t[kNR * Kp]);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t m0 = (i % nm) * mc, n0 = (i / nm) * ncols;
      run_item<T>(p, out, m0, std::min(M - m0, mc), packed.get() + m0 / 16 * p.Kg * 64, sx.get() + m0, n0,
                  std::min(N, n0 + ncols), wtail.get());
    }
  });
#else
  TORCH_CHECK(false, "int8::avx512vnni::gemm_dequant needs x86-64 with AVX512-VNNI");
#endif
}

template void gemm_dequant<float>(int64_t, int64_t, int64_t, RowFill, const int8_t*, int64_t, const float*,
                                  const float*, float*, int64_t);
template void gemm_dequant<c10::BFloat16>(int64_t, int64_t, int64_t, RowFill, const int8_t*, int64_t, const float*,
                                          const float*, c10::BFloat16*, int64_t);
template void gemm_dequant<c10::Half>(int64_t, int64_t, int64_t, RowFill, const int8_t*, int64_t, const float*,
                                      const float*, c10::Half*, int64_t);

}  // namespace avx512vnni

// ---------------------------------------------------------------------------------------------------------
// K > kMaxExactK: int32 sums could wrap (127 * 128 * K > 2^31 - 1), so K is split into blocks of kKBlock whose
// int32 partial sums are exact, added up in int64; the epilogue converts the exact int64 sum to float32 through
// double (exact below 2^53, then one rounding to nearest even: the reference's float64 acc .float()). This
// file is compiled for baseline x86-64 (no fma), so the scalar epilogue keeps the reference's two roundings.
// Extra memory: the int8 activations (M x K) and M x N int64 + int32 sums; a shape this rare needs no speed.
// ---------------------------------------------------------------------------------------------------------
namespace {

constexpr int64_t kKBlock = 1 << 17;
static_assert(kKBlock <= kMaxExactK, "a K block's int32 sums must be exact");

namespace scalar {
// acc[m, n] = sum_k q[m, k] * w[n, k] over K <= kKBlock (int32, no overflow): the tiers without AVX2.
void gemm_int32(int64_t M, int64_t N, int64_t K, const int8_t* q, int64_t ldq, const int8_t* w,
                       int64_t ldw, int32_t* acc) {
  at::parallel_for(0, M, 1, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t n = 0; n < N; ++n) {
        int32_t s = 0;
        for (int64_t k = 0; k < K; ++k) s += int32_t(q[m * ldq + k]) * int32_t(w[n * ldw + k]);
        acc[m * N + n] = s;
      }
  });
}
}  // namespace scalar

template <typename T>
void gemm_dequant_ksplit(Isa isa, int64_t M, int64_t N, int64_t K, RowFill fill, const int8_t* w, int64_t ldw,
                         const float* sw, const float* bias, T* out, int64_t ldo, const Tuning& t) {
  std::vector<int8_t> q(M * K);
  std::vector<float> sx(M);
  at::parallel_for(0, M, 1, [&](int64_t m0, int64_t m1) { fill(m0, m1 - m0, q.data() + m0 * K, K, sx.data() + m0); });
  std::vector<int64_t> acc(M * N, 0);
  std::vector<int32_t> part(M * N);
  for (int64_t k0 = 0; k0 < K; k0 += kKBlock) {
    const int64_t kb = std::min(kKBlock, K - k0);
    if (available(isa)) {
      auto block = [&](int64_t m0, int64_t rows, int8_t* dst, int64_t ld, float* s) {
        for (int64_t r = 0; r < rows; ++r) {
          std::memcpy(dst + r * ld, q.data() + (m0 + r) * K + k0, kb);
          s[r] = sx[m0 + r];
        }
      };
      avx2::gemm_int32(M, N, kb, block, w + k0, ldw, part.data(), N, t);
    } else {
      scalar::gemm_int32(M, N, kb, q.data() + k0, K, w + k0, ldw, part.data());
    }
    for (int64_t i = 0; i < M * N; ++i) acc[i] += part[i];
  }
  at::parallel_for(0, M, 1, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t n = 0; n < N; ++n) {
        float v = static_cast<float>(static_cast<double>(acc[m * N + n])) * sx[m] * sw[n];
        if (bias) v += bias[n];
        out[m * ldo + n] = static_cast<T>(v);
      }
  });
}

std::mutex tuning_mutex;
Tuning tuning_current;

}  // namespace

Tuning tuning() {
  std::lock_guard<std::mutex> lock(tuning_mutex);
  return tuning_current;
}

void set_tuning(const Tuning& t) {
  TORCH_CHECK_VALUE(t.block_kib == 0 || (t.block_kib >= 8 && t.block_kib <= 65536),
                    "block_kib must be 0 (auto) or in [8, 65536], got ", t.block_kib);
  TORCH_CHECK_VALUE(t.dot_max_m >= 0 && t.dot_max_m <= 256, "dot_max_m must be in [0, 256], got ", t.dot_max_m);
  TORCH_CHECK_VALUE(t.chunk_panels >= 1 && t.chunk_panels <= 4096, "chunk_panels must be in [1, 4096], got ",
                    t.chunk_panels);
  TORCH_CHECK_VALUE(t.prefetch == 0 || t.prefetch == 1, "prefetch must be 0 or 1, got ", t.prefetch);
  std::lock_guard<std::mutex> lock(tuning_mutex);
  tuning_current = t;
}

template <typename T>
void gemm_dequant(Isa isa, int64_t M, int64_t N, int64_t K, RowFill fill, const int8_t* w, int64_t ldw,
                  const float* sw, const float* bias, T* out, int64_t ldo) {
  if (M <= 0 || N <= 0) return;
  if (isa >= Isa::Amx || amx::emulate_on_this_thread())  // any K (or the AMX kernel's test hook)
    return amx::gemm_dequant<T>(M, N, K, fill, w, ldw, sw, bias, out, ldo);
  const Tuning t = tuning();  // one copy per call
  if (K > kMaxExactK) return gemm_dequant_ksplit<T>(isa, M, N, K, fill, w, ldw, sw, bias, out, ldo, t);
  switch (isa) {
    case Isa::Avx512Vnni: return avx512vnni::gemm_dequant<T>(M, N, K, fill, w, ldw, sw, bias, out, ldo);
    case Isa::Avx512:
    case Isa::Avx2: return avx2::gemm_dequant<T>(M, N, K, fill, w, ldw, sw, bias, out, ldo, t);
    default: TORCH_CHECK(false, "int8::gemm_dequant: no native tier for this CPU ISA");
  }
}

template void gemm_dequant<float>(Isa, int64_t, int64_t, int64_t, RowFill, const int8_t*, int64_t, const float*,
                                  const float*, float*, int64_t);
template void gemm_dequant<c10::BFloat16>(Isa, int64_t, int64_t, int64_t, RowFill, const int8_t*, int64_t,
                                          const float*, const float*, c10::BFloat16*, int64_t);
template void gemm_dequant<c10::Half>(Isa, int64_t, int64_t, int64_t, RowFill, const int8_t*, int64_t,
                                      const float*, const float*, c10::Half*, int64_t);

}  // namespace pyopt::int8
