"""Int8Linear / Int8Conv2d vs what a user would otherwise run (with pyopt's goals), all in one process.

Rows: dynamic W8A8 at M=1024, K=N=4096 vs float32 F.linear (>= 3.5x), vs torch.ao quantize_dynamic with the
x86 engine (>= 1.2x), vs the fastest torch path on this machine (>= 1.1x: the faster of quantize_dynamic with
the x86 and the onednn engine, fp32 F.linear, and bf16 F.linear where the CPU has native bf16), all timed in one
interleaved run, and as a fraction of this machine's exact-int8 peak (>= 0.9; on AMX >= 0.3 of a tdpbusd loop:
bench/int8_peak.cpp, the fastest exact int8 multiply-accumulate loop of the CPU tier, on the same number of
threads), and at M = 16, 64, 256 vs the fastest torch path and the peak; weight-only at M=1 vs F.linear (>= 3x);
an M sweep (1, 4, 16, 64) of both modes vs F.linear to show the crossover (dynamic M=1 >= 1x); Int8Conv2d
dynamic on a ResNet 3x3 conv (batch 8, 64->64, 56x56) vs F.conv2d (>= 1.5x).
"""

from __future__ import annotations

import warnings

import harness
import torch
import torch.nn.functional as F
from int8_peak import exact_int8_peak
from torch import nn

import pyopt
from pyopt.nn import Int8Conv2d, Int8Linear
from pyopt.timing import cpu_flags, time_many

FAMILY = "int8_linear"


def _quantize_dynamic_ao(lin: nn.Linear, engine: str = "x86"):
    """quantize_dynamic with `engine`, and a call that runs it with that engine selected."""
    torch.backends.quantized.engine = engine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = torch.ao.quantization.quantize_dynamic(nn.Sequential(lin), {nn.Linear}, dtype=torch.qint8)

    def call(x):
        torch.backends.quantized.engine = engine
        return mod(x)

    return call


def _row(case: str, pyopt_s: float, baseline: str, base_s: float, target: float | None) -> harness.Row:
    return harness.Row(FAMILY, case, pyopt_s * 1e3, baseline, base_s * 1e3, base_s / pyopt_s, target)


def _w8a8_rows(dyn, lin, x, rep, full: bool = True) -> list[harness.Row]:
    """W8A8 against fp32 F.linear, ao x86, the fastest torch path and the exact-int8 peak, from one timing run
    (full=False: the fastest torch path and the peak only)."""
    m, k, n = x.shape[0], lin.in_features, lin.out_features
    ao_x86, ao_onednn = _quantize_dynamic_ao(lin, "x86"), _quantize_dynamic_ao(lin, "onednn")
    torch_paths = {
        "F.linear fp32": lambda: F.linear(x, lin.weight, lin.bias),
        "ao quantize_dynamic (x86)": lambda: ao_x86(x),
        "ao quantize_dynamic (onednn)": lambda: ao_onednn(x),
    }
    if {"avx512_bf16", "amx_bf16"} & set(cpu_flags()):  # elsewhere bf16 GEMMs are emulated and much slower
        xb, lb = x.bfloat16(), nn.Linear(k, n).to(torch.bfloat16).eval()
        torch_paths["F.linear bf16"] = lambda: F.linear(xb, lb.weight, lb.bias)
    t = time_many({"pyopt": lambda: dyn(x), **torch_paths}, "cpu", rep["repeat"], rep["min_time"])
    torch.backends.quantized.engine = "x86"
    case = f"dynamic W8A8 M={m} K=N={k}"
    best = min(torch_paths, key=t.__getitem__)
    rows = [
        _row(case, t["pyopt"], "F.linear fp32", t["F.linear fp32"], 3.5),
        _row(case, t["pyopt"], "ao quantize_dynamic (x86)", t["ao quantize_dynamic (x86)"], 1.2),
    ] if full else []  # fmt: skip
    rows.append(_row(case, t["pyopt"], f"best torch path: {best}", t[best], 1.1))
    tier = pyopt.ops.native.detected_isa()
    peak = exact_int8_peak(tier, torch.get_num_threads())
    if peak is not None:
        name = f"exact-int8 peak ({peak.loop} loop, {peak.macs_per_s / 1e9:.0f} GMAC/s)"
        # (at small M the op streams the weight from memory: the compute peak is information there)
        goal = (0.3 if tier == "amx" else 0.9) if full else None
        rows.append(_row(case, t["pyopt"], name, m * k * n / peak.macs_per_s, goal))
    if full and tier != "amx":  # the AMX goal (>= 30 % of a tdpbusd loop) needs an AMX machine
        print(f"{case}: AMX int8 peak unmeasured: no AMX on this machine")
    return rows


