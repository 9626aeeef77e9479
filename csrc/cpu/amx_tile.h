// The AMX tile operations the int8 kernels use, twice: HardwareTiles issues the real instructions, EmulatedTiles
// is a plain-C++ model of them on arrays. The AMX GEMM (int8_gemm_amx.cpp) is written once, templated on one of
// these policies, so the packing, blocking, remainder and epilogue code that runs on an AMX machine is the code
// the tests run everywhere (through the emulator).
//
// The model (Intel SDM vol. 2, TILELOADD / TILESTORED / TILEZERO / TDPBSSD / TDPBUSD; Intel AMX palette 1):
//   - 8 tiles tmm0..tmm7, each up to 16 rows x 64 bytes; a tile's shape (rows, bytes per row `colsb`) comes from
//     the 64-byte config that ldtilecfg loads (palette 1; unused tiles 0 x 0). The config is per thread.
//   - tileloadd t, [base + stride]: row r (< rows) = colsb bytes at base + r * stride; the rest of the tile is
//     zeroed. tilestored writes the configured rows x colsb bytes back. tilezero zeroes the tile.
//   - tdpbssd c, a, b (s8 x s8 -> s32) / tdpbusd (u8 x s8): with a M x 4K bytes, b K x 4N bytes ("VNNI-4": row
//     k holds column n's four consecutive k values at bytes 4n .. 4n + 3) and c M x N int32,
//       c[m][n] += sum_{k < K} sum_{i < 4} a[m][4k + i] * b[k][4n + i]
//     in wrapping 32-bit arithmetic, no saturation. The instruction faults (#UD) unless c.rows == a.rows,
//     c.colsb == b.colsb, a.colsb == 4 * b.rows and the three tiles are distinct: the model raises instead.
// tdpbf16ps is not modelled: no kernel uses it yet.
#pragma once
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstring>

#include "cpu/cpu_isa.h"

#if PYOPT_AMX
#include <immintrin.h>
#endif

namespace pyopt::amx {

constexpr int kTiles = 8;
constexpr int kMaxRows = 16;
constexpr int kMaxColsb = 64;

// The ldtilecfg operand (palette 1).
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64, "ldtilecfg reads 64 bytes");

// The plain-C++ model. One object per thread, as the tile state is.
class EmulatedTiles {
 public:
  void config(const TileConfig& c) {
    TORCH_CHECK(c.palette == 1, "amx emulator: only palette 1 is modelled");
    for (int t = 0; t < 16; ++t) {
      const bool used = t < kTiles;
      TORCH_CHECK(used ? c.rows[t] <= kMaxRows && c.colsb[t] <= kMaxColsb : c.rows[t] == 0 && c.colsb[t] == 0,
                  "amx emulator: tile ", t, " configured as ", int(c.rows[t]), " x ", c.colsb[t],
                  " bytes (at most 8 tiles of 16 x 64)");
    }
    cfg_ = c;
    configured_ = true;
    std::memset(data_, 0, sizeof(data_));
  }
  void release() {
    configured_ = false;
    std::memset(data_, 0, sizeof(data_));
  }
  template <int T>
  void load(const void* base, int64_t stride) {
    check_tile<T>();
    std::memset(data_[T], 0, sizeof(data_[T]));
    for (int r = 0; r < cfg_.rows[T]; ++r)
      std::memcpy(data_[T][r], static_cast<const uint8_t*>(base) + r * stride, cfg_.colsb[T]);
  }
  template <int T>
  void store(void* base, int64_t stride) const {
    check_tile<T>();
    for (int r = 0; r < cfg_.rows[T]; ++r)
      std::memcpy(static_cast<uint8_t*>(base) + r * stride, data_[T][r], cfg_.colsb[T]);
  }
  template <int T>
  void zero() {
    check_tile<T>();
    std::memset(data_[T], 0, sizeof(data_[T]));
  }
  template <int C, int A, int B>
  void dpbssd() {
    dp<C, A, B, true>();
  }
  template <int C, int A, int B>
  void dpbusd() {
    dp<C, A, B, false>();
  }

 private:
  template <int T>
  void check_tile() const {
    static_assert(T >= 0 && T < kTiles, "AMX has tiles tmm0 .. tmm7");
    TORCH_CHECK(configured_, "amx emulator: tile instruction before ldtilecfg");
    TORCH_CHECK(cfg_.rows[T] > 0 && cfg_.colsb[T] > 0, "amx emulator: tile ", T, " is not configured");
  }
  template <int C, int A, int B, bool kSignedA>
  void dp() {
    static_assert(C != A && C != B && A != B, "tdpb*d needs three distinct tiles");
    check_tile<C>(), check_tile<A>(), check_tile<B>();
    const int M = cfg_.rows[C], N = cfg_.colsb[C] / 4, K = cfg_.colsb[A] / 4;
    TORCH_CHECK(cfg_.rows[A] == M && cfg_.colsb[B] == cfg_.colsb[C] && cfg_.rows[B] == K &&
                    cfg_.colsb[A] % 4 == 0 && cfg_.colsb[C] % 4 == 0,
                "amx emulator: tdpb*d shapes do not match (#UD): c ", M, " x ", cfg_.colsb[C], ", a ",
                int(cfg_.rows[A]), " x ", cfg_.colsb[A], ", b ", int(cfg_.rows[B]), " x ", cfg_.colsb[B]);
    for (int m = 0; m < M; ++m)
      for (int n = 0; n < N; ++n) {
        int32_t acc;
        std::memcpy(&acc, data_[C][m] + 4 * n, 4);
        uint32_t sum = static_cast<uint32_t>(acc);  // wrapping 32-bit arithmetic, as the hardware
        for (int k = 0; k < K; ++k)
          for (int i = 0; i < 4; ++i) {
            const uint8_t ab = data_[A][m][4 * k + i];
            const int32_t av = kSignedA ? int32_t(static_cast<int8_t>(ab)) : int32_t(ab);
            const int32_t bv = static_cast<int8_t>(data_[B][k][4 * n + i]);
            sum += static_cast<uint32_t>(av * bv);
          }
        acc = static_cast<int32_t>(sum);
        std::memcpy(data_[C][m] + 4 * n, &acc, 4);
      }
  }

