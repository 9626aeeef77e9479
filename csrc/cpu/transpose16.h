// 16 x 16 transpose of 32-bit elements held in 16 zmm registers (AVX-512 only: pyopt::avx512): r[i] = row i on entry, r[j] = column j on
// exit. Shared by the int8 GEMM (activation packing, the 16-column epilogue) and the sparse kernels'
// x -> xt / yt -> y passes. Three rounds: 32-bit unpacks within 128-bit lanes, 64-bit unpacks, then two
// lane shuffles that gather lane L of four registers (the classic 4x4-of-4x4 blocked transpose).
#pragma once
#include "cpu/cpu_isa.h"

#if PYOPT_X86
#include <immintrin.h>

namespace pyopt::avx512 {

PYOPT_TARGET_AVX512 inline void transpose16x16_epi32(__m512i* r) {
  __m512i t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  // u[4i + c], 128-bit lane L = dword 4L + c of rows 4i .. 4i + 3.
  for (int i = 0; i < 4; ++i) {
    u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  // dword 4L + c of all rows = lane L of u[c], u[4 + c], u[8 + c], u[12 + c].
  for (int c = 0; c < 4; ++c) {
    const __m512i lo0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x44), hi0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xEE);
    const __m512i lo1 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x44);
    const __m512i hi1 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xEE);
    r[c] = _mm512_shuffle_i32x4(lo0, lo1, 0x88);
    r[4 + c] = _mm512_shuffle_i32x4(lo0, lo1, 0xDD);
    r[8 + c] = _mm512_shuffle_i32x4(hi0, hi1, 0x88);
    r[12 + c] = _mm512_shuffle_i32x4(hi0, hi1, 0xDD);
  }
}

}  // namespace pyopt::avx512

namespace pyopt {
using avx512::transpose16x16_epi32;  // the int8 GEMM's existing unqualified calls
}  // namespace pyopt
#endif  // PYOPT_X86