def run(quick: bool = False) -> list[harness.Row]:
    torch.manual_seed(0)
    rows = []
    k = n = 1024 if quick else 4096
    lin = nn.Linear(k, n).eval()
    dyn = Int8Linear.from_float(lin, "dynamic")
    wo = Int8Linear.from_float(lin, "weight_only")
    rep = dict(repeat=3 if quick else 5, min_time=0.1 if quick else 0.5)
    with torch.inference_mode():
        big_m = 256 if quick else 1024
        rows += _w8a8_rows(dyn, lin, torch.randn(big_m, k), rep)
        for m in (16, 64, 256):  # the decode / small-batch sizes, against the same yardsticks
            rows += _w8a8_rows(dyn, lin, torch.randn(m, k), rep, full=False)
        x1 = torch.randn(1, k)
        rows.append(
            harness.compare(
                FAMILY, f"weight-only M=1 K=N={k}", lambda: wo(x1), "F.linear fp32",
                lambda: F.linear(x1, lin.weight, lin.bias), target=3.0, nbytes=n * k + 4 * (k + 2 * n), **rep,
            )
        )  # fmt: skip
        for m in (1, 4, 16, 64):  # crossover sweep: which mode to pick at which batch
            xm = torch.randn(m, k)
            for mode, mod in (("weight-only", wo), ("dynamic", dyn)):
                target = 1.0 if (mode, m) == ("dynamic", 1) else None
                rows.append(
                    harness.compare(
                        FAMILY, f"sweep {mode} M={m} K=N={k}", lambda mod=mod, xm=xm: mod(xm), "F.linear fp32",
                        lambda xm=xm: F.linear(xm, lin.weight, lin.bias), target=target, **rep,
                    )
                )  # fmt: skip
        conv = nn.Conv2d(64, 64, 3, padding=1).eval()
        qconv = Int8Conv2d.from_float(conv, "dynamic")
        xc = torch.randn(2 if quick else 8, 64, 56, 56)
        rows.append(
            harness.compare(
                FAMILY, f"Int8Conv2d dynamic {tuple(xc.shape)} 64->64 3x3", lambda: qconv(xc), "F.conv2d fp32",
                lambda: conv(xc), target=1.5, **rep,
            )
        )  # fmt: skip
        # Per-call overhead of a tiny layer (goals: the op <= 1.3x F.linear's time, the module <= 1.5x nn.Linear's).
        small = nn.Linear(64, 64).eval()
        small_q = Int8Linear.from_float(small, "dynamic")
        x64 = torch.randn(1, 64)
        op = torch.ops.pyopt.int8_linear_dynamic
        typed = pyopt.ops.native.direct("int8_linear_dynamic")  # what the module calls (pyopt._C.ops)
        w64, s64, b64 = small_q.weight, small_q.weight_scales, small_q.bias
        theirs = harness.calls(lambda: F.linear(x64, small.weight, small.bias))
        rows.append(
            harness.compare(
                FAMILY, f"per call: int8_linear_dynamic M=1 K=N=64 ({harness.CALLS} calls)",
                harness.calls(lambda: typed(x64, w64, s64, b64)), "F.linear fp32", theirs, target=1 / 1.3, **rep,
            )
        )  # fmt: skip
        rows.append(
            harness.compare(
                FAMILY, f"(info) per call: torch.ops.pyopt.int8_linear_dynamic M=1 K=N=64 ({harness.CALLS} calls)",
                harness.calls(lambda: op(x64, w64, s64, b64)), "F.linear fp32", theirs, **rep,
            )
        )  # fmt: skip
        rows.append(
            harness.compare(
                FAMILY, f"per call: Int8Linear(64, 64) M=1 ({harness.CALLS} calls)", harness.calls(lambda: small_q(x64)),
                "nn.Linear(64, 64)", harness.calls(lambda: small(x64)), target=1 / 1.5, **rep,
            )
        )  # fmt: skip
    return rows