  TileConfig cfg_;
  bool configured_ = false;
  uint8_t data_[kTiles][kMaxRows][kMaxColsb] = {};
};

#if PYOPT_AMX
// The instructions. GCC's and clang's tile intrinsics take the tile number as a literal (GCC pastes it into the
// asm string), so a template index is turned into one here. The kernels use a fixed tile assignment: C tiles
// 0..3, A tiles 4 and 5, B tiles 6 and 7; dpbssd accepts exactly those triples.
#define PYOPT_TILE_1(T, OP, ...)             \
  if constexpr ((T) == 0) OP(0, __VA_ARGS__); \
  else if constexpr ((T) == 1) OP(1, __VA_ARGS__); \
  else if constexpr ((T) == 2) OP(2, __VA_ARGS__); \
  else if constexpr ((T) == 3) OP(3, __VA_ARGS__); \
  else if constexpr ((T) == 4) OP(4, __VA_ARGS__); \
  else if constexpr ((T) == 5) OP(5, __VA_ARGS__); \
  else if constexpr ((T) == 6) OP(6, __VA_ARGS__); \
  else OP(7, __VA_ARGS__);
#define PYOPT_TILE_DP_B(OP, c, a, B) \
  if constexpr ((B) == 6) OP(c, a, 6); \
  else OP(c, a, 7);
#define PYOPT_TILE_DP_A(OP, c, A, B) \
  if constexpr ((A) == 4) {          \
    PYOPT_TILE_DP_B(OP, c, 4, B)     \
  } else {                           \
    PYOPT_TILE_DP_B(OP, c, 5, B)     \
  }
#define PYOPT_TILE_DP(OP, C, A, B)                                     \
  static_assert((C) >= 0 && (C) < 4 && ((A) == 4 || (A) == 5) && ((B) == 6 || (B) == 7), \
                "the AMX kernels use C tiles 0..3, A tiles 4, 5 and B tiles 6, 7");        \
  if constexpr ((C) == 0) {                                            \
    PYOPT_TILE_DP_A(OP, 0, A, B)                                       \
  } else if constexpr ((C) == 1) {                                     \
    PYOPT_TILE_DP_A(OP, 1, A, B)                                       \
  } else if constexpr ((C) == 2) {                                     \
    PYOPT_TILE_DP_A(OP, 2, A, B)                                       \
  } else {                                                             \
    PYOPT_TILE_DP_A(OP, 3, A, B)                                       \
  }

// ldtilecfg / tilerelease are compiler builtins that need the amx-tile target: out of line, called once per
// thread and kernel call. The other instructions are asm statements in the intrinsics headers and inline into
// the kernels, which carry PYOPT_TARGET_AMX themselves.
PYOPT_TARGET_AMX __attribute__((noinline)) inline void hw_tile_config(const TileConfig* c) { _tile_loadconfig(c); }
PYOPT_TARGET_AMX __attribute__((noinline)) inline void hw_tile_release() { _tile_release(); }

struct HardwareTiles {
  void config(const TileConfig& c) { hw_tile_config(&c); }
  void release() { hw_tile_release(); }
  template <int T>
  void load(const void* base, int64_t stride) {
    static_assert(T >= 0 && T < kTiles, "AMX has tiles tmm0 .. tmm7");
    PYOPT_TILE_1(T, _tile_loadd, base, stride)
  }
  template <int T>
  void store(void* base, int64_t stride) const {
    static_assert(T >= 0 && T < kTiles, "AMX has tiles tmm0 .. tmm7");
    PYOPT_TILE_1(T, _tile_stored, base, stride)
  }
  template <int T>
  void zero() {
    static_assert(T >= 0 && T < kTiles, "AMX has tiles tmm0 .. tmm7");
    if constexpr (T == 0) _tile_zero(0);
    else if constexpr (T == 1) _tile_zero(1);
    else if constexpr (T == 2) _tile_zero(2);
    else if constexpr (T == 3) _tile_zero(3);
    else if constexpr (T == 4) _tile_zero(4);
    else if constexpr (T == 5) _tile_zero(5);
    else if constexpr (T == 6) _tile_zero(6);
    else _tile_zero(7);
  }
  template <int C, int A, int B>
  void dpbssd() {
    PYOPT_TILE_DP(_tile_dpbssd, C, A, B)
  }
  template <int C, int A, int B>
  void dpbusd() {
    PYOPT_TILE_DP(_tile_dpbusd, C, A, B)
  }
};
#undef PYOPT_TILE_1
#undef PYOPT_TILE_DP_B
#undef PYOPT_TILE_DP_A
#undef PYOPT_TILE_DP
#endif  // PYOPT_AMX

}  // namespace pyopt::amx
