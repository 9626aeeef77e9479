// The AMX tier of the int8 GEMM with the fused dequant epilogue (contract: int8_gemm.h / int8_gemm_amx.h).
//
// Written once, templated on a tile policy (amx_tile.h): HardwareTiles (the instructions; the worker carries
// PYOPT_TARGET_AMX, so the epilogue compiles to AVX-512) or EmulatedTiles (a plain-C++ model; the same worker
// compiled for baseline x86-64, which the tests run on every machine). Everything but the tile instructions
// themselves, i.e. the layouts, blocking, remainders, K split and epilogue, is shared code.
//
// Exactness. tdpbssd multiplies signed by signed bytes into wrapping int32 sums (no saturation), so the
// activations (q in [-127, 127]) and the weights (any int8, -128 included) go in as they are: no +128 shift and
// no column correction as on the VNNI tier. The int32 sums are exact while K <= kMaxExactK (127 * 128 * K fits);
// beyond that K is split into chunks of kChunkBlocks tiles whose int32 tile sums are added in int64. The
// epilogue is the reference's float32 arithmetic, in its order: float(acc) * sx[m] * sw[n] (+ bias[n]), where
// float(acc) is one correct rounding of the exact sum (through double for int64, as the reference's float64
// acc .float()). The build has -ffp-contract=off, so the compiler never fuses the product and the add.
//
// Layouts (per call; nothing is cached across calls yet):
//   A: the quantised activations, written by `fill` straight into the tile-source buffer: row-major, Mp = M
//      rounded up to 16 rows, Kp = K rounded up to 64 bytes per row, zero-padded (padding adds 0 to every sum;
//      padded rows have scale 0 and are never stored). tileloadd reads a 16 x 64 A tile from it with the row
//      stride Kp: the quantisation is the packing.
//   B: the weight in VNNI-4 tiles: panels of 16 output columns, per panel Kb = Kp / 64 tiles of 16 rows x 64
//      bytes, tile row g holding column c's bytes w[c, 64 kb + 4g .. + 3] at 4c (zero past N and K), Np = N
//      rounded up to 32 columns. Packed once per call, in parallel, before the GEMM.
// Blocking: tiles C0..C3 hold a 32 x 32 int32 output block (2 x 2 tiles), A4, A5 its two 16-row A tiles and
// B6, B7 its two B panels: per 64 k, 4 tile loads and 4 tdpbssd (the register file's 8 tiles). The last <= 16
// rows of a block use C0, C1, A4, B6, B7 only. Work items: MC rows x a range of 32-column panel pairs; each
// thread loads its tile config once (ldtilecfg is per thread) and releases the tiles when done.
#include "cpu/int8_gemm_amx.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "cpu/amx_tile.h"
#include "cpu/int8_common.h"
#include "cpu/quant_simd.h"
#include "op_checks.h"

