"""int8 layers: reference, cpu, triton and cuda implementations of the int8 linear / conv ops.

Activations (per token / per sample) and weights (per output channel) are quantised with the quant family's
quantize_per_token rule (pyopt/_rules.py): amax = max|v| over a row (float32), scale = amax / 127 (1 where 0),
q = clamp(rint_half_even(float32(v * float32(1 / scale))), -127, 127). The reference uses that family's
reference and the C++ path its row quantiser (csrc/cpu/quant_simd.h), so the two families agree bit for bit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._rules import quantize_rows_symmetric
from .backends import register, requested_isa


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1])


def _bias_f32(bias):
    return None if bias is None else bias.float().contiguous()


def _dequant_epilogue_ref(acc, row_scales, w_scales, bias, dtype):
    """out = float32(acc) * row_scale * w_scale + bias (acc exact, held in float64 or int)."""
    out = acc.float() * row_scales.unsqueeze(1) * w_scales
    if bias is not None:
        out = out + bias.float()
    return out.to(dtype)


# ----------------------------------------------------------------------------------------------------------
# reference: exact integer products in float64 (|acc| <= 127^2 * K < 2^53), float epilogue in float32
# ----------------------------------------------------------------------------------------------------------
@register("int8_linear_dynamic", "reference")
def int8_linear_dynamic_ref(x, w_q, w_scales, bias):
    q, sx = quantize_rows_symmetric(_rows(x))
    acc = q.double() @ w_q.double().t()
    out = _dequant_epilogue_ref(acc, sx, w_scales, bias, x.dtype)
    return out.reshape(*x.shape[:-1], w_q.shape[0])


@register("int8_linear_weight_only", "reference")
def int8_linear_weight_only_ref(x, w_q, w_scales, bias):
    acc = _rows(x).double() @ w_q.double().t()
    out = acc * w_scales.double()
    if bias is not None:
        out = out + bias.double()
    return out.to(x.dtype).reshape(*x.shape[:-1], w_q.shape[0])


@register("int8_conv2d_dynamic", "reference")
def int8_conv2d_dynamic_ref(x, w_q, w_scales, bias, stride, padding, dilation):
    q, sx = quantize_rows_symmetric(x.reshape(x.shape[0], -1))
    acc = F.conv2d(q.double().reshape(x.shape), w_q.double(), None, stride, padding, dilation)
    out = acc.float() * sx.view(-1, 1, 1, 1) * w_scales.view(1, -1, 1, 1)
    if bias is not None:
        out = out + bias.float().view(1, -1, 1, 1)
    return out.to(x.dtype).contiguous(memory_format=torch.channels_last)


@register("int8_conv2d_weight_only", "reference")
def int8_conv2d_weight_only_ref(x, w_q, w_scales, bias, stride, padding, dilation):
    w = (w_q.float() * w_scales.view(-1, 1, 1, 1)).to(x.dtype)
    return F.conv2d(x, w, None if bias is None else bias.to(x.dtype), stride, padding, dilation)


# ----------------------------------------------------------------------------------------------------------
# cpu: csrc/cpu/int8_linear.cpp
# ----------------------------------------------------------------------------------------------------------
@register("int8_linear_dynamic", "cpu")
def int8_linear_dynamic_cpu(x, w_q, w_scales, bias):
    out = torch.ops.pyopt_cpu.int8_linear_dynamic(
        _rows(x).contiguous(), w_q.contiguous(), w_scales.contiguous(), _bias_f32(bias), requested_isa()
    )
    return out.reshape(*x.shape[:-1], w_q.shape[0])


@register("int8_linear_weight_only", "cpu")
def int8_linear_weight_only_cpu(x, w_q, w_scales, bias):
    out = torch.ops.pyopt_cpu.int8_linear_weight_only(
        _rows(x).contiguous(), w_q.contiguous(), w_scales.contiguous(), _bias_f32(bias), requested_isa()
    )
    return out.reshape(*x.shape[:-1], w_q.shape[0])


@register("int8_conv2d_dynamic", "cpu")
def int8_conv2d_dynamic_cpu(x, w_q, w_scales, bias, stride, padding, dilation):
    return torch.ops.pyopt_cpu.int8_conv2d_dynamic(
        x,
        w_q,
        w_scales.contiguous(),
        _bias_f32(bias),
        list(stride),
        list(padding),
        list(dilation),
        requested_isa(),
    )


# ----------------------------------------------------------------------------------------------------------
# triton: kernels/int8_linear.py (GPU; CPU tensors only under TRITON_INTERPRET=1)
# ----------------------------------------------------------------------------------------------------------
@register("int8_linear_dynamic", "triton")
def int8_linear_dynamic_triton(x, w_q, w_scales, bias):
    from ..kernels import int8_linear as k

    out = k.int8_linear_dynamic(
        _rows(x).contiguous(), w_q.contiguous(), w_scales.contiguous(), _bias_f32(bias)
    )
    return out.reshape(*x.shape[:-1], w_q.shape[0])


@register("int8_linear_weight_only", "triton")
def int8_linear_weight_only_triton(x, w_q, w_scales, bias):
    from ..kernels import int8_linear as k

    out = k.int8_linear_weight_only(
        _rows(x).contiguous(), w_q.contiguous(), w_scales.contiguous(), _bias_f32(bias)
    )
    return out.reshape(*x.shape[:-1], w_q.shape[0])


# ----------------------------------------------------------------------------------------------------------
# cuda: csrc/cuda/int8_linear.cu (+ int8_linear_bind.cpp)
# ----------------------------------------------------------------------------------------------------------
@register("int8_linear_dynamic", "cuda")
def int8_linear_dynamic_cuda(x, w_q, w_scales, bias):
    out = torch.ops.pyopt_cuda.int8_linear_dynamic(
        _rows(x).contiguous(), w_q.contiguous(), w_scales.contiguous(), _bias_f32(bias)
    )
    return out.reshape(*x.shape[:-1], w_q.shape[0])


@register("int8_linear_weight_only", "cuda")
def int8_linear_weight_only_cuda(x, w_q, w_scales, bias):
    out = torch.ops.pyopt_cuda.int8_linear_weight_only(
        _rows(x).contiguous(), w_q.contiguous(), w_scales.contiguous(), _bias_f32(bias)
    )
    return out.reshape(*x.shape[:-1], w_q.shape[0])


# ----------------------------------------------------------------------------------------------------------
# autograd (w.r.t. x only: the int8 weights are frozen buffers). Weight-only: the exact gradient of
# x @ (s * w_q)^T. Dynamic: the straight-through estimator (activation rounding treated as identity), as in
# quantisation-aware training. The backward expands w_q to x's dtype (a training-time cost only).
# ----------------------------------------------------------------------------------------------------------
def _linear_setup_context(ctx, inputs, output):
    _, w_q, w_scales, _ = inputs
    ctx.save_for_backward(w_q, w_scales)


def _linear_backward(ctx, grad):
    w_q, w_scales = ctx.saved_tensors
    grad_x = (grad.float() * w_scales) @ w_q.float()
    return grad_x.to(grad.dtype), None, None, None


for _op in ("int8_linear_dynamic", "int8_linear_weight_only"):
    torch.library.register_autograd(f"pyopt::{_op}", _linear_backward, setup_context=_linear_setup_context)


def _conv_setup_context(ctx, inputs, output):
    x, w_q, w_scales, _, stride, padding, dilation = inputs
    ctx.save_for_backward(w_q, w_scales)
    ctx.x_shape, ctx.conv_args = x.shape, (stride, padding, dilation)


def _conv_backward(ctx, grad):
    w_q, w_scales = ctx.saved_tensors
    w_deq = w_q.float() * w_scales.view(-1, 1, 1, 1)
    grad_x = torch.nn.grad.conv2d_input(ctx.x_shape, w_deq, grad.float(), *ctx.conv_args)
    return grad_x.to(grad.dtype), None, None, None, None, None, None


for _op in ("int8_conv2d_dynamic", "int8_conv2d_weight_only"):
    torch.library.register_autograd(f"pyopt::{_op}", _conv_backward, setup_context=_conv_setup_context)
