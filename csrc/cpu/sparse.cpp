// Sparse family CPU kernels: masked matmul for training (forward, grad_input, SDDMM grad_weight) and the
// compressed inference formats (CSR with int16/int32 column indices, BSR with any (bh, bw) blocks).
//
// Layout trick (all M > 4 paths): activations are transposed to xt = x^T (K x Mp, M padded with zeros to
// whole vectors) so a nonzero w[n, k] adds w * xt[k, :] to output row n of yt = y^T, a run of vector FMAs
// over M held in registers (sparse_kernels.h). The forward kernels store xt as one contiguous K x tile panel
// per m-tile (transpose_panels). K is processed in blocks whose xt slice fits in L2, with OpenMP over
// output rows n; each chunk's yt tile is transposed straight into y. M <= 4 (decode) uses a CSR GEMV that
// gathers x[k] per nonzero.
// Masks are bool (1 byte); each (row, K-block) segment is turned into a list of set columns with SSE2
// movemask + tzcnt, so the training kernels read only the weights the mask keeps and need no CSR copy.
#include <ATen/ATen.h>
#include <omp.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include <c10/util/accumulate.h>

#include "cpu/cpu_isa.h"
#include "cpu/sparse_common.h"
#include "cpu/transpose16.h"
#include "op_checks.h"
#if PYOPT_X86
#include <immintrin.h>
#endif

#pragma GCC diagnostic ignored "-Wpsabi"

// The per-ISA variants are the namespaces pyopt::sparse::avx512 / ::avx2 / ::scalar, each holding the same
// functions under the same names. They are generated from one source, sparse_kernels.h, included once per ISA
// with SPARSE_NS naming the namespace (and the vector width, target attribute and FMA for it), because the
// three differ only in those; writing them out three times would triple ~300 lines that must stay identical
// in rounding. Each namespace also exports its functions as one table (`kernels`): the tiled drivers of
// sparse_common.h are shared by the float and int8 formats and by every ISA, and take the table chosen once
// per call by kernels_for(isa) (a switch on the Isa) instead of being instantiated three times.

#if PYOPT_X86
#define SPARSE_NS avx512
#define SPARSE_TARGET PYOPT_TARGET_AVX512
#define SPARSE_VL 16
#define SPARSE_FMA _mm512_fmadd_ps
#define SPARSE_BSR_NV 2
#define SPARSE_BSR_R 8
#include "cpu/sparse_kernels.h"
#undef SPARSE_NS
#undef SPARSE_TARGET
#undef SPARSE_VL
#undef SPARSE_FMA
#undef SPARSE_BSR_NV
#undef SPARSE_BSR_R

#define SPARSE_NS avx2
#define SPARSE_TARGET PYOPT_TARGET_AVX2
#define SPARSE_VL 8
#define SPARSE_FMA _mm256_fmadd_ps
#define SPARSE_BSR_NV 2
#define SPARSE_BSR_R 6  // 12 accumulators + 2 x vectors + the broadcast weight of 16 ymm
#include "cpu/sparse_kernels.h"
#undef SPARSE_NS
#undef SPARSE_TARGET
#undef SPARSE_VL
#undef SPARSE_FMA
#undef SPARSE_BSR_NV
#undef SPARSE_BSR_R
#endif

#define SPARSE_NS scalar
#define SPARSE_TARGET
#define SPARSE_VL 4
#define SPARSE_FMA(a, b, c) ((a) * (b) + (c))
#define SPARSE_BSR_NV 2
#define SPARSE_BSR_R 4
#include "cpu/sparse_kernels.h"

