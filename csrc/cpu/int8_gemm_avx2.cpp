// Native AVX2 int8 GEMM + fused dequant epilogue (interface and contract: int8_gemm.h), for CPUs without
// AVX512-VNNI (Intel Haswell .. Comet Lake, Skylake-SP, AMD Zen 1-3); also the K-split path's block GEMM.
//
// Exactness. AVX2 has no int8 dot product into int32. vpmaddubsw (u8 x s8 -> int16 pair sums) saturates with
// the usual +128 shift of one operand (255 * 128 * 2 > 32767), so the main kernel sign-extends both operands
// to int16 and uses vpmaddwd (int16 x int16 -> int32 pair sums, exact for any int8 pair: |sum| <= 2 * 128^2)
// then vpaddd, wrapping like every tier (exact while the true sum fits in int32, see kMaxExactK).
// The small-M kernel does use vpmaddubsw, as |w| (u8, <= 128) times sign(w) * q (s8: q in [-127, 127] never
// overflows when negated): pair sums <= 2 * 128 * 127 = 32512 < 32767, no saturation; then vpmaddwd with ones.
//
// Throughput on Zen 3 (2 ymm vpmaddwd / vpmaddubsw per cycle, 4 vector pipes shared with vpaddd, vpsignb and
// the broadcasts; one core, operands in L1/L2): the fastest exact loop, vpmaddwd + vpaddd, runs at 27.2 int8
// MAC/cycle (bench/int8_peak.cpp: the "exact-int8 peak" of the bench; the vpsignb form 23-26), the 6 x 16 kernel
// below at 24.5-25 (per k-pair 6 broadcasts, 12 vpmaddwd, 12 vpaddd, 2 vpmovsxbw: 32 ops on 4 pipes), on its
// blocks in a GEMM-like loop too. Candidates measured and dropped (MAC/cycle): int16 4 x 24: 23.3; the vpsignb
// form with 5 x 16 / 4 x 16 tiles: 23.6 / 22.5; activations as vectors and weights broadcast from the plain rows
// (no packing): 22.4; dot products over k on plain rows: 21.7; activations pre-broadcast in memory: 21-23.
// In the whole op (one thread, process CPU time) M = 1024, K = N = 4096 ran at 60-65 GMAC/s, ~20-21 MAC/cycle:
// panel misses, packing, quantisation and the epilogue.
//
// Layouts (per call, nothing cached across calls):
//   B: the weight in panels of 16 columns, per k-pair p 32 bytes (column c's w[c, 2p], w[c, 2p + 1] at 2c), int8:
//      sign-extended in the kernel (vpmovsxbw), as fast as an int16 copy at half its size. One buffer per call
//      (the size of the weight); each panel is packed once, by the first thread that needs it (PackedWeight).
//   A: 6-row micro-panels, per k-pair p six int32 (row i's q[i, 2p], q[i, 2p + 1] as int16), packed per block
//      of rows right after `fill` wrote them, in a per-thread buffer that stays in L2 while the weight panels
//      stream past (the VNNI tier's scheme).
// Small M (<= 32 rows, K >= 32 M): no packing at all; each output is a dot product of a quantised row with a
// plain weight row, the weight read once per call (memory-bound GEMV). Measured crossover with the packed path
// (one thread, K = N = 4096): between M = 32 and 40; at K = 64 the packed path wins from M = 4.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>

#include "cpu/int8_gemm.h"

#if PYOPT_X86
#include <immintrin.h>
#include <unistd.h>
#endif

