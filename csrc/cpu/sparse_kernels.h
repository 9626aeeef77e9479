// Per-ISA inner kernels of the sparse family, included three times by sparse.cpp with
//   SPARSE_NS      namespace of this variant (avx512 / avx2 / scalar)
//   SPARSE_TARGET  the target attribute from cpu_isa.h (empty for the baseline)
//   SPARSE_VL      floats per vector (16 / 8 / 4)
//   SPARSE_FMA     fused multiply-add a*b+c on `vf` (an intrinsic where the ISA has one)
//   SPARSE_BSR_NV  vectors per BSR m-tile, SPARSE_BSR_R rows per BSR register tile
// Every kernel works on transposed activations: xt is K x Mp (row k = x[:, k], M padded to Mp with zeros),
// so one nonzero w[n, k] is an AXPY of xt row k into the accumulators of output row n, a run of whole
// vectors with no gathers. The OpenMP loops live in sparse.cpp; these functions handle one output row.
// The CSR forward kernels are templated on the value type V: float (csr) or int8_t (csr_int8, the int8 is
// converted to float where the float path loads a float; the row scale is applied by the caller, once per
// output: y[n] = s_n * sum_j q[j] x[col[j]] + b[n]).
// Written with GCC vector extensions: `vf` is the same type as __m512 / __m256 / __m128.

#include "cpu/transpose16.h"

