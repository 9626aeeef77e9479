// Native AVX512-VNNI int8 GEMM with the dequant epilogue fused on the accumulators (csrc/cpu/int8_gemm.cpp).
//
//   out[m, n] = float(sum_k q[m, k] * w[n, k]) * sx[m] * sw[n] + bias[n]      (out: row stride ldo, type T)
//
// q (int8, ±127, one scale sx[m] per row) is produced on the fly by `fill`, one block of rows at a time, into a
// per-thread buffer that stays in L2: the caller quantises (linear) or quantises + im2cols (conv) there, so
// for large M neither the quantised activations nor an int32 accumulator matrix is ever written to memory
// (small M, split over columns instead of rows, packs all its rows once into one shared buffer).
// w is the plain int8 weight [N, K] (row stride ldw): no prepacking, so the modules' buffers stay as they are.
#pragma once
#include <c10/util/FunctionRef.h>

#include <cstdint>

#include "cpu/cpu_isa.h"

namespace pyopt::int8gemm {

// fill(m0, rows, q, ld, sx): write rows [m0, m0 + rows) of the int8 activations to q (row r at q + r * ld,
// only the first K bytes of each row are read) and their scales to sx[0 .. rows).
using RowFill = c10::function_ref<void(int64_t m0, int64_t rows, int8_t* q, int64_t ld, float* sx)>;

// Whether this build and `isa` can run the native GEMM (AVX512-VNNI).
inline bool available(Isa isa) { return PYOPT_X86 && isa >= Isa::Avx512Vnni; }

// T: float, c10::BFloat16 or c10::Half. bias may be null. Parallel over row blocks x column blocks.
template <typename T>
void gemm_dequant(int64_t M, int64_t N, int64_t K, RowFill fill, const int8_t* w, int64_t ldw, const float* sw,
                  const float* bias, T* out, int64_t ldo);

}  // namespace pyopt::int8gemm