namespace pyopt::int8::avx2 {
namespace {

constexpr int64_t kMR = 6;       // rows per micro-tile (broadcast operand)
constexpr int64_t kNR = 16;      // columns per micro-tile / weight panel (2 ymm of int32)

inline int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

#if PYOPT_X86
// ---------------------------------------------------------------------------------------------------------
// Packing
// ---------------------------------------------------------------------------------------------------------
// One weight panel: rows w[0 .. ncols) (row stride ldw, ncols <= 16; missing columns are zero) -> np = Kpad / 2
// k-pairs of 32 bytes at dst (32-byte aligned). Per 64 k, each row's 64 bytes are first copied to a small buffer,
// then per 16 k rows r and r + 8 share a ymm and an 8 x 8 transpose of 16-bit elements (the k-pairs) in each
// 128-bit lane leaves pair p of columns 0..7 | 8..15 in one register. Nothing past a row's K bytes is read.
PYOPT_TARGET_AVX2 void pack_b_panel(const int8_t* w, int64_t ldw, int64_t ncols, int64_t K, int64_t Kpad,
                                    int8_t* dst) {
  alignas(32) int8_t buf[16][64];
  for (int64_t k0 = 0; k0 < Kpad; k0 += 64) {
    const int64_t kn = std::min<int64_t>(64, K - k0);  // valid bytes of each row in this block (may be <= 0)
    for (int64_t r = 0; r < 16; ++r) {
      if (r < ncols && kn == 64) {
        const __m256i* src = reinterpret_cast<const __m256i*>(w + r * ldw + k0);
        _mm256_store_si256(reinterpret_cast<__m256i*>(buf[r]), _mm256_loadu_si256(src));
        _mm256_store_si256(reinterpret_cast<__m256i*>(buf[r] + 32), _mm256_loadu_si256(src + 1));
      } else {
        std::memset(buf[r], 0, 64);
        if (r < ncols && kn > 0) std::memcpy(buf[r], w + r * ldw + k0, static_cast<size_t>(kn));
      }
    }
    const int64_t kend = std::min<int64_t>(64, Kpad - k0);
    for (int64_t q = 0; q < kend; q += 16) {
      __m256i y[8];
      for (int r = 0; r < 8; ++r)
        y[r] = _mm256_inserti128_si256(
            _mm256_castsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(buf[r] + q))),
            _mm_load_si128(reinterpret_cast<const __m128i*>(buf[r + 8] + q)), 1);
      const __m256i a0 = _mm256_unpacklo_epi16(y[0], y[1]), a1 = _mm256_unpackhi_epi16(y[0], y[1]);
      const __m256i a2 = _mm256_unpacklo_epi16(y[2], y[3]), a3 = _mm256_unpackhi_epi16(y[2], y[3]);
      const __m256i a4 = _mm256_unpacklo_epi16(y[4], y[5]), a5 = _mm256_unpackhi_epi16(y[4], y[5]);
      const __m256i a6 = _mm256_unpacklo_epi16(y[6], y[7]), a7 = _mm256_unpackhi_epi16(y[6], y[7]);
      const __m256i b0 = _mm256_unpacklo_epi32(a0, a2), b1 = _mm256_unpackhi_epi32(a0, a2);  // pairs 0,1 | 2,3
      const __m256i b2 = _mm256_unpacklo_epi32(a1, a3), b3 = _mm256_unpackhi_epi32(a1, a3);  // pairs 4,5 | 6,7
      const __m256i b4 = _mm256_unpacklo_epi32(a4, a6), b5 = _mm256_unpackhi_epi32(a4, a6);
      const __m256i b6 = _mm256_unpacklo_epi32(a5, a7), b7 = _mm256_unpackhi_epi32(a5, a7);
      const __m256i o8[8] = {_mm256_unpacklo_epi64(b0, b4), _mm256_unpackhi_epi64(b0, b4),
                             _mm256_unpacklo_epi64(b1, b5), _mm256_unpackhi_epi64(b1, b5),
                             _mm256_unpacklo_epi64(b2, b6), _mm256_unpackhi_epi64(b2, b6),
                             _mm256_unpacklo_epi64(b3, b7), _mm256_unpackhi_epi64(b3, b7)};
      __m256i* o = reinterpret_cast<__m256i*>(dst + (k0 + q) * 16);  // 8 pairs x 32 bytes
      for (int i = 0; i < 8; ++i) _mm256_store_si256(o + i, o8[i]);
    }
  }
}