namespace pyopt::sparse {
namespace SPARSE_NS {

constexpr int VL = SPARSE_VL;
constexpr int BSR_NV = SPARSE_BSR_NV;
constexpr int BSR_R = SPARSE_BSR_R;  // output rows per BSR register tile: BSR_R * BSR_NV accumulators
typedef float vf __attribute__((vector_size(SPARSE_VL * sizeof(float))));

SPARSE_TARGET static inline vf vload(const float* p) {
  vf v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
SPARSE_TARGET static inline void vstore(float* p, vf v) { __builtin_memcpy(p, &v, sizeof v); }
// set1 lets the compiler fold the scalar load into vbroadcastss m32 (a load-port uop); `vf{} + s` became a
// scalar load + register broadcast, which competes with the FMAs for the vector pipes on Zen 4.
SPARSE_TARGET static inline vf vbcast(float s) {
#if SPARSE_VL == 16
  return _mm512_set1_ps(s);
#elif SPARSE_VL == 8
  return _mm256_set1_ps(s);
#else
  return vf{} + s;
#endif
}
SPARSE_TARGET static inline vf vfma(vf a, vf b, vf c) { return SPARSE_FMA(a, b, c); }
SPARSE_TARGET static inline float vsum(vf v) {  // tree reduction (a serial chain of VL adds is slow)
#if SPARSE_VL == 16
  return _mm512_reduce_add_ps(v);
#elif SPARSE_VL == 8
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
#else
  return (v[0] + v[2]) + (v[1] + v[3]);
#endif
}

// yrow[0:NV*VL] (= init ? b : yrow) + sum_j val[j] * xt[idx[j], 0:NV*VL]
template <int NV, typename I, typename V>
SPARSE_TARGET static inline void axpy_tile(const I* idx, const V* val, int64_t L, const float* xt, int64_t ldx,
                                           float* yrow, bool init, float b) {
  vf acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = init ? vbcast(b) : vload(yrow + v * VL);
  for (int64_t j = 0; j < L; ++j) {
    const vf w = vbcast(val[j]);
    const float* xr = xt + static_cast<int64_t>(idx[j]) * ldx;
    for (int v = 0; v < NV; ++v) acc[v] = vfma(w, vload(xr + v * VL), acc[v]);
  }
  for (int v = 0; v < NV; ++v) vstore(yrow + v * VL, acc[v]);
}

// axpy_tile for one vector: a single accumulator is one chain of dependent FMAs (latency bound), so even and
// odd nonzeros go to two (1.4x at M=16). A separate function: folding this into axpy_tile<NV> moved the
// code of the NV = 2 / 4 loops and cost those 4-8% (M = 32 / 64).
template <typename I, typename V>
SPARSE_TARGET static inline void axpy_vec(const I* idx, const V* val, int64_t L, const float* xt, int64_t ldx,
                                          float* yrow, bool init, float b) {
  vf a0 = init ? vbcast(b) : vload(yrow), a1 = vf{};
  int64_t j = 0;
  for (; j + 2 <= L; j += 2) {
    a0 = vfma(vbcast(val[j]), vload(xt + static_cast<int64_t>(idx[j]) * ldx), a0);
    a1 = vfma(vbcast(val[j + 1]), vload(xt + static_cast<int64_t>(idx[j + 1]) * ldx), a1);
  }
  if (j < L) a0 = vfma(vbcast(val[j]), vload(xt + static_cast<int64_t>(idx[j]) * ldx), a0);
  vstore(yrow, a0 + a1);
}

// One m-tile (nv vectors, nv in {1, 2, 4, 8}) of an output row of yt from a list of (column, value) nonzeros.
template <typename I, typename V>
SPARSE_TARGET static void axpy_tile_nv(const I* idx, const V* val, int64_t L, const float* xt, int64_t Mp,
                                       float* yrow, int nv, bool init, float b) {
  switch (nv) {
    case 8: axpy_tile<8>(idx, val, L, xt, Mp, yrow, init, b); break;
    case 4: axpy_tile<4>(idx, val, L, xt, Mp, yrow, init, b); break;
    case 2: axpy_tile<2>(idx, val, L, xt, Mp, yrow, init, b); break;
    default: axpy_vec(idx, val, L, xt, Mp, yrow, init, b); break;
  }
}
SPARSE_TARGET static void axpy_tile_i32(const int32_t* idx, const float* val, int64_t L, const float* xt, int64_t Mp,
                                        float* yrow, int nv, bool init, float b) {
  axpy_tile_nv(idx, val, L, xt, Mp, yrow, nv, init, b);
}
SPARSE_TARGET static void axpy_tile_i16(const int16_t* idx, const float* val, int64_t L, const float* xt, int64_t Mp,
                                        float* yrow, int nv, bool init, float b) {
  axpy_tile_nv(idx, val, L, xt, Mp, yrow, nv, init, b);
}
SPARSE_TARGET static void axpy_tile_i32_q8(const int32_t* idx, const int8_t* val, int64_t L, const float* xt,
                                           int64_t Mp, float* yrow, int nv, bool init, float b) {
  axpy_tile_nv(idx, val, L, xt, Mp, yrow, nv, init, b);
}
SPARSE_TARGET static void axpy_tile_i16_q8(const int16_t* idx, const int8_t* val, int64_t L, const float* xt,
                                           int64_t Mp, float* yrow, int nv, bool init, float b) {
  axpy_tile_nv(idx, val, L, xt, Mp, yrow, nv, init, b);
}

// grad_x^T rows: gxt[idx[j], :] += val[j] * gyrow[:]  (the row of grad_y^T stays in registers)
template <int NV>
SPARSE_TARGET static inline void scatter_tile(const int32_t* idx, const float* val, int64_t L, const float* gyrow,
                                              float* gxt, int64_t ldx) {
  vf g[NV];
  for (int v = 0; v < NV; ++v) g[v] = vload(gyrow + v * VL);
  for (int64_t j = 0; j < L; ++j) {
    const vf w = vbcast(val[j]);
    float* p = gxt + static_cast<int64_t>(idx[j]) * ldx;
    for (int v = 0; v < NV; ++v) vstore(p + v * VL, vfma(w, g[v], vload(p + v * VL)));
  }
}

SPARSE_TARGET static void scatter_row(const int32_t* idx, const float* val, int64_t L, const float* gyrow, int64_t Mp,
                                      float* gxt) {
  int64_t m = 0;
  for (; m + 8 * VL <= Mp; m += 8 * VL) scatter_tile<8>(idx, val, L, gyrow + m, gxt + m, Mp);
  if (Mp - m >= 4 * VL) scatter_tile<4>(idx, val, L, gyrow + m, gxt + m, Mp), m += 4 * VL;
  if (Mp - m >= 2 * VL) scatter_tile<2>(idx, val, L, gyrow + m, gxt + m, Mp), m += 2 * VL;
  if (Mp - m >= VL) scatter_tile<1>(idx, val, L, gyrow + m, gxt + m, Mp);
}

// SDDMM: out[j] = <gyrow, xt[idx[j], :]>, both of length Mp. Four nonzeros at a time: each gyrow vector
// is loaded once for four FMAs, and the four independent accumulator chains hide the FMA latency.
SPARSE_TARGET static void dot_row(const int32_t* idx, int64_t L, const float* gyrow, const float* xt, int64_t Mp,
                                  float* out) {
  int64_t j = 0;
  for (; j + 4 <= L; j += 4) {
    const float* x0 = xt + static_cast<int64_t>(idx[j]) * Mp;
    const float* x1 = xt + static_cast<int64_t>(idx[j + 1]) * Mp;
    const float* x2 = xt + static_cast<int64_t>(idx[j + 2]) * Mp;
    const float* x3 = xt + static_cast<int64_t>(idx[j + 3]) * Mp;
    vf a0 = vf{}, a1 = vf{}, a2 = vf{}, a3 = vf{};
    for (int64_t m = 0; m < Mp; m += VL) {
      const vf g = vload(gyrow + m);
      a0 = vfma(g, vload(x0 + m), a0);
      a1 = vfma(g, vload(x1 + m), a1);
      a2 = vfma(g, vload(x2 + m), a2);
      a3 = vfma(g, vload(x3 + m), a3);
    }
    out[j] = vsum(a0);
    out[j + 1] = vsum(a1);
    out[j + 2] = vsum(a2);
    out[j + 3] = vsum(a3);
  }
  for (; j < L; ++j) {
    const float* xr = xt + static_cast<int64_t>(idx[j]) * Mp;
    vf a0 = vf{};
    for (int64_t m = 0; m < Mp; m += VL) a0 = vfma(vload(gyrow + m), vload(xr + m), a0);
    out[j] = vsum(a0);
  }
}

// dst[c * ldd + r] = src[r * lds + c] for r < rows, c < cols: VL x VL tiles transposed in registers (the
// x -> xt and yt -> y passes were scalar strided copies, ~10% of a CSR / 15% of a BSR forward at M=256).
#if SPARSE_VL == 16
SPARSE_TARGET static inline void transpose_tile(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m512i r[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_castps_si512(_mm512_loadu_ps(src + i * lds));
  pyopt::transpose16x16_epi32(r);
  for (int c = 0; c < 16; ++c) _mm512_storeu_ps(dst + c * ldd, _mm512_castsi512_ps(r[c]));
}
#elif SPARSE_VL == 8
SPARSE_TARGET static inline void transpose_tile(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    const __m256 a = _mm256_loadu_ps(src + i * lds), b = _mm256_loadu_ps(src + (i + 1) * lds);
    t[i] = _mm256_unpacklo_ps(a, b);
    t[i + 1] = _mm256_unpackhi_ps(a, b);
  }
  for (int g = 0; g < 2; ++g) {  // u[4g + c], lane L: column 4L + c, rows 4g..4g+3
    u[4 * g] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
    u[4 * g + 1] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], 0xee);
    u[4 * g + 2] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
    u[4 * g + 3] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xee);
  }
  for (int c = 0; c < 4; ++c) {
    _mm256_storeu_ps(dst + c * ldd, _mm256_permute2f128_ps(u[c], u[4 + c], 0x20));
    _mm256_storeu_ps(dst + (4 + c) * ldd, _mm256_permute2f128_ps(u[c], u[4 + c], 0x31));
  }
}
#else
static inline void transpose_tile(const float* src, int64_t lds, float* dst, int64_t ldd) {
  for (int r = 0; r < VL; ++r)
    for (int c = 0; c < VL; ++c) dst[c * ldd + r] = src[r * lds + c];
}
#endif

