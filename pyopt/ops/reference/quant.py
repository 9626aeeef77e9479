"""quant family, pure torch: the kernels of the quantize / dequantize ops on every device without a native one,
and the tests' oracle. Rounding rules: pyopt/_rules.py (bit-exact with torch 2.13 on CPU)."""

from __future__ import annotations

import torch

from ..._rules import (
    QRANGE,
    channel_view,
    fma_f32,
    per_group_qparams,
    quantize_per_token,
    quantize_rounded_product,
    reciprocal_f32,
    round_clamp,
)
from .. import checks as C
from ..backends import reference


@reference("quantize_per_tensor")
def quantize_per_tensor_ref(x, scale, zero_point, dtype):
    C.check_quantize_per_tensor(x, scale, zero_point, dtype)
    inv = reciprocal_f32(torch.tensor(scale, dtype=torch.float32, device=x.device))
    lo, hi = QRANGE[dtype]
    return round_clamp(fma_f32(x.float(), inv, float(zero_point)), lo, hi, hi, dtype)


@reference("quantize_per_channel")
def quantize_per_channel_ref(x, scales, zero_points, axis, dtype):
    C.check_quantize_per_channel(x, scales, zero_points, axis, dtype)
    axis = axis % x.dim()
    inv = channel_view(reciprocal_f32(scales.to(torch.float32)), axis, x.dim())
    zp = channel_view(zero_points.to(torch.float32), axis, x.dim())
    return quantize_rounded_product(x.float(), inv, zp, *QRANGE[dtype], dtype)


@reference("quantize_per_token")
def quantize_per_token_ref(x, dtype):
    C.check_quantize_per_token(x, dtype)
    return quantize_per_token(x)


@reference("quantize_per_group")
def quantize_per_group_ref(x, group_size, dtype, symmetric):
    C.check_quantize_per_group(x, group_size, dtype, symmetric)
    xf = x.float()
    scales, zps = per_group_qparams(xf, group_size, dtype, symmetric)
    xg = xf.reshape(*scales.shape, group_size)
    inv = reciprocal_f32(scales).unsqueeze(-1)
    q = quantize_rounded_product(xg, inv, zps.unsqueeze(-1).float(), *QRANGE[dtype], dtype)
    return q.reshape(x.shape), scales, zps


@reference("dequantize_per_tensor")
def dequantize_per_tensor_ref(q, scale, zero_point, out_dtype):
    C.check_dequantize_per_tensor(q, scale, zero_point, out_dtype)
    s32 = float(torch.tensor(scale, dtype=torch.float32))
    return ((q.float() - float(zero_point)) * s32).to(out_dtype)


@reference("dequantize_per_channel")
def dequantize_per_channel_ref(q, scales, zero_points, axis, out_dtype):
    C.check_dequantize_per_channel(q, scales, zero_points, axis, out_dtype)
    # torch computes (q - zp) * scale in float64 (scales are float64 there) and rounds once to float32.
    axis = axis % q.dim()
    s = channel_view(scales.double(), axis, q.dim())
    zp = channel_view(zero_points.double(), axis, q.dim())
    return ((q.double() - zp) * s).float().to(out_dtype)


@reference("dequantize_per_group")
def dequantize_per_group_ref(q, scales, zero_points, group_size, out_dtype):
    C.check_dequantize_per_group(q, scales, zero_points, group_size, out_dtype)
    qg = q.float().reshape(*q.shape[:-1], q.shape[-1] // group_size, group_size)
    out = (qg - zero_points.float().unsqueeze(-1)) * scales.float().unsqueeze(-1)
    return out.reshape(q.shape).to(out_dtype)


def _out_overload(fn, check):
    """The `.out` overload of a dequantize op: the checks of .out, then fn's result copied into out."""

    def run(q, *params, out):
        C.with_out(check)(q, *params, out=out)
        out.copy_(fn(q, *params, out.dtype))

    return run


for _name, _fn, _check in (
    ("dequantize_per_tensor", dequantize_per_tensor_ref, C.check_dequantize_per_tensor),
    ("dequantize_per_channel", dequantize_per_channel_ref, C.check_dequantize_per_channel),
    ("dequantize_per_group", dequantize_per_group_ref, C.check_dequantize_per_group),
):
    reference(f"{_name}.out")(_out_overload(_fn, _check))
