"""BinaryLinear (1-bit sign weights, packed) vs float32 F.linear: the layer a user would otherwise keep.

Target (issue 3): M=1, 4096x4096 >= 6x float32. M=64 and binary activations (XNOR + popcount) are
reported for information. Bytes model: packed weights (N*K/8) + alpha and bias + x + y.
"""

from __future__ import annotations

import harness
import torch
from torch import nn

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
