// Run-time ISA selection for the CPU kernels.
//
// The shipped binary is compiled for baseline x86-64. Hot loops are written once as templates/functions
// carrying a target attribute (PYOPT_TARGET_AVX512 / PYOPT_TARGET_AVX2) and the caller picks one with
// `select_isa(requested)`: the Python layer passes the ISA it wants (default: the best the CPU has,
// overridable with PYOPT_CPU_ISA or pyopt.use_isa() so tests exercise every path on one machine).
// No global mutable state: detection is a pure function of CPUID, cached in a function-local static const.
#pragma once
#include <cstdint>

namespace pyopt {

enum class Isa : int64_t { Scalar = 0, Avx2 = 1, Avx512 = 2, Avx512Vnni = 3 };

#if defined(__x86_64__) || defined(_M_X64)
#define PYOPT_X86 1
// AVX-512 here means F+BW+VL+DQ (Skylake-SP and later); VNNI adds vpdpbusd (Cascade Lake, Zen 4).
#define PYOPT_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx2,bmi2,popcnt")))
#define PYOPT_TARGET_AVX512VNNI \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,avx2,bmi2,popcnt")))
#define PYOPT_TARGET_AVX2 __attribute__((target("avx2,fma,f16c,bmi2,popcnt")))
#else
#define PYOPT_X86 0
#define PYOPT_TARGET_AVX512
#define PYOPT_TARGET_AVX512VNNI
#define PYOPT_TARGET_AVX2
#endif

// The best ISA this CPU (and OS, via XCR0 — libgcc checks it) supports.
inline Isa detected_isa() {
#if PYOPT_X86
  static const Isa isa = [] {
    __builtin_cpu_init();
    bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    if (avx512 && __builtin_cpu_supports("avx512vnni")) return Isa::Avx512Vnni;
    if (avx512) return Isa::Avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2;
    return Isa::Scalar;
  }();
  return isa;
#else
  return Isa::Scalar;
#endif
}

// The ISA a kernel may use: what the caller asked for (-1 = best), never more than the CPU has.
inline Isa select_isa(int64_t requested) {
  Isa best = detected_isa();
  if (requested < 0 || requested > static_cast<int64_t>(best)) return best;
  return static_cast<Isa>(requested);
}

}  // namespace pyopt
