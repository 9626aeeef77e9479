// Native int8 GEMMs with the dequant epilogue fused on the accumulators:
//
//   out[m, n] = float(sum_k q[m, k] * w[n, k]) * sx[m] * sw[n] + bias[n]      (out: row stride ldo, type T)
//
// q (int8 in [-127, 127], one scale sx[m] per row) is produced on the fly by `fill`, one block of rows at a
// time, into a per-thread buffer that stays in L2: the caller quantises (linear) or quantises + im2cols (conv)
// there, so for large M neither the quantised activations nor an int32 accumulator matrix is ever written to
// memory. w is the plain int8 weight [N, K] (row stride ldw, any int8 value including -128): nothing is
// prepacked or cached outside a call, so the modules' buffers and state_dicts stay as they are.
//
// Tiers (gemm_dequant picks by `isa`):
//   amx             int8_gemm_amx.cpp: tdpbssd on 16 x 64-byte tiles (weights packed per call into VNNI-4 tiles);
//   avx512_vnni     int8_gemm.cpp: vpdpbusd, activations shifted to u8 and a per-column correction;
//   avx2 / avx512   int8_gemm_avx2.cpp: vpmaddwd on sign-extended int16 (exact for every int8 pair), the
//                   weight packed per call into 16-column panels; small M: per-row dot products straight
//                   from the plain weight (vpmaddubsw on |w| and sign(w) * q, exact because |q| <= 127).
// Every tier is exact (bit-identical to the float64 reference): its int32 sums are exact while the true sum
// fits in int32, which 127 * 128 * K bounds for K <= kMaxExactK; beyond that gemm_dequant splits K into
// blocks of int32 partial sums added in int64 (any tier, scalar included).
#pragma once
#include <c10/util/FunctionRef.h>

#include <cstdint>

#include "cpu/cpu_isa.h"

namespace pyopt::int8 {

// fill(m0, rows, q, ld, sx): write rows [m0, m0 + rows) of the int8 activations to q (row r at q + r * ld,
// only the first K bytes of each row are read) and their scales to sx[0 .. rows).
using RowFill = c10::function_ref<void(int64_t m0, int64_t rows, int8_t* q, int64_t ld, float* sx)>;

// The AVX2 tier's tunables: chosen per machine by `pyopt tune` (pyopt/tuning.py: a short measured search,
// cached on disk per CPU model and pyopt version, applied once at import). gemm_dequant reads one copy per call
// (under a mutex) and passes it down, so a kernel never sees a change mid-call; every value in range gives the
// same, exact result (tests/test_int8_tuning.py), only the speed differs.
struct Tuning {
  int64_t block_kib = 0;     // packed activation rows per work item, in KiB (0: half the L2 of a core)
  int64_t dot_max_m = 32;    // up to this many rows (with K >= 32 M): dot products on the plain weight
  int64_t chunk_panels = 8;  // columns claimed per work chunk, in 16-column panels (large M)
  int64_t prefetch = 1;      // 1: prefetch the next weight panel into L2 over the current panel's tiles
};
Tuning tuning();
// Checks the ranges (ValueError naming the field) and installs t for the calls that start afterwards.
void set_tuning(const Tuning& t);

// The largest K whose every sum fits in int32 whatever the values: 127 * 128 * K <= 2^31 - 1.
constexpr int64_t kMaxExactK = 132104;

// Whether this build and `isa` run a native GEMM tier (AVX2 and up on x86-64).
inline bool available(Isa isa) { return PYOPT_X86 && isa >= Isa::Avx2; }

// Whether the dynamic int8 layers should call gemm_dequant for an M x K activation on `isa`: any native tier,
// except M == 1 on VNNI (oneDNN's GEMV behind at::_int_mm measured 2-4x faster there than 16-row tiles) and on
// AMX (the same choice, not measured there yet), and any tier once K passes kMaxExactK (at::_int_mm's int32
// sums would wrap; gemm_dequant stays exact).
inline bool wanted(Isa isa, int64_t M, int64_t K) {
  if (K > kMaxExactK) return true;
  return available(isa) && K > 0 && (isa < Isa::Avx512Vnni || M > 1);
}

// T: float, c10::BFloat16 or c10::Half. bias may be null. Parallel over row blocks x column blocks.
template <typename T>
void gemm_dequant(Isa isa, int64_t M, int64_t N, int64_t K, RowFill fill, const int8_t* w, int64_t ldw,
                  const float* sw, const float* bias, T* out, int64_t ldo);

// The tiers behind gemm_dequant (K <= kMaxExactK), one namespace per ISA with the same function names; chosen
// once per call by gemm_dequant's switch on the Isa. int8_gemm.cpp / int8_gemm_avx2.cpp.
namespace avx512vnni {
template <typename T>
void gemm_dequant(int64_t M, int64_t N, int64_t K, RowFill fill, const int8_t* w, int64_t ldw, const float* sw,
                  const float* bias, T* out, int64_t ldo);
}  // namespace avx512vnni
namespace avx2 {
template <typename T>
void gemm_dequant(int64_t M, int64_t N, int64_t K, RowFill fill, const int8_t* w, int64_t ldw, const float* sw,
                  const float* bias, T* out, int64_t ldo, const Tuning& t);
// acc[m, n] (row stride ldc) = sum_k q[m, k] * w[n, k] in wrapping int32, the AVX2 tier's kernels (exact for
// K <= kMaxExactK): the building block of the K-split path.
void gemm_int32(int64_t M, int64_t N, int64_t K, RowFill fill, const int8_t* w, int64_t ldw, int32_t* acc,
                int64_t ldc, const Tuning& t);
}  // namespace avx2

}  // namespace pyopt::int8
