// The AMX tier of the int8 GEMM (int8_gemm_amx.cpp): the contract of int8_gemm.h's gemm_dequant,
//   out[m, n] = float(sum_k q[m, k] * w[n, k]) * sx[m] * sw[n] + bias[n],
// bit-identical to the float64 reference, for any K (it splits K itself past kMaxExactK).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <string>

#include "cpu/int8_gemm.h"

namespace pyopt::int8::amx {

using RowFill = pyopt::int8::RowFill;

// Whether the tile instructions can run in this process (build, CPUID, XCR0 and the OS's permission).
bool hardware_available();

// Test hook: while set on a thread, int8::gemm_dequant called there runs this tier's kernel on the tile
// emulator, whatever the ISA tier (the ops' own quantisers keep their tier), so the tests reach the AMX code
// through the real ops (linear and conv) on any CPU. Off by default; pyopt._C.amx_set_emulation sets it.
bool& emulate_on_this_thread();

// The kernel on the tile instructions (needs hardware_available()), or on the emulator where the hook is set.
template <typename T>
void gemm_dequant(int64_t M, int64_t N, int64_t K, RowFill fill, const int8_t* w, int64_t ldw, const float* sw,
                  const float* bias, T* out, int64_t ldo);

// The same kernel on amx_tile.h's emulator: runs on any CPU (tests).
template <typename T>
void gemm_dequant_emulated(int64_t M, int64_t N, int64_t K, RowFill fill, const int8_t* w, int64_t ldw,
                           const float* sw, const float* bias, T* out, int64_t ldo);

// Test entry points (pyopt._C.amx_emulated_gemm / amx_emulated_tile_dp): the dynamic W8A8 linear on a 2-D
// activation through the kernel (emulated, or the hardware when `emulated` is false), and one tdpbssd / tdpbusd
// of the emulator on tensors shaped like its tiles.
at::Tensor linear_dynamic(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scales,
                          const c10::optional<at::Tensor>& bias, bool emulated);
at::Tensor emulated_tile_dp(const std::string& op, const at::Tensor& a, const at::Tensor& b, const at::Tensor& c);

}  // namespace pyopt::int8::amx
