"""The one timing loop of pyopt (the benchmarks, the sparse-format calibration and the demo use it), and the
machine facts every results file records.

Timing: warm-up, then the candidates run in interleaved rounds (so that clock drift or a neighbour's load
hits all of them alike) until each has `repeat` samples and `min_time` seconds have passed; the median is
reported (robust on the noisy 2-core machines). On a GPU one sample is `inner` back-to-back calls between two
CUDA events, so a ~10 us launch does not swamp a ~20 us kernel.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

MAX_ROUNDS = 1000


def time_many(
    fns: dict[str, Callable[[], object]],
    device: str | torch.device = "cpu",
    repeat: int = 10,
    min_time: float = 0.2,
    warmup: int = 2,
) -> dict[str, float]:
    """Median seconds per call of each fn, measured in interleaved rounds."""
    device = str(device)
    for fn in fns.values():  # caches, lazy init, autotuning, first touch of outputs
        for _ in range(warmup):
            fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return _time_many_cuda(fns, repeat, min_time)
    samples: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    for n in range(1, MAX_ROUNDS + 1):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[k].append(time.perf_counter() - t0)
        if n >= repeat and time.perf_counter() - start >= min_time:
            break
    return {k: statistics.median(v) for k, v in samples.items()}


def _time_many_cuda(fns: dict[str, Callable[[], object]], repeat: int, min_time: float) -> dict[str, float]:
    inner = {}
    for k, fn in fns.items():  # size `inner` so one sample lasts about 1 ms
        t0 = time.perf_counter()
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        inner[k] = max(1, min(200, int(1e-3 / max((time.perf_counter() - t0) / 3, 1e-7))))
    samples: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    for n in range(1, MAX_ROUNDS + 1):
        for k, fn in fns.items():
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(inner[k]):
                fn()
            end.record()
            end.synchronize()
            samples[k].append(begin.elapsed_time(end) * 1e-3 / inner[k])
        if n >= repeat and time.perf_counter() - start >= min_time:
            break
    return {k: statistics.median(v) for k, v in samples.items()}


def cpu_model() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return cpu


def cpu_flags() -> list[str]:
    """The CPU's feature flags that decide pyopt's kernels (from /proc/cpuinfo; empty elsewhere)."""
    wanted = ("avx2", "fma", "f16c", "avx512", "avx_vnni", "amx", "avx10")
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line.split(":", 1)[1].split() for line in f if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags if f.startswith(wanted))


def machine_name() -> str:
    """CPU model, core count and the ISA tier pyopt's kernels use (or the GPU's name), for results files.

    The tier is part of the name because one model string covers several machine classes (AMD EPYC VMs
    are Zen 3 with AVX2 or Zen 4 with AVX-512 VNNI)."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name().replace(" ", "-")
    from .ops.native import detected_isa

    return f"{cpu_model().replace(' ', '-')}-{os.cpu_count()}cores-{detected_isa()}"
