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

#if defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace pyopt {

// Amx: AVX512-VNNI plus the AMX tile unit with int8 dot products (Sapphire Rapids and later), usable only once
// the OS granted this process the tile state (amx_status below).
enum class Isa : int64_t { Scalar = 0, Avx2 = 1, Avx512 = 2, Avx512Vnni = 3, Amx = 4 };

#if defined(__x86_64__) || defined(_M_X64)
#define PYOPT_X86 1
// AVX-512 here means F+BW+VL+DQ (Skylake-SP and later); VNNI adds vpdpbusd (Cascade Lake, Zen 4).
#define PYOPT_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx2,bmi2,popcnt")))
#define PYOPT_TARGET_AVX512VNNI \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,avx2,bmi2,popcnt")))
#define PYOPT_TARGET_AVX2 __attribute__((target("avx2,fma,f16c,bmi2,popcnt")))
// The AMX tier's kernels: the tile instructions plus the AVX-512 of its epilogues.
#define PYOPT_TARGET_AMX \
  __attribute__((target("amx-tile,amx-int8,amx-bf16,"  \
                         "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,avx2,bmi2,popcnt")))
#else
#define PYOPT_X86 0
#define PYOPT_TARGET_AVX512
#define PYOPT_TARGET_AVX512VNNI
#define PYOPT_TARGET_AVX2
#define PYOPT_TARGET_AMX
#endif
// The AMX tile instructions are compiled in with GCC >= 11 on x86-64 Linux (the one OS whose permission protocol
// amx_status implements). GCC's tile intrinsics are asm statements that inline into any function; clang's are
// builtins that would need the target attribute on every caller, so clang builds go without the AMX tier.
#if PYOPT_X86 && defined(__linux__) && !defined(__clang__) && __GNUC__ >= 11
#define PYOPT_AMX 1
#else
#define PYOPT_AMX 0
#endif

// What the CPU and the OS offer of AMX. CPUID leaf 7 / subleaf 0, EDX bits 24 (AMX-TILE), 25 (AMX-INT8) and 22
// (AMX-BF16); XCR0 bits 17 and 18 (XTILECFG, XTILEDATA: the OS manages the tile state); `permitted`: Linux
// granted this process XTILEDATA. Linux enables the tile state lazily: a process must ask with
// arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) before its first tile instruction, which otherwise
// raises SIGILL (some VMs advertise AMX in CPUID and refuse the request). The permission is per process
// (ARCH_GET_XCOMP_PERM reports "the features for which the userspace process has permission", Linux
// Documentation/arch/x86/xstate.rst): every thread has it, the OpenMP workers started later too, and a fork()ed
// child inherits it (arch/x86/kernel/fpu/core.c, fpu_inherit_perms). The kernel allocates each thread's tile
// state on its first tile instruction. Requested once, here, and confirmed with ARCH_GET_XCOMP_PERM.
struct AmxStatus {
  bool tile = false, int8 = false, bf16 = false, os_enabled = false, permitted = false;
};

inline AmxStatus amx_status() {
  static const AmxStatus status = [] {
    AmxStatus s;
#if PYOPT_AMX
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return s;
    s.tile = (d >> 24) & 1;
    s.int8 = (d >> 25) & 1;
    s.bf16 = (d >> 22) & 1;
    if (!s.tile) return s;
    __get_cpuid(1, &a, &b, &c, &d);
    if (!((c >> 27) & 1)) return s;  // OSXSAVE: xgetbv is usable
    unsigned lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    s.os_enabled = ((lo >> 17) & 3) == 3;
    if (!s.os_enabled) return s;
    constexpr long kGetPerm = 0x1022, kReqPerm = 0x1023;  // ARCH_GET_XCOMP_PERM / ARCH_REQ_XCOMP_PERM (asm/prctl.h)
    constexpr int kXtileData = 18;                         // XFEATURE_XTILEDATA
    syscall(SYS_arch_prctl, kReqPerm, kXtileData);         // fails on kernels < 5.16: the check below then fails
    unsigned long long perm = 0;
    s.permitted = syscall(SYS_arch_prctl, kGetPerm, &perm) == 0 && ((perm >> kXtileData) & 1);
#endif
    return s;
  }();
  return status;
}

// The best ISA this CPU (and OS, via XCR0 — libgcc checks it) supports; AMX only with the OS's permission.
inline Isa detected_isa() {
#if PYOPT_X86
  static const Isa isa = [] {
    __builtin_cpu_init();
    bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    if (avx512 && __builtin_cpu_supports("avx512vnni")) {
      const AmxStatus amx = amx_status();
      return amx.tile && amx.int8 && amx.permitted ? Isa::Amx : Isa::Avx512Vnni;
    }
    if (avx512) return Isa::Avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2;
    return Isa::Scalar;
  }();
  return isa;
#else
  return Isa::Scalar;
#endif
}

inline constexpr const char* kIsaNames[] = {"scalar", "avx2", "avx512", "avx512_vnni", "amx"};

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