namespace pyopt::int8::amx {
namespace {

using pyopt::amx::EmulatedTiles;
using pyopt::amx::TileConfig;

constexpr int64_t kKTile = 64;                                       // k per A / B tile (bytes of an A row)
constexpr int64_t kTileBytes = 16 * 64;                              // one B tile
constexpr int64_t kChunkBlocks = pyopt::int8::kMaxExactK / kKTile;  // k tiles whose int32 sums are exact
static_assert(kChunkBlocks * kKTile * 127 * 128 <= INT32_MAX, "a K chunk's int32 sums must be exact");

inline int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

#define PYOPT_ALWAYS_INLINE __attribute__((always_inline)) inline

// 64-byte aligned scratch (tileloadd needs no alignment; aligned rows keep each tile row in one cache line).
struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
template <typename T>
std::unique_ptr<T[], FreeDeleter> aligned_array(int64_t n) {
  const size_t bytes = static_cast<size_t>(round_up(std::max<int64_t>(n, 1) * sizeof(T), 64));
  T* p = static_cast<T*>(std::aligned_alloc(64, bytes));
  TORCH_CHECK(p != nullptr, "amx int8 gemm: out of memory (", bytes, " bytes)");
  return std::unique_ptr<T[], FreeDeleter>(p);
}

// Every tile 16 rows x 64 bytes: A (16 rows x 64 k), B (16 k-quads x 16 columns), C (16 x 16 int32).
TileConfig full_config() {
  TileConfig c;
  for (int t = 0; t < pyopt::amx::kTiles; ++t) c.rows[t] = 16, c.colsb[t] = 64;
  return c;
}

// Columns [n0, n0 + 16) of w -> one panel of Kb VNNI-4 tiles at dst (layout above).
void pack_panel(const int8_t* w, int64_t ldw, int64_t N, int64_t K, int64_t n0, int64_t Kb, int8_t* dst) {
  std::memset(dst, 0, Kb * kTileBytes);
  for (int64_t c = 0; c < std::min<int64_t>(16, N - n0); ++c) {
    const int8_t* row = w + (n0 + c) * ldw;
    for (int64_t k = 0; k < K; k += 4) {
      int8_t* d = dst + (k / kKTile) * kTileBytes + (k % kKTile) / 4 * 64 + 4 * c;
      std::memcpy(d, row + k, static_cast<size_t>(std::min<int64_t>(4, K - k)));
    }
  }
}

struct Problem {
  int64_t M, N, K, Kp, Kb;
  const int8_t* a;  // Mp x Kp, row stride Kp
  const float* sx;  // Mp
  const int8_t* b;  // Np / 16 panels of Kb tiles
  const float* sw;
  const float* bias;
  void* out;
  int64_t ldo;
  int64_t mc, nm, pairs_per_item;  // rows per item, row blocks, 32-column panel pairs per item
};

// c (32 x 32 int32, row stride 32) = rows a[0 .. 16 MT) x the two panels b0, b1 over k tiles [kb0, kb1).
template <class Ops, int MT>
PYOPT_ALWAYS_INLINE void block_dot(Ops& ops, const int8_t* a, int64_t lda, const int8_t* b0, const int8_t* b1,
                                   int64_t kb0, int64_t kb1, int32_t* c) {
  ops.template zero<0>();
  ops.template zero<1>();
  if constexpr (MT == 2) {
    ops.template zero<2>();
    ops.template zero<3>();
  }
  for (int64_t kb = kb0; kb < kb1; ++kb) {
    ops.template load<4>(a + kb * kKTile, lda);
    ops.template load<6>(b0 + kb * kTileBytes, 64);
    ops.template load<7>(b1 + kb * kTileBytes, 64);
    ops.template dpbssd<0, 4, 6>();
    ops.template dpbssd<1, 4, 7>();
    if constexpr (MT == 2) {
      ops.template load<5>(a + 16 * lda + kb * kKTile, lda);
      ops.template dpbssd<2, 5, 6>();
      ops.template dpbssd<3, 5, 7>();
    }
  }
  ops.template store<0>(c, 32 * 4);
  ops.template store<1>(c + 16, 32 * 4);
  if constexpr (MT == 2) {
    ops.template store<2>(c + 16 * 32, 32 * 4);
    ops.template store<3>(c + 16 * 32 + 16, 32 * 4);
  }
}

// The reference's float32 epilogue on `rows` x `cols` sums (row stride 32): one rounding of the exact sum, then
// * sx[r], * sw[n], + bias[n], then the output dtype's round to nearest even.
template <typename Acc, typename T>
PYOPT_ALWAYS_INLINE void epilogue(const Acc* c, int64_t rows, int64_t cols, const float* sx, const float* sw,
                                  const float* bias, T* out, int64_t ldo) {
  for (int64_t r = 0; r < rows; ++r) {
    const Acc* cr = c + r * 32;
    const float s = sx[r];
    T* o = out + r * ldo;
    for (int64_t n = 0; n < cols; ++n) {
      float v;
      if constexpr (std::is_same_v<Acc, int64_t>) v = static_cast<float>(static_cast<double>(cr[n]));
      else v = static_cast<float>(cr[n]);
      v = v * s;
      v = v * sw[n];
      if (bias) v = v + bias[n];
      o[n] = static_cast<T>(v);
    }
  }
}

// One 16 MT-row x 32-column output block (rows m, columns n of the problem).
template <class Ops, int MT, typename T>
PYOPT_ALWAYS_INLINE void output_block(Ops& ops, const Problem& p, int64_t m, int64_t n, int32_t* c32,
                                      int64_t* c64) {
  const int8_t* a = p.a + m * p.Kp;
  const int8_t* b0 = p.b + (n / 16) * p.Kb * kTileBytes;
  const int8_t* b1 = b0 + p.Kb * kTileBytes;
  const int64_t rows = std::min<int64_t>(16 * MT, p.M - m), cols = std::min<int64_t>(32, p.N - n);
  T* out = static_cast<T*>(p.out) + m * p.ldo + n;
  const float* bias = p.bias ? p.bias + n : nullptr;
  if (p.Kb <= kChunkBlocks) {
    block_dot<Ops, MT>(ops, a, p.Kp, b0, b1, 0, p.Kb, c32);
    epilogue<int32_t, T>(c32, rows, cols, p.sx + m, p.sw + n, bias, out, p.ldo);
    return;
  }
  std::fill(c64, c64 + 32 * 32, int64_t{0});
  for (int64_t kb = 0; kb < p.Kb; kb += kChunkBlocks) {
    block_dot<Ops, MT>(ops, a, p.Kp, b0, b1, kb, std::min(p.Kb, kb + kChunkBlocks), c32);
    for (int64_t i = 0; i < 16 * MT * 32; ++i) c64[i] += c32[i];
  }
  epilogue<int64_t, T>(c64, rows, cols, p.sx + m, p.sw + n, bias, out, p.ldo);
}

// Items [i0, i1) on this thread, between its own ldtilecfg and tilerelease.
template <class Ops, typename T>
PYOPT_ALWAYS_INLINE void run_items(const Problem& p, int64_t i0, int64_t i1) {
  alignas(64) int32_t c32[32 * 32];
  std::unique_ptr<int64_t[]> c64(p.Kb > kChunkBlocks ? new int64_t[32 * 32] : nullptr);
  const TileConfig cfg = full_config();
  Ops ops;
  ops.config(cfg);
  const int64_t np = round_up(p.N, 32);
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t m0 = (i % p.nm) * p.mc, m1 = std::min(p.M, m0 + p.mc);
    const int64_t n0 = (i / p.nm) * p.pairs_per_item * 32, n1 = std::min(np, n0 + p.pairs_per_item * 32);
    for (int64_t n = n0; n < n1; n += 32) {  // the pair's B panels stay in L2 across the item's rows
      int64_t m = m0;
      for (; m + 16 < m1; m += 32) output_block<Ops, 2, T>(ops, p, m, n, c32, c64.get());
      if (m < m1) output_block<Ops, 1, T>(ops, p, m, n, c32, c64.get());
    }
  }
  ops.release();
}

template <typename T>
void worker_emulated(const Problem& p, int64_t i0, int64_t i1) {
  run_items<EmulatedTiles, T>(p, i0, i1);
}

#if PYOPT_AMX
template <typename T>
PYOPT_TARGET_AMX void worker_hardware(const Problem& p, int64_t i0, int64_t i1) {
  run_items<pyopt::amx::HardwareTiles, T>(p, i0, i1);
}
#endif

// Quantise + pack A, pack B, then the items in parallel on `worker`.
template <typename T>
void gemm(int64_t M, int64_t N, int64_t K, RowFill fill, const int8_t* w, int64_t ldw, const float* sw,
          const float* bias, T* out, int64_t ldo, void (*worker)(const Problem&, int64_t, int64_t)) {
  if (M <= 0 || N <= 0) return;
  const int64_t Kp = round_up(std::max<int64_t>(K, 1), kKTile), Kb = Kp / kKTile;
  const int64_t Mp = round_up(M, 16), Np = round_up(N, 32);
  auto a = aligned_array<int8_t>(Mp * Kp);
  auto sx = aligned_array<float>(Mp);
  at::parallel_for(0, Mp / 16, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t m0 = 16 * g, rows = std::min<int64_t>(16, M - m0);
      int8_t* dst = a.get() + m0 * Kp;
      fill(m0, rows, dst, Kp, sx.get() + m0);
      for (int64_t r = 0; r < 16; ++r) {
        if (r < rows) {
          std::memset(dst + r * Kp + K, 0, Kp - K);
        } else {
          std::memset(dst + r * Kp, 0, Kp);
          sx[m0 + r] = 0.0f;
        }
      }
    }
  });
  auto b = aligned_array<int8_t>(Np / 16 * Kb * kTileBytes);
  at::parallel_for(0, Np / 16, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t q = p0; q < p1; ++q) pack_panel(w, ldw, N, K, 16 * q, Kb, b.get() + q * Kb * kTileBytes);
  });
  // Items: blocks of mc rows (A block <= 1 MiB: in L2 while the panels pass) x runs of panel pairs; the columns
  // are split too when there are too few row blocks to give each thread ~4 items.
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t mc = std::clamp<int64_t>((int64_t{1} << 20) / Kp / 32 * 32, 32, 256);
  const int64_t nm = (M + mc - 1) / mc, pairs = Np / 32;
  const int64_t nn = std::min(pairs, nm >= 4 * threads ? int64_t{1} : (4 * threads + nm - 1) / nm);
  const int64_t pairs_per_item = (pairs + nn - 1) / nn;
  const int64_t items = nm * ((pairs + pairs_per_item - 1) / pairs_per_item);
  const Problem p{M, N, K, Kp, Kb, a.get(), sx.get(), b.get(), sw, bias, out, ldo, mc, nm, pairs_per_item};
  at::parallel_for(0, items, 1, [&](int64_t i0, int64_t i1) { worker(p, i0, i1); });
}

}  // namespace

