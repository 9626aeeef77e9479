// Shared by sparse.cpp (float formats) and sparse_int8.cpp (csr_int8): the table of per-ISA kernels, the
// helpers both use (defined in sparse.cpp), and the CSR forward templated on the value type V (float or
// int8_t). One CSR forward for both formats: int8 differs only in the value load (converted to float) and
// the per-row scale applied once per output, y[m, n] = scale[n] * sum_j q[j] x[m, col[j]] + b[n].
#pragma once

#include <ATen/ATen.h>
#include <omp.h>
#include <unistd.h>

#include "cpu/cpu_isa.h"

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <vector>

namespace pyopt::sparse {

// The functions of one ISA namespace of sparse_kernels.h (pyopt::sparse::avx512 / avx2 / scalar), as one
// table of function pointers; kernels_for(isa) picks the namespace (see sparse.cpp). The _i16 / _i32 / q8
// names tell the index and value types apart (a pointer needs one overload).
struct Kernels {
  int vl;      // floats per vector
  int bsr_nv;  // vectors per BSR m-tile
  void (*axpy_tile_i32)(const int32_t*, const float*, int64_t, const float*, int64_t, float*, int, bool, float);
  void (*axpy_tile_i16)(const int16_t*, const float*, int64_t, const float*, int64_t, float*, int, bool, float);
  void (*scatter_row)(const int32_t*, const float*, int64_t, const float*, int64_t, float*);
  void (*dot_row)(const int32_t*, int64_t, const float*, const float*, int64_t, float*);
  float (*gemv_row_i32)(const int32_t*, const float*, int64_t, const float*, float);
  float (*gemv_row_i16)(const int16_t*, const float*, int64_t, const float*, float);
  bool (*in_range_i32)(const int32_t*, int64_t, int64_t);
  bool (*in_range_i16)(const int16_t*, int64_t, int64_t);
  void (*bsr_block_row)(const float*, const int32_t*, int64_t, int64_t, int64_t, const float*, int64_t, const float*,
                        float*, int64_t);
  void (*transpose)(const float*, int64_t, float*, int64_t, int64_t, int64_t);
  struct {  // csr_int8: the CSR kernels with int8 values
    void (*axpy_tile_i32)(const int32_t*, const int8_t*, int64_t, const float*, int64_t, float*, int, bool, float);
    void (*axpy_tile_i16)(const int16_t*, const int8_t*, int64_t, const float*, int64_t, float*, int, bool, float);
    float (*gemv_row_i32)(const int32_t*, const int8_t*, int64_t, const float*, float);
    float (*gemv_row_i16)(const int16_t*, const int8_t*, int64_t, const float*, float);
  } q8;
};

// Defined in sparse.cpp: the table of the namespace for `isa` (a switch on the Isa, once per call).
const Kernels& kernels_for(pyopt::Isa isa);
at::Tensor transpose_panels(const Kernels& kr, const at::Tensor& x, int64_t Mp, int64_t width = 0);
// crow (rows + 1 entries, checked by the op's argument checks) must run from 0 to nnz without decreasing.
void check_crow_values(const at::Tensor& crow, int64_t rows, int64_t nnz);
// x [..., K] of any float dtype as the kernels' operand: 2-D, contiguous float32.
at::Tensor as_f32_rows(const at::Tensor& x);
std::optional<at::Tensor> as_f32(const std::optional<at::Tensor>& t);
// y [rows, N] float32 back to x's dtype and leading dims.
at::Tensor like_x(const at::Tensor& y, const at::Tensor& x, int64_t N);
// The CPU kernel of pyopt::sparse_csr_linear (csr_int8's float64 path runs it).
at::Tensor csr_linear(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                      const std::optional<at::Tensor>& bias, int64_t out_features);

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Vectors per m-tile of the CSR/masked forward at a point with `left` vectors of Mp to go: 8, then 4, 2, 1.
inline int tile_nv(int64_t left) { return left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1; }

// Scheduling: every parallel loop hands out small chunks dynamically and has no barrier inside, so a thread
// descheduled by a busy machine delays only its own chunk, not every other thread at a barrier.
//
// Forward tiling (masked and CSR): OpenMP over chunks of output rows; in a chunk, for each m-tile of up to
// 8 vectors and each K-block whose xt slice (kb x tile) stays in L2 next to the chunk's yt tile, every row
// adds its nonzeros of that K-block into its yt tile. (An L1-sized K-block was slower: too few nonzeros
// per row segment to pay for the accumulator load/store; re-measured with panels, also a two-level L2/L1
// blocking: no gain. The kernel runs near L2 -> L1 bandwidth, one 64-byte xt vector per FMA.)
// `Source` yields a row's (idx, val) list in a K-block; each thread works on its own copy (buffers,
// cursors). The chunk's yt tile lives in a per-thread buffer (L2) and is transposed straight into y after
// the last K-block: no N x Mp yt in memory and no separate untranspose pass.
// Half of this core's L2 (Zen 4: 1 MiB L2 -> 512 KiB; Zen 3: 512 KiB -> 256 KiB; read once from sysconf,
// 1 MiB assumed where it is not reported). On Zen 4, 192 KiB was 5% slower at M=64 and 15-45% at M=32 (more,
// shorter row segments; the kernel is bound by L2 -> L1 bandwidth and a smaller slice buys no L1 hits);
// 512 KiB keeps M=64's 1 MiB panel whole (below), 5% faster than 384 KiB there, and is even at M=128/256.
// On Zen 3 the same 512 KiB slice no longer fits its L2 and every xt load came from L3.
inline int64_t xt_tile_bytes() {
  static const int64_t bytes = [] {
    const char* env = std::getenv("PYOPT_SPARSE_XT_BYTES");  // a tuning knob: measure other slice sizes
    if (env && std::atoll(env) > 0) return static_cast<int64_t>(std::atoll(env));
    const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return std::clamp<int64_t>(l2 > 0 ? l2 / 2 : 512 * 1024, 128 * 1024, 2048 * 1024);
  }();
  return bytes;
}

// scale (csr_int8, else nullptr): the tile starts at 0 instead of the bias and each finished row is
// scale[n] * acc + b[n] (one multiply per output, in the per-thread tile before it is transposed into y).
template <typename I, typename V, typename Source>
void forward_tiled(const Kernels& kr,
                   void (*axpy)(const I*, const V*, int64_t, const float*, int64_t, float*, int, bool, float),
                   const Source& proto, const float* xt, int64_t Mp, int64_t M, int64_t N, int64_t K, const float* b,
                   const float* scale, float* y) {
  const int64_t threads = omp_get_max_threads();
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(128, (N + 4 * threads - 1) / (4 * threads)));
  const int64_t nchunks = (N + chunk - 1) / chunk;
#pragma omp parallel
  {
    Source src = proto;
    std::vector<float> tile(chunk * 8 * kr.vl);
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < nchunks; ++c) {
      const int64_t n0 = c * chunk, n1 = std::min(N, n0 + chunk);
      for (int64_t m0 = 0; m0 < Mp;) {
        const int64_t left = (Mp - m0) / kr.vl;
        const int nv = tile_nv(left);
        // a panel of up to 2 blocks (M <= 64 at K = 4096) stays whole: splitting it only added row segments
        const int64_t tw = nv * kr.vl, panel = K * tw * 4;
        const int64_t kb =
            panel <= 2 * xt_tile_bytes() ? std::max<int64_t>(K, 1) : std::max<int64_t>(16, xt_tile_bytes() / (tw * 4));
        src.reset(n0, n1);
        for (int64_t k0 = 0; k0 < K || k0 == 0; k0 += kb) {  // K == 0 still initialises the tile to the bias
          const int64_t k1 = std::min(K, k0 + kb);
          for (int64_t n = n0; n < n1; ++n) {
            const I* idx;
            const V* val;
            const int64_t L = src.segment(n, k0, k1, K, idx, val);
            const float init = scale || !b ? 0.f : b[n];
            if (L > 0 || k0 == 0) axpy(idx, val, L, xt + m0 * K, tw, tile.data() + (n - n0) * tw, nv, k0 == 0, init);
          }
        }
        if (scale)
          for (int64_t n = n0; n < n1; ++n) {
            float* r = tile.data() + (n - n0) * tw;
            const float s = scale[n], bn = b ? b[n] : 0.f;
            for (int64_t m = 0; m < tw; ++m) r[m] = r[m] * s + bn;
          }
        kr.transpose(tile.data(), tw, y + m0 * N + n0, N, n1 - n0, std::min(tw, M - m0));
        m0 += tw;
      }
    }
  }
}

