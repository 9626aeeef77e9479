"""Every `pyopt::` op: its schema, its fake (meta) implementation and its argument checks — in one place.

Backends (pyopt/ops/<family>.py) register implementations against these names with
`pyopt._backend.register(op, backend)`; the dispatcher sees one router kernel per op (see _backend.py).

`check_*` functions validate metadata only (shapes, dtypes, scalar arguments), so the fake impls call
them too and torch.compile reports bad input at trace time. They raise ValueError/TypeError naming the
argument. Data-dependent checks (e.g. a scales tensor with a zero) happen in the public wrappers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._backend import make_router

_lib = torch.library.Library("pyopt", "DEF")  # noqa: TOR901 - owned by this module for the process lifetime


def defop(schema: str, fake: Callable, check: Callable | None = None) -> str:
    """Declare `pyopt::<schema>` with its fake impl and the router kernel. Returns the op name."""
    name = schema.split("(", 1)[0]
    _lib.define(schema)
    torch.library.register_fake(f"pyopt::{name}", fake, lib=_lib)
    arg_names = [a.name for a in getattr(torch.ops.pyopt, name).default._schema.arguments]
    _lib.impl(name, make_router(name, arg_names, check), "CompositeExplicitAutograd")
    return name


# ----------------------------------------------------------------------------------------------------------
# Shared argument checks
# ----------------------------------------------------------------------------------------------------------
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
QUANT_DTYPES = (torch.int8, torch.uint8)
QRANGE = {torch.int8: (-128, 127), torch.uint8: (0, 255)}


def check_float_input(name: str, x: torch.Tensor, dtypes=FLOAT_DTYPES) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {tuple(str(d) for d in dtypes)}, got {x.dtype}")


def check_quant_dtype(name: str, dtype) -> None:
    if dtype not in QUANT_DTYPES:
        raise TypeError(f"{name} must be torch.int8 or torch.uint8, got {dtype}")


def check_scale(name: str, scale: float) -> None:
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{name} must be finite and > 0, got {scale}")


def check_zero_point(name: str, zero_point: int, dtype) -> None:
    lo, hi = QRANGE[dtype]
    if not lo <= zero_point <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}] for {dtype}, got {zero_point}")


def check_axis(name: str, axis: int, ndim: int) -> int:
    if not -ndim <= axis < max(ndim, 1):
        raise ValueError(f"{name} must be in [{-ndim}, {ndim - 1}] for a {ndim}-d tensor, got {axis}")
    return axis % max(ndim, 1)


# ----------------------------------------------------------------------------------------------------------
# quant: int8/uint8 quantize / dequantize (issue: foundation). Implementations: pyopt/ops/quant.py
# ----------------------------------------------------------------------------------------------------------
def _check_quantize_per_tensor(x, scale, zero_point, dtype):
    check_float_input("x", x)
    check_scale("scale", scale)
    check_quant_dtype("dtype", dtype)
    check_zero_point("zero_point", zero_point, dtype)


QUANTIZE_PER_TENSOR = defop(
    "quantize_per_tensor(Tensor x, float scale, int zero_point, ScalarType dtype) -> Tensor",
    lambda x, scale, zero_point, dtype: (
        _check_quantize_per_tensor(x, scale, zero_point, dtype),
        torch.empty_like(x, dtype=dtype, memory_format=torch.contiguous_format),
    )[1],
    _check_quantize_per_tensor,
)


# ----------------------------------------------------------------------------------------------------------
# int8 / binary layers (issue: quantised layers). Implementations: pyopt/ops/int8_linear.py, ...
# ----------------------------------------------------------------------------------------------------------
# (section owned by the int8/binary layer family)


# binary_linear: 1-bit sign weights packed 8 per byte (LSB first, bit 1 <=> W >= 0; rows padded to a whole
# byte, padding bits ignored), alpha = mean|W| per output channel (XNOR-Net BWN). With
# binary_activations=True the input is binarised too: sign(x) * mean|x| per row (XNOR + popcount).
# Output dtype = x.dtype; alpha and bias are float32. Implementations: pyopt/ops/binary_linear.py
def _check_binary_linear(x, packed_weight, alpha, bias, in_features, binary_activations=False):
    check_float_input("x", x)
    if in_features < 0:
        raise ValueError(f"in_features must be >= 0, got {in_features}")
    if x.dim() < 1 or x.shape[-1] != in_features:
        raise ValueError(f"x must have last dimension in_features={in_features}, got shape {tuple(x.shape)}")
    if not isinstance(packed_weight, torch.Tensor) or packed_weight.dtype != torch.uint8:
        raise TypeError("packed_weight must be a torch.uint8 tensor")
    if packed_weight.dim() != 2 or packed_weight.shape[1] != (in_features + 7) // 8:
        raise ValueError(
            f"packed_weight must have shape (out_features, ceil(in_features/8)={(in_features + 7) // 8}), "
            f"got {tuple(packed_weight.shape)}"
        )
    n = packed_weight.shape[0]
    if not isinstance(alpha, torch.Tensor) or alpha.dtype != torch.float32 or alpha.shape != (n,):
        raise ValueError(f"alpha must be a float32 tensor of shape ({n},)")
    if bias is not None and (bias.dtype != torch.float32 or bias.shape != (n,)):
        raise ValueError(f"bias must be None or a float32 tensor of shape ({n},)")


BINARY_LINEAR = defop(
    "binary_linear(Tensor x, Tensor packed_weight, Tensor alpha, Tensor? bias, int in_features, "
    "bool binary_activations=False) -> Tensor",
    lambda x, packed_weight, alpha, bias, in_features, binary_activations=False: (
        _check_binary_linear(x, packed_weight, alpha, bias, in_features, binary_activations),
        x.new_empty((*x.shape[:-1], packed_weight.shape[0])),
    )[1],
    _check_binary_linear,
)


# ----------------------------------------------------------------------------------------------------------
# sparse masked matmul (issue: pruning). Implementations: pyopt/ops/sparse.py
# ----------------------------------------------------------------------------------------------------------
# (section owned by the sparse family)


# ----------------------------------------------------------------------------------------------------------
# fused SGD (issue: FusedSGD). Implementations: pyopt/ops/sgd.py
# ----------------------------------------------------------------------------------------------------------
# (section owned by the SGD family)