// 6 int8 rows (row i at rows + i * ld, Kpad readable bytes, zero past K) -> np = Kpad / 2 groups of six int32
// (row i's k-pair as two int16) at dst. Per 16 k: sign-extend each row to 8 pairs, transpose 8 x 8 (two zero
// rows), store 32 bytes per pair at a 24-byte stride, in ascending order so each store's last 8 bytes are
// overwritten by the next (dst needs 8 bytes of slack past np * 24).
PYOPT_TARGET_AVX2 void pack_a_panel(const int8_t* rows, int64_t ld, int64_t Kpad, int32_t* dst) {
  const __m256i z = _mm256_setzero_si256();
  for (int64_t k = 0; k < Kpad; k += 16) {
    __m256i v[6];
    for (int i = 0; i < 6; ++i)
      v[i] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rows + i * ld + k)));
    const __m256i t0 = _mm256_unpacklo_epi32(v[0], v[1]), t1 = _mm256_unpackhi_epi32(v[0], v[1]);
    const __m256i t2 = _mm256_unpacklo_epi32(v[2], v[3]), t3 = _mm256_unpackhi_epi32(v[2], v[3]);
    const __m256i t4 = _mm256_unpacklo_epi32(v[4], v[5]), t5 = _mm256_unpackhi_epi32(v[4], v[5]);
    const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);  // pairs 0 | 4, 1 | 5
    const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);  // pairs 2 | 6, 3 | 7
    const __m256i u4 = _mm256_unpacklo_epi64(t4, z), u5 = _mm256_unpackhi_epi64(t4, z);
    const __m256i u6 = _mm256_unpacklo_epi64(t5, z), u7 = _mm256_unpackhi_epi64(t5, z);
    int32_t* o = dst + (k / 2) * kMR;
    const __m256i p[8] = {_mm256_permute2x128_si256(u0, u4, 0x20), _mm256_permute2x128_si256(u1, u5, 0x20),
                          _mm256_permute2x128_si256(u2, u6, 0x20), _mm256_permute2x128_si256(u3, u7, 0x20),
                          _mm256_permute2x128_si256(u0, u4, 0x31), _mm256_permute2x128_si256(u1, u5, 0x31),
                          _mm256_permute2x128_si256(u2, u6, 0x31), _mm256_permute2x128_si256(u3, u7, 0x31)};
    for (int j = 0; j < 8; ++j) _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + j * kMR), p[j]);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Micro-kernels
// ---------------------------------------------------------------------------------------------------------
// c[i * 16 + j] = sum over np k-pairs of a (6-row panel) x b (16-column panel), i < 6, j < 16. The accumulators
// are named variables: as an array, GCC 12 kept them on the stack and ran this loop at 60 % speed. pf (if not
// null): one line prefetched into L2 every `every` k-pairs, from pf on: run_item spreads the next weight panel
// over the tiles of the current one, so it arrives from memory before its first tile (one thread, M = 1024,
// K = N = 4096: 6-11 % faster).
PYOPT_TARGET_AVX2 __attribute__((noinline)) void kernel_6x16(const int32_t* a, const int8_t* b, int64_t np,
                                                             int32_t* c, const int8_t* pf, int64_t every) {
  __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256i c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (int64_t p0 = 0; p0 < np; p0 += every) {
    if (pf) _mm_prefetch(reinterpret_cast<const char*>(pf), _MM_HINT_T1), pf += 64;
    const int64_t pe = std::min(np, p0 + every);
    for (int64_t p = p0; p < pe; ++p, a += kMR, b += 32) {
      const __m256i b0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b)));
      const __m256i b1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 16)));
      __m256i x;
#define PYOPT_ROW(i)                                                   \
  x = _mm256_set1_epi32(a[i]);                                         \
  c##i##0 = _mm256_add_epi32(c##i##0, _mm256_madd_epi16(x, b0)); \
  c##i##1 = _mm256_add_epi32(c##i##1, _mm256_madd_epi16(x, b1));
      PYOPT_ROW(0) PYOPT_ROW(1) PYOPT_ROW(2) PYOPT_ROW(3) PYOPT_ROW(4) PYOPT_ROW(5)
#undef PYOPT_ROW
    }
  }
  __m256i* o = reinterpret_cast<__m256i*>(c);
  _mm256_storeu_si256(o + 0, c00), _mm256_storeu_si256(o + 1, c01), _mm256_storeu_si256(o + 2, c10);
  _mm256_storeu_si256(o + 3, c11), _mm256_storeu_si256(o + 4, c20), _mm256_storeu_si256(o + 5, c21);
  _mm256_storeu_si256(o + 6, c30), _mm256_storeu_si256(o + 7, c31), _mm256_storeu_si256(o + 8, c40);
  _mm256_storeu_si256(o + 9, c41), _mm256_storeu_si256(o + 10, c50), _mm256_storeu_si256(o + 11, c51);
}

PYOPT_TARGET_AVX2 inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