// Shared with sparse_int8.cpp (declared in sparse_common.h): kernels_for, transpose_panels, the operands.
namespace pyopt::sparse {

// The ISA namespace for the call's tier (a switch on the Isa, once per call; AVX-512 kernels for every tier
// from AVX-512 up).
const Kernels& kernels_for(pyopt::Isa isa) {
  switch (isa) {
#if PYOPT_X86
    case pyopt::Isa::Avx2: return avx2::kernels;
    default: return avx512::kernels;
#else
    default:
#endif
    case pyopt::Isa::Scalar: return scalar::kernels;
  }
}

// Bytes of xt (one K-block x Mp) the grad_input / SDDMM loops keep hot: half of this core's L2, as the
// forward's panels (xt_tile_bytes, sparse_common.h).
static int64_t k_block(int64_t K, int64_t Mp) {
  return std::min<int64_t>(K, std::max<int64_t>(16, xt_tile_bytes() / (Mp * 4)));
}

// dst (cols x ldd) = src^T for src (rows x cols, rows lds apart), dst columns [rows, ldd) zeroed (the M
// padding of xt): the ISA's register-tile transpose, OpenMP over 128 x 64 tiles (32 KiB, both sides in L1).
static void transpose_par(const Kernels& kr, const float* src, int64_t lds, float* dst, int64_t ldd, int64_t rows,
                   int64_t cols) {
  constexpr int64_t kRows = 128, kCols = 64;
  const int64_t nr = (rows + kRows - 1) / kRows, nc = (cols + kCols - 1) / kCols;
#pragma omp parallel for schedule(dynamic, 1) if (rows * cols > 16384)
  for (int64_t t = 0; t < nr * nc; ++t) {
    const int64_t r0 = (t % nr) * kRows, r1 = std::min(rows, r0 + kRows);
    const int64_t c0 = (t / nr) * kCols, c1 = std::min(cols, c0 + kCols);
    kr.transpose(src + r0 * lds + c0, lds, dst + c0 * ldd + r0, ldd, r1 - r0, c1 - c0);
    if (r1 == rows && ldd > rows)
      for (int64_t c = c0; c < c1; ++c) std::fill(dst + c * ldd + rows, dst + (c + 1) * ldd, 0.f);
  }
}

// x (M x K) -> xt as one K x tw panel per m-tile, panel at m0 starting at xt + m0 * K, padding zeroed; tw is
// `width` (BSR; width = Mp gives the plain K x Mp xt of the backward kernels) or, if 0, the CSR/masked
// forward's tile_nv vectors. In a K x Mp row-major xt a tile's rows are Mp * 4 bytes apart: at Mp = 256 a
// 128-wide tile used half of every 1 KiB row (a 32-wide BSR tile an eighth), so a K-block sat in a fraction
// of the L1/L2 sets. Panels: CSR 10%, BSR 4-12% faster at M=256.
at::Tensor transpose_panels(const Kernels& kr, const at::Tensor& x, int64_t Mp, int64_t width) {
  const int64_t M = x.size(0), K = x.size(1);
  at::Tensor xt = at::empty({K, Mp}, x.options());
  for (int64_t m0 = 0; m0 < Mp;) {
    const int64_t tw = width > 0 ? width : tile_nv((Mp - m0) / kr.vl) * kr.vl;
    transpose_par(kr, x.data_ptr<float>() + m0 * K, K, xt.data_ptr<float>() + m0 * K, tw, std::min(tw, M - m0), K);
    m0 += tw;
  }
  return xt;
}

// yt (K x Mp) -> y (M x K): the first M columns of yt, transposed.
static at::Tensor untranspose(const Kernels& kr, const at::Tensor& yt, int64_t M) {
  const int64_t K = yt.size(0), Mp = yt.size(1);
  at::Tensor y = at::empty({M, K}, yt.options());
  transpose_par(kr, yt.data_ptr<float>(), Mp, y.data_ptr<float>(), K, K, M);
  return y;
}

// Columns k in [k0, k1) where mask row `m` is set, written to idx; returns how many.
static int64_t mask_list(const uint8_t* m, int64_t k0, int64_t k1, int32_t* idx) {
  int64_t L = 0, k = k0;
#if PYOPT_X86
  const __m128i zero = _mm_setzero_si128();
  for (; k + 16 <= k1; k += 16) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(m + k));
    unsigned bits = static_cast<unsigned>(_mm_movemask_epi8(_mm_cmpeq_epi8(v, zero))) ^ 0xFFFFu;
    while (bits) {
      idx[L++] = static_cast<int32_t>(k + __builtin_ctz(bits));
      bits &= bits - 1;
    }
  }
#endif
  for (; k < k1; ++k)
    if (m[k]) idx[L++] = static_cast<int32_t>(k);
  return L;
}

void check_crow_values(const at::Tensor& crow, int64_t rows, int64_t nnz) {
  const int64_t* c = crow.const_data_ptr<int64_t>();
  bool monotone = true;
  for (int64_t i = 0; i < rows; ++i) monotone &= c[i] <= c[i + 1];
  TORCH_CHECK_VALUE(c[0] == 0 && c[rows] == nnz && monotone,
                    "crow_indices must start at 0, never decrease and end at nnz=", nnz);
}