def run_gpu(quick: bool = False) -> list[harness.Row]:
    """GPU goals: W8A8 >= 1.6x bf16 F.linear at M >= 1024; weight-only >= 1.7x bf16 at M=1.

    Every GPU backend implementing the op (CUDA C++, Triton) gets its own row, so the router's default
    order can follow the numbers. 4096^2 int8 weights (16 MB) fit the H100/H200 L2; the 8192^2 weight-only
    row (64 MB int8 vs 128 MB bf16) is the memory-bound case the target is about.
    """
    dev, dt = "cuda", torch.bfloat16
    torch.manual_seed(0)
    rows = []
    rep = dict(device=dev, repeat=10, min_time=0.05 if quick else 0.2)
    with torch.inference_mode():
        lin = nn.Linear(4096, 4096).to(dev, dt).eval()
        dyn = Int8Linear.from_float(lin, "dynamic")
        for m in (1024,) if quick else (1024, 4096):
            x = torch.randn(m, 4096, device=dev, dtype=dt)
            want = F.linear(x.float(), dyn.weight.float() * dyn.weight_scales[:, None], dyn.bias)
            for b in harness.gpu_backends("int8_linear_dynamic"):
                fn = harness.on_backend(b, lambda x=x: dyn(x))
                harness.check_close(FAMILY, f"dynamic [{b}] M={m}", fn(), want, rtol=0.05, atol=0.05)
                rows.append(harness.compare(
                    FAMILY, f"dynamic W8A8 [{b}] M={m} K=N=4096 bf16 (GPU)", fn, "F.linear bf16",
                    lambda x=x: F.linear(x, lin.weight, lin.bias), target=1.6, **rep,
                ))  # fmt: skip
            a = torch.randint(-127, 128, (m, 4096), device=dev, dtype=torch.int8)
            rows.append(harness.compare(
                FAMILY, f"(info) torch._int_mm alone M={m} K=N=4096 (GPU)", lambda a=a: torch._int_mm(a, dyn.weight.t()),
                "F.linear bf16", lambda x=x: F.linear(x, lin.weight, lin.bias), **rep,
            ))  # fmt: skip
        for kn in (4096,) if quick else (4096, 8192):
            lin_k = lin if kn == 4096 else nn.Linear(kn, kn).to(dev, dt).eval()
            wo = Int8Linear.from_float(lin_k, "weight_only")
            x1 = torch.randn(1, kn, device=dev, dtype=dt)
            want = F.linear(x1.float(), wo.weight.float() * wo.weight_scales[:, None], wo.bias)
            for b in harness.gpu_backends("int8_linear_weight_only"):
                fn = harness.on_backend(b, lambda x1=x1, wo=wo: wo(x1))
                harness.check_close(FAMILY, f"weight-only [{b}] K=N={kn}", fn(), want, rtol=0.02, atol=0.05)
                rows.append(harness.compare(
                    FAMILY, f"weight-only [{b}] M=1 K=N={kn} bf16 (GPU)", fn, "F.linear bf16",
                    lambda x1=x1, lin_k=lin_k: F.linear(x1, lin_k.weight, lin_k.bias), target=1.7,
                    nbytes=kn * kn + 4 * kn * 2, **rep,
                ))  # fmt: skip
    return rows


if __name__ == "__main__":
    import sys

    print(harness.format_table(run(quick="--quick" in sys.argv)))
