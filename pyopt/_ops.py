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
def _check_int8_weights(w_q, w_scales, bias, w_ndim: int) -> None:
    if not isinstance(w_q, torch.Tensor) or w_q.dtype != torch.int8:
        raise TypeError(f"w_q must be an int8 tensor, got {getattr(w_q, 'dtype', type(w_q).__name__)}")
    if w_q.dim() != w_ndim:
        raise ValueError(f"w_q must be {w_ndim}-d, got shape {tuple(w_q.shape)}")
    if not isinstance(w_scales, torch.Tensor) or w_scales.dtype != torch.float32:
        raise TypeError(
            f"w_scales must be a float32 tensor, got {getattr(w_scales, 'dtype', type(w_scales))}"
        )
    if w_scales.shape != (w_q.shape[0],):
        raise ValueError(f"w_scales must have shape ({w_q.shape[0]},), got {tuple(w_scales.shape)}")
    if bias is not None:
        check_float_input("bias", bias)
        if bias.shape != (w_q.shape[0],):
            raise ValueError(f"bias must have shape ({w_q.shape[0]},), got {tuple(bias.shape)}")


def _check_int8_linear(x, w_q, w_scales, bias):
    check_float_input("x", x)
    _check_int8_weights(w_q, w_scales, bias, 2)
    if x.dim() < 1 or x.shape[-1] != w_q.shape[1]:
        raise ValueError(f"x: last dim must equal in_features={w_q.shape[1]}, got shape {tuple(x.shape)}")


def _int8_linear_fake(x, w_q, w_scales, bias):
    _check_int8_linear(x, w_q, w_scales, bias)
    return x.new_empty((*x.shape[:-1], w_q.shape[0]))


# W8A8: per-token symmetric int8 activations (quantize_per_token's rule) x per-output-channel int8 weights,
# int32 accumulation, out = acc * sx[token] * w_scales[n] + bias[n] in x's dtype.
INT8_LINEAR_DYNAMIC = defop(
    "int8_linear_dynamic(Tensor x, Tensor w_q, Tensor w_scales, Tensor? bias) -> Tensor",
    _int8_linear_fake,
    _check_int8_linear,
)
# W8A16/W8A32: out = (x @ w_q^T) * w_scales + bias, weights dequantised inside the GEMM/GEMV.
INT8_LINEAR_WEIGHT_ONLY = defop(
    "int8_linear_weight_only(Tensor x, Tensor w_q, Tensor w_scales, Tensor? bias) -> Tensor",
    _int8_linear_fake,
    _check_int8_linear,
)


def _conv_out_hw(x, w_q, stride, padding, dilation) -> tuple[int, int]:
    return tuple(
        (x.shape[2 + i] + 2 * padding[i] - dilation[i] * (w_q.shape[2 + i] - 1) - 1) // stride[i] + 1
        for i in range(2)
    )


def _check_int8_conv2d(x, w_q, w_scales, bias, stride, padding, dilation):
    check_float_input("x", x)
    _check_int8_weights(w_q, w_scales, bias, 4)
    if x.dim() != 4 or x.shape[1] != w_q.shape[1]:
        raise ValueError(
            f"x must be [B, {w_q.shape[1]}, H, W] (in_channels={w_q.shape[1]}), got {tuple(x.shape)}"
        )
    for name, v, lo in (("stride", stride, 1), ("padding", padding, 0), ("dilation", dilation, 1)):
        if len(v) != 2 or any(int(e) < lo for e in v):
            raise ValueError(f"{name} must be 2 ints >= {lo}, got {list(v)}")
    if min(_conv_out_hw(x, w_q, stride, padding, dilation)) < 1:
        raise ValueError(f"x spatial size {tuple(x.shape[2:])} is smaller than the (dilated) kernel")


def _int8_conv2d_dynamic_fake(x, w_q, w_scales, bias, stride, padding, dilation):
    _check_int8_conv2d(x, w_q, w_scales, bias, stride, padding, dilation)
    ho, wo = _conv_out_hw(x, w_q, stride, padding, dilation)
    return x.new_empty((x.shape[0], w_q.shape[0], ho, wo)).contiguous(memory_format=torch.channels_last)


# Dynamic conv: one symmetric activation scale per sample (factors out of every im2col row of that image),
# per-output-channel int8 weights; output is a channels-last NCHW tensor in x's dtype.
INT8_CONV2D_DYNAMIC = defop(
    "int8_conv2d_dynamic(Tensor x, Tensor w_q, Tensor w_scales, Tensor? bias, int[2] stride, int[2] padding, "
    "int[2] dilation) -> Tensor",
    _int8_conv2d_dynamic_fake,
    _check_int8_conv2d,
)


def _int8_conv2d_weight_only_fake(x, w_q, w_scales, bias, stride, padding, dilation):
    _check_int8_conv2d(x, w_q, w_scales, bias, stride, padding, dilation)
    w = w_q.to(x.dtype)  # fake tensors: lets torch's own conv meta decide the output strides
    return torch.nn.functional.conv2d(x, w, None, stride, padding, dilation)


# Weight-only conv: the (small) conv weight is dequantised per call and torch's conv runs in x's dtype.
INT8_CONV2D_WEIGHT_ONLY = defop(
    "int8_conv2d_weight_only(Tensor x, Tensor w_q, Tensor w_scales, Tensor? bias, int[2] stride, "
    "int[2] padding, int[2] dilation) -> Tensor",
    _int8_conv2d_weight_only_fake,
    _check_int8_conv2d,
)


# ----------------------------------------------------------------------------------------------------------
# sparse masked matmul (issue: pruning). Implementations: pyopt/ops/sparse.py
# ----------------------------------------------------------------------------------------------------------
# (section owned by the sparse family)


# ----------------------------------------------------------------------------------------------------------
# fused SGD (issue: FusedSGD). Implementations: pyopt/ops/sgd.py
# ----------------------------------------------------------------------------------------------------------
# (section owned by the SGD family)