// t as [rows, last dim]; not reshape({-1, K}), which is ambiguous (an error) for an empty t with K == 0.
static int64_t leading_rows(const at::Tensor& t) {
  return c10::multiply_integers(t.sizes().begin(), t.sizes().end() - 1);
}
static at::Tensor rows_2d(const at::Tensor& t) { return t.reshape({leading_rows(t), t.size(-1)}); }

at::Tensor as_f32_rows(const at::Tensor& x) { return rows_2d(x).to(at::kFloat).contiguous(); }

std::optional<at::Tensor> as_f32(const std::optional<at::Tensor>& t) {
  return t ? std::optional<at::Tensor>(t->to(at::kFloat).contiguous()) : std::nullopt;
}

at::Tensor like_x(const at::Tensor& y, const at::Tensor& x, int64_t N) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = N;
  return y.to(x.scalar_type()).view(shape);
}

namespace {

// y [M, N] = bias broadcast (or zeros): the result when there is nothing to multiply.
at::Tensor bias_only(int64_t M, int64_t N, const std::optional<at::Tensor>& bias, const at::TensorOptions& opt) {
  at::Tensor y = at::zeros({M, N}, opt);
  return bias ? y.add_(*bias) : y;
}

// Row segments straight from a bool mask: set columns (movemask scan) and the weights there.
struct MaskSource {
  const uint8_t* mask;
  const float* w;
  std::vector<int32_t> idx;
  std::vector<float> val;
  void reset(int64_t, int64_t) {}
  int64_t segment(int64_t n, int64_t k0, int64_t k1, int64_t K, const int32_t*& pi, const float*& pv) {
    const int64_t L = mask_list(mask + n * K, k0, k1, idx.data());
    for (int64_t j = 0; j < L; ++j) val[j] = w[n * K + idx[j]];
    pi = idx.data();
    pv = val.data();
    return L;
  }
};

// The float32 kernels below take 2-D contiguous float32 operands (the entry points at the end convert).
// y = x (W*mask)^T + b, reading only the weights the mask keeps.
at::Tensor masked_linear_f32(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
                             const std::optional<at::Tensor>& bias) {
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0);
  const float* b = bias ? bias->data_ptr<float>() : nullptr;
  if (M == 0 || N == 0 || K == 0) return bias_only(M, N, bias, x.options());
  const Kernels& kr = kernels_for(pyopt::active_isa());
  const int64_t Mp = round_up(M, kr.vl);
  at::Tensor xt = transpose_panels(kr, x, Mp), y = at::empty({M, N}, x.options());
  const MaskSource src{reinterpret_cast<const uint8_t*>(mask.data_ptr<bool>()), weight.data_ptr<float>(),
                       std::vector<int32_t>(K), std::vector<float>(K)};
  forward_tiled<int32_t, float>(kr, kr.axpy_tile_i32, src, xt.data_ptr<float>(), Mp, M, N, K, b, nullptr,
                                y.data_ptr<float>());
  return y;
}

// grad_x = grad_y (W*mask): threads own K-blocks of grad_x^T and scatter into them (no reduction needed).
at::Tensor masked_linear_grad_input_f32(const at::Tensor& grad_y, const at::Tensor& weight, const at::Tensor& mask) {
  const int64_t M = grad_y.size(0), N = weight.size(0), K = weight.size(1);
  if (M == 0 || N == 0 || K == 0) return at::zeros({M, K}, grad_y.options());
  const Kernels& kr = kernels_for(pyopt::active_isa());
  const int64_t Mp = round_up(M, kr.vl);
  const int64_t threads = omp_get_max_threads();
  const int64_t kb = std::max<int64_t>(16, std::min(k_block(K, Mp), round_up(K, 2 * threads) / (2 * threads)));
  at::Tensor gyt = transpose_panels(kr, grad_y, Mp, Mp), gxt = at::zeros({K, Mp}, grad_y.options());
  const float *pgy = gyt.data_ptr<float>(), *pw = weight.data_ptr<float>();
  const uint8_t* pm = reinterpret_cast<const uint8_t*>(mask.data_ptr<bool>());
  float* pgx = gxt.data_ptr<float>();
  const int64_t nblocks = (K + kb - 1) / kb;
#pragma omp parallel
  {
    std::vector<int32_t> idx(kb);
    std::vector<float> val(kb);
#pragma omp for schedule(dynamic, 1)
    for (int64_t blk = 0; blk < nblocks; ++blk) {
      const int64_t k0 = blk * kb, k1 = std::min(K, k0 + kb);
      for (int64_t n = 0; n < N; ++n) {
        const int64_t L = mask_list(pm + n * K, k0, k1, idx.data());
        if (L == 0) continue;
        for (int64_t j = 0; j < L; ++j) val[j] = pw[n * K + idx[j]];
        kr.scatter_row(idx.data(), val.data(), L, pgy + n * Mp, Mp, pgx);
      }
    }
  }
  return untranspose(kr, gxt, M);
}

