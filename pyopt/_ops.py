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


# ----------------------------------------------------------------------------------------------------------
# sparse masked matmul (issue: pruning). Implementations: pyopt/ops/sparse.py
# ----------------------------------------------------------------------------------------------------------
# (section owned by the sparse family)
# Weights are [out_features N, in_features K]; x is [..., K]; masks are bool [N, K] (True = kept).
# Training: sparse_masked_linear (autograd: grad_input + SDDMM below). Inference: CSR / BSR weights.
SPARSE_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _check_tensor(name: str, t, dtypes=None, ndim=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {tuple(str(d) for d in dtypes)}, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")


def _check_same_dtype(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} must have the dtype of {ref_name} ({ref.dtype}), got {t.dtype}")


def _check_bias(bias, n: int, x: torch.Tensor) -> None:
    if bias is not None:
        _check_tensor("bias", bias, ndim=1)
        _check_same_dtype("bias", bias, "x", x)
        if bias.shape[0] != n:
            raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")


def check_sparse_mask(mask, weight_shape) -> None:
    _check_tensor("mask", mask, (torch.bool,))
    if tuple(mask.shape) != tuple(weight_shape):
        raise ValueError(f"mask must have the weight's shape {tuple(weight_shape)}, got {tuple(mask.shape)}")


def _check_input_features(name: str, x: torch.Tensor, k: int, what: str) -> None:
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"{name} must have shape [..., {k}] ({what}), got {tuple(x.shape)}")


def _check_sparse_masked_linear(x, weight, mask, bias):
    _check_tensor("x", x, SPARSE_DTYPES)
    _check_tensor("weight", weight, SPARSE_DTYPES, ndim=2)
    _check_same_dtype("weight", weight, "x", x)
    _check_input_features("x", x, weight.shape[1], "weight.shape[1]")
    check_sparse_mask(mask, weight.shape)
    _check_bias(bias, weight.shape[0], x)


SPARSE_MASKED_LINEAR = defop(
    "sparse_masked_linear(Tensor x, Tensor weight, Tensor mask, Tensor? bias) -> Tensor",
    lambda x, weight, mask, bias: (
        _check_sparse_masked_linear(x, weight, mask, bias),
        x.new_empty((*x.shape[:-1], weight.shape[0])),
    )[1],
    _check_sparse_masked_linear,
)


def _check_sparse_masked_linear_grad_input(grad_y, weight, mask):
    _check_tensor("grad_y", grad_y, SPARSE_DTYPES)
    _check_tensor("weight", weight, SPARSE_DTYPES, ndim=2)
    _check_same_dtype("weight", weight, "grad_y", grad_y)
    _check_input_features("grad_y", grad_y, weight.shape[0], "weight.shape[0]")
    check_sparse_mask(mask, weight.shape)


SPARSE_MASKED_LINEAR_GRAD_INPUT = defop(
    "sparse_masked_linear_grad_input(Tensor grad_y, Tensor weight, Tensor mask) -> Tensor",
    lambda grad_y, weight, mask: (
        _check_sparse_masked_linear_grad_input(grad_y, weight, mask),
        grad_y.new_empty((*grad_y.shape[:-1], weight.shape[1])),
    )[1],
    _check_sparse_masked_linear_grad_input,
)


def _check_sparse_masked_sddmm(grad_y, x, mask):
    _check_tensor("grad_y", grad_y, SPARSE_DTYPES)
    _check_tensor("x", x, SPARSE_DTYPES)
    _check_same_dtype("x", x, "grad_y", grad_y)
    if grad_y.dim() < 1 or x.dim() < 1 or grad_y.shape[:-1] != x.shape[:-1]:
        raise ValueError(
            f"grad_y and x must agree on their leading dims, got {tuple(grad_y.shape)} and {tuple(x.shape)}"
        )
    check_sparse_mask(mask, (grad_y.shape[-1], x.shape[-1]))


SPARSE_MASKED_SDDMM = defop(
    "sparse_masked_sddmm(Tensor grad_y, Tensor x, Tensor mask) -> Tensor",
    lambda grad_y, x, mask: (
        _check_sparse_masked_sddmm(grad_y, x, mask),
        x.new_empty((grad_y.shape[-1], x.shape[-1])),
    )[1],
    _check_sparse_masked_sddmm,
)


def _check_compressed(
    x, crow_indices, col_indices, values, bias, out_features, rows, col_dtypes, values_ndim
):
    _check_tensor("x", x, SPARSE_DTYPES)
    if not isinstance(out_features, int) or out_features < 0:
        raise ValueError(f"out_features must be an int >= 0, got {out_features!r}")
    _check_tensor("crow_indices", crow_indices, (torch.int64,), ndim=1)
    _check_tensor("col_indices", col_indices, col_dtypes, ndim=1)
    _check_tensor("values", values, ndim=values_ndim)
    _check_same_dtype("values", values, "x", x)
    if crow_indices.shape[0] != rows + 1:
        raise ValueError(f"crow_indices must have {rows + 1} entries, got {crow_indices.shape[0]}")
    if col_indices.shape[0] != values.shape[0]:
        raise ValueError(
            f"col_indices ({col_indices.shape[0]}) and values ({values.shape[0]}) must have one entry per nonzero"
        )
    if x.dim() < 1:
        raise ValueError("x must have at least 1 dim")
    _check_bias(bias, out_features, x)


def _check_sparse_csr_linear(x, crow_indices, col_indices, values, bias, out_features):
    _check_compressed(
        x, crow_indices, col_indices, values, bias, out_features, out_features, (torch.int16, torch.int32), 1
    )


SPARSE_CSR_LINEAR = defop(
    "sparse_csr_linear(Tensor x, Tensor crow_indices, Tensor col_indices, Tensor values, Tensor? bias, "
    "int out_features) -> Tensor",
    lambda x, crow_indices, col_indices, values, bias, out_features: (
        _check_sparse_csr_linear(x, crow_indices, col_indices, values, bias, out_features),
        x.new_empty((*x.shape[:-1], out_features)),
    )[1],
    _check_sparse_csr_linear,
)


def _check_sparse_bsr_linear(x, crow_indices, col_indices, values, bias, out_features):
    _check_tensor("values", values, ndim=3)
    bh, bw = values.shape[1], values.shape[2]
    if bh == 0 or bw == 0 or out_features % bh or (x.dim() >= 1 and x.shape[-1] % bw):
        raise ValueError(
            f"block shape ({bh}, {bw}) must divide the weight shape ({out_features}, {x.shape[-1]})"
        )
    _check_compressed(
        x, crow_indices, col_indices, values, bias, out_features, out_features // bh, (torch.int32,), 3
    )


SPARSE_BSR_LINEAR = defop(
    "sparse_bsr_linear(Tensor x, Tensor crow_indices, Tensor col_indices, Tensor values, Tensor? bias, "
    "int out_features) -> Tensor",
    lambda x, crow_indices, col_indices, values, bias, out_features: (
        _check_sparse_bsr_linear(x, crow_indices, col_indices, values, bias, out_features),
        x.new_empty((*x.shape[:-1], out_features)),
    )[1],
    _check_sparse_bsr_linear,
)


# ----------------------------------------------------------------------------------------------------------
# fused SGD (issue: FusedSGD). Implementations: pyopt/ops/sgd.py
# ----------------------------------------------------------------------------------------------------------
# (section owned by the SGD family)