// acc[i * 2 + j] += MR (<= 4) quantised rows of x (row stride ldx) . weight rows w0, w1 (NR <= 2 of them) over
// `steps` blocks of 32 k (x and the weights advance together; pf: prefetch the rows `pf` bytes below each weight
// row, 0 for none). Per 32 k: |w_j| once per weight vector, then per (row, column) vpsignb, vpmaddubsw,
// vpmaddwd, vpaddd (see the file comment for why the int16 pair sums cannot saturate). The accumulators are
// named variables loaded from and stored to acc around the loop: as an array, or reduced in the same function,
// GCC 12 stored some of them to the stack every step.
template <int MR, int NR>
PYOPT_TARGET_AVX2 __attribute__((noinline)) void dot_loop(const int8_t* x, int64_t ldx, const int8_t* w0,
                                                          const int8_t* w1, int64_t steps, int64_t pf,
                                                          __m256i* acc) {
  static_assert(MR >= 1 && MR <= 4 && NR >= 1 && NR <= 2, "dot tile");
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i a00 = acc[0], a01 = acc[1], a10 = acc[2], a11 = acc[3], a20 = acc[4], a21 = acc[5], a30 = acc[6],
          a31 = acc[7];
#define PYOPT_DOT(a, xv, ws, wa) \
  a = _mm256_add_epi32(a, _mm256_madd_epi16(_mm256_maddubs_epi16(wa, _mm256_sign_epi8(xv, ws)), ones))
  for (int64_t t = 0; t < steps; ++t, x += 32, w0 += 32, w1 += 32) {
    // The next NR weight rows, one line per row every 64 k: each row is its own 4 KiB page at K = 4096, where
    // the hardware prefetchers restart, so without this every row began with a run of DRAM misses (M = 1 read
    // the weight at ~6 GB/s). A prefetch past the tensor's end cannot fault.
    if (pf && t % 2 == 0) {
      _mm_prefetch(reinterpret_cast<const char*>(w0 + pf), _MM_HINT_T0);
      if constexpr (NR > 1) _mm_prefetch(reinterpret_cast<const char*>(w1 + pf), _MM_HINT_T0);
    }
    const __m256i s0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w0));
    const __m256i u0 = _mm256_abs_epi8(s0);
    __m256i s1 = s0, u1 = u0;
    if constexpr (NR > 1) {
      s1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w1));
      u1 = _mm256_abs_epi8(s1);
    }
    __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
    PYOPT_DOT(a00, xv, s0, u0);
    if constexpr (NR > 1) PYOPT_DOT(a01, xv, s1, u1);
    if constexpr (MR > 1) {
      xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + ldx));
      PYOPT_DOT(a10, xv, s0, u0);
      if constexpr (NR > 1) PYOPT_DOT(a11, xv, s1, u1);
    }
    if constexpr (MR > 2) {
      xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 2 * ldx));
      PYOPT_DOT(a20, xv, s0, u0);
      if constexpr (NR > 1) PYOPT_DOT(a21, xv, s1, u1);
    }
    if constexpr (MR > 3) {
      xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 3 * ldx));
      PYOPT_DOT(a30, xv, s0, u0);
      if constexpr (NR > 1) PYOPT_DOT(a31, xv, s1, u1);
    }
  }
#undef PYOPT_DOT
  acc[0] = a00, acc[1] = a01, acc[2] = a10, acc[3] = a11, acc[4] = a20, acc[5] = a21, acc[6] = a30, acc[7] = a31;
}

// MR quantised rows (x, row stride ldx, zero past K up to a multiple of 32) . NR plain weight rows (w, stride ldw,
// exactly K bytes each: the last partial 32 bytes are copied out, so nothing past a row is read) ->
// c[i * 16 + j].
template <int MR, int NR>
PYOPT_TARGET_AVX2 void dot_kernel(const int8_t* x, int64_t ldx, const int8_t* w, int64_t ldw, int64_t K,
                                  int32_t* c) {
  __m256i acc[8];
  for (int i = 0; i < 8; ++i) acc[i] = _mm256_setzero_si256();
  const int64_t K32 = K / 32 * 32;
  dot_loop<MR, NR>(x, ldx, w, w + ldw, K32 / 32, NR * ldw, acc);
  if (K32 < K) {
    alignas(32) int8_t tail[2][32] = {};
    for (int j = 0; j < NR; ++j) std::memcpy(tail[j], w + j * ldw + K32, static_cast<size_t>(K - K32));
    dot_loop<MR, NR>(x + K32, ldx, tail[0], tail[1], 1, 0, acc);
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) c[i * kNR + j] = hsum_epi32(acc[2 * i + j]);
}