// Row segments of a CSR matrix. pos[n]: first entry of row n not yet used in this m-tile; entries are taken
// while their column is below the K-block's end (the last block takes the rest), so each is used exactly
// once even if a row's columns are unsorted (only slower).
template <typename I, typename V>
struct CsrSource {
  const int64_t* crow;
  const I* col;
  const V* vals;
  std::vector<int64_t> pos;
  void reset(int64_t n0, int64_t n1) { std::copy(crow + n0, crow + n1, pos.begin() + n0); }
  int64_t segment(int64_t n, int64_t, int64_t k1, int64_t K, const I*& pi, const V*& pv) {
    int64_t end = pos[n];
    if (k1 == K) end = crow[n + 1];
    else
      while (end < crow[n + 1] && col[end] < k1) ++end;
    pi = col + pos[n];
    pv = vals + pos[n];
    const int64_t L = end - pos[n];
    pos[n] = end;
    return L;
  }
};

// The CSR forward (x: 2-D contiguous float32, M > 0, N > 0; crow checked). scale: see forward_tiled.
template <typename I, typename V>
at::Tensor csr_linear_impl(const at::Tensor& x, const int64_t* crow, const I* col, const V* val, int64_t N,
                           const float* b, const float* scale, const Kernels& kr,
                           float (*gemv)(const I*, const V*, int64_t, const float*, float),
                           void (*axpy)(const I*, const V*, int64_t, const float*, int64_t, float*, int, bool,
                                        float),
                           bool (*in_range)(const I*, int64_t, int64_t)) {
  const int64_t M = x.size(0), K = x.size(1);
  // Column indices are range-checked before any kernel reads x with them (a row at a time, in L1 after).
  auto row_ok = [&](int64_t n) { return in_range(col + crow[n], crow[n + 1] - crow[n], K); };
  bool bad = false;
  if (M <= 4) {  // decode: GEMV per row of x, gathers of x[col] straight from row-major x
    at::Tensor y = at::empty({M, N}, x.options());
    const float* px = x.data_ptr<float>();
    float* py = y.data_ptr<float>();
#pragma omp parallel for schedule(dynamic, 64) reduction(|| : bad)
    for (int64_t n = 0; n < N; ++n) {
      if (!row_ok(n)) {
        bad = true;
        continue;
      }
      const float bn = b ? b[n] : 0.f;
      for (int64_t m = 0; m < M; ++m) {
        const float acc = gemv(col + crow[n], val + crow[n], crow[n + 1] - crow[n], px + m * K, scale ? 0.f : bn);
        py[m * N + n] = scale ? acc * scale[n] + bn : acc;
      }
    }
    TORCH_CHECK_VALUE(!bad, "col_indices must be in [0, ", K, ") and strictly increasing within each row");
    return y;
  }
#pragma omp parallel for schedule(dynamic, 256) reduction(|| : bad)
  for (int64_t n = 0; n < N; ++n) bad = bad || !row_ok(n);
  TORCH_CHECK_VALUE(!bad, "col_indices must be in [0, ", K, ") and strictly increasing within each row");
  const int64_t Mp = round_up(M, kr.vl);
  at::Tensor xt = transpose_panels(kr, x, Mp), y = at::empty({M, N}, x.options());
  const CsrSource<I, V> src{crow, col, val, std::vector<int64_t>(N)};
  forward_tiled<I, V>(kr, axpy, src, xt.data_ptr<float>(), Mp, M, N, K, b, scale, y.data_ptr<float>());
  return y;
}

}  // namespace pyopt::sparse
