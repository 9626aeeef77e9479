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


def defop(
    schema: str, fake: Callable, check: Callable | None = None, route_on_first_arg: bool = False
) -> str:
    """Declare `pyopt::<schema>` with its fake impl and the router kernel. Returns the op name.

    route_on_first_arg: the router takes the device from the first argument only (for ops taking long
    tensor lists, whose backends check the other tensors' devices themselves); by default every tensor
    argument is checked to be on one device."""
    name = schema.split("(", 1)[0]
    _lib.define(schema)
    torch.library.register_fake(f"pyopt::{name}", fake, lib=_lib)
    arg_names = [a.name for a in getattr(torch.ops.pyopt, name).default._schema.arguments]
    if route_on_first_arg:
        arg_names = arg_names[:1]
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


# ----------------------------------------------------------------------------------------------------------
# fused SGD (issue: FusedSGD). Implementations: pyopt/ops/sgd.py
# ----------------------------------------------------------------------------------------------------------
# (section owned by the SGD family)
SGD_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_fused_sgd_lists(params, grads, momentum_buffers, master_params, masks, first_step, lr, lr_tensor):
    """O(1) checks run by the router on every step (per-tensor checks: _check_fused_sgd_tensors / C++)."""
    n = len(params)
    if len(grads) != n:
        raise ValueError(f"grads must have one tensor per param ({n}), got {len(grads)}")
    for name, lst in (("momentum_buffers", momentum_buffers), ("master_params", master_params)):
        if len(lst) not in (0, n):
            raise ValueError(f"{name} must be empty or have one tensor per param ({n}), got {len(lst)}")
    if len(masks) not in (0, n):
        raise ValueError(f"masks must be empty or have one entry per param ({n}), got {len(masks)}")
    if len(first_step) != (n if momentum_buffers else 0):
        raise ValueError(f"first_step must have one flag per momentum buffer, got {len(first_step)}")
    if lr < 0 or not math.isfinite(lr):
        raise ValueError(f"Invalid learning rate: {lr}")
    if lr_tensor is not None and lr_tensor.numel() != 1:
        raise ValueError("lr_tensor must be 1-element")


def _check_fused_sgd_tensors(params, grads, momentum_buffers, master_params, masks):
    """Per-tensor metadata checks (fake impl, reference and Triton; the C++ kernels TORCH_CHECK the same)."""
    device = params[0].device if params else None
    for i, p in enumerate(params):
        check_float_input(f"params[{i}]", p, SGD_DTYPES)
        g = grads[i]
        for name, lst in (
            ("params", params),
            ("grads", grads),
            ("momentum_buffers", momentum_buffers),
            ("master_params", master_params),
        ):
            if lst and lst[i].device != device:
                raise ValueError(f"{name}[{i}] is on {lst[i].device} but params[0] is on {device}")
        if masks and masks[i] is not None and masks[i].device != device:
            raise ValueError(f"masks[{i}] is on {masks[i].device} but params[0] is on {device}")
        if g.is_sparse:
            raise RuntimeError(f"grads[{i}]: FusedSGD does not support sparse gradients")
        if g.shape != p.shape or g.dtype != p.dtype:
            raise ValueError(
                f"grads[{i}] must match params[{i}] ({p.dtype}, {tuple(p.shape)}), got {g.dtype}"
            )
        if master_params:
            m = master_params[i]
            if (
                p.dtype not in (torch.float16, torch.bfloat16)
                or m.dtype != torch.float32
                or m.shape != p.shape
            ):
                raise ValueError(f"master_params[{i}] must be a float32 copy of a bf16/fp16 params[{i}]")
        if momentum_buffers:
            b = momentum_buffers[i]
            want = torch.float32 if master_params else p.dtype
            if b.shape != p.shape or b.dtype != want:
                raise ValueError(f"momentum_buffers[{i}] must be {want} with shape {tuple(p.shape)}")
        if masks and masks[i] is not None and (masks[i].dtype != torch.bool or masks[i].shape != p.shape):
            raise ValueError(f"masks[{i}] must be a bool tensor of shape {tuple(p.shape)}")


def _fake_fused_sgd(params, grads, momentum_buffers, master_params, masks, first_step, lr, *rest):
    _check_fused_sgd_lists(params, grads, momentum_buffers, master_params, masks, first_step, lr, rest[-3])
    _check_fused_sgd_tensors(params, grads, momentum_buffers, master_params, masks)


# One step of torch.optim.SGD (maximize -> weight decay -> momentum -> Nesterov -> lr) over many tensors,
# in place. first_step[i]: momentum_buffers[i] is uninitialised and becomes the (decayed) grad. masks[i]
# (None = dense): entries where it is False end exactly zero in the param, master and buffer. grad_scale:
# grads are multiplied by float32(1/grad_scale) first; found_inf != 0: nothing is written at all.
FUSED_SGD = defop(
    "fused_sgd_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, "
    "Tensor(c!)[] master_params, Tensor?[] masks, bool[] first_step, float lr, float weight_decay, "
    "float momentum, float dampening, bool nesterov, bool maximize, Tensor? lr_tensor, Tensor? grad_scale, "
    "Tensor? found_inf) -> ()",
    _fake_fused_sgd,
    lambda params, grads, bufs, masters, masks, first_step, lr, wd, mom, damp, nest, mx, lr_t, gs, fi: (
        _check_fused_sgd_lists(params, grads, bufs, masters, masks, first_step, lr, lr_t)
    ),
    route_on_first_arg=True,  # thousands of tensors: every backend checks their devices itself
)