SPARSE_TARGET static void transpose(const float* src, int64_t lds, float* dst, int64_t ldd, int64_t rows,
                                    int64_t cols) {
  int64_t r0 = 0;
  for (; r0 + VL <= rows; r0 += VL) {
    int64_t c0 = 0;
    for (; c0 + VL <= cols; c0 += VL) transpose_tile(src + r0 * lds + c0, lds, dst + c0 * ldd + r0, ldd);
    for (; c0 < cols; ++c0)
      for (int r = 0; r < VL; ++r) dst[c0 * ldd + r0 + r] = src[(r0 + r) * lds + c0];
  }
  for (; r0 < rows; ++r0)
    for (int64_t c = 0; c < cols; ++c) dst[c * ldd + r0] = src[r0 * lds + c];
}

// Whether every index of a CSR row is in [0, K): a min/max reduction the compiler vectorises for this ISA.
template <typename I>
SPARSE_TARGET static inline bool in_range(const I* col, int64_t L, int64_t K) {
  // a valid row's columns are strictly increasing and in [0, K): then only its ends need a range test
  bool up = true;
  for (int64_t j = 1; j < L; ++j) up &= col[j] > col[j - 1];
  return L == 0 || (up && col[0] >= 0 && static_cast<int64_t>(col[L - 1]) < K);  // empty: fine even if K == 0
}
SPARSE_TARGET static bool in_range_i32(const int32_t* col, int64_t L, int64_t K) { return in_range(col, L, K); }
SPARSE_TARGET static bool in_range_i16(const int16_t* col, int64_t L, int64_t K) { return in_range(col, L, K); }

