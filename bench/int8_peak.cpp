// The exact-int8 peak of this machine: the fastest dependency-free loop of exact int8 multiply-accumulate
// instructions (int32 sums, no saturation) that each CPU ISA tier offers, run on T threads at once.
// Built and run by bench/int8_peak.py (plain g++/clang++, no torch); the int8 bench rows report pyopt's W8A8
// GEMM as a fraction of it.
//
//   avx2_madd    vpmaddwd (int16 x int16 -> int32 pair sums) + vpaddd: 16 MAC per vpmaddwd. What the AVX2 tier's
//                kernel uses (on int8 sign-extended to int16; exact for any int8 pair).
//   avx2_sign    vpsignb + vpmaddubsw + vpmaddwd(ones) + vpaddd: 32 MAC per vpmaddubsw, exact when one operand
//                is in [-127, 127] (the |w| x sign(w) * q form of the AVX2 tier's small-M kernel).
//   avx512_vnni  vpdpbusd zmm: 64 MAC per instruction (the VNNI tier's kernel).
//   amx_int8     tdpbusd on 16 x 64-byte tiles: 16 x 16 x 64 = 16384 MAC per instruction, 6 accumulator tiles
//                (the AMX tier's kernel uses tdpbssd, the same unit at the same rate). Only where CPUID has
//                AMX-INT8 and Linux grants the tile state (arch_prctl, as csrc/cpu/cpu_isa.h asks for it).
// Each loop keeps 6 to 10 independent accumulators. Timing: T threads run the same short burst together (a spin
// barrier between bursts), the fastest of many bursts counts, so a neighbour's time slice on a shared machine
// does not lower the figure. A dependent add chain gives the clock (1 add per cycle).
//
// Usage: int8_peak [threads] [rounds]. Output, one line per loop: name, total MAC/s over the threads, MAC per
// cycle per thread, GHz.
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

namespace {

constexpr long kIters = 20000;  // iterations of a 12-unit loop body per burst (~0.1 ms)

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

#define CLOBBER12 "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11"

void add_chain() {  // 12 * kIters cycles
  long x = 0;
  for (long i = 0; i < kIters; ++i)
    asm volatile(
        "add $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\t"
        "add $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\t"
        : "+r"(x));
}

// 6 vpmaddwd into 6 temporaries, then their 6 vpaddd, twice: the fastest order found on Zen 3 (27.2 MAC/cycle;
// each vpmaddwd followed by its vpaddd: 25.6-25.8, with 6 to 12 accumulators).
#define M6 \
  "vpmaddwd %%ymm14,%%ymm15,%%ymm6\n\tvpmaddwd %%ymm14,%%ymm15,%%ymm7\n\tvpmaddwd %%ymm14,%%ymm15,%%ymm8\n\t" \
  "vpmaddwd %%ymm14,%%ymm15,%%ymm9\n\tvpmaddwd %%ymm14,%%ymm15,%%ymm10\n\tvpmaddwd %%ymm14,%%ymm15,%%ymm11\n\t"
#define A6                                                                                                    \
  "vpaddd %%ymm6,%%ymm0,%%ymm0\n\tvpaddd %%ymm7,%%ymm1,%%ymm1\n\tvpaddd %%ymm8,%%ymm2,%%ymm2\n\t"                   \
  "vpaddd %%ymm9,%%ymm3,%%ymm3\n\tvpaddd %%ymm10,%%ymm4,%%ymm4\n\tvpaddd %%ymm11,%%ymm5,%%ymm5\n\t"
__attribute__((target("avx2"))) void avx2_madd() {  // 12 * 16 MAC per iteration
  for (long i = 0; i < kIters; ++i) asm volatile(M6 A6 M6 A6::: CLOBBER12);
}
#undef M6
#undef A6

#define SIGN(acc, t)                                                                                        \
  "vpsignb %%ymm14,%%ymm15,%%ymm" #t "\n\tvpmaddubsw %%ymm" #t ",%%ymm15,%%ymm" #t "\n\tvpmaddwd %%ymm13,%%ymm" #t \
  ",%%ymm" #t "\n\tvpaddd %%ymm" #t ",%%ymm" #acc ",%%ymm" #acc "\n\t"
__attribute__((target("avx2"))) void avx2_sign() {  // 10 * 32 MAC per iteration
  for (long i = 0; i < kIters; ++i)
    asm volatile(SIGN(0, 10) SIGN(1, 11) SIGN(2, 12) SIGN(3, 10) SIGN(4, 11) SIGN(5, 12) SIGN(6, 10) SIGN(7, 11)
                     SIGN(8, 12) SIGN(9, 10)::
                         : CLOBBER12, "xmm12", "xmm13");
}
#undef SIGN

#define DP(acc) "vpdpbusd %%zmm14,%%zmm15,%%zmm" #acc "\n\t"
__attribute__((target("avx512f,avx512vnni"))) void avx512_vnni() {  // 12 * 64 MAC per iteration
  for (long i = 0; i < kIters; ++i)
    asm volatile(DP(0) DP(1) DP(2) DP(3) DP(4) DP(5) DP(6) DP(7) DP(8) DP(9) DP(10) DP(11)::: CLOBBER12);
}
#undef DP

// AMX: each burst loads its thread's tile config (ldtilecfg is per thread) and releases the tiles after. tmm6 and
// tmm7 are the sources, tmm0..tmm5 six independent accumulators (a tdpbusd's latency is several of its issue
// intervals). 1/16 of kIters: one tdpbusd occupies the unit ~16 cycles.
constexpr long kAmxIters = kIters / 16;
struct alignas(64) TileConfig {
  unsigned char palette = 1, start_row = 0, reserved[14] = {};
  unsigned short colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  unsigned char rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};
#define TDP(acc) "tdpbusd %%tmm7, %%tmm6, %%tmm" #acc "\n\t"
void amx_int8() {  // 12 * 16384 MAC per iteration
  static const TileConfig cfg;
  asm volatile("ldtilecfg %0" ::"m"(cfg));
  asm volatile("tilezero %%tmm6\n\ttilezero %%tmm7" ::);
  for (long i = 0; i < kAmxIters; ++i) asm volatile(TDP(0) TDP(1) TDP(2) TDP(3) TDP(4) TDP(5) TDP(0) TDP(1) TDP(2) TDP(3) TDP(4) TDP(5)::);
  asm volatile("tilerelease" ::);
}
#undef TDP

// CPUID AMX-TILE + AMX-INT8, and Linux's permission for the tile state (ARCH_REQ_XCOMP_PERM, XTILEDATA = 18).
bool amx_usable() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !((d >> 24) & 1) || !((d >> 25) & 1)) return false;
  syscall(SYS_arch_prctl, 0x1023, 18);
  unsigned long long perm = 0;
  return syscall(SYS_arch_prctl, 0x1022, &perm) == 0 && ((perm >> 18) & 1);
}