bool hardware_available() {
#if PYOPT_AMX
  return pyopt::detected_isa() >= Isa::Amx;
#else
  return false;
#endif
}

bool& emulate_on_this_thread() {
  thread_local bool on = false;
  return on;
}

template <typename T>
void gemm_dequant(int64_t M, int64_t N, int64_t K, RowFill fill, const int8_t* w, int64_t ldw, const float* sw,
                  const float* bias, T* out, int64_t ldo) {
  if (emulate_on_this_thread()) return gemm<T>(M, N, K, fill, w, ldw, sw, bias, out, ldo, &worker_emulated<T>);
#if PYOPT_AMX
  TORCH_CHECK(hardware_available(), "int8::amx::gemm_dequant: this CPU or OS does not offer AMX");
  gemm<T>(M, N, K, fill, w, ldw, sw, bias, out, ldo, &worker_hardware<T>);
#else
  TORCH_CHECK(false, "int8::amx::gemm_dequant: this build has no AMX kernels");
#endif
}

template <typename T>
void gemm_dequant_emulated(int64_t M, int64_t N, int64_t K, RowFill fill, const int8_t* w, int64_t ldw,
                           const float* sw, const float* bias, T* out, int64_t ldo) {
  gemm<T>(M, N, K, fill, w, ldw, sw, bias, out, ldo, &worker_emulated<T>);
}