// SDDMM: grad_W = (grad_y^T x) * mask, each kept entry one dot product over M; pruned entries exactly 0.
at::Tensor masked_sddmm_f32(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& mask) {
  const int64_t M = grad_y.size(0), N = grad_y.size(1), K = x.size(1);
  if (M == 0 || N == 0 || K == 0) return at::zeros({N, K}, x.options());
  const Kernels& kr = kernels_for(pyopt::active_isa());
  const int64_t Mp = round_up(M, kr.vl), kb = k_block(K, Mp);
  at::Tensor gyt = transpose_panels(kr, grad_y, Mp, Mp), xt = transpose_panels(kr, x, Mp, Mp);
  at::Tensor gw = at::empty({N, K}, x.options());
  const float *pgy = gyt.data_ptr<float>(), *pxt = xt.data_ptr<float>();
  const uint8_t* pm = reinterpret_cast<const uint8_t*>(mask.data_ptr<bool>());
  float* pgw = gw.data_ptr<float>();
  const int64_t chunk = 64, nchunks = (N + chunk - 1) / chunk;
#pragma omp parallel
  {
    std::vector<int32_t> idx(kb);
    std::vector<float> dots(kb);
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < nchunks; ++c) {
      const int64_t n1 = std::min(N, (c + 1) * chunk);
      for (int64_t k0 = 0; k0 < K; k0 += kb) {  // the chunk's rows share the K-block of xt in L2
        const int64_t k1 = std::min(K, k0 + kb);
        for (int64_t n = c * chunk; n < n1; ++n) {
          const int64_t L = mask_list(pm + n * K, k0, k1, idx.data());
          float* row = pgw + n * K;
          std::fill(row + k0, row + k1, 0.f);
          kr.dot_row(idx.data(), L, pgy + n * Mp, pxt, Mp, dots.data());
          for (int64_t j = 0; j < L; ++j) row[idx[j]] = dots[j];
        }
      }
    }
  }
  return gw;
}

// y = x W^T + b with W (N x K) in CSR: crow (N+1, int64), col (nnz, int16 or int32), values (nnz, float32).
at::Tensor csr_linear_f32(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                          const std::optional<at::Tensor>& bias, int64_t N) {
  const int64_t M = x.size(0);
  if (M == 0 || N == 0) return bias_only(M, N, bias, x.options());
  const float* b = bias ? bias->data_ptr<float>() : nullptr;
  const Kernels& kr = kernels_for(pyopt::active_isa());
  const int64_t* pc = crow.data_ptr<int64_t>();
  const float* pv = values.data_ptr<float>();
  if (col.scalar_type() == at::kShort)
    return csr_linear_impl<int16_t, float>(x, pc, col.data_ptr<int16_t>(), pv, N, b, nullptr, kr, kr.gemv_row_i16,
                                           kr.axpy_tile_i16, kr.in_range_i16);
  return csr_linear_impl<int32_t, float>(x, pc, col.data_ptr<int32_t>(), pv, N, b, nullptr, kr, kr.gemv_row_i32,
                                         kr.axpy_tile_i32, kr.in_range_i32);
}