// ---------------------------------------------------------------------------------------------------------
// Epilogues: called per micro-tile with c = rows x cols int32 (row stride 16) of output rows m0.., columns n0..
// ---------------------------------------------------------------------------------------------------------
PYOPT_TARGET_AVX2 inline __m256i lane_mask(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// float -> bfloat16 / float16 with c10's rounding (nearest even; bfloat16 NaN -> 0x7FC0 as c10::BFloat16).
PYOPT_TARGET_AVX2 inline __m128i to_half_bits(__m256 v, c10::BFloat16*) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
  r = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
  return _mm256_castsi256_si128(r);
}
PYOPT_TARGET_AVX2 inline __m128i to_half_bits(__m256 v, c10::Half*) {
  return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

// out = T((float(acc) * sx[m]) * sw[n] + bias[n]): the reference's float32 operations in its order. The asm
// barriers keep GCC from contracting a product and the bias add into an fma (one rounding instead of two).
// `stream` (float32, 64-byte aligned rows): whole 16-column tiles go out with non-temporal stores, so the output
// (written once, usually larger than L2) costs no read-for-ownership of its lines.
template <typename T>
struct Dequant {
  T* out;
  int64_t ldo;
  const float* sw;
  const float* bias;
  bool stream;
  PYOPT_TARGET_AVX2 void operator()(const int32_t* c, const float* sx, int64_t m0, int64_t rows, int64_t n0,
                                    int64_t cols) const {
    const bool nt = stream && cols == kNR;
    for (int64_t j = 0; j < cols; j += 8) {
      const int64_t n = std::min<int64_t>(8, cols - j);
      const __m256i mask = lane_mask(n);
      const __m256 vsw = _mm256_maskload_ps(sw + n0 + j, mask);
      const __m256 vb = bias ? _mm256_maskload_ps(bias + n0 + j, mask) : _mm256_setzero_ps();
      for (int64_t i = 0; i < rows; ++i) {
        __m256 v = _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + i * kNR + j)));
        v = _mm256_mul_ps(v, _mm256_set1_ps(sx[i]));
        asm("" : "+x"(v));
        v = _mm256_mul_ps(v, vsw);
        asm("" : "+x"(v));
        if (bias) v = _mm256_add_ps(v, vb);
        T* o = out + (m0 + i) * ldo + n0 + j;
        if constexpr (std::is_same_v<T, float>) {
          if (nt) _mm256_stream_ps(o, v);
          else if (n == 8) _mm256_storeu_ps(o, v);
          else _mm256_maskstore_ps(o, mask, v);
        } else {
          const __m128i h = to_half_bits(v, static_cast<T*>(nullptr));
          if (n == 8) {
            _mm_storeu_si128(reinterpret_cast<__m128i*>(o), h);
          } else {
            alignas(16) uint16_t tmp[8];
            _mm_store_si128(reinterpret_cast<__m128i*>(tmp), h);
            std::memcpy(o, tmp, static_cast<size_t>(n) * sizeof(T));
          }
        }
      }
    }
  }
};

// The raw int32 sums (the K-split path adds them up in int64).
struct RawInt32 {
  int32_t* out;
  int64_t ldo;
  void operator()(const int32_t* c, const float*, int64_t m0, int64_t rows, int64_t n0, int64_t cols) const {
    for (int64_t i = 0; i < rows; ++i)
      std::memcpy(out + (m0 + i) * ldo + n0, c + i * kNR, static_cast<size_t>(cols) * sizeof(int32_t));
  }
};

// ---------------------------------------------------------------------------------------------------------
// Small M: dot products on the plain weight, parallel over column blocks.
// ---------------------------------------------------------------------------------------------------------
// Columns [n, n + NR) against every row, 4 rows at a time: the NR weight rows come from memory once and from L1
// for the other row groups (looping over columns inside a row group instead read them from memory or L2 once per
// group, and at M = 8 ran at ~half the speed).
template <int NR, class Out>
PYOPT_TARGET_AVX2 void dot_columns(const int8_t* x, int64_t ldx, const float* sx, int64_t M, const int8_t* w,
                                   int64_t ldw, int64_t K, int64_t n, const Out& out) {
  alignas(32) int32_t c[4 * kNR];
  for (int64_t m = 0; m < M; m += 4) {
    const int8_t* xm = x + m * ldx;
    const int64_t rows = std::min<int64_t>(4, M - m);
    switch (rows) {
      case 1: dot_kernel<1, NR>(xm, ldx, w + n * ldw, ldw, K, c); break;
      case 2: dot_kernel<2, NR>(xm, ldx, w + n * ldw, ldw, K, c); break;
      case 3: dot_kernel<3, NR>(xm, ldx, w + n * ldw, ldw, K, c); break;
      default: dot_kernel<4, NR>(xm, ldx, w + n * ldw, ldw, K, c); break;
    }
    out(c, sx + m, m, rows, n, NR);
  }
}

