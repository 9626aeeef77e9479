"""int8 layers, pure torch: the kernels of the int8 linear / conv ops on every device without a native one, and
the tests' oracle. Activations (per token / per sample) and weights (per output channel) follow the per-token
rule of pyopt/_rules.py; integer products are exact in float64 (|acc| <= 127 * 128 * K < 2^53) and the
epilogue out = float32(acc) * sx * sw + bias runs in float32, as every native kernel does."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..._rules import quantize_rows_symmetric
from .. import checks as C
from ..backends import reference


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1])


def _dequant_epilogue(acc, row_scales, w_scales, bias, dtype):
    """out = float32(acc) * row_scale * w_scale + bias (acc exact, held in float64)."""
    out = acc.float() * row_scales.unsqueeze(1) * w_scales
    if bias is not None:
        out = out + bias.float()
    return out.to(dtype)


@reference("int8_linear_dynamic")
def int8_linear_dynamic_ref(x, w_q, w_scales, bias):
    C.check_int8_linear(x, w_q, w_scales, bias)
    q, sx = quantize_rows_symmetric(_rows(x))
    acc = q.double() @ w_q.double().t()
    out = _dequant_epilogue(acc, sx, w_scales, bias, x.dtype)
    return out.reshape(*x.shape[:-1], w_q.shape[0])


@reference("int8_linear_weight_only")
def int8_linear_weight_only_ref(x, w_q, w_scales, bias):
    C.check_int8_linear(x, w_q, w_scales, bias)
    acc = _rows(x).double() @ w_q.double().t()
    out = acc * w_scales.double()
    if bias is not None:
        out = out + bias.double()
    return out.to(x.dtype).reshape(*x.shape[:-1], w_q.shape[0])


@reference("int8_conv2d_dynamic")
def int8_conv2d_dynamic_ref(x, w_q, w_scales, bias, stride, padding, dilation):
    C.check_int8_conv2d(x, w_q, w_scales, bias, stride, padding, dilation)
    q, sx = quantize_rows_symmetric(
        x.reshape(x.shape[0], math.prod(x.shape[1:]))
    )  # (also for an empty batch)
    acc = F.conv2d(q.double().reshape(x.shape), w_q.double(), None, stride, padding, dilation)
    out = acc.float() * sx.view(-1, 1, 1, 1) * w_scales.view(1, -1, 1, 1)
    if bias is not None:
        out = out + bias.float().view(1, -1, 1, 1)
    return out.to(x.dtype).contiguous(memory_format=torch.channels_last)


@reference("int8_conv2d_weight_only")
def int8_conv2d_weight_only_ref(x, w_q, w_scales, bias, stride, padding, dilation):
    C.check_int8_conv2d(x, w_q, w_scales, bias, stride, padding, dilation)
    w = (w_q.float() * w_scales.view(-1, 1, 1, 1)).to(x.dtype)
    return F.conv2d(x, w, None if bias is None else bias.to(x.dtype), stride, padding, dilation)
