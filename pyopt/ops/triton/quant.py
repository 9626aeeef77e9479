"""quant family on Triton (kernels/quant.py, imported on first use): the CUDA kernels of the quantize /
dequantize ops where Triton measured faster (pyopt/ops/backends.py), and on CPU tensors under
TRITON_INTERPRET=1 when forced (tests). The qparams of per-token / per-group come from the pure-torch rules
(reductions), the elementwise pass from the kernel."""

from __future__ import annotations

import math

import torch

from ..._rules import QRANGE, per_group_qparams, per_token_scales, reciprocal_f32
from .. import checks as C
from ..backends import triton


def _tq():
    from ...kernels import quant as triton_quant

    return triton_quant


def _scalar_params(scale: float, zero_point: int, device):
    s32 = torch.tensor([scale], dtype=torch.float32, device=device)
    return s32, torch.tensor([float(zero_point)], dtype=torch.float32, device=device)


def _around_axis(shape, axis: int) -> tuple[int, int]:
    """(C, inner) of a tensor viewed as (outer, C, inner) around `axis`."""
    axis = axis % len(shape)
    return shape[axis], math.prod(shape[axis + 1 :])


@triton("quantize_per_tensor")
def quantize_per_tensor_triton(x, scale, zero_point, dtype):
    C.check_quantize_per_tensor(x, scale, zero_point, dtype)
    s32, zp = _scalar_params(scale, zero_point, x.device)
    return _tq().quantize(x, reciprocal_f32(s32), zp, *QRANGE[dtype], dtype, fma_rule=True)


@triton("quantize_per_channel")
def quantize_per_channel_triton(x, scales, zero_points, axis, dtype):
    C.check_quantize_per_channel(x, scales, zero_points, axis, dtype)
    c, inner = _around_axis(x.shape, axis)
    inv = reciprocal_f32(scales.to(torch.float32))
    return _tq().quantize(x, inv, zero_points, *QRANGE[dtype], dtype, fma_rule=False, C=c, inner=inner)


@triton("quantize_per_token")
def quantize_per_token_triton(x, dtype):
    C.check_quantize_per_token(x, dtype)
    scales = per_token_scales(x.float())
    inv = reciprocal_f32(scales)
    zp = torch.zeros_like(inv)
    q = _tq().quantize(
        x, inv, zp, -127, 127, dtype, fma_rule=False, C=max(scales.numel(), 1), inner=x.shape[-1]
    )
    return q, scales


@triton("quantize_per_group")
def quantize_per_group_triton(x, group_size, dtype, symmetric):
    C.check_quantize_per_group(x, group_size, dtype, symmetric)
    scales, zps = per_group_qparams(x.float(), group_size, dtype, symmetric)
    inv = reciprocal_f32(scales)
    q = _tq().quantize(
        x, inv, zps, *QRANGE[dtype], dtype, fma_rule=False, C=max(scales.numel(), 1), inner=group_size
    )
    return q, scales, zps


@triton("dequantize_per_tensor")
def dequantize_per_tensor_triton(q, scale, zero_point, out_dtype):
    C.check_dequantize_per_tensor(q, scale, zero_point, out_dtype)
    return _tq().dequantize(q, *_scalar_params(scale, zero_point, q.device), out_dtype)


@triton("dequantize_per_channel")
def dequantize_per_channel_triton(q, scales, zero_points, axis, out_dtype):
    C.check_dequantize_per_channel(q, scales, zero_points, axis, out_dtype)
    c, inner = _around_axis(q.shape, axis)
    return _tq().dequantize(q, scales, zero_points, out_dtype, C=c, inner=inner)


@triton("dequantize_per_group")
def dequantize_per_group_triton(q, scales, zero_points, group_size, out_dtype):
    C.check_dequantize_per_group(q, scales, zero_points, group_size, out_dtype)
    c = max(scales.numel(), 1)
    return _tq().dequantize(q, scales.to(torch.float32), zero_points, out_dtype, C=c, inner=group_size)


def _by_copy(fn):
    """A `.out` overload on Triton: the allocating kernel, then a copy (the caching allocator makes the fresh
    result cheap on a GPU)."""

    def run(q, *params, out):
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
        result = fn(q, *params, out.dtype)
        C.with_out(lambda *a: None)(q, *params, out=out)
        out.copy_(result)

    return run


for _name, _fn in (
    ("dequantize_per_tensor", dequantize_per_tensor_triton),
    ("dequantize_per_channel", dequantize_per_channel_triton),
    ("dequantize_per_group", dequantize_per_group_triton),
):
    triton(f"{_name}.out")(_by_copy(_fn))