// y = x W^T + b with W in BSR: crow (N/bh + 1, int64), col (nnzb, int32 block columns), values (nnzb, bh, bw).
at::Tensor bsr_linear_f32(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                          const std::optional<at::Tensor>& bias, int64_t N) {
  const int64_t nnzb = values.size(0), bh = values.size(1), bw = values.size(2);
  const int64_t M = x.size(0), K = x.size(1);
  const int64_t* pc = crow.data_ptr<int64_t>();
  const int32_t* pcol = col.data_ptr<int32_t>();
  const int64_t nbr = N / bh;
  bool ok = true;  // block columns strictly increasing within each block row and in [0, K / bw)
  for (int64_t I = 0; I < nbr; ++I)
    for (int64_t j = pc[I]; j < pc[I + 1]; ++j)
      ok &= pcol[j] >= 0 && pcol[j] < K / bw && (j == pc[I] || pcol[j] > pcol[j - 1]);
  TORCH_CHECK_VALUE(ok, "col_indices must be in [0, ", K / bw, ") and strictly increasing within each block row");
  (void)nnzb;
  if (M == 0 || N == 0) return bias_only(M, N, bias, x.options());
  const float* b = bias ? bias->data_ptr<float>() : nullptr;
  const Kernels& kr = kernels_for(pyopt::active_isa());
  const int64_t tile = static_cast<int64_t>(kr.vl) * kr.bsr_nv, Mp = round_up(M, tile);
  at::Tensor xt = transpose_panels(kr, x, Mp, tile), y = at::empty({M, N}, x.options());
  const float* pxt = xt.data_ptr<float>();
  const float* pv = values.data_ptr<float>();
  float* py = y.data_ptr<float>();
  // (m-tile, chunk of block rows) pairs, m-tile major: the threads sweep one m-tile of xt (K x tile floats,
  // in L2) over all block rows before the next; no barrier between m-tiles. Each task's (chunk rows x tile)
  // piece of yt is built in a per-thread buffer and transposed straight into y.
  const int64_t chunk = std::max<int64_t>(1, 64 / bh), nchunks = (nbr + chunk - 1) / chunk, ntiles = Mp / tile;
#pragma omp parallel
  {
    std::vector<float> buf(chunk * bh * tile);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < ntiles * nchunks; ++t) {
      const int64_t m0 = (t / nchunks) * tile, c = t % nchunks, i0 = c * chunk, i1 = std::min(nbr, i0 + chunk);
      for (int64_t I = i0; I < i1; ++I)
        kr.bsr_block_row(pv + pc[I] * bh * bw, pcol + pc[I], pc[I + 1] - pc[I], bh, bw, pxt + m0 * K, tile,
                         b ? b + I * bh : nullptr, buf.data() + (I - i0) * bh * tile, tile);
      kr.transpose(buf.data(), tile, py + m0 * N + i0 * bh, N, (i1 - i0) * bh, std::min(tile, M - m0));
    }
  }
  return y;
}

// Column indices strictly increasing within each row and in [0, K) (the float32 kernels check this inline).
void check_csr_cols(const at::Tensor& crow, const at::Tensor& col, int64_t N, int64_t K) {
  const int64_t* pc = crow.const_data_ptr<int64_t>();
  const int64_t* pk = col.const_data_ptr<int64_t>();
  bool ok = true;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = pc[n]; j < pc[n + 1]; ++j) ok &= pk[j] >= 0 && pk[j] < K && (j == pc[n] || pk[j] > pk[j - 1]);
  TORCH_CHECK_VALUE(ok, "col_indices must be in [0, ", K, ") and strictly increasing within each row");
}

// float64 (gradcheck, high-precision use): the sparse semantics in ATen ops (pyopt/ops/reference/sparse.py
// defines them the same way): y[m, n] = sum over the stored entries (n, k) of w * x[m, k] + b[n], so an inf or
// NaN in a column with no stored weight does not reach y (structural zeros, as in every sparse kernel).
at::Tensor stored_product(const at::Tensor& x2, const at::Tensor& rows, const at::Tensor& cols, const at::Tensor& vals,
                          int64_t N) {
  return at::zeros({x2.size(0), N}, x2.options()).index_add_(1, rows, x2.index_select(1, cols) * vals);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// The CPU kernels of the pyopt:: sparse ops: arguments checked (op_checks.h), x [..., K] of any float dtype
// and layout; float32 / bf16 / fp16 computed by the float32 kernels above, float64 in ATen (stored_product).
// ---------------------------------------------------------------------------------------------------------
at::Tensor masked_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
                         const std::optional<at::Tensor>& bias) {
  checks::sparse_masked_linear(x, weight, mask, bias);
  const int64_t N = weight.size(0);
  if (x.scalar_type() == at::kDouble) {
    const auto nz = mask.nonzero();
    const at::Tensor rows = nz.select(1, 0), cols = nz.select(1, 1);
    at::Tensor y = stored_product(rows_2d(x), rows, cols, weight.index({rows, cols}), N);
    return like_x(bias ? y.add_(*bias) : y, x, N);
  }
  return like_x(masked_linear_f32(as_f32_rows(x), weight.to(at::kFloat).contiguous(), mask.contiguous(), as_f32(bias)),
                x, N);
}

