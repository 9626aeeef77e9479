// Run-time ISA selection for the CPU kernels.
//
// The shipped binary is compiled for baseline x86-64. Hot loops are written once per ISA, as functions or
// templates carrying a target attribute (PYOPT_TARGET_AVX512 / PYOPT_TARGET_AVX2), in a namespace named after
// the ISA (`pyopt::<family>::avx512`, `::avx2`, `::scalar`), and an op's entry point picks one with
// `active_isa()`: the best the CPU has, capped by PYOPT_CPU_ISA (read once) and by the calling thread's cap
// (`pyopt.use_isa(...)` sets it, so tests exercise every path on one machine).
// No global mutable state: detection is a pure function of CPUID, cached in a function-local static const;
// the cap is thread-local (OpenMP workers never read it: the ISA is chosen once, on the calling thread).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iterator>

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

inline constexpr const char* kIsaNames[] = {"scalar", "avx2", "avx512", "avx512_vnni"};

// PYOPT_CPU_ISA (an ISA name), read once per process: -1 when unset or unknown.
inline int64_t env_isa_cap() {
  static const int64_t cap = [] {
    const char* v = std::getenv("PYOPT_CPU_ISA");
    if (v == nullptr) return int64_t{-1};
    for (int64_t i = 0; i < static_cast<int64_t>(std::size(kIsaNames)); ++i)
      if (std::strcmp(v, kIsaNames[i]) == 0) return i;
    return int64_t{-1};
  }();
  return cap;
}

// The calling thread's cap (-1 = none), set by pyopt.use_isa through pyopt._C.set_isa_cap.
inline int64_t& thread_isa_cap() {
  thread_local int64_t cap = -1;
  return cap;
}

// The ISA a kernel called on this thread may use: the best the CPU has, capped by the env and thread caps.
inline Isa active_isa() {
  int64_t isa = static_cast<int64_t>(detected_isa());
  if (env_isa_cap() >= 0) isa = std::min(isa, env_isa_cap());
  if (thread_isa_cap() >= 0) isa = std::min(isa, thread_isa_cap());
  return static_cast<Isa>(isa);
}

}  // namespace pyopt