template <class Out>
void gemm_small_m(int64_t M, int64_t N, int64_t K, RowFill fill, const int8_t* w, int64_t ldw, const Out& out) {
  const int64_t ldx = round_up(std::max<int64_t>(K, 1), 32);
  std::unique_ptr<int8_t[]> x(new int8_t[M * ldx]);
  std::unique_ptr<float[]> sx(new float[M]);
  // <= 32 rows: quantised by the calling thread (a parallel region costs more than that on a busy machine)
  fill(0, M, x.get(), ldx, sx.get());
  for (int64_t m = 0; m < M; ++m) std::memset(x.get() + m * ldx + K, 0, static_cast<size_t>(ldx - K));
  // Column pairs (4 rows x 2 columns: 8 accumulators + 2 |w| + 3 temporaries of the 16 ymm), claimed by the
  // threads in chunks of 32 pairs (256 KiB of weight at K = 4096) through one counter, so a thread that was
  // descheduled for a while on a busy machine does not leave the other waiting for its fixed share.
  constexpr int64_t kPairs = 32;
  const int64_t pairs = (N + 1) / 2, chunks = (pairs + kPairs - 1) / kPairs;
  const int64_t workers = std::min<int64_t>(std::max<int64_t>(1, at::get_num_threads()), chunks);
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < chunks;)
      for (int64_t b = c * kPairs; b < std::min(pairs, (c + 1) * kPairs); ++b) {
        if (2 * b + 2 <= N) dot_columns<2>(x.get(), ldx, sx.get(), M, w, ldw, K, 2 * b, out);
        else dot_columns<1>(x.get(), ldx, sx.get(), M, w, ldw, K, 2 * b, out);
      }
  });
}

// ---------------------------------------------------------------------------------------------------------
// Packed path
// ---------------------------------------------------------------------------------------------------------
// The weight, packed per call into 16-column panels, each on first use by whichever thread needs it first, so
// it is in that thread's L2 for its first tiles and no thread waits at a barrier for a separate packing pass (on
// a busy 2-vCPU VM, one descheduled thread held the other there for a scheduler tick).
struct PackedWeight {
  const int8_t* w;
  int64_t ldw, N, K, Kpad, np;  // np = Kpad / 2 k-pairs, np * 32 bytes per panel
  int8_t* panels;
  std::atomic<int>* state;  // per panel: 0 not packed, 1 being packed, 2 ready

  bool ready(int64_t j) const { return state[j].load(std::memory_order_acquire) == 2; }
  const int8_t* panel(int64_t j) const { return panels + j * np * 32; }
  // Panel j, packed by this thread if nobody has started it (waits while another thread packs it: ~10 us).
  PYOPT_TARGET_AVX2 const int8_t* get(int64_t j) const {
    int st = state[j].load(std::memory_order_acquire);
    if (st != 2 && st == 0 && state[j].compare_exchange_strong(st, 1, std::memory_order_acq_rel)) {
      pack_b_panel(w + j * kNR * ldw, ldw, std::min(kNR, N - j * kNR), K, Kpad, panels + j * np * 32);
      state[j].store(2, std::memory_order_release);
    }
    while (!ready(j)) _mm_pause();
    return panel(j);
  }
};

struct Problem {
  int64_t M, N, K, Kpad, np;
  RowFill fill;
  const PackedWeight* b;
  int64_t apanel;  // int32 per packed 6-row panel: np * 6 + 8 (slack for pack_a_panel's stores)
  bool prefetch;   // Tuning::prefetch
};

// Rows per work item: a multiple of 6 whose packed block (rows * Kpad * 2 bytes) fills about half the L2 (Zen 3:
// 256 KiB), next to the weight panel in use and the next one being prefetched (16 * Kpad bytes each). At
// M = 1024, K = N = 4096, one thread: 160, 256, 384 and 448 KiB blocks all ran at 63-65 GMAC/s.
// Tuning::block_kib overrides the budget.
inline int64_t rows_per_item(int64_t Kpad, const Tuning& t) {
  static const int64_t l2_half = [] {
    const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);  // per core; 0 or -1 where the OS does not say
    return l2 >= (128 << 10) ? static_cast<int64_t>(l2) / 2 : int64_t(256) << 10;
  }();
  const int64_t budget = t.block_kib > 0 ? t.block_kib << 10 : l2_half;
  return std::clamp<int64_t>(budget / (2 * std::max<int64_t>(Kpad, 1)) / kMR * kMR, kMR, 192);
}

