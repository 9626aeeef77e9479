"""This machine's exact-int8 peak: builds and runs bench/int8_peak.cpp (a plain C++ program, no torch) with the
system compiler and returns the fastest exact int8 multiply-accumulate loop of the ISA tier pyopt runs here.
The int8 bench reports pyopt's W8A8 GEMM as a fraction of it."""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
# the loops int8_peak.cpp times that the kernels of each pyopt CPU tier can use (ops/native.ISA_NAMES)
TIER_LOOPS = {
    "avx2": ("avx2_madd", "avx2_sign"),
    "avx512": ("avx2_madd", "avx2_sign"),
    "avx512_vnni": ("avx512_vnni",),
    "amx": ("amx_int8",),
}


@dataclasses.dataclass
class Peak:
    loop: str  # the fastest loop
    macs_per_s: float  # over all threads
    macs_per_cycle: float  # per thread
    ghz: float
    threads: int


@functools.cache
def exact_int8_peak(tier: str, threads: int, rounds: int = 3000) -> Peak | None:
    """The fastest loop for `tier` on `threads` threads, or None (no compiler, no loop for the tier, not x86)."""
    cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")
    loops = TIER_LOOPS.get(tier)
    if cxx is None or loops is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "int8_peak")
        src = os.path.join(HERE, "int8_peak.cpp")
        build = subprocess.run([cxx, "-O2", "-std=c++17", "-pthread", src, "-o", exe], capture_output=True)
        if build.returncode != 0:
            return None
        res = subprocess.run([exe, str(threads), str(rounds)], capture_output=True, text=True, timeout=600)
    peaks = []
    for line in res.stdout.splitlines():
        name, macs, per_cycle, ghz = line.split()
        if name in loops:
            peaks.append(Peak(name, float(macs), float(per_cycle), float(ghz), threads))
    return max(peaks, key=lambda p: p.macs_per_s, default=None)


if __name__ == "__main__":
    import sys

    tier, threads = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1
    print(exact_int8_peak(tier, threads))