at::Tensor masked_linear_grad_input(const at::Tensor& grad_y, const at::Tensor& weight, const at::Tensor& mask) {
  checks::sparse_masked_linear_grad_input(grad_y, weight, mask);
  const int64_t K = weight.size(1);
  if (grad_y.scalar_type() == at::kDouble) {
    const auto nz = mask.nonzero();
    const at::Tensor rows = nz.select(1, 0), cols = nz.select(1, 1);
    return like_x(stored_product(rows_2d(grad_y), cols, rows, weight.index({rows, cols}), K),
                  grad_y, K);
  }
  return like_x(masked_linear_grad_input_f32(as_f32_rows(grad_y), weight.to(at::kFloat).contiguous(), mask.contiguous()),
                grad_y, K);
}

at::Tensor masked_sddmm(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& mask) {
  checks::sparse_masked_sddmm(grad_y, x, mask);
  const at::Tensor gy2 = rows_2d(grad_y), x2 = rows_2d(x);
  if (x.scalar_type() == at::kDouble) return at::where(mask, at::mm(gy2.t(), x2), at::zeros({}, x.options()));
  return masked_sddmm_f32(gy2.to(at::kFloat).contiguous(), x2.to(at::kFloat).contiguous(), mask.contiguous())
      .to(x.scalar_type());
}

at::Tensor csr_linear(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                      const std::optional<at::Tensor>& bias, int64_t out_features) {
  checks::sparse_csr_linear(x, crow, col, values, bias, out_features);
  check_crow_values(crow, out_features, values.size(0));
  if (x.scalar_type() == at::kDouble) {
    check_csr_cols(crow, col.to(at::kLong).contiguous(), out_features, x.size(-1));
    const at::Tensor rows = at::repeat_interleave(crow.diff());
    at::Tensor y = stored_product(rows_2d(x), rows, col.to(at::kLong), values, out_features);
    return like_x(bias ? y.add_(*bias) : y, x, out_features);
  }
  return like_x(csr_linear_f32(as_f32_rows(x), crow.contiguous(), col.contiguous(), values.to(at::kFloat).contiguous(),
                               as_f32(bias), out_features),
                x, out_features);
}

at::Tensor bsr_linear(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                      const std::optional<at::Tensor>& bias, int64_t out_features) {
  checks::sparse_bsr_linear(x, crow, col, values, bias, out_features);
  const int64_t bh = values.size(1), bw = values.size(2), K = x.size(-1);
  check_crow_values(crow, out_features / bh, values.size(0));
  if (x.scalar_type() == at::kDouble) {
    bsr_linear_f32(at::empty({0, K}, x.options().dtype(at::kFloat)), crow.contiguous(), col.contiguous(),
                   values.to(at::kFloat).contiguous(), std::nullopt, out_features);  // (validates col_indices)
    // every stored block (I, J): y[:, I*bh:(I+1)*bh] += x[:, J*bw:(J+1)*bw] @ block^T
    const at::Tensor xb = x.reshape({leading_rows(x), K / bw, bw});
    const at::Tensor brow = at::repeat_interleave(crow.diff()), gathered = xb.index_select(1, col.to(at::kLong));
    const at::Tensor prod = at::einsum("mjb,jhb->mjh", {gathered, values});  // [M, nnzb, bh]
    at::Tensor y = at::zeros({xb.size(0), out_features / bh, bh}, x.options()).index_add_(1, brow, prod);
    y = y.view({xb.size(0), out_features});
    return like_x(bias ? y.add_(*bias) : y, x, out_features);
  }
  return like_x(bsr_linear_f32(as_f32_rows(x), crow.contiguous(), col.contiguous(), values.to(at::kFloat).contiguous(),
                               as_f32(bias), out_features),
                x, out_features);
}

}  // namespace pyopt::sparse

TORCH_LIBRARY_IMPL(pyopt, CPU, m) {
  namespace sp = pyopt::sparse;
  m.impl("sparse_masked_linear", &sp::masked_linear);
  m.impl("sparse_masked_linear_grad_input", &sp::masked_linear_grad_input);
  m.impl("sparse_masked_sddmm", &sp::masked_sddmm);
  m.impl("sparse_csr_linear", &sp::csr_linear);
  m.impl("sparse_bsr_linear", &sp::bsr_linear);
}