#define PYOPT_INSTANTIATE(T)                                                                                    \
  template void gemm_dequant<T>(int64_t, int64_t, int64_t, RowFill, const int8_t*, int64_t, const float*,       \
                                const float*, T*, int64_t);                                                     \
  template void gemm_dequant_emulated<T>(int64_t, int64_t, int64_t, RowFill, const int8_t*, int64_t, const float*, \
                                         const float*, T*, int64_t);
PYOPT_INSTANTIATE(float)
PYOPT_INSTANTIATE(c10::BFloat16)
PYOPT_INSTANTIATE(c10::Half)
#undef PYOPT_INSTANTIATE

// ---------------------------------------------------------------------------------------------------------
// Test entry points
// ---------------------------------------------------------------------------------------------------------
at::Tensor linear_dynamic(const at::Tensor& x_in, const at::Tensor& w_in, const at::Tensor& ws_in,
                          const c10::optional<at::Tensor>& bias_in, bool emulated) {
  pyopt::checks::int8_linear(x_in, w_in, ws_in, bias_in);
  TORCH_CHECK_VALUE(x_in.device().is_cpu() && w_in.device().is_cpu() && ws_in.device().is_cpu() &&
                        (!bias_in || bias_in->device().is_cpu()),
                    "amx_emulated_gemm: every tensor must be on the CPU");
  TORCH_CHECK_VALUE(emulated || hardware_available(),
                    "amx_emulated_gemm: emulated=False needs a CPU with AMX and the OS's permission to use it");
  const LinearOperands ops = linear_operands(x_in, w_in, ws_in, bias_in);
  const at::Tensor &x = ops.x, &w_q = ops.w, &w_scales = ops.sw;
  const c10::optional<at::Tensor>& bias = ops.bias;
  const int64_t M = x.size(0), K = x.size(1), N = w_q.size(0);
  auto out = at::empty({M, N}, x.options());
  const Isa isa = pyopt::active_isa();
  PYOPT_FLOAT_DISPATCH(x.scalar_type(), [&] {
    const scalar_t* px = x.data_ptr<scalar_t>();
    auto fill = [&](int64_t m0, int64_t rows, int8_t* q, int64_t ld, float* sx) {
      for (int64_t r = 0; r < rows; ++r)
        sx[r] = pyopt::quant::quantize_row_per_token(isa, px + (m0 + r) * K, q + r * ld, K);
    };
    const float* pb = bias ? bias->data_ptr<float>() : nullptr;
    if (emulated)
      gemm_dequant_emulated<scalar_t>(M, N, K, fill, w_q.data_ptr<int8_t>(), K, w_scales.data_ptr<float>(), pb,
                                      out.data_ptr<scalar_t>(), N);
    else
      gemm_dequant<scalar_t>(M, N, K, fill, w_q.data_ptr<int8_t>(), K, w_scales.data_ptr<float>(), pb,
                             out.data_ptr<scalar_t>(), N);
  });
  return out.view(linear_out_shape(x_in, N));
}

