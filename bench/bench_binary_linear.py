"""BinaryLinear (1-bit sign weights, packed) vs float32 F.linear: the layer a user would otherwise keep.

Goal: M=1, 4096x4096 >= 6x float32. M=64 and binary activations (XNOR + popcount) are
reported for information. Bytes model: packed weights (N*K/8) + alpha and bias + x + y.
"""

from __future__ import annotations

import harness
import torch
import torch.nn.functional as F
from torch import nn

import pyopt
from pyopt.nn import BinaryLinear

CASES = [  # (M, K, N, target speedup)
    (1, 4096, 4096, 6.0),
    (64, 4096, 4096, None),
]


def run(quick: bool) -> list[harness.Row]:
    torch.manual_seed(0)
    rows = []
    repeat = 5 if quick else 20
    for m, k, n, target in CASES:
        linear = nn.Linear(k, n)
        x = torch.randn(m, k)
        nbytes = n * ((k + 7) // 8) + 8 * n + 4 * m * k + 4 * m * n
        for binact in (False, True):
            layer = BinaryLinear.from_float(linear, binary_activations=binact)
            with torch.no_grad():
                rows.append(
                    harness.compare(
                        "binary_linear",
                        f"BinaryLinear{' xnor' if binact else ''} M={m} {k}x{n}",
                        lambda layer=layer, x=x: layer(x),
                        "F.linear fp32",
                        lambda x=x, w=linear.weight, b=linear.bias: torch.nn.functional.linear(x, w, b),
                        target=None if binact else target,
                        nbytes=nbytes,
                        repeat=repeat,
                    )
                )
    return rows


def run_gpu(quick: bool = False) -> list[harness.Row]:
    """BinaryLinear on the GPU (each GPU backend) vs bf16 F.linear at M=1 and M=64 (no GPU target in the
    goal: reported so the router's default can follow the numbers)."""
    dev, dt = "cuda", torch.bfloat16
    torch.manual_seed(0)
    rows = []
    linear = nn.Linear(4096, 4096).to(dev, dt)
    layer = BinaryLinear.from_float(linear)
    for m in (1, 64):
        x = torch.randn(m, 4096, device=dev, dtype=dt)
        with torch.no_grad():
            with pyopt.use_backend("reference"):
                want = layer(x)
            for b in harness.gpu_backends("binary_linear"):
                fn = harness.on_backend(b, lambda x=x: layer(x))
                harness.check_close("binary_linear", f"[{b}] M={m}", fn(), want, 0.02, 0.05)
                rows.append(harness.compare(
                    "binary_linear", f"(info) BinaryLinear [{b}] M={m} 4096x4096 bf16 (GPU)", fn,
                    "F.linear bf16", lambda x=x: F.linear(x, linear.weight, linear.bias), device=dev, repeat=10,
                ))  # fmt: skip
    return rows