// Rows [m0, m0 + rows) -> packed 6-row panels at ap, scales at sx (rows past the end: zero, scale 0).
// tmp: 6 x Kpad bytes.
PYOPT_TARGET_AVX2 void pack_rows(const Problem& p, int64_t m0, int64_t rows, int8_t* tmp, int32_t* ap, float* sx) {
  for (int64_t r0 = 0; r0 < rows; r0 += kMR) {
    const int64_t nr = std::min(kMR, rows - r0);
    p.fill(m0 + r0, nr, tmp, p.Kpad, sx + r0);
    for (int64_t r = 0; r < kMR; ++r) {
      if (r < nr) {
        std::memset(tmp + r * p.Kpad + p.K, 0, static_cast<size_t>(p.Kpad - p.K));
      } else {
        std::memset(tmp + r * p.Kpad, 0, static_cast<size_t>(p.Kpad));
        sx[r0 + r] = 0.0f;
      }
    }
    pack_a_panel(tmp, p.Kpad, p.Kpad, ap + (r0 / kMR) * p.apanel);
  }
}

// Packed rows (mrows, scales sx) x columns [n_lo, n_hi) (n_lo a multiple of 16) -> out rows m_lo...: per weight
// panel, every 6-row panel of the block (the weight panel stays in L1/L2 across them).
template <class Out>
PYOPT_TARGET_AVX2 void run_item(const Problem& p, const Out& out, int64_t m_lo, int64_t mrows, const int32_t* ap,
                                const float* sx, int64_t n_lo, int64_t n_hi) {
  alignas(32) int32_t c[kMR * kNR];
  const int64_t tiles = (mrows + kMR - 1) / kMR;
  const int64_t every = std::max<int64_t>(1, 2 * tiles);
  for (int64_t n0 = n_lo; n0 < n_hi; n0 += kNR) {
    const int64_t j = n0 / kNR;
    const int8_t* bpanel = p.b->get(j);
    // the next panel, if packed already (in memory or another core's cache): prefetched into L2 over these tiles
    const int8_t* next = p.prefetch && n0 + kNR < p.N && p.b->ready(j + 1) ? p.b->panel(j + 1) : nullptr;
    const int64_t cols = std::min(kNR, p.N - n0);
    for (int64_t r = 0; r < mrows; r += kMR) {
      const int8_t* pf = next ? next + (r / kMR) * p.np * 32 / tiles : nullptr;  // this tile's slice of it
      kernel_6x16(ap + (r / kMR) * p.apanel, bpanel, p.np, c, pf, every);
      out(c, sx + r, m_lo + r, std::min(kMR, mrows - r), n0, cols);
    }
  }
  _mm_sfence();  // order this thread's streaming stores before the caller reads the output
}