// VL values as floats: float loads, int8 sign-extends to int32 (vpmovsxbd) and converts (exact, |q| <= 127).
#if SPARSE_VL == 16
SPARSE_TARGET static inline __m512 load_vals(const float* p) { return _mm512_loadu_ps(p); }
SPARSE_TARGET static inline __m512 load_vals(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
#elif SPARSE_VL == 8
SPARSE_TARGET static inline __m256 load_vals(const float* p) { return _mm256_loadu_ps(p); }
SPARSE_TARGET static inline __m256 load_vals(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
#endif

// CSR GEMV (M small): y[n] = b + sum_j val[j] * x[col[j]]. AVX-512 / AVX2 gather 16 / 8 x values per
// instruction (x, one row of K floats, stays in L1/L2); the scalar tail keeps four partial sums for ILP.
template <typename I, typename V>
SPARSE_TARGET static inline float gemv_row(const I* col, const V* val, int64_t L, const float* x, float b) {
  int64_t j = 0;
  float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
#if SPARSE_VL == 16
  __m512 acc = _mm512_setzero_ps();
  for (; j + 16 <= L; j += 16) {
    __m512i ix = sizeof(I) == 2 ? _mm512_cvtepi16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(col + j)))
                                : _mm512_loadu_si512(col + j);
    acc = _mm512_fmadd_ps(load_vals(val + j), _mm512_i32gather_ps(ix, x, 4), acc);
  }
  s0 = _mm512_reduce_add_ps(acc);
#elif SPARSE_VL == 8
  __m256 acc = _mm256_setzero_ps();
  for (; j + 8 <= L; j += 8) {
    __m256i ix = sizeof(I) == 2 ? _mm256_cvtepi16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(col + j)))
                                : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(col + j));
    acc = _mm256_fmadd_ps(load_vals(val + j), _mm256_i32gather_ps(x, ix, 4), acc);
  }
  s0 = vsum(acc);
#endif
  for (; j + 4 <= L; j += 4) {
    s0 += val[j] * x[col[j]];
    s1 += val[j + 1] * x[col[j + 1]];
    s2 += val[j + 2] * x[col[j + 2]];
    s3 += val[j + 3] * x[col[j + 3]];
  }
  for (; j < L; ++j) s0 += val[j] * x[col[j]];
  return b + ((s0 + s1) + (s2 + s3));
}
SPARSE_TARGET static float gemv_row_i32(const int32_t* col, const float* val, int64_t L, const float* x, float b) {
  return gemv_row(col, val, L, x, b);
}
SPARSE_TARGET static float gemv_row_i16(const int16_t* col, const float* val, int64_t L, const float* x, float b) {
  return gemv_row(col, val, L, x, b);
}
SPARSE_TARGET static float gemv_row_i32_q8(const int32_t* col, const int8_t* val, int64_t L, const float* x, float b) {
  return gemv_row(col, val, L, x, b);
}
SPARSE_TARGET static float gemv_row_i16_q8(const int16_t* col, const int8_t* val, int64_t L, const float* x, float b) {
  return gemv_row(col, val, L, x, b);
}

