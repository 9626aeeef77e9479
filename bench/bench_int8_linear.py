"""Int8Linear / Int8Conv2d vs what a user would otherwise run (with pyopt's goals), all in one process.

Rows: dynamic W8A8 at M=1024, K=N=4096 vs float32 F.linear (>= 3.5x) and vs torch.ao quantize_dynamic with
the x86 engine (>= 1.2x); weight-only at M=1 vs F.linear (>= 3x); an M sweep (1, 4, 16, 64) of both modes
vs F.linear to show the crossover; Int8Conv2d dynamic on a ResNet 3x3 conv (batch 8, 64->64, 56x56) vs
F.conv2d (>= 1.5x).
"""

from __future__ import annotations

import warnings

import harness
import torch
import torch.nn.functional as F
from torch import nn

import pyopt  # noqa: F401
from pyopt.nn import Int8Conv2d, Int8Linear

FAMILY = "int8_linear"


def _quantize_dynamic_ao(lin: nn.Linear) -> nn.Module:
    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(nn.Sequential(lin), {nn.Linear}, dtype=torch.qint8)


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
        x = torch.randn(big_m, k)
        rows.append(
            harness.compare(
                FAMILY, f"dynamic W8A8 M={big_m} K=N={k}", lambda: dyn(x), "F.linear fp32",
                lambda: F.linear(x, lin.weight, lin.bias), target=3.5, **rep,
            )
        )  # fmt: skip
        ao = _quantize_dynamic_ao(lin)
        rows.append(
            harness.compare(
                FAMILY, f"dynamic W8A8 M={big_m} K=N={k}", lambda: dyn(x), "ao quantize_dynamic (x86)",
                lambda: ao(x), target=1.2, **rep,
            )
        )  # fmt: skip
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
                rows.append(
                    harness.compare(
                        FAMILY, f"sweep {mode} M={m} K=N={k}", lambda mod=mod, xm=xm: mod(xm), "F.linear fp32",
                        lambda xm=xm: F.linear(xm, lin.weight, lin.bias), **rep,
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
        w64, s64, b64 = small_q.weight, small_q.weight_scales, small_q.bias
        rows.append(
            harness.compare(
                FAMILY, f"per call: int8_linear_dynamic M=1 K=N=64 ({harness.CALLS} calls)",
                harness.calls(lambda: op(x64, w64, s64, b64)), "F.linear fp32",
                harness.calls(lambda: F.linear(x64, small.weight, small.bias)), target=1 / 1.3, **rep,
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