template <class Out>
void gemm_packed(int64_t M, int64_t N, int64_t K, RowFill fill, const int8_t* w, int64_t ldw, const Out& out,
                 const Tuning& t) {
  const int64_t Kpad = round_up(std::max<int64_t>(K, 1), 16), np = Kpad / 2;
  const int64_t npanels = (N + kNR - 1) / kNR;
  // 32-byte aligned panels (np * 32 bytes each, a multiple of 32)
  std::unique_ptr<int8_t[]> bp_mem(new int8_t[npanels * np * 32 + 32]);
  std::unique_ptr<std::atomic<int>[]> state(new std::atomic<int>[npanels]);
  for (int64_t j = 0; j < npanels; ++j) state[j].store(0, std::memory_order_relaxed);
  const PackedWeight b{w, ldw, N, K, Kpad, np,
                       bp_mem.get() + (32 - reinterpret_cast<uintptr_t>(bp_mem.get()) % 32) % 32, state.get()};
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t mc = rows_per_item(Kpad, t);
  const int64_t nm = (M + mc - 1) / mc;
  const Problem p{M, N, K, Kpad, np, fill, &b, np * kMR + 8, t.prefetch != 0};
  // Many row blocks and packed rows beyond 4 MiB (M > 512 at K = 4096): items of one row block each.
  if (nm >= 4 * threads && M * Kpad * 2 > (int64_t(4) << 20)) {
    // Many row blocks: dealt out statically (each packed once by its owner), their columns claimed in chunks
    // through one counter per block, so a thread that finishes early takes the unclaimed chunks of the others'
    // blocks, last block first (the VNNI tier's scheme: one briefly stalled core of a 2-vCPU VM otherwise holds
    // the other at the closing barrier).
    const int64_t kChunk = t.chunk_panels * kNR;
    const int64_t nchunks = (N + kChunk - 1) / kChunk;
    const int64_t workers = std::min(threads, nm * nchunks);
    std::unique_ptr<std::atomic<int64_t>[]> claimed(new std::atomic<int64_t>[nm]);
    for (int64_t b = 0; b < nm; ++b) claimed[b].store(0, std::memory_order_relaxed);
    at::parallel_for(0, workers, 1, [&](int64_t t0, int64_t t1) {
      std::unique_ptr<int8_t[]> tmp(new int8_t[kMR * Kpad]);
      std::unique_ptr<int32_t[]> ap(new int32_t[(mc / kMR) * p.apanel]);
      std::unique_ptr<float[]> sx(new float[mc]);
      int64_t packed_block = -1;
      auto drain = [&](int64_t b) {
        const int64_t m0 = b * mc, rows = std::min(M - m0, mc);
        for (int64_t c; (c = claimed[b].fetch_add(1, std::memory_order_relaxed)) < nchunks;) {
          if (packed_block != b) pack_rows(p, m0, rows, tmp.get(), ap.get(), sx.get()), packed_block = b;
          run_item(p, out, m0, rows, ap.get(), sx.get(), c * kChunk, std::min(N, (c + 1) * kChunk));
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
  // Otherwise every row is packed once into a shared buffer, then items of all rows x a range of columns, ~4
  // per thread: each weight panel is read once and used by every row while in L2, the packed rows come from L3
  // (one thread, K = N = 4096: M = 64 in 19 ms against 30 ms for items of one row block each, which read every
  // panel once per block; M = 200-512 within noise, 0-8 % faster).
  const int64_t groups = (M + kMR - 1) / kMR;
  std::unique_ptr<int32_t[]> ap(new int32_t[groups * p.apanel]);
  std::unique_ptr<float[]> sx(new float[groups * kMR]);
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    std::unique_ptr<int8_t[]> tmp(new int8_t[kMR * Kpad]);
    pack_rows(p, g0 * kMR, std::min(M, g1 * kMR) - g0 * kMR, tmp.get(), ap.get() + g0 * p.apanel, sx.get() + g0 * kMR);
  });
  const int64_t items = std::min(npanels, 4 * threads);
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min(threads, items), 1, [&](int64_t, int64_t) {
    for (int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < items;) {
      const int64_t j0 = i * npanels / items, j1 = (i + 1) * npanels / items;
      run_item(p, out, 0, M, ap.get(), sx.get(), j0 * kNR, std::min(N, j1 * kNR));
    }
  });
}

template <class Out>
void gemm(int64_t M, int64_t N, int64_t K, RowFill fill, const int8_t* w, int64_t ldw, const Out& out,
          const Tuning& t) {
  if (M <= 0 || N <= 0) return;
  if (M <= t.dot_max_m && K >= 32 * M) return gemm_small_m(M, N, K, fill, w, ldw, out);
  gemm_packed(M, N, K, fill, w, ldw, out, t);
}
#endif  // PYOPT_X86

}  // namespace

template <typename T>
void gemm_dequant(int64_t M, int64_t N, int64_t K, RowFill fill, const int8_t* w, int64_t ldw,
                       const float* sw, const float* bias, T* out, int64_t ldo, const Tuning& t) {
#if PYOPT_X86
  const bool stream = std::is_same_v<T, float> && ldo % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 64 == 0;
  gemm(M, N, K, fill, w, ldw, Dequant<T>{out, ldo, sw, bias, stream}, t);
  _mm_sfence();  // order the streaming stores of this thread (the workers fence at the end of each item)
#else
  TORCH_CHECK(false, "int8::avx2: the AVX2 tier needs x86-64");
#endif
}

void gemm_int32(int64_t M, int64_t N, int64_t K, RowFill fill, const int8_t* w, int64_t ldw, int32_t* acc,
                int64_t ldc, const Tuning& t) {
#if PYOPT_X86
  gemm(M, N, K, fill, w, ldw, RawInt32{acc, ldc}, t);
#else
  TORCH_CHECK(false, "int8::avx2: the AVX2 tier needs x86-64");
#endif
}

template void gemm_dequant<float>(int64_t, int64_t, int64_t, RowFill, const int8_t*, int64_t, const float*,
                                       const float*, float*, int64_t, const Tuning&);
template void gemm_dequant<c10::BFloat16>(int64_t, int64_t, int64_t, RowFill, const int8_t*, int64_t,
                                               const float*, const float*, c10::BFloat16*, int64_t, const Tuning&);
template void gemm_dequant<c10::Half>(int64_t, int64_t, int64_t, RowFill, const int8_t*, int64_t,
                                           const float*, const float*, c10::Half*, int64_t, const Tuning&);

}  // namespace pyopt::int8::avx2