at::Tensor emulated_tile_dp(const std::string& op, const at::Tensor& a, const at::Tensor& b, const at::Tensor& c) {
  TORCH_CHECK_VALUE(op == "tdpbssd" || op == "tdpbusd", "op must be 'tdpbssd' or 'tdpbusd', got '", op, "'");
  TORCH_CHECK_TYPE(a.scalar_type() == (op == "tdpbssd" ? at::kChar : at::kByte), "a must be ",
                   op == "tdpbssd" ? "int8" : "uint8", " for ", op, ", got ", a.scalar_type());
  TORCH_CHECK_TYPE(b.scalar_type() == at::kChar, "b must be int8, got ", b.scalar_type());
  TORCH_CHECK_TYPE(c.scalar_type() == at::kInt, "c must be int32, got ", c.scalar_type());
  auto check = [](const at::Tensor& t, const char* name) {
    TORCH_CHECK_VALUE(t.dim() == 2 && t.device().is_cpu() && (t.size(0) <= 1 || t.size(1) <= 1 || t.stride(1) == 1),
                      name, " must be a 2-D CPU tensor with contiguous rows, got shape ", t.sizes());
    // the emulator itself enforces the hardware limits (16 rows x 64 bytes); this only keeps the config fields
    // (8 / 16 bits) from truncating
    TORCH_CHECK_VALUE(t.size(0) <= 255 && t.size(1) * t.element_size() <= 4096, name, " is too large: ", t.sizes());
  };
  check(a, "a"), check(b, "b"), check(c, "c");
  TileConfig cfg;
  cfg.rows[0] = c.size(0), cfg.colsb[0] = c.size(1) * 4;
  cfg.rows[4] = a.size(0), cfg.colsb[4] = a.size(1);
  cfg.rows[6] = b.size(0), cfg.colsb[6] = b.size(1);
  auto res = c.clone(at::MemoryFormat::Contiguous);
  EmulatedTiles tiles;
  tiles.config(cfg);
  tiles.load<0>(res.data_ptr(), res.size(1) * 4);
  tiles.load<4>(a.data_ptr(), a.size(0) > 1 ? a.stride(0) : a.size(1));
  tiles.load<6>(b.data_ptr(), b.size(0) > 1 ? b.stride(0) : b.size(1));
  if (op == "tdpbssd") tiles.dpbssd<0, 4, 6>();
  else tiles.dpbusd<0, 4, 6>();
  tiles.store<0>(res.data_ptr(), res.size(1) * 4);
  tiles.release();
  return res;
}

}  // namespace pyopt::int8::amx