struct Loop {
  const char* name;
  void (*fn)();
  double macs;  // per burst
  bool ok;
};

// Fastest round of `rounds`: in each, all threads pass a spin barrier and run one burst of fn; a round lasts as
// long as its slowest thread. Seconds per burst.
double best_round(void (*fn)(), int threads, int rounds) {
  std::atomic<int> count{0}, gen{0};
  auto barrier = [&] {
    const int g = gen.load();
    if (count.fetch_add(1) == threads - 1) {
      count.store(0);
      gen.fetch_add(1);
    } else {
      while (gen.load() == g) {
      }
    }
  };
  std::vector<double> times(static_cast<size_t>(threads) * rounds);
  auto worker = [&](int t) {
    for (int r = 0; r < rounds; ++r) {
      barrier();
      const double t0 = now();
      fn();
      times[static_cast<size_t>(r) * threads + t] = now() - t0;
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(worker, t);
  worker(0);
  for (auto& th : pool) th.join();
  double best = 1e9;
  for (int r = 0; r < rounds; ++r) {
    const double* row = times.data() + static_cast<size_t>(r) * threads;
    best = std::min(best, *std::max_element(row, row + threads));
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::max(1, atoi(argv[1])) : 1;
  const int rounds = argc > 2 ? std::max(1, atoi(argv[2])) : 2000;
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2");
  const bool vnni = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vnni");
  Loop loops[] = {{"avx2_madd", avx2_madd, 12.0 * 16 * kIters, avx2},
                  {"avx2_sign", avx2_sign, 10.0 * 32 * kIters, avx2},
                  {"avx512_vnni", avx512_vnni, 12.0 * 64 * kIters, vnni},
                  {"amx_int8", amx_int8, 12.0 * 16384 * kAmxIters, amx_usable()}};
  const double clock_burst = best_round(add_chain, threads, rounds);
  const double ghz = 12.0 * kIters / clock_burst / 1e9;
  for (const Loop& l : loops) {
    if (!l.ok) continue;
    const double t = best_round(l.fn, threads, rounds);
    std::printf("%s %.6g %.3f %.3f\n", l.name, threads * l.macs / t, l.macs / t / (ghz * 1e9), ghz);
  }
  return 0;
}
