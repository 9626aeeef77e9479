"""Int8Linear / Int8Conv2d vs what a user would otherwise run (issue 3 targets), all in one process.

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
    return rows


if __name__ == "__main__":
    import sys

    print(harness.format_table(run(quick="--quick" in sys.argv)))