// BSR: R output rows (r0.. of one block row) x BSR_NV vectors of m, over the block row's nb blocks.
// blocks: this block row's first block (nb x bh x bw, row-major); bcol: their block-column indices.
template <int R>
SPARSE_TARGET static inline void bsr_tile(const float* blocks, const int32_t* bcol, int64_t nb, int64_t bh, int64_t bw,
                                          int64_t r0, const float* xt, int64_t Mp, const float* bias, float* yt,
                                          int64_t ldy) {
  vf acc[R][BSR_NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < BSR_NV; ++v) acc[r][v] = vbcast(bias ? bias[r0 + r] : 0.f);
  for (int64_t b = 0; b < nb; ++b) {
    const float* blk = blocks + b * bh * bw + r0 * bw;
    const float* xb = xt + static_cast<int64_t>(bcol[b]) * bw * Mp;
    for (int64_t kk = 0; kk < bw; ++kk) {
      vf xv[BSR_NV];
      for (int v = 0; v < BSR_NV; ++v) xv[v] = vload(xb + kk * Mp + v * VL);
      for (int r = 0; r < R; ++r) {
        const vf w = vbcast(blk[r * bw + kk]);
        for (int v = 0; v < BSR_NV; ++v) acc[r][v] = vfma(w, xv[v], acc[r][v]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < BSR_NV; ++v) vstore(yt + (r0 + r) * ldy + v * VL, acc[r][v]);
}

// One block row, one m-tile (xt, yt already offset to it; yt rows ldy apart): all bh rows in tiles of BSR_R.
SPARSE_TARGET static void bsr_block_row(const float* blocks, const int32_t* bcol, int64_t nb, int64_t bh, int64_t bw,
                                        const float* xt, int64_t Mp, const float* bias, float* yt, int64_t ldy) {
  int64_t r0 = 0;
  for (; r0 + BSR_R <= bh; r0 += BSR_R) bsr_tile<BSR_R>(blocks, bcol, nb, bh, bw, r0, xt, Mp, bias, yt, ldy);
  switch (bh - r0) {
    case 7: bsr_tile<7>(blocks, bcol, nb, bh, bw, r0, xt, Mp, bias, yt, ldy); break;
    case 6: bsr_tile<6>(blocks, bcol, nb, bh, bw, r0, xt, Mp, bias, yt, ldy); break;
    case 5: bsr_tile<5>(blocks, bcol, nb, bh, bw, r0, xt, Mp, bias, yt, ldy); break;
    case 4: bsr_tile<4>(blocks, bcol, nb, bh, bw, r0, xt, Mp, bias, yt, ldy); break;
    case 3: bsr_tile<3>(blocks, bcol, nb, bh, bw, r0, xt, Mp, bias, yt, ldy); break;
    case 2: bsr_tile<2>(blocks, bcol, nb, bh, bw, r0, xt, Mp, bias, yt, ldy); break;
    case 1: bsr_tile<1>(blocks, bcol, nb, bh, bw, r0, xt, Mp, bias, yt, ldy); break;
    default: break;
  }
}

static const Kernels kernels = {VL,           BSR_NV,       axpy_tile_i32, axpy_tile_i16, scatter_row,   dot_row,
                                gemv_row_i32, gemv_row_i16, in_range_i32,  in_range_i16,  bsr_block_row, transpose,
                                {axpy_tile_i32_q8, axpy_tile_i16_q8, gemv_row_i32_q8, gemv_row_i16_q8}};

}  // namespace SPARSE_NS
}  // namespace pyopt::sparse
